//! `scan` over 200 000 audit records, against a baseline pass that only counts events per key
//! (the least any detector must do), and revocation checks against a bare store call.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_audit::{Body, Event, Outcome, Record};
use keyhaven_compromise::{KeyStates, RevocationCheckedStore, Revocations, Thresholds, scan};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_memory::MemoryStore;

fn records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut e = Event::new(
                format!("svc-{}", i % 7),
                if i % 5 == 0 { "verify" } else { "sign" },
                "memory",
                if i % 97 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Allowed
                },
            )
            .key(format!("{:032x}", i % 500), None);
            e.request_id = Some(format!("req-{i}"));
            Record {
                v: 1,
                seq: i,
                prev: String::new(),
                time: String::new(),
                unix_nanos: 1_700_000_000_000_000_000 + i * 10_000_000,
                body: Body::Event(e),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let recs = records(200_000);
    let mut g = c.benchmark_group("scan_200k");
    g.sample_size(10);
    g.bench_function("baseline_count_per_key", |b| {
        b.iter(|| {
            let mut m: HashMap<&str, u64> = HashMap::new();
            for r in &recs {
                if let Body::Event(e) = &r.body
                    && let Some(k) = e.key_id.as_deref()
                {
                    *m.entry(k).or_default() += 1;
                }
            }
            black_box(m.len())
        });
    });
    let states = KeyStates::default();
    let t = Thresholds::default();
    g.bench_function("scan", |b| {
        b.iter(|| black_box(scan(&recs, &states, &t).len()))
    });
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::new().unwrap());
    let key = inner.generate(Algorithm::Ed25519, "k").unwrap();
    let revocations = Arc::new(Revocations::open(&dir.path().join("r")).unwrap());
    let checked = RevocationCheckedStore::new(inner.clone(), revocations);
    let mut g = c.benchmark_group("revocation_check_sign_ed25519");
    g.bench_function("bare_store", |b| {
        b.iter(|| inner.sign(&key.id, b"msg").unwrap())
    });
    g.bench_function("revocation_checked", |b| {
        b.iter(|| checked.sign(&key.id, b"msg").unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
