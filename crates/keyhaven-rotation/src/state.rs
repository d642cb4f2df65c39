//! Logical keys, their versions and the version state machine: the one place transitions live.
//!
//! ```text
//!                 rotate                 window ends            retire_after passed
//!   Primary ─────────────────▶ VerifyOnly ───────────▶ Retired ─────────────────▶ Destroyed
//!      │                           │                      │
//!      └───────────┬───────────────┴──────────────────────┘
//!                  ▼
//!        Revoked / Compromised   (terminal: no transition out; the key material of a revoked
//!                                 or compromised version may still be destroyed, which is
//!                                 recorded in `material_destroyed` without leaving the state)
//! ```
//!
//! `VerifyOnly` may also be retired early ([`LogicalKey::retire`]). `Destroyed` is reached only
//! from `Retired`: a version still inside its migration window must be retired first, so that a
//! destroy can never cut a migration short by accident.

use std::fmt;
use std::str::FromStr;

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};

use keyhaven_core::{Algorithm, KeyId, KeyInfo, Protection, PublicKey};

use crate::error::{Result, RotationError};

/// What a key is for. Policies match on it and defaults are given per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A long-lived identity key; its rotations carry continuity proofs.
    Identity,
    /// A signing key (the default for signature algorithms).
    Signing,
    /// A key-agreement key (the default for X25519).
    Encryption,
    /// A signed prekey (X25519, signed by the identity key, rotated on a schedule).
    SignedPrekey,
    /// A one-time prekey (X25519, used once).
    OneTimePrekey,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Role::Identity,
        Role::Signing,
        Role::Encryption,
        Role::SignedPrekey,
        Role::OneTimePrekey,
    ];

    /// The name used in files and on the command line (`identity`, `signed-prekey`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Identity => "identity",
            Role::Signing => "signing",
            Role::Encryption => "encryption",
            Role::SignedPrekey => "signed-prekey",
            Role::OneTimePrekey => "one-time-prekey",
        }
    }

    /// The role a new key of `algorithm` gets unless told otherwise: `encryption` for X25519,
    /// `signing` for everything else.
    pub fn default_for(algorithm: Algorithm) -> Role {
        if algorithm.can_sign() {
            Role::Signing
        } else {
            Role::Encryption
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RotationError;

    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                RotationError::policy(
                    "role",
                    format!(
                        "unknown role '{s}': use identity, signing, encryption, signed-prekey \
                         or one-time-prekey"
                    ),
                )
            })
    }
}

/// How much a key matters (seed 003's security level): a label set when the key is generated,
/// shown by `key show`, and matched by rotation policies (`level = "critical"`).
///
/// The levels are ordered, `standard` < `high` < `critical`; a key registered without one is
/// `standard`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityLevel {
    /// The default for every key.
    #[default]
    Standard,
    /// Keys whose loss or misuse costs more than usual (e.g. release signing).
    High,
    /// Keys whose compromise is a disaster (e.g. a root or an identity anchor).
    Critical,
}

impl SecurityLevel {
    /// Every level, lowest first.
    pub const ALL: [SecurityLevel; 3] = [
        SecurityLevel::Standard,
        SecurityLevel::High,
        SecurityLevel::Critical,
    ];

    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityLevel::Standard => "standard",
            SecurityLevel::High => "high",
            SecurityLevel::Critical => "critical",
        }
    }

    fn is_standard(&self) -> bool {
        *self == SecurityLevel::Standard
    }
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecurityLevel {
    type Err = RotationError;

    fn from_str(s: &str) -> Result<Self> {
        SecurityLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                RotationError::policy(
                    "level",
                    format!("unknown security level '{s}': use standard, high or critical"),
                )
            })
    }
}

/// The state of one key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VersionState {
    /// The one version that signs and agrees.
    Primary,
    /// An older version that still verifies until `until` (seconds since the epoch).
    VerifyOnly {
        /// The end of the migration window.
        until: u64,
    },
    /// Past its window: verification is refused unless explicitly asked for.
    Retired,
    /// Its key material was deleted from the backend. Never verifies.
    Destroyed,
    /// Revoked: terminal, never verifies.
    Revoked,
    /// Compromised: terminal, never verifies.
    Compromised,
}

