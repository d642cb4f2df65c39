//! Recovering a damaged log without hiding the damage: the damaged files are set aside as
//! evidence, the good records are kept, and a signed break record says what happened.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{AuditError, io_err};
use crate::fsutil;
use crate::log::{AuditSigner, Builder, file_name, log_files, random_id};
use crate::record::{Body, DamagedFile, Record, break_message, genesis, line_hash};
use crate::verify::{Expectation, ProblemKind, verify};

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovered {
    /// Where verification failed (what the break records).
    pub at: String,
    /// The damaged files, set aside under these names (in the log's directory).
    pub kept: Vec<PathBuf>,
    /// The file the chain goes on in, holding the good records and the break.
    pub file: PathBuf,
    /// The break record's sequence number.
    pub break_seq: u64,
    /// The log's records and head after the break (what a witness should now expect).
    pub now: Expectation,
}

/// Recovers the log in `dir` when verification finds it damaged (or shorter than `expected`,
/// an earlier verification's or a witness's count and head):
///
/// 1. the first damaged file and every file after it are renamed to
///    `audit.N.log.damaged-<unix time>`: kept as evidence, never deleted;
/// 2. a new `audit.N.log` holds that file's records before the damage, verbatim (or a fresh
///    header continuing the chain, when nothing of it was good);
/// 3. a break record, signed by the audit key, follows: where the damage was found, and the
///    name, SHA-256 and size of every file set aside. Verification reports it
///    ([`crate::VerifyReport::breaks`]) and goes on.
///
/// Records that were in the damaged files after the damage are not in the chain any more
/// (they are in the evidence files). Only someone who can use the audit key can record a
/// break.
///
/// # Errors
/// [`AuditError::InvalidEvent`] if the log is whole (nothing to recover); I/O errors; the
/// audit key cannot sign.
pub fn recover(
    dir: &Path,
    signer: &AuditSigner,
    expected: Option<&Expectation>,
) -> Result<Recovered, AuditError> {
    let _lock = fsutil::lock_exclusive(&dir.join("audit.lock"))?;
    let pk = signer
        .store
        .public_key(&signer.key)
        .map_err(AuditError::Sign)?;
    let files = log_files(dir)?;
    let report = match expected {
        Some(e) => crate::verify::verify_dir_expecting(dir, &pk, e)?,
        None => verify(&files, &pk)?,
    };
    let Some(problem) = report.problem.clone() else {
        return Err(AuditError::InvalidEvent(
            "the audit log is whole: there is nothing to recover".into(),
        ));
    };
    let at = problem.to_string();
    // Records removed from the end (the chain itself is whole): nothing to set aside; the
    // break acknowledges the loss at the end of the last file.
    let shortfall = problem.kind == ProblemKind::Deleted
        && report.records > 0
        && files.last() == Some(&problem.file)
        && verify(&files, &pk)?.problem.is_none();
    let (first_bad, good_lines) = if shortfall {
        // `shortfall` holds only when `files` has a last file.
        let last = files.len().saturating_sub(1);
        (last, usize::MAX)
    } else {
        let idx = files
            .iter()
            .position(|f| *f == problem.file)
            .ok_or_else(|| AuditError::Damaged {
                path: problem.file.clone(),
                reason: "the damaged file is not one of the log's files".into(),
            })?;
        (
            idx,
            usize::try_from(problem.line.saturating_sub(1)).unwrap_or(0),
        )
    };
    let target = &files[first_bad];
    let number = file_number(target)?;
    // The good lines of the first damaged file, verbatim.
    let kept_lines = read_lines(target, good_lines)?;
    // The chain head before them: the previous file's last line (or the log's genesis).
    let stamp = keyhaven_core::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut kept = Vec::new();
    let mut damaged = Vec::new();
    if !shortfall {
        for f in &files[first_bad..] {
            let bytes = fs::read(f).map_err(io_err("read", f))?;
            let name = format!(
                "{}.damaged-{stamp}",
                f.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("audit.log")
            );
            let to = dir.join(&name);
            // Never over earlier evidence.
            if fs::symlink_metadata(&to).is_ok() {
                return Err(AuditError::Damaged {
                    path: to,
                    reason: "evidence of that name is already kept; try again".into(),
                });
            }
            fs::rename(f, &to).map_err(io_err("set aside", f))?;
            damaged.push(DamagedFile {
                kept_as: name,
                sha256: hex::encode(Sha256::digest(&bytes)),
                bytes: bytes.len() as u64,
            });
            kept.push(to);
        }
        fsutil::sync_dir(dir)?;
    }
    // Continue the chain: from the kept lines, else from the previous file, else anew.
    let mut b = match kept_lines.last() {
        Some(last) => {
            let rec: Record = parse(target, last)?;
            let log_id = header_log_id(target, &kept_lines)?;
            let mut b = Builder::new(line_hash(last), rec.seq + 1, log_id);
            for l in &kept_lines {
                b.buf.extend_from_slice(l);
                b.buf.push(b'\n');
            }
            b
        }
        None if first_bad > 0 => {
            let prev_file = &files[first_bad - 1];
            let lines = read_lines(prev_file, usize::MAX)?;
            let last = lines.last().ok_or_else(|| AuditError::Damaged {
                path: prev_file.clone(),
                reason: "empty".into(),
            })?;
            let rec = parse(prev_file, last)?;
            let log_id = header_log_id(prev_file, &lines)?;
            let mut b = Builder::new(line_hash(last), rec.seq + 1, log_id.clone());
            b.push(Body::Header {
                log_id,
                file: number,
            })?;
            b
        }
        None => {
            // The first file's header itself is gone: the log starts anew, the break saying
            // why and where the old one is kept.
            let log_id = random_id()?;
            let mut b = Builder::new(genesis(&log_id), 0, log_id.clone());
            b.push(Body::Header { log_id, file: 1 })?;
            b
        }
    };
    let seq = b.next_seq;
    let key_id = signer.key.to_string();
    // The break's own time, the one its record carries (push takes it too: take it once).
    let (time, unix_nanos) = crate::record::now();
    let msg = break_message(&b.log_id, seq, &b.hash, &time, &key_id, &at, &damaged);
    let sig = signer
        .store
        .sign(&signer.key, &msg)
        .map_err(AuditError::Sign)?;
    b.push_at(
        Body::Break {
            at: at.clone(),
            damaged,
            key_id,
            algorithm: sig.algorithm().short_name().to_owned(),
            signature: hex::encode(sig.as_raw()),
        },
        time,
        unix_nanos,
    )?;
    let path = dir.join(file_name(number));
    if shortfall {
        // Append the break to the (whole) last file.
        let f = fsutil::open_append(&path, false)?;
        let added = &b.buf[kept_lines.iter().map(|l| l.len() + 1).sum::<usize>()..];
        std::io::Write::write_all(&mut &f, added).map_err(io_err("append to", &path))?;
        f.sync_data().map_err(io_err("sync", &path))?;
    } else {
        write_new(dir, &path, &b.buf)?;
    }
    Ok(Recovered {
        at,
        kept,
        file: path,
        break_seq: seq,
        now: Expectation {
            records: b.next_seq,
            head: Some(b.hash.clone()),
        },
    })
}

