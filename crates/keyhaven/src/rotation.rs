//! Key versions and rotation for a keyhaven home (keyhaven-rotation behind the manager).
//!
//! - `HOME/rotation.toml`: the rotation policies (no file: seed 002's built-in schedule,
//!   identity keys yearly; `builtin_defaults = false` in the file switches it off).
//! - `HOME/rotation/registry`: one file per logical key (its versions and history).
//! - `HOME/rotation/usage`: the durable signature counters (the metering decorator).
//! - `HOME/rotation/prekeys/<identity id>`: prekey pools.
//!
//! A key becomes a *logical key* (version 1) when it is first rotated, given a role, or seen by
//! `rotate --due`. Its logical id is its version 1's key id, and that id and label keep naming
//! the logical key: signing through them uses the **primary** version. Older versions verify
//! during their migration window ([`crate::RotationView::verify_versions`]) and never sign.

use std::path::PathBuf;
use std::sync::Arc;

use keyhaven_compromise::Rotator;
use keyhaven_rotation::{
    ContinuityProof, Due, DueOutcome, Explanation, KeyTraits, LogicalKey, PolicySet, PrekeyPool,
    Registry, Role, RotationEngine, RotationError, RotationOutcome, SecurityLevel, SystemClock,
    UsageMeter, VersionState,
};

use crate::manager::{KeyManager, ManagedKey, SignInput};
use crate::{CoreError, Error, Result, Signature};

/// The rotation directory inside the home.
pub const ROTATION_DIR: &str = "rotation";

fn core(e: RotationError) -> Error {
    Error::Core(e.into())
}

/// A key's version and state, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The logical key (its version 1's id), when the key is versioned.
    pub logical: Option<String>,
    /// The version number (1 for a key never rotated).
    pub version: u32,
    /// `primary`, `verify-only`, `retired`, `destroyed`, `revoked`, `compromised`.
    pub state: String,
    /// The role (for a key not versioned: the one it would get, [`Role::default_for`]).
    pub role: Role,
    /// The security level (`standard` for a key not versioned).
    pub level: SecurityLevel,
}

impl KeyManager {
    /// [`crate::RotationView::dir`].
    pub(crate) fn rotation_dir(&self) -> PathBuf {
        self.home().join(ROTATION_DIR)
    }

    /// [`crate::RotationView::policy_path`].
    pub(crate) fn rotation_policy_path(&self) -> PathBuf {
        keyhaven_rotation::default_policy_path(self.home())
    }

    /// [`crate::RotationView::policies`].
    pub(crate) fn rotation_policies(&self) -> Result<PolicySet> {
        let path = self.rotation_policy_path();
        match self.policy_text(&path)? {
            None => Ok(PolicySet::builtin()),
            Some(text) => PolicySet::from_toml_str(&text)
                .map_err(|e| match e {
                    RotationError::Policy { where_, message } => RotationError::Policy {
                        where_: format!("{} ({where_})", path.display()),
                        message,
                    },
                    other => other,
                })
                .map_err(core),
        }
    }

    /// The usage meter shared by every backend of this manager (`HOME/rotation/usage`).
    pub(crate) fn usage_meter(&self) -> Result<Arc<UsageMeter>> {
        if let Some(m) = self.lifecycle().meter.get() {
            return Ok(m.clone());
        }
        keyhaven_fs::create_private_dir(self.home())?;
        keyhaven_fs::create_private_dir(&self.rotation_dir())?;
        let state = self.state()?;
        let meter = UsageMeter::open_default(&self.rotation_dir().join("usage"))
            .map_err(core)?
            .with_state(state);
        Ok(self
            .lifecycle()
            .meter
            .get_or_init(|| Arc::new(meter))
            .clone())
    }

    /// [`crate::RotationView::registry`].
    pub(crate) fn rotation_registry(&self) -> Result<Registry> {
        if let Some(r) = self.lifecycle().registry.get() {
            return Ok(r.clone());
        }
        keyhaven_fs::create_private_dir(self.home())?;
        keyhaven_fs::create_private_dir(&self.rotation_dir())?;
        let state = self.state()?;
        let r = Registry::open(&self.rotation_dir().join("registry"))
            .map_err(core)?
            .with_state(state);
        Ok(self.lifecycle().registry.get_or_init(|| r).clone())
    }

