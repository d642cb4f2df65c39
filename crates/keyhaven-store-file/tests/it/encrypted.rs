use keyhaven_core::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use keyhaven_core::{Algorithm, Error, KeyStore, Protection};
use keyhaven_store_file::{EncryptedStore, KdfParams, StoreKind, detect};
use keyhaven_testkit::{Capabilities, Fixture};
use secrecy::SecretString;

use crate::common::{encrypted, flip_byte, pass, snapshot};

fn fixture() -> Fixture {
    let (tmp, _dir, store) = encrypted();
    Fixture::with_guard(store, tmp)
}

keyhaven_testkit::conformance_suite!(
    fixture,
    Capabilities::software(Protection::SoftwareEncrypted)
);

/// Every byte string that would betray a private key if it appeared in a file.
fn leaks(store: &EncryptedStore, id: &keyhaven_core::KeyId) -> Vec<Vec<u8>> {
    use base64ct::{Base64, Encoding};
    let pkcs8 = store.export_pkcs8(id).unwrap();
    let der = pkcs8.expose_secret().to_vec();
    // the raw secret (scalar / seed) is the trailing part of the key material inside the DER;
    // check any 16-byte window of the PKCS#8, plus its base64 and hex forms
    let mut needles: Vec<Vec<u8>> = der.windows(16).step_by(8).map(|w| w.to_vec()).collect();
    needles.push(Base64::encode_string(&der).into_bytes());
    needles.push(hex::encode(&der).into_bytes());
    needles
}

