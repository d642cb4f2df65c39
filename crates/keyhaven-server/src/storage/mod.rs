//! Where the server keeps its state: one trait, an embedded SQLite implementation, and the
//! conformance checks every implementation passes ([`conformance`]).
//!
//! The trait is synchronous: the server calls it on tokio's blocking pool, never on the async
//! threads. Every method is one transaction.

use keyhaven::envelope::transit::TransitKeyRecord;
use keyhaven_client::wire::{ClientView, KeyStatus, KeyView, RevokedView, Role, Stats};

pub mod conformance;
mod nonces;
mod postgres;
mod sqlite;

pub use postgres::{AuditCheckpoint, AuditRow, PostgresStorage};
pub use sqlite::SqliteStorage;

/// A result with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The key (by fingerprint) is registered already.
    #[error("key {0} is registered already")]
    KeyExists(String),
    /// No client has this id.
    #[error("no client {0}")]
    NoClient(String),
    /// The key a rotation starts from is no longer active (another rotation won).
    #[error("{0}")]
    NotActive(String),
    /// No client has this key.
    #[error("no registered key {0}")]
    NoKey(String),
    /// The authenticated record of the security state could not be written: the change was
    /// not made.
    #[error("the record of the server's state cannot be written: {0}")]
    Guard(String),
    /// A transaction failed to serialize or deadlocked; it may be tried again.
    #[error("the transaction conflicted with another: {0}")]
    Retry(String),
    /// The database failed (I/O, corruption, a schema from a newer keyhaven).
    #[error("the server database {path}: {reason}")]
    Database {
        /// The database.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// A client to register, with its first key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClient {
    /// Its id (32 hex digits, random).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When (seconds since the epoch).
    pub at: u64,
    /// Its first key.
    pub key: NewKey,
}

/// A key to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// SHA-256 of its SPKI DER, lowercase hex.
    pub fingerprint: String,
    /// `ed25519`, `p256` or `p384`.
    pub algorithm: String,
    /// Its SPKI DER.
    pub spki: Vec<u8>,
}

/// A registered key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Its client.
    pub client_id: String,
    /// Its client's role.
    pub role: Role,
    /// Fingerprint.
    pub fingerprint: String,
    /// Algorithm name.
    pub algorithm: String,
    /// SPKI DER.
    pub spki: Vec<u8>,
    /// When it was added.
    pub added_at: u64,
    /// The stored state.
    pub state: KeyState,
    /// The key it succeeds, if it came by rotation.
    pub successor_of: Option<String>,
}

/// The columns of a key row, as both stores read them (`k.*` joined with its client's role).
pub(crate) const KEY_COLUMNS: &str = "k.client_id, c.role, k.fingerprint, k.algorithm, k.spki, \
     k.added_at, k.state, k.until, k.revoked_at, k.reason, k.revoked_by, k.successor_of";

/// A key row's fields, in [`KEY_COLUMNS`] order, as the stores read them.
pub(crate) struct KeyColumns {
    pub(crate) client_id: String,
    pub(crate) role: String,
    pub(crate) fingerprint: String,
    pub(crate) algorithm: String,
    pub(crate) spki: Vec<u8>,
    pub(crate) added_at: i64,
    pub(crate) state: String,
    pub(crate) until: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) reason: Option<String>,
    pub(crate) revoked_by: Option<String>,
    pub(crate) successor_of: Option<String>,
}

/// A time as the databases store it (a signed 64-bit integer).
pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored time (a negative one, never written, reads as 0).
pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A stored role.
pub(crate) fn role_of(s: &str) -> Role {
    if s == "admin" {
        Role::Admin
    } else {
        Role::Client
    }
}

