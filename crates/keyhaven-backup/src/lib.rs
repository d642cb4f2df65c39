#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod codec;
mod error;
mod format;
mod model;
mod pkcs8;
mod restore;
mod seal;
pub mod shamir;

use std::path::Path;

pub use error::{BackupError, Result};
pub use format::{
    BackupHeader, BackupMeta, BackupProtection, BackupSecret, FORMAT_VERSION, Format, HeaderKey,
    MAX_DESCRIPTION, VerifyReport, check_expiry, convert, inspect, open, open_with,
    open_with_shares, verify, write, write_shamir, write_shamir_with_meta, write_with_meta,
};
pub use model::{BackupEntry, collect};
pub use pkcs8::{Pbes2, export_pkcs8_pem};
pub use restore::{OnConflict, Outcome, RestoreReport, RestoredKey, recovery_verify, restore};
pub use seal::KdfParams;
pub use shamir::{
    Custodian, MasterKey, Share, ShareCheck, combine, decrypt_share, split, verify_share,
};

/// Writes a backup, an export or a share to a new file (0600, atomically, fsynced), refusing to
/// overwrite an existing file.
///
/// # Errors
/// [`keyhaven_core::Error::AlreadyExists`] if the file exists; I/O and permission errors from
/// `keyhaven-fs`.
pub fn save(path: &Path, bytes: &[u8]) -> keyhaven_core::Result<()> {
    keyhaven_fs::atomic_write_new(path, bytes)
}
