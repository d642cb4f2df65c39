//! What the server's load benches share: serving on loopback, registering clients.

#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use keyhaven::stores::MemoryStore;
use keyhaven::{Algorithm, KeyInfo, KeyStore};
use keyhaven_client::wire::Role;
use keyhaven_server::storage::{NewClient, NewKey};
use keyhaven_server::{Server, Storage};

/// Serves `server` on a free loopback port until the process ends; its base URL.
pub(crate) async fn serve(server: Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        keyhaven_server::serve(listener, server, std::future::pending())
            .await
            .unwrap()
    });
    base
}

/// `n` Ed25519 keys of a new memory store, each registered as a client in `storage`.
pub(crate) async fn register_clients(
    storage: &Arc<dyn Storage>,
    n: usize,
) -> (MemoryStore, Vec<KeyInfo>) {
    let keys = MemoryStore::new().unwrap();
    let mut clients = Vec::new();
    for i in 0..n {
        let k = keys.generate(Algorithm::Ed25519, &format!("c{i}")).unwrap();
        let s = storage.clone();
        let client = NewClient {
            id: format!("{i:032x}"),
            name: format!("c{i}"),
            role: Role::Client,
            at: keyhaven::unix_now(),
            key: NewKey {
                fingerprint: k.fingerprint().to_hex(),
                algorithm: "ed25519".into(),
                spki: k.public_key.spki_der().to_vec(),
            },
        };
        tokio::task::spawn_blocking(move || s.register(&client))
            .await
            .unwrap()
            .unwrap();
        clients.push(k);
    }
    (keys, clients)
}
