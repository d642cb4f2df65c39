//! AMD SEV-SNP attestation reports (the SEV-SNP firmware ABI's `ATTESTATION_REPORT`, 1184
//! bytes), verified offline: the report's ECDSA P-384 signature by the chip's VCEK (or a
//! cloud provider's VLEK), the VCEK's RSA-PSS signature by the ASK (the VLEK's by the ASVK),
//! the ASK's by the ARK, and the ARK pinned by the SHA-256 of its public key (AMD's roots for
//! Milan, Genoa and Turin are built in). The VCEK's TCB and chip id extensions must match the
//! report's. Then the policy: debug, the migration agent, the minimum TCB, reference
//! measurements, and the report data the request expects.

use std::collections::BTreeMap;

use x509_parser::prelude::X509Certificate;

use crate::bytes::{array, le_u32, le_u64};
use crate::claims::{Claims, Trust, TrustVector};
use crate::error::{AttestError, Result, malformed};
use crate::x509::{check_validity, common_name, key_digest, parse as parse_cert, pem_certificates};

/// The length of a report.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part: everything before the signature.
const SIGNED_LEN: usize = 0x2A0;
/// ECDSA P-384 with SHA-384, the only signature algorithm reports use.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The SHA-256 of the ARK public keys (SubjectPublicKeyInfo, DER) AMD publishes, by product:
/// a chain must end in one of these (or in one the policy adds).
pub const AMD_ARKS: &[(&str, &str)] = &[
    (
        "Milan",
        "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    ),
    (
        "Genoa",
        "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    ),
    (
        "Turin",
        "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
    ),
];

/// AMD's arc for the VCEK extensions (`1.3.6.1.4.1.3704.1`).
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// A TCB version: the security version of each firmware component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcbVersion {
    /// The FMC's (Turin and later only).
    pub fmc: Option<u8>,
    /// The PSP bootloader's.
    pub bootloader: u8,
    /// The PSP OS's.
    pub tee: u8,
    /// The SNP firmware's.
    pub snp: u8,
    /// The microcode's.
    pub microcode: u8,
}

impl TcbVersion {
    /// Reads the 8 bytes of a TCB version; Turin's layout differs from Milan's and Genoa's.
    fn parse(raw: [u8; 8], turin: bool) -> TcbVersion {
        if turin {
            TcbVersion {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
            }
        } else {
            TcbVersion {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
            }
        }
    }

    /// Whether every component is at least `min`'s.
    pub fn at_least(&self, min: &TcbVersion) -> bool {
        self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }

    fn as_map(&self) -> BTreeMap<String, u8> {
        let mut m = BTreeMap::from([
            ("bootloader".to_owned(), self.bootloader),
            ("tee".to_owned(), self.tee),
            ("snp".to_owned(), self.snp),
            ("microcode".to_owned(), self.microcode),
        ]);
        if let Some(f) = self.fmc {
            m.insert("fmc".to_owned(), f);
        }
        m
    }
}

/// Which key signed a report (the report's `SIGNING_KEY` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The chip's own key, certified by AMD through the ASK.
    Vcek,
    /// A cloud provider's key, certified by AMD through the ASVK.
    Vlek,
}

/// A report, parsed: its fields are read at their ABI offsets.
#[derive(Clone)]
pub struct Report {
    bytes: Box<[u8; REPORT_LEN]>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version())
            .field("measurement", &hex::encode(self.measurement()))
            .finish_non_exhaustive()
    }
}

