//! Several processes at once, processes killed mid-write, and writes that fail (file size limit
//! standing in for a full disk). Children are this test binary re-run on a `child_*` test with
//! an environment variable saying what to do.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_file::{EncryptedStore, KdfParams};

use crate::common::{pass, snapshot};

const CHILD_DIR: &str = "KEYHAVEN_TEST_CHILD_DIR";
const CHILD_TAG: &str = "KEYHAVEN_TEST_CHILD_TAG";
const CHILD_COUNT: &str = "KEYHAVEN_TEST_CHILD_COUNT";

/// Not a test on its own: the body of a child process. Generates keys in a loop.
#[test]
fn child_generate_keys() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let tag = std::env::var(CHILD_TAG).unwrap();
    let count: usize = std::env::var(CHILD_COUNT).unwrap().parse().unwrap();
    let store = EncryptedStore::open(Path::new(&dir), &pass()).unwrap();
    for i in 0..count {
        store
            .generate(Algorithm::EcdsaP256, &format!("{tag}-{i}"))
            .unwrap();
    }
}

fn child(dir: &Path, tag: &str, count: usize) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "processes::child_generate_keys",
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
fn two_processes_generating_at_once_lose_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    EncryptedStore::create(&dir, &pass(), KdfParams::insecure_for_tests()).unwrap();
    let kids: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|t| child(&dir, t, 15).spawn().unwrap())
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = EncryptedStore::open(&dir, &pass()).unwrap();
    let keys = store.list().unwrap();
    assert_eq!(keys.len(), 45);
    assert!(store.check().unwrap().is_empty());
}

#[test]
fn sigkill_during_generation_leaves_every_listed_key_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    EncryptedStore::create(&dir, &pass(), KdfParams::insecure_for_tests()).unwrap();
    for round in 0..8u64 {
        let mut kid = child(&dir, &format!("r{round}"), 10_000).spawn().unwrap();
        // vary the moment of death across rounds
        std::thread::sleep(Duration::from_millis(40 + round * 17));
        kid.kill().unwrap();
        kid.wait().unwrap();
    }
    let store = EncryptedStore::open(&dir, &pass()).unwrap();
    let keys = store.list().unwrap();
    assert!(!keys.is_empty(), "children made some keys before dying");
    assert!(
        store.check().unwrap().is_empty(),
        "no damaged record: {:?}",
        store.check()
    );
    for k in &keys {
        let sig = store.sign(&k.id, b"survivor").unwrap();
        keyhaven_crypto::verify(&k.public_key, b"survivor", &sig).unwrap();
    }
    // labels of killed writes are reusable, and no label is held twice
    let labels: std::collections::BTreeSet<_> = keys.iter().map(|k| k.label.clone()).collect();
    assert_eq!(labels.len(), keys.len());
    store
        .generate(Algorithm::EcdsaP256, "after the storm")
        .unwrap();
}

#[test]
fn a_write_that_fails_midway_leaves_the_store_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let store = EncryptedStore::create(&dir, &pass(), KdfParams::insecure_for_tests()).unwrap();
    store.generate(Algorithm::EcdsaP384, "existing").unwrap();
    let before = snapshot(&dir);
    // A 1-block (512-byte) file size limit: the ~1 KiB record write fails part-way, as on a
    // full disk. SIGXFSZ is ignored so the write returns an error instead of killing the child.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" processes::child_generate_keys --exact --nocapture --test-threads=1")
        .arg(&exe)
        .env(CHILD_DIR, &dir)
        .env(CHILD_TAG, "toolarge")
        .env(CHILD_COUNT, "1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the child's write should have failed"
    );
    let stderr = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("File too large") || stderr.contains("too large"),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&dir),
        before,
        "nothing changed, no temporary file left"
    );
    assert_eq!(store.list().unwrap().len(), 1);
    store.generate(Algorithm::EcdsaP384, "toolarge-0").unwrap();
}
