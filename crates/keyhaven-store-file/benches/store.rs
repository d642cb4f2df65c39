//! File store benchmarks, each against a baseline in the same run:
//! - `sign`: P-384 signing through `KeyStore` (encrypted and PEM stores, key cached) against
//!   the raw `p384` call with the same key;
//! - `open`: opening an encrypted store (OWASP Argon2id) holding 1, 1 000 and 10 000 keys,
//!   against one bare Argon2id derivation with the same parameters;
//! - `sign_in_10k_store`: signing with one key of a 10 000-key store, warm and cold cache.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::{Algorithm, KeyId, KeyStore};
use keyhaven_store_file::{EncryptedStore, KdfParams, PemStore};
use secrecy::SecretString;

const MSG: &[u8] = b"keyhaven benchmark message: 64 bytes of payload for every algo!!";

fn pass() -> SecretString {
    SecretString::from("bench passphrase")
}

/// An encrypted store with `n` keys, made once and kept under target/ between runs (creating
/// 10 000 keys with an fsync per file takes a while).
fn fixture(n: usize) -> (PathBuf, KeyId) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench-fixtures")
        .join(format!("encrypted-{n}"));
    let marker = root.join("first-key-id");
    if let Ok(id) = std::fs::read_to_string(&marker) {
        return (root.join("store"), id.trim().parse().unwrap());
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let store = EncryptedStore::create(&root.join("store"), &pass(), KdfParams::default()).unwrap();
    let first = store.generate(Algorithm::EcdsaP384, "key-0").unwrap().id;
    for i in 1..n {
        store
            .generate(Algorithm::Ed25519, &format!("key-{i}"))
            .unwrap();
    }
    std::fs::write(&marker, first.as_str()).unwrap();
    (root.join("store"), first)
}

fn sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("sign_p384");
    let tmp = tempfile::tempdir().unwrap();
    let enc = EncryptedStore::create(
        &tmp.path().join("e"),
        &pass(),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    let pem = PemStore::create(&tmp.path().join("p")).unwrap();
    let k_enc = enc.generate(Algorithm::EcdsaP384, "bench").unwrap().id;
    let k_pem = pem.generate(Algorithm::EcdsaP384, "bench").unwrap().id;
    let raw = {
        use p384::pkcs8::DecodePrivateKey;
        let der = enc.export_pkcs8(&k_enc).unwrap();
        p384::ecdsa::SigningKey::from_pkcs8_der(der.expose_secret()).unwrap()
    };
    g.bench_function("raw_p384", |b| {
        use signature::Signer;
        b.iter(|| -> p384::ecdsa::Signature { raw.sign(black_box(MSG)) })
    });
    g.bench_function("encrypted_store", |b| {
        b.iter(|| enc.sign(&k_enc, black_box(MSG)).unwrap())
    });
    g.bench_function("pem_store", |b| {
        b.iter(|| pem.sign(&k_pem, black_box(MSG)).unwrap())
    });
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open_encrypted");
    g.sample_size(10);
    g.bench_function("argon2id_only", |b| {
        let params = KdfParams::default();
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32)).unwrap(),
        );
        b.iter(|| {
            let mut out = [0u8; 32];
            argon
                .hash_password_into(b"bench passphrase", &[7u8; 16], &mut out)
                .unwrap();
            out
        })
    });
    for n in [1, 1_000, 10_000] {
        let (dir, _) = fixture(n);
        g.bench_function(format!("{n}_keys"), |b| {
            b.iter(|| EncryptedStore::open(&dir, &pass()).unwrap())
        });
    }
    g.finish();
}

fn sign_in_big_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("sign_in_10k_store");
    let (dir, id) = fixture(10_000);
    let store = EncryptedStore::open(&dir, &pass()).unwrap();
    g.bench_function("warm", |b| {
        b.iter(|| store.sign(&id, black_box(MSG)).unwrap())
    });
    g.bench_function("cold_first_use", |b| {
        b.iter_batched(
            || EncryptedStore::open(&dir, &pass()).unwrap(),
            |s| s.sign(&id, black_box(MSG)).unwrap(),
            criterion::BatchSize::PerIteration,
        )
    });
    g.sample_size(10);
    g.bench_function("list_all_10k", |b| b.iter(|| store.list().unwrap().len()));
    g.finish();
}

criterion_group!(benches, sign, open, sign_in_big_store);
criterion_main!(benches);
