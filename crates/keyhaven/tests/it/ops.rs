//! Operations through the manager, on the memory backend and (with `file`) both file backends;
//! hardware backends are in `hardware.rs`.

use keyhaven::{
    Algorithm, Assertion, BackendConfig, BackendKind, Config, Error, ErrorKind, FixedPassphrase,
    KeyManager, SignInput, SignatureFormat, encoding,
};
use sha2::{Digest, Sha256, Sha384};

/// Managers over each compiled backend type, each with one backend named `b`.
fn managers() -> Vec<(BackendKind, KeyManager, tempfile::TempDir)> {
    let mut out = Vec::new();
    for &kind in BackendKind::ALL {
        // Hardware backends need a device: tests/it/hardware.rs. The keyring needs a Secret
        // Service on the session bus: keyhaven-store-keyring's tests and the CLI's start one.
        if !kind.is_compiled() || kind.is_hardware() || kind == BackendKind::Keyring {
            continue;
        }
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        m.add_backend("b", BackendConfig::new(kind, None)).unwrap();
        out.push((kind, m, home));
    }
    out
}

fn digest(alg: Algorithm, msg: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::EcdsaP384 => Sha384::digest(msg).to_vec(),
        _ => Sha256::digest(msg).to_vec(),
    }
}

#[test]
fn every_algorithm_on_every_backend() {
    for (kind, m, _home) in managers() {
        for alg in Algorithm::ALL {
            if kind == BackendKind::Pem && alg.is_nist_ecdh() {
                // refused by design (their files are ECDSA keys' files; see the PEM store)
                let e = m.generate(None, alg, &format!("k-{alg}")).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
                continue;
            }
            let key = m.generate(None, alg, &format!("k-{alg}")).unwrap();
            assert_eq!(key.backend, "b");
            assert_eq!(key.backend_kind, kind);
            assert_eq!(key.algorithm(), alg);
            assert_eq!(key.protection(), kind.protection(), "{kind}");
            assert_eq!(m.public_key(&key).unwrap(), *key.public_key());
            if !alg.can_sign() {
                let e = m.sign(&key, b"m").unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{kind} {alg}: {e}");
                continue;
            }
            let sig = m.sign(&key, b"message").unwrap();
            m.verify(&key, SignInput::Message(b"message"), &sig)
                .unwrap();
            keyhaven::verify(key.public_key(), b"message", &sig).unwrap();
            let e = m
                .verify(&key, SignInput::Message(b"messagE"), &sig)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadSignature);
            if alg.digest_len().is_some() {
                let d = digest(alg, b"message");
                let sig = m.sign_digest(&key, &d).unwrap();
                keyhaven::verify(key.public_key(), b"message", &sig).unwrap();
                let e = m.sign_digest(&key, &d[1..]).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            } else {
                let e = m.sign_digest(&key, &[0; 32]).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            }
        }
        let kept = Algorithm::ALL
            .iter()
            .filter(|a| kind != BackendKind::Pem || !a.is_nist_ecdh())
            .count();
        assert_eq!(m.list_keys().unwrap().len(), kept);
    }
}

