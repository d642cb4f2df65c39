//! The memory store runs the whole conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use keyhaven_core::{Algorithm, KeyStore, Protection};
use keyhaven_store_memory::MemoryStore;
use keyhaven_testkit::{Capabilities, Fixture};

fn fixture() -> Fixture {
    Fixture::new(MemoryStore::new().unwrap())
}

keyhaven_testkit::conformance_suite!(
    fixture,
    Capabilities::software(Protection::SoftwareEncrypted)
);

#[test]
fn stores_are_independent() {
    let a = MemoryStore::new().unwrap();
    let b = MemoryStore::new().unwrap();
    let k = a.generate(Algorithm::EcdsaP256, "only in a").unwrap();
    assert!(b.get(&k.id).is_err());
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn debug_does_not_show_keys() {
    let a = MemoryStore::new().unwrap();
    a.generate(Algorithm::Ed25519, "k").unwrap();
    assert_eq!(format!("{a:?}"), "MemoryStore { keys: 1, .. }");
}
