//! Signed assertions (seed 000 section 6): a signature with everything needed to judge it —
//! which key, in which backend of which type, how well protected, and its public key.
//!
//! The metadata is itself signed: the assertion carries a JWS (RFC 7515, compact serialization)
//! made by the same key, whose payload is every field of the assertion but the public key
//! (bound by the fingerprint, and by the JWS verifying under it). `alg` is the key's JOSE name
//! (`ES384`, `ES256`, `EdDSA`; RFC 7518 and RFC 8037), so any JOSE library checks it with the
//! public key alone. An assertion whose readable fields differ from its signed payload (an
//! edited `protection`, say) does not verify.

use std::time::UNIX_EPOCH;

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manager::{KeyManager, ManagedKey, SignInput};
use crate::{
    CoreError, Error, KeyAttestation, PublicKey, Result, Signature, SignatureFormat,
    default_provider, encoding,
};

/// The assertion format version this crate writes (2: the metadata is signed, as a JWS).
pub const ASSERTION_VERSION: u32 = 2;

/// The JWS `typ` of an assertion.
pub const ASSERTION_JWS_TYPE: &str = "keyhaven-assertion+json";

/// A JSON-serializable record of one signature and the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Assertion {
    /// Format version ([`ASSERTION_VERSION`]).
    pub version: u32,
    /// The JOSE algorithm name: `ES384`, `ES256`, `EdDSA`.
    pub algorithm: String,
    /// The key's id in its backend.
    pub key_id: String,
    /// The key's label.
    pub key_label: String,
    /// The configured name of the backend holding the key.
    pub backend: String,
    /// The backend's type (`encrypted`, `pem`, `memory`, ...).
    pub backend_type: String,
    /// The key's protection: `software-plain`, `software-encrypted`, `hardware`.
    pub protection: String,
    /// SHA-256 of the public key's SPKI DER, lowercase hex.
    pub fingerprint: String,
    /// The public key, SPKI PEM.
    pub public_key_pem: String,
    /// When a message was signed: SHA-256 of the message, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_sha256: Option<String>,
    /// When a prehashed digest was signed: the digest, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_digest: Option<String>,
    /// The signature in `signature_format`, standard base64.
    pub signature: String,
    /// `der` (ASN.1 `ECDSA-Sig-Value`; Ed25519 has only its raw form) or `raw` (`r || s`).
    pub signature_format: String,
    /// When the assertion was made, RFC 3339 UTC.
    pub created_at: String,
    /// Evidence, from the key's backend, of where the key lives (see
    /// [`Assertion::check_protection`]): a TPM's certification bound to this signature, or a
    /// token's statement. Signed with the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_attestation: Option<KeyAttestation>,
    /// A JWS (compact serialization) by the same key over every field above but the public
    /// key: what makes the metadata trustworthy.
    #[serde(default)]
    pub jws: String,
}

/// What an assertion shows of its `protection` claim ([`Assertion::check_protection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtectionCheck {
    /// A TPM certified the key: born in the TPM, unable to leave it. Proved relative to the
    /// attestation key, which the verifier trusts (`trusted`) or not yet.
    Proved {
        /// The attestation key: SHA-256 of its `TPM2B_PUBLIC`, hex.
        attestation_key: String,
        /// Whether the verifier named it as trusted.
        trusted: bool,
    },
    /// A PKCS#11 token's statement: its attributes as it reports them (not a proof).
    Stated {
        /// The token.
        token: String,
        /// Whether it says the key never left it in the clear.
        bound: bool,
    },
    /// `hardware` is claimed, and nothing shows it.
    Claimed,
    /// A software key: nothing to show.
    Software,
}

