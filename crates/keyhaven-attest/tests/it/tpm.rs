//! TPM 2.0: Trustee's recorded quote (an RSA attestation key, 24 SHA-256 PCRs) verifies; a
//! quote from another key, any single flipped byte of the quote or its signature, PCR values
//! other than those quoted, a wrong nonce, or a PCR unlike its reference value are refused
//! with a reason, never a panic.

use std::collections::BTreeMap;

use base64ct::{Base64, Encoding};
use keyhaven_attest::AttestError;
use keyhaven_attest::tpm::{self, AkPublic, Evidence, Policy, Quote};
use proptest::prelude::*;

struct Recorded {
    attest: Vec<u8>,
    signature: Vec<u8>,
    ak: AkPublic,
    ak_der: Vec<u8>,
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
    let ak_der = b64(&v["ak_public"]);
    Some(Recorded {
        attest: b64(&v["tpm_quote"]["message"]),
        signature: b64(&v["tpm_quote"]["signature"]),
        ak: AkPublic::from_spki(&ak_der).unwrap(),
        ak_der,
        pcrs,
    })
}

impl Recorded {
    fn evidence(&self) -> Evidence<'_> {
        Evidence {
            attest: &self.attest,
            signature: &self.signature,
            ak: &self.ak,
            pcrs: &self.pcrs,
            activated: None,
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
    r.ak = AkPublic::from_spki(cert.public_key().raw).unwrap();
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
                    ..r.evidence()
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
            let e = Evidence { attest: &noise, signature: &noise, ..r.evidence() };
            let _ = AkPublic::parse(&noise);
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
    let b64: String = Base64::encode_string(&r.ak_der);
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

/// A live TPM (swtpm, manufactured with an endorsement key certificate from a local CA) driven
/// by tpm2-tools, code nobody here wrote: the verifier checks the EK certificate up to the CA,
/// makes a credential for the attestation key's name that the TPM's `ActivateCredential`
/// opens (and one for another name that it refuses), then verifies a quote of PCRs 0-7 over
/// a fresh nonce against a reference value for PCR 7, affirming the instance and hardware.
/// A quote by another AK, an old nonce or a PCR unlike its reference are refused.
#[test]
fn a_live_tpm_binds_its_attestation_key_by_credential_activation_and_quotes() {
    use keyhaven_attest::tpm::{EndorsementKey, make_credential};
    use keyhaven_testkit::devices::{Swtpm, Tpm2Tools};

    let tpm = Swtpm::start_with_ek_certificate();
    let tools = Tpm2Tools::new(&tpm);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // The endorsement key, from its certificate checked up to the local CA.
    let ek = EndorsementKey::from_certificate(&tpm.ek_certificate(), &tpm.ek_ca(), now).unwrap();
    assert!(
        ek.certified_by.contains("swtpm-localca"),
        "{}",
        ek.certified_by
    );
    // The root alone does not vouch for what its issuer signed; another CA vouches for nothing.
    let root_only = tpm
        .ek_ca()
        .split_inclusive("-----END CERTIFICATE-----\n")
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(EndorsementKey::from_certificate(&tpm.ek_certificate(), &root_only, now).is_err());
    let other = Swtpm::start_with_ek_certificate();
    let e =
        EndorsementKey::from_certificate(&tpm.ek_certificate(), &other.ek_ca(), now).unwrap_err();
    assert!(
        matches!(
            e,
            AttestError::BadSignature { .. } | AttestError::UntrustedRoot(_)
        ),
        "{e}"
    );
    drop(other);
    // A certificate of the CA itself (a CA, no EK usage) is not an endorsement key's.
    let issuer_pem = tpm.ek_ca();
    let b64: String = issuer_pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .unwrap()
        .split("-----END")
        .next()
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let issuer_der = Base64::decode_vec(&b64).unwrap();
    let e = EndorsementKey::from_certificate(&issuer_der, &tpm.ek_ca(), now).unwrap_err();
    assert!(
        e.to_string().contains("not an endorsement key certificate"),
        "{e}"
    );

    // The TPM makes its EK (the certified one) and two AKs under it.
    tools.create_ek();
    let (ak_public, ak_name) = tools.create_ak("ak");
    let (ak2_public, _) = tools.create_ak("ak2");
    let ak = AkPublic::parse(&ak_public).unwrap();
    let ak2 = AkPublic::parse(&ak2_public).unwrap();
    assert_eq!(
        ak.name.as_deref(),
        Some(ak_name.as_slice()),
        "the name the TPM computes"
    );

    // Credential activation: the TPM opens a credential made for this AK's name, and refuses
    // one made for another object's (its HMAC over the name fails).
    let secret = b"keyhaven credential 0123456789ab";
    let activate = |name: &[u8]| {
        let cred = make_credential(&ek, name, secret).unwrap();
        tools.activate_credential("ak", &cred.id_object, &cred.encrypted_secret)
    };
    assert_eq!(activate(ak.name.as_ref().unwrap()).unwrap(), secret);
    assert!(activate(ak2.name.as_ref().unwrap()).is_err());

    // A quote of PCRs 0-7 over a fresh nonce, PCR 7 extended first.
    tools.extend_pcr(7, &[0xab; 32]);
    let indices: Vec<u8> = (0..8).collect();
    let pcrs = tools.read_pcrs(&indices);
    let nonce: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap() ^ 0x5a);
    let mut policy = Policy::default();
    policy.pcrs.insert(7, pcrs[&7].clone());
    let (attest, signature) = tools.quote("ak", &indices, &nonce);
    let e = Evidence {
        attest: &attest,
        signature: &signature,
        ak: &ak,
        pcrs: &pcrs,
        activated: Some(&ek),
    };
    let claims = tpm::verify(&e, &policy, Some(&nonce)).unwrap();
    assert_eq!(
        claims.trust.instance_identity,
        keyhaven_attest::Trust::Affirming
    );
    assert_eq!(claims.trust.hardware, keyhaven_attest::Trust::Affirming);
    assert_eq!(claims.trust.executables, keyhaven_attest::Trust::Affirming);
    assert_eq!(claims.measurements["pcr07"], hex::encode(&pcrs[&7]));
    // An old nonce; a PCR 7 unlike the reference; the quote checked against the other AK.
    assert!(tpm::verify(&e, &policy, Some(&[0u8; 32])).is_err());
    let mut stale = policy.clone();
    stale.pcrs.insert(7, vec![0; 32]);
    assert!(tpm::verify(&e, &stale, Some(&nonce)).is_err());
    let by_other = Evidence { ak: &ak2, ..e };
    assert!(matches!(
        tpm::verify(&by_other, &policy, Some(&nonce)),
        Err(AttestError::BadSignature { .. })
    ));
}

/// `TPM2_Certify` made by tpm2-tools (code nobody here wrote) on a live swtpm: a key made in
/// the TPM, certified by an attestation key, verifies, and names that key's point;
/// another nonce, another key's public area, a key made outside the TPM and every flipped byte
/// of the certification are refused.
#[test]
fn a_tpm_certification_by_tpm2_tools_verifies_and_every_change_is_refused() {
    use keyhaven_attest::tpm::{AkPublic, Certification, verify_certification};
    use keyhaven_testkit::devices::{Swtpm, Tpm2Tools};

    let tpm = Swtpm::start();
    let tools = Tpm2Tools::new(&tpm);
    tools.create_ek();
    let (ak_public, _) = tools.create_ak("ak");
    let ak = AkPublic::parse(&ak_public).unwrap();
    let key_public = tools.create_key("k");
    let other_public = tools.create_key("other");
    // tpm2_certify's qualifying data is fixed: 00ff55aa (keyhaven's backend binds a challenge
    // there).
    let nonce = [0x00u8, 0xff, 0x55, 0xaa];
    let (info, sig) = tools.certify("k", "ak");
    let check = |info: &[u8], sig: &[u8], key: &[u8], nonce: &[u8]| {
        verify_certification(
            &Certification {
                certify_info: info,
                signature: sig,
                ak: &ak,
                key_public: key,
            },
            Some(nonce),
        )
    };
    let certified = check(&info, &sig, &key_public, &nonce).unwrap();
    assert_eq!(certified.curve, "P-256");
    assert!(certified.signs);
    assert_eq!(certified.certified_by, hex::encode(ak.digest));
    // The point is the key's, as tpm2-tools reads it back.
    let spki = tools.spki("k");
    assert!(
        spki.ends_with(&certified.point),
        "the certified point is the key's"
    );

    let e = check(&info, &sig, &key_public, &[0u8; 32]).unwrap_err();
    assert!(e.to_string().contains("another challenge"), "{e}");
    let e = check(&info, &sig, &other_public, &nonce).unwrap_err();
    assert!(e.to_string().contains("names another object"), "{e}");
    for i in 0..info.len() {
        let mut changed = info.clone();
        changed[i] ^= 0x11;
        assert!(
            check(&changed, &sig, &key_public, &nonce).is_err(),
            "byte {i} of the certification"
        );
    }
    for i in 0..sig.len() {
        let mut changed = sig.clone();
        changed[i] ^= 0x11;
        assert!(
            check(&info, &changed, &key_public, &nonce).is_err(),
            "byte {i} of the signature"
        );
    }
    // A key made outside the TPM and loaded into it (sensitiveDataOrigin clear) is not one
    // the TPM can vouch was born inside it.
    let outside = std::process::Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(tools.dir().join("outside.pem"))
        .status()
        .unwrap();
    assert!(outside.success());
    tools.must(&[
        "tpm2_loadexternal",
        "-C",
        "n",
        "-G",
        "ecc",
        "-r",
        "outside.pem",
        "-c",
        "outside.ctx",
    ]);
    tools.must(&["tpm2_readpublic", "-c", "outside.ctx", "-o", "outside.pub"]);
    let outside_public = tools.read("outside.pub");
    let (info, sig) = tools.certify("outside", "ak");
    let e = check(&info, &sig, &outside_public, &nonce).unwrap_err();
    assert!(e.to_string().contains("not made in the TPM"), "{e}");
}
