//! Signing keys derived from secret key material: the same material and label always give the
//! same key, so a key wrapped once (a broker's transit KEK) also stands for a signing key that
//! is never stored.
//!
//! The private scalar or seed is HKDF-SHA-256 of the material with the label and algorithm in
//! `info`. An ECDSA scalar is drawn by rejection (an output that is zero or not below the group
//! order is skipped, with a counter in `info`), so it is uniform, not reduced with a bias.

use keyhaven_core::{Algorithm, Error, PublicKey, Signature};

use crate::kdf::derive_array;

/// The shortest digest [`SeededKey::sign_prehash`] signs: ECDSA's bits2field needs half the
/// field at least (16 bytes for P-256, 24 for P-384).
const MIN_DIGEST: usize = 16;
/// The longest digest signed (SHA-512).
const MAX_DIGEST: usize = 64;

enum Inner {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A signing key derived from secret material (zeroized on drop by its curve crate).
pub struct SeededKey {
    inner: Inner,
    public: PublicKey,
}

impl std::fmt::Debug for SeededKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededKey")
            .field("algorithm", &self.public.algorithm())
            .field("fingerprint", &self.public.fingerprint().to_hex())
            .finish_non_exhaustive()
    }
}

fn info_with(label: &[u8], algorithm: Algorithm, counter: u8) -> Vec<u8> {
    let mut info = Vec::with_capacity(label.len() + 32);
    info.extend_from_slice(b"keyhaven seeded signing key v1\0");
    info.extend_from_slice(algorithm.jose_name().as_bytes());
    info.push(0);
    info.push(counter);
    info.extend_from_slice(label);
    info
}

fn spki<K: pkcs8::EncodePublicKey>(key: &K, algorithm: Algorithm) -> Result<PublicKey, Error> {
    let der = key.to_public_key_der().map_err(|_| Error::Crypto)?;
    Ok(PublicKey::new(algorithm, der.as_bytes().to_vec()))
}

impl SeededKey {
    /// Derives the `algorithm` key of `material` under `label` (which names what the key is
    /// for: two labels give unrelated keys).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an algorithm that does not sign (X25519, ECDH);
    /// [`Error::InvalidInput`] for material under 16 bytes.
    pub fn derive(algorithm: Algorithm, material: &[u8], label: &[u8]) -> Result<Self, Error> {
        if material.len() < 16 {
            return Err(Error::InvalidInput(
                "a seeded key needs 16 bytes of secret material at least".into(),
            ));
        }
        macro_rules! ecdsa {
            ($krate:ident, $n:literal, $variant:ident) => {{
                // A 32- or 48-byte output is below the order with probability 1 - 2^-32 or
                // better; 255 tries that all fail would take a broken HKDF.
                for counter in 0..=u8::MAX {
                    let bytes =
                        derive_array::<$n>(material, b"", &info_with(label, algorithm, counter))?;
                    if let Ok(key) = $krate::ecdsa::SigningKey::from_slice(bytes.as_ref()) {
                        let public = spki(key.verifying_key(), algorithm)?;
                        return Ok(SeededKey {
                            inner: Inner::$variant(key),
                            public,
                        });
                    }
                }
                Err(Error::Crypto)
            }};
        }
        match algorithm {
            Algorithm::EcdsaP256 => ecdsa!(p256, 32, P256),
            Algorithm::EcdsaP384 => ecdsa!(p384, 48, P384),
            Algorithm::Ed25519 => {
                let seed = derive_array::<32>(material, b"", &info_with(label, algorithm, 0))?;
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let public = spki(&key.verifying_key(), algorithm)?;
                Ok(SeededKey {
                    inner: Inner::Ed25519(key),
                    public,
                })
            }
            other => Err(Error::Unsupported {
                operation: "derive a signing key",
                reason: format!("{} keys do not sign", other.jose_name()),
            }),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs a whole message: Ed25519 (RFC 8032), or ECDSA over the curve's own hash
    /// (SHA-256 for P-256, SHA-384 for P-384). ECDSA nonces are deterministic (RFC 6979).
    ///
    /// # Errors
    /// [`Error::Crypto`] if the curve crate fails.
    pub fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        use signature::Signer;
        let (algorithm, raw) = match &self.inner {
            Inner::P256(k) => {
                let s: p256::ecdsa::Signature = k.try_sign(message).map_err(|_| Error::Crypto)?;
                (Algorithm::EcdsaP256, s.to_bytes().to_vec())
            }
            Inner::P384(k) => {
                let s: p384::ecdsa::Signature = k.try_sign(message).map_err(|_| Error::Crypto)?;
                (Algorithm::EcdsaP384, s.to_bytes().to_vec())
            }
            Inner::Ed25519(k) => {
                let s = k.try_sign(message).map_err(|_| Error::Crypto)?;
                (Algorithm::Ed25519, s.to_bytes().to_vec())
            }
        };
        Signature::from_raw(algorithm, raw)
    }

    /// Signs a digest the caller computed (ECDSA only), of any hash from 16 to 64 bytes: a
    /// longer digest is truncated to the curve's size, as FIPS 186-5 says.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for Ed25519; [`Error::InvalidInput`] for a digest outside 16 to
    /// 64 bytes (24 to 64 for P-384).
    pub fn sign_prehash(&self, digest: &[u8]) -> Result<Signature, Error> {
        use signature::hazmat::PrehashSigner;
        check_prehash(self.algorithm(), digest)?;
        let bad = |_| {
            Error::InvalidInput(format!(
                "a {}-byte digest cannot be signed with {}",
                digest.len(),
                self.algorithm().jose_name()
            ))
        };
        let raw = match &self.inner {
            Inner::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign_prehash(digest).map_err(bad)?;
                s.to_bytes().to_vec()
            }
            Inner::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign_prehash(digest).map_err(bad)?;
                s.to_bytes().to_vec()
            }
            Inner::Ed25519(_) => return Err(crate::eddsa::no_prehash()),
        };
        Signature::from_raw(self.algorithm(), raw)
    }
}

