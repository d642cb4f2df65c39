#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod algorithm;
mod error;
mod forward;
mod id;
mod key;
mod secret;
mod signature;
mod store;

pub use algorithm::Algorithm;
pub use error::{Error, Result};
pub use id::{KeyId, normalize_label, validate_label};
pub use key::{Fingerprint, KeyInfo, Protection, PublicKey, unix_now};
pub use secret::SecretBytes;
pub use signature::{Signature, SignatureFormat};
pub use store::{BackendInfo, KeyStore};
