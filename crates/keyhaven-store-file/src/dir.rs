//! The directory layout both file stores share, and the operations on it that need care:
//! creation and opening with permission checks, the store lock, label claims, record listing.
//!
//! ```text
//! DIR/                   0700
//!   keyhaven-store.json  0600  header: format, version (and, encrypted, KDF + wrapped KEK)
//!   .lock                0600  advisory lock, held by writers
//!   keys/                0700  one record per key (plus PEM files in the PEM store)
//!   labels/              0700  one claim per label: file named SHA-256(label), holding the key id
//! ```
//!
//! Writers hold the exclusive lock; readers need none because every file is replaced
//! atomically. A label is claimed before its key's record is written and released after the
//! record is removed, so a crash leaves at worst a claim whose record is missing, which the next
//! writer recognises as stale and reuses: labels stay unique and no listed key is half-written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use keyhaven_core::{Error, KeyId, Result};
use sha2::{Digest, Sha256};

use crate::fsutil::{self, FsError, LockGuard};

/// The header file's name.
pub(crate) const HEADER: &str = "keyhaven-store.json";
const LOCK: &str = ".lock";
const KEYS: &str = "keys";
const LABELS: &str = "labels";
/// What a label's claim file says.
pub(crate) enum Claim {
    /// No claim file.
    None,
    /// The claim names a key whose record exists.
    Live(KeyId),
    /// The claim is unreadable, or names a key without a record (why).
    Broken(String),
}

/// How old a temporary file must be to count as left behind by a killed writer.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(60);
/// Extension of each key's record (metadata, or the whole encrypted record).
pub(crate) const RECORD_EXT: &str = ".json";

/// An opened store directory.
#[derive(Debug)]
pub(crate) struct StoreDir {
    root: PathBuf,
    keys: PathBuf,
    labels: PathBuf,
}

impl StoreDir {
    fn at(root: &Path) -> Self {
        StoreDir {
            root: root.to_owned(),
            keys: root.join(KEYS),
            labels: root.join(LABELS),
        }
    }

    /// Creates a new store directory with its header. Fails if a store is already there.
    pub(crate) fn create(root: &Path, header: &[u8]) -> Result<Self> {
        let dir = StoreDir::at(root);
        fsutil::create_private_dir(root)?;
        let _lock = dir.lock()?;
        if root.join(HEADER).exists() {
            return Err(Error::AlreadyExists(format!(
                "a key store at {}",
                root.display()
            )));
        }
        fsutil::create_private_dir(&dir.keys)?;
        fsutil::create_private_dir(&dir.labels)?;
        fsutil::atomic_write(root, HEADER, header)?;
        Ok(dir)
    }

