//! The transit routes driven by a Vault client nobody here wrote: Python's `hvac` (from PyPI,
//! in the interop virtualenv), unchanged, its `requests` session given an auth hook that signs
//! each request (RFC 9421, with `http-message-signatures`) with a key it registered.

use serde_json::json;

use crate::interop::run_python;
use crate::support::start_broker;

const PY_HVAC: &str = r#"
import base64, datetime, hashlib, json, secrets, sys
import hvac, requests
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
        return private

class Rfc9421(requests.auth.AuthBase):
    """Signs every request: @method, @target-uri, and the body's digest when it has one."""
    def __call__(self, r):
        covered = ["@method", "@target-uri"]
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        if body:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            r.headers["Content-Digest"] = f"sha-256=:{digest}:"
            covered.append("content-digest")
        HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys()).sign(
            r, key_id=fingerprint, label="py", nonce=secrets.token_urlsafe(16),
            created=datetime.datetime.now(datetime.timezone.utc),
            covered_component_ids=tuple(covered), use_existing_digest=bool(body))
        return r

# Registration (proof of possession of the key), then hvac as any Vault user would run it.
plain = requests.Session()
challenge = plain.post(base + "/v1/challenge").json()["challenge"]
reg = {"challenge": challenge, "name": "hvac", "algorithm": "ed25519",
       "public_key": base64.b64encode(spki).decode()}
session = requests.Session()
session.auth = Rfc9421()
r = session.post(base + "/v1/clients", json=reg)
assert r.status_code == 201, r.text

client = hvac.Client(url=base, token="not-a-credential-here", session=session)
t = client.secrets.transit
out = {}
t.create_key(name="payments")
out["read"] = t.read_key(name="payments")["data"]
b64 = lambda b: base64.b64encode(b).decode()
c1 = t.encrypt_data(name="payments", plaintext=b64(b"4111 1111 1111 1111"))["data"]["ciphertext"]
out["c1"] = c1
out["p1"] = base64.b64decode(t.decrypt_data(name="payments", ciphertext=c1)["data"]["plaintext"]).decode()
t.rotate_key(name="payments")
c2 = t.rewrap_data(name="payments", ciphertext=c1)["data"]["ciphertext"]
out["c2"] = c2
out["p2"] = base64.b64decode(t.decrypt_data(name="payments", ciphertext=c2)["data"]["plaintext"]).decode()
t.update_key_configuration(name="payments", min_decryption_version=2)
try:
    t.decrypt_data(name="payments", ciphertext=c1)
    out["old"] = "decrypted"
except hvac.exceptions.InvalidRequest as e:
    # hvac reads `errors` only from application/json; a problem+json body is its message.
    out["old"] = {"class": type(e).__name__, "message": str(e)}
dk = t.generate_data_key(name="payments", key_type="plaintext", bits=256)["data"]
back = t.decrypt_data(name="payments", ciphertext=dk["ciphertext"])["data"]["plaintext"]
out["datakey_roundtrip"] = back == dk["plaintext"] and len(base64.b64decode(back)) == 32
batch = t.encrypt_data(name="payments", batch_input=[{"plaintext": b64(b"a")}, {"plaintext": b64(b"b")}])
out["batch"] = [x["ciphertext"][:9] for x in batch["data"]["batch_results"]]
out["list"] = t.list_keys()["data"]["keys"]
try:
    t.decrypt_data(name="nothing", ciphertext=c2)
    out["missing"] = "decrypted"
except hvac.exceptions.InvalidPath as e:
    out["missing"] = type(e).__name__
# Signing keys: hvac signs and verifies; `cryptography` (nobody here wrote it) checks each
# signature against the public key the key's read gives.
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
msg = b"ship order 42"
signing = {}
for kt in ["ecdsa-p256", "ecdsa-p384", "ed25519"]:
    name = "sign-" + kt
    t.create_key(name=name, key_type=kt)
    info = t.read_key(name=name)["data"]
    public = info["keys"]["1"]["public_key"]
    sig = t.sign_data(name=name, hash_input=b64(msg))["data"]["signature"]
    raw = base64.b64decode(sig.split(":")[2])
    if kt == "ed25519":
        ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(raw, msg)
    else:
        # Vault's default hash is sha2-256 for every curve.
        serialization.load_pem_public_key(public.encode()).verify(raw, msg, ec.ECDSA(hashes.SHA256()))
    t.rotate_key(name=name)
    sig2 = t.sign_data(name=name, hash_input=b64(msg))["data"]["signature"]
    signing[kt] = {
        "type": info["type"], "signs": info["supports_signing"],
        "encrypts": info["supports_encryption"], "prefix": sig[:9], "prefix2": sig2[:9],
        "valid": t.verify_signed_data(name=name, hash_input=b64(msg), signature=sig)["data"]["valid"],
        "valid2": t.verify_signed_data(name=name, hash_input=b64(msg), signature=sig2)["data"]["valid"],
        "tampered": t.verify_signed_data(name=name, hash_input=b64(b"ship order 43"), signature=sig)["data"]["valid"],
    }
    try:
        t.encrypt_data(name=name, plaintext=b64(b"x"))
        signing[kt]["encrypt"] = "encrypted"
    except hvac.exceptions.InvalidRequest as e:
        signing[kt]["encrypt"] = type(e).__name__
