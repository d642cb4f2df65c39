//! The metering decorator: counts, durability, cross-instance reservations, crash over-count.

use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_rotation::{MeteredStore, UsageMeter};
use keyhaven_store_memory::MemoryStore;
use proptest::prelude::*;

#[test]
fn counts_signatures_and_persists_exactly_on_clean_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new().unwrap();
    let k = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    let meter = Arc::new(
        UsageMeter::open(&tmp.path().join("u"), 10)
            .unwrap()
            .with_growth(1),
    );
    let metered = MeteredStore::new(store, meter.clone());
    for _ in 0..25 {
        metered.sign(&k.id, b"m").unwrap();
    }
    metered.sign_digest(&k.id, &[7u8; 32]).unwrap();
    // failures are not counted
    assert!(metered.sign_digest(&k.id, &[7u8; 5]).is_err());
    assert_eq!(meter.usage(&k.id).unwrap(), 26);
    // persisted: a whole number of blocks reserved, before the flush
    let on_disk: u64 =
        std::fs::read_to_string(tmp.path().join("u").join(format!("{}.count", k.id)))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    assert_eq!(on_disk, 30);
    drop(metered);
    drop(meter);
    let again = UsageMeter::open(&tmp.path().join("u"), 10).unwrap();
    assert_eq!(again.usage(&k.id).unwrap(), 26);
}

#[test]
fn a_damaged_counter_refuses_signing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new().unwrap();
    let k = store.generate(Algorithm::Ed25519, "k").unwrap();
    let meter = Arc::new(UsageMeter::open(&tmp.path().join("u"), 4).unwrap());
    std::fs::write(
        tmp.path().join("u").join(format!("{}.count", k.id)),
        "garbage",
    )
    .unwrap();
    let metered = MeteredStore::new(store, meter);
    let e = metered.sign(&k.id, b"m").unwrap_err().to_string();
    assert!(e.contains(".count"), "{e}");
}

#[test]
fn blocks_grow_while_signing_fast_and_stay_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("u");
    let id: keyhaven_core::KeyId = "fast".parse().unwrap();
    let meter = UsageMeter::open(&dir, 2).unwrap().with_growth(4);
    assert_eq!(meter.max_batch(), 8);
    let persisted = || -> u64 {
        std::fs::read_to_string(dir.join("fast.count"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut seen = Vec::new();
    for i in 1..=40u64 {
        meter.begin(&id).unwrap();
        let p = persisted();
        assert!(p >= i && p <= i + 8, "{p} after {i}");
        if seen.last() != Some(&p) {
            seen.push(p);
        }
    }
    // blocks of 2, 4, 8, 8, ...
    assert_eq!(&seen[..4], &[2, 6, 14, 22]);
    assert_eq!(meter.usage(&id).unwrap(), 40);
    drop(meter);
    assert_eq!(persisted(), 40);
}

#[derive(Debug, Clone)]
enum Op {
    Sign(usize),
    Crash(usize),
    Close(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Several meters on one directory stand for several processes. A crash (the meter is
    /// leaked: no flush) may over-count by at most one block; the count is never below the
    /// signatures made, and clean closes make it exact.
    #[test]
    fn reservations_never_under_count(
        batch in 1u64..6,
        growth in 1u64..4,
        ops in proptest::collection::vec(
            prop_oneof![
                6 => (0usize..3).prop_map(Op::Sign),
                1 => (0usize..3).prop_map(Op::Crash),
                1 => (0usize..3).prop_map(Op::Close),
            ],
            1..60,
        ),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let id: keyhaven_core::KeyId = "counted".parse().unwrap();
        let mut meters: Vec<Option<UsageMeter>> = (0..3).map(|_| None).collect();
        let mut made = 0u64;
        let mut crashes = 0u64;
        for op in ops {
            match op {
                Op::Sign(i) => {
                    let m = meters[i].get_or_insert_with(|| UsageMeter::open(&tmp.path().join("u"), batch).unwrap().with_growth(growth));
                    m.begin(&id).unwrap();
                    made += 1;
                }
                Op::Crash(i) => {
                    if let Some(m) = meters[i].take() {
                        std::mem::forget(m);
                        crashes += 1;
                    }
                }
                Op::Close(i) => {
                    meters[i] = None;
                }
            }
            let observer = UsageMeter::open(&tmp.path().join("u"), batch).unwrap();
            let persisted = observer.usage(&id).unwrap();
            let live = meters.iter().filter(|m| m.is_some()).count() as u64;
            prop_assert!(persisted >= made, "under-count: {persisted} < {made}");
            prop_assert!(persisted <= made + batch * growth * (crashes + live), "{persisted} {made}");
        }
        for m in &mut meters {
            *m = None;
        }
        let persisted = UsageMeter::open(&tmp.path().join("u"), batch).unwrap().usage(&id).unwrap();
        prop_assert!(persisted >= made && persisted <= made + batch * growth * crashes);
    }
}
