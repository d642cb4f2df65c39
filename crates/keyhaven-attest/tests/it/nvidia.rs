//! NVIDIA Hopper: the recorded SPDM measurements verify with the GPU's real certificate chain
//! up to NVIDIA's root; every flipped byte, the recorded broken chains, a wrong nonce and a
//! measurement the policy does not accept are refused.

use std::collections::BTreeMap;

use keyhaven_attest::nvidia::{self, Evidence, Policy, Report};
use keyhaven_attest::{AttestError, Trust};

const NOW: u64 = 1_750_000_000;

struct Recorded {
    report: Vec<u8>,
    chains: [String; 4],
    claims: serde_json::Value,
}

fn recorded() -> Option<Recorded> {
    let dir = crate::evidence_dir()?.join("trustee/nvidia");
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    Some(Recorded {
        report: hex::decode(text("hopperAttestationReport.txt").trim()).unwrap(),
        chains: [1, 2, 3, 4].map(|i| text(&format!("hopper_cert_chain_case{i}.txt"))),
        claims: serde_json::from_str(&text("hopperAttestationReport-claims.txt")).unwrap(),
    })
}

#[test]
fn the_recorded_hopper_measurements_verify_up_to_nvidias_root() {
    let Some(r) = recorded() else { return };
    let parsed = Report::parse(&r.report).unwrap();
    let e = Evidence {
        report: &r.report,
        chain: &r.chains[0],
    };
    let claims = nvidia::verify(&e, &Policy::default(), Some(&parsed.nonce), NOW).unwrap();
    assert_eq!(
        (claims.platform, claims.product.as_str()),
        ("nvidia-gpu", "Hopper")
    );
    assert_eq!(claims.signed_by, "GH100 A01 GSP FMC LF");
    // Every measurement, and the opaque fields, as NVIDIA's own parse of this report says.
    let expected = &r.claims["measurements"];
    for (index, value) in expected.as_object().unwrap() {
        let got = claims.measurements.get(index).map(String::as_str);
        let zero = value.as_str().unwrap().bytes().all(|b| b == b'0');
        assert!(
            got == value.as_str() || (got.is_none() && zero),
            "measurement {index}: {got:?} vs {value}"
        );
    }
    let config = &r.claims["config"];
    for name in [
        "driver_version",
        "vbios_version",
        "chip_sku",
        "project",
        "fwid",
    ] {
        assert_eq!(
            claims.measurements[name],
            config[name].as_str().unwrap(),
            "{name}"
        );
    }
    assert_eq!(claims.trust.instance_identity, Trust::Affirming);
}

#[test]
fn every_single_flipped_byte_and_the_broken_chains_are_refused() {
    let Some(r) = recorded() else { return };
    for i in 0..r.report.len() {
        let mut changed = r.report.clone();
        changed[i] ^= 0x01;
        let e = Evidence {
            report: &changed,
            chain: &r.chains[0],
        };
        assert!(
            nvidia::verify(&e, &Policy::default(), None, NOW).is_err(),
            "byte {i} flipped was accepted"
        );
    }
    for (case, why) in [(1, "Malformed"), (2, "BadSignature"), (3, "BadSignature")] {
        let e = Evidence {
            report: &r.report,
            chain: &r.chains[case],
        };
        let err = nvidia::verify(&e, &Policy::default(), None, NOW).unwrap_err();
        assert!(
            format!("{err:?}").starts_with(why),
            "case {}: {err}",
            case + 1
        );
    }
}

/// A report signed by a key of our own, its certificate self-signed (made by `openssl`): the
/// SPDM layout is right and the signature verifies, yet the root is not NVIDIA's: refused,
/// unless the policy pins that root too.
#[test]
fn a_chain_that_does_not_end_in_nvidias_root_is_refused_unless_pinned() {
    use sha2::Digest;
    use signature::Signer;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        "k.pem",
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "k.pem",
        "-subj",
        "/CN=not NVIDIA",
        "-days",
        "2",
        "-sha384",
        "-out",
        "c.pem",
    ]);
    let pem = std::fs::read_to_string(dir.path().join("k.pem")).unwrap();
    let key =
        <p384::ecdsa::SigningKey as p384::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem).unwrap();
    let cert = std::fs::read_to_string(dir.path().join("c.pem")).unwrap();
    let nonce = [7u8; 32];
    let mut report = vec![0x11, 0xE0, 0x01, 0xFF];
    report.extend_from_slice(&nonce);
    report.push(0);
    report.extend_from_slice(&[0x11, 0x60, 0, 0, 1, 55, 0, 0]);
    report.extend_from_slice(&[1, 1, 51, 0, 1, 48, 0]);
    report.extend_from_slice(&[0xAB; 48]);
    report.extend_from_slice(&[3u8; 32]);
    report.extend_from_slice(&[0, 0]);
    let sig: p384::ecdsa::Signature = key.sign(&report);
    report.extend_from_slice(&sig.to_bytes());
    let chain = format!("{cert}{cert}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let e = Evidence {
        report: &report,
        chain: &chain,
    };
    let err = nvidia::verify(&e, &Policy::default(), Some(&nonce), now).unwrap_err();
    assert!(matches!(err, AttestError::UntrustedRoot(_)), "{err}");
    let der = x509_der(&cert);
    let (_, parsed) =
        <x509_parser::prelude::X509Certificate<'_> as x509_parser::prelude::FromDer<
            x509_parser::error::X509Error,
        >>::from_der(&der)
        .unwrap();
    let digest: [u8; 32] = sha2::Sha256::digest(parsed.public_key().raw).into();
    let pinned = Policy {
        extra_roots: vec![digest],
        ..Policy::default()
    };
    let claims = nvidia::verify(&e, &pinned, Some(&nonce), now).unwrap();
    assert_eq!(claims.measurements["1"], hex::encode([0xAB; 48]));
}

fn x509_der(pem: &str) -> Vec<u8> {
    use base64ct::Encoding;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64ct::Base64::decode_vec(&body).unwrap()
}

#[test]
fn a_wrong_nonce_or_measurement_is_refused_and_a_right_one_affirms() {
    let Some(r) = recorded() else { return };
    let e = Evidence {
        report: &r.report,
        chain: &r.chains[0],
    };
    let err = nvidia::verify(&e, &Policy::default(), Some(&[9u8; 32]), NOW).unwrap_err();
    assert!(
        matches!(err, AttestError::Policy(_)) && err.to_string().contains("nonce"),
        "{err}"
    );
    let parsed = Report::parse(&r.report).unwrap();
    let two = parsed.measurements[&2].to_vec();
    let wrong = Policy {
        measurements: BTreeMap::from([(2, vec![0u8; 48])]),
        ..Policy::default()
    };
    let err = nvidia::verify(&e, &wrong, None, NOW).unwrap_err();
    assert!(err.to_string().contains("measurement 2"), "{err}");
    let right = Policy {
        measurements: BTreeMap::from([(2, two)]),
        ..Policy::default()
    };
    let claims = nvidia::verify(&e, &right, None, NOW).unwrap();
    assert_eq!(claims.trust.executables, Trust::Affirming);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Any bytes and any chain text: refused, never a panic.
    #[test]
    fn arbitrary_gpu_evidence_is_refused_without_panicking(
        report in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        chain in ".{0,200}",
    ) {
        let e = Evidence { report: &report, chain: &chain };
        proptest::prop_assert!(nvidia::verify(&e, &Policy::default(), None, NOW).is_err());
    }
}
