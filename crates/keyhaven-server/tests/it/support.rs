//! A server on a loopback port for one test, stopped when the handle drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhaven::stores::MemoryStore;
use keyhaven::{
    Algorithm, BackendConfig, BackendKind, FixedPassphrase, KeyInfo, KeyManager, KeyStore,
    PublicKey, unix_now,
};
use keyhaven_client::wire::Role;
use keyhaven_client::{Client, StoreSigner};
use keyhaven_server::storage::{NewClient, NewKey};
use keyhaven_server::{Server, ServerConfig, SqliteStorage, Storage};
use tokio::sync::oneshot;

/// A running server.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) server: Server,
    pub(crate) storage: Arc<SqliteStorage>,
    pub(crate) server_key: PublicKey,
    /// Seconds added to the real clock (to move the server through time).
    pub(crate) offset: Arc<AtomicU64>,
    /// Client keys live here.
    pub(crate) keys: Arc<dyn KeyStore>,
    /// The home of the server key, whose audit log is the server's trail
    /// ([`start_audited`] only).
    pub(crate) manager: Option<KeyManager>,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub(crate) async fn start() -> TestServer {
    start_with(ServerConfig::default()).await
}

/// A home in `dir` with a memory backend and a server key of `algorithm`: the manager, the
/// key, and a service signer over it.
pub(crate) fn server_key(
    dir: &std::path::Path,
    algorithm: Algorithm,
) -> (KeyManager, keyhaven::ManagedKey, keyhaven::ServiceSigner) {
    let manager = KeyManager::open(dir.join("home"), FixedPassphrase::new("pw")).unwrap();
    manager
        .add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
        .unwrap();
    let key = manager.generate(None, algorithm, "server").unwrap();
    let signer = manager.service_signer(&key, "test").unwrap();
    (manager, key, signer)
}

pub(crate) async fn start_with(config: ServerConfig) -> TestServer {
    start_inner(config, false).await
}

/// A server whose decisions go to its home's audit log, as in embedded mode.
pub(crate) async fn start_audited() -> TestServer {
    start_inner(ServerConfig::default(), true).await
}

/// An audited server with a key broker whose master key is an X25519 key of the home's
/// memory backend (tier 1).
pub(crate) async fn start_broker() -> TestServer {
    start_full(ServerConfig::default(), true, true, None, "127.0.0.1:0").await
}

/// [`start_broker`] with `config` (the evidence it accepts).
pub(crate) async fn start_broker_with(config: ServerConfig) -> TestServer {
    start_full(config, true, true, None, "127.0.0.1:0").await
}

/// [`start_broker`] with its clock (and its clients') at `at`: recorded evidence is checked at
/// a time inside its collateral's validity. (A server's clock is not set back once it runs:
/// requests signed before it started are refused as replays.)
pub(crate) async fn start_broker_at(at: u64) -> TestServer {
    start_full(ServerConfig::default(), true, true, Some(at), "127.0.0.1:0").await
}

/// [`start_broker`] accepting `sample` evidence (development only).
pub(crate) async fn start_broker_sample() -> TestServer {
    let config = ServerConfig {
        allow_sample_evidence: true,
        ..ServerConfig::default()
    };
    start_full(config, true, true, None, "127.0.0.1:0").await
}

/// [`start_broker`] listening on every address, IPv4 and IPv6 (`[::]`, dual stack), so one
/// client can come from two addresses (`127.0.0.1` and `::1`, see [`TestServer::client_at`]);
/// `None` where this machine has no IPv6.
pub(crate) async fn start_broker_dual_stack() -> Option<TestServer> {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return None;
    }
    Some(start_full(ServerConfig::default(), true, true, None, "[::]:0").await)
}

async fn start_inner(config: ServerConfig, audited: bool) -> TestServer {
    start_full(config, audited, false, None, "127.0.0.1:0").await
}

