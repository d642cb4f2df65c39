//! Backups through the manager: keys collected by reference from a backend, restored into
//! another with recovery verification, conflicts refused before anything changes.

use keyhaven::backup::{OnConflict, Outcome};
use keyhaven::{Algorithm, BackendConfig, BackendKind, ErrorKind, FixedPassphrase, KeyManager};

fn manager() -> (KeyManager, tempfile::TempDir) {
    let home = crate::private_tempdir();
    let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    for name in ["a", "b", "c"] {
        m.add_backend(name, BackendConfig::new(BackendKind::Memory, None))
            .unwrap();
    }
    (m, home)
}

#[test]
fn collect_by_reference_and_restore_into_another_backend() {
    let (m, _home) = manager();
    let x = m.generate(Some("a"), Algorithm::EcdsaP384, "x").unwrap();
    let y = m.generate(Some("a"), Algorithm::X25519, "y").unwrap();

    // A key named twice (by label and by BACKEND:ID) is collected once.
    let refs = ["x".to_owned(), x.reference()];
    let one = m.backups().collect(Some(&refs)).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].backend.as_str(), &one[0].id), ("a", x.id()));
    assert!(one[0].private.is_some() && !one[0].hardware);

    let all = m.backups().collect(None).unwrap();
    assert_eq!(all.len(), 2);
    let report = m
        .backups()
        .restore(&all, Some("b"), OnConflict::Fail)
        .unwrap();
    assert_eq!(report.restored(), 2);
    let map = report.id_map();
    for key in [&x, &y] {
        let restored = m.resolve(&format!("b:{}", key.label())).unwrap();
        assert_eq!(restored.info.fingerprint(), key.info.fingerprint());
        assert_eq!(map[key.id()], *restored.id());
    }
    let sig = m
        .sign(&m.resolve("b:x").unwrap(), b"after restore")
        .unwrap();
    keyhaven::verify(x.public_key(), b"after restore", &sig).unwrap();

    // Again: the very same keys are already there, nothing is duplicated.
    let again = m
        .backups()
        .restore(&all, Some("b"), OnConflict::Fail)
        .unwrap();
    assert_eq!(again.restored(), 0);
    assert!(
        again
            .keys
            .iter()
            .all(|k| matches!(k.outcome, Outcome::AlreadyPresent { .. }))
    );

    // A different key holding the label: refused (AlreadyExists) and nothing changes, unless
    // the caller chooses.
    m.generate(Some("c"), Algorithm::EcdsaP384, "x").unwrap();
    let e = m
        .backups()
        .restore(&all, Some("c"), OnConflict::Fail)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("'x'"), "{e}");
    let listed = |m: &KeyManager| {
        m.list_keys()
            .unwrap()
            .into_iter()
            .filter(|k| k.backend == "c")
            .count()
    };
    assert_eq!(listed(&m), 1);
    let renamed = m
        .backups()
        .restore(&all, Some("c"), OnConflict::Rename)
        .unwrap();
    assert_eq!(renamed.restored(), 2);
    assert_eq!(listed(&m), 3);
    assert!(m.resolve("c:x (restored)").is_ok());
}

/// A crafted backup whose rotation record names a key the home already has (as version 1,
/// with the attacker's key as primary) never takes that key over.
#[cfg(feature = "file")]
#[test]
fn a_crafted_rotation_record_in_a_backup_never_takes_over_an_existing_key() {
    // The attacker's home: a rotated logical key, backed up whole.
    let attacker_home = crate::private_tempdir();
    let a = KeyManager::open(attacker_home.path(), FixedPassphrase::new("pw")).unwrap();
    a.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let ak = a.generate(None, Algorithm::Ed25519, "evil").unwrap();
    a.rotation().rotate_key(&ak, "test").unwrap();
    let mut entries = a.backups().collect(Some(&["evil".to_owned()])).unwrap();
    // The victim's home holds a key "release".
    let victim_home = crate::private_tempdir();
    let v = KeyManager::open(victim_home.path(), FixedPassphrase::new("pw")).unwrap();
    v.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let victim = v.generate(None, Algorithm::Ed25519, "release").unwrap();
    // The record is edited to say that the victim's key is version 1 of the attacker's key,
    // and the version-1 entry itself is left out of the backup.
    let v1 = ak.id().to_string();
    let record = entries
        .iter()
        .find_map(|e| e.metadata.get(keyhaven::backup::META_REGISTRY).cloned())
        .unwrap()
        .replace(&v1, victim.id().as_str());
    entries.retain(|e| e.id.as_str() != v1);
    entries[0]
        .metadata
        .insert(keyhaven::backup::META_REGISTRY.into(), record);
    assert!(
        entries
            .iter()
            .any(|e| e.metadata.contains_key(keyhaven::backup::META_REGISTRY))
    );
    let e = v
        .backups()
        .restore(&entries, None, OnConflict::Rename)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // The victim's key is untouched: it signs as itself, unversioned.
    let k = v.resolve("release").unwrap();
    assert_eq!(k, victim);
    assert!(v.rotation().logical_key(&k).unwrap().is_none());
}
