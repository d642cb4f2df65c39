//! The writer (group commit under a `flock`) and the readers (tail, search, export).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use keyhaven_core::{KeyId, KeyStore};
use sha2::{Digest, Sha256};

use crate::error::{AuditError, io_err};
use crate::fsutil;
use crate::record::{
    Body, Event, FORMAT_VERSION, Outcome, Record, checkpoint_message, genesis, line_hash, now,
};

/// The audit key that signs checkpoints: a key in a store of its own, reached through the trait.
#[derive(Clone)]
pub struct AuditSigner {
    /// The store holding the audit key.
    pub store: Arc<dyn KeyStore>,
    /// The audit key's id in that store.
    pub key: KeyId,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Tuning of an [`AuditLog`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuditOptions {
    /// Write a signed checkpoint whenever the next sequence number is a multiple of this (0: only
    /// on demand and at rotation). A periodic checkpoint the audit key cannot sign at that moment
    /// is skipped, not fatal: the records stay chained and the next checkpoint seals them.
    pub checkpoint_every: u64,
    /// Give every outcome record its own fsync ([`AuditLog::append_outcome`]) instead of
    /// making it durable with the next one: twice the fsyncs per audited signature, and no
    /// "intent without outcome" after a crash. Off by default.
    pub durable_outcomes: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            checkpoint_every: 1000,
            durable_outcomes: false,
        }
    }
}

impl AuditOptions {
    /// Options with a checkpoint every `n` records.
    pub fn checkpoint_every(n: u64) -> Self {
        AuditOptions {
            checkpoint_every: n,
            ..AuditOptions::default()
        }
    }

    /// The same options with [`AuditOptions::durable_outcomes`] set to `on`.
    #[must_use]
    pub fn with_durable_outcomes(mut self, on: bool) -> Self {
        self.durable_outcomes = on;
        self
    }
}

/// Told how far the log has reached each time a checkpoint is written, and kept somewhere an
/// attacker who can edit the log's directory cannot change unnoticed (a keyhaven home keeps
/// it in its authenticated state). A later verification against what it holds
/// ([`crate::verify_dir_expecting`]) finds whole files or records removed from the end, which
/// the chain alone cannot show.
pub trait Witness: Send + Sync + std::fmt::Debug {
    /// The log now holds at least `seen.records` records, the last of which hashes to
    /// `seen.head`.
    ///
    /// # Errors
    /// The witness cannot be written (the log itself is written already).
    fn witness(&self, seen: &crate::Expectation) -> Result<(), keyhaven_core::Error>;
}

/// What the writer knows of the chain head (re-validated under the lock before every write).
#[derive(Debug, Clone)]
struct Head {
    file_no: u64,
    ino: u64,
    len: u64,
    hash: String,
    next_seq: u64,
    log_id: String,
}

#[derive(Default)]
struct Batch {
    /// Queued records: ticket, event, whether it needs its fsync.
    pending: Vec<(u64, Event, bool)>,
    next_ticket: u64,
    leader: bool,
    results: HashMap<u64, Result<u64, String>>,
}

/// An append-only, hash-chained audit log in a directory (`audit.1.log`, `audit.2.log`, ...).
///
/// Cheap to share between threads (`&self` methods); several processes may open the same
/// directory. See the crate docs for the format and guarantees.
pub struct AuditLog {
    dir: PathBuf,
    signer: AuditSigner,
    options: AuditOptions,
    witness: Option<Arc<dyn Witness>>,
    batch: Mutex<Batch>,
    done: Condvar,
    writer: Mutex<Option<Head>>,
    /// Records were written without an fsync since the last one ([`AuditLog::append_outcome`]).
    dirty: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn file_name(n: u64) -> String {
    format!("audit.{n}.log")
}

/// The log files in `dir`, ordered by number (`audit.1.log`, `audit.2.log`, ...).
///
/// # Errors
/// The directory cannot be read.
pub fn log_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("audit.")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Finds the offset just after the last `\n` strictly before `end`, or 0.
fn line_start_before(file: &File, path: &Path, end: u64) -> Result<u64, AuditError> {
    let mut pos = end;
    let mut buf = vec![0u8; 8192];
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let n = usize::try_from(pos - start).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], start)
            .map_err(io_err("read", path))?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        pos = start;
    }
    Ok(0)
}

