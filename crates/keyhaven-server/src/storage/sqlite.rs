//! The embedded store: one SQLite database in the keyhaven home (WAL), needing nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keyhaven::fs;
use keyhaven_client::wire::Stats;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};
use sha2::{Digest, Sha256};

use super::nonces::NonceWindow;
use super::{
    ClientRecord, CommitGuard, KEY_COLUMNS, KeyColumns, KeyRecord, KeyTier, NewClient, NewKey,
    PolicyRecord, Result, Revoked, RevokedToken, SecretFallback, SecretMeta, SecretRecord,
    SecretSummary, Storage, StorageError, Superseded, TransitKeyRecord, i64_of, like_pattern,
    role_of, tier_of, u64_of, version_of,
};

/// The schema, one migration per version; `PRAGMA user_version` says how many ran. The schema
/// is part of the digest the home records (a trigger planted in the file must show), so a
/// later migration must record the new digest as it runs.
const MIGRATIONS: &[&str] = &[
    // 1: clients, their keys, challenges, settings.
    "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE clients (
         id TEXT PRIMARY KEY,
         name TEXT NOT NULL,
         role TEXT NOT NULL CHECK (role IN ('client', 'admin')),
         registered_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE keys (
         fingerprint TEXT PRIMARY KEY,
         client_id TEXT NOT NULL REFERENCES clients(id),
         algorithm TEXT NOT NULL,
         spki BLOB NOT NULL,
         added_at INTEGER NOT NULL,
         state TEXT NOT NULL CHECK (state IN ('active', 'rotating', 'revoked')),
         until INTEGER,
         revoked_at INTEGER,
         reason TEXT,
         revoked_by TEXT,
         successor_of TEXT
     );
     CREATE INDEX keys_by_client ON keys(client_id, added_at);
     CREATE INDEX clients_by_time ON clients(registered_at);
     CREATE TABLE challenges (challenge TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;",
    // 2: the key broker's transit keys, each version's KEK stored wrapped under the master key.
    "CREATE TABLE transit_keys (
         tenant TEXT NOT NULL,
         name TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         min_decryption_version INTEGER NOT NULL CHECK (min_decryption_version >= 1),
         PRIMARY KEY (tenant, name)
     ) WITHOUT ROWID;
     CREATE TABLE transit_versions (
         tenant TEXT NOT NULL,
         name TEXT NOT NULL,
         version INTEGER NOT NULL CHECK (version >= 1),
         wrapped BLOB NOT NULL,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (tenant, name, version),
         FOREIGN KEY (tenant, name) REFERENCES transit_keys (tenant, name)
     ) WITHOUT ROWID;
     CREATE TABLE secrets (
         tenant TEXT NOT NULL,
         path TEXT NOT NULL,
         tier INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 4),
         min_tier INTEGER NOT NULL CHECK (min_tier BETWEEN 0 AND 4),
         created_at INTEGER NOT NULL,
         PRIMARY KEY (tenant, path)
     ) WITHOUT ROWID;
     CREATE TABLE secret_versions (
         tenant TEXT NOT NULL,
         path TEXT NOT NULL,
         version INTEGER NOT NULL CHECK (version >= 1),
         envelope BLOB NOT NULL,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (tenant, path, version),
         FOREIGN KEY (tenant, path) REFERENCES secrets (tenant, path)
     ) WITHOUT ROWID;
     CREATE TABLE key_tiers (
         fingerprint TEXT PRIMARY KEY,
         tier INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 4),
         vouched_by TEXT NOT NULL,
         reason TEXT NOT NULL,
         at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE revoked_tokens (
         id TEXT PRIMARY KEY,
         tenant TEXT NOT NULL,
         revoked_by TEXT NOT NULL,
         reason TEXT NOT NULL,
         at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE policies (
         prefix TEXT PRIMARY KEY,
         source TEXT NOT NULL,
         updated_at INTEGER NOT NULL,
         updated_by TEXT NOT NULL
     ) WITHOUT ROWID;",
    // 3: what a requester below a secret's min_tier gets instead (a narrower capability).
    "CREATE TABLE secret_fallbacks (
         tenant TEXT NOT NULL,
         path TEXT NOT NULL,
         rights TEXT NOT NULL,
         ttl INTEGER NOT NULL CHECK (ttl BETWEEN 1 AND 3600),
         declared_by TEXT NOT NULL,
         at INTEGER NOT NULL,
         PRIMARY KEY (tenant, path),
         FOREIGN KEY (tenant, path) REFERENCES secrets (tenant, path)
     ) WITHOUT ROWID;",
];

/// How long [`Storage::exclusive`] waits for another holder.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The names held, each with how many wait for it.
type HeldNames = std::sync::Arc<(Mutex<HashMap<String, u32>>, std::sync::Condvar)>;

/// A name [`Storage::exclusive`] holds, freed when dropped.
struct HeldName {
    held: HeldNames,
    name: String,
}

impl Drop for HeldName {
    fn drop(&mut self) {
        let (names, freed) = &*self.held;
        names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
        freed.notify_all();
    }
}

/// The embedded store: a SQLite database in write-ahead-log mode (`synchronous = FULL`: an
/// acknowledged registration, rotation or revocation survives a power cut), for **one server
/// process** (`Server::from_home` holds the home's server lock):
///
/// - used nonces are kept in memory, in time partitions dropped whole (see
///   [`Storage::use_nonce`]); a restart forgets them, so the server refuses signatures made
///   before it started, and none can be replayed;
/// - keys read are cached, and every change the process makes updates them; a serving
///   process reads every key once, after checking the file against the home's record
///   ([`SqliteStorage::preload`]), and from then on answers from memory; another program's
///   write to the file is refused at the next change and found at the next start.
#[derive(Debug)]
pub struct SqliteStorage {
    path: PathBuf,
    conn: Mutex<Connection>,
    nonces: NonceWindow,
    keys: Mutex<HashMap<String, KeyRecord>>,
    /// Set by [`SqliteStorage::preload`]: the cache holds every key, and the database is not
    /// read for keys any more (a row added to the file behind the server's back is not seen).
    complete: std::sync::atomic::AtomicBool,
    guard: Mutex<Option<(std::sync::Arc<dyn CommitGuard>, String)>>,
    /// `PRAGMA data_version` when the guard was set: another program's commit changes it.
    data_version: std::sync::atomic::AtomicI64,
    /// The last digest [`SqliteStorage::digest`] took, with the `data_version` it saw.
    digested: Mutex<Option<(i64, String)>>,
    /// [`Storage::exclusive`]: one process serves the file, so the names held in memory are
    /// the locks.
    held: HeldNames,
    /// The digest the database had before this open brought its schema up to date, when it
    /// did (see [`SqliteStorage::migrated_from`]).
    migrated_from: Option<String>,
}

