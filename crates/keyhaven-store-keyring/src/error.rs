//! The keyring store's error: which keyring call failed, kept as the source.

use keyhaven_core::{Error as CoreError, ErrorKind};

/// What went wrong talking to a keyring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The keyring cannot be reached (no session bus, no Secret Service on it, a kernel without
    /// keyrings or a sandbox that forbids them).
    #[error("{keyring} cannot be reached: {reason}")]
    Unreachable {
        /// Which keyring.
        keyring: String,
        /// Why, with what to do.
        reason: String,
    },
    /// The keyring is locked and keyhaven does not prompt.
    #[error("{keyring} is locked: {hint}")]
    Locked {
        /// Which keyring.
        keyring: String,
        /// How to unlock it.
        hint: String,
    },
    /// A keyring call failed.
    #[error("{keyring}: {operation} failed")]
    Call {
        /// Which keyring.
        keyring: String,
        /// What was being done.
        operation: String,
        /// The keyring library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl KeyringError {
    pub(crate) fn call(
        keyring: &str,
        operation: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        KeyringError::Call {
            keyring: keyring.to_owned(),
            operation: operation.into(),
            source: Box::new(source),
        }
    }
}

impl From<KeyringError> for CoreError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Unreachable { keyring, reason } => CoreError::Unavailable {
                backend: keyring,
                reason,
            },
            KeyringError::Locked { .. } => CoreError::other(ErrorKind::Locked, "keyring", e),
            KeyringError::Call { .. } => CoreError::other(ErrorKind::Unavailable, "keyring", e),
        }
    }
}