impl Report {
    /// Reads a report.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] for another length, a version other than 2 to 5, a signature
    /// algorithm other than ECDSA P-384, or an unknown signing key.
    pub fn parse(bytes: &[u8]) -> Result<Report> {
        let bytes: Box<[u8; REPORT_LEN]> =
            bytes
                .to_vec()
                .into_boxed_slice()
                .try_into()
                .map_err(|b: Box<[u8]>| {
                    malformed(
                        "SEV-SNP report",
                        format!("it is {} bytes; a report is {REPORT_LEN}", b.len()),
                    )
                })?;
        let r = Report { bytes };
        if !(2..=5).contains(&r.version()) {
            return Err(malformed(
                "SEV-SNP report",
                format!(
                    "version {} is not a known report version (2 to 5)",
                    r.version()
                ),
            ));
        }
        let algo = le_u32(&r.bytes[..], 0x34);
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(malformed(
                "SEV-SNP report",
                format!("signature algorithm {algo} is not ECDSA P-384 with SHA-384 (1)"),
            ));
        }
        r.signer()?;
        // The rest of the signature field is reserved, zero: a report is all signed or zero,
        // so no byte of it can change unnoticed.
        if let Some(at) = r.bytes[0x330..].iter().position(|&b| b != 0) {
            return Err(malformed(
                "SEV-SNP report",
                format!(
                    "reserved byte {:#x} after the signature is not zero",
                    0x330 + at
                ),
            ));
        }
        Ok(r)
    }

    /// The report format version.
    pub fn version(&self) -> u32 {
        le_u32(&self.bytes[..], 0)
    }

    /// The guest policy.
    pub fn policy(&self) -> u64 {
        le_u64(&self.bytes[..], 0x08)
    }

    /// Whether the guest policy allows debugging (bit 19).
    pub fn debug_allowed(&self) -> bool {
        self.policy() & (1 << 19) != 0
    }

    /// Whether the guest policy allows a migration agent (bit 18).
    pub fn migration_agent_allowed(&self) -> bool {
        self.policy() & (1 << 18) != 0
    }

    /// The VMPL the report was requested at.
    pub fn vmpl(&self) -> u32 {
        le_u32(&self.bytes[..], 0x30)
    }

    /// The data the guest bound into the report.
    pub fn report_data(&self) -> [u8; 64] {
        array(&self.bytes[..], 0x50)
    }

    /// The launch measurement.
    pub fn measurement(&self) -> [u8; 48] {
        array(&self.bytes[..], 0x90)
    }

    /// The host data the hypervisor set at launch.
    pub fn host_data(&self) -> [u8; 32] {
        array(&self.bytes[..], 0xC0)
    }

    /// The digest of the ID key that signed the launch's ID block (zero: none).
    pub fn id_key_digest(&self) -> [u8; 48] {
        array(&self.bytes[..], 0xE0)
    }

    /// The chip's id (zero when the guest masked it, or the report is VLEK-signed).
    pub fn chip_id(&self) -> [u8; 64] {
        array(&self.bytes[..], 0x1A0)
    }

    fn reported_tcb_raw(&self) -> [u8; 8] {
        array(&self.bytes[..], 0x180)
    }

    /// Which key signed it.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] for a value other than VCEK or VLEK.
    pub fn signer(&self) -> Result<Signer> {
        match (le_u32(&self.bytes[..], 0x48) >> 2) & 0b111 {
            0 => Ok(Signer::Vcek),
            1 => Ok(Signer::Vlek),
            n => Err(malformed(
                "SEV-SNP report",
                format!("signing key {n} is neither the VCEK (0) nor a VLEK (1)"),
            )),
        }
    }

    /// The signature as P-384 `r || s` (the report stores each little-endian in 72 bytes,
    /// whose top 24 must be zero).
    fn signature(&self) -> Result<p384::ecdsa::Signature> {
        let mut rs = [0u8; 96];
        for (i, at) in [0x2A0usize, 0x2E8].into_iter().enumerate() {
            let le = &self.bytes[at..at + 72];
            if le[48..].iter().any(|&b| b != 0) {
                return Err(AttestError::BadSignature {
                    what: "the SEV-SNP report's signature",
                    reason: "a component is wider than P-384's 48 bytes".into(),
                });
            }
            for (j, b) in le[..48].iter().rev().enumerate() {
                rs[i * 48 + j] = *b;
            }
        }
        p384::ecdsa::Signature::from_slice(&rs).map_err(|_| AttestError::BadSignature {
            what: "the SEV-SNP report's signature",
            reason: "r or s is zero or not below the group order".into(),
        })
    }
}

