//! Evidence in, a tier out: the interface attestation verifiers plug into (the attestation
//! crate brings TPM, SEV-SNP, TDX and GPU verifiers), and the `sample` verifier for
//! development, which is off unless the operator turns it on and never reaches tier 2.
//!
//! A release request may carry `evidence` (`{"type": "...", ...}`). Its verifier checks it
//! binds the release's **report data**: SHA-256 over a label, the requester's key
//! fingerprint, the path and the thumbprint of the ephemeral key the secret is encrypted to
//! ([`report_data`]), so evidence made for one release, key or requester does nothing for
//! another. Results are cached for [`ATTESTATION_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How long a verified piece of evidence is remembered.
pub const ATTESTATION_TTL: Duration = Duration::from_secs(60);
/// The most results remembered.
const MAX_CACHED: usize = 10_000;

/// What verified evidence shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The evidence type.
    pub kind: String,
    /// The tier it supports.
    pub tier: u8,
    /// The claims, normalised (platform, measurements, debug, TCB status, ...).
    pub claims: Value,
}

/// A verifier of one evidence type.
pub trait EvidenceVerifier: Send + Sync + 'static {
    /// The `type` it reads (`sample`, `tpm`, `sev-snp`, `tdx`, `nvidia-gpu`).
    fn kind(&self) -> &'static str;

    /// Verifies `evidence` made for `report_data` at `now` (seconds since the epoch).
    ///
    /// # Errors
    /// Why it does not verify, for the requester (it is audited).
    fn verify(
        &self,
        evidence: &Value,
        report_data: &[u8; 32],
        now: u64,
    ) -> Result<Attested, String>;
}

pub use keyhaven_client::secrets::report_data;

/// Development evidence: `{"type": "sample", "tier": N, "report_data": "<hex>"}`. It proves
/// nothing about the machine, so it supports at most tier 1 whatever it says.
#[derive(Debug, Default)]
pub struct SampleVerifier;

/// The highest tier sample evidence supports.
pub const SAMPLE_MAX_TIER: u8 = 1;

impl EvidenceVerifier for SampleVerifier {
    fn kind(&self) -> &'static str {
        "sample"
    }

    fn verify(
        &self,
        evidence: &Value,
        report_data: &[u8; 32],
        _now: u64,
    ) -> Result<Attested, String> {
        let bound = evidence["report_data"].as_str().unwrap_or("");
        if !bound.eq_ignore_ascii_case(&hex::encode(report_data)) {
            return Err("the sample evidence is not bound to this release's report data".into());
        }
        let claimed = evidence["tier"].as_u64().unwrap_or(0);
        let tier = u8::try_from(claimed.min(u64::from(SAMPLE_MAX_TIER))).unwrap_or(0);
        Ok(Attested {
            kind: "sample".into(),
            tier,
            claims: json!({ "platform": "sample", "claimed_tier": claimed, "debug": true }),
        })
    }
}

/// AMD SEV-SNP evidence (`keyhaven_attest::snp`): `{"type": "sev-snp", "report": base64 of
/// the 1184-byte report, "vcek": base64 of the VCEK (or VLEK) certificate's DER, "chain": AMD's
/// certificate chain, PEM}`. The report's 64 bytes of report data must be this release's 32
/// (see [`report_data`]) followed by 32 zero bytes. A confidential VM on an AMD chip reaches
/// tier 2: its memory is the guest's alone, but no GPU is attested (tiers 3 and 4 need one).
#[derive(Debug, Default)]
pub struct SnpVerifier {
    policy: keyhaven_attest::snp::Policy,
}

/// The tier SEV-SNP evidence alone supports.
pub const SNP_TIER: u8 = 2;

impl SnpVerifier {
    /// A verifier holding evidence to `policy` (debug, migration agent, minimum TCB,
    /// reference measurements, roots).
    pub fn new(policy: keyhaven_attest::snp::Policy) -> Self {
        SnpVerifier { policy }
    }
}

