//! PostgreSQL, for several stateless server nodes sharing one database: whatever one node
//! learns (a registration, a revocation, a used nonce) every other node sees at once.
//!
//! - **Connections** are not encrypted (no TLS to the database yet): keep the database on a
//!   network only the servers reach.
//! - **Connections**: a bounded pool; a broken connection is dropped and made again. A
//!   connection string may name several hosts (`postgres://a,b/keyhaven?target_session_attrs=read-write`):
//!   a connection goes to the first that answers as writable, so nodes follow a failover.
//! - **Transactions** that fail to serialize (`40001`) or deadlock (`40P01`) are retried, the
//!   connection released between attempts.
//! - **Schema** migrations are versioned (`keyhaven_schema`), run under an advisory lock so
//!   nodes starting together migrate once.
//! - **Nonces** live in a table partitioned by the minute they may be forgotten in: the
//!   partition is part of the key and is computed from the signature itself (its `created`), so
//!   a replay always lands in the partition of the first use; expired partitions are dropped
//!   whole (`DROP TABLE`, two partitions after they end, each in a short transaction), never
//!   deleted row by row. At 10 000 requests/s and a 6-minute window
//!   that is 3.6 million rows in about 7 partitions, each written once and dropped once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keyhaven_client::wire::Stats;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Row, Transaction};

use super::{
    Change, Held, KeyTier, PolicyRecord, RevokedToken, SecretFallback, SecretMeta, SecretRecord,
    SecretSummary, Watcher, tier_of,
};
use super::{
    ClientRecord, KEY_COLUMNS, KeyColumns, KeyRecord, NewClient, NewKey, Result, Revoked, Storage,
    StorageError, Superseded, TransitKeyRecord, i64_of, like_pattern, role_of, u64_of, version_of,
};

/// Width of a nonce partition, in seconds.
const PARTITION: u64 = 60;

/// How many times a transaction that failed to serialize is tried.
const ATTEMPTS: u32 = 6;

/// The channel nodes notify each other's caches on (`LISTEN keyhaven_broker`).
const CHANNEL: &str = "keyhaven_broker";
/// How long a listener waits for a notification before it checks whether anyone still
/// watches.
const LISTEN_TICK: Duration = Duration::from_secs(5);
/// How long [`Storage::exclusive`] waits for another node's hold.
const LOCK_WAIT: &str = "60s";
/// The most connections of one node holding or waiting for an exclusive lock (each is a
/// connection of its own, outside the pool): beyond, a caller is told to come back.
const MAX_LOCKERS: usize = 4;

/// The schema, one migration per version.
const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE settings (name text PRIMARY KEY, value text NOT NULL);
     CREATE TABLE clients (
         id text PRIMARY KEY,
         name text NOT NULL,
         role text NOT NULL CHECK (role IN ('client', 'admin')),
         registered_at bigint NOT NULL
     );
     CREATE INDEX clients_by_time ON clients (registered_at);
     CREATE TABLE keys (
         fingerprint text PRIMARY KEY,
         client_id text NOT NULL REFERENCES clients (id),
         algorithm text NOT NULL,
         spki bytea NOT NULL,
         added_at bigint NOT NULL,
         seq bigserial,
         state text NOT NULL CHECK (state IN ('active', 'rotating', 'revoked')),
         until bigint,
         revoked_at bigint,
         reason text,
         revoked_by text,
         successor_of text
     );
     CREATE INDEX keys_by_client ON keys (client_id, added_at, seq);
     CREATE TABLE challenges (challenge text PRIMARY KEY, expires_at bigint NOT NULL);
     CREATE TABLE nonces (
         bucket bigint NOT NULL,
         keyid text NOT NULL,
         nonce text NOT NULL,
         PRIMARY KEY (bucket, keyid, nonce)
     ) PARTITION BY RANGE (bucket);",
    // 2: the audit trail, one hash chain per server process, and signed checkpoints.
    "CREATE TABLE audit (
         chain text NOT NULL,
         seq bigint NOT NULL,
         at bigint NOT NULL,
         operation text NOT NULL,
         principal text NOT NULL,
         key text,
         allowed boolean NOT NULL,
         reason text NOT NULL,
         prev text NOT NULL,
         hash text NOT NULL,
         PRIMARY KEY (chain, seq)
     );
     CREATE TABLE audit_checkpoints (
         id bigserial PRIMARY KEY,
         at bigint NOT NULL,
         chain text NOT NULL,
         statement text NOT NULL,
         keyid text NOT NULL,
         signature bytea NOT NULL
     );",
    // 3: the key broker's transit keys, each version's KEK stored wrapped under the master key.
    "CREATE TABLE transit_keys (
         tenant text NOT NULL,
         name text NOT NULL,
         created_at bigint NOT NULL,
         min_decryption_version bigint NOT NULL CHECK (min_decryption_version >= 1),
         PRIMARY KEY (tenant, name)
     );
     CREATE TABLE transit_versions (
         tenant text NOT NULL,
         name text NOT NULL,
         version bigint NOT NULL CHECK (version >= 1),
         wrapped bytea NOT NULL,
         created_at bigint NOT NULL,
         PRIMARY KEY (tenant, name, version),
         FOREIGN KEY (tenant, name) REFERENCES transit_keys (tenant, name)
     );
     CREATE TABLE secrets (
         tenant text NOT NULL,
         path text NOT NULL,
         tier smallint NOT NULL CHECK (tier BETWEEN 0 AND 4),
         min_tier smallint NOT NULL CHECK (min_tier BETWEEN 0 AND 4),
         created_at bigint NOT NULL,
         PRIMARY KEY (tenant, path)
     );
     CREATE TABLE secret_versions (
         tenant text NOT NULL,
         path text NOT NULL,
         version bigint NOT NULL CHECK (version >= 1),
         envelope bytea NOT NULL,
         created_at bigint NOT NULL,
         PRIMARY KEY (tenant, path, version),
         FOREIGN KEY (tenant, path) REFERENCES secrets (tenant, path)
     );
     CREATE TABLE key_tiers (
         fingerprint text PRIMARY KEY,
         tier smallint NOT NULL CHECK (tier BETWEEN 0 AND 4),
         vouched_by text NOT NULL,
         reason text NOT NULL,
         at bigint NOT NULL
     );
     CREATE TABLE revoked_tokens (
         id text PRIMARY KEY,
         tenant text NOT NULL,
         revoked_by text NOT NULL,
         reason text NOT NULL,
         at bigint NOT NULL
     );
     CREATE TABLE policies (
         prefix text PRIMARY KEY,
         source text NOT NULL,
         updated_at bigint NOT NULL,
         updated_by text NOT NULL
     );",
    // 4: what a requester below a secret's min_tier gets instead (a narrower capability).
    "CREATE TABLE secret_fallbacks (
         tenant text NOT NULL,
         path text NOT NULL,
         rights text NOT NULL,
         ttl bigint NOT NULL CHECK (ttl BETWEEN 1 AND 3600),
         declared_by text NOT NULL,
         at bigint NOT NULL,
         PRIMARY KEY (tenant, path),
         FOREIGN KEY (tenant, path) REFERENCES secrets (tenant, path)
     );",
];

