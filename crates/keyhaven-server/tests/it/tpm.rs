//! TPM attestation through the broker: a live swtpm (manufactured with an EK certificate from a
//! local CA) driven by tpm2-tools enrolls an attestation key by credential activation, then its
//! quote over the release's report data lifts the requester to tier 2 and a tier-2 secret is
//! released; an AK that was not enrolled, a wrong activation secret, a stale PCR and a quote
//! made for another release are refused.

use base64ct::{Base64, Encoding};
use keyhaven::Algorithm;
use keyhaven_client::ClientError;
use keyhaven_server::ServerConfig;
use keyhaven_testkit::devices::{Swtpm, Tpm2Tools};
use serde_json::{Value, json};

use crate::support::start_broker_with;

/// The `tpm` evidence for `report_data`: a quote of PCRs 0-7 by `ak`.
fn evidence(tools: &Tpm2Tools, ak: &str, ak_public: &[u8], report_data: &[u8; 32]) -> Value {
    let indices: Vec<u8> = (0..8).collect();
    let (quote, signature) = tools.quote(ak, &indices, report_data);
    let pcrs: serde_json::Map<String, Value> = tools
        .read_pcrs(&indices)
        .into_iter()
        .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
        .collect();
    json!({
        "type": "tpm",
        "ak": Base64::encode_string(ak_public),
        "quote": Base64::encode_string(&quote),
        "signature": Base64::encode_string(&signature),
        "pcrs": pcrs,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tpm_enrolls_its_attestation_key_and_receives_a_tier_2_secret() {
    let tpm = tokio::task::spawn_blocking(Swtpm::start_with_ek_certificate)
        .await
        .unwrap();
    let tools = Tpm2Tools::new(&tpm);
    tools.extend_pcr(7, &[0x5b; 32]);
    let pcr7 = tools.read_pcrs(&[7])[&7].clone();
    let mut config = ServerConfig {
        tpm_ek_cas: Some(tpm.ek_ca()),
        ..ServerConfig::default()
    };
    config.tpm_pcrs.insert(7, pcr7);
    let t = start_broker_with(config).await;
    let key = t.key(Algorithm::Ed25519, "tpm-host");
    let c = t.client(&key);
    c.register("tpm-host").await.unwrap();
    let options = keyhaven_client::wire::SecretOptions {
        min_tier: Some(2),
        ..Default::default()
    };
    c.put_secret("hw/key", b"bound to a tpm", options)
        .await
        .unwrap();
    let e = c.release_secret("hw/key", None).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );

    // Enrollment: the EK certificate and the AK; a credential; the TPM opens it.
    tools.create_ek();
    let (ak_public, _) = tools.create_ak("ak");
    let (ak2_public, _) = tools.create_ak("ak2");
    let post = |path: &'static str, body: Value| {
        let c = c.clone();
        let url = t.url(path);
        async move {
            c.send("POST", &url, Some(body.to_string().into_bytes()))
                .await
                .map(|r| r.json::<Value>().unwrap()["data"].clone())
        }
    };
    let b64 = |v: &Value| Base64::decode_vec(v.as_str().unwrap()).unwrap();
    // A challenge for the AK, and what the TPM makes of it: its id and the secret.
    let challenged = || async {
        let challenge = post(
            "/v1/attestation/tpm/challenge",
            json!({
                "ek_certificate": Base64::encode_string(&tpm.ek_certificate()),
                "ak_public": Base64::encode_string(&ak_public),
            }),
        )
        .await
        .unwrap();
        let secret = tools
            .activate_credential(
                "ak",
                &b64(&challenge["id_object"]),
                &b64(&challenge["encrypted_secret"]),
            )
            .unwrap();
        (challenge["id"].clone(), secret)
    };
    let (id, secret) = challenged().await;
    // A wrong answer is refused and uses the challenge up.
    let mut wrong = secret.clone();
    wrong[0] ^= 1;
    let e = post(
        "/v1/attestation/tpm/activate",
        json!({ "id": id, "secret": Base64::encode_string(&wrong) }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not the credential's"), "{e}");
    let e = post(
        "/v1/attestation/tpm/activate",
        json!({ "id": id, "secret": Base64::encode_string(&secret) }),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("no such credential challenge"),
        "{e}"
    );
    // A new challenge, answered right: enrolled.
    enroll(&t, &c, &tpm, &tools, "ak", &ak_public).await;

    // The enrolled AK's quote over this release's report data: tier 2, released.
    let r = c
        .release_secret_with("hw/key", None, |rd| {
            Some(evidence(&tools, "ak", &ak_public, rd))
        })
        .await
        .unwrap();
    assert_eq!(r.requester_tier, 2);
    assert_eq!(r.secret.expose_secret(), b"bound to a tpm");
    assert_eq!(
        r.claims["evidence"]["attestation"]["kind"], "tpm",
        "{}",
        r.claims
    );
    assert_eq!(
        r.claims["evidence"]["attestation"]["claims"]["trust"]["hardware"],
        "affirming"
    );

    // Another AK of the same TPM, never enrolled; a quote made for another release; PCR 7
    // changed since the reference was taken.
    let e = c
        .release_secret_with("hw/key", None, |rd| {
            Some(evidence(&tools, "ak2", &ak2_public, rd))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not enrolled"), "{e}");
    let e = c
        .release_secret_with("hw/key", None, |_| {
            Some(evidence(&tools, "ak", &ak_public, &[7; 32]))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another nonce"), "{e}");
    tools.extend_pcr(7, &[0x66; 32]);
    let e = c
        .release_secret_with("hw/key", None, |rd| {
            Some(evidence(&tools, "ak", &ak_public, rd))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("PCR 7"), "{e}");
}

/// Enrolls attestation key `ak` (its `TPM2B_PUBLIC`) by credential activation.
async fn enroll(
    t: &crate::support::TestServer,
    c: &keyhaven_client::Client,
    tpm: &Swtpm,
    tools: &Tpm2Tools,
    ak: &str,
    ak_public: &[u8],
) {
    let data = |r: keyhaven_client::SignedResponse| r.json::<Value>().unwrap()["data"].clone();
    let body = json!({
        "ek_certificate": Base64::encode_string(&tpm.ek_certificate()),
        "ak_public": Base64::encode_string(ak_public),
    });
    let url = t.url("/v1/attestation/tpm/challenge");
    let challenge = data(
        c.send("POST", &url, Some(body.to_string().into_bytes()))
            .await
            .unwrap(),
    );
    let b64 = |v: &Value| Base64::decode_vec(v.as_str().unwrap()).unwrap();
    let secret = tools
        .activate_credential(
            ak,
            &b64(&challenge["id_object"]),
            &b64(&challenge["encrypted_secret"]),
        )
        .unwrap();
    let body = json!({ "id": challenge["id"], "secret": Base64::encode_string(&secret) });
    let url = t.url("/v1/attestation/tpm/activate");
    let enrolled = data(
        c.send("POST", &url, Some(body.to_string().into_bytes()))
            .await
            .unwrap(),
    );
    assert!(
        enrolled["certified_by"]
            .as_str()
            .unwrap()
            .contains("swtpm-localca"),
        "{enrolled}"
    );
}

/// What a Trustee attester computes and Python canonicalises independently (RFC 8785 for
/// string-only JSON: members sorted, compact): SHA-384 of the runtime data.
const PY_BINDING: &str = r#"
import hashlib, json, sys
job = json.load(sys.stdin)
text = json.dumps(job, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
print(json.dumps({"sha384": hashlib.sha384(text.encode()).hexdigest()}))
"#;

/// jwcrypto (PyPI) makes the TEE's EC P-256 key pair (a private JWK).
const PY_TEE_KEY: &str = r#"
import json
from jwcrypto import jwk
key = jwk.JWK.generate(kty="EC", crv="P-256")
print(key.export(private_key=True))
"#;

/// jwcrypto (PyPI) checks the EAR token with the server's public key and decrypts the
/// resource, a flattened JWE, with the TEE key.
const PY_KBS: &str = r#"
import base64, json, sys
from jwcrypto import jwe, jwk, jws
from cryptography.hazmat.primitives import serialization
job = json.load(sys.stdin)
spki = serialization.load_der_public_key(base64.b64decode(job["server_key"]))
server = jwk.JWK.from_pyca(spki)
token = jws.JWS()
token.deserialize(job["token"])
token.verify(server)
claims = json.loads(token.payload)
tee = jwk.JWK(**job["tee_key"])
box = jwe.JWE()
box.deserialize(json.dumps(job["resource"]), key=tee)
print(json.dumps({"claims": claims, "header": token.jose_header,
                  "plaintext": box.payload.decode()}))
"#;

/// A KBS request without a signature: the answer's status, body and `Set-Cookie`.
async fn kbs_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    cookie: Option<&str>,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut r = http.request(method, url);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let response = r.send().await.unwrap();
    let status = response.status().as_u16();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, body, set_cookie)
}

/// Trustee's TPM evidence over `binding`'s first 32 bytes: a quote of PCRs 0-23 by `ak`, the
/// PCR values, and the AK's SubjectPublicKeyInfo.
fn trustee_tpm_evidence(tools: &Tpm2Tools, ak: &str, spki: &[u8], binding: &[u8]) -> Value {
    let all: Vec<u8> = (0..24).collect();
    let (message, signature) = tools.quote(ak, &all, &binding[..32]);
    let pcrs: Vec<String> = tools.read_pcrs(&all).values().map(hex::encode).collect();
    json!({
        "tpm_quote": {
            "signature": Base64::encode_string(&signature),
            "message": Base64::encode_string(&message),
            "pcrs": pcrs,
        },
        "ak_public": Base64::encode_string(spki),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tpm_attests_through_the_trustee_kbs_handshake_and_receives_a_tier_2_secret() {
    use kbs_types::{
        Attestation, Challenge, CompositeEvidence, Request, RuntimeData, Tee, TeePubKey,
    };
    let tpm = tokio::task::spawn_blocking(Swtpm::start_with_ek_certificate)
        .await
        .unwrap();
    let tools = Tpm2Tools::new(&tpm);
    tools.extend_pcr(7, &[0x5b; 32]);
    let pcr7 = tools.read_pcrs(&[7])[&7].clone();
    let owner_id = "0a0b0c0d0e0f00010203040506070809";
    let mut config = ServerConfig {
        tpm_ek_cas: Some(tpm.ek_ca()),
        kbs_tenant: Some(owner_id.into()),
        ..ServerConfig::default()
    };
    config.tpm_pcrs.insert(7, pcr7.clone());
    let t = start_broker_with(config).await;
    let key = t.key(Algorithm::Ed25519, "kbs-owner");
    t.register_as(&key, owner_id, keyhaven_client::wire::Role::Admin);
    let c = t.client(&key);
    let at_tier = |min_tier| keyhaven_client::wire::SecretOptions {
        min_tier: Some(min_tier),
        ..Default::default()
    };
    c.put_secret("kbs/default/key/disk", b"bound to a tpm", at_tier(2))
        .await
        .unwrap();
    c.put_secret("kbs/default/key/gpu", b"needs tier 3", at_tier(3))
        .await
        .unwrap();

    // The AK Trustee's attester uses (RSA, RSASSA), enrolled by credential activation.
    tools.create_ek();
    let (ak_public, _) = tools.create_rsa_ak("ak");
    let spki = tools.spki("ak");
    let (stranger_public, _) = tools.create_rsa_ak("stranger");
    let stranger_spki = tools.spki("stranger");
    enroll(&t, &c, &tpm, &tools, "ak", &ak_public).await;
    // Another client enrolls the other AK: a genuine TPM, but not one the tenant trusts.
    let other = t.client(&t.key(Algorithm::Ed25519, "other"));
    other.register("other").await.unwrap();
    enroll(&t, &other, &tpm, &tools, "stranger", &stranger_public).await;

    // The handshake, every body in kbs-types' encoding.
    let http = reqwest::Client::new();
    let auth = |tee: Tee, version: &str| {
        let body = serde_json::to_value(Request {
            version: version.into(),
            tee,
            extra_params: json!({ "supported-hash-algorithms": ["sha384"] }),
        })
        .unwrap();
        kbs_call(
            &http,
            reqwest::Method::POST,
            t.url("/kbs/v0/auth"),
            None,
            None,
            Some(body),
        )
    };
    let (status, body, _) = auth(Tee::Tpm, "0.1.0").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("0.4.0"), "{body}");
    let (status, body, _) = auth(Tee::Snp, "0.4.0").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("[tpm]"), "{body}");

    // The TEE's key pair, made by jwcrypto.
    let tee_jwk = crate::interop::run_python(PY_TEE_KEY, &json!({}));
    let tee_pubkey = TeePubKey::EC {
        crv: "P-256".into(),
        alg: "ECDH-ES+A256KW".into(),
        x: tee_jwk["x"].as_str().unwrap().into(),
        y: tee_jwk["y"].as_str().unwrap().into(),
    };
    // One session: its challenge, the binding Python computes, the attestation.
    let session = |ak: &'static str, ak_spki: Vec<u8>, for_nonce: Option<String>| {
        let (http, tools, t, tee_pubkey) = (&http, &tools, &t, tee_pubkey.clone());
        async move {
            let (status, challenge, cookie) = auth(Tee::Tpm, "0.4.0").await;
            assert_eq!(status, 200, "{challenge}");
            let challenge: Challenge = serde_json::from_value(challenge).unwrap();
            assert_eq!(Base64::decode_vec(&challenge.nonce).unwrap().len(), 32);
            let cookie = cookie.unwrap();
            let nonce = for_nonce.unwrap_or_else(|| challenge.nonce.clone());
            let runtime = json!({
                "nonce": nonce,
                "tee-pubkey": serde_json::to_value(&tee_pubkey).unwrap(),
                "additional-evidence": "",
            });
            let binding = hex::decode(
                crate::interop::run_python(PY_BINDING, &runtime)["sha384"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
            let evidence = trustee_tpm_evidence(tools, ak, &ak_spki, &binding);
            let attestation = Attestation {
                init_data: None,
                runtime_data: RuntimeData {
                    nonce: challenge.nonce,
                    tee_pubkey,
                },
                tee_evidence: CompositeEvidence {
                    primary_evidence: evidence,
                    additional_evidence: String::new(),
                },
            };
            let (status, body, _) = kbs_call(
                http,
                reqwest::Method::POST,
                t.url("/kbs/v0/attest"),
                Some(&cookie),
                None,
                Some(serde_json::to_value(&attestation).unwrap()),
            )
            .await;
            (status, body, cookie)
        }
    };

    // An AK another client enrolled; a quote for another session's nonce.
    let (status, body, _) = session("stranger", stranger_spki, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not enrolled by the client"),
        "{body}"
    );
    let (status, body, _) = session("ak", spki.clone(), Some("b3RoZXI=".into())).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("another nonce"),
        "{body}"
    );

    // The enrolled AK: an EAR token, and the tier-2 secret.
    let (status, body, cookie) = session("ak", spki.clone(), None).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let get = |path: &str, cookie: Option<&str>, bearer: Option<&str>| {
        let (cookie, bearer) = (cookie.map(str::to_owned), bearer.map(str::to_owned));
        let (http, url) = (http.clone(), t.url(path));
        async move {
            kbs_call(
                &http,
                reqwest::Method::GET,
                url,
                cookie.as_deref(),
                bearer.as_deref(),
                None,
            )
            .await
        }
    };
    let (status, resource, _) = get("/kbs/v0/resource/default/key/disk", Some(&cookie), None).await;
    assert_eq!(status, 200, "{resource}");
    // As guest-components decrypts it: the AAD is the protected header kbs-types decoded and
    // encodes again.
    let response: kbs_types::Response = serde_json::from_value(resource.clone()).unwrap();
    let b64 = |b: &[u8]| base64ct::Base64UrlUnpadded::encode_string(b);
    let compact = format!(
        "{}.{}.{}.{}.{}",
        String::from_utf8(response.protected.generate_aad().unwrap()).unwrap(),
        b64(&response.encrypted_key),
        b64(&response.iv),
        b64(&response.ciphertext),
        b64(&response.tag)
    );
    assert_eq!(
        compact.split('.').next(),
        resource["protected"].as_str(),
        "the AAD a Trustee client computes is the header the JWE was sealed with"
    );

    // jwcrypto: the token is the server key's, an EAR whose TPM submodule affirms the
    // hardware; the resource opens with the TEE key.
    let server_key = Base64::encode_string(t.server_key.spki_der());
    let checked = crate::interop::run_python(
        PY_KBS,
        &json!({ "server_key": server_key, "token": token, "tee_key": tee_jwk, "resource": resource }),
    );
    assert_eq!(checked["plaintext"], "bound to a tpm", "{checked}");
    let claims = &checked["claims"];
    assert_eq!(claims["eat_profile"], "tag:github.com,2023:veraison/ear");
    let cpu = &claims["submods"]["cpu0"];
    // PCR 7 was named: the boot is known, so the EAR affirms.
    assert_eq!(cpu["ear.status"], "affirming", "{claims}");
    assert_eq!(cpu["ear.trustworthiness-vector"]["hardware"], 2, "{claims}");
    assert_eq!(
        cpu["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"]["x"],
        tee_jwk["x"]
    );
    assert_eq!(claims["keyhaven.tier"], 2);

    // The token alone (another node, no cookie) works; nothing at all, a forged token and a
    // secret above the token's tier do not.
    let (status, _, _) = get("/kbs/v0/resource/default/key/disk", None, Some(&token)).await;
    assert_eq!(status, 200);
    let (status, body, _) = get("/kbs/v0/resource/default/key/disk", None, None).await;
    assert_eq!(status, 401, "{body}");
    let mut forged = token.clone();
    forged.insert(forged.find('.').unwrap() + 5, 'A');
    let (status, _, _) = get("/kbs/v0/resource/default/key/disk", None, Some(&forged)).await;
    assert_eq!(status, 401);
    let (status, body, _) = get("/kbs/v0/resource/default/key/missing", Some(&cookie), None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = get("/kbs/v0/resource/default/key/gpu", Some(&cookie), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["type"].as_str().unwrap().ends_with("tier-too-low"),
        "{body}"
    );

    // Compromise by measurement: the boot whose PCR 7 was trusted is revoked. The token
    // still lives, but it releases nothing now; the releases made on it are listed.
    c.admin_revoke_evidence("measurement", &hex::encode(&pcr7), "bad shim", false)
        .await
        .unwrap();
    let (status, body, _) = get("/kbs/v0/resource/default/key/disk", Some(&cookie), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["type"].as_str().unwrap().ends_with("evidence-revoked"),
        "{body}"
    );
    let affected = c
        .admin_evidence_affected("measurement", &hex::encode(&pcr7))
        .await
        .unwrap();
    let affected = affected.as_array().unwrap();
    assert_eq!(affected.len(), 2, "{affected:?}");
    assert!(affected.iter().all(|a| a["path"] == "kbs/default/key/disk"
        && a["principal"].as_str().unwrap().starts_with("kbs:")));
}