/// The signed payload of an assertion's JWS: every field of the assertion but the public key
/// and the JWS itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    version: u32,
    algorithm: String,
    key_id: String,
    key_label: String,
    backend: String,
    backend_type: String,
    protection: String,
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signed_digest: Option<String>,
    signature: String,
    signature_format: String,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_attestation: Option<KeyAttestation>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwsHeader {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

impl KeyManager {
    /// The signed assertion for `signature`, made by `key` over `input`, now: `key` signs the
    /// assertion's JWS as well (a second signature, audited like the first).
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if the signature cannot be encoded in `format`; the
    /// backend's errors for the JWS signature.
    pub fn make_assertion(
        &self,
        key: &ManagedKey,
        input: SignInput<'_>,
        signature: &Signature,
        format: SignatureFormat,
    ) -> Result<Assertion> {
        let a = Assertion::unsigned(key, input, signature, format)?;
        self.sign_assertion(key, a)
    }

    /// [`KeyManager::make_assertion`] carrying the key's attestation from its backend
    /// ([`KeyManager::attest_key`]), bound to this signature: a TPM certifies the key over the
    /// SHA-256 of the signature's raw bytes, so the certification was made for this
    /// assertion and no other.
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] for a backend that cannot attest its keys (software ones);
    /// as [`KeyManager::make_assertion`].
    pub fn make_attested_assertion(
        &self,
        key: &ManagedKey,
        input: SignInput<'_>,
        signature: &Signature,
        format: SignatureFormat,
    ) -> Result<Assertion> {
        let mut a = Assertion::unsigned(key, input, signature, format)?;
        let challenge = Sha256::digest(signature.as_raw());
        a.key_attestation = Some(self.attest_key(key, &challenge)?);
        self.sign_assertion(key, a)
    }

    /// Evidence of where `key` lives, from its backend, bound to `challenge` where the backend
    /// can bind one (a TPM: at most 32 bytes). Audited as an `attest` operation.
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] for a software backend; the device's errors.
    pub fn attest_key(&self, key: &ManagedKey, challenge: &[u8]) -> Result<KeyAttestation> {
        let b = self.key_backend(key)?;
        b.store()
            .attest_key(&key.info.id, challenge)
            .map_err(|e| Error::backend(b.name(), e))
    }

    /// Signs the JWS of `a` with `key`.
    fn sign_assertion(&self, key: &ManagedKey, mut a: Assertion) -> Result<Assertion> {
        let header = JwsHeader {
            alg: a.algorithm.clone(),
            typ: Some(ASSERTION_JWS_TYPE.to_owned()),
            kid: Some(a.fingerprint.clone()),
        };
        let signing_input = format!("{}.{}", b64_json(&header)?, b64_json(&a.claims())?);
        let sig = self.sign_checked_input(key, SignInput::Message(signing_input.as_bytes()))?;
        // JWS ECDSA signatures are r || s (RFC 7518 section 3.4); EdDSA has only one form.
        a.jws = format!(
            "{signing_input}.{}",
            Base64UrlUnpadded::encode_string(sig.as_raw())
        );
        Ok(a)
    }
}

/// A JWS part: `value` as JSON, base64url without padding.
fn b64_json<T: Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_vec(value)
        .map_err(|e| CoreError::InvalidInput(format!("cannot encode a JWS part: {e}")))?;
    Ok(Base64UrlUnpadded::encode_string(&json))
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn rfc3339(unix_seconds: u64) -> String {
    keyhaven_core::rfc3339(unix_seconds)
}

impl Assertion {
    /// The assertion for `signature`, without its JWS (see [`KeyManager::make_assertion`]).
    fn unsigned(
        key: &ManagedKey,
        input: SignInput<'_>,
        signature: &Signature,
        format: SignatureFormat,
    ) -> Result<Self> {
        let (message_sha256, signed_digest) = match input {
            SignInput::Message(m) => (Some(hex::encode(Sha256::digest(m))), None),
            SignInput::Digest(d) => (None, Some(hex::encode(d))),
            SignInput::Hashed(h) => (Some(hex::encode(h.sha256)), None),
        };
        let sig = encoding::encode_signature(signature, format)?;
        Ok(Assertion {
            version: ASSERTION_VERSION,
            algorithm: key.algorithm().jose_name().to_owned(),
            key_id: key.id().to_string(),
            key_label: key.label().to_owned(),
            backend: key.backend.clone(),
            backend_type: key.backend_kind.name().to_owned(),
            protection: key.protection().as_str().to_owned(),
            fingerprint: key.info.fingerprint().to_hex(),
            public_key_pem: key.public_key().to_pem()?,
            message_sha256,
            signed_digest,
            signature: Base64::encode_string(&sig),
            signature_format: format.to_string(),
            created_at: humantime::format_rfc3339_seconds(keyhaven_core::now()).to_string(),
            key_attestation: None,
            jws: String::new(),
        })
    }

