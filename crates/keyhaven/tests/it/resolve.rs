//! Key references: ID, LABEL, BACKEND:ID|LABEL, and ambiguity.

use keyhaven::{
    Algorithm, BackendConfig, BackendKind, Config, Error, ErrorKind, KeyManager, NoPassphrase,
};

fn two_memory_backends() -> KeyManager {
    let mut c = Config::default();
    c.backends
        .insert("a".into(), BackendConfig::new(BackendKind::Memory, None));
    c.backends
        .insert("b".into(), BackendConfig::new(BackendKind::Memory, None));
    c.default_backend = Some("a".into());
    KeyManager::with_config("/nonexistent-home", c, NoPassphrase).unwrap()
}

#[test]
fn by_id_label_and_qualified() {
    let m = two_memory_backends();
    let k = m
        .generate(Some("b"), Algorithm::Ed25519, "signing")
        .unwrap();
    assert_eq!(k.backend, "b");
    assert_eq!(m.resolve(k.id().as_str()).unwrap(), k);
    assert_eq!(m.resolve("signing").unwrap(), k);
    assert_eq!(m.resolve("b:signing").unwrap(), k);
    assert_eq!(m.resolve(&format!("b:{}", k.id())).unwrap(), k);
    assert_eq!(m.resolve(&k.reference()).unwrap(), k);
    let e = m.resolve("a:signing").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn ambiguous_labels_list_the_candidates() {
    let m = two_memory_backends();
    let ka = m
        .generate(Some("a"), Algorithm::EcdsaP384, "release")
        .unwrap();
    let kb = m
        .generate(Some("b"), Algorithm::EcdsaP256, "release")
        .unwrap();
    match m.resolve("release") {
        Err(Error::Ambiguous {
            reference,
            candidates,
        }) => {
            assert_eq!(reference, "release");
            assert_eq!(candidates.len(), 2);
            assert!(candidates.iter().any(|c| c.contains(&ka.reference())));
            assert!(candidates.iter().any(|c| c.contains(&kb.reference())));
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let e = m.resolve("release").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("matches 2 keys"), "{e}");
    // qualifying resolves it
    assert_eq!(m.resolve("a:release").unwrap(), ka);
    assert_eq!(m.resolve("b:release").unwrap(), kb);
}

#[test]
fn an_exact_id_wins_over_a_label() {
    let m = two_memory_backends();
    let k1 = m.generate(Some("a"), Algorithm::Ed25519, "one").unwrap();
    // keyhaven refuses a label equal to another key's id...
    let e = m
        .generate(Some("b"), Algorithm::Ed25519, k1.id().as_str())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("is the id of key a:"), "{e}");
    // ...but another tool may have made one (a token's key labelled by pkcs11-tool): the id
    // still wins, and qualifying reaches the other key.
    let info = m
        .backend("b")
        .unwrap()
        .store()
        .generate(Algorithm::Ed25519, k1.id().as_str())
        .unwrap();
    assert_eq!(m.resolve(k1.id().as_str()).unwrap(), k1);
    let k2 = m.resolve(&format!("b:{}", k1.id())).unwrap();
    assert_eq!(k2.info, info);
}

#[test]
fn unknown_references() {
    let m = two_memory_backends();
    m.generate(None, Algorithm::Ed25519, "x").unwrap();
    for r in [
        "missing",
        "00000000000000000000000000000000",
        "nobackend:x",
        "a:missing",
    ] {
        let e = m.resolve(r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{r}: {e}");
    }
    assert_eq!(m.resolve("").unwrap_err().kind(), ErrorKind::InvalidInput);
    let e = m.backend("nope").unwrap_err();
    assert!(matches!(e, Error::UnknownBackend { .. }), "{e:?}");
    assert!(e.to_string().contains("configured: a, b"), "{e}");
}

#[test]
fn listing_covers_every_backend() {
    let m = two_memory_backends();
    m.generate(Some("a"), Algorithm::Ed25519, "x").unwrap();
    m.generate(Some("b"), Algorithm::Ed25519, "y").unwrap();
    m.generate(Some("b"), Algorithm::X25519, "z").unwrap();
    let keys = m.list_keys().unwrap();
    let names: Vec<_> = keys
        .iter()
        .map(|k| format!("{}:{}", k.backend, k.label()))
        .collect();
    assert_eq!(names, ["a:x", "b:y", "b:z"]);
    assert!(keys.iter().all(|k| k.backend_kind == BackendKind::Memory));
}
