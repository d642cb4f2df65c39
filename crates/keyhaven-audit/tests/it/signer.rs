//! A one-key software store for the audit key, through the `KeyStore` trait (no same-layer
//! backend as a dev-dependency).

use std::sync::{Arc, Mutex};

use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyId, KeyInfo, KeyStore, Protection, PublicKey, Result,
    SecretBytes, Signature,
};
use keyhaven_crypto::{PrivateKey, default_provider};

#[derive(Default)]
pub struct OneKeyStore {
    key: Mutex<Option<(KeyInfo, Arc<dyn PrivateKey>)>>,
}

impl OneKeyStore {
    fn key(&self, id: &KeyId) -> Result<(KeyInfo, Arc<dyn PrivateKey>)> {
        match &*self.key.lock().unwrap() {
            Some((info, k)) if &info.id == id => Ok((info.clone(), k.clone())),
            _ => Err(Error::key_not_found(id)),
        }
    }
}

impl KeyStore for OneKeyStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("test", Protection::SoftwarePlain, "memory")
    }
    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        let k: Arc<dyn PrivateKey> = default_provider().generate(algorithm)?.into();
        let info = KeyInfo::new(
            KeyId::generate()?,
            label.to_owned(),
            Protection::SoftwarePlain,
            k.public_key().clone(),
            0,
        );
        *self.key.lock().unwrap() = Some((info.clone(), k));
        Ok(info)
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        Ok(self
            .key
            .lock()
            .unwrap()
            .iter()
            .map(|(i, _)| i.clone())
            .collect())
    }
    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        Ok(self.key(id)?.0)
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.key(id)?.1.sign(message)
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        self.key(id)?.1.sign_digest(digest)
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.key(id)?.1.agree(peer)
    }
    fn delete(&self, _id: &KeyId) -> Result<()> {
        Err(Error::Unsupported {
            operation: "delete",
            reason: "test store".into(),
        })
    }
}
