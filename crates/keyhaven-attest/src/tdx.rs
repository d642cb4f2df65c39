//! Intel TDX quotes (versions 4 and 5), verified offline against Intel's DCAP collateral.
//!
//! Written from Intel's "TDX DCAP Quote Generation Library and Quote Verification Library"
//! documentation and the PCS API's TCB Info v3 and Enclave Identity v2 formats:
//!
//! 1. Every chain ends in Intel's SGX Root CA, pinned by the SHA-256 of its public key
//!    ([`INTEL_SGX_ROOT`]); each certificate is signed by the next (ECDSA P-256, SHA-256) and
//!    valid at the verification time; the root's CRL and the PCK CA's CRL are signed by their
//!    issuers, current, and do not list a certificate of the chain.
//! 2. The TCB Info and the QE Identity are signed by Intel's TCB signing key and current.
//! 3. The quoting enclave's report is signed by the PCK key; it binds the attestation key
//!    (its report data is the SHA-256 of the key and the QE authentication data); it is
//!    Intel's TD quoting enclave (the QE Identity's signer, product, attributes), and its SVN
//!    gives the QE's TCB status.
//! 4. The quote (header and TD report) is signed by the attestation key.
//! 5. The PCK certificate's FMSPC, PCE id, CPU SVN and PCE SVN, and the TD report's
//!    `TEE_TCB_SVN`, select the first TCB level they meet; the TDX module's signer and
//!    attributes match the TCB Info, and its SVN its module identity's levels. The platform's,
//!    the module's and the QE's statuses converge into one, with their advisory ids.
//!
//! Then the policy: statuses accepted, advisories refused, debug, reference `MRTD`s, and the
//! report data the request expects.

use std::collections::BTreeMap;

use base64ct::Encoding as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use x509_parser::der_parser::ber::BerObjectContent;
use x509_parser::der_parser::der::parse_der;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::bytes::{Reader, array, le_u16, le_u32};
use crate::claims::{Claims, Trust, TrustVector};
use crate::error::{AttestError, Result, malformed};
use crate::x509::{
    Ecdsa, canonical_signed, check_ec_chain, common_name, key_digest, parse as parse_cert,
    pem_certificates,
};

/// The SHA-256 of the public key (SubjectPublicKeyInfo, DER) of Intel's SGX Root CA
/// (`CN = Intel SGX Root CA, O = Intel Corporation`), the root of every DCAP chain.
pub const INTEL_SGX_ROOT: &str = "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e";

/// Intel's quoting enclave vendor id.
const INTEL_QE_VENDOR: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
const HEADER_LEN: usize = 48;
const TD10_LEN: usize = 584;
const TD15_LEN: usize = 648;
const TD15_EX_LEN: usize = 885;
const QE_REPORT_LEN: usize = 384;
/// `TDX` in the header's TEE type.
const TEE_TDX: u32 = 0x81;
/// ECDSA P-256 attestation key.
const KEY_P256: u16 = 2;
/// Certification data: the QE report with its own certification data inside.
const CERT_QE_REPORT: u16 = 6;
/// Certification data: the PCK certificate chain, PEM.
const CERT_PCK_CHAIN: u16 = 5;
/// The most bytes a quote may have (real ones are about 5 KiB).
pub const MAX_QUOTE_LEN: usize = 64 * 1024;
/// TD attributes: the bits that mean the TD is under debug (TUD, bits 0 to 7).
const TD_UNDER_DEBUG: u64 = 0xff;
/// TD attributes defined by TDX 1.5: DEBUG, the TUD bits 4-6, SEPT_VE_DISABLE and the other
/// SEC bits 16-22 and 27-31, and the OTHER bits 62-63 (TPA, PERFMON). Others must be zero.
const TD_ATTRIBUTES_DEFINED: u64 =
    1 | (0b111 << 4) | (0x7f << 16) | (0x1f << 27) | (1 << 62) | (1 << 63);

/// SGX extension OIDs of a PCK certificate (Intel's "SGX PCK Certificate and CRL Profile").
const OID_SGX: &str = "1.2.840.113741.1.13.1";
const OID_TCB: &str = "1.2.840.113741.1.13.1.2";
const OID_PCEID: &str = "1.2.840.113741.1.13.1.3";
const OID_FMSPC: &str = "1.2.840.113741.1.13.1.4";

/// Which TD report a quote carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdReportKind {
    /// TDX 1.0 (584 bytes).
    Td10,
    /// TDX 1.5 (648 bytes: adds `TEE_TCB_SVN2` and `MRSERVICETD`).
    Td15,
    /// TDX 1.5 with the extended fields of quote body type 4 (885 bytes).
    Td15Ex,
}

/// A TDX quote, parsed (nothing verified yet).
#[derive(Clone)]
pub struct Quote<'a> {
    /// The quote's version (4 or 5).
    pub version: u16,
    /// What the TD report is.
    pub kind: TdReportKind,
    /// What the attestation key signed: the header and the body (with its type and size in v5).
    pub signed: &'a [u8],
    /// The TD report.
    pub report: &'a [u8],
    /// The attestation key's signature, `r || s`.
    pub signature: &'a [u8],
    /// The attestation key, `x || y`.
    pub attestation_key: &'a [u8],
    /// The quoting enclave's report (384 bytes).
    pub qe_report: &'a [u8],
    /// The PCK key's signature on it, `r || s`.
    pub qe_report_signature: &'a [u8],
    /// The QE authentication data.
    pub qe_auth_data: &'a [u8],
    /// The PCK certificate chain, PEM, leaf first.
    pub pck_chain: &'a [u8],
}

impl std::fmt::Debug for Quote<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quote")
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("mr_td", &hex::encode(self.mr_td()))
            .finish_non_exhaustive()
    }
}