impl std::fmt::Debug for dyn CommitGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitGuard")
    }
}

/// Appends `field` to a digest, length-prefixed (`None` as a distinct marker).
fn digest_field(h: &mut Sha256, field: Option<&[u8]>) {
    match field {
        Some(b) => {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
        None => h.update(u64::MAX.to_be_bytes()),
    }
}

/// The most keys cached (the cache is emptied when full).
const KEY_CACHE: usize = 100_000;

/// Appends a column's value to a digest: numbers as decimal text, text and blobs as their
/// bytes, NULL as the distinct marker.
fn digest_value(h: &mut Sha256, v: rusqlite::types::ValueRef<'_>) {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => digest_field(h, None),
        ValueRef::Integer(x) => digest_field(h, Some(x.to_string().as_bytes())),
        ValueRef::Real(x) => digest_field(h, Some(x.to_string().as_bytes())),
        ValueRef::Text(t) | ValueRef::Blob(t) => digest_field(h, Some(t)),
    }
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> StorageError + '_ {
    move |e| StorageError::Database {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyColumns {
        client_id: row.get(0)?,
        role: row.get(1)?,
        fingerprint: row.get(2)?,
        algorithm: row.get(3)?,
        spki: row.get(4)?,
        added_at: row.get(5)?,
        state: row.get(6)?,
        until: row.get(7)?,
        revoked_at: row.get(8)?,
        reason: row.get(9)?,
        revoked_by: row.get(10)?,
        successor_of: row.get(11)?,
    }
    .into())
}

