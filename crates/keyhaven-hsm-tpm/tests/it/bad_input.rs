//! Bad input: clear errors naming the key and the cause, and nothing on disk changes.

use keyhaven_core::ErrorKind;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_hsm_tpm::{KeyOptions, PersistentHandle, TpmConfig, TpmStore};
use secrecy::SecretString;

use crate::swtpm::{Swtpm, TestTpm};

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn swtpm_not_running_is_unavailable_naming_the_tcti() {
    let mut tpm = TestTpm::new();
    let tcti = tpm.swtpm.tcti();
    tpm.swtpm.kill();
    match TpmStore::open(tpm.config()) {
        Err(e) if e.is(ErrorKind::Unavailable) => {
            let reason = e.to_string();
            assert!(
                reason.contains(&tcti) && reason.contains("swtpm socket"),
                "{reason}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // a Unix-socket TCTI is refused with the reason rather than silently going elsewhere
    match TpmConfig::new("swtpm:path=/run/swtpm/sock", tpm.dir()) {
        Err(e) if e.is(ErrorKind::Unsupported) => {
            let reason = e.to_string();
            assert!(reason.contains("type=tcp"), "{reason}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn tpm_gone_while_open_is_unavailable_and_changes_nothing() {
    let mut tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    let before = snapshot(&tpm.dir());
    tpm.swtpm.kill();
    for _ in 0..2 {
        match store.sign(&key.id, b"m") {
            Err(e) if e.is(ErrorKind::Unavailable) => {
                let reason = e.to_string();
                assert!(reason.contains("cannot reach the TPM"), "{reason}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(matches!(
        store.generate(Algorithm::EcdsaP256, "k2"),
        Err(e) if e.is(ErrorKind::Unavailable)));
    assert_eq!(snapshot(&tpm.dir()), before, "nothing on disk changed");
    // and it comes back by itself when the TPM does
    tpm.swtpm.start_again();
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
}

#[test]
fn wrong_key_auth_is_bad_passphrase_naming_the_key() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let right = SecretString::from("correct horse");
    let key = store
        .generate_with_options(
            Algorithm::EcdsaP384,
            "guarded",
            KeyOptions::new().auth(right.clone()),
        )
        .unwrap();
    assert!(store.key_details(&key.id).unwrap().needs_auth);
    // the creating store knows the passphrase
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    drop(store);
    let store = tpm.store();
    let before = snapshot(&tpm.dir());
    match store.sign(&key.id, b"m") {
        Err(e) if e.is(ErrorKind::Locked) => {
            let m = e.to_string();
            assert!(m.contains(key.id.as_str()) && m.contains("passphrase"))
        }
        other => panic!("no passphrase given: expected Locked, got {other:?}"),
    }
    store
        .set_key_auth(&key.id, &SecretString::from("wrong"))
        .unwrap();
    match store.sign(&key.id, b"m") {
        Err(e) if e.is(ErrorKind::BadPassphrase) => {
            let m = e.to_string();
            assert!(m.contains(key.id.as_str()), "{m}");
            assert!(
                m.contains("TPM_RC_AUTH_FAIL") || m.contains("TPM_RC_BAD_AUTH"),
                "{m}"
            );
        }
        other => panic!("expected BadPassphrase, got {other:?}"),
    }
    store.set_key_auth(&key.id, &right).unwrap();
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    assert_eq!(snapshot(&tpm.dir()), before);
}

#[test]
fn pcr_mismatch_is_refused_saying_which_pcrs_differ() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store
        .generate_with_options(
            Algorithm::EcdsaP256,
            "bound",
            KeyOptions::new().pcr_policy("sha256:0,16".parse().unwrap()),
        )
        .unwrap();
    let both = store
        .generate_with_options(
            Algorithm::EcdsaP384,
            "bound+auth",
            KeyOptions::new()
                .pcr_policy("sha256:16".parse().unwrap())
                .auth(SecretString::from("pw")),
        )
        .unwrap();
    for k in [&key, &both] {
        let sig = store.sign(&k.id, b"before").unwrap();
        keyhaven_crypto::verify(&k.public_key, b"before", &sig).unwrap();
    }
    // with PCR 16 unchanged, a wrong passphrase is still refused on the policy key
    store
        .set_key_auth(&both.id, &SecretString::from("nope"))
        .unwrap();
    assert!(matches!(
        store.sign(&both.id, b"x"),
        Err(e) if e.is(ErrorKind::BadPassphrase)));
    store
        .set_key_auth(&both.id, &SecretString::from("pw"))
        .unwrap();
    let before = snapshot(&tpm.dir());
    tpm.swtpm.run(
        "tpm2_pcrextend",
        &["16:sha256=0000000000000000000000000000000000000000000000000000000000000001"],
    );
    for k in [&key, &both] {
        match store.sign(&k.id, b"after") {
            Err(e) if e.is(ErrorKind::PermissionDenied) => {
                let m = e.to_string();
                assert!(m.contains(k.id.as_str()), "{m}");
                assert!(m.contains("differ") && m.contains("changed: 16"), "{m}");
            }
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }
    assert_eq!(snapshot(&tpm.dir()), before);
    // the key is still usable once the PCR is back (PCR 16 is the resettable debug PCR)
    tpm.swtpm.run("tpm2_pcrreset", &["16"]);
    let sig = store.sign(&key.id, b"reset").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"reset", &sig).unwrap();
}

#[test]
fn blob_from_another_tpm_is_corrupt_naming_the_file() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP384, "moved").unwrap();
    drop(store);
    // the same directory, opened against a different TPM
    let other = Swtpm::start();
    let store = TpmStore::open(TpmConfig::new(&other.tcti(), tpm.dir()).unwrap()).unwrap();
    let before = snapshot(&tpm.dir());
    match store.sign(&key.id, b"m") {
        Err(e) if e.is(ErrorKind::Corrupt) => {
            let (what, reason) = (e.to_string(), e.to_string());
            assert!(what.contains(&format!("{}.priv", key.id)), "{what}");
            assert!(reason.contains("another TPM"), "{reason}");
            assert!(reason.contains(key.id.as_str()), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(snapshot(&tpm.dir()), before);
    // its own TPM still takes it
    let store = tpm.store();
    store.sign(&key.id, b"m").unwrap();
}

#[test]
fn corrupted_blob_files_are_corrupt_and_other_keys_still_sign() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let bad = store.generate(Algorithm::EcdsaP256, "damaged").unwrap();
    let cut = store.generate(Algorithm::EcdsaP256, "truncated").unwrap();
    let good = store.generate(Algorithm::EcdsaP384, "fine").unwrap();
    drop(store);
    let blob = tpm.dir().join("keys").join(format!("{}.priv", bad.id));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(&blob, &bytes).unwrap();
    let public = tpm.dir().join("keys").join(format!("{}.pub", cut.id));
    let bytes = fs::read(&public).unwrap();
    fs::write(&public, &bytes[..bytes.len() - 7]).unwrap();
    let store = tpm.store();
    let before = snapshot(&tpm.dir());
    match store.sign(&bad.id, b"m") {
        Err(e) if e.is(ErrorKind::Corrupt) => {
            let (what, reason) = (e.to_string(), e.to_string());
            assert!(what.contains(&format!("{}.priv", bad.id)), "{what}");
            assert!(reason.contains("damaged"), "{reason}");
        }
        other => panic!("flipped byte: expected Corrupt, got {other:?}"),
    }
    match store.sign(&cut.id, b"m") {
        Err(e) if e.is(ErrorKind::Corrupt) => {
            let what = e.to_string();
            assert!(what.contains(&format!("{}.pub", cut.id)), "{what}")
        }
        other => panic!("truncated public: expected Corrupt, got {other:?}"),
    }
    let sig = store.sign(&good.id, b"m").unwrap();
    keyhaven_crypto::verify(&good.public_key, b"m", &sig).unwrap();
    let problems = store.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}"); // the truncated public area; the flipped
    // private byte is only detectable by the TPM, at load
    assert_eq!(snapshot(&tpm.dir()), before);
}

#[test]
fn many_keys_share_three_object_slots_through_the_lru() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let keys: Vec<_> = (0..6)
        .map(|i| {
            let alg = if i % 2 == 0 {
                Algorithm::EcdsaP384
            } else {
                Algorithm::EcdsaP256
            };
            store.generate(alg, &format!("k{i}")).unwrap()
        })
        .collect();
    for round in 0..3 {
        for k in &keys {
            let msg = format!("round {round}");
            let sig = store.sign(&k.id, msg.as_bytes()).unwrap();
            keyhaven_crypto::verify(&k.public_key, msg.as_bytes(), &sig).unwrap();
            let loaded = store.loaded_keys().unwrap();
            assert!(loaded.loaded <= loaded.capacity, "{loaded:?}");
        }
    }
    assert_eq!(
        store.loaded_keys().unwrap().capacity,
        2,
        "swtpm: 3 slots less the SRK"
    );
    let transient = tpm.swtpm.run("tpm2_getcap", &["handles-transient"]);
    assert_eq!(transient.lines().count(), 3, "{transient}");
    // six keys round-robin through two slots: every signature above needed a load
    let loads = store.loaded_keys().unwrap().loads;
    assert_eq!(loads, 18, "one load per signature through a 2-key LRU");
    // a hot key stays loaded: signing it again needs no load
    let hot = &keys[keys.len() - 1];
    for _ in 0..5 {
        store.sign(&hot.id, b"hot").unwrap();
    }
    assert_eq!(
        store.loaded_keys().unwrap().loads,
        loads,
        "no reload per sign"
    );
    drop(store);
    let transient = tpm.swtpm.run("tpm2_getcap", &["handles-transient"]);
    assert!(
        transient.trim().is_empty(),
        "dropping the store flushes: {transient}"
    );
}

#[test]
fn persistent_handle_in_use_is_refused_and_leaves_nothing() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let handle = PersistentHandle::new(0x8100_0020).unwrap();
    store
        .generate_with_options(
            Algorithm::EcdsaP256,
            "first",
            KeyOptions::new().persistent(handle),
        )
        .unwrap();
    let before = store.list().unwrap();
    match store.generate_with_options(
        Algorithm::EcdsaP256,
        "second",
        KeyOptions::new().persistent(handle),
    ) {
        Err(e) if e.is(ErrorKind::AlreadyExists) => {
            let m = e.to_string();
            assert!(m.contains("0x81000020"), "{m}")
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.list().unwrap(), before);
    assert!(matches!(
        store.find_by_label("second"),
        Err(e) if e.is(ErrorKind::NotFound)));
    // the label is free for a key that can be made
    store.generate(Algorithm::EcdsaP256, "second").unwrap();
    // outside the owner range
    assert!(matches!(
        "0x81800000".parse::<PersistentHandle>(),
        Err(e) if e.is(ErrorKind::InvalidInput)));
}

#[test]
fn curve25519_keys_are_unsupported_with_the_reason() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    for alg in [Algorithm::Ed25519, Algorithm::X25519] {
        match store.generate(alg, "x") {
            Err(e) if e.is(ErrorKind::Unsupported) => {
                let reason = e.to_string();
                assert!(reason.contains("not available on TPM 2.0"), "{reason}")
            }
            other => panic!("{alg}: expected Unsupported, got {other:?}"),
        }
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn tpm_out_of_object_slots_is_a_clear_error_and_recovers() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    // another program fills the two slots the store's SRK leaves (no resource manager)
    for name in ["a.ctx", "b.ctx"] {
        let ctx = tpm.scratch(name);
        tpm.swtpm.run(
            "tpm2_createprimary",
            &["-C", "o", "-G", "ecc256", "-c", ctx.to_str().unwrap()],
        );
    }
    match store.sign(&key.id, b"m") {
        Err(e) if e.is(ErrorKind::Internal) => {
            let text = e.to_string();
            assert!(text.contains("TPM_RC_OBJECT_MEMORY"), "{text}");
            assert!(text.contains("tpm2_flushcontext -t"), "{text}");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    // once the other program's objects are gone (this also flushes the store's SRK: the
    // store notices its handle is stale, reconnects and signs)
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
}

/// ECDH keys with a passphrase, a PCR policy or both agree in their salted, response-encrypting
/// sessions, refuse a wrong passphrase, and refuse once the PCR changes, like signing keys.
#[test]
fn ecdh_keys_with_a_passphrase_or_a_pcr_policy() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let options = [
        KeyOptions::new().auth(SecretString::from("pw")),
        KeyOptions::new().pcr_policy("sha256:16".parse().unwrap()),
        KeyOptions::new()
            .pcr_policy("sha256:16".parse().unwrap())
            .auth(SecretString::from("pw")),
    ];
    let keys: Vec<_> = options
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            store
                .generate_with_options(Algorithm::EcdhP384, &format!("ecdh-{i}"), o)
                .unwrap()
        })
        .collect();
    let peer = keyhaven_crypto::default_provider()
        .generate(Algorithm::EcdhP384)
        .unwrap();
    for k in &keys {
        assert_eq!(
            store.agree(&k.id, peer.public_key()).unwrap(),
            peer.agree(&k.public_key).unwrap(),
            "{}",
            k.label
        );
    }
    store
        .set_key_auth(&keys[0].id, &SecretString::from("nope"))
        .unwrap();
    assert!(matches!(
        store.agree(&keys[0].id, peer.public_key()),
        Err(e) if e.is(ErrorKind::BadPassphrase)));
    tpm.swtpm.run(
        "tpm2_pcrextend",
        &["16:sha256=0000000000000000000000000000000000000000000000000000000000000001"],
    );
    for k in &keys[1..] {
        assert!(
            matches!(
            store.agree(&k.id, peer.public_key()),
            Err(e) if e.is(ErrorKind::PermissionDenied)),
            "{}",
            k.label
        );
    }
    tpm.swtpm.run("tpm2_pcrreset", &["16"]);
    assert!(store.agree(&keys[1].id, peer.public_key()).is_ok());
}
