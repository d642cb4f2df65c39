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

use crate::bytes::Reader;
use crate::claims::{Claims, Trust, TrustVector};
use crate::error::{AttestError, Result, malformed};
use crate::x509::Ecdsa;

/// `TPM_GENERATED_VALUE`: every `TPMS_ATTEST` a TPM makes starts with it.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ST_ATTEST_CERTIFY`.
const ST_ATTEST_CERTIFY: u16 = 0x8017;
const ALG_SHA256: u16 = 0x000b;
const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;
/// PCRs a TPM has in a bank (the PC client profile's 24).
pub const PCR_COUNT: u8 = 24;
/// The most bytes a quote may have (real ones are under 200).
const MAX_ATTEST_LEN: usize = 2048;

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
        let mut r = Reader::new("TPM quote", bytes);
        let (signer, extra_data, clock, firmware) =
            attest_header(&mut r, "TPM quote", ST_ATTEST_QUOTE, "a quote (0x8018)")?;
        let banks = r.u32_be("the PCR selection's count")?;
        if banks != 1 {
            return Err(malformed(
                "TPM quote",
                format!("it selects {banks} PCR banks; quote the SHA-256 bank alone"),
            ));
        }
        let hash = r.u16_be("the PCR bank")?;
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
        let pcr_digest = r.sized_be("the PCR digest")?;
        if pcr_digest.len() != 32 {
            return Err(malformed(
                "TPM quote",
                format!("its PCR digest is {} bytes, not 32", pcr_digest.len()),
            ));
        }
        if !r.rest().is_empty() {
            return Err(malformed(
                "TPM quote",
                format!("{} bytes follow it", r.rest().len()),
            ));
        }
        Ok(Quote {
            signer,
            extra_data,
            clock,
            firmware,
            pcrs,
            pcr_digest,
        })
    }
}

/// The header every `TPMS_ATTEST` starts with, up to its type-specific part: the signer's
/// qualified name, the extra data, the clock (milliseconds, resets, restarts, safe) and the
/// firmware version. The type must be `kind`.
#[allow(clippy::type_complexity)]
fn attest_header<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
    kind: u16,
    named: &str,
) -> Result<(&'a [u8], &'a [u8], (u64, u32, u32, bool), u64)> {
    if r.u32_be("the magic")? != TPM_GENERATED {
        return Err(malformed(
            what,
            "it does not start with TPM_GENERATED_VALUE: a TPM did not make it",
        ));
    }
    let got = r.u16_be("the type")?;
    if got != kind {
        return Err(malformed(
            what,
            format!("its type is {got:#06x}, not {named}"),
        ));
    }
    let signer = r.sized_be("the signer's name")?;
    let extra_data = r.sized_be("the extra data")?;
    let clock = r.u64_be("the clock")?;
    let resets = r.u32_be("the reset count")?;
    let restarts = r.u32_be("the restart count")?;
    let safe = match r.u8("the clock's safe flag")? {
        0 => false,
        1 => true,
        v => {
            return Err(malformed(what, format!("the safe flag is {v}, not 0 or 1")));
        }
    };
    let firmware = r.u64_be("the firmware version")?;
    Ok((
        signer,
        extra_data,
        (clock, resets, restarts, safe),
        firmware,
    ))
}

/// What TPM evidence a verifier is given.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The quote's `TPMS_ATTEST` bytes.
    pub attest: &'a [u8],
    /// Its `TPMT_SIGNATURE` bytes.
    pub signature: &'a [u8],
    /// The attestation key.
    pub ak: &'a AkPublic,
    /// The endorsement key the attestation key was proven to share a TPM with, by a
    /// credential activation the caller ran ([`make_credential`], then the TPM's
    /// `ActivateCredential` returning the secret): only then are the instance and the
    /// hardware affirmed.
    pub activated: Option<&'a EndorsementKey>,
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

/// An attestation key's public part.
#[derive(Clone)]
pub enum AkKey {
    /// RSA.
    Rsa(rsa::RsaPublicKey),
    /// ECC NIST P-256, as an uncompressed SEC1 point.
    P256(Vec<u8>),
}

