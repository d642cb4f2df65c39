//! The lifecycle areas of a [`KeyManager`], each a view borrowing it: [`KeyManager::rotation`],
//! [`KeyManager::audit`], [`crate::RevocationsView::registry`], [`KeyManager::compromise`] and
//! [`KeyManager::backups`]. [`KeyManager`] itself keeps the key operations.

use std::path::PathBuf;
use std::sync::Arc;

use keyhaven_audit::{AuditLog, VerifyReport};
use keyhaven_backup::{BackupEntry, Share};
use keyhaven_compromise::{Authority, ReportStore, ResponseOutcome, Revocation, RevocationList};
use keyhaven_rotation::{
    ContinuityProof, Due, DueOutcome, Explanation, LogicalKey, PolicySet, PrekeyPool, Registry,
    Role, RotationEngine, RotationOutcome,
};

use crate::manager::ManagedKey;
use crate::{KeyManager, PublicKey, Result, ScanOutcome, VersionInfo};

impl KeyManager {
    /// Versions, rotation policies, continuity proofs and prekeys.
    pub fn rotation(&self) -> RotationView<'_> {
        RotationView(self)
    }

    /// The hash-chained audit log and the home's signing authority.
    pub fn audit(&self) -> AuditView<'_> {
        AuditView(self)
    }

    /// Signed revocation: revoking keys, and the registry every process checks.
    pub fn revocations(&self) -> RevocationsView<'_> {
        RevocationsView(self)
    }

    /// Compromise reports, detection and response.
    pub fn compromise(&self) -> CompromiseView<'_> {
        CompromiseView(self)
    }

    /// Encrypted and Shamir backups.
    pub fn backups(&self) -> BackupsView<'_> {
        BackupsView(self)
    }
}

/// Versions, rotation policies, continuity proofs and prekeys ([`KeyManager::rotation`]).
#[derive(Debug, Clone, Copy)]
pub struct RotationView<'a>(pub(crate) &'a KeyManager);

