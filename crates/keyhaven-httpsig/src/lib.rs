#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod base;
mod digest;
mod error;
mod message;
pub mod sfv;
mod signature;

pub use base::{Component, signature_base};
pub use digest::{DigestAlgorithm, check_content_digest, content_digest};
pub use error::{HttpSigError, Result};
pub use message::{Message, Request, Response};
pub use signature::{
    SignatureHeaders, SignatureSpec, Verified, VerifyPolicy, algorithm_name, sign, sign_request,
    sign_response, sign_with, verify,
};
