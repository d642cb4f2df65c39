//! The decorators' overhead on software signing, in one run: the bare store, access control
//! alone, and the recommended stack `AuditedStore<AccessControlledStore<S>>`, both ways: one
//! fsync per sign (the intent; the outcome is durable with the next one, the default) and two
//! (`durable_outcomes`: the intent and the outcome each fsynced), single-threaded and with 8
//! threads (where group commit shares the fsyncs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[allow(dead_code)]
#[path = "../tests/it/signer.rs"]
mod signer;
#[allow(dead_code)]
#[path = "../tests/it/simple.rs"]
mod simple;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhaven_audit::{
    AccessControlledStore, AuditLog, AuditOptions, AuditSigner, AuditedStore, CallerContext, Grant,
    Operation, Policy,
};
use keyhaven_core::{Algorithm, KeyId, KeyStore, Protection};

use signer::OneKeyStore;
use simple::SimpleStore;

fn fixtures() -> PathBuf {
    // target/bench-fixtures: on the real disk, so fsync costs what it costs
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-fixtures");
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn audit_log(dir: &Path, durable_outcomes: bool) -> Arc<AuditLog> {
    let store: Arc<dyn KeyStore> = Arc::new(OneKeyStore::default());
    let key = store.generate(Algorithm::Ed25519, "audit").unwrap();
    let signer = AuditSigner { store, key: key.id };
    let options = AuditOptions::default().with_durable_outcomes(durable_outcomes);
    Arc::new(AuditLog::open(dir, signer, options).unwrap())
}

/// A realistic policy: signing by role, plus a few unrelated rules to search.
fn policy() -> Policy {
    Policy::deny_all()
        .allow(Operation::Generate, Grant::roles(["key-admin"]))
        .allow(Operation::Sign, Grant::roles(["signer"]))
        .allow(Operation::Delete, Grant::principals(["root"]))
}

fn caller() -> CallerContext {
    CallerContext::new("bench").role("signer").role("key-admin")
}

fn sign_8_threads(store: &dyn KeyStore, id: &KeyId, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..8u64 {
            sc.spawn(move || {
                for n in 0..iters {
                    store.sign(id, &(t << 40 | n).to_le_bytes()).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(fixtures()).unwrap();
    for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
        let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
        let key = inner.generate(alg, "bench").unwrap();
        let acl = AccessControlledStore::new(inner.clone(), policy(), caller());
        let audited_with = |durable: bool| {
            let name = format!("{}-{durable}", alg.short_name());
            AuditedStore::new(
                AccessControlledStore::new(inner.clone(), policy(), caller()),
                audit_log(&tmp.path().join(name), durable),
                caller(),
            )
        };
        let audited = audited_with(false);
        let audited_two_fsyncs = audited_with(true);
        let msg = [0x5a_u8; 256];

        let mut g = c.benchmark_group(format!("sign_{}", alg.short_name()));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1));
        g.throughput(Throughput::Elements(1));
        g.bench_function("baseline_bare_store", |b| {
            b.iter(|| inner.sign(&key.id, &msg).unwrap());
        });
        g.bench_function("access_controlled", |b| {
            b.iter(|| acl.sign(&key.id, &msg).unwrap());
        });
        g.bench_function("audited_two_fsyncs", |b| {
            b.iter(|| audited_two_fsyncs.sign(&key.id, &msg).unwrap());
        });
        g.bench_function("audited_access_controlled", |b| {
            b.iter(|| audited.sign(&key.id, &msg).unwrap());
        });
        g.throughput(Throughput::Elements(8));
        g.bench_function("baseline_bare_store_8_threads", |b| {
            b.iter_custom(|iters| sign_8_threads(&*inner, &key.id, iters));
        });
        g.bench_function("audited_two_fsyncs_8_threads", |b| {
            b.iter_custom(|iters| sign_8_threads(&audited_two_fsyncs, &key.id, iters));
        });
        g.bench_function("audited_access_controlled_8_threads", |b| {
            b.iter_custom(|iters| sign_8_threads(&audited, &key.id, iters));
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