impl SqliteStorage {
    /// Opens (creating it, 0600 in a 0700 directory, if missing) the database at `path` and
    /// brings its schema up to date.
    ///
    /// # Errors
    /// [`StorageError::Database`] if the file is a symlink, open to other users, not a
    /// database, or from a newer keyhaven.
    pub fn open(path: &Path) -> Result<Self> {
        let fs_err = |e: keyhaven::CoreError| StorageError::Database {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_private_dir(dir).map_err(fs_err)?;
        }
        match fs::check_private(path) {
            Ok(_) => {}
            Err(keyhaven::CoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                // An empty file is an empty database: made 0600 by the one file layer.
                fs::atomic_write_new(path, b"").map_err(fs_err)?;
            }
            Err(e) => return Err(fs_err(e)),
        }
        let connect = |synchronous: &str| -> Result<Connection> {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NOFOLLOW
                | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags).map_err(db_err(path))?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(db_err(path))?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(db_err(path))?;
            conn.pragma_update(None, "synchronous", synchronous)
                .map_err(db_err(path))?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(db_err(path))?;
            // Nothing planted in the file runs: no trigger, no view, no schema function.
            for (config, on) in [
                (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
                (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
                (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
                (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
            ] {
                conn.set_db_config(config, on).map_err(db_err(path))?;
            }
            Ok(conn)
        };
        let storage = SqliteStorage {
            path: path.to_owned(),
            conn: Mutex::new(connect("FULL")?),
            nonces: NonceWindow::default(),
            keys: Mutex::new(HashMap::new()),
            complete: std::sync::atomic::AtomicBool::new(false),
            guard: Mutex::new(None),
            data_version: std::sync::atomic::AtomicI64::new(0),
            digested: Mutex::new(None),
            held: std::sync::Arc::default(),
            migrated_from: None,
        };
        storage.migrate()
    }

    /// The digest of the state as it was before this open ran the schema's migrations, if
    /// it ran any on a database that had state: the home's record names that digest until
    /// the server records the migrated one (a migration changes the schema, which is part of
    /// the digest).
    pub fn migrated_from(&self) -> Option<&str> {
        self.migrated_from.as_deref()
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version this build writes.
    pub fn schema_version() -> u32 {
        u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The digest (SHA-256, hex) of the security state: every client, key and setting, each
    /// field length-prefixed, in key order. Challenges are not part of it.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn digest(&self) -> Result<String> {
        let conn = self.conn();
        let digest = self.digest_in(&conn)?;
        // What the file was when this digest was taken: `set_guard` need not hash it again.
        let version: i64 = conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(self.err())?;
        *self.digested.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((version, digest.clone()));
        Ok(digest)
    }

    fn digest_in(&self, conn: &Connection) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"keyhaven-server state v1\0");
        let mut keys = conn
            .prepare_cached(
                "SELECT k.fingerprint, k.client_id, c.name, c.role, c.registered_at, k.algorithm,
                        k.spki, k.added_at, k.state, k.until, k.revoked_at, k.reason,
                        k.revoked_by, k.successor_of
                 FROM keys k JOIN clients c ON c.id = k.client_id ORDER BY k.fingerprint",
            )
            .map_err(self.err())?;
        let mut rows = keys.query([]).map_err(self.err())?;
        let mut n = 0u64;
        while let Some(r) = rows.next().map_err(self.err())? {
            n += 1;
            h.update(b"K");
            for i in 0..14 {
                digest_value(&mut h, r.get_ref(i).map_err(self.err())?);
            }
        }
        drop(rows);
        // Clients without keys, and the count, so nothing can hide between rows.
        let orphans: i64 = conn
            .query_row(
                "SELECT count(*) FROM clients c WHERE NOT EXISTS
                     (SELECT 1 FROM keys k WHERE k.client_id = c.id)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        h.update(n.to_be_bytes());
        h.update(orphans.to_be_bytes());
        // The schema too: a trigger or view planted in the file is a change of state.
        let mut schema = conn
            .prepare_cached(
                "SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name",
            )
            .map_err(self.err())?;
        let mut rows = schema.query([]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            h.update(b"M");
            for i in 0..3 {
                let v: String = r.get(i).map_err(self.err())?;
                digest_field(&mut h, Some(v.as_bytes()));
            }
        }
        drop(rows);
        self.digest_transit(conn, &mut h)?;
        let mut settings = conn
            .prepare_cached("SELECT name, value FROM settings ORDER BY name")
            .map_err(self.err())?;
        let mut rows = settings.query([]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            h.update(b"S");
            let name: String = r.get(0).map_err(self.err())?;
            let value: String = r.get(1).map_err(self.err())?;
            digest_field(&mut h, Some(name.as_bytes()));
            digest_field(&mut h, Some(value.as_bytes()));
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Adds the key broker's state to the digest: transit keys and versions, secrets and
    /// their versions, the tiers admins vouched for (from schema version 2; the schema, hashed
    /// too, says whether the tables exist).
    fn digest_transit(&self, conn: &Connection, h: &mut Sha256) -> Result<()> {
        let exists: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'transit_keys'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(self.err())?;
        if !exists {
            return Ok(());
        }
        for (tag, sql) in [
            (
                b"T",
                "SELECT tenant, name, created_at, min_decryption_version FROM transit_keys
                 ORDER BY tenant, name",
            ),
            (
                b"V",
                "SELECT tenant, name, version, wrapped, created_at FROM transit_versions
                 ORDER BY tenant, name, version",
            ),
            (
                b"R",
                "SELECT tenant, path, tier, min_tier, created_at FROM secrets
                 ORDER BY tenant, path",
            ),
            (
                b"W",
                "SELECT tenant, path, version, envelope, created_at FROM secret_versions
                 ORDER BY tenant, path, version",
            ),
            (
                b"G",
                "SELECT fingerprint, tier, vouched_by, reason, at FROM key_tiers
                 ORDER BY fingerprint",
            ),
            (
                b"X",
                "SELECT id, tenant, revoked_by, reason, at FROM revoked_tokens ORDER BY id",
            ),
            (
                b"P",
                "SELECT prefix, source, updated_at, updated_by FROM policies ORDER BY prefix",
            ),
        ] {
            self.digest_rows(conn, h, tag, sql)?;
        }
        let fallbacks: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'
                 AND name = 'secret_fallbacks'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(self.err())?;
        if fallbacks {
            self.digest_rows(
                conn,
                h,
                b"F",
                "SELECT tenant, path, rights, ttl, declared_by, at FROM secret_fallbacks
                 ORDER BY tenant, path",
            )?;
        }
        Ok(())
    }

    /// Adds every row `sql` reads to the digest, each column length-prefixed, the count after.
    fn digest_rows(&self, conn: &Connection, h: &mut Sha256, tag: &[u8], sql: &str) -> Result<()> {
        let mut stmt = conn.prepare_cached(sql).map_err(self.err())?;
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).map_err(self.err())?;
        let mut n = 0u64;
        while let Some(r) = rows.next().map_err(self.err())? {
            n += 1;
            h.update(tag);
            for i in 0..columns {
                digest_value(h, r.get_ref(i).map_err(self.err())?);
            }
        }
        h.update(tag);
        h.update(n.to_be_bytes());
        Ok(())
    }

    /// A transit key's versions, read in `conn`.
    fn transit_in(
        &self,
        conn: &Connection,
        tenant: &str,
        name: &str,
    ) -> Result<Option<TransitKeyRecord>> {
        let head: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT created_at, min_decryption_version FROM transit_keys
                 WHERE tenant = ?1 AND name = ?2",
            )
            .map_err(self.err())?
            .query_row(params![tenant, name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.err())?;
        let Some((created_at, min)) = head else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT version, wrapped, created_at FROM transit_versions
                 WHERE tenant = ?1 AND name = ?2 ORDER BY version",
            )
            .map_err(self.err())?;
        let versions = stmt
            .query_map(params![tenant, name], |r| {
                Ok((
                    version_of(r.get(0)?),
                    (r.get::<_, Vec<u8>>(1)?, u64_of(r.get(2)?)),
                ))
            })
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())?;
        Ok(Some(TransitKeyRecord {
            name: name.to_owned(),
            created_at: u64_of(created_at),
            min_decryption_version: version_of(min),
            versions,
        }))
    }

    /// Whether the security state is empty (no client, key, setting or transit key).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn is_empty(&self) -> Result<bool> {
        self.conn()
            .query_row(
                "SELECT (SELECT count(*) FROM clients) + (SELECT count(*) FROM keys)
                      + (SELECT count(*) FROM settings) + (SELECT count(*) FROM transit_keys)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n == 0)
            .map_err(self.err())
    }

    /// From now on, every change to the security state goes through `guard` (told the
    /// digest before and after), starting from `current`, the digest checked at start.
    ///
    /// # Errors
    /// [`StorageError::Database`]; [`StorageError::Guard`] if the database changed since
    /// `current` was computed (another program wrote it in between).
    pub fn set_guard(&self, guard: std::sync::Arc<dyn CommitGuard>, current: String) -> Result<()> {
        let conn = self.conn();
        let version: i64 = conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(self.err())?;
        let unchanged = self
            .digested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|(v, d)| *v == version && *d == current);
        if !unchanged && self.digest_in(&conn)? != current {
            return Err(StorageError::Guard(format!(
                "{} changed while the server was checking it",
                self.path.display()
            )));
        }
        self.data_version
            .store(version, std::sync::atomic::Ordering::Release);
        *self.guard.lock().unwrap_or_else(PoisonError::into_inner) = Some((guard, current));
        Ok(())
    }

