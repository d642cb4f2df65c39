//! The rotation engine: what is due, rotations, verification across versions, expiry.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyhaven_core::{Error as CoreError, ErrorKind, KeyId, KeyInfo, KeyStore, Signature};
use keyhaven_fs::FileLock;

use crate::actions::{self, ActionEnv};
use crate::clock::Clock;
use crate::continuity::ContinuityProof;
use crate::error::{Result, RotationError};
use crate::meter::UsageMeter;
use crate::policy::{DEFAULT_ACTION_TIMEOUT, KeyTraits, Mode, PolicySet, Rules};
use crate::prekeys::PrekeyPool;
use crate::registry::{ROTATE_LOCK, Registry};
use crate::state::{EventKind, HistoryEntry, LogicalKey, Role, VersionState};

/// Why something is due.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DueReason {
    /// The primary version reached its policy's `max_age` (seconds).
    Age {
        /// The primary version's age.
        age: u64,
        /// The limit.
        max_age: u64,
    },
    /// The primary version made `max_usage` signatures.
    Usage {
        /// Signatures counted.
        used: u64,
        /// The limit.
        max_usage: u64,
    },
    /// A verify-only version's migration window ended: it is to be retired.
    WindowEnded {
        /// The version.
        version: u32,
        /// When its window ended.
        until: u64,
    },
    /// A retired version is past `retire_after` and may be destroyed (never done
    /// automatically: see [`RotationEngine::destroy_retired`]).
    Destroyable {
        /// The version.
        version: u32,
        /// Since when it is retired.
        retired_since: u64,
        /// The policy's `retire_after`, in seconds.
        retire_after: u64,
    },
    /// A rotation was interrupted (crash) and is to be rolled back.
    Interrupted {
        /// The version that was being created.
        version: u32,
    },
    /// The prekey pool's signed prekey is missing or older than its schedule allows.
    SignedPrekey {
        /// Its age, or `None` if there is none yet.
        age: Option<u64>,
        /// The limit (`[prekeys] signed_prekey_max_age`), in seconds.
        max_age: u64,
    },
    /// The one-time prekey pool is below its low-water mark.
    PoolLow {
        /// Prekeys available.
        available: u64,
        /// The low-water mark.
        low_water: u32,
    },
}

impl DueReason {
    /// Whether acting on it means rotating the key.
    pub fn is_rotation(&self) -> bool {
        matches!(self, DueReason::Age { .. } | DueReason::Usage { .. })
    }
}

fn dur(secs: u64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(secs))
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DueReason::Age { age, max_age } => {
                write!(f, "age {} reached max_age {}", dur(*age), dur(*max_age))
            }
            DueReason::Usage { used, max_usage } => {
                write!(f, "{used} signatures reached max_usage {max_usage}")
            }
            DueReason::WindowEnded { version, until } => {
                write!(
                    f,
                    "migration window of v{version} ended at {until}: retire it"
                )
            }
            DueReason::Destroyable {
                version,
                retired_since,
                retire_after,
            } => write!(
                f,
                "v{version} retired since {retired_since}, past retire_after {}: may be destroyed",
                dur(*retire_after)
            ),
            DueReason::Interrupted { version } => {
                write!(f, "rotation to v{version} was interrupted: roll it back")
            }
            DueReason::SignedPrekey { age: None, .. } => f.write_str("no signed prekey yet"),
            DueReason::SignedPrekey {
                age: Some(age),
                max_age,
            } => write!(
                f,
                "signed prekey age {} reached {}",
                dur(*age),
                dur(*max_age)
            ),
            DueReason::PoolLow {
                available,
                low_water,
            } => write!(
                f,
                "{available} one-time prekeys available, below {low_water}"
            ),
        }
    }
}

/// Something due, found by [`RotationEngine::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Due {
    /// The logical key id (`prekeys` for the prekey pool).
    pub key: String,
    /// The key's label.
    pub label: String,
    /// Why.
    pub reason: DueReason,
    /// The mode of the policy that made it due: in [`Mode::Notify`] a key due by age or usage
    /// is reported, not rotated.
    pub mode: Mode,
}

impl fmt::Display for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.key, self.label, self.reason)
    }
}

/// What a rotation did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RotationOutcome {
    /// The logical key id.
    pub key: String,
    /// The version that was primary (now verify-only), if there was one.
    pub old_version: Option<u32>,
    /// The new primary version.
    pub new_version: u32,
    /// The new key in the backend.
    pub new_key: KeyInfo,
    /// When the old version stops verifying.
    pub migration_end: u64,
    /// For identity keys: the continuity proof (old signs new, new countersigns).
    pub proof: Option<ContinuityProof>,
    /// Set when the post-rotation action failed (the rotation stands).
    pub post_action_error: Option<String>,
}