    /// The registry if the home has one (opened once per manager: it is consulted on every
    /// signature).
    fn registry_if_exists(&self) -> Result<Option<Registry>> {
        if let Some(r) = self.lifecycle().registry.get() {
            return Ok(Some(r.clone()));
        }
        let dir = self.rotation_dir().join("registry");
        // In a sealed home the manifest says whether there is a registry: a removed registry
        // directory is damage (its entries' reads fail, naming them), never "no rotations".
        let recorded = || -> Result<bool> {
            let state = self.state()?;
            Ok(state.is_authenticated() && !state.list(&dir.join("keys"))?.is_empty())
        };
        if dir.is_dir() || recorded()? {
            Ok(Some(self.rotation_registry()?))
        } else {
            Ok(None)
        }
    }

    /// [`crate::RotationView::logical_key`].
    pub(crate) fn logical_key(&self, key: &ManagedKey) -> Result<Option<LogicalKey>> {
        let Some(registry) = self.registry_if_exists()? else {
            return Ok(None);
        };
        // On every signature: the registry's version index, not a scan.
        Ok(registry
            .find_by_key_id(key.id())
            .map_err(core)?
            .filter(|k| k.backend() == key.backend))
    }

    /// [`crate::RotationView::find_logical_key`].
    pub(crate) fn find_logical_key(&self, reference: &str) -> Result<Option<LogicalKey>> {
        let Some(registry) = self.registry_if_exists()? else {
            return Ok(None);
        };
        let reference = reference.split_once(':').map_or(reference, |(_, r)| r);
        match registry.find(reference) {
            Ok(k) => Ok(Some(k)),
            Err(RotationError::NotFound(_)) => Ok(None),
            Err(e) => Err(core(e)),
        }
    }

    /// [`crate::RotationView::version_info`].
    pub(crate) fn version_info(&self, key: &ManagedKey) -> Result<VersionInfo> {
        let logical_key = self.logical_key(key)?;
        let (version, mut state, logical) = match &logical_key {
            Some(l) => match l.version_by_key_id(key.id()) {
                Some(v) => (
                    v.number(),
                    v.state().name().to_owned(),
                    Some(l.id().to_owned()),
                ),
                None => (1, "primary".to_owned(), None),
            },
            None => (1, "primary".to_owned(), None),
        };
        if let Some(r) = self.revocation_of(key)?
            && state != "compromised"
        {
            state = if r.compromised {
                "compromised"
            } else {
                "revoked"
            }
            .into();
        }
        let (role, level) = match &logical_key {
            Some(l) => (l.role(), l.level()),
            None => (Role::default_for(key.algorithm()), SecurityLevel::Standard),
        };
        Ok(VersionInfo {
            logical,
            version,
            state,
            role,
            level,
        })
    }

    /// [`crate::RotationView::engine`].
    pub(crate) fn rotation_engine(&self) -> Result<RotationEngine> {
        let mut engine = self.bare_rotation_engine()?;
        for b in self.reachable_backends_for_rotation()? {
            engine = engine.with_store(b.name().to_owned(), b.store().clone());
        }
        Ok(engine)
    }

    /// The engine without any backend yet (callers add the ones they need: opening a backend
    /// may cost a passphrase derivation or a token login).
    fn bare_rotation_engine(&self) -> Result<RotationEngine> {
        Ok(RotationEngine::new(
            self.rotation_registry()?,
            self.rotation_policies()?,
            Arc::new(SystemClock),
        )
        .with_meter(self.usage_meter()?))
    }

    /// [`crate::RotationView::adopt_key`].
    pub(crate) fn adopt_key(&self, key: &ManagedKey, role: Option<Role>) -> Result<LogicalKey> {
        self.adopt_key_at(key, role, SecurityLevel::Standard)
    }

    /// [`KeyManager::adopt_key`] at a security level (a key already versioned keeps its own).
    pub(crate) fn adopt_key_at(
        &self,
        key: &ManagedKey,
        role: Option<Role>,
        level: SecurityLevel,
    ) -> Result<LogicalKey> {
        if let Some(l) = self.logical_key(key)? {
            return Ok(l);
        }
        let role = role.unwrap_or_else(|| Role::default_for(key.algorithm()));
        let adopted = self
            .rotation_registry()?
            .adopt_at_level(
                &key.backend,
                &key.info,
                role,
                level,
                keyhaven_core::unix_now(),
            )
            .map_err(core)?;
        // A key revoked before it was versioned is not a primary version.
        match self.revocation_of(key)? {
            Some(r) => {
                self.revoke_version(key, r.compromised, &r.reason)?;
                Ok(self.logical_key(key)?.unwrap_or(adopted))
            }
            None => Ok(adopted),
        }
    }

