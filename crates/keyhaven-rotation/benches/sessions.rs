//! Session agreement and KDF chains, each against a baseline in the same run:
//! - `x3dh/*`: one handshake, `initiate` and `respond` (three Diffie-Hellman each side, no
//!   one-time prekey, plus HKDF and the bundle's two signature checks), with software X25519
//!   keys, with software P-256 keys, and with the responder's keys on a SoftHSM2 token (P-256,
//!   every DH of the responder a `C_DeriveKey`); the baseline is the six raw software
//!   agreements alone;
//! - `chain/*`: one message key from a sending chain (KDF_CK: two HMAC-SHA-256), against the
//!   two HMACs computed directly with the `hmac` crate. Target: under 2 µs.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when the module initializes, so the bench makes a token with
//! the testkit and re-runs itself with that configuration in its environment.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use hmac::{Hmac, KeyInit, Mac};
use keyhaven_core::{Algorithm, KeyStore, SecretBytes};
use keyhaven_hsm_pkcs11::{Pkcs11Config, Pkcs11Store, TokenSelector};
use keyhaven_rotation::PrekeyPool;
use keyhaven_rotation::chain::{ChainKey, SendingChain};
use keyhaven_store_memory::MemoryStore;
use keyhaven_testkit::devices::SoftHsm;
use secrecy::SecretString;
use sha2::Sha256;

const CHILD: &str = "KEYHAVEN_SESSIONS_BENCH_CHILD";
const LABEL: &str = "kh-sessions";
const PIN: &str = "12345678";
const INFO: &[u8] = b"keyhaven bench";

fn pool(
    dir: &std::path::Path,
    name: &str,
    store: Arc<dyn KeyStore>,
    identity: Algorithm,
    curve: Algorithm,
) -> PrekeyPool {
    let id = store.generate(identity, name).unwrap().id;
    let pool = PrekeyPool::open(&dir.join(name), store, id)
        .unwrap()
        .with_curve(curve)
        .unwrap();
    pool.rotate_signed_prekey().unwrap();
    pool.identity_agreement_key().unwrap();
    pool
}

fn handshake(alice: &PrekeyPool, bob: &PrekeyPool) {
    let bundle = bob.bundle().unwrap();
    let (init, a) = alice.initiate(&bundle, INFO).unwrap();
    let b = bob.respond(&init, INFO).unwrap();
    assert_eq!(a.shared, b.shared);
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let memory = || Arc::new(MemoryStore::new().unwrap()) as Arc<dyn KeyStore>;
    let mut g = c.benchmark_group("x3dh");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let provider = keyhaven_crypto::default_provider();
    for curve in [Algorithm::X25519, Algorithm::EcdhP256] {
        let (a, b) = (
            provider.generate(curve).unwrap(),
            provider.generate(curve).unwrap(),
        );
        g.bench_function(format!("six raw {curve} agreements (baseline)"), |bench| {
            bench.iter(|| {
                for _ in 0..6 {
                    black_box(a.agree(b.public_key()).unwrap());
                }
            })
        });
        let identity = if curve == Algorithm::X25519 {
            Algorithm::Ed25519
        } else {
            Algorithm::EcdsaP256
        };
        let alice = pool(
            dir.path(),
            &format!("alice-{curve}"),
            memory(),
            identity,
            curve,
        );
        let bob = pool(
            dir.path(),
            &format!("bob-{curve}"),
            memory(),
            identity,
            curve,
        );
        g.bench_function(format!("software {curve}: initiate + respond"), |bench| {
            bench.iter(|| handshake(&alice, &bob))
        });
    }
    let token: Arc<dyn KeyStore> = Arc::new(
        Pkcs11Store::open(Pkcs11Config::new(
            keyhaven_testkit::devices::pkcs11_module(),
            TokenSelector::Label(LABEL.into()),
            SecretString::from(PIN),
        ))
        .unwrap(),
    );
    let alice = pool(
        dir.path(),
        "alice-token",
        memory(),
        Algorithm::EcdsaP256,
        Algorithm::EcdhP256,
    );
    let bob = pool(
        dir.path(),
        "bob-token",
        token,
        Algorithm::EcdsaP256,
        Algorithm::EcdhP256,
    );
    g.bench_function(
        "responder on SoftHSM2 (P-256): initiate + respond",
        |bench| bench.iter(|| handshake(&alice, &bob)),
    );
    g.finish();

    let mut g = c.benchmark_group("chain");
    let mut chain =
        SendingChain::new(ChainKey::from_secret(&SecretBytes::copy_from(&[7; 32])).unwrap());
    g.bench_function("two raw HMAC-SHA-256 (baseline)", |bench| {
        let mut ck = [7u8; 32];
        bench.iter(|| {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&ck).unwrap();
            m.update(&[1]);
            black_box(m.finalize().into_bytes());
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&ck).unwrap();
            m.update(&[2]);
            ck.copy_from_slice(&m.finalize().into_bytes());
        })
    });
    g.bench_function("SendingChain::next_key", |bench| {
        bench.iter(|| black_box(chain.next_key().unwrap()))
    });
    g.finish();
}

fn main() {
    if std::env::var_os(CHILD).is_none() {
        let hsm = SoftHsm::new();
        hsm.init_token(LABEL, PIN);
        let status = hsm
            .command(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(CHILD, "1")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
