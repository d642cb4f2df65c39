//! The metadata directory: private, atomically written files, an advisory lock for writers, and
//! label claims.
//!
//! ```text
//! DIR/                   0700
//!   keyhaven-tpm.json    0600  header: format and version
//!   .lock                0600  advisory lock (flock), held by writers
//!   keys/                0700
//!     ID.json            0600  metadata: id, label, algorithm, created_at, SPKI, handle, policy
//!     ID.priv            0600  the TPM-wrapped private part (TPM2B_PRIVATE, as tpm2_create -r)
//!     ID.pub             0600  the public area (TPM2B_PUBLIC, as tpm2_create -u)
//!   labels/              0700  one claim per label: file named SHA-256(label), holding the id
//! ```
//!
//! The record (`ID.json`) is written last and removed first: it is the commit point. A label is
//! claimed before the record exists and released after it is gone, so a crash leaves at worst a
//! claim without a record, which the next writer sees as stale and reuses.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keyhaven_core::{Error, KeyId, Result};
use sha2::{Digest, Sha256};

/// The header file's name.
const HEADER: &str = "keyhaven-tpm.json";
/// The header's `format` value.
const FORMAT: &str = "keyhaven-tpm-store";
const LOCK: &str = ".lock";
const KEYS: &str = "keys";
const LABELS: &str = "labels";
/// The record's suffix.
pub(crate) const RECORD: &str = ".json";
/// The wrapped private blob's suffix.
pub(crate) const PRIVATE: &str = ".priv";
/// The public area's suffix.
pub(crate) const PUBLIC: &str = ".pub";

fn io_error(op: &str, path: &Path, e: io::Error) -> Error {
    let context = format!("{op} {}", path.display());
    if e.kind() == io::ErrorKind::PermissionDenied {
        Error::PermissionDenied(format!("{context}: {e}"))
    } else {
        Error::io(context, e)
    }
}

/// Refuses anything but a regular file (or directory) that only its owner may read and write.
fn check_meta(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<()> {
    if meta.file_type().is_symlink() {
        return Err(keyhaven_fs::refuse_symlink(path));
    }
    // Another user's file could be changed by them: the one policy of keyhaven-fs.
    keyhaven_fs::check_owner(path, meta)?;
    if meta.is_dir() != dir {
        return Err(Error::InvalidInput(format!(
            "{} is not a {}",
            path.display(),
            if dir { "directory" } else { "regular file" }
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::PermissionDenied(format!(
            "{} has mode {mode:04o}, which lets other users {}; keyhaven refuses to use it. Fix: \
             chmod {} {}",
            path.display(),
            if mode & 0o044 != 0 {
                "read it"
            } else {
                "modify it"
            },
            if dir { "700" } else { "600" },
            path.display()
        )));
    }
    Ok(())
}

fn check_private(path: &Path, dir: bool) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_error("inspect", path, e))?;
    check_meta(path, &meta, dir)
}

fn create_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_error("create directory", path, e))?;
    check_private(path, true)
}

/// Reads a private file; `Ok(None)` if it does not exist.
pub(crate) fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(keyhaven_fs::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) if keyhaven_fs::is_symlink(path) => return Err(keyhaven_fs::refuse_symlink(path)),
        Err(e) => return Err(io_error("open", path, e)),
    };
    let meta = file.metadata().map_err(|e| io_error("inspect", path, e))?;
    check_meta(path, &meta, false)?;
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut buf)
        .map_err(|e| io_error("read", path, e))?;
    Ok(Some(buf))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

/// Writes `bytes` to `dir/name` atomically and durably (0600 temporary file, fsync, rename,
/// fsync of the directory). On failure the temporary file is removed and the target unchanged.
fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut suffix = [0u8; 8];
    keyhaven_crypto::fill_random(&mut suffix)?;
    let tmp = dir.join(format!(".tmp-{name}-{}", hex::encode(suffix)));
    let target = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| io_error("write", &tmp, e))?;
        file.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
        fs::rename(&tmp, &target).map_err(|e| io_error("rename into place", &target, e))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("remove", path, e)),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// A held exclusive advisory lock on the directory; released on drop.
pub(crate) struct LockGuard {
    _lock: keyhaven_fs::FileLock,
}

pub(crate) use keyhaven_fs::FileStamp;

/// An opened metadata directory.
#[derive(Debug)]
pub(crate) struct KeyDir {
    root: PathBuf,
    keys: PathBuf,
    labels: PathBuf,
}

