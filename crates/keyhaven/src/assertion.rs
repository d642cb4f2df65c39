//! Signed assertions (seed 000 section 6): a signature with everything needed to judge it —
//! which key, in which backend of which type, how well protected, and its public key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manager::{ManagedKey, SignInput};
use crate::{CoreError, Error, Result, Signature, SignatureFormat, default_provider, encoding};

/// The assertion format version this crate writes.
pub const ASSERTION_VERSION: u32 = 1;

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
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

impl Assertion {
    /// The assertion for `signature`, made by `key` over `input`, now.
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if the signature cannot be encoded in `format`.
    pub fn new(
        key: &ManagedKey,
        input: SignInput<'_>,
        signature: &Signature,
        format: SignatureFormat,
    ) -> Result<Self> {
        let (message_sha256, signed_digest) = match input {
            SignInput::Message(m) => (Some(hex::encode(Sha256::digest(m))), None),
            SignInput::Digest(d) => (None, Some(hex::encode(d))),
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
            created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
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

    /// Checks the assertion with its own public key: the fingerprint matches the key, and the
    /// signature verifies over the digest it names, or over `message` (whose SHA-256 must
    /// match) for a message signature.
    ///
    /// # Errors
    /// [`CoreError::BadSignature`] if the signature does not verify; [`CoreError::InvalidInput`]
    /// for a malformed assertion, a fingerprint or message that does not match, or a message
    /// signature checked without its message.
    pub fn verify(&self, message: Option<&[u8]>) -> Result<()> {
        let invalid = |m: &str| Error::from(CoreError::InvalidInput(m.to_owned()));
        let pk = default_provider().parse_public_key_pem(&self.public_key_pem)?;
        if pk.fingerprint().to_hex() != self.fingerprint {
            return Err(invalid(
                "the assertion's fingerprint does not match its public key",
            ));
        }
        let format: SignatureFormat = self.signature_format.parse()?;
        let bytes = Base64::decode_vec(&self.signature)
            .map_err(|_| invalid("the assertion's signature is not base64"))?;
        let sig = encoding::decode_signature(pk.algorithm(), &bytes, format)?;
        match (&self.signed_digest, &self.message_sha256, message) {
            (Some(d), _, _) => {
                let digest =
                    hex::decode(d).map_err(|_| invalid("the assertion's digest is not hex"))?;
                crate::verify_digest(&pk, &digest, &sig)?;
            }
            (None, Some(h), Some(m)) => {
                if hex::encode(Sha256::digest(m)) != *h {
                    return Err(invalid("the message is not the one the assertion names"));
                }
                crate::verify(&pk, m, &sig)?;
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
