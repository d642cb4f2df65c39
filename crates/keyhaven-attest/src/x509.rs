//! The certificate handling every verifier shares: PEM chains read with a bound, DER
//! certificates parsed whole, names for messages, validity at the verification time.

use base64ct::Encoding as _;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{AttestError, Result, malformed};

/// The most certificates a chain may carry.
pub(crate) const MAX_CHAIN: usize = 8;

/// The DER of every PEM certificate in `text`, in order: at least `min`, at most
/// [`MAX_CHAIN`]; `what` names the chain in errors, `hint` says what it should hold.
pub(crate) fn pem_certificates(
    text: &str,
    what: &'static str,
    min: usize,
    hint: &str,
) -> Result<Vec<Vec<u8>>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let end = body
            .find(END)
            .ok_or_else(|| malformed(what, "a certificate has no END line"))?;
        let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            base64ct::Base64::decode_vec(&b64)
                .map_err(|_| malformed(what, "a certificate is not base64"))?,
        );
        if out.len() > MAX_CHAIN {
            return Err(malformed(
                what,
                format!("more than {MAX_CHAIN} certificates"),
            ));
        }
        rest = &body[end..];
    }
    if out.len() < min {
        return Err(malformed(what, hint.to_owned()));
    }
    Ok(out)
}

/// One DER certificate, with nothing after it.
pub(crate) fn parse<'a>(what: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| malformed(what, format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(
            what,
            format!("{} bytes follow the certificate", rest.len()),
        ));
    }
    Ok(cert)
}

/// The subject's common name (empty if none), for messages.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Refuses a certificate outside its validity at `now` (seconds since the epoch).
pub(crate) fn check_validity(cert: &X509Certificate<'_>, now: u64) -> Result<()> {
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    let at = i64::try_from(now).unwrap_or(i64::MAX);
    if at < from || at > to {
        return Err(AttestError::Expired {
            what: format!("certificate '{}'", common_name(cert)),
            at: now,
            not_before: from,
            not_after: to,
        });
    }
    Ok(())
}

/// The ECDSA flavour a vendor signs its certificates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ecdsa {
    /// P-256 with SHA-256 (Intel's DCAP chains).
    P256Sha256,
    /// P-384 with SHA-384 (NVIDIA's device chains).
    P384Sha384,
}

impl Ecdsa {
    fn oid(self) -> &'static str {
        match self {
            Ecdsa::P256Sha256 => "1.2.840.10045.4.3.2",
            Ecdsa::P384Sha384 => "1.2.840.10045.4.3.3",
        }
    }

    /// The DER of the AlgorithmIdentifier (RFC 5758: no parameters).
    fn algorithm_der(self) -> [u8; 12] {
        let last = match self {
            Ecdsa::P256Sha256 => 0x02,
            Ecdsa::P384Sha384 => 0x03,
        };
        [
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, last,
        ]
    }

    fn name(self) -> &'static str {
        match self {
            Ecdsa::P256Sha256 => "ECDSA P-256 with SHA-256",
            Ecdsa::P384Sha384 => "ECDSA P-384 with SHA-384",
        }
    }

    /// Whether `key` (an uncompressed or compressed SEC1 point) signed `message` with `sig`
    /// (DER when `der`, else `r || s`).
    pub(crate) fn verifies(self, key: &[u8], message: &[u8], sig: &[u8], der: bool) -> bool {
        use signature::Verifier;
        match self {
            Ecdsa::P256Sha256 => {
                let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(key) else {
                    return false;
                };
                let sig = if der {
                    p256::ecdsa::Signature::from_der(sig)
                } else {
                    p256::ecdsa::Signature::from_slice(sig)
                };
                sig.is_ok_and(|sig| key.verify(message, &sig).is_ok())
            }
            Ecdsa::P384Sha384 => {
                let Ok(key) = p384::ecdsa::VerifyingKey::from_sec1_bytes(key) else {
                    return false;
                };
                let sig = if der {
                    p384::ecdsa::Signature::from_der(sig)
                } else {
                    p384::ecdsa::Signature::from_slice(sig)
                };
                sig.is_ok_and(|sig| key.verify(message, &sig).is_ok())
            }
        }
    }
}

/// Whether a signed structure (`raw`: a certificate or a CRL) is exactly `SEQUENCE { tbs,
/// algorithm, BIT STRING sig }` with the algorithm `alg`'s DER: the outer algorithm and the
/// signature's encoding are not covered by the signature, so they must be the one encoding.
pub(crate) fn canonical_signed(raw: &[u8], tbs: &[u8], alg: Ecdsa, sig: &[u8]) -> bool {
    fn with_len(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes();
        match n {
            [0, short] if short < 0x80 => out.push(short),
            [0, long] => out.extend([0x81, long]),
            [hi, lo] => out.extend([0x82, hi, lo]),
        }
        out.extend_from_slice(body);
        out
    }
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig);
    let mut body = tbs.to_vec();
    body.extend_from_slice(&alg.algorithm_der());
    body.extend(with_len(0x03, &bits));
    body.len() < 0x1_0000 && with_len(0x30, &body) == raw
}

/// Checks a chain, leaf first: each certificate is issued and signed (with `alg`) by the next,
/// the last by itself, and each is within its validity at `now`. The caller pins the last.
pub(crate) fn check_ec_chain(
    chain: &[X509Certificate<'_>],
    alg: Ecdsa,
    what: &'static str,
    now: u64,
) -> Result<()> {
    for (i, cert) in chain.iter().enumerate() {
        let issuer = chain.get(i + 1).unwrap_or(cert);
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(AttestError::BadSignature {
                what,
                reason: format!(
                    "'{}' is issued by '{}', but the next certificate is '{}'",
                    common_name(cert),
                    cert.issuer(),
                    common_name(issuer)
                ),
            });
        }
        if !issuer.is_ca() {
            return Err(AttestError::BadSignature {
                what,
                reason: format!(
                    "'{}' is signed by '{}', which is not a CA (basicConstraints)",
                    common_name(cert),
                    common_name(issuer)
                ),
            });
        }
        let oid = cert.signature_algorithm.algorithm.to_id_string();
        if oid != alg.oid() {
            return Err(AttestError::BadSignature {
                what,
                reason: format!(
                    "'{}' is signed with {oid}, not {}",
                    common_name(cert),
                    alg.name()
                ),
            });
        }
        if !canonical_signed(
            cert.as_raw(),
            cert.tbs_certificate.as_ref(),
            alg,
            &cert.signature_value.data,
        ) {
            return Err(malformed(
                what,
                format!(
                    "'{}' is not in its one DER encoding (its unsigned parts were changed)",
                    common_name(cert)
                ),
            ));
        }
        if !alg.verifies(
            &issuer.public_key().subject_public_key.data,
            cert.tbs_certificate.as_ref(),
            &cert.signature_value.data,
            true,
        ) {
            return Err(AttestError::BadSignature {
                what,
                reason: format!(
                    "'{}' is not signed by '{}'",
                    common_name(cert),
                    common_name(issuer)
                ),
            });
        }
        check_validity(cert, now)?;
    }
    Ok(())
}

/// The SHA-256 of a certificate's public key (its SubjectPublicKeyInfo, DER): how roots are
/// pinned.
pub(crate) fn key_digest(cert: &X509Certificate<'_>) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(cert.public_key().raw).into()
}
