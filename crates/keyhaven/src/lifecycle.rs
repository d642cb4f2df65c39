//! The decorator stack and the lifecycle services of a keyhaven home: the audit log, access
//! control, revocation, compromise reports and response.
//!
//! Every backend's store is wrapped, outermost first, as
//! `AuditedStore<AccessControlledStore<RevocationCheckedStore<S>>>`:
//!
//! - **audit** (`[audit]`, on by default for a home on disk): every operation, allowed or
//!   denied, is appended to the hash-chained log in `HOME/audit`, whose checkpoints are signed
//!   by the home's *authority key*. A log that cannot be written makes the operation fail.
//! - **access control** (`[access] policy = "access.toml"`): deny-by-default rules per key and
//!   operation for the caller ([`KeyManager::with_caller`]; the OS user by default).
//! - **revocation** (always): a key revoked in `HOME/revocations` refuses private operations in
//!   every process at once.
//!
//! The *authority key* signs audit checkpoints and revocation statements. By default it is a
//! P-384 key labelled `keyhaven-authority` in an **encrypted** store of its own
//! (`HOME/authority/store`, under the passphrase of the home's encrypted backends: the
//! [`crate::PassphraseProvider`] is asked for backend `authority`), created and opened only
//! when the key must sign or its public key is first wanted; its public key is then kept in
//! `HOME/authority/authority.json`, so verifying needs no passphrase. A periodic checkpoint
//! that cannot be signed (no passphrase at hand) is skipped, never fatal. `[audit] authority = "BACKEND:ID|LABEL"` puts it in a configured backend
//! instead (an HSM, say). Verifiers pin its public key (`keyhaven revocations export` prints it
//! with the list).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyhaven_audit::{
    AccessControlledStore, AuditLog, AuditOptions, AuditSigner, AuditedStore, Event, Outcome,
    Policy, VerifyReport,
};
use keyhaven_compromise::{
    Authority, CompromiseReport, CompromiseType, DetectionMethod, Evidence, Finding, KeyStates,
    ReportStore, Responder, ResponseConfig, ResponseOutcome, Revocation, RevocationCheckedStore,
    RevocationList, Revocations, Rotator, Severity,
};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::config::Config;
use crate::manager::{KeyManager, ManagedKey};
use crate::{CoreError, Error, KeyStore, PublicKey, Result};

/// The audit log directory inside the home.
pub const AUDIT_DIR: &str = "audit";
/// The authority key's store inside the home.
pub const AUTHORITY_DIR: &str = "authority";
/// The authority key's label.
pub const AUTHORITY_LABEL: &str = "keyhaven-authority";
/// The revocation registry inside the home.
pub const REVOCATIONS_DIR: &str = "revocations";
/// The compromise reports inside the home.
pub const REPORTS_DIR: &str = "compromise";
/// How far the audit log has reached at its last checkpoint, inside the home.
pub const AUDIT_WITNESS: &str = "audit.witness";

/// Keeps what the audit log reached at each checkpoint in the home's state (authenticated once
/// the home is sealed), never going backwards.
#[derive(Debug)]
struct StateWitness {
    state: Arc<dyn keyhaven_fs::StateFiles>,
    path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Witnessed {
    records: u64,
    head: String,
}

fn read_witness(
    state: &dyn keyhaven_fs::StateFiles,
    path: &Path,
) -> std::result::Result<Option<keyhaven_audit::Expectation>, CoreError> {
    let Some(bytes) = state.read(path)? else {
        return Ok(None);
    };
    let w: Witnessed = serde_json::from_slice(&bytes).map_err(|e| {
        CoreError::corrupt(
            path.display().to_string(),
            format!("not an audit witness: {e}"),
        )
    })?;
    Ok(Some(keyhaven_audit::Expectation {
        records: w.records,
        head: Some(w.head),
    }))
}

impl keyhaven_audit::Witness for StateWitness {
    fn witness(&self, seen: &keyhaven_audit::Expectation) -> std::result::Result<(), CoreError> {
        let lock = self.path.with_extension("lock");
        let _lock = keyhaven_fs::FileLock::acquire(&lock)?;
        if let Some(before) = read_witness(self.state.as_ref(), &self.path)?
            && before.records >= seen.records
        {
            return Ok(());
        }
        write_witness(self.state.as_ref(), &self.path, seen)
    }
}

/// Records `seen` as what the audit log holds (the caller holds the witness's lock).
fn write_witness(
    state: &dyn keyhaven_fs::StateFiles,
    path: &Path,
    seen: &keyhaven_audit::Expectation,
) -> std::result::Result<(), CoreError> {
    let w = Witnessed {
        records: seen.records,
        head: seen.head.clone().unwrap_or_default(),
    };
    let json = serde_json::to_vec(&w)
        .map_err(|e| CoreError::InvalidInput(format!("cannot encode the witness: {e}")))?;
    state.write(path, &json)
}

/// `[audit]` in `keyhaven.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuditConfig {
    /// Whether operations are audited (default: yes for a home on disk, no for a configuration
    /// held in memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The log directory (default `HOME/audit`; relative paths resolve against the home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A signed checkpoint every this many records (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// The authority key, as `BACKEND:ID|LABEL` (default: a key of its own in `HOME/authority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Give each operation's outcome record its own fsync (default: no: it is durable with the
    /// next record's, one fsync per operation; see `AuditLog::append_outcome`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_outcomes: Option<bool>,
}