impl std::fmt::Debug for AkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AkKey::Rsa(k) => write!(f, "Rsa({} bits)", rsa::traits::PublicKeyParts::size(k) * 8),
            AkKey::P256(p) => write!(f, "P256({})", hex::encode(p)),
        }
    }
}

/// An attestation key: its key, and its TPM name when it came as a `TPM2B_PUBLIC` (the name
/// credential activation binds).
#[derive(Debug, Clone)]
pub struct AkPublic {
    /// The key.
    pub key: AkKey,
    /// `nameAlg || H(TPMT_PUBLIC)` (SHA-256), when known.
    pub name: Option<Vec<u8>>,
    /// SHA-256 of what it was read from, for claims.
    pub digest: [u8; 32],
}

/// `TPM_ALG_RSA`, `TPM_ALG_ECC`, `TPM_ALG_NULL`, `TPM_ECC_NIST_P256`.
const ALG_RSA: u16 = 0x0001;
const ALG_ECC: u16 = 0x0023;
const ALG_NULL: u16 = 0x0010;
const ECC_NIST_P256: u16 = 0x0003;
const ECC_NIST_P384: u16 = 0x0004;
/// Object attributes an attestation key must have: fixedTPM, fixedParent,
/// sensitiveDataOrigin, restricted, sign (TPM 2.0 Part 2, 8.3); and must not: decrypt.
const ATTR_FIXED_TPM: u32 = 1 << 1;
const ATTR_FIXED_PARENT: u32 = 1 << 4;
const ATTR_SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const ATTR_RESTRICTED: u32 = 1 << 16;
const ATTR_DECRYPT: u32 = 1 << 17;
const ATTR_SIGN: u32 = 1 << 18;

