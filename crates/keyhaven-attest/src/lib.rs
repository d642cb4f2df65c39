#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod bytes;
mod claims;
mod error;
pub mod nvidia;
mod rsa_pss;
pub mod snp;
pub mod tdx;
pub mod tpm;
mod x509;

pub use claims::{Claims, Trust, TrustVector};
pub use error::{AttestError, Result};
