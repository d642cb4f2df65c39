//! The fallback rule of seed 000 section 7.

use std::path::Path;

use keyhaven::{
    Algorithm, BackendConfig, BackendKind, Config, ErrorKind, FallbackConfig, FixedPassphrase,
    KeyManager, Protection, Warning,
};

/// A home with `usb`, an encrypted backend on a "drive" that is not mounted (a directory
/// outside the home whose parent does not exist), and `local`, a PEM backend in the home.
fn config(fallback: FallbackConfig) -> Config {
    let mut c = Config::default();
    let drive = std::env::temp_dir().join(format!(
        "keyhaven-not-mounted-{}",
        keyhaven::KeyId::generate().unwrap()
    ));
    c.backends.insert(
        "usb".into(),
        BackendConfig::new(BackendKind::Encrypted, Some(drive.join("keys"))),
    );
    c.backends
        .insert("local".into(), BackendConfig::new(BackendKind::Pem, None));
    c.default_backend = Some("usb".into());
    c.fallback = fallback;
    c
}

fn manager(home: &Path, fallback: FallbackConfig) -> KeyManager {
    // Write the file so the manager runs exactly as the CLI does.
    config(fallback)
        .save(&home.join(keyhaven::CONFIG_FILE))
        .unwrap();
    KeyManager::open(home, FixedPassphrase::new("pw")).unwrap()
}

#[test]
fn refused_when_not_allowed() {
    let home = crate::private_tempdir();
    let m = manager(
        home.path(),
        FallbackConfig::new(false, Some("local".into())),
    );
    let e = m
        .generate(Some("usb"), Algorithm::EcdsaP384, "k")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("backend 'usb' is unavailable"), "{msg}");
    assert!(
        msg.contains("is not mounted") || msg.contains("does not exist"),
        "{msg}"
    );
    assert!(msg.contains("not allowed"), "{msg}");
    assert!(m.warnings().is_empty());
    // nothing was created for the fallback
    assert!(m.list_keys().unwrap().is_empty());
}

#[test]
fn refused_without_any_fallback() {
    let home = crate::private_tempdir();
    let m = manager(home.path(), FallbackConfig::default());
    let e = m.generate(None, Algorithm::EcdsaP384, "k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(!e.to_string().contains("not allowed"), "{e}");
}

#[test]
fn used_with_a_warning_when_allowed() {
    let home = crate::private_tempdir();
    let m = manager(home.path(), FallbackConfig::new(true, Some("local".into())));
    let key = m.generate(None, Algorithm::EcdsaP256, "k").unwrap();
    assert_eq!(key.backend, "local", "the key went to the fallback");
    assert_eq!(key.protection(), Protection::SoftwarePlain);
    let warnings = m.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    match &warnings[0] {
        Warning::Fallback {
            backend,
            fallback,
            expected,
            actual,
            ..
        } => {
            assert_eq!(backend, "usb");
            assert_eq!(fallback, "local");
            assert_eq!(*expected, Protection::SoftwareEncrypted);
            assert_eq!(*actual, Protection::SoftwarePlain);
        }
        other => panic!("unexpected warning {other:?}"),
    }
    assert!(warnings[0].to_string().contains("LOWER protection"));
    // the new key lives in the fallback, under the fallback's name, and is used there
    assert_eq!(m.resolve("local:k").unwrap(), key);
    let sig = m.sign(&key, b"msg").unwrap();
    keyhaven::verify(key.public_key(), b"msg", &sig).unwrap();
    // references through the unavailable backend's name never reach the fallback
    let e = m.resolve("usb:k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("backend 'usb' is unavailable"), "{msg}");
    assert!(msg.contains("reconnect"), "says what to do: {msg}");
    assert!(msg.contains("takes new keys only"), "{msg}");
    // the fallback's keys are listed once, under its own name
    let keys = m.list_keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].backend, "local");
}