impl AkPublic {
    /// An id of the key alone, whatever it was read from (a `TPM2B_PUBLIC` or a
    /// SubjectPublicKeyInfo): SHA-256 over a label and the RSA modulus (big-endian, no leading
    /// zeros) and exponent, or the P-256 point (uncompressed). Two readings of one key share it.
    pub fn key_id(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match &self.key {
            AkKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts;
                let n = k.n().to_bytes_be();
                let e = k.e().to_bytes_be();
                h.update(b"keyhaven tpm ak rsa\0");
                h.update(u32::try_from(n.len()).unwrap_or(u32::MAX).to_be_bytes());
                h.update(&n);
                h.update(&e);
            }
            AkKey::P256(point) => {
                h.update(b"keyhaven tpm ak p256\0");
                h.update(point);
            }
        }
        h.finalize().into()
    }

    /// A key from its SubjectPublicKeyInfo (DER): RSA, or EC P-256. It has no TPM name, so it
    /// cannot be bound to an endorsement key.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] for another key or bad DER.
    pub fn from_spki(der: &[u8]) -> Result<AkPublic> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| malformed("attestation key", "not a SubjectPublicKeyInfo (DER)"))?;
        if !rest.is_empty() {
            return Err(malformed("attestation key", "bytes follow its DER"));
        }
        let bits = &spki.subject_public_key.data;
        let key = match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.113549.1.1.1" => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                AkKey::Rsa(
                    rsa::RsaPublicKey::from_pkcs1_der(bits)
                        .map_err(|e| malformed("attestation key", format!("RSA: {e}")))?,
                )
            }
            "1.2.840.10045.2.1" if bits.len() == 65 && bits[0] == 4 => AkKey::P256(bits.to_vec()),
            other => {
                return Err(malformed(
                    "attestation key",
                    format!("algorithm {other}: RSA or EC P-256 keys sign quotes here"),
                ));
            }
        };
        Ok(AkPublic {
            key,
            name: None,
            digest: Sha256::digest(der).into(),
        })
    }

    /// A key from the `TPM2B_PUBLIC` the TPM made it with; its name is computed, and its
    /// attributes must be an attestation key's (a restricted signing key born in the TPM that
    /// cannot leave it).
    ///
    /// # Errors
    /// [`AttestError::Malformed`] for another structure or key; [`AttestError::Policy`] for
    /// attributes that are not an attestation key's.
    pub fn parse(tpm2b_public: &[u8]) -> Result<AkPublic> {
        let mut outer = Reader::new("attestation key", tpm2b_public);
        let public = outer.sized_be("the public area")?;
        if !outer.rest().is_empty() {
            return Err(malformed(
                "attestation key",
                "bytes follow its TPM2B_PUBLIC",
            ));
        }
        let mut r = Reader::new("attestation key", public);
        let kind = r.u16_be("the key type")?;
        let name_alg = r.u16_be("the name algorithm")?;
        if name_alg != ALG_SHA256 {
            return Err(malformed(
                "attestation key",
                format!("name algorithm {name_alg:#06x}, not SHA-256"),
            ));
        }
        let attributes = r.u32_be("the attributes")?;
        let required = ATTR_FIXED_TPM
            | ATTR_FIXED_PARENT
            | ATTR_SENSITIVE_DATA_ORIGIN
            | ATTR_RESTRICTED
            | ATTR_SIGN;
        if attributes & required != required || attributes & ATTR_DECRYPT != 0 {
            return Err(AttestError::Policy(format!(
                "attributes {attributes:#010x} are not an attestation key's (fixedTPM, \
                 fixedParent, sensitiveDataOrigin, restricted, sign; not decrypt)"
            )));
        }
        let _auth_policy = r.sized_be("the auth policy")?;
        // TPMT_SYM_DEF_OBJECT: a signing key has none.
        if r.u16_be("the symmetric algorithm")? != ALG_NULL {
            return Err(malformed(
                "attestation key",
                "a signing key with a symmetric algorithm",
            ));
        }
        let scheme = r.u16_be("the signing scheme")?;
        if scheme != ALG_NULL && r.u16_be("the scheme's hash")? != ALG_SHA256 {
            return Err(malformed(
                "attestation key",
                "a signing scheme not with SHA-256",
            ));
        }
        let key = match kind {
            ALG_RSA => {
                let bits = r.u16_be("the RSA key size")?;
                let exponent = match r.u32_be("the RSA exponent")? {
                    0 => 65_537,
                    e => e,
                };
                let modulus = r.sized_be("the RSA modulus")?;
                if bits < 2048 {
                    return Err(malformed(
                        "attestation key",
                        format!("a {bits}-bit RSA key: 2048 bits at least"),
                    ));
                }
                if usize::from(bits) != modulus.len() * 8 {
                    return Err(malformed(
                        "attestation key",
                        format!("a {bits}-bit key with a {}-byte modulus", modulus.len()),
                    ));
                }
                AkKey::Rsa(
                    rsa::RsaPublicKey::new(
                        rsa::BigUint::from_bytes_be(modulus),
                        rsa::BigUint::from(exponent),
                    )
                    .map_err(|e| malformed("attestation key", format!("RSA: {e}")))?,
                )
            }
            ALG_ECC => {
                let curve = r.u16_be("the curve")?;
                if curve != ECC_NIST_P256 {
                    return Err(malformed(
                        "attestation key",
                        format!("curve {curve:#06x}, not NIST P-256"),
                    ));
                }
                if r.u16_be("the KDF")? != ALG_NULL {
                    return Err(malformed("attestation key", "a signing key with a KDF"));
                }
                let (x, y) = (r.sized_be("x")?, r.sized_be("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(malformed("attestation key", "x or y is not 32 bytes"));
                }
                let mut point = vec![4u8];
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                if p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_err() {
                    return Err(malformed("attestation key", "not a point on P-256"));
                }
                AkKey::P256(point)
            }
            other => {
                return Err(malformed(
                    "attestation key",
                    format!("key type {other:#06x}: RSA or ECC keys sign quotes here"),
                ));
            }
        };
        if !r.rest().is_empty() {
            return Err(malformed("attestation key", "bytes follow its public area"));
        }
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(public));
        Ok(AkPublic {
            key,
            name: Some(name),
            digest: Sha256::digest(tpm2b_public).into(),
        })
    }
}

