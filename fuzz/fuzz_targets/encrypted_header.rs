//! The encrypted store's header parser: never panics, and never accepts KDF parameters outside
//! the bounds that keep opening a store cheap enough (a tampered header must not be a DoS).
#![no_main]

use keyhaven_store_file::format::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = Header::parse(data) {
        let k = &parsed.header.kdf;
        assert!(k.m_cost_kib <= 4 * 1024 * 1024 && k.t_cost <= 64 && k.p_cost <= 64);
        assert!((16..=64).contains(&parsed.salt.len()));
        let _ = parsed.header.kek_aad();
    }
});
