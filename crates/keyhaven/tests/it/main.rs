//! Integration tests of the keyhaven facade: configuration, fallback, key resolution,
//! operations through the manager on every compiled backend (hardware ones on SoftHSM2 and
//! swtpm).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "memory")]
mod backup;
#[cfg(feature = "file")]
mod concurrency;
mod config;
#[cfg(feature = "file")]
mod conformance;
#[cfg(feature = "file")]
mod fallback;
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
mod hardware;
#[cfg(feature = "file")]
mod lifecycle;
#[cfg(feature = "memory")]
mod ops;
#[cfg(feature = "memory")]
mod resolve;

/// A temporary directory only its owner may use (`tempfile` creates them 0755 under the usual
/// umask): a keyhaven home must be private.
#[cfg(any(
    feature = "file",
    feature = "memory",
    feature = "pkcs11",
    feature = "tpm"
))]
pub(crate) fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}
