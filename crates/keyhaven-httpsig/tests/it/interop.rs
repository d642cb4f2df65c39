//! Against an implementation nobody here wrote: the PyPI package `http-message-signatures`
//! (installed by `cargo xtask test` into the interop virtualenv) signs requests that this crate
//! verifies, and verifies requests this crate signs, for Ed25519, ECDSA P-256 and P-384.

use std::process::Command;

use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_httpsig::{
    DigestAlgorithm, Message, Request, SignatureSpec, VerifyPolicy, content_digest, sign_request,
    verify,
};
use keyhaven_store_memory::MemoryStore;
use keyhaven_testkit::devices::python;
use serde_json::Value;

const SCRIPT: &str = r#"
import json, sys, datetime
from cryptography.hazmat.primitives import serialization
from http_message_signatures import (HTTPMessageSigner, HTTPMessageVerifier,
    HTTPSignatureKeyResolver, algorithms)

class Msg:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers

class Keys(HTTPSignatureKeyResolver):
    def __init__(self, pem):
        self.pem = pem.encode()
    def resolve_private_key(self, key_id):
        return serialization.load_pem_private_key(self.pem, password=None)
    def resolve_public_key(self, key_id):
        return serialization.load_pem_public_key(self.pem)

ALGS = {"ed25519": algorithms.ED25519, "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
        "ecdsa-p384-sha384": algorithms.ECDSA_P384_SHA384}
job = json.load(sys.stdin)
msg = Msg(job["method"], job["url"], dict(job["headers"]))
alg = ALGS[job["alg"]]
if job["mode"] == "sign":
    signer = HTTPMessageSigner(signature_algorithm=alg, key_resolver=Keys(job["pem"]))
    signer.sign(msg, key_id=job["keyid"], label="py", nonce="py-nonce",
                body=job["body"].encode(), use_existing_digest=True,
                created=datetime.datetime.fromtimestamp(job["created"], datetime.timezone.utc),
                covered_component_ids=("@method", "@target-uri", "@authority", "content-type",
                                       "content-digest"))
    print(json.dumps(dict(msg.headers)))
else:
    verifier = HTTPMessageVerifier(signature_algorithm=alg, key_resolver=Keys(job["pem"]))
    try:
        results = verifier.verify(msg, max_age=None, body=job["body"].encode())
        print(json.dumps({"ok": True, "covered": [str(c) for c in results[0].covered_components],
                          "params": {k: str(v) for k, v in results[0].parameters.items()}}))
    except Exception as e:
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"#;

fn run(job: &Value) -> Value {
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(job.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const URL: &str = "https://api.example.com:8443/v1/things?limit=5&sort=name";
const BODY: &[u8] = br#"{"name": "widget"}"#;

fn headers() -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        (
            "Content-Digest".into(),
            content_digest(BODY, DigestAlgorithm::Sha256),
        ),
    ]
}

#[test]
fn python_signs_keyhaven_verifies() {
    let store = MemoryStore::new().unwrap();
    for alg in [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
    ] {
        let key = store.generate(alg, &format!("py-{alg}")).unwrap();
        let pem =
            keyhaven_crypto::hazmat::pkcs8_to_pem(&store.export_pkcs8(&key.id).unwrap()).unwrap();
        let name = keyhaven_httpsig::algorithm_name(alg).unwrap();
        let signed = run(&serde_json::json!({
            "mode": "sign", "alg": name, "pem": pem.as_str(), "keyid": "client-1",
            "method": "POST", "url": URL, "headers": headers(), "created": 1_700_000_000u64,
            "body": std::str::from_utf8(BODY).unwrap(),
        }));
        let mut request = Request::new("POST", URL).unwrap();
        for (n, v) in signed.as_object().unwrap() {
            request.push_header(n, v.as_str().unwrap());
        }
        let policy = VerifyPolicy::at(1_700_000_005)
            .require(&["@method", "@target-uri", "content-digest"])
            .unwrap()
            .require_nonce();
        let v = verify(Message::Request(&request), Some("py"), &policy, &mut |id| {
            Ok((id == "client-1").then(|| key.public_key.clone()))
        })
        .unwrap_or_else(|e| panic!("{alg}: {e}\n{signed}"));
        assert_eq!(v.nonce.as_deref(), Some("py-nonce"));
        keyhaven_httpsig::check_content_digest(
            &Message::Request(&request).field("content-digest").unwrap(),
            BODY,
        )
        .unwrap();
        // the Python signature over another method does not pass here
        let mut put = Request::new("PUT", URL).unwrap();
        for (n, v) in request.fields() {
            put.push_header(n, v);
        }
        let e = verify(Message::Request(&put), Some("py"), &policy, &mut |_| {
            Ok(Some(key.public_key.clone()))
        })
        .unwrap_err();
        assert_eq!(e.reason(), "bad-signature");
    }
}

#[test]
fn keyhaven_signs_python_verifies() {
    let store = MemoryStore::new().unwrap();
    for alg in [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
    ] {
        let key = store.generate(alg, &format!("kh-{alg}")).unwrap();
        let mut request = Request::new("POST", URL).unwrap();
        for (n, v) in headers() {
            request.push_header(&n, &v);
        }
        let spec = SignatureSpec::new("kh", &key.fingerprint().to_hex())
            .covering(&[
                "@method",
                "@target-uri",
                "@authority",
                "@path",
                "@query",
                "content-type",
                "content-digest",
            ])
            .unwrap()
            .created(keyhaven_core::unix_now())
            .expires(keyhaven_core::unix_now() + 300)
            .nonce("kh-nonce");
        sign_request(&mut request, &spec, &store, &key.id).unwrap();
        let job = |method: &str| {
            serde_json::json!({
                "mode": "verify", "alg": keyhaven_httpsig::algorithm_name(alg).unwrap(),
                "pem": key.public_key.to_pem().unwrap(), "label": "kh",
                "method": method, "url": URL, "headers": request.fields(),
                "body": std::str::from_utf8(BODY).unwrap(),
            })
        };
        let ok = run(&job("POST"));
        assert_eq!(ok["ok"], true, "{alg}: {ok}");
        assert_eq!(ok["params"]["nonce"], "kh-nonce", "{ok}");
        let tampered = run(&job("PUT"));
        assert_eq!(tampered["ok"], false, "{alg}: {tampered}");
    }
}
