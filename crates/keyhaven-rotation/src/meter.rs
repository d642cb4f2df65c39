//! Usage metering: a durable per-key signature counter and the decorator that feeds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keyhaven_core::{Error as CoreError, KeyId, KeyStore, Signature};
use keyhaven_fs::{FileLock, PlainState, StateFiles, create_private_dir};

use crate::error::{Result, RotationError};

/// The first reservation block used by [`UsageMeter::open_default`].
pub const DEFAULT_BATCH: u64 = 64;
/// How large blocks grow by default: 64 times the first block.
pub const DEFAULT_GROWTH: u64 = 64;
/// A block used up faster than this makes the next one twice as large.
const FAST: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Reserved but not yet used by this process.
    left: u64,
    /// The size of the last block reserved.
    block: u64,
    /// When it was reserved.
    at: Instant,
}

const LOCK: &str = "usage.lock";

/// Durable per-key counters of signatures made, that a crash can make over-count but never
/// under-count.
///
/// **How.** Each key has a file `DIR/<key id>.count` holding the number of signatures
/// *reserved* so far across all processes. Before a process signs beyond its reservation it
/// durably adds a block to that number (under an exclusive lock on `DIR/usage.lock`, atomic
/// write + fsync), and then counts in memory until the block is used up. On a clean shutdown
/// ([`UsageMeter::flush`], also run on drop) it gives the unused part of its block back. After a
/// SIGKILL the unused part stays counted: the persisted number is then at most one block above
/// the true count for each process that died, and never below it. Processes sharing the
/// directory each reserve their own blocks, so the counts add up.
///
/// **Block size.** The first block for a key is `batch`. A block used up within a second makes
/// the next one twice as large, up to `batch * growth` ([`UsageMeter::with_growth`]); a slower
/// one brings it back to `batch`. So a key signing slowly is counted (nearly) exactly even by
/// other processes, and a busy key pays one durable write per large block. The over-count
/// after a crash is at most `batch * growth` per process.
#[derive(Debug)]
pub struct UsageMeter {
    dir: PathBuf,
    state: Arc<dyn StateFiles>,
    batch: u64,
    max_batch: u64,
    slots: Mutex<HashMap<KeyId, Slot>>,
}