impl AuditConfig {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == AuditConfig::default()
    }
}

/// `[access]` in `keyhaven.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AccessConfig {
    /// The policy file (TOML, see `keyhaven_audit::Policy`); relative to the home. Unset: no
    /// access control (every caller may do everything the backends allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
}

impl AccessConfig {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == AccessConfig::default()
    }
}

pub(crate) fn is_default_compromise(c: &ResponseConfig) -> bool {
    *c == ResponseConfig::default()
}

pub(crate) fn validate(config: &Config) -> std::result::Result<(), String> {
    if config.audit.checkpoint_every == Some(0) {
        return Err("audit.checkpoint_every must be above zero".into());
    }
    if let Some(a) = &config.audit.authority
        && a.trim().is_empty()
    {
        return Err("audit.authority must name a key (BACKEND:ID|LABEL)".into());
    }
    config.compromise.validate().map_err(|e| e.to_string())
}

fn resolve(home: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        home.join(p)
    }
}

/// The lifecycle services of one manager, opened on first use.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) authority: std::sync::OnceLock<Authority>,
    pub(crate) audit: std::sync::OnceLock<Arc<AuditLog>>,
    pub(crate) revocations: std::sync::OnceLock<Arc<Revocations>>,
    pub(crate) meter: std::sync::OnceLock<Arc<keyhaven_rotation::UsageMeter>>,
    pub(crate) registry: std::sync::OnceLock<keyhaven_rotation::Registry>,
    /// The home's state files, plain until the home is sealed (see [`crate::integrity`]).
    pub(crate) state: Arc<crate::integrity::StateCell>,
    /// Encrypted backends opened without decorators (the integrity anchor among them), so
    /// each is unlocked once per manager.
    pub(crate) raw: std::sync::Mutex<std::collections::BTreeMap<String, Backend>>,
    /// One lock per backend name, held while its bare store is opened: two threads never open
    /// (prompt for, run Argon2id on, log in to) the same store at once. Taken after a backend
    /// slot (never the other way round), and nothing is opened through a slot while it is held.
    pub(crate) opening:
        std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
}

/// What a scan found and filed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScanOutcome {
    /// Every finding, including those filed by earlier scans.
    pub findings: Vec<Finding>,
    /// The reports filed by this scan (new findings only).
    pub filed: Vec<CompromiseReport>,
}

impl KeyManager {
    /// [`crate::AuditView::enabled`].
    pub(crate) fn audit_enabled(&self) -> bool {
        self.config()
            .audit
            .enabled
            .unwrap_or(self.config_path().is_some())
    }

    /// [`crate::AuditView::dir`].
    pub(crate) fn audit_dir(&self) -> PathBuf {
        match &self.config().audit.dir {
            Some(d) => resolve(self.home(), d),
            None => self.home().join(AUDIT_DIR),
        }
    }

    /// [`crate::AuditView::authority`].
    pub(crate) fn authority(&self) -> Result<Authority> {
        if let Some(slot) = self.lifecycle().authority.get() {
            return Ok(slot.clone());
        }
        let authority = match self.config().audit.authority.clone() {
            // Opened apart from the manager's backends (which are decorated, and whose audit
            // layer needs this very key): the authority signs through its bare store.
            Some(reference) => {
                let (name, key_ref) = reference.split_once(':').ok_or_else(|| Error::Config {
                    origin: "configuration".into(),
                    message: format!(
                        "audit.authority = \"{reference}\": name the key as BACKEND:ID|LABEL"
                    ),
                })?;
                let store = self.open_undecorated(name)?;
                let key = store
                    .resolve(key_ref)
                    .map_err(|e| Error::backend(name, e))?;
                Authority { store, key: key.id }
            }
            None => {
                keyhaven_fs::create_private_dir(self.home())?;
                open_authority(&self.home().join(AUTHORITY_DIR), self)?
            }
        };
        Ok(self.lifecycle().authority.get_or_init(|| authority).clone())
    }

    /// [`crate::AuditView::authority_public_key`].
    pub(crate) fn authority_public_key(&self) -> Result<PublicKey> {
        let a = self.authority()?;
        Ok(a.store.public_key(&a.key)?)
    }

