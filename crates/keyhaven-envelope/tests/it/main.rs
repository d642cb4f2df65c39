//! keyhaven-envelope integration tests: the hierarchy on software keys and on a real SoftHSM2
//! token, its refusals, tampering (property tests), and ECDH + HKDF against OpenSSL.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod pkcs11;
mod software;
mod tamper;
mod transit;

use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_envelope::MasterKey;

/// A memory store with one master key of `algorithm`.
pub fn software_master(algorithm: Algorithm) -> (Arc<dyn KeyStore>, MasterKey) {
    let store: Arc<dyn KeyStore> = Arc::new(keyhaven_store_memory::MemoryStore::new().unwrap());
    store.generate(algorithm, "master").unwrap();
    let master = MasterKey::new(Arc::clone(&store), "master").unwrap();
    (store, master)
}
