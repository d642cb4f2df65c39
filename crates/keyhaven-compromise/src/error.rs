//! The crate's error, converted into [`keyhaven_core::Error`].

use std::path::PathBuf;

/// A failure of compromise handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompromiseError {
    /// No report has this id.
    #[error("no compromise report '{0}'")]
    ReportNotFound(String),
    /// A report names a key that no backend knows.
    #[error("no key '{0}' in any backend; a compromise report must name an existing key")]
    UnknownKey(String),
    /// An input value is not acceptable (configuration, report field, ...).
    #[error("{0}")]
    Invalid(String),
    /// A stored file cannot be read as what it should be.
    #[error("{} is damaged: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A revocation statement or list does not verify.
    #[error("revocation statement for key '{key_id}' is not genuine: {reason}")]
    Forged {
        /// The key the statement claims to revoke.
        key_id: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The key is revoked: private operations are refused.
    #[error("key '{key_id}' was revoked at {at} ({reason}); it can no longer be used")]
    Revoked {
        /// The revoked key.
        key_id: String,
        /// When (RFC 3339).
        at: String,
        /// Why.
        reason: String,
    },
    /// A notification hook failed or timed out.
    #[error("notification {hook} failed: {reason}")]
    Hook {
        /// Which hook (command or webhook, with its target).
        hook: String,
        /// What happened.
        reason: String,
    },
    /// An error from the key store, the file layer or another keyhaven crate.
    #[error(transparent)]
    Core(#[from] keyhaven_core::Error),
    /// An error reading the audit log.
    #[error(transparent)]
    Audit(#[from] keyhaven_audit::AuditError),
}

impl CompromiseError {
    pub(crate) fn corrupt(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        CompromiseError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<CompromiseError> for keyhaven_core::Error {
    fn from(e: CompromiseError) -> Self {
        use keyhaven_core::{Error, ErrorKind};
        match e {
            CompromiseError::ReportNotFound(_) | CompromiseError::UnknownKey(_) => {
                Error::other(ErrorKind::NotFound, "compromise", e)
            }
            CompromiseError::Invalid(m) => Error::InvalidInput(m),
            CompromiseError::Corrupt { path, reason } => {
                Error::corrupt(path.display().to_string(), reason)
            }
            CompromiseError::Forged { key_id, reason } => Error::corrupt(
                format!("revocation statement for key '{key_id}'"),
                format!("not genuine: {reason}"),
            ),
            CompromiseError::Revoked { .. } => Error::other(ErrorKind::Revoked, "compromise", e),
            CompromiseError::Hook { .. } => Error::other(ErrorKind::Unavailable, "notify", e),
            CompromiseError::Core(inner) => inner,
            CompromiseError::Audit(inner) => inner.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = CompromiseError> = std::result::Result<T, E>;
