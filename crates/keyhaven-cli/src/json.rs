//! The shapes of `--json` output: one `Serialize` struct per shape, every field documented.
//! Scripts may rely on these names; `tests/it/json_shapes.rs` checks each command's output has
//! exactly these fields. Times are RFC 3339 (UTC), fingerprints lowercase hex SHA-256 of the
//! SPKI DER, public keys PEM.

use keyhaven::versions::{ContinuityProof, LogicalKey, RotationOutcome};
use keyhaven::{ManagedKey, rfc3339};
use serde::Serialize;

/// A key: `key generate|import|show|list --json` (one per key), `quickstart`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyJson {
    /// The backend's configured name.
    pub(crate) backend: String,
    /// The backend's type: `encrypted`, `pem`, `memory`, `pkcs11`, `tpm`.
    pub(crate) backend_type: &'static str,
    /// The key id (32 hex digits).
    pub(crate) id: String,
    /// The label.
    pub(crate) label: String,
    /// `p384`, `p256`, `ed25519`, `x25519`, `ecdh-p384`, `ecdh-p256`.
    pub(crate) algorithm: &'static str,
    /// The JOSE name: `ES384`, `ES256`, `EdDSA`, `ECDH-ES`.
    pub(crate) jose_algorithm: &'static str,
    /// `software-plain`, `software-encrypted`, `hardware`.
    pub(crate) protection: &'static str,
    /// SHA-256 of the SPKI DER, hex.
    pub(crate) fingerprint: String,
    /// When the key was made.
    pub(crate) created_at: String,
    /// Whether it is the default key.
    pub(crate) default: bool,
    /// The public key, SPKI PEM.
    pub(crate) public_key_pem: String,
    /// `key show`: where the backend keeps its keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<String>,
    /// `key show`, PEM backends: the private key's file, which `openssl` reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) private_key_file: Option<String>,
    /// `key show`, keys inside a device: what the device knows of the key (`token`,
    /// `persistent_handle`, `pcr_policy`, `needs_auth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hardware: Option<keyhaven::KeyDetails>,
    /// `key show`: the key's role (`identity`, `signing`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    /// `key show`: its security level (`standard`, `high`, `critical`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) security_level: Option<&'static str>,
}

impl KeyJson {
    /// The key as JSON.
    pub(crate) fn of(key: &ManagedKey, is_default: bool) -> anyhow::Result<Self> {
        Ok(KeyJson {
            backend: key.backend.clone(),
            backend_type: key.backend_kind.name(),
            id: key.id().as_str().to_owned(),
            label: key.label().to_owned(),
            algorithm: key.algorithm().short_name(),
            jose_algorithm: key.algorithm().jose_name(),
            protection: key.protection().as_str(),
            fingerprint: key.info.fingerprint().to_hex(),
            created_at: rfc3339(key.info.created_at),
            default: is_default,
            public_key_pem: key.public_key().to_pem()?,
            location: None,
            private_key_file: None,
            hardware: None,
            role: None,
            security_level: None,
        })
    }
}

/// One rotation: `key rotate --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RotationJson {
    /// The logical key's id.
    pub(crate) logical_key: String,
    /// The version that was primary (null if none).
    pub(crate) old_version: Option<u32>,
    /// The new primary version.
    pub(crate) new_version: u32,
    /// The new version's key id.
    pub(crate) new_key_id: String,
    /// The new version's label.
    pub(crate) new_label: String,
    /// The new version's fingerprint.
    pub(crate) new_fingerprint: String,
    /// When the old version stops verifying.
    pub(crate) migration_end: String,
    /// The continuity proof (old key signs the new), as text; null if none was made.
    pub(crate) continuity_proof: Option<String>,
    /// The post-rotation action's failure, if it failed (the rotation stands).
    pub(crate) post_action_error: Option<String>,
}

impl From<&RotationOutcome> for RotationJson {
    fn from(o: &RotationOutcome) -> Self {
        RotationJson {
            logical_key: o.key.clone(),
            old_version: o.old_version,
            new_version: o.new_version,
            new_key_id: o.new_key.id.as_str().to_owned(),
            new_label: o.new_key.label.clone(),
            new_fingerprint: o.new_key.fingerprint().to_hex(),
            migration_end: rfc3339(o.migration_end),
            continuity_proof: o.proof.as_ref().map(ContinuityProof::to_text),
            post_action_error: o.post_action_error.clone(),
        }
    }
}