    /// [`crate::AuditView::log`].
    pub(crate) fn audit_log(&self) -> Result<Option<Arc<AuditLog>>> {
        if !self.audit_enabled() {
            return Ok(None);
        }
        if let Some(log) = self.lifecycle().audit.get() {
            return Ok(Some(log.clone()));
        }
        let authority = self.authority()?;
        let every = self.config().audit.checkpoint_every.unwrap_or(1000);
        let witness = Arc::new(StateWitness {
            state: self.state()?,
            path: self.audit_witness_path(),
        });
        // The default log inside the home is never reached through a linked directory.
        keyhaven_fs::refuse_linked_dirs(self.home(), &self.audit_dir().join("audit.log"))?;
        let log = AuditLog::open(
            &self.audit_dir(),
            AuditSigner {
                store: authority.store,
                key: authority.key,
            },
            AuditOptions::checkpoint_every(every)
                .with_durable_outcomes(self.config().audit.durable_outcomes.unwrap_or(false)),
        )
        .map_err(CoreError::from)?
        .with_witness(witness);
        Ok(Some(
            self.lifecycle().audit.get_or_init(|| Arc::new(log)).clone(),
        ))
    }

    /// [`crate::AuditView::verify`].
    pub(crate) fn verify_audit(&self) -> Result<VerifyReport> {
        let pk = self.authority_public_key()?;
        let report = match self.audit_witnessed()? {
            // What the log held at its last checkpoint, as the home's authenticated state
            // recorded it: whole files or records removed from the end are found.
            Some(seen) => keyhaven_audit::verify_dir_expecting(&self.audit_dir(), &pk, &seen),
            None => keyhaven_audit::verify_dir(&self.audit_dir(), &pk),
        }
        .map_err(CoreError::from)?;
        self.require_first_file(report)
    }

    /// [`crate::AuditView::recover`].
    pub(crate) fn recover_audit(&self) -> Result<keyhaven_audit::Recovered> {
        let authority = self.authority()?;
        let signer = AuditSigner {
            store: authority.store,
            key: authority.key,
        };
        let expected = self.audit_witnessed()?;
        let recovered = keyhaven_audit::recover(&self.audit_dir(), &signer, expected.as_ref())
            .map_err(CoreError::from)?;
        // The witness never goes back on its own: the recovery moves it to the new head.
        let path = self.audit_witness_path();
        let _lock = keyhaven_fs::FileLock::acquire(&path.with_extension("lock"))?;
        write_witness(self.state()?.as_ref(), &path, &recovered.now)?;
        Ok(recovered)
    }

    /// [`crate::AuditView::witness_path`].
    pub(crate) fn audit_witness_path(&self) -> PathBuf {
        self.home().join(AUDIT_WITNESS)
    }

    /// [`crate::AuditView::witnessed`].
    pub(crate) fn audit_witnessed(&self) -> Result<Option<keyhaven_audit::Expectation>> {
        let path = self.audit_witness_path();
        Ok(read_witness(self.state()?.as_ref(), &path)?)
    }

    /// keyhaven never deletes log files, so a home's log starts at `audit.1.log`: a set that
    /// starts later (which the library accepts, anchored at its first header) lost its first
    /// files.
    fn require_first_file(&self, mut report: VerifyReport) -> Result<VerifyReport> {
        if report.problem.is_some() {
            return Ok(report);
        }
        let files = keyhaven_audit::log_files(&self.audit_dir()).map_err(CoreError::from)?;
        let first = self.audit_dir().join("audit.1.log");
        if let Some(start) = files.first()
            && *start != first
        {
            report.problem = Some(keyhaven_audit::Problem {
                file: start.clone(),
                line: 1,
                kind: keyhaven_audit::ProblemKind::MissingFile,
                detail: format!(
                    "the log starts here, but {} (and any file before this one) is missing: \
                     keyhaven never removes log files",
                    first.display()
                ),
            });
        }
        Ok(report)
    }

    /// [`crate::AuditView::verify_expecting`].
    pub(crate) fn verify_audit_expecting(
        &self,
        expect: &keyhaven_audit::Expectation,
    ) -> Result<VerifyReport> {
        let pk = self.authority_public_key()?;
        let mut report = keyhaven_audit::verify_dir_expecting(&self.audit_dir(), &pk, expect)
            .map_err(CoreError::from)?;
        if report.problem.is_none()
            && let Some(seen) = self.audit_witnessed()?
            && seen.records > expect.records
        {
            report = keyhaven_audit::verify_dir_expecting(&self.audit_dir(), &pk, &seen)
                .map_err(CoreError::from)?;
        }
        self.require_first_file(report)
    }

    /// [`crate::RevocationsView::registry`].
    pub(crate) fn revocation_registry(&self) -> Result<Arc<Revocations>> {
        if let Some(r) = self.lifecycle().revocations.get() {
            return Ok(r.clone());
        }
        keyhaven_fs::create_private_dir(self.home())?;
        let state = self.state()?;
        let r = Revocations::open(&self.home().join(REVOCATIONS_DIR))
            .map_err(CoreError::from)?
            .with_state(state);
        Ok(self
            .lifecycle()
            .revocations
            .get_or_init(|| Arc::new(r))
            .clone())
    }

