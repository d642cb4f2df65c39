#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use keyhaven_core::Error as CoreError;

pub mod state;
pub use state::{PlainState, RollbackCounter, SealedState, StateFiles, StateKey};

/// The largest file [`read_secret`] reads: passphrase files and private key PEM files are far
/// smaller.
pub const MAX_SECRET_FILE: usize = 1 << 20;

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> CoreError + use<> {
    let context = format!("{what} {}", path.display());
    move |e| CoreError::io(context, e)
}

/// Refuses `meta` (of `path`) if other users may read or write it, or if it belongs to another
/// user ([`check_owner`]).
///
/// # Errors
/// [`CoreError::PermissionDenied`] naming the path and the `chmod` (or `chown`) that fixes it.
pub fn check_meta(path: &Path, meta: &fs::Metadata) -> Result<(), CoreError> {
    // A terminal or another device (`--passphrase-file /dev/tty`) is not a stored file: its
    // mode says nothing about who can read a secret later, and no `chmod` on a device is ever
    // the fix. (A named pipe is checked like a file: others could read from it first.)
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() || t.is_block_device() {
            return Ok(());
        }
    }
    check_owner(path, meta)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            let (what, fix) = if meta.is_dir() {
                ("directory", "700")
            } else {
                ("file", "600")
            };
            return Err(CoreError::PermissionDenied(format!(
                "{what} {} has mode {mode:04o}, which lets other users {} it; keyhaven refuses \
                 to use it. Fix: chmod {fix} {}",
                path.display(),
                if mode & 0o044 != 0 { "read" } else { "modify" },
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
    Ok(())
}

/// Refuses a store's own file or directory `path` (its metadata `meta`, read without following
/// links) unless it is what keyhaven made: not a symbolic link, a directory if `dir` (else a
/// regular file), owned by this user, and private ([`check_meta`]).
///
/// # Errors
/// [`CoreError::PermissionDenied`] for a link, another owner or loose permissions, naming the
/// fix; [`CoreError::InvalidInput`] for a file where a directory should be (or the reverse).
pub fn check_entry(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<(), CoreError> {
    if meta.file_type().is_symlink() {
        return Err(refuse_symlink(path));
    }
    if meta.is_dir() != dir {
        return Err(CoreError::InvalidInput(format!(
            "{} is not a {}",
            path.display(),
            if dir { "directory" } else { "regular file" }
        )));
    }
    check_meta(path, meta)
}

/// What identifies one version of a file: if any of these change, it was replaced (a cache of
/// a parsed record stays valid while its file's stamp is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    #[cfg(unix)]
    pub fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// The effective user id of this process (the owner keyhaven expects of its files).
#[cfg(unix)]
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses `meta` (of `path`) unless it belongs to the effective user or to root, as OpenSSH's
/// `StrictModes` does: a file someone else owns can be changed by them, so keyhaven neither
/// trusts it nor writes secrets next to it. Root running keyhaven over another user's home is
/// refused too (run it as that user).
///
/// # Errors
/// [`CoreError::PermissionDenied`] naming the path, its owner and the fix.
pub fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), CoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = effective_uid();
        let owner = meta.uid();
        if owner != me && owner != 0 {
            return Err(CoreError::PermissionDenied(format!(
                "{} belongs to uid {owner}, not to the user running keyhaven (uid {me}); \
                 keyhaven refuses files another user can change. Fix: run keyhaven as the \
                 owner of {}, or, if the file is yours, chown {me} {}",
                path.display(),
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
    Ok(())
}

/// Refuses `path` if it or any directory above it could be changed by a user other than the
/// effective user and root: each must belong to one of them, and a directory writable by its
/// group or by everyone is refused unless it has the sticky bit (like `/tmp`, where others
/// cannot rename or remove what is not theirs). Symbolic links along the way are judged by
/// the directory they lead to. Like OpenSSH's `StrictModes` over a path.
///
/// # Errors
/// [`CoreError::PermissionDenied`] naming the first unsafe directory and the fix;
/// [`CoreError::Io`] if one cannot be examined.
pub fn check_ancestors(path: &Path) -> Result<(), CoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let absolute = match fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => return check_ancestors(parent),
                _ => return Ok(()),
            },
            Err(e) => return Err(io_err("inspect", path)(e)),
        };
        for dir in absolute.ancestors() {
            let meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
            check_owner(dir, &meta)?;
            let mode = meta.permissions().mode();
            if meta.is_dir() && mode & 0o022 != 0 && mode & 0o1000 == 0 {
                // Not a directory keyhaven made: changing its mode is not ours to suggest.
                return Err(CoreError::PermissionDenied(format!(
                    "directory {} has mode {:04o}: users other than its owner can replace what \
                     it holds, so keyhaven refuses to keep keys below it. Keep the keyhaven home \
                     in a directory only you (or root) can write (--home DIR)",
                    dir.display(),
                    mode & 0o7777
                )));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Refuses a file or directory (symbolic links are followed) that users other than its owner
/// may read or write, that is whose mode has any of the bits `0o077`.
///
/// # Errors
/// [`CoreError::PermissionDenied`] naming the path and the fix (`chmod 700` for a directory,
/// `chmod 600` for a file); [`CoreError::Io`] if it cannot be examined (`NotFound` if absent).
pub fn check_private(path: &Path) -> Result<fs::Metadata, CoreError> {
    let meta = fs::metadata(path).map_err(io_err("inspect", path))?;
    check_meta(path, &meta)?;
    Ok(meta)
}

/// Creates `dir` and its missing parents with mode 0700; an existing `dir` must already be
/// private (see [`check_private`]): its mode is checked, never changed.
///
/// # Errors
/// [`CoreError::PermissionDenied`] for an existing directory others can use,
/// [`CoreError::InvalidInput`] if `dir` exists and is not a directory, [`CoreError::Io`].
pub fn create_private_dir(dir: &Path) -> Result<(), CoreError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return check_meta(dir, &meta),
        Ok(_) => {
            return Err(CoreError::InvalidInput(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", dir)(e)),
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err("create directory", dir))
}

/// Reads a whole file (at most [`MAX_SECRET_FILE`] bytes) into a buffer that is zeroized when
/// dropped, without leaving copies behind in freed memory. For private key files and
/// passphrase files. Works on pipes too (`/dev/stdin`, `<(...)`).
///
/// # Errors
/// [`CoreError::Io`] naming the file; [`CoreError::InvalidInput`] if it is too large.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let mut file = File::open(path).map_err(io_err("read", path))?;
    read_all(&mut file, path)
}

/// [`read_secret`], for a file that must be private: refuses a file that other users may read
/// or write or that another user owns ([`check_private`], checked on the opened file), and a
/// symbolic link in its place (never followed: a link could lead a read out of the home).
///
/// # Errors
/// As [`read_secret`] and [`check_private`].
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let mut file = open_nofollow(path)?;
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    check_meta(path, &meta)?;
    read_all(&mut file, path)
}

/// Opens `path` for reading without following a symbolic link in its place.
///
/// # Errors
/// [`CoreError::PermissionDenied`] for a symbolic link (naming it and the fix),
/// [`CoreError::Io`] otherwise (`NotFound` if absent).
pub fn open_nofollow(path: &Path) -> Result<File, CoreError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(O_NOFOLLOW);
    }
    match options.open(path) {
        Ok(f) => Ok(f),
        Err(e) if is_symlink(path) => Err(symlink_refused(path, e)),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The `open(2)` flag that refuses a symbolic link as the last component, for
/// `OpenOptionsExt::custom_flags` (crates with their own open calls use it, with
/// [`is_symlink`] and [`refuse_symlink`] to say what happened).
#[cfg(unix)]
pub const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// Whether `path` is a symbolic link (not followed).
pub fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The error for a symbolic link found where keyhaven keeps a file of its own.
pub fn refuse_symlink(path: &Path) -> CoreError {
    symlink_refused(path, io::Error::other("symbolic link"))
}

fn symlink_refused(path: &Path, _e: io::Error) -> CoreError {
    CoreError::PermissionDenied(format!(
        "{} is a symbolic link; keyhaven never follows links inside a home (one could lead a \
         read or a write elsewhere). Fix: remove the link and put the file itself there \
         (restore it from a backup)",
        path.display()
    ))
}

/// Refuses `path` (below `root`) if a directory between `root` and it is a symbolic link:
/// keyhaven does not reach its files through links inside a home (one could lead its reads
/// and writes into another directory). `root` itself may be a link (a home kept elsewhere);
/// directories that do not exist yet are not checked (they are made private when created).
///
/// # Errors
/// [`CoreError::PermissionDenied`] naming the link and the fix.
pub fn refuse_linked_dirs(root: &Path, path: &Path) -> Result<(), CoreError> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Ok(());
    };
    let mut dir = root.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            break;
        }
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CoreError::PermissionDenied(format!(
                    "{} is a symbolic link to a directory; keyhaven never follows links inside a \
                     home (one could lead its reads and writes elsewhere). Fix: replace the link \
                     by the directory itself (restore it from a backup)",
                    dir.display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Reads a configuration file the user writes by hand (a policy): not through a symbolic
/// link, owned by the user or root, and not writable by others (readable is fine: it holds no
/// secret). At most [`MAX_SECRET_FILE`] bytes, as UTF-8 text.
///
/// # Errors
/// [`CoreError::PermissionDenied`] naming the file and the fix; [`CoreError::InvalidInput`]
/// if it is not UTF-8; [`CoreError::Io`] (`NotFound` if absent).
pub fn read_config(path: &Path) -> Result<String, CoreError> {
    let mut file = open_nofollow(path)?;
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    check_owner(path, &meta)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(CoreError::PermissionDenied(format!(
                "{} has mode {mode:04o}, which lets other users change it; keyhaven refuses \
                 to follow it. Fix: chmod go-w {}",
                path.display(),
                path.display()
            )));
        }
    }
    let bytes = read_all(&mut file, path)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| CoreError::InvalidInput(format!("{} is not UTF-8 text", path.display())))
}

fn read_all(file: &mut File, path: &Path) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let limit = MAX_SECRET_FILE + 1;
    let hint = file
        .metadata()
        .ok()
        .and_then(|m| usize::try_from(m.len()).ok())
        .unwrap_or(0);
    // Grown by hand: each buffer is zeroized when replaced, so no copy is left unzeroized.
    let mut buf = Zeroizing::new(vec![0u8; hint.saturating_add(1).clamp(256, limit)]);
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= limit {
                return Err(CoreError::InvalidInput(format!(
                    "{} is larger than {MAX_SECRET_FILE} bytes",
                    path.display()
                )));
            }
            let mut bigger = Zeroizing::new(vec![0u8; (buf.len() * 2).min(limit)]);
            bigger[..filled].copy_from_slice(&buf[..filled]);
            buf = bigger;
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read", path)(e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// A 0600 temporary file in `dir` holding `contents`, written and fsynced.
fn write_temp(
    dir: &Path,
    target: &Path,
    contents: &[u8],
) -> Result<tempfile::NamedTempFile, CoreError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file for", target))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(
                "set the permissions of the temporary file for",
                target,
            ))?;
    }
    tmp.write_all(contents).map_err(io_err("write", target))?;
    tmp.as_file().sync_all().map_err(io_err("sync", target))?;
    Ok(tmp)
}

