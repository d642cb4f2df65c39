//! Intel TDX: the recorded quotes and DCAP collateral that ship in the `dcap-qvl` package (a v4
//! quote with a TDX 1.0 report, v5 quotes with TDX 1.5 reports) verify through Intel's chains,
//! with the same TCB verdict as dcap-qvl, an independent verifier; a quote with any single byte
//! flipped, changed or swapped collateral, a time outside the collateral's validity, an
//! unpinned root, a wrong nonce, an out-of-date TCB or a refused advisory are refused, never a
//! panic. Trustee's recorded quotes parse to the fields Trustee's own parser reads.

use std::path::PathBuf;

use keyhaven_attest::AttestError;
use keyhaven_attest::tdx::{self, Collateral, Policy, Quote, TcbStatus, TdReportKind};
use proptest::prelude::*;

/// `dcap-qvl`'s `sample/` folder, found through `cargo metadata` (it is a dev-dependency).
fn sample_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(find_sample_dir).clone()
}

fn find_sample_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYHAVEN_DCAP_SAMPLE") {
        return PathBuf::from(dir);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dcap-qvl")
        .expect("dcap-qvl is a dev-dependency")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    PathBuf::from(manifest).parent().unwrap().join("sample")
}

struct Case {
    name: &'static str,
    quote: Vec<u8>,
    collateral_json: String,
    collateral: Collateral,
    /// A time inside every piece of the collateral's validity.
    now: u64,
}

fn unix(rfc3339: &str) -> u64 {
    // Only for the test's own arithmetic: the library's parser is tested in its unit tests.
    let days_before = |y: u64, m: u64| {
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut d = (1970..y)
            .map(|y| if leap(y) { 366 } else { 365 })
            .sum::<u64>();
        let months = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        for (i, len) in months.iter().enumerate().take((m - 1) as usize) {
            d += len + u64::from(i == 1 && leap(y));
        }
        d
    };
    let n = |r: std::ops::Range<usize>| rfc3339[r].parse::<u64>().unwrap();
    (days_before(n(0..4), n(5..7)) + n(8..10) - 1) * 86_400
        + n(11..13) * 3600
        + n(14..16) * 60
        + n(17..19)
}

fn case(name: &'static str) -> Case {
    let dir = sample_dir();
    let quote = std::fs::read(dir.join(name)).unwrap();
    let collateral_json =
        std::fs::read_to_string(dir.join(format!("{name}_collateral.json"))).unwrap();
    let collateral = Collateral::from_json(&collateral_json).unwrap();
    let tcb: serde_json::Value = serde_json::from_str(&collateral.tcb_info).unwrap();
    let qe: serde_json::Value = serde_json::from_str(&collateral.qe_identity).unwrap();
    let start = [&tcb["issueDate"], &qe["issueDate"]]
        .iter()
        .map(|v| unix(v.as_str().unwrap()))
        .max()
        .unwrap();
    // The PCK CRL is issued a few minutes before the TCB Info; an hour after the later of the
    // two issue dates is inside everything.
    Case {
        name,
        quote,
        collateral_json,
        collateral,
        now: start + 3600,
    }
}

fn cases() -> Vec<Case> {
    ["tdx_quote", "tdx_quote_outdated", "tdx_quote_td15ex"]
        .into_iter()
        .map(case)
        .collect()
}

/// Accepts every status Intel may give, so the verdict itself can be compared.
fn any_status() -> Policy {
    Policy {
        accepted: vec![
            TcbStatus::UpToDate,
            TcbStatus::SwHardeningNeeded,
            TcbStatus::ConfigurationNeeded,
            TcbStatus::ConfigurationAndSwHardeningNeeded,
            TcbStatus::TdRelaunchAdvised,
            TcbStatus::TdRelaunchAdvisedConfigurationNeeded,
            TcbStatus::OutOfDate,
            TcbStatus::OutOfDateConfigurationNeeded,
        ],
        ..Policy::default()
    }
}

