//! NVIDIA Hopper GPU attestation: an SPDM 1.1 `GET_MEASUREMENTS` request and its
//! `MEASUREMENTS` response (DMTF DSP0274), signed by the GPU's attestation key, whose
//! certificate chains up to NVIDIA's device identity root (pinned by the SHA-256 of its public
//! key). Written from the SPDM specification: the signature covers the request and the
//! response up to the signature (SHA-384, ECDSA P-384, `r || s`); the request's nonce is the
//! verifier's challenge (the broker binds the release to it); the measurement record is a list
//! of DMTF measurement blocks; NVIDIA's opaque data is a list of (type, length, value) fields
//! (the driver and VBIOS versions among them).

use std::collections::BTreeMap;

use x509_parser::prelude::X509Certificate;

use crate::bytes::Reader;
use crate::claims::{Claims, Trust, TrustVector};
use crate::error::{AttestError, Result, malformed};
use crate::x509::{
    Ecdsa, check_ec_chain, common_name, key_digest, parse as parse_cert, pem_certificates,
};

/// The SHA-256 of the public key (SubjectPublicKeyInfo, DER) of NVIDIA's device identity root
/// (`CN = NVIDIA Device Identity CA, O = NVIDIA`).
pub const NVIDIA_DEVICE_ROOT: &str =
    "a90c4eb5acfd3e3d03a25db6a26b84f720ad0503196c627c21ddd48dd85b06a4";

/// SPDM 1.1, the version Hopper speaks.
const SPDM_11: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
/// A P-384 signature, `r || s`.
const SIG_LEN: usize = 96;
/// The request: version, code, param1, param2, nonce (32), slot id.
const REQUEST_LEN: usize = 4 + 32 + 1;
/// The most measurement blocks read.
const MAX_BLOCKS: usize = 255;

/// What a requester sends.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The SPDM `GET_MEASUREMENTS` request followed by the `MEASUREMENTS` response.
    pub report: &'a [u8],
    /// The attestation key's certificate chain, PEM, leaf first, NVIDIA's root last.
    pub chain: &'a str,
}

/// What GPU evidence must show.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Reference values by measurement index (hex compared exactly); indices not named are
    /// not checked (and `executables` is affirmed only when some are named and all match).
    pub measurements: BTreeMap<u8, Vec<u8>>,
    /// Extra root key digests trusted beside [`NVIDIA_DEVICE_ROOT`].
    pub extra_roots: Vec<[u8; 32]>,
}

/// A parsed report.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The request's nonce: the verifier's challenge.
    pub nonce: [u8; 32],
    /// The response's own nonce.
    pub responder_nonce: [u8; 32],
    /// Each measurement block's value, by index.
    pub measurements: BTreeMap<u8, &'a [u8]>,
    /// NVIDIA's opaque fields, by type.
    pub opaque: BTreeMap<u16, &'a [u8]>,
    /// The signed part: the request and the response up to the signature.
    signed: &'a [u8],
    signature: &'a [u8],
}

