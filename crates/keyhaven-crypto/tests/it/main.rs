//! keyhaven-crypto integration tests: round trips, Wycheproof vectors, OpenSSL interop.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod openssl;
mod roundtrip;
mod wycheproof_vectors;
