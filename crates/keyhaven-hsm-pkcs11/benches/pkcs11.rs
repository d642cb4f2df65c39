//! PKCS#11 benchmarks on a SoftHSM2 token, each against raw cryptoki calls in the same run:
//! - `sign_p384`, `sign_ed25519`: one signature through `Pkcs11Store` (`sign_digest` for P-384,
//!   `sign` for Ed25519) against `Session::sign` with the same key and mechanism on a session
//!   that is already open and logged in;
//! - `interleaved_p384`, `interleaved_ed25519` (printed): the same two calls alternating, as a
//!   ratio that background load cannot skew;
//! - `throughput_p384`, `throughput_ed25519`: signatures per second from 1, 2 and 4 threads
//!   sharing one store (its session pool), against the same threads each on a raw session of
//!   its own, opened (and the key's handle found) before the clock starts;
//! - `agree_ecdh_p384`: one ECDH agreement through `Pkcs11Store::agree` (what unwrapping a KEK
//!   asks of the token; the envelope's own HKDF and AES-GCM add about 3 µs) against
//!   `C_DeriveKey(CKM_ECDH1_DERIVE)`, `C_GetAttributeValue(CKA_VALUE)` and `C_DestroyObject` on a
//!   raw session.
//!
//! The module is `KEYHAVEN_PKCS11_MODULE` or SoftHSM's Debian path. The bench makes its own
//! token: SoftHSM reads `SOFTHSM2_CONF` when the module initializes, so the process first
//! writes a scratch configuration, creates the token with `softhsm2-util --init-token --free`,
//! and re-runs itself with `SOFTHSM2_CONF` pointing there (no `unsafe` `set_var` needed).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use keyhaven_core::{Algorithm, KeyId, KeyStore};
use keyhaven_hsm_pkcs11::{Pkcs11Config, Pkcs11Store, TokenSelector, softhsm_module};
use secrecy::SecretString;
use sha2::{Digest, Sha384};

const CHILD: &str = "KEYHAVEN_PKCS11_BENCH_CHILD";
const LABEL: &str = "keyhaven-bench";
const PIN: &str = "12345678";
const MSG: &[u8] = b"keyhaven benchmark message: 64 bytes of payload for every algo!!";

fn module() -> PathBuf {
    std::env::var_os("KEYHAVEN_PKCS11_MODULE")
        .map(PathBuf::from)
        .or_else(softhsm_module)
        .expect(
            "no PKCS#11 module: install softhsm2 (cargo xtask test does) or set \
             KEYHAVEN_PKCS11_MODULE",
        )
}

/// Makes a scratch token and re-runs this bench with `SOFTHSM2_CONF` set; returns its status.
fn run_in_child() -> i32 {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", LABEL])
        .args(["--so-pin", "87654321", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .status()
        .unwrap();
    status.code().unwrap_or(1)
}

/// The raw side: the same module (already initialized by the store), a session, a key handle.
struct Raw {
    pkcs11: Pkcs11,
    slot: Slot,
}

impl Raw {
    fn new(module: &PathBuf) -> Raw {
        let pkcs11 = Pkcs11::new(module).unwrap();
        let _ = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = pkcs11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == LABEL)
            .unwrap();
        Raw { pkcs11, slot }
    }

    /// A session (logged in through the store: login is per application) and the key's handle.
    fn session(&self, id: &KeyId) -> (Session, ObjectHandle) {
        let s = self.pkcs11.open_rw_session(self.slot).unwrap();
        let h = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(hex::decode(id.as_str()).unwrap()),
            ])
            .unwrap()[0];
        (s, h)
    }
}

fn mechanism(alg: Algorithm) -> Mechanism<'static> {
    match alg {
        Algorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        _ => Mechanism::Ecdsa,
    }
}

/// The input each side signs: the SHA-384 digest for P-384 (prehashed on both sides), the
/// message for Ed25519.
fn input(alg: Algorithm) -> Vec<u8> {
    match alg {
        Algorithm::EcdsaP384 => Sha384::digest(MSG).to_vec(),
        _ => MSG.to_vec(),
    }
}

fn store_sign(store: &Pkcs11Store, alg: Algorithm, id: &KeyId, data: &[u8]) {
    let sig = match alg {
        Algorithm::EcdsaP384 => store.sign_digest(id, data),
        _ => store.sign(id, data),
    };
    black_box(sig.unwrap());
}

fn latency(c: &mut Criterion, store: &Pkcs11Store, raw: &Raw, alg: Algorithm, id: &KeyId) {
    let mut g = c.benchmark_group(format!("sign_{}", alg.short_name()));
    let data = input(alg);
    let (session, handle) = raw.session(id);
    g.bench_function("raw_cryptoki", |b| {
        b.iter(|| black_box(session.sign(&mechanism(alg), handle, &data).unwrap()))
    });
    g.bench_function("keyhaven", |b| b.iter(|| store_sign(store, alg, id, &data)));
    g.finish();
}