    /// [`crate::RotationView::rotate_key`].
    pub(crate) fn rotate_key(&self, key: &ManagedKey, reason: &str) -> Result<RotationOutcome> {
        self.rotation().rotate_key_with_window(key, reason, None)
    }

    pub(crate) fn rotatable_keys(&self) -> Result<Vec<ManagedKey>> {
        Ok(self
            .list_keys()?
            .into_iter()
            .filter(|k| !keyhaven_rotation::is_prekey_label(k.label()))
            .collect())
    }

    /// [`crate::RotationView::due_now`].
    pub(crate) fn due_now(&self) -> Result<Vec<Due>> {
        let engine = self.rotation_engine()?;
        let mut keys = engine.registry().list().map_err(core)?;
        let now = keyhaven_core::unix_now();
        for key in self.rotatable_keys()? {
            if self.logical_key(&key)?.is_none() {
                let role = Role::default_for(key.algorithm());
                keys.push(LogicalKey::adopt(&key.backend, &key.info, role, now));
            }
        }
        let mut due = engine.evaluate_keys(&keys).map_err(core)?;
        due.extend(self.prekeys_due(true)?.into_iter().map(|o| o.due));
        Ok(due)
    }

    /// The prekey pools of the home's identity keys (those that have one), each judged by the
    /// prekey schedule and, unless `dry_run`, acted on: its signed prekey rotated, its
    /// one-time prekeys refilled. A pool that cannot be opened is audited as failed; the
    /// others go on.
    fn prekeys_due(&self, dry_run: bool) -> Result<Vec<DueOutcome>> {
        let Some(registry) = self.registry_if_exists()? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for logical in registry.list().map_err(core)? {
            if logical.role() != Role::Identity
                || !self
                    .rotation_dir()
                    .join("prekeys")
                    .join(logical.id())
                    .is_dir()
            {
                continue;
            }
            let name = format!("prekeys of {}", logical.label());
            let result = self
                .resolve(&format!("{}:{}", logical.backend(), logical.id()))
                .and_then(|identity| {
                    let pool = Arc::new(self.prekey_pool(&identity)?);
                    let backend = self.key_backend(&self.signing_target(&identity)?)?;
                    self.bare_rotation_engine()?
                        .with_store(logical.backend().to_owned(), backend.store().clone())
                        .with_prekeys(pool)
                        .rotate_prekeys_due(dry_run)
                        .map_err(core)
                });
            match result {
                Ok(outcomes) => out.extend(outcomes.into_iter().map(|mut o| {
                    o.due.key = name.clone();
                    o
                })),
                Err(e) => {
                    // Recorded; the other pools and keys go on, and the next run tries again.
                    self.audit_new_key(
                        "rotate",
                        logical.backend(),
                        Some(logical.id()),
                        keyhaven_audit::Outcome::Failed,
                        &format!("{name}: the pool cannot be used: {e}"),
                    )?;
                }
            }
        }
        Ok(out)
    }

