//! The key broker under a bounded load generator on loopback: transit encrypt and decrypt
//! operations per second for 64-byte and 4 KiB payloads, and secret releases per second (a
//! JWE to the requester's X25519 key and a signed receipt), all with the KEK cached, at 1 and
//! 8 concurrent clients, beside raw AES-256-GCM in this process (the floor of any envelope)
//! and the unauthenticated `/healthz` of the same server (the floor of any request), in the
//! same run. Releases run twice: without an audit trail, and audited to the home's log as
//! embedded mode does (one durable append per release).
//!
//! (The cost of a KEK unwrap on a master key in SoftHSM2 and in swtpm, against the cached one,
//! is measured in `keyhaven-envelope`'s, `keyhaven-hsm-pkcs11`'s and `keyhaven-hsm-tpm`'s
//! benches.) Requests are signed before the clock starts. Bounded: at most
//! `REQUESTS` requests or `SECONDS` seconds per run. `cargo bench -p keyhaven-server --bench
//! broker`.
//!
//! Then a full attested release end to end (needs swtpm and tpm2-tools): a live swtpm's quote,
//! its AK enrolled by credential activation, with the broker's attestation cache on and off,
//! beside the same release with no evidence.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};
use keyhaven::stores::MemoryStore;
use keyhaven::{Algorithm, BackendConfig, BackendKind, FixedPassphrase, KeyManager};
use keyhaven_httpsig::{DigestAlgorithm, Request, SignatureSpec, content_digest, sign_request};
use keyhaven_server::{Broker, Rate, Server, ServerConfig, SqliteStorage, Storage};

const REQUESTS: usize = 8_000;
const SECONDS: u64 = 3;

/// One request: method, URL, header fields, body.
type Call = (&'static str, String, Vec<(String, String)>, Vec<u8>);

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.0} op/s p50 {:>5.2} ms p99 {:>5.2} ms",
            self.per_second,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

