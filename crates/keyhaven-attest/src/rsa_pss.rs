//! RSA signature verification (RFC 8017): RSASSA-PSS with SHA-384 and a 48-byte salt, the
//! signature AMD's ARK, ASK and ASVK put on the certificates below them; and RSASSA-PKCS1-v1_5
//! or PSS with SHA-256, how a TPM's RSA attestation key signs quotes. Verification only: no
//! private RSA key is ever handled here, so the `rsa` crate's timing side channel in
//! decryption (RUSTSEC-2023-0071) does not apply.

use rsa::pkcs1::DecodeRsaPublicKey;
use sha2_010::{Digest, Sha256, Sha384};

/// The smallest modulus accepted (AMD's roots are 4096-bit).
const MIN_BITS: usize = 2048;

/// Verifies `signature` over `message` with the RSA public key `rsa_public_key` (the PKCS#1
/// `RSAPublicKey` inside a certificate's SubjectPublicKeyInfo bit string, whatever the SPKI's
/// algorithm identifier says: AMD's say RSASSA-PSS).
///
/// # Errors
/// What is wrong, in words.
pub(crate) fn verify_sha384(
    rsa_public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let key = public_key(rsa_public_key)?;
    let digest = Sha384::digest(message);
    key.verify(rsa::Pss::new_with_salt::<Sha384>(48), &digest, signature)
        .map_err(|_| "the RSA-PSS signature does not verify".to_owned())
}

/// The RSA public key in PKCS#1 `RSAPublicKey` DER, of at least [`MIN_BITS`].
fn public_key(der: &[u8]) -> Result<rsa::RsaPublicKey, String> {
    let key = rsa::RsaPublicKey::from_pkcs1_der(der)
        .map_err(|e| format!("the key is not an RSA public key ({e})"))?;
    let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
    if bits < MIN_BITS {
        return Err(format!(
            "the RSA key has {bits} bits, fewer than {MIN_BITS}"
        ));
    }
    Ok(key)
}

/// Verifies an RSASSA-PKCS1-v1_5 (`pss` false) or RSASSA-PSS (salt as long as the hash)
/// signature with SHA-256.
///
/// # Errors
/// What is wrong, in words.
pub(crate) fn verify_sha256(
    rsa_public_key: &[u8],
    message: &[u8],
    signature: &[u8],
    pss: bool,
) -> Result<(), String> {
    verify_sha256_key(&public_key(rsa_public_key)?, message, signature, pss)
}

/// [`verify_sha256`] with the key already read (at least [`MIN_BITS`] bits).
///
/// # Errors
/// What is wrong, in words.
pub(crate) fn verify_sha256_key(
    key: &rsa::RsaPublicKey,
    message: &[u8],
    signature: &[u8],
    pss: bool,
) -> Result<(), String> {
    let bits = rsa::traits::PublicKeyParts::size(key) * 8;
    if bits < MIN_BITS {
        return Err(format!(
            "the RSA key has {bits} bits, fewer than {MIN_BITS}"
        ));
    }
    let digest = Sha256::digest(message);
    let ok = if pss {
        key.verify(rsa::Pss::new::<Sha256>(), &digest, signature)
    } else {
        key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
    };
    ok.map_err(|_| "the RSA signature does not verify".to_owned())
}