#[test]
fn recorded_quotes_verify_and_agree_with_an_independent_verifier() {
    for c in cases() {
        // dcap-qvl, written by others from the same documents, gives its verdict first.
        let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_str(&c.collateral_json).unwrap();
        let report = dcap_qvl::verify::verify(&c.quote, &theirs, c.now);
        let ours = tdx::verify(&c.quote, &c.collateral, &any_status(), None, c.now);
        let (report, claims) = match (report, ours) {
            (Ok(report), Ok(claims)) => (report, claims),
            (Err(theirs), Err(ours)) => {
                // The "outdated" sample's platform is below every level Intel lists: both
                // refuse it, and ours says so.
                assert_eq!(c.name, "tdx_quote_outdated", "{theirs:#} / {ours}");
                assert!(ours.to_string().contains("below every level"), "{ours}");
                continue;
            }
            (theirs, ours) => panic!("{}: dcap-qvl {theirs:?}, ours {ours:?}", c.name),
        };
        let quote = Quote::parse(&c.quote).unwrap();
        assert_eq!(claims.platform, "tdx");
        assert!(
            claims.signed_by.contains("Intel SGX PCK Certificate"),
            "{}",
            claims.signed_by
        );
        assert_eq!(claims.report_data, hex::encode(quote.report_data()));
        assert_eq!(claims.measurements["mr_td"], hex::encode(quote.mr_td()));
        assert!(!claims.debug);
        assert_eq!(
            claims.tcb_status.as_deref(),
            Some(report.status.as_str()),
            "{}",
            c.name
        );
        let (mut ours, mut want) = (claims.advisory_ids.clone(), report.advisory_ids.clone());
        ours.sort();
        want.sort();
        assert_eq!(ours, want, "{}", c.name);
        // The default policy accepts an up-to-date platform.
        tdx::verify(&c.quote, &c.collateral, &Policy::default(), None, c.now).unwrap();
    }
    let kinds: Vec<_> = cases()
        .iter()
        .map(|c| {
            (
                Quote::parse(&c.quote).unwrap().version,
                Quote::parse(&c.quote).unwrap().kind,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (4, TdReportKind::Td10),
            (5, TdReportKind::Td15),
            (5, TdReportKind::Td15Ex)
        ]
    );
}

#[test]
fn every_single_flipped_byte_of_a_quote_is_refused() {
    // The v4 quote (TDX 1.0) and the v5 quote with the extended TDX 1.5 report, both of which
    // verify unchanged (the "outdated" sample is refused whatever its bytes).
    for name in ["tdx_quote", "tdx_quote_td15ex"] {
        let c = case(name);
        tdx::verify(&c.quote, &c.collateral, &any_status(), None, c.now).unwrap();
        for i in 0..c.quote.len() {
            for bit in [0x01u8, 0x80] {
                let mut changed = c.quote.clone();
                changed[i] ^= bit;
                let refused = tdx::verify(&changed, &c.collateral, &any_status(), None, c.now);
                assert!(
                    refused.is_err(),
                    "{name}: byte {i:#x} ^ {bit:#x} was accepted"
                );
            }
        }
        // Cut inside the signature data, or grown by a byte that is not zero padding: refused.
        // (Zero padding after the signature data is how quoting services hand quotes over.)
        let body = if c.quote[0] == 4 {
            584
        } else {
            6 + u32::from_le_bytes(c.quote[50..54].try_into().unwrap()) as usize
        };
        let at = 48 + body;
        let sig_len = u32::from_le_bytes(c.quote[at..at + 4].try_into().unwrap()) as usize;
        let end = at + 4 + sig_len;
        assert!(
            tdx::verify(
                &c.quote[..end - 1],
                &c.collateral,
                &any_status(),
                None,
                c.now
            )
            .is_err()
        );
        tdx::verify(&c.quote[..end], &c.collateral, &any_status(), None, c.now).unwrap();
        let mut grown = c.quote.clone();
        grown.push(1);
        assert!(tdx::verify(&grown, &c.collateral, &any_status(), None, c.now).is_err());
    }
}

#[test]
fn changed_swapped_or_stale_collateral_is_refused() {
    let c = case("tdx_quote");
    let ok = |col: &Collateral, now: u64| tdx::verify(&c.quote, col, &any_status(), None, now);
    ok(&c.collateral, c.now).unwrap();

    // The TCB Info changed after Intel signed it: one level's status rewritten.
    let mut changed = c.collateral.clone();
    changed.tcb_info = changed.tcb_info.replacen("OutOfDate", "UpToDate", 1);
    assert_ne!(changed.tcb_info, c.collateral.tcb_info);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(
        matches!(
            e,
            AttestError::BadSignature {
                what: "TCB Info",
                ..
            }
        ),
        "{e}"
    );
    let mut changed = c.collateral.clone();
    changed.qe_identity = changed
        .qe_identity
        .replacen("\"isvprodid\":2", "\"isvprodid\":3", 1);
    assert_ne!(changed.qe_identity, c.collateral.qe_identity);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(
        matches!(
            e,
            AttestError::BadSignature {
                what: "QE Identity",
                ..
            }
        ),
        "{e}"
    );

    // Another platform's collateral (another FMSPC), signed and current but not this one's.
    let other = case("tdx_quote_outdated");
    let e = ok(&other.collateral, other.now).unwrap_err();
    assert!(
        e.to_string().contains("FMSPC") || matches!(e, AttestError::Expired { .. }),
        "{e}"
    );

    // Outside the collateral's validity: after its next update, before its issue.
    for at in [c.now + 40 * 86_400, c.now - 2 * 86_400] {
        let e = ok(&c.collateral, at).unwrap_err();
        assert!(matches!(e, AttestError::Expired { .. }), "{e}");
    }

    // The CRLs swapped: each is refused as not its issuer's.
    let mut changed = c.collateral.clone();
    std::mem::swap(&mut changed.pck_crl, &mut changed.root_ca_crl);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(e.to_string().contains("issued by"), "{e}");

    // A signing chain with an intermediate slipped in, one that ends in another root, and the
    // quote's own PCK chain (a platform's key, which must not sign collateral): refused.
    let pck_ca = pem_blocks(&c.collateral.pck_crl_issuer_chain_for_tests())[0].clone();
    let tcb = pem_blocks(&c.collateral.tcb_info_issuer_chain);
    let mut changed = c.collateral.clone();
    changed.tcb_info_issuer_chain = format!("{}{pck_ca}{}", tcb[0], tcb[1]);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(e.to_string().contains("3 certificates, not 2"), "{e}");
    changed.tcb_info_issuer_chain = format!("{}{pck_ca}", tcb[0]);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(matches!(e, AttestError::UntrustedRoot(_)), "{e}");
    let quote_text = String::from_utf8_lossy(&c.quote);
    let pck = pem_blocks(&quote_text[quote_text.find("-----BEGIN").unwrap()..]);
    changed.tcb_info_issuer_chain = format!("{}{}", pck[0], tcb[1]);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(e.to_string().contains("not Intel SGX TCB Signing"), "{e}");
    changed.tcb_info_issuer_chain = format!("{}{}", pck[1], tcb[1]);
    let e = ok(&changed, c.now).unwrap_err();
    assert!(e.to_string().contains("not Intel SGX TCB Signing"), "{e}");

    // Collateral older than the policy's TCB evaluation is refused.
    let policy = Policy {
        min_tcb_evaluation: 18,
        ..any_status()
    };
    let e = tdx::verify(&c.quote, &c.collateral, &policy, None, c.now).unwrap_err();
    assert!(e.to_string().contains("TCB evaluation 17"), "{e}");
}

trait IssuerChain {
    fn pck_crl_issuer_chain_for_tests(&self) -> String;
}

impl IssuerChain for Collateral {
    /// The PCK CA and root, from the collateral's JSON (the verifier takes the PCK CA from the
    /// quote itself, so the struct does not keep this field).
    fn pck_crl_issuer_chain_for_tests(&self) -> String {
        let c = case("tdx_quote");
        let v: serde_json::Value = serde_json::from_str(&c.collateral_json).unwrap();
        v["pck_crl_issuer_chain"].as_str().unwrap().to_owned()
    }
}

fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| format!("{}\n", b.trim_start()))
        .collect()
}