/// The PostgreSQL store.
pub struct PostgresStorage {
    config: Config,
    what: String,
    pool: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    /// Connections [`Storage::exclusive`] holds or waits on (at most [`MAX_LOCKERS`]).
    lockers: std::sync::Arc<AtomicUsize>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("database", &self.what)
            .field("pool", &self.pool.len())
            .finish_non_exhaustive()
    }
}

fn key_row(row: &Row) -> std::result::Result<KeyRecord, postgres::Error> {
    Ok(KeyColumns {
        client_id: row.try_get(0)?,
        role: row.try_get(1)?,
        fingerprint: row.try_get(2)?,
        algorithm: row.try_get(3)?,
        spki: row.try_get(4)?,
        added_at: row.try_get(5)?,
        state: row.try_get(6)?,
        until: row.try_get(7)?,
        revoked_at: row.try_get(8)?,
        reason: row.try_get(9)?,
        revoked_by: row.try_get(10)?,
        successor_of: row.try_get(11)?,
    }
    .into())
}

impl Drop for PostgresStorage {
    /// A connection closes by blocking on its own runtime, which must not happen on an async
    /// thread (a server dropped at shutdown is): the connections are closed on a thread of
    /// their own.
    fn drop(&mut self) {
        let clients: Vec<Client> = self
            .pool
            .iter_mut()
            .filter_map(|m| m.get_mut().unwrap_or_else(PoisonError::into_inner).take())
            .collect();
        if !clients.is_empty() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

/// Whether retrying the transaction may succeed.
fn retryable(e: &StorageError) -> bool {
    matches!(e, StorageError::Retry(_))
}

impl PostgresStorage {
    /// Connects to `url` (a `postgres://` URL or a `key=value` connection string; several
    /// hosts allowed) with a pool of `pool` connections, and brings the schema up to date.
    ///
    /// # Errors
    /// [`StorageError::Database`] if the string does not parse, no host answers, or the
    /// schema is from a newer keyhaven.
    pub fn connect(url: &str, pool: usize) -> Result<Self> {
        let mut config: Config =
            url.parse()
                .map_err(|e: postgres::Error| StorageError::Database {
                    path: "the PostgreSQL connection string".into(),
                    reason: e.to_string(),
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let hosts = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(h) => h.clone(),
                postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let what = format!("postgresql://{hosts}/{}", config.get_dbname().unwrap_or(""));
        let storage = PostgresStorage {
            config,
            what,
            pool: (0..pool.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            lockers: std::sync::Arc::new(AtomicUsize::new(0)),
        };
        storage.migrate()?;
        Ok(storage)
    }

    fn err(&self, e: &postgres::Error) -> StorageError {
        if matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        ) {
            return StorageError::Retry(e.to_string());
        }
        StorageError::Database {
            path: self.what.clone(),
            reason: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        }
    }

    /// Tells every node watching (see [`Storage::watch`]) that `change` happened, when `tx`
    /// commits (PostgreSQL delivers a notification only then, and not for a rollback).
    fn notify(&self, tx: &mut Transaction<'_>, change: Change) -> Result<()> {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &change.as_str()])
            .map(|_| ())
            .map_err(|e| self.err(&e))
    }

    /// A connection of the pool (made, or made again, as needed).
    fn conn(&self) -> Result<MutexGuard<'_, Option<Client>>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.pool.len();
        // A free one if there is one, else wait for ours.
        let mut slot = (0..n)
            .find_map(|i| self.pool[(start + i) % n].try_lock().ok())
            .unwrap_or_else(|| {
                self.pool[start % n]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            });
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.config.connect(NoTls).map_err(|e| self.err(&e))?);
        }
        Ok(slot)
    }

    /// Runs `f` in a transaction, retrying serialization failures with the connection
    /// released between attempts; a broken connection is dropped.
    fn tx<T>(&self, f: impl Fn(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let mut slot = self.conn()?;
                let outcome = match slot.as_mut() {
                    Some(client) => match client.transaction() {
                        Ok(mut tx) => match f(&mut tx) {
                            Ok(v) => tx.commit().map(|()| v).map_err(|e| self.err(&e)),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(self.err(&e)),
                    },
                    None => Err(StorageError::Database {
                        path: self.what.clone(),
                        reason: "no connection".into(),
                    }),
                };
                if slot.as_ref().is_some_and(Client::is_closed) {
                    *slot = None;
                }
                outcome
            };
            match outcome {
                Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                }
                Err(StorageError::Retry(reason)) => {
                    return Err(StorageError::Database {
                        path: self.what.clone(),
                        reason: format!("{reason} ({ATTEMPTS} attempts)"),
                    });
                }
                other => return other,
            }
        }
    }

