//! What only hardware backends do: TPM key options (a persistent handle, a PCR policy, a key
//! passphrase) and the details of hardware keys.

use std::fmt;

use secrecy::SecretString;

use crate::manager::{KeyManager, ManagedKey, managed};
use crate::{Algorithm, BackendKind, CoreError, Error, Result};

/// Options of a new key that only a TPM backend can honour, for
/// [`KeyManager::generate_with`]. The empty options are an ordinary [`KeyManager::generate`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct GenerateOptions {
    persistent: Option<String>,
    pcr_policy: Option<String>,
    auth: Option<SecretString>,
}

impl fmt::Debug for GenerateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateOptions")
            .field("persistent", &self.persistent)
            .field("pcr_policy", &self.pcr_policy)
            .field("auth", &self.auth.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl GenerateOptions {
    /// No options.
    pub fn new() -> Self {
        GenerateOptions::default()
    }

    /// Also make the key persistent at this TPM handle (`0x81000000` to `0x817fffff`, written in
    /// hex: `0x81000010`), where `tpm2_readpublic -c HANDLE` finds it.
    pub fn persistent(mut self, handle: impl Into<String>) -> Self {
        self.persistent = Some(handle.into());
        self
    }

    /// Bind the key to the current values of these PCRs (`BANK:PCR[,PCR...]`, e.g.
    /// `sha256:0,7`): it signs only while they are unchanged.
    pub fn pcr_policy(mut self, policy: impl Into<String>) -> Self {
        self.pcr_policy = Some(policy.into());
        self
    }

    /// A passphrase the TPM checks before each signature with the key (give it later with
    /// [`KeyManager::set_key_auth`]).
    pub fn auth(mut self, passphrase: SecretString) -> Self {
        self.auth = Some(passphrase);
        self
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.persistent.is_none() && self.pcr_policy.is_none() && self.auth.is_none()
    }

    /// The options set, for messages: `a persistent handle, a PCR policy`.
    fn describe(&self) -> String {
        let mut set = Vec::new();
        if self.persistent.is_some() {
            set.push("a persistent handle");
        }
        if self.pcr_policy.is_some() {
            set.push("a PCR policy");
        }
        if self.auth.is_some() {
            set.push("a key passphrase");
        }
        set.join(", ")
    }
}

/// What a hardware backend knows about one of its keys beyond [`crate::KeyInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HardwareKeyDetails {
    /// `pkcs11`: the label of the token holding the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `tpm`: the persistent handle the key is also stored at (`0x81000010`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_handle: Option<String>,
    /// `tpm`: the PCR policy the key is bound to (`sha256:0,7`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr_policy: Option<String>,
    /// `tpm`: whether the key needs its passphrase to sign ([`KeyManager::set_key_auth`]).
    pub needs_auth: bool,
}