#[test]
fn the_report_data_and_the_measurements_are_the_policys_to_require() {
    let c = case("tdx_quote");
    let quote = Quote::parse(&c.quote).unwrap();
    let rd = quote.report_data();
    tdx::verify(&c.quote, &c.collateral, &any_status(), Some(&rd), c.now).unwrap();
    let mut other = rd;
    other[0] ^= 1;
    let e = tdx::verify(&c.quote, &c.collateral, &any_status(), Some(&other), c.now).unwrap_err();
    assert!(e.to_string().contains("replayed"), "{e}");

    let with = |mr_td| Policy {
        mr_td,
        ..any_status()
    };
    let claims = tdx::verify(
        &c.quote,
        &c.collateral,
        &with(vec![quote.mr_td()]),
        None,
        c.now,
    )
    .unwrap();
    assert_eq!(claims.trust.executables, keyhaven_attest::Trust::Affirming);
    let e = tdx::verify(&c.quote, &c.collateral, &with(vec![[7; 48]]), None, c.now).unwrap_err();
    assert!(e.to_string().contains("MRTD"), "{e}");
    // The kernel's register too: its value passes, another is refused naming it.
    let mut policy = with(vec![quote.mr_td()]);
    policy.reference.insert("rtmr1".into(), quote.rtmr(1));
    tdx::verify(&c.quote, &c.collateral, &policy, None, c.now).unwrap();
    policy.reference.insert("rtmr2".into(), [9; 48]);
    let e = tdx::verify(&c.quote, &c.collateral, &policy, None, c.now).unwrap_err();
    assert!(e.to_string().contains("rtmr2 is"), "{e}");
}