/// A `LIKE` pattern matching `query` anywhere, its wildcards taken literally (escape `\`).
pub(crate) fn like_pattern(query: &str) -> String {
    format!(
        "%{}%",
        query
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

impl From<KeyColumns> for KeyRecord {
    fn from(c: KeyColumns) -> Self {
        let state = match c.state.as_str() {
            "rotating" => KeyState::Rotating {
                until: u64_of(c.until.unwrap_or(0)),
            },
            "revoked" => KeyState::Revoked {
                at: u64_of(c.revoked_at.unwrap_or(0)),
                reason: c.reason.unwrap_or_default(),
                by: c.revoked_by.unwrap_or_default(),
            },
            _ => KeyState::Active,
        };
        KeyRecord {
            client_id: c.client_id,
            role: role_of(&c.role),
            fingerprint: c.fingerprint,
            algorithm: c.algorithm,
            spki: c.spki,
            added_at: u64_of(c.added_at),
            state,
            successor_of: c.successor_of,
        }
    }
}

/// A key's stored state: the status it has at a given time follows ([`KeyRecord::status_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Accepted.
    Active,
    /// Superseded; accepted until `until`.
    Rotating {
        /// The end of its migration window.
        until: u64,
    },
    /// Revoked.
    Revoked {
        /// When.
        at: u64,
        /// Why.
        reason: String,
        /// By whom.
        by: String,
    },
}

impl KeyRecord {
    /// Its status at `now`: a rotating key whose window has ended is retired.
    pub fn status_at(&self, now: u64) -> KeyStatus {
        match &self.state {
            KeyState::Active => KeyStatus::Active,
            KeyState::Rotating { until } if now < *until => KeyStatus::Rotating,
            KeyState::Rotating { .. } => KeyStatus::Retired,
            KeyState::Revoked { .. } => KeyStatus::Revoked,
        }
    }

    /// Its view at `now`.
    pub fn view(&self, now: u64) -> KeyView {
        KeyView {
            fingerprint: self.fingerprint.clone(),
            algorithm: self.algorithm.clone(),
            status: self.status_at(now),
            added_at: self.added_at,
            until: match &self.state {
                KeyState::Rotating { until } => Some(*until),
                _ => None,
            },
            revoked: match &self.state {
                KeyState::Revoked { at, reason, by } => Some(RevokedView {
                    at: *at,
                    reason: reason.clone(),
                    by: by.clone(),
                }),
                _ => None,
            },
            successor_of: self.successor_of.clone(),
        }
    }
}

/// A client as stored, with its keys (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it registered.
    pub registered_at: u64,
    /// Its keys.
    pub keys: Vec<KeyRecord>,
}

impl ClientRecord {
    /// Its view at `now`.
    pub fn view(&self, now: u64) -> ClientView {
        ClientView {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            registered_at: self.registered_at,
            keys: self.keys.iter().map(|k| k.view(now)).collect(),
        }
    }
}

/// What a revocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The key is revoked now.
    Now,
    /// It was revoked before (its first revocation stands).
    Already,
    /// No client has it.
    Unknown,
}

/// One step of a rotation: `old` is superseded (accepted until `until`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The old key's fingerprint.
    pub old: String,
    /// The end of its migration window.
    pub until: u64,
}

/// Told of every change to the security state (clients, keys, settings) of a store, with the
/// digest of that state before and after: what keeps an authenticated record of it, so a
/// change made behind the server's back (a row edited, added or removed, the file rolled back)
/// is found. See `SqliteStorage::set_guard`.
pub trait CommitGuard: Send + Sync + 'static {
    /// Inside the change's transaction, before it commits: `next` is the digest the state
    /// will have once it does. An error aborts the change.
    ///
    /// # Errors
    /// The record cannot be written.
    fn before_commit(&self, current: &str, next: &str) -> Result<(), String>;

    /// After the commit.
    ///
    /// # Errors
    /// The record cannot be written (the change stands; the record still names it as
    /// pending, which the next start accepts).
    fn after_commit(&self, next: &str) -> Result<(), String>;
}

