//! The two providers side by side, per algorithm, in one run: sign and verify through the
//! provider's trait objects (what every store calls) with RustCrypto and with aws-lc-rs, against
//! the raw aws-lc-rs call. The aws-lc-rs provider's target is within 1.05x of the raw call; the
//! RustCrypto row gives the speed-up. Needs the `aws-lc-rs` feature:
//! `cargo bench -p keyhaven-crypto --features aws-lc-rs --bench providers`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::Algorithm;
use keyhaven_crypto::{aws_lc_provider, rustcrypto_provider};
use std::hint::black_box;

const MSG: &[u8] = b"keyhaven benchmark message: 64 bytes of payload for every algo!!";

const SIGNING: [Algorithm; 3] = [
    Algorithm::EcdsaP384,
    Algorithm::EcdsaP256,
    Algorithm::Ed25519,
];

fn sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("provider_sign");
    for alg in SIGNING {
        for provider in [rustcrypto_provider(), aws_lc_provider()] {
            let key = provider.generate(alg).unwrap();
            g.bench_function(format!("{alg}/{}", provider.name), |b| {
                b.iter(|| key.sign(black_box(MSG)).unwrap())
            });
        }
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match alg {
            Algorithm::Ed25519 => {
                let raw = Ed25519KeyPair::generate().unwrap();
                g.bench_function(format!("{alg}/raw-aws-lc-rs"), |b| {
                    b.iter(|| raw.sign(black_box(MSG)))
                });
            }
            _ => {
                let signing = if alg == Algorithm::EcdsaP384 {
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                } else {
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                };
                let raw = EcdsaKeyPair::generate(signing).unwrap();
                g.bench_function(format!("{alg}/raw-aws-lc-rs"), |b| {
                    b.iter(|| raw.sign(&rng, black_box(MSG)).unwrap())
                });
            }
        }
    }
    g.finish();
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("provider_verify");
    for alg in SIGNING {
        // One key and signature, verified by each provider from SPKI DER (as a verifier
        // holding only the public key does).
        let key = aws_lc_provider().generate(alg).unwrap();
        let sig = key.sign(MSG).unwrap();
        let pk = key.public_key().clone();
        for provider in [rustcrypto_provider(), aws_lc_provider()] {
            g.bench_function(format!("{alg}/{}", provider.name), |b| {
                b.iter(|| provider.verify(&pk, black_box(MSG), &sig).unwrap())
            });
        }
        let raw_alg: &'static dyn signature::VerificationAlgorithm = match alg {
            Algorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_FIXED,
            Algorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_FIXED,
            _ => &signature::ED25519,
        };
        // The raw call from the same SPKI bytes (Ed25519: the 32-byte point, its native form).
        let spki = pk.spki_der().to_vec();
        let key_bytes = if alg == Algorithm::Ed25519 {
            spki[spki.len() - 32..].to_vec()
        } else {
            spki
        };
        let raw_sig = sig.as_raw().to_vec();
        g.bench_function(format!("{alg}/raw-aws-lc-rs"), |b| {
            b.iter(|| {
                UnparsedPublicKey::new(raw_alg, &key_bytes)
                    .verify(black_box(MSG), &raw_sig)
                    .unwrap()
            })
        });
    }
    g.finish();
    // keep KeyPair in use for the raw Ed25519 public key accessor on every aws-lc-rs version
    let _ = Ed25519KeyPair::generate().map(|k| k.public_key().as_ref().len());
}

criterion_group!(benches, sign, verify);
criterion_main!(benches);