    fn migrate(&self) -> Result<()> {
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock(7020880546913632625)", &[])
                .map_err(|e| self.err(&e))?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS keyhaven_schema (version integer NOT NULL)",
            )
            .map_err(|e| self.err(&e))?;
            let version: i32 = tx
                .query_opt("SELECT version FROM keyhaven_schema", &[])
                .map_err(|e| self.err(&e))?
                .map_or(0, |r| r.get(0));
            let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
            if version > known {
                return Err(StorageError::Database {
                    path: self.what.clone(),
                    reason: format!(
                        "its schema is version {version}, newer than this keyhaven knows \
                         ({known}): run the keyhaven that wrote it"
                    ),
                });
            }
            for sql in MIGRATIONS
                .iter()
                .skip(usize::try_from(version).unwrap_or(0))
            {
                tx.batch_execute(sql).map_err(|e| self.err(&e))?;
            }
            tx.execute("DELETE FROM keyhaven_schema", &[])
                .map_err(|e| self.err(&e))?;
            tx.execute("INSERT INTO keyhaven_schema VALUES ($1)", &[&known])
                .map_err(|e| self.err(&e))?;
            Ok(())
        })
    }

    fn keys_of(&self, tx: &mut Transaction<'_>, client_id: &str) -> Result<Vec<KeyRecord>> {
        let rows = tx
            .query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM keys k JOIN clients c ON c.id = k.client_id
                     WHERE k.client_id = $1 ORDER BY k.added_at, k.seq"
                ),
                &[&client_id],
            )
            .map_err(|e| self.err(&e))?;
        rows.iter()
            .map(|r| key_row(r).map_err(|e| self.err(&e)))
            .collect()
    }

    fn client_in(&self, tx: &mut Transaction<'_>, id: &str) -> Result<Option<ClientRecord>> {
        let Some(row) = tx
            .query_opt(
                "SELECT id, name, role, registered_at FROM clients WHERE id = $1",
                &[&id],
            )
            .map_err(|e| self.err(&e))?
        else {
            return Ok(None);
        };
        let id: String = row.get(0);
        let keys = self.keys_of(tx, &id)?;
        Ok(Some(ClientRecord {
            name: row.get(1),
            role: role_of(&row.get::<_, String>(2)),
            registered_at: u64_of(row.get(3)),
            id,
            keys,
        }))
    }

    fn insert_key(
        &self,
        tx: &mut Transaction<'_>,
        client_id: &str,
        key: &NewKey,
        at: u64,
        successor_of: Option<&str>,
    ) -> Result<()> {
        let inserted = tx
            .execute(
                "INSERT INTO keys (fingerprint, client_id, algorithm, spki, added_at, state,
                                   successor_of)
                 VALUES ($1, $2, $3, $4, $5, 'active', $6) ON CONFLICT DO NOTHING",
                &[
                    &key.fingerprint,
                    &client_id,
                    &key.algorithm,
                    &key.spki,
                    &i64_of(at),
                    &successor_of,
                ],
            )
            .map_err(|e| self.err(&e))?;
        if inserted == 0 {
            return Err(StorageError::KeyExists(key.fingerprint.clone()));
        }
        Ok(())
    }
}

/// One record of the PostgreSQL audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// The chain (one per server process).
    pub chain: String,
    /// Its place in the chain, from 1.
    pub seq: u64,
    /// When (seconds since the epoch).
    pub at: u64,
    /// The decision.
    pub operation: String,
    /// Who asked.
    pub principal: String,
    /// The key concerned.
    pub key: Option<String>,
    /// Allowed or refused.
    pub allowed: bool,
    /// Why.
    pub reason: String,
    /// The previous record's hash (64 zeros for the first).
    pub prev: String,
    /// This record's hash: SHA-256 over `prev` and every field, length-prefixed.
    pub hash: String,
}

impl AuditRow {
    /// The hash this record must have.
    pub fn computed_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"keyhaven-server audit v1\0");
        let seq = self.seq.to_string();
        let at = self.at.to_string();
        let allowed = if self.allowed { "allowed" } else { "denied" };
        for field in [
            Some(self.prev.as_str()),
            Some(self.chain.as_str()),
            Some(seq.as_str()),
            Some(at.as_str()),
            Some(self.operation.as_str()),
            Some(self.principal.as_str()),
            self.key.as_deref(),
            Some(allowed),
            Some(self.reason.as_str()),
        ] {
            match field {
                Some(f) => {
                    h.update((f.len() as u64).to_be_bytes());
                    h.update(f.as_bytes());
                }
                None => h.update(u64::MAX.to_be_bytes()),
            }
        }
        hex::encode(h.finalize())
    }
}

/// A signed checkpoint over every chain's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// When.
    pub at: u64,
    /// The chain of the process that signed it.
    pub chain: String,
    /// The signed statement: `keyhaven-server audit checkpoint v1`, `at: T`, then one line
    /// `CHAIN SEQ HASH` per chain, sorted.
    pub statement: String,
    /// The signing key's fingerprint.
    pub keyid: String,
    /// The signature (the key's raw form: Ed25519's 64 bytes, ECDSA's r || s).
    pub signature: Vec<u8>,
}

