#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod error;
mod store;
mod vault;

pub use error::KeyringError;
pub use store::{KdfCost, Keyring, KeyringConfig, KeyringStore, probe};
pub use vault::KeyringStatus;
#[cfg(target_os = "linux")]
pub use vault::kernel::KernelKeyring;