impl KeyDir {
    /// Opens the directory, creating it (0700, with its header) if it does not exist.
    pub(crate) fn open_or_create(root: &Path) -> Result<Self> {
        let dir = KeyDir {
            root: root.to_owned(),
            keys: root.join(KEYS),
            labels: root.join(LABELS),
        };
        create_private_dir(root)?;
        let header = root.join(HEADER);
        match read_private(&header)? {
            Some(bytes) => {
                #[derive(serde::Deserialize)]
                struct Header {
                    format: String,
                    version: u32,
                }
                let h: Header = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt(header.display().to_string(), e.to_string()))?;
                if h.format != FORMAT || h.version != 1 {
                    return Err(Error::corrupt(
                        header.display().to_string(),
                        format!(
                            "this is a '{}' version {} directory, not a keyhaven TPM store \
                             (version 1)",
                            h.format, h.version
                        ),
                    ));
                }
                check_private(&dir.keys, true)?;
                check_private(&dir.labels, true)?;
            }
            None => {
                let _lock = dir.lock()?;
                create_private_dir(&dir.keys)?;
                create_private_dir(&dir.labels)?;
                if read_private(&header)?.is_none() {
                    let text = format!("{{\"format\": \"{FORMAT}\", \"version\": 1}}\n");
                    atomic_write(root, HEADER, text.as_bytes())?;
                }
            }
        }
        Ok(dir)
    }

    /// The directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the writers' lock (waits for other threads and processes).
    pub(crate) fn lock(&self) -> Result<LockGuard> {
        // The one file layer's lock: created 0600, never through a symbolic link.
        Ok(LockGuard {
            _lock: keyhaven_fs::FileLock::acquire(&self.root.join(LOCK))?,
        })
    }

    /// Path of one of a key's files.
    pub(crate) fn key_file(&self, id: &KeyId, suffix: &str) -> PathBuf {
        self.keys.join(format!("{id}{suffix}"))
    }

    /// Writes one of a key's files atomically.
    pub(crate) fn write_key_file(&self, id: &KeyId, suffix: &str, bytes: &[u8]) -> Result<()> {
        atomic_write(&self.keys, &format!("{id}{suffix}"), bytes)
    }

    /// Reads one of a key's files; `Ok(None)` if missing.
    pub(crate) fn read_key_file(&self, id: &KeyId, suffix: &str) -> Result<Option<Vec<u8>>> {
        read_private(&self.key_file(id, suffix))
    }

    /// The stamp of a key's record, `None` if it has none; refuses loose permissions.
    pub(crate) fn record_stamp(&self, id: &KeyId) -> Result<Option<FileStamp>> {
        let path = self.key_file(id, RECORD);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                check_meta(&path, &meta, false)?;
                Ok(Some(FileStamp::of(&meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("inspect", &path, e)),
        }
    }

    /// Ids of all records, sorted; stray files are skipped.
    pub(crate) fn record_ids(&self) -> Result<Vec<KeyId>> {
        let rd = fs::read_dir(&self.keys).map_err(|e| io_error("list", &self.keys, e))?;
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_error("list", &self.keys, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(RECORD)
                && let Ok(id) = stem.parse::<KeyId>()
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn claim_path(&self, label: &str) -> PathBuf {
        self.labels
            .join(hex::encode(Sha256::digest(label.as_bytes())))
    }

    /// The id holding `label`, if its claim is live (its record exists).
    pub(crate) fn label_owner(&self, label: &str) -> Result<Option<KeyId>> {
        let Some(bytes) = read_private(&self.claim_path(label))? else {
            return Ok(None);
        };
        let id = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<KeyId>().ok());
        Ok(id.filter(|id| self.key_file(id, RECORD).exists()))
    }

    /// Claims `label` for `id`; the caller holds the lock.
    pub(crate) fn claim_label(&self, _lock: &LockGuard, label: &str, id: &KeyId) -> Result<()> {
        if self.label_owner(label)?.is_some() {
            return Err(Error::AlreadyExists(format!("a key labelled '{label}'")));
        }
        let name = hex::encode(Sha256::digest(label.as_bytes()));
        atomic_write(&self.labels, &name, id.as_str().as_bytes())
    }

    /// Releases `label` if `id` holds it; the caller holds the lock.
    pub(crate) fn release_label(&self, _lock: &LockGuard, label: &str, id: &KeyId) -> Result<()> {
        let path = self.claim_path(label);
        if read_private(&path).ok().flatten().as_deref() == Some(id.as_str().as_bytes()) {
            remove_durable(&path)?;
        }
        Ok(())
    }

    /// Removes a key's files, the record first; the caller holds the lock.
    pub(crate) fn remove_key(&self, _lock: &LockGuard, id: &KeyId) -> Result<()> {
        for suffix in [RECORD, PRIVATE, PUBLIC] {
            remove_durable(&self.key_file(id, suffix))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_layout_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tpm");
        let dir = KeyDir::open_or_create(&root).unwrap();
        for p in [&root, &root.join(KEYS), &root.join(LABELS)] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        let id = KeyId::generate().unwrap();
        dir.write_key_file(&id, PRIVATE, b"blob").unwrap();
        let mode = fs::metadata(dir.key_file(&id, PRIVATE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(dir);
        KeyDir::open_or_create(&root).unwrap();
    }

    #[test]
    fn loose_permissions_are_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tpm");
        let dir = KeyDir::open_or_create(&root).unwrap();
        let id = KeyId::generate().unwrap();
        dir.write_key_file(&id, RECORD, b"{}").unwrap();
        let path = dir.key_file(&id, RECORD);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = dir.read_key_file(&id, RECORD).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let err = KeyDir::open_or_create(&root).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
    }
}
