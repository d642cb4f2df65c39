//! Compact JWS (RFC 7515) over a JSON payload, signed by any keyhaven key: the header is
//! exactly `alg`, `typ` and `kid` (the key's fingerprint), and verification takes the key and
//! the type it expects, so a JWS of another type or key is refused before its signature is
//! read. ECDSA signatures are `r || s` (RFC 7518 §3.4).
//!
//! ```
//! use keyhaven_core::Algorithm;
//! use keyhaven_crypto::{default_provider, jws};
//!
//! let key = default_provider().generate(Algorithm::EcdsaP256)?;
//! let payload = serde_json::json!({ "released": "db/password" });
//! let token = jws::sign(key.public_key(), "example+jwt", &payload, &mut |m| key.sign(m))?;
//! assert_eq!(jws::verify(&token, key.public_key(), "example+jwt")?, payload);
//! # Ok::<(), keyhaven_core::Error>(())
//! ```

use base64ct::{Base64UrlUnpadded, Encoding};
use keyhaven_core::{Error, PublicKey, Signature};
use serde_json::{Value, json};

/// The longest compact JWS [`verify`] reads (bytes).
pub const MAX_JWS: usize = 64 << 10;

fn malformed(reason: &str) -> Error {
    Error::InvalidInput(format!("the JWS is malformed: {reason}"))
}

/// Signs `payload` as a compact JWS of type `typ` with `sign`, a signer of `public_key`.
///
/// # Errors
/// The signer's error; [`Error::InvalidInput`] for a key that cannot sign.
pub fn sign(
    public_key: &PublicKey,
    typ: &str,
    payload: &Value,
    sign: &mut dyn FnMut(&[u8]) -> Result<Signature, Error>,
) -> Result<String, Error> {
    let algorithm = public_key.algorithm();
    if !algorithm.can_sign() {
        return Err(Error::InvalidInput(format!(
            "a JWS is signed by a signing key, not {algorithm}"
        )));
    }
    let header = json!({
        "alg": algorithm.jose_name(),
        "typ": typ,
        "kid": public_key.fingerprint().to_hex(),
    });
    let encode = |v: &Value| -> Result<String, Error> {
        let bytes = serde_json::to_vec(v).map_err(|_| Error::Crypto)?;
        Ok(Base64UrlUnpadded::encode_string(&bytes))
    };
    let input = format!("{}.{}", encode(&header)?, encode(payload)?);
    let signature = sign(input.as_bytes())?;
    Ok(format!(
        "{input}.{}",
        Base64UrlUnpadded::encode_string(signature.as_raw())
    ))
}

/// Verifies a compact JWS of type `typ` by `public_key`; returns its payload.
///
/// # Errors
/// [`Error::InvalidInput`] for a malformed JWS; [`Error::BadSignature`] for one of another
/// key, algorithm or type, or one that does not verify.
pub fn verify(jws: &str, public_key: &PublicKey, typ: &str) -> Result<Value, Error> {
    if jws.len() > MAX_JWS {
        return Err(malformed("it is too long"));
    }
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a compact JWS has 3 parts"));
    };
    let decode =
        |part: &str| Base64UrlUnpadded::decode_vec(part).map_err(|_| malformed("not base64url"));
    let header: Value =
        serde_json::from_slice(&decode(h)?).map_err(|_| malformed("the header is not JSON"))?;
    let algorithm = public_key.algorithm();
    let expected = json!({
        "alg": algorithm.jose_name(),
        "typ": typ,
        "kid": public_key.fingerprint().to_hex(),
    });
    if header != expected {
        return Err(Error::BadSignature);
    }
    let signature = Signature::from_raw(algorithm, decode(s)?).map_err(|_| Error::BadSignature)?;
    crate::verify(public_key, format!("{h}.{p}").as_bytes(), &signature)?;
    serde_json::from_slice(&decode(p)?).map_err(|_| malformed("the payload is not JSON"))
}
