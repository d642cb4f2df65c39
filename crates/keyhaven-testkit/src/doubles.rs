//! Test doubles shared by every crate's tests: [`FaultyStore`] wraps a real store and injects
//! the failures a device or a broken backend shows (gone, an import failing, keys that cannot
//! leave, an import that keeps the wrong key), beside the real thing, never instead of it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyDetails, KeyId, KeyInfo, KeySpec, KeyStore, PublicKey,
    Result, SecretBytes, SecretString, Signature,
};

/// A store that passes every call to `inner` except the faults switched on.
///
/// ```
/// use keyhaven_core::{Algorithm, ErrorKind, KeyStore};
/// use keyhaven_testkit::FaultyStore;
/// # fn demo(inner: impl KeyStore) {
/// let store = FaultyStore::new(inner);
/// store.set_gone(true); // as if the token were pulled out
/// let err = store.generate(Algorithm::EcdsaP256, "k").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unavailable);
/// # }
/// ```
pub struct FaultyStore<S> {
    inner: S,
    gone: AtomicBool,
    no_export: AtomicBool,
    lying_import: AtomicBool,
    imports: AtomicUsize,
    fail_import_at: Mutex<Option<usize>>,
}

impl<S: KeyStore> FaultyStore<S> {
    /// `inner` with no fault switched on.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            gone: AtomicBool::new(false),
            no_export: AtomicBool::new(false),
            lying_import: AtomicBool::new(false),
            imports: AtomicUsize::new(0),
            fail_import_at: Mutex::new(None),
        }
    }

    /// Like a hardware store: keys can be neither exported nor imported.
    #[must_use]
    pub fn hardware_like(self) -> Self {
        self.no_export.store(true, Ordering::SeqCst);
        self
    }

    /// Fails the `n`th import (0-based) as unavailable.
    #[must_use]
    pub fn failing_import_at(self, n: usize) -> Self {
        *self
            .fail_import_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(n);
        self
    }

    /// "Imports" by generating a fresh key under the label: recovery checks must catch it.
    #[must_use]
    pub fn lying_on_import(self) -> Self {
        self.lying_import.store(true, Ordering::SeqCst);
        self
    }

    /// Makes the store unreachable (every operation but `info` and `get` is `Unavailable`), or
    /// reachable again.
    pub fn set_gone(&self, gone: bool) {
        self.gone.store(gone, Ordering::SeqCst);
    }

    /// Counts an import, failing it where [`FaultyStore::failing_import_at`] says.
    fn import_gate(&self) -> Result<()> {
        self.up()?;
        self.refuse("import a private key")?;
        let n = self.imports.fetch_add(1, Ordering::SeqCst);
        let fail_at = *self
            .fail_import_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fail_at == Some(n) {
            return Err(Error::Unavailable {
                backend: "faulty".into(),
                reason: "injected import failure".into(),
            });
        }
        Ok(())
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn up(&self) -> Result<()> {
        if self.gone.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "faulty".into(),
                reason: "token not present".into(),
            });
        }
        Ok(())
    }

    fn refuse(&self, operation: &'static str) -> Result<()> {
        if self.no_export.load(Ordering::SeqCst) {
            return Err(Error::Unsupported {
                operation,
                reason: "keys of this store never leave it".into(),
            });
        }
        Ok(())
    }
}

impl<S: KeyStore> KeyStore for FaultyStore<S> {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        self.up()?;
        self.inner.generate(algorithm, label)
    }
    fn generate_with(&self, spec: &KeySpec) -> Result<KeyInfo> {
        self.up()?;
        self.inner.generate_with(spec)
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        self.up()?;
        self.inner.list()
    }
    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        self.inner.get(id)
    }
    fn details(&self, id: &KeyId) -> Result<KeyDetails> {
        self.up()?;
        self.inner.details(id)
    }
    fn unlock(&self, id: &KeyId, secret: &SecretString) -> Result<()> {
        self.up()?;
        self.inner.unlock(id, secret)
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.up()?;
        self.inner.sign(id, message)
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        self.up()?;
        self.inner.sign_digest(id, digest)
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.up()?;
        self.inner.agree(id, peer)
    }
    fn delete(&self, id: &KeyId) -> Result<()> {
        self.up()?;
        self.inner.delete(id)
    }
    fn check(&self) -> Result<Vec<Error>> {
        self.up()?;
        self.inner.check()
    }
    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        self.import_gate()?;
        if self.lying_import.load(Ordering::SeqCst) {
            let real = self.inner.import_pkcs8(label, pkcs8_der)?;
            self.inner.delete(&real.id)?;
            return self.inner.generate(real.algorithm, label);
        }
        self.inner.import_pkcs8(label, pkcs8_der)
    }
    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        // Only keys an import cannot bring back as what they are (ECDH keys, whose PKCS#8 is an
        // ECDSA key's) come back this way; the rest go through `import_pkcs8` as before.
        if !original.algorithm.is_nist_ecdh() {
            return Err(Error::Unsupported {
                operation: "restore a key under its id",
                reason: "the faulty store imports instead".into(),
            });
        }
        self.import_gate()?;
        if self.lying_import.load(Ordering::SeqCst) {
            return self.inner.generate(original.algorithm, label);
        }
        let mut fresh = original.clone();
        fresh.id = KeyId::generate()?;
        self.inner.restore_pkcs8(&fresh, label, pkcs8_der)
    }
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        self.up()?;
        self.refuse("export a private key")?;
        self.inner.export_pkcs8(id)
    }
    fn export_wrapped(&self, id: &KeyId) -> Result<Vec<u8>> {
        self.up()?;
        self.inner.export_wrapped(id)
    }
    fn attest_key(&self, id: &KeyId, challenge: &[u8]) -> Result<keyhaven_core::KeyAttestation> {
        self.up()?;
        self.inner.attest_key(id, challenge)
    }
    fn restore_wrapped(&self, original: &KeyInfo, label: &str, wrapped: &[u8]) -> Result<KeyInfo> {
        self.up()?;
        self.inner.restore_wrapped(original, label, wrapped)
    }
}