    /// [`crate::RotationView::rotate_due`].
    pub(crate) fn rotate_due(&self) -> Result<Vec<DueOutcome>> {
        for key in self.rotatable_keys()? {
            self.adopt_key(&key, None)?;
        }
        let mut outcomes = self.rotation_engine()?.rotate_due(false).map_err(core)?;
        outcomes.extend(self.prekeys_due(false)?);
        // Every action taken (or failed) is audited under the logical key's id, which stays
        // valid when older versions are destroyed.
        for o in &outcomes {
            use keyhaven_audit::Outcome;
            use keyhaven_rotation::DueAction;
            let (outcome, detail) = match &o.action {
                DueAction::Rotated(r) => (
                    Outcome::Allowed,
                    format!(
                        "due: {}: now v{} ({})",
                        o.due.reason, r.new_version, r.new_key.id
                    ),
                ),
                DueAction::Retired(v) => (Outcome::Allowed, format!("retired {v:?}")),
                DueAction::RolledBack => (
                    Outcome::Allowed,
                    "interrupted rotation rolled back".to_owned(),
                ),
                DueAction::Failed(e) => (Outcome::Failed, format!("due: {}: {e}", o.due.reason)),
                DueAction::Notified(what) => (Outcome::Allowed, format!("notify only: {what}")),
                DueAction::SignedPrekeyRotated => {
                    (Outcome::Allowed, format!("due: {}: rotated", o.due.reason))
                }
                DueAction::Replenished(n) => (
                    Outcome::Allowed,
                    format!("due: {}: {n} one-time prekeys made", o.due.reason),
                ),
                _ => continue,
            };
            self.audit_new_key("rotate", "", Some(&o.due.key), outcome, &detail)?;
        }
        // Versions retired at the end of their migration window are revoked too where the
        // policy says so (a signed statement: verifiers holding the revocation list refuse
        // them, not only this home). Judged from the state, not from this run's outcomes: a
        // revocation that failed once (a backend out of reach) is made by the next run.
        let policies = self.rotation_policies()?;
        let registry = self.rotation_registry()?;
        for logical in registry.list().map_err(core)? {
            let (rules, _) = policies.rules_for(&KeyTraits::of(&logical));
            if !rules.is_some_and(|r| r.revoke_after_migration) {
                continue;
            }
            for v in logical.versions() {
                if v.state() != VersionState::Retired {
                    continue;
                }
                let n = v.number();
                let reference = format!("{}:{}", logical.backend(), v.key_id());
                let result = self.resolve(&reference).and_then(|key| {
                    if self.revocation_of(&key)?.is_some() {
                        return Ok(false);
                    }
                    // Exactly that version (its id may also name the logical key).
                    self.revoke_exactly(
                        &key,
                        &format!(
                            "version {n} of {}: its migration window ended \
                             (revoke_after_migration)",
                            logical.label()
                        ),
                        false,
                        None,
                    )?;
                    Ok(true)
                });
                if let Err(e) = result {
                    // Recorded, and tried again by the next run; the other keys go on.
                    self.audit_new_key(
                        "revoke",
                        logical.backend(),
                        Some(v.key_id().as_str()),
                        keyhaven_audit::Outcome::Failed,
                        &format!(
                            "version {n} of {} (revoke_after_migration): {e}; the next \
                             `rotate --due` tries again",
                            logical.label()
                        ),
                    )?;
                }
            }
        }
        Ok(outcomes)
    }

    /// [`crate::RotationView::explain_policy`].
    pub(crate) fn explain_policy(&self, key: &ManagedKey) -> Result<Explanation> {
        let policies = self.rotation_policies()?;
        Ok(match self.logical_key(key)? {
            Some(l) => policies.explain(&l),
            None => policies.explain_for(&KeyTraits::new(
                Role::default_for(key.algorithm()),
                key.algorithm(),
                key.protection(),
            )),
        })
    }

    /// [`crate::RotationView::continuity_chain`].
    pub(crate) fn continuity_chain(&self, key: &ManagedKey) -> Result<Vec<ContinuityProof>> {
        let Some(l) = self.logical_key(key)? else {
            return Ok(Vec::new());
        };
        l.versions()
            .iter()
            .filter_map(|v| v.continuity_proof())
            .map(ContinuityProof::parse)
            .collect::<keyhaven_rotation::Result<_>>()
            .map_err(core)
    }

