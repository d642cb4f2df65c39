//! Every single-byte corruption and every truncation of a backup is detected, with and without
//! the secret.

use keyhaven_backup::{Format, inspect, open, verify};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_memory::MemoryStore;

use crate::{FORMATS, backup, entries_of, secret};

fn small_backup(format: Format) -> Vec<u8> {
    let store = MemoryStore::new().unwrap();
    store.generate(Algorithm::Ed25519, "small").unwrap();
    store.generate(Algorithm::X25519, "agree").unwrap();
    backup(&entries_of(&store), format)
}

#[test]
fn every_single_byte_flip_is_detected() {
    for format in FORMATS {
        let file = small_backup(format);
        for i in 0..file.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= mask;
                assert!(
                    verify(&bad, None).is_err(),
                    "{format}: flip {mask:#x} at byte {i} not detected without the secret"
                );
                assert!(
                    open(&bad, &secret()).is_err(),
                    "{format}: flip {mask:#x} at byte {i} not detected by open"
                );
            }
        }
    }
}

#[test]
fn every_truncation_and_extension_is_detected() {
    for format in FORMATS {
        let file = small_backup(format);
        for n in 0..file.len() {
            assert!(inspect(&file[..n]).is_err(), "{format}: truncated at {n}");
            assert!(
                open(&file[..n], &secret()).is_err(),
                "{format}: truncated at {n}"
            );
        }
        let mut longer = file.clone();
        longer.push(b'\n');
        assert!(verify(&longer, None).is_err(), "{format}: extended");
    }
}

#[test]
fn damage_is_named() {
    let file = small_backup(Format::Text);
    let mut bad = file.clone();
    let n = bad.len();
    bad.truncate(n - 10);
    let err = inspect(&bad).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let mut bad = file;
    bad[40] ^= 1;
    let err = inspect(&bad).unwrap_err().to_string();
    assert!(err.contains("integrity digest"), "{err}");
}
