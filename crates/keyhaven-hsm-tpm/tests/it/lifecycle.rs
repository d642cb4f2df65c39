//! The TPM's lifecycle: restarts, reopening, persistence, concurrency, the report.

use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_hsm_tpm::{KeyOptions, PersistentHandle, StorageKey, TpmReport, TpmStore};

use crate::swtpm::TestTpm;

#[test]
fn keys_still_sign_after_swtpm_restarts_under_an_open_store() {
    let mut tpm = TestTpm::new();
    let store = tpm.store();
    let transient = store.generate(Algorithm::EcdsaP384, "t").unwrap();
    let persistent = store
        .generate_with_options(
            Algorithm::EcdsaP256,
            "p",
            KeyOptions::new().persistent(PersistentHandle::new(0x8100_0030).unwrap()),
        )
        .unwrap();
    let bound = store
        .generate_with_options(
            Algorithm::EcdsaP256,
            "b",
            KeyOptions::new().pcr_policy("sha256:0,7".parse().unwrap()),
        )
        .unwrap();
    for k in [&transient, &persistent, &bound] {
        store.sign(&k.id, b"before").unwrap();
    }
    assert_eq!(store.loaded_keys().unwrap().reconnects, 0);
    // killed and started again on the same state directory: volatile state (the primary and
    // the loaded keys) is gone, the seeds and the persistent key are not
    tpm.swtpm.restart();
    for k in [&transient, &persistent, &bound] {
        let sig = store.sign(&k.id, b"after").unwrap();
        keyhaven_crypto::verify(&k.public_key, b"after", &sig).unwrap();
    }
    assert_eq!(store.loaded_keys().unwrap().reconnects, 1, "one reconnect");
    // twice in a row is fine too
    tpm.swtpm.restart();
    let sig = store.sign(&transient.id, b"again").unwrap();
    keyhaven_crypto::verify(&transient.public_key, b"again", &sig).unwrap();
}

#[test]
fn keys_survive_reopening_with_the_same_public_keys() {
    let mut tpm = TestTpm::new();
    let made: Vec<_> = {
        let store = tpm.store();
        [Algorithm::EcdsaP384, Algorithm::EcdsaP256]
            .iter()
            .map(|&a| store.generate(a, &format!("{a}")).unwrap())
            .collect()
    };
    tpm.swtpm.restart();
    let store = tpm.store();
    let mut expected = made.clone();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(store.list().unwrap(), expected);
    for k in &made {
        let sig = store.sign(&k.id, b"reopened").unwrap();
        keyhaven_crypto::verify(&k.public_key, b"reopened", &sig).unwrap();
    }
}

#[test]
fn a_persistent_storage_key_can_be_configured() {
    let tpm = TestTpm::new();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let prim = tpm.scratch("srk.ctx");
    crate::interop::tools_srk(&tpm, &prim);
    tpm.swtpm.run(
        "tpm2_evictcontrol",
        &["-C", "o", "-c", &s(&prim), "0x81000001"],
    );
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let config = tpm.config().with_storage_key(StorageKey::Persistent(
        PersistentHandle::new(0x8100_0001).unwrap(),
    ));
    let store = TpmStore::open(config).unwrap();
    let key = store
        .generate(Algorithm::EcdsaP384, "under-persistent-srk")
        .unwrap();
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    assert_eq!(
        store.loaded_keys().unwrap().capacity,
        3,
        "no transient SRK to hold"
    );
    drop(store);
    // the derived SRK is the same key, so the default store loads these blobs as well
    let store = tpm.store();
    store.sign(&key.id, b"m").unwrap();
}

#[test]
fn threads_share_one_context() {
    let tpm = TestTpm::new();
    let store = Arc::new(tpm.store());
    let keys: Vec<_> = (0..4)
        .map(|i| {
            store
                .generate(Algorithm::EcdsaP256, &format!("c{i}"))
                .unwrap()
        })
        .collect();
    let keys = Arc::new(keys);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            let keys = Arc::clone(&keys);
            std::thread::spawn(move || {
                for i in 0..8 {
                    let k = &keys[(t + i) % keys.len()];
                    let msg = format!("{t}-{i}");
                    let sig = store.sign(&k.id, msg.as_bytes()).unwrap();
                    keyhaven_crypto::verify(&k.public_key, msg.as_bytes(), &sig).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn report_names_the_tpm_and_its_curves() {
    let tpm = TestTpm::new();
    let probed = TpmReport::probe(&tpm.swtpm.tcti()).unwrap();
    assert_eq!(probed.manufacturer, "IBM");
    assert_eq!(probed.transient_slots, 3);
    assert!(probed.supports_p384() && probed.supports_p256(), "{probed}");
    assert!(
        probed.ecc_curves.iter().any(|c| c == "NIST P-521"),
        "{probed}"
    );
    let text = probed.to_string();
    assert!(
        text.contains("firmware") && text.contains("NIST P-384"),
        "{text}"
    );
    let store = tpm.store();
    assert_eq!(store.report().unwrap(), probed);
    let info = store.info();
    assert_eq!(info.kind, "tpm");
    assert!(
        info.location.contains(&tpm.swtpm.tcti()),
        "{}",
        info.location
    );
}
