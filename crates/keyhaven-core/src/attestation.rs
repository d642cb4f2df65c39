//! [`KeyAttestation`]: what a backend can show of where one of its keys lives.

use serde::{Deserialize, Serialize};

/// Evidence, made by a key's backend, of where the key lives: a TPM's `TPM2_Certify`
/// (a cryptographic proof, checkable offline by whoever trusts the attestation key), or a
/// PKCS#11 token's attributes (a statement by the token, not a proof: the token's word, as
/// read through its driver). Software backends make none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum KeyAttestation {
    /// `TPM2_Certify` of the key by the TPM's attestation key (a restricted ECDSA P-256
    /// signing key, a primary of the endorsement hierarchy: the same key every time on one
    /// TPM). Every field is standard base64.
    Tpm2Certify {
        /// The `TPMS_ATTEST` of type certify, naming the key; its extra data is the challenge.
        certify_info: String,
        /// The attestation key's `TPMT_SIGNATURE` over it.
        signature: String,
        /// The attestation key's `TPM2B_PUBLIC`.
        ak_public: String,
        /// The certified key's `TPM2B_PUBLIC`.
        key_public: String,
    },
    /// The PKCS#11 token's attributes of the private key object, as the token reports them.
    Pkcs11Attributes {
        /// The token: manufacturer, model and serial number.
        token: String,
        /// `CKA_NEVER_EXTRACTABLE`.
        never_extractable: bool,
        /// `CKA_ALWAYS_SENSITIVE`.
        always_sensitive: bool,
        /// `CKA_EXTRACTABLE`.
        extractable: bool,
        /// `CKA_SENSITIVE`.
        sensitive: bool,
        /// `CKA_LOCAL` (generated on the token).
        local: bool,
    },
}

impl KeyAttestation {
    /// Whether it is a cryptographic proof (else a statement).
    pub fn is_proof(&self) -> bool {
        matches!(self, KeyAttestation::Tpm2Certify { .. })
    }

    /// For a token's statement: whether it says the key never left the token in the clear
    /// (never extractable, always sensitive, made on the token). A TPM certification says
    /// that by its attributes, which only its verifier reads.
    pub fn token_says_bound(&self) -> Option<bool> {
        match self {
            KeyAttestation::Pkcs11Attributes {
                never_extractable,
                always_sensitive,
                extractable,
                sensitive,
                local,
                ..
            } => Some(
                *never_extractable && *always_sensitive && !*extractable && *sensitive && *local,
            ),
            KeyAttestation::Tpm2Certify { .. } => None,
        }
    }
}
