//! The record format: one canonical JSON object per line, hash-chained.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format version written in every record.
pub const FORMAT_VERSION: u32 = 1;

/// The outcome of an audited operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The operation was allowed and succeeded.
    Allowed,
    /// The operation was refused (access control, revocation, ...).
    Denied,
    /// The operation was allowed but failed.
    Failed,
    /// Written before a private-key operation runs (write-ahead): the operation is about to be
    /// attempted, and its outcome record (allowed, denied or failed) follows. An intent with no
    /// outcome after it means the process stopped mid-operation: treat the key as possibly used.
    Intent,
}

/// One audited key operation: what the caller supplies to [`crate::AuditLog::append`].
///
/// Never put data or secrets here: `digest` holds only the hex SHA-256 of what was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who asked (user, service account, ...).
    pub principal: String,
    /// The host the operation ran on.
    pub host: String,
    /// The process id of the caller.
    pub pid: u32,
    /// The operation (`sign`, `generate`, `delete`, ...).
    pub operation: String,
    /// The key the operation used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key version, if the key is versioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    /// The backend kind (`file`, `pkcs11`, ...).
    pub backend: String,
    /// Allowed, denied or failed.
    pub outcome: Outcome,
    /// Why it was denied or failed (or a note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Lowercase hex SHA-256 of the signed message or digest (never the data itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The caller's request or message id, for replay detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The network address the caller came from, when a server acted for a remote client
    /// (`host` is then the server's host): where the client's key was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// In an outcome record: the sequence number of the intent record it closes (so
    /// [`crate::verify`] tells which operations have no outcome exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<u64>,
}

impl Event {
    /// An event for `operation` by `principal` on `backend`, with this host and process id.
    pub fn new(
        principal: impl Into<String>,
        operation: impl Into<String>,
        backend: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Event {
            principal: principal.into(),
            host: hostname(),
            pid: std::process::id(),
            operation: operation.into(),
            key_id: None,
            key_version: None,
            backend: backend.into(),
            outcome,
            reason: None,
            digest: None,
            request_id: None,
            address: None,
            intent: None,
        }
    }

    /// Sets the key id (and optional version).
    #[must_use]
    pub fn key(mut self, key_id: impl Into<String>, version: Option<u32>) -> Self {
        self.key_id = Some(key_id.into());
        self.key_version = version;
        self
    }

    /// Sets the reason.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Records the SHA-256 of the signed data (the data itself is not kept).
    #[must_use]
    pub fn signed_data(mut self, data: &[u8]) -> Self {
        self.digest = Some(hex::encode(Sha256::digest(data)));
        self
    }

    /// Sets the request id.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the remote client's network address.
    #[must_use]
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Where the key was used: the remote client's address when a server acted for one
    /// (`address 192.0.2.7`), otherwise the host the operation ran on.
    pub fn location(&self) -> std::borrow::Cow<'_, str> {
        match &self.address {
            Some(a) => std::borrow::Cow::Owned(format!("address {a}")),
            None => std::borrow::Cow::Borrowed(&self.host),
        }
    }
}

/// The host name (from `/proc/sys/kernel/hostname`, `/etc/hostname`, or `$HOSTNAME`), read once.
pub fn hostname() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(read_hostname).clone()
}

fn read_hostname() -> String {
    for p in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_owned();
            }
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned())
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Body {
    /// The first record of every file: the log's identity and the file's number.
    Header {
        /// Random id of the whole log (all files), hex.
        log_id: String,
        /// The file number (`audit.N.log`).
        file: u64,
    },
    /// An audited operation.
    Event(Event),
    /// A signed statement of the chain head.
    Checkpoint {
        /// Records before this one (equals this record's `seq`).
        count: u64,
        /// The chain head: hash of the previous line (equals this record's `prev`).
        head: String,
        /// The audit key's id in its store.
        key_id: String,
        /// The signature algorithm (short name).
        algorithm: String,
        /// The raw signature, hex.
        signature: String,
    },
    /// The log was damaged and recovered (`keyhaven audit recover`): the damaged files were set
    /// aside, kept as evidence, and the chain goes on from the last good record. Signed by
    /// the audit key, so only someone who can use it records a break, and verification
    /// reports every break.
    Break {
        /// Where verification first failed, and why.
        at: String,
        /// The files set aside (renamed, never deleted).
        damaged: Vec<DamagedFile>,
        /// The audit key's id in its store.
        key_id: String,
        /// The signature algorithm (short name).
        algorithm: String,
        /// The raw signature over [`break_message`], hex.
        signature: String,
    },
    /// A torn (partial) last line, left by a crashed writer, was cut off before this record.
    Recovery {
        /// How many bytes were cut.
        truncated_bytes: u64,
        /// SHA-256 of the cut bytes, hex.
        fragment_sha256: String,
    },
}

/// A log file set aside by a recovery: where it is kept and what it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DamagedFile {
    /// Its file name now (in the log's directory).
    pub kept_as: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Format version.
    pub v: u32,
    /// Sequence number across the whole log (all files), from 0.
    pub seq: u64,
    /// Hex SHA-256 of the previous line's bytes (without its newline), or the genesis value.
    pub prev: String,
    /// Time, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// Time, nanoseconds since the Unix epoch.
    pub unix_nanos: u64,
    /// What the record says.
    pub body: Body,
}

/// SHA-256 of a line's bytes, hex.
pub(crate) fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The genesis `prev` of a log's first record.
pub(crate) fn genesis(log_id: &str) -> String {
    line_hash(format!("keyhaven-audit/v1 genesis\n{log_id}").as_bytes())
}

/// The bytes a checkpoint signature covers.
pub(crate) fn checkpoint_message(log_id: &str, count: u64, head: &str) -> Vec<u8> {
    format!("keyhaven-audit/v1 checkpoint\n{log_id}\n{count}\n{head}\n").into_bytes()
}

/// The bytes a break's signature covers: the log, the break's place in the chain, where the
/// damage was found, and every file set aside.
pub(crate) fn break_message(
    log_id: &str,
    seq: u64,
    prev: &str,
    time: &str,
    key_id: &str,
    at: &str,
    damaged: &[DamagedFile],
) -> Vec<u8> {
    // One JSON document (strings escaped, fields named): no two breaks sign the same bytes.
    let doc = serde_json::json!({
        "statement": "keyhaven-audit/v1 break",
        "log_id": log_id,
        "seq": seq,
        "prev": prev,
        "time": time,
        "key_id": key_id,
        "at": at,
        "damaged": damaged,
    });
    doc.to_string().into_bytes()
}

/// Now, as (RFC 3339, unix nanos).
pub(crate) fn now() -> (String, u64) {
    let t = keyhaven_core::now();
    let nanos = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    (humantime::format_rfc3339_nanos(t).to_string(), nanos)
}
