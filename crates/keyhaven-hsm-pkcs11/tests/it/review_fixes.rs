//! Review fixes: one login attempt for a PIN changed behind a busy store's back, one login per
//! lost login however many threads notice, a zero session cap, keys of other tools that are
//! weaker than ours, ambiguous token labels, and `NotFound` that names the token.

use keyhaven_core::ErrorKind;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyhaven_core::{Algorithm, KeyId, KeyInfo, KeyStore};
use keyhaven_hsm_pkcs11::{Pkcs11Store, TokenReport, TokenSelector};

use crate::token::{SO_PIN, TestToken, USER_PIN, logout_everywhere, module, pkcs11_tool};

/// The module as this process initialized it (the stores share it; `C_Initialize` again only
/// says it already is, and cryptoki never finalizes on drop).
fn pkcs11() -> &'static Pkcs11 {
    static P: OnceLock<Pkcs11> = OnceLock::new();
    P.get_or_init(|| {
        let p = Pkcs11::new(module()).unwrap();
        match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        p
    })
}

/// The slots holding a token with this label.
fn slots_labelled(label: &str) -> Vec<Slot> {
    let p = pkcs11();
    p.get_slots_with_token()
        .unwrap()
        .into_iter()
        .filter(|s| {
            p.get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == label)
        })
        .collect()
}

fn slot_of(token: &TestToken) -> Slot {
    let slots = slots_labelled(&token.label);
    assert_eq!(slots.len(), 1, "token {}", token.label);
    slots[0]
}

