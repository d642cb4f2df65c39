//! keyhaven-hsm-pkcs11 against real SoftHSM2 tokens: the conformance suite, interop with
//! `pkcs11-tool`, `softhsm2-util` and `openssl`, bad input, and the session pool.
//!
//! Each test gets its own token (see `token.rs` for why and how); run them with
//! `cargo xtask test -p keyhaven-hsm-pkcs11`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod bad_input;
mod conformance;
mod interop;
mod review_fixes;
mod secret;
mod sessions;
mod token;