    /// Wraps a freshly opened backend's store in the decorator stack.
    pub(crate) fn decorate(&self, backend: Backend) -> Result<Backend> {
        // A home is sealed as soon as its anchor store exists (it may have just been created).
        self.state()?;
        self.refuse_token_of_unsealed_home(&backend)?;
        let raw = backend.store().clone();
        // Innermost: a deleted key's record put back refuses private operations.
        let raw: Arc<dyn KeyStore> = Arc::new(crate::tombstones::TombstoneStore::new(
            raw,
            backend.name(),
            self.state()?,
            self.home().join(crate::tombstones::TOMBSTONES),
        ));
        let metered = keyhaven_rotation::MeteredStore::new(raw, self.usage_meter()?);
        let mut store: Arc<dyn KeyStore> = Arc::new(RevocationCheckedStore::new(
            metered,
            self.revocation_registry()?,
        ));
        let caller = self.caller();
        if let Some(policy) = self.access_policy()? {
            store = Arc::new(AccessControlledStore::new(store, policy, caller.clone()));
        }
        if let Some(log) = self.audit_log()? {
            store = Arc::new(AuditedStore::new(store, log, caller));
        }
        Ok(backend.with_store(store))
    }

    /// Appends an event for an operation the facade performs itself (revoke, rotate, report).
    pub(crate) fn audit_event(
        &self,
        op: &str,
        key: Option<&ManagedKey>,
        outcome: Outcome,
        reason: &str,
    ) -> Result<()> {
        if let Some(log) = self.audit_log()? {
            let caller = self.caller();
            let mut e = Event::new(
                caller.principal.clone(),
                op,
                key.map_or("", |k| k.backend_kind.name()),
                outcome,
            );
            e.host.clone_from(&caller.host);
            if let Some(k) = key {
                e = e.key(k.id().to_string(), None);
            }
            if !reason.is_empty() {
                e = e.reason(reason);
            }
            log.append(e).map_err(CoreError::from)?;
        }
        Ok(())
    }

    /// Where the access policy is (`[access] policy`, relative to the home), if there is one.
    pub(crate) fn access_policy_path(&self) -> Option<PathBuf> {
        self.config()
            .access
            .policy
            .clone()
            .map(|p| resolve(self.home(), &p))
    }

    /// The access policy, if the configuration names one: read through the home's manifest
    /// when it is kept inside a sealed home ([`KeyManager::policy_text`]).
    ///
    /// # Errors
    /// The file is missing, changed outside keyhaven, or invalid (the message names it).
    pub(crate) fn access_policy(&self) -> Result<Option<Policy>> {
        let Some(path) = self.access_policy_path() else {
            return Ok(None);
        };
        let text = self.policy_text(&path)?.ok_or_else(|| {
            CoreError::NotFound(format!(
                "the access policy {} that keyhaven.toml names ([access] policy)",
                path.display()
            ))
        })?;
        let policy = Policy::from_toml_str(&text).map_err(|e| match e {
            CoreError::InvalidInput(m) => {
                CoreError::InvalidInput(format!("{}: {m}", path.display()))
            }
            other => other,
        })?;
        Ok(Some(policy))
    }

    /// Appends an event about a key being created by the facade itself.
    pub(crate) fn audit_new_key(
        &self,
        op: &str,
        backend: &str,
        key_id: Option<&str>,
        outcome: Outcome,
        reason: &str,
    ) -> Result<()> {
        if let Some(log) = self.audit_log()? {
            let caller = self.caller();
            let mut e = Event::new(caller.principal.clone(), op, backend, outcome);
            e.host.clone_from(&caller.host);
            if let Some(id) = key_id {
                e = e.key(id, None);
            }
            if !reason.is_empty() {
                e = e.reason(reason);
            }
            log.append(e).map_err(CoreError::from)?;
        }
        Ok(())
    }