fn file_number(path: &Path) -> Result<u64, AuditError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("audit."))
        .and_then(|n| n.strip_suffix(".log"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| AuditError::Damaged {
            path: path.to_owned(),
            reason: "not a log file name".into(),
        })
}

/// The first `limit` whole lines of `path` (without their newlines); a partial last line is
/// not one of them.
fn read_lines(path: &Path, limit: usize) -> Result<Vec<Vec<u8>>, AuditError> {
    let mut f = fsutil::open_read(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes).map_err(io_err("read", path))?;
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    // After the last newline: nothing (a whole file) or a partial line; neither counts.
    lines.pop();
    lines.truncate(limit);
    Ok(lines)
}

fn parse(path: &Path, line: &[u8]) -> Result<Record, AuditError> {
    serde_json::from_slice(line).map_err(|e| AuditError::Damaged {
        path: path.to_owned(),
        reason: format!("unreadable record: {e}"),
    })
}

fn header_log_id(path: &Path, lines: &[Vec<u8>]) -> Result<String, AuditError> {
    let first = lines.first().ok_or_else(|| AuditError::Damaged {
        path: path.to_owned(),
        reason: "empty".into(),
    })?;
    match parse(path, first)?.body {
        Body::Header { log_id, .. } => Ok(log_id),
        _ => Err(AuditError::Damaged {
            path: path.to_owned(),
            reason: "the first record is not a header".into(),
        }),
    }
}

/// Writes a new log file atomically (temporary file, fsync, rename, directory fsync).
fn write_new(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    keyhaven_fs::atomic_write_new(path, bytes).map_err(AuditError::Unsafe)?;
    fsutil::sync_dir(dir)
}