/// Follows a symbolic link at `path` to the file it names, so replacing the file keeps the
/// link.
fn through_link(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
        }
        _ => path.to_owned(),
    }
}

/// Writes `contents` to `path`, replacing it atomically and durably: a 0600 temporary file in
/// the same directory, fsync, rename over `path`, fsync of the directory. The result has mode
/// 0600. A symbolic link at `path` is followed (the file it names is replaced). A target that
/// exists and is not a regular file (`/dev/null`, a named pipe) is written in place instead,
/// since it cannot be replaced.
///
/// # Errors
/// [`CoreError::Io`] naming the file (a missing directory is `NotFound`); on failure `path` is
/// unchanged and no temporary file is left.
pub fn atomic_write(path: &Path, contents: &[u8]) -> Result<(), CoreError> {
    let target = through_link(path);
    match fs::metadata(&target) {
        Ok(m) if m.is_dir() => {
            return Err(CoreError::InvalidInput(format!(
                "{} is a directory",
                target.display()
            )));
        }
        Ok(m) if !m.is_file() => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .map_err(io_err("open", &target))?;
            return f
                .write_all(contents)
                .and_then(|()| f.flush())
                .map_err(io_err("write", &target));
        }
        _ => {}
    }
    let dir = parent_dir(&target);
    let tmp = write_temp(dir, &target, contents)?;
    tmp.persist(&target)
        .map_err(|e| io_err("replace", &target)(e.error))?;
    sync_dir(dir)
}

