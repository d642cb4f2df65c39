use std::io;

/// A result with keyhaven's core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, at the level of meaning.
///
/// Every backend converts its own error into this enum so that callers (and the CLI's exit codes)
/// can react the same way whatever the backend. Cryptographic failures stay opaque on purpose.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key (or other object) matched.
    #[error("{0} not found")]
    NotFound(String),
    /// Something with that name or id already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The backend or key cannot do this operation.
    #[error("cannot {operation}: {reason}")]
    Unsupported {
        /// The operation refused.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The input is malformed or does not fit the key (for example a wrong digest length).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The caller may not do this, or file permissions are unsafe.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The passphrase (or PIN) is wrong.
    #[error("wrong passphrase: {0}")]
    BadPassphrase(String),
    /// The store is locked (no passphrase given, or held by another process).
    #[error("locked: {0}")]
    Locked(String),
    /// Stored data is damaged: a truncated, altered or unreadable record.
    #[error("corrupt data in {what}: {reason}")]
    Corrupt {
        /// Which record or file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is revoked and refuses private operations.
    #[error("key {0} is revoked")]
    Revoked(String),
    /// The signature does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// A cryptographic operation failed (details withheld on purpose).
    #[error("cryptographic operation failed")]
    Crypto,
    /// The backend cannot be reached (device missing, module not loadable, ...).
    #[error("backend {backend} unavailable: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: String,
        /// Why it is unavailable.
        reason: String,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "write /path/to/file".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A backend-specific failure, with its own error as the source.
    #[error("{backend} backend error: {source}")]
    Backend {
        /// The backend's kind.
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// An [`Error::Io`] with a context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Corrupt`].
    pub fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::NotFound`] for a key reference.
    pub fn key_not_found(key: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("key '{key}'"))
    }
}