    /// [`crate::RotationView::prekey_pool`].
    pub(crate) fn prekey_pool(&self, identity: &ManagedKey) -> Result<PrekeyPool> {
        if !identity.algorithm().can_sign() {
            return Err(CoreError::InvalidInput(format!(
                "{identity} is an X25519 key: a prekey pool needs a signing identity key"
            ))
            .into());
        }
        // The pool belongs to the logical identity (it survives identity rotations); its signed
        // keys are signed by the identity's primary version, re-signed when a rotation made a
        // new one (the pool passes from an earlier version to its successor).
        let logical = self.logical_key(identity)?;
        // Earlier versions pass the pool on; a compromised or revoked one's pool is emptied
        // (its keys may be known to whoever compromised it), never vouched for again.
        let (pool_name, trusted, abandoned): (String, Vec<crate::KeyId>, Vec<crate::KeyId>) =
            match &logical {
                Some(l) => {
                    let (bad, good): (Vec<_>, Vec<_>) = l.versions().iter().partition(|v| {
                        matches!(v.state(), VersionState::Compromised | VersionState::Revoked)
                    });
                    (
                        l.id().to_owned(),
                        good.iter().map(|v| v.key_id().clone()).collect(),
                        bad.iter().map(|v| v.key_id().clone()).collect(),
                    )
                }
                None => (identity.id().to_string(), Vec::new(), Vec::new()),
            };
        let identity = self.signing_target(identity)?;
        let b = self.key_backend(&identity)?;
        keyhaven_fs::create_private_dir(self.home())?;
        keyhaven_fs::create_private_dir(&self.rotation_dir())?;
        keyhaven_fs::create_private_dir(&self.rotation_dir().join("prekeys"))?;
        let pool = PrekeyPool::open_succeeding(
            &self.rotation_dir().join("prekeys").join(pool_name),
            b.store().clone(),
            identity.id().clone(),
            self.state()?,
            &keyhaven_rotation::Succession::new(&trusted, &abandoned),
        )
        .map_err(core)?;
        // Devices do ECDH on the NIST curves, not X25519 (SoftHSM 2.6, TPMs): a new pool of a
        // hardware-held identity is made on P-256 so every prekey stays in the device.
        if b.store().info().protection == crate::Protection::Hardware {
            pool.with_curve(crate::Algorithm::EcdhP256).map_err(core)
        } else {
            Ok(pool)
        }
    }

    /// [`crate::RotationView::current_version`].
    pub(crate) fn current_version(&self, key: &ManagedKey) -> Result<ManagedKey> {
        let Some(l) = self.logical_key(key)? else {
            return Ok(key.clone());
        };
        match l.primary() {
            Some(p) if l.id() == key.id().as_str() && p.key_id() != key.id() => {
                self.resolve(&format!("{}:{}", l.backend(), p.key_id()))
            }
            _ => Ok(key.clone()),
        }
    }

