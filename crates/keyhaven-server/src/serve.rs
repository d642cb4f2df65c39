//! Embedded mode: the server's state in the keyhaven home (SQLite, the home's audit log, a
//! server key of the home), and the loop that serves it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyhaven::{Algorithm, KeyManager, ManagedKey, unix_now};
use keyhaven_client::wire::Role;
use tokio::net::TcpListener;

use crate::audit::{AuditSink, LogSink, NoAudit};
use crate::server::{Server, ServerConfig};
use crate::storage::{
    CommitGuard, NewClient, PostgresStorage, SqliteStorage, Storage, StorageError,
};

/// The record, in the home's authenticated state, of the server database's security state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    /// The digest of the state the database holds.
    current: String,
    /// The digest of a change being committed (a crash between the database's commit and
    /// this record's update leaves the database here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<String>,
}

/// Keeps [`Recorded`] through the home's state files: authenticated by the home's integrity
/// key (and bound to its rollback counter when it has one), so only someone who can unlock the
/// home can change it.
#[derive(Debug)]
struct StateRecord {
    state: Arc<dyn keyhaven::fs::StateFiles>,
    path: PathBuf,
}

impl StateRecord {
    fn write(&self, r: &Recorded) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        self.state
            .write(&self.path, &bytes)
            .map_err(|e| e.to_string())
    }
}

impl CommitGuard for StateRecord {
    fn before_commit(&self, current: &str, next: &str) -> Result<(), String> {
        self.write(&Recorded {
            current: current.to_owned(),
            pending: Some(next.to_owned()),
        })
    }

    fn after_commit(&self, next: &str) -> Result<(), String> {
        self.write(&Recorded {
            current: next.to_owned(),
            pending: None,
        })
    }
}

/// Checks the database against the home's record of it, and puts the record in charge of
/// every later change. A database changed behind keyhaven's back is refused, naming it.
fn guard_database(
    manager: &KeyManager,
    home: &Home,
    storage: &SqliteStorage,
) -> Result<(), ServeError> {
    let state = manager.state()?;
    let record = StateRecord {
        state,
        path: home.dir.join("server").join("state.json"),
    };
    let digest = storage.digest()?;
    let db = home.database().display().to_string();
    let tampered = |what: &str| {
        ServeError::Keyhaven(
            keyhaven::CoreError::corrupt(
                db.clone(),
                format!(
                    "{what}: a client, key or setting was added, edited or removed, or the file \
                     replaced by an older copy, outside keyhaven. Restore it (and the home) from \
                     a backup"
                ),
            )
            .into(),
        )
    };
    match record
        .state
        .read(&record.path)
        .map_err(keyhaven::Error::from)?
    {
        None if storage.is_empty()? => {
            record.after_commit(&digest).map_err(ServeError::Setup)?;
        }
        None => {
            return Err(tampered(
                "the server database has no record in the home's authenticated state",
            ));
        }
        Some(bytes) => {
            let recorded: Recorded = serde_json::from_slice(&bytes)
                .map_err(|_| tampered("the home's record of the server database is unreadable"))?;
            if recorded.current != digest {
                if recorded.pending.as_deref() == Some(digest.as_str()) {
                    // The last change committed; its record's update did not happen.
                    record.after_commit(&digest).map_err(ServeError::Setup)?;
                } else if storage.migrated_from() == Some(recorded.current.as_str()) {
                    // This open brought the schema up to date from the state the home
                    // recorded: the new schema's digest is recorded (tables added, no row
                    // changed).
                    record.after_commit(&digest).map_err(ServeError::Setup)?;
                } else {
                    return Err(tampered(
                        "the server database does not match the home's record of it",
                    ));
                }
            }
        }
    }
    if !record.state.is_authenticated() {
        tracing::warn!(
            home = %manager.home().display(),
            "the home has no integrity anchor: the record of the server database is not \
             authenticated (add an encrypted or PKCS#11 backend to protect it)"
        );
    }
    storage.set_guard(Arc::new(record), digest)?;
    Ok(())
}