impl PostgresStorage {
    /// Appends a record to its chain (the caller keeps the chain's head: one writer a chain).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn append_audit(&self, row: &AuditRow) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO audit (chain, seq, at, operation, principal, key, allowed, reason,
                                    prev, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &row.chain,
                    &i64_of(row.seq),
                    &i64_of(row.at),
                    &row.operation,
                    &row.principal,
                    &row.key,
                    &row.allowed,
                    &row.reason,
                    &row.prev,
                    &row.hash,
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(&e))
        })
    }

    /// Every chain's head: `(chain, seq, hash)`, by chain.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn audit_heads(&self) -> Result<Vec<(String, u64, String)>> {
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT DISTINCT ON (chain) chain, seq, hash FROM audit
                     ORDER BY chain, seq DESC",
                    &[],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| (r.get(0), u64_of(r.get(1)), r.get(2)))
                .collect())
        })
    }

    /// Stores a signed checkpoint.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn add_checkpoint(&self, c: &AuditCheckpoint) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO audit_checkpoints (at, chain, statement, keyid, signature)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &i64_of(c.at),
                    &c.chain,
                    &c.statement,
                    &c.keyid,
                    &c.signature,
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(&e))
        })
    }

    /// The allowed decisions of `operation`, oldest first: (when, who, why), at most `limit`.
    ///
    /// # Errors
    /// [`StorageError::Database`] if the trail cannot be read.
    pub fn audit_allowed(&self, operation: &str, limit: u32) -> Result<Vec<(u64, String, String)>> {
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT at, principal, reason FROM audit
                     WHERE operation = $1 AND allowed ORDER BY at, chain, seq LIMIT $2",
                    &[&operation, &i64::from(limit)],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| (u64_of(r.get(0)), r.get(1), r.get(2)))
                .collect())
        })
    }

    /// The whole trail: every record by chain and place, and every checkpoint in order.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn audit_trail(&self) -> Result<(Vec<AuditRow>, Vec<AuditCheckpoint>)> {
        self.tx(|tx| {
            let rows = tx
                .query(
                    "SELECT chain, seq, at, operation, principal, key, allowed, reason, prev, hash
                     FROM audit ORDER BY chain, seq",
                    &[],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| AuditRow {
                    chain: r.get(0),
                    seq: u64_of(r.get(1)),
                    at: u64_of(r.get(2)),
                    operation: r.get(3),
                    principal: r.get(4),
                    key: r.get(5),
                    allowed: r.get(6),
                    reason: r.get(7),
                    prev: r.get(8),
                    hash: r.get(9),
                })
                .collect();
            let checkpoints = tx
                .query(
                    "SELECT at, chain, statement, keyid, signature FROM audit_checkpoints
                     ORDER BY id",
                    &[],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| AuditCheckpoint {
                    at: u64_of(r.get(0)),
                    chain: r.get(1),
                    statement: r.get(2),
                    keyid: r.get(3),
                    signature: r.get(4),
                })
                .collect();
            Ok((rows, checkpoints))
        })
    }
}

/// A session-level advisory lock on a connection of its own, released when dropped.
struct AdvisoryLock {
    client: Client,
    key: i64,
    _slot: LockerSlot,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        // Closing the connection releases it too; unlocking first hands it on at once.
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key]);
    }
}

/// One of the [`MAX_LOCKERS`] places, given back when dropped.
struct LockerSlot(std::sync::Arc<AtomicUsize>);

