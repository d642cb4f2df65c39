#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod agent;
mod client;
mod error;
pub mod secrets;
mod signer;
pub mod tokens;
mod transit;
pub mod wire;

pub use client::{
    Client, MAX_RESPONSE_BYTES, RequestSignature, SignedResponse, discover, discover_trusting,
    origin_of, sign_request,
};
pub use error::{ClientError, Result};
pub use signer::{RequestSigner, StoreSigner};