    /// Checks the access policy (if any) for an operation the facade performs itself.
    pub(crate) fn authorize(&self, op: keyhaven_audit::Operation, key: &ManagedKey) -> Result<()> {
        if let Some(policy) = self.access_policy()? {
            let store = AccessControlledStore::new(key_store_of(self, key)?, policy, self.caller());
            if let Err(e) = store.authorize(op, key.id()) {
                self.audit_event(op.as_str(), Some(key), Outcome::Denied, &e.to_string())?;
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Revokes exactly the version `key` is (never redirected to a logical key's primary).
    pub(crate) fn revoke_exactly(
        &self,
        key: &ManagedKey,
        reason: &str,
        compromised: bool,
        report: Option<&str>,
    ) -> Result<Revocation> {
        self.authorize(keyhaven_audit::Operation::Revoke, key)?;
        let authority = self.authority()?;
        let at = keyhaven_core::unix_now();
        let statement = Revocation::issue(&authority, &key.info, at, reason, compromised, report)
            .map_err(CoreError::from)?;
        self.audit_event("revoke", Some(key), Outcome::Intent, reason)?;
        let pk = authority.store.public_key(&authority.key)?;
        let recorded = self
            .revocation_registry()?
            .record(statement, &pk)
            .map_err(CoreError::from)?;
        self.revoke_version(key, compromised, reason)?;
        self.audit_event("revoke", Some(key), Outcome::Allowed, reason)?;
        Ok(recorded)
    }

    /// [`crate::RevocationsView::refuse_revoked_material`].
    pub(crate) fn refuse_revoked_material(
        &self,
        public_key: &PublicKey,
        label: &str,
    ) -> Result<()> {
        let fp = public_key.fingerprint().to_hex();
        let revoked = self.revocation_registry()?.all().map_err(CoreError::from)?;
        if let Some(r) = revoked.iter().find(|r| r.fingerprint == fp) {
            return Err(CoreError::Revoked(format!(
                "key '{label}' (fingerprint {}) was revoked at {} as key {} ({}); it cannot be \
                 imported or restored again",
                public_key.fingerprint().short(),
                crate::rfc3339(r.revoked_at),
                r.key_id,
                r.reason
            ))
            .into());
        }
        Ok(())
    }

    /// [`crate::RevocationsView::revocation_of`].
    pub(crate) fn revocation_of(&self, key: &ManagedKey) -> Result<Option<Revocation>> {
        Ok(self
            .revocation_registry()?
            .check(key.id().as_str())
            .map_err(CoreError::from)?)
    }

    /// [`crate::RevocationsView::export`].
    pub(crate) fn export_revocations(&self) -> Result<RevocationList> {
        let pk = self.authority_public_key()?;
        Ok(self
            .revocation_registry()?
            .export(&pk)
            .map_err(CoreError::from)?)
    }

    /// [`crate::CompromiseView::reports`].
    pub(crate) fn reports(&self) -> Result<ReportStore> {
        keyhaven_fs::create_private_dir(self.home())?;
        Ok(ReportStore::open(&self.home().join(REPORTS_DIR)).map_err(CoreError::from)?)
    }

    fn set_report_status(
        &self,
        report_id: &str,
        reason: &str,
        action: &str,
        status: keyhaven_compromise::Status,
    ) -> Result<keyhaven_compromise::CompromiseReport> {
        if reason.trim().is_empty() {
            return Err(CoreError::InvalidInput(format!(
                "say why ({action} --reason WHY): it is kept with the report"
            ))
            .into());
        }
        let who = self.caller().principal;
        let now = keyhaven_core::unix_now();
        let reports = self.reports()?;
        // Closing or reopening a report is as weighty as revoking its key: the same right.
        let filed = reports.get(report_id).map_err(CoreError::from)?;
        let reference = match &filed.backend {
            Some(b) => format!("{b}:{}", filed.key_id),
            None => filed.key_id.clone(),
        };
        let key = self.resolve(&reference).ok();
        if let Some(k) = &key {
            self.authorize(keyhaven_audit::Operation::Revoke, k)?;
        }
        let report = reports
            .update(report_id, |r| {
                if r.status == status {
                    return Err(keyhaven_compromise::CompromiseError::Invalid(format!(
                        "report {report_id} is {} already",
                        format!("{status:?}").to_lowercase()
                    )));
                }
                r.status = status;
                r.actions.push(keyhaven_compromise::ActionTaken {
                    at: now,
                    action: action.to_owned(),
                    ok: true,
                    not_configured: false,
                    detail: format!("by {who}: {reason}"),
                });
                Ok(r.clone())
            })
            .map_err(CoreError::from)?;
        self.audit_event(
            &format!("compromise-{action}"),
            key.as_ref(),
            Outcome::Allowed,
            &format!("{report_id}: {reason}"),
        )?;
        Ok(report)
    }

    /// [`crate::CompromiseView::scan`].
    pub(crate) fn scan_for_compromise(&self, retired: &[(String, u64)]) -> Result<ScanOutcome> {
        let dir = self.audit_dir();
        let records = if dir.exists() {
            keyhaven_audit::search(&dir, &keyhaven_audit::Filter::default())
                .map_err(CoreError::from)?
        } else {
            Vec::new()
        };
        let mut states = KeyStates::default();
        for r in self.revocation_registry()?.all().map_err(CoreError::from)? {
            states.revoked.insert(r.key_id, r.revoked_at);
        }
        states.retired.extend(retired.iter().cloned());
        states.retired.extend(self.retired_versions()?);
        states.logical.extend(self.logical_ids()?);
        let findings =
            keyhaven_compromise::scan(&records, &states, &self.config().compromise.thresholds);
        let filed = self
            .reports()?
            .file_findings(&findings, keyhaven_core::unix_now())
            .map_err(CoreError::from)?;
        let ids: Vec<&str> = filed.iter().map(|r| r.id.as_str()).collect();
        self.audit_new_key(
            "compromise-scan",
            "",
            None,
            Outcome::Allowed,
            &format!(
                "{} finding(s); new reports: {}",
                findings.len(),
                ids.join(", ")
            ),
        )?;
        Ok(ScanOutcome { findings, filed })
    }

    /// [`crate::CompromiseView::respond_to_home`]: the reported key's procedure, with every
    /// other key of the home rotated before the notification goes out (so receivers learn
    /// what was done, and a slow receiver never holds the rotation back).
    pub(crate) fn respond_to_home_compromise(&self, report_id: &str) -> Result<ResponseOutcome> {
        let rotate_home = |id: &str| -> keyhaven_compromise::Result<bool> {
            self.rotate_home(id).map_err(|e| {
                keyhaven_compromise::CompromiseError::Core(crate::rotation::into_core(e))
            })
        };
        self.respond_with(report_id, None, Some(&rotate_home))
    }

    /// Rotates every key of the home but the reported one (and those already rotated for this
    /// report), recording each in the report; `false` if any could not be.
    fn rotate_home(&self, report_id: &str) -> Result<bool> {
        let reports = self.reports()?;
        let report = reports.get(report_id).map_err(CoreError::from)?;
        let done: std::collections::BTreeSet<String> = report
            .actions
            .iter()
            .filter(|a| a.action == "rotate-home" && a.ok)
            .filter_map(|a| a.detail.split_whitespace().next().map(str::to_owned))
            .collect();
        // Keys are told apart by their logical key (a rotated key's versions are one key).
        let logical_of = |key: &ManagedKey| -> Result<String> {
            Ok(self
                .logical_key(key)?
                .map_or_else(|| key.id().to_string(), |l| l.id().to_owned()))
        };
        let reported = match &report.backend {
            Some(b) => self.resolve(&format!("{b}:{}", report.key_id)),
            None => self.resolve(&report.key_id),
        };
        let reported = match reported {
            Ok(k) => logical_of(&k)?,
            Err(_) => report.key_id.clone(),
        };
        let mut steps: Vec<(bool, String)> = Vec::new();
        let keys = self.rotatable_keys()?;
        // A backend out of reach keeps its keys as they are: said, and the report incomplete.
        for w in self.warnings() {
            if let crate::Warning::Unreachable { backend, reason } = w {
                steps.push((
                    false,
                    format!(
                        "backend {backend} is out of reach ({reason}): its keys were not rotated"
                    ),
                ));
            }
        }
        for key in keys {
            let id = match logical_of(&key) {
                Ok(id) => id,
                Err(e) => {
                    steps.push((false, format!("{} ({}): {e}", key.id(), key.label())));
                    continue;
                }
            };
            if id == reported || done.contains(&id) {
                continue;
            }
            // A retired version, or a prekey: not a key in use.
            match self.version_info(&key) {
                Ok(v) if v.state != "primary" => continue,
                Ok(_) => {}
                Err(e) => {
                    steps.push((false, format!("{id} ({}): {e}", key.label())));
                    continue;
                }
            }
            let reason = format!("compromise {report_id}: every key of the home is rotated");
            match self.rotate_key(&key, &reason) {
                Ok(o) => {
                    steps.push((
                        true,
                        format!("{id} ({}) now at version {}", key.label(), o.new_version),
                    ));
                    // The replaced version was in the compromised home too: revoked (as
                    // compromised), not left to verify through a migration window; an
                    // identity's prekey pool goes with it (a revoked version's pool is not
                    // passed on).
                    let why = format!("compromise {report_id}: the home was compromised");
                    steps.push(match self.revoke_exactly(&key, &why, true, Some(report_id)) {
                        Ok(_) => (
                            true,
                            format!("{id} ({}) replaced version {} revoked", key.label(), key.id()),
                        ),
                        Err(e) => (
                            false,
                            format!(
                                "{id} ({}) replaced version {} not revoked: {e} (revoke it with \
                                 `keyhaven key revoke {}:{}`)",
                                key.label(),
                                key.id(),
                                key.backend,
                                key.id()
                            ),
                        ),
                    });
                }
                Err(e) => steps.push((false, format!("{id} ({}): {e}", key.label()))),
            }
        }
        let mut all_ok = true;
        for (ok, detail) in steps {
            all_ok &= ok;
            let now = keyhaven_core::unix_now();
            reports
                .update(report_id, |r| {
                    r.actions.push(keyhaven_compromise::ActionTaken {
                        at: now,
                        action: "rotate-home".into(),
                        ok,
                        not_configured: false,
                        detail,
                    });
                    Ok(())
                })
                .map_err(CoreError::from)?;
        }
        Ok(all_ok)
    }
}

fn key_store_of(m: &KeyManager, key: &ManagedKey) -> Result<Arc<dyn KeyStore>> {
    Ok(m.key_backend(key)?.store_raw().clone())
}

/// The label of the RFC 9421 signature on a notification webhook's delivery.
pub const WEBHOOK_SIGNATURE_LABEL: &str = "keyhaven";
/// The `tag` parameter of that signature: it is good for a keyhaven notification only.
pub const WEBHOOK_SIGNATURE_TAG: &str = "keyhaven-notify";

/// Signs notification webhook deliveries with the home's authority key: an RFC 9421 message
/// signature (label [`WEBHOOK_SIGNATURE_LABEL`], tag [`WEBHOOK_SIGNATURE_TAG`], `keyid` the
/// authority's SPKI fingerprint, `nonce` the delivery id, `created`) covering `@method`,
/// `@target-uri`, `content-type` and `content-digest` (RFC 9530, SHA-256 of the body). A
/// receiver pins the authority's public key (`keyhaven revocations export` carries it) and
/// checks the signature, the digest, and that the nonce is new.
struct AuthoritySigner<'a> {
    authority: &'a Authority,
    algorithm: keyhaven_core::Algorithm,
    keyid: String,
}

impl<'a> AuthoritySigner<'a> {
    fn new(authority: &'a Authority) -> Result<Self> {
        let public = authority.store.public_key(&authority.key)?;
        Ok(AuthoritySigner {
            authority,
            algorithm: public.algorithm(),
            keyid: public.fingerprint().to_hex(),
        })
    }
}

impl keyhaven_compromise::WebhookSigner for AuthoritySigner<'_> {
    fn sign(
        &self,
        delivery: &keyhaven_compromise::Delivery<'_>,
    ) -> keyhaven_core::Result<Vec<(String, String)>> {
        use keyhaven_httpsig::{DigestAlgorithm, Message, Request, SignatureSpec};
        let digest = keyhaven_httpsig::content_digest(delivery.body, DigestAlgorithm::Sha256);
        let request = Request::new("POST", delivery.url)?
            .header("Content-Type", delivery.content_type)
            .header("Content-Digest", &digest);
        let spec = SignatureSpec::new(WEBHOOK_SIGNATURE_LABEL, &self.keyid)
            .covering(&["@method", "@target-uri", "content-type", "content-digest"])?
            .created(keyhaven_core::unix_now())
            .nonce(delivery.id)
            .tag(WEBHOOK_SIGNATURE_TAG);
        let store = &self.authority.store;
        let key = &self.authority.key;
        let headers = keyhaven_httpsig::sign_with(
            Message::Request(&request),
            &spec,
            self.algorithm,
            &mut |base| store.sign(key, base),
        )?;
        Ok(vec![
            ("Content-Digest".into(), digest),
            ("Signature-Input".into(), headers.signature_input),
            ("Signature".into(), headers.signature),
        ])
    }
}

fn open_authority(dir: &Path, m: &KeyManager) -> Result<Authority> {
    #[cfg(feature = "file")]
    {
        let store = crate::authority::AuthorityStore::new(
            dir,
            AUTHORITY_LABEL,
            m.passphrase_provider(),
            m.state()?,
        );
        let key = crate::authority::AUTHORITY_KEY_ID
            .parse()
            .map_err(|_| CoreError::InvalidInput("authority key id".into()))?;
        Ok(Authority {
            store: Arc::new(store),
            key,
        })
    }
    #[cfg(not(feature = "file"))]
    {
        let _ = (dir, m);
        Err(CoreError::Unsupported {
            operation: "create the authority key",
            reason: "this build has no file backend: set [audit] authority = \"BACKEND:LABEL\""
                .into(),
        }
        .into())
    }
}

impl crate::RevocationsView<'_> {
    /// Revokes `key` (when `key` names a rotated logical key, its primary version: the key in
    /// use): signs a revocation statement with the authority key and records it; from then on
    /// every process refuses the key's private operations. Revoking twice keeps the
    /// first statement. Audited, and checked against the access policy (`revoke`).
    ///
    /// # Errors
    /// Access denied, the authority cannot sign, the registry cannot be written.
    pub fn revoke(
        &self,
        key: &ManagedKey,
        reason: &str,
        compromised: bool,
        report: Option<&str>,
    ) -> Result<Revocation> {
        let m = self.0;
        let key = &m.current_version(key)?;
        m.revoke_exactly(key, reason, compromised, report)
    }
}

impl crate::CompromiseView<'_> {
    /// Closes report `report_id` as not a compromise (a false positive), recording who and why;
    /// a dismissed report is not responded to until it is reopened.
    ///
    /// # Errors
    /// No such report; an empty reason; the report cannot be written.
    pub fn dismiss(&self, report_id: &str, reason: &str) -> Result<CompromiseReport> {
        let dismissed = keyhaven_compromise::Status::Dismissed;
        self.0
            .set_report_status(report_id, reason, "dismiss", dismissed)
    }