/// The server's state.
pub trait Storage: Send + Sync + 'static {
    /// Keeps a registration challenge until `expires_at`.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn put_challenge(&self, challenge: &str, expires_at: u64) -> Result<()>;

    /// Uses up a challenge: `true` if it was issued and has not expired at `now` (it is then
    /// gone, whatever this returns).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn take_challenge(&self, challenge: &str, now: u64) -> Result<bool>;

    /// Registers a client with its first key.
    ///
    /// # Errors
    /// [`StorageError::KeyExists`] if the key is registered (to anyone), or
    /// [`StorageError::Database`].
    fn register(&self, client: &NewClient) -> Result<ClientRecord>;

    /// The key with this fingerprint.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn key(&self, fingerprint: &str) -> Result<Option<KeyRecord>>;

    /// The key with this fingerprint if the store holds it in memory: an answer without
    /// I/O, so the server may check a signature on its async threads. Only a store that keeps
    /// such a cache coherent with every change answers (the default never does).
    fn key_if_cached(&self, _fingerprint: &str) -> Option<KeyRecord> {
        None
    }

    /// Whether [`Storage::use_nonce`] answers from memory, without I/O.
    fn nonces_in_memory(&self) -> bool {
        false
    }

    /// The client with this id.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn client(&self, id: &str) -> Result<Option<ClientRecord>>;

    /// Adds `new` to client `client_id` as its active key, succeeding the keys in `superseded`
    /// (each of that client; each becomes rotating until its `until`, unless revoked). The
    /// first of them anchors the rotation and must be active, checked in the same
    /// transaction.
    ///
    /// # Errors
    /// [`StorageError::KeyExists`] if `new` is registered, [`StorageError::NoKey`] if a
    /// superseded key is not the client's, [`StorageError::NotActive`] if the anchor is not
    /// active, [`StorageError::Database`].
    fn rotate(
        &self,
        client_id: &str,
        superseded: &[Superseded],
        new: &NewKey,
        at: u64,
    ) -> Result<ClientRecord>;

    /// Revokes a key (a revoked key stays revoked: its first reason stands).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn revoke(&self, fingerprint: &str, at: u64, reason: &str, by: &str) -> Result<Revoked>;

    /// Clients whose name, id or a key fingerprint contains `query` (case-insensitive; all when
    /// empty), by registration time, at most `limit`.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn search(&self, query: &str, limit: u32) -> Result<Vec<ClientRecord>>;

    /// Counts for monitoring, at `now`.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn stats(&self, now: u64) -> Result<Stats>;

    /// Records that `keyid` used `nonce`, kept until `expires_at`: `false` if it was used
    /// before with the same `expires_at` (a replay: the server computes `expires_at` from
    /// the signature's own `created`, so a replay always brings the same one). Atomic across every server sharing this store (the embedded store
    /// has one server).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn use_nonce(&self, keyid: &str, nonce: &str, expires_at: u64) -> Result<bool>;

    /// Forgets nonces and challenges that expired before `now` (a store may keep them a
    /// little longer, never shorter); returns how many went (nonces may be counted by the
    /// partition).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn prune(&self, now: u64) -> Result<u64>;

    /// A setting (`server-key`, ...).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn setting(&self, name: &str) -> Result<Option<String>>;

    /// Sets a setting.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn set_setting(&self, name: &str, value: &str) -> Result<()>;

    /// Whether the store answers (for `/readyz`).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn ping(&self) -> Result<()>;

    /// The transit key `name` of `tenant`, with every version (wrapped).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn transit_key(&self, tenant: &str, name: &str) -> Result<Option<TransitKeyRecord>>;

    /// Creates a transit key with its versions; `false` (nothing written) if `tenant` has a
    /// key of that name.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn transit_create(&self, tenant: &str, record: &TransitKeyRecord) -> Result<bool>;

    /// Adds `version` to a transit key, checked in the transaction to be its latest plus one;
    /// `false` if it is not (another rotation won) or the key does not exist.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn transit_add_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        wrapped: &[u8],
        at: u64,
    ) -> Result<bool>;

    /// Sets a transit key's `min_decryption_version`; `false` if the key does not exist.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn transit_set_min_decryption_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<bool>;

    /// The names of `tenant`'s transit keys, sorted.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn transit_list(&self, tenant: &str) -> Result<Vec<String>>;

    /// The secret at `path` of `tenant`, with every version.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn secret(&self, tenant: &str, path: &str) -> Result<Option<SecretRecord>>;

    /// Writes `version` of a secret (made with `meta` when it does not exist yet; an existing
    /// one takes `meta.min_tier`), checked in the transaction: `false` (nothing written) if
    /// `version` is not the latest plus one, or the secret exists at another tier.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn secret_add_version(
        &self,
        tenant: &str,
        path: &str,
        meta: SecretMeta,
        version: u64,
        envelope: &[u8],
        at: u64,
    ) -> Result<bool>;

    /// Replaces one version's envelope if it is still `old` (a rewrap under a new KEK);
    /// `false` if it changed meanwhile or is gone.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn secret_replace(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool>;

    /// `tenant`'s secrets whose path starts with `prefix` and sorts after `after`, by path,
    /// at most `limit` (page on with the last path as `after`).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn secret_list(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SecretSummary>>;

    /// Deletes a secret, every version and its fallback; `false` if there was none.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn secret_delete(&self, tenant: &str, path: &str) -> Result<bool>;

    /// What a requester below the secret's `min_tier` gets instead, if its owner said.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn secret_fallback(&self, tenant: &str, path: &str) -> Result<Option<SecretFallback>>;

    /// Sets (or, with `None`, removes) a secret's fallback; `false` if there is no such
    /// secret.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn set_secret_fallback(
        &self,
        tenant: &str,
        path: &str,
        fallback: Option<&SecretFallback>,
    ) -> Result<bool>;

    /// The tier an admin vouched for a registered key (what its protection earns it).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn key_tier(&self, fingerprint: &str) -> Result<Option<KeyTier>>;

    /// Records (or replaces) the tier vouched for a key.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn set_key_tier(&self, tier: &KeyTier) -> Result<()>;

    /// Revokes a capability token's revocation id (every node sharing the store refuses it
    /// from then on); `false` if it was revoked before (its first revocation stands).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn revoke_token(&self, revoked: &RevokedToken) -> Result<bool>;

    /// The first of `ids` that is revoked, if any.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn revoked_token(&self, ids: &[String]) -> Result<Option<RevokedToken>>;

    /// Loads (or replaces) the release policy of a path prefix.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn put_policy(&self, policy: &PolicyRecord) -> Result<()>;

    /// Removes the policy of `prefix`; `false` if there was none.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn delete_policy(&self, prefix: &str) -> Result<bool>;

    /// Every release policy, by prefix.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    fn policies(&self) -> Result<Vec<PolicyRecord>>;

    /// Tells `watcher` whenever a node sharing this store changes what nodes cache (release
    /// policies, revoked tokens, vouched tiers, transit keys and KEKs), and
    /// [`Change::All`] after it may have missed something (its listener reconnected). It
    /// watches until `watcher` is dropped. The embedded store serves one process, which
    /// knows its own changes: nothing to watch there (the default).
    ///
    /// # Errors
    /// [`StorageError::Database`] if the watch cannot start.
    fn watch(&self, watcher: std::sync::Weak<dyn Watcher>) -> Result<()> {
        let _ = watcher;
        Ok(())
    }

    /// Holds the lock `name` across every node sharing this store until the guard is
    /// dropped (a KEK rotation runs on one node at a time). Waits for a node holding it, up
    /// to a minute.
    ///
    /// # Errors
    /// [`StorageError::Database`] if the store is away or the wait times out.
    fn exclusive(&self, name: &str) -> Result<Box<dyn Held + '_>>;
}

