//! What a verifier says about evidence, the same shape for every kind: the platform, the
//! measurements, debug or not, the TCB, the data bound into the report, and a trust vector in
//! the spirit of the IETF RATS AR4SI trustworthiness claims.

use std::collections::BTreeMap;

use serde::Serialize;

/// An AR4SI trustworthiness value (draft-ietf-rats-ar4si, section 2.3): what the verifier
/// concluded about one aspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// No claim is made about the aspect (0).
    #[default]
    None,
    /// The aspect is as it should be (2).
    Affirming,
    /// The aspect is acceptable but not as it should be (32): say, debug allowed by policy.
    Warning,
    /// The aspect is not acceptable (96).
    Contraindicated,
}

impl Trust {
    /// The AR4SI number.
    pub fn value(self) -> i8 {
        match self {
            Trust::None => 0,
            Trust::Affirming => 2,
            Trust::Warning => 32,
            Trust::Contraindicated => 96,
        }
    }
}

/// The AR4SI trust vector's aspects this crate assesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct TrustVector {
    /// The evidence comes from a genuine instance (its signing key chains to the vendor).
    pub instance_identity: Trust,
    /// The hardware is genuine and its TCB is at or above the policy's minimum.
    pub hardware: Trust,
    /// The launch measurement is one the policy knows (none: no reference values given).
    pub executables: Trust,
    /// The configuration (debug off, no migration agent) is as the policy wants.
    pub configuration: Trust,
}

/// Claims about verified evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// The platform: `sev-snp`, `tdx`, `tpm`, `nvidia-gpu`.
    pub platform: &'static str,
    /// The product (`Milan`, `Genoa`, `Turin` for SEV-SNP).
    pub product: String,
    /// The key that signed the evidence (`VCEK` or `VLEK` for SEV-SNP).
    pub signed_by: String,
    /// The data the guest bound into the report (hex): a nonce and the requester's key.
    pub report_data: String,
    /// Measurements by name (hex): `measurement`, `host_data`, `id_key_digest`, ...
    pub measurements: BTreeMap<String, String>,
    /// Whether the guest may be debugged (its memory readable by the host).
    pub debug: bool,
    /// The TCB the evidence reports, by component (`bootloader`, `tee`, `snp`, `microcode`,
    /// and `fmc` on Turin).
    pub tcb: BTreeMap<String, u8>,
    /// The vendor's verdict on that TCB, where the vendor publishes one (Intel's TCB status for
    /// TDX: `UpToDate`, `SWHardeningNeeded`, `OutOfDate`, ...).
    pub tcb_status: Option<String>,
    /// The vendor's security advisories that apply to that TCB (Intel's `INTEL-SA-…` ids).
    pub advisory_ids: Vec<String>,
    /// The verifier's assessment.
    pub trust: TrustVector,
}
