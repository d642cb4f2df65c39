//! PostgreSQL: the storage conformance suite on a throwaway cluster, and two server nodes
//! sharing one database: a registration on one is known to the other, a nonce used on one is
//! refused on the other, a revocation on one holds on the other.

use std::sync::Arc;

use keyhaven::stores::MemoryStore;
use keyhaven::{Algorithm, KeyStore};
use keyhaven_client::{Client, StoreSigner};
use keyhaven_httpsig::{Request, SignatureSpec, sign_request};
use keyhaven_server::storage::conformance;
use keyhaven_server::{PostgresStorage, Server, ServerConfig};
use keyhaven_testkit::devices::Postgres;
use tokio::sync::oneshot;

/// A database of its own on the cluster, for one check.
fn fresh_database(pg: &Postgres, name: &str) -> String {
    let admin = PostgresStorage::connect(&pg.url(), 1).unwrap();
    drop(admin);
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    pg.url().replace("/postgres", &format!("/{name}"))
}

#[test]
fn postgres_passes_the_storage_conformance_suite() {
    let pg = Postgres::start();
    let n = std::cell::Cell::new(0);
    conformance::run_all(&|| {
        n.set(n.get() + 1);
        let url = fresh_database(&pg, &format!("c{}", n.get()));
        Box::new(PostgresStorage::connect(&url, 2).unwrap())
    });
}