async fn start_full(
    config: ServerConfig,
    audited: bool,
    broker: bool,
    start: Option<u64>,
    listen: &str,
) -> TestServer {
    let sample = config.allow_sample_evidence;
    let kbs = config.kbs_tenant.clone();
    let tpm = config
        .tpm_ek_cas
        .clone()
        .map(|cas| (cas, config.tpm_pcrs.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (manager, key, signer) = server_key(dir.path(), Algorithm::Ed25519);
    let server_key = key.public_key().clone();
    let storage =
        Arc::new(SqliteStorage::open(&dir.path().join("server").join("server.db")).unwrap());
    let offset = Arc::new(AtomicU64::new(
        start.map_or(0, |at| at.wrapping_sub(unix_now())),
    ));
    let o = offset.clone();
    let mut server =
        Server::new(config, storage.clone(), Arc::new(signer)).with_clock(Arc::new(move || {
            unix_now().wrapping_add(o.load(Ordering::Relaxed))
        }));
    if audited {
        let log = manager.audit().log().unwrap().expect("the home audits");
        server = server.with_audit(Arc::new(keyhaven_server::LogSink(log)));
    }
    if broker {
        let master = manager
            .generate(None, Algorithm::X25519, "broker-master")
            .unwrap();
        let master = manager.master_key(&master, "test broker").unwrap();
        let mut b = keyhaven_server::Broker::new(master, storage.clone())
            .unwrap()
            .accepting(Arc::new(keyhaven_server::attest::SnpVerifier::default()))
            .accepting(Arc::new(keyhaven_server::attest::TdxVerifier::default()))
            .accepting(Arc::new(keyhaven_server::attest::NvidiaVerifier::default()));
        if sample {
            b = b.accepting(Arc::new(keyhaven_server::attest::SampleVerifier));
        }
        if let Some((cas, pcrs)) = tpm {
            b = b.accepting_tpm(Arc::new(keyhaven_server::attest::TpmVerifier::new(
                storage.clone(),
                cas,
                keyhaven_attest::tpm::Policy { pcrs },
            )));
        }
        if let Some(tenant) = kbs {
            b = b.serving_kbs(tenant);
        }
        server = server.with_broker(Arc::new(b));
    }
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        keyhaven_server::serve(listener, s, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        base,
        server,
        storage,
        server_key,
        offset,
        keys: Arc::new(MemoryStore::new().unwrap()),
        manager: (audited || broker).then_some(manager),
        _dir: dir,
        stop: Some(stop),
        task: Some(task),
        // The manager (and its memory backend with the server key) lives in the signer.
    }
}

impl TestServer {
    /// A new key of `algorithm` in the test's store.
    pub(crate) fn key(&self, algorithm: Algorithm, label: &str) -> KeyInfo {
        self.keys.generate(algorithm, label).unwrap()
    }

    /// A client signing with `key`.
    pub(crate) fn client(&self, key: &KeyInfo) -> Client {
        self.client_at(key, &self.base)
    }

    /// A client signing with `key` that reaches the server at `base` (`http://[::1]:PORT` for
    /// a [`start_broker_dual_stack`] server).
    pub(crate) fn client_at(&self, key: &KeyInfo, base: &str) -> Client {
        let signer = Arc::new(StoreSigner::new(self.keys.clone(), &key.id).unwrap());
        let offset = self.offset.clone();
        Client::new(base, signer, self.server_key.clone())
            .unwrap()
            .with_clock(Arc::new(move || {
                unix_now().wrapping_add(offset.load(Ordering::Relaxed))
            }))
    }

    /// Registers `key` directly in the store as an admin's.
    pub(crate) fn make_admin(&self, key: &KeyInfo) {
        self.register_as(key, &format!("{:032x}", unix_now()), Role::Admin);
    }

    /// Registers `key` directly in the store as client `id`'s, of `role`.
    pub(crate) fn register_as(&self, key: &KeyInfo, id: &str, role: Role) {
        self.storage
            .register(&NewClient {
                id: id.to_owned(),
                name: "root".into(),
                role,
                at: unix_now(),
                key: NewKey {
                    fingerprint: key.fingerprint().to_hex(),
                    algorithm: key.algorithm.short_name().into(),
                    spki: key.public_key.spki_der().to_vec(),
                },
            })
            .unwrap();
    }

    /// Moves the server's clock `seconds` ahead.
    pub(crate) fn advance(&self, seconds: u64) {
        self.offset.fetch_add(seconds, Ordering::Relaxed);
    }

    /// Sets the server's (and its clients') clock to `at`, later than its start.
    pub(crate) fn set_time(&self, at: u64) {
        self.offset
            .store(at.wrapping_sub(unix_now()), Ordering::Relaxed);
    }

    /// The server's time.
    pub(crate) fn now(&self) -> u64 {
        unix_now().wrapping_add(self.offset.load(Ordering::Relaxed))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's port.
    pub(crate) fn port(&self) -> u16 {
        self.base
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap()
    }

    pub(crate) fn metric(&self, line_prefix: &str) -> u64 {
        self.server
            .metrics()
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// A folder of the recorded attestation evidence (`KEYHAVEN_EVIDENCE_DIR`, else
/// `../shared/attestation-evidence` beside the project), or `None` with a note when absent.
pub(crate) fn recorded_evidence(sub: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("KEYHAVEN_EVIDENCE_DIR").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/attestation-evidence")
        },
        std::path::PathBuf::from,
    );
    let dir = dir.join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: no recorded evidence at {}: skipped", dir.display());
        None
    }
}

/// The recorded TDX quotes and DCAP collateral in the `dcap-qvl` package's `sample/` folder
/// (a dev-dependency of keyhaven-attest), found through `cargo metadata`.
pub(crate) fn dcap_sample(name: &str) -> (Vec<u8>, serde_json::Value) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let dcap = packages.iter().find(|p| p["name"] == "dcap-qvl").unwrap();
    let dir = std::path::Path::new(dcap["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("sample");
    let quote = std::fs::read(dir.join(name)).unwrap();
    let collateral = std::fs::read(dir.join(format!("{name}_collateral.json"))).unwrap();
    (quote, serde_json::from_slice(&collateral).unwrap())
}