/// A logical key's versions and history: `key history --json`.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryJson {
    /// The logical key's id (null for a key never rotated nor adopted).
    pub(crate) logical_key: Option<String>,
    /// Its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<String>,
    /// Its backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backend: Option<String>,
    /// Its role (`identity`, `signing`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    /// Its algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) algorithm: Option<&'static str>,
    /// Every version, oldest first.
    pub(crate) versions: Vec<VersionJson>,
    /// Every event, oldest first.
    pub(crate) history: Vec<EventJson>,
}

/// One version of a logical key.
#[derive(Debug, Serialize)]
pub(crate) struct VersionJson {
    /// Its number (1, 2, ...).
    pub(crate) version: u32,
    /// Its key id.
    pub(crate) key_id: String,
    /// `primary`, `migrating`, `retired`, `revoked`, `compromised`, `destroyed`, ...
    pub(crate) state: String,
    /// Its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<String>,
    /// Its fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fingerprint: Option<String>,
    /// Since when it has been in that state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<String>,
    /// When it was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) created_at: Option<String>,
    /// The proof linking it to the version before (null for version 1).
    pub(crate) continuity_proof: Option<String>,
}

/// One event of a logical key's history.
#[derive(Debug, Serialize)]
pub(crate) struct EventJson {
    /// When.
    pub(crate) at: String,
    /// The version it concerns.
    pub(crate) version: u32,
    /// What happened (`created`, `rotated`, `retired`, ...).
    pub(crate) event: &'static str,
    /// The state before (if a transition).
    pub(crate) from: Option<String>,
    /// The state after (if a transition).
    pub(crate) to: Option<String>,
    /// Details.
    pub(crate) detail: String,
}

impl From<&LogicalKey> for HistoryJson {
    fn from(l: &LogicalKey) -> Self {
        HistoryJson {
            logical_key: Some(l.id().to_owned()),
            label: Some(l.label().to_owned()),
            backend: Some(l.backend().to_owned()),
            role: Some(l.role().as_str()),
            algorithm: Some(l.algorithm().short_name()),
            versions: l
                .versions()
                .iter()
                .map(|v| VersionJson {
                    version: v.number(),
                    key_id: v.key_id().as_str().to_owned(),
                    state: v.state().name().to_owned(),
                    label: Some(v.label().to_owned()),
                    fingerprint: Some(v.fingerprint().to_owned()),
                    since: Some(rfc3339(v.state_since())),
                    created_at: Some(rfc3339(v.created_at())),
                    continuity_proof: v.continuity_proof().map(str::to_owned),
                })
                .collect(),
            history: l
                .history()
                .iter()
                .map(|h| EventJson {
                    at: rfc3339(h.at),
                    version: h.version,
                    event: h.kind.as_str(),
                    from: h.from.clone(),
                    to: h.to.clone(),
                    detail: h.detail.clone(),
                })
                .collect(),
        }
    }
}

/// One due rotation: `rotate --due [--dry-run] --json` (an array of these).
#[derive(Debug, Serialize)]
pub(crate) struct DueJson {
    /// The logical key's id.
    pub(crate) key: String,
    /// Its label.
    pub(crate) label: String,
    /// Why it is due.
    pub(crate) reason: String,
    /// What was done: `rotated to vN`, `retired vN`, `refilled ...`, `failed: ...`, or `would
    /// act` for a dry run.
    pub(crate) action: String,
}

/// A backend: `backend list --json` (`backends`, with `fallback_allowed`).
#[derive(Debug, Serialize)]
pub(crate) struct BackendJson {
    /// Its configured name.
    pub(crate) name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    /// Where its keys are.
    pub(crate) location: String,
    /// The protection of its keys.
    pub(crate) protection: &'static str,
    /// Whether it is the default backend.
    pub(crate) default: bool,
    /// Whether it is the fallback backend.
    pub(crate) fallback: bool,
}

/// `backend list --json`.
#[derive(Debug, Serialize)]
pub(crate) struct BackendsJson {
    /// Each configured backend.
    pub(crate) backends: Vec<BackendJson>,
    /// Whether falling back to the fallback backend is allowed.
    pub(crate) fallback_allowed: bool,
}

/// A key in `key list --json` (an array of these): the key, with its place among versions.
#[derive(Debug, Serialize)]
pub(crate) struct ListedKeyJson {
    /// The key.
    #[serde(flatten)]
    pub(crate) key: KeyJson,
    /// Its version number (1 for a key never rotated; null if its record is damaged).
    pub(crate) version: Option<u32>,
    /// Its version's state (`primary`, `migrating`, ..., or `damaged`).
    pub(crate) state: String,
    /// Its logical key's id (null for a key never rotated nor adopted).
    pub(crate) logical_key: Option<String>,
}

