//! What a new key should be ([`KeySpec`], with backend options) and what a backend knows about
//! one of its keys beyond [`crate::KeyInfo`] ([`KeyDetails`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::{Algorithm, Error, Result};

/// A key to generate: its algorithm, its label, and options only some backends honour (a TPM's
/// persistent handle, PCR policy and key passphrase). With no options it is an ordinary
/// [`crate::KeyStore::generate`].
///
/// ```
/// use keyhaven_core::{Algorithm, KeySpec};
///
/// let spec = KeySpec::new(Algorithm::EcdsaP256, "sealed")
///     .option("persistent", "0x81000010")
///     .option("pcr-policy", "sha256:0,7");
/// assert_eq!(spec.options.describe(), "pcr-policy, persistent");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeySpec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The label (unique in the backend).
    pub label: String,
    /// Backend options, by name.
    pub options: KeyOptions,
}

impl KeySpec {
    /// A key with no options.
    pub fn new(algorithm: Algorithm, label: impl Into<String>) -> Self {
        KeySpec {
            algorithm,
            label: label.into(),
            options: KeyOptions::default(),
        }
    }

    /// The same spec with the option `name` set to `value`.
    #[must_use]
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.set(name, value);
        self
    }

    /// The same spec with the secret option `name` (a key passphrase) set.
    #[must_use]
    pub fn secret_option(mut self, name: impl Into<String>, value: SecretString) -> Self {
        self.options.set_secret(name, value);
        self
    }
}

/// A backend option's value: text, or a secret that is never printed.
#[derive(Clone)]
enum OptionValue {
    Text(String),
    Secret(SecretString),
}

/// Options of a new key, by name. Each backend documents the names it takes and refuses the
/// others ([`KeyOptions::only`]), so a misspelt option is an error, never ignored. Secret values
/// are zeroized on drop and never shown by `Debug`.
#[derive(Clone, Default)]
pub struct KeyOptions {
    values: BTreeMap<String, OptionValue>,
}

impl fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.values {
            match value {
                OptionValue::Text(t) => map.entry(name, t),
                OptionValue::Secret(_) => map.entry(name, &"[redacted]"),
            };
        }
        map.finish()
    }
}

impl KeyOptions {
    /// Sets option `name` to a text value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values
            .insert(name.into(), OptionValue::Text(value.into()));
    }

    /// Sets option `name` to a secret value.
    pub fn set_secret(&mut self, name: impl Into<String>, value: SecretString) {
        self.values.insert(name.into(), OptionValue::Secret(value));
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The names set, sorted and comma-separated, for messages (`pcr-policy, persistent`).
    pub fn describe(&self) -> String {
        self.values.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// A text option's value.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the option was given as a secret.
    pub fn text(&self, name: &str) -> Result<Option<&str>> {
        match self.values.get(name) {
            None => Ok(None),
            Some(OptionValue::Text(t)) => Ok(Some(t)),
            Some(OptionValue::Secret(_)) => Err(Error::InvalidInput(format!(
                "key option '{name}' is not a secret; give it as text"
            ))),
        }
    }

    /// A secret option's value. A secret given as text is refused: text options are printed
    /// by `Debug` and travel on command lines, where a passphrase must never be.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the option was given as text.
    pub fn secret(&self, name: &str) -> Result<Option<SecretString>> {
        match self.values.get(name) {
            None => Ok(None),
            Some(OptionValue::Secret(s)) => {
                Ok(Some(SecretString::from(s.expose_secret().to_owned())))
            }
            Some(OptionValue::Text(_)) => Err(Error::InvalidInput(format!(
                "key option '{name}' is a secret: give it as one (from a file or a prompt), \
                 never as text"
            ))),
        }
    }

    /// Refuses every option but `known` (the options `backend` takes).
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the first unknown option and the ones the backend takes.
    pub fn only(&self, backend: &str, known: &[&str]) -> Result<()> {
        match self.values.keys().find(|n| !known.contains(&n.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(Error::Unsupported {
                operation: "generate a key with options",
                reason: if known.is_empty() {
                    format!("the {backend} backend takes no key options ('{unknown}' given)")
                } else {
                    format!(
                        "the {backend} backend has no key option '{unknown}' (it takes {})",
                        known.join(", ")
                    )
                },
            }),
        }
    }
}

/// What a backend knows about one of its keys beyond [`crate::KeyInfo`]; every field is
/// optional, and a software store in memory knows nothing more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyDetails {
    /// Whether the private key is inside a device (a token, a TPM) it cannot leave.
    #[serde(skip)]
    pub in_device: bool,
    /// The file holding the private key, for stores whose files `openssl` reads (PEM).
    #[serde(skip)]
    pub private_key_file: Option<PathBuf>,
    /// The label of the token holding the key (PKCS#11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The persistent handle the key is also stored at (TPM: `0x81000010`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_handle: Option<String>,
    /// The PCR policy the key is bound to (TPM: `sha256:0,7`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr_policy: Option<String>,
    /// Whether the key needs its own passphrase ([`crate::KeyStore::unlock`]) to sign.
    pub needs_auth: bool,
}
