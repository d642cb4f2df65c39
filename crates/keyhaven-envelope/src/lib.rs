#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod codec;
mod error;
mod hierarchy;
pub mod transit;

pub use error::{EnvelopeError, Result};
pub use hierarchy::{
    Envelope, Kek, KekScope, MAX_PATH_LEN, MAX_TENANT_LEN, MAX_TIER, MasterKey, SecretContext,
    WrappedKek, derive_key,
};