/// Runs `f` on `threads` threads released together; returns their results. A thread's panic is
/// the test's, and a thread that does not finish within 60 s fails the test (a deadlocked pool
/// must not hang the suite).
fn together<T: Send + 'static>(
    threads: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(threads));
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..threads {
        let (f, start, tx) = (Arc::clone(&f), Arc::clone(&start), tx.clone());
        std::thread::spawn(move || {
            start.wait();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t)));
            let _ = tx.send(result);
        });
    }
    (0..threads)
        .map(|_| {
            match rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a thread hung for 60 s")
            {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
        .collect()
}

#[test]
fn a_pin_changed_behind_a_busy_store_is_tried_once() {
    const NEW_PIN: &str = "24681357";
    let token = TestToken::new();
    let store = Arc::new(Pkcs11Store::open(token.config().with_max_sessions(4)).unwrap());
    let key = store.generate(Algorithm::EcdsaP256, "pin changes").unwrap();
    store.sign(&key.id, b"before").unwrap();
    assert_eq!(store.login_attempts(), 1, "the login at open");
    // Another program changes the user PIN (this process is logged in, so C_SetPIN in a
    // session of ours changes the user's PIN) and logs out: every session of the store loses
    // its login, and the PIN the store holds is now wrong.
    let session = pkcs11().open_rw_session(slot_of(&token)).unwrap();
    session
        .set_pin(&AuthPin::from(USER_PIN), &AuthPin::from(NEW_PIN))
        .unwrap();
    session.logout().unwrap();
    drop(session);
    // Six threads, ten signatures each: every one fails with the wrong PIN, and the store
    // called C_Login once more in all, not once per thread or per call.
    let results = together(6, {
        let (store, id) = (Arc::clone(&store), key.id.clone());
        move |t| {
            (0..10)
                .map(|i| store.sign(&id, format!("{t}/{i}").as_bytes()).map(drop))
                .collect::<Vec<_>>()
        }
    });
    for result in results.into_iter().flatten() {
        match result {
            Err(e) if e.is(ErrorKind::BadPassphrase) => {
                let m = e.to_string();
                assert!(m.contains(&token.label), "names the token: {m}");
                assert!(m.contains("CKR_PIN_INCORRECT"), "{m}");
                assert!(m.contains("will not try that PIN again"), "{m}");
            }
            other => panic!("after the PIN changed: {other:?}"),
        }
    }
    assert_eq!(
        store.login_attempts(),
        2,
        "one failed C_Login for 60 signatures on 6 threads"
    );
    let report = TokenReport::probe(module(), &TokenSelector::Label(token.label.clone())).unwrap();
    assert!(
        report.user_pin_count_low && !report.user_pin_locked,
        "{report}"
    );
    // Even once the PIN is back, the store does not try it again until it is reopened...
    let session = pkcs11().open_rw_session(slot_of(&token)).unwrap();
    session
        .set_pin(&AuthPin::from(NEW_PIN), &AuthPin::from(USER_PIN))
        .unwrap();
    drop(session);
    assert!(matches!(
        store.sign(&key.id, b"still refused"),
        Err(e) if e.is(ErrorKind::BadPassphrase)));
    assert!(matches!(store.get(&key.id), Err(e) if e.is(ErrorKind::BadPassphrase)));
    assert_eq!(store.login_attempts(), 2, "no C_Login with a refused PIN");
    // ...and a store opened again with the right PIN works.
    let reopened = token.store();
    let sig = reopened.sign(&key.id, b"reopened").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"reopened", &sig).unwrap();
}

#[test]
fn threads_that_lose_the_login_together_log_in_once() {
    let token = TestToken::new();
    let store = Arc::new(Pkcs11Store::open(token.config().with_max_sessions(4)).unwrap());
    let keys: Arc<Vec<KeyInfo>> = Arc::new(
        [Algorithm::EcdsaP256, Algorithm::Ed25519]
            .iter()
            .map(|a| store.generate(*a, a.short_name()).unwrap())
            .collect(),
    );
    // every thread leases a session of its own, so that all of them see the logout
    together(4, {
        let (store, keys) = (Arc::clone(&store), Arc::clone(&keys));
        move |t| store.sign(&keys[t % 2].id, b"warm").unwrap()
    });
    assert_eq!(store.login_attempts(), 1);
    logout_everywhere(&token);
    together(6, {
        let (store, keys) = (Arc::clone(&store), Arc::clone(&keys));
        move |t| {
            for i in 0..10 {
                let k = &keys[(t + i) % 2];
                let msg = format!("{t}/{i}");
                let sig = store.sign(&k.id, msg.as_bytes()).unwrap();
                keyhaven_crypto::verify(&k.public_key, msg.as_bytes(), &sig).unwrap();
            }
        }
    });
    assert_eq!(
        store.login_attempts(),
        2,
        "one recovery for all the threads that saw the lost login"
    );
}

#[test]
fn a_session_cap_of_zero_means_one_session() {
    let token = TestToken::new();
    let mut config = token.config();
    config.max_sessions = 0; // a public field: `with_max_sessions` is not the only way in
    let store = Arc::new(Pkcs11Store::open(config).unwrap());
    let key = store.generate(Algorithm::Ed25519, "one session").unwrap();
    let sign_on_threads = |store: &Arc<Pkcs11Store>, id: &KeyId| {
        together(3, {
            let (store, id) = (Arc::clone(store), id.clone());
            move |t| {
                for i in 0..5 {
                    store.sign(&id, format!("{t}/{i}").as_bytes()).unwrap();
                }
            }
        });
    };
    sign_on_threads(&store, &key.id);
    assert_eq!(store.open_sessions(), 1);
    // recovery with a single session does not deadlock either
    logout_everywhere(&token);
    sign_on_threads(&store, &key.id);
    assert_eq!(store.open_sessions(), 1);
}

#[test]
fn not_found_names_the_token_and_how_to_list_its_keys() {
    let token = TestToken::new();
    let store = token.store();
    let id: KeyId = "00112233".parse().unwrap();
    for result in [
        store.get(&id).map(drop),
        store.sign(&id, b"x").map(drop),
        store.delete(&id),
        store.find_by_label("no such key").map(drop),
    ] {
        match result {
            Err(e) if e.is(ErrorKind::NotFound) => {
                let m = e.to_string();
                assert!(m.contains(&token.label), "names the token: {m}");
                assert!(m.contains("--list-objects"), "says how to look: {m}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}

/// A P-384 key pair made in-process the way a careless tool would: readable and extractable.
fn generate_plaintext_key(token: &TestToken, cka_id: &[u8], label: &str) {
    let session = pkcs11().open_rw_session(slot_of(token)).unwrap();
    let p384 = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Id(cka_id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let mut public = common(false);
    public.extend([Attribute::EcParams(p384), Attribute::Verify(true)]);
    let mut private = common(true);
    private.extend([
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Sign(true),
    ]);
    session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .unwrap();
}

fn export_reason(store: &Pkcs11Store, id: &KeyId) -> String {
    match store.export_pkcs8(id) {
        Err(e) if e.is(ErrorKind::Unsupported) => e.to_string(),
        other => panic!("export of {id}: {other:?}"),
    }
}

#[test]
fn keys_weaker_than_ours_are_reported_and_never_called_non_extractable() {
    let token = TestToken::new();
    let store = token.store();
    let ours = store.generate(Algorithm::EcdsaP384, "ours").unwrap();
    pkcs11_tool(
        &token,
        &[
            "--keypairgen",
            "--key-type",
            "EC:secp384r1",
            "--extractable",
            "--label",
            "extractable by pkcs11-tool",
            "--id",
            "0a0b",
        ],
    );
    generate_plaintext_key(&token, &[0x0c, 0x0d], "plaintext");
    // SoftHSM picks up another process's objects when it reloads the token (see interop.rs)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let listed = loop {
        let listed = store.list().unwrap();
        if listed.len() == 3 || std::time::Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ids: Vec<&str> = listed.iter().map(|k| k.id.as_str()).collect();
    assert!(
        ids.contains(&"0a0b") && ids.contains(&"0c0d") && ids.contains(&ours.id.as_str()),
        "weak keys stay listed and usable: {ids:?}"
    );
    // check() names each weak key and what makes it weak; our key is not among them
    let problems: Vec<String> = store
        .check()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{e}: {}",
                std::error::Error::source(e).map_or(String::new(), ToString::to_string)
            )
        })
        .collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let about = |id: &str| {
        problems
            .iter()
            .find(|p| p.contains(&format!("key {id} ")))
            .unwrap_or_else(|| panic!("no problem names key {id}: {problems:#?}"))
    };
    let extractable = about("0a0b");
    assert!(
        extractable.contains("extractable by pkcs11-tool"),
        "{extractable}"
    );
    assert!(
        extractable.contains("CKA_EXTRACTABLE is true"),
        "{extractable}"
    );
    assert!(extractable.contains(&token.label), "{extractable}");
    let plaintext = about("0c0d");
    assert!(plaintext.contains("CKA_SENSITIVE is false"), "{plaintext}");
    assert!(!problems.iter().any(|p| p.contains(ours.id.as_str())));
    // export is refused for all three, with the truth about each
    let reason = export_reason(&store, &ours.id);
    assert!(reason.contains("is non-extractable"), "{reason}");
    assert!(reason.contains("never was extractable"), "{reason}");
    for (id, attribute) in [
        ("0a0b", "CKA_EXTRACTABLE is true"),
        ("0c0d", "CKA_SENSITIVE is false"),
    ] {
        let reason = export_reason(&store, &id.parse().unwrap());
        assert!(reason.contains(attribute), "{id}: {reason}");
        assert!(!reason.contains("is non-extractable"), "{id}: {reason}");
        assert!(
            reason.contains("possibly known outside the token"),
            "{id}: {reason}"
        );
    }
    // the weak keys still sign
    for id in ["0a0b", "0c0d"] {
        let key = store.get(&id.parse().unwrap()).unwrap();
        let sig = store.sign(&key.id, b"m").unwrap();
        keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    }
}

#[test]
fn two_tokens_with_one_label_are_refused_listing_both() {
    let first = TestToken::new();
    let second = TestToken::new();
    let serial = pkcs11()
        .get_token_info(slot_of(&first))
        .unwrap()
        .serial_number()
        .trim_end()
        .to_owned();
    // re-initialize the second token under the first one's label (an initialized slot: SoftHSM
    // adds no free slot for this, so it is safe while other tests use the module)
    let slot = slot_of(&second);
    pkcs11()
        .init_token(slot, &AuthPin::from(SO_PIN), &first.label)
        .unwrap();
    let both = slots_labelled(&first.label);
    assert_eq!(both.len(), 2);
    match Pkcs11Store::open(first.config()) {
        Err(e) if e.is(ErrorKind::InvalidInput) => {
            let m = e.to_string();
            for s in &both {
                assert!(
                    m.contains(&format!("slot {}", s.id())),
                    "lists slot {s}: {m}"
                );
            }
            assert!(m.contains("serial or slot id"), "says what to do: {m}");
        }
        other => panic!("ambiguous label: {other:?}"),
    }
    assert!(matches!(
        TokenReport::probe(module(), &TokenSelector::Label(first.label.clone())),
        Err(e) if e.is(ErrorKind::InvalidInput)));
    // the serial still picks one
    let mut config = first.config();
    config.token = TokenSelector::Serial(serial);
    let store = Pkcs11Store::open(config).unwrap();
    assert_eq!(store.token_label(), first.label);
}