#[test]
fn nodes_starting_together_migrate_once() {
    let pg = Postgres::start();
    let url = pg.url();
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStorage::connect(&url, 1).map(|_| ()))
        })
        .collect();
    for n in nodes {
        n.join().unwrap().unwrap();
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows: i64 = c
        .query_one("SELECT count(*) FROM keyhaven_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

struct Node {
    base: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn node(url: &str, signer: keyhaven::ServiceSigner) -> Node {
    node_with(url, signer, None).await
}

/// A node over the shared database, with a key broker when given its master key.
async fn node_with(
    url: &str,
    signer: keyhaven::ServiceSigner,
    master: Option<keyhaven::envelope::MasterKey>,
) -> Node {
    // A blocking client: made off the async threads, like every call the server makes on it.
    let u = url.to_owned();
    let storage: Arc<dyn keyhaven_server::Storage> = Arc::new(
        tokio::task::spawn_blocking(move || PostgresStorage::connect(&u, 4))
            .await
            .unwrap()
            .unwrap(),
    );
    let mut server = Server::new(ServerConfig::default(), storage.clone(), Arc::new(signer));
    if let Some(master) = master {
        let broker = keyhaven_server::Broker::new(master, storage).unwrap();
        server = server.with_broker(Arc::new(broker));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        keyhaven_server::serve(listener, server, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Node {
        base,
        stop: Some(stop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_registrations_nonces_and_revocations() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    // Both nodes sign with the same server key (one home's, as a shared token would hold it).
    let dir = tempfile::tempdir().unwrap();
    let (manager, key, _) = crate::support::server_key(dir.path(), Algorithm::Ed25519);
    let server_key = key.public_key().clone();
    let (a, b) = {
        let u = url.clone();
        let sa = manager.service_signer(&key, "a").unwrap();
        let sb = manager.service_signer(&key, "b").unwrap();
        (node(&u, sa).await, node(&u, sb).await)
    };
    let keys: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let k = keys.generate(Algorithm::EcdsaP384, "svc").unwrap();
    let signer = Arc::new(StoreSigner::new(keys.clone(), &k.id).unwrap());
    let on_a = Client::new(&a.base, signer.clone(), server_key.clone()).unwrap();
    let on_b = Client::new(&b.base, signer, server_key.clone()).unwrap();

    // Registered through a, known to b.
    let me = on_a.register("shared").await.unwrap();
    assert_eq!(on_b.whoami().await.unwrap().client, me.id);

    // One signed request, sent to a and then replayed to b: b refuses it.
    let mut r = Request::new("GET", &format!("{}/v1/whoami", a.base)).unwrap();
    let spec = SignatureSpec::new("keyhaven", &k.fingerprint().to_hex())
        .covering(&["@method", "@path", "@authority"])
        .unwrap()
        .created(keyhaven::unix_now())
        .nonce("once-across-nodes");
    sign_request(&mut r, &spec, keys.as_ref(), &k.id).unwrap();
    let http = reqwest::Client::new();
    let send = |base: &str| {
        let mut req = http.get(format!("{base}/v1/whoami"));
        for (n, v) in r.fields() {
            req = req.header(n.as_str(), v.as_str());
        }
        // The same authority on both: the request was signed for a's.
        req = req.header("host", a.base.trim_start_matches("http://"));
        req.send()
    };
    assert_eq!(send(&a.base).await.unwrap().status(), 200);
    let replay = send(&b.base).await.unwrap();
    assert_eq!(replay.status(), 401);
    let body = replay.text().await.unwrap();
    assert!(body.contains("replayed-nonce"), "{body}");

    // Revoked through b, refused by a.
    on_b.revoke(None, "rotated out").await.unwrap();
    let e = on_a.whoami().await.unwrap_err();
    assert_eq!(e.problem().unwrap().status, 401, "{e}");
    drop(pg);
}

#[test]
fn the_shared_audit_trail_verifies_and_shows_every_edit_and_removal() {
    use keyhaven_server::{AuditSink, Decision, PgTrail, verify_trail};
    let pg = Postgres::start();
    let storage = Arc::new(PostgresStorage::connect(&pg.url(), 2).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (_manager, key, signer) = crate::support::server_key(dir.path(), Algorithm::Ed25519);
    // Two nodes, each its own chain.
    let a = PgTrail::new(storage.clone()).unwrap();
    let b = PgTrail::new(storage.clone()).unwrap();
    for i in 0..3 {
        for node in [&a, &b] {
            node.record(&Decision {
                operation: "server.register",
                principal: format!("client:{i}"),
                key: Some(format!("{i:064x}")),
                allowed: i != 1,
                reason: "test".into(),
                ..Decision::default()
            })
            .unwrap();
        }
    }
    // Either node searches every chain: the allowed decisions of an operation (what the
    // compromise query reads).
    let found = b.search("server.register").unwrap();
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.iter().all(|(_, p, r)| p != "client:1" && r == "test"));
    assert!(a.search("secret.release").unwrap().is_empty());
    a.checkpoint(&signer).unwrap();
    let report = verify_trail(&storage, key.public_key()).unwrap();
    assert_eq!(
        (report.chains, report.records, report.checkpoints),
        (2, 6, 1)
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let mut sql = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    // An edited record.
    sql.execute(
        "UPDATE audit SET allowed = true WHERE chain = $1 AND seq = 2",
        &[&b.chain()],
    )
    .unwrap();
    let report = verify_trail(&storage, key.public_key()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(b.chain()) && p.contains("record 2")),
        "{:?}",
        report.problems
    );
    sql.execute(
        "UPDATE audit SET allowed = false WHERE chain = $1 AND seq = 2",
        &[&b.chain()],
    )
    .unwrap();
    assert!(
        verify_trail(&storage, key.public_key())
            .unwrap()
            .problems
            .is_empty()
    );
    // The last record of a chain removed after a checkpoint named it.
    sql.execute(
        "DELETE FROM audit WHERE chain = $1 AND seq = 3",
        &[&a.chain()],
    )
    .unwrap();
    let report = verify_trail(&storage, key.public_key()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("no longer has")),
        "{:?}",
        report.problems
    );
    // A checkpoint not signed by the server key.
    sql.execute(
        "UPDATE audit_checkpoints SET statement = statement || 'x'",
        &[],
    )
    .unwrap();
    let report = verify_trail(&storage, key.public_key()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("not signed")),
        "{:?}",
        report.problems
    );
}

/// A node with a key broker over the shared database, its master key `master`.
async fn broker_node(
    url: &str,
    signer: keyhaven::ServiceSigner,
    master: keyhaven::envelope::MasterKey,
) -> Node {
    node_with(url, signer, Some(master)).await
}

/// Two broker nodes on one PostgreSQL database with one master key: a transit key rotated on
/// one encrypts at the new version on the other, a secret written on one is released by the
/// other, and a token revoked on one is refused by the other at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_broker_nodes_share_keys_secrets_and_token_revocations() {
    use keyhaven_client::tokens::Right;

    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let (manager, key, _) = crate::support::server_key(dir.path(), Algorithm::Ed25519);
    let master = manager
        .generate(None, Algorithm::X25519, "broker-master")
        .unwrap();
    let server_key = key.public_key().clone();
    let a = broker_node(
        &url,
        manager.service_signer(&key, "a").unwrap(),
        manager.master_key(&master, "a").unwrap(),
    )
    .await;
    let b = broker_node(
        &url,
        manager.service_signer(&key, "b").unwrap(),
        manager.master_key(&master, "b").unwrap(),
    )
    .await;
    let keys: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let clients = |label: &str| {
        let k = keys.generate(Algorithm::Ed25519, label).unwrap();
        let signer = Arc::new(StoreSigner::new(keys.clone(), &k.id).unwrap());
        (
            Client::new(&a.base, signer.clone(), server_key.clone()).unwrap(),
            Client::new(&b.base, signer, server_key.clone()).unwrap(),
            k.fingerprint().to_hex(),
        )
    };
    let (alice_a, alice_b, _) = clients("alice");
    let (bob_a, bob_b, bob_fp) = clients("bob");
    alice_a.register("alice").await.unwrap();
    bob_a.register("bob").await.unwrap();

    let v1 = alice_a.transit_encrypt("orders", b"one").await.unwrap();
    alice_a.transit_rotate("orders").await.unwrap();
    let v2 = alice_b.transit_encrypt("orders", b"two").await.unwrap();
    assert_eq!((v1.key_version, v2.key_version), (1, 2));
    assert_eq!(
        alice_b
            .transit_decrypt("orders", &v1.ciphertext)
            .await
            .unwrap()
            .expose_secret(),
        b"one"
    );
    alice_a
        .put_secret("shared/db", b"pg-secret", Default::default())
        .await
        .unwrap();
    assert_eq!(
        alice_b
            .release_secret("shared/db", None)
            .await
            .unwrap()
            .secret
            .expose_secret(),
        b"pg-secret"
    );
    let minted = alice_a
        .mint_token(
            &bob_fp,
            &[Right::new("secret.release", "shared/").unwrap()],
            600,
        )
        .await
        .unwrap();
    let bob_b = bob_b.with_token(&minted.token).unwrap();
    let bob_a = bob_a.with_token(&minted.token).unwrap();
    assert_eq!(
        bob_b
            .release_secret("shared/db", None)
            .await
            .unwrap()
            .secret
            .expose_secret(),
        b"pg-secret",
        "a token minted on a is honoured by b"
    );
    alice_a
        .revoke_token(&minted.token, true, "left the team")
        .await
        .unwrap();
    for node in [&bob_b, &bob_a] {
        let e = node.release_secret("shared/db", None).await.unwrap_err();
        assert!(
            matches!(&e, keyhaven_client::ClientError::Problem(p) if p.kind.ends_with(":token-revoked")),
            "{e}"
        );
    }

    // Policies are cached on each node (30 s) and dropped when another node changes them
    // (NOTIFY): b has read them for a release; a loads a denying one; b refuses within
    // moments, long before its copy would expire.
    let admin_key = keys.generate(Algorithm::Ed25519, "admin").unwrap();
    let u = url.clone();
    let admin_fp = admin_key.fingerprint().to_hex();
    let admin_spki = admin_key.public_key.spki_der().to_vec();
    tokio::task::spawn_blocking(move || {
        use keyhaven_server::Storage;
        use keyhaven_server::storage::{NewClient, NewKey};
        PostgresStorage::connect(&u, 1)
            .unwrap()
            .register(&NewClient {
                id: "0123456789abcdef0123456789abcdef".into(),
                name: "root".into(),
                role: keyhaven_client::wire::Role::Admin,
                at: keyhaven::unix_now(),
                key: NewKey {
                    fingerprint: admin_fp,
                    algorithm: "ed25519".into(),
                    spki: admin_spki,
                },
            })
            .unwrap();
    })
    .await
    .unwrap();
    let admin_a = Client::new(
        &a.base,
        Arc::new(StoreSigner::new(keys.clone(), &admin_key.id).unwrap()),
        server_key.clone(),
    )
    .unwrap();
    alice_b.release_secret("shared/db", None).await.unwrap();
    admin_a
        .admin_put_policy(
            "shared/",
            "package keyhaven.release\nimport rego.v1\nallow := false\nbecause := \"frozen\"\n",
        )
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    loop {
        match alice_b.release_secret("shared/db", None).await {
            Err(keyhaven_client::ClientError::Problem(p)) if p.kind.ends_with(":policy-denied") => {
                break;
            }
            Ok(_) if asked.elapsed() < std::time::Duration::from_secs(10) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => panic!(
                "b still releases {:?} after {:?}",
                other.map(|_| ()),
                asked.elapsed()
            ),
        }
    }
    assert!(
        asked.elapsed() < keyhaven_server::broker::POLICY_TTL,
        "the notification, not the cache's expiry, dropped b's copy"
    );
    admin_a.admin_delete_policy("shared/").await.unwrap();

    // KEK rotations on both nodes at once take turns (an advisory lock): both succeed, one
    // after the other, and the secret still opens on both.
    let (ra, rb) = tokio::join!(
        alice_a.rotate_secret_kek(None),
        alice_b.rotate_secret_kek(None)
    );
    let mut versions = [ra.unwrap().0, rb.unwrap().0];
    versions.sort_unstable();
    assert_eq!(versions, [2, 3], "each rotation made its own version");
    for node in [&alice_a, &alice_b] {
        let mut released = None;
        // b's copy of the policies may be a moment behind the delete.
        for _ in 0..200 {
            match node.release_secret("shared/db", None).await {
                Ok(r) => {
                    released = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        assert_eq!(
            released.expect("released").secret.expose_secret(),
            b"pg-secret"
        );
    }
    drop(pg);
}
