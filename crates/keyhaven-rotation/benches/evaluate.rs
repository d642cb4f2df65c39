//! `evaluate` over 100 000 logical keys, against a baseline that only walks the same keys.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::{Algorithm, KeyId, KeyInfo, Protection, PublicKey};
use keyhaven_rotation::{LogicalKey, ManualClock, PolicySet, Registry, Role, RotationEngine};

const KEYS: usize = 100_000;
const NOW: u64 = 1_800_000_000;

fn keys() -> Vec<LogicalKey> {
    let roles = [Role::Identity, Role::Signing, Role::Encryption];
    (0..KEYS)
        .map(|i| {
            let alg = if i % 3 == 2 {
                Algorithm::X25519
            } else {
                Algorithm::EcdsaP384
            };
            let info = KeyInfo::new(
                KeyId::generate().unwrap(),
                format!("key-{i}"),
                Protection::SoftwareEncrypted,
                PublicKey::new(alg, vec![0x30, 0x01, (i % 251) as u8]),
                // ages spread over two years: some are due, most are not
                NOW - (i as u64 * 631) % (2 * 365 * 86_400),
            );
            LogicalKey::adopt("file", &info, roles[i % 3], NOW)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let policies = PolicySet::from_toml_str(
        r#"
        [[policy]]
        name = "identity-yearly"
        role = "identity"
        max_age = "365d"
        migration_window = "30d"
        [[policy]]
        name = "p384"
        role = "signing"
        algorithm = "p384"
        max_age = "90d"
        max_usage = 1000000
        [defaults.encryption]
        max_age = "180d"
        retire_after = "30d"
        "#,
    )
    .unwrap();
    let engine = RotationEngine::new(
        Registry::open(&tmp.path().join("registry")).unwrap(),
        policies,
        Arc::new(ManualClock::new(NOW)),
    );
    let keys = keys();
    let due = engine.evaluate_keys(&keys).unwrap().len();
    println!("{due} of {KEYS} keys due");
    let mut g = c.benchmark_group("evaluate-100k");
    g.sample_size(10);
    g.bench_function("baseline: walk keys, read primary age", |b| {
        b.iter(|| {
            black_box(
                keys.iter()
                    .filter(|k| k.primary().is_some_and(|p| NOW - p.created_at() > 1))
                    .count(),
            )
        })
    });
    g.bench_function("evaluate_keys", |b| {
        b.iter(|| black_box(engine.evaluate_keys(&keys).unwrap().len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
