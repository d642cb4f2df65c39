//! Bad input and a hostile environment: each gets a clear error naming the module or token,
//! never a panic, a retry loop or a silent success.

use keyhaven_core::ErrorKind;
use std::path::{Path, PathBuf};

use keyhaven_core::{Algorithm, Error, KeyId, KeyStore};
use keyhaven_hsm_pkcs11::{Pkcs11Config, Pkcs11Store, TokenReport, TokenSelector};
use secrecy::SecretString;

use crate::token::{TestToken, USER_PIN, module, pkcs11_tool};

fn open_err(config: Pkcs11Config) -> Error {
    match Pkcs11Store::open(config) {
        Ok(store) => panic!("opened {store:?}"),
        Err(e) => e,
    }
}

fn config_for(module: &Path, token: TokenSelector) -> Pkcs11Config {
    Pkcs11Config::new(module, token, SecretString::from(USER_PIN))
}

#[test]
fn wrong_pin_is_tried_once_and_does_not_lock_the_token() {
    let token = TestToken::new();
    let selector = TokenSelector::Label(token.label.clone());
    match open_err(token.config_with_pin("00000000")) {
        e if e.is(ErrorKind::BadPassphrase) => {
            let msg = e.to_string();
            assert!(msg.contains(&token.label), "names the token: {msg}");
            assert!(msg.contains("did not retry"), "says no retry: {msg}");
            assert!(msg.contains("CKR_PIN_INCORRECT"), "{msg}");
        }
        other => panic!("wrong PIN: {other:?}"),
    }
    let after = TokenReport::probe(module(), &selector).unwrap();
    assert!(!after.user_pin_locked, "one wrong PIN locked the token");
    assert!(!after.user_pin_final_try);
    assert!(after.user_pin_count_low, "SoftHSM flags the failed attempt");
    // the right PIN still works, and clears SoftHSM's flag
    let store = token.store();
    let key = store
        .generate(Algorithm::Ed25519, "after a wrong pin")
        .unwrap();
    store.sign(&key.id, b"x").unwrap();
    assert!(
        !TokenReport::probe(module(), &selector)
            .unwrap()
            .user_pin_count_low
    );
}

#[test]
fn pin_of_the_wrong_length_is_a_bad_passphrase() {
    let token = TestToken::new();
    // SoftHSM wants 4 to 255 characters: CKR_PIN_LEN_RANGE
    assert!(matches!(
        open_err(token.config_with_pin("12")),
        e if e.is(ErrorKind::BadPassphrase)));
}

#[test]
fn missing_module_file_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnothing-pkcs11.so");
    match open_err(config_for(&missing, TokenSelector::Label("t".into()))) {
        e if e.is(ErrorKind::Unavailable) => {
            let reason = e.to_string();
            assert!(reason.contains("libnothing-pkcs11.so"), "{reason}");
            assert!(reason.contains("does not exist"), "{reason}");
            assert!(reason.contains("softhsm2"), "says what to do: {reason}");
        }
        other => panic!("missing module: {other:?}"),
    }
}

fn assert_not_a_module(path: &Path) {
    match open_err(config_for(path, TokenSelector::Label("t".into()))) {
        e if e.is(ErrorKind::Unavailable) => {
            let reason = e.to_string();
            assert!(reason.contains("is not a PKCS#11 module"), "{reason}");
            assert!(reason.contains(&path.display().to_string()), "{reason}");
        }
        other => panic!("{}: {other:?}", path.display()),
    }
}

#[test]
fn files_that_are_not_pkcs11_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("module.so");
    std::fs::write(&text, "this is not a shared library\n").unwrap();
    assert_not_a_module(&text);
    // an executable
    assert_not_a_module(Path::new("/bin/ls"));
    // a directory
    assert_not_a_module(dir.path());
    // a real shared library without C_GetFunctionList
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect("libm.so.6 is on every Debian system");
    match open_err(config_for(&libm, TokenSelector::Label("t".into()))) {
        e if e.is(ErrorKind::Unavailable) => {
            let reason = e.to_string();
            assert!(reason.contains("C_GetFunctionList"), "{reason}")
        }
        other => panic!("libm: {other:?}"),
    }
}

#[test]
fn unknown_token_is_unavailable_and_lists_the_tokens_present() {
    let token = TestToken::new();
    for selector in [
        TokenSelector::Label("no such token".into()),
        TokenSelector::SlotId(4_000_000_000),
        TokenSelector::Serial("0000000000000000".into()),
    ] {
        match open_err(config_for(module(), selector.clone())) {
            e if e.is(ErrorKind::Unavailable) => {
                let reason = e.to_string();
                assert!(reason.contains(&selector.to_string()), "{reason}");
                assert!(reason.contains(&token.label), "lists tokens: {reason}");
                assert!(reason.contains("--list-token-slots"), "says what to do");
            }
            other => panic!("{selector}: {other:?}"),
        }
    }
    // the token is also found by slot and serial
    let report = TokenReport::probe(module(), &TokenSelector::Label(token.label.clone())).unwrap();
    for selector in [
        TokenSelector::SlotId(report.slot_id),
        TokenSelector::Serial(report.serial.clone()),
    ] {
        let store = Pkcs11Store::open(config_for(module(), selector)).unwrap();
        assert_eq!(store.token_label(), token.label);
    }
}

