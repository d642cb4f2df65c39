//! The session pool, the shared login, and recovery from a lost login.

use std::sync::{Arc, Barrier};

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_hsm_pkcs11::Pkcs11Store;

use crate::token::{TestToken, logout_everywhere};

fn _store_is_send_sync_and_a_key_store() {
    fn check<T: KeyStore + Send + Sync + 'static>() {}
    check::<Pkcs11Store>();
    let _: Option<Box<dyn KeyStore>> = None::<Box<Pkcs11Store>>.map(|s| s as Box<dyn KeyStore>);
}

#[test]
fn threads_sign_in_parallel_on_a_capped_pool() {
    let token = TestToken::new();
    let store = Arc::new(Pkcs11Store::open(token.config().with_max_sessions(3)).unwrap());
    let keys: Vec<_> = [Algorithm::Ed25519, Algorithm::EcdsaP256]
        .iter()
        .map(|a| store.generate(*a, a.short_name()).unwrap())
        .collect();
    let keys = Arc::new(keys);
    let start = Arc::new(Barrier::new(6));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let store = Arc::clone(&store);
            let keys = Arc::clone(&keys);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                for i in 0..15 {
                    for k in keys.iter() {
                        let msg = format!("{t}/{i}");
                        let sig = store.sign(&k.id, msg.as_bytes()).unwrap();
                        keyhaven_crypto::verify(&k.public_key, msg.as_bytes(), &sig).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The pool opens a session only when every open one is in use, and never closes one
    // without a recovery: more than one open now means several were in use at once, so the
    // threads did sign in parallel rather than taking turns on one session.
    let open = store.open_sessions();
    assert!(
        (2..=3).contains(&open),
        "{open} sessions open: want more than one in use at once, cap 3"
    );
}

#[test]
fn a_lost_login_is_recovered_with_one_new_login() {
    let token = TestToken::new();
    let store = token.store();
    let key = store
        .generate(Algorithm::EcdsaP384, "survives logout")
        .unwrap();
    store.sign(&key.id, b"before").unwrap();
    // Another part of the process logs out: PKCS#11 login state is per application and token,
    // so every session of the store loses it (SoftHSM also drops private object handles).
    logout_everywhere(&token);
    let sig = store.sign(&key.id, b"after").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"after", &sig).unwrap();
    logout_everywhere(&token);
    assert_eq!(store.list().unwrap(), vec![key.clone()]);
    logout_everywhere(&token);
    assert_eq!(store.get(&key.id).unwrap(), key);
    logout_everywhere(&token);
    assert_eq!(store.find_by_label("survives logout").unwrap(), key);
}

#[test]
fn two_stores_share_the_token_and_its_login() {
    let token = TestToken::new();
    let a = token.store();
    let b = token.store();
    let ka = a.generate(Algorithm::Ed25519, "from a").unwrap();
    let kb = b.generate(Algorithm::EcdsaP256, "from b").unwrap();
    assert_eq!(a.list().unwrap(), b.list().unwrap());
    b.sign(&ka.id, b"x").unwrap();
    a.sign(&kb.id, b"x").unwrap();
    drop(a);
    // b keeps working after a closed its sessions
    b.sign(&ka.id, b"y").unwrap();
}

#[test]
fn keys_persist_across_store_instances() {
    let token = TestToken::new();
    let made = {
        let store = token.store();
        let mut v = vec![
            store.generate(Algorithm::EcdsaP384, "one").unwrap(),
            store.generate(Algorithm::Ed25519, "two").unwrap(),
        ];
        v.sort_by(|x, y| x.id.cmp(&y.id));
        v
    };
    let store = token.store();
    assert_eq!(store.list().unwrap(), made);
    for k in &made {
        assert!(k.created_at > 1_600_000_000 && k.created_at % 86_400 == 0);
        store.sign(&k.id, b"again").unwrap();
    }
}