impl UsageMeter {
    /// Opens (creating, 0700) the counter directory `dir`, reserving `batch` signatures at a
    /// time (at least 1; 1 makes every signature a durable write).
    ///
    /// # Errors
    /// [`keyhaven_core::Error::PermissionDenied`] for a directory open to other users; I/O
    /// errors.
    pub fn open(dir: &Path, batch: u64) -> Result<Self> {
        create_private_dir(dir)?;
        Ok(UsageMeter {
            dir: dir.to_owned(),
            state: Arc::new(PlainState),
            batch: batch.max(1),
            max_batch: batch.max(1).saturating_mul(DEFAULT_GROWTH),
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Reads and writes the counters through `state` (default: [`PlainState`]): in a sealed
    /// home a counter edited, rolled back or removed outside keyhaven is reported, and the key
    /// refuses to sign until it is restored.
    #[must_use]
    pub fn with_state(mut self, state: Arc<dyn StateFiles>) -> Self {
        self.state = state;
        self
    }

    /// Lets blocks grow up to `batch * growth` (at least `batch`) while a key signs fast.
    pub fn with_growth(mut self, growth: u64) -> Self {
        self.max_batch = self.batch.saturating_mul(growth.max(1));
        self
    }

    /// [`UsageMeter::open`] with [`DEFAULT_BATCH`].
    ///
    /// # Errors
    /// As [`UsageMeter::open`].
    pub fn open_default(dir: &Path) -> Result<Self> {
        Self::open(dir, DEFAULT_BATCH)
    }

    /// The first reservation block size.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// The largest block: the most a crashed process can over-count a key by.
    pub fn max_batch(&self) -> u64 {
        self.max_batch
    }

    fn slots(&self) -> Result<MutexGuard<'_, HashMap<KeyId, Slot>>> {
        self.slots.lock().map_err(|_| {
            RotationError::Core(CoreError::Unavailable {
                backend: "usage meter".into(),
                reason: "a thread panicked while counting; restart the process".into(),
            })
        })
    }

    fn file(&self, id: &KeyId) -> PathBuf {
        self.dir.join(format!("{id}.count"))
    }

    fn read_count(&self, id: &KeyId) -> Result<u64> {
        let path = self.file(id);
        let Some(bytes) = self.state.read(&path)? else {
            return Ok(0);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                RotationError::corrupt(
                    path.display().to_string(),
                    "not a usage count; signing with this key is refused until it is fixed \
                     (write the last known count, or a higher one, into the file)",
                )
            })
    }

    /// Adds `delta` (may be negative) to the persisted count, under the lock.
    fn adjust(&self, id: &KeyId, add: u64, sub: u64) -> Result<u64> {
        let _lock = FileLock::acquire(&self.dir.join(LOCK))?;
        let now = self.read_count(id)?;
        let new = now.saturating_add(add).saturating_sub(sub);
        self.state
            .write(&self.file(id), format!("{new}\n").as_bytes())?;
        Ok(new)
    }

    /// Accounts one signature about to be made with `id`: durably reserves a new block first
    /// if this process has used up its reservation.
    ///
    /// # Errors
    /// Storage errors: the signature must then not be made.
    pub fn begin(&self, id: &KeyId) -> Result<()> {
        let mut slots = self.slots()?;
        match slots.get_mut(id) {
            Some(slot) if slot.left > 0 => slot.left -= 1,
            found => {
                let block = match found {
                    Some(s) if s.at.elapsed() < FAST => {
                        s.block.saturating_mul(2).min(self.max_batch)
                    }
                    _ => self.batch,
                };
                self.adjust(id, block, 0)?;
                slots.insert(
                    id.clone(),
                    Slot {
                        left: block - 1,
                        block,
                        at: Instant::now(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Adds `count` signatures made elsewhere to `id`'s persisted count: a key restored from
    /// a backup brings the usage it had (what it signs here is counted on top).
    ///
    /// # Errors
    /// Storage errors; [`RotationError::Corrupt`] for a damaged counter.
    pub fn add_restored(&self, id: &KeyId, count: u64) -> Result<u64> {
        self.adjust(id, count, 0)
    }

    /// Gives back the slot taken by [`UsageMeter::begin`] when the signature was not made.
    pub fn cancel(&self, id: &KeyId) {
        if let Ok(mut slots) = self.slots()
            && let Some(slot) = slots.get_mut(id)
        {
            slot.left += 1;
        }
    }

    /// The number of signatures counted for `id`: the persisted count minus what this process
    /// reserved and has not used. Exact when no other process holds a reservation for the
    /// key; otherwise an upper bound.
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] for a damaged counter file; I/O errors.
    pub fn usage(&self, id: &KeyId) -> Result<u64> {
        let slots = self.slots()?;
        let persisted = self.read_count(id)?;
        Ok(persisted.saturating_sub(slots.get(id).map_or(0, |s| s.left)))
    }

    /// Gives every unused reservation back, so the persisted counts are exact for this
    /// process. Runs on drop too.
    ///
    /// # Errors
    /// Storage errors (the counts then stay over-counted, never under-counted).
    pub fn flush(&self) -> Result<()> {
        let mut slots = self.slots()?;
        for (id, slot) in slots.iter_mut() {
            if slot.left > 0 {
                self.adjust(id, 0, slot.left)?;
                slot.left = 0;
            }
        }
        Ok(())
    }
}

impl Drop for UsageMeter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// A store that counts every signature (`sign`, `sign_digest`) in a [`UsageMeter`] before
/// making it, and delegates everything else unchanged. If the count cannot be recorded the
/// signature is refused.
pub struct MeteredStore<S: KeyStore> {
    inner: S,
    meter: Arc<UsageMeter>,
}

impl<S: KeyStore> std::fmt::Debug for MeteredStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore")
            .field("backend", &self.inner.info().kind)
            .field("meter", &self.meter)
            .finish()
    }
}

impl<S: KeyStore> MeteredStore<S> {
    /// Wraps `inner`, counting into `meter`.
    pub fn new(inner: S, meter: Arc<UsageMeter>) -> Self {
        MeteredStore { inner, meter }
    }

    /// The meter.
    pub fn meter(&self) -> &Arc<UsageMeter> {
        &self.meter
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn counted(
        &self,
        id: &KeyId,
        f: impl FnOnce() -> keyhaven_core::Result<Signature>,
    ) -> keyhaven_core::Result<Signature> {
        self.meter.begin(id)?;
        let out = f();
        if out.is_err() {
            self.meter.cancel(id);
        }
        out
    }
}

impl<S: KeyStore> KeyStore for MeteredStore<S> {
    keyhaven_core::forward_key_store!(inner; info, generate, generate_with, details, unlock, list,
        get, find_by_label, resolve, public_key, agree, delete, check, import_pkcs8, restore_pkcs8, export_pkcs8,
        export_wrapped, restore_wrapped, attest_key);

    fn sign(&self, id: &KeyId, message: &[u8]) -> keyhaven_core::Result<Signature> {
        self.counted(id, || self.inner.sign(id, message))
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> keyhaven_core::Result<Signature> {
        self.counted(id, || self.inner.sign_digest(id, digest))
    }
}