async fn fire(http: &reqwest::Client, jobs: Vec<Vec<Call>>) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for job in jobs {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(job.len());
            for (method, url, headers, body) in job {
                if Instant::now() > deadline {
                    break;
                }
                let mut r = http.request(method.parse().unwrap(), &url);
                for (n, v) in &headers {
                    r = r.header(n.as_str(), v.as_str());
                }
                if !body.is_empty() {
                    r = r.header("content-type", "application/json").body(body);
                }
                let t = Instant::now();
                let response = r.send().await.unwrap();
                let status = response.status();
                let text = response.bytes().await.unwrap();
                assert!(
                    status.is_success(),
                    "{status} {}",
                    String::from_utf8_lossy(&text)
                );
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

/// Raw AES-256-GCM seals of `size` bytes per second on this thread (`aes-gcm`, fresh nonce
/// per message).
fn raw_aes(size: usize) -> f64 {
    use aes_gcm::aead::{Aead, KeyInit};
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&[7u8; 32]).unwrap();
    let data = vec![1u8; size];
    let started = Instant::now();
    let mut n = 0u64;
    let mut nonce = [0u8; 12];
    while started.elapsed() < Duration::from_millis(500) {
        for _ in 0..100 {
            keyhaven::fill_random(&mut nonce).unwrap();
            let sealed = cipher
                .encrypt(&aes_gcm::Nonce::from(nonce), data.as_slice())
                .unwrap();
            std::hint::black_box(sealed);
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

struct Bench {
    base: String,
    keys: MemoryStore,
    clients: Vec<keyhaven::KeyInfo>,
    nonce: u64,
}

impl Bench {
    fn signed(&mut self, client: usize, method: &'static str, path: &str, body: &[u8]) -> Call {
        self.nonce += 1;
        let k = &self.clients[client];
        let url = format!("{}{path}", self.base);
        let mut r = Request::new(method, &url).unwrap();
        let mut covered = vec!["@method", "@target-uri"];
        if !body.is_empty() {
            r.push_header(
                "Content-Digest",
                &content_digest(body, DigestAlgorithm::Sha256),
            );
            covered.push("content-digest");
        }
        let spec = SignatureSpec::new("keyhaven", &k.fingerprint().to_hex())
            .covering(&covered)
            .unwrap()
            .created(keyhaven::unix_now())
            .nonce(&format!("bench-{}", self.nonce));
        sign_request(&mut r, &spec, &self.keys, &k.id).unwrap();
        (method, url, r.fields().to_vec(), body.to_vec())
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(http_figures());
    runtime.block_on(attested_figures());
}

/// Sends one signed call; the answer's JSON.
async fn send(http: &reqwest::Client, call: Call) -> serde_json::Value {
    let mut r = http.request(call.0.parse().unwrap(), &call.1).body(call.3);
    for (n, v) in &call.2 {
        r = r.header(n.as_str(), v.as_str());
    }
    serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap()
}

/// A full attested release end to end: a secret of `min_tier` 2 released on a live swtpm's
/// quote (an AK enrolled by credential activation, its EK certificate checked at each
/// verification), with the broker's attestation cache on (the quote verified once, then
/// remembered) and off (verified at every release), beside the same release with no evidence.
async fn attested_figures() {
    use keyhaven_testkit::devices::{Swtpm, Tpm2Tools};
    let tpm = tokio::task::spawn_blocking(Swtpm::start_with_ek_certificate)
        .await
        .unwrap();
    let tools = Tpm2Tools::new(&tpm);
    tools.create_ek();
    let (ak_public, _) = tools.create_ak("ak");
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("s").join("server.db")).unwrap());
    let manager = KeyManager::open(dir.path().join("home"), FixedPassphrase::new("bench")).unwrap();
    manager
        .add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
        .unwrap();
    let server_key = manager
        .generate(None, Algorithm::Ed25519, "server")
        .unwrap();
    let master = manager.generate(None, Algorithm::X25519, "master").unwrap();
    let unlimited = Rate {
        per_second: 0.0,
        burst: 0.0,
    };
    let config = ServerConfig {
        per_key: unlimited,
        per_address: unlimited,
        ..ServerConfig::default()
    };
    let mut bases = Vec::new();
    for ttl in [keyhaven_server::attest::ATTESTATION_TTL, Duration::ZERO] {
        let verifier = Arc::new(keyhaven_server::attest::TpmVerifier::new(
            storage.clone(),
            tpm.ek_ca(),
            keyhaven_attest::tpm::Policy::default(),
        ));
        let broker = Broker::new(
            manager.master_key(&master, "bench").unwrap(),
            storage.clone(),
        )
        .unwrap()
        .accepting_tpm(verifier)
        .with_attestation_cache(ttl);
        let signer = manager.service_signer(&server_key, "bench").unwrap();
        let server = Server::new(config.clone(), storage.clone(), Arc::new(signer))
            .with_broker(Arc::new(broker));
        bases.push(common::serve(server).await);
    }
    let storage_dyn: Arc<dyn Storage> = storage.clone();
    let (keys, clients) = common::register_clients(&storage_dyn, 1).await;
    let mut b = Bench {
        base: bases[0].clone(),
        keys,
        clients,
        nonce: 0,
    };
    let http = reqwest::Client::new();
    // The AK enrolls (on the first server; the enrollment is in the shared store).
    let body = serde_json::json!({
        "ek_certificate": Base64::encode_string(&tpm.ek_certificate()),
        "ak_public": Base64::encode_string(&ak_public),
    });
    let challenge = send(
        &http,
        b.signed(
            0,
            "POST",
            "/v1/attestation/tpm/challenge",
            body.to_string().as_bytes(),
        ),
    )
    .await["data"]
        .clone();
    let blob = |k: &str| Base64::decode_vec(challenge[k].as_str().unwrap()).unwrap();
    let secret = tools
        .activate_credential("ak", &blob("id_object"), &blob("encrypted_secret"))
        .unwrap();
    let body =
        serde_json::json!({ "id": challenge["id"], "secret": Base64::encode_string(&secret) });
    let enrolled = send(
        &http,
        b.signed(
            0,
            "POST",
            "/v1/attestation/tpm/activate",
            body.to_string().as_bytes(),
        ),
    )
    .await;
    assert!(enrolled["data"]["ak"].is_string(), "{enrolled}");
    // A tier-1 secret (releasable without evidence, for the baseline) and the quote bound to
    // its release to this client's ephemeral key.
    let put = format!(r#"{{"value":"{}"}}"#, Base64::encode_string(&[9u8; 64]));
    send(
        &http,
        b.signed(0, "PUT", "/v1/secrets/hw/token", put.as_bytes()),
    )
    .await;
    let epk = {
        let eph = keyhaven::default_provider()
            .generate(Algorithm::X25519)
            .unwrap();
        keyhaven::jwe::public_jwk(eph.public_key()).unwrap()
    };
    let rd = keyhaven_client::secrets::report_data(
        &b.clients[0].fingerprint().to_hex(),
        "hw/token",
        &keyhaven::jwe::thumbprint(&epk),
    );
    let (quote, signature) = tools.quote("ak", &[0, 1, 2, 3, 4, 5, 6, 7], &rd);
    let pcrs: serde_json::Map<String, serde_json::Value> = tools
        .read_pcrs(&[0, 1, 2, 3, 4, 5, 6, 7])
        .into_iter()
        .map(|(i, v)| (i.to_string(), serde_json::json!(hex::encode(v))))
        .collect();
    let evidence = serde_json::json!({
        "type": "tpm",
        "ak": Base64::encode_string(&ak_public),
        "quote": Base64::encode_string(&quote),
        "signature": Base64::encode_string(&signature),
        "pcrs": pcrs,
    });
    let attested = serde_json::json!({ "epk": epk, "evidence": evidence })
        .to_string()
        .into_bytes();
    let plain = serde_json::json!({ "epk": epk }).to_string().into_bytes();
    let check = send(
        &http,
        b.signed(0, "POST", "/v1/release/hw/token", &attested),
    )
    .await;
    assert_eq!(check["data"]["requester_tier"], 1, "{check}");
    println!("attested releases, loopback, SQLite, TPM quote of a live swtpm (1 client):");
    let mut figures = Vec::new();
    for (what, base, body) in [
        ("no evidence", bases[0].clone(), &plain),
        ("TPM quote, cache on", bases[0].clone(), &attested),
        ("TPM quote, cache off", bases[1].clone(), &attested),
    ] {
        b.base = base;
        let calls: Vec<Call> = (0..REQUESTS / 8)
            .map(|_| b.signed(0, "POST", "/v1/release/hw/token", body))
            .collect();
        let f = fire(&http, vec![calls]).await;
        println!("  {what:<22} {f}");
        figures.push(f.per_second);
    }
    println!(
        "  cache on / cache off {:.2}x; no evidence / cache on {:.2}x",
        figures[1] / figures[2],
        figures[0] / figures[1]
    );
}

async fn http_figures() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("s").join("server.db")).unwrap());
    let manager = KeyManager::open(dir.path().join("home"), FixedPassphrase::new("bench")).unwrap();
    manager
        .add_backend("mem", BackendConfig::new(BackendKind::Memory, None))
        .unwrap();
    let server_key = manager
        .generate(None, Algorithm::Ed25519, "server")
        .unwrap();
    let signer = manager.service_signer(&server_key, "bench").unwrap();
    let master = manager.generate(None, Algorithm::X25519, "master").unwrap();
    let broker = Arc::new(
        Broker::new(
            manager.master_key(&master, "bench").unwrap(),
            storage.clone(),
        )
        .unwrap(),
    );
    let unlimited = Rate {
        per_second: 0.0,
        burst: 0.0,
    };
    let config = ServerConfig {
        per_key: unlimited,
        per_address: unlimited,
        ..ServerConfig::default()
    };
    let plain = Server::new(config, storage.clone(), Arc::new(signer)).with_broker(broker);
    let log = manager.audit().log().unwrap().expect("the home audits");
    let audited = plain
        .clone()
        .with_audit(Arc::new(keyhaven_server::LogSink(log)));
    let bases = [common::serve(plain).await, common::serve(audited).await];
    let storage_dyn: Arc<dyn Storage> = storage.clone();
    let (keys, clients) = common::register_clients(&storage_dyn, 8).await;
    let mut b = Bench {
        base: bases[0].clone(),
        keys,
        clients,
        nonce: 0,
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // Each client's transit key and secret, made (and their KEKs cached) before timing.
    let epk = {
        let eph = keyhaven::default_provider()
            .generate(Algorithm::X25519)
            .unwrap();
        keyhaven::jwe::public_jwk(eph.public_key()).unwrap()
    };
    let release_body = serde_json::json!({ "epk": epk }).to_string().into_bytes();
    let mut setup = Vec::new();
    for c in 0..8 {
        setup.push(vec![
            b.signed(c, "POST", "/v1/transit/keys/k", b"{}"),
            b.signed(
                c,
                "PUT",
                "/v1/secrets/app/token",
                format!(r#"{{"value":"{}"}}"#, Base64::encode_string(&[9u8; 64])).as_bytes(),
            ),
            b.signed(c, "POST", "/v1/release/app/token", &release_body),
        ]);
    }
    fire(&http, setup).await;
    println!("keyhaven key broker, loopback, SQLite, software master key (tier 1), KEK cached");
    for size in [64usize, 4096] {
        let raw = raw_aes(size);
        let plaintext = Base64::encode_string(&vec![5u8; size]);
        let enc_body = format!(r#"{{"plaintext":"{plaintext}"}}"#).into_bytes();
        // A ciphertext per client to decrypt.
        let mut ciphertexts = Vec::new();
        for c in 0..8 {
            let call = b.signed(c, "POST", "/v1/transit/encrypt/k", &enc_body);
            let mut r = http.post(&call.1).body(call.3.clone());
            for (n, v) in &call.2 {
                r = r.header(n.as_str(), v.as_str());
            }
            let v: serde_json::Value =
                serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap();
            ciphertexts.push(v["data"]["ciphertext"].as_str().unwrap().to_owned());
        }
        for concurrency in [1usize, 8] {
            let per = REQUESTS / concurrency;
            let health: Vec<Vec<Call>> = (0..concurrency)
                .map(|_| vec![("GET", format!("{}/healthz", b.base), Vec::new(), Vec::new()); per])
                .collect();
            let enc: Vec<Vec<Call>> = (0..concurrency)
                .map(|c| {
                    (0..per)
                        .map(|_| b.signed(c, "POST", "/v1/transit/encrypt/k", &enc_body))
                        .collect()
                })
                .collect();
            let dec: Vec<Vec<Call>> = (0..concurrency)
                .map(|c| {
                    let body = format!(r#"{{"ciphertext":"{}"}}"#, ciphertexts[c]).into_bytes();
                    (0..per)
                        .map(|_| b.signed(c, "POST", "/v1/transit/decrypt/k", &body))
                        .collect()
                })
                .collect();
            let h = fire(&http, health).await;
            let e = fire(&http, enc).await;
            let d = fire(&http, dec).await;
            println!(
                "{size:>4} B, {concurrency} clients: raw AES-256-GCM {raw:>9.0} op/s (one core) | \
                 /healthz {h} | encrypt {e} | decrypt {d} | healthz/encrypt {:.2}x",
                h.per_second / e.per_second
            );
        }
    }
    for (what, base) in [
        ("no audit trail", bases[0].clone()),
        ("audited", bases[1].clone()),
    ] {
        b.base = base;
        for concurrency in [1usize, 8] {
            let per = (REQUESTS / 4) / concurrency;
            let rel: Vec<Vec<Call>> = (0..concurrency)
                .map(|c| {
                    (0..per)
                        .map(|_| b.signed(c, "POST", "/v1/release/app/token", &release_body))
                        .collect()
                })
                .collect();
            let r = fire(&http, rel).await;
            println!("releases ({what}), {concurrency} clients: {r}");
        }
    }
}
