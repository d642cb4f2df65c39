//! A TPM key certification from an assertion (`keyhaven verify --assertion`): a
//! `TPMS_ATTEST` of type certify, its `TPMT_SIGNATURE`, the attestation key's `TPM2B_PUBLIC`
//! and the certified key's `TPM2B_PUBLIC`, all attacker-chosen. Parsing and verification
//! never panic.
#![no_main]

use keyhaven_attest::tpm::{AkPublic, Certification, verify_certification};
use libfuzzer_sys::fuzz_target;

/// Splits `data` at a 2-byte big-endian length.
fn take(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [a, b, rest @ ..] => {
            rest.split_at(rest.len().min(usize::from(u16::from_be_bytes([*a, *b]))))
        }
        _ => (&[], &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (info, rest) = take(data);
    let (signature, rest) = take(rest);
    let (ak_public, key_public) = take(rest);
    let Ok(ak) = AkPublic::parse(ak_public) else {
        return;
    };
    let c = Certification {
        certify_info: info,
        signature,
        ak: &ak,
        key_public,
    };
    let _ = verify_certification(&c, None);
    let _ = verify_certification(&c, Some(&[0x42; 32]));
});