/// A key `TPM2_Certify` vouched for: what its public area says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// Its TPM name (`nameAlg || SHA-256(TPMT_PUBLIC)`), what the certification names.
    pub name: Vec<u8>,
    /// The curve: `P-256` or `P-384`.
    pub curve: &'static str,
    /// The public key, an uncompressed SEC1 point.
    pub point: Vec<u8>,
    /// Whether it signs (else it agrees keys: `decrypt`).
    pub signs: bool,
    /// The attestation key that certified it (SHA-256 of its `TPM2B_PUBLIC`, hex).
    pub certified_by: String,
}

/// What `keyhaven key attest` brings for a TPM key: `TPM2_Certify` of the key by an
/// attestation key.
#[derive(Debug, Clone, Copy)]
pub struct Certification<'a> {
    /// The `TPMS_ATTEST` (of type certify).
    pub certify_info: &'a [u8],
    /// Its `TPMT_SIGNATURE` by the attestation key.
    pub signature: &'a [u8],
    /// The attestation key.
    pub ak: &'a AkPublic,
    /// The certified key's `TPM2B_PUBLIC`.
    pub key_public: &'a [u8],
}

/// Verifies a certification: signed by `ak`, over `expected_challenge` when given, naming
/// exactly the public area sent, which must be a key born in a TPM that cannot leave it
/// (`fixedTPM`, `fixedParent`, `sensitiveDataOrigin`), an ECC P-256 or P-384 key.
///
/// What it proves: the TPM holding `ak` holds that key, and made it. That `ak` is a genuine
/// TPM's is for the caller to know (an AK it pinned, or one enrolled by credential
/// activation against a certified endorsement key).
///
/// # Errors
/// [`AttestError`] naming what fails first.
pub fn verify_certification(
    c: &Certification<'_>,
    expected_challenge: Option<&[u8]>,
) -> Result<CertifiedKey> {
    const WHAT: &str = "TPM key certification";
    if c.certify_info.len() > MAX_ATTEST_LEN {
        return Err(malformed(WHAT, "longer than a TPMS_ATTEST can be"));
    }
    let mut r = Reader::new(WHAT, c.certify_info);
    let (_, extra_data, _, _) =
        attest_header(&mut r, WHAT, ST_ATTEST_CERTIFY, "a certification (0x8017)")?;
    let name = r.sized_be("the certified name")?;
    let _qualified = r.sized_be("the certified qualified name")?;
    if !r.rest().is_empty() {
        return Err(malformed(
            WHAT,
            format!("{} bytes follow it", r.rest().len()),
        ));
    }
    // Everything parsed first (so a fuzzer reaches every parser), then the signature.
    let key = parse_certified_public(c.key_public)?;
    check_signature(
        "the TPM key certification",
        c.ak,
        c.certify_info,
        c.signature,
    )?;
    if let Some(challenge) = expected_challenge
        && extra_data != challenge
    {
        return Err(AttestError::Policy(
            "the certification answers another challenge (a replayed one)".into(),
        ));
    }
    if key.0 != name {
        return Err(AttestError::Policy(
            "the certification names another object than the public area sent".into(),
        ));
    }
    Ok(CertifiedKey {
        name: key.0,
        curve: key.1,
        point: key.2,
        signs: key.3,
        certified_by: hex::encode(c.ak.digest),
    })
}

