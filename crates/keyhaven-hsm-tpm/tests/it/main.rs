//! keyhaven-hsm-tpm against real swtpm instances: the conformance suite, interop with
//! `tpm2-tools` and `openssl`, bad input, and the TPM's lifecycle (restart, LRU, persistence).
//!
//! Each test starts its own swtpm (see `swtpm.rs`); run them with
//! `cargo xtask test -p keyhaven-hsm-tpm`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod bad_input;
mod conformance;
mod counter;
mod interop;
mod lifecycle;
mod review_fixes;
mod swtpm;
