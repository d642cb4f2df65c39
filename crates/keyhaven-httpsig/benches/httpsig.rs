//! RFC 9421 costs, each against a baseline in the same run:
//! - `verify`: checking a signed Ed25519 request (parse `Signature-Input` and `Signature`,
//!   build the base, verify) against a bare Ed25519 verification of the same base;
//! - `sign`: signing a request through `KeyStore` against a bare `KeyStore::sign` of the base.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_httpsig::{
    DigestAlgorithm, Message, Request, SignatureSpec, VerifyPolicy, content_digest, sign, verify,
};
use keyhaven_store_memory::MemoryStore;

const NOW: u64 = 1_700_000_000;

fn request() -> Request {
    Request::new("POST", "https://api.example.com/v1/things?limit=5")
        .unwrap()
        .header("Content-Type", "application/json")
        .header(
            "Content-Digest",
            &content_digest(br#"{"name": "widget"}"#, DigestAlgorithm::Sha256),
        )
}

fn spec() -> SignatureSpec {
    SignatureSpec::new("sig1", "client-1")
        .covering(&["@method", "@target-uri", "content-type", "content-digest"])
        .unwrap()
        .created(NOW)
        .nonce("0123456789abcdef")
}

fn bench(c: &mut Criterion) {
    let store = MemoryStore::new().unwrap();
    let key = store.generate(Algorithm::Ed25519, "client").unwrap();
    let mut signed = request();
    let headers = sign(Message::Request(&signed), &spec(), &store, &key.id).unwrap();
    signed.push_header("Signature-Input", &headers.signature_input);
    signed.push_header("Signature", &headers.signature);
    let params = headers
        .signature_input
        .trim_start_matches("sig1=")
        .to_owned();
    let covered: Vec<_> = ["@method", "@target-uri", "content-type", "content-digest"]
        .iter()
        .map(|n| keyhaven_httpsig::Component::new(n).unwrap())
        .collect();
    let base =
        keyhaven_httpsig::signature_base(Message::Request(&signed), &covered, &params).unwrap();
    let bare_sig = store.sign(&key.id, base.as_bytes()).unwrap();
    let policy = VerifyPolicy::at(NOW + 1);

    let mut g = c.benchmark_group("verify");
    g.bench_function("bare ed25519 verify of the base", |b| {
        b.iter(|| keyhaven_crypto::verify(&key.public_key, black_box(base.as_bytes()), &bare_sig))
    });
    g.bench_function("rfc9421 request verify", |b| {
        b.iter(|| {
            verify(
                Message::Request(black_box(&signed)),
                Some("sig1"),
                &policy,
                &mut |_| Ok(Some(key.public_key.clone())),
            )
            .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sign");
    let unsigned = request();
    g.bench_function("bare KeyStore::sign of the base", |b| {
        b.iter(|| store.sign(&key.id, black_box(base.as_bytes())).unwrap())
    });
    g.bench_function("rfc9421 request sign", |b| {
        b.iter(|| {
            sign(
                Message::Request(black_box(&unsigned)),
                &spec(),
                &store,
                &key.id,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