    /// Opens a dismissed (or responded) report again, recording who and why.
    ///
    /// # Errors
    /// As [`crate::CompromiseView::dismiss`].
    pub fn reopen(&self, report_id: &str, reason: &str) -> Result<CompromiseReport> {
        let open = keyhaven_compromise::Status::Open;
        self.0.set_report_status(report_id, reason, "reopen", open)
    }

    /// Files a compromise report for `key` (by a person: detection `manual`); for a rotated
    /// logical key, about its primary version.
    ///
    /// # Errors
    /// The report cannot be written.
    pub fn report(
        &self,
        key: &ManagedKey,
        kind: CompromiseType,
        severity: Severity,
        evidence: &[String],
        role: Option<&str>,
    ) -> Result<CompromiseReport> {
        let m = self.0;
        let key = &m.current_version(key)?;
        let mut r = CompromiseReport::new(
            key.id().as_str(),
            kind,
            severity,
            DetectionMethod::Manual,
            m.caller().principal,
            keyhaven_core::unix_now(),
        );
        r.backend = Some(key.backend.clone());
        r.role = role.map(str::to_owned);
        r.evidence = evidence
            .iter()
            .map(|d| Evidence {
                description: d.clone(),
                audit_seqs: Vec::new(),
            })
            .collect();
        m.reports()?.file(&r).map_err(CoreError::from)?;
        m.audit_event("compromise-report", Some(key), Outcome::Allowed, &r.id)?;
        Ok(r)
    }

