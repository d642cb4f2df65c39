//! JSON Web Encryption (RFC 7516) in compact serialization, with one algorithm pair: key
//! agreement `ECDH-ES+A256KW` (RFC 7518 §4.6: an ephemeral key of the recipient's curve,
//! Concat KDF with SHA-256, AES-256 key wrap of the content key, RFC 3394) and content
//! encryption `A256GCM`. Recipient keys are ECDH P-256, ECDH P-384 or X25519 (RFC 8037).
//!
//! What a key broker uses to release a secret to the ephemeral public key a requester sent:
//! only the holder of the matching private key reads it, whatever TLS terminator or log sees
//! the response. Any JOSE library decrypts it.
//!
//! ```
//! use keyhaven_core::Algorithm;
//! use keyhaven_crypto::{default_provider, jwe};
//!
//! let recipient = default_provider().generate(Algorithm::EcdhP256)?;
//! let jwk = jwe::public_jwk(recipient.public_key())?;
//! let to = jwe::public_key_from_jwk(&jwk)?;
//! let token = jwe::encrypt(&to, b"the secret", &serde_json::Map::new())?;
//! let (header, plaintext) = jwe::decrypt(&token, recipient.as_ref())?;
//! assert_eq!(header["enc"], "A256GCM");
//! assert_eq!(plaintext.expose_secret(), b"the secret");
//! # Ok::<(), keyhaven_core::Error>(())
//! ```

use aes_kw::KwAes256;
use aes_kw::cipher::KeyInit;
use base64ct::{Base64UrlUnpadded, Encoding};
use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::aead::{NONCE_LEN, Sealer, TAG_LEN};
use crate::default_provider;
use crate::encoding::public_key_jwk;
use crate::provider::PrivateKey;

/// The key agreement algorithm (`alg`).
pub const ALG: &str = "ECDH-ES+A256KW";
/// The content encryption algorithm (`enc`).
pub const ENC: &str = "A256GCM";
/// The longest compact JWE [`decrypt`] reads (bytes).
pub const MAX_JWE: usize = 4 << 20;
/// The longest protected header [`decrypt`] reads (bytes, encoded).
const MAX_HEADER: usize = 8 << 10;

fn malformed(reason: impl Into<String>) -> Error {
    Error::InvalidInput(format!("the JWE is malformed: {}", reason.into()))
}

/// The public JWK of an agreement key: `kty`, `crv`, `x` (and `y`), nothing else.
///
/// # Errors
/// [`Error::InvalidInput`] for a key that does not agree (a signing key) or is malformed.
pub fn public_jwk(key: &PublicKey) -> Result<Value, Error> {
    if !key.algorithm().can_agree() {
        return Err(Error::InvalidInput(format!(
            "a JWE recipient key does key agreement (x25519, ecdh-p256, ecdh-p384), not {}",
            key.algorithm()
        )));
    }
    let full = public_key_jwk(key)?;
    let mut jwk = Map::new();
    for member in ["kty", "crv", "x", "y"] {
        if let Some(v) = full.get(member) {
            jwk.insert(member.into(), v.clone());
        }
    }
    Ok(Value::Object(jwk))
}

