//! keyhaven-compromise: revocation (statements, registry, decorator, exported lists, another
//! process), detection over audit records, reports, and response procedures with real hooks.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod detect;
mod reports;
mod respond;
mod revocation;

use std::path::Path;
use std::sync::Arc;

use keyhaven_compromise::Authority;
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_memory::MemoryStore;

/// A private (0700) temporary directory.
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A revocation authority: a P-384 key in a memory store of its own.
pub fn authority() -> Authority {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let key = store.generate(Algorithm::EcdsaP384, "authority").unwrap();
    Authority { store, key: key.id }
}

/// The authority's public key.
pub fn authority_key(a: &Authority) -> keyhaven_core::PublicKey {
    a.store.public_key(&a.key).unwrap()
}

/// A subdirectory path of `dir`.
pub fn sub(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(name)
}