/// What [`RotationEngine::rotate_due`] did about one due item.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DueAction {
    /// Dry run: nothing done.
    WouldAct,
    /// The key was rotated.
    Rotated(Box<RotationOutcome>),
    /// Verify-only versions were retired.
    Retired(Vec<u32>),
    /// An interrupted rotation was rolled back.
    RolledBack,
    /// The one-time prekey pool got this many new prekeys.
    Replenished(usize),
    /// A new signed prekey was made.
    SignedPrekeyRotated,
    /// Reported only (the policy's mode is notify), with what was recorded.
    Notified(String),
    /// Left alone, with why.
    Skipped(String),
    /// It failed, with the error.
    Failed(String),
}

/// One due item and what was done about it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DueOutcome {
    /// What was due.
    pub due: Due,
    /// What was done.
    pub action: DueAction,
}

/// Rotates keys in their backends according to policies, over a [`Registry`].
///
/// Every rotation runs under an exclusive lock on `REGISTRY/rotate.lock`, so rotations of the
/// same registry from several threads or processes are serialized, and
/// [`RotationEngine::rotate_due`] re-evaluates under that lock: two concurrent runs rotate once.
pub struct RotationEngine {
    registry: Registry,
    policies: PolicySet,
    clock: Arc<dyn Clock>,
    stores: BTreeMap<String, Arc<dyn KeyStore>>,
    meter: Option<Arc<UsageMeter>>,
    prekeys: Option<Arc<PrekeyPool>>,
}

impl fmt::Debug for RotationEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotationEngine")
            .field("registry", &self.registry)
            .field("stores", &self.stores.keys().collect::<Vec<_>>())
            .field("metered", &self.meter.is_some())
            .field("prekeys", &self.prekeys.is_some())
            .finish_non_exhaustive()
    }
}

impl RotationEngine {
    /// An engine over `registry` with `policies`, taking time from `clock`.
    pub fn new(registry: Registry, policies: PolicySet, clock: Arc<dyn Clock>) -> Self {
        RotationEngine {
            registry,
            policies,
            clock,
            stores: BTreeMap::new(),
            meter: None,
            prekeys: None,
        }
    }

    /// Attaches the backend named `name` (the name logical keys record).
    pub fn with_store(mut self, name: impl Into<String>, store: Arc<dyn KeyStore>) -> Self {
        self.stores.insert(name.into(), store);
        self
    }

