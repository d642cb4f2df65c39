use secrecy::SecretString;

use crate::{
    Algorithm, Error, ErrorKind, KeyDetails, KeyId, KeyInfo, KeySpec, Protection, PublicKey,
    Result, SecretBytes, Signature,
};

/// What a backend is, for listings and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendInfo {
    /// The backend kind: `pem`, `encrypted`, `memory`, `pkcs11`, `tpm`, ...
    pub kind: &'static str,
    /// The protection of keys it generates.
    pub protection: Protection,
    /// Where the keys are (a directory, a token, ...), for humans.
    pub location: String,
}

impl BackendInfo {
    /// Builds a backend description.
    pub fn new(kind: &'static str, protection: Protection, location: impl Into<String>) -> Self {
        BackendInfo {
            kind,
            protection,
            location: location.into(),
        }
    }
}

/// A place that keeps keys and performs operations with them: the trait every backend implements.
///
/// The contract (checked for every backend by `keyhaven-testkit`):
/// - keys are generated inside the backend; ids are stable, unique and never reused after delete;
///   labels are unique within the backend;
/// - ECDSA signs messages with the curve's hash and prehashed digests of exactly that hash's
///   length; Ed25519 signs messages; X25519, ECDH P-384 and ECDH P-256 keys only agree;
/// - signatures come back in fixed-size form ([`Signature`]) and verify with the public key alone;
/// - an operation the backend cannot do is [`Error::Unsupported`], never a panic or a fallback.
///
/// The trait is object safe: use it as `Box<dyn KeyStore>` or `Arc<dyn KeyStore>`.
pub trait KeyStore: Send + Sync + 'static {
    /// What this backend is.
    fn info(&self) -> BackendInfo;

    /// Generates a key pair inside the backend.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if the label is taken, [`Error::InvalidInput`] for a bad label,
    /// [`Error::Unsupported`] if the backend lacks the algorithm, or a storage error.
    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo>;

    /// Generates a key with backend options ([`KeySpec`]). Without options it is
    /// [`KeyStore::generate`]; a backend that takes options overrides this and refuses the
    /// names it does not know ([`crate::KeyOptions::only`]).
    ///
    /// # Errors
    /// As [`KeyStore::generate`]; [`Error::Unsupported`] for options the backend does not take;
    /// [`Error::InvalidInput`] for a malformed option value.
    fn generate_with(&self, spec: &KeySpec) -> Result<KeyInfo> {
        spec.options.only(self.info().kind, &[])?;
        self.generate(spec.algorithm, &spec.label)
    }

    /// What the backend knows about a key beyond its [`KeyInfo`]: its file, its token, its TPM
    /// policy. Empty by default.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such key; a device error.
    fn details(&self, id: &KeyId) -> Result<KeyDetails> {
        self.get(id)?;
        Ok(KeyDetails::default())
    }

    /// Gives the passphrase of a key that has one of its own (a TPM key made with the `auth`
    /// option), for this store's later private operations with it (kept in memory only).
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default (keys of this backend have no passphrase of their
    /// own); [`Error::NotFound`].
    fn unlock(&self, id: &KeyId, secret: &SecretString) -> Result<()> {
        let _ = secret;
        Err(Error::Unsupported {
            operation: "give a key passphrase",
            reason: format!(
                "keys of the {} backend have no passphrase of their own (key {id})",
                self.info().kind
            ),
        })
    }

    /// Every key in the backend, sorted by id.
    ///
    /// # Errors
    /// A storage or device error.
    fn list(&self) -> Result<Vec<KeyInfo>>;

    /// One key by id.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such key.
    fn get(&self, id: &KeyId) -> Result<KeyInfo>;

    /// One key by label.
    ///
    /// # Errors
    /// [`Error::NotFound`] if no key has that label.
    fn find_by_label(&self, label: &str) -> Result<KeyInfo> {
        self.list()?
            .into_iter()
            .find(|k| k.label == label)
            .ok_or_else(|| Error::key_not_found(label))
    }

    /// A key by id, or else by label.
    ///
    /// # Errors
    /// [`Error::NotFound`] if neither matches.
    fn resolve(&self, id_or_label: &str) -> Result<KeyInfo> {
        let mut missing_id = None;
        if let Ok(id) = id_or_label.parse::<KeyId>() {
            match self.get(&id) {
                Err(e) if e.is(ErrorKind::NotFound) => missing_id = Some(e),
                other => return other,
            }
        }
        match self.find_by_label(id_or_label) {
            // Neither: the more telling answer (a claim naming a missing record, else what the
            // id lookup said).
            Err(e) if e.is(ErrorKind::NotFound) => {
                let label_said = e.to_string() != Error::key_not_found(id_or_label).to_string();
                Err(match missing_id {
                    Some(id_said) if !label_said => id_said,
                    _ => e,
                })
            }
            other => other,
        }
    }

    /// A key's public key.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such key.
    fn public_key(&self, id: &KeyId) -> Result<PublicKey> {
        Ok(self.get(id)?.public_key)
    }

    /// Signs a message (ECDSA hashes it with the curve's hash first).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Unsupported`] for agreement keys, or a backend error.
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature>;

    /// Signs a prehashed digest (ECDSA only; the length must be the curve hash's).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a wrong digest length, [`Error::Unsupported`] for keys that
    /// cannot sign digests, [`Error::NotFound`], or a backend error.
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature>;

    /// Key agreement (X25519, or ECDH on P-384 / P-256) with a peer's public key, done where the
    /// private key lives: on a PKCS#11 token or a TPM the private key never leaves the device,
    /// only the shared secret does. The shared secret (X25519's 32 bytes, or the x-coordinate)
    /// is raw: feed it to a KDF (`keyhaven_crypto::kdf::derive_key`), never use it as a key.
    /// It is zeroized on drop.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for signing keys, [`Error::InvalidInput`] for a peer key of another
    /// algorithm or curve, a low-order or off-curve point, [`Error::NotFound`].
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes>;

    /// Deletes a key. Its id is never reused.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such key, or a storage error.
    fn delete(&self, id: &KeyId) -> Result<()>;

    /// Problems found in the backend's storage that do not stop it from working: each damaged
    /// record, named, as an [`Error::Corrupt`] (or [`Error::PermissionDenied`]). Keys in damaged
    /// records are left out of [`KeyStore::list`]; everything else stays usable.
    ///
    /// # Errors
    /// Only if the backend cannot be examined at all.
    fn check(&self) -> Result<Vec<Error>> {
        Ok(Vec::new())
    }

    /// Imports a private key from PKCS#8 DER.
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default (hardware backends), [`Error::InvalidInput`] for a
    /// malformed key, [`Error::AlreadyExists`] for a taken label.
    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        let _ = (label, pkcs8_der);
        Err(Error::Unsupported {
            operation: "import a private key",
            reason: format!("the {} backend does not import keys", self.info().kind),
        })
    }

    /// Imports a private key as the key `original` it was in the store it came from (a backup
    /// being restored): it keeps `original`'s id and creation time, so references to the key,
    /// its versions and its history keep naming it. `label` may differ from the original's (a
    /// renamed restore). The private key must be `original`'s (its public key).
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default (stores that assign ids themselves: use
    /// [`KeyStore::import_pkcs8`]); [`Error::AlreadyExists`] if the id or the label is taken;
    /// [`Error::InvalidInput`] if the private key is not `original`'s; as
    /// [`KeyStore::import_pkcs8`] otherwise.
    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        let _ = (original, label, pkcs8_der);
        Err(Error::Unsupported {
            operation: "restore a private key under its id",
            reason: format!("the {} backend assigns key ids itself", self.info().kind),
        })
    }

    /// The key as its device wraps it (a TPM's blob, loadable only by the same TPM under the
    /// same storage key), so a backup keeps a hardware key restorable on that device. Not the
    /// private key: nothing outside the device can use it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default (devices whose keys cannot leave them even wrapped).
    fn export_wrapped(&self, id: &KeyId) -> Result<Vec<u8>> {
        self.get(id)?;
        Err(Error::Unsupported {
            operation: "export a device-wrapped key",
            reason: format!(
                "the {} backend has no wrapped form of its keys",
                self.info().kind
            ),
        })
    }

    /// Restores a key from [`KeyStore::export_wrapped`] under `original`'s id and creation
    /// time, labelled `label`; the device checks it can use it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default; [`Error::AlreadyExists`] for a taken id or label;
    /// [`Error::InvalidInput`] for a blob that is not `original`'s; the device's refusal (a
    /// blob of another TPM).
    fn restore_wrapped(&self, original: &KeyInfo, label: &str, wrapped: &[u8]) -> Result<KeyInfo> {
        let _ = (original, label, wrapped);
        Err(Error::Unsupported {
            operation: "restore a device-wrapped key",
            reason: format!(
                "the {} backend has no wrapped form of its keys",
                self.info().kind
            ),
        })
    }

    /// Evidence of where key `id` lives, bound to `challenge` where the backend can bind one
    /// (a TPM certification's extra data, at most 32 bytes).
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default (software backends: nothing attests their keys);
    /// [`Error::InvalidInput`] for a challenge the backend cannot carry; the device's errors.
    fn attest_key(&self, id: &KeyId, challenge: &[u8]) -> Result<crate::KeyAttestation> {
        let _ = challenge;
        self.get(id)?;
        Err(Error::Unsupported {
            operation: "attest a key",
            reason: format!(
                "the {} backend keeps keys in software: nothing but the software attests them",
                self.info().kind
            ),
        })
    }

    /// Exports a private key as PKCS#8 DER. Hazardous: the caller must protect the result.
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default and always for non-extractable (hardware) keys.
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        let _ = id;
        Err(Error::Unsupported {
            operation: "export a private key",
            reason: format!(
                "keys in the {} backend are not extractable",
                self.info().kind
            ),
        })
    }
}

