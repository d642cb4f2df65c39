//! Envelope costs, each against a baseline in the same run:
//! - `seal` / `open` of 64-byte and 4 KiB secrets (fresh DEK, DEK wrap, data seal; and the
//!   reverse) against one raw AES-256-GCM seal / open of the same bytes;
//! - `rewrap` (a KEK rotation's per-secret work) against the same raw AES-256-GCM open + seal of
//!   32 bytes;
//! - `unwrap_kek` with software master keys (X25519, ECDH P-384): the agreement dominates;
//! - `transit_encrypt` / `transit_decrypt` of 64-byte and 4 KiB payloads (cached versions,
//!   `vault:vN:` base64 included) against raw AES-256-GCM.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_crypto::aead::Sealer;
use keyhaven_envelope::transit::{Transit, TransitKeyRecord, TransitStore};
use keyhaven_envelope::{Kek, KekScope, MasterKey, SecretContext};
use keyhaven_store_memory::MemoryStore;

fn bench(c: &mut Criterion) {
    let kek = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
    let ctx = SecretContext::new("acme", "bench/secret", 1, 1).unwrap();
    let raw = Sealer::new(&[7u8; 32]).unwrap();
    for size in [64usize, 4096] {
        let plain = vec![0xabu8; size];
        let mut g = c.benchmark_group(format!("seal_{size}"));
        g.bench_function("raw_aes_256_gcm", |b| {
            b.iter(|| raw.seal(black_box(&plain), b"aad").unwrap())
        });
        g.bench_function("envelope", |b| {
            b.iter(|| kek.seal(&ctx, black_box(&plain)).unwrap())
        });
        g.finish();
        let (nonce, sealed) = raw.seal(&plain, b"aad").unwrap();
        let env = kek.seal(&ctx, &plain).unwrap();
        let mut g = c.benchmark_group(format!("open_{size}"));
        g.bench_function("raw_aes_256_gcm", |b| {
            b.iter(|| raw.open(&nonce, black_box(&sealed), b"aad").unwrap())
        });
        g.bench_function("envelope", |b| {
            b.iter(|| kek.open(&ctx, black_box(&env)).unwrap())
        });
        g.finish();
    }

    let env = kek.seal(&ctx, b"rotate me").unwrap();
    let kek2 = Kek::generate(kek.scope().next().unwrap()).unwrap();
    let (nonce, sealed) = raw.seal(&[1u8; 32], b"aad").unwrap();
    let mut g = c.benchmark_group("rewrap");
    g.bench_function("raw_aes_256_gcm_open_and_seal_32", |b| {
        b.iter(|| {
            let k = raw.open(&nonce, black_box(&sealed), b"aad").unwrap();
            raw.seal(&k, b"aad").unwrap()
        })
    });
    g.bench_function("envelope", |b| {
        b.iter(|| kek2.rewrap(&kek, &ctx, black_box(&env)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("unwrap_kek");
    for alg in [Algorithm::X25519, Algorithm::EcdhP384] {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
        store.generate(alg, "master").unwrap();
        let master = MasterKey::new(Arc::clone(&store), "master").unwrap();
        let wrapped = master.wrap(&kek).unwrap();
        g.bench_function(format!("{alg}"), |b| {
            b.iter(|| master.unwrap(black_box(&wrapped), kek.scope()).unwrap())
        });
    }
    g.finish();
}

/// One key's row in memory: the bench measures the engine, not a database.
#[derive(Default)]
struct OneRow(std::sync::Mutex<Option<TransitKeyRecord>>);

impl TransitStore for OneRow {
    fn load(&self, _name: &str) -> keyhaven_envelope::Result<Option<TransitKeyRecord>> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn create(&self, record: &TransitKeyRecord) -> keyhaven_envelope::Result<bool> {
        *self.0.lock().unwrap() = Some(record.clone());
        Ok(true)
    }
    fn add_version(&self, _: &str, _: u32, _: &[u8], _: u64) -> keyhaven_envelope::Result<bool> {
        Ok(false)
    }
    fn set_min_decryption_version(&self, _: &str, _: u32) -> keyhaven_envelope::Result<bool> {
        Ok(false)
    }
}

fn transit(c: &mut Criterion) {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    store.generate(Algorithm::EcdhP384, "master").unwrap();
    let master = MasterKey::new(Arc::clone(&store), "master").unwrap();
    let t = Transit::new(Arc::new(master), OneRow::default(), "acme", 1).unwrap();
    t.create_key("bench", 1).unwrap();
    let raw = Sealer::new(&[7u8; 32]).unwrap();
    for size in [64usize, 4096] {
        let plain = vec![0x42u8; size];
        let mut g = c.benchmark_group(format!("transit_encrypt_{size}"));
        g.bench_function("raw_aes_256_gcm", |b| {
            b.iter(|| raw.seal(black_box(&plain), b"aad").unwrap())
        });
        g.bench_function("transit", |b| {
            b.iter(|| t.encrypt("bench", black_box(&plain), None).unwrap())
        });
        g.finish();
        let (nonce, sealed) = raw.seal(&plain, b"aad").unwrap();
        let ct = t.encrypt("bench", &plain, None).unwrap();
        let mut g = c.benchmark_group(format!("transit_decrypt_{size}"));
        g.bench_function("raw_aes_256_gcm", |b| {
            b.iter(|| raw.open(&nonce, black_box(&sealed), b"aad").unwrap())
        });
        g.bench_function("transit", |b| {
            b.iter(|| t.decrypt("bench", black_box(&ct)).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench, transit);
criterion_main!(benches);