impl RotationView<'_> {
    /// `HOME/rotation`.
    pub fn dir(&self) -> PathBuf {
        self.0.rotation_dir()
    }

    /// The rotation policy file, `HOME/rotation.toml`.
    pub fn policy_path(&self) -> PathBuf {
        self.0.rotation_policy_path()
    }

    /// The rotation policies (none if the file does not exist).
    ///
    /// # Errors
    /// The file is invalid (the error names the field).
    pub fn policies(&self) -> Result<PolicySet> {
        self.0.rotation_policies()
    }

    /// The registry of logical keys (created if missing).
    ///
    /// # Errors
    /// It cannot be created or read.
    pub fn registry(&self) -> Result<Registry> {
        self.0.rotation_registry()
    }

    /// The logical key `key` is a version of, if it is versioned.
    ///
    /// # Errors
    /// The registry cannot be read.
    pub fn logical_key(&self, key: &ManagedKey) -> Result<Option<LogicalKey>> {
        self.0.logical_key(key)
    }

    /// The logical key a reference names (a logical id, any version's key id, or a label),
    /// read from the registry alone: its history stays readable while its backend is away.
    ///
    /// # Errors
    /// The registry cannot be read.
    pub fn find_logical_key(&self, reference: &str) -> Result<Option<LogicalKey>> {
        self.0.find_logical_key(reference)
    }

    /// `key`'s version and state (a key never rotated is version 1, primary; a revoked one is
    /// `revoked` whatever its version).
    ///
    /// # Errors
    /// The registry or the revocations cannot be read.
    pub fn version_info(&self, key: &ManagedKey) -> Result<VersionInfo> {
        self.0.version_info(key)
    }

    /// A rotation engine over every reachable backend, with this manager's usage meter and the
    /// system clock.
    ///
    /// # Errors
    /// The policies are invalid, or a backend fails other than by being unavailable.
    pub fn engine(&self) -> Result<RotationEngine> {
        self.0.rotation_engine()
    }

    /// Registers `key` as version 1 of a logical key with `role` (default: by algorithm).
    /// Idempotent: an already versioned key is returned as it is.
    ///
    /// # Errors
    /// The registry cannot be written.
    pub fn adopt_key(&self, key: &ManagedKey, role: Option<Role>) -> Result<LogicalKey> {
        self.0.adopt_key(key, role)
    }

    /// Rotates `key` (any version of a logical key, or a key never rotated) to a new version in
    /// the same backend: the new version becomes primary, the old one verify-only for its
    /// migration window. Checked against the access policy (`rotate`) and audited.
    ///
    /// # Errors
    /// Access denied; the backend failed (the old version stays primary); a pre-rotation action
    /// failed (the new key is deleted).
    pub fn rotate_key(&self, key: &ManagedKey, reason: &str) -> Result<RotationOutcome> {
        self.0.rotate_key(key, reason)
    }

    /// What is due now, changing nothing (`rotate --due --dry-run`): keys never rotated are
    /// judged as version 1 with their role's default.
    ///
    /// # Errors
    /// The registry, the policies or a backend cannot be used.
    pub fn due_now(&self) -> Result<Vec<Due>> {
        self.0.due_now()
    }

    /// Adopts every key of every reachable backend not yet versioned (except prekeys), then
    /// acts on everything due. Safe to run from cron: concurrent runs act once.
    ///
    /// # Errors
    /// The registry or a backend cannot be used at all.
    pub fn rotate_due(&self) -> Result<Vec<DueOutcome>> {
        self.0.rotate_due()
    }

    /// Which policy applies to `key` and why.
    ///
    /// # Errors
    /// The policies are invalid.
    pub fn explain_policy(&self, key: &ManagedKey) -> Result<Explanation> {
        self.0.explain_policy(key)
    }

    /// The continuity proofs of `key`'s logical key, oldest first.
    ///
    /// # Errors
    /// A stored proof is damaged.
    pub fn continuity_chain(&self, key: &ManagedKey) -> Result<Vec<ContinuityProof>> {
        self.0.continuity_chain(key)
    }

    /// The prekey pool of the identity key `identity` (`HOME/rotation/prekeys/<logical id>`),
    /// whose prekeys live in the identity's backend and are signed by its primary version.
    ///
    /// # Errors
    /// The identity cannot sign, or the pool cannot be opened.
    pub fn prekey_pool(&self, identity: &ManagedKey) -> Result<PrekeyPool> {
        self.0.prekey_pool(identity)
    }

    /// The version a statement about `key` concerns (a revocation, a compromise report): when
    /// `key` names a logical key (its version 1 id or label) whose primary is another version,
    /// that primary, the key in use; otherwise `key` itself.
    ///
    /// # Errors
    /// The registry cannot be read, or the primary version cannot be found.
    pub fn current_version(&self, key: &ManagedKey) -> Result<ManagedKey> {
        self.0.current_version(key)
    }

    /// The key that actually signs for `key`: the primary version when `key` names a logical
    /// key (its version 1 id or label), `key` itself otherwise. A later version that is no
    /// longer primary is refused: only the primary signs. [`KeyManager::sign_input`] applies it
    /// itself; callers that describe the signing key (assertions) call it first.
    ///
    /// # Errors
    /// [`crate::CoreError::Revoked`] if the logical key has no primary version or the named version
    /// is revoked; [`crate::CoreError::Unsupported`] for a verify-only or retired version.
    pub fn signing_target(&self, key: &ManagedKey) -> Result<ManagedKey> {
        self.0.signing_target(key)
    }
}

/// The hash-chained audit log and the home's signing authority ([`KeyManager::audit`]).
#[derive(Debug, Clone, Copy)]
pub struct AuditView<'a>(pub(crate) &'a KeyManager);

