//! TPM 2.0 evidence from a requester: a `TPMS_ATTEST`, a `TPMT_SIGNATURE` and an attestation
//! key (a `TPM2B_PUBLIC` or a SubjectPublicKeyInfo), all attacker-chosen. Parsing and
//! verification never panic.
#![no_main]

use std::collections::BTreeMap;

use keyhaven_attest::tpm::{self, AkPublic, Evidence, Policy, Quote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    // Two 2-byte lengths: the quote, the signature; the rest is the key's DER.
    let (lens, rest) = data.split_at(data.len().min(4));
    let (a, s) = match lens {
        [a0, a1, s0, s1] => (
            usize::from(u16::from_be_bytes([*a0, *a1])),
            usize::from(u16::from_be_bytes([*s0, *s1])),
        ),
        _ => (0, 0),
    };
    let (attest, rest) = rest.split_at(rest.len().min(a));
    let (signature, ak_public) = rest.split_at(rest.len().min(s));
    let pcrs: BTreeMap<u8, Vec<u8>> = (0..24).map(|i| (i, vec![i; 32])).collect();
    // The key as a TPM2B_PUBLIC, else as a SubjectPublicKeyInfo.
    let Ok(ak) = AkPublic::parse(ak_public).or_else(|_| AkPublic::from_spki(ak_public)) else {
        return;
    };
    let e = Evidence {
        attest,
        signature,
        ak: &ak,
        pcrs: &pcrs,
        activated: None,
    };
    let _ = tpm::verify(&e, &Policy::default(), None);
});
