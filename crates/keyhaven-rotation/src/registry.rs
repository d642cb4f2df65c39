//! The registry of logical keys: one JSON file per logical key in a private directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyhaven_core::{Error as CoreError, KeyId, KeyInfo};
use keyhaven_fs::{FileLock, PlainState, StateFiles, create_private_dir};

use crate::error::{Result, RotationError};
use crate::state::{LogicalKey, Role, SecurityLevel};

const KEYS: &str = "keys";
/// `versions/<version key id>` holds the id of the logical key the version belongs to, so a key
/// is looked up with two file checks however many logical keys there are.
const VERSIONS: &str = "versions";
const LOCK: &str = "registry.lock";
pub(crate) const ROTATE_LOCK: &str = "rotate.lock";

/// Logical keys and their versions, kept as `DIR/keys/<logical id>.json` (0600 files in 0700
/// directories, written atomically and durably). Every change is a read-modify-write under an
/// exclusive lock on `DIR/registry.lock`, so processes sharing the directory never lose an
/// update. Keys never adopted are not in the registry ("unversioned": show them as v1 primary).
///
/// Files are read and written through a [`StateFiles`] ([`Registry::with_state`]): in a sealed
/// keyhaven home every entry is checked against the home's integrity manifest, so an entry
/// edited, swapped, rolled back or removed outside keyhaven is reported (for that key only).
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
    state: Arc<dyn StateFiles>,
}

impl Registry {
    /// Opens the registry at `dir`, creating it (0700) if missing.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::PermissionDenied`] if the directory is open to other users;
    /// I/O errors.
    pub fn open(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        create_private_dir(&dir.join(KEYS))?;
        create_private_dir(&dir.join(VERSIONS))?;
        Ok(Registry {
            dir: dir.to_owned(),
            state: Arc::new(PlainState),
        })
    }

    /// Reads and writes the registry's files through `state` (default: [`PlainState`]).
    #[must_use]
    pub fn with_state(mut self, state: Arc<dyn StateFiles>) -> Self {
        self.state = state;
        self
    }

