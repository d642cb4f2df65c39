//! The access-control decorator.

use std::sync::Arc;

use keyhaven_core::{
    Algorithm, Error, KeyId, KeyInfo, KeySpec, KeyStore, Protection, PublicKey, Result,
    SecretBytes, SecretString, Signature,
};

use crate::CallerContext;
use crate::policy::{KeyRef, Operation, Policy};

/// A store that checks a [`Policy`] for its caller before every private or destructive
/// operation, and passes allowed ones to the inner store.
///
/// | method | operation checked |
/// |---|---|
/// | `generate`, `import_pkcs8` | [`Operation::Generate`] (on the new key's label) |
/// | `sign`, `sign_digest`, `agree` | [`Operation::Sign`] |
/// | `export_pkcs8` | [`Operation::Export`]; hardware keys are refused first, whatever the rules |
/// | `delete` | [`Operation::Delete`] |
/// | `info`, `list`, `get`, `find_by_label`, `resolve`, `public_key`, `check` | none: public data |
///
/// `Verify`, `Rotate` and `Revoke` have no `KeyStore` method; the layers that perform them ask
/// [`AccessControlledStore::authorize`].
///
/// A denial is [`Error::PermissionDenied`] naming the principal, the operation and the key, and
/// the inner store is not called. Wrap this store in [`crate::AuditedStore`] (audit outside,
/// access control inside) so denials are audited too.
pub struct AccessControlledStore<S: KeyStore> {
    inner: S,
    policy: Arc<Policy>,
    caller: CallerContext,
}

impl<S: KeyStore> std::fmt::Debug for AccessControlledStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControlledStore")
            .field("backend", &self.inner.info().kind)
            .field("caller", &self.caller.principal)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> AccessControlledStore<S> {
    /// Wraps `inner`, checking `policy` for `caller`.
    pub fn new(inner: S, policy: impl Into<Arc<Policy>>, caller: CallerContext) -> Self {
        AccessControlledStore {
            inner,
            policy: policy.into(),
            caller,
        }
    }

    /// The same inner store and policy for another caller.
    pub fn for_caller(&self, caller: CallerContext) -> Self
    where
        S: Clone,
    {
        AccessControlledStore {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            caller,
        }
    }

    /// The caller this store acts for.
    pub fn caller(&self) -> &CallerContext {
        &self.caller
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Checks `op` on the key `id` for this caller (for operations outside the `KeyStore` trait:
    /// verify, rotate, revoke).
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] if the policy does not allow it.
    pub fn authorize(&self, op: Operation, id: &KeyId) -> Result<()> {
        self.check_key(op, id)
    }

    fn check_key(&self, op: Operation, id: &KeyId) -> Result<()> {
        // Labels are looked up only when some rule selects keys by label.
        let label = if self.policy.uses_labels() {
            self.inner.get(id).ok().map(|k| k.label)
        } else {
            None
        };
        let key = KeyRef {
            id: Some(id.as_str()),
            label: label.as_deref(),
        };
        self.policy.check(&self.caller, op, &key)
    }

    fn check_new(&self, label: &str) -> Result<()> {
        let key = KeyRef {
            id: None,
            label: Some(label),
        };
        self.policy.check(&self.caller, Operation::Generate, &key)
    }
}

impl<S: KeyStore> KeyStore for AccessControlledStore<S> {
    // Reading keys and their public parts needs no permission (verification is public).
    keyhaven_core::forward_key_store!(inner; info, list, get, find_by_label, resolve, public_key,
        check, details, attest_key);

    fn generate_with(&self, spec: &KeySpec) -> Result<KeyInfo> {
        self.check_new(&spec.label)?;
        self.inner.generate_with(spec)
    }
    // Giving a key its passphrase is a step towards using it: the caller must be allowed to.
    fn unlock(&self, id: &KeyId, secret: &SecretString) -> Result<()> {
        self.check_key(Operation::Sign, id)?;
        self.inner.unlock(id, secret)
    }

    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        self.check_new(label)?;
        self.inner.generate(algorithm, label)
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.check_key(Operation::Sign, id)?;
        self.inner.sign(id, message)
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        self.check_key(Operation::Sign, id)?;
        self.inner.sign_digest(id, digest)
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.check_key(Operation::Sign, id)?;
        self.inner.agree(id, peer)
    }
    fn delete(&self, id: &KeyId) -> Result<()> {
        self.check_key(Operation::Delete, id)?;
        self.inner.delete(id)
    }
    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        self.check_new(label)?;
        self.inner.import_pkcs8(label, pkcs8_der)
    }
    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        self.check_new(label)?;
        self.inner.restore_pkcs8(original, label, pkcs8_der)
    }
    // A wrapped key is a backup of a device key: the same right as exporting one, and the
    // same as importing one to put it back.
    fn export_wrapped(&self, id: &KeyId) -> Result<Vec<u8>> {
        self.check_key(Operation::Export, id)?;
        self.inner.export_wrapped(id)
    }
    fn restore_wrapped(&self, original: &KeyInfo, label: &str, wrapped: &[u8]) -> Result<KeyInfo> {
        self.check_new(label)?;
        self.inner.restore_wrapped(original, label, wrapped)
    }
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        // Hardware keys first: no rule can make them exportable, and the message says so.
        if let Ok(info) = self.inner.get(id)
            && info.protection == Protection::Hardware
        {
            return Err(Error::Unsupported {
                operation: "export a private key",
                reason: format!(
                    "key {id} ('{}') is a hardware key: its private part never leaves the \
                     device, whatever the access policy says",
                    info.label
                ),
            });
        }
        self.check_key(Operation::Export, id)?;
        self.inner.export_pkcs8(id)
    }
}