impl EvidenceVerifier for SnpVerifier {
    fn kind(&self) -> &'static str {
        "sev-snp"
    }

    fn verify(
        &self,
        evidence: &Value,
        report_data: &[u8; 32],
        now: u64,
    ) -> Result<Attested, String> {
        use base64ct::{Base64, Encoding};
        let field = |name: &str| {
            evidence[name]
                .as_str()
                .ok_or_else(|| format!("sev-snp evidence needs '{name}'"))
        };
        let report = Base64::decode_vec(field("report")?)
            .map_err(|_| "'report' is not standard base64".to_owned())?;
        let vcek = Base64::decode_vec(field("vcek")?)
            .map_err(|_| "'vcek' is not standard base64 (of the certificate's DER)".to_owned())?;
        let chain = field("chain")?;
        let mut expected = [0u8; 64];
        expected[..32].copy_from_slice(report_data);
        let claims = keyhaven_attest::snp::verify(
            &keyhaven_attest::snp::Evidence {
                report: &report,
                vcek: &vcek,
                chain,
            },
            &self.policy,
            Some(&expected),
            now,
        )
        .map_err(|e| e.to_string())?;
        Ok(Attested {
            kind: "sev-snp".into(),
            tier: SNP_TIER,
            claims: serde_json::to_value(&claims).unwrap_or(Value::Null),
        })
    }
}

/// The verifiers a broker accepts, and what they recently verified.
#[derive(Default)]
pub struct Attestation {
    verifiers: HashMap<&'static str, Arc<dyn EvidenceVerifier>>,
    cache: Mutex<HashMap<[u8; 32], (Attested, Instant)>>,
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&&str> = self.verifiers.keys().collect();
        kinds.sort();
        f.debug_struct("Attestation")
            .field("kinds", &kinds)
            .finish_non_exhaustive()
    }
}

/// Why evidence did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceError {
    /// No verifier of this type is on.
    NotAccepted(String),
    /// The verifier refused it.
    Refused(String),
}

impl Attestation {
    /// Accepts evidence of `verifier`'s type from now on.
    pub fn add(&mut self, verifier: Arc<dyn EvidenceVerifier>) {
        self.verifiers.insert(verifier.kind(), verifier);
    }

    /// The types accepted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = self.verifiers.keys().copied().collect();
        k.sort_unstable();
        k
    }

    /// Verifies `evidence` for `report_data` (or answers from the cache).
    ///
    /// # Errors
    /// [`EvidenceError`] saying why it does not count.
    pub fn verify(
        &self,
        evidence: &Value,
        report_data: &[u8; 32],
        now: u64,
    ) -> Result<Attested, EvidenceError> {
        let kind = evidence["type"].as_str().unwrap_or("");
        let Some(verifier) = self.verifiers.get(kind) else {
            let accepted = self.kinds();
            let hint = if kind == "sample" {
                " (sample evidence is for development: start the server with \
                 --allow-sample-evidence)"
            } else {
                ""
            };
            return Err(EvidenceError::NotAccepted(format!(
                "evidence of type '{}' is not accepted here; accepted: [{}]{hint}",
                kind.chars().take(40).collect::<String>(),
                accepted.join(", ")
            )));
        };
        let mut h = Sha256::new();
        h.update(evidence.to_string().as_bytes());
        h.update(report_data);
        let key: [u8; 32] = h.finalize().into();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((a, at)) = cache.get(&key)
                && at.elapsed() < ATTESTATION_TTL
            {
                return Ok(a.clone());
            }
        }
        let attested = verifier
            .verify(evidence, report_data, now)
            .map_err(EvidenceError::Refused)?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (attested.clone(), Instant::now()));
        Ok(attested)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sample_evidence_is_off_by_default_bound_and_capped_at_tier_1() {
        let rd = report_data("k", "db/x", "thumb");
        let evidence = json!({ "type": "sample", "tier": 4, "report_data": hex::encode(rd) });
        let off = Attestation::default();
        match off.verify(&evidence, &rd, 0) {
            Err(EvidenceError::NotAccepted(m)) => {
                assert!(m.contains("--allow-sample-evidence"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut on = Attestation::default();
        on.add(Arc::new(SampleVerifier));
        let a = on.verify(&evidence, &rd, 0).unwrap();
        assert_eq!(a.tier, 1, "never above tier 1");
        let other = report_data("k", "db/y", "thumb");
        assert!(matches!(
            on.verify(&evidence, &other, 0),
            Err(EvidenceError::Refused(_))
        ));
        assert_ne!(
            report_data("ab", "c", "d"),
            report_data("a", "bc", "d"),
            "length-prefixed"
        );
    }
}
