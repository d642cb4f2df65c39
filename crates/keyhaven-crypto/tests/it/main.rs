//! keyhaven-crypto integration tests: round trips, Wycheproof vectors, OpenSSL interop.

mod openssl;
mod roundtrip;
mod wycheproof_vectors;