    /// [`crate::RotationView::signing_target`].
    pub(crate) fn signing_target(&self, key: &ManagedKey) -> Result<ManagedKey> {
        let Some(l) = self.logical_key(key)? else {
            return Ok(key.clone());
        };
        let named = l.version_by_key_id(key.id()).map(|v| v.number());
        let Some(primary) = l.primary() else {
            return Err(CoreError::Revoked(format!(
                "logical key {} ({}) has no primary version (its versions are {}); rotate it \
                 to make a new one",
                l.label(),
                l.id(),
                l.versions()
                    .iter()
                    .map(|v| format!("v{} {}", v.number(), v.state().name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        };
        if primary.key_id() == key.id() {
            return Ok(key.clone());
        }
        // The logical key's label (or the default key) means its primary; an id means exactly
        // that version, never a silent redirect.
        if l.id() == key.id().as_str() && key.logical {
            return self.resolve(&format!("{}:{}", l.backend(), primary.key_id()));
        }
        let state = named
            .and_then(|n| l.version(n))
            .map(|v| v.state())
            .unwrap_or(VersionState::Retired);
        let msg = format!(
            "{key} is version {} of logical key '{}', which is {}: only the primary version \
             (v{}, {}:{}) signs. Sign with '{}' (the logical key) or '{}' instead",
            named.unwrap_or(0),
            l.label(),
            state.name(),
            primary.number(),
            l.backend(),
            primary.key_id(),
            l.label(),
            primary.key_id()
        );
        Err(if state.is_terminal() {
            CoreError::Revoked(msg)
        } else {
            CoreError::Unsupported {
                operation: "sign with a non-primary version",
                reason: msg,
            }
        }
        .into())
    }

    /// Marks `key`'s version revoked (or compromised) in the rotation registry, if versioned.
    pub(crate) fn revoke_version(
        &self,
        key: &ManagedKey,
        compromised: bool,
        reason: &str,
    ) -> Result<()> {
        let Some(l) = self.logical_key(key)? else {
            return Ok(());
        };
        let Some(n) = l.version_by_key_id(key.id()).map(|v| v.number()) else {
            return Ok(());
        };
        let now = keyhaven_core::unix_now();
        let result = self.rotation_registry()?.update(l.id(), |k| {
            if compromised {
                k.compromise(n, now, reason)
            } else {
                k.revoke(n, now, reason)
            }
        });
        match result {
            // Already terminal: the first statement stands.
            Ok(()) | Err(RotationError::InvalidTransition { .. }) => Ok(()),
            Err(e) => Err(core(e)),
        }
    }

    /// `pick` over every version of every logical key (none without a registry).
    fn versions_where<T>(
        &self,
        pick: impl Fn(&LogicalKey, &keyhaven_rotation::KeyVersion) -> Option<T>,
    ) -> Result<Vec<T>> {
        let Some(registry) = self.registry_if_exists()? else {
            return Ok(Vec::new());
        };
        Ok(registry
            .list()
            .map_err(core)?
            .iter()
            .flat_map(|l| {
                l.versions()
                    .iter()
                    .filter_map(|v| pick(l, v))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// Every version's key id with the id of its logical key (for the scanner: a request id
    /// signed again after a rotation is still the same key's).
    pub(crate) fn logical_ids(&self) -> Result<Vec<(String, String)>> {
        self.versions_where(|l, v| Some((v.key_id().to_string(), l.id().to_owned())))
    }

    /// Retired key versions with since when, for compromise detection.
    pub(crate) fn retired_versions(&self) -> Result<Vec<(String, u64)>> {
        self.versions_where(|_, v| {
            (v.state() == VersionState::Retired).then(|| (v.key_id().to_string(), v.state_since()))
        })
    }
}

impl Rotator for KeyManager {
    fn emergency_rotate(&self, key_id: &str, reason: &str) -> keyhaven_core::Result<String> {
        let key = self.resolve(key_id).map_err(into_core)?;
        // Responding again (after a failed step, or from two processes) must not rotate the
        // replacement too: a terminal version with a newer primary was already dealt with.
        if let Some(l) = self.logical_key(&key).map_err(into_core)?
            && let Some(v) = l.version_by_key_id(key.id())
            && v.state().is_terminal()
            && let Some(p) = l.primary()
            && p.number() > v.number()
        {
            return Ok(format!(
                "already rotated: {} is v{}, and v{} ({}) is primary",
                key.label(),
                v.number(),
                p.number(),
                p.key_id()
            ));
        }
        // A revoked version never goes back to verify-only: mark it in the registry first, so
        // the rotation starts from a logical key with no primary.
        if let Some(r) = self.revocation_of(&key).map_err(into_core)? {
            self.adopt_key(&key, None).map_err(into_core)?;
            self.revoke_version(&key, r.compromised, &r.reason)
                .map_err(into_core)?;
        }
        let o = self.rotate_key(&key, reason).map_err(into_core)?;
        Ok(format!(
            "{} rotated to v{} (new key {}, fingerprint {})",
            key.label(),
            o.new_version,
            o.new_key.id,
            o.new_key.fingerprint().short()
        ))
    }
}

pub(crate) fn into_core(e: Error) -> CoreError {
    match e {
        Error::Core(c) | Error::Backend { source: c, .. } => c,
        // A facade-level error (a backend unavailable, a PIN problem) keeps its meaning.
        other => CoreError::other(other.kind(), "keyhaven", other),
    }
}

impl crate::RotationView<'_> {
    /// Registers `key` as version 1 of a logical key with `role` (default: by algorithm) at
    /// security `level`. A key already versioned is returned as it is: change its level with
    /// [`crate::RotationView::set_level`].
    ///
    /// # Errors
    /// The registry cannot be written.
    pub fn adopt_key_at(
        &self,
        key: &ManagedKey,
        role: Option<Role>,
        level: SecurityLevel,
    ) -> Result<LogicalKey> {
        self.0.adopt_key_at(key, role, level)
    }

    /// Sets the security level of `key`'s logical key (registering it first if it is not
    /// versioned), which decides the rotation policies that match it. Raising it needs the
    /// right to rotate the key; lowering it (which can take the key out of a stricter policy)
    /// needs the right to revoke it as well. Recorded in the key's history and audited (the
    /// old and new level and `reason`). Setting the level it has changes nothing.
    ///
    /// # Errors
    /// Access denied; the registry cannot be written; a revoked, compromised or destroyed key
    /// (nothing left to protect) is [`CoreError::Revoked`].
    pub fn set_level(
        &self,
        key: &ManagedKey,
        level: SecurityLevel,
        reason: &str,
    ) -> Result<LogicalKey> {
        let m = self.0;
        m.authorize(keyhaven_audit::Operation::Rotate, key)?;
        let logical = m.adopt_key(key, None)?;
        if logical.primary().is_none() {
            return Err(CoreError::Revoked(format!(
                "logical key '{}' has no primary version left: its level no longer matters",
                logical.label()
            ))
            .into());
        }
        let from = logical.level();
        if from == level {
            return Ok(logical);
        }
        if level < from {
            m.authorize(keyhaven_audit::Operation::Revoke, key)?;
        }
        let detail = if reason.is_empty() {
            format!("security level {from} -> {level}")
        } else {
            format!("security level {from} -> {level}: {reason}")
        };
        m.audit_event(
            "set-level",
            Some(key),
            keyhaven_audit::Outcome::Intent,
            &detail,
        )?;
        let now = keyhaven_core::unix_now();
        let result = m.rotation_registry()?.update(logical.id(), |k| {
            k.set_level(level, now, reason);
            Ok(k.clone())
        });
        let outcome = match &result {
            Ok(_) => keyhaven_audit::Outcome::Allowed,
            Err(_) => keyhaven_audit::Outcome::Failed,
        };
        m.audit_event("set-level", Some(key), outcome, &detail)?;
        result.map_err(core)
    }

    /// [`crate::RotationView::rotate_key`], with this rotation's migration window instead of the
    /// policy's when `window` is given (seed 002's `migration_days` for one rotation).
    ///
    /// # Errors
    /// As [`crate::RotationView::rotate_key`]; a zero window is invalid input.
    pub fn rotate_key_with_window(
        &self,
        key: &ManagedKey,
        reason: &str,
        window: Option<std::time::Duration>,
    ) -> Result<RotationOutcome> {
        let m = self.0;
        m.authorize(keyhaven_audit::Operation::Rotate, key)?;
        let logical = m.adopt_key(key, None)?;
        m.audit_event("rotate", Some(key), keyhaven_audit::Outcome::Intent, reason)?;
        // Only the key's own backend is needed (the others are not opened). If it cannot be
        // reached, nothing changes: the current version stays primary.
        let backend = match m.key_backend(key) {
            Ok(b) => b,
            Err(e) => {
                let detail = format!("{e}; the current version stays primary");
                m.audit_event(
                    "rotate",
                    Some(key),
                    keyhaven_audit::Outcome::Failed,
                    &detail,
                )?;
                return Err(e);
            }
        };
        let engine = m
            .bare_rotation_engine()?
            .with_store(key.backend.clone(), backend.store().clone());
        let result = engine.rotate_with_window(logical.id(), reason, window);
        let (outcome, detail) = match &result {
            Ok(o) => (
                keyhaven_audit::Outcome::Allowed,
                format!("{reason}: now v{}", o.new_version),
            ),
            Err(e) => (keyhaven_audit::Outcome::Failed, e.to_string()),
        };
        m.audit_event("rotate", Some(key), outcome, &detail)?;
        result.map_err(core)
    }

    /// Verifies `signature` with every version of `key`'s logical key whose state allows it
    /// now (retired versions only with `allow_retired`); returns the version that matched, or
    /// `None` when `key` is not versioned (verify with its own public key then).
    ///
    /// # Errors
    /// [`CoreError::BadSignature`] if no allowed version verifies it.
    pub fn verify_versions(
        &self,
        key: &ManagedKey,
        input: SignInput<'_>,
        signature: &Signature,
        allow_retired: bool,
    ) -> Result<Option<(u32, ManagedKey)>> {
        let m = self.0;
        let Some(l) = m.logical_key(key)? else {
            return Ok(None);
        };
        let now = keyhaven_core::unix_now();
        for v in l.versions().iter().rev() {
            if !l.can_verify(v.number(), now, allow_retired)
                || signature.algorithm() != l.algorithm()
            {
                continue;
            }
            let pk = v.public_key(l.algorithm()).map_err(core)?;
            let ok = match input {
                SignInput::Message(m) => crate::verify(&pk, m, signature),
                SignInput::Digest(d) => crate::verify_digest(&pk, d, signature),
                SignInput::Hashed(h) => crate::verify_digest(&pk, &h.digest, signature),
            };
            if ok.is_ok() {
                let version_key = m.resolve(&format!("{}:{}", l.backend(), v.key_id()))?;
                return Ok(Some((v.number(), version_key)));
            }
        }
        Err(CoreError::BadSignature.into())
    }
}