impl KeyManager {
    /// Generates a key with TPM options in `backend` (or the default backend). With no options
    /// this is [`KeyManager::generate`]. With options, the backend must be a `tpm` backend, and
    /// the fallback rule never applies (the fallback could not honour them).
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] if the backend is not a TPM backend; [`CoreError::InvalidInput`]
    /// for a malformed handle or policy; [`Error::Unavailable`] if the TPM cannot be reached; the
    /// TPM's errors ([`CoreError::AlreadyExists`] for a handle in use, ...).
    pub fn generate_with(
        &self,
        backend: Option<&str>,
        algorithm: Algorithm,
        label: &str,
        options: &GenerateOptions,
    ) -> Result<ManagedKey> {
        if options.is_empty() {
            return self.generate(backend, algorithm, label);
        }
        let label = &self.new_label(label)?;
        let name = match backend {
            Some(b) => b.to_owned(),
            None => self.default_backend_name()?,
        };
        let kind = self.backend_config(&name)?.kind;
        if kind != BackendKind::Tpm {
            return Err(Error::backend(
                &name,
                CoreError::Unsupported {
                    operation: "generate a key with TPM options",
                    reason: format!(
                        "{} can only be given to keys of a tpm backend, and '{name}' is a {kind} \
                         backend",
                        options.describe()
                    ),
                },
            ));
        }
        let b = self.backend_for_new_key(&name, Some(&options.describe()))?;
        // The device's own generation call is outside the KeyStore trait, so the facade checks
        // access and writes the audit records the decorators would.
        self.authorize_new_key(&b, label)?;
        self.audit_new_key(
            "generate",
            b.kind().name(),
            None,
            keyhaven_audit::Outcome::Intent,
            label,
        )?;
        let info = match tpm_generate(&b, algorithm, label, options) {
            Ok(info) => info,
            Err(e) => {
                let reason = e.to_string();
                self.audit_new_key(
                    "generate",
                    b.kind().name(),
                    None,
                    keyhaven_audit::Outcome::Failed,
                    &reason,
                )?;
                return Err(e);
            }
        };
        self.audit_new_key(
            "generate",
            b.kind().name(),
            Some(info.id.as_str()),
            keyhaven_audit::Outcome::Allowed,
            label,
        )?;
        let key = managed(&b, info);
        self.default_if_none(&key)?;
        Ok(key)
    }

    /// Gives the passphrase of a TPM key made with [`GenerateOptions::auth`], for this manager's
    /// later signatures with it (kept in memory only). The TPM checks it at the next signature.
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] for keys of other backends (only TPM keys have their own
    /// passphrase); [`Error::Unavailable`] if the TPM cannot be reached.
    pub fn set_key_auth(&self, key: &ManagedKey, passphrase: &SecretString) -> Result<()> {
        let b = self.key_backend(key)?;
        #[cfg(feature = "tpm")]
        if let Some(store) = b.tpm_store() {
            return store
                .set_key_auth(key.id(), passphrase)
                .map_err(|e| Error::backend(b.name(), e));
        }
        let _ = passphrase;
        Err(Error::backend(
            b.name(),
            CoreError::Unsupported {
                operation: "give a key passphrase",
                reason: format!(
                    "only TPM keys have a passphrase of their own, and {key} is in the {} \
                     backend '{}'",
                    b.kind(),
                    b.name()
                ),
            },
        ))
    }

    /// What the hardware backend holding `key` knows about it: the token, or the TPM key's
    /// persistent handle, PCR policy and whether it needs a passphrase. `None` for software keys.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the device cannot be reached; the backend's errors.
    pub fn hardware_details(&self, key: &ManagedKey) -> Result<Option<HardwareKeyDetails>> {
        if !key.backend_kind.is_hardware() {
            return Ok(None);
        }
        let b = self.key_backend(key)?;
        #[cfg(feature = "pkcs11")]
        if let Some(store) = b.pkcs11_store() {
            return Ok(Some(HardwareKeyDetails {
                token: Some(store.token_label().to_owned()),
                ..HardwareKeyDetails::default()
            }));
        }
        #[cfg(feature = "tpm")]
        if let Some(store) = b.tpm_store() {
            let d = store
                .key_details(key.id())
                .map_err(|e| Error::backend(b.name(), e))?;
            return Ok(Some(HardwareKeyDetails {
                persistent_handle: d.persistent.map(|h| h.to_string()),
                pcr_policy: d.pcr_policy.map(|p| p.to_string()),
                needs_auth: d.needs_auth,
                ..HardwareKeyDetails::default()
            }));
        }
        let _ = b;
        Ok(Some(HardwareKeyDetails::default()))
    }
}

/// Generates a key with options in a TPM backend's store.
#[cfg(feature = "tpm")]
fn tpm_generate(
    b: &crate::Backend,
    algorithm: Algorithm,
    label: &str,
    options: &GenerateOptions,
) -> Result<crate::KeyInfo> {
    use keyhaven_hsm_tpm::{KeyOptions, PcrPolicy, PersistentHandle};

    let err = |e| Error::backend(b.name(), e);
    let store = b.tpm_store().ok_or_else(|| {
        err(CoreError::Unsupported {
            operation: "generate a key with TPM options",
            reason: format!("backend '{}' is not a TPM backend", b.name()),
        })
    })?;
    let mut tpm_options = KeyOptions::new();
    if let Some(h) = &options.persistent {
        tpm_options = tpm_options.persistent(h.parse::<PersistentHandle>().map_err(err)?);
    }
    if let Some(p) = &options.pcr_policy {
        tpm_options = tpm_options.pcr_policy(p.parse::<PcrPolicy>().map_err(err)?);
    }
    if let Some(a) = &options.auth {
        tpm_options = tpm_options.auth(a.clone());
    }
    store
        .generate_with(algorithm, label, tpm_options)
        .map_err(err)
}

/// Without the `tpm` feature no TPM backend opens, so this is never reached with one.
#[cfg(not(feature = "tpm"))]
fn tpm_generate(
    b: &crate::Backend,
    _algorithm: Algorithm,
    _label: &str,
    options: &GenerateOptions,
) -> Result<crate::KeyInfo> {
    Err(Error::backend(
        b.name(),
        CoreError::Unsupported {
            operation: "generate a key with TPM options",
            reason: format!(
                "this keyhaven was built without tpm backends, which alone take {}",
                options.describe()
            ),
        },
    ))
}
