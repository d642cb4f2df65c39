//! Deleted keys stay deleted: a key record copied back into a store after `delete` (its seal
//! still verifies: records are authenticated one by one, not as a set) refuses private
//! operations, because the home's authenticated state remembers the deletion.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use keyhaven_core::{
    Error as CoreError, ErrorKind, KeyId, KeyInfo, KeyStore, PublicKey, Result as CoreResult,
    SecretBytes, Signature,
};
use keyhaven_fs::StateFiles;

/// The file inside the home that lists the deleted keys, by backend and id.
pub(crate) const TOMBSTONES: &str = "deleted-keys.json";

/// The decorator: records deletions, refuses private operations with deleted keys.
pub(crate) struct TombstoneStore<S> {
    inner: S,
    backend: String,
    state: Arc<dyn StateFiles>,
    path: PathBuf,
    /// The list as last parsed, with the bytes it was parsed from (checked on every private
    /// operation, so it is parsed again only when it changed).
    parsed: std::sync::Mutex<Option<Parsed>>,
}

/// The bytes the list was parsed from, and the list.
type Parsed = (Vec<u8>, Arc<BTreeSet<String>>);

impl<S> TombstoneStore<S> {
    /// `inner`, as backend `backend`, with the list at `path` read and written through `state`.
    pub(crate) fn new(inner: S, backend: &str, state: Arc<dyn StateFiles>, path: PathBuf) -> Self {
        TombstoneStore {
            inner,
            backend: backend.to_owned(),
            state,
            path,
            parsed: std::sync::Mutex::new(None),
        }
    }

    fn entry(&self, id: &KeyId) -> String {
        format!("{}:{id}", self.backend)
    }

    fn read(&self) -> CoreResult<Arc<BTreeSet<String>>> {
        let Some(bytes) = self.state.read(&self.path)? else {
            return Ok(Arc::new(BTreeSet::new()));
        };
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((b, set)) = parsed.as_ref()
            && b.as_slice() == bytes.as_slice()
        {
            return Ok(set.clone());
        }
        let set: Arc<BTreeSet<String>> = Arc::new(serde_json::from_slice(&bytes).map_err(|e| {
            CoreError::corrupt(
                self.path.display().to_string(),
                format!("not a list of deleted keys: {e}"),
            )
        })?);
        *parsed = Some((bytes.to_vec(), set.clone()));
        Ok(set)
    }

    fn write(&self, set: &BTreeSet<String>) -> CoreResult<()> {
        let json = serde_json::to_vec(set)
            .map_err(|e| CoreError::InvalidInput(format!("cannot encode deleted keys: {e}")))?;
        self.state.write(&self.path, &json)
    }

    fn update(&self, f: impl FnOnce(&mut BTreeSet<String>)) -> CoreResult<()> {
        let _lock = keyhaven_fs::FileLock::acquire(&self.path.with_extension("lock"))?;
        let before = self.read()?;
        let mut set = (*before).clone();
        f(&mut set);
        if set != *before {
            self.write(&set)?;
        }
        Ok(())
    }

    fn ensure_live(&self, id: &KeyId) -> CoreResult<()>
    where
        S: KeyStore,
    {
        if self.read()?.contains(&self.entry(id)) {
            // Deleted and gone: what any store says of a key it does not hold.
            if let Err(e) = self.inner.get(id)
                && e.is(ErrorKind::NotFound)
            {
                return Err(e);
            }
            return Err(CoreError::corrupt(
                self.path.display().to_string(),
                format!(
                    "key {id} of backend '{}' was deleted, but its record is back in the store \\
                     (put back outside keyhaven): remove it, or restore it from a backup",
                    self.backend
                ),
            ));
        }
        Ok(())
    }
}

impl<S: KeyStore> KeyStore for TombstoneStore<S> {
    keyhaven_core::forward_key_store!(inner; info, generate, generate_with, list, get,
        find_by_label, resolve, public_key, check, import_pkcs8, attest_key);

    fn details(&self, id: &KeyId) -> CoreResult<keyhaven_core::KeyDetails> {
        self.ensure_live(id)?;
        self.inner.details(id)
    }

    fn unlock(&self, id: &KeyId, secret: &keyhaven_core::SecretString) -> CoreResult<()> {
        self.ensure_live(id)?;
        self.inner.unlock(id, secret)
    }

    fn sign(&self, id: &KeyId, message: &[u8]) -> CoreResult<Signature> {
        self.ensure_live(id)?;
        self.inner.sign(id, message)
    }

    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> CoreResult<Signature> {
        self.ensure_live(id)?;
        self.inner.sign_digest(id, digest)
    }

    fn agree(&self, id: &KeyId, peer: &PublicKey) -> CoreResult<SecretBytes> {
        self.ensure_live(id)?;
        self.inner.agree(id, peer)
    }

    fn export_pkcs8(&self, id: &KeyId) -> CoreResult<SecretBytes> {
        self.ensure_live(id)?;
        self.inner.export_pkcs8(id)
    }

    /// The tombstone is written first: if it cannot be, nothing is deleted; a tombstone for a
    /// key whose delete then failed only fails safe (the key refuses private operations).
    fn delete(&self, id: &KeyId) -> CoreResult<()> {
        let entry = self.entry(id);
        self.update(|set| {
            set.insert(entry);
        })?;
        self.inner.delete(id)
    }

    /// A backup restored by its owner brings a deleted key back on purpose.
    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> CoreResult<KeyInfo> {
        let info = self.inner.restore_pkcs8(original, label, pkcs8_der)?;
        let entry = self.entry(&info.id);
        self.update(|set| {
            set.remove(&entry);
        })?;
        Ok(info)
    }

    fn export_wrapped(&self, id: &KeyId) -> CoreResult<Vec<u8>> {
        self.ensure_live(id)?;
        self.inner.export_wrapped(id)
    }

    /// As a restored PKCS#8 key: its owner brings it back on purpose.
    fn restore_wrapped(
        &self,
        original: &KeyInfo,
        label: &str,
        wrapped: &[u8],
    ) -> CoreResult<KeyInfo> {
        let info = self.inner.restore_wrapped(original, label, wrapped)?;
        let entry = self.entry(&info.id);
        self.update(|set| {
            set.remove(&entry);
        })?;
        Ok(info)
    }
}
