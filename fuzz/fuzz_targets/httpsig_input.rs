//! The parsers of untrusted HTTP signature fields: `Signature-Input`, `Signature` and
//! `Content-Digest` as structured-field dictionaries, and a whole verification of a request
//! carrying them. Never panics; a dictionary it accepts serializes to text that parses back to
//! the same dictionary.
#![no_main]

use keyhaven_core::{Algorithm, PublicKey};
use keyhaven_httpsig::{Message, Request, VerifyPolicy, check_content_digest, sfv, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(dict) = sfv::parse_dictionary(text) {
        let again = sfv::write_dictionary(&dict);
        let back = sfv::parse_dictionary(&again).expect("a serialized dictionary parses");
        assert_eq!(back, dict);
    }
    let _ = check_content_digest(text, b"body");
    // Split the input into the two fields and verify against a fixed key: any outcome but a
    // panic is fine.
    let (input, signature) = text.split_once('\n').unwrap_or((text, "sig1=:AAAA:"));
    let Ok(request) = Request::new("POST", "https://example.com/path?q=1") else {
        return;
    };
    let request = request
        .header("Content-Type", "application/json")
        .header("Signature-Input", input)
        .header("Signature", signature);
    let key = PublicKey::new(Algorithm::Ed25519, vec![0; 44]);
    let _ = verify(
        Message::Request(&request),
        None,
        &VerifyPolicy::at(1_700_000_000).max_age(None),
        &mut |_| Ok(Some(key.clone())),
    );
});