impl<'a> Report<'a> {
    /// Reads a request and response.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] naming the field and offset: another SPDM version or code,
    /// a request that asks for no signature, lengths that do not add up, bytes left over.
    pub fn parse(bytes: &'a [u8]) -> Result<Report<'a>> {
        let mut r = Reader::new("SPDM measurements", bytes);
        let bad = |reason: String| malformed("SPDM measurements", reason);
        let (version, code, param1) = (r.u8("version")?, r.u8("code")?, r.u8("param1")?);
        if version != SPDM_11 || code != GET_MEASUREMENTS {
            return Err(bad(format!(
                "the request is version {version:#x} code {code:#x}, not SPDM 1.1 GET_MEASUREMENTS"
            )));
        }
        if param1 & 1 == 0 {
            return Err(bad("the request asks for no signature".into()));
        }
        r.u8("param2")?;
        let nonce = r.array("the request nonce")?;
        r.u8("slot id")?;
        debug_assert_eq!(r.pos(), REQUEST_LEN);
        let (version, code) = (r.u8("response version")?, r.u8("response code")?);
        if version != SPDM_11 || code != MEASUREMENTS {
            return Err(bad(format!(
                "the response is version {version:#x} code {code:#x}, not SPDM 1.1 MEASUREMENTS"
            )));
        }
        r.take(2, "param1 and param2")?;
        let blocks = usize::from(r.u8("the number of blocks")?);
        let record_len = r.u24_le("the measurement record length")?;
        let record = r.take(record_len, "the measurement record")?;
        let responder_nonce = r.array("the response nonce")?;
        let opaque_len = usize::from(r.u16_le("the opaque data length")?);
        let opaque_bytes = r.take(opaque_len, "the opaque data")?;
        let signed_len = r.pos();
        let signature = r.take(SIG_LEN, "the signature")?;
        if r.pos() != bytes.len() {
            return Err(bad(format!(
                "{} bytes follow the signature",
                bytes.len() - r.pos()
            )));
        }

        let mut measurements = BTreeMap::new();
        let mut m = Reader::new("SPDM measurements", record);
        for _ in 0..blocks.min(MAX_BLOCKS) {
            let index = m.u8("a block index")?;
            let spec = m.u8("a block's measurement specification")?;
            let size = usize::from(m.u16_le("a block size")?);
            let block = m.take(size, "a measurement block")?;
            if spec != 1 {
                return Err(bad(format!(
                    "block {index} is not a DMTF measurement (specification {spec})"
                )));
            }
            let mut b = Reader::new("SPDM measurements", block);
            b.u8("a value type")?;
            let len = usize::from(b.u16_le("a value size")?);
            let value = b.take(len, "a measurement value")?;
            if b.pos() != block.len() || measurements.insert(index, value).is_some() {
                return Err(bad(format!("block {index} is malformed or given twice")));
            }
        }
        if m.pos() != record.len() {
            return Err(bad(format!(
                "the record holds more than its {blocks} blocks"
            )));
        }

        let mut opaque = BTreeMap::new();
        let mut o = Reader::new("SPDM measurements", opaque_bytes);
        while o.pos() < opaque_bytes.len() {
            let kind = o.u16_le("an opaque field type")?;
            let len = usize::from(o.u16_le("an opaque field size")?);
            opaque.insert(kind, o.take(len, "an opaque field")?);
        }
        Ok(Report {
            nonce,
            responder_nonce,
            measurements,
            opaque,
            signed: &bytes[..signed_len],
            signature,
        })
    }

    /// An opaque field as text (NUL-padded ASCII), if it is some.
    fn text(&self, kind: u16) -> Option<String> {
        let v = self.opaque.get(&kind)?;
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        std::str::from_utf8(&v[..end]).ok().map(str::to_owned)
    }
}

fn p384_key(cert: &X509Certificate<'_>) -> Result<p384::ecdsa::VerifyingKey> {
    p384::ecdsa::VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data).map_err(
        |_| {
            malformed(
                "GPU certificate chain",
                format!("the key of '{}' is not a P-384 point", common_name(cert)),
            )
        },
    )
}

