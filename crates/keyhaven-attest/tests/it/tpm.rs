//! TPM 2.0: Trustee's recorded quote (an RSA attestation key, 24 SHA-256 PCRs) verifies; a
//! quote from another key, any single flipped byte of the quote or its signature, PCR values
//! other than those quoted, a wrong nonce, or a PCR unlike its reference value are refused
//! with a reason, never a panic.

use std::collections::BTreeMap;

use base64ct::{Base64, Encoding};
use keyhaven_attest::AttestError;
use keyhaven_attest::tpm::{self, Evidence, Policy, Quote};
use proptest::prelude::*;

struct Recorded {
    attest: Vec<u8>,
    signature: Vec<u8>,
    ak: Vec<u8>,
    pcrs: BTreeMap<u8, Vec<u8>>,
}

fn recorded() -> Option<Recorded> {
    let dir = crate::evidence_dir()?.join("trustee/tpm");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tpm_evidence.json")).unwrap()).unwrap();
    let b64 = |s: &serde_json::Value| Base64::decode_vec(s.as_str().unwrap()).unwrap();
    let pcrs = v["tpm_quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, h)| (i as u8, hex::decode(h.as_str().unwrap()).unwrap()))
        .collect();
    Some(Recorded {
        attest: b64(&v["tpm_quote"]["message"]),
        signature: b64(&v["tpm_quote"]["signature"]),
        ak: b64(&v["ak_public"]),
        pcrs,
    })
}

impl Recorded {
    fn evidence(&self) -> Evidence<'_> {
        Evidence {
            attest: &self.attest,
            signature: &self.signature,
            ak_public: &self.ak,
            pcrs: &self.pcrs,
        }
    }
}

#[test]
fn the_recorded_quote_verifies_with_its_nonce_and_pcrs() {
    let Some(r) = recorded() else { return };
    let quote = Quote::parse(&r.attest).unwrap();
    assert_eq!(quote.pcrs, (0..24).collect::<Vec<u8>>());
    let claims = tpm::verify(&r.evidence(), &Policy::default(), Some(quote.extra_data)).unwrap();
    assert_eq!(claims.platform, "tpm");
    assert_eq!(claims.report_data, hex::encode(quote.extra_data));
    assert_eq!(claims.measurements.len(), 24);
    assert_eq!(claims.trust.instance_identity, keyhaven_attest::Trust::None);

    // Reference values: met, or not.
    let mut policy = Policy::default();
    policy.pcrs.insert(0, r.pcrs[&0].clone());
    let claims = tpm::verify(&r.evidence(), &policy, None).unwrap();
    assert_eq!(claims.trust.executables, keyhaven_attest::Trust::Affirming);
    policy.pcrs.insert(7, vec![0xaa; 32]);
    let e = tpm::verify(&r.evidence(), &policy, None).unwrap_err();
    assert!(e.to_string().contains("PCR 7"), "{e}");

    // Another nonce.
    let e = tpm::verify(&r.evidence(), &Policy::default(), Some(&[0u8; 64])).unwrap_err();
    assert!(e.to_string().contains("another nonce"), "{e}");
}

#[test]
fn pcr_values_other_than_the_quoted_ones_are_refused() {
    let Some(mut r) = recorded() else { return };
    r.pcrs.get_mut(&10).unwrap()[0] ^= 1;
    let e = tpm::verify(&r.evidence(), &Policy::default(), None).unwrap_err();
    assert!(e.to_string().contains("not the ones the TPM quoted"), "{e}");
    r.pcrs.remove(&10);
    let e = tpm::verify(&r.evidence(), &Policy::default(), None).unwrap_err();
    assert!(matches!(e, AttestError::Malformed { .. }), "{e}");
}

