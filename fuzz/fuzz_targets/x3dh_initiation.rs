//! A session initiation (`keyhaven_rotation::Initiation`, JSON from the network) answered by a
//! responder's prekey pool: never panics, and whatever it accepts gives a 32-byte secret. One
//! pool (in memory, with one-time prekeys) serves every input.
#![no_main]

use std::sync::{Arc, OnceLock};

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_rotation::{Initiation, PrekeyPool};
use keyhaven_store_memory::MemoryStore;
use libfuzzer_sys::fuzz_target;

fn responder() -> &'static PrekeyPool {
    static POOL: OnceLock<(tempfile::TempDir, PrekeyPool)> = OnceLock::new();
    &POOL
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().expect("memory store"));
            let id = store
                .generate(Algorithm::Ed25519, "bob")
                .expect("identity")
                .id;
            let pool = PrekeyPool::open(&dir.path().join("pool"), store, id).expect("pool");
            pool.replenish(1, 4).expect("prekeys");
            pool.bundle().expect("bundle");
            (dir, pool)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(init) = serde_json::from_slice::<Initiation>(data) else {
        return;
    };
    if let Ok(secret) = responder().respond(&init, b"fuzz") {
        assert_eq!(secret.shared.len(), 32);
    }
});
