//! Keys with backend options, what a backend knows about a key, and keys with a passphrase of
//! their own: all through the [`crate::KeyStore`] contract ([`KeyStore::generate_with`],
//! [`KeyStore::details`], [`KeyStore::unlock`]), so the decorators (access control, audit,
//! revocation, metering) cover them like every other operation. No backend is named here: a
//! new backend option needs no change in the facade.
//!
//! [`KeyStore::generate_with`]: crate::KeyStore::generate_with
//! [`KeyStore::details`]: crate::KeyStore::details
//! [`KeyStore::unlock`]: crate::KeyStore::unlock

use secrecy::SecretString;

use crate::manager::{KeyManager, ManagedKey, managed};
use crate::{Error, KeyDetails, KeySpec, Result};

impl KeyManager {
    /// Generates a key from a [`KeySpec`] in `backend` (or the default backend). Without
    /// options this is [`KeyManager::generate`]. With options (a TPM's `persistent`,
    /// `pcr-policy`, `auth`), the backend must take them (others refuse with
    /// [`crate::CoreError::Unsupported`] naming the option), and the fallback rule never applies:
    /// the fallback could not honour them.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "memory")] {
    /// use keyhaven::{Algorithm, BackendConfig, BackendKind, KeyManager, KeySpec, NoPassphrase};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let m = KeyManager::open(&dir.path().join("home"), NoPassphrase)?;
    /// m.add_backend("scratch", BackendConfig::new(BackendKind::Memory, None))?;
    /// // The memory backend takes no options: the option is refused, not ignored.
    /// let spec = KeySpec::new(Algorithm::EcdsaP256, "sealed").option("persistent", "0x81000010");
    /// let err = m.generate_with(None, &spec).unwrap_err();
    /// assert_eq!(err.kind(), keyhaven::ErrorKind::Unsupported);
    /// // Without options it is an ordinary key.
    /// let key = m.generate_with(None, &KeySpec::new(Algorithm::EcdsaP256, "plain"))?;
    /// assert!(m.details(&key)?.private_key_file.is_none());
    /// # }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`KeyManager::generate`]; [`crate::CoreError::Unsupported`] for options the backend
    /// does not take; [`crate::CoreError::InvalidInput`] for a malformed option;
    /// [`Error::Unavailable`] if a backend asked for options cannot be reached.
    pub fn generate_with(&self, backend: Option<&str>, spec: &KeySpec) -> Result<ManagedKey> {
        let mut spec = spec.clone();
        spec.label = self.new_label(&spec.label)?;
        let name = match backend {
            Some(b) => b.to_owned(),
            None => self.default_backend_name()?,
        };
        let options = (!spec.options.is_empty()).then(|| spec.options.describe());
        let b = self.backend_for_new_key(&name, options.as_deref())?;
        let info = b
            .store()
            .generate_with(&spec)
            .map_err(|e| Error::backend(b.name(), e))?;
        // The handle of a new logical key: after a rotation it signs with the primary.
        let key = managed(&b, info).named_logically(true);
        self.default_if_none(&key)?;
        Ok(key)
    }

    /// Gives the passphrase of a key that has one of its own (a TPM key made with the `auth`
    /// option), for this manager's later private operations with it (kept in memory only). The
    /// device checks it at the next use.
    ///
    /// # Errors
    /// [`crate::CoreError::Unsupported`] for keys of backends whose keys have no passphrase of
    /// their own; [`crate::CoreError::PermissionDenied`] if the access policy does not let this
    /// caller use the key; [`Error::Unavailable`] if the device cannot be reached.
    pub fn unlock(&self, key: &ManagedKey, passphrase: &SecretString) -> Result<()> {
        let b = self.key_backend(key)?;
        b.store()
            .unlock(key.id(), passphrase)
            .map_err(|e| Error::backend(b.name(), e))
    }

    /// What the backend holding `key` knows about it: the file `openssl` reads (PEM), the token
    /// (PKCS#11), the TPM key's persistent handle, PCR policy and whether it needs a passphrase.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the device cannot be reached; the backend's errors.
    pub fn details(&self, key: &ManagedKey) -> Result<KeyDetails> {
        let b = self.key_backend(key)?;
        b.store()
            .details(key.id())
            .map_err(|e| Error::backend(b.name(), e))
    }
}