impl VersionState {
    /// The state's name: `primary`, `verify-only`, `retired`, `destroyed`, `revoked`,
    /// `compromised`.
    pub fn name(&self) -> &'static str {
        match self {
            VersionState::Primary => "primary",
            VersionState::VerifyOnly { .. } => "verify-only",
            VersionState::Retired => "retired",
            VersionState::Destroyed => "destroyed",
            VersionState::Revoked => "revoked",
            VersionState::Compromised => "compromised",
        }
    }

    /// Whether no transition leads out of this state (revoked, compromised, destroyed).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            VersionState::Destroyed | VersionState::Revoked | VersionState::Compromised
        )
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionState::VerifyOnly { until } => write!(f, "verify-only until {until}"),
            other => f.write_str(other.name()),
        }
    }
}

/// One version of a logical key: a key in the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVersion {
    number: u32,
    key_id: KeyId,
    label: String,
    fingerprint: String,
    public_key: String,
    created_at: u64,
    state: VersionState,
    state_since: u64,
    #[serde(default)]
    usage: u64,
    #[serde(default)]
    material_destroyed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    continuity_proof: Option<String>,
}

impl KeyVersion {
    fn new(number: u32, info: &KeyInfo, created_at: u64) -> Self {
        KeyVersion {
            number,
            key_id: info.id.clone(),
            label: info.label.clone(),
            fingerprint: info.fingerprint().to_hex(),
            public_key: Base64::encode_string(info.public_key.spki_der()),
            created_at,
            state: VersionState::Primary,
            state_since: created_at,
            usage: 0,
            material_destroyed: false,
            continuity_proof: None,
        }
    }

    /// The version number, from 1.
    pub fn number(&self) -> u32 {
        self.number
    }
    /// The key's id in the backend.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// The key's label in the backend.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The public key's fingerprint, lowercase hex SHA-256 of the SPKI DER.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// When this version was created (adopted keys: as the backend reports), seconds since the
    /// epoch.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }
    /// The current state.
    pub fn state(&self) -> VersionState {
        self.state
    }
    /// Since when the version is in its state.
    pub fn state_since(&self) -> u64 {
        self.state_since
    }
    /// The last usage count recorded in the registry (signatures made); the live count is in
    /// the [`crate::UsageMeter`].
    pub fn usage(&self) -> u64 {
        self.usage
    }
    /// Whether the private key was deleted from the backend (always for `Destroyed`; also
    /// possible for revoked and compromised versions).
    pub fn material_destroyed(&self) -> bool {
        self.material_destroyed || self.state == VersionState::Destroyed
    }
    /// The continuity proof (text form) binding this version to the previous one, for
    /// identity keys.
    pub fn continuity_proof(&self) -> Option<&str> {
        self.continuity_proof.as_deref()
    }

    /// The public key (kept in the registry, so verifying never needs the backend).
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] if the stored SPKI is not valid base64.
    pub fn public_key(&self, algorithm: Algorithm) -> Result<PublicKey> {
        let der = Base64::decode_vec(&self.public_key).map_err(|_| {
            RotationError::corrupt(
                format!("version {} ({})", self.number, self.key_id),
                "the stored public key is not valid base64",
            )
        })?;
        Ok(PublicKey::new(algorithm, der))
    }
}

/// What happened, in a key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// An existing key was registered as version 1.
    Adopted,
    /// A rotation began (journal entry written before the new key is generated).
    RotationStarted,
    /// A new version was created and made primary.
    Created,
    /// A version changed state.
    StateChanged,
    /// A rotation failed or was cancelled; the old primary stays.
    RotationFailed,
    /// An interrupted rotation was rolled back (its orphan key deleted).
    RolledBack,
    /// A pre- or post-rotation action ran successfully.
    ActionRun,
    /// A post-rotation action failed (the rotation stands).
    ActionFailed,
    /// The key material of a revoked or compromised version was deleted.
    MaterialDestroyed,
    /// The logical key's security level changed.
    LevelChanged,
}

impl EventKind {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Adopted => "adopted",
            EventKind::RotationStarted => "rotation-started",
            EventKind::Created => "created",
            EventKind::StateChanged => "state-changed",
            EventKind::RotationFailed => "rotation-failed",
            EventKind::RolledBack => "rolled-back",
            EventKind::ActionRun => "action-run",
            EventKind::ActionFailed => "action-failed",
            EventKind::MaterialDestroyed => "material-destroyed",
            EventKind::LevelChanged => "level-changed",
        }
    }
}

