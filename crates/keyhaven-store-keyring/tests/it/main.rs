//! The keyring store on a real GNOME Keyring (a private D-Bus session per test, from
//! `keyhaven_testkit::devices::SecretServiceSession`) and on the kernel keyring where the kernel
//! allows it: the conformance suite, `secret-tool` and `keyctl` seeing what keyhaven wrote, and
//! every change another program can make to the items, detected and named.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

use keyhaven_core::{Algorithm, ErrorKind, KeyStore, Protection};
use keyhaven_store_keyring::{
    KdfCost, KernelKeyring, Keyring, KeyringConfig, KeyringStatus, KeyringStore, probe,
};
use keyhaven_testkit::devices::SecretServiceSession;
use keyhaven_testkit::{Capabilities, Fixture, checks};
use secrecy::SecretString;

fn pass() -> SecretString {
    SecretString::from("store passphrase")
}

fn config(session: &SecretServiceSession, store: &str) -> KeyringConfig {
    KeyringConfig::new(
        Keyring::SecretService {
            collection: "default".into(),
            bus: Some(session.address().to_owned()),
        },
        store,
    )
    .with_kdf(KdfCost::insecure_for_tests())
}

fn fixture() -> Fixture {
    let session = SecretServiceSession::start();
    let store = KeyringStore::open(&config(&session, "conformance"), &pass()).unwrap();
    Fixture::with_guard(store, session)
}

keyhaven_testkit::conformance_suite!(
    fixture,
    Capabilities::software(Protection::SoftwareEncrypted)
);

