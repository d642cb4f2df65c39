//! Real processes: SIGKILL while signing (metering never under-counts), SIGKILL in the middle
//! of a rotation (one primary, rolled back next run), concurrent `rotate --due` runs, and
//! concurrent prekey takers. Children are this test binary re-run on a `child_*` test with
//! environment variables saying what to do.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven_core::{Algorithm, KeyId, KeyStore};
use keyhaven_rotation::{
    DueAction, EventKind, ManualClock, MeteredStore, PolicySet, PrekeyPool, Registry, Role,
    RotationEngine, UsageMeter, VersionState,
};
use keyhaven_store_file::PemStore;
use keyhaven_store_memory::MemoryStore;

use crate::DAY;

const MODE: &str = "KEYHAVEN_ROTATION_TEST_MODE";
const DIR: &str = "KEYHAVEN_ROTATION_TEST_DIR";
const ARG: &str = "KEYHAVEN_ROTATION_TEST_ARG";

fn child(test: &str, mode: &str, dir: &Path, arg: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(MODE, mode)
        .env(DIR, dir)
        .env(ARG, arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn env() -> Option<(String, PathBuf, String)> {
    let mode = std::env::var(MODE).ok()?;
    Some((
        mode,
        PathBuf::from(std::env::var(DIR).unwrap()),
        std::env::var(ARG).unwrap(),
    ))
}

fn engine(dir: &Path, policy: &str, now: u64) -> RotationEngine {
    let store: Arc<dyn KeyStore> = Arc::new(PemStore::open_or_create(&dir.join("store")).unwrap());
    RotationEngine::new(
        Registry::open(&dir.join("registry")).unwrap(),
        PolicySet::from_toml_str(policy).unwrap(),
        Arc::new(ManualClock::new(now)),
    )
    .with_store("pem", store)
}

/// Not a test on its own: the body of the child processes.
#[test]
fn child_entry() {
    let Some((mode, dir, arg)) = env() else {
        return;
    };
    match mode.as_str() {
        "sign" => {
            let meter = Arc::new(UsageMeter::open(&dir.join("usage"), 16).unwrap());
            let store = MeteredStore::new(MemoryStore::new().unwrap(), meter);
            let k = store.generate(Algorithm::Ed25519, "k").unwrap();
            println!("id {}", k.id);
            for i in 1u64.. {
                store.sign(&k.id, b"counted").unwrap();
                println!("signed {i}");
            }
        }
        "rotate" => {
            let (policy, now) = arg.split_once('|').unwrap();
            let e = engine(&dir, policy, now.parse().unwrap());
            let id = e.registry().list().unwrap()[0].id().to_owned();
            let _ = e.rotate(&id, "child");
        }
        "rotate-due" => {
            let (policy, now) = arg.split_once('|').unwrap();
            let e = engine(&dir, policy, now.parse().unwrap());
            let n = e
                .rotate_due(false)
                .unwrap()
                .iter()
                .filter(|o| matches!(o.action, DueAction::Rotated(_)))
                .count();
            println!("rotated {n}");
        }
        "take" => {
            let store: Arc<dyn KeyStore> = Arc::new(PemStore::open(&dir.join("store")).unwrap());
            let identity = store.find_by_label("identity").unwrap().id;
            let pool = PrekeyPool::open(&dir.join("pool"), store, identity).unwrap();
            for _ in 0..arg.parse::<usize>().unwrap() {
                println!("took {}", pool.take().unwrap().id);
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

const TEST: &str = "processes::child_entry";

#[test]
fn sigkill_while_signing_never_under_counts() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let mut kid = child(TEST, "sign", tmp.path(), "").spawn().unwrap();
        let mut out = BufReader::new(kid.stdout.take().unwrap());
        let mut line = String::new();
        let id: KeyId = loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the child ended early"
            );
            if let Some(id) = line.trim().strip_prefix("id ") {
                break id.parse().unwrap();
            }
        };
        let mut reported = 0u64;
        let stop_at = 40 + round * 37;
        while reported < stop_at {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(n) = line.trim().strip_prefix("signed ") {
                reported = n.parse().unwrap();
            }
        }
        kid.kill().unwrap();
        kid.wait().unwrap();
        let meter = UsageMeter::open(&tmp.path().join("usage"), 16).unwrap();
        let persisted = meter.usage(&id).unwrap();
        assert!(reported >= stop_at, "the child signed");
        assert!(
            persisted >= reported,
            "under-count: {persisted} < {reported}"
        );
        // the child may have made a few more signatures than it reported (its output is
        // buffered in the pipe when it dies), plus at most one block
        assert!(
            persisted <= reported + meter.max_batch() + 64,
            "{persisted} vs {reported}"
        );
    }
}

#[test]
fn sigkill_in_the_middle_of_a_rotation_leaves_one_primary_and_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pre.pid");
    let now = keyhaven_core::unix_now();
    let e = engine(tmp.path(), "", now);
    let store = PemStore::open(&tmp.path().join("store")).unwrap();
    let v1 = store.generate(Algorithm::EcdsaP256, "svc").unwrap();
    let id = e
        .registry()
        .adopt("pem", &v1, Role::Signing, now)
        .unwrap()
        .id()
        .to_owned();
    // the pre-rotation action runs after the new key is generated and before the commit:
    // it records its pid and waits, and the child is killed there
    let policy = format!(
        "[defaults.signing]\npre_rotate = [\"sh\", \"-c\", \"echo $$ > {}.tmp && mv {}.tmp {} && exec sleep 60\"]\naction_timeout = \"120s\"\n",
        marker.display(),
        marker.display(),
        marker.display()
    );
    let mut kid = child(TEST, "rotate", tmp.path(), &format!("{policy}|{now}"))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the child never reached the pre-action"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kid.kill().unwrap();
    kid.wait().unwrap();
    // stop the action's `sleep`, which we started through the child, by its pid
    let pid = std::fs::read_to_string(&marker).unwrap().trim().to_owned();
    let _ = Command::new("kill").args(["-9", &pid]).status();

    // exactly one primary, the old one; the journal names the interrupted rotation
    let key = e.registry().get(&id).unwrap();
    let primaries: Vec<_> = key
        .versions()
        .iter()
        .filter(|v| v.state() == VersionState::Primary)
        .collect();
    assert_eq!(primaries.len(), 1);
    assert_eq!(primaries[0].number(), 1);
    let pending = key
        .pending()
        .expect("journal entry left by the killed rotation")
        .clone();
    let orphan = store
        .find_by_label(&pending.new_label)
        .expect("the new key was generated");

    // the next run rolls it back: orphan deleted, journal cleared, recorded
    assert_eq!(e.recover().unwrap(), vec![id.clone()]);
    assert!(store.get(&orphan.id).is_err());
    let key = e.registry().get(&id).unwrap();
    assert!(key.pending().is_none());
    assert_eq!(key.history().last().unwrap().kind, EventKind::RolledBack);
    // and a rotation now works, reusing the label
    let out = e.rotate(&id, "after the crash").unwrap();
    assert_eq!((out.new_version, out.new_key.label.as_str()), (2, "svc.v2"));
}

#[test]
fn two_processes_running_rotate_due_rotate_once() {
    let tmp = tempfile::tempdir().unwrap();
    let now = keyhaven_core::unix_now();
    let e = engine(tmp.path(), "", now);
    let store = PemStore::open(&tmp.path().join("store")).unwrap();
    for i in 0..5 {
        let k = store
            .generate(Algorithm::Ed25519, &format!("k{i}"))
            .unwrap();
        e.registry().adopt("pem", &k, Role::Signing, now).unwrap();
    }
    let arg = format!("[defaults.signing]\nmax_age = \"30d\"\n|{}", now + 31 * DAY);
    let kids: Vec<_> = (0..2)
        .map(|_| child(TEST, "rotate-due", tmp.path(), &arg).spawn().unwrap())
        .collect();
    let mut total = 0;
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let n: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("rotated "))
            .unwrap()
            .parse()
            .unwrap();
        total += n;
    }
    assert_eq!(total, 5, "each key rotated exactly once across both runs");
    for key in e.registry().list().unwrap() {
        assert_eq!(key.versions().len(), 2);
    }
    assert_eq!(store.list().unwrap().len(), 10);
}

#[test]
fn prekeys_taken_by_concurrent_processes_are_never_handed_out_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(PemStore::create(&tmp.path().join("store")).unwrap());
    let identity = store.generate(Algorithm::Ed25519, "identity").unwrap();
    let pool = PrekeyPool::open(&tmp.path().join("pool"), store, identity.id).unwrap();
    assert_eq!(pool.replenish(10, 60).unwrap(), 60);
    let kids: Vec<_> = (0..3)
        .map(|_| child(TEST, "take", tmp.path(), "20").spawn().unwrap())
        .collect();
    let mut ids = Vec::new();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("took ").map(str::to_owned)),
        );
    }
    assert_eq!(ids.len(), 60);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        60,
        "a prekey was handed out twice"
    );
    let st = pool.status().unwrap();
    assert_eq!((st.available, st.taken), (0, 60));
    assert!(pool.take().is_err());
}
