//! Prekey pools: signed prekeys, replenishing, take-once under threads, consume-once.

use std::collections::BTreeSet;
use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_rotation::{DueAction, DueReason, ManualClock, PrekeyPool, RotationError};
use keyhaven_store_memory::MemoryStore;

use crate::{DAY, fixture};

fn pool(store: Arc<dyn KeyStore>, dir: &std::path::Path, clock: Arc<ManualClock>) -> PrekeyPool {
    let identity = store.find_by_label("identity").unwrap().id;
    PrekeyPool::open(dir, store, identity)
        .unwrap()
        .with_clock(clock)
}

#[test]
fn signed_prekeys_verify_with_the_identity_key_and_rotate() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let identity = store.generate(Algorithm::Ed25519, "identity").unwrap();
    let clock = Arc::new(ManualClock::new(5_000));
    let p = pool(store.clone(), &tmp.path().join("pool"), clock.clone());
    assert!(p.signed_prekey().unwrap().is_none());
    let s1 = p.rotate_signed_prekey().unwrap();
    s1.verify(&identity.public_key).unwrap();
    assert_eq!(p.signed_prekey().unwrap().unwrap(), s1);
    assert_eq!(s1.key.algorithm(), Algorithm::X25519);
    let mut forged = s1.clone();
    forged.created_at += 1;
    assert!(forged.verify(&identity.public_key).is_err());
    assert!(p.rotate_signed_prekey_if_due(7 * DAY).unwrap().is_none());
    clock.advance(7 * DAY);
    let s2 = p.rotate_signed_prekey_if_due(7 * DAY).unwrap().unwrap();
    let s3 = p.rotate_signed_prekey().unwrap();
    // the previous one is kept for handshakes in flight, older ones are deleted
    assert!(store.get(&s2.key_id).is_ok());
    assert!(store.get(&s1.key_id).is_err());
    let peer = MemoryStore::new()
        .unwrap()
        .generate(Algorithm::X25519, "peer")
        .unwrap();
    p.agree_signed(&s3.key_id, &peer.public_key).unwrap();
    assert!(p.agree_signed(&s1.key_id, &peer.public_key).is_err());
}

#[test]
fn one_time_prekeys_are_taken_once_and_consumed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    store.generate(Algorithm::EcdsaP256, "identity").unwrap();
    let p = Arc::new(pool(
        store.clone(),
        &tmp.path().join("pool"),
        Arc::new(ManualClock::new(1)),
    ));
    assert_eq!(p.replenish(10, 100).unwrap(), 100);
    assert_eq!(p.replenish(10, 100).unwrap(), 0, "not below low water");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || (0..12).map(|_| p.take().unwrap().id).collect::<Vec<_>>())
        })
        .collect();
    let ids: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 96, "no prekey handed out twice");
    let st = p.status().unwrap();
    assert_eq!((st.available, st.taken), (4, 96));
    assert_eq!(p.replenish(10, 100).unwrap(), 96);

    // the peer side: agreement gives the same secret on both sides, once
    let peer_store = MemoryStore::new().unwrap();
    let peer = peer_store.generate(Algorithm::X25519, "peer").unwrap();
    let otk = p.take().unwrap();
    let ours = p.consume(&otk.id, &peer.public_key).unwrap();
    let theirs = peer_store.agree(&peer.id, &otk.public).unwrap();
    assert_eq!(ours, theirs);
    assert!(store.get(&otk.id).is_err(), "private part destroyed");
    let e = p.consume(&otk.id, &peer.public_key).unwrap_err();
    assert!(matches!(e, RotationError::PrekeyUsed { .. }), "{e}");
    assert!(e.to_string().contains("already consumed"), "{e}");
    assert_eq!(p.status().unwrap().consumed, 1);
}

#[test]
fn the_engine_reports_and_refills_the_pool() {
    let f = fixture("[prekeys]\nlow_water = 3\nrefill_to = 8\nsigned_prekey_max_age = \"7d\"\n");
    f.store.generate(Algorithm::Ed25519, "identity").unwrap();
    let dir = f._tmp.path().join("prekeys");
    let p = Arc::new(pool(f.store.clone(), &dir, f.clock.clone()));
    let engine = crate::engine_at(
        f._tmp.path(),
        "[prekeys]\nlow_water = 3\nrefill_to = 8\nsigned_prekey_max_age = \"7d\"\n",
        f.store.clone(),
        f.clock.clone(),
    )
    .with_prekeys(p.clone());
    let due = engine.evaluate().unwrap();
    assert!(due.iter().any(|d| matches!(
        d.reason,
        DueReason::PoolLow {
            available: 0,
            low_water: 3
        }
    )));
    assert!(
        due.iter()
            .any(|d| matches!(d.reason, DueReason::SignedPrekey { age: None, .. }))
    );
    let out = engine.rotate_due(false).unwrap();
    assert!(
        out.iter()
            .any(|o| matches!(o.action, DueAction::Replenished(8)))
    );
    assert!(
        out.iter()
            .any(|o| matches!(o.action, DueAction::SignedPrekeyRotated))
    );
    assert!(engine.evaluate().unwrap().is_empty());
    f.clock.advance(7 * DAY);
    assert!(
        matches!(engine.evaluate().unwrap()[0].reason, DueReason::SignedPrekey { age: Some(a), .. } if a == 7 * DAY)
    );
    for _ in 0..6 {
        p.take().unwrap();
    }
    assert!(
        engine
            .evaluate()
            .unwrap()
            .iter()
            .any(|d| matches!(d.reason, DueReason::PoolLow { available: 2, .. }))
    );
}

#[test]
fn an_empty_pool_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    store.generate(Algorithm::Ed25519, "identity").unwrap();
    let p = pool(
        store.clone(),
        &tmp.path().join("pool"),
        Arc::new(ManualClock::new(1)),
    );
    let e = p.take().unwrap_err().to_string();
    assert!(e.contains("replenish"), "{e}");
    let x = store.generate(Algorithm::X25519, "x").unwrap();
    assert!(
        PrekeyPool::open(&tmp.path().join("other"), store, x.id).is_err(),
        "an X25519 identity cannot sign"
    );
}
