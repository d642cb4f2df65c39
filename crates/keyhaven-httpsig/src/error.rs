//! The crate's error: why a message could not be signed, or why a signature was refused.

use keyhaven_core::{Error as CoreError, ErrorKind};

/// A result with [`HttpSigError`].
pub type Result<T, E = HttpSigError> = std::result::Result<T, E>;

/// Why signing or verifying failed. Each refusal says which rule the message broke, so a server
/// can answer with a problem document that tells the client what to fix; [`HttpSigError::kind`]
/// is its meaning for status codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSigError {
    /// A header, URI or component identifier is not well formed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read (`Signature-Input`, `Signature`, `target URI`, ...).
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The message has no signature with that label, or none at all.
    #[error("no signature{}", label.as_ref().map(|l| format!(" labelled '{l}'")).unwrap_or_default())]
    NoSignature {
        /// The label asked for, if any.
        label: Option<String>,
    },
    /// A covered component is not in the message (a field it lacks, `@query` of a URI
    /// without one).
    #[error("the message has no {0}, which the signature covers")]
    MissingComponent(String),
    /// A component identifier this implementation does not compute.
    #[error("component {0} is not supported")]
    UnsupportedComponent(String),
    /// A component the verifier requires is not covered.
    #[error("the signature does not cover {0}, which is required")]
    NotCovered(String),
    /// A signature parameter is missing or out of policy (no `created`, no `keyid`, ...).
    #[error("signature parameter {param}: {reason}")]
    Parameter {
        /// The parameter.
        param: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The signature was made too long ago, expired, or claims to come from the future.
    #[error("the signature is not valid now: {0}")]
    Stale(String),
    /// `alg` names an algorithm other than the key's, or one not supported.
    #[error("algorithm: {0}")]
    Algorithm(String),
    /// No key is known for `keyid`.
    #[error("unknown key '{0}'")]
    UnknownKey(String),
    /// The signature does not verify with the key.
    #[error("the signature does not verify with key '{0}'")]
    BadSignature(String),
    /// `Content-Digest` does not match the content (or names no algorithm supported).
    #[error("content digest: {0}")]
    Digest(String),
    /// The key store refused to sign (a locked token, a revoked key, ...).
    #[error("signing failed: {0}")]
    Sign(#[source] CoreError),
}

impl HttpSigError {
    /// The meaning of this error in keyhaven's one taxonomy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HttpSigError::Malformed { .. }
            | HttpSigError::MissingComponent(_)
            | HttpSigError::NotCovered(_)
            | HttpSigError::Parameter { .. }
            | HttpSigError::Algorithm(_)
            | HttpSigError::NoSignature { .. }
            | HttpSigError::Digest(_) => ErrorKind::InvalidInput,
            HttpSigError::UnsupportedComponent(_) => ErrorKind::Unsupported,
            HttpSigError::Stale(_) => ErrorKind::PermissionDenied,
            HttpSigError::UnknownKey(_) => ErrorKind::NotFound,
            HttpSigError::BadSignature(_) => ErrorKind::BadSignature,
            HttpSigError::Sign(e) => e.kind(),
        }
    }

    /// A short, stable name of the rule broken (`malformed`, `stale`, `unknown-key`, ...), for
    /// metrics labels and problem types.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpSigError::Malformed { .. } => "malformed",
            HttpSigError::NoSignature { .. } => "no-signature",
            HttpSigError::MissingComponent(_) => "missing-component",
            HttpSigError::UnsupportedComponent(_) => "unsupported-component",
            HttpSigError::NotCovered(_) => "not-covered",
            HttpSigError::Parameter { .. } => "bad-parameter",
            HttpSigError::Stale(_) => "stale",
            HttpSigError::Algorithm(_) => "algorithm",
            HttpSigError::UnknownKey(_) => "unknown-key",
            HttpSigError::BadSignature(_) => "bad-signature",
            HttpSigError::Digest(_) => "digest",
            HttpSigError::Sign(_) => "sign-failed",
        }
    }
}

impl From<HttpSigError> for CoreError {
    fn from(e: HttpSigError) -> Self {
        match e {
            HttpSigError::Sign(inner) => inner,
            other => CoreError::other(other.kind(), "httpsig", other),
        }
    }
}
