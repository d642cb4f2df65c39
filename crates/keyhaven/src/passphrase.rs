//! Where passphrases and PINs come from: the manager asks a [`PassphraseProvider`] only when it
//! opens or creates a backend that needs one, so a command-line tool prompts only when it must.
//! That is the passphrase of an encrypted store, or the user PIN of a PKCS#11 token whose
//! backend declares no `pin_env` or `pin_file`.

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
    /// The user PIN of a PKCS#11 token ([`PassphraseRequest::token`] names it), to log in. Never
    /// answer it with a store passphrase: each wrong PIN costs one of the token's few tries
    /// before it locks.
    TokenPin,
}

/// A request for a passphrase.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PassphraseRequest {
    /// The backend's configured name.
    pub backend: String,
    /// The store's directory; for [`PassphrasePurpose::TokenPin`], the PKCS#11 module.
    pub location: PathBuf,
    /// Why it is wanted.
    pub purpose: PassphrasePurpose,
    /// For [`PassphrasePurpose::TokenPin`]: the token's label.
    pub token: Option<String>,
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
            token: None,
        }
    }

    /// A request for the user PIN of the token labelled `token`, reached through the PKCS#11
    /// module `module`, for the backend `backend`.
    pub fn token_pin(
        backend: impl Into<String>,
        module: impl Into<PathBuf>,
        token: impl Into<String>,
    ) -> Self {
        PassphraseRequest {
            backend: backend.into(),
            location: module.into(),
            purpose: PassphrasePurpose::TokenPin,
            token: Some(token.into()),
        }
    }

    /// What is asked for, for prompts and messages: `the user PIN of token 'L' (backend 'B')`
    /// or `the passphrase of backend 'B' (DIR)`.
    pub fn describe(&self) -> String {
        match self.purpose {
            PassphrasePurpose::TokenPin => format!(
                "the user PIN of token '{}' (backend '{}')",
                self.token.as_deref().unwrap_or("?"),
                self.backend
            ),
            PassphrasePurpose::Unlock | PassphrasePurpose::Create => format!(
                "the passphrase of backend '{}' ({})",
                self.backend,
                self.location.display()
            ),
        }
    }
}

/// Supplies passphrases for encrypted backends and user PINs for PKCS#11 tokens.
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

/// The same passphrase for every encrypted backend. It answers no token PIN request
/// ([`PassphrasePurpose::TokenPin`]: [`CoreError::Locked`]), so a store passphrase is never tried
/// as a PIN; declare `pin_env` or `pin_file` for tokens, or use a closure provider.
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
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        if request.purpose == PassphrasePurpose::TokenPin {
            return Err(CoreError::Locked(format!(
                "{} is needed and a fixed store passphrase is never used as a PIN",
                request.describe()
            )));
        }
        Ok(self.0.clone())
    }
}

/// No passphrase at all: encrypted backends stay locked, and tokens whose PIN is not declared
/// (`pin_env`, `pin_file`) too. For tools that only use plain or hardware backends.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPassphrase;

impl PassphraseProvider for NoPassphrase {
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        Err(CoreError::Locked(format!(
            "{} is needed and none was given",
            request.describe()
        )))
    }
}