#[test]
fn a_quote_from_another_key_is_refused() {
    let Some(mut r) = recorded() else { return };
    // AMD's Milan ARK: an RSA key, but not this TPM's AK.
    let dir = crate::evidence_dir().unwrap().join("trustee/snp");
    let pem = std::fs::read_to_string(dir.join("milan_ask_ark_asvk.pem")).unwrap();
    let b64: String = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(2)
        .unwrap()
        .split("-----END")
        .next()
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = Base64::decode_vec(&b64).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    r.ak = cert.public_key().raw.to_vec();
    let e = tpm::verify(&r.evidence(), &Policy::default(), None).unwrap_err();
    assert!(matches!(e, AttestError::BadSignature { .. }), "{e}");
}

#[test]
fn every_single_flipped_byte_of_the_quote_or_its_signature_is_refused() {
    let Some(r) = recorded() else { return };
    for part in 0..2 {
        let len = if part == 0 {
            r.attest.len()
        } else {
            r.signature.len()
        };
        for i in 0..len {
            for bit in [0x01u8, 0x80] {
                let (mut attest, mut signature) = (r.attest.clone(), r.signature.clone());
                if part == 0 {
                    attest[i] ^= bit;
                } else {
                    signature[i] ^= bit;
                }
                let e = Evidence {
                    attest: &attest,
                    signature: &signature,
                    ak_public: &r.ak,
                    pcrs: &r.pcrs,
                };
                assert!(
                    tpm::verify(&e, &Policy::default(), None).is_err(),
                    "part {part} byte {i} ^ {bit:#x} was accepted"
                );
            }
        }
    }
}

proptest! {
    /// Arbitrary bytes, and the recorded quote cut anywhere, are refused without a panic.
    #[test]
    fn arbitrary_quotes_are_refused_without_panicking(
        noise in proptest::collection::vec(any::<u8>(), 0..400),
        cut in 0usize..177,
    ) {
        let _ = Quote::parse(&noise);
        if let Some(r) = recorded() {
            prop_assert!(Quote::parse(&r.attest[..cut]).is_err());
            let e = Evidence { attest: &noise, signature: &noise, ak_public: &r.ak, pcrs: &r.pcrs };
            prop_assert!(tpm::verify(&e, &Policy::default(), None).is_err());
        }
    }
}

/// tpm2-tools' `tpm2_checkquote`, written by others, agrees: it accepts the recorded quote with
/// its nonce, and refuses it with a byte of the quote changed or with another nonce, as ours
/// does. (Installed by `cargo xtask test`.)
#[test]
fn tpm2_checkquote_agrees_on_the_recorded_quote() {
    let Some(r) = recorded() else { return };
    let dir = tempfile::tempdir().unwrap();
    let b64: String = Base64::encode_string(&r.ak);
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
    std::fs::write(dir.path().join("ak.pem"), pem).unwrap();
    std::fs::write(dir.path().join("sig.bin"), &r.signature).unwrap();
    let nonce = hex::encode(Quote::parse(&r.attest).unwrap().extra_data);
    let theirs = |attest: &[u8], nonce: &str| {
        std::fs::write(dir.path().join("quote.bin"), attest).unwrap();
        std::process::Command::new("tpm2_checkquote")
            .current_dir(dir.path())
            .args([
                "-u",
                "ak.pem",
                "-m",
                "quote.bin",
                "-s",
                "sig.bin",
                "-g",
                "sha256",
                "-q",
            ])
            .arg(nonce)
            .output()
            .unwrap_or_else(|e| {
                panic!("tpm2_checkquote ({e}): install tpm2-tools, or run `cargo xtask test`")
            })
            .status
            .success()
    };
    let ours = |attest: &[u8], nonce: &str| {
        let e = Evidence {
            attest,
            ..r.evidence()
        };
        tpm::verify(&e, &Policy::default(), Some(&hex::decode(nonce).unwrap())).is_ok()
    };
    assert!(theirs(&r.attest, &nonce) && ours(&r.attest, &nonce));
    let mut changed = r.attest.clone();
    changed[100] ^= 1;
    assert!(!theirs(&changed, &nonce) && !ours(&changed, &nonce));
    let other = "00".repeat(64);
    assert!(!theirs(&r.attest, &other) && !ours(&r.attest, &other));
}
