//! The life of a client: register with proof of possession, signed requests, rotation by
//! continuity proof, revocation; admins; every answer signed and bound to its request.

use keyhaven::versions::ContinuityProof;
use keyhaven::{Algorithm, unix_now};
use keyhaven_client::ClientError;
use keyhaven_client::wire::{KeyStatus, Role};

use crate::support::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_registers_each_algorithm_and_signs_requests() {
    let t = start().await;
    for (algorithm, name) in [
        (Algorithm::Ed25519, "ed"),
        (Algorithm::EcdsaP256, "p256"),
        (Algorithm::EcdsaP384, "p384"),
    ] {
        let key = t.key(algorithm, name);
        let client = t.client(&key);
        let me = client.register(name).await.unwrap();
        assert_eq!(me.name, name);
        assert_eq!(me.role, Role::Client);
        assert_eq!(me.keys.len(), 1);
        assert_eq!(me.keys[0].fingerprint, key.fingerprint().to_hex());
        assert_eq!(me.keys[0].algorithm, algorithm.short_name());
        assert_eq!(me.keys[0].status, KeyStatus::Active);
        let who = client.whoami().await.unwrap();
        assert_eq!(
            (who.client.as_str(), who.role),
            (me.id.as_str(), Role::Client)
        );
        assert_eq!(client.status().await.unwrap(), me);
        // Registered once: a second registration of the same key is a conflict.
        let e = client.register(name).await.unwrap_err();
        assert_eq!(e.problem().unwrap().status, 409, "{e}");
        assert_eq!(e.problem().unwrap().kind, "urn:keyhaven:problem:key-exists");
    }
    assert_eq!(t.metric("keyhaven_registrations_total"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_continuity_proof_keeps_the_old_key_until_its_window_ends() {
    let t = start().await;
    let old = t.key(Algorithm::EcdsaP384, "v1");
    let new = t.key(Algorithm::Ed25519, "v2");
    let me = t.client(&old).register("rotator").await.unwrap();
    let now = unix_now();
    let proof =
        ContinuityProof::create(t.keys.as_ref(), "svc", &old, &new, now, now + 600, None).unwrap();
    let after = t.client(&old).rotate(&proof.to_text()).await.unwrap();
    assert_eq!(after.id, me.id);
    assert_eq!(after.keys.len(), 2);
    assert_eq!(after.keys[0].status, KeyStatus::Rotating);
    assert_eq!(after.keys[0].until, Some(now + 600));
    assert_eq!(after.keys[1].fingerprint, new.fingerprint().to_hex());
    assert_eq!(after.keys[1].successor_of, Some(old.fingerprint().to_hex()));
    // Both keys are accepted during the window ...
    assert_eq!(
        t.client(&new).whoami().await.unwrap().status,
        KeyStatus::Active
    );
    assert_eq!(
        t.client(&old).whoami().await.unwrap().status,
        KeyStatus::Rotating
    );
    // ... and only the new one after it.
    t.advance(601);
    let e = t.client(&old).whoami().await.unwrap_err();
    let p = e.problem().unwrap();
    assert_eq!(
        (p.status, p.kind.as_str()),
        (401, "urn:keyhaven:problem:key-not-accepted")
    );
    assert!(p.detail.contains("retired"), "{}", p.detail);
    let me = t.client(&new).status().await.unwrap();
    assert_eq!(me.keys[0].status, KeyStatus::Retired);
    assert_eq!(t.metric("keyhaven_rotations_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_two_rotations_is_verified_whole() {
    let t = start().await;
    let k1 = t.key(Algorithm::Ed25519, "k1");
    let k2 = t.key(Algorithm::Ed25519, "k2");
    let k3 = t.key(Algorithm::Ed25519, "k3");
    t.client(&k1).register("chain").await.unwrap();
    let now = unix_now();
    let p1 = ContinuityProof::create(t.keys.as_ref(), "c", &k1, &k2, now, now + 100, None).unwrap();
    let p2 =
        ContinuityProof::create(t.keys.as_ref(), "c", &k2, &k3, now, now + 200, Some(&p1)).unwrap();
    let chain = format!("{}{}", p1.to_text(), p2.to_text());
    // The new key signs its own rotation: the chain proves it succeeds k1.
    let after = t.client(&k3).rotate(&chain).await.unwrap();
    assert_eq!(
        after.keys.len(),
        2,
        "k2 was never registered, so it is not added"
    );
    assert_eq!(after.keys[1].fingerprint, k3.fingerprint().to_hex());
    assert_eq!(
        t.client(&k3).whoami().await.unwrap().status,
        KeyStatus::Active
    );
    assert_eq!(
        t.client(&k1).whoami().await.unwrap().status,
        KeyStatus::Rotating
    );
    // The same chain again: its start is no longer active.
    let e = t.client(&k3).rotate(&chain).await.unwrap_err();
    assert_eq!(e.problem().unwrap().status, 400, "{e}");
    // A chain whose later part starts from a registered key is taken from there.
    let k4 = t.key(Algorithm::Ed25519, "k4");
    let p3 =
        ContinuityProof::create(t.keys.as_ref(), "c", &k3, &k4, now, now + 300, Some(&p2)).unwrap();
    let longer = format!("{chain}{}", p3.to_text());
    let after = t.client(&k4).rotate(&longer).await.unwrap();
    assert_eq!(after.keys.len(), 3);
    assert_eq!(after.keys[1].status, KeyStatus::Rotating);
    // An old key in its window still signs requests, but anchors no rotation of its own.
    let k5 = t.key(Algorithm::Ed25519, "k5");
    let fork =
        ContinuityProof::create(t.keys.as_ref(), "c", &k1, &k5, now, now + 60, None).unwrap();
    let e = t.client(&k1).rotate(&fork.to_text()).await.unwrap_err();
    let p = e.problem().unwrap();
    assert_eq!(p.kind, "urn:keyhaven:problem:bad-continuity-proof");
    assert!(p.detail.contains("rotating"), "{}", p.detail);
    let e = t.client(&k2).whoami().await.unwrap_err();
    assert_eq!(
        e.problem().unwrap().kind,
        "urn:keyhaven:problem:unknown-key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revokes_itself_and_is_refused_from_then_on() {
    let t = start().await;
    let key = t.key(Algorithm::Ed25519, "leaky");
    let client = t.client(&key);
    client.register("leaky").await.unwrap();
    let after = client.revoke(None, "laptop stolen").await.unwrap();
    assert_eq!(after.keys[0].status, KeyStatus::Revoked);
    let r = after.keys[0].revoked.as_ref().unwrap();
    assert_eq!(
        (r.reason.as_str(), r.by.as_str()),
        ("laptop stolen", "self")
    );
    let e = client.whoami().await.unwrap_err();
    let p = e.problem().unwrap();
    assert_eq!(
        (p.status, p.kind.as_str()),
        (401, "urn:keyhaven:problem:key-not-accepted")
    );
    assert!(p.detail.contains("revoked"));
    // A revoked key cannot rotate its way back in.
    let next = t.key(Algorithm::Ed25519, "next");
    let now = unix_now();
    let proof =
        ContinuityProof::create(t.keys.as_ref(), "l", &key, &next, now, now + 60, None).unwrap();
    assert!(client.rotate(&proof.to_text()).await.is_err());
    assert!(t.client(&next).whoami().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_search_export_bulk_revoke_and_monitor() {
    let t = start().await;
    let admin_key = t.key(Algorithm::EcdsaP256, "admin");
    t.make_admin(&admin_key);
    let admin = t.client(&admin_key);
    let mut keys = Vec::new();
    for i in 0..5 {
        let k = t.key(Algorithm::Ed25519, &format!("c{i}"));
        t.client(&k).register(&format!("svc-{i}")).await.unwrap();
        keys.push(k);
    }
    let all = admin.admin_clients("", 100).await.unwrap();
    assert_eq!(all.len(), 6);
    let found = admin.admin_clients("SVC-3", 100).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "svc-3");
    let by_key = admin
        .admin_clients(&keys[1].fingerprint().to_hex()[..16], 100)
        .await
        .unwrap();
    assert_eq!(by_key[0].name, "svc-1");
    assert_eq!(admin.admin_export().await.unwrap().len(), 6);
    let stats = admin.admin_stats().await.unwrap();
    assert_eq!((stats.clients, stats.active_keys), (6, 6));
    assert_eq!(stats.registrations_last_hour, 6);

    let targets = vec![
        keys[0].fingerprint().to_hex(),
        keys[1].fingerprint().to_hex(),
        "ab".repeat(32),
    ];
    let out = admin.admin_revoke(&targets, "incident 42").await.unwrap();
    assert_eq!(out.revoked, targets[..2]);
    assert_eq!(out.unknown, targets[2..]);
    let again = admin.admin_revoke(&targets[..1], "again").await.unwrap();
    assert_eq!(again.already, targets[..1]);
    assert!(t.client(&keys[0]).whoami().await.is_err());
    assert!(t.client(&keys[2]).whoami().await.is_ok());
    let revoked = &admin.admin_clients("svc-0", 1).await.unwrap()[0].keys[0];
    assert_eq!(
        revoked.revoked.as_ref().unwrap().by,
        format!("admin:{}", admin_key.fingerprint().to_hex())
    );
    assert_eq!(admin.admin_stats().await.unwrap().revoked_keys, 2);

    // A client is not an admin.
    let e = t.client(&keys[3]).admin_export().await.unwrap_err();
    let p = e.problem().unwrap();
    assert_eq!(
        (p.status, p.kind.as_str()),
        (403, "urn:keyhaven:problem:forbidden")
    );
    let e = t
        .client(&keys[3])
        .admin_revoke(&targets[2..], "x")
        .await
        .unwrap_err();
    assert_eq!(e.problem().unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinned_to_another_server_key_refuses_every_answer() {
    let t = start().await;
    let key = t.key(Algorithm::Ed25519, "k");
    let impostor = t.key(Algorithm::Ed25519, "not-the-server").public_key;
    let signer =
        std::sync::Arc::new(keyhaven_client::StoreSigner::new(t.keys.clone(), &key.id).unwrap());
    let client = keyhaven_client::Client::new(&t.base, signer, impostor).unwrap();
    match client.register("x").await {
        Err(ClientError::Unauthentic(e)) => assert!(e.to_string().contains("unknown key"), "{e}"),
        other => panic!("an answer signed by another key was taken: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_returns_the_server_key() {
    let t = start().await;
    let (info, key) = keyhaven_client::discover(&t.base).await.unwrap();
    assert_eq!(key, t.server_key);
    assert_eq!(info.fingerprint, t.server_key.fingerprint().to_hex());
    assert_eq!(info.api, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_after_shutdown_is_asked() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let (_manager, _key, signer) = crate::support::server_key(dir.path(), Algorithm::Ed25519);
    let storage = Arc::new(
        keyhaven_server::SqliteStorage::open(&dir.path().join("s").join("server.db")).unwrap(),
    );
    let server = keyhaven_server::Server::new(
        keyhaven_server::ServerConfig::default(),
        storage,
        Arc::new(signer),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(keyhaven_server::serve(listener, server, async {
        let _ = stopped.await;
    }));
    // A request whose body is still on its way ...
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("POST /v1/challenge HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\n\r\nab")
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ... when the server is told to stop (what SIGTERM does in `keyhaven serve`).
    stop.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !served.is_finished(),
        "the server waits for the request in flight"
    );
    conn.write_all(b"cd").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // New connections are not taken; the server has stopped.
    tokio::time::timeout(std::time::Duration::from_secs(5), served)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// CORS for the configured origins only: a preflight from one is answered without a signature
/// (204, the RFC 9421 request headers allowed); its signed requests' answers expose the
/// signature headers; another origin gets no CORS header at all (the browser withholds the
/// answer from its page), and a preflight from it reaches the pipeline like any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_serves_configured_origins_only() {
    let t = crate::support::start_with(keyhaven_server::ServerConfig {
        cors_origins: vec!["http://app.example".into()],
        ..keyhaven_server::ServerConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, t.url("/v1/whoami"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "signature, signature-input",
            )
            .send()
    };
    let ok = preflight("http://app.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "http://app.example");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "signature",
        "signature-input",
        "content-digest",
        "authorization",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert_eq!(
        other.headers()["vary"],
        "origin",
        "caches keep answers apart by origin"
    );
    assert_ne!(other.status(), 204);

    // A signed request from the page's origin: its answer is readable and checkable.
    let key = t.key(Algorithm::Ed25519, "web");
    t.client(&key).register("web").await.unwrap();
    let answer = http
        .get(t.url("/v1/server"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    let h = answer.headers();
    assert_eq!(h["access-control-allow-origin"], "http://app.example");
    let exposed = h["access-control-expose-headers"].to_str().unwrap();
    assert!(
        exposed.contains("signature-input") && exposed.contains("content-digest"),
        "{exposed}"
    );
    assert!(h.contains_key("signature"));
}
