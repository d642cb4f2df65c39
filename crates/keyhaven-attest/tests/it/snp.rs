//! SEV-SNP: the recorded VCEK- and VLEK-signed reports verify through AMD's real chains; every
//! single flipped byte, a swapped chain, an unpinned root, a wrong nonce, an expired
//! certificate and a policy that asks for more are refused with a reason.

use keyhaven_attest::snp::{self, Evidence, Policy, Report, TcbVersion};
use keyhaven_attest::{AttestError, Trust};

/// 2025-06-15: within every recorded certificate's validity (the VLEK is valid for one year).
const NOW: u64 = 1_750_000_000;

struct Recorded {
    report: Vec<u8>,
    vcek: Vec<u8>,
    vlek_report: Vec<u8>,
    vlek: Vec<u8>,
    milan: String,
    genoa: String,
    invalid_vceks: Vec<Vec<u8>>,
}

fn recorded() -> Option<Recorded> {
    let dir = crate::evidence_dir()?.join("trustee/snp");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    Some(Recorded {
        report: read("test-report.bin"),
        vcek: read("test-vcek.der"),
        vlek_report: read("test-vlek-report.bin"),
        vlek: read("test-vlek.der"),
        milan: text("milan_ask_ark_asvk.pem"),
        genoa: text("genoa_ask_ark_asvk.pem"),
        invalid_vceks: vec![
            read("test-vcek-invalid-legacy.der"),
            read("test-vcek-invalid-new.der"),
        ],
    })
}

fn report_data(report: &[u8]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd.copy_from_slice(&report[0x50..0x90]);
    rd
}

#[test]
fn recorded_vcek_and_vlek_reports_verify_through_amds_chain() {
    let Some(r) = recorded() else { return };
    let e = Evidence {
        report: &r.report,
        vcek: &r.vcek,
        chain: &r.milan,
    };
    let claims = snp::verify(&e, &Policy::default(), Some(&report_data(&r.report)), NOW).unwrap();
    assert_eq!(
        (
            claims.platform,
            claims.product.as_str(),
            claims.signed_by.as_str()
        ),
        ("sev-snp", "Milan", "VCEK")
    );
    assert!(!claims.debug);
    assert_eq!(claims.report_data, hex::encode(report_data(&r.report)));
    assert_eq!(
        claims.measurements["measurement"],
        hex::encode(&r.report[0x90..0xC0])
    );
    assert_eq!(claims.tcb["bootloader"], 3);
    assert_eq!(claims.tcb["microcode"], 0x73);
    assert_eq!(claims.trust.instance_identity, Trust::Affirming);
    assert_eq!(
        claims.trust.executables,
        Trust::None,
        "no reference values given"
    );
    // The claims serialise for the broker's audit and receipts.
    let json = serde_json::to_value(&claims).unwrap();
    assert_eq!(json["trust"]["hardware"], "affirming");

    let v = Evidence {
        report: &r.vlek_report,
        vcek: &r.vlek,
        chain: &r.milan,
    };
    // The recorded VLEK report was requested at VMPL 1: refused unless the policy allows it.
    let err = snp::verify(&v, &Policy::default(), None, NOW).unwrap_err();
    assert!(err.to_string().contains("VMPL 1"), "{err}");
    let claims = snp::verify(&v, &vmpl1(), None, NOW).unwrap();
    assert_eq!(claims.signed_by, "VLEK");
    assert_eq!(claims.tcb["microcode"], 0xd9);
}

/// The policy the recorded VLEK report (requested at VMPL 1) passes.
fn vmpl1() -> Policy {
    Policy {
        max_vmpl: 1,
        ..Policy::default()
    }
}

#[test]
fn every_single_flipped_byte_of_a_report_is_refused() {
    let Some(r) = recorded() else { return };
    for (report, key) in [(&r.report, &r.vcek), (&r.vlek_report, &r.vlek)] {
        for i in 0..report.len() {
            for bit in [0x01u8, 0x80] {
                let mut changed = report.clone();
                changed[i] ^= bit;
                let e = Evidence {
                    report: &changed,
                    vcek: key,
                    chain: &r.milan,
                };
                let refused = snp::verify(&e, &vmpl1(), None, NOW);
                assert!(refused.is_err(), "byte {i:#x} ^ {bit:#x} was accepted");
            }
        }
        // Cut short or grown by one byte: malformed, saying the length.
        for len in [report.len() - 1, report.len() + 1] {
            let mut changed = report.clone();
            changed.resize(len, 0);
            let e = Report::parse(&changed).unwrap_err();
            assert!(e.to_string().contains("1184"), "{e}");
        }
    }
}

