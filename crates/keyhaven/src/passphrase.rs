//! Where passphrases come from: the manager asks a [`PassphraseProvider`] only when it opens or
//! creates a backend that needs one, so a command-line tool prompts only when it must.

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

use crate::CoreError;

/// Why a passphrase is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PassphrasePurpose {
    /// To open an existing store.
    Unlock,
    /// To create a new store: an interactive provider should ask twice and compare.
    Create,
}

/// A request for a passphrase.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PassphraseRequest {
    /// The backend's configured name.
    pub backend: String,
    /// The store's directory.
    pub location: PathBuf,
    /// Why it is wanted.
    pub purpose: PassphrasePurpose,
}

impl PassphraseRequest {
    /// A request (for providers' tests).
    pub fn new(
        backend: impl Into<String>,
        location: impl Into<PathBuf>,
        purpose: PassphrasePurpose,
    ) -> Self {
        PassphraseRequest {
            backend: backend.into(),
            location: location.into(),
            purpose,
        }
    }
}

/// Supplies passphrases for encrypted backends.
///
/// Closures `Fn(&PassphraseRequest) -> Result<SecretString, keyhaven_core::Error>` are providers.
pub trait PassphraseProvider: Send + Sync {
    /// The passphrase for the request.
    ///
    /// # Errors
    /// [`CoreError::Locked`] when no passphrase is available (say how to give one);
    /// [`CoreError::InvalidInput`] when a new passphrase is refused (empty, or the two entries
    /// differ).
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError>;
}

impl<F> PassphraseProvider for F
where
    F: Fn(&PassphraseRequest) -> Result<SecretString, CoreError> + Send + Sync,
{
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        self(request)
    }
}

/// The same passphrase for every backend.
pub struct FixedPassphrase(SecretString);

impl FixedPassphrase {
    /// A provider that always answers `passphrase`.
    pub fn new(passphrase: impl Into<String>) -> Self {
        FixedPassphrase(SecretString::from(passphrase.into()))
    }
}

impl From<SecretString> for FixedPassphrase {
    fn from(secret: SecretString) -> Self {
        FixedPassphrase(secret)
    }
}

impl fmt::Debug for FixedPassphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedPassphrase([REDACTED])")
    }
}

impl PassphraseProvider for FixedPassphrase {
    fn passphrase(&self, _request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        Ok(self.0.clone())
    }
}

/// No passphrase at all: encrypted backends stay locked. For tools that only use plain or
/// hardware backends.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPassphrase;

impl PassphraseProvider for NoPassphrase {
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        Err(CoreError::Locked(format!(
            "backend '{}' needs a passphrase and none was given",
            request.backend
        )))
    }
}