impl Drop for LockerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The lock key of a name: the first 8 bytes of its SHA-256.
fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("keyhaven lock {name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Listens on [`CHANNEL`] and tells `watcher`, until it is dropped. Connects on its own
/// thread (the caller may be on an async runtime, where the synchronous client cannot start
/// one); connects again (with a growing pause, up to 30 s) when the connection breaks, and
/// after each connection tells [`Change::All`]: a notification sent while it was away is lost.
fn listen(config: &Config, what: &str, watcher: &std::sync::Weak<dyn Watcher>) {
    use postgres::fallible_iterator::FallibleIterator;
    let mut pause = Duration::from_millis(250);
    let mut client: Option<Client> = None;
    loop {
        if watcher.strong_count() == 0 {
            return;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            match config
                .connect(NoTls)
                .and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|()| c))
            {
                Ok(c) => {
                    client = Some(c);
                    pause = Duration::from_millis(250);
                    if let Some(w) = watcher.upgrade() {
                        w.changed(Change::All);
                    }
                }
                Err(e) => {
                    tracing::warn!(database = %what, error = %e, "the cache listener cannot connect yet");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
            continue;
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        let next = c.notifications().timeout_iter(LISTEN_TICK).next();
        match next {
            Ok(Some(n)) => {
                if let Some(w) = watcher.upgrade() {
                    w.changed(Change::parse(n.payload()));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(database = %what, error = %e, "the cache listener lost its connection");
                client = None;
            }
        }
    }
}

impl Storage for PostgresStorage {
    fn put_challenge(&self, challenge: &str, expires_at: u64) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO challenges (challenge, expires_at) VALUES ($1, $2)",
                &[&challenge, &i64_of(expires_at)],
            )
            .map(|_| ())
            .map_err(|e| self.err(&e))
        })
    }

    fn take_challenge(&self, challenge: &str, now: u64) -> Result<bool> {
        self.tx(|tx| {
            let row = tx
                .query_opt(
                    "DELETE FROM challenges WHERE challenge = $1 RETURNING expires_at",
                    &[&challenge],
                )
                .map_err(|e| self.err(&e))?;
            Ok(row.is_some_and(|r| u64_of(r.get(0)) > now))
        })
    }

    fn register(&self, client: &NewClient) -> Result<ClientRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO clients (id, name, role, registered_at) VALUES ($1, $2, $3, $4)",
                &[
                    &client.id,
                    &client.name,
                    &client.role.as_str(),
                    &i64_of(client.at),
                ],
            )
            .map_err(|e| self.err(&e))?;
            self.insert_key(tx, &client.id, &client.key, client.at, None)?;
            self.client_in(tx, &client.id)?
                .ok_or_else(|| StorageError::NoClient(client.id.clone()))
        })
    }

    fn key(&self, fingerprint: &str) -> Result<Option<KeyRecord>> {
        let mut slot = self.conn()?;
        let Some(client) = slot.as_mut() else {
            return Ok(None);
        };
        let row = client
            .query_opt(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM keys k JOIN clients c ON c.id = k.client_id
                     WHERE k.fingerprint = $1"
                ),
                &[&fingerprint],
            )
            .map_err(|e| self.err(&e));
        if client.is_closed() {
            *slot = None;
        }
        row?.map(|r| key_row(&r).map_err(|e| self.err(&e)))
            .transpose()
    }

    fn client(&self, id: &str) -> Result<Option<ClientRecord>> {
        self.tx(|tx| self.client_in(tx, id))
    }

    fn rotate(
        &self,
        client_id: &str,
        superseded: &[Superseded],
        new: &NewKey,
        at: u64,
    ) -> Result<ClientRecord> {
        self.tx(|tx| {
            if let Some(anchor) = superseded.first() {
                let state: Option<String> = tx
                    .query_opt(
                        "SELECT state FROM keys WHERE fingerprint = $1 AND client_id = $2
                         FOR UPDATE",
                        &[&anchor.old, &client_id],
                    )
                    .map_err(|e| self.err(&e))?
                    .map(|r| r.get(0));
                match state.as_deref() {
                    Some("active") => {}
                    Some(other) => {
                        return Err(StorageError::NotActive(format!(
                            "key {} is {other}: a rotation starts from an active key",
                            anchor.old
                        )));
                    }
                    None => return Err(StorageError::NoKey(anchor.old.clone())),
                }
            }
            for s in superseded {
                let owner: Option<String> = tx
                    .query_opt(
                        "SELECT client_id FROM keys WHERE fingerprint = $1 FOR UPDATE",
                        &[&s.old],
                    )
                    .map_err(|e| self.err(&e))?
                    .map(|r| r.get(0));
                if owner.as_deref() != Some(client_id) {
                    return Err(StorageError::NoKey(s.old.clone()));
                }
                tx.execute(
                    "UPDATE keys SET state = 'rotating',
                         until = CASE WHEN state = 'rotating' THEN LEAST(until, $2) ELSE $2 END
                     WHERE fingerprint = $1 AND state IN ('active', 'rotating')",
                    &[&s.old, &i64_of(s.until)],
                )
                .map_err(|e| self.err(&e))?;
            }
            let predecessor = superseded.last().map(|s| s.old.as_str());
            self.insert_key(tx, client_id, new, at, predecessor)?;
            self.client_in(tx, client_id)?
                .ok_or_else(|| StorageError::NoClient(client_id.to_owned()))
        })
    }

    fn revoke(&self, fingerprint: &str, at: u64, reason: &str, by: &str) -> Result<Revoked> {
        self.tx(|tx| {
            let state: Option<String> = tx
                .query_opt(
                    "SELECT state FROM keys WHERE fingerprint = $1 FOR UPDATE",
                    &[&fingerprint],
                )
                .map_err(|e| self.err(&e))?
                .map(|r| r.get(0));
            Ok(match state.as_deref() {
                None => Revoked::Unknown,
                Some("revoked") => Revoked::Already,
                Some(_) => {
                    tx.execute(
                        "UPDATE keys SET state = 'revoked', revoked_at = $2, reason = $3,
                             revoked_by = $4
                         WHERE fingerprint = $1",
                        &[&fingerprint, &i64_of(at), &reason, &by],
                    )
                    .map_err(|e| self.err(&e))?;
                    Revoked::Now
                }
            })
        })
    }

    fn search(&self, query: &str, limit: u32) -> Result<Vec<ClientRecord>> {
        let pattern = like_pattern(query);
        self.tx(|tx| {
            let ids: Vec<String> = tx
                .query(
                    "SELECT c.id FROM clients c
                     WHERE lower(c.name) LIKE $1 OR c.id LIKE $1
                        OR EXISTS (SELECT 1 FROM keys k WHERE k.client_id = c.id
                                   AND k.fingerprint LIKE $1)
                     ORDER BY c.registered_at, c.id LIMIT $2",
                    &[&pattern, &i64::from(limit)],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(c) = self.client_in(tx, &id)? {
                    out.push(c);
                }
            }
            Ok(out)
        })
    }

    fn stats(&self, now: u64) -> Result<Stats> {
        let now = i64_of(now);
        self.tx(|tx| {
            let r = tx
                .query_one(
                    "SELECT
                       (SELECT count(*) FROM clients),
                       (SELECT count(*) FROM keys WHERE state = 'active'),
                       (SELECT count(*) FROM keys WHERE state = 'rotating' AND until > $1),
                       (SELECT count(*) FROM keys WHERE state = 'rotating' AND until <= $1),
                       (SELECT count(*) FROM keys WHERE state = 'revoked'),
                       (SELECT count(*) FROM clients WHERE registered_at > $1 - 3600),
                       (SELECT count(*) FROM clients WHERE registered_at > $1 - 86400)",
                    &[&now],
                )
                .map_err(|e| self.err(&e))?;
            let n = |i: usize| u64_of(r.get::<_, i64>(i));
            Ok(Stats {
                clients: n(0),
                active_keys: n(1),
                rotating_keys: n(2),
                retired_keys: n(3),
                revoked_keys: n(4),
                registrations_last_hour: n(5),
                registrations_last_day: n(6),
            })
        })
    }

    fn use_nonce(&self, keyid: &str, nonce: &str, expires_at: u64) -> Result<bool> {
        let bucket = i64_of(expires_at / PARTITION + 1).min(i64::MAX - 1);
        for _ in 0..3 {
            let mut slot = self.conn()?;
            let Some(client) = slot.as_mut() else {
                continue;
            };
            match client.execute(
                "INSERT INTO nonces (bucket, keyid, nonce) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&bucket, &keyid, &nonce],
            ) {
                Ok(n) => return Ok(n == 1),
                // No partition for this minute yet: make it (any node may, once).
                Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    let made = client.batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS nonces_{bucket} PARTITION OF nonces
                         FOR VALUES FROM ({bucket}) TO ({})",
                        bucket + 1
                    ));
                    // Another node making it at the same moment fails some other way: the
                    // insert is simply tried again.
                    if let Err(e) = made {
                        tracing::debug!(error = %e, bucket, "a nonce partition was being made");
                    }
                }
                Err(e) => {
                    if client.is_closed() {
                        *slot = None;
                    }
                    return Err(self.err(&e));
                }
            }
        }
        Err(StorageError::Database {
            path: self.what.clone(),
            reason: "the nonce partition could not be made".into(),
        })
    }

    fn prune(&self, now: u64) -> Result<u64> {
        // A margin of two partitions: a node whose clock is behind, or an insert held back
        // behind a lock, must still find the partition of a nonce it could take as fresh.
        let last_gone = i64_of(now / PARTITION).saturating_sub(2);
        let partitions: Vec<(String, i64)> = self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT c.relname FROM pg_inherits i
                     JOIN pg_class c ON c.oid = i.inhrelid
                     JOIN pg_class p ON p.oid = i.inhparent
                     WHERE p.relname = 'nonces'",
                    &[],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .filter_map(|r| {
                    let name: String = r.get(0);
                    let bucket = name
                        .strip_prefix("nonces_")
                        .filter(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
                        .and_then(|b| b.parse::<i64>().ok())?;
                    Some((name, bucket))
                })
                .filter(|(_, b)| *b <= last_gone)
                .collect())
        })?;
        // One short transaction per partition, waiting at most a second for its lock: the
        // inserts of every node go on meanwhile.
        let mut gone = 0u64;
        for (name, _) in partitions {
            let dropped = self.tx(|tx| {
                tx.batch_execute(&format!(
                    "SET LOCAL lock_timeout = '1s'; DROP TABLE IF EXISTS \"{name}\""
                ))
                .map_err(|e| self.err(&e))
            });
            match dropped {
                Ok(()) => gone += 1,
                // Another node dropped it, or holds it: the next prune tries again.
                Err(e) => tracing::debug!(partition = %name, error = %e, "not pruned now"),
            }
        }
        let challenges = self.tx(|tx| {
            tx.execute(
                "DELETE FROM challenges WHERE expires_at < $1",
                &[&i64_of(now)],
            )
            .map_err(|e| self.err(&e))
        })?;
        Ok(gone + challenges)
    }

    fn setting(&self, name: &str) -> Result<Option<String>> {
        self.tx(|tx| {
            Ok(tx
                .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
                .map_err(|e| self.err(&e))?
                .map(|r| r.get(0)))
        })
    }

    fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .map(|_| ())
            .map_err(|e| self.err(&e))
        })
    }

    fn ping(&self) -> Result<()> {
        self.tx(|tx| {
            tx.execute("SELECT 1", &[])
                .map(|_| ())
                .map_err(|e| self.err(&e))
        })
    }

    fn transit_key(&self, tenant: &str, name: &str) -> Result<Option<TransitKeyRecord>> {
        self.tx(|tx| {
            let Some(head) = tx
                .query_opt(
                    "SELECT created_at, min_decryption_version FROM transit_keys
                     WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name],
                )
                .map_err(|e| self.err(&e))?
            else {
                return Ok(None);
            };
            let versions = tx
                .query(
                    "SELECT version, wrapped, created_at FROM transit_versions
                     WHERE tenant = $1 AND name = $2 ORDER BY version",
                    &[&tenant, &name],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| {
                    (
                        version_of(r.get(0)),
                        (r.get::<_, Vec<u8>>(1), u64_of(r.get(2))),
                    )
                })
                .collect();
            Ok(Some(TransitKeyRecord {
                name: name.to_owned(),
                created_at: u64_of(head.get(0)),
                min_decryption_version: version_of(head.get(1)),
                versions,
            }))
        })
    }

    fn transit_create(&self, tenant: &str, record: &TransitKeyRecord) -> Result<bool> {
        self.tx(|tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO transit_keys (tenant, name, created_at, min_decryption_version)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[
                        &tenant,
                        &record.name,
                        &i64_of(record.created_at),
                        &i64::from(record.min_decryption_version),
                    ],
                )
                .map_err(|e| self.err(&e))?;
            if inserted == 0 {
                return Ok(false);
            }
            for (version, (wrapped, at)) in &record.versions {
                tx.execute(
                    "INSERT INTO transit_versions (tenant, name, version, wrapped, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &tenant,
                        &record.name,
                        &i64::from(*version),
                        wrapped,
                        &i64_of(*at),
                    ],
                )
                .map_err(|e| self.err(&e))?;
            }
            Ok(true)
        })
    }

    fn transit_add_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        wrapped: &[u8],
        at: u64,
    ) -> Result<bool> {
        self.tx(|tx| {
            // The key's row locked: rotations of one key take turns, and the second sees
            // the first's version.
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM transit_keys WHERE tenant = $1 AND name = $2 FOR UPDATE",
                    &[&tenant, &name],
                )
                .map_err(|e| self.err(&e))?
                .is_some();
            if !exists {
                return Ok(false);
            }
            let latest: Option<i64> = tx
                .query_one(
                    "SELECT max(version) FROM transit_versions WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name],
                )
                .map_err(|e| self.err(&e))?
                .get(0);
            if latest.map(version_of).and_then(|v| v.checked_add(1)) != Some(version) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO transit_versions (tenant, name, version, wrapped, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&tenant, &name, &i64::from(version), &wrapped, &i64_of(at)],
            )
            .map_err(|e| self.err(&e))?;
            self.notify(tx, Change::Keys)?;
            Ok(true)
        })
    }

    fn transit_set_min_decryption_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<bool> {
        self.tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE transit_keys SET min_decryption_version = $3
                     WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name, &i64::from(version)],
                )
                .map_err(|e| self.err(&e))?;
            if changed > 0 {
                self.notify(tx, Change::Keys)?;
            }
            Ok(changed > 0)
        })
    }

    fn secret(&self, tenant: &str, path: &str) -> Result<Option<SecretRecord>> {
        self.tx(|tx| {
            let Some(head) = tx
                .query_opt(
                    "SELECT tier, min_tier, created_at FROM secrets
                     WHERE tenant = $1 AND path = $2",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?
            else {
                return Ok(None);
            };
            let versions = tx
                .query(
                    "SELECT version, envelope, created_at FROM secret_versions
                     WHERE tenant = $1 AND path = $2 ORDER BY version",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| (u64_of(r.get(0)), (r.get::<_, Vec<u8>>(1), u64_of(r.get(2)))))
                .collect();
            Ok(Some(SecretRecord {
                path: path.to_owned(),
                tier: tier_of(i64::from(head.get::<_, i16>(0))),
                min_tier: tier_of(i64::from(head.get::<_, i16>(1))),
                created_at: u64_of(head.get(2)),
                versions,
            }))
        })
    }

    fn secret_add_version(
        &self,
        tenant: &str,
        path: &str,
        meta: SecretMeta,
        version: u64,
        envelope: &[u8],
        at: u64,
    ) -> Result<bool> {
        self.tx(|tx| {
            // Made if missing, then locked: writers of one secret take turns.
            tx.execute(
                "INSERT INTO secrets (tenant, path, tier, min_tier, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &tenant,
                    &path,
                    &i16::from(meta.tier),
                    &i16::from(meta.min_tier),
                    &i64_of(at),
                ],
            )
            .map_err(|e| self.err(&e))?;
            let tier: i16 = tx
                .query_one(
                    "SELECT tier FROM secrets WHERE tenant = $1 AND path = $2 FOR UPDATE",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?
                .get(0);
            if tier_of(i64::from(tier)) != meta.tier {
                return Ok(false);
            }
            tx.execute(
                "UPDATE secrets SET min_tier = $3 WHERE tenant = $1 AND path = $2",
                &[&tenant, &path, &i16::from(meta.min_tier)],
            )
            .map_err(|e| self.err(&e))?;
            let latest: Option<i64> = tx
                .query_one(
                    "SELECT max(version) FROM secret_versions WHERE tenant = $1 AND path = $2",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?
                .get(0);
            if latest.map_or(0, u64_of).checked_add(1) != Some(version) {
                // Nothing of this attempt stays (a secret just made is rolled back too).
                return Err(StorageError::NotActive("raced".into()));
            }
            tx.execute(
                "INSERT INTO secret_versions (tenant, path, version, envelope, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&tenant, &path, &i64_of(version), &envelope, &i64_of(at)],
            )
            .map_err(|e| self.err(&e))?;
            Ok(true)
        })
        .or_else(|e| match e {
            StorageError::NotActive(_) => Ok(false),
            other => Err(other),
        })
    }

    fn secret_replace(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool> {
        self.tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE secret_versions SET envelope = $5
                     WHERE tenant = $1 AND path = $2 AND version = $3 AND envelope = $4",
                    &[&tenant, &path, &i64_of(version), &old, &new],
                )
                .map_err(|e| self.err(&e))?;
            Ok(changed > 0)
        })
    }

    fn secret_list(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SecretSummary>> {
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT s.path, s.tier, s.min_tier, s.created_at,
                            (SELECT max(version) FROM secret_versions v
                             WHERE v.tenant = s.tenant AND v.path = s.path)
                     FROM secrets s
                     WHERE s.tenant = $1 AND left(s.path, length($2)) = $2 AND s.path COLLATE \"C\" > $3
                     ORDER BY s.path COLLATE \"C\" LIMIT $4",
                    &[&tenant, &prefix, &after, &i64::from(limit)],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| SecretSummary {
                    path: r.get(0),
                    tier: tier_of(i64::from(r.get::<_, i16>(1))),
                    min_tier: tier_of(i64::from(r.get::<_, i16>(2))),
                    created_at: u64_of(r.get(3)),
                    latest_version: r.get::<_, Option<i64>>(4).map_or(0, u64_of),
                })
                .collect())
        })
    }

    fn secret_delete(&self, tenant: &str, path: &str) -> Result<bool> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM secret_fallbacks WHERE tenant = $1 AND path = $2",
                &[&tenant, &path],
            )
            .map_err(|e| self.err(&e))?;
            tx.execute(
                "DELETE FROM secret_versions WHERE tenant = $1 AND path = $2",
                &[&tenant, &path],
            )
            .map_err(|e| self.err(&e))?;
            let gone = tx
                .execute(
                    "DELETE FROM secrets WHERE tenant = $1 AND path = $2",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?;
            Ok(gone > 0)
        })
    }

    fn secret_fallback(&self, tenant: &str, path: &str) -> Result<Option<SecretFallback>> {
        self.tx(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT rights, ttl, declared_by, at FROM secret_fallbacks
                     WHERE tenant = $1 AND path = $2",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?
                .map(|r| SecretFallback {
                    rights: r.get(0),
                    ttl: u64_of(r.get(1)),
                    declared_by: r.get(2),
                    at: u64_of(r.get(3)),
                }))
        })
    }

    fn set_secret_fallback(
        &self,
        tenant: &str,
        path: &str,
        fallback: Option<&SecretFallback>,
    ) -> Result<bool> {
        self.tx(|tx| {
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM secrets WHERE tenant = $1 AND path = $2 FOR UPDATE",
                    &[&tenant, &path],
                )
                .map_err(|e| self.err(&e))?
                .is_some();
            if !exists {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM secret_fallbacks WHERE tenant = $1 AND path = $2",
                &[&tenant, &path],
            )
            .map_err(|e| self.err(&e))?;
            if let Some(f) = fallback {
                tx.execute(
                    "INSERT INTO secret_fallbacks (tenant, path, rights, ttl, declared_by, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &tenant,
                        &path,
                        &f.rights,
                        &i64_of(f.ttl),
                        &f.declared_by,
                        &i64_of(f.at),
                    ],
                )
                .map_err(|e| self.err(&e))?;
            }
            Ok(true)
        })
    }

    fn key_tier(&self, fingerprint: &str) -> Result<Option<KeyTier>> {
        self.tx(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT tier, vouched_by, reason, at FROM key_tiers WHERE fingerprint = $1",
                    &[&fingerprint],
                )
                .map_err(|e| self.err(&e))?
                .map(|r| KeyTier {
                    fingerprint: fingerprint.to_owned(),
                    tier: tier_of(i64::from(r.get::<_, i16>(0))),
                    vouched_by: r.get(1),
                    reason: r.get(2),
                    at: u64_of(r.get(3)),
                }))
        })
    }

    fn set_key_tier(&self, t: &KeyTier) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO key_tiers (fingerprint, tier, vouched_by, reason, at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (fingerprint) DO UPDATE SET tier = excluded.tier,
                     vouched_by = excluded.vouched_by, reason = excluded.reason,
                     at = excluded.at",
                &[
                    &t.fingerprint,
                    &i16::from(t.tier),
                    &t.vouched_by,
                    &t.reason,
                    &i64_of(t.at),
                ],
            )
            .map_err(|e| self.err(&e))?;
            self.notify(tx, Change::Tiers)
        })
    }

    fn revoke_token(&self, r: &RevokedToken) -> Result<bool> {
        self.tx(|tx| {
            let added = tx
                .execute(
                    "INSERT INTO revoked_tokens (id, tenant, revoked_by, reason, at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&r.id, &r.tenant, &r.revoked_by, &r.reason, &i64_of(r.at)],
                )
                .map_err(|e| self.err(&e))?;
            if added > 0 {
                self.notify(tx, Change::Tokens)?;
            }
            Ok(added > 0)
        })
    }

    fn revoked_token(&self, ids: &[String]) -> Result<Option<RevokedToken>> {
        self.tx(|tx| {
            let row = tx
                .query_opt(
                    "SELECT id, tenant, revoked_by, reason, at FROM revoked_tokens
                     WHERE id = ANY($1) ORDER BY array_position($1, id) LIMIT 1",
                    &[&ids],
                )
                .map_err(|e| self.err(&e))?;
            Ok(row.map(|r| RevokedToken {
                id: r.get(0),
                tenant: r.get(1),
                revoked_by: r.get(2),
                reason: r.get(3),
                at: u64_of(r.get(4)),
            }))
        })
    }

    fn put_policy(&self, p: &PolicyRecord) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO policies (prefix, source, updated_at, updated_by)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (prefix) DO UPDATE SET source = excluded.source,
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                &[&p.prefix, &p.source, &i64_of(p.updated_at), &p.updated_by],
            )
            .map_err(|e| self.err(&e))?;
            self.notify(tx, Change::Policies)
        })
    }

    fn delete_policy(&self, prefix: &str) -> Result<bool> {
        self.tx(|tx| {
            let gone = tx
                .execute("DELETE FROM policies WHERE prefix = $1", &[&prefix])
                .map_err(|e| self.err(&e))?;
            if gone > 0 {
                self.notify(tx, Change::Policies)?;
            }
            Ok(gone > 0)
        })
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT prefix, source, updated_at, updated_by FROM policies
                     ORDER BY prefix COLLATE \"C\"",
                    &[],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| PolicyRecord {
                    prefix: r.get(0),
                    source: r.get(1),
                    updated_at: u64_of(r.get(2)),
                    updated_by: r.get(3),
                })
                .collect())
        })
    }

    fn transit_list(&self, tenant: &str) -> Result<Vec<String>> {
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT name FROM transit_keys WHERE tenant = $1 ORDER BY name",
                    &[&tenant],
                )
                .map_err(|e| self.err(&e))?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn watch(&self, watcher: std::sync::Weak<dyn Watcher>) -> Result<()> {
        let mut config = self.config.clone();
        // A connection that died without a word (a cut cable, a failover) is found within a
        // minute, and the listener reconnects and drops every cache.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let what = self.what.clone();
        std::thread::Builder::new()
            .name("keyhaven-listen".into())
            .spawn(move || listen(&config, &what, &watcher))
            .map_err(|e| StorageError::Database {
                path: self.what.clone(),
                reason: format!("cannot start the cache listener: {e}"),
            })?;
        Ok(())
    }

    fn exclusive(&self, name: &str) -> Result<Box<dyn Held + '_>> {
        if self.lockers.fetch_add(1, Ordering::SeqCst) >= MAX_LOCKERS {
            self.lockers.fetch_sub(1, Ordering::SeqCst);
            return Err(StorageError::Database {
                path: self.what.clone(),
                reason: format!(
                    "{MAX_LOCKERS} exclusive operations are running or waiting on this node: \
                     try again when they are done"
                ),
            });
        }
        let slot = LockerSlot(std::sync::Arc::clone(&self.lockers));
        let key = lock_key(name);
        let mut client = self.config.connect(NoTls).map_err(|e| self.err(&e))?;
        client
            .batch_execute(&format!("SET lock_timeout = '{LOCK_WAIT}'"))
            .map_err(|e| self.err(&e))?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .map_err(|e| match e.code() {
                Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => StorageError::Database {
                    path: self.what.clone(),
                    reason: format!(
                        "another node has held '{name}' for {LOCK_WAIT}: try again when it is done"
                    ),
                },
                _ => self.err(&e),
            })?;
        Ok(Box::new(AdvisoryLock {
            client,
            key,
            _slot: slot,
        }))
    }
}
