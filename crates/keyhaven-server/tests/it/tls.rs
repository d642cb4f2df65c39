//! TLS with the key in its backend: a self-signed certificate made and proven by a key of a
//! keyhaven backend; keyhaven's client and `openssl s_client` (code nobody here wrote) verify
//! it and talk through it.

use std::sync::Arc;

use keyhaven::stores::MemoryStore;
use keyhaven::{Algorithm, KeyStore};
use keyhaven_client::{Client, ClientError, StoreSigner};
use keyhaven_server::{Server, ServerConfig, SqliteStorage, TlsIdentity};
use tokio::sync::oneshot;

struct TlsServer {
    base: String,
    port: u16,
    identity: TlsIdentity,
    server_key: keyhaven::PublicKey,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(algorithm: Algorithm) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let (_manager, key, signer) = crate::support::server_key(dir.path(), algorithm);
    let identity =
        TlsIdentity::self_signed(signer.clone(), &["localhost".into(), "127.0.0.1".into()])
            .unwrap();
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("s").join("server.db")).unwrap());
    let config = ServerConfig {
        scheme: "https",
        ..ServerConfig::default()
    };
    let server = Server::new(config, storage, Arc::new(signer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let id = identity.clone();
    tokio::spawn(async move {
        keyhaven_server::serve_tls(listener, server, id, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TlsServer {
        base: format!("https://127.0.0.1:{port}"),
        port,
        identity,
        server_key: key.public_key().clone(),
        _dir: dir,
        stop: Some(stop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_certificate_registers_over_tls() {
    for algorithm in [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
    ] {
        let t = start(algorithm).await;
        let keys: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
        let k = keys.generate(Algorithm::Ed25519, "c").unwrap();
        let signer = Arc::new(StoreSigner::new(keys.clone(), &k.id).unwrap());
        let client = Client::new(&t.base, signer.clone(), t.server_key.clone())
            .unwrap()
            .trusting(t.identity.certificate_pem().as_bytes())
            .unwrap();
        let me = client.register("over-tls").await.unwrap();
        assert_eq!(client.whoami().await.unwrap().client, me.id, "{algorithm}");
        // Without the certificate, the connection is refused by the client.
        let blind = Client::new(&t.base, signer, t.server_key.clone()).unwrap();
        match blind.whoami().await {
            Err(ClientError::Transport { .. }) => {}
            other => panic!("{algorithm}: an untrusted certificate was taken: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_verifies_the_certificate_and_the_handshake() {
    keyhaven_testkit::devices::require("openssl");
    for algorithm in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
        let t = start(algorithm).await;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, t.identity.certificate_pem()).unwrap();
        let port = t.port;
        let c = cert.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-CAfile",
                ])
                .arg(&c)
                .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-brief"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Verification: OK"), "{algorithm}: {text}");
        assert!(text.contains("TLSv1.3"), "{algorithm}: {text}");
        // openssl's fingerprint of the certificate is the one the server reports.
        let fp = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let fp = String::from_utf8_lossy(&fp.stdout)
            .split('=')
            .nth(1)
            .unwrap()
            .trim()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(fp, t.identity.fingerprint());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_key_is_refused() {
    let t = start(Algorithm::EcdsaP256).await;
    let dir = tempfile::tempdir().unwrap();
    let (_m, _key, other) = crate::support::server_key(dir.path(), Algorithm::EcdsaP256);
    let e = TlsIdentity::from_pem(&t.identity.certificate_pem(), other).unwrap_err();
    assert!(e.to_string().contains("not for the TLS key"), "{e}");
}
