//! The audit decorator.

use std::sync::Arc;

use keyhaven_core::{
    Algorithm, BackendInfo, Error, ErrorKind, KeyDetails, KeyId, KeyInfo, KeySpec, KeyStore,
    PublicKey, Result, SecretBytes, SecretString, Signature,
};

use crate::{AuditError, AuditLog, CallerContext, Event, Outcome};

/// A store that writes every operation on it to an [`AuditLog`]: who (the [`CallerContext`]),
/// what, which key, which backend (`inner.info().kind`), the outcome (`allowed`; `denied` when
/// the inner store answers [`Error::PermissionDenied`]; `failed` with the error otherwise), and
/// for `sign`/`sign_digest` the SHA-256 of the data passed in (never the data).
///
/// **Fail closed, write-ahead.** Operations that use or change private keys (`generate`,
/// `import_pkcs8`, `sign`, `sign_digest`, `agree`, `export_pkcs8`, `delete`) first append an
/// [`Outcome::Intent`] record and do not call the inner store at all if that append fails; after
/// the call they append the outcome record, and if *that* append fails the result is dropped
/// (a signature is never returned, an exported key is zeroized) and an error is returned. So a
/// private key is never used without a durable record saying it was about to be, and a result
/// is never released without its outcome on disk. Each of these operations therefore writes
/// two records (two durable appends, shared with concurrent callers by group commit).
///
/// Read-only operations (`list`, `get`, `find_by_label`, `resolve`, `public_key`, `check`)
/// write one record after the fact; if it cannot be written they fail too. `info` is not
/// audited (it describes the backend, not a key).
///
/// When the audit log cannot be written the error is [`Error::Unavailable`] with backend
/// `audit`, saying the operation was refused.
///
/// **Stack order:** `AuditedStore<AccessControlledStore<S>>`, audit outside. Access control
/// inside means a denied call still passes through the audit layer and is logged `denied`; the
/// other order would drop denials silently.
pub struct AuditedStore<S: KeyStore> {
    inner: S,
    log: Arc<AuditLog>,
    caller: CallerContext,
    backend: &'static str,
}

impl<S: KeyStore> std::fmt::Debug for AuditedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditedStore")
            .field("backend", &self.backend)
            .field("caller", &self.caller.principal)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

fn outcome_of<T>(r: &Result<T>) -> (Outcome, Option<String>) {
    match r {
        Ok(_) => (Outcome::Allowed, None),
        Err(e) if e.is(ErrorKind::PermissionDenied) => (Outcome::Denied, Some(e.to_string())),
        Err(e) => (Outcome::Failed, Some(e.to_string())),
    }
}

fn refused(op: &str, e: &AuditError) -> Error {
    Error::Unavailable {
        backend: "audit".into(),
        reason: format!("the audit log cannot be written, so `{op}` was refused: {e}"),
    }
}

impl<S: KeyStore> AuditedStore<S> {
    /// Wraps `inner`, writing to `log` on behalf of `caller`.
    pub fn new(inner: S, log: Arc<AuditLog>, caller: CallerContext) -> Self {
        let backend = inner.info().kind;
        AuditedStore {
            inner,
            log,
            caller,
            backend,
        }
    }

    /// The same inner store and log for another caller.
    ///
    /// Note that an inner [`crate::AccessControlledStore`] keeps its own caller: for a stack,
    /// derive both layers (see the crate README).
    pub fn for_caller(&self, caller: CallerContext) -> Self
    where
        S: Clone,
    {
        AuditedStore {
            inner: self.inner.clone(),
            log: self.log.clone(),
            caller,
            backend: self.backend,
        }
    }

    /// The caller written into records.
    pub fn caller(&self) -> &CallerContext {
        &self.caller
    }

    /// The audit log.
    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn event(&self, op: &str, key: Option<&str>) -> Event {
        let mut e = Event::new(
            self.caller.principal.clone(),
            op,
            self.backend,
            Outcome::Allowed,
        );
        e.host.clone_from(&self.caller.host);
        e.pid = self.caller.pid;
        e.key_id = key.map(str::to_owned);
        e.request_id.clone_from(&self.caller.request_id);
        e
    }

    /// One record after the fact (read-only operations).
    fn after<T>(
        &self,
        mut event: Event,
        r: Result<T>,
        key_of: impl Fn(&T) -> Option<String>,
    ) -> Result<T> {
        let (outcome, reason) = outcome_of(&r);
        event.outcome = outcome;
        event.reason = reason;
        if let Ok(v) = &r
            && event.key_id.is_none()
        {
            event.key_id = key_of(v);
        }
        let op = event.operation.clone();
        self.log.append(event).map_err(|e| refused(&op, &e))?;
        r
    }

    /// A lookup: recorded when it finds the key (or fails otherwise), not when there is no
    /// such key. Resolving a label tries it as an id first: a miss changes nothing and uses no
    /// key, and recording it would bury the key's real operations under "failed" lookups.
    fn lookup(&self, event: Event, r: Result<KeyInfo>) -> Result<KeyInfo> {
        if matches!(&r, Err(e) if e.is(ErrorKind::NotFound)) {
            return r;
        }
        self.after(event, r, info_key)
    }

