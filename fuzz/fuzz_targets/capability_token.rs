//! Capability tokens as a request carries them (`Authorization: Bearer kht_...`, any bytes a
//! peer sends): reading, inspecting, attenuating and verifying never panic, and nothing that
//! was not signed by the root key verifies.
#![no_main]

use std::sync::OnceLock;

use keyhaven_client::tokens::{self, Attenuation};
use libfuzzer_sys::fuzz_target;

fn root() -> &'static biscuit_auth::KeyPair {
    static ROOT: OnceLock<biscuit_auth::KeyPair> = OnceLock::new();
    ROOT.get_or_init(biscuit_auth::KeyPair::new)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let token = if text.starts_with(tokens::PREFIX) {
        text.to_owned()
    } else {
        format!("{}{text}", tokens::PREFIX)
    };
    if let Ok(unverified) = tokens::parse(&token) {
        // Made by another root, or not made at all: it never verifies here.
        assert!(unverified.verify(root().public()).is_err());
    }
    let _ = tokens::inspect(&token);
    let _ = tokens::attenuate(
        &token,
        &Attenuation {
            prefix: Some("a/".into()),
            ..Attenuation::default()
        },
    );
});
