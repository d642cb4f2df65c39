//! Durable append throughput (single thread, 8 threads with group commit) against a raw
//! `write + fsync` per line, and `verify` over one million records.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhaven_audit::{AuditLog, AuditOptions, AuditSigner, Event, Outcome, verify_dir};
use keyhaven_core::{Algorithm, KeyInfo, KeyStore, PublicKey};
use keyhaven_crypto::default_provider;

/// A one-key software store for the audit key.
/// The tests' one-key software store for the audit key.
#[path = "../tests/it/signer.rs"]
mod signer;
use signer::OneKeyStore;

fn signer() -> (AuditSigner, KeyInfo) {
    let store: Arc<dyn KeyStore> = Arc::new(OneKeyStore::default());
    let key = store.generate(Algorithm::EcdsaP256, "audit").unwrap();
    (
        AuditSigner {
            store,
            key: key.id.clone(),
        },
        key,
    )
}

fn event(i: u64) -> Event {
    Event::new("bench", "sign", "file", Outcome::Allowed)
        .key("0123456789abcdef", Some(1))
        .signed_data(&i.to_le_bytes())
        .request_id(format!("req-{i}"))
}

fn fixtures() -> PathBuf {
    // target/bench-fixtures, next to the crate's target directory
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-fixtures");
    fs::create_dir_all(&root).unwrap();
    root
}

fn append(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(fixtures()).unwrap();
    let mut g = c.benchmark_group("durable_append");
    g.sample_size(10).measurement_time(Duration::from_secs(5));

    // Baseline: one write + fsync per line, no chain, no lock.
    let raw_path = tmp.path().join("raw.log");
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&raw_path)
        .unwrap();
    let line = serde_json::to_vec(&event(0)).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_raw_write_fsync", |b| {
        b.iter(|| {
            raw.write_all(&line).unwrap();
            raw.write_all(b"\n").unwrap();
            raw.sync_data().unwrap();
        });
    });

    let (s, _) = signer();
    let log =
        Arc::new(AuditLog::open(&tmp.path().join("one"), s, AuditOptions::default()).unwrap());
    let mut i = 0u64;
    g.bench_function("audit_append_1_thread", |b| {
        b.iter(|| {
            i += 1;
            log.append(event(i)).unwrap();
        });
    });

    let (s, _) = signer();
    let log =
        Arc::new(AuditLog::open(&tmp.path().join("eight"), s, AuditOptions::default()).unwrap());
    g.throughput(Throughput::Elements(8));
    g.bench_function("audit_append_8_threads_group_commit", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|sc| {
                for t in 0..8u64 {
                    let log = &log;
                    sc.spawn(move || {
                        for n in 0..iters {
                            log.append(event(t * 1_000_000_000 + n)).unwrap();
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    g.finish();
}

const MILLION: u64 = 1_000_000;

/// The 1 000 000-record fixture (generated once, reused): the log and the audit public key.
fn million() -> (PathBuf, PublicKey) {
    let dir = fixtures().join("audit-1m");
    let pk_path = fixtures().join("audit-1m.spki");
    if let Ok(der) = fs::read(&pk_path) {
        let pk = default_provider().parse_public_key_der(&der).unwrap();
        if verify_dir(&dir, &pk)
            .map(|r| r.is_ok() && r.events == MILLION)
            .unwrap_or(false)
        {
            return (dir, pk);
        }
    }
    let _ = fs::remove_dir_all(&dir);
    let (s, key) = signer();
    let log = AuditLog::open(&dir, s, AuditOptions::checkpoint_every(10_000)).unwrap();
    let chunk: Vec<u64> = (0..10_000).collect();
    for base in 0..MILLION / 10_000 {
        let events: Vec<Event> = chunk.iter().map(|i| event(base * 10_000 + i)).collect();
        log.append_all(&events).unwrap();
    }
    log.checkpoint().unwrap();
    fs::write(&pk_path, key.public_key.spki_der()).unwrap();
    (dir, key.public_key)
}

fn verify(c: &mut Criterion) {
    let (dir, pk) = million();
    let mut g = c.benchmark_group("verify");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(MILLION));
    g.bench_function("verify_1m_records", |b| {
        b.iter(|| {
            let r = verify_dir(&dir, &pk).unwrap();
            assert!(r.is_ok());
        });
    });
    // Baseline: read and SHA-256 every line, no parsing or checks.
    g.bench_function("baseline_read_and_hash_1m_lines", |b| {
        use sha2::Digest;
        b.iter(|| {
            let mut n = 0u64;
            for p in keyhaven_audit::log_files(&dir).unwrap() {
                let bytes = fs::read(&p).unwrap();
                for l in bytes.split(|&b| b == b'\n') {
                    std::hint::black_box(sha2::Sha256::digest(l));
                    n += 1;
                }
            }
            n
        });
    });
    g.finish();
}

criterion_group!(benches, append, verify);
criterion_main!(benches);
