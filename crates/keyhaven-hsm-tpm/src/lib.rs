#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod counter;
mod device;
mod error;
mod files;
mod report;
mod store;

/// The storage primary key template the store uses (for tools and the raw-baseline bench that
/// must create the very same primary key).
#[doc(hidden)]
pub use device::srk_template;

pub use config::{KeyOptions, PcrBank, PcrPolicy, PersistentHandle, StorageKey, Tcti, TpmConfig};
pub use counter::NvCounter;
pub use error::{TpmError, TpmRc};
pub use report::TpmReport;
pub use store::{LoadedKeys, TpmKeyDetails, TpmStore};