    /// The registry's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<FileLock> {
        Ok(FileLock::acquire(&self.dir.join(LOCK))?)
    }

    fn file(&self, id: &KeyId) -> PathBuf {
        self.dir.join(KEYS).join(format!("{id}.json"))
    }

    fn read(&self, path: &Path) -> Result<LogicalKey> {
        let bytes = self
            .state
            .read(path)?
            .ok_or_else(|| RotationError::NotFound(format!("{}", path.display())))?;
        let key: LogicalKey = serde_json::from_slice(&bytes).map_err(|e| {
            RotationError::corrupt(
                path.display().to_string(),
                format!("not a keyhaven registry entry: {e}"),
            )
        })?;
        key.check_invariants()
            .map_err(|e| RotationError::corrupt(path.display().to_string(), e.to_string()))?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(key.id()) {
            return Err(RotationError::corrupt(
                path.display().to_string(),
                format!("the file holds key {}, not the one its name says", key.id()),
            ));
        }
        Ok(key)
    }

    fn alias(&self, version: &KeyId) -> PathBuf {
        self.dir.join(VERSIONS).join(version.as_str())
    }

    fn write(&self, key: &LogicalKey) -> Result<()> {
        let id: KeyId = key.id().parse()?;
        let json = serde_json::to_vec_pretty(key)
            .map_err(|e| CoreError::InvalidInput(format!("cannot encode key {id}: {e}")))?;
        // The version index first: an entry naming a logical key that does not list the
        // version (yet) is ignored by `find_by_key_id`, so a crash between the two writes
        // loses nothing, and the next write completes the index.
        for v in key.versions() {
            let alias = self.alias(v.key_id());
            if v.key_id() != &id
                && self
                    .state
                    .read(&alias)
                    .ok()
                    .flatten()
                    .as_deref()
                    .map(Vec::as_slice)
                    != Some(id.as_str().as_bytes())
            {
                self.state.write(&alias, id.as_str().as_bytes())?;
            }
        }
        self.state.write(&self.file(&id), &json)?;
        Ok(())
    }

    /// The logical key that has `id` as one of its versions (its own id for version 1), or
    /// `None` for a key never adopted. Two file checks, whatever the registry's size: this is
    /// on the signing path.
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] naming a damaged file; I/O errors.
    pub fn find_by_key_id(&self, id: &KeyId) -> Result<Option<LogicalKey>> {
        match self.get(id.as_str()) {
            Ok(k) => return Ok(Some(k)),
            Err(RotationError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let logical = match self.state.read(&self.alias(id))? {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => return Ok(None),
        };
        match self.get(&logical) {
            Ok(k) if k.version_by_key_id(id).is_some() => Ok(Some(k)),
            Ok(_) | Err(RotationError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers the existing key `info` of `backend` as version 1 (primary) of a new logical
    /// key whose id is `info.id`. Idempotent: adopting a key already registered (as any
    /// version) returns its logical key unchanged.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::AlreadyExists`] if the id is registered for another backend;
    /// storage errors.
    pub fn adopt(&self, backend: &str, info: &KeyInfo, role: Role, now: u64) -> Result<LogicalKey> {
        self.adopt_at_level(backend, info, role, SecurityLevel::Standard, now)
    }

    /// [`Registry::adopt`] with a security level (a key already registered keeps its own).
    ///
    /// # Errors
    /// As [`Registry::adopt`].
    pub fn adopt_at_level(
        &self,
        backend: &str,
        info: &KeyInfo,
        role: Role,
        level: SecurityLevel,
        now: u64,
    ) -> Result<LogicalKey> {
        let _lock = self.lock()?;
        if let Some(key) = self.find_by_key_id(&info.id)?
            && key.backend() == backend
        {
            return Ok(key);
        }
        let path = self.file(&info.id);
        if path.exists() {
            return Err(CoreError::AlreadyExists(format!(
                "logical key {} (registered for another backend, or its registry file is damaged: \
                 {})",
                info.id,
                path.display()
            ))
            .into());
        }
        let key = LogicalKey::adopt(backend, info, role, now).with_level(level);
        self.write(&key)?;
        Ok(key)
    }

    /// Registers a logical key restored from a backup ([`LogicalKey::restored`]) as it is.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::AlreadyExists`] if the logical key, or a key id of one of its
    /// versions, is registered already; storage errors.
    pub fn insert_restored(&self, key: &LogicalKey) -> Result<()> {
        let _lock = self.lock()?;
        key.check_invariants()?;
        for v in key.versions() {
            if self.find_by_key_id(v.key_id())?.is_some() {
                return Err(CoreError::AlreadyExists(format!(
                    "key {} in the rotation registry (logical key '{}')",
                    v.key_id(),
                    key.label()
                ))
                .into());
            }
        }
        let id: KeyId = key.id().parse()?;
        if self.state.read(&self.file(&id))?.is_some() {
            return Err(CoreError::AlreadyExists(format!("logical key {id}")).into());
        }
        self.write(key)
    }

    /// The logical key with id `id`.
    ///
    /// # Errors
    /// [`RotationError::NotFound`]; [`RotationError::Corrupt`] naming a damaged file.
    pub fn get(&self, id: &str) -> Result<LogicalKey> {
        let not_found = || RotationError::NotFound(format!("logical key '{id}'"));
        let id: KeyId = id.parse().map_err(|_| not_found())?;
        let path = self.file(&id);
        match self.read(&path) {
            Err(RotationError::NotFound(_)) => Err(not_found()),
            other => other,
        }
    }

    /// A logical key by its id, by the backend id of any of its versions, or by the label of
    /// the key or of any version.
    ///
    /// # Errors
    /// [`RotationError::NotFound`]; [`keyhaven_core::Error::InvalidInput`] if a label matches
    /// several keys; [`RotationError::Corrupt`] if the key's own file is damaged.
    pub fn find(&self, reference: &str) -> Result<LogicalKey> {
        match self.get(reference) {
            Err(RotationError::NotFound(_)) => {}
            other => return other,
        }
        if let Ok(id) = reference.parse::<KeyId>()
            && let Some(k) = self.find_by_key_id(&id)?
        {
            return Ok(k);
        }
        let keys = self.list()?;
        let mut by_label = keys.into_iter().filter(|k| {
            k.label() == reference || k.versions().iter().any(|v| v.label() == reference)
        });
        match (by_label.next(), by_label.next()) {
            (Some(k), None) => Ok(k),
            (Some(_), Some(_)) => Err(CoreError::InvalidInput(format!(
                "label '{reference}' matches several logical keys; use a key id"
            ))
            .into()),
            (None, _) => Err(RotationError::NotFound(format!(
                "logical key '{reference}'"
            ))),
        }
    }

    fn list_unlocked(&self) -> Result<(Vec<LogicalKey>, Vec<RotationError>)> {
        let dir = self.dir.join(KEYS);
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for path in self.state.list(&dir)? {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match self.read(&path) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(e),
            }
        }
        keys.sort_by(|a, b| a.id().cmp(b.id()));
        Ok((keys, problems))
    }

    /// Every readable logical key, sorted by id. Damaged files are left out (see
    /// [`Registry::check`]); they never hide the others.
    ///
    /// # Errors
    /// Only if the directory cannot be read.
    pub fn list(&self) -> Result<Vec<LogicalKey>> {
        Ok(self.list_unlocked()?.0)
    }

    /// Every damaged registry file, each as a [`RotationError::Corrupt`] naming it.
    ///
    /// # Errors
    /// Only if the directory cannot be read.
    pub fn check(&self) -> Result<Vec<RotationError>> {
        Ok(self.list_unlocked()?.1)
    }

    /// Reads logical key `id`, lets `f` change it, and writes it back, all under the registry
    /// lock. If `f` fails nothing is written.
    ///
    /// # Errors
    /// As [`Registry::get`], `f`'s error, or a storage error.
    pub fn update<T>(&self, id: &str, f: impl FnOnce(&mut LogicalKey) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut key = self.get(id)?;
        let out = f(&mut key)?;
        key.check_invariants()?;
        self.write(&key)?;
        Ok(out)
    }
}