/// The last whole line of a file of length `len`, and the torn fragment after it, if any.
struct Tail {
    last: Option<Vec<u8>>,
    /// Offset where the torn fragment starts (the file should end there).
    torn_at: Option<u64>,
}

fn read_tail(file: &File, path: &Path, len: u64) -> Result<Tail, AuditError> {
    if len == 0 {
        return Ok(Tail {
            last: None,
            torn_at: None,
        });
    }
    let mut last_byte = [0u8];
    file.read_exact_at(&mut last_byte, len - 1)
        .map_err(io_err("read", path))?;
    let (whole_end, torn_at) = if last_byte[0] == b'\n' {
        (len, None)
    } else {
        let s = line_start_before(file, path, len)?;
        (s, Some(s))
    };
    if whole_end == 0 {
        return Ok(Tail {
            last: None,
            torn_at,
        });
    }
    let start = line_start_before(file, path, whole_end - 1)?;
    let mut line = vec![0u8; usize::try_from(whole_end - 1 - start).unwrap_or(0)];
    file.read_exact_at(&mut line, start)
        .map_err(io_err("read", path))?;
    Ok(Tail {
        last: Some(line),
        torn_at,
    })
}

fn read_first_line(path: &Path) -> Result<Vec<u8>, AuditError> {
    let f = fsutil::open_read(path)?;
    let mut line = Vec::new();
    BufReader::new(f)
        .read_until(b'\n', &mut line)
        .map_err(io_err("read", path))?;
    if line.pop() != Some(b'\n') {
        return Err(AuditError::Damaged {
            path: path.to_owned(),
            reason: "no whole header line".into(),
        });
    }
    Ok(line)
}

fn parse(path: &Path, line: &[u8]) -> Result<Record, AuditError> {
    serde_json::from_slice(line).map_err(|e| AuditError::Damaged {
        path: path.to_owned(),
        reason: format!("unreadable record: {e}"),
    })
}

pub(crate) fn random_id() -> Result<String, AuditError> {
    let mut b = [0u8; 16];
    keyhaven_crypto::fill_random(&mut b).map_err(AuditError::Sign)?;
    Ok(hex::encode(b))
}

/// Lines being built for one write, continuing the chain from a head.
pub(crate) struct Builder {
    pub(crate) buf: Vec<u8>,
    pub(crate) hash: String,
    pub(crate) next_seq: u64,
    pub(crate) log_id: String,
    /// Whether a checkpoint was added (the witness is told after the write).
    checkpointed: bool,
}

impl Builder {
    pub(crate) fn new(hash: String, next_seq: u64, log_id: String) -> Self {
        Builder {
            buf: Vec::new(),
            hash,
            next_seq,
            log_id,
            checkpointed: false,
        }
    }

    pub(crate) fn push(&mut self, body: Body) -> Result<u64, AuditError> {
        let (time, unix_nanos) = now();
        self.push_at(body, time, unix_nanos)
    }

    /// [`Builder::push`] with a given time (a record whose signature covers its time).
    pub(crate) fn push_at(
        &mut self,
        body: Body,
        time: String,
        unix_nanos: u64,
    ) -> Result<u64, AuditError> {
        let rec = Record {
            v: FORMAT_VERSION,
            seq: self.next_seq,
            prev: self.hash.clone(),
            time,
            unix_nanos,
            body,
        };
        let line = serde_json::to_vec(&rec)
            .map_err(|e| AuditError::InvalidEvent(format!("cannot serialize: {e}")))?;
        self.hash = line_hash(&line);
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        self.next_seq += 1;
        Ok(rec.seq)
    }

    fn checkpoint(&mut self, signer: &AuditSigner) -> Result<u64, AuditError> {
        let msg = checkpoint_message(&self.log_id, self.next_seq, &self.hash);
        let sig = signer
            .store
            .sign(&signer.key, &msg)
            .map_err(AuditError::Sign)?;
        self.checkpointed = true;
        self.push(Body::Checkpoint {
            count: self.next_seq,
            head: self.hash.clone(),
            key_id: signer.key.to_string(),
            algorithm: sig.algorithm().short_name().to_owned(),
            signature: hex::encode(sig.as_raw()),
        })
    }
}