/// What SEV-SNP evidence a verifier is given.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The report (1184 bytes).
    pub report: &'a [u8],
    /// The VCEK (or VLEK) certificate, DER.
    pub vcek: &'a [u8],
    /// The certificates above it, PEM (AMD's `cert_chain`: ASK or ASVK, and ARK).
    pub chain: &'a str,
}

/// What SEV-SNP evidence must show to be accepted.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Accept a guest whose policy allows debugging (its memory is the host's to read).
    pub allow_debug: bool,
    /// Accept a guest whose policy allows a migration agent.
    pub allow_migration_agent: bool,
    /// The lowest reported TCB accepted.
    pub min_tcb: Option<TcbVersion>,
    /// The highest VMPL a report may be requested at (0: only the most privileged level,
    /// not a paravisor's or an SVSM's guest, which could ask for any report data).
    pub max_vmpl: u32,
    /// The launch measurements accepted (empty: any, and `executables` is not affirmed).
    pub measurements: Vec<[u8; 48]>,
    /// Trust AMD's roots ([`AMD_ARKS`]); off, only [`Policy::extra_arks`] are trusted.
    pub amd_roots: bool,
    /// Extra ARK public key digests (SHA-256 of the SPKI) trusted beside [`AMD_ARKS`].
    pub extra_arks: Vec<[u8; 32]>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_debug: false,
            allow_migration_agent: false,
            min_tcb: None,
            max_vmpl: 0,
            measurements: Vec::new(),
            amd_roots: true,
            extra_arks: Vec::new(),
        }
    }
}

/// Checks that `issuer` signed `cert` (RSASSA-PSS with SHA-384, as AMD signs its
/// certificates).
fn check_signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<()> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(AttestError::BadSignature {
            what: "the certificate chain",
            reason: format!(
                "'{}' is issued by '{}', not by '{}'",
                common_name(cert),
                cert.issuer(),
                common_name(issuer)
            ),
        });
    }
    crate::rsa_pss::verify_sha384(
        &issuer.public_key().subject_public_key.data,
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
    .map_err(|reason| AttestError::BadSignature {
        what: "the certificate chain",
        reason: format!(
            "'{}' is not signed by '{}': {reason}",
            common_name(cert),
            common_name(issuer)
        ),
    })
}

/// The value of an AMD extension holding a DER INTEGER of one byte.
fn spl(cert: &X509Certificate<'_>, oid: &str) -> Result<Option<u8>> {
    let Some(ext) = cert.iter_extensions().find(|e| e.oid.to_id_string() == oid) else {
        return Ok(None);
    };
    match ext.value {
        [0x02, 1, v] => Ok(Some(*v)),
        [0x02, 2, 0, v] if *v >= 0x80 => Ok(Some(*v)),
        _ => Err(malformed(
            "VCEK certificate",
            format!("extension {oid} is not a small INTEGER"),
        )),
    }
}

fn hwid(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    let ext = cert
        .iter_extensions()
        .find(|e| e.oid.to_id_string() == OID_HWID)?;
    // An OCTET STRING of 64 bytes (8 on Turin), or the bytes themselves.
    match ext.value {
        [0x04, n, rest @ ..] if usize::from(*n) == rest.len() && matches!(*n, 8 | 64) => {
            Some(rest.to_vec())
        }
        v if v.len() == 64 || v.len() == 8 => Some(v.to_vec()),
        _ => None,
    }
}

