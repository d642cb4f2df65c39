//! keyhaven-audit: the chain verifies, tampering is found and named, rotation keeps the chain,
//! concurrent and killed processes leave one unbroken chain, and an unwritable log fails closed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod decorators;
mod processes;
mod signer;
mod simple;

use keyhaven_core::ErrorKind;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyhaven_audit::{
    AuditLog, AuditOptions, AuditSigner, Body, Event, Filter, Outcome, ProblemKind, Record,
    VerifyReport, verify, verify_dir,
};
use keyhaven_core::{Algorithm, KeyInfo, KeyStore};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

pub use signer::OneKeyStore;

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub store: Arc<dyn KeyStore>,
    pub key: KeyInfo,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let store: Arc<dyn KeyStore> = Arc::new(OneKeyStore::default());
        let key = store.generate(Algorithm::EcdsaP256, "audit").unwrap();
        Fixture {
            _tmp: tmp,
            dir,
            store,
            key,
        }
    }

    pub fn signer(&self) -> AuditSigner {
        AuditSigner {
            store: self.store.clone(),
            key: self.key.id.clone(),
        }
    }

    pub fn open(&self, every: u64) -> AuditLog {
        AuditLog::open(
            &self.dir,
            self.signer(),
            AuditOptions::checkpoint_every(every),
        )
        .unwrap()
    }

    pub fn verify(&self) -> VerifyReport {
        verify_dir(&self.dir, &self.key.public_key).unwrap()
    }

    pub fn file(&self, n: u64) -> PathBuf {
        self.dir.join(format!("audit.{n}.log"))
    }
}

