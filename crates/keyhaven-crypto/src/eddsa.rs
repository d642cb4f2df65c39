//! Ed25519 (RFC 8032) with `ed25519-dalek`; verification is strict (no malleable signatures,
//! no small-order keys).

use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};

use crate::provider::{KeyAlgorithm, PrivateKey};

fn no_prehash() -> Error {
    Error::Unsupported {
        operation: "sign or verify a prehashed digest",
        reason: "Ed25519 (PureEdDSA) signs whole messages; pass the message instead".into(),
    }
}

/// Ed25519.
#[derive(Debug)]
pub(crate) struct Ed25519;

struct Ed25519Key {
    signing: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl Ed25519Key {
    fn new(signing: ed25519_dalek::SigningKey) -> Result<Self, Error> {
        use pkcs8::EncodePublicKey;
        let der = signing
            .verifying_key()
            .to_public_key_der()
            .map_err(|_| Error::Crypto)?;
        Ok(Ed25519Key {
            signing,
            public: PublicKey::new(Algorithm::Ed25519, der.as_bytes().to_vec()),
        })
    }
}

impl PrivateKey for Ed25519Key {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        use signature::Signer;
        let sig = self.signing.try_sign(message).map_err(|_| Error::Crypto)?;
        Signature::from_raw(Algorithm::Ed25519, sig.to_bytes().to_vec())
    }

    fn sign_digest(&self, _digest: &[u8]) -> Result<Signature, Error> {
        Err(no_prehash())
    }

    fn agree(&self, _peer: &PublicKey) -> Result<SecretBytes, Error> {
        Err(Error::Unsupported {
            operation: "do key agreement",
            reason: "Ed25519 keys only sign; use an X25519 key".into(),
        })
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
        use pkcs8::EncodePrivateKey;
        let doc = self.signing.to_pkcs8_der().map_err(|_| Error::Crypto)?;
        Ok(SecretBytes::copy_from(doc.as_bytes()))
    }
}

impl Ed25519 {
    fn verifying_key(spki_der: &[u8]) -> Result<ed25519_dalek::VerifyingKey, Error> {
        use pkcs8::DecodePublicKey;
        ed25519_dalek::VerifyingKey::from_public_key_der(spki_der)
            .map_err(|_| Error::InvalidInput("not a valid Ed25519 public key".into()))
    }
}

impl KeyAlgorithm for Ed25519 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }

    fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
        algorithm.oid == ed25519_dalek::pkcs8::ALGORITHM_OID
    }

    fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
        let mut rng = crate::rng::os_rng()?;
        Ok(Box::new(Ed25519Key::new(
            ed25519_dalek::SigningKey::generate(&mut rng),
        )?))
    }

    fn from_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
        use pkcs8::DecodePrivateKey;
        let signing = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|_| Error::InvalidInput("not a valid Ed25519 PKCS#8 private key".into()))?;
        Ok(Box::new(Ed25519Key::new(signing)?))
    }

    fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
        let vk = Self::verifying_key(spki_der)?;
        if vk.is_weak() {
            return Err(Error::InvalidInput(
                "the Ed25519 public key is a small-order point".into(),
            ));
        }
        Ok(())
    }

    fn verify(&self, spki_der: &[u8], message: &[u8], sig: &[u8]) -> Result<(), Error> {
        let vk = Self::verifying_key(spki_der)?;
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| Error::BadSignature)?;
        vk.verify_strict(message, &sig)
            .map_err(|_| Error::BadSignature)
    }

    fn verify_digest(&self, _spki_der: &[u8], _digest: &[u8], _sig: &[u8]) -> Result<(), Error> {
        Err(no_prehash())
    }
}