/// A certified key's `TPM2B_PUBLIC`: its name, curve, point and whether it signs.
fn parse_certified_public(tpm2b: &[u8]) -> Result<(Vec<u8>, &'static str, Vec<u8>, bool)> {
    const WHAT: &str = "certified key";
    let mut outer = Reader::new(WHAT, tpm2b);
    let public = outer.sized_be("the public area")?;
    if !outer.rest().is_empty() {
        return Err(malformed(WHAT, "bytes follow its TPM2B_PUBLIC"));
    }
    let mut r = Reader::new(WHAT, public);
    let kind = r.u16_be("the key type")?;
    if kind != ALG_ECC {
        return Err(malformed(WHAT, format!("key type {kind:#06x}, not ECC")));
    }
    if r.u16_be("the name algorithm")? != ALG_SHA256 {
        return Err(malformed(WHAT, "its name algorithm is not SHA-256"));
    }
    let attributes = r.u32_be("the attributes")?;
    let born_inside = ATTR_FIXED_TPM | ATTR_FIXED_PARENT | ATTR_SENSITIVE_DATA_ORIGIN;
    if attributes & born_inside != born_inside {
        return Err(AttestError::Policy(format!(
            "attributes {attributes:#010x}: the key was not made in the TPM or may leave it \
             (fixedTPM, fixedParent and sensitiveDataOrigin are required)"
        )));
    }
    if attributes & ATTR_RESTRICTED != 0 {
        return Err(AttestError::Policy(
            "a restricted key (an attestation or storage key), not a key that signs or agrees \
             for its holder"
                .into(),
        ));
    }
    let signs = attributes & ATTR_SIGN != 0;
    if signs == (attributes & ATTR_DECRYPT != 0) {
        return Err(AttestError::Policy(format!(
            "attributes {attributes:#010x}: a key signs or agrees keys, one of the two"
        )));
    }
    let _auth_policy = r.sized_be("the auth policy")?;
    if r.u16_be("the symmetric algorithm")? != ALG_NULL {
        return Err(malformed(WHAT, "a key with a symmetric algorithm"));
    }
    // ECDSA (with its hash) or none: other schemes' parameters differ.
    match r.u16_be("the scheme")? {
        ALG_NULL => {}
        ALG_ECDSA => {
            let _hash = r.u16_be("the scheme's hash")?;
        }
        other => {
            return Err(malformed(
                WHAT,
                format!("scheme {other:#06x}: ECDSA or none"),
            ));
        }
    }
    let (curve, size) = match r.u16_be("the curve")? {
        ECC_NIST_P256 => ("P-256", 32),
        ECC_NIST_P384 => ("P-384", 48),
        other => return Err(malformed(WHAT, format!("curve {other:#06x}"))),
    };
    if r.u16_be("the KDF")? != ALG_NULL {
        let _hash = r.u16_be("the KDF's hash")?;
    }
    let (x, y) = (r.sized_be("x")?, r.sized_be("y")?);
    if x.len() != size || y.len() != size {
        return Err(malformed(WHAT, "x or y is not the curve's size"));
    }
    if !r.rest().is_empty() {
        return Err(malformed(WHAT, "bytes follow its public area"));
    }
    let mut point = vec![4u8];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(public));
    Ok((name, curve, point, signs))
}