#[test]
fn a_swapped_chain_an_unpinned_root_or_another_certificate_is_refused() {
    let Some(r) = recorded() else { return };
    let verify = |report: &[u8], vcek: &[u8], chain: &str, policy: &Policy| {
        snp::verify(
            &Evidence {
                report,
                vcek,
                chain,
            },
            policy,
            None,
            NOW,
        )
    };
    // Genoa's chain for a Milan VCEK: the VCEK's issuer is not in it.
    let e = verify(&r.report, &r.vcek, &r.genoa, &Policy::default()).unwrap_err();
    assert!(matches!(e, AttestError::UntrustedRoot(_)), "{e}");
    // Genoa's ASK in place of Milan's, under Milan's ARK: the signature does not verify.
    let genoa_ask_milan_rest = {
        let genoa_ask = first_cert(&r.genoa);
        let milan_rest = &r.milan[r.milan.find("-----END CERTIFICATE-----").unwrap() + 25..];
        // Rename nothing: the Genoa ASK's subject is not the VCEK's issuer, so the chain
        // lacks the issuer; with both, the Milan ASK is found and verifies. Put the Genoa ASK
        // first to be sure order does not matter.
        format!("{genoa_ask}\n{}\n{milan_rest}", first_cert(&r.milan))
    };
    verify(
        &r.report,
        &r.vcek,
        &genoa_ask_milan_rest,
        &Policy::default(),
    )
    .unwrap();
    // Only a root the policy trusts: with AMD's roots off, nothing chains.
    let strict = Policy {
        amd_roots: false,
        ..Policy::default()
    };
    let e = verify(&r.report, &r.vcek, &r.milan, &strict).unwrap_err();
    assert!(matches!(e, AttestError::UntrustedRoot(_)), "{e}");
    assert!(e.to_string().contains("ARK-Milan"), "{e}");
    // The VLEK report with the VCEK, and the other way round.
    assert!(verify(&r.vlek_report, &r.vcek, &r.milan, &vmpl1()).is_err());
    assert!(verify(&r.report, &r.vlek, &r.milan, &vmpl1()).is_err());
    // The VLEK with its ASVK removed from the chain: the ASK is no VLEK's issuer.
    let ask_and_ark: String = {
        let mut certs: Vec<&str> = r
            .milan
            .split_inclusive("-----END CERTIFICATE-----")
            .collect();
        certs.retain(|c| c.contains("BEGIN"));
        certs[..2].concat()
    };
    assert!(verify(&r.vlek_report, &r.vlek, &ask_and_ark, &vmpl1()).is_err());
    // The recorded invalid VCEKs.
    for bad in &r.invalid_vceks {
        assert!(verify(&r.report, bad, &r.milan, &Policy::default()).is_err());
    }
    // No chain, or garbage in place of one.
    for chain in [
        "",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
    ] {
        let e = verify(&r.report, &r.vcek, chain, &Policy::default()).unwrap_err();
        assert!(matches!(e, AttestError::Malformed { .. }), "{e}");
    }
}

fn first_cert(pem: &str) -> &str {
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    &pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..end]
}

#[test]
fn the_policy_refuses_what_it_does_not_accept() {
    let Some(r) = recorded() else { return };
    let e = Evidence {
        report: &r.report,
        vcek: &r.vcek,
        chain: &r.milan,
    };
    // Another request's report data: a replayed report.
    let err = snp::verify(&e, &Policy::default(), Some(&[7u8; 64]), NOW).unwrap_err();
    assert!(matches!(err, AttestError::Policy(_)), "{err}");
    assert!(err.to_string().contains("report data"), "{err}");
    // A TCB above the reported one.
    let newer = Policy {
        min_tcb: Some(TcbVersion {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 9,
            microcode: 0x73,
        }),
        ..Policy::default()
    };
    let err = snp::verify(&e, &newer, None, NOW).unwrap_err();
    assert!(err.to_string().contains("below the minimum"), "{err}");
    // Reference measurements: one it is not refused; the right one affirms.
    let measurement: [u8; 48] = r.report[0x90..0xC0].try_into().unwrap();
    let wrong = Policy {
        measurements: vec![[0u8; 48]],
        ..Policy::default()
    };
    let err = snp::verify(&e, &wrong, None, NOW).unwrap_err();
    assert!(err.to_string().contains("launch measurement"), "{err}");
    let right = Policy {
        measurements: vec![[0u8; 48], measurement],
        ..Policy::default()
    };
    let claims = snp::verify(&e, &right, None, NOW).unwrap();
    assert_eq!(claims.trust.executables, Trust::Affirming);
    // Outside the certificates' validity.
    for at in [1_500_000_000, 2_000_000_000] {
        let err = snp::verify(&e, &Policy::default(), None, at).unwrap_err();
        assert!(matches!(err, AttestError::Expired { .. }), "{err}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Any bytes, any certificate, any chain text: an answer, never a panic.
    #[test]
    fn arbitrary_evidence_is_refused_without_panicking(
        report in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1300),
        vcek in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        chain in ".{0,200}",
    ) {
        let e = Evidence { report: &report, vcek: &vcek, chain: &chain };
        proptest::prop_assert!(snp::verify(&e, &Policy::default(), None, NOW).is_err());
    }
}
