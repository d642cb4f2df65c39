//! Backup, wipe, restore: same fingerprints, verified keys, explicit conflict choices, and no
//! partial restore left behind on failure.

use std::collections::BTreeSet;

use keyhaven_backup::{
    BackupError, Format, OnConflict, Outcome, collect, open, recovery_verify, restore,
};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_file::{EncryptedStore, KdfParams as StoreKdf};
use keyhaven_store_memory::MemoryStore;
use secrecy::SecretString;

use crate::{backup, entries_of, secret, store_with_keys};
use keyhaven_testkit::FaultyStore;

/// (fingerprint, label) of every key.
fn fingerprints(store: &dyn KeyStore) -> BTreeSet<(String, String)> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|k| (k.fingerprint().to_hex(), k.label))
        .collect()
}

fn signs_like_before(store: &dyn KeyStore, before: &[keyhaven_core::KeyInfo]) {
    for k in before {
        let now = store.find_by_label(&k.label).unwrap();
        assert_eq!(now.fingerprint(), k.fingerprint(), "{}", k.label);
        if k.algorithm.can_sign() {
            let sig = store.sign(&now.id, b"after restore").unwrap();
            keyhaven_crypto::verify(&k.public_key, b"after restore", &sig).unwrap();
        }
    }
}

fn wipe(store: &dyn KeyStore) {
    for k in store.list().unwrap() {
        store.delete(&k.id).unwrap();
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn memory_store_backed_up_wiped_and_restored_signs_the_same() {
    let (store, keys) = store_with_keys();
    for format in crate::FORMATS {
        let file = backup(&entries_of(&store), format);
        wipe(&store);
        let entries = open(&file, &secret()).unwrap();
        let report = restore(&store, &entries, OnConflict::Fail).unwrap();
        assert_eq!(report.restored(), keys.len());
        assert_eq!(report.id_map().len(), keys.len());
        assert!(
            report
                .keys
                .iter()
                .all(|k| matches!(k.outcome, Outcome::Restored { .. }))
        );
        signs_like_before(&store, &keys);
    }
}

#[test]
fn encrypted_store_backed_up_wiped_and_restored_signs_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let pass = SecretString::from("store pass");
    let store =
        EncryptedStore::create(&dir.path().join("s"), &pass, StoreKdf::insecure_for_tests())
            .unwrap();
    let keys: Vec<_> = Algorithm::ALL
        .iter()
        .map(|a| store.generate(*a, &format!("enc {a}")).unwrap())
        .collect();
    let file = backup(&collect(&store, "file", None).unwrap(), Format::Binary);
    wipe(&store);
    let report = restore(&store, &open(&file, &secret()).unwrap(), OnConflict::Fail).unwrap();
    assert_eq!(report.restored(), Algorithm::ALL.len());
    // Reopen the store from disk: the restored keys persisted.
    drop(store);
    let store = EncryptedStore::open(&dir.path().join("s"), &pass).unwrap();
    signs_like_before(&store, &keys);
}

#[test]
fn conflicts_need_an_explicit_choice() {
    let (store, keys) = store_with_keys();
    let entries = entries_of(&store);
    // Same keys already there: AlreadyPresent, whatever the policy.
    for policy in [
        OnConflict::Fail,
        OnConflict::Skip,
        OnConflict::Rename,
        OnConflict::Replace,
    ] {
        let r = restore(&store, &entries, policy).unwrap();
        assert!(
            r.keys
                .iter()
                .all(|k| matches!(k.outcome, Outcome::AlreadyPresent { .. }))
        );
    }
    // Other keys under the same labels.
    let target = MemoryStore::new().unwrap();
    for k in &keys {
        target.generate(k.algorithm, &k.label).unwrap();
    }
    let before = fingerprints(&target);
    let err = restore(&target, &entries, OnConflict::Fail).unwrap_err();
    assert!(err.to_string().contains("p384 key"), "{err}");
    assert_eq!(fingerprints(&target), before, "Fail touched the store");

    let r = restore(&target, &entries, OnConflict::Skip).unwrap();
    assert!(
        r.keys
            .iter()
            .all(|k| matches!(k.outcome, Outcome::Skipped { .. }))
    );
    assert_eq!(fingerprints(&target), before);

    let r = restore(&target, &entries, OnConflict::Rename).unwrap();
    assert_eq!(r.restored(), Algorithm::ALL.len());
    for (k, line) in keys.iter().zip(&r.keys) {
        let Outcome::Renamed { label, new_id } = &line.outcome else {
            panic!("{line:?}")
        };
        assert_eq!(label, &format!("{} (restored)", k.label));
        assert_eq!(target.get(new_id).unwrap().fingerprint(), k.fingerprint());
    }
    assert!(
        before.is_subset(&fingerprints(&target)),
        "rename lost a key"
    );
}

#[test]
fn replace_swaps_the_key_under_its_label() {
    let (store, keys) = store_with_keys();
    let entries = entries_of(&store);
    let target = MemoryStore::new().unwrap();
    let old: Vec<_> = keys
        .iter()
        .map(|k| target.generate(k.algorithm, &k.label).unwrap())
        .collect();
    let r = restore(&target, &entries, OnConflict::Replace).unwrap();
    assert_eq!(r.restored(), Algorithm::ALL.len());
    for ((k, o), line) in keys.iter().zip(&old).zip(&r.keys) {
        assert!(
            matches!(&line.outcome, Outcome::Replaced { old_id, .. } if old_id == &o.id),
            "{line:?}"
        );
        assert_eq!(
            target.find_by_label(&k.label).unwrap().fingerprint(),
            k.fingerprint()
        );
    }
    assert_eq!(
        target.list().unwrap().len(),
        Algorithm::ALL.len(),
        "temporary copies left behind"
    );
    signs_like_before(&target, &keys);
}

#[test]
fn a_failing_import_leaves_nothing_behind() {
    let (store, _) = store_with_keys();
    let entries = entries_of(&store);
    for fail_at in 0..4 {
        let target = FaultyStore::new(MemoryStore::new().unwrap()).failing_import_at(fail_at);
        target.generate(Algorithm::Ed25519, "bystander").unwrap();
        let before = fingerprints(&target);
        let err = restore(&target, &entries, OnConflict::Fail).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::Restore {
                    stage: "import",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(
            fingerprints(&target),
            before,
            "partial restore left (fail at {fail_at})"
        );
    }
}

#[test]
fn a_failing_replacement_puts_the_old_keys_back() {
    let (store, keys) = store_with_keys();
    let entries = entries_of(&store);
    // One temporary import per algorithm succeeds; the 2nd final import fails after two old
    // keys were deleted.
    let target =
        FaultyStore::new(MemoryStore::new().unwrap()).failing_import_at(Algorithm::ALL.len() + 1);
    for k in &keys {
        target.generate(k.algorithm, &k.label).unwrap();
    }
    let before = fingerprints(&target);
    let err = restore(&target, &entries, OnConflict::Replace).unwrap_err();
    assert!(err.to_string().contains("put back"), "{err}");
    assert_eq!(fingerprints(&target), before, "an existing key was lost");
}

#[test]
fn recovery_verification_catches_a_store_that_restores_the_wrong_key() {
    let (store, _) = store_with_keys();
    let entries = entries_of(&store);
    let target = FaultyStore::new(MemoryStore::new().unwrap()).lying_on_import();
    let err = restore(&target, &entries, OnConflict::Fail).unwrap_err();
    assert!(
        matches!(
            err,
            BackupError::Restore {
                stage: "recovery verification",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("fingerprint recorded in the backup"),
        "{err}"
    );
    assert!(target.list().unwrap().is_empty());
    // The check itself, directly: the right key passes, another key does not.
    let other = store.generate(Algorithm::Ed25519, "other").unwrap();
    let ed = entries
        .iter()
        .find(|e| e.algorithm == Algorithm::Ed25519)
        .unwrap();
    recovery_verify(&store, &ed.id, ed).unwrap();
    assert!(recovery_verify(&store, &other.id, ed).is_err());
}

#[test]
fn hardware_entries_are_reported_not_restored() {
    let hw = FaultyStore::new(MemoryStore::new().unwrap()).hardware_like();
    hw.generate(Algorithm::EcdsaP384, "hsm").unwrap();
    let entries = collect(&hw, "pkcs11", None).unwrap();
    let target = MemoryStore::new().unwrap();
    let r = restore(&target, &entries, OnConflict::Fail).unwrap();
    assert_eq!(r.keys[0].outcome, Outcome::HardwarePublicOnly);
    assert_eq!(r.restored(), 0);
}

#[test]
fn replace_refuses_to_drop_a_key_it_cannot_export() {
    let (store, keys) = store_with_keys();
    let entries = entries_of(&store);
    let hw = FaultyStore::new(MemoryStore::new().unwrap()).hardware_like();
    hw.generate(keys[0].algorithm, &keys[0].label).unwrap();
    let err = restore(&hw, &entries[..1], OnConflict::Replace).unwrap_err();
    assert!(err.to_string().contains("cannot be exported"), "{err}");
    assert_eq!(hw.list().unwrap().len(), 1);
}