    /// Reads every key into memory; from then on keys are answered from memory only (what
    /// the database file says is read once, when its digest was checked).
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn preload(&self) -> Result<usize> {
        let conn = self.conn();
        if self
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            self.check_untouched(&conn)?;
        }
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys k JOIN clients c ON c.id = k.client_id"
            ))
            .map_err(self.err())?;
        let all = stmt
            .query_map([], key_row)
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        let n = all.len();
        let mut cache = self.cache();
        cache.clear();
        for r in all {
            cache.insert(r.fingerprint.clone(), r);
        }
        self.complete
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(n)
    }

    /// Commits `tx`, telling the guard (if any) before and after.
    ///
    /// The database must not have been changed by another program since the guard was set
    /// (`PRAGMA data_version` would tell): such a change is refused, never folded into the
    /// record. Returns, once committed, the guard's complaint about its own record (the
    /// change stands and the caller updates its cache before reporting it).
    fn commit_guarded(&self, tx: Transaction<'_>) -> Result<Option<StorageError>> {
        let mut guard = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((g, current)) = guard.as_mut() else {
            tx.commit().map_err(self.err())?;
            return Ok(None);
        };
        self.check_untouched(&tx)?;
        let next = self.digest_in(&tx)?;
        g.before_commit(current, &next)
            .map_err(StorageError::Guard)?;
        tx.commit().map_err(self.err())?;
        *current = next.clone();
        Ok(g.after_commit(&next).err().map(StorageError::Guard))
    }

    /// Before a read that decides something (a release, a token, a tier): refuses when
    /// another program changed the database since the server checked it, so a row edited
    /// behind its back is never acted on (once a guard is set, as a serving process has).
    fn check_reads(&self, conn: &Connection) -> Result<()> {
        if self
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            self.check_untouched(conn)?;
        }
        Ok(())
    }

    /// Refuses when another connection changed the database since it was checked.
    fn check_untouched(&self, conn: &Connection) -> Result<()> {
        let now: i64 = conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(self.err())?;
        let seen = self.data_version.load(std::sync::atomic::Ordering::Acquire);
        if seen != now {
            return Err(StorageError::Guard(format!(
                "{} was changed by another program since the server checked it: restart the \
                 server, which checks it against the home's record",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// After a change: the client's keys as they now are replace what the cache held.
    fn remember(&self, record: &ClientRecord) {
        let complete = self.complete.load(std::sync::atomic::Ordering::Acquire);
        let mut cache = self.cache();
        for k in &record.keys {
            if complete {
                cache.insert(k.fingerprint.clone(), k.clone());
            } else {
                cache.remove(&k.fingerprint);
            }
        }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, KeyRecord>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets cached keys (after they changed).
    fn evict<'a>(&self, fingerprints: impl IntoIterator<Item = &'a str>) {
        let mut cache = self.cache();
        for fp in fingerprints {
            cache.remove(fp);
        }
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StorageError + '_ {
        db_err(&self.path)
    }

    fn migrate(mut self) -> Result<Self> {
        let before = {
            let conn = self.conn();
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(self.err())?;
            if version > 0 && version < i64::from(Self::schema_version()) {
                Some(self.digest_in(&conn)?)
            } else {
                None
            }
        };
        self.migrate_schema()?;
        self.migrated_from = before;
        Ok(self)
    }

    fn migrate_schema(&self) -> Result<()> {
        let mut conn = self.conn();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err())?;
        let known = i64::from(Self::schema_version());
        if version > known {
            return Err(StorageError::Database {
                path: self.path.display().to_string(),
                reason: format!(
                    "its schema is version {version}, newer than this keyhaven knows ({known}): \
                     run the keyhaven that wrote it"
                ),
            });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            let tx = conn.transaction().map_err(self.err())?;
            tx.execute_batch(sql).map_err(self.err())?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(self.err())?;
            tx.commit().map_err(self.err())?;
        }
        Ok(())
    }

    fn key_in(&self, conn: &Connection, fingerprint: &str) -> Result<Option<KeyRecord>> {
        conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys k JOIN clients c ON c.id = k.client_id
             WHERE k.fingerprint = ?1"
        ))
        .map_err(self.err())?
        .query_row(params![fingerprint], key_row)
        .optional()
        .map_err(self.err())
    }

    fn keys_of(&self, tx: &Connection, client_id: &str) -> Result<Vec<KeyRecord>> {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys k JOIN clients c ON c.id = k.client_id
                 WHERE k.client_id = ?1 ORDER BY k.added_at, k.rowid"
            ))
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![client_id], key_row)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    fn client_in(&self, tx: &Connection, id: &str) -> Result<Option<ClientRecord>> {
        let head = tx
            .prepare_cached("SELECT id, name, role, registered_at FROM clients WHERE id = ?1")
            .map_err(self.err())?
            .query_row(params![id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()
            .map_err(self.err())?;
        let Some((id, name, role, at)) = head else {
            return Ok(None);
        };
        let keys = self.keys_of(tx, &id)?;
        Ok(Some(ClientRecord {
            id,
            name,
            role: role_of(&role),
            registered_at: u64_of(at),
            keys,
        }))
    }

    fn insert_key(
        &self,
        tx: &Transaction<'_>,
        client_id: &str,
        key: &NewKey,
        at: u64,
        successor_of: Option<&str>,
    ) -> Result<()> {
        let exists = tx
            .prepare_cached("SELECT 1 FROM keys WHERE fingerprint = ?1")
            .map_err(self.err())?
            .exists(params![key.fingerprint])
            .map_err(self.err())?;
        if exists {
            return Err(StorageError::KeyExists(key.fingerprint.clone()));
        }
        tx.prepare_cached(
            "INSERT INTO keys (fingerprint, client_id, algorithm, spki, added_at, state, successor_of)
             VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6)",
        )
        .map_err(self.err())?
        .execute(params![
            key.fingerprint,
            client_id,
            key.algorithm,
            key.spki,
            i64_of(at),
            successor_of
        ])
        .map_err(self.err())?;
        Ok(())
    }
}

