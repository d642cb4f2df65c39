//! Compact JWEs and JWKs from a network peer (a release response, a requester's ephemeral
//! key): parsing never panics, and nothing decrypts without the recipient's key.
#![no_main]

use std::sync::OnceLock;

use keyhaven_core::Algorithm;
use keyhaven_crypto::{PrivateKey, default_provider, jwe};
use libfuzzer_sys::fuzz_target;

fn recipient() -> &'static dyn PrivateKey {
    static KEY: OnceLock<Box<dyn PrivateKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        default_provider()
            .generate(Algorithm::EcdhP256)
            .expect("a P-256 key")
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Made for another key (or not a JWE at all): it must not decrypt.
        assert!(jwe::decrypt(text, recipient()).is_err());
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(key) = jwe::public_key_from_jwk(&value) {
            assert_eq!(
                jwe::public_key_from_jwk(&jwe::public_jwk(&key).expect("jwk")).expect("parse"),
                key
            );
        }
    }
});
