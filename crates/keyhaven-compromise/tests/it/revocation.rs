//! Revocation statements, the registry, the decorator, exported lists, another process.

use keyhaven_core::ErrorKind;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use keyhaven_compromise::{Revocation, RevocationCheckedStore, RevocationList, Revocations};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_file::{EncryptedStore, KdfParams};
use keyhaven_store_memory::MemoryStore;
use secrecy::SecretString;

use crate::{authority, authority_key, private_tempdir, sub};

#[test]
fn a_statement_verifies_and_every_altered_field_is_refused() {
    let auth = authority();
    let store = MemoryStore::new().unwrap();
    let key = store.generate(Algorithm::Ed25519, "k").unwrap();
    let s = Revocation::issue(
        &auth,
        &key,
        1_700_000_000,
        "key compromise",
        true,
        Some("CR-1"),
    )
    .unwrap();
    let pk = authority_key(&auth);
    s.verify(&pk).unwrap();
    assert_eq!(s.fingerprint, key.fingerprint().to_hex());

    type Alter = Box<dyn Fn(&mut Revocation)>;
    let alter: Vec<Alter> = vec![
        Box::new(|r| r.key_id.push('0')),
        Box::new(|r| r.fingerprint.replace_range(0..1, "f")),
        Box::new(|r| r.revoked_at += 1),
        Box::new(|r| r.reason.push('!')),
        Box::new(|r| r.compromised = false),
        Box::new(|r| r.report = None),
        Box::new(|r| r.signature.replace_range(4..8, "AAAA")),
    ];
    for (i, f) in alter.iter().enumerate() {
        let mut forged = s.clone();
        f(&mut forged);
        if forged == s {
            continue;
        }
        let e = forged.verify(&pk).unwrap_err();
        assert!(e.to_string().contains("not genuine"), "alteration {i}: {e}");
        assert!(e.to_string().contains(&forged.key_id), "names the key: {e}");
    }
    // Another authority's key does not verify it.
    let other = authority();
    let e = s.verify(&authority_key(&other)).unwrap_err();
    assert!(
        e.to_string().contains("not by the trusted authority"),
        "{e}"
    );
}

#[test]
fn an_x25519_authority_is_refused() {
    let auth = authority();
    let x = auth.store.generate(Algorithm::X25519, "x").unwrap();
    let bad = keyhaven_compromise::Authority {
        store: auth.store.clone(),
        key: x.id,
    };
    let k = MemoryStore::new()
        .unwrap()
        .generate(Algorithm::Ed25519, "k")
        .unwrap();
    let e = Revocation::issue(&bad, &k, 1, "r", false, None).unwrap_err();
    assert!(e.to_string().contains("cannot sign"), "{e}");
}