impl Storage for SqliteStorage {
    fn put_challenge(&self, challenge: &str, expires_at: u64) -> Result<()> {
        self.conn()
            .prepare_cached("INSERT INTO challenges (challenge, expires_at) VALUES (?1, ?2)")
            .map_err(self.err())?
            .execute(params![challenge, i64_of(expires_at)])
            .map_err(self.err())?;
        Ok(())
    }

    fn take_challenge(&self, challenge: &str, now: u64) -> Result<bool> {
        let expires: Option<i64> = self
            .conn()
            .prepare_cached("DELETE FROM challenges WHERE challenge = ?1 RETURNING expires_at")
            .map_err(self.err())?
            .query_row(params![challenge], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        Ok(expires.is_some_and(|e| u64_of(e) > now))
    }

    fn register(&self, client: &NewClient) -> Result<ClientRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        tx.prepare_cached(
            "INSERT INTO clients (id, name, role, registered_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(self.err())?
        .execute(params![
            client.id,
            client.name,
            client.role.as_str(),
            i64_of(client.at)
        ])
        .map_err(self.err())?;
        self.insert_key(&tx, &client.id, &client.key, client.at, None)?;
        let record = self
            .client_in(&tx, &client.id)?
            .ok_or_else(|| StorageError::NoClient(client.id.clone()))?;
        let complaint = self.commit_guarded(tx)?;
        self.remember(&record);
        complaint.map_or(Ok(record), Err)
    }

    fn key(&self, fingerprint: &str) -> Result<Option<KeyRecord>> {
        if let Some(hit) = self.cache().get(fingerprint) {
            return Ok(Some(hit.clone()));
        }
        if self.complete.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(None);
        }
        // Read under the connection's lock, cached under it too: a change this process makes
        // (which takes the same lock first) cannot slip between the read and the caching.
        let conn = self.conn();
        let record = self.key_in(&conn, fingerprint)?;
        if let Some(r) = &record {
            let mut cache = self.cache();
            if cache.len() >= KEY_CACHE {
                cache.clear();
            }
            cache.insert(fingerprint.to_owned(), r.clone());
        }
        drop(conn);
        Ok(record)
    }

    fn key_if_cached(&self, fingerprint: &str) -> Option<KeyRecord> {
        self.cache().get(fingerprint).cloned()
    }

    fn client(&self, id: &str) -> Result<Option<ClientRecord>> {
        let conn = self.conn();
        self.client_in(&conn, id)
    }