impl AuditView<'_> {
    /// Whether operations are audited (see [`crate::AuditConfig::enabled`]).
    pub fn enabled(&self) -> bool {
        self.0.audit_enabled()
    }

    /// The audit log directory.
    pub fn dir(&self) -> PathBuf {
        self.0.audit_dir()
    }

    /// The revocation authority (which also signs audit checkpoints), created in
    /// `HOME/authority` the first time it is needed unless `[audit] authority` names a key.
    ///
    /// # Errors
    /// The configured key cannot be found, or the default store cannot be created.
    pub fn authority(&self) -> Result<Authority> {
        self.0.authority()
    }

    /// The authority key's public key: what verifiers of revocation lists and audit logs pin.
    ///
    /// # Errors
    /// As [`crate::AuditView::authority`].
    pub fn authority_public_key(&self) -> Result<PublicKey> {
        self.0.authority_public_key()
    }

    /// The audit log, opened on first use; `None` when auditing is off.
    ///
    /// # Errors
    /// The log or the authority key cannot be opened (operations then fail: fail closed).
    pub fn log(&self) -> Result<Option<Arc<AuditLog>>> {
        self.0.audit_log()
    }

    /// Verifies the audit log against the authority key.
    ///
    /// # Errors
    /// A log file cannot be read (a tampered log is not an error: see the report).
    pub fn verify(&self) -> Result<VerifyReport> {
        self.0.verify_audit()
    }

    /// Recovers a damaged audit log without hiding the damage ([`keyhaven_audit::recover`]):
    /// the damaged files are set aside as evidence, the good records kept, and a break record
    /// signed by the authority says what happened; `audit verify` then reports the break. The
    /// home's witness follows the recovered log. Needs the authority key (the passphrase).
    ///
    /// # Errors
    /// The log is whole (nothing to recover); the authority cannot sign; I/O errors.
    pub fn recover(&self) -> Result<keyhaven_audit::Recovered> {
        self.0.recover_audit()
    }

    /// Where the home records how far its audit log has reached (`HOME/audit.witness`, part
    /// of the home's authenticated state).
    pub fn witness_path(&self) -> PathBuf {
        self.0.audit_witness_path()
    }

    /// What the witness recorded at the log's last checkpoint, if anything.
    ///
    /// # Errors
    /// The witness was changed outside keyhaven ([`crate::CoreError::Corrupt`]).
    pub fn witnessed(&self) -> Result<Option<keyhaven_audit::Expectation>> {
        self.0.audit_witnessed()
    }

    /// Verifies the audit log and checks it still holds what an earlier verification saw
    /// (its record count and head): records removed from the end since then, or a replaced
    /// log, are reported even after the last signed checkpoint.
    ///
    /// # Errors
    /// A log file cannot be read.
    pub fn verify_expecting(&self, expect: &keyhaven_audit::Expectation) -> Result<VerifyReport> {
        self.0.verify_audit_expecting(expect)
    }

    /// Records in the audit log (if the home keeps one) that a signature was checked against
    /// `key` and whether it verified: failures count towards the failure bursts `keyhaven
    /// compromise scan` reports (someone trying forged signatures against a key).
    ///
    /// # Errors
    /// The audit log cannot be written (fail closed).
    pub fn record_verification(&self, key: &ManagedKey, verified: bool) -> Result<()> {
        self.0.audit_verification(key, verified)
    }
}

/// Signed revocation: revoking keys, and the registry every process checks ([`crate::RevocationsView::registry`]).
#[derive(Debug, Clone, Copy)]
pub struct RevocationsView<'a>(pub(crate) &'a KeyManager);

