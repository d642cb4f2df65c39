//! keyhaven-server's tests: a real server on loopback, real clients, real SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod broker;
mod flow;
mod interop;
mod pg;
mod secrets;
mod storage;
mod support;
mod tamper;
mod tls;
mod tokens;
mod tpm;
mod vault;
