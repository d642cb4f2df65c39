#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod algorithm;
mod attestation;
mod error;
mod forward;
mod id;
mod key;
mod secret;
mod signature;
mod spec;
mod store;

pub use algorithm::Algorithm;
pub use attestation::KeyAttestation;
pub use error::{Error, ErrorKind, OtherError, Result};
pub use id::{KeyId, is_invisible_format, normalize_label, validate_label};
pub use key::{
    Fingerprint, KeyInfo, LAST_RFC3339_TIME, Protection, PublicKey, now, rfc3339, unix_now,
};
/// The secret string type of key passphrases ([`KeyStore::unlock`], [`KeySpec::secret_option`]).
pub use secrecy::SecretString;
pub use secret::SecretBytes;
pub use signature::{Signature, SignatureFormat};
pub use spec::{KeyDetails, KeyOptions, KeySpec};
pub use store::{BackendInfo, KeyStore};