#[test]
fn x25519_is_unsupported_naming_the_missing_mechanism() {
    let token = TestToken::new();
    let store = token.store();
    match store.generate(Algorithm::X25519, "dh") {
        Err(e) if e.is(ErrorKind::Unsupported) => {
            let reason = e.to_string();
            assert!(
                reason.contains("CKM_EC_MONTGOMERY_KEY_PAIR_GEN"),
                "{reason}"
            );
            assert!(reason.contains(&token.label), "{reason}");
        }
        other => panic!("X25519: {other:?}"),
    }
}

#[test]
fn ids_that_cannot_be_a_cka_id_are_not_found() {
    let token = TestToken::new();
    let store = token.store();
    let key = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    let upper: KeyId = key.id.as_str().to_uppercase().parse().unwrap();
    for id in [upper, "release".parse().unwrap(), "abc".parse().unwrap()] {
        assert!(
            matches!(store.get(&id), Err(e) if e.is(ErrorKind::NotFound)),
            "{id}"
        );
        assert!(matches!(store.sign(&id, b"x"), Err(e) if e.is(ErrorKind::NotFound)));
        assert!(matches!(store.delete(&id), Err(e) if e.is(ErrorKind::NotFound)));
    }
}

#[test]
fn key_deleted_behind_our_back_is_not_found() {
    let token = TestToken::new();
    let store = token.store();
    let gone = store
        .generate(Algorithm::EcdsaP384, "deleted by pkcs11-tool")
        .unwrap();
    let kept = store.generate(Algorithm::Ed25519, "kept").unwrap();
    // signing caches the private key's handle
    store.sign(&gone.id, b"before").unwrap();
    store.sign(&kept.id, b"before").unwrap();
    pkcs11_tool(
        &token,
        &[
            "--delete-object",
            "--type",
            "privkey",
            "--id",
            gone.id.as_str(),
        ],
    );
    for result in [
        store.sign(&gone.id, b"after").map(drop),
        store.sign_digest(&gone.id, &[0; 48]).map(drop),
        store.get(&gone.id).map(drop),
        store.export_pkcs8(&gone.id).map(drop),
    ] {
        match result {
            Err(e) if e.is(ErrorKind::NotFound) => {
                let m = e.to_string();
                assert!(m.contains(gone.id.as_str()), "{m}")
            }
            other => panic!("after delete: {other:?}"),
        }
    }
    assert_eq!(store.list().unwrap(), vec![kept.clone()]);
    store.sign(&kept.id, b"after").unwrap();
    // the public half left behind is reported, and `delete` clears it
    let problems = store.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("orphan"),
        "{}",
        problems[0]
    );
    store.delete(&gone.id).unwrap();
    assert!(store.check().unwrap().is_empty());
    assert!(matches!(store.delete(&gone.id), Err(e) if e.is(ErrorKind::NotFound)));
}

#[test]
fn token_directory_removed_mid_run_is_an_error_not_a_panic() {
    let token = TestToken::new();
    let store = token.store();
    let key = store.generate(Algorithm::EcdsaP256, "doomed").unwrap();
    store.sign(&key.id, b"before").unwrap();
    // Renamed out of the token directory first, then removed: one atomic step, so that no
    // SoftHSM process starting meanwhile (the pkcs11-tool of another test) finds a half-removed
    // token, and no write of SoftHSM's can make the removal fail half-way.
    let dir = token.directory();
    let away = crate::token::env()
        .tokendir
        .with_file_name(format!("removed-{}", token.label));
    std::fs::rename(&dir, &away).unwrap();
    let _ = std::fs::remove_dir_all(&away);
    let sign = store.sign(&key.id, b"after");
    match &sign {
        Err(e) if e.is(ErrorKind::Unavailable) => {
            let reason = e.to_string();
            assert!(reason.contains(&token.label), "names the token: {reason}");
            assert!(reason.contains("gone"), "{reason}");
        }
        other => panic!("sign on a vanished token: {other:?}"),
    }
    for (op, result) in [
        ("list", store.list().map(drop)),
        ("get", store.get(&key.id).map(drop)),
        (
            "generate",
            store.generate(Algorithm::EcdsaP256, "new").map(drop),
        ),
        ("delete", store.delete(&key.id).map(drop)),
        ("check", store.check().map(drop)),
    ] {
        let err = result.expect_err(op);
        assert!(
            matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Internal),
            "{op}: {err:?}"
        );
    }
    // and a new store on it is refused
    assert!(matches!(
        Pkcs11Store::open(token.config()),
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Internal)
    ));
}