    /// Opens an existing store directory: checks permissions and returns the header bytes.
    pub(crate) fn open(root: &Path) -> Result<(Self, Vec<u8>)> {
        let dir = StoreDir::at(root);
        match fs::symlink_metadata(root.join(HEADER)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("key store at {}", root.display())));
            }
            _ => {}
        }
        fsutil::check_private(root, true)?;
        for sub in [&dir.keys, &dir.labels] {
            if keyhaven_fs::is_symlink(sub) {
                return Err(keyhaven_fs::refuse_symlink(sub));
            }
        }
        fsutil::check_private(&dir.keys, true)?;
        fsutil::check_private(&dir.labels, true)?;
        let header = fsutil::read_private(&root.join(HEADER))?;
        // Temporary files a killed writer left (a writer going on now is far younger).
        for d in [&dir.root, &dir.keys, &dir.labels] {
            let _ = keyhaven_fs::sweep_temp_files(d, &[".tmp-"], LEFTOVER_AGE);
        }
        Ok((dir, header))
    }

    /// The store's root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the writers' lock.
    pub(crate) fn lock(&self) -> Result<LockGuard> {
        Ok(fsutil::lock_exclusive(&self.root.join(LOCK))?)
    }

    /// Path of a key's file with the given suffix (`.json`, `.key.pem`, ...).
    pub(crate) fn key_file(&self, id: &KeyId, suffix: &str) -> PathBuf {
        self.keys.join(format!("{id}{suffix}"))
    }

    /// Path of a key's record.
    pub(crate) fn record_path(&self, id: &KeyId) -> PathBuf {
        self.key_file(id, RECORD_EXT)
    }

    /// Writes a file in `keys/` atomically.
    pub(crate) fn write_key_file(&self, id: &KeyId, suffix: &str, bytes: &[u8]) -> Result<()> {
        Ok(fsutil::atomic_write(
            &self.keys,
            &format!("{id}{suffix}"),
            bytes,
        )?)
    }

    /// Reads a key's record: `Ok(None)` if there is none.
    pub(crate) fn read_record(&self, id: &KeyId) -> Result<Option<(Vec<u8>, fsutil::FileStamp)>> {
        let path = self.record_path(id);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsutil::io_err("inspect", &path)(e).into()),
        };
        fsutil::check_meta(&path, &meta, false)?;
        match fsutil::read_private(&path) {
            Ok(bytes) => Ok(Some((bytes, fsutil::FileStamp::of(&meta)))),
            Err(FsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The current stamp of a key's record (`None` if it is gone), refusing loose permissions.
    pub(crate) fn record_stamp(&self, id: &KeyId) -> Result<Option<fsutil::FileStamp>> {
        let path = self.record_path(id);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                fsutil::check_meta(&path, &meta, false)?;
                Ok(Some(fsutil::FileStamp::of(&meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fsutil::io_err("inspect", &path)(e).into()),
        }
    }

    /// Whether a key's record exists.
    pub(crate) fn has_record(&self, id: &KeyId) -> bool {
        self.record_path(id).exists()
    }

    /// Ids of all records, sorted. Stray files (temporaries, PEM files) are skipped.
    pub(crate) fn record_ids(&self) -> Result<Vec<KeyId>> {
        let rd = fs::read_dir(&self.keys).map_err(fsutil::io_err("list", &self.keys))?;
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(fsutil::io_err("list", &self.keys))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(RECORD_EXT)
                && let Ok(id) = stem.parse::<KeyId>()
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub(crate) fn claim_path(&self, label: &str) -> PathBuf {
        self.labels
            .join(hex::encode(Sha256::digest(label.as_bytes())))
    }

    /// What the claim file of `label` says.
    pub(crate) fn label_claim(&self, label: &str) -> Result<Claim> {
        let path = self.claim_path(label);
        let bytes = match fsutil::read_private(&path) {
            Ok(b) => b,
            Err(FsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Claim::None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(id) = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<KeyId>().ok())
        else {
            return Ok(Claim::Broken("the claim does not hold a key id".into()));
        };
        if self.has_record(&id) {
            Ok(Claim::Live(id))
        } else {
            Ok(Claim::Broken(format!(
                "it names key {id}, whose record {} is missing",
                self.record_path(&id).display()
            )))
        }
    }

    /// The id that holds `label`, if its claim is live (its record exists).
    pub(crate) fn label_owner(&self, label: &str) -> Result<Option<KeyId>> {
        let path = self.claim_path(label);
        let bytes = match fsutil::read_private(&path) {
            Ok(b) => b,
            Err(FsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let id = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<KeyId>().ok());
        Ok(id.filter(|id| self.has_record(id)))
    }

    /// Claims `label` for `id`. The caller holds the lock.
    pub(crate) fn claim_label(&self, _lock: &LockGuard, label: &str, id: &KeyId) -> Result<()> {
        if self.label_owner(label)?.is_some() {
            return Err(Error::AlreadyExists(format!("a key labelled '{label}'")));
        }
        let path = self.claim_path(label);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::InvalidInput("label claim name".into()))?;
        Ok(fsutil::atomic_write(
            &self.labels,
            name,
            id.as_str().as_bytes(),
        )?)
    }

    /// Releases `label` if `id` holds it. The caller holds the lock.
    pub(crate) fn release_label(&self, _lock: &LockGuard, label: &str, id: &KeyId) -> Result<()> {
        let path = self.claim_path(label);
        let holder = fsutil::read_private(&path).ok();
        if holder.as_deref() == Some(id.as_str().as_bytes()) {
            fsutil::remove_durable(&path)?;
        }
        Ok(())
    }

    /// Removes a key's files (the record first: that is the commit point).
    pub(crate) fn remove_key(
        &self,
        _lock: &LockGuard,
        id: &KeyId,
        suffixes: &[&str],
    ) -> Result<()> {
        fsutil::remove_durable(&self.record_path(id))?;
        for suffix in suffixes {
            fsutil::remove_durable(&self.key_file(id, suffix))?;
        }
        Ok(())
    }
}
