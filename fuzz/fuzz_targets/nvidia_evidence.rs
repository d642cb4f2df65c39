//! NVIDIA GPU evidence from a requester: SPDM GET_MEASUREMENTS/MEASUREMENTS bytes and a PEM
//! chain, both attacker-chosen. Parsing and verification never panic, and nothing made up
//! verifies (there is no NVIDIA key here to sign with).
#![no_main]

use keyhaven_attest::nvidia::{self, Evidence, Policy, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Report::parse(data);
    // A 2-byte length, the report, the rest the chain's text.
    let (len, rest) = data.split_at(data.len().min(2));
    let n = match len {
        [a, b] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    };
    let (report, chain) = rest.split_at(rest.len().min(n));
    let chain = String::from_utf8_lossy(chain);
    let e = Evidence {
        report,
        chain: &chain,
    };
    assert!(nvidia::verify(&e, &Policy::default(), None, 1_750_000_000).is_err());
});
