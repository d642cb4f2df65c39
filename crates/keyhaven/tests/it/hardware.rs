//! Hardware backends through the manager: PKCS#11 on real SoftHSM2 tokens, TPM on real swtpm
//! instances (devices from `keyhaven_testkit::devices`; run with `cargo xtask test`).

#[cfg(feature = "pkcs11")]
mod pkcs11 {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use keyhaven::secrecy::SecretString;
    use keyhaven::{
        Algorithm, BackendConfig, BackendKind, Error, ErrorKind, FixedPassphrase, KeyManager,
        PassphrasePurpose, PassphraseRequest, Protection, TokenRef,
    };
    use keyhaven_testkit::devices::{TokenPool, USER_PIN};

    /// A token of this test's own: (module, label).
    fn token() -> (std::path::PathBuf, String) {
        TokenPool::get("khf", 6).take()
    }

    /// The requests a provider was asked.
    type Asked = Arc<Mutex<Vec<PassphraseRequest>>>;

    /// A provider that answers token PIN requests with `pin`, and records every request.
    fn pin_provider(pin: &'static str) -> (impl keyhaven::PassphraseProvider + 'static, Asked) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&asked);
        let provider = move |r: &PassphraseRequest| {
            log.lock().unwrap().push(r.clone());
            match r.purpose {
                PassphrasePurpose::TokenPin => Ok(SecretString::from(pin)),
                _ => Ok(SecretString::from("store passphrase")),
            }
        };
        (provider, asked)
    }

    fn write_private(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn keys_are_made_and_used_on_the_token_with_the_pin_asked_for() {
        let (module, label) = token();
        let home = crate::private_tempdir();
        let (provider, asked) = pin_provider(USER_PIN);
        let m = KeyManager::open(home.path(), provider).unwrap();
        let b = m
            .add_backend(
                "hsm",
                BackendConfig::pkcs11(&module, TokenRef::Label(label.clone())),
            )
            .unwrap();
        assert!(b.location().contains(&label), "{}", b.location());
        {
            let asked = asked.lock().unwrap();
            assert_eq!(asked.len(), 1, "asked once: {asked:?}");
            assert_eq!(asked[0].purpose, PassphrasePurpose::TokenPin);
            assert_eq!(asked[0].token.as_deref(), Some(label.as_str()));
            assert_eq!(asked[0].backend, "hsm");
            assert!(
                asked[0]
                    .describe()
                    .contains(&format!("user PIN of token '{label}'"))
            );
        }
        // the PIN is not in the configuration, only the token
        let text = std::fs::read_to_string(home.path().join(keyhaven::CONFIG_FILE)).unwrap();
        assert!(!text.contains(USER_PIN) && text.contains(&label), "{text}");
        assert_eq!(m.config().default_backend.as_deref(), Some("hsm"));

        for alg in [
            Algorithm::EcdsaP384,
            Algorithm::EcdsaP256,
            Algorithm::Ed25519,
        ] {
            let key = m.generate(None, alg, &format!("k-{alg}")).unwrap();
            assert_eq!(key.backend_kind, BackendKind::Pkcs11);
            assert_eq!(key.protection(), Protection::Hardware);
            let sig = m.sign(&key, b"on the token").unwrap();
            keyhaven::verify(key.public_key(), b"on the token", &sig).unwrap();
            let e = m.export_pkcs8(&key).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            let d = m.details(&key).unwrap();
            assert!(d.in_device);
            assert_eq!(d.token.as_deref(), Some(label.as_str()));
            assert!(!d.needs_auth);
        }
        // TPM options are refused on a token
        let e = m
            .generate_with(
                Some("hsm"),
                &keyhaven::KeySpec::new(Algorithm::EcdsaP384, "p")
                    .option("persistent", "0x81000010"),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(
            e.to_string()
                .contains("the pkcs11 backend takes no key options ('persistent' given)"),
            "{e}"
        );

        let report = m.doctor();
        assert!(report.healthy(), "{report:?}");
        let hsm = &report.backends[0];
        assert_eq!(hsm.keys, Some(3));
        assert_eq!(hsm.protection, Protection::Hardware);
        let t = hsm.token.as_ref().expect("the token's report");
        assert_eq!(t.label, label);
        assert!(t.manufacturer.contains("SoftHSM"), "{t:?}");
        assert!(!t.serial.is_empty() && t.free_slots >= 1, "{t:?}");
        assert!(t.missing.is_empty(), "{t:?}");
        assert!(
            t.mechanisms
                .iter()
                .any(|m| m.name == "CKM_ECDSA" && m.present),
            "{t:?}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["backends"][0]["token"]["label"], label.as_str());

        // a new manager (a new command) asks again, and finds the keys
        let (provider, asked) = pin_provider(USER_PIN);
        let m = KeyManager::open(home.path(), provider).unwrap();
        assert!(asked.lock().unwrap().is_empty(), "nothing opened yet");
        assert_eq!(m.list_keys().unwrap().len(), 3);
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    #[test]
    fn pins_come_from_a_file_and_wrong_or_missing_pins_are_pin_errors() {
        let (module, label) = token();
        let home = crate::private_tempdir();
        let pin_file = home.path().join("hsm.pin");
        write_private(&pin_file, &format!("{USER_PIN}\n"));

        // a wrong PIN: a PIN error, and nothing is saved
        let (provider, _) = pin_provider("00000000");
        let m = KeyManager::open(home.path(), provider).unwrap();
        let cfg = BackendConfig::pkcs11(&module, TokenRef::Label(label.clone()));
        let e = m.add_backend("hsm", cfg.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadPassphrase, "{e}");
        assert!(
            matches!(&e, Error::Pin { origin, .. } if origin.contains("prompt")),
            "{e:?}"
        );
        assert!(m.config().backends.is_empty());

        // a store passphrase is never tried as a PIN
        let m = KeyManager::open(home.path(), FixedPassphrase::new(USER_PIN)).unwrap();
        let e = m.add_backend("hsm", cfg.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
        assert!(matches!(e, Error::Pin { .. }), "{e:?}");

        // a declared PIN file is used, and no one is asked (in a home an encrypted store
        // anchors: a token that anchors a home takes its PIN from the user only)
        let (provider, asked) = pin_provider("00000000");
        let m = KeyManager::open(home.path(), provider).unwrap();
        m.add_backend("local", BackendConfig::new(BackendKind::Encrypted, None))
            .unwrap();
        asked.lock().unwrap().clear();
        m.add_backend("hsm", cfg.clone().with_pin_file(&pin_file))
            .unwrap();
        let key = m
            .generate(Some("hsm"), Algorithm::EcdsaP384, "filed")
            .unwrap();
        m.sign(&key, b"m").unwrap();
        assert!(
            asked
                .lock()
                .unwrap()
                .iter()
                .all(|r| r.purpose != PassphrasePurpose::TokenPin)
        );

        // ... and must be private
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let m = KeyManager::open(home.path(), pin_provider("00000000").0).unwrap();
        let e = m.resolve("hsm:filed").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();

        // a PIN variable that is not set
        let m = KeyManager::open(home.path(), pin_provider("00000000").0).unwrap();
        m.update_config(|c| {
            c.backends.insert(
                "hsm".into(),
                cfg.clone().with_pin_env("KEYHAVEN_TEST_UNSET_PIN_VARIABLE"),
            );
            Ok(())
        })
        .unwrap();
        let e = m.resolve("hsm:filed").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
        assert!(
            e.to_string()
                .contains("environment variable KEYHAVEN_TEST_UNSET_PIN_VARIABLE"),
            "{e}"
        );
    }

    /// Seed 002's messaging keys with one side on the token: Bob's identity, identity
    /// agreement key, signed and one-time prekeys are all SoftHSM keys (ECDH P-256: SoftHSM has
    /// no X25519), every Diffie-Hellman of his done by the token; Alice's keys are software.
    /// Bob's identity is rotated twice and keeps serving valid bundles; the two exchange a
    /// hundred chained message keys out of order.
    #[test]
    #[cfg(feature = "file")]
    fn a_session_with_one_side_on_the_token_survives_identity_rotations() {
        use keyhaven::versions::chain::{ReceivingChain, RootKey, SendingChain};
        const INFO: &[u8] = b"keyhaven hardware session test";
        let (module, label) = token();
        let home = crate::private_tempdir();
        let (provider, _) = pin_provider(USER_PIN);
        let bob = KeyManager::open(home.path(), provider).unwrap();
        bob.add_backend(
            "hsm",
            BackendConfig::pkcs11(&module, TokenRef::Label(label)),
        )
        .unwrap();
        let first = bob.generate(None, Algorithm::EcdsaP256, "bob").unwrap();
        let pool = bob.rotation().prekey_pool(&first).unwrap();
        assert_eq!(pool.curve().unwrap(), Algorithm::EcdhP256);
        pool.replenish(2, 4).unwrap();

        let ahome = crate::private_tempdir();
        let alice =
            KeyManager::open(ahome.path(), keyhaven::FixedPassphrase::new("alice pw")).unwrap();
        alice
            .add_backend(
                "soft",
                BackendConfig::new(keyhaven::BackendKind::Encrypted, None),
            )
            .unwrap();
        let alice_id = alice.generate(None, Algorithm::Ed25519, "alice").unwrap();
        let alice_pool = alice
            .rotation()
            .prekey_pool(&alice_id)
            .unwrap()
            .with_curve(Algorithm::EcdhP256)
            .unwrap();

        for round in 0..3u8 {
            if round > 0 {
                bob.rotation().rotate_key(&first, "scheduled").unwrap();
            }
            let bob_id = bob.resolve("bob").unwrap();
            let primary = bob.rotation().signing_target(&bob_id).unwrap();
            let pool = bob.rotation().prekey_pool(&bob_id).unwrap();
            let bundle = pool.bundle().unwrap();
            assert_eq!(&bundle.identity, primary.public_key(), "round {round}");
            bundle.verify().unwrap();
            assert!(bundle.one_time_prekey.is_some(), "round {round}");
            let (init, a) = alice_pool.initiate(&bundle, INFO).unwrap();
            let b = pool.respond(&init, INFO).unwrap();
            assert_eq!(a.shared, b.shared, "round {round}");
            let e = pool.respond(&init, INFO).unwrap_err();
            assert!(e.to_string().contains("already consumed"), "{e}");
            // every key of Bob's is on the token
            for k in bob.list_keys().unwrap() {
                assert_eq!(k.protection(), Protection::Hardware, "{}", k.label());
            }

            // a hundred message keys, delivered in a scrambled order within the skip bound
            let dh = keyhaven::SecretBytes::copy_from(&[round + 1; 32]);
            let chain = |s: &keyhaven::SecretBytes| {
                RootKey::from_secret(s).unwrap().advance(&dh, INFO).unwrap()
            };
            let mut send = SendingChain::new(chain(&a.shared));
            let mut recv = ReceivingChain::new(chain(&b.shared), 100);
            let sealed: Vec<Vec<u8>> = (0..100)
                .map(|i| {
                    send.next_key()
                        .unwrap()
                        .seal(format!("message {i}").as_bytes(), &a.associated_data)
                        .unwrap()
                })
                .collect();
            for n in (0..100u32).map(|i| (i * 37 + 11) % 100) {
                let plain = recv
                    .key(n)
                    .unwrap()
                    .open(&sealed[n as usize], &b.associated_data)
                    .unwrap();
                assert_eq!(plain.expose_secret(), format!("message {n}").as_bytes());
                assert!(recv.key(n).is_err(), "message key {n} given twice");
            }
        }
        let last = bob.resolve("bob").unwrap();
        let primary = bob.rotation().signing_target(&last).unwrap();
        assert_eq!(bob.rotation().version_info(&primary).unwrap().version, 3);
    }

    #[test]
    #[cfg(feature = "file")]
    fn an_unreachable_token_is_unavailable_and_new_keys_may_fall_back() {
        use keyhaven::{Config, FallbackConfig, Warning};
        let (module, _label) = token();
        let home = crate::private_tempdir();
        let mut c = Config::default();
        c.backends.insert(
            "gone".into(),
            BackendConfig::pkcs11("/nonexistent/libpkcs11.so", TokenRef::Label("t".into())),
        );
        c.backends.insert(
            "other".into(),
            BackendConfig::pkcs11(&module, TokenRef::Label("no-such-token".into())),
        );
        c.backends
            .insert("local".into(), BackendConfig::new(BackendKind::Pem, None));
        c.fallback = FallbackConfig::new(true, Some("local".into()));
        c.save(&home.path().join(keyhaven::CONFIG_FILE)).unwrap();
        let (provider, asked) = pin_provider(USER_PIN);
        let m = KeyManager::open(home.path(), provider).unwrap();
        for backend in ["gone", "other"] {
            let key = m
                .generate(Some(backend), Algorithm::EcdsaP384, backend)
                .unwrap();
            assert_eq!(key.backend, "local");
            let w = m.take_warnings();
            assert!(
                matches!(
                    &w[..],
                    [Warning::Fallback { backend: b, expected: Protection::Hardware, actual: Protection::SoftwarePlain, .. }] if b == backend
                ),
                "{w:?}"
            );
            let e = m.resolve(&format!("{backend}:k")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        }
        assert!(
            asked.lock().unwrap().is_empty(),
            "no PIN is asked for a token that is not there"
        );
        let report = m.doctor();
        let gone = report.backends.iter().find(|b| b.name == "gone").unwrap();
        assert!(!gone.reachable && gone.token.is_none(), "{gone:?}");
        assert_eq!(gone.error_kind, Some(ErrorKind::Unavailable));
    }
}

#[cfg(feature = "tpm")]
mod tpm {
    use keyhaven::secrecy::SecretString;
    use keyhaven::{
        Algorithm, BackendConfig, BackendKind, ErrorKind, KeyManager, KeySpec, NoPassphrase,
        Protection,
    };
    use keyhaven_testkit::devices::Swtpm;

    #[test]
    fn keys_are_made_and_used_in_the_tpm() {
        let tpm = Swtpm::start();
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), NoPassphrase).unwrap();
        let b = m
            .add_backend("tpm", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap();
        assert!(b.location().contains(&tpm.tcti()), "{}", b.location());
        assert!(home.path().join("backends/tpm").is_dir());
        for alg in [Algorithm::EcdsaP384, Algorithm::EcdsaP256] {
            let key = m.generate(None, alg, &format!("k-{alg}")).unwrap();
            assert_eq!(key.backend_kind, BackendKind::Tpm);
            assert_eq!(key.protection(), Protection::Hardware);
            let sig = m.sign(&key, b"in the TPM").unwrap();
            keyhaven::verify(key.public_key(), b"in the TPM", &sig).unwrap();
            let e = m.export_pkcs8(&key).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        }
        let e = m.generate(None, Algorithm::Ed25519, "ed").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");

        let report = m.doctor();
        assert!(report.healthy(), "{report:?}");
        let t = report.backends[0].tpm.as_ref().expect("the TPM's report");
        assert_eq!(t.tcti, tpm.tcti());
        assert!(!t.manufacturer.is_empty() && !t.firmware_version.is_empty());
        assert!(t.ecc_curves.iter().any(|c| c == "NIST P-384"), "{t:?}");
        assert!(t.missing_curves.is_empty());
    }

    /// A TPM key's attested assertion proves its protection (once its attestation key is
    /// trusted). The holder of a software key, with the same TPM at hand, certifies the TPM
    /// key over the software key's own signature and signs an assertion claiming `hardware`
    /// with it: its JWS and signature verify, its protection does not.
    #[test]
    fn a_software_key_cannot_borrow_a_tpm_keys_certification() {
        use keyhaven::{ProtectionCheck, SignInput, SignatureFormat};
        use sha2::Digest;
        let tpm = Swtpm::start();
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), NoPassphrase).unwrap();
        m.add_backend("tpm", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap();
        m.add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
            .unwrap();
        let hw = m.generate(Some("tpm"), Algorithm::EcdsaP256, "hw").unwrap();
        let soft = m
            .generate(Some("mem"), Algorithm::EcdsaP256, "soft")
            .unwrap();
        let msg = b"who made this";
        let sig = m.sign(&hw, msg).unwrap();
        let a = m
            .make_attested_assertion(&hw, SignInput::Message(msg), &sig, SignatureFormat::Der)
            .unwrap();
        a.verify(Some(msg)).unwrap();
        let ak = match a.check_protection(&[]).unwrap() {
            ProtectionCheck::Proved {
                attestation_key,
                trusted: false,
            } => attestation_key,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            a.check_protection(std::slice::from_ref(&ak)).unwrap(),
            ProtectionCheck::Proved { trusted: true, .. }
        ));

        let ssig = m.sign(&soft, msg).unwrap();
        let borrowed = m
            .attest_key(&hw, &sha2::Sha256::digest(ssig.as_raw()))
            .unwrap();
        let mut forged = m
            .make_assertion(&soft, SignInput::Message(msg), &ssig, SignatureFormat::Der)
            .unwrap();
        forged.protection = "hardware".into();
        forged.key_attestation = Some(borrowed);
        let mut claims = serde_json::to_value(&forged).unwrap();
        let o = claims.as_object_mut().unwrap();
        o.remove("public_key_pem");
        o.remove("jws");
        // (keyhaven itself refuses to sign an assertion's signing input; the key's holder
        // signs it with the key outside keyhaven.)
        let der = m.export_pkcs8(&soft).unwrap();
        let private = keyhaven::default_provider()
            .load_pkcs8(der.expose_secret())
            .unwrap();
        forged.jws = keyhaven::jws::sign(
            soft.public_key(),
            keyhaven::ASSERTION_JWS_TYPE,
            &claims,
            &mut |d| private.sign(d),
        )
        .unwrap();
        forged.verify(Some(msg)).unwrap();
        let e = forged.check_protection(&[ak]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadSignature, "{e}");
    }

    #[test]
    fn key_options_and_key_passphrases() {
        let tpm = Swtpm::start();
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), NoPassphrase).unwrap();
        m.add_backend("tpm", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap();
        let spec = KeySpec::new(Algorithm::EcdsaP384, "sealed")
            .option("persistent", "0x81000010")
            .option("pcr-policy", "sha256:0,7")
            .secret_option("auth", SecretString::from("key pass"));
        assert!(!format!("{spec:?}").contains("key pass"));
        let key = m.generate_with(None, &spec).unwrap();
        let d = m.details(&key).unwrap();
        assert_eq!(d.persistent_handle.as_deref(), Some("0x81000010"));
        assert_eq!(d.pcr_policy.as_deref(), Some("sha256:0,7"));
        assert!(d.needs_auth);
        m.sign(&key, b"m").unwrap();

        // a new manager needs the key's passphrase. (swtpm holds three loaded objects and has no
        // resource manager: the first manager's go when it is dropped, as at a command's end.)
        drop(m);
        let m = KeyManager::open(home.path(), NoPassphrase).unwrap();
        let key = m.resolve("sealed").unwrap();
        let e = m.sign(&key, b"m").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
        m.unlock(&key, &SecretString::from("wrong")).unwrap();
        let e = m.sign(&key, b"m").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadPassphrase, "{e}");
        m.unlock(&key, &SecretString::from("key pass")).unwrap();
        let sig = m.sign(&key, b"m").unwrap();
        keyhaven::verify(key.public_key(), b"m", &sig).unwrap();

        // bad options are input errors; a taken handle is AlreadyExists
        // and an option the TPM does not take is refused, never ignored
        let bad =
            |name: &str, value: &str| KeySpec::new(Algorithm::EcdsaP256, "bad").option(name, value);
        for (spec, kind) in [
            (bad("persistent", "81000010"), ErrorKind::InvalidInput),
            (bad("persistent", "0x01000010"), ErrorKind::InvalidInput),
            (bad("pcr-policy", "sha256:99"), ErrorKind::InvalidInput),
            (bad("persistent", "0x81000010"), ErrorKind::AlreadyExists),
            (bad("persistant", "0x81000012"), ErrorKind::Unsupported),
        ] {
            let e = m.generate_with(None, &spec).unwrap_err();
            assert_eq!(e.kind(), kind, "{spec:?}: {e}");
        }
    }

    #[test]
    #[cfg(feature = "file")]
    fn an_unreachable_tpm_is_unavailable_and_options_never_fall_back() {
        use keyhaven::{Config, FallbackConfig, FixedPassphrase, Warning};
        let mut tpm = Swtpm::start();
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        m.add_backend("tpm", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap();
        m.generate(None, Algorithm::EcdsaP384, "k").unwrap();
        m.add_backend("local", BackendConfig::new(BackendKind::Pem, None))
            .unwrap();
        m.update_config(|c| {
            c.fallback = FallbackConfig::new(true, Some("local".into()));
            Ok(())
        })
        .unwrap();
        drop(m);
        tpm.kill();

        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        let e = m.resolve("tpm:k").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(m.list_keys().unwrap().is_empty());
        assert!(
            matches!(&m.take_warnings()[..], [Warning::Unreachable { backend, .. }] if backend == "tpm")
        );
        let e = m
            .generate_with(
                Some("tpm"),
                &KeySpec::new(Algorithm::EcdsaP384, "p").option("persistent", "0x81000011"),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains("no fallback is used"), "{e}");
        let key = m.generate(Some("tpm"), Algorithm::EcdsaP384, "p").unwrap();
        assert_eq!(key.backend, "local");
        let report = m.doctor();
        let t = report.backends.iter().find(|b| b.name == "tpm").unwrap();
        assert!(!t.reachable && t.tpm.is_none(), "{t:?}");

        // a tpm backend cannot be added while its TPM is away, and nothing is created
        let e = m
            .add_backend("tpm2", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(!home.path().join("backends/tpm2").exists());
        assert!(
            !Config::load(&home.path().join(keyhaven::CONFIG_FILE))
                .unwrap()
                .backends
                .contains_key("tpm2")
        );

        // back again: the keys are there
        drop(m);
        tpm.start_again();
        let m = KeyManager::open(home.path(), FixedPassphrase::new("pw")).unwrap();
        let key = m.resolve("tpm:k").unwrap();
        m.sign(&key, b"after the restart").unwrap();
    }

    /// A master key in the TPM (ECDH P-256 and P-384, `decrypt`-only keys used through
    /// `TPM2_ECDH_ZGen`) wraps and unwraps KEKs through the manager's decorated store; a dead
    /// TPM is `Unavailable`, releases nothing and loses nothing: after it is back the same
    /// wrapped KEK unwraps.
    #[test]
    fn a_master_key_in_the_tpm_wraps_keks_and_survives_an_outage() {
        use keyhaven_envelope::{Kek, KekScope, MasterKey, SecretContext, WrappedKek};
        let mut tpm = Swtpm::start();
        let home = crate::private_tempdir();
        let m = KeyManager::open(home.path(), NoPassphrase).unwrap();
        m.add_backend("tpm", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap();
        let ctx = SecretContext::new("acme", "db/root", 1, 2).unwrap();
        let scope = KekScope::new("acme", 2, 1).unwrap();
        let mut stored = Vec::new();
        for alg in [Algorithm::EcdhP256, Algorithm::EcdhP384] {
            let key = m
                .generate(Some("tpm"), alg, &format!("master-{alg}"))
                .unwrap();
            assert_eq!(key.protection(), Protection::Hardware);
            let e = m.sign(&key, b"no").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            let store = std::sync::Arc::clone(m.backend("tpm").unwrap().store());
            let master = MasterKey::new(store, &format!("master-{alg}")).unwrap();
            let kek = Kek::generate(KekScope::new("acme", 2, 1).unwrap()).unwrap();
            let env = kek.seal(&ctx, b"tpm-guarded").unwrap();
            let wrapped = master.wrap(&kek).unwrap().to_bytes();
            let back = master
                .unwrap(&WrappedKek::from_bytes(&wrapped).unwrap(), kek.scope())
                .unwrap();
            assert_eq!(
                back.open(&ctx, &env).unwrap().expose_secret(),
                b"tpm-guarded"
            );
            stored.push((alg, wrapped, env));
        }
        let store = std::sync::Arc::clone(m.backend("tpm").unwrap().store());
        tpm.kill();
        for (alg, wrapped, _) in &stored {
            let master = MasterKey::new(std::sync::Arc::clone(&store), &format!("master-{alg}"));
            let outcome =
                master.and_then(|m| m.unwrap(&WrappedKek::from_bytes(wrapped).unwrap(), &scope));
            let e = keyhaven::CoreError::from(outcome.unwrap_err());
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{alg}: {e}");
        }
        tpm.start_again();
        for (alg, wrapped, env) in &stored {
            let master =
                MasterKey::new(std::sync::Arc::clone(&store), &format!("master-{alg}")).unwrap();
            let kek = master
                .unwrap(&WrappedKek::from_bytes(wrapped).unwrap(), &scope)
                .unwrap();
            assert_eq!(kek.open(&ctx, env).unwrap().expose_secret(), b"tpm-guarded");
        }
    }
}