fn b64_member(jwk: &Value, name: &str, len: usize) -> Result<Vec<u8>, Error> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::InvalidInput(format!("the JWK has no '{name}'")))?;
    let bytes = Base64UrlUnpadded::decode_vec(text)
        .map_err(|_| Error::InvalidInput(format!("the JWK's '{name}' is not base64url")))?;
    if bytes.len() != len {
        return Err(Error::InvalidInput(format!(
            "the JWK's '{name}' is {} bytes, not {len}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The RFC 7638 thumbprint of a public JWK (SHA-256 over its required members in
/// lexicographic order, base64url): what names an ephemeral key in a release receipt.
pub fn thumbprint(jwk: &Value) -> String {
    let mut members = Map::new();
    for m in ["crv", "e", "k", "kty", "n", "x", "y"] {
        if let Some(v) = jwk.get(m) {
            members.insert(m.into(), v.clone());
        }
    }
    let canonical = serde_json::to_vec(&Value::Object(members)).unwrap_or_default();
    Base64UrlUnpadded::encode_string(&Sha256::digest(canonical))
}

/// An agreement public key from a JWK (`EC` on P-256 or P-384, checked on the curve; `OKP`
/// X25519). Private members (`d`) are refused: a JWK sent to a server must not carry one.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn public_key_from_jwk(jwk: &Value) -> Result<PublicKey, Error> {
    if jwk.get("d").is_some() {
        return Err(Error::InvalidInput(
            "the JWK carries a private key ('d'): send the public key only".into(),
        ));
    }
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    match (kty, crv) {
        ("EC", "P-256" | "P-384") => {
            let (algorithm, n) = if crv == "P-256" {
                (Algorithm::EcdhP256, 32)
            } else {
                (Algorithm::EcdhP384, 48)
            };
            let mut point = vec![4u8];
            point.extend(b64_member(jwk, "x", n)?);
            point.extend(b64_member(jwk, "y", n)?);
            let der = sec1_to_spki(crv, &point)?;
            default_provider().parse_public_key_der_as(algorithm, &der)
        }
        ("OKP", "X25519") => {
            let x = b64_member(jwk, "x", 32)?;
            // SubjectPublicKeyInfo { id-X25519 (1.3.101.110), BIT STRING x }.
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
            ];
            der.extend(x);
            default_provider().parse_public_key_der_as(Algorithm::X25519, &der)
        }
        _ => Err(Error::InvalidInput(format!(
            "a JWE recipient key is EC P-256, EC P-384 or OKP X25519, not kty '{kty}' crv \
             '{crv}'"
        ))),
    }
}

/// The SPKI DER of an uncompressed point, checked on the curve.
fn sec1_to_spki(crv: &str, point: &[u8]) -> Result<Vec<u8>, Error> {
    use pkcs8::EncodePublicKey;
    let off = || Error::InvalidInput(format!("the JWK's point is not on {crv}"));
    let der = if crv == "P-256" {
        p256::PublicKey::from_sec1_bytes(point)
            .map_err(|_| off())?
            .to_public_key_der()
    } else {
        p384::PublicKey::from_sec1_bytes(point)
            .map_err(|_| off())?
            .to_public_key_der()
    };
    der.map(|d| d.as_bytes().to_vec()).map_err(|_| off())
}

/// Concat KDF (NIST SP 800-56A §5.8.1, as RFC 7518 §4.6.2 uses it) for a key of `bits` (at
/// most 256: one SHA-256 round) over `1 || Z || AlgorithmID || PartyUInfo || PartyVInfo ||
/// SuppPubInfo`.
fn concat_kdf(
    z: &[u8],
    algorithm_id: &str,
    apu: &[u8],
    apv: &[u8],
    bits: u32,
) -> Result<Zeroizing<[u8; 32]>, Error> {
    let field = |h: &mut Sha256, bytes: &[u8]| -> Result<(), Error> {
        let len = u32::try_from(bytes.len()).map_err(|_| malformed("apu or apv is too long"))?;
        h.update(len.to_be_bytes());
        h.update(bytes);
        Ok(())
    };
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    field(&mut h, algorithm_id.as_bytes())?;
    field(&mut h, apu)?;
    field(&mut h, apv)?;
    h.update(bits.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    Ok(out)
}

/// The shared secret, refused when it is all zeros (an X25519 peer point of small order).
fn agree(key: &dyn PrivateKey, peer: &PublicKey) -> Result<SecretBytes, Error> {
    let z = key.agree(peer)?;
    if z.expose_secret().iter().all(|b| *b == 0) {
        return Err(Error::InvalidInput(
            "the key agreement gave an all-zero secret (a point of small order)".into(),
        ));
    }
    Ok(z)
}

/// Encrypts `plaintext` to `recipient` (ECDH P-256, P-384 or X25519). `extra` members join
/// the protected header (`kid`, `cty`, a custom claim); `alg`, `enc` and `epk` are set here
/// and cannot be overridden.
///
/// # Errors
/// [`Error::InvalidInput`] for a recipient key that does not agree; [`Error::Crypto`] if the
/// RNG or a cipher fails.
pub fn encrypt(
    recipient: &PublicKey,
    plaintext: &[u8],
    extra: &Map<String, Value>,
) -> Result<String, Error> {
    prepare(recipient, extra)?.seal(plaintext)
}

/// A JWE made ready for one recipient before its plaintext exists: the key agreement is done,
/// the content key drawn and wrapped. A recipient key nothing can be encrypted to (a signing
/// key, an X25519 point of small order) fails here, so a caller can refuse it before it
/// fetches or decrypts what it would send.
pub struct Prepared {
    header: String,
    wrapped: [u8; 40],
    cek: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// [`encrypt`]'s first half: see [`Prepared`].
///
/// # Errors
/// As [`encrypt`].
pub fn prepare(recipient: &PublicKey, extra: &Map<String, Value>) -> Result<Prepared, Error> {
    let algorithm = recipient.algorithm();
    if !algorithm.can_agree() {
        return Err(Error::InvalidInput(format!(
            "a JWE recipient key does key agreement, not {algorithm}"
        )));
    }
    let ephemeral = default_provider().generate(algorithm)?;
    let z = agree(ephemeral.as_ref(), recipient)?;
    let mut header = extra.clone();
    header.insert("alg".into(), ALG.into());
    header.insert("enc".into(), ENC.into());
    header.insert("epk".into(), public_jwk(ephemeral.public_key())?);
    for member in ["apu", "apv", "crit", "zip"] {
        header.remove(member);
    }
    let header = Base64UrlUnpadded::encode_string(
        &serde_json::to_vec(&Value::Object(header)).map_err(|_| Error::Crypto)?,
    );
    let kek = concat_kdf(z.expose_secret(), ALG, b"", b"", 256)?;
    let mut cek = Zeroizing::new([0u8; 32]);
    crate::fill_random(cek.as_mut_slice())?;
    let mut wrapped = [0u8; 40];
    KwAes256::new(&(*kek).into())
        .wrap_key(cek.as_slice(), &mut wrapped)
        .map_err(|_| Error::Crypto)?;
    Ok(Prepared {
        header,
        wrapped,
        cek,
    })
}

impl Prepared {
    /// Encrypts `plaintext`: the compact JWE.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the RNG or the cipher fails.
    pub fn seal(self, plaintext: &[u8]) -> Result<String, Error> {
        let (iv, sealed) =
            Sealer::new(self.cek.as_slice())?.seal(plaintext, self.header.as_bytes())?;
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let b64 = Base64UrlUnpadded::encode_string;
        Ok(format!(
            "{}.{}.{}.{}.{}",
            self.header,
            b64(&self.wrapped),
            b64(&iv),
            b64(ciphertext),
            b64(tag)
        ))
    }
}

/// Decrypts a compact JWE made for `recipient`'s public key: its protected header and the
/// plaintext. Only `ECDH-ES+A256KW` with `A256GCM` is read; an `epk` of another curve, a
/// `crit` or `zip` member, or any changed byte is refused.
///
/// # Errors
/// [`Error::InvalidInput`] for a malformed JWE or one of other algorithms;
/// [`Error::Crypto`] when it does not decrypt (another recipient, a changed byte).
pub fn decrypt(jwe: &str, recipient: &dyn PrivateKey) -> Result<(Value, SecretBytes), Error> {
    if jwe.len() > MAX_JWE {
        return Err(malformed(format!("it is longer than {MAX_JWE} bytes")));
    }
    let parts: Vec<&str> = jwe.split('.').collect();
    let [header_b64, wrapped, iv, ciphertext, tag] = parts.as_slice() else {
        return Err(malformed(format!(
            "a compact JWE has 5 parts, this one {}",
            parts.len()
        )));
    };
    if header_b64.len() > MAX_HEADER {
        return Err(malformed("the protected header is too long"));
    }
    let decode = |what: &str, s: &str| {
        Base64UrlUnpadded::decode_vec(s)
            .map_err(|_| malformed(format!("the {what} is not base64url")))
    };
    let header: Value = serde_json::from_slice(&decode("header", header_b64)?)
        .map_err(|_| malformed("the protected header is not JSON"))?;
    let text = |name: &str| header.get(name).and_then(Value::as_str);
    if text("alg") != Some(ALG) || text("enc") != Some(ENC) {
        return Err(Error::InvalidInput(format!(
            "the JWE is {} with {}; only {ALG} with {ENC} is read",
            text("alg").unwrap_or("no alg"),
            text("enc").unwrap_or("no enc")
        )));
    }
    for member in ["crit", "zip"] {
        if header.get(member).is_some() {
            return Err(Error::InvalidInput(format!(
                "the JWE header has '{member}', which is not supported"
            )));
        }
    }
    let epk = header
        .get("epk")
        .ok_or_else(|| malformed("the header has no 'epk'"))?;
    let epk = public_key_from_jwk(epk)?;
    if epk.algorithm() != recipient.algorithm() {
        return Err(Error::InvalidInput(format!(
            "the JWE's ephemeral key is {}, the recipient's {}",
            epk.algorithm(),
            recipient.algorithm()
        )));
    }
    let party = |name: &str| -> Result<Vec<u8>, Error> {
        match header.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => decode(name, s),
            Some(_) => Err(malformed(format!("'{name}' is not a string"))),
        }
    };
    let (apu, apv) = (party("apu")?, party("apv")?);
    let wrapped = decode("encrypted key", wrapped)?;
    let iv = decode("IV", iv)?;
    let mut sealed = decode("ciphertext", ciphertext)?;
    let tag = decode("tag", tag)?;
    if wrapped.len() != 40 || iv.len() != NONCE_LEN || tag.len() != TAG_LEN {
        return Err(malformed(
            "the encrypted key, IV or tag has the wrong length for A256KW and A256GCM",
        ));
    }
    let z = agree(recipient, &epk)?;
    let kek = concat_kdf(z.expose_secret(), ALG, &apu, &apv, 256)?;
    let mut cek = Zeroizing::new([0u8; 32]);
    KwAes256::new(&(*kek).into())
        .unwrap_key(&wrapped, cek.as_mut_slice())
        .map_err(|_| Error::Crypto)?;
    sealed.extend_from_slice(&tag);
    let nonce: [u8; NONCE_LEN] = iv.as_slice().try_into().map_err(|_| Error::Crypto)?;
    let mut plain = Sealer::new(cek.as_slice())?
        .open(&nonce, &sealed, header_b64.as_bytes())
        .ok_or(Error::Crypto)?;
    Ok((header, SecretBytes::new(std::mem::take(&mut *plain))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// RFC 7518 Appendix C: ECDH-ES between Alice's ephemeral key and Bob's key, Concat KDF
    /// for A128GCM with apu "Alice" and apv "Bob".
    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let d =
            Base64UrlUnpadded::decode_vec("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw").unwrap();
        let bob = p256::SecretKey::from_slice(&d).unwrap();
        let alice = public_key_from_jwk(&serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
        }))
        .unwrap();
        let alice = {
            use pkcs8::DecodePublicKey;
            p256::PublicKey::from_public_key_der(alice.spki_der()).unwrap()
        };
        let z = p256::ecdh::diffie_hellman(bob.to_nonzero_scalar(), alice.as_affine());
        let key = concat_kdf(z.raw_secret_bytes(), "A128GCM", b"Alice", b"Bob", 128).unwrap();
        assert_eq!(
            Base64UrlUnpadded::encode_string(&key[..16]),
            "VqqN6vgjbSBcIijNcacQGg"
        );
    }
}
