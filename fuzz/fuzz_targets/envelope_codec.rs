//! Wrapped KEKs and envelopes (stored bytes anyone with database access can write): parsing
//! never panics, and what parses writes back to the same bytes.
#![no_main]

use keyhaven_envelope::{Envelope, WrappedKek};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = WrappedKek::from_bytes(data) {
        assert_eq!(w.to_bytes(), data);
    }
    if let Ok(e) = Envelope::from_bytes(data) {
        assert_eq!(e.to_bytes(), data);
    }
});