/// A home where `usb` (encrypted, on a "drive" outside the home) and `local` (PEM, the allowed
/// fallback) each hold a key labelled `release`; then the drive is unplugged. Returns the
/// manager (opened after unplugging) and the `local` key.
fn unplugged_usb_with_keys(home: &Path, drive_parent: &Path) -> (KeyManager, keyhaven::ManagedKey) {
    let drive = drive_parent.join("drive");
    std::fs::create_dir(&drive).unwrap();
    let local = {
        let m = KeyManager::open(home, FixedPassphrase::new("pw")).unwrap();
        m.add_backend(
            "usb",
            BackendConfig::new(BackendKind::Encrypted, Some(drive.join("keys"))),
        )
        .unwrap();
        m.add_backend("local", BackendConfig::new(BackendKind::Pem, None))
            .unwrap();
        m.update_config(|c| {
            c.fallback = FallbackConfig::new(true, Some("local".into()));
            Ok(())
        })
        .unwrap();
        m.generate(Some("usb"), Algorithm::EcdsaP384, "release")
            .unwrap();
        m.generate(Some("local"), Algorithm::EcdsaP384, "release")
            .unwrap()
    };
    std::fs::rename(&drive, drive_parent.join("unplugged")).unwrap();
    (
        KeyManager::open(home, FixedPassphrase::new("pw")).unwrap(),
        local,
    )
}

#[test]
fn existing_keys_of_an_unavailable_backend_are_never_looked_up_in_the_fallback() {
    let home = crate::private_tempdir();
    let outside = tempfile::tempdir().unwrap();
    let (m, local) = unplugged_usb_with_keys(home.path(), outside.path());
    // `usb:release` must not resolve to `local:release`, a different key
    for reference in ["usb:release", "release"] {
        let e = m.resolve(reference).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{reference}: {e}");
        assert!(e.to_string().contains("'usb'"), "{e}");
    }
    // the default key (the first, in usb) is unavailable too, not replaced
    let e = m.default_key().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // by id, and qualified, the fallback's own key is still usable
    assert_eq!(m.resolve(local.id().as_str()).unwrap(), local);
    assert_eq!(m.resolve("local:release").unwrap(), local);
    m.sign(&local, b"x").unwrap();
    assert!(
        !m.warnings()
            .iter()
            .any(|w| matches!(w, Warning::Fallback { .. })),
        "no lookup used the fallback: {:?}",
        m.warnings()
    );
}

