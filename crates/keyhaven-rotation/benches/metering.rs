//! Signing through the metering decorator (durable counter, block reservations) against the
//! bare store, in the same run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_rotation::{DEFAULT_BATCH, MeteredStore, UsageMeter};
use keyhaven_store_memory::MemoryStore;

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    for alg in [Algorithm::EcdsaP384, Algorithm::Ed25519] {
        let store = Arc::new(MemoryStore::new().unwrap());
        let key = store.generate(alg, "bench").unwrap();
        let meter =
            Arc::new(UsageMeter::open(&tmp.path().join(alg.short_name()), DEFAULT_BATCH).unwrap());
        let metered = MeteredStore::new(Arc::clone(&store), meter);
        let mut g = c.benchmark_group(format!("sign-{alg}"));
        g.bench_function("bare MemoryStore", |b| {
            b.iter(|| black_box(store.sign(&key.id, b"message to sign").unwrap()))
        });
        g.bench_function("MeteredStore (durable counter)", |b| {
            b.iter(|| black_box(metered.sign(&key.id, b"message to sign").unwrap()))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
