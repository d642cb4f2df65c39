//! The cost of the home's integrity checks, against the same home unsealed, in the same run:
//! signing through the facade (P-384 and Ed25519; each signature reads the rotation registry's
//! version index, the revocation registry's stamp and the usage meter through the checked
//! state), and listing 10 000 keys with their versions and states (what `keyhaven key list`
//! does). A home is unsealed here by keeping its encrypted store outside the home, where it
//! cannot anchor the integrity key; everything else is the same.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven::{
    Algorithm, BackendConfig, BackendKind, FixedPassphrase, IntegrityStatus, KeyManager,
};

fn private_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// A home with audit off (its fsyncs would hide everything else), sealed or not.
fn home(dir: &Path, sealed: bool) -> KeyManager {
    let home = dir.join("home");
    let m = KeyManager::open(&home, FixedPassphrase::new("pw")).unwrap();
    let path = (!sealed).then(|| dir.join("store-outside-the-home"));
    m.add_backend("b", BackendConfig::new(BackendKind::Encrypted, path))
        .unwrap();
    m.update_config(|c| {
        c.audit.enabled = Some(false);
        Ok(())
    })
    .unwrap();
    drop(m);
    let m = KeyManager::open(&home, FixedPassphrase::new("pw")).unwrap();
    let status = m.integrity_status().unwrap();
    assert_eq!(
        matches!(status, IntegrityStatus::Sealed { .. }),
        sealed,
        "{status:?}"
    );
    m
}

fn sign(c: &mut Criterion) {
    let msg = b"a message of ordinary length to be signed";
    for alg in [Algorithm::EcdsaP384, Algorithm::Ed25519] {
        let mut g = c.benchmark_group(format!("sign_{}_integrity", alg.short_name()));
        g.sample_size(30);
        for sealed in [false, true] {
            let dir = private_dir();
            let m = home(dir.path(), sealed);
            let key = m.generate(None, alg, "k").unwrap();
            // A versioned key: the registry is read on every signature.
            m.rotation().rotate_key(&key, "bench").unwrap();
            let key = m.resolve("k").unwrap();
            let name = if sealed { "sealed" } else { "unsealed" };
            g.bench_function(name, |b| b.iter(|| black_box(m.sign(&key, msg).unwrap())));
        }
        g.finish();
    }
}

fn list(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    let mut g = c.benchmark_group("key_list_10000_integrity");
    g.sample_size(10);
    for sealed in [false, true] {
        let dir = private_dir();
        let m = home(dir.path(), sealed);
        for i in 0..KEYS {
            m.generate(None, Algorithm::Ed25519, &format!("key-{i}"))
                .unwrap();
        }
        // A hundred of them rotated, so the registry is not empty.
        for i in 0..100 {
            let k = m.resolve(&format!("key-{i}")).unwrap();
            m.rotation().rotate_key(&k, "bench").unwrap();
        }
        let name = if sealed { "sealed" } else { "unsealed" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let keys = m.list_keys().unwrap();
                for k in &keys {
                    black_box(m.rotation().version_info(k).unwrap());
                }
                keys.len()
            })
        });
    }
    g.finish();
}

/// What binding a sealed home to a TPM counter costs a signature that counts usage (one
/// counter read and increment per change of the manifest), on swtpm over loopback, against the
/// same sealed home unbound, in the same run.
#[cfg(feature = "tpm")]
fn rollback_counter(c: &mut Criterion) {
    let msg = b"a message of ordinary length to be signed";
    let tpm = keyhaven_testkit::devices::Swtpm::start();
    let mut g = c.benchmark_group("sign_ed25519_rollback_counter");
    g.sample_size(20);
    for bound in [false, true] {
        let dir = private_dir();
        let m = home(dir.path(), true);
        m.add_backend("tpm", BackendConfig::tpm(tpm.tcti(), None))
            .unwrap();
        if bound {
            m.bind_rollback_counter("tpm").unwrap();
        }
        let key = m.generate(Some("b"), Algorithm::Ed25519, "k").unwrap();
        let name = if bound { "bound" } else { "unbound" };
        g.bench_function(name, |b| b.iter(|| black_box(m.sign(&key, msg).unwrap())));
    }
    g.finish();
}

#[cfg(not(feature = "tpm"))]
fn rollback_counter(_: &mut Criterion) {}

criterion_group!(benches, sign, list, rollback_counter);
criterion_main!(benches);