impl<'a> Quote<'a> {
    /// Parses a quote: its shape only, every length checked, nothing trailing.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] saying which part is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Quote<'a>> {
        if bytes.len() > MAX_QUOTE_LEN {
            return Err(malformed(
                "TDX quote",
                format!("{} bytes, more than {MAX_QUOTE_LEN}", bytes.len()),
            ));
        }
        let mut r = Reader::new("TDX quote", bytes);
        let header = r.take(HEADER_LEN, "the header")?;
        let version = le_u16(header, 0);
        let key_type = le_u16(header, 2);
        let tee = le_u32(header, 4);
        if !matches!(version, 4 | 5) {
            return Err(malformed(
                "TDX quote",
                format!("version {version}; versions 4 and 5 are read"),
            ));
        }
        if tee != TEE_TDX {
            return Err(malformed(
                "TDX quote",
                format!("TEE type {tee:#x}, not TDX (0x81): an SGX quote?"),
            ));
        }
        if key_type != KEY_P256 {
            return Err(malformed(
                "TDX quote",
                format!("attestation key type {key_type}, not ECDSA P-256 (2)"),
            ));
        }
        if header[12..28] != INTEL_QE_VENDOR {
            return Err(malformed(
                "TDX quote",
                "its quoting enclave is not Intel's (QE vendor id)",
            ));
        }
        let (kind, len) = if version == 4 {
            (TdReportKind::Td10, TD10_LEN)
        } else {
            let body = r.take(6, "the body's type and size")?;
            let (kind, len) = match le_u16(body, 0) {
                2 => (TdReportKind::Td10, TD10_LEN),
                3 => (TdReportKind::Td15, TD15_LEN),
                4 => (TdReportKind::Td15Ex, TD15_EX_LEN),
                t => {
                    return Err(malformed(
                        "TDX quote",
                        format!("body type {t}; TD reports are types 2, 3 and 4"),
                    ));
                }
            };
            let size = le_u32(body, 2);
            if usize::try_from(size).ok() != Some(len) {
                return Err(malformed(
                    "TDX quote",
                    format!("body type {} has size {size}, not {len}", le_u16(body, 0)),
                ));
            }
            (kind, len)
        };
        let report = r.take(len, "the TD report")?;
        let signed = &bytes[..r.pos()];
        let sig_len = r.u32_le("the signature data's size")?;
        let sig_len = usize::try_from(sig_len).unwrap_or(usize::MAX);
        // Quoting services may hand the quote over in a larger zeroed buffer: what follows the
        // signature data must be zeros, so that no byte is free to change.
        let rest = r.rest();
        let mut r = match (rest.get(..sig_len), rest.get(sig_len..)) {
            (Some(data), Some(padding)) if padding.iter().all(|b| *b == 0) => {
                Reader::new("TDX quote", data)
            }
            (Some(_), Some(_)) => {
                return Err(malformed(
                    "TDX quote",
                    "bytes other than zero padding follow its signature data",
                ));
            }
            _ => {
                return Err(malformed(
                    "TDX quote",
                    format!(
                        "its signature data says {sig_len} bytes, but {} follow",
                        r.rest().len()
                    ),
                ));
            }
        };
        let signature = r.take(64, "the quote's signature")?;
        let attestation_key = r.take(64, "the attestation key")?;
        let cert = r.take(6, "the certification data's type and size")?;
        let (cert_type, cert_len) = (le_u16(cert, 0), le_u32(cert, 2));
        if cert_type != CERT_QE_REPORT {
            return Err(malformed(
                "TDX quote",
                format!("certification data type {cert_type}, not the QE report (6)"),
            ));
        }
        if usize::try_from(cert_len).ok() != Some(r.rest().len()) {
            return Err(malformed(
                "TDX quote",
                format!(
                    "its certification data says {cert_len} bytes, but {} follow",
                    r.rest().len()
                ),
            ));
        }
        let qe_report = r.take(QE_REPORT_LEN, "the QE report")?;
        let qe_report_signature = r.take(64, "the QE report's signature")?;
        let auth_len = r.u16_le("the QE authentication data's size")?;
        let qe_auth_data = r.take(usize::from(auth_len), "the QE authentication data")?;
        let inner = r.take(6, "the PCK certification data's type and size")?;
        let (inner_type, inner_len) = (le_u16(inner, 0), le_u32(inner, 2));
        if inner_type != CERT_PCK_CHAIN {
            return Err(malformed(
                "TDX quote",
                format!(
                    "PCK certification data type {inner_type}, not the PCK chain (5): fetch \
                     the PCK certificate and quote again"
                ),
            ));
        }
        if usize::try_from(inner_len).ok() != Some(r.rest().len()) {
            return Err(malformed(
                "TDX quote",
                format!(
                    "its PCK chain says {inner_len} bytes, but {} follow",
                    r.rest().len()
                ),
            ));
        }
        Ok(Quote {
            version,
            kind,
            signed,
            report,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain: r.rest(),
        })
    }

    /// `TEE_TCB_SVN`: the TDX module's SVN (byte 0), its major version (byte 1), and the
    /// platform's TDX components.
    pub fn tee_tcb_svn(&self) -> [u8; 16] {
        array(self.report, 0)
    }

    /// `MRSEAM`, the TDX module's measurement.
    pub fn mr_seam(&self) -> [u8; 48] {
        array(self.report, 16)
    }

    /// `MRSIGNERSEAM`, the TDX module's signer (zero for Intel's).
    pub fn mr_signer_seam(&self) -> [u8; 48] {
        array(self.report, 64)
    }

    /// `SEAMATTRIBUTES`.
    pub fn seam_attributes(&self) -> [u8; 8] {
        array(self.report, 112)
    }

    /// `TDATTRIBUTES`, as a little-endian number.
    pub fn td_attributes(&self) -> u64 {
        u64::from_le_bytes(array(self.report, 120))
    }

    /// `MRTD`, the TD's build-time measurement.
    pub fn mr_td(&self) -> [u8; 48] {
        array(self.report, 136)
    }

    /// `RTMR0` to `RTMR3`, the runtime measurement registers.
    pub fn rtmr(&self, index: usize) -> [u8; 48] {
        array(self.report, 328 + 48 * index.min(3))
    }

    /// `REPORTDATA`: what the TD bound into the quote.
    pub fn report_data(&self) -> [u8; 64] {
        array(self.report, 520)
    }

    /// `TEE_TCB_SVN2` (TDX 1.5): the TCB now, after a TD-preserving module update.
    pub fn tee_tcb_svn2(&self) -> Option<[u8; 16]> {
        (self.kind != TdReportKind::Td10).then(|| array(self.report, 584))
    }

    /// Whether the TD is under debug (any TUD bit): its memory is the host's to read.
    pub fn debug(&self) -> bool {
        self.td_attributes() & TD_UNDER_DEBUG != 0
    }

    fn measurements(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (name, at) in [
            ("mr_seam", 16),
            ("mr_td", 136),
            ("mr_config_id", 184),
            ("mr_owner", 232),
            ("mr_owner_config", 280),
            ("rtmr0", 328),
            ("rtmr1", 376),
            ("rtmr2", 424),
            ("rtmr3", 472),
        ] {
            m.insert(name.to_owned(), hex::encode(&self.report[at..at + 48]));
        }
        if self.kind != TdReportKind::Td10 {
            m.insert(
                "mr_service_td".to_owned(),
                hex::encode(&self.report[600..648]),
            );
        }
        m.insert("xfam".to_owned(), hex::encode(&self.report[128..136]));
        m.insert(
            "td_attributes".to_owned(),
            hex::encode(&self.report[120..128]),
        );
        m
    }
}

/// Intel's DCAP collateral for one platform, as Intel's PCS and a PCCS serve it (and as
/// `sgx_ql_qve_collateral_t` holds it): the field names are those of its JSON form.
#[derive(Debug, Clone, Deserialize)]
pub struct Collateral {
    /// The TCB Info JSON object, exactly the bytes Intel signed.
    pub tcb_info: String,
    /// Its signature, hex `r || s`.
    pub tcb_info_signature: String,
    /// The TCB signing certificate and Intel's root, PEM.
    pub tcb_info_issuer_chain: String,
    /// The QE Identity JSON object, exactly the bytes Intel signed.
    pub qe_identity: String,
    /// Its signature, hex `r || s`.
    pub qe_identity_signature: String,
    /// The QE Identity's signing certificate and Intel's root, PEM.
    pub qe_identity_issuer_chain: String,
    /// The Root CA's CRL, DER in hex.
    pub root_ca_crl: String,
    /// The PCK CA's CRL, DER in hex.
    pub pck_crl: String,
}

