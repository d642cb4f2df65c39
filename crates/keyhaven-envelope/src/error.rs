//! The crate's error, converted into [`keyhaven_core::Error`].

/// A failure to wrap, unwrap, seal or open.
///
/// Authentication failures say which layer failed and what it is bound to, never why in
/// cryptographic detail: "does not open" covers a changed byte, a wrong key and a wrong context
/// alike, since telling them apart would help an attacker more than an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The master key cannot do key agreement.
    #[error(
        "master key {key} is a {algorithm} key: a master key must do key agreement (generate an \
         ecdh-p384 or ecdh-p256 key on a token or TPM, or an x25519 key in software)"
    )]
    NotAgreementKey {
        /// The key.
        key: String,
        /// Its algorithm.
        algorithm: keyhaven_core::Algorithm,
    },
    /// The bytes are not a wrapped KEK or an envelope of this format.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was being read (`wrapped KEK`, `envelope`).
        what: &'static str,
        /// What is wrong, at which offset.
        reason: String,
    },
    /// A wrapped KEK names another master key.
    #[error(
        "the wrapped KEK of tenant '{tenant}' tier {tier} version {version} was made for master \
         key {expected}, not this master key {found}"
    )]
    WrongMaster {
        /// The tenant of the KEK.
        tenant: String,
        /// Its tier.
        tier: u8,
        /// Its version.
        version: u32,
        /// The fingerprint recorded in the wrapped KEK.
        expected: String,
        /// The fingerprint of the master key asked to unwrap it.
        found: String,
    },
    /// The ciphertext (a wrapped KEK, a wrapped DEK or the data) does not authenticate.
    #[error("{what} does not open: it was changed or damaged, or it belongs to another {bound_to}")]
    Unauthentic {
        /// Which layer (`wrapped KEK`, `wrapped DEK`, `secret`).
        what: &'static str,
        /// What it is bound to, for the message.
        bound_to: &'static str,
    },
    /// The KEK given is not the one the envelope names.
    #[error(
        "the secret was sealed under KEK version {needed} of tenant '{tenant}' tier {tier}, not \
         this KEK ({have})"
    )]
    WrongKek {
        /// The secret's tenant.
        tenant: String,
        /// The secret's tier.
        tier: u8,
        /// The KEK version the envelope names.
        needed: u32,
        /// The KEK offered (`tenant 'x' tier n version v`).
        have: String,
    },
    /// Input that can never work (an empty tenant, a tier above 255 bytes of path...).
    #[error("{0}")]
    InvalidInput(String),
    /// The backend failed (a token unplugged, a TPM gone, a key deleted): its own error, kind
    /// kept.
    #[error(transparent)]
    Backend(#[from] keyhaven_core::Error),
}

/// The crate's result type.
pub type Result<T, E = EnvelopeError> = std::result::Result<T, E>;

impl From<EnvelopeError> for keyhaven_core::Error {
    fn from(e: EnvelopeError) -> Self {
        use keyhaven_core::{Error, ErrorKind};
        match e {
            EnvelopeError::Backend(inner) => inner,
            EnvelopeError::NotAgreementKey { .. } => {
                Error::other(ErrorKind::Unsupported, "envelope", e)
            }
            EnvelopeError::InvalidInput(_) | EnvelopeError::WrongKek { .. } => {
                Error::other(ErrorKind::InvalidInput, "envelope", e)
            }
            EnvelopeError::Malformed { .. }
            | EnvelopeError::WrongMaster { .. }
            | EnvelopeError::Unauthentic { .. } => Error::other(ErrorKind::Corrupt, "envelope", e),
        }
    }
}
