//! Verification time per evidence type, on recorded evidence: Intel TDX (a v5 quote with its
//! DCAP collateral from the `dcap-qvl` package: three chains, two CRLs, the signed TCB Info and
//! QE Identity, the QE report and the quote) against parsing alone; and, when the shared folder
//! is present (else skipped with a note), SEV-SNP (report signature and the RSA chain) against
//! parsing alone, a TPM 2.0 quote (RSA attestation key, 24 PCRs), and NVIDIA Hopper (SPDM
//! signature and an ECDSA chain of five).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_attest::snp::{self, Evidence, Policy, Report};

/// `dcap-qvl`'s `sample/` folder (a dev-dependency), through `cargo metadata`.
fn dcap_sample() -> Option<std::path::PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let dcap = meta["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "dcap-qvl")?;
    Some(
        std::path::Path::new(dcap["manifest_path"].as_str()?)
            .parent()?
            .join("sample"),
    )
}

fn bench_tdx(c: &mut Criterion) {
    use keyhaven_attest::tdx::{self, Collateral, Quote};
    let Some(dir) = dcap_sample() else {
        eprintln!("note: dcap-qvl's sample folder not found: TDX not measured");
        return;
    };
    let quote = std::fs::read(dir.join("tdx_quote_td15ex")).unwrap();
    let collateral = Collateral::from_json(
        &std::fs::read_to_string(dir.join("tdx_quote_td15ex_collateral.json")).unwrap(),
    )
    .unwrap();
    // 2026-10-08T01:09:46Z, inside the collateral's validity.
    let now = 1_791_421_786;
    let policy = tdx::Policy::default();
    assert!(tdx::verify(&quote, &collateral, &policy, None, now).is_ok());
    let mut g = c.benchmark_group("attest");
    g.bench_function("tdx quote parse", |b| {
        b.iter(|| Quote::parse(&quote).is_ok())
    });
    g.bench_function("tdx full verify (quote + DCAP collateral)", |b| {
        b.iter(|| tdx::verify(&quote, &collateral, &policy, None, now).is_ok())
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    bench_tdx(c);
    let dir = std::env::var_os("KEYHAVEN_EVIDENCE_DIR").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/attestation-evidence")
        },
        std::path::PathBuf::from,
    );
    let snp_dir = dir.join("trustee/snp");
    let (Ok(report), Ok(vcek), Ok(chain)) = (
        std::fs::read(snp_dir.join("test-report.bin")),
        std::fs::read(snp_dir.join("test-vcek.der")),
        std::fs::read_to_string(snp_dir.join("milan_ask_ark_asvk.pem")),
    ) else {
        eprintln!(
            "note: no recorded evidence at {}: nothing to measure",
            dir.display()
        );
        return;
    };
    let e = Evidence {
        report: &report,
        vcek: &vcek,
        chain: &chain,
    };
    let now = 1_750_000_000;
    let mut g = c.benchmark_group("attest");
    g.bench_function("sev-snp report parse", |b| {
        b.iter(|| Report::parse(&report).is_ok())
    });
    g.bench_function("sev-snp full verify (report + VCEK/ASK/ARK chain)", |b| {
        b.iter(|| snp::verify(&e, &Policy::default(), None, now).is_ok())
    });
    let tpm_dir = dir.join("trustee/tpm");
    if let Ok(text) = std::fs::read(tpm_dir.join("tpm_evidence.json"))
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text)
    {
        use base64ct::{Base64, Encoding};
        let b64 = |s: &serde_json::Value| Base64::decode_vec(s.as_str().unwrap_or("")).unwrap();
        let (attest, signature, ak) = (
            b64(&v["tpm_quote"]["message"]),
            b64(&v["tpm_quote"]["signature"]),
            b64(&v["ak_public"]),
        );
        let pcrs: std::collections::BTreeMap<u8, Vec<u8>> = v["tpm_quote"]["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(0u8..)
            .map(|(h, i)| (i, hex::decode(h.as_str().unwrap()).unwrap()))
            .collect();
        let ak = keyhaven_attest::tpm::AkPublic::from_spki(&ak).unwrap();
        let e = keyhaven_attest::tpm::Evidence {
            attest: &attest,
            signature: &signature,
            ak: &ak,
            pcrs: &pcrs,
            activated: None,
        };
        let policy = keyhaven_attest::tpm::Policy::default();
        g.bench_function("tpm quote verify (RSA-2048 AK, 24 PCRs)", |b| {
            b.iter(|| keyhaven_attest::tpm::verify(&e, &policy, None).is_ok())
        });
    }
    let nv = dir.join("trustee/nvidia");
    if let (Ok(report), Ok(chain)) = (
        std::fs::read_to_string(nv.join("hopperAttestationReport.txt")),
        std::fs::read_to_string(nv.join("hopper_cert_chain_case1.txt")),
    ) && let Ok(report) = hex::decode(report.trim())
    {
        let e = keyhaven_attest::nvidia::Evidence {
            report: &report,
            chain: &chain,
        };
        let policy = keyhaven_attest::nvidia::Policy::default();
        g.bench_function(
            "nvidia-gpu full verify (SPDM report + 5-certificate chain)",
            |b| b.iter(|| keyhaven_attest::nvidia::verify(&e, &policy, None, now).is_ok()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
