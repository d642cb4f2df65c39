//! File helpers for the home directory and the configuration file: private directories, atomic
//! 0600 writes, and the lock that serializes configuration updates across processes.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Creates `dir` and any missing parents; directories it creates are 0700.
pub(crate) fn create_private_dir_all(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))
}

/// Writes `contents` to `path` atomically: a 0600 temporary file in the same directory,
/// fsync, rename over `path`, fsync the directory.
pub(crate) fn atomic_write(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".keyhaven-tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(ctx("create a temporary file for"), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(ctx("set permissions of the temporary file for"), e))?;
    }
    tmp.write_all(contents)
        .map_err(|e| Error::io(ctx("write"), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(ctx("sync"), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(ctx("replace"), e.error))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("sync directory {}", dir.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An exclusive advisory lock on a file, released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` (created 0600 if missing) is held.
    pub(crate) fn acquire(path: &Path) -> Result<Self> {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|e| Error::io(format!("open lock file {}", path.display()), e))?;
        file.lock()
            .map_err(|e| Error::io(format!("lock {}", path.display()), e))?;
        Ok(FileLock { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
