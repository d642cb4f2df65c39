//! Verification: the chain is whole, in order, and every checkpoint is signed by the audit key.

use std::fmt;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use keyhaven_core::{Algorithm, PublicKey, Signature};

use crate::error::{AuditError, io_err};
use crate::fsutil;
use crate::log::log_files;
use crate::record::{
    Body, DamagedFile, FORMAT_VERSION, Record, break_message, checkpoint_message, genesis,
    line_hash,
};

/// What is wrong with the first bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The record was changed: its hash no longer matches the next record's `prev` (or its own
    /// fields are inconsistent).
    Edited,
    /// The record is not a readable record of this format (an edit that broke the JSON).
    Malformed,
    /// One or more records before this line were removed.
    Deleted,
    /// This record is out of order (swapped or duplicated).
    Reordered,
    /// The last line is partial: a writer died mid-line, or the file was cut.
    Truncated,
    /// A checkpoint's signature (or its count/head) does not verify with the audit key.
    BadCheckpoint,
    /// A file of the set is missing, out of order, or from another log.
    MissingFile,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Malformed => "malformed",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::BadCheckpoint => "bad checkpoint",
            ProblemKind::MissingFile => "missing file",
        })
    }
}

/// The first bad record: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// The line number in that file (from 1).
    pub line: u64,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Details.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.kind,
            self.detail
        )
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Files read.
    pub files: usize,
    /// Good records (all kinds) before the first problem.
    pub records: u64,
    /// Good event records.
    pub events: u64,
    /// Good checkpoints.
    pub checkpoints: u64,
    /// Sequence number of the last good checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Good records after the last checkpoint (protected by the chain only, not yet signed).
    pub unsealed: u64,
    /// Hash of the last good line (the chain head).
    pub head: Option<String>,
    /// The first bad record, if any.
    pub problem: Option<Problem>,
    /// Sequence numbers of intent records with no outcome record after them: an operation
    /// that was still running, or a crash between the operation and its outcome (outcomes are
    /// made durable with the next record's fsync, so a crash may lose the last ones; see
    /// [`crate::AuditLog::append_outcome`]). Never silent: `keyhaven audit verify` lists them.
    pub unfinished: Vec<u64>,
    /// Breaks a recovery recorded (signed by the audit key): damage found earlier, set aside
    /// as evidence. The log is whole around them, but what the damaged files held after the
    /// damage is not in the chain.
    pub breaks: Vec<RecordedBreak>,
}

/// A break recorded by a recovery ([`crate::AuditLog::recover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedBreak {
    /// The log file holding the break record.
    pub file: PathBuf,
    /// Its line there.
    pub line: u64,
    /// Its sequence number.
    pub seq: u64,
    /// When the recovery ran (RFC 3339).
    pub time: String,
    /// Where verification had failed, and why.
    pub at: String,
    /// The files set aside as evidence.
    pub damaged: Vec<DamagedFile>,
}

impl VerifyReport {
    /// Whether the log is whole and untouched.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verifies the log files in `dir` (see [`verify`]).
///
/// # Errors
/// As [`verify`].
pub fn verify_dir(dir: &Path, audit_public_key: &PublicKey) -> Result<VerifyReport, AuditError> {
    verify(&log_files(dir)?, audit_public_key)
}

/// What an auditor recorded from an earlier verification (`records` and `head` of its
/// [`VerifyReport`]), so that records removed from the end of the log since then (or the whole
/// log replaced) are found even after the last signed checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    /// The log had at least this many records.
    pub records: u64,
    /// The hash of its last line then (the report's `head`), if recorded.
    pub head: Option<String>,
}

