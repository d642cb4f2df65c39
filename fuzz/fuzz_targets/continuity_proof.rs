//! The continuity proof parser: never panics; whatever it accepts re-encodes to the same text
//! and parses back equal; chain verification of accepted input never panics.
#![no_main]

use keyhaven_core::{Algorithm, PublicKey};
use keyhaven_rotation::{ContinuityProof, verify_chain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(chain) = ContinuityProof::parse_chain(text) {
        for p in &chain {
            let again = ContinuityProof::parse(&p.to_text()).expect("round trip");
            assert_eq!(&again, p);
        }
        let first = PublicKey::new(Algorithm::Ed25519, chain[0].new_spki.clone());
        let _ = verify_chain(&first, &chain);
    }
});