/// The home's server lock: one process changes a home's server state at a time.
fn lock_server(manager: &KeyManager, home: &Home) -> Result<keyhaven::fs::FileLock, ServeError> {
    let dir = home.dir.join("server");
    keyhaven::fs::create_private_dir(&dir).map_err(keyhaven::Error::from)?;
    let lock_path = dir.join("server.lock");
    keyhaven::fs::FileLock::try_acquire(&lock_path)
        .map_err(keyhaven::Error::from)?
        .ok_or_else(|| {
            ServeError::Busy(format!(
                "a keyhaven server is running on {} (it holds {}): stop it first",
                manager.home().display(),
                lock_path.display()
            ))
        })
}

/// The setting naming the server key (`BACKEND:ID`).
const SERVER_KEY: &str = "server-key";

/// The label of the key `keyhaven serve init` makes.
pub const SERVER_KEY_LABEL: &str = "keyhaven-server";

/// The setting naming the key broker's master key (`BACKEND:ID`).
const MASTER_KEY: &str = "master-key";

/// The label of the master key `keyhaven serve init --master-key` makes.
pub const MASTER_KEY_LABEL: &str = "keyhaven-broker-master";

/// Why the server cannot start or set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The store refused.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The home refused (a locked backend, a missing key, a revoked server key).
    #[error(transparent)]
    Keyhaven(#[from] keyhaven::Error),
    /// The server is not set up in this home or database (`keyhaven serve init`).
    #[error("{0}")]
    NotSetUp(String),
    /// Another server holds this home's server state.
    #[error("{0}")]
    Busy(String),
    /// The setup asked for cannot be made (a TLS key of the wrong type, a certificate for
    /// another key, a record that cannot be written).
    #[error("{0}")]
    Setup(String),
    /// The listener failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The server's files in a keyhaven home.
#[derive(Debug, Clone)]
pub struct Home {
    /// The home.
    pub dir: PathBuf,
}

impl Home {
    /// The server state of the home `manager` opened.
    pub fn of(manager: &KeyManager) -> Self {
        Home {
            dir: manager.home().to_owned(),
        }
    }

    /// The database (`HOME/server/server.db`).
    pub fn database(&self) -> PathBuf {
        self.dir.join("server").join("server.db")
    }

    /// Opens the database.
    ///
    /// # Errors
    /// [`StorageError::Database`].
    pub fn storage(&self) -> Result<SqliteStorage, StorageError> {
        SqliteStorage::open(&self.database())
    }
}

/// Sets the server up in the home: makes the server key (`algorithm`, default Ed25519, in
/// `backend` or the default backend) unless there is one, and registers `admin`, a key of the
/// home, as the first admin client named `admin_name`. Run again, it keeps the server key and
/// registers another admin.
///
/// # Errors
/// [`ServeError::Keyhaven`] (the backend is locked, the key cannot be made),
/// [`ServeError::Storage`] (the admin key is registered already, the database fails).
pub fn bootstrap_admin(
    manager: &KeyManager,
    backend: Option<&str>,
    algorithm: Option<Algorithm>,
    admin: Option<(&ManagedKey, &str)>,
) -> Result<ManagedKey, ServeError> {
    let home = Home::of(manager);
    let _lock = lock_server(manager, &home)?;
    let storage = home.storage()?;
    guard_database(manager, &home, &storage)?;
    bootstrap_in(&storage, manager, backend, algorithm, admin)
}

/// Sets up the key broker in the home: makes its master key (an agreement key in `backend`,
/// or the default backend: ECDH P-384 on a PKCS#11 token or a TPM, X25519 in software, unless
/// `algorithm` says) unless there is one, and names it in the server's database. The server
/// then serves the transit routes. Run again, it keeps the master key.
///
/// # Errors
/// [`ServeError::Keyhaven`] (the backend is locked, cannot make agreement keys, stores keys in
/// plain text), [`ServeError::Storage`].
pub fn setup_broker(
    manager: &KeyManager,
    backend: Option<&str>,
    algorithm: Option<Algorithm>,
) -> Result<ManagedKey, ServeError> {
    let home = Home::of(manager);
    let _lock = lock_server(manager, &home)?;
    let storage = home.storage()?;
    guard_database(manager, &home, &storage)?;
    broker_in(&storage, manager, backend, algorithm)
}

/// [`setup_broker`] for servers sharing a PostgreSQL database: every node must reach the
/// master key under the same reference (a PKCS#11 token they share).
///
/// # Errors
/// As [`setup_broker`].
pub fn setup_broker_postgres(
    manager: &KeyManager,
    url: &str,
    backend: Option<&str>,
    algorithm: Option<Algorithm>,
) -> Result<ManagedKey, ServeError> {
    let storage = PostgresStorage::connect(url, 1)?;
    broker_in(&storage, manager, backend, algorithm)
}

fn broker_in(
    storage: &dyn Storage,
    manager: &KeyManager,
    backend: Option<&str>,
    algorithm: Option<Algorithm>,
) -> Result<ManagedKey, ServeError> {
    if let Some(reference) = storage.setting(MASTER_KEY)? {
        return Ok(manager.resolve(&reference)?);
    }
    let name = match backend {
        Some(b) => b.to_owned(),
        None => manager.default_backend_name()?,
    };
    let kind = manager.backend(&name)?.kind();
    if kind.protection() == keyhaven::Protection::SoftwarePlain {
        return Err(ServeError::Setup(format!(
            "backend '{name}' keeps keys in plain files: put the master key in an encrypted \
             store, a PKCS#11 token or a TPM"
        )));
    }
    let algorithm = algorithm.unwrap_or(if kind.is_hardware() {
        Algorithm::EcdhP384
    } else {
        Algorithm::X25519
    });
    if !algorithm.can_agree() {
        return Err(ServeError::Setup(format!(
            "a master key makes agreements: {algorithm} keys cannot (use x25519, ecdh-p256 or \
             ecdh-p384)"
        )));
    }
    let key = manager.generate(Some(&name), algorithm, MASTER_KEY_LABEL)?;
    // Opened once now: a key its backend cannot use for agreement is found at setup.
    manager.master_key(&key, "set up the key broker")?;
    storage.set_setting(MASTER_KEY, &key.reference())?;
    Ok(key)
}

/// The key broker of a store that names a master key.
fn broker_of(
    manager: &KeyManager,
    storage: &Arc<dyn Storage>,
    config: &ServerConfig,
) -> Result<Option<Arc<crate::broker::Broker>>, ServeError> {
    let Some(reference) = storage.setting(MASTER_KEY)? else {
        return Ok(None);
    };
    let key = manager.resolve(&reference)?;
    let master = manager.master_key(&key, "unwrap the key broker's KEKs")?;
    // Real evidence verifiers are on: they check signatures up to the vendor's root; a guest
    // reaches tier 2 only with a launch measurement the operator named.
    let snp: Arc<dyn crate::attest::EvidenceVerifier> = Arc::new(crate::attest::SnpVerifier::new(
        keyhaven_attest::snp::Policy {
            measurements: config.snp_measurements.clone(),
            ..keyhaven_attest::snp::Policy::default()
        },
    ));
    let tdx: Arc<dyn crate::attest::EvidenceVerifier> = Arc::new(crate::attest::TdxVerifier::new(
        keyhaven_attest::tdx::Policy {
            mr_td: config.tdx_mr_tds.clone(),
            reference: config.tdx_registers.clone(),
            ..keyhaven_attest::tdx::Policy::default()
        },
    ));
    let gpu: Arc<dyn crate::attest::EvidenceVerifier> =
        Arc::new(crate::attest::NvidiaVerifier::default());
    let mut broker = crate::broker::Broker::new(master, storage.clone())
        .map_err(|e| ServeError::Setup(e.detail))?
        .accepting(snp.clone())
        .accepting(tdx.clone())
        .accepting(gpu.clone())
        .accepting(Arc::new(crate::attest::CompositeVerifier::new(
            vec![snp, tdx],
            gpu,
        )));
    if let Some(cas) = &config.tpm_ek_cas {
        broker = broker.accepting_tpm(Arc::new(crate::attest::TpmVerifier::new(
            storage.clone(),
            cas.clone(),
            keyhaven_attest::tpm::Policy {
                pcrs: config.tpm_pcrs.clone(),
            },
        )));
    }
    if config.allow_sample_evidence {
        tracing::warn!(
            "sample evidence is accepted: it proves nothing (development only), and never \
             reaches tier 2"
        );
        broker = broker.accepting(Arc::new(crate::attest::SampleVerifier));
    }
    if let Some(tenant) = &config.kbs_tenant {
        broker = broker.serving_kbs(tenant.clone());
    }
    broker =
        broker.with_key_attestation(config.trusted_aks.clone(), config.require_key_attestation);
    Ok(Some(Arc::new(broker)))
}

/// What [`bootstrap_admin`] does, in any store.
fn bootstrap_in(
    storage: &dyn Storage,
    manager: &KeyManager,
    backend: Option<&str>,
    algorithm: Option<Algorithm>,
    admin: Option<(&ManagedKey, &str)>,
) -> Result<ManagedKey, ServeError> {
    let server_key = match storage.setting(SERVER_KEY)? {
        Some(reference) => manager.resolve(&reference)?,
        None => {
            let key = manager.generate(
                backend,
                algorithm.unwrap_or(Algorithm::Ed25519),
                SERVER_KEY_LABEL,
            )?;
            storage.set_setting(SERVER_KEY, &key.reference())?;
            key
        }
    };
    if let Some((admin, name)) = admin {
        if !admin.algorithm().can_sign() {
            return Err(ServeError::Setup(format!(
                "the admin key {admin} is an {} key, which cannot sign requests",
                admin.algorithm()
            )));
        }
        let id = crate::handlers::random(16).map_err(keyhaven::Error::from)?;
        let key = admin.public_key();
        storage.register(&NewClient {
            id: hex::encode(id),
            name: name.to_owned(),
            role: Role::Admin,
            at: unix_now(),
            key: crate::storage::NewKey {
                fingerprint: key.fingerprint().to_hex(),
                algorithm: key.algorithm().short_name().to_owned(),
                spki: key.spki_der().to_vec(),
            },
        })?;
    }
    Ok(server_key)
}

/// [`bootstrap_admin`] for servers sharing a PostgreSQL database (`url`): the server key is
/// made in this home, and every node must reach the same key under the same reference (a
/// PKCS#11 token they share, say).
///
/// # Errors
/// As [`bootstrap_admin`]; [`StorageError::Database`] if the database cannot be reached.
pub fn bootstrap_admin_postgres(
    manager: &KeyManager,
    url: &str,
    backend: Option<&str>,
    algorithm: Option<Algorithm>,
    admin: Option<(&ManagedKey, &str)>,
) -> Result<ManagedKey, ServeError> {
    let storage = PostgresStorage::connect(url, 1)?;
    bootstrap_in(&storage, manager, backend, algorithm, admin)
}

impl Server {
    /// The server of a keyhaven home set up by [`bootstrap_admin`] (`keyhaven serve init`):
    /// its SQLite database, its server key (checked not revoked, then used for every response
    /// without a per-response audit record), and the home's audit log for its decisions.
    ///
    /// # Errors
    /// [`ServeError::Setup`] if the home has no server set up; the home's and the store's
    /// errors.
    pub fn from_home(manager: &KeyManager, config: ServerConfig) -> Result<Self, ServeError> {
        let home = Home::of(manager);
        if !home.database().exists() {
            return Err(ServeError::NotSetUp(format!(
                "no server is set up in {}: run `keyhaven serve init` first",
                manager.home().display()
            )));
        }
        // One server per home: its nonces are in its memory, its keys too.
        let lock = lock_server(manager, &home)?;
        let storage = home.storage()?;
        guard_database(manager, &home, &storage)?;
        // From here on, keys are answered from memory: what the file says was checked once.
        storage.preload()?;
        let reference = storage.setting(SERVER_KEY)?.ok_or_else(|| {
            ServeError::NotSetUp(format!(
                "{} names no server key: run `keyhaven serve init`",
                home.database().display()
            ))
        })?;
        let server = Self::with_home_key(manager, config, Arc::new(storage), &reference)?;
        let lock = Arc::new(lock);
        Ok(server.with_inner(|i| i.lock = Some(lock)))
    }

    /// A node of servers sharing the PostgreSQL database at `url` (set up by
    /// [`bootstrap_admin_postgres`]): nonces, registrations and revocations are the
    /// database's, so any number of nodes serve together; decisions go to this home's audit
    /// log. The database's rows are not authenticated by the home (its access is the
    /// database's own).
    ///
    /// # Errors
    /// [`ServeError::Setup`] if the database names no server key; the home's and the
    /// database's errors.
    pub fn from_home_postgres(
        manager: &KeyManager,
        config: ServerConfig,
        url: &str,
    ) -> Result<Self, ServeError> {
        let storage = Arc::new(PostgresStorage::connect(url, 16)?);
        let reference = storage.setting(SERVER_KEY)?.ok_or_else(|| {
            ServeError::NotSetUp(
                "the database names no server key: run `keyhaven serve init --database URL`".into(),
            )
        })?;
        // Decisions go to this process's chain of the database's trail.
        let trail = Arc::new(crate::trail::PgTrail::new(storage.clone())?);
        Ok(Self::with_home_key(manager, config, storage, &reference)?.with_audit(trail))
    }

    /// The database at `url` and its server key (for checking its audit trail).
    ///
    /// # Errors
    /// As [`Server::from_home_postgres`].
    pub fn postgres_server_key(
        manager: &KeyManager,
        url: &str,
    ) -> Result<(PostgresStorage, keyhaven::PublicKey), ServeError> {
        let storage = PostgresStorage::connect(url, 1)?;
        let reference = storage
            .setting(SERVER_KEY)?
            .ok_or_else(|| ServeError::NotSetUp("the database names no server key".into()))?;
        let key = manager.resolve(&reference)?;
        Ok((storage, key.public_key().clone()))
    }

    fn with_home_key(
        manager: &KeyManager,
        config: ServerConfig,
        storage: Arc<dyn Storage>,
        reference: &str,
    ) -> Result<Self, ServeError> {
        let broker = broker_of(manager, &storage, &config)?;
        let key = manager.resolve(reference)?;
        let signer = manager.service_signer(&key, "sign server responses")?;
        let audit: Arc<dyn AuditSink> = match manager.audit().log()? {
            Some(log) => Arc::new(LogSink(log)),
            None => Arc::new(NoAudit),
        };
        let reference = key.reference();
        Ok(Server::new(config, storage, Arc::new(signer))
            .with_audit(audit)
            .with_inner(|i| {
                i.key_reference = Some(reference);
                i.metrics.set_broker_tier(broker.as_ref().map(|b| b.tier()));
                i.broker = broker;
            }))
    }
}

/// Prunes expired nonces and challenges every minute until aborted.
pub(crate) fn spawn_pruner(server: &Server) -> tokio::task::JoinHandle<()> {
    let inner = server.inner.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let i = inner.clone();
            let now = i.now();
            let pruned = tokio::task::spawn_blocking(move || {
                let pruned = i.storage.prune(now).map_err(|e| e.to_string());
                let checkpoint = i.audit.checkpoint(i.signer.as_ref());
                pruned.and(checkpoint)
            })
            .await;
            if let Ok(Err(e)) = pruned {
                tracing::warn!(error = %e, "pruning or the audit checkpoint failed");
            }
        }
    })
}

/// Serves `server` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish. Expired nonces and challenges are pruned every minute.
///
/// # Errors
/// [`ServeError::Io`] if the listener fails.
pub async fn serve(
    listener: TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let pruner = spawn_pruner(&server);
    let app = server
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    pruner.abort();
    served.map_err(ServeError::Io)
}
