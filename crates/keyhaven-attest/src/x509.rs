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
