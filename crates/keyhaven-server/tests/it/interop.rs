//! Against code nobody here wrote (PyPI packages in the interop virtualenv that
//! `cargo xtask test` makes): `http-message-signatures` registers a key and signs requests the
//! server accepts, and verifies a request keyhaven's client signed; `prometheus_client` parses
//! `/metrics`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use keyhaven::Algorithm;
use keyhaven_testkit::devices::python;
use serde_json::{Value, json};

use crate::support::start;

pub(crate) fn run_python(script: &str, input: &Value) -> Value {
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const PY_CLIENT: &str = r#"
import base64, datetime, hashlib, json, secrets, sys, urllib.request, urllib.error
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

job = json.load(sys.stdin)
base = job["base"]
private = ed25519.Ed25519PrivateKey.generate()
spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
fingerprint = hashlib.sha256(spki).hexdigest()

class Keys(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id):
        assert key_id == fingerprint
        return private

class Msg:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers

def call(method, path, body=None, sign=True):
    url = base + path
    headers = {}
    covered = ["@method", "@target-uri"]
    if body is not None:
        body = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        headers["Content-Digest"] = f"sha-256=:{digest}:"
        covered.append("content-digest")
    if sign:
        msg = Msg(method, url, headers)
        HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys()).sign(
            msg, key_id=fingerprint, label="py", nonce=secrets.token_urlsafe(16),
            created=datetime.datetime.now(datetime.timezone.utc),
            covered_component_ids=tuple(covered), use_existing_digest=body is not None)
    return send(method, url, headers, body)

def send(method, url, headers, body):
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            return {"status": r.status, "body": json.loads(r.read() or b"null"), "headers": dict(headers)}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": json.loads(e.read() or b"null"), "headers": dict(headers)}

out = {"fingerprint": fingerprint}
challenge = call("POST", "/v1/challenge", sign=False)
out["challenge"] = challenge["status"]
reg = call("POST", "/v1/clients", {"challenge": challenge["body"]["challenge"], "name": "from-python",
            "algorithm": "ed25519", "public_key": base64.b64encode(spki).decode()})
out["register"] = reg
who = call("GET", "/v1/whoami")
out["whoami"] = who
out["replay"] = send("GET", base + "/v1/whoami", who["headers"], None)
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_message_signatures_registers_and_makes_signed_requests() {
    let t = start().await;
    let base = t.base.clone();
    let out = tokio::task::spawn_blocking(move || run_python(PY_CLIENT, &json!({ "base": base })))
        .await
        .unwrap();
    assert_eq!(out["challenge"], 201, "{out}");
    assert_eq!(out["register"]["status"], 201, "{out}");
    let id = out["register"]["body"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        out["register"]["body"]["keys"][0]["fingerprint"],
        out["fingerprint"]
    );
    assert_eq!(out["whoami"]["status"], 200, "{out}");
    assert_eq!(out["whoami"]["body"]["client"], id.as_str());
    assert_eq!(out["replay"]["status"], 401, "{out}");
    assert_eq!(
        out["replay"]["body"]["type"],
        "urn:keyhaven:problem:replayed-nonce"
    );
}

/// A request as it arrived: method, path and query, header fields.
type Seen = (String, String, Vec<(String, String)>);

const PY_VERIFY: &str = r#"
import json, sys
from cryptography.hazmat.primitives import serialization
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

job = json.load(sys.stdin)
class Keys(HTTPSignatureKeyResolver):
    def resolve_public_key(self, key_id):
        assert key_id == job["keyid"], key_id
        return serialization.load_pem_public_key(job["pem"].encode())
class Msg:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers
ALGS = {"ed25519": algorithms.ED25519, "p256": algorithms.ECDSA_P256_SHA256,
        "p384": algorithms.ECDSA_P384_SHA384}
msg = Msg(job["method"], job["url"], dict(job["headers"]))
try:
    r = HTTPMessageVerifier(signature_algorithm=ALGS[job["alg"]], key_resolver=Keys()).verify(
        msg, max_age=None)
    print(json.dumps({"ok": True, "covered": [str(c) for c in r[0].covered_components],
                      "params": {k: str(v) for k, v in r[0].parameters.items()}}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_verifies_what_the_keyhaven_client_signs() {
    // A bystander that records what arrives (and answers unsigned, which the client refuses).
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    let app = Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            let headers = req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            s.lock()
                .unwrap()
                .push((req.method().to_string(), req.uri().to_string(), headers));
            "not signed"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let t = start().await;
    for algorithm in [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
    ] {
        let key = t.key(algorithm, &format!("interop-{algorithm}"));
        let signer = Arc::new(keyhaven_client::StoreSigner::new(t.keys.clone(), &key.id).unwrap());
        let client = keyhaven_client::Client::new(&base, signer, t.server_key.clone()).unwrap();
        let e = client
            .send(
                "POST",
                &format!("{base}/v1/anything?x=1"),
                Some(br#"{"a":1}"#.to_vec()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, keyhaven_client::ClientError::Unauthentic(_)),
            "{e}"
        );
        let (method, path, headers) = seen.lock().unwrap().pop().unwrap();
        let job = json!({
            "method": method,
            "url": format!("{base}{path}"),
            "headers": headers,
            "keyid": key.fingerprint().to_hex(),
            "pem": key.public_key.to_pem().unwrap(),
            "alg": algorithm.short_name(),
        });
        let out = tokio::task::spawn_blocking(move || run_python(PY_VERIFY, &job))
            .await
            .unwrap();
        assert_eq!(out["ok"], true, "{algorithm}: {out}");
        let covered = out["covered"].to_string();
        for c in ["@method", "@target-uri", "content-digest"] {
            assert!(covered.contains(c), "{covered}");
        }
        for p in ["created", "expires", "nonce", "keyid", "alg"] {
            assert!(out["params"].get(p).is_some(), "{p}: {out}");
        }
    }
}

const PY_METRICS: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
job = json.load(sys.stdin)
text = urllib.request.urlopen(job["url"]).read().decode()
families = {}
for f in text_string_to_metric_families(text):
    families[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(families))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_client_parses_the_metrics() {
    let t = start().await;
    let key = t.key(Algorithm::Ed25519, "m");
    let client = t.client(&key);
    client.register("m").await.unwrap();
    client.whoami().await.unwrap();
    let _ = t.client(&t.key(Algorithm::Ed25519, "x")).whoami().await;
    let url = t.url("/metrics");
    let families =
        tokio::task::spawn_blocking(move || run_python(PY_METRICS, &json!({ "url": url })))
            .await
            .unwrap();
    assert_eq!(
        families["keyhaven_http_requests"]["type"], "counter",
        "{families}"
    );
    assert_eq!(
        families["keyhaven_http_request_duration_seconds"]["type"],
        "histogram"
    );
    assert_eq!(families["keyhaven_auth_failures"]["type"], "counter");
    let samples = families["keyhaven_http_requests"]["samples"]
        .as_array()
        .unwrap();
    let whoami_ok = samples
        .iter()
        .find(|s| s[1]["route"] == "whoami" && s[1]["status"] == "200" && s[1]["method"] == "GET");
    assert_eq!(whoami_ok.unwrap()[2], 1.0, "{samples:?}");
    let failures = families["keyhaven_auth_failures"]["samples"].to_string();
    assert!(failures.contains("unknown-key"), "{failures}");
    assert_eq!(families["keyhaven_registrations"]["samples"][0][2], 1.0);
}