/// Verifies GPU evidence at `now` under `policy`; with `expected_nonce`, the request must
/// carry exactly it.
///
/// # Errors
/// [`AttestError`] naming what fails first: the report's shape, the chain (a certificate not
/// signed by the next, a root not pinned, one outside its validity), the report's signature,
/// the nonce, or a measurement the policy does not accept.
pub fn verify(
    evidence: &Evidence<'_>,
    policy: &Policy,
    expected_nonce: Option<&[u8; 32]>,
    now: u64,
) -> Result<Claims> {
    use signature::Verifier;
    let report = Report::parse(evidence.report)?;
    let ders = pem_certificates(
        evidence.chain,
        "GPU certificate chain",
        2,
        "it needs the attestation key's certificate and those above it, up to NVIDIA's root",
    )?;
    let chain = ders
        .iter()
        .map(|d| parse_cert("GPU certificate chain", d))
        .collect::<Result<Vec<_>>>()?;

    // The root is pinned before any signature is checked with a key the requester sent.
    let root = chain
        .last()
        .ok_or_else(|| malformed("GPU certificate chain", "it is empty"))?;
    let root_digest = key_digest(root);
    if hex::encode(root_digest) != NVIDIA_DEVICE_ROOT && !policy.extra_roots.contains(&root_digest)
    {
        return Err(AttestError::UntrustedRoot(format!(
            "'{}' (public key SHA-256 {}) is not NVIDIA's device identity root",
            common_name(root),
            hex::encode(root_digest)
        )));
    }

    // The report next (one verification; a forged report costs no more), by the leaf's
    // key: r || s big-endian over SHA-384 of what precedes it.
    let leaf = chain
        .first()
        .ok_or_else(|| malformed("GPU certificate chain", "it is empty"))?;
    let sig = p384::ecdsa::Signature::from_slice(report.signature).map_err(|_| {
        AttestError::BadSignature {
            what: "the GPU's measurements",
            reason: "r or s is zero or not below the group order".into(),
        }
    })?;
    p384_key(leaf)?
        .verify(report.signed, &sig)
        .map_err(|_| AttestError::BadSignature {
            what: "the GPU's measurements",
            reason: format!(
                "they are not signed by '{}' (changed, or another GPU's)",
                common_name(leaf)
            ),
        })?;

    // Each certificate is signed by the next; the last signs itself and is pinned.
    check_ec_chain(&chain, Ecdsa::P384Sha384, "the GPU certificate chain", now)?;
    if let Some(n) = expected_nonce
        && report.nonce != *n
    {
        return Err(AttestError::Policy(
            "the measurements answer another request's nonce (a replayed report)".into(),
        ));
    }
    for (index, want) in &policy.measurements {
        match report.measurements.get(index) {
            Some(got) if got == &want.as_slice() => {}
            got => {
                return Err(AttestError::Policy(format!(
                    "measurement {index} is {}, not the reference value",
                    got.map_or_else(|| "absent".to_owned(), hex::encode)
                )));
            }
        }
    }
    let executables = if policy.measurements.is_empty() {
        Trust::None
    } else {
        Trust::Affirming
    };
    let mut measurements: BTreeMap<String, String> = report
        .measurements
        .iter()
        .map(|(i, v)| (format!("{i}"), hex::encode(v)))
        .collect();
    for (kind, name) in [(3u16, "driver_version"), (15, "chip_sku"), (17, "project")] {
        if let Some(t) = report.text(kind) {
            measurements.insert(name.to_owned(), t);
        }
    }
    if let Some(v) = report.opaque.get(&6) {
        // The VBIOS version, as NVIDIA prints it: bytes 3, 2, 1, 0, 4 in hex.
        if v.len() >= 5 {
            measurements.insert(
                "vbios_version".to_owned(),
                format!(
                    "{:02x}.{:02x}.{:02x}.{:02x}.{:02x}",
                    v[3], v[2], v[1], v[0], v[4]
                ),
            );
        }
    }
    if let Some(fwid) = report.opaque.get(&20) {
        measurements.insert("fwid".to_owned(), hex::encode(fwid));
    }
    Ok(Claims {
        platform: "nvidia-gpu",
        product: "Hopper".into(),
        signed_by: common_name(leaf),
        report_data: hex::encode(report.nonce),
        measurements,
        debug: false,
        tcb: BTreeMap::new(),
        tcb_status: None,
        advisory_ids: Vec::new(),
        trust: TrustVector {
            instance_identity: Trust::Affirming,
            hardware: Trust::Affirming,
            executables,
            configuration: Trust::None,
        },
    })
}