#[test]
fn read_only_operations_never_create_the_fallback_store() {
    use std::sync::{Arc, Mutex};
    let home = crate::private_tempdir();
    let mut c = config(FallbackConfig::default());
    c.backends.insert(
        "safe".into(),
        BackendConfig::new(BackendKind::Encrypted, None),
    );
    c.fallback = FallbackConfig::new(true, Some("safe".into()));
    c.save(&home.path().join(keyhaven::CONFIG_FILE)).unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    let provider = move |req: &keyhaven::PassphraseRequest| {
        log.lock().unwrap().push((req.backend.clone(), req.purpose));
        Ok::<_, keyhaven::CoreError>(keyhaven::secrecy::SecretString::from("pw"))
    };
    let m = KeyManager::open(home.path(), provider).unwrap();
    assert!(m.list_keys().unwrap().is_empty());
    assert!(m.inventory().unwrap().keys.is_empty());
    assert_eq!(
        m.resolve("usb:k").unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert_eq!(m.resolve("k").unwrap_err().kind(), ErrorKind::Unavailable);
    assert!(m.default_key().is_err());
    assert_eq!(m.backend("safe").unwrap_err().kind(), ErrorKind::NotFound);
    let _ = m.doctor();
    assert!(
        !home.path().join("backends").exists(),
        "a read-only operation created a store"
    );
    assert!(
        asked.lock().unwrap().is_empty(),
        "{:?}",
        asked.lock().unwrap()
    );
    // creating a key is what creates the fallback store (asking for a new passphrase)
    let key = m.generate(Some("usb"), Algorithm::Ed25519, "k").unwrap();
    assert_eq!(key.backend, "safe");
    assert!(home.path().join("backends/safe").is_dir());
    assert_eq!(
        *asked.lock().unwrap(),
        [("safe".to_owned(), keyhaven::PassphrasePurpose::Create)]
    );
}

#[test]
fn a_damaged_store_is_reported_never_replaced_by_the_fallback() {
    let home = crate::private_tempdir();
    {
        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        m.add_backend("vault", BackendConfig::new(BackendKind::Encrypted, None))
            .unwrap();
        m.add_backend("local", BackendConfig::new(BackendKind::Pem, None))
            .unwrap();
        m.update_config(|c| {
            c.fallback = FallbackConfig::new(true, Some("local".into()));
            Ok(())
        })
        .unwrap();
        m.generate(Some("vault"), Algorithm::Ed25519, "k").unwrap();
    }
    // the store's keys/ directory is gone: damage, not an unplugged device
    std::fs::remove_dir_all(home.path().join("backends/vault/keys")).unwrap();
    let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    let e = m
        .generate(Some("vault"), Algorithm::Ed25519, "k2")
        .unwrap_err();
    assert_ne!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("backend 'vault'"), "{e}");
    assert!(e.to_string().contains("keys"), "names what is missing: {e}");
    let e = m.list_keys().unwrap_err();
    assert!(e.to_string().contains("backend 'vault'"), "{e}");
    assert!(m.resolve("vault:k").is_err());
    assert!(m.warnings().is_empty(), "{:?}", m.warnings());
    // nothing went to the fallback (read apart: the damaged store anchors the home's
    // integrity, so the home itself refuses to work until it is repaired)
    let local = keyhaven::stores::PemStore::open(&home.path().join("backends/local")).unwrap();
    assert!(keyhaven::KeyStore::list(&local).unwrap().is_empty());
}

#[test]
fn a_wrong_passphrase_never_falls_back() {
    let home = crate::private_tempdir();
    {
        let m = KeyManager::open(home.path(), FixedPassphrase::new("right")).unwrap();
        m.add_backend("vault", BackendConfig::new(BackendKind::Encrypted, None))
            .unwrap();
        m.add_backend("local", BackendConfig::new(BackendKind::Pem, None))
            .unwrap();
        m.update_config(|c| {
            c.fallback = FallbackConfig::new(true, Some("local".into()));
            Ok(())
        })
        .unwrap();
        m.generate(Some("vault"), Algorithm::Ed25519, "k").unwrap();
    }
    let m = KeyManager::open(home.path(), FixedPassphrase::new("wrong")).unwrap();
    let e = m.resolve("vault:k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadPassphrase, "{e}");
    let e = m
        .generate(Some("vault"), Algorithm::Ed25519, "k2")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadPassphrase, "{e}");
    assert!(m.warnings().is_empty());
}

#[test]
fn listing_skips_unreachable_backends_with_a_warning() {
    let home = crate::private_tempdir();
    let m = manager(home.path(), FallbackConfig::default());
    let k = m
        .generate(Some("local"), Algorithm::EcdsaP384, "k")
        .unwrap();
    let keys = m.list_keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id(), k.id());
    let warnings = m.take_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| matches!(w, Warning::Unreachable { backend, .. } if backend == "usb")),
        "{warnings:?}"
    );
    // the doctor reports it, and the store that works
    let report = m.doctor();
    let usb = report.backends.iter().find(|b| b.name == "usb").unwrap();
    assert!(!usb.reachable);
    assert_eq!(usb.error_kind, Some(ErrorKind::Unavailable));
    let local = report.backends.iter().find(|b| b.name == "local").unwrap();
    assert!(local.reachable && local.keys == Some(1));
    assert!(!report.healthy());
}
