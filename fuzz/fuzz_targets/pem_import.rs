//! PEM / PKCS#8 import, as `keyhaven key import` does it: PEM decoding (plain, encrypted,
//! SEC1), then PKCS#8 loading, then public key parsing. Never panics.
#![no_main]

use keyhaven_crypto::{default_provider, hazmat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = default_provider().load_pkcs8(data);
        let _ = default_provider().parse_public_key_der(data);
        return;
    };
    if let Ok(der) = hazmat::private_key_pem_to_pkcs8(text, Some(b"fuzz")) {
        if let Ok(key) = default_provider().load_pkcs8(der.expose_secret()) {
            // a loaded key's public key always parses back
            default_provider()
                .parse_public_key_der(key.public_key().spki_der())
                .expect("own public key parses");
        }
    }
    let _ = default_provider().parse_public_key_pem(text);
});
