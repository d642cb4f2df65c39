#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod dir;
mod encrypted;
mod engine;
pub mod format;
mod fsutil;
mod pem;

use std::path::Path;

pub use encrypted::{EncryptedStore, KdfParams};
use keyhaven_core::{Error, Result};
pub use pem::PemStore;

/// The kind of file store in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A [`PemStore`].
    Pem,
    /// An [`EncryptedStore`].
    Encrypted,
}

/// Which kind of file store is at `dir`, if any (reads only the header's `format` field).
///
/// # Errors
/// [`Error::Corrupt`] if a header is there but unreadable; I/O errors.
pub fn detect(dir: &Path) -> Result<Option<StoreKind>> {
    let path = dir.join(dir::HEADER);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    #[derive(serde::Deserialize)]
    struct Probe {
        format: String,
    }
    let probe: Probe = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(path.display().to_string(), e.to_string()))?;
    match probe.format.as_str() {
        "keyhaven-pem-store" => Ok(Some(StoreKind::Pem)),
        format::STORE_FORMAT => Ok(Some(StoreKind::Encrypted)),
        other => Err(Error::corrupt(
            path.display().to_string(),
            format!("unknown store format '{other}'"),
        )),
    }
}
