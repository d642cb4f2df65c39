//! The revocation list parser (`keyhaven verify --revocations FILE` reads lists from anywhere):
//! never panics; an accepted list re-serializes to the same list; verifying it against the key
//! it carries never panics either.
#![no_main]

use keyhaven_compromise::RevocationList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = RevocationList::parse(data) {
        let text = list.to_json().expect("an accepted list encodes");
        let again = RevocationList::parse(text.as_bytes()).expect("round trip");
        assert_eq!(again, list);
        if let Ok(key) = list.issuer_key() {
            let _ = list.verify(&key);
        }
        let _ = list.verify_pinned("0123456789abcdef");
    }
});