/// Verifies the log in `dir` (see [`verify`]) and checks it still holds what an earlier
/// verification saw: at least `expect.records` records, the one at that position hashing to
/// `expect.head`. A shortfall is [`ProblemKind::Deleted`] (records removed from the end, or the
/// log replaced by a shorter one); a different line there is [`ProblemKind::Edited`].
///
/// # Errors
/// As [`verify`].
pub fn verify_dir_expecting(
    dir: &Path,
    audit_public_key: &PublicKey,
    expect: &Expectation,
) -> Result<VerifyReport, AuditError> {
    let files = log_files(dir)?;
    let mut report = verify(&files, audit_public_key)?;
    if report.problem.is_some() || expect.records == 0 {
        return Ok(report);
    }
    let last_file = files
        .last()
        .cloned()
        .unwrap_or_else(|| dir.join("audit.1.log"));
    // The first missing record would be the line after the last one.
    let end_line = std::fs::read(&last_file)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64 + 1)
        .unwrap_or(1);
    if report.records < expect.records {
        report.problem = Some(problem(
            &last_file,
            end_line,
            ProblemKind::Deleted,
            format!(
                "the log holds {} records but an earlier verification saw {}: records were \
                 removed from its end, or the log was replaced",
                report.records, expect.records
            ),
        ));
        return Ok(report);
    }
    if let Some(want) = &expect.head {
        let seq = expect.records - 1;
        let mut found = None;
        for path in &files {
            let file = fsutil::open_read(path)?;
            for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
                let line = line.map_err(io_err("read", path))?;
                if let Ok(r) = serde_json::from_slice::<Record>(&line)
                    && r.seq == seq
                {
                    found = Some((path.clone(), n as u64 + 1, line_hash(&line)));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        match found {
            Some((_, _, hash)) if hash == *want => {}
            Some((path, line, _)) => {
                report.problem = Some(problem(
                    &path,
                    line,
                    ProblemKind::Edited,
                    format!(
                        "record {seq} is not the one an earlier verification saw (head {}): the \
                         log was rewritten from here or replaced",
                        want.get(..16).unwrap_or(want)
                    ),
                ));
            }
            None => {
                report.problem = Some(problem(
                    &last_file,
                    end_line,
                    ProblemKind::Deleted,
                    format!("record {seq}, seen by an earlier verification, is missing"),
                ));
            }
        }
    }
    Ok(report)
}

/// Who started an operation: an outcome record closes the oldest open intent of the same
/// process, operation, backend and principal.
type Starter = (String, u32, String, String, String);

struct State<'a> {
    pk: &'a PublicKey,
    report: VerifyReport,
    /// Intents not yet followed by their outcome, oldest first.
    open: std::collections::HashMap<Starter, std::collections::VecDeque<u64>>,
    /// Who started each open intent.
    open_by_seq: std::collections::HashMap<u64, Starter>,
    /// An outcome naming its intent was seen: from then on only such outcomes close intents
    /// (a denial or a note of the same process closes none).
    exact: bool,
    expected_seq: Option<u64>,
    expected_prev: Option<String>,
    log_id: Option<String>,
    file_no: Option<u64>,
    prev_file: Option<(PathBuf, u64)>,
}

fn problem(file: &Path, line: u64, kind: ProblemKind, detail: impl Into<String>) -> Problem {
    Problem {
        file: file.to_owned(),
        line,
        kind,
        detail: detail.into(),
    }
}

/// Whether a record with sequence number `seq` appears later in `path`, from byte `offset`.
fn appears_later(path: &Path, offset: u64, seq: u64) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_slice::<Record>(&l).ok())
        .any(|r| r.seq == seq)
}

/// Verifies an ordered set of log files (`audit.1.log`, `audit.2.log`, ...) with only the audit
/// public key: every line is a whole record, sequence numbers run on without gaps, each `prev`
/// is the SHA-256 of the line before (the first file's header starts from the log's genesis
/// value; later files start from the previous file's last line), and every checkpoint is signed
/// by the audit key over the log id, count and head. Stops at the first bad record and names it
/// in [`VerifyReport::problem`].
///
/// A set that starts after file 1 is anchored at its first header's `prev` (it cannot be checked
/// against the earlier files). Records after the last checkpoint are protected by the chain
/// alone: removing them from the end is only visible against an expected count or head.
///
/// # Errors
/// A file cannot be opened or read, or has loose permissions (a tampered log is not an error:
/// it is reported in the [`VerifyReport`]).
pub fn verify(files: &[PathBuf], audit_public_key: &PublicKey) -> Result<VerifyReport, AuditError> {
    let mut st = State {
        pk: audit_public_key,
        report: VerifyReport::default(),
        open: std::collections::HashMap::new(),
        open_by_seq: std::collections::HashMap::new(),
        exact: false,
        expected_seq: None,
        expected_prev: None,
        log_id: None,
        file_no: None,
        prev_file: None,
    };
    for path in files {
        st.report.files += 1;
        if let Some(p) = verify_file(&mut st, path)? {
            st.report.problem = Some(p);
            break;
        }
    }
    let mut unfinished: Vec<u64> = st.open.into_values().flatten().collect();
    unfinished.sort_unstable();
    st.report.unfinished = unfinished;
    Ok(st.report)
}

