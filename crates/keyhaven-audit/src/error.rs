//! The crate's error, converted into [`keyhaven_core::Error`].

use std::io;
use std::path::PathBuf;

/// A failure of the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O call failed.
    #[error("audit log: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The log's existing content cannot be continued (a bad last record or header).
    #[error("audit log: {} is damaged: {reason}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An event field is not acceptable (e.g. a digest that is not 64 hex characters).
    #[error("audit log: invalid event: {0}")]
    InvalidEvent(String),
    /// Signing a checkpoint failed.
    #[error("audit log: signing a checkpoint failed: {0}")]
    Sign(#[source] keyhaven_core::Error),
    /// A file the log uses is unsafe: another user's, or a symbolic link (never followed).
    #[error("audit log: {0}")]
    Unsafe(#[source] keyhaven_core::Error),
    /// A previous write in the same group commit failed; this append shares its fate.
    #[error("audit log: group commit failed: {0}")]
    Batch(String),
}

pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> AuditError + use<> {
    let path = path.to_owned();
    move |source| AuditError::Io { op, path, source }
}

impl From<AuditError> for keyhaven_core::Error {
    fn from(e: AuditError) -> Self {
        use keyhaven_core::{Error, ErrorKind};
        match e {
            AuditError::Io { op, path, source } => {
                let context = format!("audit log: {op} {}", path.display());
                // Its kind (permission denied, not found, ...) is the I/O error's own.
                Error::Io { context, source }
            }
            AuditError::InvalidEvent(_) => Error::other(ErrorKind::InvalidInput, "audit", e),
            AuditError::Damaged { path, reason } => {
                Error::corrupt(path.display().to_string(), reason)
            }
            AuditError::Sign(inner) | AuditError::Unsafe(inner) => inner,
            AuditError::Batch(_) => Error::other(ErrorKind::Internal, "audit", e),
        }
    }
}
