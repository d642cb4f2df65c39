//! The crate's error.

/// Why evidence was refused. Each says what a person can act on: which part of the evidence,
/// what was expected, what was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The bytes are not evidence of this kind (a wrong length, an unknown version, a
    /// certificate that does not parse).
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What is wrong, where.
        reason: String,
    },
    /// A signature does not verify: the evidence or a certificate was changed, or signed by
    /// someone else.
    #[error("{what} does not verify: {reason}")]
    BadSignature {
        /// Whose signature.
        what: &'static str,
        /// What it was checked against.
        reason: String,
    },
    /// The chain does not end in a trusted root.
    #[error("untrusted root: {0}")]
    UntrustedRoot(String),
    /// A certificate is outside its validity period at the verification time.
    #[error("{what} is not valid at {at}: valid from {not_before} to {not_after}")]
    Expired {
        /// Which certificate.
        what: String,
        /// The verification time (seconds since the epoch).
        at: u64,
        /// Its start.
        not_before: i64,
        /// Its end.
        not_after: i64,
    },
    /// The evidence verifies but the policy refuses it (debug on, a TCB too old, a
    /// measurement not allowed, a report bound to other data).
    #[error("refused by policy: {0}")]
    Policy(String),
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, AttestError>;

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> AttestError {
    AttestError::Malformed {
        what,
        reason: reason.into(),
    }
}
