use std::{error::Error as StdError, fmt, io};

use serde::Serialize;

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
    /// An error of a layer below (a backend, a lifecycle crate) kept whole, with the
    /// [`ErrorKind`] it means: its message, and its `source()` chain down to the device call
    /// that failed. Callers react to [`Error::kind`]; [`OtherError::downcast_ref`] gives the
    /// original back.
    #[error(transparent)]
    Other(OtherError),
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
    /// An error of a lower layer (`origin`: `pkcs11`, `tpm`, `rotation`, ...) that means
    /// `kind`, kept whole (see [`Error::Other`]).
    pub fn other(
        kind: ErrorKind,
        origin: &'static str,
        error: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Error::Other(OtherError(Box::new(OtherInner {
            kind,
            origin,
            error: Box::new(error),
            note: None,
        })))
    }

    /// [`Error::other`] with a note about the device that the original error does not carry
    /// (`the token is write-protected`), shown after its message.
    pub fn other_noted(
        kind: ErrorKind,
        origin: &'static str,
        error: impl StdError + Send + Sync + 'static,
        note: impl Into<String>,
    ) -> Self {
        Error::Other(OtherError(Box::new(OtherInner {
            kind,
            origin,
            error: Box::new(error),
            note: Some(note.into()),
        })))
    }

    /// What this error means, whichever layer it came from: the one taxonomy callers map to
    /// exit codes and HTTP statuses.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::BadPassphrase(_) => ErrorKind::BadPassphrase,
            Error::Locked(_) => ErrorKind::Locked,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Revoked(_) => ErrorKind::Revoked,
            Error::BadSignature => ErrorKind::BadSignature,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Other(o) => o.0.kind,
            Error::Crypto | Error::Backend { .. } => ErrorKind::Internal,
        }
    }

    /// Whether this error means `kind` (shorthand for `self.kind() == kind`).
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind() == kind
    }

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

/// The meaning of an error, independent of where it came from: the one taxonomy of keyhaven.
/// Every crate's error has a `kind()`, and the CLI's exit codes and the server's HTTP statuses
/// are each a single mapping from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// A key, backend, record or file was not found.
    NotFound,
    /// Something with that name already exists.
    AlreadyExists,
    /// The backend or key cannot do this operation.
    Unsupported,
    /// Malformed input, configuration, or an ambiguous reference.
    InvalidInput,
    /// Not allowed, or file permissions are unsafe.
    PermissionDenied,
    /// Wrong passphrase or PIN.
    BadPassphrase,
    /// Locked: no passphrase available, or held by another process.
    Locked,
    /// Stored data is damaged.
    Corrupt,
    /// The key is revoked.
    Revoked,
    /// A signature does not verify.
    BadSignature,
    /// A backend cannot be reached.
    Unavailable,
    /// An I/O error.
    Io,
    /// A failure that should not happen (a cryptographic or internal error).
    Internal,
}

impl ErrorKind {
    /// The kind of an I/O error: permission problems are [`ErrorKind::PermissionDenied`],
    /// missing files [`ErrorKind::NotFound`], the rest [`ErrorKind::Io`].
    pub fn of_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Io,
        }
    }
}

/// An error of a layer below, with the kind it means (see [`Error::Other`]). Like
/// `std::io::Error::new(kind, inner)`: it displays the inner error, and its `source()` is the
/// inner error's, so a chain printer shows each message once, down to the device call.
pub struct OtherError(Box<OtherInner>);

/// The parts of an [`OtherError`], boxed so that every [`Error`] stays small.
struct OtherInner {
    kind: ErrorKind,
    origin: &'static str,
    error: Box<dyn StdError + Send + Sync + 'static>,
    note: Option<String>,
}

impl OtherError {
    /// What it means.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The layer it came from: `pkcs11`, `tpm`, `rotation`, ...
    pub fn origin(&self) -> &'static str {
        self.0.origin
    }

    /// The original error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0.error
    }

    /// The original error as its own type, when it is a `T`.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.error.downcast_ref::<T>()
    }
}

impl fmt::Debug for OtherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtherError")
            .field("kind", &self.0.kind)
            .field("origin", &self.0.origin)
            .field("error", &self.0.error)
            .field("note", &self.0.note)
            .finish()
    }
}

impl fmt::Display for OtherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.error.fmt(f)?;
        match &self.0.note {
            Some(note) => write!(f, ": {note}"),
            None => Ok(()),
        }
    }
}

impl StdError for OtherError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.error.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("C_Sign failed: CKR_DEVICE_ERROR")]
    struct DeviceCall {
        #[source]
        source: io::Error,
    }

    #[test]
    fn other_keeps_kind_message_and_chain() {
        let e = Error::other(
            ErrorKind::Unavailable,
            "pkcs11",
            DeviceCall {
                source: io::Error::other("token removed"),
            },
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is(ErrorKind::Unavailable));
        assert_eq!(e.to_string(), "C_Sign failed: CKR_DEVICE_ERROR");
        // The chain goes on to the device's own cause, each message once.
        let mut chain = Vec::new();
        let mut cur: Option<&(dyn StdError + 'static)> = Some(&e);
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = c.source();
        }
        assert_eq!(chain, ["C_Sign failed: CKR_DEVICE_ERROR", "token removed"]);
        assert!(std::mem::size_of::<Error>() <= 64, "errors stay small");
        let Error::Other(o) = &e else {
            panic!("not Other: {e:?}")
        };
        assert_eq!(o.origin(), "pkcs11");
        assert!(o.downcast_ref::<DeviceCall>().is_some());
    }

    #[test]
    fn kinds_of_the_meaning_variants() {
        assert_eq!(Error::key_not_found("k").kind(), ErrorKind::NotFound);
        assert_eq!(Error::Crypto.kind(), ErrorKind::Internal);
        let io = Error::io("read f", io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(io.kind(), ErrorKind::PermissionDenied);
    }
}
