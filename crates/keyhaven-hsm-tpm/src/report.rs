//! What a TPM is and what it supports (for `keyhaven doctor`).

use std::fmt;

use keyhaven_core::Result;

use crate::config::Tcti;
use crate::device::{Device, read_report};

/// A TPM's identity and the ECC curves it implements, read without touching any key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TpmReport {
    /// The TCTI it was reached through.
    pub tcti: String,
    /// The manufacturer's 4-character id (`TPM_PT_MANUFACTURER`), e.g. `IBM` for swtpm.
    pub manufacturer: String,
    /// The vendor strings (`TPM_PT_VENDOR_STRING_1..4`), e.g. `SW   TPM`.
    pub vendor: String,
    /// The firmware version (`TPM_PT_FIRMWARE_VERSION_1` and `_2` as four 16-bit numbers).
    pub firmware_version: String,
    /// The TPM 2.0 library specification revision it implements, e.g. `1.64`.
    pub spec_revision: String,
    /// How many transient objects it can hold loaded at once (`TPM_PT_HR_TRANSIENT_MIN`).
    pub transient_slots: u32,
    /// The ECC curves it implements (`TPM2_GetCapability(TPM_CAP_ECC_CURVES)`).
    pub ecc_curves: Vec<String>,
}

impl TpmReport {
    /// Connects to the TPM through `tcti` and reads its report.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::InvalidInput`] for a bad TCTI string,
    /// [`keyhaven_core::Error::Unavailable`] when the TPM cannot be reached.
    pub fn probe(tcti: &str) -> Result<TpmReport> {
        let tcti: Tcti = tcti.parse()?;
        let mut ctx = Device::open_context(&tcti)?;
        let mut report = read_report(&mut ctx)?;
        report.tcti = tcti.to_string();
        Ok(report)
    }

    /// Whether the TPM implements the curve of keyhaven's P-384 keys.
    pub fn supports_p384(&self) -> bool {
        self.ecc_curves.iter().any(|c| c == "NIST P-384")
    }

    /// Whether the TPM implements the curve of keyhaven's P-256 keys.
    pub fn supports_p256(&self) -> bool {
        self.ecc_curves.iter().any(|c| c == "NIST P-256")
    }
}

impl fmt::Display for TpmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "TPM via {}", self.tcti)?;
        writeln!(f, "  manufacturer:     {}", self.manufacturer)?;
        writeln!(f, "  vendor:           {}", self.vendor)?;
        writeln!(f, "  firmware:         {}", self.firmware_version)?;
        writeln!(f, "  spec revision:    {}", self.spec_revision)?;
        writeln!(f, "  transient slots:  {}", self.transient_slots)?;
        writeln!(f, "  ECC curves:       {}", self.ecc_curves.join(", "))?;
        let yes = |b: bool| if b { "yes" } else { "no (missing curve)" };
        writeln!(f, "  keyhaven p384:    {}", yes(self.supports_p384()))?;
        write!(f, "  keyhaven p256:    {}", yes(self.supports_p256()))
    }
}