fn verify_file(st: &mut State<'_>, path: &Path) -> Result<Option<Problem>, AuditError> {
    let file = fsutil::open_read(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(512);
    let mut line_no = 0u64;
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        offset += n as u64;
        if line.pop() != Some(b'\n') {
            return Ok(Some(problem(
                path,
                line_no,
                ProblemKind::Truncated,
                format!("partial last line ({n} bytes without a newline)"),
            )));
        }
        let rec: Record = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Some(problem(
                    path,
                    line_no,
                    ProblemKind::Malformed,
                    format!("not a record: {e}"),
                )));
            }
        };
        if rec.v != FORMAT_VERSION {
            return Ok(Some(problem(
                path,
                line_no,
                ProblemKind::Malformed,
                format!("unknown format version {}", rec.v),
            )));
        }
        if line_no == 1 {
            if let Some(p) = check_header(st, path, &rec) {
                return Ok(Some(p));
            }
        } else if matches!(rec.body, Body::Header { .. }) {
            return Ok(Some(problem(
                path,
                line_no,
                ProblemKind::Reordered,
                "a file header in the middle of a file",
            )));
        }
        if let Some(expected) = st.expected_seq
            && rec.seq != expected
        {
            if line_no == 1 {
                return Ok(Some(problem(
                    path,
                    1,
                    ProblemKind::MissingFile,
                    format!(
                        "the chain continues at seq {expected} but this file starts at seq {}: a file is missing or out of order",
                        rec.seq
                    ),
                )));
            }
            let (kind, detail) = if rec.seq > expected && !appears_later(path, offset, expected) {
                (
                    ProblemKind::Deleted,
                    format!(
                        "records {expected}..{} are missing before this line",
                        rec.seq - 1
                    ),
                )
            } else {
                (
                    ProblemKind::Reordered,
                    format!("seq {} where {expected} was expected", rec.seq),
                )
            };
            return Ok(Some(problem(path, line_no, kind, detail)));
        }
        if let Some(prev) = &st.expected_prev
            && &rec.prev != prev
        {
            let p = if line_no > 1 {
                problem(
                    path,
                    line_no - 1,
                    ProblemKind::Edited,
                    "its hash does not match the next record's prev",
                )
            } else if let Some((pf, pl)) = &st.prev_file {
                problem(
                    pf,
                    *pl,
                    ProblemKind::Edited,
                    "its hash does not match the next file's header prev",
                )
            } else {
                problem(
                    path,
                    1,
                    ProblemKind::Edited,
                    "the header's prev is not the log's genesis value",
                )
            };
            return Ok(Some(p));
        }
        if let Body::Checkpoint {
            count,
            head,
            key_id: _,
            algorithm,
            signature,
        } = &rec.body
        {
            if let Err(why) = check_checkpoint(st, &rec, *count, head, algorithm, signature) {
                return Ok(Some(problem(
                    path,
                    line_no,
                    ProblemKind::BadCheckpoint,
                    why,
                )));
            }
            st.report.checkpoints += 1;
            st.report.last_checkpoint = Some(rec.seq);
            st.report.unsealed = 0;
        } else if let Body::Break {
            at,
            damaged,
            key_id,
            algorithm,
            signature,
        } = &rec.body
        {
            let checked = check_break(st, &rec, key_id, at, damaged, algorithm, signature)
                .and_then(|()| check_evidence(path, damaged));
            if let Err(why) = checked {
                return Ok(Some(problem(
                    path,
                    line_no,
                    ProblemKind::BadCheckpoint,
                    why,
                )));
            }
            st.report.breaks.push(RecordedBreak {
                file: path.to_owned(),
                line: line_no,
                seq: rec.seq,
                time: rec.time.clone(),
                at: at.clone(),
                damaged: damaged.clone(),
            });
            st.report.unsealed += 1;
        } else {
            st.report.unsealed += 1;
        }
        if let Body::Event(e) = &rec.body {
            st.report.events += 1;
            let starter = (
                e.host.clone(),
                e.pid,
                e.operation.clone(),
                e.backend.clone(),
                e.principal.clone(),
            );
            if e.outcome == crate::Outcome::Intent {
                st.open
                    .entry(starter.clone())
                    .or_default()
                    .push_back(rec.seq);
                st.open_by_seq.insert(rec.seq, starter);
            } else {
                // An outcome names its intent; one written before outcomes did closes the
                // oldest open intent of the same process, operation, backend and principal.
                if e.intent.is_some() {
                    st.exact = true;
                }
                let closed = match e.intent {
                    Some(seq) => st.open_by_seq.remove(&seq).map(|s| (s, seq)),
                    None if st.exact => None,
                    None => st
                        .open
                        .get(&starter)
                        .and_then(|q| q.front().copied())
                        .map(|seq| (starter, seq)),
                };
                if let Some((who, seq)) = closed {
                    st.open_by_seq.remove(&seq);
                    if let Some(q) = st.open.get_mut(&who) {
                        q.retain(|s| *s != seq);
                        if q.is_empty() {
                            st.open.remove(&who);
                        }
                    }
                }
            }
        }
        st.report.records += 1;
        let h = line_hash(&line);
        st.expected_prev = Some(h.clone());
        st.report.head = Some(h);
        st.expected_seq = Some(rec.seq + 1);
    }
    if line_no == 0 {
        return Ok(Some(problem(
            path,
            1,
            ProblemKind::Truncated,
            "empty file: no header record",
        )));
    }
    st.prev_file = Some((path.to_owned(), line_no));
    Ok(None)
}

