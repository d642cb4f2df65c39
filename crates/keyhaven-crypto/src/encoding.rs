//! Encodings of public values: PEM armour, signature formats (DER / raw), JWK.

use base64ct::{Base64UrlUnpadded, Encoding};
use keyhaven_core::{Algorithm, Error, PublicKey, Signature, SignatureFormat};
use zeroize::Zeroizing;

/// Decodes one PEM block whose label is one of `labels`; returns the label and the DER.
///
/// Accepts what OpenSSL accepts: base64 lines of any length (64 columns as RFC 7468 writes
/// them, 76 as MIME tools wrap them, or the whole body on one line), CRLF or LF line ends,
/// white space around lines. Text around the block (comments, a trailing newline) is ignored;
/// the DER, and the base64 it came from, are held in zeroizing buffers because private keys
/// pass through here too. Legacy encrypted PEM (`Proc-Type:` headers) is refused with the
/// command that converts it.
///
/// # Errors
/// [`Error::InvalidInput`] if there is no well-formed PEM block or its label is not accepted.
pub fn pem_decode(text: &str, labels: &[&str]) -> Result<(String, Zeroizing<Vec<u8>>), Error> {
    const BEGIN: &str = "-----BEGIN ";
    let malformed = |why: &str| Error::InvalidInput(format!("malformed PEM: {why}"));
    let begin = text.find(BEGIN).ok_or_else(|| {
        Error::InvalidInput("no PEM block found (expected a -----BEGIN ...----- line)".into())
    })?;
    let after = &text[begin + BEGIN.len()..];
    let label_len = after
        .find("-----")
        .ok_or_else(|| malformed("the BEGIN line does not end with -----"))?;
    let label = &after[..label_len];
    if label.contains(['\n', '\r']) {
        return Err(malformed("the BEGIN line does not end with -----"));
    }
    let body_and_rest = &after[label_len + 5..];
    let end_line = format!("-----END {label}-----");
    let body_len = body_and_rest.find(&end_line).ok_or_else(|| {
        Error::InvalidInput(format!("PEM block is not terminated (no {end_line} line)"))
    })?;
    let body = &body_and_rest[..body_len];
    if body.contains(':') {
        return Err(Error::InvalidInput(
            "legacy encrypted PEM (with Proc-Type/DEK-Info headers) is not supported: convert \
             it with `openssl pkcs8 -topk8 -in OLD.pem -out NEW.pem` (PKCS#8, encrypted or not)"
                .into(),
        ));
    }
    let mut b64 = Zeroizing::new(String::with_capacity(body.len()));
    for c in body.chars() {
        if !c.is_ascii_whitespace() {
            b64.push(c);
        }
    }
    let der = Zeroizing::new(
        base64ct::Base64::decode_vec(&b64).map_err(|_| malformed("the body is not base64"))?,
    );
    if der.is_empty() {
        return Err(malformed("the body is empty"));
    }
    if !labels.contains(&label) {
        return Err(Error::InvalidInput(format!(
            "PEM block is '{label}', expected {}",
            labels.join(" or ")
        )));
    }
    Ok((label.to_owned(), der))
}

/// Encodes a signature in `format`.
///
/// ECDSA in [`SignatureFormat::Der`] is an ASN.1 `ECDSA-Sig-Value` (what `openssl dgst` reads);
/// Ed25519 has one form, its 64 bytes, whatever the format.
///
/// # Errors
/// [`Error::InvalidInput`] if the signature bytes are not a valid signature of its algorithm.
pub fn encode_signature(signature: &Signature, format: SignatureFormat) -> Result<Vec<u8>, Error> {
    let raw = signature.as_raw();
    let bad = || Error::InvalidInput("signature bytes are out of range".into());
    Ok(match (signature.algorithm(), format) {
        (_, SignatureFormat::Raw) | (Algorithm::Ed25519, _) => raw.to_vec(),
        (Algorithm::EcdsaP384, SignatureFormat::Der) => p384::ecdsa::Signature::from_slice(raw)
            .map_err(|_| bad())?
            .to_der()
            .as_bytes()
            .to_vec(),
        (Algorithm::EcdsaP256, SignatureFormat::Der) => p256::ecdsa::Signature::from_slice(raw)
            .map_err(|_| bad())?
            .to_der()
            .as_bytes()
            .to_vec(),
        (alg, _) => {
            return Err(Error::InvalidInput(format!(
                "{} keys do not make signatures",
                alg.jose_name()
            )));
        }
    })
}

