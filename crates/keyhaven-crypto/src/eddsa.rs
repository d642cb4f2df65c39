//! Ed25519 (RFC 8032) with `ed25519-dalek`; verification is strict (no malleable signatures,
//! no small-order keys).

use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};

use crate::provider::{KeyAlgorithm, PrivateKey};

/// PKCS#8 v1 DER up to the 32-byte seed: version 0, id-Ed25519, OCTET STRING { OCTET STRING }.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// SPKI DER up to the 32-byte point: SEQUENCE { SEQUENCE { OID id-Ed25519 }, BIT STRING }.
#[cfg_attr(not(feature = "aws-lc-rs"), allow(dead_code))]
pub(crate) const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The 32-byte point of Ed25519 SPKI DER, once checked as `check_public_key` checks it (a
/// valid encoding, not of small order). The last point checked on this thread is
/// remembered, so verifying many signatures of one key checks it once.
#[cfg(feature = "aws-lc-rs")]
pub(crate) fn checked_point(spki_der: &[u8]) -> Result<&[u8], Error> {
    use std::cell::RefCell;
    thread_local! {
        static LAST_GOOD: RefCell<Option<[u8; 32]>> = const { RefCell::new(None) };
    }
    let point = spki_der
        .strip_prefix(&SPKI_PREFIX[..])
        .filter(|p| p.len() == 32)
        .ok_or_else(|| Error::InvalidInput("not a valid Ed25519 public key".into()))?;
    let known = LAST_GOOD.with(|l| l.borrow().as_ref().is_some_and(|k| k[..] == *point));
    if !known {
        Ed25519.check_public_key(spki_der)?;
        let mut copy = [0u8; 32];
        copy.copy_from_slice(point);
        LAST_GOOD.with(|l| *l.borrow_mut() = Some(copy));
    }
    Ok(point)
}

pub(crate) fn no_prehash() -> Error {
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
        Err(crate::ecdsa_impl::no_agreement("Ed25519"))
    }

    /// PKCS#8 v1 (RFC 8410), as OpenSSL writes it. `ed25519-dalek` writes v2 (with the public
    /// key), which OpenSSL 3.0 refuses to load; v1 is read everywhere.
    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
        let seed = zeroize::Zeroizing::new(self.signing.to_bytes());
        let mut der = Vec::with_capacity(PKCS8_V1_PREFIX.len() + 32);
        der.extend_from_slice(&PKCS8_V1_PREFIX);
        der.extend_from_slice(seed.as_ref());
        Ok(SecretBytes::new(der))
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

    fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
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
