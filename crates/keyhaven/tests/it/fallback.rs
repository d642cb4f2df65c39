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
    let home = tempfile::tempdir().unwrap();
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
    let home = tempfile::tempdir().unwrap();
    let m = manager(home.path(), FallbackConfig::default());
    let e = m.generate(None, Algorithm::EcdsaP384, "k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(!e.to_string().contains("not allowed"), "{e}");
}

#[test]
fn used_with_a_warning_when_allowed() {
    let home = tempfile::tempdir().unwrap();
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
    // references through the unavailable backend's name reach the fallback
    assert_eq!(m.resolve("usb:k").unwrap().id(), key.id());
    let sig = m.sign(&key, b"msg").unwrap();
    keyhaven::verify(key.public_key(), b"msg", &sig).unwrap();
    // the fallback's keys are listed once
    assert_eq!(m.list_keys().unwrap().len(), 1);
}

#[test]
fn a_wrong_passphrase_never_falls_back() {
    let home = tempfile::tempdir().unwrap();
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
    let home = tempfile::tempdir().unwrap();
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