fn check_header(st: &mut State<'_>, path: &Path, rec: &Record) -> Option<Problem> {
    let Body::Header { log_id, file } = &rec.body else {
        return Some(problem(
            path,
            1,
            ProblemKind::Edited,
            "the first record of a file is not a header",
        ));
    };
    match (&st.log_id, st.file_no) {
        (None, _) => {
            st.log_id = Some(log_id.clone());
            if *file == 1 {
                st.expected_prev = Some(genesis(log_id));
            }
        }
        (Some(id), Some(n)) => {
            if id != log_id {
                return Some(problem(
                    path,
                    1,
                    ProblemKind::MissingFile,
                    "this file belongs to another log",
                ));
            }
            if *file != n + 1 {
                return Some(problem(
                    path,
                    1,
                    ProblemKind::MissingFile,
                    format!("file {file} follows file {n}: file {} is missing", n + 1),
                ));
            }
        }
        (Some(_), None) => {}
    }
    st.file_no = Some(*file);
    None
}

/// A break's signature is the audit key's, over its place in the chain and what it set aside.
fn check_break(
    st: &State<'_>,
    rec: &Record,
    key_id: &str,
    at: &str,
    damaged: &[DamagedFile],
    algorithm: &str,
    signature: &str,
) -> Result<(), String> {
    let sig = decode_signature(st, algorithm, signature)?;
    let log_id = st.log_id.as_deref().unwrap_or_default();
    let msg = break_message(log_id, rec.seq, &rec.prev, &rec.time, key_id, at, damaged);
    keyhaven_crypto::verify(st.pk, &msg, &sig).map_err(|_| {
        "a recorded break whose signature does not verify with the audit public key".to_owned()
    })
}

/// The evidence a break set aside is still there, byte for byte.
fn check_evidence(log_file: &Path, damaged: &[DamagedFile]) -> Result<(), String> {
    let dir = log_file.parent().unwrap_or_else(|| Path::new("."));
    for d in damaged {
        if d.kept_as.contains('/') || d.kept_as.starts_with('.') {
            return Err(format!(
                "a break names evidence outside the log: {}",
                d.kept_as
            ));
        }
        let path = dir.join(&d.kept_as);
        // A regular file of the recorded size (never a link, a pipe or a device), then hashed.
        let gone =
            |why: String| format!("the evidence {} this break set aside {why}", path.display());
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| gone(format!("cannot be found ({e}): it was removed")))?;
        if !meta.is_file() || meta.len() != d.bytes {
            return Err(gone("was replaced or changed".into()));
        }
        let mut f = fsutil::open_read(&path).map_err(|e| gone(format!("cannot be read ({e})")))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, d.bytes + 1), &mut bytes)
            .map_err(|e| gone(format!("cannot be read ({e})")))?;
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if sha != d.sha256 {
            return Err(format!(
                "the evidence {} this break set aside was changed",
                path.display()
            ));
        }
    }
    Ok(())
}

fn decode_signature(st: &State<'_>, algorithm: &str, signature: &str) -> Result<Signature, String> {
    let alg =
        Algorithm::from_str(algorithm).map_err(|_| format!("unknown algorithm {algorithm}"))?;
    if alg != st.pk.algorithm() {
        return Err(format!(
            "signed with {alg}, but the audit key is {}",
            st.pk.algorithm()
        ));
    }
    let raw = hex::decode(signature).map_err(|_| "signature is not hex".to_owned())?;
    Signature::from_raw(alg, raw).map_err(|e| format!("bad signature encoding: {e}"))
}

fn check_checkpoint(
    st: &State<'_>,
    rec: &Record,
    count: u64,
    head: &str,
    algorithm: &str,
    signature: &str,
) -> Result<(), String> {
    if count != rec.seq || head != rec.prev {
        return Err("its count or head does not match its place in the chain".into());
    }
    let sig = decode_signature(st, algorithm, signature)?;
    let log_id = st.log_id.as_deref().unwrap_or_default();
    let msg = checkpoint_message(log_id, count, head);
    keyhaven_crypto::verify(st.pk, &msg, &sig)
        .map_err(|_| "the signature does not verify with the audit public key".to_owned())
}
