//! TPM 2.0 quotes: a `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`, signed by an attestation key
//! (AK), over a selection of PCRs. Written from the TCG "TPM 2.0 Library, Part 2: Structures"
//! (big-endian, `TPM2B` = a 16-bit size and that many bytes):
//!
//! - the signature (`TPMT_SIGNATURE`: RSASSA or RSAPSS with SHA-256, or ECDSA P-256 with
//!   SHA-256) is the AK's over the `TPMS_ATTEST` bytes;
//! - `extraData` is the verifier's nonce (the broker binds the release to it);
//! - the quoted PCR digest is the SHA-256 of the selected PCR values, in selection order, so
//!   the PCR values the requester sends are exactly those the TPM signed;
//! - the policy's reference values are then compared with them.
//!
//! A quote proves the PCRs of the TPM holding the AK. That the AK lives in a genuine TPM is a
//! separate proof (its binding to an endorsement key certified by the manufacturer, by
//! credential activation); without it the claims' `instance_identity` is not affirmed. A TPM
//! attests a hardware-bound key and a measured boot, not confidential execution.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::claims::{Claims, Trust, TrustVector};
use crate::error::{AttestError, Result, malformed};
use crate::x509::Ecdsa;

/// `TPM_GENERATED_VALUE`: every `TPMS_ATTEST` a TPM makes starts with it.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: u16 = 0x8018;
const ALG_SHA256: u16 = 0x000b;
const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;
/// PCRs a TPM has in a bank (the PC client profile's 24).
pub const PCR_COUNT: u8 = 24;
/// The most bytes a quote may have (real ones are under 200).
const MAX_ATTEST_LEN: usize = 2048;

