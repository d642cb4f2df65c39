//! State files a home trusts, read and written through one interface: [`StateFiles`].
//!
//! Two implementations:
//!
//! - [`PlainState`]: private files (0600 in 0700, owned by the user, never through a symbolic
//!   link), written atomically. What a library user gets without a home key.
//! - [`SealedState`]: the same files, plus an **integrity manifest** at the root of the home
//!   (`integrity.manifest`) that records the SHA-256 of every state file and is authenticated
//!   with HMAC-SHA256 under a [`StateKey`] that only someone who can unlock the home holds.
//!   Every read checks the file against the manifest, so a file that was edited, replaced,
//!   swapped with another, rolled back to an earlier version, removed, or planted is reported
//!   as [`CoreError::Corrupt`] naming it, and only reads of that file fail. Editing, rolling
//!   back or removing the manifest itself is reported too.
//!
//! What the manifest cannot see on its own: the *whole* home (manifest and files together)
//! copied back from an earlier moment. That needs a counter kept outside the home (a TPM NV
//! counter); [`SealedState::generation`] is the number such a counter pins.
//!
//! Crash safety: a write records the new hash as pending in the manifest, replaces the file,
//! then commits the hash. A crash between the steps leaves a file that matches either the old
//! or the new hash, and both are accepted until the next open settles the entry.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use keyhaven_core::Error as CoreError;

use crate::{FileLock, read_private, remove_durable, replace_file};

/// The manifest's file name, at the root of a sealed home.
pub const MANIFEST: &str = "integrity.manifest";
const LOCK: &str = ".integrity.lock";
const MAGIC: &str = "keyhaven-integrity-manifest v1";
const FORMAT: u32 = 1;
/// The hash recorded for "no file" (a creation or removal in progress).
const ABSENT: &str = "-";

