//! keyhaven-rotation: the version state machine, the registry, policies, metering, rotations
//! with an injected clock, continuity proofs, prekey pools, and processes killed mid-way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod continuity;
mod engine;
mod meter;
mod policy;
mod prekeys;
mod processes;
mod sessions;
mod state;

use std::path::Path;
use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_rotation::{ManualClock, PolicySet, Registry, RotationEngine};
use keyhaven_store_memory::MemoryStore;

pub const DAY: u64 = 86_400;
pub const T0: u64 = 1_800_000_000;

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub store: Arc<dyn KeyStore>,
    pub clock: Arc<ManualClock>,
    pub engine: RotationEngine,
}

pub fn fixture(policy: &str) -> Fixture {
    fixture_with(policy, Arc::new(MemoryStore::new().unwrap()))
}

pub fn fixture_with(policy: &str, store: Arc<dyn KeyStore>) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(keyhaven_core::unix_now()));
    let engine = engine_at(tmp.path(), policy, store.clone(), clock.clone());
    Fixture {
        _tmp: tmp,
        store,
        clock,
        engine,
    }
}

pub fn engine_at(
    dir: &Path,
    policy: &str,
    store: Arc<dyn KeyStore>,
    clock: Arc<ManualClock>,
) -> RotationEngine {
    RotationEngine::new(
        Registry::open(&dir.join("registry")).unwrap(),
        PolicySet::from_toml_str(policy).unwrap(),
        clock,
    )
    .with_store("main", store)
}

/// Generates a key and adopts it; the registry records the backend's creation time, so the
/// clock is set to it.
pub fn adopt(f: &Fixture, alg: Algorithm, label: &str, role: keyhaven_rotation::Role) -> String {
    let info = f.store.generate(alg, label).unwrap();
    f.clock.set(info.created_at);
    f.engine
        .adopt("main", label, Some(role))
        .unwrap()
        .id()
        .to_owned()
}
