//! A bounded load generator on loopback: verified Ed25519-signed requests per second and their
//! p50/p99 latency at 1, 8 and 64 concurrent clients on the embedded (SQLite) store, each beside
//! the unauthenticated `/healthz` of the same server in the same run (both answers are signed
//! by the server key, so the difference is the request signature's check: parsing, key lookup,
//! verification and the nonce's single use).
//!
//! Requests are signed before the clock starts (each with its own nonce), so the figures are
//! the server's. Every run is bounded: at most `REQUESTS` requests or `SECONDS` seconds per
//! endpoint and concurrency. `cargo bench -p keyhaven-server --bench load`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven::{Algorithm, BackendConfig, BackendKind, FixedPassphrase, KeyManager};
use keyhaven_httpsig::{Request, SignatureSpec, sign_request};
use keyhaven_server::{PostgresStorage, Rate, Server, ServerConfig, SqliteStorage, Storage};

const REQUESTS: usize = 20_000;
const SECONDS: u64 = 4;

/// One client's requests: each a URL and its header fields.
type Job = Vec<(String, Vec<(String, String)>)>;

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn fire(http: &reqwest::Client, jobs: Vec<Job>) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for job in jobs {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(job.len());
            for (url, headers) in job {
                if Instant::now() > deadline {
                    break;
                }
                let mut r = http.get(&url);
                for (n, v) in &headers {
                    r = r.header(n.as_str(), v.as_str());
                }
                let t = Instant::now();
                let response = r.send().await.unwrap();
                let status = response.status();
                let _ = response.bytes().await.unwrap();
                assert!(status.is_success(), "{status}");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Figures {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(&dir.path().join("s").join("server.db")).unwrap());
    runtime.block_on(run("embedded SQLite store", sqlite, dir.path()));
    // The same against PostgreSQL (a throwaway cluster on loopback, fsync off as in tests).
    let pg = keyhaven_testkit::devices::Postgres::start();
    let postgres: Arc<dyn Storage> = Arc::new(PostgresStorage::connect(&pg.url(), 16).unwrap());
    runtime.block_on(run("PostgreSQL store", postgres.clone(), dir.path()));
    // Closed off the async threads.
    drop(postgres);
}

async fn run(what: &str, storage: Arc<dyn Storage>, dir: &std::path::Path) {
    {
        let manager = KeyManager::open(
            dir.join(format!("home-{}", what.len())),
            FixedPassphrase::new("bench"),
        )
        .unwrap();
        manager
            .add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
            .unwrap();
        let server_key = manager
            .generate(None, Algorithm::Ed25519, "server")
            .unwrap();
        let signer = manager.service_signer(&server_key, "bench").unwrap();
        let unlimited = Rate {
            per_second: 0.0,
            burst: 0.0,
        };
        let config = ServerConfig {
            per_key: unlimited,
            per_address: unlimited,
            ..ServerConfig::default()
        };
        let server = Server::new(config, storage.clone(), Arc::new(signer));
        let base = common::serve(server.clone()).await;
        // One registered Ed25519 key per client.
        let (keys, clients) = common::register_clients(&storage, 64).await;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .unwrap();
        println!(
            "keyhaven-server load, {what}, loopback, {SECONDS} s or {REQUESTS} requests per run"
        );
        let mut nonce = 0u64;
        for concurrency in [1usize, 8, 64] {
            let per = REQUESTS / concurrency;
            let open: Vec<_> = (0..concurrency)
                .map(|_| vec![(format!("{base}/healthz"), Vec::new()); per])
                .collect();
            let mut signed = Vec::new();
            for k in clients.iter().take(concurrency) {
                let mut job = Vec::with_capacity(per);
                for _ in 0..per {
                    nonce += 1;
                    let url = format!("{base}/v1/whoami");
                    let mut r = Request::new("GET", &url).unwrap();
                    let spec = SignatureSpec::new("keyhaven", &k.fingerprint().to_hex())
                        .covering(&["@method", "@target-uri"])
                        .unwrap()
                        .created(keyhaven::unix_now())
                        .nonce(&format!("bench-{nonce}"));
                    sign_request(&mut r, &spec, &keys, &k.id).unwrap();
                    job.push((url, r.fields().to_vec()));
                }
                signed.push(job);
            }
            // Warm the connections.
            let _ = fire(
                &http,
                vec![vec![(format!("{base}/healthz"), Vec::new()); 200]; concurrency],
            )
            .await;
            let base_line = fire(&http, open).await;
            let checked = fire(&http, signed).await;
            println!(
                "{concurrency:>2} clients: /healthz {:>7.0} req/s p50 {:>6.2} ms p99 {:>6.2} ms | \
                 /v1/whoami (Ed25519-signed, verified) {:>7.0} req/s p50 {:>6.2} ms p99 {:>6.2} ms \
                 | cost ratio {:.2}x",
                base_line.per_second,
                base_line.p50.as_secs_f64() * 1e3,
                base_line.p99.as_secs_f64() * 1e3,
                checked.per_second,
                checked.p50.as_secs_f64() * 1e3,
                checked.p99.as_secs_f64() * 1e3,
                base_line.per_second / checked.per_second,
            );
        }
    }
}
