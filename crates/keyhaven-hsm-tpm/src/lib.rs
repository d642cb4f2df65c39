#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod device;
mod error;
mod files;
mod report;
mod store;

pub use config::{KeyOptions, PcrBank, PcrPolicy, PersistentHandle, StorageKey, Tcti, TpmConfig};
pub use error::{TpmError, TpmRc};
pub use report::TpmReport;
pub use store::{LoadedKeys, TpmKeyDetails, TpmStore};