fn validate(e: &Event) -> Result<(), AuditError> {
    if let Some(d) = &e.digest
        && (d.len() != 64
            || !d
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(AuditError::InvalidEvent(
            "digest must be 64 lowercase hex characters (SHA-256)".into(),
        ));
    }
    if e.principal.is_empty() || e.operation.is_empty() {
        return Err(AuditError::InvalidEvent(
            "principal and operation are required".into(),
        ));
    }
    Ok(())
}

impl AuditLog {
    /// Opens (creating if absent) the log in `dir`. The directory is made 0700 and refused if
    /// looser; the first file is created with its header if the log is new.
    ///
    /// # Errors
    /// The directory cannot be created or has loose permissions, or the log cannot be written.
    pub fn open(
        dir: &Path,
        signer: AuditSigner,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        fsutil::create_private_dir(dir)?;
        let log = AuditLog {
            dir: dir.to_owned(),
            signer,
            options,
            witness: None,
            batch: Mutex::new(Batch::default()),
            done: Condvar::new(),
            writer: Mutex::new(None),
            dirty: std::sync::atomic::AtomicBool::new(false),
        };
        // Establish (or check) the head now, so a log that cannot be written fails at open.
        log.with_head(|_, _| Ok(()))?;
        Ok(log)
    }

    /// Tells `witness` how far the log has reached at every checkpoint (see [`Witness`]).
    #[must_use]
    pub fn with_witness(mut self, witness: Arc<dyn Witness>) -> Self {
        self.witness = Some(witness);
        self
    }