#[test]
fn trustees_recorded_quotes_parse_to_the_fields_trustee_reads() {
    let Some(dir) = crate::evidence_dir() else {
        return;
    };
    let dir = dir.join("trustee/tdx");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("parse_tdx_claims_expected.json")).unwrap())
            .unwrap();
    let body = &expected["quote"]["body"];
    let bytes = std::fs::read(dir.join("tdx_quote_4.dat")).unwrap();
    let q = Quote::parse(&bytes).unwrap();
    assert_eq!(q.version, 4);
    assert_eq!(hex::encode(q.mr_td()), body["mr_td"]);
    assert_eq!(hex::encode(q.mr_seam()), body["mr_seam"]);
    for i in 0..4 {
        assert_eq!(hex::encode(q.rtmr(i)), body[format!("rtmr_{i}")]);
    }
    assert_eq!(hex::encode(q.report_data()), body["report_data"]);
    assert_eq!(hex::encode(q.tee_tcb_svn()), body["tcb_svn"]);
    assert_eq!(
        hex::encode(q.td_attributes().to_le_bytes()),
        body["td_attributes"]
    );
    // Trustee reads this quote's TD as under debug; so does the parser, and the policy
    // refuses it (its collateral is not recorded, so the refusal is the parse's claim).
    assert_eq!(expected["td_attributes"]["debug"], true);
    assert!(q.debug());
    for name in ["tdx_quote_5.dat", "tdx_quote_6.dat"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let q = Quote::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!q.debug(), "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and a real quote cut or with arbitrary bytes spliced in, are refused
    /// with an error, never a panic.
    #[test]
    fn arbitrary_quotes_are_refused_without_panicking(
        noise in proptest::collection::vec(any::<u8>(), 0..6000),
        at in 0usize..5006,
        cut in 0usize..4936,
    ) {
        static CASE: std::sync::OnceLock<Case> = std::sync::OnceLock::new();
        let c = CASE.get_or_init(|| case("tdx_quote"));
        prop_assert!(tdx::verify(&noise, &c.collateral, &any_status(), None, c.now).is_err());
        let mut spliced = c.quote.clone();
        let end = (at + noise.len().min(64)).min(spliced.len());
        spliced.splice(at.min(end)..end, noise.iter().copied().take(64));
        if spliced != c.quote {
            prop_assert!(tdx::verify(&spliced, &c.collateral, &any_status(), None, c.now).is_err());
        }
        prop_assert!(Quote::parse(&c.quote[..cut]).is_err());
    }
}