/// A big-endian reader that says what was cut short.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(malformed(
                "TPM quote",
                format!(
                    "it ends inside {what} ({n} bytes wanted, {} left)",
                    self.rest.len()
                ),
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B`: a 16-bit size, then that many bytes.
    fn sized(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// A parsed `TPMS_ATTEST` of a quote (nothing verified yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote<'a> {
    /// The qualified name of the signing key.
    pub signer: &'a [u8],
    /// `extraData`: the verifier's nonce.
    pub extra_data: &'a [u8],
    /// The TPM's clock (milliseconds), reset and restart counts, and whether the clock is safe.
    pub clock: (u64, u32, u32, bool),
    /// The TPM's firmware version.
    pub firmware: u64,
    /// The selected PCRs of the SHA-256 bank, in order.
    pub pcrs: Vec<u8>,
    /// The digest of the selected PCR values.
    pub pcr_digest: &'a [u8],
}

impl<'a> Quote<'a> {
    /// Parses a quote's `TPMS_ATTEST`: every size checked, nothing trailing; only the SHA-256
    /// PCR bank is read.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] saying which part is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Quote<'a>> {
        if bytes.len() > MAX_ATTEST_LEN {
            return Err(malformed(
                "TPM quote",
                format!("{} bytes, more than {MAX_ATTEST_LEN}", bytes.len()),
            ));
        }
        let mut r = Reader { rest: bytes };
        if r.u32("the magic")? != TPM_GENERATED {
            return Err(malformed(
                "TPM quote",
                "it does not start with TPM_GENERATED_VALUE: a TPM did not make it",
            ));
        }
        let kind = r.u16("the type")?;
        if kind != ST_ATTEST_QUOTE {
            return Err(malformed(
                "TPM quote",
                format!("its type is {kind:#06x}, not a quote (0x8018)"),
            ));
        }
        let signer = r.sized("the signer's name")?;
        let extra_data = r.sized("the extra data")?;
        let clock = u64::from_be_bytes(array8(r.take(8, "the clock")?));
        let resets = r.u32("the reset count")?;
        let restarts = r.u32("the restart count")?;
        let safe = match r.u8("the clock's safe flag")? {
            0 => false,
            1 => true,
            v => {
                return Err(malformed(
                    "TPM quote",
                    format!("the safe flag is {v}, not 0 or 1"),
                ));
            }
        };
        let firmware = u64::from_be_bytes(array8(r.take(8, "the firmware version")?));
        let banks = r.u32("the PCR selection's count")?;
        if banks != 1 {
            return Err(malformed(
                "TPM quote",
                format!("it selects {banks} PCR banks; quote the SHA-256 bank alone"),
            ));
        }
        let hash = r.u16("the PCR bank")?;
        if hash != ALG_SHA256 {
            return Err(malformed(
                "TPM quote",
                format!("it quotes the PCR bank of algorithm {hash:#06x}, not SHA-256"),
            ));
        }
        let size = r.u8("the PCR selection's size")?;
        if !(1..=4).contains(&size) {
            return Err(malformed(
                "TPM quote",
                format!("the PCR selection is {size} bytes, not 1 to 4"),
            ));
        }
        let select = r.take(usize::from(size), "the PCR selection")?;
        let mut pcrs = Vec::new();
        for (byte, bits) in select.iter().enumerate() {
            for bit in 0..8u8 {
                if bits & (1 << bit) != 0 {
                    // size <= 4, so byte * 8 + bit < 32.
                    pcrs.push(u8::try_from(byte).unwrap_or(u8::MAX).saturating_mul(8) + bit);
                }
            }
        }
        if pcrs.iter().any(|p| *p >= PCR_COUNT) {
            return Err(malformed(
                "TPM quote",
                format!("it selects a PCR above {}", PCR_COUNT - 1),
            ));
        }
        let pcr_digest = r.sized("the PCR digest")?;
        if pcr_digest.len() != 32 {
            return Err(malformed(
                "TPM quote",
                format!("its PCR digest is {} bytes, not 32", pcr_digest.len()),
            ));
        }
        if !r.rest.is_empty() {
            return Err(malformed(
                "TPM quote",
                format!("{} bytes follow it", r.rest.len()),
            ));
        }
        Ok(Quote {
            signer,
            extra_data,
            clock: (clock, resets, restarts, safe),
            firmware,
            pcrs,
            pcr_digest,
        })
    }
}

fn array8(b: &[u8]) -> [u8; 8] {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    v
}

/// What TPM evidence a verifier is given.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The quote's `TPMS_ATTEST` bytes.
    pub attest: &'a [u8],
    /// Its `TPMT_SIGNATURE` bytes.
    pub signature: &'a [u8],
    /// The attestation key's public key, SubjectPublicKeyInfo DER (RSA, or EC P-256).
    pub ak_public: &'a [u8],
    /// The PCR values of the SHA-256 bank, by index (at least those the quote selects).
    pub pcrs: &'a BTreeMap<u8, Vec<u8>>,
}

/// What a quote must show.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Reference values by PCR index; each must be selected and equal. Empty: none checked,
    /// and `executables` is not affirmed.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
}

/// Checks the `TPMT_SIGNATURE` over `message` with the SPKI `ak`.
fn check_signature(ak: &[u8], message: &[u8], signature: &[u8]) -> Result<()> {
    let bad = |reason: String| AttestError::BadSignature {
        what: "the TPM quote",
        reason,
    };
    let (rest, spki) = SubjectPublicKeyInfo::from_der(ak)
        .map_err(|_| malformed("attestation key", "not a SubjectPublicKeyInfo (DER)"))?;
    if !rest.is_empty() {
        return Err(malformed("attestation key", "bytes follow its DER"));
    }
    let key = &spki.subject_public_key.data;
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let mut r = Reader { rest: signature };
    let sig_alg = r.u16("the signature's algorithm")?;
    let hash = r.u16("the signature's hash")?;
    if hash != ALG_SHA256 {
        return Err(bad(format!("it uses hash {hash:#06x}, not SHA-256")));
    }
    let verified = match (sig_alg, algorithm.as_str()) {
        (ALG_RSASSA | ALG_RSAPSS, "1.2.840.113549.1.1.1") => {
            let sig = r.sized("the RSA signature")?;
            crate::rsa_pss::verify_sha256(key, message, sig, sig_alg == ALG_RSAPSS)
                .map_err(bad)
                .map(|()| true)?
        }
        (ALG_ECDSA, "1.2.840.10045.2.1") => {
            let (rr, ss) = (r.sized("the signature's r")?, r.sized("the signature's s")?);
            if rr.len() > 32 || ss.len() > 32 {
                return Err(bad("r or s is longer than a P-256 scalar".into()));
            }
            let mut raw = [0u8; 64];
            raw[32 - rr.len()..32].copy_from_slice(rr);
            raw[64 - ss.len()..].copy_from_slice(ss);
            Ecdsa::P256Sha256.verifies(key, message, &raw, false)
        }
        (alg, key_alg) => {
            return Err(bad(format!(
                "signature algorithm {alg:#06x} does not fit the attestation key ({key_alg})"
            )));
        }
    };
    if !r.rest.is_empty() {
        return Err(malformed("TPM signature", "bytes follow it"));
    }
    if !verified {
        return Err(bad(
            "it is not signed by this attestation key (changed, or another key's)".into(),
        ));
    }
    Ok(())
}

/// Verifies a TPM quote under `policy`; with `expected_nonce`, its extra data must be exactly
/// it.
///
/// # Errors
/// [`AttestError`] naming what fails first: the quote's shape, its signature, the nonce, the
/// PCR values (not those quoted), or a reference value.
pub fn verify(
    evidence: &Evidence<'_>,
    policy: &Policy,
    expected_nonce: Option<&[u8]>,
) -> Result<Claims> {
    let quote = Quote::parse(evidence.attest)?;
    check_signature(evidence.ak_public, evidence.attest, evidence.signature)?;
    if let Some(n) = expected_nonce
        && quote.extra_data != n
    {
        return Err(AttestError::Policy(
            "the quote answers another nonce (a replayed quote, or another request's)".into(),
        ));
    }
    // The PCR values sent must be those the TPM signed: their digest, in selection order.
    let mut digest = Sha256::new();
    for index in &quote.pcrs {
        let value = evidence.pcrs.get(index).ok_or_else(|| {
            malformed(
                "TPM evidence",
                format!("the quote selects PCR {index}, whose value was not sent"),
            )
        })?;
        if value.len() != 32 {
            return Err(malformed(
                "TPM evidence",
                format!("PCR {index} is {} bytes, not a SHA-256 value", value.len()),
            ));
        }
        digest.update(value);
    }
    if digest.finalize().as_slice() != quote.pcr_digest {
        return Err(AttestError::BadSignature {
            what: "the TPM quote",
            reason: "the PCR values sent are not the ones the TPM quoted".into(),
        });
    }
    for (index, want) in &policy.pcrs {
        if !quote.pcrs.contains(index) {
            return Err(AttestError::Policy(format!(
                "the quote does not select PCR {index}, which the policy checks"
            )));
        }
        let got = evidence
            .pcrs
            .get(index)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if got != want.as_slice() {
            return Err(AttestError::Policy(format!(
                "PCR {index} is {}, not the reference value {}",
                hex::encode(got),
                hex::encode(want)
            )));
        }
    }
    let measurements = quote
        .pcrs
        .iter()
        .filter_map(|i| {
            evidence
                .pcrs
                .get(i)
                .map(|v| (format!("pcr{i:02}"), hex::encode(v)))
        })
        .collect();
    let mut tcb = BTreeMap::new();
    tcb.insert(
        "reset_count".to_owned(),
        u8::try_from(quote.clock.1).unwrap_or(u8::MAX),
    );
    Ok(Claims {
        platform: "tpm",
        product: "TPM 2.0".into(),
        signed_by: format!(
            "attestation key {}",
            hex::encode(Sha256::digest(evidence.ak_public))
        ),
        report_data: hex::encode(quote.extra_data),
        measurements,
        debug: false,
        tcb,
        tcb_status: None,
        advisory_ids: Vec::new(),
        trust: TrustVector {
            // That the AK is a genuine TPM's is proved by credential activation, not here.
            instance_identity: Trust::None,
            hardware: Trust::None,
            executables: if policy.pcrs.is_empty() {
                Trust::None
            } else {
                Trust::Affirming
            },
            configuration: Trust::None,
        },
    })
}
