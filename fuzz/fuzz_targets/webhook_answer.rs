//! The head of a webhook receiver's answer (status line and fields, from the network): never
//! panics, and a head it accepts has a status in 100-599 and fits in the bytes given.
#![no_main]

use keyhaven_compromise::webhook::parse_answer_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_answer_head(data) {
        assert!((100..600).contains(&head.status));
        assert!(head.len <= data.len());
        assert!(head.line.chars().count() <= 120);
    }
});