/// Runs `total` signatures split over one thread per element of `states` (each thread gets its
/// own, e.g. a raw session); returns the wall time.
fn timed_threads<S: Send>(
    states: &mut [S],
    total: u64,
    work: impl Fn(&mut S, u64) + Send + Sync,
) -> Duration {
    let per = total.div_ceil(states.len() as u64);
    let work = &work;
    let start = Instant::now();
    std::thread::scope(|s| {
        for state in states.iter_mut() {
            s.spawn(move || work(state, per));
        }
    });
    start.elapsed()
}

fn throughput(c: &mut Criterion, store: &Arc<Pkcs11Store>, raw: &Raw, alg: Algorithm, id: &KeyId) {
    let mut g = c.benchmark_group(format!("throughput_{}", alg.short_name()));
    g.sample_size(10);
    let data = input(alg);
    for threads in [1usize, 2, 4] {
        // one signature per element: criterion reports signatures per second
        let batch = 8 * threads as u64;
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::new("keyhaven", threads), &threads, |b, &t| {
            let mut workers = vec![(); t];
            b.iter_custom(|iters| {
                timed_threads(&mut workers, iters * batch, |(), n| {
                    for _ in 0..n {
                        store_sign(store, alg, id, &data);
                    }
                })
            })
        });
        // one logged-in session and key handle per thread, made before any timing
        let mut sessions: Vec<(Session, ObjectHandle)> =
            (0..threads).map(|_| raw.session(id)).collect();
        g.bench_with_input(
            BenchmarkId::new("raw_cryptoki", threads),
            &threads,
            |b, _| {
                b.iter_custom(|iters| {
                    timed_threads(&mut sessions, iters * batch, |(session, handle), n| {
                        for _ in 0..n {
                            black_box(session.sign(&mechanism(alg), *handle, &data).unwrap());
                        }
                    })
                })
            },
        );
    }
    g.finish();
}

/// Overhead as a ratio, robust to a busy machine: store and raw calls alternate (ABBA order)
/// for `n` rounds, so both see the same background load; criterion's groups run one after the
/// other and can drift apart by more than the difference being measured.
fn interleaved_ratio(store: &Pkcs11Store, raw: &Raw, alg: Algorithm, id: &KeyId, n: u32) {
    let data = input(alg);
    let (session, handle) = raw.session(id);
    let (mut ours, mut base) = (Duration::ZERO, Duration::ZERO);
    let time_raw = || {
        let t = Instant::now();
        black_box(session.sign(&mechanism(alg), handle, &data).unwrap());
        t.elapsed()
    };
    for i in 0..n {
        if i % 2 == 0 {
            base += time_raw();
        }
        let t = Instant::now();
        store_sign(store, alg, id, &data);
        ours += t.elapsed();
        if i % 2 == 1 {
            base += time_raw();
        }
    }
    println!(
        "interleaved_{}: keyhaven {:?}/sig, raw cryptoki {:?}/sig, ratio {:.3} ({n} rounds)",
        alg.short_name(),
        ours / n,
        base / n,
        ours.as_secs_f64() / base.as_secs_f64()
    );
}

fn agreement(c: &mut Criterion, store: &Pkcs11Store, raw: &Raw) {
    use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
    use cryptoki::object::{AttributeType, KeyType};
    let id = store.generate(Algorithm::EcdhP384, "ecdh").unwrap().id;
    let peer = keyhaven_crypto::default_provider()
        .generate(Algorithm::EcdhP384)
        .unwrap();
    let point = keyhaven_crypto::encoding::ec_point_uncompressed(peer.public_key()).unwrap();
    let (session, handle) = raw.session(&id);
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(48u64.into()),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let mut g = c.benchmark_group("agree_ecdh_p384");
    g.bench_function("raw_cryptoki", |b| {
        b.iter(|| {
            let params = Ecdh1DeriveParams::new(EcKdf::null(), &point);
            let secret = session
                .derive_key(&Mechanism::Ecdh1Derive(params), handle, &template)
                .unwrap();
            let value = session
                .get_attributes(secret, &[AttributeType::Value])
                .unwrap();
            session.destroy_object(secret).unwrap();
            black_box(value)
        })
    });
    g.bench_function("keyhaven", |b| {
        b.iter(|| black_box(store.agree(&id, peer.public_key()).unwrap()))
    });
    g.finish();
}

fn main() {
    if std::env::var_os(CHILD).is_none() {
        std::process::exit(run_in_child());
    }
    let module = module();
    let store = Arc::new(
        Pkcs11Store::open(Pkcs11Config::new(
            &module,
            TokenSelector::Label(LABEL.into()),
            SecretString::from(PIN),
        ))
        .unwrap(),
    );
    let raw = Raw::new(&module);
    let mut c = Criterion::default().configure_from_args();
    for alg in [Algorithm::EcdsaP384, Algorithm::Ed25519] {
        let id = store.generate(alg, alg.short_name()).unwrap().id;
        latency(&mut c, &store, &raw, alg, &id);
        interleaved_ratio(&store, &raw, alg, &id, 1000);
        throughput(&mut c, &store, &raw, alg, &id);
    }
    agreement(&mut c, &store, &raw);
    c.final_summary();
}
