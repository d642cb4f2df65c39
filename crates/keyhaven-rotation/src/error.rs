//! The crate's error, converted into [`keyhaven_core::Error`].

use keyhaven_core::{Error as CoreError, ErrorKind};

/// A failure of rotation, versioning, policies, metering, continuity proofs or prekey pools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// No logical key, version, policy or prekey matched.
    #[error("{0} not found")]
    NotFound(String),
    /// A state transition the version state machine forbids.
    #[error("key {key} version {version}: cannot go from {from} to {to}: {reason}")]
    InvalidTransition {
        /// The logical key.
        key: String,
        /// The version number.
        version: u32,
        /// The current state.
        from: String,
        /// The state asked for.
        to: String,
        /// Why it is refused.
        reason: String,
    },
    /// A private operation asked of a version that is not the primary one.
    #[error(
        "key {key} version {version} is {state}, not primary: only the primary version signs or \
         agrees (rotate the key or use its primary version)"
    )]
    NotPrimary {
        /// The logical key.
        key: String,
        /// The version number.
        version: u32,
        /// Its state.
        state: String,
    },
    /// The logical key has no primary version (every version is revoked, retired, ...).
    #[error(
        "key {0} has no primary version; rotate it (`keyhaven key rotate {0}`) to make a new one"
    )]
    NoPrimary(String),
    /// A policy file or policy value is invalid.
    #[error("rotation policy {where_}: {message}")]
    Policy {
        /// Which file, policy or field.
        where_: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A stored file (registry, counter, pool) is damaged.
    #[error("corrupt data in {what}: {reason}")]
    Corrupt {
        /// Which file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed during a rotation; nothing was changed.
    #[error(
        "rotation of key {key} failed in backend {backend} while trying to {operation}: {source}; \
         version {old_version} stays primary and nothing was changed"
    )]
    RotationFailed {
        /// The logical key.
        key: String,
        /// The backend's name.
        backend: String,
        /// What was being done.
        operation: &'static str,
        /// The version that stays primary (0 if there was none).
        old_version: u32,
        /// The backend's error.
        #[source]
        source: Box<CoreError>,
    },
    /// A pre-rotation action failed: the rotation was stopped and undone.
    #[error(
        "pre-rotation action {command} for key {key} failed: {reason}; the rotation was \
         cancelled and version {old_version} stays primary"
    )]
    PreActionFailed {
        /// The logical key.
        key: String,
        /// The command run.
        command: String,
        /// Exit status, timeout or spawn error, with its standard error output.
        reason: String,
        /// The version that stays primary.
        old_version: u32,
    },
    /// A continuity proof or a chain of them does not verify.
    #[error("continuity proof{}: {reason}", link.map(|l| format!(" (link {l} of the chain)")).unwrap_or_default())]
    Continuity {
        /// The 1-based position of the failing link in a chain, if in a chain.
        link: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A signature in a continuity proof does not verify.
    #[error("continuity proof{}: the {which} signature does not verify", link.map(|l| format!(" (link {l} of the chain)")).unwrap_or_default())]
    ContinuitySignature {
        /// The 1-based position of the failing link in a chain, if in a chain.
        link: Option<usize>,
        /// `old key` or `new key (countersignature)`.
        which: &'static str,
    },
    /// A one-time prekey was already used or handed out.
    #[error("one-time prekey {id}: {reason}")]
    PrekeyUsed {
        /// The prekey's id.
        id: String,
        /// What happened to it.
        reason: String,
    },
    /// A message key that cannot be given: already used (forward secrecy: it cannot be derived
    /// again), beyond the skip bound, or dropped from the skipped keys kept.
    #[error("message key {number}: {reason}")]
    MessageKey {
        /// The message number asked for.
        number: u32,
        /// Why it cannot be given.
        reason: String,
    },
    /// A session handshake that cannot be completed: a bundle or an initiation whose
    /// signature does not verify, keys on different curves, an unknown signed prekey.
    #[error("session agreement: {0}")]
    Handshake(String),
    /// An error from a key store, the file system or the crypto layer.
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl RotationError {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        RotationError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn policy(where_: impl Into<String>, message: impl Into<String>) -> Self {
        RotationError::Policy {
            where_: where_.into(),
            message: message.into(),
        }
    }

    pub(crate) fn continuity(link: Option<usize>, reason: impl Into<String>) -> Self {
        RotationError::Continuity {
            link,
            reason: reason.into(),
        }
    }
}

impl From<RotationError> for CoreError {
    fn from(e: RotationError) -> Self {
        use ErrorKind as K;
        let kind = match &e {
            RotationError::Core(_) | RotationError::Corrupt { .. } => K::Internal,
            RotationError::NotFound(_) => K::NotFound,
            RotationError::InvalidTransition { .. }
            | RotationError::NoPrimary(_)
            | RotationError::Policy { .. }
            | RotationError::Continuity { .. } => K::InvalidInput,
            RotationError::NotPrimary { .. } => K::Unsupported,
            // The backend's own kind of failure, with the rotation's message (which says the
            // old version stays primary) and the backend's error as its source.
            RotationError::RotationFailed { source, .. } => source.kind(),
            // The operator's hook refused the rotation: not a permissions problem on a file.
            RotationError::PreActionFailed { .. } => K::Unavailable,
            RotationError::ContinuitySignature { .. } => K::BadSignature,
            RotationError::PrekeyUsed { .. } => K::Revoked,
            RotationError::MessageKey { .. } | RotationError::Handshake(_) => K::InvalidInput,
        };
        match e {
            RotationError::Core(inner) => inner,
            RotationError::Corrupt { what, reason } => CoreError::Corrupt { what, reason },
            RotationError::ContinuitySignature { .. } => CoreError::BadSignature,
            other => CoreError::other(kind, "rotation", other),
        }
    }
}

/// A result with [`RotationError`].
pub type Result<T, E = RotationError> = std::result::Result<T, E>;