pub fn event(principal: &str, i: usize) -> Event {
    Event::new(principal, "sign", "file", Outcome::Allowed)
        .key(format!("key-{}", i % 3), Some(1))
        .signed_data(format!("message {i}").as_bytes())
        .request_id(format!("req-{principal}-{i}"))
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

/// A log of a header and 20 events, no automatic checkpoints.
fn twenty() -> Fixture {
    let fx = Fixture::new();
    let log = fx.open(0);
    for i in 0..20 {
        log.append(event("alice", i)).unwrap();
    }
    fx
}

fn problem(fx: &Fixture) -> (u64, ProblemKind) {
    let r = fx.verify();
    let p = r.problem.expect("a problem");
    (p.line, p.kind)
}

#[test]
fn chain_verifies_with_checkpoints_and_reads_back() {
    let fx = Fixture::new();
    let log = fx.open(10);
    for i in 0..50 {
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        let mut e = event(who, i);
        if i % 7 == 0 {
            e.outcome = Outcome::Denied;
            e.reason = Some("not allowed".into());
        }
        log.append(e).unwrap();
    }
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!(r.events, 50);
    assert!(r.checkpoints >= 5, "{r:?}");
    // the data is never stored, only its digest
    let text = fs::read_to_string(fx.file(1)).unwrap();
    assert!(!text.contains("message 3"));
    assert!(text.contains(&hex::encode(Sha256::digest(b"message 3"))));
    assert_eq!(
        fs::metadata(fx.file(1)).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(&fx.dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let tail = log.tail(3).unwrap();
    assert_eq!(tail.len(), 3);
    let Body::Event(last) = &tail[2].body else {
        panic!()
    };
    assert_eq!(last.request_id.as_deref(), Some("req-bob-49"));

    let denied = log
        .search(&Filter {
            outcome: Some(Outcome::Denied),
            principal: Some("alice".into()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(denied.len(), 4); // 0, 14, 28, 42
    let by_key = log
        .search(&Filter {
            key_id: Some("key-0".into()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(by_key.len(), 17);
    let first = &by_key[0];
    let none_before = log
        .search(&Filter {
            until_nanos: Some(first.unix_nanos),
            ..Filter::default()
        })
        .unwrap();
    assert!(none_before.is_empty());

    let mut out = Vec::new();
    keyhaven_audit::export_json(&fx.dir, &mut out).unwrap();
    let all: Vec<Record> = serde_json::from_slice(&out).unwrap();
    assert_eq!(all.len() as u64, r.records);
}

#[test]
fn edited_byte_is_named() {
    let fx = twenty();
    let mut l = lines(&fx.file(1));
    let pos = l[5].windows(5).position(|w| w == b"alice").unwrap();
    l[5][pos + 4] = b'x';
    write_lines(&fx.file(1), &l);
    assert_eq!(problem(&fx), (6, ProblemKind::Edited));
}

#[test]
fn broken_json_is_named() {
    let fx = twenty();
    let mut l = lines(&fx.file(1));
    l[7][0] = b'[';
    write_lines(&fx.file(1), &l);
    assert_eq!(problem(&fx), (8, ProblemKind::Malformed));
}

#[test]
fn deleted_line_is_named() {
    let fx = twenty();
    let mut l = lines(&fx.file(1));
    l.remove(5);
    write_lines(&fx.file(1), &l);
    assert_eq!(problem(&fx), (6, ProblemKind::Deleted));
}

#[test]
fn swapped_lines_are_named() {
    let fx = twenty();
    let mut l = lines(&fx.file(1));
    l.swap(5, 6);
    write_lines(&fx.file(1), &l);
    assert_eq!(problem(&fx), (6, ProblemKind::Reordered));
}

#[test]
fn truncated_last_line_is_named_and_next_append_repairs_it() {
    let fx = twenty();
    let len = fs::metadata(fx.file(1)).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(fx.file(1)).unwrap();
    f.set_len(len - 30).unwrap();
    drop(f);
    assert_eq!(problem(&fx), (21, ProblemKind::Truncated));
    // The next writer cuts the torn fragment and records that it did.
    let log = fx.open(0);
    log.append(event("carol", 0)).unwrap();
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!(r.events, 20); // 19 whole + carol
    let l = lines(&fx.file(1));
    let rec: Record = serde_json::from_slice(l[20].trim_ascii_end()).unwrap();
    assert!(matches!(rec.body, Body::Recovery { .. }), "{rec:?}");
}

#[test]
fn forged_checkpoint_is_named() {
    let fx = twenty();
    let log = fx.open(0);
    log.checkpoint().unwrap();
    log.append(event("alice", 99)).unwrap();
    assert!(fx.verify().is_ok());
    // The attacker edits record 5 and rebuilds the whole chain, but cannot sign as the audit key.
    let attacker = OneKeyStore::default();
    let akey = attacker.generate(Algorithm::EcdsaP256, "evil").unwrap();
    let mut recs: Vec<Record> = lines(&fx.file(1))
        .iter()
        .map(|l| serde_json::from_slice(l.trim_ascii_end()).unwrap())
        .collect();
    let Body::Event(e) = &mut recs[5].body else {
        panic!()
    };
    e.principal = "mallory".into();
    let mut out = Vec::new();
    let mut prev = recs[0].prev.clone();
    for r in &mut recs {
        r.prev = prev.clone();
        if let Body::Checkpoint {
            head, signature, ..
        } = &mut r.body
        {
            *head = prev.clone();
            let Body::Header { log_id, .. } = &recs_header(&out) else {
                panic!()
            };
            let msg = format!(
                "keyhaven-audit/v1 checkpoint\n{log_id}\n{}\n{prev}\n",
                r.seq
            );
            *signature = hex::encode(attacker.sign(&akey.id, msg.as_bytes()).unwrap().as_raw());
        }
        let line = serde_json::to_vec(r).unwrap();
        prev = hex::encode(Sha256::digest(&line));
        out.push(line);
    }
    let l: Vec<Vec<u8>> = out
        .into_iter()
        .map(|mut l| {
            l.push(b'\n');
            l
        })
        .collect();
    write_lines(&fx.file(1), &l);
    assert_eq!(problem(&fx), (22, ProblemKind::BadCheckpoint));
    // ...and the forged log verifies under the attacker's key, proving the rebuild was faithful.
    let r = verify_dir(&fx.dir, &akey.public_key).unwrap();
    assert!(r.is_ok(), "{:?}", r.problem);
}

fn recs_header(lines: &[Vec<u8>]) -> Body {
    serde_json::from_slice::<Record>(&lines[0]).unwrap().body
}

#[test]
fn rotation_keeps_the_chain_and_finds_a_missing_file() {
    let fx = Fixture::new();
    let log = fx.open(7);
    for round in 0..3 {
        for i in 0..10 {
            log.append(event("alice", round * 10 + i)).unwrap();
        }
        if round < 2 {
            log.rotate().unwrap();
        }
    }
    assert_eq!(log.files().unwrap().len(), 3);
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!((r.files, r.events), (3, 30));
    // A fresh handle continues in the newest file.
    fx.open(7).append(event("bob", 0)).unwrap();
    assert_eq!(fx.verify().events, 31);

    let r = verify(&[fx.file(1), fx.file(3)], &fx.key.public_key).unwrap();
    let p = r.problem.unwrap();
    assert_eq!(
        (p.file, p.line, p.kind),
        (fx.file(3), 1, ProblemKind::MissingFile)
    );
    // A later file alone is anchored at its header.
    let r = verify(&[fx.file(2), fx.file(3)], &fx.key.public_key).unwrap();
    assert!(r.is_ok(), "{:?}", r.problem);
}

#[test]
fn threads_share_fsyncs_and_keep_one_chain() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(25));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.append(event(&format!("t{t}"), i)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!(r.events, 400);
}

#[test]
fn unwritable_log_fails_closed() {
    let fx = Fixture::new();
    // a path under a regular file
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
        .create(&fx.dir)
        .unwrap();
    let plain = fx.dir.join("plain");
    fs::write(&plain, b"x").unwrap();
    assert!(AuditLog::open(&plain.join("audit"), fx.signer(), AuditOptions::default()).is_err());

    let log = fx.open(0);
    log.append(event("alice", 0)).unwrap();
    // loose permissions are refused
    fs::set_permissions(fx.file(1), fs::Permissions::from_mode(0o644)).unwrap();
    let err = log.append(event("alice", 1)).unwrap_err();
    let core: keyhaven_core::Error = err.into();
    assert!(
        matches!(&core, e if e.is(ErrorKind::PermissionDenied)),
        "{core}"
    );
    fs::set_permissions(fx.file(1), fs::Permissions::from_mode(0o600)).unwrap();
    log.append(event("alice", 2)).unwrap();
    // the log removed mid-run
    fs::remove_file(fx.file(1)).unwrap();
    assert!(log.append(event("alice", 3)).is_err());
    // the log replaced by a directory
    fs::create_dir(fx.file(1)).unwrap();
    assert!(log.append(event("alice", 4)).is_err());
    // a read-only file (only meaningful when not root: root may write anyway)
    let fx2 = Fixture::new();
    let log2 = fx2.open(0);
    fs::set_permissions(fx2.file(1), fs::Permissions::from_mode(0o400)).unwrap();
    let probe = fs::OpenOptions::new().append(true).open(fx2.file(1));
    if probe.is_err() {
        assert!(log2.append(event("alice", 0)).is_err());
    }
    // an invalid digest is refused before anything is written
    let mut e = event("alice", 0);
    e.digest = Some("not hex".into());
    assert!(fx2.open(0).append(e).is_err());
}

#[test]
fn empty_file_from_a_crashed_rotation_is_dropped() {
    let fx = twenty();
    // a writer died after creating audit.2.log and before writing its header
    fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(fx.file(2))
        .unwrap()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(problem(&fx).1, ProblemKind::Truncated);
    fx.open(0).append(event("bob", 0)).unwrap();
    assert!(!fx.file(2).exists());
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!(r.events, 21);
}

#[test]
fn loose_directory_is_refused() {
    let fx = Fixture::new();
    fs::create_dir_all(&fx.dir).unwrap();
    fs::set_permissions(&fx.dir, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(AuditLog::open(&fx.dir, fx.signer(), AuditOptions::default()).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Rotate,
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6).prop_map(Op::Append),
        1 => Just(Op::Rotate),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_appends_and_rotations_verify(ops in prop::collection::vec(op(), 1..12), every in 0u64..6) {
        let fx = Fixture::new();
        let mut log = fx.open(every);
        let mut events = 0u64;
        for o in ops {
            match o {
                Op::Append(n) => for i in 0..n {
                    log.append(event("p", i)).unwrap();
                    events += 1;
                },
                Op::Rotate => { log.rotate().unwrap(); }
                Op::Checkpoint => { log.checkpoint().unwrap(); }
                Op::Reopen => log = fx.open(every),
            }
        }
        let r = fx.verify();
        prop_assert!(r.is_ok(), "{:?}", r.problem);
        prop_assert_eq!(r.events, events);
    }
}

/// A periodic checkpoint the audit key cannot sign (its store is locked) is skipped, not
/// fatal: the events are written and chained, an explicit checkpoint fails clearly, and the
/// next periodic checkpoint that can be signed seals everything before it.
#[test]
fn an_unsignable_periodic_checkpoint_is_skipped_not_fatal() {
    let f = Fixture::new();
    let locked = AuditSigner {
        store: f.store.clone(),
        key: "not-the-audit-key".parse().unwrap(),
    };
    let log = AuditLog::open(&f.dir, locked, AuditOptions::checkpoint_every(3)).unwrap();
    for i in 0..7 {
        log.append(event("alice", i)).unwrap();
    }
    assert!(
        log.checkpoint().is_err(),
        "an explicit checkpoint says it failed"
    );
    drop(log);
    let report = f.verify();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!((report.events, report.checkpoints), (7, 0));
    // With the key back, the next periodic checkpoint seals all of it.
    let log = f.open(3);
    for i in 7..10 {
        log.append(event("alice", i)).unwrap();
    }
    drop(log);
    let report = f.verify();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert!(report.checkpoints >= 1);
    assert_eq!(report.events, 10);
}

/// Records removed from the end after the last checkpoint pass a plain verification (only the
/// chain protects them), but not one that checks what an earlier verification saw; nor does a
/// log replaced by a fresh one.
#[test]
fn an_expectation_from_an_earlier_verification_catches_removal_at_the_end() {
    let f = Fixture::new();
    let log = f.open(4);
    for i in 0..10 {
        log.append(event("alice", i)).unwrap();
    }
    drop(log);
    let seen = f.verify();
    let expect = keyhaven_audit::Expectation {
        records: seen.records,
        head: seen.head.clone(),
    };
    let check =
        || keyhaven_audit::verify_dir_expecting(&f.dir, &f.key.public_key, &expect).unwrap();
    assert!(check().is_ok());
    // Cut the last two lines (after the last checkpoint).
    let path = f.file(1);
    let text = fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    let cut = kept[..kept.len() - 2].join("\n") + "\n";
    fs::write(&path, cut).unwrap();
    assert!(f.verify().is_ok(), "the chain alone cannot see it");
    let p = check().problem.expect("found");
    assert_eq!(p.kind, ProblemKind::Deleted, "{p}");
    assert_eq!(p.line, kept.len() as u64 - 1, "{p}");
    // A whole new log in its place: a different record at that position.
    fs::remove_dir_all(&f.dir).unwrap();
    let log = f.open(4);
    for i in 0..12 {
        log.append(event("mallory", i)).unwrap();
    }
    drop(log);
    assert!(f.verify().is_ok());
    assert_eq!(check().problem.expect("found").kind, ProblemKind::Edited);
}