/// Decodes a signature of `algorithm` from `format`.
///
/// # Errors
/// [`Error::InvalidInput`] naming the expected shape when the bytes do not fit.
pub fn decode_signature(
    algorithm: Algorithm,
    bytes: &[u8],
    format: SignatureFormat,
) -> Result<Signature, Error> {
    let bad_der = || {
        Error::InvalidInput(format!(
            "not a DER {} signature (try --signature-format raw?)",
            algorithm.jose_name()
        ))
    };
    match (algorithm, format) {
        (_, SignatureFormat::Raw) | (Algorithm::Ed25519, _) => {
            Signature::from_raw(algorithm, bytes.to_vec())
        }
        (Algorithm::EcdsaP384, SignatureFormat::Der) => {
            let sig = p384::ecdsa::Signature::from_der(bytes).map_err(|_| bad_der())?;
            Signature::from_raw(algorithm, sig.to_bytes().to_vec())
        }
        (Algorithm::EcdsaP256, SignatureFormat::Der) => {
            let sig = p256::ecdsa::Signature::from_der(bytes).map_err(|_| bad_der())?;
            Signature::from_raw(algorithm, sig.to_bytes().to_vec())
        }
        (alg, _) => Err(Error::InvalidInput(format!(
            "{} keys do not make signatures",
            alg.jose_name()
        ))),
    }
}

/// The public key as a JSON Web Key (RFC 7517 / 7518 / 8037), with `kid` set to its
/// fingerprint and `alg` to its JOSE algorithm.
///
/// # Errors
/// [`Error::InvalidInput`] if the public key is malformed.
pub fn public_key_jwk(public_key: &PublicKey) -> Result<serde_json::Value, Error> {
    let b64 = Base64UrlUnpadded::encode_string;
    let bad = || Error::InvalidInput("malformed public key".into());
    let kid = public_key.fingerprint().to_hex();
    let alg = public_key.algorithm();
    let mut jwk = match alg {
        Algorithm::EcdsaP384 | Algorithm::EcdsaP256 | Algorithm::EcdhP384 | Algorithm::EcdhP256 => {
            // Uncompressed SEC1 point: 0x04 || x || y.
            let crv = alg.nist_curve().ok_or_else(bad)?;
            let point = ec_point_uncompressed(public_key).map_err(|_| bad())?;
            let coords = point.get(1..).ok_or_else(bad)?;
            let (x, y) = coords.split_at(coords.len() / 2);
            serde_json::json!({ "kty": "EC", "crv": crv, "x": b64(x), "y": b64(y) })
        }
        Algorithm::Ed25519 | Algorithm::X25519 => {
            let info = <spki::SubjectPublicKeyInfoRef<'_> as der::Decode<'_>>::from_der(
                public_key.spki_der(),
            )
            .map_err(|_| bad())?;
            let x = info.subject_public_key.as_bytes().ok_or_else(bad)?;
            let crv = if alg == Algorithm::Ed25519 {
                "Ed25519"
            } else {
                "X25519"
            };
            serde_json::json!({ "kty": "OKP", "crv": crv, "x": b64(x) })
        }
        _ => return Err(bad()),
    };
    jwk["kid"] = kid.into();
    jwk["alg"] = alg.jose_name().into();
    jwk["use"] = if alg.can_sign() { "sig" } else { "enc" }.into();
    Ok(jwk)
}

/// The uncompressed SEC1 point (`04 || x || y`) of a P-384 or P-256 public key (ECDSA or ECDH),
/// checked to be on the curve: what PKCS#11's `CKM_ECDH1_DERIVE` and TPM2 `ECDH_ZGen` take.
///
/// # Errors
/// [`Error::InvalidInput`] for a key on another curve, or one that is malformed or off the
/// curve.
pub fn ec_point_uncompressed(public_key: &PublicKey) -> Result<Vec<u8>, Error> {
    use p384::elliptic_curve::sec1::ToSec1Point;
    use pkcs8::DecodePublicKey;
    let bad = || {
        Error::InvalidInput(format!(
            "not a valid {} public key",
            public_key
                .algorithm()
                .nist_curve()
                .unwrap_or("P-384 or P-256")
        ))
    };
    let der = public_key.spki_der();
    match public_key.algorithm().nist_curve() {
        Some("P-384") => {
            let pk = p384::PublicKey::from_public_key_der(der).map_err(|_| bad())?;
            Ok(pk.to_sec1_point(false).as_bytes().to_vec())
        }
        Some("P-256") => {
            let pk = p256::PublicKey::from_public_key_der(der).map_err(|_| bad())?;
            Ok(pk.to_sec1_point(false).as_bytes().to_vec())
        }
        _ => Err(Error::InvalidInput(format!(
            "a {} key is not on a NIST curve",
            public_key.algorithm()
        ))),
    }
}