/// What changed in the shared store, as a node tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A release policy was loaded or removed.
    Policies,
    /// A capability token was revoked.
    Tokens,
    /// An admin vouched a key's tier.
    Tiers,
    /// A transit key or KEK was rotated or its settings changed.
    Keys,
    /// Anything may have changed (a listener reconnected and may have missed some).
    All,
}

impl Change {
    /// The name a notification carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Policies => "policies",
            Change::Tokens => "tokens",
            Change::Tiers => "tiers",
            Change::Keys => "keys",
            Change::All => "all",
        }
    }

    /// The change a notification names (an unknown name is [`Change::All`]).
    pub fn parse(name: &str) -> Change {
        [
            Change::Policies,
            Change::Tokens,
            Change::Tiers,
            Change::Keys,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
        .unwrap_or(Change::All)
    }
}

/// What [`Storage::watch`] tells.
pub trait Watcher: Send + Sync {
    /// `change` happened on some node (this one's own changes may be told too).
    fn changed(&self, change: Change);
}

/// A held lock (see [`Storage::exclusive`]): released when dropped.
pub trait Held {}
impl<T> Held for T {}

/// A release policy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// The path prefix it covers (empty: every path).
    pub prefix: String,
    /// Its Rego source.
    pub source: String,
    /// When it was loaded.
    pub updated_at: u64,
    /// The admin client who loaded it.
    pub updated_by: String,
}

/// A revoked capability token id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    /// The revocation id (hex).
    pub id: String,
    /// The tenant whose token it was.
    pub tenant: String,
    /// Who revoked it (a client id).
    pub revoked_by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: u64,
}

