//! keyhaven-store-file: both stores run the conformance suite, plus file-level behaviour:
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]
//! OpenSSL reads the PEM store, the encrypted store holds no key in the clear, bad input leaves
//! the store as it was, and concurrent or killed processes lose nothing.

mod common;
mod encrypted;
mod pem;
mod processes;
