//! Real processes: two appending at once, and one killed (SIGKILL) mid-loop. Children are this
//! test binary re-run on `child_append` with environment variables saying what to do. Children
//! write no automatic checkpoints (each child has its own audit key in memory); the parent
//! checkpoints at the end with its key.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyhaven_audit::{AuditLog, AuditOptions, AuditSigner, Body, ProblemKind};
use keyhaven_core::{Algorithm, KeyStore};

use crate::{Fixture, OneKeyStore, event};

const CHILD_DIR: &str = "KEYHAVEN_AUDIT_CHILD_DIR";
const CHILD_TAG: &str = "KEYHAVEN_AUDIT_CHILD_TAG";
const CHILD_COUNT: &str = "KEYHAVEN_AUDIT_CHILD_COUNT";
/// When set, each event carries a reason of this many bytes (large writes can be torn by a kill).
const CHILD_BIG: &str = "KEYHAVEN_AUDIT_CHILD_BIG";

/// Not a test on its own: the body of a child process. Appends in a loop.
#[test]
fn child_append() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let tag = std::env::var(CHILD_TAG).unwrap();
    let count: usize = std::env::var(CHILD_COUNT).unwrap().parse().unwrap();
    let store = std::sync::Arc::new(OneKeyStore::default());
    let key = store.generate(Algorithm::Ed25519, "child").unwrap();
    let signer = AuditSigner { store, key: key.id };
    let log = AuditLog::open(Path::new(&dir), signer, AuditOptions::checkpoint_every(0)).unwrap();
    let big: usize = std::env::var(CHILD_BIG).map_or(0, |b| b.parse().unwrap());
    for i in 0..count {
        let mut e = event(&tag, i);
        if big > 0 {
            e.reason = Some("x".repeat(big));
        }
        log.append(e).unwrap();
    }
}

fn child(dir: &Path, tag: &str, count: usize) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "processes::child_append",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR, dir)
    .env(CHILD_TAG, tag)
    .env(CHILD_COUNT, count.to_string())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

#[test]
fn two_processes_make_one_unbroken_chain() {
    let fx = Fixture::new();
    let log = fx.open(0); // creates the log
    let kids: Vec<_> = ["a", "b"]
        .iter()
        .map(|t| child(&fx.dir, t, 200).spawn().unwrap())
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    log.checkpoint().unwrap();
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!(r.events, 400);
    assert_eq!(r.unsealed, 0);
}

#[test]
fn sigkill_mid_appends_leaves_a_verifiable_log() {
    let fx = Fixture::new();
    let log = fx.open(0);
    let mut before = 0;
    let mut torn = 0;
    for round in 0..6u64 {
        let mut cmd = child(&fx.dir, &format!("r{round}"), 1_000_000);
        if round % 2 == 1 {
            cmd.env(CHILD_BIG, (8 << 20).to_string());
        }
        let mut kid = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(40 + round * 17));
        kid.kill().unwrap(); // SIGKILL
        kid.wait().unwrap();
        let r = fx.verify();
        match &r.problem {
            None => {}
            // a torn last line is reported as truncation, and nothing before it is lost
            Some(p) => {
                assert_eq!(p.kind, ProblemKind::Truncated, "{p}");
                torn += 1;
            }
        }
        assert!(r.events >= before, "{r:?}");
        // the next append handles a torn line (cut + recovery record) and the log verifies
        log.append(event("parent", round as usize)).unwrap();
        let r = fx.verify();
        assert!(r.is_ok(), "{:?}", r.problem);
        before = r.events;
    }
    log.checkpoint().unwrap();
    assert!(fx.verify().is_ok());
    eprintln!("torn last lines seen after SIGKILL: {torn} of 6 rounds");
    assert!(before > 6, "children appended nothing");
    // the parent's own events are all there
    let mine = log
        .search(&keyhaven_audit::Filter {
            principal: Some("parent".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(mine.len(), 6);
    assert!(mine.iter().all(|r| matches!(r.body, Body::Event(_))));
}
