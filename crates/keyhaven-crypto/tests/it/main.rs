//! keyhaven-crypto integration tests: round trips, Wycheproof vectors, OpenSSL interop.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod jwe;
mod openssl;
mod providers;
mod roundtrip;
mod wycheproof_vectors;

/// Every provider built in: RustCrypto, and aws-lc-rs with its feature.
pub fn providers() -> Vec<&'static keyhaven_crypto::CryptoProvider> {
    #[allow(unused_mut)]
    let mut all = vec![keyhaven_crypto::rustcrypto_provider()];
    #[cfg(feature = "aws-lc-rs")]
    all.push(keyhaven_crypto::aws_lc_provider());
    all
}