/// `audit verify --json`.
#[derive(Debug, Serialize)]
pub(crate) struct AuditVerifyJson<'a> {
    /// Whether the log is intact (no problem found).
    pub(crate) ok: bool,
    /// Log files read.
    pub(crate) files: usize,
    /// Records read.
    pub(crate) records: u64,
    /// Event records among them.
    pub(crate) events: u64,
    /// Signed checkpoints among them.
    pub(crate) checkpoints: u64,
    /// The sequence number of the last checkpoint.
    pub(crate) last_checkpoint: Option<u64>,
    /// Records after the last checkpoint.
    pub(crate) unsealed: u64,
    /// The hash at the head of the chain, hex.
    pub(crate) head: Option<&'a str>,
    /// The first problem found (null if none).
    pub(crate) problem: Option<AuditProblemJson<'a>>,
    /// Breaks recorded by `audit recover` (each a signed record of damage set aside).
    pub(crate) breaks: Vec<AuditBreakJson<'a>>,
    /// Intent records with no outcome after them (still running, or a crash lost the outcome).
    pub(crate) unfinished: &'a [u64],
}

/// The first problem `audit verify` found.
#[derive(Debug, Serialize)]
pub(crate) struct AuditProblemJson<'a> {
    /// The log file.
    pub(crate) file: &'a std::path::Path,
    /// The line in it.
    pub(crate) line: u64,
    /// What kind of problem (`hash-chain`, `signature`, `truncated`, ...).
    pub(crate) kind: String,
    /// Details.
    pub(crate) detail: &'a str,
}

/// A break `audit recover` recorded.
#[derive(Debug, Serialize)]
pub(crate) struct AuditBreakJson<'a> {
    /// The log file holding the break record.
    pub(crate) file: &'a std::path::Path,
    /// Its line.
    pub(crate) line: u64,
    /// Its sequence number.
    pub(crate) seq: u64,
    /// When it was recorded.
    pub(crate) time: &'a str,
    /// Where the damage was.
    pub(crate) at: &'a str,
    /// The damaged files set aside as evidence.
    pub(crate) damaged: &'a [keyhaven::audit::DamagedFile],
}

impl<'a> From<&'a keyhaven::audit::VerifyReport> for AuditVerifyJson<'a> {
    fn from(r: &'a keyhaven::audit::VerifyReport) -> Self {
        AuditVerifyJson {
            ok: r.is_ok(),
            files: r.files,
            records: r.records,
            events: r.events,
            checkpoints: r.checkpoints,
            last_checkpoint: r.last_checkpoint,
            unsealed: r.unsealed,
            head: r.head.as_deref(),
            problem: r.problem.as_ref().map(|p| AuditProblemJson {
                file: &p.file,
                line: p.line,
                kind: p.kind.to_string(),
                detail: &p.detail,
            }),
            breaks: r
                .breaks
                .iter()
                .map(|b| AuditBreakJson {
                    file: &b.file,
                    line: b.line,
                    seq: b.seq,
                    time: &b.time,
                    at: &b.at,
                    damaged: &b.damaged,
                })
                .collect(),
            unfinished: &r.unfinished,
        }
    }
}

/// `compromise scan --json`.
#[derive(Debug, Serialize)]
pub(crate) struct ScanJson<'a> {
    /// Every finding, including those filed by earlier scans.
    pub(crate) findings: &'a [keyhaven::compromise::Finding],
    /// The ids of the reports this scan filed.
    pub(crate) filed: Vec<&'a str>,
}

/// `integrity status --json`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct IntegrityStatusJson {
    /// Whether the home's state is sealed by an integrity manifest.
    pub(crate) sealed: bool,
    /// The backend anchoring it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) anchor: Option<String>,
    /// Sealed homes: the rollback counter the home is bound to (null if none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rollback_counter: Option<Option<String>>,
    /// Sealed homes: how many changes were sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) generation: Option<u64>,
    /// Sealed homes: how many state files the manifest records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) files: Option<usize>,
    /// Unsealed homes: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'static str>,
}

/// `integrity verify --json`.
#[derive(Debug, Serialize)]
pub(crate) struct IntegrityVerifyJson {
    /// Whether every state file matches the manifest.
    pub(crate) intact: bool,
    /// Each file changed outside keyhaven, one line each.
    pub(crate) problems: Vec<String>,
}

