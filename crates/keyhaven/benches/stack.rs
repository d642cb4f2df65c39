//! The cost of the facade's decorator stack on software signing, against the bare encrypted
//! store in the same run: revocation check + usage metering (audit off), then with access
//! control and the durable audit log (two fsynced appends per signature, shared by group
//! commit between threads).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven::audit::CallerContext;
use keyhaven::stores::{EncryptedStore, KdfParams};
use keyhaven::{Algorithm, BackendConfig, BackendKind, FixedPassphrase, KeyManager, KeyStore};
use secrecy::SecretString;

fn private_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn manager(home: &std::path::Path, audit: bool, access: bool) -> KeyManager {
    let m = KeyManager::open(home, FixedPassphrase::new("pw"))
        .unwrap()
        .with_caller(CallerContext::new("bench").role("signer"));
    m.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    if access {
        std::fs::write(
            home.join("access.toml"),
            "[default]\ngenerate = { roles = [\"signer\"] }\nsign = { roles = [\"signer\"] }\n",
        )
        .unwrap();
    }
    m.update_config(|c| {
        c.audit.enabled = Some(audit);
        if access {
            c.access.policy = Some("access.toml".into());
        }
        Ok(())
    })
    .unwrap();
    drop(m);
    KeyManager::open(home, FixedPassphrase::new("pw"))
        .unwrap()
        .with_caller(CallerContext::new("bench").role("signer"))
}

fn bench(c: &mut Criterion) {
    let msg = b"a message of ordinary length to be signed";
    let mut g = c.benchmark_group("sign_p384_through_the_stack");
    g.sample_size(20);

    let bare_dir = private_dir();
    let bare = EncryptedStore::create(
        &bare_dir.path().join("s"),
        &SecretString::from("pw"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    let k = bare.generate(Algorithm::EcdsaP384, "k").unwrap();
    g.bench_function("bare_encrypted_store", |b| {
        b.iter(|| black_box(bare.sign(&k.id, msg).unwrap()));
    });

    for (name, audit, access) in [
        ("revocation_and_metering", false, false),
        ("plus_access_control", false, true),
        ("plus_durable_audit", true, true),
    ] {
        let home = private_dir();
        let m = manager(&home.path().join("h"), audit, access);
        let key = m.generate(None, Algorithm::EcdsaP384, "k").unwrap();
        g.bench_function(name, |b| b.iter(|| black_box(m.sign(&key, msg).unwrap())));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