    /// Intent record, the call, then the outcome record (private-key operations).
    fn guarded<T>(
        &self,
        mut event: Event,
        call: impl FnOnce() -> Result<T>,
        key_of: impl Fn(&T) -> Option<String>,
    ) -> Result<T> {
        let op = event.operation.clone();
        event.outcome = Outcome::Intent;
        let intent = self
            .log
            .append(event.clone())
            .map_err(|e| refused(&op, &e))?;
        let r = call();
        let (outcome, reason) = outcome_of(&r);
        event.outcome = outcome;
        event.reason = reason;
        event.intent = Some(intent);
        if let Ok(v) = &r
            && event.key_id.is_none()
        {
            event.key_id = key_of(v);
        }
        // On failure `r` is dropped here: no signature is released, secrets are zeroized. A
        // signature's or an agreement's outcome is durable with the next fsync (its intent had
        // its own): one per operation. The others (a key made, deleted, exported, imported)
        // are rarer, and their outcome says which key: each has its own fsync.
        if matches!(op.as_str(), "sign" | "sign_digest" | "agree") {
            self.log.append_outcome(event)
        } else {
            self.log.append(event)
        }
        .map_err(|e| refused(&op, &e))?;
        r
    }
}

fn no_key<T>(_: &T) -> Option<String> {
    None
}

fn info_key(k: &KeyInfo) -> Option<String> {
    Some(k.id.as_str().to_owned())
}

impl<S: KeyStore> KeyStore for AuditedStore<S> {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        let event = self
            .event("generate", None)
            .reason(format!("{} key labelled '{label}'", algorithm.short_name()));
        self.guarded(event, || self.inner.generate(algorithm, label), info_key)
    }
    fn generate_with(&self, spec: &KeySpec) -> Result<KeyInfo> {
        let mut reason = format!(
            "{} key labelled '{}'",
            spec.algorithm.short_name(),
            spec.label
        );
        if !spec.options.is_empty() {
            // Option names only: a value may be a secret (a key passphrase).
            reason.push_str(&format!(" with options {}", spec.options.describe()));
        }
        let event = self.event("generate", None).reason(reason);
        self.guarded(event, || self.inner.generate_with(spec), info_key)
    }
    fn details(&self, id: &KeyId) -> Result<KeyDetails> {
        let event = self.event("details", Some(id.as_str()));
        self.after(event, self.inner.details(id), no_key)
    }
    fn unlock(&self, id: &KeyId, secret: &SecretString) -> Result<()> {
        let event = self.event("unlock", Some(id.as_str()));
        self.guarded(event, || self.inner.unlock(id, secret), no_key)
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        self.after(self.event("list", None), self.inner.list(), no_key)
    }
    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        let r = self.inner.get(id);
        self.lookup(self.event("get", Some(id.as_str())), r)
    }
    fn find_by_label(&self, label: &str) -> Result<KeyInfo> {
        let r = self.inner.find_by_label(label);
        self.lookup(self.event("find_by_label", None), r)
    }
    fn resolve(&self, id_or_label: &str) -> Result<KeyInfo> {
        let r = self.inner.resolve(id_or_label);
        self.lookup(self.event("resolve", None), r)
    }
    fn public_key(&self, id: &KeyId) -> Result<PublicKey> {
        let r = self.inner.public_key(id);
        self.after(self.event("public_key", Some(id.as_str())), r, no_key)
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        let event = self.event("sign", Some(id.as_str())).signed_data(message);
        self.guarded(event, || self.inner.sign(id, message), no_key)
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        let event = self
            .event("sign_digest", Some(id.as_str()))
            .signed_data(digest);
        self.guarded(event, || self.inner.sign_digest(id, digest), no_key)
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        let event = self.event("agree", Some(id.as_str()));
        self.guarded(event, || self.inner.agree(id, peer), no_key)
    }
    fn delete(&self, id: &KeyId) -> Result<()> {
        let event = self.event("delete", Some(id.as_str()));
        self.guarded(event, || self.inner.delete(id), no_key)
    }
    fn check(&self) -> Result<Vec<Error>> {
        self.after(self.event("check", None), self.inner.check(), no_key)
    }
    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        let event = self
            .event("import", None)
            .reason(format!("key labelled '{label}'"));
        self.guarded(
            event,
            || self.inner.import_pkcs8(label, pkcs8_der),
            info_key,
        )
    }
    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        let event = self
            .event("import", Some(original.id.as_str()))
            .reason(format!("restored key labelled '{label}'"));
        self.guarded(
            event,
            || self.inner.restore_pkcs8(original, label, pkcs8_der),
            info_key,
        )
    }
    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        let event = self.event("export", Some(id.as_str()));
        self.guarded(event, || self.inner.export_pkcs8(id), no_key)
    }
    fn attest_key(&self, id: &KeyId, challenge: &[u8]) -> Result<keyhaven_core::KeyAttestation> {
        let event = self
            .event("attest", Some(id.as_str()))
            .reason(format!("key attestation, challenge {}", hex_of(challenge)));
        self.guarded(event, || self.inner.attest_key(id, challenge), no_key)
    }
    fn export_wrapped(&self, id: &KeyId) -> Result<Vec<u8>> {
        let event = self
            .event("export", Some(id.as_str()))
            .reason("device-wrapped (usable only by its device)");
        self.guarded(event, || self.inner.export_wrapped(id), no_key)
    }
    fn restore_wrapped(&self, original: &KeyInfo, label: &str, wrapped: &[u8]) -> Result<KeyInfo> {
        let event = self
            .event("import", Some(original.id.as_str()))
            .reason(format!("restored device-wrapped key labelled '{label}'"));
        self.guarded(
            event,
            || self.inner.restore_wrapped(original, label, wrapped),
            info_key,
        )
    }
}

/// Lowercase hex, for audit reasons.
fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
