#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::RwLock;

use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyId, KeyInfo, KeyStore, Protection, PublicKey, Result,
    SecretBytes, Signature, unix_now, validate_label,
};
use keyhaven_crypto::aead::Sealer;
use keyhaven_crypto::{CryptoProvider, PrivateKey, default_provider, fill_random};
use zeroize::Zeroizing;

struct Entry {
    info: KeyInfo,
    nonce: [u8; 12],
    sealed: Vec<u8>,
}

/// An in-memory key store whose key material is sealed under a per-store random key.
pub struct MemoryStore {
    provider: &'static CryptoProvider,
    cipher: Sealer,
    keys: RwLock<BTreeMap<KeyId, Entry>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.keys.read().map(|k| k.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

fn poisoned() -> Error {
    Error::Unavailable {
        backend: "memory".into(),
        reason: "a thread panicked while holding the store lock".into(),
    }
}

impl MemoryStore {
    /// A new empty store with the default crypto provider.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the OS cannot supply the sealing key.
    pub fn new() -> Result<Self> {
        Self::with_provider(default_provider())
    }

    /// A new empty store with a given crypto provider.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the OS cannot supply the sealing key.
    pub fn with_provider(provider: &'static CryptoProvider) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut())?;
        let cipher = Sealer::new(key.as_ref())?;
        Ok(MemoryStore {
            provider,
            cipher,
            keys: RwLock::new(BTreeMap::new()),
        })
    }

    fn seal(&self, id: &KeyId, key: &dyn PrivateKey) -> Result<([u8; 12], Vec<u8>)> {
        let pkcs8 = key.to_pkcs8_der()?;
        self.cipher
            .seal(pkcs8.expose_secret(), id.as_str().as_bytes())
    }

    /// Opens a key's seal for one operation; the returned key zeroizes itself on drop.
    fn open(&self, id: &KeyId) -> Result<Box<dyn PrivateKey>> {
        let keys = self.keys.read().map_err(|_| poisoned())?;
        let entry = keys.get(id).ok_or_else(|| Error::key_not_found(id))?;
        let pkcs8 = self
            .cipher
            .open(&entry.nonce, &entry.sealed, id.as_str().as_bytes())
            .ok_or_else(|| Error::corrupt(format!("memory key {id}"), "seal does not open"))?;
        let algorithm = entry.info.algorithm;
        drop(keys);
        self.provider.load_pkcs8_as(algorithm, &pkcs8)
    }

    fn insert(&self, label: &str, key: &dyn PrivateKey) -> Result<KeyInfo> {
        self.insert_as(KeyId::generate()?, label, key, unix_now())
    }

    fn insert_as(
        &self,
        id: KeyId,
        label: &str,
        key: &dyn PrivateKey,
        created_at: u64,
    ) -> Result<KeyInfo> {
        validate_label(label)?;
        let (nonce, sealed) = self.seal(&id, key)?;
        let info = KeyInfo::new(
            id.clone(),
            label.to_owned(),
            Protection::SoftwareEncrypted,
            key.public_key().clone(),
            created_at,
        );
        let mut keys = self.keys.write().map_err(|_| poisoned())?;
        if keys.values().any(|e| e.info.label == label) {
            return Err(Error::AlreadyExists(format!("a key labelled '{label}'")));
        }
        if keys.contains_key(&id) {
            return Err(Error::AlreadyExists(format!("a key with id {id}")));
        }
        keys.insert(
            id,
            Entry {
                info: info.clone(),
                nonce,
                sealed,
            },
        );
        Ok(info)
    }
}

impl KeyStore for MemoryStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("memory", Protection::SoftwareEncrypted, "process memory")
    }

    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = self.provider.generate(algorithm)?;
        self.insert(label, key.as_ref())
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let keys = self.keys.read().map_err(|_| poisoned())?;
        Ok(keys.values().map(|e| e.info.clone()).collect())
    }

    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        let keys = self.keys.read().map_err(|_| poisoned())?;
        keys.get(id)
            .map(|e| e.info.clone())
            .ok_or_else(|| Error::key_not_found(id))
    }

    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.open(id)?.sign(message)
    }

    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        let algorithm = self.get(id)?.algorithm;
        algorithm.check_digest(digest)?;
        self.open(id)?.sign_digest(digest)
    }

    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.open(id)?.agree(peer)
    }

    fn delete(&self, id: &KeyId) -> Result<()> {
        let mut keys = self.keys.write().map_err(|_| poisoned())?;
        keys.remove(id)
            .map(|_| ())
            .ok_or_else(|| Error::key_not_found(id))
    }

    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = self.provider.load_pkcs8(pkcs8_der.expose_secret())?;
        self.insert(label, key.as_ref())
    }

    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        let key = self
            .provider
            .load_restored(original, pkcs8_der.expose_secret())?;
        self.insert_as(
            original.id.clone(),
            label,
            key.as_ref(),
            original.created_at,
        )
    }

    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        self.open(id)?.to_pkcs8_der()
    }
}
