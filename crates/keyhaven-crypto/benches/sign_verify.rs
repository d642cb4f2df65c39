//! Sign and verify through the provider's trait objects against the raw RustCrypto calls, in
//! the same run, per algorithm. The difference is the provider's overhead.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::Algorithm;
use keyhaven_crypto::{default_provider, verify};
use std::hint::black_box;

const MSG: &[u8] = b"keyhaven benchmark message: 64 bytes of payload for every algo!!";

fn sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("sign");
    for alg in [
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
        Algorithm::Ed25519,
    ] {
        let key = default_provider().generate(alg).unwrap();
        g.bench_function(format!("{alg}/keyhaven"), |b| {
            b.iter(|| key.sign(black_box(MSG)).unwrap())
        });
        let pkcs8 = key.to_pkcs8_der().unwrap();
        let der = pkcs8.expose_secret();
        match alg {
            Algorithm::EcdsaP384 => {
                use p384::pkcs8::DecodePrivateKey;
                use signature::Signer;
                let raw = p384::ecdsa::SigningKey::from_pkcs8_der(der).unwrap();
                g.bench_function(format!("{alg}/raw"), |b| {
                    b.iter(|| -> p384::ecdsa::Signature { raw.sign(black_box(MSG)) })
                });
            }
            Algorithm::EcdsaP256 => {
                use p256::pkcs8::DecodePrivateKey;
                use signature::Signer;
                let raw = p256::ecdsa::SigningKey::from_pkcs8_der(der).unwrap();
                g.bench_function(format!("{alg}/raw"), |b| {
                    b.iter(|| -> p256::ecdsa::Signature { raw.sign(black_box(MSG)) })
                });
            }
            _ => {
                use ed25519_dalek::pkcs8::DecodePrivateKey;
                use signature::Signer;
                let raw = ed25519_dalek::SigningKey::from_pkcs8_der(der).unwrap();
                g.bench_function(format!("{alg}/raw"), |b| {
                    b.iter(|| raw.sign(black_box(MSG)))
                });
            }
        }
    }
    g.finish();
}

fn verify_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for alg in [
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
        Algorithm::Ed25519,
    ] {
        let key = default_provider().generate(alg).unwrap();
        let sig = key.sign(MSG).unwrap();
        let pk = key.public_key().clone();
        // keyhaven: from SPKI DER every time (what a verifier holding only the public key does)
        g.bench_function(format!("{alg}/keyhaven"), |b| {
            b.iter(|| verify(&pk, black_box(MSG), &sig).unwrap())
        });
        // raw: also parse the SPKI each time, so both sides do the same work
        let spki = pk.spki_der().to_vec();
        let raw_sig = sig.as_raw().to_vec();
        match alg {
            Algorithm::EcdsaP384 => {
                use p384::pkcs8::DecodePublicKey;
                use signature::Verifier;
                g.bench_function(format!("{alg}/raw"), |b| {
                    b.iter(|| {
                        let vk = p384::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
                        let s = p384::ecdsa::Signature::from_slice(&raw_sig).unwrap();
                        vk.verify(black_box(MSG), &s).unwrap()
                    })
                });
            }
            Algorithm::EcdsaP256 => {
                use p256::pkcs8::DecodePublicKey;
                use signature::Verifier;
                g.bench_function(format!("{alg}/raw"), |b| {
                    b.iter(|| {
                        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
                        let s = p256::ecdsa::Signature::from_slice(&raw_sig).unwrap();
                        vk.verify(black_box(MSG), &s).unwrap()
                    })
                });
            }
            _ => {
                use ed25519_dalek::pkcs8::DecodePublicKey;
                g.bench_function(format!("{alg}/raw"), |b| {
                    b.iter(|| {
                        let vk = ed25519_dalek::VerifyingKey::from_public_key_der(&spki).unwrap();
                        let s = ed25519_dalek::Signature::from_slice(&raw_sig).unwrap();
                        vk.verify_strict(black_box(MSG), &s).unwrap()
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, sign, verify_bench);
criterion_main!(benches);
