//! What signs a client's requests: any keyhaven key, wherever it lives.

use std::fmt;
use std::sync::Arc;

use keyhaven_core::{KeyId, KeyInfo, KeyStore, PublicKey, Signature};

/// A key that signs requests. The private key stays where it is: [`RequestSigner::sign`] asks
/// its store (an encrypted file, a PKCS#11 token, a TPM) for a signature over the bytes given.
///
/// Signing may block (a token, a TPM): the client calls it on tokio's blocking pool.
pub trait RequestSigner: Send + Sync + 'static {
    /// The public key, whose fingerprint is the signatures' `keyid`.
    fn public_key(&self) -> &PublicKey;

    /// Signs `data` (the RFC 9421 signature base).
    ///
    /// # Errors
    /// The store's error (a locked token, a revoked key, an X25519 key).
    fn sign(&self, data: &[u8]) -> keyhaven_core::Result<Signature>;
}

/// A key of a [`KeyStore`] as a [`RequestSigner`].
#[derive(Clone)]
pub struct StoreSigner {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
}

impl fmt::Debug for StoreSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSigner")
            .field("key", &self.key.id)
            .field("fingerprint", &self.key.fingerprint().to_hex())
            .finish_non_exhaustive()
    }
}

impl StoreSigner {
    /// Key `id` of `store`.
    ///
    /// # Errors
    /// The store's error if it has no such key; `Unsupported` for a key that cannot sign.
    pub fn new(store: Arc<dyn KeyStore>, id: &KeyId) -> keyhaven_core::Result<Self> {
        let key = store.get(id)?;
        if !key.algorithm.can_sign() {
            return Err(keyhaven_core::Error::Unsupported {
                operation: "sign requests",
                reason: format!("key {id} is an {} key, which never signs", key.algorithm),
            });
        }
        Ok(StoreSigner { store, key })
    }

    /// The key.
    pub fn key(&self) -> &KeyInfo {
        &self.key
    }
}

impl RequestSigner for StoreSigner {
    fn public_key(&self) -> &PublicKey {
        &self.key.public_key
    }

    fn sign(&self, data: &[u8]) -> keyhaven_core::Result<Signature> {
        self.store.sign(&self.key.id, data)
    }
}