#[test]
fn no_private_key_byte_is_written_in_the_clear() {
    let (_tmp, dir, store) = encrypted();
    let mut ids = Vec::new();
    for alg in Algorithm::ALL {
        ids.push(store.generate(alg, alg.short_name()).unwrap().id);
    }
    let files = snapshot(&dir);
    assert!(!files.is_empty());
    for id in &ids {
        for needle in leaks(&store, id) {
            for (path, (bytes, _)) in &files {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "{} contains private key material of {id}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let (_tmp, dir, store) = encrypted();
    store.generate(Algorithm::EcdsaP384, "k").unwrap();
    drop(store);
    let before = snapshot(&dir);
    match EncryptedStore::open(&dir, &SecretString::from("wrong")) {
        Err(e) if e.is(ErrorKind::BadPassphrase) => {}
        other => panic!("expected BadPassphrase, got {other:?}"),
    }
    assert_eq!(snapshot(&dir), before);
    assert_eq!(detect(&dir).unwrap(), Some(StoreKind::Encrypted));
}

#[test]
fn keys_survive_reopening() {
    let (_tmp, dir, store) = encrypted();
    let info = store.generate(Algorithm::Ed25519, "persist").unwrap();
    drop(store);
    let store = EncryptedStore::open(&dir, &pass()).unwrap();
    assert_eq!(store.list().unwrap(), vec![info.clone()]);
    let sig = store.sign(&info.id, b"after reopen").unwrap();
    keyhaven_crypto::verify(&info.public_key, b"after reopen", &sig).unwrap();
}

#[test]
fn changing_the_passphrase_rewrites_only_the_header() {
    let (_tmp, dir, store) = encrypted();
    let info = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    let records_before: Vec<_> = snapshot(&dir.join("keys")).into_iter().collect();
    let new = SecretString::from("new passphrase");
    let stronger = KdfParams {
        m_cost_kib: 128,
        t_cost: 2,
        p_cost: 1,
    };
    store.change_passphrase_with(&new, stronger).unwrap();
    assert_eq!(
        store.kdf_params().unwrap(),
        stronger,
        "parameters are recorded in the header"
    );
    drop(store);
    let records_after: Vec<_> = snapshot(&dir.join("keys")).into_iter().collect();
    assert_eq!(records_before, records_after, "no key record was touched");
    assert!(matches!(
        EncryptedStore::open(&dir, &pass()),
        Err(e) if e.is(ErrorKind::BadPassphrase)));
    let store = EncryptedStore::open(&dir, &new).unwrap();
    store.sign(&info.id, b"still works").unwrap();
    assert!(matches!(
        store.change_passphrase(&SecretString::from("")),
        Err(e) if e.is(ErrorKind::InvalidInput)));
}

#[test]
fn default_kdf_parameters_are_owasp() {
    assert_eq!(
        KdfParams::default(),
        KdfParams {
            m_cost_kib: 19456,
            t_cost: 2,
            p_cost: 1
        }
    );
    let tmp = tempfile::tempdir().unwrap();
    let store =
        EncryptedStore::create(&tmp.path().join("s"), &pass(), KdfParams::default()).unwrap();
    assert_eq!(store.kdf_params().unwrap(), KdfParams::default());
}

#[test]
fn a_bit_flipped_record_is_reported_by_name_and_the_rest_stays_usable() {
    let (_tmp, dir, store) = encrypted();
    let bad = store.generate(Algorithm::EcdsaP384, "bad").unwrap();
    let good = store.generate(Algorithm::EcdsaP384, "good").unwrap();
    let record = dir.join("keys").join(format!("{}.json", bad.id));
    for offset in [20, 60, 200] {
        let original = std::fs::read(&record).unwrap();
        flip_byte(&record, offset);
        let reopened = EncryptedStore::open(&dir, &pass()).unwrap();
        assert_eq!(
            reopened.list().unwrap(),
            vec![good.clone()],
            "damaged record left out"
        );
        let problems = reopened.check().unwrap();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains(&bad.id.to_string()),
            "{}",
            problems[0]
        );
        assert!(matches!(
            reopened.sign(&bad.id, b"x"),
            Err(e) if e.is(ErrorKind::Corrupt)));
        reopened.sign(&good.id, b"x").unwrap();
        std::fs::write(&record, original).unwrap();
    }
}

#[test]
fn a_truncated_record_is_corrupt_not_fatal() {
    let (_tmp, dir, store) = encrypted();
    let bad = store.generate(Algorithm::Ed25519, "bad").unwrap();
    let good = store.generate(Algorithm::Ed25519, "good").unwrap();
    let record = dir.join("keys").join(format!("{}.json", bad.id));
    let b = std::fs::read(&record).unwrap();
    std::fs::write(&record, &b[..b.len() / 2]).unwrap();
    assert_eq!(store.list().unwrap(), vec![good]);
    match store.get(&bad.id) {
        Err(Error::Corrupt { what, .. }) => assert!(what.ends_with(&format!("{}.json", bad.id))),
        other => panic!("{other:?}"),
    }
    // a damaged record can still be deleted, freeing its label
    store.delete(&bad.id).unwrap();
    store.generate(Algorithm::Ed25519, "bad").unwrap();
}

#[test]
fn editing_a_label_or_moving_a_record_is_detected() {
    let (_tmp, dir, store) = encrypted();
    let info = store.generate(Algorithm::EcdsaP384, "original").unwrap();
    let record = dir.join("keys").join(format!("{}.json", info.id));
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, text.replace("\"original\"", "\"forged\"")).unwrap();
    assert!(matches!(store.get(&info.id), Err(e) if e.is(ErrorKind::Corrupt)));
    std::fs::write(&record, text.as_bytes()).unwrap();
    store.get(&info.id).unwrap();
    // the same record copied into another store (another KEK, another store id) is refused
    let (_t2, dir2, other) = encrypted();
    std::fs::copy(&record, dir2.join("keys").join(format!("{}.json", info.id))).unwrap();
    assert!(matches!(other.get(&info.id), Err(e) if e.is(ErrorKind::Corrupt)));
}

#[test]
fn a_world_readable_record_is_refused() {
    let (_tmp, dir, store) = encrypted();
    let info = store.generate(Algorithm::EcdsaP384, "k").unwrap();
    let record = dir.join("keys").join(format!("{}.json", info.id));
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = snapshot(&dir);
    match store.sign(&info.id, b"x") {
        Err(e) if e.is(ErrorKind::PermissionDenied) => {
            let msg = e.to_string();
            assert!(msg.contains("chmod 600"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.list(), Err(e) if e.is(ErrorKind::PermissionDenied)));
    assert_eq!(snapshot(&dir), before);
    std::fs::set_permissions(
        dir.join("keyhaven-store.json"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    assert!(matches!(
        EncryptedStore::open(&dir, &pass()),
        Err(e) if e.is(ErrorKind::PermissionDenied)));
}

#[test]
fn a_header_from_a_newer_version_is_unsupported() {
    let (_tmp, dir, store) = encrypted();
    drop(store);
    let h = dir.join("keyhaven-store.json");
    let text = std::fs::read_to_string(&h).unwrap();
    std::fs::write(&h, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    assert!(matches!(
        EncryptedStore::open(&dir, &pass()),
        Err(e) if e.is(ErrorKind::Unsupported)));
}

#[test]
fn a_deleted_key_stops_signing_in_another_handle_at_once() {
    let (_tmp, dir, a) = encrypted();
    let info = a.generate(Algorithm::EcdsaP384, "shared").unwrap();
    let b = EncryptedStore::open(&dir, &pass()).unwrap();
    b.sign(&info.id, b"cached now").unwrap();
    a.delete(&info.id).unwrap();
    assert!(matches!(b.sign(&info.id, b"x"), Err(e) if e.is(ErrorKind::NotFound)));
}

#[test]
fn the_empty_passphrase_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        EncryptedStore::create(
            &tmp.path().join("s"),
            &SecretString::from(""),
            KdfParams::default()
        ),
        Err(e) if e.is(ErrorKind::InvalidInput)));
}
