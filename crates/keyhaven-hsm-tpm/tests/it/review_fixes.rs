//! Review fixes: a wrong passphrase is not sent twice, a foreign object at a key's persistent
//! handle is never used (nor evicted), a storage key flushed behind the store's back is
//! re-created rather than its keys' blobs blamed, and exporting an unknown key is `NotFound`.

use keyhaven_core::ErrorKind;
use keyhaven_core::{Algorithm, KeyId, KeyStore, SecretBytes};
use keyhaven_hsm_tpm::{KeyOptions, PersistentHandle};
use secrecy::SecretString;

use crate::swtpm::TestTpm;

/// `TPM2_PT_LOCKOUT_COUNTER`: how many authorization failures the TPM's dictionary-attack
/// protection has counted (swtpm locks out at 3).
fn lockout_counter(tpm: &TestTpm) -> u32 {
    let out = tpm.swtpm.run("tpm2_getcap", &["properties-variable"]);
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_else(|| panic!("no lockout counter in:\n{out}"));
    u32::from_str_radix(value.trim().trim_start_matches("0x"), 16).unwrap()
}

fn expect_locked(result: keyhaven_core::Result<keyhaven_core::Signature>, id: &KeyId) {
    match result {
        Err(e) if e.is(ErrorKind::Locked) => {
            let m = e.to_string();
            assert!(m.contains(id.as_str()) && m.contains("passphrase"), "{m}")
        }
        other => panic!("expected Locked (no passphrase held), got {other:?}"),
    }
}

#[test]
fn a_wrong_passphrase_is_forgotten_so_it_is_not_sent_again() {
    let mut tpm = TestTpm::new();
    let right = SecretString::from("correct horse");
    let (plain, bound) = {
        let store = tpm.store();
        let plain = store
            .generate_with_options(
                Algorithm::EcdsaP256,
                "guarded",
                KeyOptions::new().auth(right.clone()),
            )
            .unwrap();
        // the PolicyPassword path: a PCR policy and a passphrase
        let bound = store
            .generate_with_options(
                Algorithm::EcdsaP384,
                "guarded+bound",
                KeyOptions::new()
                    .pcr_policy("sha256:16".parse().unwrap())
                    .auth(right.clone()),
            )
            .unwrap();
        (plain, bound)
    };
    let store = tpm.store();
    assert_eq!(lockout_counter(&tpm), 0);
    for (n, key) in [&plain, &bound].into_iter().enumerate() {
        store
            .set_key_auth(&key.id, &SecretString::from("wrong"))
            .unwrap();
        assert!(matches!(
            store.sign(&key.id, b"m"),
            Err(e) if e.is(ErrorKind::BadPassphrase) && e.to_string().contains(key.id.as_str())));
        assert_eq!(lockout_counter(&tpm), n as u32 + 1, "one failure counted");
        // the wrong passphrase is gone: the next signatures ask for one and do not reach the
        // TPM, so the dictionary-attack counter stays where it is (swtpm would lock out at 3)
        for _ in 0..3 {
            expect_locked(store.sign(&key.id, b"m"), &key.id);
        }
        assert_eq!(lockout_counter(&tpm), n as u32 + 1, "not sent again");
    }
    // the right passphrase works
    for key in [&plain, &bound] {
        store.set_key_auth(&key.id, &right).unwrap();
        let sig = store.sign(&key.id, b"m").unwrap();
        keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    }
    // and with the TPM gone, a key without a passphrase is still Locked: nothing was sent
    store.forget_key_auth(&plain.id).unwrap();
    tpm.swtpm.kill();
    expect_locked(store.sign(&plain.id, b"m"), &plain.id);
}