# ECDSA P-384 over SHA-384 in the path, JWS marshaling (r || s in base64url), checked outside.
p384 = serialization.load_pem_public_key(t.read_key(name="sign-ecdsa-p384")["data"]["keys"]["2"]["public_key"].encode())
jws_sig = t.sign_data(name="sign-ecdsa-p384", hash_input=b64(msg), hash_algorithm="sha2-384",
                      marshaling_algorithm="jws")["data"]["signature"]
raw = base64.urlsafe_b64decode(jws_sig.split(":")[2] + "==")
p384.verify(utils.encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big")),
            msg, ec.ECDSA(hashes.SHA384()))
signing["jws"] = t.verify_signed_data(name="sign-ecdsa-p384", hash_input=b64(msg), signature=jws_sig,
                                      hash_algorithm="sha2-384", marshaling_algorithm="jws")["data"]["valid"]
signing["jws_wrong_hash"] = t.verify_signed_data(name="sign-ecdsa-p384", hash_input=b64(msg), signature=jws_sig,
                                                 hash_algorithm="sha2-512", marshaling_algorithm="jws")["data"]["valid"]
# A digest the caller made (prehashed), checked outside as a prehashed ECDSA signature.
p256 = serialization.load_pem_public_key(t.read_key(name="sign-ecdsa-p256")["data"]["keys"]["2"]["public_key"].encode())
digest = hashlib.sha256(msg).digest()
pre = t.sign_data(name="sign-ecdsa-p256", hash_input=b64(digest), prehashed=True)["data"]["signature"]
p256.verify(base64.b64decode(pre.split(":")[2]), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
signing["prehashed"] = True
try:
    t.sign_data(name="payments", hash_input=b64(msg))
    signing["aes_signs"] = "signed"
except hvac.exceptions.InvalidRequest as e:
    signing["aes_signs"] = type(e).__name__
try:
    t.create_key(name="sign-ed25519", key_type="ecdsa-p256")
    signing["retyped"] = "created"
except hvac.exceptions.VaultError as e:
    signing["retyped"] = str(e)
out["signing"] = signing
# Unsigned, hvac's token alone is nothing.
bare = hvac.Client(url=base, token="not-a-credential-here")
try:
    bare.secrets.transit.encrypt_data(name="payments", plaintext=b64(b"x"))
    out["unsigned"] = "accepted"
except hvac.exceptions.VaultError as e:
    out["unsigned"] = type(e).__name__
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_drives_the_transit_api_unchanged() {
    let t = start_broker().await;
    let base = t.base.clone();
    let out = tokio::task::spawn_blocking(move || run_python(PY_HVAC, &json!({ "base": base })))
        .await
        .unwrap();
    assert_eq!(out["read"]["type"], "aes256-gcm96", "{out}");
    assert_eq!(out["read"]["latest_version"], 1, "{out}");
    assert!(
        out["c1"].as_str().unwrap().starts_with("vault:v1:"),
        "{out}"
    );
    assert_eq!(out["p1"], "4111 1111 1111 1111");
    assert!(
        out["c2"].as_str().unwrap().starts_with("vault:v2:"),
        "{out}"
    );
    assert_eq!(out["p2"], "4111 1111 1111 1111");
    assert_eq!(out["old"]["class"], "InvalidRequest", "{out}");
    assert!(
        out["old"]["message"].as_str().unwrap().contains("too old"),
        "{out}"
    );
    assert_eq!(out["datakey_roundtrip"], true, "{out}");
    assert_eq!(out["batch"], json!(["vault:v2:", "vault:v2:"]), "{out}");
    assert_eq!(out["list"], json!(["payments"]), "{out}");
    assert_eq!(out["missing"], "InvalidPath", "{out}");
    assert_eq!(out["unsigned"], "Unauthorized", "{out}");
    let signing = &out["signing"];
    for kt in ["ecdsa-p256", "ecdsa-p384", "ed25519"] {
        let k = &signing[kt];
        assert_eq!(k["type"], kt, "{out}");
        assert_eq!(k["signs"], true, "{out}");
        assert_eq!(k["encrypts"], false, "{out}");
        assert_eq!(k["prefix"], "vault:v1:", "{out}");
        assert_eq!(k["prefix2"], "vault:v2:", "{out}");
        assert_eq!(k["valid"], true, "{out}");
        assert_eq!(k["valid2"], true, "{out}");
        assert_eq!(k["tampered"], false, "{out}");
        assert_eq!(k["encrypt"], "InvalidRequest", "{out}");
    }
    assert_eq!(signing["jws"], true, "{out}");
    assert_eq!(signing["jws_wrong_hash"], false, "{out}");
    assert_eq!(signing["prehashed"], true, "{out}");
    assert_eq!(signing["aes_signs"], "InvalidRequest", "{out}");
    assert!(
        signing["retyped"]
            .as_str()
            .unwrap()
            .contains("exists as an ed25519 key"),
        "{out}"
    );
}

const PY_RELEASE: &str = r#"
import base64, datetime, hashlib, json, secrets, sys
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms
from jwcrypto import jwe, jwk, jws

job = json.load(sys.stdin)
base = job["base"]
private = ed25519.Ed25519PrivateKey.generate()
spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
fingerprint = hashlib.sha256(spki).hexdigest()

class Keys(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id):
        return private

class Rfc9421(requests.auth.AuthBase):
    def __call__(self, r):
        covered = ["@method", "@target-uri"]
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        if body:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            r.headers["Content-Digest"] = f"sha-256=:{digest}:"
            covered.append("content-digest")
        HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys()).sign(
            r, key_id=fingerprint, label="py", nonce=secrets.token_urlsafe(16),
            created=datetime.datetime.now(datetime.timezone.utc),
            covered_component_ids=tuple(covered), use_existing_digest=bool(body))
        return r

