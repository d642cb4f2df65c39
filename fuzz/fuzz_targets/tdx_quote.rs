//! Intel TDX evidence from a requester: a quote and the DCAP collateral beside it, both
//! attacker-chosen. Parsing and verification never panic, and nothing made up verifies (there
//! is no Intel key here to sign with).
#![no_main]

use keyhaven_attest::tdx::{self, Collateral, Policy, Quote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    // A 2-byte length, that many bytes of quote, the rest the collateral's JSON.
    let (len, rest) = data.split_at(data.len().min(2));
    let n = match len {
        [a, b] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    };
    let (quote, collateral) = rest.split_at(rest.len().min(n));
    if let Ok(collateral) = Collateral::from_json(&String::from_utf8_lossy(collateral)) {
        assert!(tdx::verify(quote, &collateral, &Policy::default(), None, 1_790_000_000).is_err());
    }
});