/// `backup inspect --json`: the backup's header with how it is encoded.
#[derive(Debug, Serialize)]
pub(crate) struct BackupHeaderJson<'a> {
    /// The header (id, fingerprint, format, creation time, protection, keys).
    #[serde(flatten)]
    pub(crate) header: &'a keyhaven::backup::BackupHeader,
    /// `binary` or `armored`.
    pub(crate) encoding: String,
}

/// `backup verify --json`.
#[derive(Debug, Serialize)]
pub(crate) struct BackupVerifyJson {
    /// The backup's id.
    pub(crate) backup_id: String,
    /// Its fingerprint.
    pub(crate) fingerprint: String,
    /// `binary` or `armored`.
    pub(crate) encoding: String,
    /// How many keys it holds.
    pub(crate) keys: usize,
    /// Whether every part is intact.
    pub(crate) integrity_ok: bool,
    /// Whether its secret was given and authenticated it.
    pub(crate) authenticated: bool,
    /// Private keys decrypted and checked against their public keys.
    pub(crate) private_keys_checked: usize,
    /// Hardware keys (public part only).
    pub(crate) hardware_keys: usize,
}

/// `backup verify --restore-test --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RestoreTestJson {
    /// The restore test's result.
    pub(crate) restore_test: RestoreTestCounts,
}

/// The counts of a restore test.
#[derive(Debug, Serialize)]
pub(crate) struct RestoreTestCounts {
    /// Keys restored into the scratch home.
    pub(crate) keys: usize,
    /// Keys used there (signed and verified, or agreed).
    pub(crate) used: usize,
    /// TPM-wrapped keys, not tested: they load only into the TPM that made them.
    pub(crate) tpm_wrapped: usize,
}

/// `backup restore --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RestoreJson {
    /// The backend restored into.
    pub(crate) backend: String,
    /// Each key of the backup.
    pub(crate) keys: Vec<RestoredKeyJson>,
}

/// One key of `backup restore --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RestoredKeyJson {
    /// Its id in the backup.
    pub(crate) original_id: String,
    /// Its label.
    pub(crate) label: String,
    /// Its fingerprint.
    pub(crate) fingerprint: String,
    /// `restored`, `renamed`, `replaced`, `skipped`, `already-present`,
    /// `hardware-public-only`.
    pub(crate) outcome: &'static str,
    /// The backend restored into.
    pub(crate) backend: String,
    /// Its id now (null if not restored).
    pub(crate) new_id: Option<String>,
    /// Whether it was restored and checked against its recorded public key.
    pub(crate) verified: bool,
    /// `renamed`: the new label; `replaced`: the id of the key it replaced; `skipped` and
    /// `already-present`: the existing key's id; otherwise null.
    pub(crate) detail: Option<String>,
}

/// `prekeys status --json`.
#[derive(Debug, Serialize)]
pub(crate) struct PrekeyStatusJson {
    /// The identity key.
    pub(crate) identity: String,
    /// One-time prekeys available.
    pub(crate) available: u64,
    /// Taken (handed out, not yet used).
    pub(crate) taken: u64,
    /// Consumed.
    pub(crate) consumed: u64,
    /// The signed prekey's age (null if there is none).
    pub(crate) signed_prekey_age_seconds: Option<u64>,
    /// The pool is refilled below this many.
    pub(crate) low_water: u32,
    /// ... up to this many.
    pub(crate) refill_to: u32,
}

/// `prekeys take --json`: a bundle for a peer.
#[derive(Debug, Serialize)]
pub(crate) struct PrekeyBundleJson {
    /// The one-time prekey handed out.
    pub(crate) one_time_prekey: PrekeyJson,
    /// The current signed prekey (null if there is none).
    pub(crate) signed_prekey: Option<SignedPrekeyJson>,
    /// The identity agreement key (X3DH's IK), signed by the identity key under the domain
    /// `keyhaven-identity-agreement-key/v1`.
    pub(crate) identity_agreement_key: SignedPrekeyJson,
    /// The identity key's public key.
    pub(crate) identity_public_key_pem: String,
}

/// A one-time prekey.
#[derive(Debug, Serialize)]
pub(crate) struct PrekeyJson {
    /// Its id.
    pub(crate) id: String,
    /// Its public key.
    pub(crate) public_key_pem: String,
}

/// A signed prekey.
#[derive(Debug, Serialize)]
pub(crate) struct SignedPrekeyJson {
    /// Its key id.
    pub(crate) id: String,
    /// Its public key.
    pub(crate) public_key_pem: String,
    /// When it was made.
    pub(crate) created_at: String,
    /// The identity key's signature over it, raw r||s or Ed25519, hex.
    pub(crate) signature: String,
}