/// One entry of a key's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    /// When, in seconds since the epoch.
    pub at: u64,
    /// Which version (0 when it concerns the logical key as a whole).
    pub version: u32,
    /// What happened.
    pub kind: EventKind,
    /// The state before, for state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state after, for state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why, or what.
    pub detail: String,
}

impl fmt::Display for HistoryEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{} {}", self.at, self.version, self.kind.as_str())?;
        if let (Some(from), Some(to)) = (&self.from, &self.to) {
            write!(f, " {from} -> {to}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// A rotation in progress: written before the new key is generated, cleared when the rotation
/// commits or is undone. One left behind by a crash is rolled back on the next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRotation {
    /// When the rotation began.
    pub started_at: u64,
    /// The version number the new key would get.
    pub new_version: u32,
    /// The backend label the new key gets (how an orphan is found after a crash).
    pub new_label: String,
}

/// The current format of registry files.
const FORMAT: u32 = 1;

/// A logical key: versions v1..vn of one key in one backend, their states and their history.
///
/// Fields are read through accessors; every change goes through the transition methods here,
/// which enforce the invariants: at most one primary version, no signing with a non-primary
/// version, nothing leaves `Revoked`/`Compromised`/`Destroyed`, usage counts never go down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalKey {
    format: u32,
    id: String,
    backend: String,
    label: String,
    algorithm: Algorithm,
    protection: Protection,
    role: Role,
    /// Absent in files written before levels existed, and for `standard` keys.
    #[serde(default, skip_serializing_if = "SecurityLevel::is_standard")]
    level: SecurityLevel,
    versions: Vec<KeyVersion>,
    #[serde(default)]
    history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<PendingRotation>,
}

impl LogicalKey {
    /// A logical key whose version 1 (primary) is the existing key `info` in `backend`. Its
    /// logical id is `info.id`; its creation time is the backend's (`info.created_at`).
    pub fn adopt(backend: &str, info: &KeyInfo, role: Role, now: u64) -> Self {
        LogicalKey {
            format: FORMAT,
            id: info.id.to_string(),
            backend: backend.to_owned(),
            label: info.label.clone(),
            algorithm: info.algorithm,
            protection: info.protection,
            role,
            level: SecurityLevel::Standard,
            versions: vec![KeyVersion::new(1, info, info.created_at)],
            history: vec![HistoryEntry {
                at: now,
                version: 1,
                kind: EventKind::Adopted,
                from: None,
                to: Some("primary".into()),
                detail: format!("registered {} as version 1 with role {role}", info.id),
            }],
            pending: None,
        }
    }

    /// The same key at security level `level` (for a key being adopted: the level is part of
    /// its registration, not a change in its history).
    #[must_use]
    pub fn with_level(mut self, level: SecurityLevel) -> Self {
        self.level = level;
        if let Some(first) = self.history.first_mut()
            && first.kind == EventKind::Adopted
            && level != SecurityLevel::Standard
        {
            first.detail.push_str(&format!(", security level {level}"));
        }
        self
    }

    /// The same logical key, restored from a backup into `backend`, where the keys of its
    /// versions got the ids in `ids` (backed-up id to restored id; an id not in the map was
    /// kept). The logical id follows version 1's key. Everything else (states, history,
    /// continuity proofs, usage) is kept.
    ///
    /// # Errors
    /// [`RotationError`] if the result breaks the invariants (two versions given one id).
    pub fn restored(
        mut self,
        backend: &str,
        ids: &std::collections::BTreeMap<KeyId, KeyId>,
    ) -> Result<Self> {
        self.backend = backend.to_owned();
        for v in &mut self.versions {
            if let Some(new) = ids.get(&v.key_id) {
                if v.number == 1 {
                    self.id = new.to_string();
                }
                v.key_id = new.clone();
            }
        }
        self.pending = None;
        self.check_invariants()?;
        Ok(self)
    }

    /// The logical id (the backend id of version 1).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The backend's name, as given when the key was adopted.
    pub fn backend(&self) -> &str {
        &self.backend
    }
    /// The label of version 1; later versions are labelled `{label}.v{n}`.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The algorithm every version has.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// The protection of the backend's keys.
    pub fn protection(&self) -> Protection {
        self.protection
    }
    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The security level.
    pub fn level(&self) -> SecurityLevel {
        self.level
    }