impl Collateral {
    /// Reads collateral from its JSON form.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] when the JSON lacks a field or is not JSON.
    pub fn from_json(text: &str) -> Result<Collateral> {
        serde_json::from_str(text).map_err(|e| malformed("DCAP collateral", e.to_string()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfo {
    id: String,
    version: u32,
    issue_date: String,
    next_update: String,
    fmspc: String,
    pce_id: String,
    tcb_type: u32,
    tcb_evaluation_data_number: u32,
    tdx_module: Option<ModuleIdentity>,
    #[serde(default)]
    tdx_module_identities: Vec<ModuleIdentity>,
    tcb_levels: Vec<TcbLevel>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleIdentity {
    #[serde(default)]
    id: String,
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
    #[serde(default)]
    tcb_levels: Vec<IsvLevel>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevel {
    tcb: PlatformTcb,
    tcb_status: String,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
struct PlatformTcb {
    sgxtcbcomponents: Vec<Svn>,
    pcesvn: u16,
    tdxtcbcomponents: Vec<Svn>,
}

#[derive(Deserialize)]
struct Svn {
    svn: u8,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IsvLevel {
    tcb: IsvSvn,
    tcb_status: String,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
struct IsvSvn {
    isvsvn: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentity {
    id: String,
    version: u32,
    issue_date: String,
    next_update: String,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_evaluation_data_number: u32,
    tcb_levels: Vec<IsvLevel>,
}

/// Intel's verdict on a TCB (TCB Info v3), ordered from best to worst as the default policy
/// sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcbStatus {
    /// Patched and configured as Intel recommends.
    UpToDate,
    /// Patched; software mitigations for an advisory are the TD's to apply.
    SwHardeningNeeded,
    /// Patched; the platform's configuration needs a change (say, SMT off).
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSwHardeningNeeded,
    /// A TDX 1.5 TD launched on an out-of-date TCB that has since been updated in place:
    /// relaunching it brings it up to date.
    TdRelaunchAdvised,
    /// The above, with configuration needed.
    TdRelaunchAdvisedConfigurationNeeded,
    /// Not patched against a published advisory.
    OutOfDate,
    /// Out of date, and configuration needed.
    OutOfDateConfigurationNeeded,
    /// Intel revoked it.
    Revoked,
}

impl TcbStatus {
    /// Reads Intel's name for a status.
    fn parse(name: &str, allowed: &[TcbStatus]) -> Result<TcbStatus> {
        let status = match name {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SwHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSwHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "Revoked" => TcbStatus::Revoked,
            other => {
                return Err(malformed(
                    "DCAP collateral",
                    format!("unknown TCB status '{other}'"),
                ));
            }
        };
        if !allowed.contains(&status) {
            return Err(malformed(
                "DCAP collateral",
                format!("TCB status '{name}' is not one this structure may give"),
            ));
        }
        Ok(status)
    }

    /// Intel's name for the status.
    pub fn name(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SwHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSwHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::TdRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TdRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }

    /// A platform status with a component's (the QE's, the TDX module's): only an out-of-date
    /// or revoked component changes it.
    fn with_component(self, component: TcbStatus) -> TcbStatus {
        use TcbStatus::*;
        match (component, self) {
            (Revoked, _) => Revoked,
            (OutOfDate | OutOfDateConfigurationNeeded, UpToDate | SwHardeningNeeded) => OutOfDate,
            (
                OutOfDate | OutOfDateConfigurationNeeded,
                ConfigurationNeeded | ConfigurationAndSwHardeningNeeded,
            ) => OutOfDateConfigurationNeeded,
            _ => self,
        }
    }

    fn needs_configuration(self) -> bool {
        matches!(
            self,
            TcbStatus::ConfigurationNeeded
                | TcbStatus::ConfigurationAndSwHardeningNeeded
                | TcbStatus::OutOfDateConfigurationNeeded
                | TcbStatus::TdRelaunchAdvisedConfigurationNeeded
        )
    }
}

const PLATFORM_STATUSES: &[TcbStatus] = &[
    TcbStatus::UpToDate,
    TcbStatus::SwHardeningNeeded,
    TcbStatus::ConfigurationNeeded,
    TcbStatus::ConfigurationAndSwHardeningNeeded,
    TcbStatus::OutOfDate,
    TcbStatus::OutOfDateConfigurationNeeded,
    TcbStatus::Revoked,
];
const MODULE_STATUSES: &[TcbStatus] = &[
    TcbStatus::UpToDate,
    TcbStatus::OutOfDate,
    TcbStatus::Revoked,
];
const QE_STATUSES: &[TcbStatus] = &[
    TcbStatus::UpToDate,
    TcbStatus::OutOfDate,
    TcbStatus::ConfigurationNeeded,
    TcbStatus::OutOfDateConfigurationNeeded,
    TcbStatus::Revoked,
];

/// What a TDX quote must show to be accepted.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The TCB statuses accepted (the others are refused). By default: `UpToDate`,
    /// `SWHardeningNeeded`, `ConfigurationNeeded`, `ConfigurationAndSWHardeningNeeded`, with
    /// the hardware aspect a warning for all but the first.
    pub accepted: Vec<TcbStatus>,
    /// Advisory ids refused whatever the status (`INTEL-SA-00837`, ...).
    pub refused_advisories: Vec<String>,
    /// Accept a TD under debug.
    pub allow_debug: bool,
    /// The `MRTD`s accepted (empty: any, and `executables` is not affirmed). MRTD measures
    /// the TD's virtual firmware only: name the kernel's and the configuration's registers in
    /// [`Policy::reference`] too.
    pub mr_td: Vec<[u8; 48]>,
    /// Reference values of other registers, by their claim name (`rtmr0` to `rtmr3`,
    /// `mr_config_id`, `mr_owner`, `mr_owner_config`, `mr_seam`, `mr_service_td`): each must be
    /// present and equal.
    pub reference: BTreeMap<String, [u8; 48]>,
    /// Extra root key digests trusted beside [`INTEL_SGX_ROOT`] (a test PCS).
    pub extra_roots: Vec<[u8; 32]>,
    /// The lowest TCB evaluation data number accepted in the TCB Info and the QE Identity
    /// (0: any current collateral). Collateral comes from the requester, so without it an
    /// older issue still within its dates (before a TCB recovery) is accepted.
    pub min_tcb_evaluation: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            accepted: vec![
                TcbStatus::UpToDate,
                TcbStatus::SwHardeningNeeded,
                TcbStatus::ConfigurationNeeded,
                TcbStatus::ConfigurationAndSwHardeningNeeded,
            ],
            refused_advisories: Vec::new(),
            allow_debug: false,
            mr_td: Vec::new(),
            reference: BTreeMap::new(),
            extra_roots: Vec::new(),
            min_tcb_evaluation: 0,
        }
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time as Intel writes it
/// (`2025-06-19T10:16:03Z`).
fn parse_time(what: &'static str, s: &str) -> Result<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let shape = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    let parts = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) = parts else {
        return Err(malformed(what, format!("'{s}' is not a UTC time")));
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !shape
        || y < 1970
        || !(1..=12).contains(&m)
        || !(1..=month_days).contains(&d)
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return Err(malformed(what, format!("'{s}' is not a UTC time")));
    }
    // Days from the civil date (Howard Hinnant's algorithm), from 1970-01-01.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe)
        .checked_sub(719_468)
        .ok_or_else(|| malformed(what, format!("'{s}' is not a UTC time")))?;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn hex_array<const N: usize>(what: &'static str, field: &str, s: &str) -> Result<[u8; N]> {
    let v = hex::decode(s).map_err(|_| malformed(what, format!("{field} is not hex")))?;
    v.try_into()
        .map_err(|_| malformed(what, format!("{field} is not {N} bytes")))
}

/// Refuses collateral outside `[issueDate, nextUpdate]` at `now`.
fn check_current(what: &'static str, issue: &str, next: &str, now: u64) -> Result<()> {
    let (from, to) = (parse_time(what, issue)?, parse_time(what, next)?);
    if now < from || now > to {
        return Err(AttestError::Expired {
            what: what.to_owned(),
            at: now,
            not_before: i64::try_from(from).unwrap_or(i64::MAX),
            not_after: i64::try_from(to).unwrap_or(i64::MAX),
        });
    }
    Ok(())
}

/// The PEM chain in `text`, parsed, its root pinned, each certificate signed by the next.
/// The certificates a PCK chain is made of, leaf first: Intel's names for each place.
const PCK_CHAIN: &[&[&str]] = &[
    &["Intel SGX PCK Certificate"],
    &["Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA"],
    &["Intel SGX Root CA"],
];
/// The chain that signs the TCB Info and the QE Identity.
const SIGNING_CHAIN: &[&[&str]] = &[&["Intel SGX TCB Signing"], &["Intel SGX Root CA"]];

fn intel_chain<'a>(
    ders: &'a [Vec<u8>],
    what: &'static str,
    shape: &[&[&str]],
    policy: &Policy,
    now: u64,
) -> Result<Vec<X509Certificate<'a>>> {
    let chain = ders
        .iter()
        .map(|d| parse_cert(what, d))
        .collect::<Result<Vec<_>>>()?;
    // Exactly Intel's shape: a certificate Intel issued for one purpose (a PCK, whose key a
    // platform holds) cannot stand in for another (a CA, a collateral signer).
    if chain.len() != shape.len() {
        return Err(malformed(
            what,
            format!(
                "{} certificates, not {} ({})",
                chain.len(),
                shape.len(),
                shape
                    .iter()
                    .map(|names| names.join(" or "))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for (i, (cert, names)) in chain.iter().zip(shape).enumerate() {
        let name = common_name(cert);
        if !names.contains(&name.as_str()) {
            return Err(AttestError::UntrustedRoot(format!(
                "{what}: certificate {} is '{name}', not {}",
                i + 1,
                names.join(" or ")
            )));
        }
        if cert.is_ca() != (i > 0) {
            return Err(AttestError::UntrustedRoot(format!(
                "{what}: '{name}' {} a CA",
                if i > 0 { "is not" } else { "is" }
            )));
        }
    }
    let root = chain.last().ok_or_else(|| malformed(what, "it is empty"))?;
    let digest = key_digest(root);
    if hex::encode(digest) != INTEL_SGX_ROOT && !policy.extra_roots.contains(&digest) {
        return Err(AttestError::UntrustedRoot(format!(
            "{what} ends in '{}' (public key SHA-256 {}), not Intel's SGX Root CA",
            common_name(root),
            hex::encode(digest)
        )));
    }
    check_ec_chain(&chain, Ecdsa::P256Sha256, what, now)?;
    Ok(chain)
}

/// A CRL signed by `issuer` and current at `now`; the serials it revokes.
fn crl_serials(
    what: &'static str,
    der: &[u8],
    issuer: &X509Certificate<'_>,
    now: u64,
) -> Result<Vec<Vec<u8>>> {
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| malformed(what, format!("not a CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(what, "bytes follow the CRL"));
    }
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(AttestError::BadSignature {
            what,
            reason: format!(
                "it is issued by '{}', not by '{}'",
                crl.issuer(),
                common_name(issuer)
            ),
        });
    }
    if !canonical_signed(
        crl.as_raw(),
        crl.tbs_cert_list.as_ref(),
        Ecdsa::P256Sha256,
        &crl.signature_value.data,
    ) || !Ecdsa::P256Sha256.verifies(
        &issuer.public_key().subject_public_key.data,
        crl.tbs_cert_list.as_ref(),
        &crl.signature_value.data,
        true,
    ) {
        return Err(AttestError::BadSignature {
            what,
            reason: format!("it is not signed by '{}'", common_name(issuer)),
        });
    }
    let from = crl.last_update().timestamp();
    let to = crl.next_update().map_or(i64::MAX, |t| t.timestamp());
    let at = i64::try_from(now).unwrap_or(i64::MAX);
    if at < from || at > to {
        return Err(AttestError::Expired {
            what: what.to_owned(),
            at: now,
            not_before: from,
            not_after: to,
        });
    }
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

fn not_revoked(cert: &X509Certificate<'_>, serials: &[Vec<u8>]) -> Result<()> {
    if serials.iter().any(|s| s.as_slice() == cert.raw_serial()) {
        return Err(AttestError::Policy(format!(
            "certificate '{}' (serial {}) is revoked by Intel",
            common_name(cert),
            cert.raw_serial_as_string()
        )));
    }
    Ok(())
}

/// What the PCK certificate says of the platform.
struct PckTcb {
    fmspc: [u8; 6],
    pce_id: [u8; 2],
    cpu_svn: [u8; 16],
    pce_svn: u16,
}

/// Reads the SGX extension of a PCK certificate.
fn pck_tcb(cert: &X509Certificate<'_>) -> Result<PckTcb> {
    const WHAT: &str = "PCK certificate";
    let ext = cert
        .iter_extensions()
        .find(|e| e.oid.to_id_string() == OID_SGX)
        .ok_or_else(|| malformed(WHAT, "it has no SGX extension"))?;
    let (_, top) =
        parse_der(ext.value).map_err(|_| malformed(WHAT, "its SGX extension is not DER"))?;
    let entries = top
        .as_sequence()
        .map_err(|_| malformed(WHAT, "its SGX extension is not a SEQUENCE"))?;
    let (mut fmspc, mut pce_id, mut cpu_svn, mut pce_svn) = (None, None, [None; 16], None);
    for entry in entries {
        let [oid, value] = entry.as_sequence().map(Vec::as_slice).unwrap_or(&[]) else {
            continue;
        };
        let Ok(oid) = oid.as_oid() else { continue };
        match oid.to_id_string().as_str() {
            OID_FMSPC => fmspc = value.as_slice().ok().and_then(|v| v.try_into().ok()),
            OID_PCEID => pce_id = value.as_slice().ok().and_then(|v| v.try_into().ok()),
            OID_TCB => {
                for comp in value.as_sequence().map(Vec::as_slice).unwrap_or(&[]) {
                    let [c_oid, c_value] = comp.as_sequence().map(Vec::as_slice).unwrap_or(&[])
                    else {
                        continue;
                    };
                    let Ok(c_oid) = c_oid.as_oid() else { continue };
                    let id = c_oid.to_id_string();
                    let Some(n) = id
                        .strip_prefix(OID_TCB)
                        .and_then(|s| s.strip_prefix('.'))
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    let small = match &c_value.content {
                        BerObjectContent::Integer(_) => c_value.as_u32().ok(),
                        _ => None,
                    };
                    match (n, small) {
                        (1..=16, Some(v)) => cpu_svn[n - 1] = u8::try_from(v).ok(),
                        (17, Some(v)) => pce_svn = u16::try_from(v).ok(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let fmspc = fmspc.ok_or_else(|| malformed(WHAT, "it has no 6-byte FMSPC"))?;
    let pce_id = pce_id.ok_or_else(|| malformed(WHAT, "it has no 2-byte PCE id"))?;
    let pce_svn = pce_svn.ok_or_else(|| malformed(WHAT, "it has no PCE SVN"))?;
    let mut svn = [0u8; 16];
    for (i, c) in cpu_svn.iter().enumerate() {
        svn[i] =
            c.ok_or_else(|| malformed(WHAT, format!("it has no CPU SVN component {}", i + 1)))?;
    }
    Ok(PckTcb {
        fmspc,
        pce_id,
        cpu_svn: svn,
        pce_svn,
    })
}

/// A status with the advisories that came with it.
struct Verdict {
    status: TcbStatus,
    advisories: Vec<String>,
    /// Whether the levels met are Intel's latest (the first of the TCB Info's and of the TDX
    /// module identity's).
    latest: bool,
}

impl Verdict {
    fn add(&mut self, status: TcbStatus, advisories: &[String]) {
        self.status = self.status.with_component(status);
        for a in advisories {
            if !self.advisories.contains(a) {
                self.advisories.push(a.clone());
            }
        }
    }
}

/// The platform's and the TDX module's verdict for one `TEE_TCB_SVN`.
fn platform_verdict(info: &TcbInfo, pck: &PckTcb, tee_tcb_svn: &[u8; 16]) -> Result<Verdict> {
    // A module of major version > 0 is judged by its module identity, so the first two TDX
    // components (the module's SVN and version) are not compared with the platform's levels.
    let skip = if tee_tcb_svn[1] > 0 { 2 } else { 0 };
    let mut found = None;
    for (index, level) in info.tcb_levels.iter().enumerate() {
        let (sgx, tdx) = (&level.tcb.sgxtcbcomponents, &level.tcb.tdxtcbcomponents);
        if sgx.len() != 16 || tdx.len() != 16 {
            return Err(malformed(
                "TCB Info",
                "a TCB level does not have 16 SGX and 16 TDX components",
            ));
        }
        let meets = sgx
            .iter()
            .zip(pck.cpu_svn)
            .all(|(need, have)| have >= need.svn)
            && pck.pce_svn >= level.tcb.pcesvn
            && tdx
                .iter()
                .zip(tee_tcb_svn)
                .skip(skip)
                .all(|(need, have)| *have >= need.svn);
        if meets {
            found = Some((index, level));
            break;
        }
    }
    let (index, level) = found.ok_or_else(|| {
        AttestError::Policy(
            "the platform's TCB is below every level in Intel's TCB Info (unsupported)".into(),
        )
    })?;
    let mut verdict = Verdict {
        status: TcbStatus::parse(&level.tcb_status, PLATFORM_STATUSES)?,
        advisories: level.advisory_ids.clone(),
        latest: index == 0,
    };
    if tee_tcb_svn[1] > 0 {
        let want = format!("TDX_{:02X}", tee_tcb_svn[1]);
        let module = info
            .tdx_module_identities
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&want))
            .ok_or_else(|| {
                AttestError::Policy(format!(
                    "the TD runs TDX module version {}, which Intel's TCB Info does not know",
                    tee_tcb_svn[1]
                ))
            })?;
        let (index, level) = module
            .tcb_levels
            .iter()
            .enumerate()
            .find(|(_, l)| u16::from(tee_tcb_svn[0]) >= l.tcb.isvsvn)
            .ok_or_else(|| {
                AttestError::Policy(format!(
                    "TDX module SVN {} is below every level of {want}",
                    tee_tcb_svn[0]
                ))
            })?;
        verdict.add(
            TcbStatus::parse(&level.tcb_status, MODULE_STATUSES)?,
            &level.advisory_ids,
        );
        verdict.latest &= index == 0;
    }
    Ok(verdict)
}

/// Checks the TDX module's signer and attributes against the TCB Info.
fn check_module(info: &TcbInfo, quote: &Quote<'_>) -> Result<()> {
    let tee = quote.tee_tcb_svn();
    let module = if tee[1] > 0 {
        let want = format!("TDX_{:02X}", tee[1]);
        info.tdx_module_identities
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&want))
    } else {
        None
    }
    .or(info.tdx_module.as_ref())
    .ok_or_else(|| malformed("TCB Info", "it has no tdxModule"))?;
    let signer: [u8; 48] = hex_array("TCB Info", "tdxModule.mrsigner", &module.mrsigner)?;
    let attributes: [u8; 8] = hex_array("TCB Info", "tdxModule.attributes", &module.attributes)?;
    let mask: [u8; 8] = hex_array(
        "TCB Info",
        "tdxModule.attributesMask",
        &module.attributes_mask,
    )?;
    if quote.mr_signer_seam() != signer {
        return Err(AttestError::Policy(format!(
            "the TDX module is signed by {}, not by Intel ({})",
            hex::encode(quote.mr_signer_seam()),
            module.mrsigner
        )));
    }
    let seam = quote.seam_attributes();
    if seam
        .iter()
        .zip(mask)
        .zip(attributes)
        .any(|((have, m), want)| have & m != want & m || have & !m != 0)
    {
        return Err(AttestError::Policy(format!(
            "the TDX module's attributes {} are not Intel's {}",
            hex::encode(seam),
            module.attributes
        )));
    }
    Ok(())
}

/// The QE's verdict: it is Intel's TD quoting enclave, at an SVN the QE Identity rates.
fn qe_verdict(identity: &QeIdentity, qe_report: &[u8]) -> Result<Verdict> {
    const WHAT: &str = "QE Identity";
    let misc: [u8; 4] = hex_array(WHAT, "miscselect", &identity.miscselect)?;
    let misc_mask: [u8; 4] = hex_array(WHAT, "miscselectMask", &identity.miscselect_mask)?;
    let attrs: [u8; 16] = hex_array(WHAT, "attributes", &identity.attributes)?;
    let attrs_mask: [u8; 16] = hex_array(WHAT, "attributesMask", &identity.attributes_mask)?;
    let signer: [u8; 32] = hex_array(WHAT, "mrsigner", &identity.mrsigner)?;
    let masked_eq = |have: &[u8], want: &[u8], mask: &[u8]| {
        have.iter()
            .zip(want)
            .zip(mask)
            .all(|((h, w), m)| h & m == w & m)
    };
    // MISCSELECT is a little-endian u32 in the report and big-endian hex in the identity.
    let mut report_misc = array::<4>(qe_report, 16);
    report_misc.reverse();
    if qe_report[128..160] != signer
        || le_u16(qe_report, 256) != identity.isvprodid
        || !masked_eq(&report_misc, &misc, &misc_mask)
        || !masked_eq(&qe_report[48..64], &attrs, &attrs_mask)
    {
        return Err(AttestError::Policy(
            "the quoting enclave is not Intel's TD quoting enclave (signer, product or \
             attributes differ from the QE Identity)"
                .into(),
        ));
    }
    let svn = le_u16(qe_report, 258);
    let level = identity
        .tcb_levels
        .iter()
        .find(|l| svn >= l.tcb.isvsvn)
        .ok_or_else(|| {
            AttestError::Policy(format!(
                "the quoting enclave's SVN {svn} is below every level Intel lists"
            ))
        })?;
    Ok(Verdict {
        status: TcbStatus::parse(&level.tcb_status, QE_STATUSES)?,
        advisories: level.advisory_ids.clone(),
        latest: false,
    })
}

/// A TDX 1.5 TD's verdict when a TD-preserving update has happened since its launch (Intel's
/// "relaunch advised"): the launch TCB (with the QE's status converged in) is out of date, the
/// quoting enclave is not, and the current TCB (`TEE_TCB_SVN2`) meets Intel's latest levels.
/// Otherwise the launch verdict stands.
fn relaunch(launch: TcbStatus, qe: TcbStatus, current: &Verdict) -> TcbStatus {
    let launch_out = matches!(
        launch,
        TcbStatus::OutOfDate | TcbStatus::OutOfDateConfigurationNeeded
    );
    let qe_fine = !matches!(
        qe,
        TcbStatus::OutOfDate | TcbStatus::OutOfDateConfigurationNeeded | TcbStatus::Revoked
    );
    if launch_out && qe_fine && current.latest {
        if launch.needs_configuration() || current.status.needs_configuration() {
            TcbStatus::TdRelaunchAdvisedConfigurationNeeded
        } else {
            TcbStatus::TdRelaunchAdvised
        }
    } else {
        launch
    }
}

/// The policy's word on a TCB verdict.
fn judge(verdict: &Verdict, policy: &Policy) -> Result<()> {
    if verdict.status == TcbStatus::Revoked || !policy.accepted.contains(&verdict.status) {
        return Err(AttestError::Policy(format!(
            "the platform's TCB is {} (advisories: {}): update its microcode, BIOS and TDX \
         module, or accept the status in the policy",
            verdict.status.name(),
            if verdict.advisories.is_empty() {
                "none".to_owned()
            } else {
                verdict.advisories.join(", ")
            }
        )));
    }
    if let Some(a) = verdict
        .advisories
        .iter()
        .find(|a| policy.refused_advisories.contains(a))
    {
        return Err(AttestError::Policy(format!(
            "the platform is exposed to {a}, which the policy refuses"
        )));
    }
    Ok(())
}

fn signed_json<'a>(
    what: &'static str,
    text: &'a str,
    signature_hex: &str,
    signer: &X509Certificate<'_>,
) -> Result<&'a str> {
    let sig =
        hex::decode(signature_hex).map_err(|_| malformed(what, "its signature is not hex"))?;
    if sig.len() != 64
        || !Ecdsa::P256Sha256.verifies(
            &signer.public_key().subject_public_key.data,
            text.as_bytes(),
            &sig,
            false,
        )
    {
        return Err(AttestError::BadSignature {
            what,
            reason: format!(
                "it is not signed by '{}' (changed after Intel signed it)",
                common_name(signer)
            ),
        });
    }
    Ok(text)
}

/// Verifies a TDX quote at `now` (seconds since the epoch; pin it inside the collateral's
/// validity to verify recorded evidence) against `collateral`, under `policy`; with
/// `expected_report_data`, the quote must carry exactly it.
///
/// # Errors
/// [`AttestError`] naming what fails first: the quote's shape, a chain (root not Intel's, a
/// certificate not signed by the next, out of its validity, or revoked), the collateral's
/// signatures or dates, the QE report, the quote's signature, the TCB, or the policy.
pub fn verify(
    quote_bytes: &[u8],
    collateral: &Collateral,
    policy: &Policy,
    expected_report_data: Option<&[u8; 64]>,
    now: u64,
) -> Result<Claims> {
    let quote = Quote::parse(quote_bytes)?;
    let pck_text = std::str::from_utf8(quote.pck_chain)
        .map_err(|_| malformed("TDX quote", "its PCK chain is not PEM text"))?;

    // The chains first, each ending in Intel's pinned root.
    let pck_ders = pem_certificates(
        pck_text,
        "PCK certificate chain",
        3,
        "it needs the PCK certificate, its CA and Intel's root",
    )?;
    // The chain's text is not signed: it must be exactly the canonical PEM of what it holds
    // (64-column lines), padded with zeros at most, so no byte of a quote is free to change
    // (but for ECDSA's (r, n - s), which verifies as well as (r, s)).
    let mut canonical = String::new();
    for der in &pck_ders {
        canonical.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64ct::Base64::encode_string(der);
        for line in b64.as_bytes().chunks(64) {
            canonical.push_str(std::str::from_utf8(line).unwrap_or_default());
            canonical.push('\n');
        }
        canonical.push_str("-----END CERTIFICATE-----\n");
    }
    if pck_text.trim_end_matches('\0') != canonical {
        return Err(malformed(
            "TDX quote",
            "its PCK chain is not canonical PEM (changed, or text around the certificates)",
        ));
    }
    let pck_chain = intel_chain(&pck_ders, "PCK certificate chain", PCK_CHAIN, policy, now)?;
    let tcb_ders = pem_certificates(
        &collateral.tcb_info_issuer_chain,
        "TCB Info signing chain",
        2,
        "it needs the TCB signing certificate and Intel's root",
    )?;
    let tcb_chain = intel_chain(
        &tcb_ders,
        "TCB Info signing chain",
        SIGNING_CHAIN,
        policy,
        now,
    )?;
    let qe_ders = pem_certificates(
        &collateral.qe_identity_issuer_chain,
        "QE Identity signing chain",
        2,
        "it needs the TCB signing certificate and Intel's root",
    )?;
    let qe_chain = intel_chain(
        &qe_ders,
        "QE Identity signing chain",
        SIGNING_CHAIN,
        policy,
        now,
    )?;
    let (Some(pck), Some(pck_ca), Some(root)) =
        (pck_chain.first(), pck_chain.get(1), pck_chain.last())
    else {
        return Err(malformed("PCK certificate chain", "it is too short"));
    };
    if key_digest(root) != tcb_chain.last().map(key_digest).unwrap_or_default()
        || key_digest(root) != qe_chain.last().map(key_digest).unwrap_or_default()
    {
        return Err(AttestError::UntrustedRoot(
            "the quote's chain and the collateral's end in different roots".into(),
        ));
    }

    // Revocation: the root's CRL covers the CAs under it, the PCK CA's its PCK certificates.
    let root_crl = hex::decode(&collateral.root_ca_crl)
        .map_err(|_| malformed("DCAP collateral", "root_ca_crl is not hex"))?;
    let pck_crl = hex::decode(&collateral.pck_crl)
        .map_err(|_| malformed("DCAP collateral", "pck_crl is not hex"))?;
    let revoked_cas = crl_serials("Intel's Root CA CRL", &root_crl, root, now)?;
    let revoked_pcks = crl_serials("Intel's PCK CA CRL", &pck_crl, pck_ca, now)?;
    for cert in pck_chain[1..pck_chain.len() - 1]
        .iter()
        .chain(&tcb_chain[..tcb_chain.len() - 1])
        .chain(&qe_chain[..qe_chain.len() - 1])
    {
        not_revoked(cert, &revoked_cas)?;
    }
    not_revoked(pck, &revoked_pcks)?;

    // The collateral, signed by Intel and current.
    let tcb_signer = tcb_chain
        .first()
        .ok_or_else(|| malformed("TCB Info signing chain", "it is empty"))?;
    let qe_signer = qe_chain
        .first()
        .ok_or_else(|| malformed("QE Identity signing chain", "it is empty"))?;
    let info: TcbInfo = serde_json::from_str(signed_json(
        "TCB Info",
        &collateral.tcb_info,
        &collateral.tcb_info_signature,
        tcb_signer,
    )?)
    .map_err(|e| malformed("TCB Info", e.to_string()))?;
    let identity: QeIdentity = serde_json::from_str(signed_json(
        "QE Identity",
        &collateral.qe_identity,
        &collateral.qe_identity_signature,
        qe_signer,
    )?)
    .map_err(|e| malformed("QE Identity", e.to_string()))?;
    if info.id != "TDX" || info.version != 3 {
        return Err(malformed(
            "TCB Info",
            format!(
                "it is '{}' version {}, not TDX version 3 (SGX collateral for a TDX quote?)",
                info.id, info.version
            ),
        ));
    }
    if identity.id != "TD_QE" || identity.version != 2 {
        return Err(malformed(
            "QE Identity",
            format!(
                "it is '{}' version {}, not TD_QE version 2",
                identity.id, identity.version
            ),
        ));
    }
    if info.tcb_type != 0 {
        return Err(malformed(
            "TCB Info",
            format!("TCB type {}, not 0", info.tcb_type),
        ));
    }
    let evaluation = info
        .tcb_evaluation_data_number
        .min(identity.tcb_evaluation_data_number);
    if evaluation < policy.min_tcb_evaluation {
        return Err(AttestError::Policy(format!(
            "the collateral is of TCB evaluation {evaluation}, older than {} the policy \
             requires: fetch current collateral",
            policy.min_tcb_evaluation
        )));
    }
    check_current("TCB Info", &info.issue_date, &info.next_update, now)?;
    check_current(
        "QE Identity",
        &identity.issue_date,
        &identity.next_update,
        now,
    )?;

    // The QE report: signed by the PCK key, binding the attestation key.
    let pck_key = &pck.public_key().subject_public_key.data;
    if !Ecdsa::P256Sha256.verifies(pck_key, quote.qe_report, quote.qe_report_signature, false) {
        return Err(AttestError::BadSignature {
            what: "the quoting enclave's report",
            reason: format!(
                "it is not signed by the PCK certificate '{}' (changed, or another platform's)",
                common_name(pck)
            ),
        });
    }
    let mut bound = Sha256::new();
    bound.update(quote.attestation_key);
    bound.update(quote.qe_auth_data);
    let bound: [u8; 32] = bound.finalize().into();
    if quote.qe_report[320..352] != bound || quote.qe_report[352..384].iter().any(|b| *b != 0) {
        return Err(AttestError::BadSignature {
            what: "the TDX quote",
            reason: "its attestation key is not the one the quoting enclave vouched for".into(),
        });
    }
    let mut key = Vec::with_capacity(65);
    key.push(0x04);
    key.extend_from_slice(quote.attestation_key);
    if !Ecdsa::P256Sha256.verifies(&key, quote.signed, quote.signature, false) {
        return Err(AttestError::BadSignature {
            what: "the TDX quote",
            reason: "its TD report is not signed by its attestation key (the quote was changed)"
                .into(),
        });
    }

    // The TCB.
    let pck_tcb = pck_tcb(pck)?;
    let fmspc: [u8; 6] = hex_array("TCB Info", "fmspc", &info.fmspc)?;
    let pce_id: [u8; 2] = hex_array("TCB Info", "pceId", &info.pce_id)?;
    if fmspc != pck_tcb.fmspc || pce_id != pck_tcb.pce_id {
        return Err(AttestError::Policy(format!(
            "the TCB Info is for FMSPC {} and PCE {}, the platform is FMSPC {} and PCE {}: \
             fetch the collateral for this platform",
            info.fmspc,
            info.pce_id,
            hex::encode_upper(pck_tcb.fmspc),
            hex::encode_upper(pck_tcb.pce_id)
        )));
    }
    check_module(&info, &quote)?;
    let tee = quote.tee_tcb_svn();
    let mut verdict = platform_verdict(&info, &pck_tcb, &tee)?;
    let qe = qe_verdict(&identity, quote.qe_report)?;
    verdict.add(qe.status, &qe.advisories);
    if let Some(current) = quote.tee_tcb_svn2() {
        let now_verdict = platform_verdict(&info, &pck_tcb, &current)?;
        verdict.status = relaunch(verdict.status, qe.status, &now_verdict);
        // The current TCB's advisories count too: a refused one refuses the quote.
        for a in &now_verdict.advisories {
            if !verdict.advisories.contains(a) {
                verdict.advisories.push(a.clone());
            }
        }
    }

    // The policy.
    judge(&verdict, policy)?;
    let attributes = quote.td_attributes();
    if attributes & !TD_ATTRIBUTES_DEFINED != 0 {
        return Err(AttestError::Policy(format!(
            "the TD's attributes {attributes:#018x} set reserved bits"
        )));
    }
    if quote.debug() && !policy.allow_debug {
        return Err(AttestError::Policy(
            "the TD is under debug: its memory is the host's to read".into(),
        ));
    }
    if let Some(want) = expected_report_data
        && quote.report_data() != *want
    {
        return Err(AttestError::Policy(
            "the quote carries other report data (a replayed quote, or another request's)".into(),
        ));
    }
    let measurements = quote.measurements();
    for (name, want) in &policy.reference {
        let want = hex::encode(want);
        match measurements.get(name) {
            Some(got) if *got == want => {}
            got => {
                return Err(AttestError::Policy(format!(
                    "{name} is {}, not the reference value {want}",
                    got.map_or("absent", String::as_str)
                )));
            }
        }
    }
    let executables = if policy.mr_td.is_empty() {
        Trust::None
    } else if policy.mr_td.contains(&quote.mr_td()) {
        Trust::Affirming
    } else {
        return Err(AttestError::Policy(format!(
            "MRTD {} is not one the policy accepts",
            hex::encode(quote.mr_td())
        )));
    };
    let mut tcb = BTreeMap::new();
    tcb.insert("tdx_module_svn".to_owned(), tee[0]);
    tcb.insert(
        "tcb_evaluation".to_owned(),
        u8::try_from(evaluation).unwrap_or(u8::MAX),
    );
    tcb.insert(
        "qe_svn".to_owned(),
        u8::try_from(le_u16(quote.qe_report, 258)).unwrap_or(u8::MAX),
    );
    tcb.insert("tdx_module_version".to_owned(), tee[1]);
    tcb.insert(
        "pce_svn".to_owned(),
        u8::try_from(pck_tcb.pce_svn).unwrap_or(u8::MAX),
    );
    for (i, svn) in pck_tcb.cpu_svn.iter().enumerate() {
        tcb.insert(format!("cpu_svn{i:02}"), *svn);
    }
    for (i, svn) in tee.iter().enumerate().skip(2) {
        tcb.insert(format!("tee_tcb_svn{i:02}"), *svn);
    }
    Ok(Claims {
        platform: "tdx",
        product: match quote.kind {
            TdReportKind::Td10 => "TDX 1.0".into(),
            TdReportKind::Td15 | TdReportKind::Td15Ex => "TDX 1.5".into(),
        },
        signed_by: format!("PCK '{}'", common_name(pck)),
        report_data: hex::encode(quote.report_data()),
        measurements,
        debug: quote.debug(),
        tcb,
        tcb_status: Some(verdict.status.name().to_owned()),
        advisory_ids: verdict.advisories,
        trust: TrustVector {
            instance_identity: Trust::Affirming,
            hardware: if verdict.status == TcbStatus::UpToDate {
                Trust::Affirming
            } else {
                Trust::Warning
            },
            executables,
            configuration: if quote.debug() {
                Trust::Warning
            } else {
                Trust::Affirming
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_intel_writes_them() {
        assert_eq!(parse_time("t", "1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("t", "2025-06-19T10:16:03Z").unwrap(),
            1_750_328_163
        );
        assert_eq!(
            parse_time("t", "2024-02-29T23:59:59Z").unwrap(),
            1_709_251_199
        );
        for bad in [
            "2025-06-19 10:16:03Z",
            "2025-13-01T00:00:00Z",
            "2025-06-19T10:16:03",
            "+025-06-19T10:16:03Z",
            "1969-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "",
        ] {
            assert!(parse_time("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_component_changes_the_platform_status_only_when_out_of_date_or_revoked() {
        use TcbStatus::*;
        assert_eq!(UpToDate.with_component(OutOfDate), OutOfDate);
        assert_eq!(
            ConfigurationNeeded.with_component(OutOfDate),
            OutOfDateConfigurationNeeded
        );
        assert_eq!(
            SwHardeningNeeded.with_component(UpToDate),
            SwHardeningNeeded
        );
        assert_eq!(UpToDate.with_component(Revoked), Revoked);
        assert_eq!(
            UpToDate.with_component(OutOfDateConfigurationNeeded),
            OutOfDate
        );
        let current = |status, latest| Verdict {
            status,
            advisories: Vec::new(),
            latest,
        };
        assert_eq!(
            relaunch(OutOfDate, UpToDate, &current(UpToDate, true)),
            TdRelaunchAdvised
        );
        assert_eq!(
            relaunch(OutOfDate, UpToDate, &current(ConfigurationNeeded, true)),
            TdRelaunchAdvisedConfigurationNeeded
        );
        // Not the latest level now, or the QE out of date, or nothing to relaunch for.
        assert_eq!(
            relaunch(OutOfDate, UpToDate, &current(UpToDate, false)),
            OutOfDate
        );
        assert_eq!(
            relaunch(OutOfDate, OutOfDate, &current(UpToDate, true)),
            OutOfDate
        );
        assert_eq!(
            relaunch(UpToDate, UpToDate, &current(UpToDate, true)),
            UpToDate
        );
    }

    fn level(sgx: u8, pce: u16, tdx: u8, status: &str, advisories: &[&str]) -> String {
        let comps = |v: u8| {
            let mut c = vec![format!("{{\"svn\":{v}}}")];
            c.extend((1..16).map(|_| "{\"svn\":0}".to_owned()));
            c.join(",")
        };
        format!(
            "{{\"tcb\":{{\"sgxtcbcomponents\":[{}],\"pcesvn\":{pce},\"tdxtcbcomponents\":[{}]}},\
             \"tcbDate\":\"2024-01-01T00:00:00Z\",\"tcbStatus\":\"{status}\",\"advisoryIDs\":{:?}}}",
            comps(sgx),
            comps(tdx),
            advisories
        )
    }

    fn info(levels: &[String], module_levels: &str) -> TcbInfo {
        let json = format!(
            "{{\"id\":\"TDX\",\"version\":3,\"issueDate\":\"2025-01-01T00:00:00Z\",\
             \"nextUpdate\":\"2025-02-01T00:00:00Z\",\"fmspc\":\"00A06D080000\",\"pceId\":\"0000\",\
             \"tcbType\":0,\"tcbEvaluationDataNumber\":17,\
             \"tdxModuleIdentities\":[{{\"id\":\"TDX_01\",\"mrsigner\":\"00\",\"attributes\":\"00\",\
             \"attributesMask\":\"00\",\"tcbLevels\":[{module_levels}]}}],\"tcbLevels\":[{}]}}",
            levels.join(",")
        );
        serde_json::from_str(&json).unwrap()
    }

    fn pck(sgx0: u8, pce_svn: u16) -> PckTcb {
        let mut cpu_svn = [0; 16];
        cpu_svn[0] = sgx0;
        PckTcb {
            fmspc: [0; 6],
            pce_id: [0; 2],
            cpu_svn,
            pce_svn,
        }
    }

    #[test]
    fn the_first_level_the_platform_meets_gives_the_status_and_its_advisories() {
        let levels = [
            level(5, 13, 3, "UpToDate", &[]),
            level(4, 13, 2, "SWHardeningNeeded", &["INTEL-SA-00615"]),
            level(2, 11, 2, "OutOfDate", &["INTEL-SA-00615", "INTEL-SA-00837"]),
        ];
        let module = r#"{"tcb":{"isvsvn":4},"tcbDate":"2024-01-01T00:00:00Z","tcbStatus":"UpToDate"},
            {"tcb":{"isvsvn":2},"tcbDate":"2023-01-01T00:00:00Z","tcbStatus":"OutOfDate",
             "advisoryIDs":["INTEL-SA-01036"]}"#;
        let info = info(&levels, module);
        // Module version 0: the TDX components are compared from the first.
        let svn = |x: u8| {
            let mut t = [x; 16];
            t[1] = 0;
            t
        };
        let v = platform_verdict(&info, &pck(5, 13), &svn(3)).unwrap();
        assert_eq!((v.status, v.advisories.len()), (TcbStatus::UpToDate, 0));
        let v = platform_verdict(&info, &pck(4, 13), &svn(2)).unwrap();
        assert_eq!(v.status, TcbStatus::SwHardeningNeeded);
        assert_eq!(v.advisories, ["INTEL-SA-00615"]);
        let v = platform_verdict(&info, &pck(9, 12), &svn(9)).unwrap();
        assert_eq!(v.status, TcbStatus::OutOfDate);
        // Below every level: refused, not given the last level's status.
        assert!(platform_verdict(&info, &pck(1, 13), &svn(9)).is_err());
        // Module version 1 at SVN 3: the module's OutOfDate level converges in.
        let mut tee = [3u8; 16];
        tee[1] = 1;
        let v = platform_verdict(&info, &pck(5, 13), &tee).unwrap();
        assert_eq!(v.status, TcbStatus::OutOfDate);
        assert_eq!(v.advisories, ["INTEL-SA-01036"]);
        // An unknown module version is refused.
        tee[1] = 7;
        assert!(platform_verdict(&info, &pck(5, 13), &tee).is_err());

        // The policy: out of date refused by default, accepted when asked, and an advisory
        // refused whatever the status.
        let out = Verdict {
            status: TcbStatus::OutOfDate,
            advisories: vec!["INTEL-SA-00837".into()],
            latest: false,
        };
        let e = judge(&out, &Policy::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("OutOfDate (advisories: INTEL-SA-00837)"),
            "{e}"
        );
        let lenient = Policy {
            accepted: vec![TcbStatus::OutOfDate],
            ..Policy::default()
        };
        judge(&out, &lenient).unwrap();
        let strict = Policy {
            refused_advisories: vec!["INTEL-SA-00837".into()],
            ..lenient
        };
        let e = judge(&out, &strict).unwrap_err();
        assert!(e.to_string().contains("exposed to INTEL-SA-00837"), "{e}");
        let revoked = Verdict {
            status: TcbStatus::Revoked,
            advisories: Vec::new(),
            latest: false,
        };
        let all = Policy {
            accepted: vec![TcbStatus::Revoked],
            ..Policy::default()
        };
        assert!(judge(&revoked, &all).is_err(), "revoked is never accepted");
    }
}