fn check_prehash(algorithm: Algorithm, digest: &[u8]) -> Result<(), Error> {
    let min = match algorithm {
        Algorithm::EcdsaP384 => 24,
        _ => MIN_DIGEST,
    };
    if (min..=MAX_DIGEST).contains(&digest.len()) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "a digest to sign with {} is {min} to {MAX_DIGEST} bytes, not {}",
            algorithm.jose_name(),
            digest.len()
        )))
    }
}

/// Verifies an ECDSA signature over a digest of any hash from 16 to 64 bytes (what
/// [`SeededKey::sign_prehash`] makes); [`crate::verify_digest`] takes only the curve's own
/// hash.
///
/// # Errors
/// [`Error::BadSignature`] when it does not verify; [`Error::Unsupported`] for Ed25519;
/// [`Error::InvalidInput`] for a malformed key or a digest of the wrong size.
pub fn verify_prehash(
    public_key: &PublicKey,
    digest: &[u8],
    signature: &Signature,
) -> Result<(), Error> {
    use pkcs8::DecodePublicKey;
    use signature::hazmat::PrehashVerifier;
    let algorithm = public_key.algorithm();
    if signature.algorithm() != algorithm {
        return Err(Error::InvalidInput(format!(
            "a {} signature does not verify under a {} key",
            signature.algorithm().jose_name(),
            algorithm.jose_name()
        )));
    }
    check_prehash(algorithm, digest)?;
    let bad_key =
        || Error::InvalidInput(format!("not a valid {} public key", algorithm.jose_name()));
    match algorithm {
        Algorithm::EcdsaP256 => {
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(public_key.spki_der())
                .map_err(|_| bad_key())?;
            let sig = p256::ecdsa::Signature::from_slice(signature.as_raw())
                .map_err(|_| Error::BadSignature)?;
            vk.verify_prehash(digest, &sig)
                .map_err(|_| Error::BadSignature)
        }
        Algorithm::EcdsaP384 => {
            let vk = p384::ecdsa::VerifyingKey::from_public_key_der(public_key.spki_der())
                .map_err(|_| bad_key())?;
            let sig = p384::ecdsa::Signature::from_slice(signature.as_raw())
                .map_err(|_| Error::BadSignature)?;
            vk.verify_prehash(digest, &sig)
                .map_err(|_| Error::BadSignature)
        }
        _ => Err(crate::eddsa::no_prehash()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_same_material_and_label_give_the_same_key_and_others_do_not() {
        for alg in [
            Algorithm::EcdsaP256,
            Algorithm::EcdsaP384,
            Algorithm::Ed25519,
        ] {
            let a = SeededKey::derive(alg, &[7; 32], b"one").unwrap();
            let b = SeededKey::derive(alg, &[7; 32], b"one").unwrap();
            let c = SeededKey::derive(alg, &[7; 32], b"two").unwrap();
            let d = SeededKey::derive(alg, &[8; 32], b"one").unwrap();
            assert_eq!(a.public_key(), b.public_key());
            assert_ne!(a.public_key(), c.public_key());
            assert_ne!(a.public_key(), d.public_key());
            let sig = a.sign(b"message").unwrap();
            crate::verify(b.public_key(), b"message", &sig).unwrap();
            assert!(crate::verify(c.public_key(), b"message", &sig).is_err());
        }
        let p256 = SeededKey::derive(Algorithm::EcdsaP256, &[7; 32], b"one").unwrap();
        let p384 = SeededKey::derive(Algorithm::EcdsaP384, &[7; 32], b"one").unwrap();
        assert_ne!(p256.public_key().spki_der(), p384.public_key().spki_der());
    }

    #[test]
    fn prehashed_signatures_take_any_sha2_and_verify_only_for_their_digest() {
        for alg in [Algorithm::EcdsaP256, Algorithm::EcdsaP384] {
            let key = SeededKey::derive(alg, &[1; 32], b"k").unwrap();
            for digest in [
                sha2::Sha256::digest(b"m").to_vec(),
                sha2::Sha384::digest(b"m").to_vec(),
                sha2::Sha512::digest(b"m").to_vec(),
            ] {
                let sig = key.sign_prehash(&digest).unwrap();
                verify_prehash(key.public_key(), &digest, &sig).unwrap();
                let mut other = digest.clone();
                other[0] ^= 1;
                assert!(matches!(
                    verify_prehash(key.public_key(), &other, &sig),
                    Err(Error::BadSignature)
                ));
            }
            // The curve's own hash: the ordinary verifier agrees.
            let own = match alg {
                Algorithm::EcdsaP256 => sha2::Sha256::digest(b"m").to_vec(),
                _ => sha2::Sha384::digest(b"m").to_vec(),
            };
            let sig = key.sign_prehash(&own).unwrap();
            crate::verify(key.public_key(), b"m", &sig).unwrap();
            assert!(key.sign_prehash(&[0; 8]).is_err());
            assert!(key.sign_prehash(&[0; 65]).is_err());
        }
        let ed = SeededKey::derive(Algorithm::Ed25519, &[1; 32], b"k").unwrap();
        assert!(matches!(
            ed.sign_prehash(&[0; 32]),
            Err(Error::Unsupported { .. })
        ));
        assert!(SeededKey::derive(Algorithm::X25519, &[1; 32], b"k").is_err());
        assert!(SeededKey::derive(Algorithm::Ed25519, &[1; 8], b"k").is_err());
    }
}