    /// Runs the response procedure of a report (revoke, rotate through `rotator`, lookback,
    /// notify, as configured for the key's role).
    ///
    /// # Errors
    /// The report or its key cannot be found, or the report cannot be written.
    pub fn respond(
        &self,
        report_id: &str,
        rotator: Option<&dyn Rotator>,
    ) -> Result<ResponseOutcome> {
        self.0.respond_with(report_id, rotator, None)
    }
}

impl KeyManager {
    /// [`crate::CompromiseView::respond`], running `before_notify` just before the
    /// notification (see [`Responder::before_notify`]).
    fn respond_with(
        &self,
        report_id: &str,
        rotator: Option<&dyn Rotator>,
        before_notify: Option<&keyhaven_compromise::BeforeNotify<'_>>,
    ) -> Result<ResponseOutcome> {
        let m = self;
        let reports = m.reports()?;
        let report = reports.get(report_id).map_err(CoreError::from)?;
        if report.status == keyhaven_compromise::Status::Dismissed {
            let why = report
                .actions
                .iter()
                .rev()
                .find(|a| a.action == "dismiss")
                .map_or_else(String::new, |a| format!(" ({})", a.detail));
            return Err(CoreError::InvalidInput(format!(
                "report {report_id} was dismissed{why}: reopen it first if it is a compromise \
                 after all"
            ))
            .into());
        }
        let reference = match &report.backend {
            Some(b) => format!("{b}:{}", report.key_id),
            None => report.key_id.clone(),
        };
        let key = m.resolve(&reference)?;
        m.authorize(keyhaven_audit::Operation::Revoke, &key)?;
        let revocations = m.revocation_registry()?;
        let authority = m.authority()?;
        let mut config = m.config().compromise.clone();
        // The receiver's CA is trust: inside a sealed home it is read through the manifest,
        // so a home writer cannot plant a CA of their own and take the notification.
        let ca_pem = match &config.notify.ca_file {
            Some(ca) => {
                let path = resolve(m.home(), ca);
                let text = m.policy_text(&path)?.ok_or_else(|| {
                    CoreError::NotFound(format!(
                        "the webhook CA file {} that [compromise.notify] ca_file names",
                        path.display()
                    ))
                })?;
                config.notify.ca_file = Some(path);
                Some(text)
            }
            None => None,
        };
        let audit_dir = m.audit_dir();
        let signer = AuthoritySigner::new(&authority)?;
        let mut notify = keyhaven_compromise::NotifyContext::default().signed_by(&signer);
        if let Some(text) = &ca_pem {
            notify = notify.trusting(text);
        }
        let responder = Responder {
            reports: &reports,
            revocations: &revocations,
            authority: &authority,
            audit_dir: audit_dir.exists().then_some(audit_dir.as_path()),
            rotator: rotator.or(Some(m)),
            config: &config,
            notify,
            before_notify,
        };
        m.audit_event("compromise-respond", Some(&key), Outcome::Intent, report_id)?;
        let outcome = match responder.respond(report_id, &key.info, keyhaven_core::unix_now()) {
            Ok(o) => o,
            Err(e) => {
                let e = CoreError::from(e);
                let reason = format!("{report_id}: {e}");
                m.audit_event("compromise-respond", Some(&key), Outcome::Failed, &reason)?;
                return Err(e.into());
            }
        };
        m.audit_event(
            "compromise-respond",
            Some(&key),
            Outcome::Allowed,
            report_id,
        )?;
        Ok(outcome)
    }
}
