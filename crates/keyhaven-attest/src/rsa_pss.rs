//! RSASSA-PSS with SHA-384 and a 48-byte salt (RFC 8017), the signature AMD's ARK, ASK and
//! ASVK put on the certificates below them. Verification only: no private RSA key is ever
//! handled here, so the `rsa` crate's timing side channel in decryption (RUSTSEC-2023-0071)
//! does not apply.

use rsa::pkcs1::DecodeRsaPublicKey;
use sha2_010::{Digest, Sha384};

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
    let key = rsa::RsaPublicKey::from_pkcs1_der(rsa_public_key)
        .map_err(|e| format!("the issuer's key is not an RSA public key ({e})"))?;
    let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
    if bits < MIN_BITS {
        return Err(format!(
            "the issuer's RSA key has {bits} bits, fewer than {MIN_BITS}"
        ));
    }
    let digest = Sha384::digest(message);
    key.verify(rsa::Pss::new_with_salt::<Sha384>(48), &digest, signature)
        .map_err(|_| "the RSA-PSS signature does not verify".to_owned())
}