    fn claims(&self) -> Claims {
        Claims {
            version: self.version,
            algorithm: self.algorithm.clone(),
            key_id: self.key_id.clone(),
            key_label: self.key_label.clone(),
            backend: self.backend.clone(),
            backend_type: self.backend_type.clone(),
            protection: self.protection.clone(),
            fingerprint: self.fingerprint.clone(),
            message_sha256: self.message_sha256.clone(),
            signed_digest: self.signed_digest.clone(),
            signature: self.signature.clone(),
            signature_format: self.signature_format.clone(),
            created_at: self.created_at.clone(),
            key_attestation: self.key_attestation.clone(),
        }
    }

    /// The assertion's public key, after checking its fingerprint.
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] for a malformed key; [`CoreError::BadSignature`] if the
    /// fingerprint is not the key's.
    pub fn public_key(&self) -> Result<PublicKey> {
        let pk = default_provider().parse_public_key_pem(&self.public_key_pem)?;
        if pk.fingerprint().to_hex() != self.fingerprint {
            return Err(CoreError::BadSignature.into());
        }
        Ok(pk)
    }

    /// Checks the assertion's JWS: it verifies under the assertion's own public key, its
    /// `alg` is the key's, and its payload is exactly the assertion's fields. Returns the
    /// public key.
    ///
    /// # Errors
    /// [`CoreError::BadSignature`] if the JWS does not verify or a field was changed after
    /// signing; [`CoreError::InvalidInput`] for an assertion without a JWS (version 1) or a
    /// malformed one.
    pub fn verify_metadata(&self) -> Result<PublicKey> {
        let invalid = |m: &str| Error::from(CoreError::InvalidInput(m.to_owned()));
        if self.jws.is_empty() {
            return Err(invalid(
                "this assertion has no signed metadata (a version 1 assertion): its fields \
                 cannot be trusted; sign again with this keyhaven",
            ));
        }
        let pk = self.public_key()?;
        let mut parts = self.jws.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("the assertion's JWS is not a compact JWS"));
        };
        let decode = |part: &str| {
            Base64UrlUnpadded::decode_vec(part)
                .map_err(|_| invalid("the assertion's JWS is not base64url"))
        };
        if h.len() > 1024 {
            return Err(invalid("the assertion's JWS header is too long"));
        }
        let header: JwsHeader = serde_json::from_slice(&decode(h)?)
            .map_err(|_| invalid("the assertion's JWS header is not a keyhaven assertion's"))?;
        // Exactly what make_assertion writes: its alg, its type, its key.
        if header.alg != pk.algorithm().jose_name()
            || header.typ.as_deref() != Some(ASSERTION_JWS_TYPE)
            || header.kid.as_deref() != Some(self.fingerprint.as_str())
        {
            return Err(CoreError::BadSignature.into());
        }
        let sig = Signature::from_raw(pk.algorithm(), decode(sig)?)
            .map_err(|_| Error::from(CoreError::BadSignature))?;
        crate::verify(&pk, format!("{h}.{p}").as_bytes(), &sig)?;
        let claims: Claims = serde_json::from_slice(&decode(p)?)
            .map_err(|_| invalid("the assertion's JWS payload is not an assertion"))?;
        if claims != self.claims() {
            // Signed, but not these fields: something was edited after signing.
            return Err(CoreError::BadSignature.into());
        }
        Ok(pk)
    }

    /// What the assertion shows of its `protection` claim, after [`Assertion::verify`]:
    /// a TPM certification is checked here (signed by its attestation key, over the SHA-256
    /// of this assertion's signature, naming a key born in the TPM that cannot leave it, and
    /// that key being this assertion's key); the attestation key counts as trusted when its
    /// `TPM2B_PUBLIC`'s SHA-256 (hex) is in `trusted_aks`.
    ///
    /// # Errors
    /// [`CoreError::BadSignature`] for a certification that does not check, or is of another
    /// key or signature; [`CoreError::InvalidInput`] for a malformed one, or one carried by an
    /// assertion that does not claim `hardware`.
    pub fn check_protection(&self, trusted_aks: &[String]) -> Result<ProtectionCheck> {
        let hardware = self.protection == "hardware";
        let invalid = |m: String| Error::from(CoreError::InvalidInput(m));
        match &self.key_attestation {
            None if hardware => Ok(ProtectionCheck::Claimed),
            None => Ok(ProtectionCheck::Software),
            Some(_) if !hardware => Err(invalid(format!(
                "the assertion carries a key attestation but claims '{}' protection",
                self.protection
            ))),
            Some(KeyAttestation::Pkcs11Attributes { token, .. }) => {
                let bound = self
                    .key_attestation
                    .as_ref()
                    .and_then(KeyAttestation::token_says_bound)
                    .unwrap_or(false);
                Ok(ProtectionCheck::Stated {
                    token: token.clone(),
                    bound,
                })
            }
            Some(KeyAttestation::Tpm2Certify {
                certify_info,
                signature,
                ak_public,
                key_public,
            }) => {
                use keyhaven_attest::tpm;
                let b64 = |name: &str, v: &str| {
                    Base64::decode_vec(v)
                        .map_err(|_| invalid(format!("the key attestation's {name} is not base64")))
                };
                let (info, sig, ak, key) = (
                    b64("certify_info", certify_info)?,
                    b64("signature", signature)?,
                    b64("ak_public", ak_public)?,
                    b64("key_public", key_public)?,
                );
                let ak = tpm::AkPublic::parse(&ak)
                    .map_err(|e| invalid(format!("the attestation key: {e}")))?;
                let challenge = Sha256::digest(self.signature()?.as_raw());
                let certified = tpm::verify_certification(
                    &tpm::Certification {
                        certify_info: &info,
                        signature: &sig,
                        ak: &ak,
                        key_public: &key,
                    },
                    Some(challenge.as_slice()),
                )
                .map_err(|e| match e {
                    keyhaven_attest::AttestError::Malformed { .. } => invalid(e.to_string()),
                    _ => Error::from(CoreError::BadSignature),
                })?;
                // The certified key must be this assertion's key.
                // (An EC SubjectPublicKeyInfo of a given curve is a fixed prefix, then the
                // uncompressed point.)
                let pk = self.public_key()?;
                let curve = match pk.algorithm() {
                    crate::Algorithm::EcdsaP256 | crate::Algorithm::EcdhP256 => "P-256",
                    crate::Algorithm::EcdsaP384 | crate::Algorithm::EcdhP384 => "P-384",
                    _ => "",
                };
                if !certified.signs
                    || curve != certified.curve
                    || !pk.spki_der().ends_with(&certified.point)
                {
                    return Err(CoreError::BadSignature.into());
                }
                let trusted = trusted_aks
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&certified.certified_by));
                Ok(ProtectionCheck::Proved {
                    attestation_key: certified.certified_by,
                    trusted,
                })
            }
            Some(_) => Err(invalid("a key attestation of an unknown format".into())),
        }
    }

    /// The signature the assertion describes.
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if it is malformed.
    pub fn signature(&self) -> Result<Signature> {
        let pk = self.public_key()?;
        let format: SignatureFormat = self.signature_format.parse()?;
        let bytes = Base64::decode_vec(&self.signature).map_err(|_| {
            CoreError::InvalidInput("the assertion's signature is not base64".into())
        })?;
        Ok(encoding::decode_signature(pk.algorithm(), &bytes, format)?)
    }

    /// When the assertion says it was made, in seconds since the Unix epoch (check
    /// [`Assertion::verify_metadata`] first).
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if `created_at` is not an RFC 3339 time.
    pub fn created_at_unix(&self) -> Result<u64> {
        let t = humantime::parse_rfc3339(&self.created_at).map_err(|_| {
            CoreError::InvalidInput(format!(
                "the assertion's created_at '{}' is not an RFC 3339 time",
                self.created_at
            ))
        })?;
        Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    /// The assertion as pretty-printed JSON.
    ///
    /// # Errors
    /// Never in practice ([`CoreError::InvalidInput`] if serialization fails).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| CoreError::InvalidInput(format!("cannot serialize assertion: {e}")).into())
    }

    /// Parses an assertion from JSON.
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if it is not an assertion.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| CoreError::InvalidInput(format!("not a keyhaven assertion: {e}")).into())
    }

    /// Checks the assertion: its metadata ([`Assertion::verify_metadata`]), and the signature
    /// it describes over the digest it names, or over `message` (whose SHA-256 must match) for
    /// a message signature.
    ///
    /// # Errors
    /// [`CoreError::BadSignature`] if the signature or the metadata does not verify, or
    /// `message` is not the one signed; [`CoreError::InvalidInput`] for a malformed assertion
    /// or a message signature checked without its message.
    pub fn verify(&self, message: Option<&[u8]>) -> Result<()> {
        self.verify_input(message.map(SignInput::Message))
    }

    /// [`Assertion::verify`] with the message given as any [`SignInput`]: a whole message, or
    /// one hashed as it was read ([`crate::HashedMessage`], for large files); a digest input
    /// is compared with the digest the assertion names.
    ///
    /// # Errors
    /// As [`Assertion::verify`].
    pub fn verify_input(&self, input: Option<SignInput<'_>>) -> Result<()> {
        let invalid = |m: &str| Error::from(CoreError::InvalidInput(m.to_owned()));
        let pk = self.verify_metadata()?;
        let sig = self.signature()?;
        match (&self.signed_digest, &self.message_sha256, input) {
            (Some(d), _, input) => {
                let digest =
                    hex::decode(d).map_err(|_| invalid("the assertion's digest is not hex"))?;
                // Whatever the caller gives must be what was signed: a digest, or a message
                // whose curve hash is that digest.
                let given = match input {
                    Some(SignInput::Digest(g)) => Some(g.to_vec()),
                    Some(SignInput::Hashed(h)) => Some(h.digest.clone()),
                    Some(SignInput::Message(m)) => Some(
                        crate::HashedMessage::read(pk.algorithm(), m)?
                            .map(|h| h.digest)
                            .ok_or_else(|| invalid("this key signs messages, not digests"))?,
                    ),
                    None => None,
                };
                if given.is_some_and(|g| g != digest) {
                    return Err(CoreError::BadSignature.into());
                }
                crate::verify_digest(&pk, &digest, &sig)?;
            }
            (None, Some(h), Some(SignInput::Message(m))) => {
                if hex::encode(Sha256::digest(m)) != *h {
                    // Another message: the signature is not over it.
                    return Err(CoreError::BadSignature.into());
                }
                crate::verify(&pk, m, &sig)?;
            }
            (None, Some(h), Some(SignInput::Hashed(m))) => {
                if hex::encode(m.sha256) != *h {
                    return Err(CoreError::BadSignature.into());
                }
                crate::verify_digest(&pk, &m.digest, &sig)?;
            }
            (None, Some(_), Some(SignInput::Digest(_))) => {
                return Err(invalid(
                    "this assertion signs a message, not a digest: give the message",
                ));
            }
            (None, Some(_), None) => {
                return Err(invalid(
                    "this assertion signs a message: give the message to check it",
                ));
            }
            (None, None, _) => {
                return Err(invalid("the assertion names neither message nor digest"));
            }
        }
        Ok(())
    }
}
