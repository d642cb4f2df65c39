//! Private files and directories (0700/0600, refusing looser), as in keyhaven-store-file.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{AuditError, io_err};

pub(crate) fn create_private_dir(path: &Path) -> Result<(), AuditError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create directory", path))?;
    check_private(path, true)
}

pub(crate) fn check_private(path: &Path, dir: bool) -> Result<(), AuditError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    check_meta(path, &meta, dir)
}

pub(crate) fn check_meta(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<(), AuditError> {
    keyhaven_fs::check_entry(path, meta, dir).map_err(AuditError::Unsafe)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Opens a log file for reading and appending (O_APPEND), checking its permissions.
pub(crate) fn open_append(path: &Path, create_new: bool) -> Result<File, AuditError> {
    let mut o = OpenOptions::new();
    o.read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(keyhaven_fs::O_NOFOLLOW);
    if create_new {
        o.create_new(true);
    }
    let f = o.open(path).map_err(|e| nofollow_err(path, e))?;
    let meta = f.metadata().map_err(io_err("inspect", path))?;
    check_meta(path, &meta, false)?;
    Ok(f)
}

/// Opens a log file for reading, checking its permissions.
pub(crate) fn open_read(path: &Path) -> Result<File, AuditError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(keyhaven_fs::O_NOFOLLOW)
        .open(path)
        .map_err(|e| nofollow_err(path, e))?;
    let meta = f.metadata().map_err(io_err("inspect", path))?;
    check_meta(path, &meta, false)?;
    Ok(f)
}

/// An open refused because a symbolic link is in the file's place, or another I/O error.
fn nofollow_err(path: &Path, e: std::io::Error) -> AuditError {
    if keyhaven_fs::is_symlink(path) {
        AuditError::Unsafe(keyhaven_fs::refuse_symlink(path))
    } else {
        io_err("open", path)(e)
    }
}

/// Exclusive `flock` on the log's lock file, released on drop (the one file layer's lock:
/// created 0600, never through a symbolic link).
pub(crate) struct LockGuard {
    _lock: keyhaven_fs::FileLock,
}

pub(crate) fn lock_exclusive(lock_path: &Path) -> Result<LockGuard, AuditError> {
    Ok(LockGuard {
        _lock: keyhaven_fs::FileLock::acquire(lock_path).map_err(AuditError::Unsafe)?,
    })
}