/// `secret-tool search --all application keyhaven keyhaven-store STORE`: the items' text.
fn items(session: &SecretServiceSession, store: &str) -> String {
    let out = session.secret_tool(
        &[
            "search",
            "--all",
            "application",
            "keyhaven",
            "keyhaven-store",
            store,
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn lookup(session: &SecretServiceSession, store: &str, item: &str) -> Vec<u8> {
    let out = session.secret_tool(
        &[
            "lookup",
            "application",
            "keyhaven",
            "keyhaven-store",
            store,
            "keyhaven-item",
            item,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn overwrite(session: &SecretServiceSession, store: &str, item: &str, data: &[u8]) {
    let out = session.secret_tool(
        &[
            "store",
            "--label=edited by another program",
            "application",
            "keyhaven",
            "keyhaven-store",
            store,
            "keyhaven-item",
            item,
        ],
        Some(data),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn secret_tool_sees_the_items_and_no_key_material() {
    let session = SecretServiceSession::start();
    let store = KeyringStore::open(&config(&session, "shown"), &pass()).unwrap();
    let k = store.generate(Algorithm::EcdsaP256, "deploy").unwrap();
    let listed = items(&session, "shown");
    assert!(listed.contains("label = keyhaven shown: key"), "{listed}");
    // the key's own label is sealed in the index, not shown in the keyring
    assert!(!listed.contains("deploy"), "{listed}");
    assert!(
        listed.contains(&format!("attribute.keyhaven-item = key-{}", k.id)),
        "{listed}"
    );
    assert!(listed.contains("keyhaven shown: index"), "{listed}");
    // the item holds a sealed PKCS#8, not the key: no DER of a private key, no PEM
    let item = lookup(&session, "shown", &format!("key-{}", k.id));
    let text = String::from_utf8(item).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
    let sealed = base64ct_decode(text.trim());
    assert!(
        !sealed.windows(3).any(|w| w == [0x30, 0x81, 0x87]),
        "no PKCS#8 header"
    );
    // the protection is reported honestly
    assert_eq!(k.protection, Protection::SoftwareEncrypted);
    assert_eq!(store.info().kind, "keyring");
    assert!(
        store
            .info()
            .location
            .contains("Secret Service collection 'default'")
    );
    // a second store in the same keyring is apart
    let other = KeyringStore::open(&config(&session, "other"), &pass()).unwrap();
    assert!(other.list().unwrap().is_empty());
    assert!(other.get(&k.id).is_err());
}

fn base64ct_decode(s: &str) -> Vec<u8> {
    use base64ct::{Base64, Encoding};
    Base64::decode_vec(s).unwrap()
}

#[test]
fn keys_survive_reopening_and_a_wrong_passphrase_is_refused() {
    let session = SecretServiceSession::start();
    let cfg = config(&session, "reopen");
    let id = {
        let store = KeyringStore::open(&cfg, &pass()).unwrap();
        store.generate(Algorithm::Ed25519, "kept").unwrap().id
    };
    let store = KeyringStore::open(&cfg, &pass()).unwrap();
    let sig = store.sign(&id, b"m").unwrap();
    keyhaven_crypto::verify(&store.get(&id).unwrap().public_key, b"m", &sig).unwrap();
    let e = KeyringStore::open(&cfg, &SecretString::from("wrong")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadPassphrase, "{e}");
    assert!(e.to_string().contains("keyring store 'reopen'"), "{e}");
}

#[test]
fn every_change_another_program_makes_is_detected_and_named() {
    let session = SecretServiceSession::start();
    let cfg = config(&session, "attacked");
    let store = KeyringStore::open(&cfg, &pass()).unwrap();
    let a = store.generate(Algorithm::EcdsaP256, "a").unwrap();
    let b = store.generate(Algorithm::EcdsaP256, "b").unwrap();
    let c = store.generate(Algorithm::Ed25519, "c").unwrap();

    // an item's content edited
    overwrite(&session, "attacked", &format!("key-{}", a.id), b"AAAA");
    let e = store.sign(&a.id, b"m").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("key-{}", a.id)) && msg.contains("changed by another program"),
        "{msg}"
    );

    // another key's item put in its place (same algorithm): the id is bound
    let b_item = lookup(&session, "attacked", &format!("key-{}", b.id));
    overwrite(&session, "attacked", &format!("key-{}", a.id), &b_item);
    assert_eq!(
        store.sign(&a.id, b"m").unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    // the others still work, and check() names the damaged one
    store.sign(&b.id, b"m").unwrap();
    let problems = store.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].to_string().contains(&a.id.to_string()));

    // an item removed
    let out = session.secret_tool(
        &[
            "clear",
            "keyhaven-store",
            "attacked",
            "keyhaven-item",
            &format!("key-{}", c.id),
        ],
        None,
    );
    assert!(out.status.success());
    let e = store.sign(&c.id, b"m").unwrap_err();
    assert!(e.to_string().contains("removed by another program"), "{e}");

    // the index rolled back to an older copy: this process notices; a new one sees an item the
    // index does not know (check)
    let old_index = lookup(&session, "attacked", "index");
    let d = store.generate(Algorithm::EcdsaP384, "d").unwrap();
    overwrite(&session, "attacked", "index", &old_index);
    let e = store.list().unwrap_err();
    assert!(e.to_string().contains("rolled back"), "{e}");
    let fresh = KeyringStore::open(&cfg, &pass()).unwrap();
    assert!(fresh.get(&d.id).is_err());
    let problems = fresh.check().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains(&format!("key-{}", d.id))
                && p.to_string().contains("not in the store's index")),
        "{problems:?}"
    );

    // the index edited
    overwrite(&session, "attacked", "index", b"{\"format\":1}");
    assert_eq!(fresh.list().unwrap_err().kind(), ErrorKind::Corrupt);
    let e = KeyringStore::open(&cfg, &pass()).unwrap_err();
    assert!(e.to_string().contains("index item"), "{e}");

    // the index removed while keys remain
    let out = session.secret_tool(
        &[
            "clear",
            "keyhaven-store",
            "attacked",
            "keyhaven-item",
            "index",
        ],
        None,
    );
    assert!(out.status.success());
    let e = KeyringStore::open(&cfg, &pass()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("index item was removed"), "{e}");
}

/// An index item whose Argon2id costs were raised (to exhaust memory or time of whoever opens
/// it) is refused before Argon2id runs.
#[test]
fn forged_argon2_costs_are_refused_before_hashing() {
    let session = SecretServiceSession::start();
    let cfg = config(&session, "costly");
    KeyringStore::open(&cfg, &pass()).unwrap();
    let index = lookup(&session, "costly", "index");
    let mut json: serde_json::Value = serde_json::from_slice(&index).unwrap();
    json["kdf"]["m_cost_kib"] = serde_json::Value::from(4_000_000_000u64);
    overwrite(&session, "costly", "index", json.to_string().as_bytes());
    let e = KeyringStore::open(&cfg, &pass()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");
}

/// With a generation file (the facade keeps one in the home), an index put back from an older
/// copy is refused by a new process too, and a deleted key does not come back.
#[test]
fn a_rolled_back_index_is_refused_by_every_process_with_a_generation_file() {
    let session = SecretServiceSession::start();
    let home = tempfile::tempdir().unwrap();
    let state: std::sync::Arc<dyn keyhaven_fs::StateFiles> =
        std::sync::Arc::new(keyhaven_fs::PlainState);
    let cfg =
        config(&session, "floor").with_generation_file(home.path().join("floor.generation"), state);
    let store = KeyringStore::open(&cfg, &pass()).unwrap();
    let k = store.generate(Algorithm::Ed25519, "gone").unwrap();
    let old_index = lookup(&session, "floor", "index");
    let old_item = lookup(&session, "floor", &format!("key-{}", k.id));
    store.delete(&k.id).unwrap();
    drop(store);
    // the deleted key's item and the index that listed it, put back
    overwrite(&session, "floor", "index", &old_index);
    overwrite(&session, "floor", &format!("key-{}", k.id), &old_item);
    let e = KeyringStore::open(&cfg, &pass()).unwrap_err();
    assert!(e.to_string().contains("rolled back"), "{e}");
}

#[test]
fn a_locked_or_absent_keyring_says_what_to_do() {
    let session = SecretServiceSession::start();
    let cfg = config(&session, "locked");
    let store = KeyringStore::open(&cfg, &pass()).unwrap();
    let k = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    assert!(matches!(probe(&cfg.keyring), KeyringStatus::Ready { .. }));
    session.lock();
    let e = store.sign(&k.id, b"m").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("unlock it"), "{e}");
    let e = KeyringStore::open(&cfg, &pass()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    match probe(&cfg.keyring) {
        KeyringStatus::Locked { keyring, hint } => {
            assert!(keyring.contains("'default'"));
            assert!(hint.contains("gnome-keyring-daemon --unlock"));
        }
        other => panic!("{other:?}"),
    }

    // no bus at that address
    let gone = Keyring::SecretService {
        collection: "default".into(),
        bus: Some("unix:path=/nonexistent/keyhaven-bus".into()),
    };
    let e = KeyringStore::open(&KeyringConfig::new(gone.clone(), "x"), &pass()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(matches!(probe(&gone), KeyringStatus::Unreachable { .. }));
}

#[test]
fn concurrent_processes_serialise_on_the_lock_file() {
    let session = SecretServiceSession::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let cfg = config(&session, "shared").with_lock_file(dir.path().join("shared.lock"));
    // two stores as two processes would have them (each its own view and generation)
    let one = std::sync::Arc::new(KeyringStore::open(&cfg, &pass()).unwrap());
    let two = std::sync::Arc::new(KeyringStore::open(&cfg, &pass()).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 { one.clone() } else { two.clone() };
            std::thread::spawn(move || s.generate(Algorithm::Ed25519, &format!("k{i}")).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(one.list().unwrap().len(), 8);
    assert_eq!(two.list().unwrap().len(), 8);
}

fn kernel_config(store: &str) -> KeyringConfig {
    KeyringConfig::new(Keyring::Kernel(KernelKeyring::User), store)
        .with_kdf(KdfCost::insecure_for_tests())
}

/// The kernel keyring where the kernel allows it; `None` with a note otherwise.
fn kernel_store() -> Option<(KeyringStore, String)> {
    let name = format!("test-{}", keyhaven_core::KeyId::generate().unwrap());
    match probe(&Keyring::Kernel(KernelKeyring::User)) {
        KeyringStatus::Ready { .. } => {}
        other => {
            eprintln!("skipped: the kernel keyring is not usable here: {other:?}");
            return None;
        }
    }
    Some((
        KeyringStore::open(&kernel_config(&name), &pass()).unwrap(),
        name,
    ))
}

/// Removes a kernel store's keys (kernel keys outlive the test process).
struct KernelCleanup(std::sync::Arc<dyn KeyStore>);

impl Drop for KernelCleanup {
    fn drop(&mut self) {
        for k in self.0.list().unwrap_or_default() {
            let _ = self.0.delete(&k.id);
        }
        // and the store's index (kernel keys outlive the test process)
        if let Some(store) = self.0.info().location.split('\'').nth(1) {
            let _ = std::process::Command::new("keyctl")
                .args(["purge", "-p", "user", &format!("keyhaven:{store}:")])
                .output();
        }
    }
}

#[test]
fn the_kernel_keyring_passes_the_conformance_checks_and_keyctl_sees_it() {
    let caps = Capabilities::software(Protection::SoftwareEncrypted);
    let Some((store, name)) = kernel_store() else {
        return;
    };
    drop(store);
    let factory = || {
        let n = format!("test-{}", keyhaven_core::KeyId::generate().unwrap());
        let store: std::sync::Arc<dyn KeyStore> =
            std::sync::Arc::new(KeyringStore::open(&kernel_config(&n), &pass()).unwrap());
        Fixture::with_guard(store.clone(), KernelCleanup(store))
    };
    checks::generates_every_supported_algorithm(&factory, &caps);
    checks::signs_and_verifies_by_public_key_alone(&factory, &caps);
    checks::agreement_keys_agree_and_never_sign(&factory, &caps);
    checks::duplicate_labels_are_refused(&factory, &caps);
    checks::lists_and_looks_up_keys(&factory, &caps);
    checks::delete_then_use_fails(&factory, &caps);
    checks::import_and_export(&factory, &caps);

    // keyctl, a program nobody here wrote, finds the store's items in the user keyring
    let store = KeyringStore::open(&kernel_config(&name), &pass()).unwrap();
    let k = store.generate(Algorithm::EcdsaP256, "seen").unwrap();
    let out = std::process::Command::new("keyctl")
        .args([
            "search",
            "@u",
            "user",
            &format!("keyhaven:{name}:key-{}", k.id),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let serial = String::from_utf8(out.stdout).unwrap();
    // edited by another program: detected
    let out = std::process::Command::new("keyctl")
        .args(["update", serial.trim(), "AAAA"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = store.sign(&k.id, b"m").unwrap_err();
    assert!(e.to_string().contains("changed by another program"), "{e}");
    assert!(e.to_string().contains("kernel user keyring"), "{e}");
    let cleanup = KernelCleanup(std::sync::Arc::new(store));
    drop(cleanup);
    let out = std::process::Command::new("keyctl")
        .args([
            "search",
            "@u",
            "user",
            &format!("keyhaven:{name}:key-{}", k.id),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "deleted keys leave the keyring");
}
