//! The key broker's transit routes (Vault's shape) through a real server and signed requests:
//! what they answer, what they refuse and how, what they audit, and that one client's keys and
//! ciphertexts are nothing to another.

use base64ct::{Base64, Encoding};
use keyhaven::Algorithm;
use keyhaven::audit::Body;
use keyhaven_client::{Client, ClientError};
use serde_json::{Value, json};

use crate::support::{TestServer, start, start_broker};

/// A registered client of `t`.
async fn client(t: &TestServer, name: &str) -> Client {
    let key = t.key(Algorithm::Ed25519, name);
    let c = t.client(&key);
    c.register(name).await.unwrap();
    c
}

/// `POST`s `body` to `path`; the answer's `data`.
async fn post(t: &TestServer, c: &Client, path: &str, body: Value) -> Value {
    let r = c
        .send("POST", &t.url(path), Some(body.to_string().into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(r.status, 200, "{path}");
    let v: Value = r.json().unwrap();
    v["data"].clone()
}

async fn get(t: &TestServer, c: &Client, path: &str) -> Value {
    let r = c.send("GET", &t.url(path), None).await.unwrap();
    assert_eq!(r.status, 200, "{path}");
    r.json::<Value>().unwrap()["data"].clone()
}

/// The refusal of a `POST`: its status and problem name.
async fn refused(t: &TestServer, c: &Client, path: &str, body: Value) -> (u16, String, String) {
    match c
        .send("POST", &t.url(path), Some(body.to_string().into_bytes()))
        .await
    {
        Err(ClientError::Problem(p)) => (
            p.status,
            p.kind
                .trim_start_matches("urn:keyhaven:problem:")
                .to_owned(),
            p.detail,
        ),
        other => panic!("{path} was not refused: {other:?}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    Base64::encode_string(bytes)
}

fn plain(data: &Value) -> Vec<u8> {
    Base64::decode_vec(data["plaintext"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_encrypts_rotates_rewraps_and_honours_min_decryption_version() {
    let t = start_broker().await;
    let c = client(&t, "app").await;
    let key = post(&t, &c, "/v1/transit/keys/orders", json!({})).await;
    assert_eq!(key["type"], "aes256-gcm96");
    assert_eq!(key["latest_version"], 1);
    // A second create changes nothing.
    let again = post(&t, &c, "/v1/transit/keys/orders", json!({})).await;
    assert_eq!(again["keys"], key["keys"]);

    let v1 = post(
        &t,
        &c,
        "/v1/transit/encrypt/orders",
        json!({ "plaintext": b64(b"card 4111") }),
    )
    .await;
    let c1 = v1["ciphertext"].as_str().unwrap().to_owned();
    assert!(c1.starts_with("vault:v1:"), "{c1}");
    assert_eq!(v1["key_version"], 1);
    let d = post(
        &t,
        &c,
        "/v1/transit/decrypt/orders",
        json!({ "ciphertext": c1 }),
    )
    .await;
    assert_eq!(plain(&d), b"card 4111");

    let rotated = post(&t, &c, "/v1/transit/keys/orders/rotate", json!({})).await;
    assert_eq!(rotated["latest_version"], 2);
    assert_eq!(rotated["keys"].as_object().unwrap().len(), 2);
    let c2 = post(
        &t,
        &c,
        "/v1/transit/encrypt/orders",
        json!({ "plaintext": b64(b"second") }),
    )
    .await["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(c2.starts_with("vault:v2:"), "{c2}");
    // Version 1 still decrypts; rewrap moves it to version 2 with the same plaintext.
    let moved = post(
        &t,
        &c,
        "/v1/transit/rewrap/orders",
        json!({ "ciphertext": c1 }),
    )
    .await;
    let m = moved["ciphertext"].as_str().unwrap().to_owned();
    assert!(m.starts_with("vault:v2:"), "{m}");
    assert_eq!(moved["key_version"], 2);
    let d = post(
        &t,
        &c,
        "/v1/transit/decrypt/orders",
        json!({ "ciphertext": m }),
    )
    .await;
    assert_eq!(plain(&d), b"card 4111");
    // Encrypting to an older version on request.
    let old = post(
        &t,
        &c,
        "/v1/transit/encrypt/orders",
        json!({ "plaintext": b64(b"x"), "key_version": 1 }),
    )
    .await;
    assert_eq!(old["key_version"], 1);

    // min_decryption_version 2: version 1 ciphertexts are refused, version 2 ones are not.
    let cfg = post(
        &t,
        &c,
        "/v1/transit/keys/orders/config",
        json!({ "min_decryption_version": 2 }),
    )
    .await;
    assert_eq!(cfg["min_decryption_version"], 2);
    let (status, name, detail) = refused(
        &t,
        &c,
        "/v1/transit/decrypt/orders",
        json!({ "ciphertext": c1 }),
    )
    .await;
    assert_eq!(
        (status, name.as_str()),
        (400, "invalid-request"),
        "{detail}"
    );
    assert!(detail.contains("too old"), "{detail}");
    let d = post(
        &t,
        &c,
        "/v1/transit/decrypt/orders",
        json!({ "ciphertext": c2 }),
    )
    .await;
    assert_eq!(plain(&d), b"second");
    let read = get(&t, &c, "/v1/transit/keys/orders").await;
    assert_eq!(read["min_decryption_version"], 2);
    assert_eq!(read["latest_version"], 2);
    let (status, _, detail) = refused(
        &t,
        &c,
        "/v1/transit/keys/orders/config",
        json!({ "min_decryption_version": 3 }),
    )
    .await;
    assert_eq!(status, 400, "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_batches_listing_and_the_upsert_of_encrypt() {
    let t = start_broker().await;
    let c = client(&t, "app").await;
    // Vault's encrypt makes the key when it does not exist.
    let e = post(
        &t,
        &c,
        "/v1/transit/encrypt/fresh",
        json!({ "plaintext": b64(b"hi") }),
    )
    .await;
    assert!(e["ciphertext"].as_str().unwrap().starts_with("vault:v1:"));

    let dk = post(&t, &c, "/v1/transit/datakey/plaintext/fresh", json!({})).await;
    let key = plain(&dk);
    assert_eq!(key.len(), 32);
    let back = post(
        &t,
        &c,
        "/v1/transit/decrypt/fresh",
        json!({ "ciphertext": dk["ciphertext"] }),
    )
    .await;
    assert_eq!(
        plain(&back),
        key,
        "the wrapped data key is the plaintext one"
    );
    let wrapped = post(
        &t,
        &c,
        "/v1/transit/datakey/wrapped/fresh",
        json!({ "bits": 512 }),
    )
    .await;
    assert!(wrapped.get("plaintext").is_none(), "{wrapped}");
    let back = post(
        &t,
        &c,
        "/v1/transit/decrypt/fresh",
        json!({ "ciphertext": wrapped["ciphertext"] }),
    )
    .await;
    assert_eq!(plain(&back).len(), 64);

    // A batch: each item answered on its own, a bad one refused on its own.
    let batch = post(
        &t,
        &c,
        "/v1/transit/encrypt/fresh",
        json!({ "batch_input": [
            { "plaintext": b64(b"one") },
            { "plaintext": "not base64!" },
            { "plaintext": b64(b"three") },
        ] }),
    )
    .await;
    let results = batch["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[1]["error"].as_str().unwrap().contains("base64"));
    let decrypted = post(
        &t,
        &c,
        "/v1/transit/decrypt/fresh",
        json!({ "batch_input": [
            { "ciphertext": results[0]["ciphertext"] },
            { "ciphertext": results[2]["ciphertext"] },
        ] }),
    )
    .await;
    let out = decrypted["batch_results"].as_array().unwrap();
    assert_eq!(plain(&out[0]), b"one");
    assert_eq!(plain(&out[1]), b"three");

    post(&t, &c, "/v1/transit/keys/another", json!({})).await;
    let r = c
        .send("GET", &t.url("/v1/transit/keys?list=true"), None)
        .await
        .unwrap();
    let listed: Value = r.json().unwrap();
    assert_eq!(listed["data"]["keys"], json!(["another", "fresh"]));
    // Unknown fields are reported back, as Vault does.
    let r = c
        .send(
            "POST",
            &t.url("/v1/transit/keys/third"),
            Some(br#"{"auto_rotate_period":"0"}"#.to_vec()),
        )
        .await
        .unwrap();
    let v: Value = r.json().unwrap();
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("auto_rotate_period"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_keys_and_ciphertexts_are_nothing_to_another() {
    let t = start_broker().await;
    let alice = client(&t, "alice").await;
    let bob = client(&t, "bob").await;
    let c = post(
        &t,
        &alice,
        "/v1/transit/encrypt/shared-name",
        json!({ "plaintext": b64(b"alice's") }),
    )
    .await["ciphertext"]
        .clone();
    // Bob has no key of that name.
    let (status, name, _) = refused(
        &t,
        &bob,
        "/v1/transit/decrypt/shared-name",
        json!({ "ciphertext": c }),
    )
    .await;
    assert_eq!((status, name.as_str()), (404, "not-found"));
    // Bob makes one of the same name: alice's ciphertext still does not open under it.
    post(&t, &bob, "/v1/transit/keys/shared-name", json!({})).await;
    let (status, name, _) = refused(
        &t,
        &bob,
        "/v1/transit/decrypt/shared-name",
        json!({ "ciphertext": c }),
    )
    .await;
    assert_eq!((status, name.as_str()), (400, "undecryptable"));
    // Nor under another key of alice's.
    post(&t, &alice, "/v1/transit/keys/other", json!({})).await;
    let (status, name, _) = refused(
        &t,
        &alice,
        "/v1/transit/decrypt/other",
        json!({ "ciphertext": c }),
    )
    .await;
    assert_eq!((status, name.as_str()), (400, "undecryptable"));
    let r = bob
        .send("GET", &t.url("/v1/transit/keys?list=true"), None)
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().unwrap()["data"]["keys"],
        json!(["shared-name"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transit_input_is_a_clear_problem_and_audited() {
    let t = start_broker().await;
    let c = client(&t, "app").await;
    post(&t, &c, "/v1/transit/keys/k", json!({})).await;
    let good = post(
        &t,
        &c,
        "/v1/transit/encrypt/k",
        json!({ "plaintext": b64(b"payload") }),
    )
    .await["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    // One byte of the envelope changed.
    let body = good.strip_prefix("vault:v1:").unwrap();
    let mut bytes = Base64::decode_vec(body).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let flipped = format!("vault:v1:{}", b64(&bytes));
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "/v1/transit/decrypt/k",
            json!({ "ciphertext": flipped }),
            400,
            "undecryptable",
            "does not open",
        ),
        (
            "/v1/transit/decrypt/k",
            json!({ "ciphertext": "vault:v1:!!" }),
            400,
            "invalid-request",
            "base64",
        ),
        (
            "/v1/transit/decrypt/k",
            json!({ "ciphertext": good.replace("vault:v1:", "vault:v9:") }),
            400,
            "invalid-request",
            "version",
        ),
        (
            "/v1/transit/decrypt/k",
            json!({ "ciphertext": "plain text" }),
            400,
            "invalid-request",
            "vault:v",
        ),
        (
            "/v1/transit/decrypt/k",
            json!({}),
            400,
            "invalid-request",
            "ciphertext",
        ),
        (
            "/v1/transit/encrypt/k",
            json!({ "plaintext": "%%%" }),
            400,
            "invalid-request",
            "base64",
        ),
        (
            "/v1/transit/encrypt/k",
            json!({ "plaintext": b64(b"x"), "context": b64(b"ctx") }),
            400,
            "unsupported",
            "derived",
        ),
        (
            "/v1/transit/encrypt/k",
            json!({ "plaintext": b64(b"x"), "key_version": 7 }),
            400,
            "invalid-request",
            "no version 7",
        ),
        (
            "/v1/transit/keys/rsa",
            json!({ "type": "rsa-4096" }),
            400,
            "unsupported",
            "rsa-4096",
        ),
        (
            "/v1/transit/keys/k",
            json!({ "exportable": true }),
            400,
            "unsupported",
            "never leaves",
        ),
        (
            "/v1/transit/keys/bad%20name",
            json!({}),
            400,
            "invalid-request",
            "transit key name",
        ),
        (
            "/v1/transit/datakey/raw/k",
            json!({}),
            400,
            "invalid-request",
            "'plaintext' or 'wrapped'",
        ),
        (
            "/v1/transit/datakey/plaintext/k",
            json!({ "bits": 100 }),
            400,
            "invalid-request",
            "128, 256 or 512",
        ),
        (
            "/v1/transit/rotate/k",
            json!({}),
            404,
            "not-found",
            "no route",
        ),
        (
            "/v1/transit/keys/missing/rotate",
            json!({}),
            404,
            "not-found",
            "missing",
        ),
        (
            "/v1/transit/encrypt/k",
            json!(["not", "an", "object"]),
            400,
            "invalid-request",
            "JSON object",
        ),
    ];
    for (path, body, status, name, says) in cases {
        let (s, n, detail) = refused(&t, &c, path, body.clone()).await;
        assert_eq!((s, n.as_str()), (status, name), "{path} {body}: {detail}");
        assert!(detail.contains(says), "{path} {body}: {detail}");
    }
    // The refusal carries Vault's `errors` too.
    let r = reqwest::Client::new()
        .post(t.url("/v1/transit/decrypt/k"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an unsigned request is refused");
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["errors"][0], v["detail"], "{v}");

    // Refusals and releases are in the audit trail; encryptions are counted.
    let log = t.manager.as_ref().unwrap().audit().log().unwrap().unwrap();
    let events: Vec<_> = log
        .tail(200)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            Body::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let denied = events
        .iter()
        .filter(|e| {
            e.operation == "transit.decrypt"
                && e.outcome == keyhaven::audit::Outcome::Denied
                && e.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("undecryptable"))
        })
        .count();
    assert_eq!(denied, 1, "{events:?}");
    assert!(events.iter().any(|e| e.operation == "transit.create"));
    assert!(
        t.metric("keyhaven_broker_operations_total{operation=\"transit.encrypt\",outcome=\"ok\"}")
            >= 1
    );
    assert!(
        t.metric(
            "keyhaven_broker_operations_total{operation=\"transit.decrypt\",outcome=\"undecryptable\"}"
        ) >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_say_which_tiers_the_broker_serves() {
    let t = start_broker().await;
    assert_eq!(t.metric("keyhaven_broker_tier_available{tier=\"1\"}"), 1);
    assert_eq!(t.metric("keyhaven_broker_tier_available{tier=\"2\"}"), 0);
    let plain = start().await;
    assert!(
        !plain
            .server
            .metrics()
            .contains("keyhaven_broker_tier_available")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_broker_says_so() {
    let t = start().await;
    let c = client(&t, "app").await;
    let (status, name, detail) = refused(&t, &c, "/v1/transit/keys/k", json!({})).await;
    assert_eq!((status, name.as_str()), (404, "no-broker"));
    assert!(detail.contains("serve init"), "{detail}");
}

/// Seed 002's "concurrent use from several locations" for server clients: each audited broker
/// decision names the client's key, the address the request came from and its nonce, so one
/// client key used from `127.0.0.1`, then `::1`, then `127.0.0.1` again is a finding of
/// `compromise scan` (a copy of the key in use elsewhere); the same key from one address is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_key_used_from_two_addresses_is_a_finding_with_its_addresses() {
    let Some(t) = crate::support::start_broker_dual_stack().await else {
        return;
    };
    let key = t.key(Algorithm::Ed25519, "roaming");
    let v4 = t.client(&key);
    v4.register("roaming").await.unwrap();
    let v6 = t.client_at(&key, &format!("http://[::1]:{}", t.port()));
    let steady = client(&t, "steady").await;
    let v4_base = t.base.clone();
    let v6_base = format!("http://[::1]:{}", t.port());
    for (c, base) in [
        (&v4, &v4_base),
        (&v6, &v6_base),
        (&v4, &v4_base),
        (&steady, &v4_base),
        (&steady, &v4_base),
    ] {
        let r = c
            .send(
                "POST",
                &format!("{base}/v1/transit/keys/k"),
                Some(b"{}".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let manager = t.manager.as_ref().unwrap();
    let log = manager.audit().log().unwrap().unwrap();
    let records = tokio::task::block_in_place(|| log.search(&Default::default())).unwrap();
    let fpr = key.fingerprint().to_hex();
    let mine: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Event(e)
                if e.operation == "transit.create" && e.key_id.as_deref() == Some(&fpr) =>
            {
                Some(e)
            }
            _ => None,
        })
        .collect();
    let addresses: Vec<_> = mine.iter().map(|e| e.address.as_deref()).collect();
    assert_eq!(
        addresses,
        [Some("127.0.0.1"), Some("::1"), Some("127.0.0.1")],
        "IPv4-mapped addresses are written as IPv4"
    );
    let nonces: std::collections::BTreeSet<_> = mine
        .iter()
        .filter_map(|e| e.request_id.as_deref())
        .collect();
    assert_eq!(nonces.len(), 3, "each decision carries its request's nonce");

    let scan = tokio::task::block_in_place(|| manager.compromise().scan(&[])).unwrap();
    let concurrent: Vec<_> = scan
        .findings
        .iter()
        .filter(|f| f.method == keyhaven::compromise::DetectionMethod::ConcurrentHosts)
        .collect();
    assert_eq!(concurrent.len(), 1, "{:?}", scan.findings);
    assert_eq!(concurrent[0].key_id.as_deref(), Some(fpr.as_str()));
    assert!(
        concurrent[0].summary.contains("address ::1")
            && concurrent[0].summary.contains("address 127.0.0.1"),
        "{}",
        concurrent[0].summary
    );
    assert!(
        !scan
            .findings
            .iter()
            .any(|f| f.method == keyhaven::compromise::DetectionMethod::Replay),
        "fresh nonces are no replay: {:?}",
        scan.findings
    );
}
