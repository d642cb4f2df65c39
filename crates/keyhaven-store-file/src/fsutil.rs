//! Durable, private file operations: atomic writes, permission checks, advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A failure of a file operation, naming the file and the operation.
#[derive(Debug, Error)]
pub(crate) enum FsError {
    /// An I/O call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file that is not what keyhaven made (a link, another owner, loose permissions, the
    /// wrong type), as `keyhaven-fs` words it.
    #[error("{0}")]
    Unsafe(keyhaven_core::Error),
}

impl From<FsError> for keyhaven_core::Error {
    fn from(e: FsError) -> Self {
        use keyhaven_core::Error;
        match e {
            FsError::Io { op, path, source } => {
                let context = format!("{op} {}", path.display());
                // Its kind (permission denied, not found, ...) is the I/O error's own.
                Error::Io { context, source }
            }
            FsError::Unsafe(inner) => inner,
        }
    }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError + use<> {
    let path = path.to_owned();
    move |source| FsError::Io { op, path, source }
}

/// Creates `path` as a 0700 directory (and missing parents, also 0700) if it is absent.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create directory", path))?;
    // An existing directory keeps its mode: check it rather than silently changing it.
    check_private(path, true).map(|_| ())
}

/// Refuses a file or directory that other users can read or write.
pub(crate) fn check_private(path: &Path, dir: bool) -> Result<fs::Metadata, FsError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    check_meta(path, &meta, dir)?;
    Ok(meta)
}

pub(crate) fn check_meta(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<(), FsError> {
    keyhaven_fs::check_entry(path, meta, dir).map_err(FsError::Unsafe)
}

/// Reads a private file (refusing loose permissions).
pub(crate) fn read_private(path: &Path) -> Result<Vec<u8>, FsError> {
    let mut file = keyhaven_fs::open_nofollow(path).map_err(|e| match e {
        keyhaven_core::Error::Io { source, .. } => io_err("open", path)(source),
        other => FsError::Unsafe(other),
    })?;
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    check_meta(path, &meta, false)?;
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    io::Read::read_to_end(&mut file, &mut buf).map_err(io_err("read", path))?;
    Ok(buf)
}

/// Flushes a directory's entries to disk (after a rename or unlink inside it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Writes `bytes` to `dir/name` atomically and durably: a 0600 temporary file in the same
/// directory, fsync, rename over the target, fsync the directory. On any failure (a full disk,
/// say) the temporary file is removed and the target is exactly as it was.
pub(crate) fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    let mut suffix = [0u8; 8];
    keyhaven_crypto::fill_random(&mut suffix).map_err(|_| FsError::Io {
        op: "draw a temporary file name for",
        path: dir.join(name),
        source: io::Error::other("no randomness"),
    })?;
    let tmp = dir.join(format!(".tmp-{}-{}", name, hex::encode(suffix)));
    let target = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Removes `path` and syncs its directory. A missing file is not an error.
pub(crate) fn remove_durable(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("remove", path)(e)),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// A held exclusive advisory lock (`flock`) on a store's lock file; released on drop.
pub(crate) struct LockGuard {
    _lock: keyhaven_fs::FileLock,
}

/// Takes the store's exclusive lock, waiting for other processes and threads to release it.
pub(crate) fn lock_exclusive(lock_path: &Path) -> Result<LockGuard, FsError> {
    // The one file layer's lock: created 0600, never through a symbolic link.
    Ok(LockGuard {
        _lock: keyhaven_fs::FileLock::acquire(lock_path).map_err(FsError::Unsafe)?,
    })
}

pub(crate) use keyhaven_fs::FileStamp;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        atomic_write(dir.path(), "f", b"one").unwrap();
        atomic_write(dir.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let mode = fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn loose_permissions_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(&f).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    }
}
