//! Backup, open and restore of up to 10 000 keys against a bare Argon2id call (the baseline: a
//! backup should cost about one KDF plus a small, linear per-key part), and Shamir split and
//! combine against a bare P-256 scalar multiplication.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyhaven_backup::{
    BackupSecret, Custodian, Format, KdfParams, MasterKey, OnConflict, collect, combine, open,
    restore, split, write,
};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_memory::MemoryStore;
use secrecy::SecretString;

fn bare_argon2id(params: KdfParams) {
    let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32)).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    a.hash_password_into(b"backup passphrase", &[7u8; 16], &mut out)
        .unwrap();
    black_box(out);
}

fn backups(c: &mut Criterion) {
    let store = MemoryStore::new().unwrap();
    for i in 0..10_000 {
        store
            .generate(Algorithm::Ed25519, &format!("key {i}"))
            .unwrap();
    }
    let entries = collect(&store, "memory", None).unwrap();
    let pass = SecretString::from("backup passphrase");
    let cheap = KdfParams::insecure_for_tests();
    let real = KdfParams::default();

    let mut g = c.benchmark_group("backup");
    g.sample_size(10);
    g.bench_function(
        "baseline: bare argon2id, default params (64 MiB, t=3)",
        |b| b.iter(|| bare_argon2id(real)),
    );
    g.bench_function("write 10000 keys, default argon2id, text", |b| {
        b.iter(|| black_box(write(&entries, &pass, real, Format::Text).unwrap()))
    });
    g.bench_function("baseline: bare argon2id, cheap params", |b| {
        b.iter(|| bare_argon2id(cheap))
    });
    for n in [100usize, 1_000, 10_000] {
        g.bench_function(format!("write {n} keys, cheap argon2id, binary"), |b| {
            b.iter(|| black_box(write(&entries[..n], &pass, cheap, Format::Binary).unwrap()))
        });
    }
    let file = write(&entries, &pass, cheap, Format::Binary).unwrap();
    let secret = BackupSecret::Passphrase(pass.clone());
    g.bench_function("open 10000 keys, cheap argon2id", |b| {
        b.iter(|| black_box(open(&file, &secret).unwrap()))
    });
    let opened = open(&file, &secret).unwrap();
    g.bench_function(
        "restore 10000 keys into a memory store (import + recovery verification)",
        |b| {
            b.iter_batched(
                || MemoryStore::new().unwrap(),
                |target| black_box(restore(&target, &opened, OnConflict::Fail).unwrap()),
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

fn shamir(c: &mut Criterion) {
    let mut g = c.benchmark_group("shamir");
    g.measurement_time(Duration::from_secs(3));
    let m = MasterKey::generate().unwrap();
    let scalar = p256::Scalar::from(12345u64);
    g.bench_function("baseline: one P-256 scalar multiplication", |b| {
        b.iter(|| black_box(p256::ProjectivePoint::GENERATOR * black_box(scalar)))
    });
    for (t, n) in [(3u8, 5usize), (5, 10)] {
        let custodians: Vec<Custodian> =
            (0..n).map(|i| Custodian::named(format!("c{i}"))).collect();
        g.bench_function(format!("split {t}-of-{n}"), |b| {
            b.iter(|| black_box(split(&m, &[1; 16], t, &custodians).unwrap()))
        });
        let shares = split(&m, &[1; 16], t, &custodians).unwrap();
        let texts: Vec<String> = shares.iter().map(|s| s.to_text().to_string()).collect();
        g.bench_function(
            format!("parse + combine {t}-of-{n} (Feldman-checks each share)"),
            |b| {
                b.iter(|| {
                    let picked: Vec<_> = texts[..usize::from(t)]
                        .iter()
                        .map(|s| keyhaven_backup::Share::parse(s).unwrap())
                        .collect();
                    black_box(combine(&picked).unwrap())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, backups, shamir);
criterion_main!(benches);
