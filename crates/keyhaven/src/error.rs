//! The facade's error type.

use std::io;

use crate::CoreError;
pub use keyhaven_core::ErrorKind;

/// A result with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the facade: configuration, key resolution, or a backend (with its name).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error not tied to one backend (crypto, encodings, input checks).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// An error from one backend.
    #[error("backend '{backend}': {source}")]
    Backend {
        /// The backend's configured name.
        backend: String,
        /// What the backend reported.
        #[source]
        source: CoreError,
    },
    /// The user PIN of a token backend is wrong, locked, or could not be obtained. Kept apart
    /// from [`Error::Backend`] so callers can say where the PIN came from and how to give it.
    #[error("backend '{backend}': {source} (PIN source: {origin})")]
    Pin {
        /// The backend's configured name.
        backend: String,
        /// Where the PIN came from: `environment variable V`, `PIN file F`, or `the prompt`.
        origin: String,
        /// [`CoreError::BadPassphrase`] (wrong PIN) or [`CoreError::Locked`] (none available,
        /// or the token's PIN is locked).
        #[source]
        source: CoreError,
    },
    /// The configuration file is malformed or inconsistent.
    #[error("{origin}: {message}")]
    Config {
        /// Where the configuration came from (a file path, or a description).
        origin: String,
        /// What is wrong, naming the field or backend.
        message: String,
    },
    /// No backend has that name.
    #[error("no backend named '{name}' is configured (configured: {known})")]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated (or `none`).
        known: String,
    },
    /// No backend was named and there is no default to use.
    #[error("no backend given and no default backend is configured")]
    NoBackend,
    /// A key reference matches more than one key.
    #[error("'{reference}' matches {} keys: {}", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// The reference as given.
        reference: String,
        /// Each matching key as `BACKEND:ID (LABEL)`.
        candidates: Vec<String>,
    },
    /// No default key is configured, or it no longer exists.
    #[error("{0}")]
    NoDefaultKey(String),
    /// A configured backend cannot be reached and no fallback may replace it.
    #[error("backend '{backend}' is unavailable: {source}{hint}")]
    Unavailable {
        /// The backend's configured name.
        backend: String,
        /// Why it is unavailable.
        #[source]
        source: CoreError,
        /// Why no fallback was used (may be empty).
        hint: String,
    },
    /// An I/O error of the facade itself (configuration file, home directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn backend(backend: &str, source: CoreError) -> Self {
        Error::Backend {
            backend: backend.to_owned(),
            source,
        }
    }

    /// The meaning of this error, for callers that map errors to exit codes or HTTP statuses.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Core(e) | Error::Backend { source: e, .. } | Error::Pin { source: e, .. } => {
                e.kind()
            }
            Error::Config { .. } | Error::Ambiguous { .. } => ErrorKind::InvalidInput,
            Error::UnknownBackend { .. } | Error::NoDefaultKey(_) => ErrorKind::NotFound,
            Error::NoBackend => ErrorKind::InvalidInput,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Io { source, .. } => ErrorKind::of_io(source),
        }
    }

    /// The core error inside, if this error came from a key store or the crypto layer.
    pub fn core(&self) -> Option<&CoreError> {
        match self {
            Error::Core(e)
            | Error::Backend { source: e, .. }
            | Error::Pin { source: e, .. }
            | Error::Unavailable { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Whether a core error means "this backend cannot be reached": only [`CoreError::Unavailable`]
/// (a device that is missing, support that is not compiled in, or a store directory outside the
/// home whose parent is missing, which the facade reports as unavailable itself). Everything else,
/// a wrong passphrase, unsafe permissions, a damaged store (its `keys/` directory gone, say), is
/// the backend's own error and is reported, never replaced by the fallback.
pub(crate) fn is_unavailable(e: &CoreError) -> bool {
    e.is(ErrorKind::Unavailable)
}