#[test]
fn a_foreign_object_at_a_keys_persistent_handle_is_never_used_nor_evicted() {
    let tpm = TestTpm::new();
    let handle = "0x81000040";
    let key = {
        let store = tpm.store();
        let key = store
            .generate_with_options(
                Algorithm::EcdsaP256,
                "persisted",
                KeyOptions::new().persistent(handle.parse::<PersistentHandle>().unwrap()),
            )
            .unwrap();
        store.sign(&key.id, b"ours").unwrap();
        key
    };
    // Another program evicts our key and persists a P-256 signing key of its own at the same
    // handle: signing through the handle would give signatures by that key.
    let theirs = tpm.scratch("theirs.ctx");
    let theirs = theirs.to_str().unwrap();
    tpm.swtpm
        .run("tpm2_evictcontrol", &["-C", "o", "-c", handle]);
    tpm.swtpm.run(
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-G",
            "ecc256:ecdsa-sha256",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            "-c",
            theirs,
        ],
    );
    tpm.swtpm
        .run("tpm2_evictcontrol", &["-C", "o", "-c", theirs, handle]);
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let foreign = tpm.swtpm.run("tpm2_readpublic", &["-c", handle]);
    let store = tpm.store();
    for _ in 0..2 {
        match store.sign(&key.id, b"must not be signed by another key") {
            Err(e) if e.is(ErrorKind::Corrupt) => {
                let (what, reason) = (e.to_string(), e.to_string());
                assert!(
                    what.contains(handle) && what.contains(key.id.as_str()),
                    "{what}"
                );
                assert!(reason.contains("no longer holds key"), "{reason}");
                assert!(
                    reason.contains("tpm2_evictcontrol"),
                    "says what to do: {reason}"
                );
            }
            other => panic!("expected Corrupt naming the handle, got {other:?}"),
        }
    }
    // deleting the key leaves the other program's object where it is
    store.delete(&key.id).unwrap();
    let persistent = tpm.swtpm.run("tpm2_getcap", &["handles-persistent"]);
    assert!(persistent.contains(handle), "{persistent}");
    assert_eq!(tpm.swtpm.run("tpm2_readpublic", &["-c", handle]), foreign);
}

#[test]
fn a_storage_key_flushed_and_its_handle_reused_is_recreated_not_blamed_on_the_blob() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP256, "k").unwrap(); // created, not loaded
    assert_eq!(store.loaded_keys().unwrap().reconnects, 0);
    // No resource manager: another program flushes every transient object (our storage key
    // too) and makes a primary of its own, which gets our storage key's handle number.
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let other = tpm.scratch("other.ctx");
    tpm.swtpm.run(
        "tpm2_createprimary",
        &["-C", "o", "-G", "ecc256", "-c", other.to_str().unwrap()],
    );
    // Loading under that object fails its integrity check; the store sees that its storage
    // key is not what the handle holds any more, makes it again, and signs.
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    assert_eq!(store.loaded_keys().unwrap().reconnects, 1);
}

#[test]
fn a_key_made_after_the_storage_key_was_taken_over_is_made_under_ours() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    // as above: another program flushes our storage key and takes its handle number for a
    // storage key of its own (tpm2-tools' default primary is one)
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let other = tpm.scratch("other.ctx");
    tpm.swtpm.run(
        "tpm2_createprimary",
        &["-C", "o", "-G", "ecc256", "-c", other.to_str().unwrap()],
    );
    let key = store.generate(Algorithm::EcdsaP256, "made now").unwrap();
    assert_eq!(store.loaded_keys().unwrap().reconnects, 1);
    drop(store);
    // its blob loads under our storage key, in a store that starts afresh
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let store = tpm.store();
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    assert_eq!(store.loaded_keys().unwrap().reconnects, 0);
}

#[test]
fn export_of_an_unknown_key_is_not_found_and_of_a_known_one_unsupported() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    assert_eq!(store.tcti(), tpm.swtpm.tcti());
    assert!(store.info().location.contains(&tpm.swtpm.tcti()));
    let unknown = KeyId::generate().unwrap();
    assert!(matches!(
        store.export_pkcs8(&unknown),
        Err(e) if e.is(ErrorKind::NotFound) && e.to_string().contains(unknown.as_str())));
    let key = store.generate(Algorithm::EcdsaP384, "k").unwrap();
    match store.export_pkcs8(&key.id) {
        Err(e) if e.is(ErrorKind::Unsupported) => {
            let reason = e.to_string();
            assert!(reason.contains(key.id.as_str()), "{reason}");
            assert!(reason.contains(".priv"), "names the blob: {reason}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(matches!(
        store.import_pkcs8("imported", &SecretBytes::from(vec![0u8; 8])),
        Err(e) if e.is(ErrorKind::Unsupported)));
}