    /// Sets the security level, recording the change in the history (nothing is recorded
    /// when the level is unchanged).
    pub fn set_level(&mut self, level: SecurityLevel, now: u64, reason: &str) {
        if level == self.level {
            return;
        }
        let from = self.level;
        self.level = level;
        self.history.push(HistoryEntry {
            at: now,
            version: 0,
            kind: EventKind::LevelChanged,
            from: Some(from.as_str().into()),
            to: Some(level.as_str().into()),
            detail: reason.to_owned(),
        });
    }
    /// Every version, oldest first.
    pub fn versions(&self) -> &[KeyVersion] {
        &self.versions
    }
    /// Everything that happened to the key, oldest first.
    pub fn history(&self) -> &[HistoryEntry] {
        &self.history
    }
    /// The rotation in progress, if any.
    pub fn pending(&self) -> Option<&PendingRotation> {
        self.pending.as_ref()
    }
    /// Version `number`.
    pub fn version(&self, number: u32) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.number == number)
    }
    /// The version whose backend id is `id`.
    pub fn version_by_key_id(&self, id: &KeyId) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| &v.key_id == id)
    }
    /// The primary version, if there is one.
    pub fn primary(&self) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .find(|v| v.state == VersionState::Primary)
    }
    /// The newest version number.
    pub fn latest_version(&self) -> u32 {
        self.versions.iter().map(|v| v.number).max().unwrap_or(0)
    }
    /// The label version `n` gets in the backend: `{label}.v{n}` (version 1 keeps its label).
    pub fn label_for_version(&self, n: u32) -> String {
        if n <= 1 {
            self.label.clone()
        } else {
            format!("{}.v{n}", self.label)
        }
    }

    /// The version to sign (or agree) with: the primary.
    ///
    /// # Errors
    /// [`RotationError::NoPrimary`] if no version is primary.
    pub fn version_for_signing(&self) -> Result<&KeyVersion> {
        self.primary()
            .ok_or_else(|| RotationError::NoPrimary(self.id.clone()))
    }

    /// Checks that version `number` may sign: it must be the primary.
    ///
    /// # Errors
    /// [`RotationError::NotFound`] for an unknown version, [`RotationError::NotPrimary`]
    /// otherwise.
    pub fn check_can_sign(&self, number: u32) -> Result<&KeyVersion> {
        let v = self.get_version(number)?;
        if v.state == VersionState::Primary {
            Ok(v)
        } else {
            Err(RotationError::NotPrimary {
                key: self.id.clone(),
                version: number,
                state: v.state.name().into(),
            })
        }
    }

    /// Whether version `number` verifies at `now`: the primary always; a verify-only version
    /// before its window ends; a retired one (or verify-only past its window) only with
    /// `allow_retired`; destroyed, revoked and compromised versions never.
    pub fn can_verify(&self, number: u32, now: u64, allow_retired: bool) -> bool {
        match self.version(number).map(|v| v.state) {
            Some(VersionState::Primary) => true,
            Some(VersionState::VerifyOnly { until }) => now < until || allow_retired,
            Some(VersionState::Retired) => allow_retired,
            _ => false,
        }
    }

    fn get_version(&self, number: u32) -> Result<&KeyVersion> {
        self.version(number)
            .ok_or_else(|| RotationError::NotFound(format!("version {number} of key {}", self.id)))
    }

    fn index(&self, number: u32) -> Result<usize> {
        self.versions
            .iter()
            .position(|v| v.number == number)
            .ok_or_else(|| RotationError::NotFound(format!("version {number} of key {}", self.id)))
    }

    fn refuse(&self, number: u32, from: VersionState, to: &str, reason: &str) -> RotationError {
        RotationError::InvalidTransition {
            key: self.id.clone(),
            version: number,
            from: from.name().into(),
            to: to.into(),
            reason: reason.into(),
        }
    }

    fn set_state(&mut self, i: usize, to: VersionState, at: u64, detail: String) {
        let v = &mut self.versions[i];
        let from = v.state;
        v.state = to;
        v.state_since = at;
        let number = v.number;
        self.history.push(HistoryEntry {
            at,
            version: number,
            kind: EventKind::StateChanged,
            from: Some(from.name().into()),
            to: Some(to.name().into()),
            detail,
        });
    }

    /// Appends a history entry (actions, failures).
    pub fn record(&mut self, at: u64, version: u32, kind: EventKind, detail: impl Into<String>) {
        self.history.push(HistoryEntry {
            at,
            version,
            kind,
            from: None,
            to: None,
            detail: detail.into(),
        });
    }

    /// Writes the journal entry of a rotation about to generate version
    /// [`LogicalKey::latest_version`] + 1.
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] if a rotation is already pending (roll it back
    /// first).
    pub fn begin_rotation(&mut self, now: u64, reason: &str) -> Result<PendingRotation> {
        if let Some(p) = &self.pending {
            return Err(RotationError::InvalidTransition {
                key: self.id.clone(),
                version: p.new_version,
                from: "pending".into(),
                to: "pending".into(),
                reason: "a rotation of this key is already in progress (or was interrupted and \
                         not yet rolled back)"
                    .into(),
            });
        }
        let n = self.latest_version() + 1;
        let pending = PendingRotation {
            started_at: now,
            new_version: n,
            new_label: self.label_for_version(n),
        };
        self.pending = Some(pending.clone());
        self.record(now, n, EventKind::RotationStarted, reason);
        Ok(pending)
    }

    /// Clears the journal entry of a rotation that failed or was rolled back, recording why.
    pub fn abort_rotation(&mut self, now: u64, kind: EventKind, detail: impl Into<String>) {
        if let Some(p) = self.pending.take() {
            self.record(now, p.new_version, kind, detail);
        }
    }

    /// Makes the new key `info` version n+1 and primary; the old primary (if any) becomes
    /// verify-only until `migration_end`. Clears a pending rotation for that version.
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] if the key's algorithm differs, its id is already a
    /// version, or `migration_end` is before `now`.
    pub fn promote_new_version(
        &mut self,
        info: &KeyInfo,
        now: u64,
        migration_end: u64,
        reason: &str,
    ) -> Result<u32> {
        let n = self.latest_version() + 1;
        let refuse = |why: String| RotationError::InvalidTransition {
            key: self.id.clone(),
            version: n,
            from: "new".into(),
            to: "primary".into(),
            reason: why,
        };
        if info.algorithm != self.algorithm {
            return Err(refuse(format!(
                "the new key is {} but the logical key is {}",
                info.algorithm, self.algorithm
            )));
        }
        if self.version_by_key_id(&info.id).is_some() {
            return Err(refuse(format!(
                "{} is already a version of this key",
                info.id
            )));
        }
        if migration_end < now {
            return Err(refuse("the migration window ends before now".into()));
        }
        if let Some(i) = self
            .versions
            .iter()
            .position(|v| v.state == VersionState::Primary)
        {
            self.set_state(
                i,
                VersionState::VerifyOnly {
                    until: migration_end,
                },
                now,
                format!("superseded by version {n}: {reason}"),
            );
        }
        self.versions.push(KeyVersion::new(n, info, now));
        if self.pending.as_ref().is_some_and(|p| p.new_version == n) {
            self.pending = None;
        }
        self.history.push(HistoryEntry {
            at: now,
            version: n,
            kind: EventKind::Created,
            from: None,
            to: Some("primary".into()),
            detail: format!("{} ({}): {reason}", info.id, info.label),
        });
        Ok(n)
    }

    /// Attaches the continuity proof (text) to version `number`.
    ///
    /// # Errors
    /// [`RotationError::NotFound`] for an unknown version.
    pub fn set_continuity_proof(&mut self, number: u32, proof: String) -> Result<()> {
        let i = self.index(number)?;
        self.versions[i].continuity_proof = Some(proof);
        Ok(())
    }

    /// Moves every verify-only version whose window ended by `now` to retired (retired since
    /// the end of its window). Returns the versions moved.
    pub fn expire(&mut self, now: u64) -> Vec<u32> {
        let mut moved = Vec::new();
        for i in 0..self.versions.len() {
            if let VersionState::VerifyOnly { until } = self.versions[i].state
                && until <= now
            {
                moved.push(self.versions[i].number);
                self.set_state(
                    i,
                    VersionState::Retired,
                    until,
                    "migration window ended".into(),
                );
            }
        }
        moved
    }

    /// Retires a verify-only version before its window ends.
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] unless the version is verify-only.
    pub fn retire(&mut self, number: u32, now: u64, reason: &str) -> Result<()> {
        let i = self.index(number)?;
        match self.versions[i].state {
            VersionState::VerifyOnly { .. } => {
                self.set_state(i, VersionState::Retired, now, reason.into());
                Ok(())
            }
            VersionState::Retired => Ok(()),
            from => Err(self.refuse(
                number,
                from,
                "retired",
                "only a verify-only version can be retired (rotate the key to retire its primary)",
            )),
        }
    }

    /// Records that version `number`'s key material was deleted: a retired version becomes
    /// `Destroyed`; a revoked or compromised one keeps its state and is marked
    /// [`KeyVersion::material_destroyed`].
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] for a primary or verify-only version (retire it
    /// first) or one already destroyed.
    pub fn destroy(&mut self, number: u32, now: u64, reason: &str) -> Result<()> {
        let i = self.index(number)?;
        match self.versions[i].state {
            VersionState::Retired => {
                self.set_state(i, VersionState::Destroyed, now, reason.into());
                Ok(())
            }
            VersionState::Revoked | VersionState::Compromised
                if !self.versions[i].material_destroyed =>
            {
                self.versions[i].material_destroyed = true;
                self.record(now, number, EventKind::MaterialDestroyed, reason);
                Ok(())
            }
            from => Err(self.refuse(
                number,
                from,
                "destroyed",
                "only a retired, revoked or compromised version can be destroyed, once",
            )),
        }
    }

    /// Revokes version `number` (terminal).
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] if it is already revoked, compromised or destroyed.
    pub fn revoke(&mut self, number: u32, now: u64, reason: &str) -> Result<()> {
        self.terminate(number, VersionState::Revoked, now, reason)
    }

    /// Marks version `number` compromised (terminal).
    ///
    /// # Errors
    /// [`RotationError::InvalidTransition`] if it is already revoked, compromised or destroyed.
    pub fn compromise(&mut self, number: u32, now: u64, reason: &str) -> Result<()> {
        self.terminate(number, VersionState::Compromised, now, reason)
    }

    fn terminate(&mut self, number: u32, to: VersionState, now: u64, reason: &str) -> Result<()> {
        let i = self.index(number)?;
        let from = self.versions[i].state;
        if from.is_terminal() {
            return Err(self.refuse(
                number,
                from,
                to.name(),
                "revoked, compromised and destroyed are final states",
            ));
        }
        self.set_state(i, to, now, reason.into());
        Ok(())
    }

    /// Records a usage count for the version with backend id `id`; a count lower than the one
    /// recorded is ignored (counts never go backwards). Returns the recorded count.
    pub fn record_usage(&mut self, id: &KeyId, count: u64) -> Option<u64> {
        let v = self.versions.iter_mut().find(|v| &v.key_id == id)?;
        v.usage = v.usage.max(count);
        Some(v.usage)
    }

    /// Checks the invariants of a key read from storage: format, versions numbered 1..n with
    /// distinct backend ids, at most one primary, a pending rotation only for version n+1.
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] naming the broken invariant.
    pub fn check_invariants(&self) -> Result<()> {
        let bad = |why: String| RotationError::corrupt(format!("logical key {}", self.id), why);
        if self.format != FORMAT {
            return Err(bad(format!(
                "registry format {} is not supported by this keyhaven (expected {FORMAT})",
                self.format
            )));
        }
        if self.versions.is_empty() {
            return Err(bad("it has no versions".into()));
        }
        for (i, v) in self.versions.iter().enumerate() {
            if v.number as usize != i + 1 {
                return Err(bad(format!("version {} is out of sequence", v.number)));
            }
            if self.versions[..i].iter().any(|w| w.key_id == v.key_id) {
                return Err(bad(format!("backend key {} appears twice", v.key_id)));
            }
        }
        if self.versions[0].key_id.as_str() != self.id {
            return Err(bad("its id is not the backend id of version 1".into()));
        }
        let primaries = self
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Primary)
            .count();
        if primaries > 1 {
            return Err(bad(format!("{primaries} versions are primary")));
        }
        if let Some(p) = &self.pending
            && p.new_version != self.latest_version() + 1
        {
            return Err(bad(
                "its pending rotation does not follow the last version".into()
            ));
        }
        Ok(())
    }
}