#[test]
fn the_decorator_refuses_private_operations_once_revoked_in_any_instance() {
    let dir = private_tempdir();
    let auth = authority();
    let inner = Arc::new(MemoryStore::new().unwrap());
    let sig = inner.generate(Algorithm::EcdsaP256, "sig").unwrap();
    let x = inner.generate(Algorithm::X25519, "x").unwrap();
    let peer = inner.generate(Algorithm::X25519, "peer").unwrap();
    let mine = Arc::new(Revocations::open(&sub(dir.path(), "rev")).unwrap());
    let store = RevocationCheckedStore::new(inner.clone(), mine.clone());
    store.sign(&sig.id, b"before").unwrap();
    store.agree(&x.id, &peer.public_key).unwrap();

    // Another registry instance (as another process would have) records the revocation.
    let theirs = Revocations::open(&sub(dir.path(), "rev")).unwrap();
    for k in [&sig, &x] {
        let s = Revocation::issue(&auth, k, 10, "compromise", true, None).unwrap();
        theirs.record(s, &authority_key(&auth)).unwrap();
    }
    let e = store.sign(&sig.id, b"after").unwrap_err();
    assert!(matches!(&e, e if e.is(ErrorKind::Revoked)), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    assert!(matches!(
        store.sign_digest(&sig.id, &[0; 32]).unwrap_err(),
        e if e.is(ErrorKind::Revoked)));
    assert!(matches!(
        store.agree(&x.id, &peer.public_key).unwrap_err(),
        e if e.is(ErrorKind::Revoked)));
    // Public operations still work: verifiers need the public key.
    assert_eq!(store.public_key(&sig.id).unwrap(), sig.public_key);
    // Revoking twice keeps the first statement.
    let again = Revocation::issue(&auth, &sig, 99, "again", false, None).unwrap();
    assert_eq!(
        theirs
            .record(again, &authority_key(&auth))
            .unwrap()
            .revoked_at,
        10
    );
    assert_eq!(mine.all().unwrap().len(), 2);
    // A forged statement is not recorded.
    let mut forged = Revocation::issue(&auth, &peer, 5, "x", true, None).unwrap();
    forged.revoked_at = 4;
    assert!(theirs.record(forged, &authority_key(&auth)).is_err());
    store.agree(&peer.id, &x.public_key).unwrap();
}

#[test]
fn a_damaged_registry_fails_closed() {
    let dir = private_tempdir();
    let inner = MemoryStore::new().unwrap();
    let k = inner.generate(Algorithm::Ed25519, "k").unwrap();
    let revs = Arc::new(Revocations::open(&sub(dir.path(), "rev")).unwrap());
    let store = RevocationCheckedStore::new(inner, revs.clone());
    store.sign(&k.id, b"ok").unwrap();
    keyhaven_fs::atomic_write(&revs.path(), b"{ not json").unwrap();
    let e = store.sign(&k.id, b"no").unwrap_err();
    // Corrupt (exit 7 on the command line), naming the file: not "unavailable".
    assert!(matches!(&e, e if e.is(ErrorKind::Corrupt)), "{e}");
    assert!(
        e.to_string().contains("revocations.json"),
        "names the file: {e}"
    );
}

#[test]
fn an_exported_list_is_verified_against_a_pinned_authority() {
    let dir = private_tempdir();
    let auth = authority();
    let pk = authority_key(&auth);
    let store = MemoryStore::new().unwrap();
    let a = store.generate(Algorithm::EcdsaP384, "a").unwrap();
    let b = store.generate(Algorithm::Ed25519, "b").unwrap();
    let revs = Revocations::open(&sub(dir.path(), "rev")).unwrap();
    revs.record(
        Revocation::issue(&auth, &a, 1000, "superseded", false, None).unwrap(),
        &pk,
    )
    .unwrap();
    let json = revs.export(&pk).unwrap().to_json().unwrap();

    let list = RevocationList::parse(json.as_bytes()).unwrap();
    let v = list.verify(&pk).unwrap();
    assert_eq!(v.len(), 1);
    assert!(v.refuses(&a.public_key, Some(1000)).is_some());
    assert!(
        v.refuses(&a.public_key, Some(999)).is_none(),
        "signed before revocation"
    );
    assert!(
        v.refuses(&a.public_key, None).is_some(),
        "unknown time is refused"
    );
    assert!(v.refuses(&b.public_key, Some(5000)).is_none());
    let pin = pk.fingerprint().to_hex();
    list.verify_pinned(&pin[..16]).unwrap();
    let e = list.verify_pinned(&"0".repeat(64)).unwrap_err();
    assert!(e.to_string().contains("pinned authority"), "{e}");

    // A forged statement slipped into the list is refused, by key.
    let mut forged = list.clone();
    let mut s = forged.statements[0].clone();
    s.key_id = b.id.to_string();
    s.fingerprint = b.fingerprint().to_hex();
    forged.statements.push(s);
    let e = forged.verify(&pk).unwrap_err();
    assert!(e.to_string().contains(b.id.as_str()), "{e}");
    // A list signed by another authority but carrying its own key is refused when pinned.
    let other = authority();
    let mut impostor = RevocationList::new(&authority_key(&other), vec![]);
    impostor
        .statements
        .push(Revocation::issue(&other, &b, 1, "x", true, None).unwrap());
    assert!(impostor.verify_pinned(&pin).is_err());

    // Garbage and other versions are clear errors.
    for bad in [&b"nope"[..], br#"{"format":"x","version":1,"issuer":{"algorithm":"","spki":"","fingerprint":""},"statements":[]}"#] {
        assert!(RevocationList::parse(bad).is_err());
    }
    let newer = json.replacen("\"version\": 1", "\"version\": 2", 1);
    let e = RevocationList::parse(newer.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("upgrade"), "{e}");
}

const CHILD_DIR: &str = "KEYHAVEN_TEST_REVOKE_CHILD";

fn pass() -> SecretString {
    SecretString::from("child passphrase")
}

/// Not a test on its own: a child process signing until its key is revoked.
#[test]
fn child_sign_until_revoked() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let inner = EncryptedStore::open(&dir.join("store"), &pass()).unwrap();
    let key = inner.find_by_label("k").unwrap();
    let revs = Arc::new(Revocations::open(&dir.join("rev")).unwrap());
    let store = RevocationCheckedStore::new(inner, revs);
    for i in 0..4000 {
        match store.sign(&key.id, b"m") {
            Ok(_) => println!("signed {i}"),
            Err(e) if e.is(ErrorKind::Revoked) => {
                let m = e.to_string();
                println!("revoked: {m}");
                std::process::exit(0);
            }
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::process::exit(3);
}

#[test]
fn a_revocation_stops_signing_in_another_process() {
    let dir = private_tempdir();
    let store = EncryptedStore::create(
        &dir.path().join("store"),
        &pass(),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    let key = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    let revs = Revocations::open(&dir.path().join("rev")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "revocation::child_sign_until_revoked",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait until the child has signed, then revoke.
    loop {
        let l = lines.next().unwrap().unwrap();
        if l.starts_with("signed") {
            break;
        }
    }
    let auth = authority();
    revs.record(
        Revocation::issue(
            &auth,
            &key,
            keyhaven_core::unix_now(),
            "compromise",
            true,
            None,
        )
        .unwrap(),
        &authority_key(&auth),
    )
    .unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "child never saw the revocation: {status}");
    assert!(rest.last().unwrap().starts_with("revoked:"), "{rest:?}");
}
