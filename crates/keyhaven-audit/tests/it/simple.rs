//! A small software key store on keyhaven-crypto, under the decorators in tests and benches (no
//! same-layer backend as a dev-dependency). It counts private-key uses so tests can prove a
//! refused operation never reached the key.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyId, KeyInfo, KeyStore, Protection, PublicKey, Result,
    SecretBytes, Signature, unix_now, validate_label,
};
use keyhaven_crypto::{PrivateKey, default_provider};

type Keys = BTreeMap<KeyId, (KeyInfo, Box<dyn PrivateKey>)>;

pub struct SimpleStore {
    protection: Protection,
    keys: RwLock<Keys>,
    /// Private-key uses: sign, sign_digest, agree, export.
    pub uses: AtomicU64,
}

impl SimpleStore {
    pub fn new(protection: Protection) -> Self {
        SimpleStore {
            protection,
            keys: RwLock::new(BTreeMap::new()),
            uses: AtomicU64::new(0),
        }
    }

    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::SeqCst)
    }

    fn with_key<T>(&self, id: &KeyId, f: impl FnOnce(&dyn PrivateKey) -> Result<T>) -> Result<T> {
        let keys = self.keys.read().map_err(|_| Error::Crypto)?;
        let (_, key) = keys.get(id).ok_or_else(|| Error::key_not_found(id))?;
        self.uses.fetch_add(1, Ordering::SeqCst);
        f(key.as_ref())
    }

    fn insert(&self, label: &str, key: Box<dyn PrivateKey>) -> Result<KeyInfo> {
        validate_label(label)?;
        let info = KeyInfo::new(
            KeyId::generate()?,
            label.to_owned(),
            self.protection,
            key.public_key().clone(),
            unix_now(),
        );
        let mut keys = self.keys.write().map_err(|_| Error::Crypto)?;
        if keys.values().any(|(i, _)| i.label == label) {
            return Err(Error::AlreadyExists(format!("a key labelled '{label}'")));
        }
        keys.insert(info.id.clone(), (info.clone(), key));
        Ok(info)
    }
}

impl KeyStore for SimpleStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("simple", self.protection, "test memory")
    }
    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = default_provider().generate(algorithm)?;
        self.insert(label, key)
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        let keys = self.keys.read().map_err(|_| Error::Crypto)?;
        Ok(keys.values().map(|(i, _)| i.clone()).collect())
    }
    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        let keys = self.keys.read().map_err(|_| Error::Crypto)?;
        keys.get(id)
            .map(|(i, _)| i.clone())
            .ok_or_else(|| Error::key_not_found(id))
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.with_key(id, |k| k.sign(message))
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        self.with_key(id, |k| {
            k.public_key().algorithm().check_digest(digest)?;
            k.sign_digest(digest)
        })
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.with_key(id, |k| k.agree(peer))
    }
    fn delete(&self, id: &KeyId) -> Result<()> {
        let mut keys = self.keys.write().map_err(|_| Error::Crypto)?;
        keys.remove(id)
            .map(|_| ())
            .ok_or_else(|| Error::key_not_found(id))
    }
    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        if self.protection == Protection::Hardware {
            return Err(Error::Unsupported {
                operation: "import a private key",
                reason: "hardware test store".into(),
            });
        }
        validate_label(label)?;
        let key = default_provider().load_pkcs8(pkcs8_der.expose_secret())?;
        self.insert(label, key)
    }
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        if self.protection == Protection::Hardware {
            return Err(Error::Unsupported {
                operation: "export a private key",
                reason: "hardware test store".into(),
            });
        }
        self.with_key(id, |k| k.to_pkcs8_der())
    }
}
