//! keyhaven-backup: formats round-trip and detect every corruption, restores verify every key
//! and leave nothing behind on failure, Shamir shares recover with any t and never with t-1,
//! PKCS#8 exports open in OpenSSL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod corruption;
mod formats;
mod pkcs8_openssl;
mod restore;
mod shamir;

use keyhaven_backup::{BackupEntry, BackupSecret, Format, KdfParams, collect, write};
use keyhaven_core::{Algorithm, KeyInfo, KeyStore};
use keyhaven_store_memory::MemoryStore;
use secrecy::SecretString;

pub fn pass() -> SecretString {
    SecretString::from("backup passphrase 1")
}

pub fn secret() -> BackupSecret {
    BackupSecret::Passphrase(pass())
}

/// A memory store with one key of every algorithm, and its keys as listed.
pub fn store_with_keys() -> (MemoryStore, Vec<KeyInfo>) {
    let store = MemoryStore::new().unwrap();
    for alg in Algorithm::ALL {
        store.generate(alg, &format!("{alg} key")).unwrap();
    }
    // In the store's listing order, which is the order `collect` backs them up in.
    let keys = store.list().unwrap();
    (store, keys)
}

pub fn entries_of(store: &dyn KeyStore) -> Vec<BackupEntry> {
    collect(store, "memory", None).unwrap()
}

pub fn backup(entries: &[BackupEntry], format: Format) -> Vec<u8> {
    write(entries, &pass(), KdfParams::insecure_for_tests(), format).unwrap()
}

pub const FORMATS: [Format; 2] = [Format::Text, Format::Binary];
