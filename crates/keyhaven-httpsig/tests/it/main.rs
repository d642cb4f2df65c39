//! keyhaven-httpsig against the RFCs' own examples, an independent implementation (the PyPI
//! package `http-message-signatures`), and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod bad_input;
mod interop;
mod rfc;