/// Checks the `TPMT_SIGNATURE` over `message` with `ak`.
fn check_signature(
    what: &'static str,
    ak: &AkPublic,
    message: &[u8],
    signature: &[u8],
) -> Result<()> {
    let bad = |reason: String| AttestError::BadSignature { what, reason };
    let mut r = Reader::new("TPM signature", signature);
    let sig_alg = r.u16_be("the signature's algorithm")?;
    let hash = r.u16_be("the signature's hash")?;
    if hash != ALG_SHA256 {
        return Err(bad(format!("it uses hash {hash:#06x}, not SHA-256")));
    }
    let verified = match (sig_alg, &ak.key) {
        (ALG_RSASSA | ALG_RSAPSS, AkKey::Rsa(key)) => {
            let sig = r.sized_be("the RSA signature")?;
            crate::rsa_pss::verify_sha256_key(key, message, sig, sig_alg == ALG_RSAPSS).is_ok()
        }
        (ALG_ECDSA, AkKey::P256(key)) => {
            let (rr, ss) = (
                r.sized_be("the signature's r")?,
                r.sized_be("the signature's s")?,
            );
            if rr.len() > 32 || ss.len() > 32 {
                return Err(bad("r or s is longer than a P-256 scalar".into()));
            }
            let mut raw = [0u8; 64];
            raw[32 - rr.len()..32].copy_from_slice(rr);
            raw[64 - ss.len()..].copy_from_slice(ss);
            Ecdsa::P256Sha256.verifies(key, message, &raw, false)
        }
        (alg, key) => {
            return Err(bad(format!(
                "signature algorithm {alg:#06x} does not fit the attestation key ({key:?})"
            )));
        }
    };
    if !r.rest().is_empty() {
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
    check_signature(
        "the TPM quote",
        evidence.ak,
        evidence.attest,
        evidence.signature,
    )?;
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
    let affirmed = if evidence.activated.is_some() {
        Trust::Affirming
    } else {
        Trust::None
    };
    Ok(Claims {
        platform: "tpm",
        product: evidence.activated.map_or_else(
            || "TPM 2.0".into(),
            |ek| format!("TPM 2.0, {}", ek.certified_by),
        ),
        signed_by: format!("attestation key {}", hex::encode(evidence.ak.digest)),
        report_data: hex::encode(quote.extra_data),
        measurements,
        debug: false,
        tcb,
        tcb_status: None,
        advisory_ids: Vec::new(),
        trust: TrustVector {
            // That the AK is a genuine TPM's is proved by credential activation.
            instance_identity: affirmed,
            hardware: affirmed,
            executables: if policy.pcrs.is_empty() {
                Trust::None
            } else {
                Trust::Affirming
            },
            configuration: Trust::None,
        },
    })
}

/// An endorsement key, read from its certificate after the certificate was checked up to a
/// trusted CA: the key credential activation encrypts to.
#[derive(Debug, Clone)]
pub struct EndorsementKey {
    key: rsa::RsaPublicKey,
    /// The certificate's subject and issuer, for claims.
    pub certified_by: String,
}

/// `sha256WithRSAEncryption`, how TPM manufacturers' CAs (and swtpm's local CA) sign.
const RSA_WITH_SHA256: &str = "1.2.840.113549.1.1.11";

/// Checks that `issuer` signed `cert` (RSA PKCS#1 v1.5 or ECDSA, SHA-256/384).
fn signed_by(
    cert: &x509_parser::prelude::X509Certificate<'_>,
    issuer: &x509_parser::prelude::X509Certificate<'_>,
) -> Result<()> {
    use crate::x509::common_name;
    let alg = cert.signature_algorithm.algorithm.to_id_string();
    let key = &issuer.public_key().subject_public_key.data;
    let tbs = cert.tbs_certificate.as_ref();
    let sig = &cert.signature_value.data;
    let cert_sign = issuer
        .key_usage()
        .ok()
        .flatten()
        .is_none_or(|k| k.value.key_cert_sign());
    let ok = cert.issuer().as_raw() == issuer.subject().as_raw()
        && issuer.is_ca()
        && cert_sign
        && match alg.as_str() {
            RSA_WITH_SHA256 => crate::rsa_pss::verify_sha256(key, tbs, sig, false).is_ok(),
            "1.2.840.10045.4.3.2" => Ecdsa::P256Sha256.verifies(key, tbs, sig, true),
            "1.2.840.10045.4.3.3" => Ecdsa::P384Sha384.verifies(key, tbs, sig, true),
            _ => false,
        };
    if !ok {
        return Err(AttestError::BadSignature {
            what: "the endorsement key certificate chain",
            reason: format!(
                "'{}' is not signed by the CA '{}' ({alg})",
                common_name(cert),
                common_name(issuer)
            ),
        });
    }
    Ok(())
}

impl EndorsementKey {
    /// Reads the RSA endorsement key of the certificate `ek_cert` (DER) after checking it up
    /// to one of the trusted CAs in `cas` (PEM: the manufacturer's intermediate and root
    /// certificates; a certificate is trusted when it chains to one of them that is
    /// self-signed), each certificate within its validity at `now`.
    ///
    /// # Errors
    /// [`AttestError::UntrustedRoot`] when the chain does not reach a trusted root; others for
    /// malformed certificates, bad signatures, expiry, or a key that is not RSA 2048 or more.
    pub fn from_certificate(ek_cert: &[u8], cas: &str, now: u64) -> Result<EndorsementKey> {
        use crate::x509::{check_validity, common_name, parse, pem_certificates};
        let cert = parse("endorsement key certificate", ek_cert)?;
        let ders = pem_certificates(
            cas,
            "trusted EK CAs",
            1,
            "name the TPM manufacturer's CA certificates (PEM)",
        )?;
        let trusted = ders
            .iter()
            .map(|d| parse("trusted EK CAs", d))
            .collect::<Result<Vec<_>>>()?;
        check_validity(&cert, now)?;
        // What the certificate is for: an endorsement key (TCG's EKU, 2.23.133.8.1), used to
        // encrypt (keyEncipherment), not a CA.
        let eku_ok = cert.extended_key_usage().ok().flatten().is_some_and(|e| {
            e.value
                .other
                .iter()
                .any(|oid| oid.to_id_string() == "2.23.133.8.1")
        });
        let ku_ok = cert
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|k| k.value.key_encipherment());
        if cert.is_ca() || !eku_ok || !ku_ok {
            return Err(AttestError::Policy(format!(
                "certificate '{}' is not an endorsement key certificate (it needs TCG's \
                 EK extended key usage 2.23.133.8.1 and keyEncipherment, and must not be a CA)",
                common_name(&cert)
            )));
        }
        let mut current = &cert;
        for _ in 0..=trusted.len() {
            let Some(issuer) = trusted
                .iter()
                .find(|c| c.subject().as_raw() == current.issuer().as_raw())
            else {
                break;
            };
            signed_by(current, issuer)?;
            check_validity(issuer, now)?;
            if issuer.subject().as_raw() == issuer.issuer().as_raw() {
                signed_by(issuer, issuer)?;
                let spki = cert.public_key();
                if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
                    return Err(malformed(
                        "endorsement key certificate",
                        "its key is not RSA: activate credentials with the RSA EK",
                    ));
                }
                use rsa::pkcs1::DecodeRsaPublicKey;
                let key = rsa::RsaPublicKey::from_pkcs1_der(&spki.subject_public_key.data)
                    .map_err(|e| malformed("endorsement key certificate", format!("RSA: {e}")))?;
                if rsa::traits::PublicKeyParts::size(&key) < 256 {
                    return Err(malformed(
                        "endorsement key certificate",
                        "its RSA key is shorter than 2048 bits",
                    ));
                }
                return Ok(EndorsementKey {
                    key,
                    certified_by: format!(
                        "EK '{}' by '{}'",
                        common_name(&cert),
                        common_name(issuer)
                    ),
                });
            }
            current = issuer;
        }
        Err(AttestError::UntrustedRoot(format!(
            "the endorsement key certificate (issued by '{}') does not chain to a trusted CA",
            cert.issuer()
        )))
    }
}

