//! Whole requests, as an attacker on the network sends them, through keyhaven-server's router
//! (limits, signature checks, handlers, response signing): any method, path, header fields and
//! body. Never a panic, never a 500; every refusal a problem document; every answer signed.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use keyhaven::{Algorithm, BackendConfig, BackendKind, FixedPassphrase, KeyManager};
use keyhaven_server::{Server, ServerConfig, SqliteStorage};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager =
            KeyManager::open(dir.path().join("home"), FixedPassphrase::new("fuzz")).expect("home");
        manager
            .add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
            .expect("backend");
        let key = manager
            .generate(None, Algorithm::Ed25519, "server")
            .expect("key");
        let signer = manager.service_signer(&key, "fuzz").expect("signer");
        let storage =
            SqliteStorage::open(&dir.path().join("s").join("server.db")).expect("storage");
        let server = Server::new(ServerConfig::default(), Arc::new(storage), Arc::new(signer));
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            router: server.router(),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // METHOD SP PATH LF (NAME: VALUE LF)* LF BODY
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("");
    let (method, path) = first.split_once(' ').unwrap_or(("GET", first));
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:8421{path}"))
        .header("host", "127.0.0.1:8421");
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            builder = builder.header(n.trim(), v.trim());
        }
    }
    let Ok(request) = builder.body(Body::from(body.to_vec())) else {
        return;
    };
    let w = world();
    let response = w
        .runtime
        .block_on(w.router.clone().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    assert_ne!(status, 500, "bad input must never be a 500");
    assert!(
        response.headers().contains_key("signature"),
        "every answer is signed"
    );
    if status >= 400 {
        let ct = response
            .headers()
            .get("content-type")
            .expect("a content type");
        assert_eq!(ct, "application/problem+json");
    }
});