impl RevocationsView<'_> {
    /// The revocation registry (`HOME/revocations`).
    ///
    /// # Errors
    /// It cannot be created or has loose permissions.
    pub fn registry(&self) -> Result<Arc<keyhaven_compromise::Revocations>> {
        self.0.revocation_registry()
    }

    /// Refuses key material (by its public key) that was revoked, whatever id it had: a revoked
    /// key must not come back through an import or a restore.
    ///
    /// # Errors
    /// [`crate::CoreError::Revoked`] naming the key; the registry cannot be read.
    pub fn refuse_revoked_material(&self, public_key: &PublicKey, label: &str) -> Result<()> {
        self.0.refuse_revoked_material(public_key, label)
    }

    /// The revocation of `key`, if it is revoked.
    ///
    /// # Errors
    /// The registry cannot be read.
    pub fn revocation_of(&self, key: &ManagedKey) -> Result<Option<Revocation>> {
        self.0.revocation_of(key)
    }

    /// Every revocation, as the signed list verifiers load.
    ///
    /// # Errors
    /// The registry cannot be read or the authority key opened.
    pub fn export(&self) -> Result<RevocationList> {
        self.0.export_revocations()
    }
}

/// Compromise reports, detection and response ([`KeyManager::compromise`]).
#[derive(Debug, Clone, Copy)]
pub struct CompromiseView<'a>(pub(crate) &'a KeyManager);

impl CompromiseView<'_> {
    /// The compromise reports (`HOME/compromise`).
    ///
    /// # Errors
    /// The directory cannot be created or has loose permissions.
    pub fn reports(&self) -> Result<ReportStore> {
        self.0.reports()
    }

    /// Scans the audit log for suspicious use and files a suspected report for each new
    /// finding. `retired` lists key ids whose versions are retired, with since when.
    ///
    /// # Errors
    /// The log or the reports cannot be read or written.
    pub fn scan(&self, retired: &[(String, u64)]) -> Result<ScanOutcome> {
        self.0.scan_for_compromise(retired)
    }

    /// [`crate::CompromiseView::respond`], then, after a compromise of the home (seed 002:
    /// "rotate all keys"), every other key of the home is rotated too, hardware keys included
    /// where their device can: each rotation is recorded in the report, a failure too (the
    /// report is then incomplete; run it again: keys already rotated are not rotated twice).
    ///
    /// # Errors
    /// As [`crate::CompromiseView::respond`].
    pub fn respond_to_home(&self, report_id: &str) -> Result<ResponseOutcome> {
        self.0.respond_to_home_compromise(report_id)
    }
}

/// Encrypted and Shamir backups ([`KeyManager::backups`]).
#[derive(Debug, Clone, Copy)]
pub struct BackupsView<'a>(pub(crate) &'a KeyManager);

impl BackupsView<'_> {
    /// Gathers backup entries: the keys named by `refs` (any reference
    /// [`KeyManager::resolve`] takes; a key named twice is backed up once), or every key of
    /// every reachable backend but the revoked keys. Software keys carry their private key; hardware keys their
    /// public key and metadata only. Each entry's `backend` is the configured backend name, and
    /// its metadata records the key's version and state (and, for a versioned key, its logical
    /// key and role).
    ///
    /// # Errors
    /// [`KeyManager::resolve`]'s errors for a reference; the backend's error for a failing
    /// export ([`crate::CoreError::PermissionDenied`] when access control forbids it, ...).
    pub fn collect(&self, refs: Option<&[String]>) -> Result<Vec<BackupEntry>> {
        self.0.collect_backup(refs)
    }

    /// Decrypts a Shamir share encrypted to `key` (an X25519 key this manager holds); the key
    /// agreement happens in the key's backend, so its private key never leaves it. Returns the
    /// share in the clear, checked against its Feldman commitments.
    ///
    /// # Errors
    /// [`crate::CoreError::Corrupt`] naming the share if it is not encrypted, is encrypted to another
    /// key, or does not decrypt; the backend's error for a failing agreement.
    pub fn decrypt_share(&self, share: &Share, key: &ManagedKey) -> Result<Share> {
        self.0.decrypt_share(share, key)
    }
}