/// Reads and writes the files a home trusts (registry entries, counters, revocations, the
/// configuration). Paths are absolute paths inside the home.
pub trait StateFiles: Send + Sync + fmt::Debug {
    /// The contents of `path`, or `None` if there is no such file (and, when authenticated,
    /// none is recorded).
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the file when it does not match what keyhaven wrote;
    /// [`CoreError::PermissionDenied`] for a file that is not private, not the user's, or a
    /// symbolic link; [`CoreError::Io`].
    fn read(&self, path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CoreError>;

    /// Replaces `path` with `contents`, atomically and durably (0600).
    ///
    /// # Errors
    /// [`CoreError::Io`] naming the file; [`CoreError::Corrupt`] if the manifest does not
    /// authenticate.
    fn write(&self, path: &Path, contents: &[u8]) -> Result<(), CoreError>;

    /// Removes `path` (a missing file is not an error).
    ///
    /// # Errors
    /// As [`StateFiles::write`].
    fn remove(&self, path: &Path) -> Result<(), CoreError>;

    /// The files directly in `dir` (no dot-files), sorted; authenticated state adds the files
    /// the manifest records there, so a removed one is listed (and its read fails).
    ///
    /// # Errors
    /// [`CoreError::Io`] if the directory cannot be read.
    fn list(&self, dir: &Path) -> Result<Vec<PathBuf>, CoreError>;

    /// Whether reads are checked against an authenticated manifest.
    fn is_authenticated(&self) -> bool;
}

/// Unauthenticated state: private files, atomically written, never through symbolic links.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainState;

fn read_optional(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CoreError> {
    match read_private(path) {
        Ok(b) => Ok(Some(b)),
        Err(CoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, CoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CoreError::io(
                format!("read directory {}", dir.display()),
                e,
            ));
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| CoreError::io(format!("read directory {}", dir.display()), e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

impl StateFiles for PlainState {
    fn read(&self, path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CoreError> {
        read_optional(path)
    }

    fn write(&self, path: &Path, contents: &[u8]) -> Result<(), CoreError> {
        replace_file(path, contents)
    }

    fn remove(&self, path: &Path) -> Result<(), CoreError> {
        remove_durable(path)
    }

    fn list(&self, dir: &Path) -> Result<Vec<PathBuf>, CoreError> {
        list_dir(dir)
    }

    fn is_authenticated(&self) -> bool {
        false
    }
}

/// The key that authenticates a home's manifest (HMAC-SHA256). 32 bytes, zeroized on drop,
/// never printed.
pub struct StateKey(Zeroizing<[u8; 32]>);

impl StateKey {
    /// Wraps 32 secret bytes (derived by the backend that anchors the home).
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        StateKey(bytes)
    }

    /// Derives a 32-byte secret for `purpose` (HMAC-SHA256 of the purpose, domain-separated
    /// from the manifest's own MAC). See [`SealedState::derive_secret`].
    pub fn derive_secret(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut mac = self.mac();
        mac.update(b"derive\0");
        mac.update(purpose.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length: this cannot fail for 32 bytes.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length")); // ok: infallible for HMAC
        mac.update(MAGIC.as_bytes());
        mac.update(b"\0");
        mac
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

impl Entry {
    fn accepts(&self, hash: &str) -> bool {
        self.sha256 == hash || self.next.as_deref() == Some(hash)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    format: u32,
    anchor: String,
    generation: u64,
    entries: BTreeMap<String, Entry>,
    /// The counter outside the home this manifest is bound to, and its value when this
    /// manifest was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counter: Option<CounterRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterRecord {
    id: String,
    value: u64,
}

/// A counter kept outside the home that only grows (keyhaven uses a TPM NV counter). A
/// manifest bound to one records the counter's value with each change, so a home copied back
/// from an earlier moment (manifest and all) is told apart from the present one: its manifest
/// records a value the counter has passed.
pub trait RollbackCounter: Send + Sync + fmt::Debug {
    /// What names the counter in the manifest (`BACKEND/tpm:0x01501234`).
    fn id(&self) -> String;
    /// Its value now.
    ///
    /// # Errors
    /// It cannot be reached, or its answer is not authentic.
    fn read(&self) -> Result<u64, CoreError>;
    /// Adds one; returns the new value.
    ///
    /// # Errors
    /// As [`RollbackCounter::read`].
    fn increment(&self) -> Result<u64, CoreError>;
}

/// What identifies one version of a file on disk: if none of it changed, neither did the file
/// (`ctime` cannot be set back by a user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Authenticated state: every read is checked against the home's integrity manifest.
pub struct SealedState {
    root: PathBuf,
    key: StateKey,
    anchor: String,
    cache: Mutex<Option<(Stamp, Arc<Body>)>>,
    /// The counter the manifest is bound to, once attached.
    counter: Mutex<Option<Arc<dyn RollbackCounter>>>,
    /// Files read and found to match, by relative path: their stamp when read, their hash,
    /// their bytes. A file whose stamp is unchanged (same inode, size, mtime and ctime: a user
    /// cannot set ctime back) and whose hash the manifest still accepts is not read again.
    files: Mutex<std::collections::HashMap<String, CachedFile>>,
}

/// A file found good: its stamp when read, its hash, its bytes.
type CachedFile = (Stamp, String, Arc<Vec<u8>>);

/// Files larger than this are read and hashed every time rather than kept.
const CACHE_FILE_MAX: usize = 64 * 1024;
/// How many files are kept at most.
const CACHE_FILES_MAX: usize = 4096;

impl fmt::Debug for SealedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedState")
            .field("root", &self.root)
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

impl SealedState {
    fn unopened(root: &Path, key: StateKey, anchor: &str) -> Self {
        SealedState {
            root: root.to_owned(),
            key,
            anchor: anchor.to_owned(),
            cache: Mutex::new(None),
            counter: Mutex::new(None),
            files: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The manifest of the home at `root`.
    pub fn manifest_path(root: &Path) -> PathBuf {
        root.join(MANIFEST)
    }

    /// Whether the home at `root` has a manifest (or something in its place).
    pub fn exists(root: &Path) -> bool {
        fs::symlink_metadata(Self::manifest_path(root)).is_ok()
    }

    /// The anchor the manifest at `root` *claims* (unauthenticated: only a hint of which store
    /// to unlock; [`SealedState::open`] then checks it). `None` without a readable manifest.
    pub fn peek_anchor(root: &Path) -> Option<String> {
        let bytes = read_private(&Self::manifest_path(root)).ok()?;
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let body: Body = serde_json::from_slice(&bytes[newline + 1..]).ok()?;
        Some(body.anchor)
    }

    /// Seals the home at `root`: writes a new manifest recording the files in `adopt` that
    /// exist, as they are now. `anchor` names what holds the key (checked on every open).
    ///
    /// # Errors
    /// [`CoreError::AlreadyExists`] if the home has a manifest; I/O errors.
    pub fn create(
        root: &Path,
        key: StateKey,
        anchor: &str,
        adopt: &[PathBuf],
    ) -> Result<Self, CoreError> {
        let state = Self::unopened(root, key, anchor);
        let _lock = state.lock()?;
        if Self::exists(root) {
            return Err(CoreError::AlreadyExists(format!(
                "the integrity manifest {}",
                Self::manifest_path(root).display()
            )));
        }
        let mut entries = BTreeMap::new();
        for path in adopt {
            if let Some(bytes) = read_optional(path)? {
                entries.insert(
                    state.rel(path)?,
                    Entry {
                        sha256: sha256_hex(&bytes),
                        next: None,
                    },
                );
            }
        }
        state.store(&Body {
            format: FORMAT,
            anchor: anchor.to_owned(),
            generation: 1,
            entries,
            counter: None,
        })?;
        Ok(state)
    }

    /// Opens the sealed home at `root`: the manifest must authenticate under `key` and name
    /// `anchor`. Entries a crash left half-written are settled.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the manifest if it is missing, altered, or sealed by
    /// another key or anchor; [`CoreError::PermissionDenied`]; I/O errors.
    pub fn open(root: &Path, key: StateKey, anchor: &str) -> Result<Self, CoreError> {
        let state = Self::unopened(root, key, anchor);
        // A manifest bound to a counter is settled once the counter is attached.
        if state.load()?.counter.is_none() {
            state.settle()?;
        }
        Ok(state)
    }

    /// Moves the home to another anchor: the manifest, checked under the present key, is
    /// written anew under `key`, naming `anchor`. Whoever calls this holds both keys (has
    /// unlocked both anchors). Returns the state under the new key.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] if the manifest does not authenticate under the present key;
    /// I/O errors.
    ///
    /// A manifest bound to a rollback counter moves to `counter`, a counter whose
    /// authorization the new key gives (the old one's came from the old key); the old counter
    /// is left to the caller to remove.
    pub fn rekey(
        self,
        key: StateKey,
        anchor: &str,
        counter: Option<Arc<dyn RollbackCounter>>,
    ) -> Result<Self, CoreError> {
        let _lock = self.lock()?;
        // Straight from the file, not the cache: what is rewritten must be what is there.
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let mut body = (*self.load()?).clone();
        // The present manifest, checked under the present key, is what the counter vouches for.
        self.check_counter(&body, true)?;
        let next = Self::unopened(&self.root, key, anchor);
        match (&body.counter, counter) {
            (None, _) => {}
            (Some(_), Some(c)) => {
                body.counter = Some(CounterRecord {
                    id: c.id(),
                    value: c.read()?,
                });
                *next.counter.lock().unwrap_or_else(PoisonError::into_inner) = Some(c);
            }
            (Some(old), None) => {
                return Err(CoreError::InvalidInput(format!(
                    "the manifest is bound to the rollback counter {}: moving it to another \
                     anchor needs a counter the new anchor's key authorizes",
                    old.id
                )));
            }
        }
        body.anchor = anchor.to_owned();
        body.generation += 1;
        next.commit(&body)?;
        Ok(next)
    }

    /// Derives a 32-byte secret for `purpose` from the home's integrity key (HMAC-SHA256 of
    /// the purpose): for what must belong to this home alone, such as a rollback counter's
    /// authorization value.
    pub fn derive_secret(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        self.key.derive_secret(purpose)
    }

    /// The counter the manifest is bound to (its id and the value it recorded), if any.
    ///
    /// # Errors
    /// As [`SealedState::open`].
    pub fn bound_counter(&self) -> Result<Option<(String, u64)>, CoreError> {
        Ok(self
            .load()?
            .counter
            .as_ref()
            .map(|c| (c.id.clone(), c.value)))
    }

    /// Binds the manifest to `counter`: from now on each change of the manifest records the
    /// counter's next value and then increments it, and a manifest recording a value the
    /// counter has passed is refused as rolled back.
    ///
    /// # Errors
    /// [`CoreError::AlreadyExists`] if it is bound already; the counter's errors.
    pub fn bind_counter(&self, counter: Arc<dyn RollbackCounter>) -> Result<(), CoreError> {
        self.set_counter_unchecked(Some(counter), |bound| match bound {
            Some(c) => Err(CoreError::AlreadyExists(format!(
                "a rollback counter ({}) for the home's integrity manifest",
                c.id
            ))),
            None => Ok(()),
        })
    }

    /// Accepts the present manifest against its counter's present value: for a home copied
    /// back from an earlier moment on purpose (its owner restored it), which
    /// [`SealedState::attach_counter`] refuses. The counter is attached.
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if the manifest is not bound to this counter; the counter's
    /// errors.
    pub fn rebind_counter(&self, counter: Arc<dyn RollbackCounter>) -> Result<(), CoreError> {
        let id = counter.id();
        self.set_counter_unchecked(Some(counter), |bound| match bound {
            Some(c) if c.id == id => Ok(()),
            _ => Err(CoreError::InvalidInput(format!(
                "the home's integrity manifest is not bound to {id}"
            ))),
        })
    }

    /// Records `counter` (or none) in the manifest as it is now, without checking the manifest
    /// against the counter it names (the caller has unlocked the home and accepts its present
    /// state); `allowed` first sees the present binding. Then settles.
    fn set_counter_unchecked(
        &self,
        counter: Option<Arc<dyn RollbackCounter>>,
        allowed: impl FnOnce(Option<&CounterRecord>) -> Result<(), CoreError>,
    ) -> Result<(), CoreError> {
        {
            let _lock = self.lock()?;
            *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let mut body = (*self.load()?).clone();
            allowed(body.counter.as_ref())?;
            if body.counter.is_none() && counter.is_none() {
                return Ok(());
            }
            body.counter = match &counter {
                Some(c) => Some(CounterRecord {
                    id: c.id(),
                    value: c.read()?,
                }),
                None => None,
            };
            body.generation += 1;
            *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = counter;
            // Recorded as the counter is now, then counted like any change.
            self.commit(&body)?;
        }
        self.settle()
    }

    /// Unbinds the manifest from its counter without asking the counter: for a counter that is
    /// gone (the TPM was cleared or replaced). Whoever calls this has unlocked the home and
    /// accepts its present state, as with [`SealedState::rebind_counter`].
    ///
    /// # Errors
    /// I/O errors; [`CoreError::Corrupt`] if the manifest does not authenticate.
    pub fn forget_counter(&self) -> Result<(), CoreError> {
        self.set_counter_unchecked(None, |_| Ok(()))
    }

    /// Unbinds the manifest from its counter (attached first: the present manifest must be
    /// the latest). The counter itself is left as it is.
    ///
    /// # Errors
    /// As [`SealedState::attach_counter`] for the check; I/O errors.
    pub fn unbind_counter(&self) -> Result<(), CoreError> {
        let _lock = self.lock()?;
        let mut body = (*self.load()?).clone();
        if body.counter.is_none() {
            return Ok(());
        }
        self.check_counter(&body, true)?;
        body.counter = None;
        body.generation += 1;
        *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.store(&body)
    }

    /// Attaches the counter the manifest is bound to (as [`SealedState::bound_counter`] names
    /// it) and checks the manifest against it: a manifest recording a value the counter has
    /// passed was rolled back, and is refused. Without it attached, the state can be read
    /// (checked as far as the manifest goes) but not changed.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the manifest if it was rolled back or names another
    /// counter; the counter's errors.
    pub fn attach_counter(&self, counter: Arc<dyn RollbackCounter>) -> Result<(), CoreError> {
        {
            let _lock = self.lock()?;
            *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let body = self.load()?;
            match &body.counter {
                Some(c) if c.id == counter.id() => {}
                Some(c) => {
                    return Err(self.corrupt_manifest(format!(
                        "it is bound to the rollback counter {}, not {}",
                        c.id,
                        counter.id()
                    )));
                }
                None => return Ok(()),
            }
            *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = Some(counter);
            if let Err(e) = self.check_counter(&body, true) {
                *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = None;
                return Err(e);
            }
        }
        // What a crash left half-written, now that changes can be counted.
        self.settle()
    }

    /// Checks `body`'s recorded value against the attached counter: equal (the last change
    /// completed) or one ahead (a change written but not yet counted: completed here when
    /// `settle`, which needs the lock).
    ///
    /// Returns the counter's value afterwards (`None` for a manifest not bound), so a write
    /// that follows need not ask the counter again.
    fn check_counter(&self, body: &Body, settle: bool) -> Result<Option<u64>, CoreError> {
        let Some(record) = &body.counter else {
            return Ok(None);
        };
        let Some(counter) = self.counter() else {
            return Err(CoreError::Locked(format!(
                "the home's integrity manifest is bound to the rollback counter {}, which is \
                 not attached: the home's state can be read but not changed",
                record.id
            )));
        };
        let now = counter.read()?;
        if record.value == now {
            return Ok(Some(now));
        }
        if record.value == now.saturating_add(1) {
            if settle {
                let after = counter.increment()?;
                if after != record.value {
                    return Err(self.rolled_back(record, after));
                }
                return Ok(Some(after));
            }
            return Ok(Some(now));
        }
        Err(self.rolled_back(record, now))
    }

    fn rolled_back(&self, record: &CounterRecord, now: u64) -> CoreError {
        self.corrupt_manifest(format!(
            "it records the value {} of the rollback counter {}, which is at {now} now: the \
             home (manifest and all) was copied back from an earlier moment, so its keys' \
             state (revocations, usage, versions) may be out of date. Restore the latest \
             backup, or, if you copied it back on purpose, run `keyhaven integrity rebind` \
             (asks for the passphrase; `integrity unbind-counter --force` if the TPM was \
             cleared)",
            record.value, record.id
        ))
    }

    fn counter(&self) -> Option<Arc<dyn RollbackCounter>> {
        self.counter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The home's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many changes the manifest has recorded (it only grows).
    ///
    /// # Errors
    /// As [`SealedState::open`].
    pub fn generation(&self) -> Result<u64, CoreError> {
        Ok(self.load()?.generation)
    }

    /// The files the manifest records, as absolute paths.
    ///
    /// # Errors
    /// As [`SealedState::open`].
    pub fn recorded(&self) -> Result<Vec<PathBuf>, CoreError> {
        Ok(self
            .load()?
            .entries
            .iter()
            .filter(|(_, e)| e.sha256 != ABSENT || e.next.is_some())
            .map(|(rel, _)| self.root.join(rel))
            .collect())
    }

    /// Checks every recorded file against the manifest; returns one error per file that does
    /// not match (edited, removed, replaced).
    ///
    /// # Errors
    /// Only if the manifest itself does not authenticate.
    pub fn verify_all(&self) -> Result<Vec<CoreError>, CoreError> {
        let mut problems = Vec::new();
        for path in self.recorded()? {
            if let Err(e) = self.read(&path) {
                problems.push(e);
            }
        }
        Ok(problems)
    }

    /// Records `path` as it is now (for a file the user changed on purpose, such as a
    /// hand-edited configuration). Whoever calls this has unlocked the home.
    ///
    /// # Errors
    /// I/O errors; [`CoreError::Corrupt`] if the manifest does not authenticate.
    pub fn accept(&self, path: &Path) -> Result<(), CoreError> {
        let rel = self.rel(path)?;
        let _lock = self.lock()?;
        let mut body = (*self.load()?).clone();
        match read_optional(path)? {
            Some(bytes) => {
                body.entries.insert(
                    rel,
                    Entry {
                        sha256: sha256_hex(&bytes),
                        next: None,
                    },
                );
            }
            None => {
                body.entries.remove(&rel);
            }
        }
        body.generation += 1;
        self.store(&body)
    }

    fn lock(&self) -> Result<FileLock, CoreError> {
        FileLock::acquire(&self.root.join(LOCK))
    }

    fn manifest(&self) -> PathBuf {
        Self::manifest_path(&self.root)
    }

    fn corrupt_manifest(&self, reason: impl Into<String>) -> CoreError {
        CoreError::corrupt(self.manifest().display().to_string(), reason)
    }

    /// The manifest's path-independent name of `path` (`a/b/c`), refusing paths outside the
    /// home.
    fn rel(&self, path: &Path) -> Result<String, CoreError> {
        crate::refuse_linked_dirs(&self.root, path)?;
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            CoreError::InvalidInput(format!(
                "{} is outside the home {}",
                path.display(),
                self.root.display()
            ))
        })?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| {
                    CoreError::InvalidInput(format!("{} is not UTF-8", path.display()))
                })?),
                _ => {
                    return Err(CoreError::InvalidInput(format!(
                        "{} is not a plain path inside the home",
                        path.display()
                    )));
                }
            }
        }
        if parts.is_empty() {
            return Err(CoreError::InvalidInput(format!(
                "{} is the home itself",
                path.display()
            )));
        }
        Ok(parts.join("/"))
    }

    /// The manifest, checked (re-read only when the file changed).
    fn load(&self) -> Result<Arc<Body>, CoreError> {
        let path = self.manifest();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.corrupt_manifest(
                    "the home's integrity manifest is missing: it was removed outside keyhaven. \
                     Every state file of the home is untrusted until it is restored from a \
                     backup (or the home is sealed anew, accepting its present state)",
                ));
            }
            Err(e) => return Err(CoreError::io(format!("inspect {}", path.display()), e)),
        };
        let stamp = Stamp::of(&meta);
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((s, body)) = cache.as_ref()
                && *s == stamp
            {
                return Ok(body.clone());
            }
        }
        // A manifest read anew is checked against the counter, read first: every writer
        // writes its manifest before it increments, so the manifest read after the counter
        // records at least the counter's value, however many writers went in between, unless
        // it was rolled back.
        let before = match self.counter() {
            Some(c) => Some(c.read()?),
            None => None,
        };
        let bytes = read_private(&path)?;
        let body = Arc::new(self.parse(&bytes)?);
        if let (Some(record), Some(counter_was)) = (&body.counter, before)
            && record.value < counter_was
        {
            return Err(self.rolled_back(record, counter_was));
        }
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((stamp, body.clone()));
        Ok(body)
    }

    fn parse(&self, bytes: &[u8]) -> Result<Body, CoreError> {
        parse_manifest(&self.key, &self.anchor, &self.manifest(), bytes)
    }

    /// Writes `body` as the manifest (the caller holds the lock). A manifest bound to a
    /// counter records the counter's next value, and the counter is incremented after the
    /// write: a crash in between leaves a manifest one ahead, which the next change completes.
    fn store(&self, body: &Body) -> Result<(), CoreError> {
        let known = if body.counter.is_some() {
            let current = self.load()?;
            self.check_counter(&current, true)?
        } else {
            None
        };
        self.commit_at(body, known)
    }

    /// [`SealedState::store`] once the present manifest has been checked against the counter.
    fn commit(&self, body: &Body) -> Result<(), CoreError> {
        self.commit_at(body, None)
    }

    /// [`SealedState::commit`], with the counter's present value when the caller just read it
    /// (one TPM round trip fewer per write).
    fn commit_at(&self, body: &Body, known: Option<u64>) -> Result<(), CoreError> {
        let mut body = body.clone();
        let counter = match &body.counter {
            Some(_) => {
                let counter = self.counter().ok_or_else(|| {
                    CoreError::Locked("the home's rollback counter is not attached".into())
                })?;
                let now = match known {
                    Some(v) => v,
                    None => counter.read()?,
                };
                let next = now.saturating_add(1);
                if let Some(r) = body.counter.as_mut() {
                    r.value = next;
                }
                Some((counter, next))
            }
            None => None,
        };
        self.write_manifest(&body)?;
        if let Some((counter, next)) = counter {
            let now = counter.increment()?;
            if now != next {
                return Err(CoreError::corrupt(
                    counter.id(),
                    format!(
                        "it went from {} to {now} while keyhaven held the home's lock",
                        next - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    fn write_manifest(&self, body: &Body) -> Result<(), CoreError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| CoreError::InvalidInput(format!("cannot encode the manifest: {e}")))?;
        let mut mac = self.key.mac();
        mac.update(&json);
        let tag = hex::encode(mac.finalize().into_bytes());
        let mut out = Vec::with_capacity(json.len() + MAGIC.len() + 66);
        out.extend_from_slice(MAGIC.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&json);
        let path = self.manifest();
        replace_file(&path, &out)?;
        let stamp = fs::symlink_metadata(&path)
            .map(|m| Stamp::of(&m))
            .map_err(|e| CoreError::io(format!("inspect {}", path.display()), e))?;
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((stamp, Arc::new(body.clone())));
        Ok(())
    }

    /// Resolves entries a crash left with a pending hash, by what the file holds now.
    fn settle(&self) -> Result<(), CoreError> {
        if self.load()?.entries.values().all(|e| e.next.is_none()) {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut body = (*self.load()?).clone();
        let mut changed = false;
        let pending: Vec<String> = body
            .entries
            .iter()
            .filter(|(_, e)| e.next.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for rel in pending {
            let now = match read_optional(&self.root.join(&rel)) {
                Ok(Some(b)) => sha256_hex(&b),
                Ok(None) => ABSENT.to_owned(),
                Err(_) => continue,
            };
            let Some(entry) = body.entries.get_mut(&rel) else {
                continue;
            };
            if !entry.accepts(&now) {
                continue;
            }
            changed = true;
            if now == ABSENT {
                body.entries.remove(&rel);
            } else {
                *entry = Entry {
                    sha256: now,
                    next: None,
                };
            }
        }
        if changed {
            body.generation += 1;
            self.store(&body)?;
        }
        Ok(())
    }

    /// Changes one entry in two recorded steps around `apply` (see the module docs).
    fn change(
        &self,
        path: &Path,
        new_hash: String,
        apply: impl FnOnce() -> Result<(), CoreError>,
    ) -> Result<(), CoreError> {
        let rel = self.rel(path)?;
        let _lock = self.lock()?;
        let mut body = (*self.load()?).clone();
        let old = body.entries.get(&rel).cloned();
        // Already recorded as the result (rewriting the same contents, removing what was never
        // there): the manifest stays as it is.
        let recorded = match &old {
            Some(e) => e.next.is_none() && e.sha256 == new_hash,
            None => new_hash == ABSENT,
        };
        if recorded {
            return apply();
        }
        let entry = body.entries.entry(rel.clone()).or_insert(Entry {
            sha256: ABSENT.to_owned(),
            next: None,
        });
        entry.next = Some(new_hash.clone());
        body.generation += 1;
        self.store(&body)?;
        if let Err(e) = apply() {
            // The file is unchanged: take the pending hash back (if this fails too, the next
            // open settles it).
            match old {
                Some(o) => {
                    body.entries.insert(rel, o);
                }
                None => {
                    body.entries.remove(&rel);
                }
            }
            body.generation += 1;
            let _ = self.store(&body);
            return Err(e);
        }
        if new_hash == ABSENT {
            body.entries.remove(&rel);
        } else {
            body.entries.insert(
                rel,
                Entry {
                    sha256: new_hash,
                    next: None,
                },
            );
        }
        body.generation += 1;
        self.store(&body)
    }
}

impl StateFiles for SealedState {
    /// A file the manifest does not record reads as absent, whatever is on disk: nothing
    /// unauthenticated is ever used (a file planted there is ignored; the home's `integrity
    /// verify` reports it).
    fn read(&self, path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CoreError> {
        let rel = self.rel(path)?;
        let body = self.load()?;
        let Some(entry) = body.entries.get(&rel) else {
            return Ok(None);
        };
        let what = || path.display().to_string();
        // Unchanged since it was last read and found good: no need to read and hash it again.
        if let Ok(meta) = fs::symlink_metadata(path)
            && meta.is_file()
        {
            let stamp = Stamp::of(&meta);
            let hit = self
                .files
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&rel)
                .filter(|(s, hash, _)| *s == stamp && entry.accepts(hash))
                .map(|(_, _, bytes)| bytes.clone());
            if let Some(bytes) = hit {
                crate::check_meta(path, &meta)?;
                return Ok(Some(Zeroizing::new(bytes.as_ref().clone())));
            }
        }
        match read_optional(path)? {
            None if entry.accepts(ABSENT) => Ok(None),
            None => Err(CoreError::corrupt(
                what(),
                "it was removed outside keyhaven (the home's integrity manifest records it); \
                 restore it from a backup",
            )),
            Some(bytes) => {
                let hash = sha256_hex(&bytes);
                if !entry.accepts(&hash) {
                    return Err(CoreError::corrupt(
                        what(),
                        "it was changed outside keyhaven: its contents are not what the home's \
                         integrity manifest records (edited, replaced or rolled back); restore \
                         it from a backup",
                    ));
                }
                if bytes.len() <= CACHE_FILE_MAX
                    && let Ok(meta) = fs::symlink_metadata(path)
                {
                    let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
                    if files.len() >= CACHE_FILES_MAX {
                        files.clear();
                    }
                    files.insert(rel, (Stamp::of(&meta), hash, Arc::new(bytes.to_vec())));
                }
                Ok(Some(bytes))
            }
        }
    }

    fn write(&self, path: &Path, contents: &[u8]) -> Result<(), CoreError> {
        self.change(path, sha256_hex(contents), || replace_file(path, contents))
    }

    fn remove(&self, path: &Path) -> Result<(), CoreError> {
        self.change(path, ABSENT.to_owned(), || remove_durable(path))
    }

    /// The files the manifest records in `dir` (a file planted there is not listed; a
    /// recorded one that was removed is, and its read fails).
    fn list(&self, dir: &Path) -> Result<Vec<PathBuf>, CoreError> {
        let prefix = if dir == self.root {
            String::new()
        } else {
            format!("{}/", self.rel(dir)?)
        };
        let body = self.load()?;
        let mut out = Vec::new();
        for (rel, e) in body.entries.range(prefix.clone()..) {
            let Some(name) = rel.strip_prefix(&prefix) else {
                break;
            };
            if name.contains('/') || (e.sha256 == ABSENT && e.next.is_none()) {
                continue;
            }
            out.push(dir.join(name));
        }
        out.sort();
        Ok(out)
    }

    fn is_authenticated(&self) -> bool {
        true
    }
}

/// Checks and reads a manifest's bytes: the tag must authenticate under `key` and the body
/// name `anchor`. Errors name `path`.
fn parse_manifest(
    key: &StateKey,
    anchor: &str,
    path: &Path,
    bytes: &[u8],
) -> Result<Body, CoreError> {
    let corrupt = |reason: String| CoreError::corrupt(path.display().to_string(), reason);
    let not_ours = || {
        corrupt(
            "it does not authenticate: it was changed outside keyhaven (or the home was \
             unlocked with a different anchor store)"
                .into(),
        )
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(not_ours)?;
    let (head, rest) = bytes.split_at(newline);
    let body_bytes = &rest[1..];
    let head = std::str::from_utf8(head).map_err(|_| not_ours())?;
    let tag = head
        .strip_prefix(MAGIC)
        .and_then(|t| t.strip_prefix(' '))
        .and_then(|t| hex::decode(t).ok())
        .ok_or_else(not_ours)?;
    let mut mac = key.mac();
    mac.update(body_bytes);
    mac.verify_slice(&tag).map_err(|_| not_ours())?;
    let body: Body = serde_json::from_slice(body_bytes)
        .map_err(|e| corrupt(format!("authenticated but unreadable: {e}")))?;
    if body.format != FORMAT {
        return Err(CoreError::Unsupported {
            operation: "read the integrity manifest",
            reason: format!("it has format {}; upgrade keyhaven", body.format),
        });
    }
    if body.anchor != anchor {
        return Err(corrupt(format!(
            "it was sealed by '{}', but this home is anchored in '{anchor}': the configuration \
             was changed to point elsewhere",
            body.anchor
        )));
    }
    Ok(body)
}

/// Entry points for the fuzz targets (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use super::{MAGIC, StateKey, parse_manifest};
    use hmac::Mac;

    /// Parses `bytes` as a manifest sealed under `key` for `anchor`; returns its generation
    /// and how many files it records.
    ///
    /// # Errors
    /// Whatever [`super::SealedState::open`] would report for these bytes.
    pub fn parse(
        key: &StateKey,
        anchor: &str,
        bytes: &[u8],
    ) -> Result<(u64, usize), keyhaven_core::Error> {
        let body = parse_manifest(key, anchor, std::path::Path::new("manifest"), bytes)?;
        Ok((body.generation, body.entries.len()))
    }

    /// `body` with a valid tag under `key`, so a fuzzer reaches the body's parser.
    pub fn seal(key: &StateKey, body: &[u8]) -> Vec<u8> {
        let mut mac = key.mac();
        mac.update(body);
        let tag = hex::encode(mac.finalize().into_bytes());
        let mut out = format!("{MAGIC} {tag}\n").into_bytes();
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven_core::ErrorKind;
    use proptest::prelude::*;

    fn key(b: u8) -> StateKey {
        StateKey::new(Zeroizing::new([b; 32]))
    }

    fn home() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        }
        d
    }

    fn corrupt_names(e: &CoreError, path: &Path) -> bool {
        matches!(e, CoreError::Corrupt { what, .. } if what == &path.display().to_string())
    }

    /// A counter in memory, standing in for the TPM's in these unit tests of the manifest's
    /// logic (the TPM's own is tested on swtpm in keyhaven-hsm-tpm and the facade).
    #[derive(Debug, Default)]
    struct MemCounter(std::sync::atomic::AtomicU64);

    impl RollbackCounter for MemCounter {
        fn id(&self) -> String {
            "mem/1".into()
        }
        fn read(&self) -> Result<u64, CoreError> {
            Ok(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
        fn increment(&self) -> Result<u64, CoreError> {
            Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
        }
    }

    #[test]
    fn a_home_copied_back_whole_is_refused_once_bound_to_a_counter() {
        let dir = home();
        let file = dir.path().join("state.json");
        let sealed = SealedState::create(dir.path(), key(1), "a", &[]).unwrap();
        let counter = Arc::new(MemCounter::default());
        sealed.bind_counter(counter.clone()).unwrap();
        sealed.write(&file, b"v1").unwrap();
        // The whole home as it is now ...
        let manifest = SealedState::manifest_path(dir.path());
        let old_manifest = fs::read(&manifest).unwrap();
        sealed.write(&file, b"v2").unwrap();
        assert_eq!(
            sealed.bound_counter().unwrap().unwrap().1,
            counter.read().unwrap()
        );
        // ... copied back later: the manifest and the file agree, but the counter moved on.
        replace_file(&manifest, &old_manifest).unwrap();
        replace_file(&file, b"v1").unwrap();
        let reopened = SealedState::open(dir.path(), key(1), "a").unwrap();
        let e = reopened.attach_counter(counter.clone()).unwrap_err();
        assert!(corrupt_names(&e, &manifest), "{e}");
        assert!(e.to_string().contains("copied back"), "{e}");
        // The process that had it open notices on its next read of the manifest.
        let e = sealed.read(&file).unwrap_err();
        assert!(e.to_string().contains("copied back"), "{e}");
        // Unattached, nothing can be changed.
        let e = reopened.write(&file, b"v3").unwrap_err();
        assert!(matches!(&e, e if e.is(ErrorKind::Locked)), "{e}");
        // Its owner copied it back on purpose: accepted against the counter as it is now.
        reopened.rebind_counter(counter.clone()).unwrap();
        reopened.write(&file, b"v3").unwrap();
        let again = SealedState::open(dir.path(), key(1), "a").unwrap();
        again.attach_counter(counter).unwrap();
        assert_eq!(&**again.read(&file).unwrap().unwrap(), b"v3");
    }

    #[test]
    fn a_crash_between_the_write_and_the_increment_is_completed() {
        let dir = home();
        let file = dir.path().join("state.json");
        let sealed = SealedState::create(dir.path(), key(1), "a", &[]).unwrap();
        let counter = Arc::new(MemCounter::default());
        sealed.bind_counter(counter.clone()).unwrap();
        sealed.write(&file, b"v1").unwrap();
        // As if the last increment had not happened.
        counter.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let reopened = SealedState::open(dir.path(), key(1), "a").unwrap();
        reopened.attach_counter(counter.clone()).unwrap();
        assert_eq!(
            reopened.bound_counter().unwrap().unwrap().1,
            counter.read().unwrap()
        );
        assert_eq!(&**reopened.read(&file).unwrap().unwrap(), b"v1");
        reopened.write(&file, b"v2").unwrap();
        // Another counter, or none, is not this home's.
        #[derive(Debug)]
        struct Other;
        impl RollbackCounter for Other {
            fn id(&self) -> String {
                "mem/2".into()
            }
            fn read(&self) -> Result<u64, CoreError> {
                Ok(1_000)
            }
            fn increment(&self) -> Result<u64, CoreError> {
                Ok(1_001)
            }
        }
        let again = SealedState::open(dir.path(), key(1), "a").unwrap();
        assert!(again.attach_counter(Arc::new(Other)).is_err());
        // Unbinding needs the latest manifest; then it is a plain sealed home again.
        again.attach_counter(counter.clone()).unwrap();
        again.unbind_counter().unwrap();
        assert_eq!(again.bound_counter().unwrap(), None);
        again.write(&file, b"v3").unwrap();
    }

    #[test]
    fn every_edit_of_a_recorded_file_is_named() {
        let h = home();
        let s = SealedState::create(h.path(), key(1), "a", &[]).unwrap();
        let f = h.path().join("counter");
        s.write(&f, b"41").unwrap();
        s.write(&f, b"42").unwrap();
        assert_eq!(&s.read(&f).unwrap().unwrap()[..], b"42");
        // rolled back to the earlier version
        replace_file(&f, b"41").unwrap();
        assert!(corrupt_names(&s.read(&f).unwrap_err(), &f));
        // removed
        fs::remove_file(&f).unwrap();
        assert!(corrupt_names(&s.read(&f).unwrap_err(), &f));
        // planted: never used (reads as absent, not listed)
        let g = h.path().join("other");
        replace_file(&g, b"x").unwrap();
        assert!(s.read(&g).unwrap().is_none());
        assert!(!s.list(h.path()).unwrap().contains(&g));
        assert!(s.list(h.path()).unwrap().contains(&f));
        // edited in place with the same size and mtime: ctime still tells
        s.write(&f, b"43").unwrap();
        assert_eq!(&s.read(&f).unwrap().unwrap()[..], b"43");
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, b"44").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(corrupt_names(&s.read(&f).unwrap_err(), &f));
    }

    #[test]
    fn the_manifest_itself_is_authenticated() {
        let h = home();
        let s = SealedState::create(h.path(), key(1), "a", &[]).unwrap();
        let f = h.path().join("revocations");
        s.write(&f, b"revoked: k1").unwrap();
        let m = SealedState::manifest_path(h.path());
        let saved = fs::read(&m).unwrap();
        // another key, another anchor
        assert!(SealedState::open(h.path(), key(2), "a").is_err());
        assert!(SealedState::open(h.path(), key(1), "b").is_err());
        // edited (the entry's hash swapped for that of other contents)
        let text = String::from_utf8(saved.clone()).unwrap();
        let forged = text.replace(&sha256_hex(b"revoked: k1"), &sha256_hex(b""));
        replace_file(&m, forged.as_bytes()).unwrap();
        assert!(corrupt_names(&s.read(&f).unwrap_err(), &m));
        // removed
        fs::remove_file(&m).unwrap();
        assert!(corrupt_names(&s.read(&f).unwrap_err(), &m));
        // and back
        replace_file(&m, &saved).unwrap();
        assert!(s.read(&f).is_ok());
    }

    #[test]
    fn a_symlink_in_place_of_a_state_file_is_refused() {
        let h = home();
        let s = SealedState::create(h.path(), key(1), "a", &[]).unwrap();
        let f = h.path().join("f");
        s.write(&f, b"1").unwrap();
        let outside = h.path().join(".elsewhere");
        fs::write(&outside, b"1").unwrap();
        fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&outside, &f).unwrap();
        assert!(matches!(
            s.read(&f).unwrap_err(),
            e if e.is(ErrorKind::PermissionDenied)));
        // a write replaces the link, never the file it points to
        s.write(&f, b"2").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"1");
        assert_eq!(&s.read(&f).unwrap().unwrap()[..], b"2");
    }

    #[test]
    fn a_crash_between_the_steps_is_settled() {
        let h = home();
        let s = SealedState::create(h.path(), key(1), "a", &[]).unwrap();
        let f = h.path().join("f");
        s.write(&f, b"old").unwrap();
        // The pending step recorded, the file never written (a crash).
        let rel = s.rel(&f).unwrap();
        let mut body = (*s.load().unwrap()).clone();
        body.entries.get_mut(&rel).unwrap().next = Some(sha256_hex(b"new"));
        s.store(&body).unwrap();
        assert_eq!(&s.read(&f).unwrap().unwrap()[..], b"old");
        let s = SealedState::open(h.path(), key(1), "a").unwrap();
        assert!(s.load().unwrap().entries.values().all(|e| e.next.is_none()));
        // "new" is no longer accepted once settled
        replace_file(&f, b"new").unwrap();
        assert!(s.read(&f).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize, Vec<u8>),
        Remove(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(i, b)| Op::Write(i, b)),
            (0..4usize).prop_map(Op::Remove),
            Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever keyhaven itself writes and removes, reads return exactly that, and the
        /// listing is exactly the files that exist.
        #[test]
        fn reads_return_what_was_written(ops in proptest::collection::vec(op(), 1..24)) {
            let h = home();
            let names = ["a", "b", "c", "d"];
            let mut s = SealedState::create(h.path(), key(7), "x", &[]).unwrap();
            let mut model: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Write(i, b) => { s.write(&h.path().join(names[i]), &b).unwrap(); model.insert(i, b); }
                    Op::Remove(i) => { s.remove(&h.path().join(names[i])).unwrap(); model.remove(&i); }
                    Op::Reopen => { s = SealedState::open(h.path(), key(7), "x").unwrap(); }
                }
                for (i, n) in names.iter().enumerate() {
                    let got = s.read(&h.path().join(n)).unwrap().map(|b| b.to_vec());
                    prop_assert_eq!(got, model.get(&i).cloned());
                }
                let listed: Vec<PathBuf> = s.list(h.path()).unwrap().into_iter()
                    .filter(|p| p.file_name().is_some_and(|n| n != MANIFEST)).collect();
                let expected: Vec<PathBuf> = model.keys().map(|i| h.path().join(names[*i])).collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }
}