/// A secret as stored: its tier, the lowest tier it is released at, and every version's
/// envelope (`keyhaven::envelope::Envelope::to_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// Its path.
    pub path: String,
    /// The tier its KEK is scoped to.
    pub tier: u8,
    /// The lowest requester tier it is released to.
    pub min_tier: u8,
    /// When it was first written.
    pub created_at: u64,
    /// Each version's envelope and when it was written.
    pub versions: std::collections::BTreeMap<u64, (Vec<u8>, u64)>,
}

impl SecretRecord {
    /// The newest version (0 for none).
    pub fn latest_version(&self) -> u64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }
}

/// A secret's settings, given when a version is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretMeta {
    /// The tier its KEK is scoped to (fixed when it is made).
    pub tier: u8,
    /// The lowest requester tier it is released to.
    pub min_tier: u8,
}

/// What a requester below a secret's `min_tier` gets instead of the secret: a capability
/// token of these rights on the owner's resources, held by the requester's key, for `ttl`
/// seconds, minted in the name of the owner's key that declared it (revoked, its fallbacks
/// stop working).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFallback {
    /// The rights, as JSON: `[{"operation": ..., "prefix": ...}]`.
    pub rights: String,
    /// How long a capability lasts, in seconds.
    pub ttl: u64,
    /// The owner's key that declared it.
    pub declared_by: String,
    /// When.
    pub at: u64,
}

/// A secret in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSummary {
    /// Its path.
    pub path: String,
    /// Its tier.
    pub tier: u8,
    /// The lowest tier it is released to.
    pub min_tier: u8,
    /// Its newest version.
    pub latest_version: u64,
    /// When it was first written.
    pub created_at: u64,
}

/// The tier an admin vouched for a registered key: that it lives in hardware (a PKCS#11
/// token, a TPM) the admin enrolled, which the key's signature alone cannot show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTier {
    /// The key.
    pub fingerprint: String,
    /// The tier (0 to 2: higher tiers come from attestation evidence only).
    pub tier: u8,
    /// The admin client who vouched.
    pub vouched_by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: u64,
}

/// One tenant's transit keys in a [`Storage`]: what the transit engine reads and writes.
pub struct TenantTransit {
    /// The store.
    pub storage: std::sync::Arc<dyn Storage>,
    /// The tenant.
    pub tenant: String,
}

/// A store failure as the transit engine reports it (kept whole, as the source).
fn envelope_error(e: StorageError) -> keyhaven::envelope::EnvelopeError {
    let kind = match e {
        StorageError::Guard(_) => keyhaven::ErrorKind::Corrupt,
        _ => keyhaven::ErrorKind::Unavailable,
    };
    keyhaven::envelope::EnvelopeError::Backend(keyhaven::CoreError::other(
        kind,
        "server-database",
        e,
    ))
}

impl keyhaven::envelope::transit::TransitStore for TenantTransit {
    fn load(&self, name: &str) -> keyhaven::envelope::Result<Option<TransitKeyRecord>> {
        self.storage
            .transit_key(&self.tenant, name)
            .map_err(envelope_error)
    }

    fn create(&self, record: &TransitKeyRecord) -> keyhaven::envelope::Result<bool> {
        self.storage
            .transit_create(&self.tenant, record)
            .map_err(envelope_error)
    }

    fn add_version(
        &self,
        name: &str,
        version: u32,
        wrapped: &[u8],
        at: u64,
    ) -> keyhaven::envelope::Result<bool> {
        self.storage
            .transit_add_version(&self.tenant, name, version, wrapped, at)
            .map_err(envelope_error)
    }

    fn set_min_decryption_version(
        &self,
        name: &str,
        version: u32,
    ) -> keyhaven::envelope::Result<bool> {
        self.storage
            .transit_set_min_decryption_version(&self.tenant, name, version)
            .map_err(envelope_error)
    }
}

/// A stored transit version number (a negative or oversized one, never written, reads as 0,
/// which no key has).
pub(crate) fn version_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A stored tier (one out of range, never written, reads as 0, the lowest).
pub(crate) fn tier_of(v: i64) -> u8 {
    u8::try_from(v).ok().filter(|t| *t <= 4).unwrap_or(0)
}
