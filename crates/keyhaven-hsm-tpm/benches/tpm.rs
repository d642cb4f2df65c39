//! P-384 sign latency on swtpm, in one run:
//! - `keyhaven`: `TpmStore::sign_digest`, key already loaded (the LRU is warm);
//! - `raw_tss_esapi`: the same key, loaded once into a bare tss-esapi context, signed with the
//!   same scheme and the same password session: the floor keyhaven's overhead is measured
//!   against (target: under 5 %). Both live on the same swtpm at once, and besides criterion's
//!   sequential measurements the bench prints an interleaved A/B comparison, which is the fair
//!   one on a shared machine;
//! - `tpm2_sign_process`: one `tpm2_sign` process per signature with a persistent key, what a
//!   shell user would do;
//! - `agree_vs_sign_p384`: one ECDH agreement through `TpmStore::agree` (`TPM2_ECDH_ZGen` with
//!   its response encrypted under a salted second session: what unwrapping a KEK asks of the
//!   TPM) against one P-384 signature through `TpmStore::sign_digest` (password session), both
//!   keys loaded.
//!
//! It starts its own swtpm (the harness of `tests/it/swtpm.rs`); run it with
//! `cargo bench -p keyhaven-hsm-tpm` after `cargo xtask test` installed swtpm and tpm2-tools.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

#[allow(
    dead_code,
    reason = "the tests' swtpm harness, all of which the tests use; the bench needs only part"
)]
#[path = "../tests/it/swtpm.rs"]
mod swtpm;

use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_hsm_tpm::{KeyOptions, PersistentHandle, TpmStore};
use sha2::{Digest as _, Sha384};
use tss_esapi::Context;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, PersistentTpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, HashScheme, HashcheckTicket, Private, Public, SignatureScheme,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::UnMarshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

/// The TCG SRK template, as the store uses it.
fn srk() -> Public {
    keyhaven_hsm_tpm::srk_template().unwrap()
}

/// A bare tss-esapi signer: the store's key blob loaded once under a persistent copy of the
/// same SRK (so it holds one object slot: swtpm has three, and the store holds two).
struct RawSigner {
    ctx: Context,
    key: KeyHandle,
}

impl RawSigner {
    fn new(tcti: &str, blob_file: &std::path::Path) -> RawSigner {
        let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
        let primary = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, srk(), None, None, None, None)
            })
            .unwrap()
            .key_handle;
        let srk_handle = PersistentTpmHandle::new(0x8100_0001).unwrap();
        let persistent = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.evict_control(
                    Provision::Owner,
                    primary.into(),
                    Persistent::Persistent(srk_handle),
                )
            })
            .unwrap();
        ctx.flush_context(primary.into()).unwrap();
        let private = std::fs::read(blob_file).unwrap();
        let public = std::fs::read(blob_file.with_extension("pub")).unwrap();
        let private = Private::try_from(&private[2..]).unwrap();
        let public = Public::unmarshall(&public[2..]).unwrap();
        let key = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.load(KeyHandle::from(persistent), private, public)
            })
            .unwrap();
        RawSigner { ctx, key }
    }

    fn sign(&mut self, digest: &[u8]) -> tss_esapi::structures::Signature {
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha384),
        };
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .unwrap();
        let d = Digest::try_from(digest).unwrap();
        let key = self.key;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.sign(key, d, scheme, ticket)
            })
            .unwrap()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sign_latency(c: &mut Criterion) {
    let tpm = swtpm::TestTpm::new();
    let digest = Sha384::digest(b"benchmark message").to_vec();
    let (key, blob_file) = {
        let store = tpm.store();
        let key = store.generate(Algorithm::EcdsaP384, "bench").unwrap();
        store
            .generate_with_options(
                Algorithm::EcdsaP384,
                "bench-persistent",
                KeyOptions::new().persistent(PersistentHandle::new(0x8100_0100).unwrap()),
            )
            .unwrap();
        let blob_file = store.key_details(&key.id).unwrap().blob_file;
        (key, blob_file)
    };
    // Both signers live side by side on the one swtpm: the raw one holds one slot, the store
    // two (its SRK and the key: one loaded key at most here).
    let mut raw = RawSigner::new(&tpm.swtpm.tcti(), &blob_file);
    let store = TpmStore::open(tpm.config().with_max_loaded_keys(1)).unwrap();
    store.sign_digest(&key.id, &digest).unwrap();
    raw.sign(&digest);

    // Interleaved A/B rounds: the machine is shared, so load changes between criterion's
    // sequential measurements; alternating short rounds compares like with like.
    let rounds = 30;
    let per_round = 40;
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(store.sign_digest(&key.id, &digest).unwrap());
        }
        let a = t.elapsed().as_secs_f64() / f64::from(per_round);
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(raw.sign(&digest));
        }
        let b = t.elapsed().as_secs_f64() / f64::from(per_round);
        ours.push(a);
        theirs.push(b);
        ratios.push(a / b);
    }
    println!(
        "interleaved ({rounds} rounds x {per_round} signatures): keyhaven {:.0} us, raw \
         tss-esapi {:.0} us, median ratio {:.3} (overhead {:+.1} %)",
        median(ours) * 1e6,
        median(theirs) * 1e6,
        median(ratios.clone()),
        (median(ratios) - 1.0) * 100.0
    );

    let mut group = c.benchmark_group("tpm_sign_p384");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("keyhaven", |b| {
        b.iter(|| {
            store
                .sign_digest(black_box(&key.id), black_box(&digest))
                .unwrap()
        })
    });
    group.bench_function("raw_tss_esapi", |b| b.iter(|| raw.sign(black_box(&digest))));
    drop(store);
    drop(raw);

    // one tpm2_sign process per signature (persistent key, digest input)
    let digest_file = tpm.scratch("digest.bin");
    let sig_file = tpm.scratch("sig.bin");
    std::fs::write(&digest_file, &digest).unwrap();
    let d = digest_file.to_str().unwrap().to_owned();
    let s = sig_file.to_str().unwrap().to_owned();
    group.bench_function("tpm2_sign_process", |b| {
        b.iter(|| {
            tpm.swtpm.run(
                "tpm2_sign",
                &["-c", "0x81000100", "-g", "sha384", "-d", "-o", &s, &d],
            )
        })
    });
    group.finish();
}

fn agree_latency(c: &mut Criterion) {
    let tpm = swtpm::TestTpm::new();
    let store = TpmStore::open(tpm.config()).unwrap();
    let signer = store.generate(Algorithm::EcdsaP384, "sign").unwrap();
    let ecdh = store.generate(Algorithm::EcdhP384, "ecdh").unwrap();
    let peer = keyhaven_crypto::default_provider()
        .generate(Algorithm::EcdhP384)
        .unwrap();
    let digest = Sha384::digest(b"benchmark message").to_vec();
    store.sign_digest(&signer.id, &digest).unwrap();
    store.agree(&ecdh.id, peer.public_key()).unwrap();
    let mut group = c.benchmark_group("agree_vs_sign_p384");
    group.bench_function("sign_digest", |b| {
        b.iter(|| black_box(store.sign_digest(&signer.id, &digest).unwrap()))
    });
    group.bench_function("agree", |b| {
        b.iter(|| black_box(store.agree(&ecdh.id, peer.public_key()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, sign_latency, agree_latency);
criterion_main!(benches);