/// Verifies SEV-SNP evidence at `now` (seconds since the epoch) under `policy`; with
/// `expected_report_data`, the report must carry exactly it.
///
/// # Errors
/// [`AttestError`] naming the first thing that fails: the report's shape, a signature, the
/// root, a certificate's validity, a TCB or chip id that the VCEK does not certify, or the
/// policy.
pub fn verify(
    evidence: &Evidence<'_>,
    policy: &Policy,
    expected_report_data: Option<&[u8; 64]>,
    now: u64,
) -> Result<Claims> {
    let report = Report::parse(evidence.report)?;
    let signer = report.signer()?;
    let vcek = parse_cert("VCEK certificate", evidence.vcek)?;
    let chain_der = pem_certificates(
        evidence.chain,
        "certificate chain",
        1,
        "no PEM certificate in it (AMD's cert_chain: ASK or ASVK, then ARK)",
    )?;
    let chain = chain_der
        .iter()
        .map(|d| parse_cert("certificate chain", d))
        .collect::<Result<Vec<_>>>()?;

    // The report's signature, by the VCEK's (or VLEK's) P-384 key.
    let key =
        p384::ecdsa::VerifyingKey::from_sec1_bytes(&vcek.public_key().subject_public_key.data)
            .map_err(|_| malformed("VCEK certificate", "its public key is not a P-384 point"))?;
    {
        use signature::Verifier;
        key.verify(&evidence.report[..SIGNED_LEN], &report.signature()?)
            .map_err(|_| AttestError::BadSignature {
                what: "the SEV-SNP report",
                reason: format!(
                    "its signature is not by the {} '{}' (the report or the certificate was \
                     changed, or they belong to different chips)",
                    match signer {
                        Signer::Vcek => "VCEK",
                        Signer::Vlek => "VLEK",
                    },
                    common_name(&vcek)
                ),
            })?;
    }

    // The chain: VCEK <- ASK (VLEK <- ASVK) <- ARK, the ARK self-signed and pinned.
    let issuer = chain
        .iter()
        .find(|c| c.subject().as_raw() == vcek.issuer().as_raw())
        .ok_or_else(|| {
            AttestError::UntrustedRoot(format!(
                "the chain has no certificate of '{}', the VCEK's issuer",
                vcek.issuer()
            ))
        })?;
    let ark = chain
        .iter()
        .find(|c| c.subject().as_raw() == issuer.issuer().as_raw())
        .ok_or_else(|| {
            AttestError::UntrustedRoot(format!(
                "the chain has no certificate of '{}', the issuer of '{}'",
                issuer.issuer(),
                common_name(issuer)
            ))
        })?;
    // The root is pinned before any signature is checked with a key the requester sent.
    let ark_digest = key_digest(ark);
    let product = AMD_ARKS
        .iter()
        .filter(|_| policy.amd_roots)
        .find(|(_, h)| *h == hex::encode(ark_digest))
        .map(|(p, _)| (*p).to_owned())
        .or_else(|| {
            policy
                .extra_arks
                .contains(&ark_digest)
                .then(|| common_name(ark).trim_start_matches("ARK-").to_owned())
        })
        .ok_or_else(|| {
            AttestError::UntrustedRoot(format!(
                "the ARK '{}' (public key SHA-256 {}) is not AMD's Milan, Genoa or Turin root",
                common_name(ark),
                hex::encode(ark_digest)
            ))
        })?;
    // VCEK <- ASK (`SEV-<product>`), VLEK <- ASVK (`SEV-VLEK-<product>`), each <- ARK: an
    // intermediate of the other role, or none at all, is refused.
    let role = match signer {
        Signer::Vcek => format!("SEV-{product}"),
        Signer::Vlek => format!("SEV-VLEK-{product}"),
    };
    if issuer.public_key().raw == ark.public_key().raw || common_name(issuer) != role {
        return Err(AttestError::BadSignature {
            what: "the certificate chain",
            reason: format!(
                "the {} must be issued by AMD's '{role}', not by '{}'",
                match signer {
                    Signer::Vcek => "VCEK",
                    Signer::Vlek => "VLEK",
                },
                common_name(issuer)
            ),
        });
    }
    check_signed_by(ark, ark)?;
    check_signed_by(issuer, ark)?;
    check_signed_by(&vcek, issuer)?;
    for c in [&vcek, issuer, ark] {
        check_validity(c, now)?;
    }

    // The VCEK certifies one chip at one TCB: the report must be of both.
    let turin = product == "Turin";
    let tcb = TcbVersion::parse(report.reported_tcb_raw(), turin);
    // Both the VCEK and the VLEK certify a TCB: each component must be there and equal.
    let mut certified = vec![
        (OID_BL_SPL, Some(tcb.bootloader), "bootloader"),
        (OID_TEE_SPL, Some(tcb.tee), "tee"),
        (OID_SNP_SPL, Some(tcb.snp), "snp"),
        (OID_UCODE_SPL, Some(tcb.microcode), "microcode"),
    ];
    if turin {
        certified.push((OID_FMC_SPL, tcb.fmc, "fmc"));
    }
    for (oid, reported, name) in certified {
        let v = spl(&vcek, oid)?.ok_or_else(|| {
            malformed(
                "VCEK certificate",
                format!("it certifies no {name} SVN (extension {oid})"),
            )
        })?;
        if Some(v) != reported {
            return Err(AttestError::BadSignature {
                what: "the signing key's TCB",
                reason: format!(
                    "the report's {name} SVN is {}, the certificate certifies {v}: the key is \
                     of another TCB",
                    reported.unwrap_or(0)
                ),
            });
        }
    }
    // A VCEK is one chip's: its hwID must be the report's chip id (Turin's is 8 bytes).
    if signer == Signer::Vcek {
        let id = hwid(&vcek)
            .ok_or_else(|| malformed("VCEK certificate", "it names no chip (hwID extension)"))?;
        let chip = report.chip_id();
        let same = match id.len() {
            64 => id == chip,
            8 => id[..] == chip[..8],
            _ => false,
        };
        if !same {
            return Err(AttestError::BadSignature {
                what: "the VCEK's chip id",
                reason: "the report is of another chip than the VCEK certifies".into(),
            });
        }
    }

    // The policy.
    if let Some(expected) = expected_report_data
        && report.report_data() != *expected
    {
        return Err(AttestError::Policy(
            "the report carries other report data than this request's (a replayed or \
             borrowed report)"
                .into(),
        ));
    }
    if report.debug_allowed() && !policy.allow_debug {
        return Err(AttestError::Policy(
            "the guest's policy allows debugging: the host can read its memory".into(),
        ));
    }
    if report.vmpl() > policy.max_vmpl {
        return Err(AttestError::Policy(format!(
            "the report was requested at VMPL {}, above {} (a less privileged level, such as a \
             paravisor's guest, may ask for any report data)",
            report.vmpl(),
            policy.max_vmpl
        )));
    }
    if report.migration_agent_allowed() && !policy.allow_migration_agent {
        return Err(AttestError::Policy(
            "the guest's policy allows a migration agent".into(),
        ));
    }
    if let Some(min) = &policy.min_tcb
        && !tcb.at_least(min)
    {
        return Err(AttestError::Policy(format!(
            "the reported TCB {:?} is below the minimum {:?}: update the platform's firmware",
            tcb.as_map(),
            min
        )));
    }
    let measurement = report.measurement();
    let executables = if policy.measurements.is_empty() {
        Trust::None
    } else if policy.measurements.contains(&measurement) {
        Trust::Affirming
    } else {
        return Err(AttestError::Policy(format!(
            "launch measurement {} is not one of the {} the policy accepts",
            hex::encode(measurement),
            policy.measurements.len()
        )));
    };
    let configuration = if report.debug_allowed() || report.migration_agent_allowed() {
        Trust::Warning
    } else {
        Trust::Affirming
    };
    Ok(Claims {
        platform: "sev-snp",
        product,
        signed_by: match signer {
            Signer::Vcek => "VCEK".into(),
            Signer::Vlek => "VLEK".into(),
        },
        report_data: hex::encode(report.report_data()),
        measurements: BTreeMap::from([
            ("measurement".to_owned(), hex::encode(measurement)),
            ("host_data".to_owned(), hex::encode(report.host_data())),
            (
                "id_key_digest".to_owned(),
                hex::encode(report.id_key_digest()),
            ),
        ]),
        debug: report.debug_allowed(),
        tcb: tcb.as_map(),
        tcb_status: None,
        advisory_ids: Vec::new(),
        trust: TrustVector {
            instance_identity: Trust::Affirming,
            hardware: Trust::Affirming,
            executables,
            configuration,
        },
    })
}