/// Writes a new file at `path` atomically and durably like [`atomic_write`] (0600, fsync,
/// directory fsync), but never replaces anything: if `path` exists (even as a dangling
/// symbolic link) when the file is put in place, nothing is written.
///
/// # Errors
/// [`CoreError::AlreadyExists`] if `path` exists; [`CoreError::Io`] naming the file.
pub fn atomic_write_new(path: &Path, contents: &[u8]) -> Result<(), CoreError> {
    let exists = || {
        CoreError::AlreadyExists(format!(
            "file {} (refusing to overwrite it)",
            path.display()
        ))
    };
    if fs::symlink_metadata(path).is_ok() {
        return Err(exists());
    }
    let dir = parent_dir(path);
    let tmp = write_temp(dir, path, contents)?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            exists()
        } else {
            io_err("create", path)(e.error)
        }
    })?;
    sync_dir(dir)
}

/// Replaces `path` atomically and durably like [`atomic_write`], but never through a symbolic
/// link: a link in its place is itself replaced by the new file, so a planted link cannot
/// redirect the write. For the files keyhaven keeps inside a home.
///
/// # Errors
/// [`CoreError::InvalidInput`] if `path` is a directory; [`CoreError::Io`] naming the file.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CoreError> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(CoreError::InvalidInput(format!(
            "{} is a directory",
            path.display()
        )));
    }
    let dir = parent_dir(path);
    let tmp = write_temp(dir, path, contents)?;
    tmp.persist(path)
        .map_err(|e| io_err("replace", path)(e.error))?;
    sync_dir(dir)
}