s = requests.Session()
challenge = s.post(base + "/v1/challenge").json()["challenge"]
s.auth = Rfc9421()
r = s.post(base + "/v1/clients", json={"challenge": challenge, "name": "py", "algorithm": "ed25519",
                                        "public_key": base64.b64encode(spki).decode()})
assert r.status_code == 201, r.text
w = s.put(base + "/v1/secrets/app/api-token",
          json={"value": base64.b64encode(b"tok-123").decode(), "tier": 2, "floor": 1})
assert w.status_code == 200, w.text
out = {"write": w.json()["data"]}
# The requester's ephemeral key, made by jwcrypto; only its public half is sent.
results = []
for kty, crv in [("EC", "P-384"), ("EC", "P-256"), ("OKP", "X25519")]:
    eph = jwk.JWK.generate(kty=kty, crv=crv)
    rel = s.post(base + "/v1/release/app/api-token", json={"epk": json.loads(eph.export_public())})
    assert rel.status_code == 200, rel.text
    data = rel.json()["data"]
    token = jwe.JWE()
    token.deserialize(data["jwe"], key=eph)
    # The receipt, checked with the server's public key alone.
    info = requests.get(base + "/v1/server").json()
    server = jwk.JWK.from_pem(
        b"-----BEGIN PUBLIC KEY-----\n" + info["public_key"].encode() + b"\n-----END PUBLIC KEY-----\n")
    receipt = jws.JWS()
    receipt.deserialize(data["receipt"])
    receipt.verify(server)
    claims = json.loads(receipt.payload)
    results.append({
        "crv": crv,
        "plaintext": token.payload.decode(),
        "header": token.jose_header,
        "receipt_header": receipt.jose_header,
        "claims": claims,
        "jwe_sha256_ok": claims["jwe_sha256"] == hashlib.sha256(data["jwe"].encode()).hexdigest(),
        "thumbprint_ok": claims["epk_thumbprint"] == eph.thumbprint(),
    })
out["releases"] = results
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwcrypto_decrypts_a_release_and_verifies_its_receipt() {
    let t = start_broker().await;
    let base = t.base.clone();
    let out = tokio::task::spawn_blocking(move || run_python(PY_RELEASE, &json!({ "base": base })))
        .await
        .unwrap();
    assert_eq!(out["write"]["tier"], 1, "{out}");
    assert_eq!(out["write"]["downgraded"], true, "{out}");
    let releases = out["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 3);
    for r in releases {
        assert_eq!(r["plaintext"], "tok-123", "{r}");
        assert_eq!(r["header"]["alg"], "ECDH-ES+A256KW", "{r}");
        assert_eq!(r["header"]["enc"], "A256GCM", "{r}");
        assert_eq!(
            r["receipt_header"]["typ"], "keyhaven-release-receipt+jwt",
            "{r}"
        );
        assert_eq!(r["claims"]["path"], "app/api-token", "{r}");
        assert_eq!(r["jwe_sha256_ok"], true, "{r}");
        assert_eq!(r["thumbprint_ok"], true, "{r}");
    }
}
