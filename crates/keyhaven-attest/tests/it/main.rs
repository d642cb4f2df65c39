//! keyhaven-attest against real recorded evidence (read from the shared folder; skipped with a
//! note when it is absent).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod nvidia;
mod snp;
mod tdx;
mod tpm;

use std::path::PathBuf;

/// The recorded evidence folder: `KEYHAVEN_EVIDENCE_DIR`, else `../shared/attestation-evidence`
/// beside the project.
pub(crate) fn evidence_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KEYHAVEN_EVIDENCE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/attestation-evidence"),
        PathBuf::from,
    );
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "note: no recorded attestation evidence at {} (set KEYHAVEN_EVIDENCE_DIR): skipped",
            dir.display()
        );
        None
    }
}