/// Removes the file `path` (a symbolic link there is removed, not followed) and fsyncs its
/// directory. A missing file is not an error.
///
/// # Errors
/// [`CoreError::Io`] naming the file.
pub fn remove_durable(path: &Path) -> Result<(), CoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// The prefix of the temporary files [`atomic_write`] and [`replace_file`] write.
pub const TEMP_PREFIX: &str = ".keyhaven-tmp-";

/// Removes the temporary files whose names start with one of `prefixes` (by default
/// [`TEMP_PREFIX`]) that a process killed in the middle of a write left in `dir`, if they are
/// older than `min_age` (so a write going on right now in another process is left alone).
/// Returns how many were removed. Symbolic links and directories are never touched.
///
/// # Errors
/// [`CoreError::Io`] if `dir` cannot be read (a missing `dir` is not an error).
pub fn sweep_temp_files(
    dir: &Path,
    prefixes: &[&str],
    min_age: std::time::Duration,
) -> Result<usize, CoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        // file_type() does not follow links: a link or a directory is left alone.
        let old = entry.file_type().is_ok_and(|t| t.is_file())
            && entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) -> Result<(), CoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An exclusive advisory lock on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` (created 0600 if missing) is held.
    ///
    /// # Errors
    /// [`CoreError::Io`] if the lock file cannot be opened or locked.
    pub fn acquire(path: &Path) -> Result<Self, CoreError> {
        let file = Self::open(path)?;
        file.lock().map_err(io_err("lock", path))?;
        Ok(FileLock { file })
    }

    /// The lock on `path` if no one else holds it, `None` if someone does (without waiting).
    ///
    /// # Errors
    /// [`CoreError::Io`] if the lock file cannot be opened or locked.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, CoreError> {
        let file = Self::open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
        }
    }

    fn open(path: &Path) -> Result<File, CoreError> {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A link planted at a lock's place must not make keyhaven create or lock a file
            // elsewhere (as root, anywhere).
            options.custom_flags(O_NOFOLLOW);
        }
        let file = options.open(path).map_err(|e| {
            if is_symlink(path) {
                refuse_symlink(path)
            } else {
                io_err("open lock file", path)(e)
            }
        })?;
        let meta = file.metadata().map_err(io_err("inspect", path))?;
        if !meta.is_file() {
            return Err(CoreError::InvalidInput(format!(
                "{} is not a regular file; keyhaven uses it as a lock file: remove it",
                path.display()
            )));
        }
        check_owner(path, &meta)?;
        Ok(file)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