    /// Tells the witness, if any, what the log holds now. A periodic checkpoint's witness
    /// that cannot be written is skipped (the next checkpoint tells it again); an explicit
    /// one fails.
    fn tell_witness(&self, records: u64, head: &str, explicit: bool) -> Result<(), AuditError> {
        let Some(w) = &self.witness else {
            return Ok(());
        };
        let seen = crate::Expectation {
            records,
            head: Some(head.to_owned()),
        };
        match w.witness(&seen) {
            Err(e) if explicit => Err(AuditError::Unsafe(e)),
            _ => Ok(()),
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ordered log files.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn files(&self) -> Result<Vec<PathBuf>, AuditError> {
        log_files(&self.dir)
    }

    /// Appends one event and returns its sequence number, only once it is fsynced (durable).
    ///
    /// Concurrent callers share one write and one fsync (group commit). Fails closed: if the
    /// record cannot be written and synced, this returns an error and the caller's operation
    /// must fail.
    ///
    /// # Errors
    /// The event is invalid, the log cannot be written or synced, or a due checkpoint cannot
    /// be signed.
    pub fn append(&self, event: Event) -> Result<u64, AuditError> {
        self.enqueue(event, true)
    }

    /// Group commit: queue `event`; the first caller to find no leader writes everything
    /// queued in one write, with one fsync if any of it needs one (`sync`), and hands out the
    /// sequence numbers.
    fn enqueue(&self, event: Event, sync: bool) -> Result<u64, AuditError> {
        validate(&event)?;
        let mut b = lock(&self.batch);
        let ticket = b.next_ticket;
        b.next_ticket += 1;
        b.pending.push((ticket, event, sync));
        loop {
            if let Some(r) = b.results.remove(&ticket) {
                return r.map_err(AuditError::Batch);
            }
            if !b.leader && !b.pending.is_empty() {
                // Lead: take everything queued, write it in one go.
                b.leader = true;
                let work = std::mem::take(&mut b.pending);
                drop(b);
                let sync = work.iter().any(|(_, _, s)| *s);
                let outcome = self.write_events(work.iter().map(|(_, e, _)| e), sync);
                b = lock(&self.batch);
                b.leader = false;
                let mut mine = None;
                match outcome {
                    Ok(seqs) => {
                        for ((t, _, _), s) in work.iter().zip(seqs) {
                            if *t == ticket {
                                mine = Some(Ok(s));
                            } else {
                                b.results.insert(*t, Ok(s));
                            }
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for (t, _, _) in &work {
                            if *t != ticket {
                                b.results.insert(*t, Err(msg.clone()));
                            }
                        }
                        mine = Some(Err(e));
                    }
                }
                self.done.notify_all();
                match mine {
                    Some(r) => return r,
                    None => continue,
                }
            }
            b = self
                .done
                .wait(b)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Appends the outcome record of an operation whose intent record is already durable
    /// (its [`AuditLog::append`] returned), and returns its sequence number.
    ///
    /// The record is written, in order and chained, at once, but made durable by the next
    /// fsynced append of any process (the next operation's intent, a checkpoint, a rotation),
    /// [`AuditLog::sync`], or the kernel's own writeback, instead of by an fsync of its own: one
    /// fsync per audited operation, not two (a short-lived process such as `keyhaven sign` does
    /// not pay a second one at exit either). The guarantee that matters is kept: no private-key operation happens without a
    /// durable intent record (fail closed). A crash (of the machine: a killed process loses
    /// nothing written) may lose the last outcomes; [`crate::verify`] then reports their
    /// intents as unfinished ([`crate::VerifyReport::unfinished`]), never silently. With
    /// [`AuditOptions::durable_outcomes`] it is [`AuditLog::append`].
    ///
    /// # Errors
    /// As [`AuditLog::append`]: a record that cannot be written fails the operation.
    pub fn append_outcome(&self, event: Event) -> Result<u64, AuditError> {
        if self.options.durable_outcomes {
            return self.append(event);
        }
        self.enqueue(event, false)
    }

    /// Makes every record written so far durable (an fsync, if any was written without one).
    ///
    /// # Errors
    /// The log file cannot be synced.
    pub fn sync(&self) -> Result<(), AuditError> {
        if !self.dirty.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let w = lock(&self.writer);
        let path = match w.as_ref() {
            Some(h) => self.dir.join(file_name(h.file_no)),
            None => match log_files(&self.dir)?.last() {
                Some(p) => p.clone(),
                None => return Ok(()),
            },
        };
        let file = fsutil::open_append(&path, false)?;
        file.sync_data().map_err(io_err("sync", &path))?;
        // Cleared only once synced, under the writer lock (no write in between).
        self.dirty
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Appends several events with one write and one fsync (bulk callers, imports); returns
    /// their sequence numbers once they are durable. Same guarantees as [`AuditLog::append`].
    ///
    /// # Errors
    /// As [`AuditLog::append`]; nothing of the batch is acknowledged on error.
    pub fn append_all(&self, events: &[Event]) -> Result<Vec<u64>, AuditError> {
        for e in events {
            validate(e)?;
        }
        self.write_batch(events.iter())
    }

    /// Writes a signed checkpoint now and returns its sequence number.
    ///
    /// # Errors
    /// The log cannot be written or the audit key cannot sign.
    pub fn checkpoint(&self) -> Result<u64, AuditError> {
        let mut seen = None;
        let seq = self.with_head(|b, _| {
            let seq = b.checkpoint(&self.signer)?;
            seen = Some((b.next_seq, b.hash.clone()));
            Ok(seq)
        })?;
        if let Some((records, head)) = seen {
            self.tell_witness(records, &head, true)?;
        }
        Ok(seq)
    }

    /// Seals the current file with a checkpoint and starts the next one (`audit.N+1.log`), whose
    /// header's `prev` is the hash of the last line of file N. Returns the new file's path.
    ///
    /// # Errors
    /// The log cannot be written or the audit key cannot sign.
    pub fn rotate(&self) -> Result<PathBuf, AuditError> {
        let mut w = lock(&self.writer);
        let _flock = fsutil::lock_exclusive(&self.dir.join("audit.lock"))?;
        self.checkpoint_locked(&mut w)?;
        let head = self.refresh(&mut w)?;
        let next = head.file_no + 1;
        let path = self.dir.join(file_name(next));
        let file = fsutil::open_append(&path, true)?;
        fsutil::sync_dir(&self.dir)?;
        let mut b = Builder::new(head.hash.clone(), head.next_seq, head.log_id.clone());
        b.push(Body::Header {
            log_id: head.log_id.clone(),
            file: next,
        })?;
        self.write_sync(&file, &path, 0, &b.buf)?;
        *w = None;
        // The new file counts: removing it (the log's end) is found too.
        self.tell_witness(b.next_seq, &b.hash, true)?;
        Ok(path)
    }

    fn checkpoint_locked(&self, w: &mut Option<Head>) -> Result<u64, AuditError> {
        let head = self.refresh(w)?;
        let path = self.dir.join(file_name(head.file_no));
        let file = fsutil::open_append(&path, false)?;
        let mut b = Builder::new(head.hash.clone(), head.next_seq, head.log_id.clone());
        let s = b.checkpoint(&self.signer)?;
        self.commit(w, &file, &path, head, b)?;
        Ok(s)
    }

    fn write_batch<'e>(
        &self,
        events: impl Iterator<Item = &'e Event>,
    ) -> Result<Vec<u64>, AuditError> {
        self.write_events(events, true)
    }

    /// Writes `events` in one write, fsynced or not (`sync`; a periodic checkpoint due among
    /// them is always synced).
    fn write_events<'e>(
        &self,
        events: impl Iterator<Item = &'e Event>,
        sync: bool,
    ) -> Result<Vec<u64>, AuditError> {
        let every = self.options.checkpoint_every;
        let events: Vec<&Event> = events.collect();
        self.with_head_sync(sync, |b, _| {
            let mut seqs = Vec::with_capacity(events.len());
            for e in &events {
                // A periodic checkpoint that cannot be signed now (the audit key's store is
                // locked or unreachable) is skipped: the events are still written and chained,
                // and the next checkpoint seals them. Only an explicit checkpoint fails.
                if every > 0 && b.next_seq > 0 && b.next_seq % every == 0 {
                    let _ = b.checkpoint(&self.signer);
                }
                seqs.push(b.push(Body::Event((*e).clone()))?);
            }
            Ok(seqs)
        })
    }

    /// Under the writer mutex and the flock: bring the head up to date, let `f` add records,
    /// write them with one write and one fsync.
    fn with_head<T>(
        &self,
        f: impl FnOnce(&mut Builder, &Head) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        self.with_head_sync(true, f)
    }

    /// [`AuditLog::with_head`], with the write fsynced or not (`sync`).
    fn with_head_sync<T>(
        &self,
        sync: bool,
        f: impl FnOnce(&mut Builder, &Head) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let mut w = lock(&self.writer);
        let _flock = fsutil::lock_exclusive(&self.dir.join("audit.lock"))?;
        let head = self.refresh(&mut w)?;
        let path = self.dir.join(file_name(head.file_no));
        let file = fsutil::open_append(&path, false)?;
        let mut b = Builder::new(head.hash.clone(), head.next_seq, head.log_id.clone());
        let out = f(&mut b, &head)?;
        let log_id = head.log_id.clone();
        let b = Builder {
            log_id: log_id.clone(),
            ..b
        };
        // A checkpoint is always synced (the witness is told how far the log reached).
        let sync = sync || b.checkpointed;
        self.commit_with(&mut w, &file, &path, head, b, sync)?;
        Ok(out)
    }

    fn commit(
        &self,
        w: &mut Option<Head>,
        file: &File,
        path: &Path,
        head: Head,
        b: Builder,
    ) -> Result<(), AuditError> {
        self.commit_with(w, file, path, head, b, true)
    }

    fn commit_with(
        &self,
        w: &mut Option<Head>,
        file: &File,
        path: &Path,
        head: Head,
        b: Builder,
        sync: bool,
    ) -> Result<(), AuditError> {
        if b.buf.is_empty() {
            *w = Some(head);
            return Ok(());
        }
        let written = if sync {
            // The fsync makes everything written before it durable too (one file, in order).
            let r = self.write_sync(file, path, head.len, &b.buf);
            if r.is_ok() {
                self.dirty
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            r
        } else {
            let r = self.write_only(file, path, head.len, &b.buf);
            if r.is_ok() {
                self.dirty.store(true, std::sync::atomic::Ordering::Release);
            }
            r
        };
        match written {
            Ok(()) => {
                if b.checkpointed {
                    // Periodic: a witness that cannot be told now is told at the next one.
                    self.tell_witness(b.next_seq, &b.hash, false)?;
                }
                *w = Some(Head {
                    len: head.len + b.buf.len() as u64,
                    hash: b.hash,
                    next_seq: b.next_seq,
                    ..head
                });
                Ok(())
            }
            Err(e) => {
                *w = None;
                Err(e)
            }
        }
    }

    /// One write of whole lines at the end (O_APPEND) and an fsync; on failure, cut the file
    /// back to `old_len` so no partial line stays behind (best effort: a crash leaves a torn
    /// line that the next writer repairs).
    fn write_sync(
        &self,
        file: &File,
        path: &Path,
        old_len: u64,
        buf: &[u8],
    ) -> Result<(), AuditError> {
        Self::write_lines(file, path, old_len, buf, true)
    }

    /// [`AuditLog::write_sync`] without the fsync (the next synced write, or [`AuditLog::sync`],
    /// makes it durable).
    fn write_only(
        &self,
        file: &File,
        path: &Path,
        old_len: u64,
        buf: &[u8],
    ) -> Result<(), AuditError> {
        Self::write_lines(file, path, old_len, buf, false)
    }

    /// The write both share: whole lines, fsynced if `sync`, cut back on failure.
    fn write_lines(
        file: &File,
        path: &Path,
        old_len: u64,
        buf: &[u8],
        sync: bool,
    ) -> Result<(), AuditError> {
        let mut f = file;
        let r = f
            .write_all(buf)
            .map_err(io_err("append to", path))
            .and_then(|()| {
                if sync {
                    file.sync_data().map_err(io_err("sync", path))
                } else {
                    Ok(())
                }
            });
        if r.is_err() {
            let _ = file.set_len(old_len);
            if sync {
                let _ = file.sync_data();
            }
        }
        r
    }

    /// The current head, re-read from disk unless the cached one still matches the file.
    /// Called under the flock. Repairs a torn last line (see the crate docs).
    fn refresh(&self, w: &mut Option<Head>) -> Result<Head, AuditError> {
        let mut file_no = match w.as_ref() {
            Some(h) => h.file_no,
            None => log_files(&self.dir)?
                .last()
                .and_then(|p| {
                    p.file_name()?
                        .to_str()?
                        .strip_prefix("audit.")?
                        .strip_suffix(".log")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0),
        };
        while self.dir.join(file_name(file_no + 1)).exists() {
            file_no += 1;
        }
        if file_no == 0 {
            return self.create_first();
        }
        let path = self.dir.join(file_name(file_no));
        let file = fsutil::open_append(&path, false)?;
        let meta = file.metadata().map_err(io_err("inspect", &path))?;
        if let Some(h) = w.as_ref()
            && h.file_no == file_no
            && h.ino == meta.ino()
            && h.len == meta.len()
        {
            return Ok(h.clone());
        }
        let tail = read_tail(&file, &path, meta.len())?;
        let mut len = meta.len();
        let mut recovery = None;
        if let Some(at) = tail.torn_at {
            let mut frag = vec![0u8; usize::try_from(len - at).unwrap_or(0)];
            file.read_exact_at(&mut frag, at)
                .map_err(io_err("read", &path))?;
            file.set_len(at)
                .map_err(io_err("truncate torn line of", &path))?;
            file.sync_data().map_err(io_err("sync", &path))?;
            recovery = Some(Body::Recovery {
                truncated_bytes: len - at,
                fragment_sha256: hex::encode(Sha256::digest(&frag)),
            });
            len = at;
        }
        let Some(last) = tail.last else {
            // Nothing whole in the file: a writer died between creating it and writing its
            // header (a new log or a rotation). Nothing in it was acknowledged: remove it and
            // continue from the previous file (or start the log).
            drop(file);
            std::fs::remove_file(&path).map_err(io_err("remove empty", &path))?;
            fsutil::sync_dir(&self.dir)?;
            *w = None;
            return if file_no == 1 {
                self.create_first()
            } else {
                self.refresh(w)
            };
        };
        let rec = parse(&path, &last)?;
        let log_id = match (&rec.body, w.as_ref()) {
            (Body::Header { log_id, .. }, _) => log_id.clone(),
            (_, Some(h)) if h.file_no == file_no => h.log_id.clone(),
            _ => match parse(&path, &read_first_line(&path)?)?.body {
                Body::Header { log_id, .. } => log_id,
                _ => {
                    return Err(AuditError::Damaged {
                        path,
                        reason: "the first record is not a header".into(),
                    });
                }
            },
        };
        let mut head = Head {
            file_no,
            ino: meta.ino(),
            len,
            hash: line_hash(&last),
            next_seq: rec.seq + 1,
            log_id,
        };
        if let Some(body) = recovery {
            let mut b = Builder::new(head.hash.clone(), head.next_seq, head.log_id.clone());
            b.push(body)?;
            self.write_sync(&file, &path, len, &b.buf)?;
            head.len += b.buf.len() as u64;
            head.hash = b.hash;
            head.next_seq = b.next_seq;
        }
        Ok(head)
    }

    fn create_first(&self) -> Result<Head, AuditError> {
        let path = self.dir.join(file_name(1));
        let file = fsutil::open_append(&path, true)?;
        fsutil::sync_dir(&self.dir)?;
        let log_id = random_id()?;
        let mut b = Builder::new(genesis(&log_id), 0, log_id.clone());
        b.push(Body::Header {
            log_id: log_id.clone(),
            file: 1,
        })?;
        self.write_sync(&file, &path, 0, &b.buf)?;
        let ino = file.metadata().map_err(io_err("inspect", &path))?.ino();
        Ok(Head {
            file_no: 1,
            ino,
            len: b.buf.len() as u64,
            hash: b.hash,
            next_seq: b.next_seq,
            log_id,
        })
    }

    /// The last `n` event records (oldest first). See [`tail`].
    ///
    /// # Errors
    /// As [`tail`].
    pub fn tail(&self, n: usize) -> Result<Vec<Record>, AuditError> {
        tail(&self.dir, n)
    }

    /// Event records matching `filter`. See [`search`].
    ///
    /// # Errors
    /// As [`search`].
    pub fn search(&self, filter: &Filter) -> Result<Vec<Record>, AuditError> {
        search(&self.dir, filter)
    }
}

/// A search over event records; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this key id.
    pub key_id: Option<String>,
    /// Only this principal.
    pub principal: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// Only at or after this time (unix nanos).
    pub since_nanos: Option<u64>,
    /// Only before this time (unix nanos).
    pub until_nanos: Option<u64>,
}

impl Filter {
    /// Whether a record matches (only events match).
    pub fn matches(&self, r: &Record) -> bool {
        let Body::Event(e) = &r.body else {
            return false;
        };
        self.key_id
            .as_ref()
            .is_none_or(|k| e.key_id.as_ref() == Some(k))
            && self.principal.as_ref().is_none_or(|p| &e.principal == p)
            && self.operation.as_ref().is_none_or(|o| &e.operation == o)
            && self.outcome.is_none_or(|o| e.outcome == o)
            && self.since_nanos.is_none_or(|t| r.unix_nanos >= t)
            && self.until_nanos.is_none_or(|t| r.unix_nanos < t)
    }
}

/// Calls `f` on every whole, readable record of the log in `dir`, in order. Unreadable lines
/// and a torn last line are skipped (use [`crate::verify`] to judge integrity).
fn for_each_record(dir: &Path, mut f: impl FnMut(Record)) -> Result<(), AuditError> {
    for path in log_files(dir)? {
        let file = fsutil::open_read(&path)?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io_err("read", &path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            line.pop();
            if let Ok(r) = serde_json::from_slice::<Record>(&line) {
                f(r);
            }
        }
    }
    Ok(())
}

/// The last `n` event records of the log in `dir`, oldest first.
///
/// # Errors
/// A file cannot be read or has loose permissions.
pub fn tail(dir: &Path, n: usize) -> Result<Vec<Record>, AuditError> {
    let mut ring = std::collections::VecDeque::with_capacity(n.min(4096));
    for_each_record(dir, |r| {
        if matches!(r.body, Body::Event(_)) && n > 0 {
            if ring.len() == n {
                ring.pop_front();
            }
            ring.push_back(r);
        }
    })?;
    Ok(ring.into())
}

/// The event records of the log in `dir` matching `filter`, in order.
///
/// # Errors
/// A file cannot be read or has loose permissions.
pub fn search(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let mut out = Vec::new();
    for_each_record(dir, |r| {
        if filter.matches(&r) {
            out.push(r);
        }
    })?;
    Ok(out)
}

/// Writes every record of the log in `dir` (all kinds) to `out` as one JSON array.
///
/// # Errors
/// A file cannot be read or `out` cannot be written.
pub fn export_json(dir: &Path, out: &mut dyn Write) -> Result<(), AuditError> {
    let mut records = Vec::new();
    for_each_record(dir, |r| records.push(r))?;
    serde_json::to_writer_pretty(&mut *out, &records).map_err(|e| AuditError::Io {
        op: "export",
        path: dir.to_owned(),
        source: std::io::Error::other(e),
    })
}
