//! SEV-SNP evidence from a requester: a report, a VCEK certificate and a PEM chain, all
//! attacker-chosen. Parsing and verification never panic, and nothing made up verifies
//! (there is no AMD key here to sign with).
#![no_main]

use keyhaven_attest::snp::{self, Evidence, Policy, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Report::parse(data);
    // The first 1184 bytes are the report, then a 2-byte length and the VCEK, the rest the
    // chain's text.
    let (report, rest) = data.split_at(data.len().min(snp::REPORT_LEN));
    let (len, rest) = rest.split_at(rest.len().min(2));
    let n = match len {
        [a, b] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    };
    let (vcek, chain) = rest.split_at(rest.len().min(n));
    let chain = String::from_utf8_lossy(chain);
    let e = Evidence {
        report,
        vcek,
        chain: &chain,
    };
    assert!(snp::verify(&e, &Policy::default(), None, 1_780_000_000).is_err());
});