/// Stores behind shared pointers are stores too, so decorators can wrap `Arc<dyn KeyStore>`.
impl<T: KeyStore + ?Sized> KeyStore for std::sync::Arc<T> {
    fn info(&self) -> BackendInfo {
        (**self).info()
    }
    fn attest_key(&self, id: &KeyId, challenge: &[u8]) -> Result<crate::KeyAttestation> {
        (**self).attest_key(id, challenge)
    }
    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        (**self).generate(algorithm, label)
    }
    fn generate_with(&self, spec: &KeySpec) -> Result<KeyInfo> {
        (**self).generate_with(spec)
    }
    fn details(&self, id: &KeyId) -> Result<KeyDetails> {
        (**self).details(id)
    }
    fn unlock(&self, id: &KeyId, secret: &SecretString) -> Result<()> {
        (**self).unlock(id, secret)
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        (**self).list()
    }
    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        (**self).get(id)
    }
    fn find_by_label(&self, label: &str) -> Result<KeyInfo> {
        (**self).find_by_label(label)
    }
    fn resolve(&self, id_or_label: &str) -> Result<KeyInfo> {
        (**self).resolve(id_or_label)
    }
    fn public_key(&self, id: &KeyId) -> Result<PublicKey> {
        (**self).public_key(id)
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        (**self).sign(id, message)
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        (**self).sign_digest(id, digest)
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        (**self).agree(id, peer)
    }
    fn delete(&self, id: &KeyId) -> Result<()> {
        (**self).delete(id)
    }
    fn check(&self) -> Result<Vec<Error>> {
        (**self).check()
    }
    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        (**self).import_pkcs8(label, pkcs8_der)
    }
    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        (**self).restore_pkcs8(original, label, pkcs8_der)
    }
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        (**self).export_pkcs8(id)
    }
    fn export_wrapped(&self, id: &KeyId) -> Result<Vec<u8>> {
        (**self).export_wrapped(id)
    }
    fn restore_wrapped(&self, original: &KeyInfo, label: &str, wrapped: &[u8]) -> Result<KeyInfo> {
        (**self).restore_wrapped(original, label, wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn KeyStore) {}
    fn _send_sync<T: Send + Sync + 'static>() {}
    #[allow(dead_code)]
    fn _check() {
        _send_sync::<Box<dyn KeyStore>>();
    }
}
