//! Store wrappers that inject faults around a real `MemoryStore`.

use std::sync::atomic::{AtomicUsize, Ordering};

use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyId, KeyInfo, KeyStore, PublicKey, Result, SecretBytes,
    Signature,
};
use keyhaven_store_memory::MemoryStore;

macro_rules! delegate_common {
    () => {
        fn info(&self) -> BackendInfo {
            self.inner().info()
        }
        fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
            self.inner().generate(algorithm, label)
        }
        fn list(&self) -> Result<Vec<KeyInfo>> {
            self.inner().list()
        }
        fn get(&self, id: &KeyId) -> Result<KeyInfo> {
            self.inner().get(id)
        }
        fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
            self.inner().sign(id, message)
        }
        fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
            self.inner().sign_digest(id, digest)
        }
        fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
            self.inner().agree(id, peer)
        }
    };
}

/// A "hardware" store: keys cannot be exported or imported.
pub struct NoExport(pub MemoryStore);

impl NoExport {
    fn inner(&self) -> &MemoryStore {
        &self.0
    }
}

impl KeyStore for NoExport {
    delegate_common!();
    fn delete(&self, id: &KeyId) -> Result<()> {
        self.0.delete(id)
    }
}

/// Fails the Nth `import_pkcs8` (0-based) and, optionally, every `delete` of a given id.
pub struct FailingImport {
    pub inner: MemoryStore,
    pub fail_at: usize,
    pub imports: AtomicUsize,
}

impl FailingImport {
    pub fn new(inner: MemoryStore, fail_at: usize) -> Self {
        FailingImport {
            inner,
            fail_at,
            imports: AtomicUsize::new(0),
        }
    }
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }
}

impl KeyStore for FailingImport {
    delegate_common!();
    fn delete(&self, id: &KeyId) -> Result<()> {
        self.inner.delete(id)
    }
    fn import_pkcs8(&self, label: &str, der: &SecretBytes) -> Result<KeyInfo> {
        if self.imports.fetch_add(1, Ordering::SeqCst) == self.fail_at {
            return Err(Error::Unavailable {
                backend: "test".into(),
                reason: "injected import failure".into(),
            });
        }
        self.inner.import_pkcs8(label, der)
    }
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        self.inner.export_pkcs8(id)
    }
}

/// A store that "imports" by generating a fresh key: recovery verification must catch it.
pub struct Lying(pub MemoryStore);

impl Lying {
    fn inner(&self) -> &MemoryStore {
        &self.0
    }
}

impl KeyStore for Lying {
    delegate_common!();
    fn delete(&self, id: &KeyId) -> Result<()> {
        self.0.delete(id)
    }
    fn import_pkcs8(&self, label: &str, der: &SecretBytes) -> Result<KeyInfo> {
        let real = self.0.import_pkcs8(label, der)?;
        self.0.delete(&real.id)?;
        self.0.generate(real.algorithm, label)
    }
}
