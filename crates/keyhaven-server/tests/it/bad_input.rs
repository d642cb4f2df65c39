//! Each malformed, stale, replayed, forged or oversized request gets a 4xx problem document
//! saying why (never a 500), signed by the server, counted in the metrics.

use base64ct::{Base64, Encoding};
use keyhaven::{Algorithm, KeyInfo, unix_now};
use keyhaven_client::wire::{Challenge, Problem, Registration};
use keyhaven_httpsig::{
    DigestAlgorithm, Message, Request, Response, SignatureSpec, VerifyPolicy, content_digest,
    sign_request, verify,
};
use keyhaven_server::ServerConfig;

use crate::support::{TestServer, start, start_with};

struct Raw {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Raw {
    fn problem(&self) -> Problem {
        assert_eq!(
            self.content_type,
            "application/problem+json",
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        serde_json::from_slice(&self.body).unwrap()
    }

    fn assert_problem(&self, status: u16, name: &str) -> Problem {
        let p = self.problem();
        assert_eq!(
            (self.status, p.status, p.kind.as_str()),
            (
                status,
                status,
                format!("urn:keyhaven:problem:{name}").as_str()
            ),
            "{p:?}"
        );
        assert!(!p.detail.is_empty());
        p
    }
}

/// Sends `request` as is; checks the answer is signed by the server key and bound to it.
async fn send(t: &TestServer, request: &Request, body: &[u8]) -> Raw {
    let http = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(request.method().as_bytes()).unwrap();
    let mut builder = http.request(method, request.target_uri());
    for (name, value) in request.fields() {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = builder.body(body.to_vec()).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    let mut checked = Response::new(status, Some(request.clone()));
    for name in ["signature-input", "signature", "content-digest"] {
        if let Some(v) = headers.get(name) {
            checked.push_header(name, v.to_str().unwrap());
        }
    }
    let fp = t.server_key.fingerprint().to_hex();
    let key = t.server_key.clone();
    let policy = VerifyPolicy::at(t.now()).require(&["@status"]).unwrap();
    verify(
        Message::Response(&checked),
        Some("keyhaven"),
        &policy,
        &mut |k| Ok((k == fp).then(|| key.clone())),
    )
    .expect("every answer, a refusal too, is signed by the server");
    Raw {
        status,
        content_type: headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body,
    }
}

/// A request to `path` signed by `key` as `spec` says (defaults: `@method`, `@target-uri`,
/// `content-digest` with a body; created now; a fresh nonce).
fn signed(
    t: &TestServer,
    key: &KeyInfo,
    method: &str,
    path: &str,
    body: &[u8],
    spec: impl FnOnce(SignatureSpec) -> SignatureSpec,
) -> Request {
    let mut request = Request::new(method, &t.url(path)).unwrap();
    let mut covered = vec!["@method", "@target-uri"];
    if !body.is_empty() {
        request.push_header(
            "Content-Digest",
            &content_digest(body, DigestAlgorithm::Sha256),
        );
        request.push_header("Content-Type", "application/json");
        covered.push("content-digest");
    }
    let nonce = format!("n-{}", rand_suffix());
    let base = SignatureSpec::new("keyhaven", &key.fingerprint().to_hex())
        .covering(&covered)
        .unwrap()
        .created(unix_now())
        .nonce(&nonce);
    sign_request(&mut request, &spec(base), t.keys.as_ref(), &key.id).unwrap();
    request
}

fn rand_suffix() -> String {
    let mut b = [0u8; 12];
    keyhaven::fill_random(&mut b).unwrap();
    hex::encode(b)
}

async fn registered(t: &TestServer, name: &str) -> KeyInfo {
    let key = t.key(Algorithm::Ed25519, name);
    t.client(&key).register(name).await.unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_malformed_signatures_are_refused() {
    let t = start().await;
    let key = registered(&t, "k").await;
    let plain = Request::new("GET", &t.url("/v1/whoami")).unwrap();
    send(&t, &plain, b"")
        .await
        .assert_problem(401, "missing-signature");

    for (input, sig) in [
        ("keyhaven=(\"@method\";created=1", "keyhaven=:AAAA:"),
        ("keyhaven=\"@method\"", "keyhaven=:AAAA:"),
        ("keyhaven=(\"@method\");created=1", "keyhaven=AAAA"),
        (
            "keyhaven=(\"@method\");created=1",
            "keyhaven=:AAAA:;x=\"unterminated",
        ),
    ] {
        let r = plain
            .clone()
            .header("Signature-Input", input)
            .header("Signature", sig);
        let raw = send(&t, &r, b"").await;
        assert_eq!(raw.status, 400, "{input}");
        let p = raw.problem();
        assert!(
            p.kind.ends_with("malformed-signature")
                || p.kind.ends_with("missing-signature")
                || p.kind.ends_with("signature-policy"),
            "{p:?}"
        );
    }
    let _ = key;
    assert!(t.metric("keyhaven_auth_failures_total{reason=\"missing-signature\"}") >= 1);
    assert!(t.metric("keyhaven_auth_failures_total{reason=\"malformed-signature\"}") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_stale_or_future_signatures_and_replays_are_refused() {
    let t = start().await;
    let key = registered(&t, "k").await;
    let stranger = t.key(Algorithm::Ed25519, "stranger");
    let r = signed(&t, &stranger, "GET", "/v1/whoami", b"", |s| s);
    send(&t, &r, b"").await.assert_problem(401, "unknown-key");

    let old = signed(&t, &key, "GET", "/v1/whoami", b"", |s| {
        s.created(t.now() - 400)
    });
    send(&t, &old, b"")
        .await
        .assert_problem(401, "stale-signature");
    let future = signed(&t, &key, "GET", "/v1/whoami", b"", |s| {
        s.created(unix_now() + 120)
    });
    send(&t, &future, b"")
        .await
        .assert_problem(401, "stale-signature");
    let expired = signed(&t, &key, "GET", "/v1/whoami", b"", |s| {
        s.created(unix_now() - 200).expires(unix_now() - 100)
    });
    send(&t, &expired, b"")
        .await
        .assert_problem(401, "stale-signature");

    let once = signed(&t, &key, "GET", "/v1/whoami", b"", |s| s);
    assert_eq!(send(&t, &once, b"").await.status, 200);
    send(&t, &once, b"")
        .await
        .assert_problem(401, "replayed-nonce");
    assert_eq!(
        t.metric("keyhaven_auth_failures_total{reason=\"replayed-nonce\"}"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_audited_with_its_nonce_and_compromise_scan_reports_it() {
    let t = crate::support::start_audited().await;
    let key = t.key(Algorithm::Ed25519, "replayed");
    t.client(&key).register("replayed").await.unwrap();
    let once = signed(&t, &key, "GET", "/v1/whoami", b"", |s| {
        s.nonce("nonce-to-replay")
    });
    assert_eq!(send(&t, &once, b"").await.status, 200);
    let problem = send(&t, &once, b"")
        .await
        .assert_problem(401, "replayed-nonce");
    assert!(
        problem.detail.contains("nonce-to-replay"),
        "{}",
        problem.detail
    );
    let manager = t.manager.as_ref().unwrap();
    let scan = tokio::task::block_in_place(|| manager.compromise().scan(&[])).unwrap();
    let fpr = key.fingerprint().to_hex();
    let replay = scan
        .findings
        .iter()
        .find(|f| f.method == keyhaven::compromise::DetectionMethod::Replay)
        .unwrap_or_else(|| panic!("{:?}", scan.findings));
    assert_eq!(replay.key_id.as_deref(), Some(fpr.as_str()));
    assert!(
        replay.summary.contains("nonce-to-replay"),
        "{}",
        replay.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_that_cover_too_little_or_lie_are_refused() {
    let t = start().await;
    let key = registered(&t, "k").await;
    // No nonce.
    let mut r = Request::new("GET", &t.url("/v1/whoami")).unwrap();
    let spec = SignatureSpec::new("keyhaven", &key.fingerprint().to_hex())
        .covering(&["@method", "@target-uri"])
        .unwrap()
        .created(unix_now());
    sign_request(&mut r, &spec, t.keys.as_ref(), &key.id).unwrap();
    send(&t, &r, b"")
        .await
        .assert_problem(400, "signature-policy");
    // No target.
    let r = signed(&t, &key, "GET", "/v1/whoami", b"", |_| {
        SignatureSpec::new("keyhaven", &key.fingerprint().to_hex())
            .covering(&["@method"])
            .unwrap()
            .created(unix_now())
            .nonce("only-method")
    });
    send(&t, &r, b"")
        .await
        .assert_problem(400, "signature-policy");
    // A body whose digest is not signed.
    let body = br#"{"reason":"x"}"#;
    let r = signed(&t, &key, "POST", "/v1/clients/me/revoke", body, |_| {
        SignatureSpec::new("keyhaven", &key.fingerprint().to_hex())
            .covering(&["@method", "@target-uri"])
            .unwrap()
            .created(unix_now())
            .nonce("no-digest")
    });
    send(&t, &r, body)
        .await
        .assert_problem(400, "signature-policy");
    // A body swapped after signing: the digest no longer matches.
    let r = signed(&t, &key, "POST", "/v1/clients/me/revoke", body, |s| s);
    send(&t, &r, br#"{"reason":"y"}"#)
        .await
        .assert_problem(400, "digest-mismatch");
    // A wrong alg.
    let mut r = signed(&t, &key, "GET", "/v1/whoami", b"", |s| s);
    let input = Message::Request(&r).field("signature-input").unwrap();
    let sig = Message::Request(&r).field("signature").unwrap();
    r = Request::new("GET", &t.url("/v1/whoami"))
        .unwrap()
        .header(
            "Signature-Input",
            &input.replace("alg=\"ed25519\"", "alg=\"ecdsa-p256-sha256\""),
        )
        .header("Signature", &sig);
    let raw = send(&t, &r, b"").await;
    assert!(raw.status == 400 || raw.status == 401, "{}", raw.status);
    // A signature for another path.
    let r = signed(&t, &key, "GET", "/v1/clients/me", b"", |s| s);
    let moved = Request::new("GET", &t.url("/v1/whoami"))
        .unwrap()
        .header(
            "Signature-Input",
            &Message::Request(&r).field("signature-input").unwrap(),
        )
        .header(
            "Signature",
            &Message::Request(&r).field("signature").unwrap(),
        );
    send(&t, &moved, b"")
        .await
        .assert_problem(401, "bad-signature");
    // The key still works: nothing above changed its state.
    assert!(t.client(&key).whoami().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_must_prove_possession_of_a_fresh_challenge() {
    let t = start().await;
    let key = t.key(Algorithm::Ed25519, "new");
    let challenge: Challenge = {
        let r = signed(&t, &key, "POST", "/v1/challenge", b"", |s| s);
        let raw = send(&t, &r, b"").await;
        assert_eq!(raw.status, 201);
        serde_json::from_slice(&raw.body).unwrap()
    };
    let registration = |challenge: &str, spki: &[u8]| {
        serde_json::to_vec(&Registration {
            challenge: challenge.into(),
            name: "new".into(),
            algorithm: "ed25519".into(),
            public_key: Base64::encode_string(spki),
        })
        .unwrap()
    };
    let spki = key.public_key.spki_der().to_vec();
    // A challenge never issued.
    let body = registration("made-up", &spki);
    let r = signed(&t, &key, "POST", "/v1/clients", &body, |s| s);
    send(&t, &r, &body)
        .await
        .assert_problem(400, "bad-challenge");
    // Signed by another key than the one registered.
    let other = t.key(Algorithm::Ed25519, "other");
    let body = registration(&challenge.challenge, &spki);
    let r = signed(&t, &other, "POST", "/v1/clients", &body, |s| s);
    send(&t, &r, &body).await.assert_problem(401, "unknown-key");
    // Garbage for a key.
    let body = registration(&challenge.challenge, b"not a key");
    let r = signed(&t, &key, "POST", "/v1/clients", &body, |s| s);
    send(&t, &r, &body)
        .await
        .assert_problem(400, "invalid-request");
    // The real thing, once.
    let body = registration(&challenge.challenge, &spki);
    let r = signed(&t, &key, "POST", "/v1/clients", &body, |s| s);
    assert_eq!(send(&t, &r, &body).await.status, 201);
    let other_body = registration(&challenge.challenge, other.public_key.spki_der());
    let r = signed(&t, &other, "POST", "/v1/clients", &other_body, |s| s);
    send(&t, &r, &other_body)
        .await
        .assert_problem(400, "bad-challenge");
    // An expired challenge.
    let fresh: Challenge = {
        let r = signed(&t, &other, "POST", "/v1/challenge", b"", |s| s);
        serde_json::from_slice(&send(&t, &r, b"").await.body).unwrap()
    };
    t.advance(301);
    let body = registration(&fresh.challenge, other.public_key.spki_der());
    let r = signed(&t, &other, "POST", "/v1/clients", &body, |s| {
        s.created(t.now())
    });
    send(&t, &r, &body)
        .await
        .assert_problem(400, "bad-challenge");
    // Not JSON.
    let r = signed(&t, &other, "POST", "/v1/clients", b"{", |s| s);
    send(&t, &r, b"{")
        .await
        .assert_problem(400, "invalid-request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_continuity_chain_is_refused() {
    let t = start().await;
    let old = registered(&t, "old").await;
    let new = t.key(Algorithm::Ed25519, "new");
    let now = unix_now();
    let proof = keyhaven::versions::ContinuityProof::create(
        t.keys.as_ref(),
        "x",
        &old,
        &new,
        now,
        now + 60,
        None,
    )
    .unwrap();
    let text = proof.to_text();
    let client = t.client(&old);
    for (broken, why) in [
        (String::new(), "empty"),
        ("garbage".to_owned(), "garbage"),
        (text.replace("issued-at: ", "issued-at: 1"), "edited"),
    ] {
        let e = client.rotate(&broken).await.unwrap_err();
        let p = e.problem().unwrap_or_else(|| panic!("{why}: {e}"));
        assert_eq!(
            (p.status, p.kind.as_str()),
            (400, "urn:keyhaven:problem:bad-continuity-proof"),
            "{why}: {p:?}"
        );
    }
    // A valid proof from a key that is not this client's.
    let someone = registered(&t, "someone").await;
    let e = t.client(&someone).rotate(&text).await.unwrap_err();
    assert_eq!(e.problem().unwrap().status, 403, "{e}");
    // Signed by a key that is neither the new one nor registered.
    let stranger = t.key(Algorithm::Ed25519, "stranger");
    let e = t.client(&stranger).rotate(&text).await.unwrap_err();
    assert_eq!(
        e.problem().unwrap().kind,
        "urn:keyhaven:problem:unknown-key",
        "{e}"
    );
    assert_eq!(
        t.client(&new)
            .whoami()
            .await
            .unwrap_err()
            .problem()
            .unwrap()
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_headers_unknown_routes_and_methods() {
    let t = start_with(ServerConfig {
        max_body_bytes: 1024,
        max_header_bytes: 2048,
        ..ServerConfig::default()
    })
    .await;
    let key = registered(&t, "k").await;
    let body = vec![b'x'; 4096];
    let r = signed(&t, &key, "POST", "/v1/clients/me/revoke", &body, |s| s);
    send(&t, &r, &body).await.assert_problem(413, "too-large");
    let r = signed(&t, &key, "GET", "/v1/whoami", b"", |s| s).header("X-Pad", &"p".repeat(4096));
    send(&t, &r, b"")
        .await
        .assert_problem(431, "headers-too-large");
    let r = Request::new("GET", &t.url("/v1/nothing-here")).unwrap();
    send(&t, &r, b"").await.assert_problem(404, "not-found");
    let r = Request::new("DELETE", &t.url("/v1/challenge")).unwrap();
    send(&t, &r, b"")
        .await
        .assert_problem(405, "method-not-allowed");
    // Bad input in a signed request: a fingerprint that is none, a reason too long.
    let body = br#"{"fingerprint":"zz","reason":"x"}"#;
    let r = signed(&t, &key, "POST", "/v1/clients/me/revoke", body, |s| s);
    send(&t, &r, body)
        .await
        .assert_problem(400, "invalid-request");
    let body = format!(r#"{{"reason":"{}"}}"#, "r".repeat(300)).into_bytes();
    let r = signed(&t, &key, "POST", "/v1/clients/me/revoke", &body, |s| s);
    send(&t, &r, &body)
        .await
        .assert_problem(400, "invalid-request");
    assert!(t.client(&key).whoami().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_is_told_to_slow_down() {
    let t = start_with(ServerConfig {
        per_key: keyhaven_server::Rate {
            per_second: 0.001,
            burst: 3.0,
        },
        ..ServerConfig::default()
    })
    .await;
    let key = registered(&t, "k").await;
    let c = t.client(&key);
    for _ in 0..3 {
        c.whoami().await.unwrap();
    }
    let e = c.whoami().await.unwrap_err();
    assert_eq!(e.problem().unwrap().status, 429);
    assert_eq!(t.metric("keyhaven_rate_limited_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_key_neither_administers_nor_revokes_its_successor() {
    let t = start().await;
    let old = t.key(Algorithm::Ed25519, "old-admin");
    t.make_admin(&old);
    let new = t.key(Algorithm::Ed25519, "new-admin");
    let now = t.now();
    let proof = keyhaven::versions::ContinuityProof::create(
        t.keys.as_ref(),
        "a",
        &old,
        &new,
        now,
        now + 600,
        None,
    )
    .unwrap();
    t.client(&new).rotate(&proof.to_text()).await.unwrap();
    // The old key still signs requests in its window ...
    assert!(t.client(&old).whoami().await.is_ok());
    // ... but administers nothing, and cannot revoke the key that replaced it.
    let e = t.client(&old).admin_stats().await.unwrap_err();
    assert_eq!(e.problem().unwrap().status, 403, "{e}");
    let e = t
        .client(&old)
        .revoke(Some(&new.fingerprint().to_hex()), "hijack")
        .await
        .unwrap_err();
    assert_eq!(e.problem().unwrap().status, 403, "{e}");
    // It may revoke itself.
    t.client(&old).revoke(None, "done with it").await.unwrap();
    assert!(t.client(&new).admin_stats().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_is_refused_before_any_proof_is_checked() {
    let t = start().await;
    let old = registered(&t, "old").await;
    let new = t.key(Algorithm::Ed25519, "new");
    let now = t.now();
    let proof = keyhaven::versions::ContinuityProof::create(
        t.keys.as_ref(),
        "x",
        &old,
        &new,
        now,
        now + 60,
        None,
    )
    .unwrap();
    let chain = proof.to_text().repeat(17);
    let e = t.client(&old).rotate(&chain).await.unwrap_err();
    let p = e.problem().unwrap();
    assert_eq!(p.status, 400);
    assert!(p.detail.contains("at most 16"), "{}", p.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_meant_for_another_server_is_refused() {
    let t = start_with(ServerConfig {
        public_origin: Some("https://keys.example.com".into()),
        ..ServerConfig::default()
    })
    .await;
    let r = Request::new("GET", &t.url("/healthz")).unwrap();
    send(&t, &r, b"")
        .await
        .assert_problem(421, "misdirected-request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_and_registrations_are_limited_per_address() {
    let t = start_with(ServerConfig {
        per_address_open: keyhaven_server::Rate {
            per_second: 0.001,
            burst: 2.0,
        },
        ..ServerConfig::default()
    })
    .await;
    let key = t.key(Algorithm::Ed25519, "k");
    for _ in 0..2 {
        let r = signed(&t, &key, "POST", "/v1/challenge", b"", |s| s);
        assert_eq!(send(&t, &r, b"").await.status, 201);
    }
    let r = signed(&t, &key, "POST", "/v1/challenge", b"", |s| s);
    send(&t, &r, b"").await.assert_problem(429, "rate-limited");
    // Other routes are not held back.
    let r = Request::new("GET", &t.url("/healthz")).unwrap();
    assert_eq!(send(&t, &r, b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_one_request_does_not_verify_as_the_answer_to_another() {
    let t = start().await;
    let key = registered(&t, "k").await;
    let a = signed(&t, &key, "GET", "/v1/whoami", b"", |s| s);
    let b = signed(&t, &key, "GET", "/v1/whoami", b"", |s| s);
    // The server's genuine answer to a ...
    let http = reqwest::Client::new();
    let mut req = http.get(a.target_uri());
    for (n, v) in a.fields() {
        req = req.header(n.as_str(), v.as_str());
    }
    let answer = req.send().await.unwrap();
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    // ... replayed as the answer to b (same key, same route, another nonce) is refused.
    let mut replayed = Response::new(status, Some(b.clone()));
    for name in ["signature-input", "signature", "content-digest"] {
        replayed.push_header(name, headers.get(name).unwrap().to_str().unwrap());
    }
    let fp = t.server_key.fingerprint().to_hex();
    let server_key = t.server_key.clone();
    let policy = VerifyPolicy::at(t.now()).require_component(
        keyhaven_httpsig::Component::new("signature")
            .unwrap()
            .of_request(),
    );
    let e = verify(
        Message::Response(&replayed),
        Some("keyhaven"),
        &policy,
        &mut |k| Ok((k == fp).then(|| server_key.clone())),
    )
    .unwrap_err();
    assert_eq!(e.reason(), "bad-signature", "{e}");
}
