//! Verification time per evidence type, on the recorded evidence (skipped with a note when
//! the shared folder is absent): SEV-SNP (report signature and the RSA chain) against parsing
//! alone, and NVIDIA Hopper (SPDM signature and an ECDSA chain of five).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyhaven_attest::snp::{self, Evidence, Policy, Report};

fn bench(c: &mut Criterion) {
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
