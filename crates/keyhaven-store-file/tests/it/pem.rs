use keyhaven_core::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use keyhaven_core::{Algorithm, KeyStore, Protection, SignatureFormat};
use keyhaven_store_file::{PemStore, StoreKind, detect};
use keyhaven_testkit::{Capabilities, Fixture};

use crate::common::{openssl, snapshot};

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = PemStore::create(&tmp.path().join("pem")).unwrap();
    Fixture::with_guard(store, tmp)
}

/// Every algorithm but ECDH P-384/P-256, refused by design: a PEM file of an ECDH key is an
/// ECDSA key's file, and the metadata that would tell them apart is not authenticated.
fn capabilities() -> Capabilities {
    let mut caps = Capabilities::software(Protection::SoftwarePlain);
    caps.algorithms.retain(|a| !a.is_nist_ecdh());
    caps
}

keyhaven_testkit::conformance_suite!(fixture, capabilities());

#[test]
fn openssl_uses_the_key_files_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PemStore::create(&tmp.path().join("pem")).unwrap();
    assert_eq!(detect(store.path()).unwrap(), Some(StoreKind::Pem));
    let d = tmp.path();
    std::fs::write(d.join("msg"), b"signed by openssl with our key file").unwrap();
    for (alg, dgst) in [
        (Algorithm::EcdsaP384, "-sha384"),
        (Algorithm::EcdsaP256, "-sha256"),
    ] {
        let info = store.generate(alg, alg.short_name()).unwrap();
        let key = store.private_key_path(&info.id);
        let key = key.to_str().unwrap();
        // openssl derives the same public key we recorded
        let out = openssl(&["pkey", "-in", key, "-pubout"], d);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            info.public_key.to_pem().unwrap()
        );
        // openssl signs with our key file; we verify with the public key alone
        let out = openssl(&["dgst", dgst, "-sign", key, "msg"], d);
        assert!(out.status.success());
        let sig =
            keyhaven_crypto::encoding::decode_signature(alg, &out.stdout, SignatureFormat::Der)
                .unwrap();
        keyhaven_crypto::verify(
            &info.public_key,
            b"signed by openssl with our key file",
            &sig,
        )
        .unwrap();
        // and verifies what we sign, against our public key file
        let ours = store
            .sign(&info.id, b"signed by openssl with our key file")
            .unwrap();
        std::fs::write(
            d.join("sig"),
            keyhaven_crypto::encoding::encode_signature(&ours, SignatureFormat::Der).unwrap(),
        )
        .unwrap();
        let pubfile = store.public_key_path(&info.id);
        let out = openssl(
            &[
                "dgst",
                dgst,
                "-verify",
                pubfile.to_str().unwrap(),
                "-signature",
                "sig",
                "msg",
            ],
            d,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let ed = store.generate(Algorithm::Ed25519, "ed").unwrap();
    let out = openssl(
        &[
            "pkey",
            "-in",
            store.private_key_path(&ed.id).to_str().unwrap(),
            "-noout",
            "-text",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ED25519"));
}

#[test]
fn files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PemStore::create(&tmp.path().join("pem")).unwrap();
    let info = store.generate(Algorithm::EcdsaP384, "k").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.path()), 0o700);
    assert_eq!(mode(&store.private_key_path(&info.id)), 0o600);
    assert_eq!(mode(&store.public_key_path(&info.id)), 0o600);
}

#[test]
fn a_world_readable_key_file_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PemStore::create(&tmp.path().join("pem")).unwrap();
    let info = store.generate(Algorithm::EcdsaP384, "k").unwrap();
    let key = store.private_key_path(&info.id);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = snapshot(store.path());
    match store.sign(&info.id, b"x") {
        Err(e) if e.is(ErrorKind::PermissionDenied) => {
            let msg = e.to_string();
            assert!(msg.contains(key.to_str().unwrap()), "names the file: {msg}");
            assert!(msg.contains("chmod 600"), "says the fix: {msg}");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_eq!(snapshot(store.path()), before);
}

#[test]
fn a_loose_store_directory_is_refused_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pem");
    PemStore::create(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    match PemStore::open(&dir) {
        Err(e) if e.is(ErrorKind::PermissionDenied) => {
            let msg = e.to_string();
            assert!(msg.contains("chmod 700"), "{msg}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[test]
fn keys_persist_across_opens_and_kinds_are_not_confused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pem");
    let info = PemStore::create(&dir)
        .unwrap()
        .generate(Algorithm::Ed25519, "keep")
        .unwrap();
    let store = PemStore::open(&dir).unwrap();
    assert_eq!(store.get(&info.id).unwrap(), info);
    assert!(matches!(
        PemStore::create(&dir),
        Err(e) if e.is(ErrorKind::AlreadyExists)));
    assert!(matches!(
        keyhaven_store_file::EncryptedStore::open(&dir, &crate::common::pass()),
        Err(e) if e.is(ErrorKind::Corrupt)));
    assert!(matches!(
        PemStore::open(&tmp.path().join("none")),
        Err(e) if e.is(ErrorKind::NotFound)));
}

#[test]
fn a_swapped_private_key_file_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PemStore::create(&tmp.path().join("pem")).unwrap();
    let a = store.generate(Algorithm::EcdsaP384, "a").unwrap();
    let b = store.generate(Algorithm::EcdsaP384, "b").unwrap();
    std::fs::copy(store.private_key_path(&b.id), store.private_key_path(&a.id)).unwrap();
    assert!(matches!(
        store.sign(&a.id, b"x"),
        Err(e) if e.is(ErrorKind::Corrupt)));
    store.sign(&b.id, b"x").unwrap();
}