    /// Attaches the usage meter, for `max_usage` policies.
    pub fn with_meter(mut self, meter: Arc<UsageMeter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Attaches a prekey pool: [`RotationEngine::evaluate`] then reports a low pool and a due
    /// signed prekey, and [`RotationEngine::rotate_due`] acts on them.
    pub fn with_prekeys(mut self, pool: Arc<PrekeyPool>) -> Self {
        self.prekeys = Some(pool);
        self
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The policies.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The time now, by the engine's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    fn store(&self, backend: &str) -> Result<&Arc<dyn KeyStore>> {
        self.stores.get(backend).ok_or_else(|| {
            CoreError::Unavailable {
                backend: backend.to_owned(),
                reason: "no such backend is configured for rotation".into(),
            }
            .into()
        })
    }

    /// Registers the key `id_or_label` of `backend` as version 1 of a logical key with `role`
    /// (default: [`Role::default_for`] its algorithm). Idempotent.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::NotFound`] if the backend has no such key; as
    /// [`Registry::adopt`].
    pub fn adopt(
        &self,
        backend: &str,
        id_or_label: &str,
        role: Option<Role>,
    ) -> Result<LogicalKey> {
        let info = self.store(backend)?.resolve(id_or_label)?;
        let role = role.unwrap_or_else(|| Role::default_for(info.algorithm));
        self.registry.adopt(backend, &info, role, self.now())
    }

    /// The backend id of the primary version of `reference`: the key to sign with.
    ///
    /// # Errors
    /// [`RotationError::NotFound`], [`RotationError::NoPrimary`].
    pub fn signing_key(&self, reference: &str) -> Result<KeyId> {
        let key = self.registry.find(reference)?;
        Ok(key.version_for_signing()?.key_id().clone())
    }

    /// The history of `reference`, oldest first.
    ///
    /// # Errors
    /// [`RotationError::NotFound`]; a damaged registry file.
    pub fn history(&self, reference: &str) -> Result<Vec<HistoryEntry>> {
        Ok(self.registry.find(reference)?.history().to_vec())
    }

    /// Every continuity proof of `reference`, oldest first (identity keys).
    ///
    /// # Errors
    /// [`RotationError::NotFound`]; [`RotationError::Continuity`] for a damaged stored proof.
    pub fn continuity_chain(&self, reference: &str) -> Result<Vec<ContinuityProof>> {
        let key = self.registry.find(reference)?;
        key.versions()
            .iter()
            .filter_map(|v| v.continuity_proof())
            .map(ContinuityProof::parse)
            .collect()
    }

    /// Lists what is due now: rotations by age or usage, windows ended, retired versions that
    /// may be destroyed, interrupted rotations, and (with a prekey pool) a low pool or an old
    /// signed prekey. Damaged registry files are skipped (see [`Registry::check`]).
    ///
    /// # Errors
    /// If the registry cannot be read, or the meter or pool fails.
    pub fn evaluate(&self) -> Result<Vec<Due>> {
        let keys = self.registry.list()?;
        let mut due = self.evaluate_keys(&keys)?;
        if let Some(pool) = &self.prekeys {
            due.extend(self.evaluate_pool(pool)?);
        }
        Ok(due)
    }

    /// What the prekey pool (if the engine has one) needs now, by the prekey schedule
    /// ([`PolicySet::prekey_schedule`]): an old signed prekey, a low pool.
    ///
    /// # Errors
    /// If the pool's state cannot be read.
    pub fn evaluate_prekeys(&self) -> Result<Vec<Due>> {
        match &self.prekeys {
            Some(pool) => self.evaluate_pool(pool),
            None => Ok(Vec::new()),
        }
    }

    /// Acts on what [`RotationEngine::evaluate_prekeys`] finds (or, with `dry_run`, says what
    /// it would do), under the rotation lock.
    ///
    /// # Errors
    /// The lock cannot be taken or the pool's state read; a failed action is in its outcome.
    pub fn rotate_prekeys_due(&self, dry_run: bool) -> Result<Vec<DueOutcome>> {
        let _lock = self.rotation_lock()?;
        Ok(self
            .evaluate_prekeys()?
            .into_iter()
            .map(|due| {
                let action = if dry_run {
                    DueAction::WouldAct
                } else {
                    self.act(&due)
                };
                DueOutcome { due, action }
            })
            .collect())
    }

    fn evaluate_pool(&self, pool: &PrekeyPool) -> Result<Vec<Due>> {
        // No schedule (the built-in one switched off, no [prekeys]): prekeys are by hand.
        let Some((settings, _)) = self.policies.prekey_schedule() else {
            return Ok(Vec::new());
        };
        let status = pool.status()?;
        let mut due = Vec::new();
        let max_age = settings.signed_prekey_max_age.as_secs();
        if status.signed_prekey_age.is_none_or(|a| a >= max_age) {
            due.push(Due {
                key: "prekeys".into(),
                label: "signed prekey".into(),
                mode: Mode::Enforce,
                reason: DueReason::SignedPrekey {
                    age: status.signed_prekey_age,
                    max_age,
                },
            });
        }
        if status.available < u64::from(settings.low_water) {
            due.push(Due {
                key: "prekeys".into(),
                label: "one-time prekeys".into(),
                mode: Mode::Enforce,
                reason: DueReason::PoolLow {
                    available: status.available,
                    low_water: settings.low_water,
                },
            });
        }
        Ok(due)
    }

    /// [`RotationEngine::evaluate`] over keys given directly (no prekey pool): for callers that
    /// already hold them, and for benchmarks.
    ///
    /// # Errors
    /// If the meter cannot read a counter.
    pub fn evaluate_keys(&self, keys: &[LogicalKey]) -> Result<Vec<Due>> {
        let now = self.clock.now();
        // Keyed by every trait a policy matches on.
        let mut cache: HashMap<KeyTraits, Option<&Rules>> = HashMap::new();
        let mut out = Vec::new();
        let spk_max_age = self.policies.prekeys().signed_prekey_max_age;
        for key in keys {
            let traits = KeyTraits::of(key);
            let rules = *cache
                .entry(traits)
                .or_insert_with(|| self.policies.rules_for(&traits).0);
            let mode = rules.map_or(Mode::Enforce, |r| r.mode);
            let mut push = |reason| {
                out.push(Due {
                    key: key.id().to_owned(),
                    label: key.label().to_owned(),
                    reason,
                    mode,
                })
            };
            if let Some(p) = key.pending() {
                push(DueReason::Interrupted {
                    version: p.new_version,
                });
            }
            let max_age = rules
                .and_then(|r| r.max_age)
                .or((key.role() == Role::SignedPrekey).then_some(spk_max_age));
            // A disabled policy rotates nothing (its windows still end, below).
            if let Some(primary) = key.primary().filter(|_| mode != Mode::Disabled) {
                let age = now.saturating_sub(primary.created_at());
                let max_usage = rules.and_then(|r| r.max_usage);
                if let Some(max) = max_age.map(|d| d.as_secs())
                    && age >= max
                {
                    push(DueReason::Age { age, max_age: max });
                } else if let Some(max) = max_usage {
                    let used = match &self.meter {
                        Some(m) => m.usage(primary.key_id())?.max(primary.usage()),
                        None => primary.usage(),
                    };
                    if used >= max {
                        push(DueReason::Usage {
                            used,
                            max_usage: max,
                        });
                    }
                }
            }
            let retire_after = rules.and_then(|r| r.retire_after).map(|d| d.as_secs());
            for v in key.versions() {
                match v.state() {
                    VersionState::VerifyOnly { until } if until <= now => {
                        push(DueReason::WindowEnded {
                            version: v.number(),
                            until,
                        })
                    }
                    VersionState::Retired => {
                        if let Some(after) = retire_after
                            && now >= v.state_since().saturating_add(after)
                        {
                            push(DueReason::Destroyable {
                                version: v.number(),
                                retired_since: v.state_since(),
                                retire_after: after,
                            })
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    fn rotation_lock(&self) -> Result<FileLock> {
        Ok(FileLock::acquire(&self.registry.path().join(ROTATE_LOCK))?)
    }

    /// Rolls back every interrupted rotation (a crash between generating the new key and
    /// committing it): deletes the orphan key from its backend and clears the journal entry.
    /// Returns the logical keys rolled back.
    ///
    /// # Errors
    /// If a backend is unavailable (the entry is kept for the next run) or storage fails.
    pub fn recover(&self) -> Result<Vec<String>> {
        let _lock = self.rotation_lock()?;
        self.recover_locked()
    }

    fn recover_locked(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for key in self.registry.list()? {
            if key.pending().is_some() {
                self.recover_key(&key)?;
                done.push(key.id().to_owned());
            }
        }
        Ok(done)
    }

    /// Under the rotation lock: a pending entry is never a rotation in progress.
    fn recover_key(&self, key: &LogicalKey) -> Result<()> {
        let Some(pending) = key.pending() else {
            return Ok(());
        };
        let store = self.store(key.backend())?;
        let detail = match store.find_by_label(&pending.new_label) {
            Ok(orphan) if key.version_by_key_id(&orphan.id).is_none() => {
                match store.delete(&orphan.id) {
                    Ok(()) => {}
                    Err(e) if e.is(ErrorKind::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
                format!(
                    "interrupted rotation rolled back: deleted uncommitted key {} ({})",
                    orphan.id, pending.new_label
                )
            }
            Err(e) if !e.is(ErrorKind::NotFound) => return Err(e.into()),
            Ok(_) | Err(_) => {
                "interrupted rotation rolled back: no key had been generated".to_owned()
            }
        };
        let now = self.now();
        self.registry.update(key.id(), |k| {
            k.abort_rotation(now, EventKind::RolledBack, detail);
            Ok(())
        })
    }

    /// Rotates `reference` now: generates a new key in the same backend with the same
    /// algorithm (label `{label}.v{n}`), runs the pre-rotation action, makes the new version
    /// primary and the old one verify-only for the policy's migration window, runs the
    /// post-rotation action, and for identity keys makes a continuity proof. Everything is
    /// recorded in the key's history.
    ///
    /// Crash safety: a journal entry is written before generating; if the process dies before
    /// the commit, the next run rolls it back ([`RotationEngine::recover`]). The commit is one
    /// atomic file replacement, so there is always at most one primary.
    ///
    /// # Errors
    /// [`RotationError::RotationFailed`] if the backend fails (the old version stays primary),
    /// [`RotationError::PreActionFailed`] if the pre-rotation action fails (the new key is
    /// deleted), [`RotationError::NotFound`], storage errors.
    pub fn rotate(&self, reference: &str, reason: &str) -> Result<RotationOutcome> {
        self.rotate_with_window(reference, reason, None)
    }

    /// [`RotationEngine::rotate`], with this rotation's migration window (how long the old
    /// version keeps verifying) instead of the policy's, when `window` is given.
    ///
    /// # Errors
    /// As [`RotationEngine::rotate`]; [`RotationError::Policy`] for a zero window.
    pub fn rotate_with_window(
        &self,
        reference: &str,
        reason: &str,
        window: Option<std::time::Duration>,
    ) -> Result<RotationOutcome> {
        if window.is_some_and(|w| w.as_secs() == 0) {
            return Err(RotationError::policy(
                "migration window",
                "under one second leaves no time to move to the new version",
            ));
        }
        // Ten years: beyond that a replaced version would verify for as long as never rotated.
        const MAX_WINDOW: u64 = 10 * 366 * 24 * 3600;
        if window.is_some_and(|w| w.as_secs() > MAX_WINDOW) {
            return Err(RotationError::policy(
                "migration window",
                "more than ten years keeps the old version verifying as if it were never replaced",
            ));
        }
        let _lock = self.rotation_lock()?;
        let key = self.registry.find(reference)?;
        self.rotate_locked(key.id(), reason, window)
    }

    fn rotate_locked(
        &self,
        id: &str,
        reason: &str,
        window: Option<std::time::Duration>,
    ) -> Result<RotationOutcome> {
        let mut key = self.registry.get(id)?;
        if key.pending().is_some() {
            self.recover_key(&key)?;
            key = self.registry.get(id)?;
        }
        let store = Arc::clone(self.store(key.backend())?);
        let (rules, _) = self.policies.rules_for(&KeyTraits::of(&key));
        let rules = rules.cloned().unwrap_or_default();
        check_window(window, &rules)?;
        let old = key.primary().cloned();
        let old_version = old.as_ref().map_or(0, |v| v.number());
        let now = self.now();
        let pending = self
            .registry
            .update(id, |k| k.begin_rotation(now, reason))?;
        let n = pending.new_version;

        // From here on, every failure undoes what was done and clears the journal entry: the
        // transaction does it when it is aborted, or dropped before it commits.
        let mut txn = RotationTxn {
            engine: self,
            store: Arc::clone(&store),
            id,
            new: None,
            done: false,
        };
        let failed = |operation: &'static str, source: CoreError| RotationError::RotationFailed {
            key: id.to_owned(),
            backend: key.backend().to_owned(),
            operation,
            old_version,
            source: Box::new(source),
        };

        let made = successor_spec(
            store.as_ref(),
            old.as_ref(),
            key.algorithm(),
            &pending.new_label,
        )
        .and_then(|spec| store.generate_with(&spec));
        let new_info = match made {
            Ok(info) => info,
            Err(e) => {
                txn.abort(EventKind::RotationFailed, format!("generate failed: {e}"))?;
                return Err(failed("generate the new key", e));
            }
        };
        txn.new = Some(new_info.id.clone());
        let new_fp = new_info.fingerprint().to_hex();
        let old_fp = old
            .as_ref()
            .map(|v| v.fingerprint().to_owned())
            .unwrap_or_default();
        let env = |phase| ActionEnv {
            phase,
            key_id: id,
            old_fingerprint: &old_fp,
            new_fingerprint: &new_fp,
            old_version,
            new_version: n,
        };
        if let Some(argv) = &rules.pre_rotate
            && let Err(why) = actions::run(argv, &env("pre"), rules.action_timeout())
        {
            let command = argv.join(" ");
            txn.abort(
                EventKind::RotationFailed,
                format!("pre-rotation action {command} failed: {why}"),
            )?;
            return Err(RotationError::PreActionFailed {
                key: id.to_owned(),
                command,
                reason: why,
                old_version,
            });
        }
        let migration_end =
            now.saturating_add(window.unwrap_or_else(|| rules.migration_window()).as_secs());
        let proof = match (&old, key.role()) {
            (Some(old), Role::Identity) => {
                match continuity_proof(store.as_ref(), id, old, &new_info, now, migration_end) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        txn.abort(
                            EventKind::RotationFailed,
                            format!("continuity proof failed: {e}"),
                        )?;
                        return Err(failed(
                            "make the continuity proof",
                            CoreError::InvalidInput(e.to_string()),
                        ));
                    }
                }
            }
            _ => None,
        };
        let pre_ran = rules.pre_rotate.as_ref().map(|a| a.join(" "));
        let committed = self.registry.update(id, |k| {
            if let Some(cmd) = &pre_ran {
                k.record(
                    now,
                    n,
                    EventKind::ActionRun,
                    format!("pre-rotation action {cmd} succeeded"),
                );
            }
            let v = k.promote_new_version(&new_info, now, migration_end, reason)?;
            if let Some(p) = &proof {
                k.set_continuity_proof(v, p.to_text())?;
            }
            Ok(v)
        });
        if let Err(e) = committed {
            let _ = txn.abort(EventKind::RotationFailed, format!("commit failed: {e}"));
            return Err(e);
        }
        txn.commit();
        let post_action_error = match &rules.post_rotate {
            Some(argv) => self.post_action(id, n, argv, &env("post"), &rules)?,
            None => None,
        };
        Ok(RotationOutcome {
            key: id.to_owned(),
            old_version: old.map(|v| v.number()),
            new_version: n,
            new_key: new_info,
            migration_end,
            proof,
            post_action_error,
        })
    }

    /// Runs the post-rotation action (the rotation stands whatever it does) and records how it
    /// went; its failure, to report.
    fn post_action(
        &self,
        id: &str,
        n: u32,
        argv: &[String],
        env: &ActionEnv<'_>,
        rules: &Rules,
    ) -> Result<Option<String>> {
        let command = argv.join(" ");
        let (kind, detail, failure) = match actions::run(argv, env, rules.action_timeout()) {
            Ok(()) => (
                EventKind::ActionRun,
                format!("post-rotation action {command} succeeded"),
                None,
            ),
            Err(why) => {
                let detail = format!("post-rotation action {command} failed: {why}");
                (EventKind::ActionFailed, detail.clone(), Some(detail))
            }
        };
        let at = self.now();
        self.registry.update(id, |k| {
            k.record(at, n, kind, detail);
            Ok(())
        })?;
        Ok(failure)
    }

    /// Acts on everything due, under the rotation lock (re-evaluated there, so concurrent runs
    /// act once): rotates keys due by age or usage, retires versions whose window ended, rolls
    /// back interrupted rotations, replenishes the prekey pool and rotates its signed prekey.
    /// Retired versions past `retire_after` are reported, not destroyed (see
    /// [`RotationEngine::destroy_retired`]). With `dry_run`, only reports. One failure does not
    /// stop the others: each outcome says what happened.
    ///
    /// # Errors
    /// Only if the lock or the registry cannot be used at all.
    pub fn rotate_due(&self, dry_run: bool) -> Result<Vec<DueOutcome>> {
        let _lock = self.rotation_lock()?;
        let mut out = Vec::new();
        for due in self.evaluate()? {
            let action = if dry_run {
                DueAction::WouldAct
            } else {
                self.act(&due)
            };
            out.push(DueOutcome { due, action });
        }
        Ok(out)
    }

    fn act(&self, due: &Due) -> DueAction {
        let result = match &due.reason {
            DueReason::Age { .. } | DueReason::Usage { .. } if due.mode == Mode::Notify => {
                self.notify_due(due)
            }
            DueReason::Age { .. } | DueReason::Usage { .. } => self
                .rotate_locked(&due.key, &format!("due: {}", due.reason), None)
                .map(|o| DueAction::Rotated(Box::new(o))),
            DueReason::WindowEnded { .. } => {
                let now = self.now();
                self.registry
                    .update(&due.key, |k| Ok(k.expire(now)))
                    .map(DueAction::Retired)
            }
            DueReason::Interrupted { .. } => self
                .registry
                .get(&due.key)
                .and_then(|k| self.recover_key(&k))
                .map(|()| DueAction::RolledBack),
            DueReason::Destroyable { .. } => Ok(DueAction::Skipped(
                "retired key material is destroyed only on request (destroy_retired)".into(),
            )),
            DueReason::SignedPrekey { .. } => match &self.prekeys {
                Some(pool) => pool
                    .rotate_signed_prekey()
                    .map(|_| DueAction::SignedPrekeyRotated),
                None => Ok(DueAction::Skipped("no prekey pool".into())),
            },
            DueReason::PoolLow { .. } => match &self.prekeys {
                Some(pool) => {
                    let s = self.policies.prekeys();
                    pool.replenish(s.low_water, s.refill_to)
                        .map(DueAction::Replenished)
                }
                None => Ok(DueAction::Skipped("no prekey pool".into())),
            },
        };
        result.unwrap_or_else(|e| DueAction::Failed(e.to_string()))
    }

    /// A key due under a `notify` policy: its history records it, the post-rotation action
    /// runs (phase `notify`, the new fingerprint empty), nothing is rotated.
    fn notify_due(&self, due: &Due) -> Result<DueAction> {
        let key = self.registry.get(&due.key)?;
        let (rules, _) = self.policies.rules_for(&KeyTraits::of(&key));
        let n = key.primary().map_or(0, |v| v.number());
        let fp = key
            .primary()
            .map(|v| v.fingerprint().to_owned())
            .unwrap_or_default();
        let mut detail = format!(
            "due ({}), not rotated: the policy's mode is notify",
            due.reason
        );
        let mut kind = EventKind::ActionRun;
        if let Some(argv) = rules.and_then(|r| r.post_rotate.as_ref()) {
            let env = ActionEnv {
                phase: "notify",
                key_id: &due.key,
                old_fingerprint: &fp,
                new_fingerprint: "",
                old_version: n,
                new_version: n,
            };
            let timeout = rules.map_or(DEFAULT_ACTION_TIMEOUT, Rules::action_timeout);
            match actions::run(argv, &env, timeout) {
                Ok(()) => detail.push_str(&format!("; action {} ran", argv.join(" "))),
                Err(why) => {
                    kind = EventKind::ActionFailed;
                    detail.push_str(&format!("; action {} failed: {why}", argv.join(" ")));
                }
            }
        }
        let now = self.now();
        self.registry.update(&due.key, |k| {
            k.record(now, n, kind, detail.clone());
            Ok(())
        })?;
        Ok(DueAction::Notified(detail))
    }

    /// Verifies `signature` over `message` with any version of `reference` whose state allows
    /// it now (newest first); returns the version that matched. Retired versions are tried only
    /// with `allow_retired`; revoked, compromised and destroyed versions never. Needs no
    /// backend: public keys are kept in the registry.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::BadSignature`] (as [`RotationError::Core`]) if no allowed version
    /// verifies it; [`RotationError::NotFound`].
    pub fn verify(
        &self,
        reference: &str,
        message: &[u8],
        signature: &Signature,
        allow_retired: bool,
    ) -> Result<u32> {
        let key = self.registry.find(reference)?;
        let now = self.now();
        for v in key.versions().iter().rev() {
            if !key.can_verify(v.number(), now, allow_retired)
                || signature.algorithm() != key.algorithm()
            {
                continue;
            }
            let pk = v.public_key(key.algorithm())?;
            if keyhaven_crypto::verify(&pk, message, signature).is_ok() {
                return Ok(v.number());
            }
        }
        Err(CoreError::BadSignature.into())
    }

    /// Revokes version `version` of `reference` (or marks it compromised). Terminal.
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] if already revoked, compromised or destroyed;
    /// [`RotationError::NotFound`].
    pub fn revoke(
        &self,
        reference: &str,
        version: u32,
        compromised: bool,
        reason: &str,
    ) -> Result<()> {
        let key = self.registry.find(reference)?;
        let now = self.now();
        self.registry.update(key.id(), |k| {
            if compromised {
                k.compromise(version, now, reason)
            } else {
                k.revoke(version, now, reason)
            }
        })
    }

    /// Retires every verify-only version whose window has ended. Returns (logical id, versions).
    ///
    /// # Errors
    /// Storage errors.
    pub fn advance(&self) -> Result<Vec<(String, Vec<u32>)>> {
        let now = self.now();
        let mut out = Vec::new();
        for key in self.registry.list()? {
            let due = key
                .versions()
                .iter()
                .any(|v| matches!(v.state(), VersionState::VerifyOnly { until } if until <= now));
            if due {
                let moved = self.registry.update(key.id(), |k| Ok(k.expire(now)))?;
                if !moved.is_empty() {
                    out.push((key.id().to_owned(), moved));
                }
            }
        }
        Ok(out)
    }

    /// Deletes from its backend, and marks destroyed, version `version` of `reference` (retired,
    /// revoked or compromised versions only).
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] for other states; backend errors (nothing is
    /// recorded then).
    pub fn destroy_version(&self, reference: &str, version: u32, reason: &str) -> Result<()> {
        let key = self.registry.find(reference)?;
        let v = key.version(version).ok_or_else(|| {
            RotationError::NotFound(format!("version {version} of key {}", key.id()))
        })?;
        // check first, so nothing is deleted for a refused transition
        let mut trial = key.clone();
        trial.destroy(version, self.now(), reason)?;
        match self.store(key.backend())?.delete(v.key_id()) {
            Ok(()) => {}
            Err(e) if e.is(ErrorKind::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let now = self.now();
        self.registry
            .update(key.id(), |k| k.destroy(version, now, reason))
    }

    /// Destroys every retired version past its policy's `retire_after`. Returns (logical id,
    /// version) of each.
    ///
    /// # Errors
    /// The first backend or storage error (versions destroyed before it stay destroyed).
    pub fn destroy_retired(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for due in self.evaluate_keys(&self.registry.list()?)? {
            if let DueReason::Destroyable { version, .. } = due.reason {
                self.destroy_version(&due.key, version, "retire_after passed")?;
                out.push((due.key, version));
            }
        }
        Ok(out)
    }
}

/// A rotation under way (journal entry written): until it commits, aborting it or dropping it
/// (an early return, a `?`, a panic in an action) deletes the new key if one was made and
/// clears the journal entry, recording why. If the new key cannot be deleted the journal entry
/// stays, and the next run deletes the orphan.
struct RotationTxn<'a> {
    engine: &'a RotationEngine,
    store: Arc<dyn KeyStore>,
    id: &'a str,
    /// The new version's key, once generated.
    new: Option<KeyId>,
    done: bool,
}

impl RotationTxn<'_> {
    /// Undoes the rotation, recording `kind` and `detail`.
    fn abort(mut self, kind: EventKind, detail: String) -> Result<()> {
        self.done = true;
        self.undo(kind, detail)
    }

    /// The rotation is recorded: nothing is undone any more.
    fn commit(mut self) {
        self.done = true;
    }

    fn undo(&self, kind: EventKind, detail: String) -> Result<()> {
        if let Some(new) = &self.new {
            match self.store.delete(new) {
                Ok(()) => {}
                Err(e) if e.is(ErrorKind::NotFound) => {}
                // leave the journal entry: the next run deletes the orphan
                Err(_) => return Ok(()),
            }
        }
        let now = self.engine.now();
        self.engine.registry.update(self.id, |k| {
            k.abort_rotation(now, kind, detail);
            Ok(())
        })?;
        Ok(())
    }
}

impl Drop for RotationTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.undo(
                EventKind::RotationFailed,
                "the rotation was interrupted before it was recorded".into(),
            );
        }
    }
}

/// A rotation's own migration window obeys the policy's bound as a policy's window does.
fn check_window(window: Option<std::time::Duration>, rules: &Rules) -> Result<()> {
    if let (Some(w), Some(a)) = (window, rules.max_age)
        && w > a
    {
        return Err(RotationError::policy(
            "migration window",
            format!(
                "{} is longer than the key's max_age ({}): old versions would pile up verifying",
                humantime::format_duration(w),
                humantime::format_duration(a)
            ),
        ));
    }
    Ok(())
}

/// The continuity proof of an identity key's rotation: the old version signs the new one,
/// chained to the proof that introduced the old one.
fn continuity_proof(
    store: &dyn KeyStore,
    id: &str,
    old: &crate::state::KeyVersion,
    new_info: &KeyInfo,
    now: u64,
    migration_end: u64,
) -> Result<ContinuityProof> {
    let old_info = store.get(old.key_id())?;
    let previous = old
        .continuity_proof()
        .map(ContinuityProof::parse)
        .transpose()?;
    ContinuityProof::create(
        store,
        id,
        &old_info,
        new_info,
        now,
        migration_end,
        previous.as_ref(),
    )
}

/// What the new version of a key is made as: the old version's device options carried over
/// (a TPM key bound to PCRs stays bound), never silently dropped. A key with a passphrase of its
/// own, or one held at a persistent handle, is refused: an automatic rotation can choose neither
/// a new passphrase nor a second handle.
fn successor_spec(
    store: &dyn KeyStore,
    old: Option<&crate::state::KeyVersion>,
    algorithm: keyhaven_core::Algorithm,
    label: &str,
) -> std::result::Result<keyhaven_core::KeySpec, CoreError> {
    let mut spec = keyhaven_core::KeySpec::new(algorithm, label);
    let Some(old) = old else {
        return Ok(spec);
    };
    let details = store.details(old.key_id())?;
    if details.needs_auth {
        return Err(CoreError::Unsupported {
            operation: "rotate a key with a passphrase of its own",
            reason: "its new version would need a passphrase, which an automatic rotation \
                     cannot choose: generate the new key with its passphrase and adopt it as \
                     the next version by hand"
                .into(),
        });
    }
    if let Some(handle) = &details.persistent_handle {
        return Err(CoreError::Unsupported {
            operation: "rotate a key held at a persistent handle",
            reason: format!(
                "the current version holds {handle} and keeps verifying during the migration \
                 window, so the new version cannot take it: generate the new key at another \
                 handle and adopt it as the next version by hand"
            ),
        });
    }
    if let Some(policy) = &details.pcr_policy {
        spec = spec.option("pcr-policy", policy.clone());
    }
    Ok(spec)
}
