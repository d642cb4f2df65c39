#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod error;
mod keys;
mod module;
mod pool;
mod report;
mod secret;
mod store;

use std::path::PathBuf;

pub use config::{DEFAULT_MAX_SESSIONS, Pkcs11Config, TokenSelector, pin_from_env, pin_from_file};
pub use error::{Ckr, Pkcs11Error};
pub use report::{MechanismCheck, TokenReport};
pub use secret::SECRET_KEY_LABEL;
pub use store::Pkcs11Store;

/// Where Debian and Ubuntu install SoftHSM2's module (`apt-get install softhsm2`).
pub const SOFTHSM_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The first of [`SOFTHSM_MODULE_PATHS`] that exists, if any.
pub fn softhsm_module() -> Option<PathBuf> {
    SOFTHSM_MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}