#[test]
fn x25519_agreement() {
    for (_, m, _home) in managers() {
        let a = m.generate(None, Algorithm::X25519, "a").unwrap();
        let b = m.generate(None, Algorithm::X25519, "b").unwrap();
        let ab = m.agree(&a, b.public_key()).unwrap();
        let ba = m.agree(&b, a.public_key()).unwrap();
        assert_eq!(ab, ba);
        let s = m.generate(None, Algorithm::Ed25519, "s").unwrap();
        assert_eq!(
            m.agree(&s, a.public_key()).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
}

#[test]
fn default_key_lifecycle() {
    for (kind, m, _home) in managers() {
        assert!(matches!(m.default_key(), Err(Error::NoDefaultKey(_))));
        if kind.is_ephemeral() {
            // keys that vanish with the process never become the saved default
            let k = m.generate(None, Algorithm::EcdsaP384, "first").unwrap();
            assert!(matches!(m.default_key(), Err(Error::NoDefaultKey(_))));
            let e = m.set_default_key(&k).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("ephemeral"), "{e}");
            assert_eq!(m.config().default_key, None);
            continue;
        }
        let first = m.generate(None, Algorithm::EcdsaP384, "first").unwrap();
        assert_eq!(
            m.default_key().unwrap(),
            first,
            "the first key becomes the default"
        );
        let second = m.generate(None, Algorithm::Ed25519, "second").unwrap();
        assert_eq!(m.default_key().unwrap(), first, "later keys do not");
        m.set_default_key(&second).unwrap();
        assert_eq!(m.default_key().unwrap(), second);
        m.delete(&second).unwrap();
        assert!(matches!(m.default_key(), Err(Error::NoDefaultKey(_))));
        assert_eq!(m.resolve("second").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(m.delete(&second).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(m.list_keys().unwrap(), vec![first]);
    }
}

#[test]
fn duplicate_labels_in_one_backend_are_refused() {
    for (_, m, _home) in managers() {
        m.generate(None, Algorithm::Ed25519, "same").unwrap();
        let e = m.generate(None, Algorithm::Ed25519, "same").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        let e = m.generate(None, Algorithm::Ed25519, " bad").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
}

#[test]
fn export_then_import_moves_a_key() {
    let all = managers();
    let (_, src, _h) = &all[0];
    let key = src.generate(None, Algorithm::EcdsaP384, "mover").unwrap();
    let der = src.export_pkcs8(&key).unwrap();
    for (kind, dst, _home) in &all {
        let imported = dst.import_pkcs8(None, "moved", &der).unwrap();
        assert_eq!(imported.public_key(), key.public_key(), "{kind}");
        assert_eq!(imported.protection(), kind.protection());
        let sig = dst.sign(&imported, b"x").unwrap();
        keyhaven::verify(key.public_key(), b"x", &sig).unwrap();
        // through PEM and encrypted PKCS#8 too
        let pem = keyhaven::hazmat::pkcs8_encrypt_pem(&der, b"export pw").unwrap();
        let back = keyhaven::hazmat::private_key_pem_to_pkcs8(&pem, Some(b"export pw")).unwrap();
        let again = dst.import_pkcs8(None, "moved-again", &back).unwrap();
        assert_eq!(again.public_key(), key.public_key());
    }
    let e = all[0]
        .1
        .import_pkcs8(None, "junk", &keyhaven::SecretBytes::from(vec![1, 2, 3]))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[test]
fn assertions() {
    for (kind, m, _home) in managers() {
        let key = m.generate(None, Algorithm::EcdsaP384, "a").unwrap();
        let sig = m.sign(&key, b"artifact").unwrap();
        let a = m
            .make_assertion(
                &key,
                SignInput::Message(b"artifact"),
                &sig,
                SignatureFormat::Der,
            )
            .unwrap();
        assert_eq!(a.version, keyhaven::ASSERTION_VERSION);
        assert_eq!(a.algorithm, "ES384");
        assert_eq!(a.key_id, key.id().as_str());
        assert_eq!(a.key_label, "a");
        assert_eq!(a.backend, "b");
        assert_eq!(a.backend_type, kind.name());
        assert_eq!(a.protection, kind.protection().as_str());
        assert_eq!(a.fingerprint, key.info.fingerprint().to_hex());
        assert_eq!(
            a.message_sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"artifact")).as_str())
        );
        assert!(
            a.created_at.ends_with('Z') && a.created_at.contains('T'),
            "{}",
            a.created_at
        );
        let json = a.to_json().unwrap();
        let back = Assertion::from_json(&json).unwrap();
        assert_eq!(back, a);
        back.verify(Some(b"artifact")).unwrap();
        assert_eq!(
            back.verify(Some(b"artifacT")).unwrap_err().kind(),
            ErrorKind::BadSignature
        );
        assert!(back.verify(None).is_err());

        // a digest assertion, raw format
        let d = Sha384::digest(b"artifact").to_vec();
        let sig = m.sign_digest(&key, &d).unwrap();
        let a = m
            .make_assertion(&key, SignInput::Digest(&d), &sig, SignatureFormat::Raw)
            .unwrap();
        assert_eq!(a.signed_digest.as_deref(), Some(hex::encode(&d).as_str()));
        a.verify(None).unwrap();
        let mut tampered = a.clone();
        tampered.signed_digest = Some(hex::encode(Sha384::digest(b"other")));
        assert_eq!(
            tampered.verify(None).unwrap_err().kind(),
            ErrorKind::BadSignature
        );
        let mut swapped = a.clone();
        swapped.fingerprint = "00".repeat(32);
        assert!(swapped.verify(None).is_err());
        // Every field of the metadata is signed: editing any one fails as a bad signature.
        type Edit = fn(&mut Assertion);
        let edits: [(&str, Edit); 6] = [
            ("protection", |a| a.protection = "hardware".into()),
            ("backend_type", |a| a.backend_type = "pkcs11".into()),
            ("backend", |a| a.backend.push('x')),
            ("key_id", |a| a.key_id = "0".repeat(32)),
            ("key_label", |a| a.key_label.push('x')),
            ("created_at", |a| {
                a.created_at = "2020-01-01T00:00:00Z".into()
            }),
        ];
        for (field, edit) in edits {
            let mut edited = a.clone();
            edit(&mut edited);
            assert_eq!(
                edited.verify(None).unwrap_err().kind(),
                ErrorKind::BadSignature,
                "{field}"
            );
        }
        // A JWS from another assertion of the same key does not fit this one.
        let other = m
            .make_assertion(&key, SignInput::Digest(&d), &sig, SignatureFormat::Der)
            .unwrap();
        let mut spliced = a.clone();
        spliced.jws = other.jws.clone();
        assert_eq!(
            spliced.verify(None).unwrap_err().kind(),
            ErrorKind::BadSignature
        );
        // Without its JWS (a version 1 assertion) nothing in it is trusted.
        let mut unsigned = a.clone();
        unsigned.jws.clear();
        assert_eq!(
            unsigned.verify(None).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let raw = encoding::encode_signature(&sig, SignatureFormat::Raw).unwrap();
        assert_eq!(raw.len(), 96);
    }
}

#[test]
fn backends_are_declared_and_removed() {
    let home = crate::private_tempdir();
    let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    m.add_backend("scratch", BackendConfig::new(BackendKind::Memory, None))
        .unwrap();
    assert_eq!(
        m.config().default_backend,
        None,
        "an ephemeral backend never becomes the default on its own"
    );
    let e = m
        .add_backend("scratch", BackendConfig::new(BackendKind::Memory, None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let e = m
        .add_backend("bad:name", BackendConfig::new(BackendKind::Memory, None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // the only backend is still where new keys go; its keys are not saved as the default
    let k = m.generate(None, Algorithm::Ed25519, "k").unwrap();
    assert_eq!(k.backend, "scratch");
    assert!(matches!(m.default_key(), Err(Error::NoDefaultKey(_))));
    // asked for explicitly, it is the default backend
    m.set_default_backend(Some("scratch")).unwrap();
    m.remove_backend("scratch").unwrap();
    let c = m.config();
    assert!(c.backends.is_empty() && c.default_backend.is_none() && c.default_key.is_none());
    assert!(matches!(
        m.remove_backend("scratch"),
        Err(Error::UnknownBackend { .. })
    ));
    // the file on disk says the same
    let on_disk = Config::load(&home.path().join(keyhaven::CONFIG_FILE)).unwrap();
    assert_eq!(on_disk, *c);
}

#[test]
fn a_memory_backend_is_ephemeral() {
    let home = crate::private_tempdir();
    let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    m.add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
        .unwrap();
    m.generate(None, Algorithm::Ed25519, "gone-soon").unwrap();
    assert_eq!(m.list_keys().unwrap().len(), 1);
    let again = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    assert!(again.list_keys().unwrap().is_empty());
    assert!(again.doctor().backends[0].ephemeral);
    // keyhaven.toml names neither the memory backend nor its key as a default
    let saved = Config::load(&home.path().join(keyhaven::CONFIG_FILE)).unwrap();
    assert_eq!(saved.default_backend, None);
    assert_eq!(saved.default_key, None);
    assert!(again.doctor().healthy());
}

#[cfg(feature = "file")]
#[test]
fn an_ephemeral_backend_does_not_take_the_defaults_from_a_file_backend() {
    let home = crate::private_tempdir();
    let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    m.add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
        .unwrap();
    m.add_backend("vault", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    assert_eq!(m.config().default_backend.as_deref(), Some("vault"));
    m.generate(Some("mem"), Algorithm::Ed25519, "scratch")
        .unwrap();
    let kept = m.generate(None, Algorithm::Ed25519, "kept").unwrap();
    assert_eq!(kept.backend, "vault");
    assert_eq!(m.default_key().unwrap(), kept);
}

#[cfg(feature = "file")]
mod file {
    use super::*;
    use keyhaven::{CoreError, Protection};

    #[test]
    fn keys_persist_across_managers() {
        let home = crate::private_tempdir();
        let (enc, pem) = {
            let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
            m.add_backend("vault", BackendConfig::new(BackendKind::Encrypted, None))
                .unwrap();
            m.add_backend("plain", BackendConfig::new(BackendKind::Pem, None))
                .unwrap();
            (
                m.generate(Some("vault"), Algorithm::EcdsaP384, "enc")
                    .unwrap(),
                m.generate(Some("plain"), Algorithm::Ed25519, "pem")
                    .unwrap(),
            )
        };
        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        assert_eq!(m.resolve("enc").unwrap(), enc);
        assert_eq!(m.resolve("pem").unwrap(), pem);
        assert_eq!(m.default_key().unwrap(), enc);
        assert_eq!(pem.protection(), Protection::SoftwarePlain);
        assert_eq!(enc.protection(), Protection::SoftwareEncrypted);
        // the PEM backend names each key's file for openssl
        let file = m.details(&pem).unwrap().private_key_file.unwrap();
        assert!(file.exists(), "{}", file.display());
        let sealed = m.details(&enc).unwrap();
        assert!(sealed.private_key_file.is_none() && !sealed.in_device);
        // stores live where the config says
        assert!(home.path().join("backends/vault").is_dir());
        let report = m.doctor();
        assert!(report.healthy(), "{report:?}");
        assert_eq!(report.backends.len(), 2);
        assert!(report.backends.iter().all(|b| b.keys == Some(1)));
    }

    #[test]
    fn listing_does_not_create_stores_and_needs_no_passphrase_for_absent_ones() {
        let home = crate::private_tempdir();
        let mut c = Config::default();
        c.backends.insert(
            "vault".into(),
            BackendConfig::new(BackendKind::Encrypted, None),
        );
        c.save(&home.path().join(keyhaven::CONFIG_FILE)).unwrap();
        let m = KeyManager::open(home.path(), keyhaven::NoPassphrase).unwrap();
        assert!(m.list_keys().unwrap().is_empty());
        assert!(!home.path().join("backends").exists());
        let e = m.generate(None, Algorithm::Ed25519, "k").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    }

    #[test]
    fn the_passphrase_provider_is_asked_only_when_needed() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let home = crate::private_tempdir();
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let provider = move |req: &keyhaven::PassphraseRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            assert_eq!(req.backend, "vault");
            Ok::<_, CoreError>(keyhaven::secrecy::SecretString::from("pw"))
        };
        let m = KeyManager::open(home.path(), provider).unwrap();
        m.add_backend("plain", BackendConfig::new(BackendKind::Pem, None))
            .unwrap();
        m.add_backend("vault", BackendConfig::new(BackendKind::Encrypted, None))
            .unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1, "once, to create the store");
        m.generate(Some("plain"), Algorithm::Ed25519, "p").unwrap();
        m.generate(Some("vault"), Algorithm::Ed25519, "v").unwrap();
        m.list_keys().unwrap();
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the opened store is reused"
        );
    }

    #[test]
    fn a_type_mismatch_is_reported() {
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        m.add_backend("p", BackendConfig::new(BackendKind::Pem, None))
            .unwrap();
        let mut c = (*m.config()).clone();
        c.backends.insert(
            "q".into(),
            BackendConfig::new(BackendKind::Encrypted, Some(home.path().join("backends/p"))),
        );
        let m = KeyManager::with_config(home.path(), c, FixedPassphrase::new("pw")).unwrap();
        let e = m.backend("q").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("holds a pem store"), "{e}");
    }
}

#[cfg(feature = "file")]
#[test]
fn set_default_and_delete_in_two_processes_never_leave_a_default_on_a_deleted_key() {
    let home = crate::private_tempdir();
    let a = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    a.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let first = a.generate(None, Algorithm::Ed25519, "first").unwrap();
    let doomed = a.generate(None, Algorithm::Ed25519, "doomed").unwrap();
    // Process A has resolved `doomed`; process B deletes it; then A makes it the default.
    let seen_by_a = a.resolve("doomed").unwrap();
    let b = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    b.delete(&b.resolve("doomed").unwrap()).unwrap();
    let e = a.set_default_key(&seen_by_a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let again = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
    assert_eq!(again.default_key().unwrap(), first);
    assert_ne!(again.default_key().unwrap().id(), doomed.id());
}
