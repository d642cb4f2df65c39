//! Any keyhaven key as a RustCrypto signer: [`KeySigner`] implements the `signature` crate's
//! [`Signer`], [`Verifier`] and [`Keypair`] traits, for keyhaven's own [`Signature`] and for
//! the algorithm crates' signature types (`p384::ecdsa::Signature`,
//! `p256::ecdsa::Signature`, `ed25519::Signature`), so a key kept in any store (a PKCS#11
//! token or a TPM included: the private key never leaves it) plugs into code written against
//! those traits.
//!
//! A [`KeySigner`] wraps anything that can [`SignWith`] one key: a store and a key
//! ([`StoreKey`]), or the facade's manager and a key (`keyhaven::KeyManager::signer`, which goes
//! through the facade's checks, audit and access control).

use keyhaven_core::{Algorithm, Error, KeyId, KeyInfo, KeyStore, PublicKey, Signature};
use signature::{Keypair, Signer, Verifier};

/// One key that signs: its public key, and a way to sign a message with it.
pub trait SignWith {
    /// What signing can fail with (it becomes the `signature::Error`'s source).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The key's public key.
    fn public_key(&self) -> &PublicKey;

    /// Signs `message` with the key.
    ///
    /// # Errors
    /// Whatever the store (or the facade) refuses.
    fn sign_message(&self, message: &[u8]) -> Result<Signature, Self::Error>;

    /// Whether `signature` over `message` verifies with the key (what a holder of the public
    /// key would say; the facade also audits the check).
    fn verify_message(&self, message: &[u8], signature: &Signature) -> bool {
        crate::verify(self.public_key(), message, signature).is_ok()
    }
}

/// A key of a [`KeyStore`]: the store and the key's description.
#[derive(Debug, Clone)]
pub struct StoreKey<S> {
    store: S,
    info: KeyInfo,
}

impl<S: KeyStore> StoreKey<S> {
    /// The key `id_or_label` of `store`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the store has no such key.
    pub fn resolve(store: S, id_or_label: &str) -> Result<Self, Error> {
        let info = store.resolve(id_or_label)?;
        Ok(StoreKey { store, info })
    }

    /// The key `id` of `store`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the store has no such key.
    pub fn new(store: S, id: &KeyId) -> Result<Self, Error> {
        let info = store.get(id)?;
        Ok(StoreKey { store, info })
    }

    /// The key's description.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }
}

impl<S: KeyStore> SignWith for StoreKey<S> {
    type Error = Error;

    fn public_key(&self) -> &PublicKey {
        &self.info.public_key
    }

    fn sign_message(&self, message: &[u8]) -> Result<Signature, Error> {
        self.store.sign(&self.info.id, message)
    }
}

/// A key that signs, as the `signature` crate's traits see it (see the [module](self)).
#[derive(Debug, Clone)]
pub struct KeySigner<T>(pub T);

impl<T: SignWith> KeySigner<T> {
    fn sign_as(&self, algorithm: Algorithm, message: &[u8]) -> Result<Signature, signature::Error> {
        if self.0.public_key().algorithm() != algorithm {
            return Err(signature::Error::from_source(Error::InvalidInput(format!(
                "the key is {}, not {}",
                self.0.public_key().algorithm(),
                algorithm
            ))));
        }
        self.0
            .sign_message(message)
            .map_err(signature::Error::from_source)
    }

    fn check(&self, message: &[u8], signature: &Signature) -> Result<(), signature::Error> {
        // No cause: the `signature` crate asks that verification failures carry none.
        if self.0.verify_message(message, signature) {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl<T: SignWith> Signer<Signature> for KeySigner<T> {
    fn try_sign(&self, message: &[u8]) -> Result<Signature, signature::Error> {
        self.0
            .sign_message(message)
            .map_err(signature::Error::from_source)
    }
}

impl<T: SignWith> Verifier<Signature> for KeySigner<T> {
    fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), signature::Error> {
        self.check(message, signature)
    }
}

impl<T: SignWith> Keypair for KeySigner<T> {
    type VerifyingKey = PublicKey;

    fn verifying_key(&self) -> PublicKey {
        self.0.public_key().clone()
    }
}

/// `Signer` and `Verifier` for an algorithm crate's signature type: keyhaven's raw signature
/// (`r || s`, or Ed25519's 64 bytes) converted both ways.
macro_rules! typed {
    ($algorithm:expr, $ty:ty, $from_raw:expr) => {
        impl<T: SignWith> Signer<$ty> for KeySigner<T> {
            fn try_sign(&self, message: &[u8]) -> Result<$ty, signature::Error> {
                let sig = self.sign_as($algorithm, message)?;
                let from_raw: fn(&[u8]) -> Option<$ty> = $from_raw;
                from_raw(sig.as_raw()).ok_or_else(signature::Error::new)
            }
        }

        impl<T: SignWith> Verifier<$ty> for KeySigner<T> {
            fn verify(&self, message: &[u8], signature: &$ty) -> Result<(), signature::Error> {
                let raw = Signature::from_raw($algorithm, signature.to_bytes().to_vec())
                    .map_err(|_| signature::Error::new())?;
                self.check(message, &raw)
            }
        }
    };
}

typed!(Algorithm::EcdsaP384, p384::ecdsa::Signature, |raw| {
    p384::ecdsa::Signature::from_slice(raw).ok()
});
typed!(Algorithm::EcdsaP256, p256::ecdsa::Signature, |raw| {
    p256::ecdsa::Signature::from_slice(raw).ok()
});
typed!(Algorithm::Ed25519, ed25519_dalek::Signature, |raw| {
    ed25519_dalek::Signature::from_slice(raw).ok()
});