    fn rotate(
        &self,
        client_id: &str,
        superseded: &[Superseded],
        new: &NewKey,
        at: u64,
    ) -> Result<ClientRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        // The first key superseded anchors the rotation: it must be active now, inside this
        // transaction, so two rotations from one key cannot both succeed.
        if let Some(anchor) = superseded.first() {
            let state: Option<String> = tx
                .prepare_cached("SELECT state FROM keys WHERE fingerprint = ?1 AND client_id = ?2")
                .map_err(self.err())?
                .query_row(params![anchor.old, client_id], |r| r.get(0))
                .optional()
                .map_err(self.err())?;
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
                .prepare_cached("SELECT client_id FROM keys WHERE fingerprint = ?1")
                .map_err(self.err())?
                .query_row(params![s.old], |r| r.get(0))
                .optional()
                .map_err(self.err())?;
            if owner.as_deref() != Some(client_id) {
                return Err(StorageError::NoKey(s.old.clone()));
            }
            // A revoked key stays revoked; an earlier, shorter window is kept.
            tx.prepare_cached(
                "UPDATE keys SET state = 'rotating',
                     until = CASE WHEN state = 'rotating' THEN MIN(until, ?2) ELSE ?2 END
                 WHERE fingerprint = ?1 AND state IN ('active', 'rotating')",
            )
            .map_err(self.err())?
            .execute(params![s.old, i64_of(s.until)])
            .map_err(self.err())?;
        }
        let predecessor = superseded.last().map(|s| s.old.as_str());
        self.insert_key(&tx, client_id, new, at, predecessor)?;
        let record = self
            .client_in(&tx, client_id)?
            .ok_or_else(|| StorageError::NoClient(client_id.to_owned()))?;
        let complaint = self.commit_guarded(tx)?;
        // Still under the connection's lock: no reader of the database caches the old state.
        self.remember(&record);
        complaint.map_or(Ok(record), Err)
    }

    fn revoke(&self, fingerprint: &str, at: u64, reason: &str, by: &str) -> Result<Revoked> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let state: Option<String> = tx
            .prepare_cached("SELECT state FROM keys WHERE fingerprint = ?1")
            .map_err(self.err())?
            .query_row(params![fingerprint], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        let outcome = match state.as_deref() {
            None => Revoked::Unknown,
            Some("revoked") => Revoked::Already,
            Some(_) => {
                tx.prepare_cached(
                    "UPDATE keys SET state = 'revoked', revoked_at = ?2, reason = ?3,
                         revoked_by = ?4
                     WHERE fingerprint = ?1",
                )
                .map_err(self.err())?
                .execute(params![fingerprint, i64_of(at), reason, by])
                .map_err(self.err())?;
                Revoked::Now
            }
        };
        let record = self.key_in(&tx, fingerprint)?;
        let complaint = if outcome == Revoked::Now {
            self.commit_guarded(tx)?
        } else {
            tx.commit().map_err(self.err())?;
            None
        };
        // The cache holds the key as it now is (a revocation retried after a failure too).
        self.evict([fingerprint]);
        if let Some(r) = record
            && self.complete.load(std::sync::atomic::Ordering::Acquire)
        {
            self.cache().insert(r.fingerprint.clone(), r);
        }
        complaint.map_or(Ok(outcome), Err)
    }

    fn search(&self, query: &str, limit: u32) -> Result<Vec<ClientRecord>> {
        let conn = self.conn();
        let pattern = like_pattern(query);
        let ids: Vec<String> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT c.id FROM clients c
                     WHERE lower(c.name) LIKE ?1 ESCAPE '\\' OR c.id LIKE ?1 ESCAPE '\\'
                        OR EXISTS (SELECT 1 FROM keys k WHERE k.client_id = c.id
                                   AND k.fingerprint LIKE ?1 ESCAPE '\\')
                     ORDER BY c.registered_at, c.id LIMIT ?2",
                )
                .map_err(self.err())?;
            stmt.query_map(params![pattern, i64::from(limit)], |r| r.get(0))
                .map_err(self.err())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.err())?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.client_in(&conn, &id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn stats(&self, now: u64) -> Result<Stats> {
        let conn = self.conn();
        let count = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<u64> {
            conn.prepare_cached(sql)
                .map_err(self.err())?
                .query_row(args, |r| r.get::<_, i64>(0))
                .map(u64_of)
                .map_err(self.err())
        };
        let now_i = i64_of(now);
        Ok(Stats {
            clients: count("SELECT count(*) FROM clients", &[])?,
            active_keys: count("SELECT count(*) FROM keys WHERE state = 'active'", &[])?,
            rotating_keys: count(
                "SELECT count(*) FROM keys WHERE state = 'rotating' AND until > ?1",
                &[&now_i],
            )?,
            retired_keys: count(
                "SELECT count(*) FROM keys WHERE state = 'rotating' AND until <= ?1",
                &[&now_i],
            )?,
            revoked_keys: count("SELECT count(*) FROM keys WHERE state = 'revoked'", &[])?,
            registrations_last_hour: count(
                "SELECT count(*) FROM clients WHERE registered_at > ?1",
                &[&now_i.saturating_sub(3600)],
            )?,
            registrations_last_day: count(
                "SELECT count(*) FROM clients WHERE registered_at > ?1",
                &[&now_i.saturating_sub(86_400)],
            )?,
        })
    }

    fn use_nonce(&self, keyid: &str, nonce: &str, expires_at: u64) -> Result<bool> {
        Ok(self.nonces.use_nonce(keyid, nonce, expires_at))
    }

    fn nonces_in_memory(&self) -> bool {
        true
    }

    fn prune(&self, now: u64) -> Result<u64> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM challenges WHERE expires_at < ?1",
                params![i64_of(now)],
            )
            .map_err(self.err())?;
        Ok(self.nonces.prune(now) + u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn setting(&self, name: &str) -> Result<Option<String>> {
        self.conn()
            .prepare_cached("SELECT value FROM settings WHERE name = ?1")
            .map_err(self.err())?
            .query_row(params![name], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        tx.prepare_cached(
            "INSERT INTO settings (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .map_err(self.err())?
        .execute(params![name, value])
        .map_err(self.err())?;
        self.commit_guarded(tx)?.map_or(Ok(()), Err)
    }

    fn ping(&self) -> Result<()> {
        self.conn()
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(self.err())
    }

    fn transit_key(&self, tenant: &str, name: &str) -> Result<Option<TransitKeyRecord>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        self.transit_in(&conn, tenant, name)
    }

    fn transit_create(&self, tenant: &str, record: &TransitKeyRecord) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO transit_keys (tenant, name, created_at, min_decryption_version)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .map_err(self.err())?
            .execute(params![
                tenant,
                record.name,
                i64_of(record.created_at),
                record.min_decryption_version
            ])
            .map_err(self.err())?;
        if inserted == 0 {
            return Ok(false);
        }
        for (version, (wrapped, at)) in &record.versions {
            tx.prepare_cached(
                "INSERT INTO transit_versions (tenant, name, version, wrapped, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(self.err())?
            .execute(params![tenant, record.name, version, wrapped, i64_of(*at)])
            .map_err(self.err())?;
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn transit_add_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        wrapped: &[u8],
        at: u64,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let latest: Option<i64> = tx
            .prepare_cached(
                "SELECT (SELECT max(version) FROM transit_versions v
                         WHERE v.tenant = k.tenant AND v.name = k.name)
                 FROM transit_keys k WHERE k.tenant = ?1 AND k.name = ?2",
            )
            .map_err(self.err())?
            .query_row(params![tenant, name], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map_err(self.err())?
            .flatten();
        if latest.map(version_of).and_then(|v| v.checked_add(1)) != Some(version) {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT INTO transit_versions (tenant, name, version, wrapped, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(self.err())?
        .execute(params![tenant, name, version, wrapped, i64_of(at)])
        .map_err(self.err())?;
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn transit_set_min_decryption_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let changed = tx
            .prepare_cached(
                "UPDATE transit_keys SET min_decryption_version = ?3
                 WHERE tenant = ?1 AND name = ?2",
            )
            .map_err(self.err())?
            .execute(params![tenant, name, version])
            .map_err(self.err())?;
        if changed == 0 {
            return Ok(false);
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn secret(&self, tenant: &str, path: &str) -> Result<Option<SecretRecord>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        let head: Option<(i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT tier, min_tier, created_at FROM secrets WHERE tenant = ?1 AND path = ?2",
            )
            .map_err(self.err())?
            .query_row(params![tenant, path], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(self.err())?;
        let Some((tier, min_tier, created_at)) = head else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT version, envelope, created_at FROM secret_versions
                 WHERE tenant = ?1 AND path = ?2 ORDER BY version",
            )
            .map_err(self.err())?;
        let versions = stmt
            .query_map(params![tenant, path], |r| {
                Ok((
                    u64_of(r.get(0)?),
                    (r.get::<_, Vec<u8>>(1)?, u64_of(r.get(2)?)),
                ))
            })
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())?;
        Ok(Some(SecretRecord {
            path: path.to_owned(),
            tier: tier_of(tier),
            min_tier: tier_of(min_tier),
            created_at: u64_of(created_at),
            versions,
        }))
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
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let stored: Option<(i64, Option<i64>)> = tx
            .prepare_cached(
                "SELECT s.tier, (SELECT max(version) FROM secret_versions v
                                 WHERE v.tenant = s.tenant AND v.path = s.path)
                 FROM secrets s WHERE s.tenant = ?1 AND s.path = ?2",
            )
            .map_err(self.err())?
            .query_row(params![tenant, path], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.err())?;
        let latest = match stored {
            None => {
                tx.prepare_cached(
                    "INSERT INTO secrets (tenant, path, tier, min_tier, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(self.err())?
                .execute(params![tenant, path, meta.tier, meta.min_tier, i64_of(at)])
                .map_err(self.err())?;
                0
            }
            Some((tier, _)) if tier_of(tier) != meta.tier => return Ok(false),
            Some((_, latest)) => {
                tx.prepare_cached(
                    "UPDATE secrets SET min_tier = ?3 WHERE tenant = ?1 AND path = ?2",
                )
                .map_err(self.err())?
                .execute(params![tenant, path, meta.min_tier])
                .map_err(self.err())?;
                latest.map_or(0, u64_of)
            }
        };
        if latest.checked_add(1) != Some(version) {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT INTO secret_versions (tenant, path, version, envelope, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(self.err())?
        .execute(params![tenant, path, i64_of(version), envelope, i64_of(at)])
        .map_err(self.err())?;
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn secret_replace(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let changed = tx
            .prepare_cached(
                "UPDATE secret_versions SET envelope = ?5
                 WHERE tenant = ?1 AND path = ?2 AND version = ?3 AND envelope = ?4",
            )
            .map_err(self.err())?
            .execute(params![tenant, path, i64_of(version), old, new])
            .map_err(self.err())?;
        if changed == 0 {
            return Ok(false);
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn secret_list(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SecretSummary>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.path, s.tier, s.min_tier, s.created_at,
                        (SELECT max(version) FROM secret_versions v
                         WHERE v.tenant = s.tenant AND v.path = s.path)
                 FROM secrets s
                 WHERE s.tenant = ?1 AND substr(s.path, 1, length(?2)) = ?2 AND s.path > ?3
                 ORDER BY s.path LIMIT ?4",
            )
            .map_err(self.err())?;
        stmt.query_map(params![tenant, prefix, after, limit], |r| {
            Ok(SecretSummary {
                path: r.get(0)?,
                tier: tier_of(r.get(1)?),
                min_tier: tier_of(r.get(2)?),
                created_at: u64_of(r.get(3)?),
                latest_version: r.get::<_, Option<i64>>(4)?.map_or(0, u64_of),
            })
        })
        .map_err(self.err())?
        .collect::<rusqlite::Result<_>>()
        .map_err(self.err())
    }

    fn secret_delete(&self, tenant: &str, path: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        tx.prepare_cached("DELETE FROM secret_fallbacks WHERE tenant = ?1 AND path = ?2")
            .map_err(self.err())?
            .execute(params![tenant, path])
            .map_err(self.err())?;
        tx.prepare_cached("DELETE FROM secret_versions WHERE tenant = ?1 AND path = ?2")
            .map_err(self.err())?
            .execute(params![tenant, path])
            .map_err(self.err())?;
        let gone = tx
            .prepare_cached("DELETE FROM secrets WHERE tenant = ?1 AND path = ?2")
            .map_err(self.err())?
            .execute(params![tenant, path])
            .map_err(self.err())?;
        if gone == 0 {
            return Ok(false);
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn secret_fallback(&self, tenant: &str, path: &str) -> Result<Option<SecretFallback>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        conn.prepare_cached(
            "SELECT rights, ttl, declared_by, at FROM secret_fallbacks
             WHERE tenant = ?1 AND path = ?2",
        )
        .map_err(self.err())?
        .query_row(params![tenant, path], |r| {
            Ok(SecretFallback {
                rights: r.get(0)?,
                ttl: u64_of(r.get(1)?),
                declared_by: r.get(2)?,
                at: u64_of(r.get(3)?),
            })
        })
        .optional()
        .map_err(self.err())
    }

    fn set_secret_fallback(
        &self,
        tenant: &str,
        path: &str,
        fallback: Option<&SecretFallback>,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM secrets WHERE tenant = ?1 AND path = ?2")
            .map_err(self.err())?
            .exists(params![tenant, path])
            .map_err(self.err())?;
        if !exists {
            return Ok(false);
        }
        tx.prepare_cached("DELETE FROM secret_fallbacks WHERE tenant = ?1 AND path = ?2")
            .map_err(self.err())?
            .execute(params![tenant, path])
            .map_err(self.err())?;
        if let Some(f) = fallback {
            tx.prepare_cached(
                "INSERT INTO secret_fallbacks (tenant, path, rights, ttl, declared_by, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(self.err())?
            .execute(params![
                tenant,
                path,
                f.rights,
                i64_of(f.ttl),
                f.declared_by,
                i64_of(f.at)
            ])
            .map_err(self.err())?;
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn key_tier(&self, fingerprint: &str) -> Result<Option<KeyTier>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        conn.prepare_cached(
            "SELECT tier, vouched_by, reason, at FROM key_tiers WHERE fingerprint = ?1",
        )
        .map_err(self.err())?
        .query_row(params![fingerprint], |r| {
            Ok(KeyTier {
                fingerprint: fingerprint.to_owned(),
                tier: tier_of(r.get(0)?),
                vouched_by: r.get(1)?,
                reason: r.get(2)?,
                at: u64_of(r.get(3)?),
            })
        })
        .optional()
        .map_err(self.err())
    }

    fn set_key_tier(&self, t: &KeyTier) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        tx.prepare_cached(
            "INSERT INTO key_tiers (fingerprint, tier, vouched_by, reason, at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (fingerprint) DO UPDATE SET tier = excluded.tier,
                 vouched_by = excluded.vouched_by, reason = excluded.reason, at = excluded.at",
        )
        .map_err(self.err())?
        .execute(params![
            t.fingerprint,
            t.tier,
            t.vouched_by,
            t.reason,
            i64_of(t.at)
        ])
        .map_err(self.err())?;
        self.commit_guarded(tx)?.map_or(Ok(()), Err)
    }

    fn revoke_token(&self, r: &RevokedToken) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let added = tx
            .prepare_cached(
                "INSERT INTO revoked_tokens (id, tenant, revoked_by, reason, at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .map_err(self.err())?
            .execute(params![
                r.id,
                r.tenant,
                r.revoked_by,
                r.reason,
                i64_of(r.at)
            ])
            .map_err(self.err())?;
        if added == 0 {
            return Ok(false);
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn revoked_token(&self, ids: &[String]) -> Result<Option<RevokedToken>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT tenant, revoked_by, reason, at FROM revoked_tokens WHERE id = ?1",
            )
            .map_err(self.err())?;
        for id in ids {
            let found = stmt
                .query_row(params![id], |r| {
                    Ok(RevokedToken {
                        id: id.clone(),
                        tenant: r.get(0)?,
                        revoked_by: r.get(1)?,
                        reason: r.get(2)?,
                        at: u64_of(r.get(3)?),
                    })
                })
                .optional()
                .map_err(self.err())?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn put_policy(&self, p: &PolicyRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        tx.prepare_cached(
            "INSERT INTO policies (prefix, source, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (prefix) DO UPDATE SET source = excluded.source,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .map_err(self.err())?
        .execute(params![
            p.prefix,
            p.source,
            i64_of(p.updated_at),
            p.updated_by
        ])
        .map_err(self.err())?;
        self.commit_guarded(tx)?.map_or(Ok(()), Err)
    }

    fn delete_policy(&self, prefix: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let gone = tx
            .prepare_cached("DELETE FROM policies WHERE prefix = ?1")
            .map_err(self.err())?
            .execute(params![prefix])
            .map_err(self.err())?;
        if gone == 0 {
            return Ok(false);
        }
        self.commit_guarded(tx)?.map_or(Ok(true), Err)
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT prefix, source, updated_at, updated_by FROM policies ORDER BY prefix",
            )
            .map_err(self.err())?;
        stmt.query_map([], |r| {
            Ok(PolicyRecord {
                prefix: r.get(0)?,
                source: r.get(1)?,
                updated_at: u64_of(r.get(2)?),
                updated_by: r.get(3)?,
            })
        })
        .map_err(self.err())?
        .collect::<rusqlite::Result<_>>()
        .map_err(self.err())
    }

    fn transit_list(&self, tenant: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        self.check_reads(&conn)?;
        let mut stmt = conn
            .prepare_cached("SELECT name FROM transit_keys WHERE tenant = ?1 ORDER BY name")
            .map_err(self.err())?;
        stmt.query_map(params![tenant], |r| r.get(0))
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())
    }

    fn exclusive(&self, name: &str) -> Result<Box<dyn super::Held + '_>> {
        let busy = |why: String| StorageError::Database {
            path: self.path.display().to_string(),
            reason: why,
        };
        let (names, freed) = &*self.held;
        let mut taken = names.lock().unwrap_or_else(PoisonError::into_inner);
        // One holder and one waiter a name: more would only park threads of the blocking
        // pool for the same outcome.
        match taken.get_mut(name) {
            Some(waiting) if *waiting > 0 => {
                return Err(busy(format!(
                    "'{name}' is held and another is waiting for it: try again when it is done"
                )));
            }
            Some(waiting) => *waiting += 1,
            None => {}
        }
        let (mut taken, waited) = freed
            .wait_timeout_while(taken, LOCK_WAIT, |t| t.contains_key(name))
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out()
            && let Some(waiting) = taken.get_mut(name)
        {
            *waiting = waiting.saturating_sub(1);
            return Err(busy(format!(
                "'{name}' has been held for {} s: try again when it is done",
                LOCK_WAIT.as_secs()
            )));
        }
        taken.insert(name.to_owned(), 0);
        Ok(Box::new(HeldName {
            held: std::sync::Arc::clone(&self.held),
            name: name.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A database of schema 1 (as an older keyhaven left it) is brought up to date, and the
    /// digest it had before is kept for the home's record; an up-to-date one has none.
    #[test]
    fn exclusive_names_are_held_one_at_a_time_and_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(
            SqliteStorage::open(&dir.path().join("s").join("server.db")).unwrap(),
        );
        let a = s.exclusive("a").unwrap();
        // Another name is not held up by it.
        drop(s.exclusive("b").unwrap());
        // The same name waits for the holder.
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let waiter = {
            let (s, order) = (s.clone(), order.clone());
            std::thread::spawn(move || {
                let _held = s.exclusive("a").unwrap();
                order.lock().unwrap().push("second");
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        // A third, while one holds and one waits: told at once to come back.
        let busy = s.exclusive("a").map(|_| ()).unwrap_err();
        assert!(busy.to_string().contains("another is waiting"), "{busy}");
        order.lock().unwrap().push("first");
        drop(a);
        waiter.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    }

    #[test]
    fn a_migration_keeps_the_digest_it_started_from() {
        // From schema 1 (no broker tables) and from schema 2 (no fallbacks).
        for (undo, version) in [
            (
                "DROP TABLE secret_fallbacks; DROP TABLE transit_versions;
                 DROP TABLE transit_keys; DROP TABLE secret_versions; DROP TABLE secrets;
                 DROP TABLE key_tiers; DROP TABLE revoked_tokens; DROP TABLE policies;",
                1,
            ),
            ("DROP TABLE secret_fallbacks;", 2),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s").join("server.db");
            let before = {
                let s = SqliteStorage::open(&path).unwrap();
                s.set_setting("server-key", "local:1").unwrap();
                let conn = s.conn();
                conn.execute_batch(&format!("{undo} PRAGMA user_version = {version};"))
                    .unwrap();
                s.digest_in(&conn).unwrap()
            };
            let s = SqliteStorage::open(&path).unwrap();
            assert_eq!(s.migrated_from(), Some(before.as_str()));
            assert_ne!(
                s.digest().unwrap(),
                before,
                "the schema is part of the digest"
            );
            assert_eq!(s.transit_list("t").unwrap(), Vec::<String>::new());
            assert_eq!(s.secret_fallback("t", "p").unwrap(), None);
            drop(s);
            assert_eq!(SqliteStorage::open(&path).unwrap().migrated_from(), None);
        }
    }
}
