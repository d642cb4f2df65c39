//! **Hazardous material**: functions that handle private keys in the clear.
//!
//! Everything here takes or returns unencrypted private key bytes (in zeroizing buffers). Use it
//! only to move keys into or out of a store that protects them, or to write them encrypted; never
//! log what passes through.

use keyhaven_core::{Error, SecretBytes};
use pkcs8::der::pem::LineEnding;
use zeroize::Zeroizing;

use crate::encoding::pem_decode;

pub use crate::seeded::{SeededKey, verify_prehash};

const PKCS8: &str = "PRIVATE KEY";
const PKCS8_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";
const SEC1: &str = "EC PRIVATE KEY";

/// Reads a private key PEM into PKCS#8 DER.
///
/// Accepts `PRIVATE KEY` (PKCS#8), `ENCRYPTED PRIVATE KEY` (PKCS#8 with PBES2, needs
/// `passphrase`) and `EC PRIVATE KEY` (SEC1, as `openssl ecparam -genkey` writes, P-256/P-384).
///
/// # Errors
/// [`Error::InvalidInput`] for malformed input or an encrypted key without a passphrase;
/// [`Error::BadPassphrase`] if decryption fails.
pub fn private_key_pem_to_pkcs8(
    text: &str,
    passphrase: Option<&[u8]>,
) -> Result<SecretBytes, Error> {
    let (label, der) = pem_decode(text, &[PKCS8, PKCS8_ENCRYPTED, SEC1])?;
    match label.as_str() {
        PKCS8 => Ok(SecretBytes::copy_from(&der)),
        PKCS8_ENCRYPTED => {
            let passphrase = passphrase.ok_or_else(|| {
                Error::InvalidInput("the key is encrypted: a passphrase is needed".into())
            })?;
            let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
                .map_err(|_| Error::InvalidInput("malformed encrypted PKCS#8 key".into()))?;
            let doc = info.decrypt(passphrase).map_err(|_| {
                Error::BadPassphrase(
                    "cannot decrypt the PKCS#8 key: wrong passphrase or damaged file".into(),
                )
            })?;
            Ok(SecretBytes::copy_from(doc.as_bytes()))
        }
        _ => sec1_to_pkcs8(&der),
    }
}

fn sec1_to_pkcs8(der: &[u8]) -> Result<SecretBytes, Error> {
    use pkcs8::EncodePrivateKey;
    let doc = if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
        k.to_pkcs8_der()
    } else if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
        k.to_pkcs8_der()
    } else {
        return Err(Error::InvalidInput(
            "not a P-256 or P-384 SEC1 EC private key".into(),
        ));
    };
    let doc = doc.map_err(|_| Error::Crypto)?;
    Ok(SecretBytes::copy_from(doc.as_bytes()))
}

/// PKCS#8 DER as an unencrypted `PRIVATE KEY` PEM (what `openssl pkey` reads).
///
/// # Errors
/// [`Error::InvalidInput`] if the DER cannot be encoded.
pub fn pkcs8_to_pem(pkcs8_der: &SecretBytes) -> Result<Zeroizing<String>, Error> {
    pem_rfc7468_encode(PKCS8, pkcs8_der.expose_secret())
}

/// PKCS#8 DER encrypted under a passphrase (PBES2: scrypt, AES-256-CBC) as an
/// `ENCRYPTED PRIVATE KEY` PEM that `openssl pkey -passin` reads.
///
/// # Errors
/// [`Error::InvalidInput`] for malformed DER, [`Error::Crypto`] if encryption fails.
pub fn pkcs8_encrypt_pem(
    pkcs8_der: &SecretBytes,
    passphrase: &[u8],
) -> Result<Zeroizing<String>, Error> {
    let info = pkcs8::PrivateKeyInfoRef::try_from(pkcs8_der.expose_secret())
        .map_err(|_| Error::InvalidInput("not a PKCS#8 private key".into()))?;
    let mut rng = getrandom::SysRng;
    let doc = info
        .encrypt_with_rng(&mut rng, passphrase)
        .map_err(|_| Error::Crypto)?;
    pem_rfc7468_encode(PKCS8_ENCRYPTED, doc.as_bytes())
}

fn pem_rfc7468_encode(label: &str, der: &[u8]) -> Result<Zeroizing<String>, Error> {
    let mut buf = Zeroizing::new(vec![
        0u8;
        pkcs8::der::pem::encapsulated_len(
            label,
            LineEnding::LF,
            der.len()
        )
        .map_err(|_| Error::InvalidInput(
            "key too large to PEM-encode".into()
        ))?
    ]);
    let text = pkcs8::der::pem::encode(label, LineEnding::LF, der, &mut buf)
        .map_err(|_| Error::InvalidInput("cannot PEM-encode key".into()))?;
    Ok(Zeroizing::new(text.to_owned()))
}