/// A credential for `TPM2_ActivateCredential`: what only the TPM holding the endorsement key,
/// and an object of the given name in it, can open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `TPM2B_ID_OBJECT`: the integrity HMAC and the encrypted credential.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`: the seed, RSA-OAEP-encrypted to the endorsement key.
    pub encrypted_secret: Vec<u8>,
}

/// The TPM's KDFa (SP 800-108 counter mode with HMAC-SHA-256, TPM 2.0 Part 1, 11.4.10.2).
fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
            break;
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// The OS's randomness, for the rsa crate (whose RNG trait is rand_core 0.6's).
struct OsRandom;

impl rand_core_06::RngCore for OsRandom {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // The OS refusing randomness is not something to go on from.
        getrandom::fill(dest).unwrap_or_else(|e| panic!("no randomness from the OS: {e}")); // ok: no input reaches this
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand_core_06::Error> {
        getrandom::fill(dest).map_err(|e| {
            rand_core_06::Error::from(
                std::num::NonZeroU32::new(
                    e.raw_os_error()
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(1),
                )
                .unwrap_or(std::num::NonZeroU32::MIN),
            )
        })
    }
}

impl rand_core_06::CryptoRng for OsRandom {}

/// `TPM2_MakeCredential`, done by the verifier (TPM 2.0 Part 1, 24): `secret` (at most 32
/// bytes) for the object named `name` in the TPM holding `ek`. A fresh seed is
/// RSA-OAEP-encrypted (SHA-256, label `IDENTITY`) to the endorsement key; the credential is
/// AES-128-CFB-encrypted under `KDFa(seed, "STORAGE", name)` and protected by an HMAC under
/// `KDFa(seed, "INTEGRITY")` over it and the name. The TPM opens it only if it holds the
/// endorsement key and an object of that name.
///
/// # Errors
/// [`AttestError::Malformed`] for a secret that is empty or longer than 32 bytes, or a name
/// that is not a SHA-256 name.
pub fn make_credential(ek: &EndorsementKey, name: &[u8], secret: &[u8]) -> Result<Credential> {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    use hmac::Mac;
    use zeroize::Zeroizing;
    if secret.is_empty() || secret.len() > 32 {
        return Err(malformed("credential", "the secret is 1 to 32 bytes"));
    }
    if name.len() != 34 || name[..2] != ALG_SHA256.to_be_bytes() {
        return Err(malformed(
            "credential",
            "the name is not a SHA-256 TPM name",
        ));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice())
        .map_err(|e| malformed("credential", format!("no randomness from the OS: {e}")))?;
    let encrypted = ek
        .key
        .encrypt(
            &mut OsRandom,
            rsa::Oaep::new_with_label::<sha2_010::Sha256, _>("IDENTITY\0"),
            seed.as_slice(),
        )
        .map_err(|e| malformed("credential", format!("RSA-OAEP: {e}")))?;
    let sym_key = Zeroizing::new(kdfa(seed.as_slice(), "STORAGE", name, &[], 128));
    let hmac_key = Zeroizing::new(kdfa(seed.as_slice(), "INTEGRITY", &[], &[], 256));
    // The credential as a TPM2B_DIGEST, AES-128-CFB with a zero IV.
    let mut plain = Zeroizing::new(
        u16::try_from(secret.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec(),
    );
    plain.extend_from_slice(secret);
    let cipher = aes::Aes128::new_from_slice(&sym_key)
        .map_err(|_| malformed("credential", "the derived key is not 16 bytes"))?;
    let mut feedback = [0u8; 16];
    let mut enc_identity = Vec::with_capacity(plain.len());
    for chunk in plain.chunks(16) {
        let mut block = aes::Block::from(feedback);
        cipher.encrypt_block(&mut block);
        let start = enc_identity.len();
        enc_identity.extend(chunk.iter().zip(block.iter()).map(|(p, k)| p ^ k));
        feedback = [0u8; 16];
        feedback[..chunk.len()].copy_from_slice(&enc_identity[start..]);
    }
    let mut mac = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&hmac_key)
        .map_err(|_| malformed("credential", "the derived HMAC key"))?;
    mac.update(&enc_identity);
    mac.update(name);
    let outer = mac.finalize().into_bytes();
    let mut id_object = Vec::with_capacity(4 + outer.len() + enc_identity.len());
    let inner_len = 2 + outer.len() + enc_identity.len();
    id_object.extend_from_slice(&u16::try_from(inner_len).unwrap_or(0).to_be_bytes());
    id_object.extend_from_slice(&u16::try_from(outer.len()).unwrap_or(0).to_be_bytes());
    id_object.extend_from_slice(&outer);
    id_object.extend_from_slice(&enc_identity);
    let mut encrypted_secret = u16::try_from(encrypted.len())
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    encrypted_secret.extend_from_slice(&encrypted);
    Ok(Credential {
        id_object,
        encrypted_secret,
    })
}
