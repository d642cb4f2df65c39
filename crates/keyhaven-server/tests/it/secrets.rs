//! The key broker's secrets through a real server: written with a tier and a floor, released
//! as a JWE to the requester's ephemeral key with a receipt the server key signs, refused to a
//! requester of too low a tier, rewrapped under a new KEK without loss, and kept apart per
//! client. The broker here has a software master key: it reaches tier 1.

use base64ct::{Base64, Encoding};
use keyhaven::{Algorithm, default_provider, jwe, jws};
use keyhaven_client::{Client, ClientError};
use keyhaven_server::secrets::RECEIPT_TYPE;
use serde_json::{Value, json};
use sha2::Digest;

use crate::support::{TestServer, start_broker};

async fn client(t: &TestServer, name: &str) -> (Client, String) {
    let key = t.key(Algorithm::Ed25519, name);
    let c = t.client(&key);
    c.register(name).await.unwrap();
    (c, key.fingerprint().to_hex())
}

async fn call(
    t: &TestServer,
    c: &Client,
    method: &str,
    path: &str,
    body: Value,
) -> Result<Value, (u16, String, String)> {
    let body = (method != "GET" && !(method == "DELETE" && body == json!({})))
        .then(|| body.to_string().into_bytes());
    match c.send(method, &t.url(path), body).await {
        Ok(r) => Ok(r.json::<Value>().unwrap()["data"].clone()),
        Err(ClientError::Problem(p)) => Err((
            p.status,
            p.kind
                .trim_start_matches("urn:keyhaven:problem:")
                .to_owned(),
            p.detail,
        )),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    Base64::encode_string(bytes)
}

/// Asks for `path` with a fresh ephemeral key of `alg`; the plaintext and the receipt's claims.
async fn release(
    t: &TestServer,
    c: &Client,
    path: &str,
    version: Option<u64>,
    alg: Algorithm,
) -> Result<(Vec<u8>, Value, Value), (u16, String, String)> {
    let eph = default_provider().generate(alg).unwrap();
    let mut body = json!({ "epk": jwe::public_jwk(eph.public_key()).unwrap() });
    if let Some(v) = version {
        body["version"] = v.into();
    }
    let out = call(t, c, "POST", &format!("/v1/release/{path}"), body).await?;
    let token = out["jwe"].as_str().unwrap();
    let (_, plain) = jwe::decrypt(token, eph.as_ref()).unwrap();
    let claims = jws::verify(
        out["receipt"].as_str().unwrap(),
        &t.server_key,
        RECEIPT_TYPE,
    )
    .unwrap();
    assert_eq!(
        claims["jwe_sha256"],
        hex::encode(sha2::Sha256::digest(token.as_bytes())),
        "the receipt names this JWE"
    );
    Ok((plain.expose_secret().to_vec(), claims, out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_versioned_and_released_as_a_jwe_with_a_signed_receipt() {
    let t = start_broker().await;
    let (c, fp) = client(&t, "app").await;
    let w = call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/db/password",
        json!({ "value": b64(b"hunter2") }),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            w["version"].as_u64(),
            w["tier"].as_u64(),
            w["downgraded"].as_bool()
        ),
        (Some(1), Some(1), Some(false))
    );
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/db/password",
        json!({ "value": b64(b"hunter3") }),
    )
    .await
    .unwrap();
    for alg in [Algorithm::X25519, Algorithm::EcdhP256, Algorithm::EcdhP384] {
        let (plain, claims, out) = release(&t, &c, "db/password", None, alg).await.unwrap();
        assert_eq!(plain, b"hunter3", "{alg}");
        assert_eq!(out["version"], 2);
        assert_eq!(claims["path"], "db/password");
        assert_eq!(claims["version"], 2);
        assert_eq!(claims["secret_tier"], 1);
        assert_eq!(claims["requester_tier"], 1);
        assert_eq!(claims["evidence"]["kind"], "registered-key");
        assert_eq!(claims["evidence"]["key"], fp.as_str());
        assert_eq!(claims["policy"]["rule"], "min-tier");
        assert_eq!(claims["iss"], t.server_key.fingerprint().to_hex());
    }
    let (plain, claims, _) = release(&t, &c, "db/password", Some(1), Algorithm::X25519)
        .await
        .unwrap();
    assert_eq!(
        (plain.as_slice(), claims["version"].as_u64()),
        (&b"hunter2"[..], Some(1))
    );
    let meta = call(&t, &c, "GET", "/v1/secrets/db/password", json!({}))
        .await
        .unwrap();
    assert_eq!(meta["latest_version"], 2);
    assert!(
        meta.get("value").is_none() && !meta.to_string().contains("hunter"),
        "{meta}"
    );
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/web/tls-key",
        json!({ "value": b64(b"k") }),
    )
    .await
    .unwrap();
    let listed = call(&t, &c, "GET", "/v1/secrets?prefix=db/", json!({}))
        .await
        .unwrap();
    let paths: Vec<&str> = listed["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["db/password"]);
    // Another client sees none of it.
    let (bob, _) = client(&t, "bob").await;
    let e = release(&t, &bob, "db/password", None, Algorithm::X25519)
        .await
        .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (404, "not-found"));
    // Deleted, it is gone.
    call(&t, &c, "DELETE", "/v1/secrets/db/password", json!({}))
        .await
        .unwrap();
    let e = release(&t, &c, "db/password", None, Algorithm::X25519)
        .await
        .unwrap_err();
    assert_eq!(e.0, 404);
    assert!(t.metric("keyhaven_broker_releases_total{tier=\"1\",outcome=\"released\"}") >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_degrade_to_a_floor_and_releases_need_the_requesters_tier() {
    let t = start_broker().await;
    let (c, fp) = client(&t, "app").await;
    // Tier 2 asked, this broker reaches 1: refused without a floor, downgraded with one.
    let e = call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/hsm-only",
        json!({ "value": b64(b"x"), "tier": 2 }),
    )
    .await
    .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (503, "tier-unavailable"), "{}", e.2);
    let w = call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/with-fallback",
        json!({ "value": b64(b"fallback"), "tier": 4, "floor": 1 }),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            w["tier"].as_u64(),
            w["requested_tier"].as_u64(),
            w["downgraded"].as_bool()
        ),
        (Some(1), Some(4), Some(true))
    );
    assert_eq!(
        t.metric("keyhaven_broker_downgrades_total{from=\"4\",to=\"1\"}"),
        1
    );
    // Stored at tier 1, released only to tier 2 requesters.
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/guarded",
        json!({ "value": b64(b"guarded"), "min_tier": 2 }),
    )
    .await
    .unwrap();
    let e = release(&t, &c, "guarded", None, Algorithm::EcdhP256)
        .await
        .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (403, "tier-too-low"), "{}", e.2);
    assert!(e.2.contains("tier 1"), "{}", e.2);
    assert_eq!(
        t.metric("keyhaven_broker_releases_total{tier=\"1\",outcome=\"denied\"}"),
        1
    );
    // An admin vouches the key is in hardware: tier 2, released, and the receipt says so.
    let admin_key = t.key(Algorithm::Ed25519, "admin");
    t.make_admin(&admin_key);
    let admin = t.client(&admin_key);
    let e = call(
        &t,
        &c,
        "POST",
        &format!("/v1/admin/keys/{fp}/tier"),
        json!({ "tier": 2, "reason": "x" }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 403, "a client cannot vouch for itself");
    let e = call(
        &t,
        &admin,
        "POST",
        &format!("/v1/admin/keys/{fp}/tier"),
        json!({ "tier": 3, "reason": "x" }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 400, "tier 3 needs attestation: {}", e.2);
    call(
        &t,
        &admin,
        "POST",
        &format!("/v1/admin/keys/{fp}/tier"),
        json!({ "tier": 2, "reason": "enrolled the YubiHSM in person" }),
    )
    .await
    .unwrap();
    let (plain, claims, _) = release(&t, &c, "guarded", None, Algorithm::EcdhP256)
        .await
        .unwrap();
    assert_eq!(plain, b"guarded");
    assert_eq!(claims["requester_tier"], 2);
    assert_eq!(claims["evidence"]["kind"], "vouched-key");
    assert_eq!(claims["policy"]["min_tier"], 2);
    // A secret's tier is fixed once made.
    let e = call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/guarded",
        json!({ "value": b64(b"y"), "tier": 0 }),
    )
    .await
    .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (409, "tier-conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_rotation_rewraps_every_envelope_and_loses_nothing() {
    let t = start_broker().await;
    let (c, _) = client(&t, "app").await;
    for i in 0..5 {
        for v in 0..2 {
            call(
                &t,
                &c,
                "PUT",
                &format!("/v1/secrets/s{i}"),
                json!({ "value": b64(format!("{i}.{v}").as_bytes()) }),
            )
            .await
            .unwrap();
        }
    }
    let r = call(&t, &c, "POST", "/v1/secrets-kek/rotate", json!({}))
        .await
        .unwrap();
    assert_eq!(
        (r["kek_version"].as_u64(), r["rewrapped"].as_u64()),
        (Some(2), Some(10))
    );
    // Every envelope in the database is now under KEK version 2.
    for i in 0..5 {
        let record = tokio::task::block_in_place(|| {
            use keyhaven_server::Storage;
            t.storage
                .secret(&c_id(&t, &c), &format!("s{i}"))
                .unwrap()
                .unwrap()
        });
        for (bytes, _) in record.versions.values() {
            assert_eq!(
                keyhaven::envelope::Envelope::from_bytes(bytes)
                    .unwrap()
                    .kek_version(),
                2
            );
        }
        for v in 1..=2u64 {
            let (plain, _, _) = release(&t, &c, &format!("s{i}"), Some(v), Algorithm::X25519)
                .await
                .unwrap();
            assert_eq!(plain, format!("{i}.{}", v - 1).as_bytes());
        }
    }
    let again = call(&t, &c, "POST", "/v1/secrets-kek/rotate", json!({}))
        .await
        .unwrap();
    assert_eq!(again["kek_version"], 3);
}

/// KEK rotations while writers add versions and readers release: every write acknowledged
/// is released with its own value afterwards, every release during the run returned a value
/// that was written, and a last rotation finds each envelope (the ones written meanwhile too)
/// and moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotations_under_load_lose_nothing() {
    const PATHS: usize = 6;
    const VERSIONS: u64 = 8;
    const ROTATIONS: u32 = 5;
    let t = start_broker().await;
    let (c, _) = client(&t, "app").await;
    for i in 0..PATHS {
        c.put_secret(&format!("load/s{i}"), b"v1", Default::default())
            .await
            .unwrap();
    }
    let c = std::sync::Arc::new(c);
    let mut writers = Vec::new();
    for i in 0..PATHS {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            for v in 2..=VERSIONS {
                let w = c
                    .put_secret(
                        &format!("load/s{i}"),
                        format!("v{v}").as_bytes(),
                        Default::default(),
                    )
                    .await
                    .unwrap();
                assert_eq!(w.version, v);
            }
        }));
    }
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut released = 0;
            for round in 0..(PATHS * 6) {
                let r = c
                    .release_secret(&format!("load/s{}", round % PATHS), None)
                    .await
                    .unwrap();
                let value = String::from_utf8(r.secret.expose_secret().to_vec()).unwrap();
                assert_eq!(
                    value,
                    format!("v{}", r.version),
                    "a release during the rotations"
                );
                released += 1;
            }
            released
        })
    };
    let rotator = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..ROTATIONS {
                versions.push(c.rotate_secret_kek(None).await.unwrap().0);
            }
            versions
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), PATHS * 6);
    assert_eq!(
        rotator.await.unwrap(),
        (2..2 + ROTATIONS).collect::<Vec<_>>()
    );

    for i in 0..PATHS {
        for v in 1..=VERSIONS {
            let r = c
                .release_secret(&format!("load/s{i}"), Some(v))
                .await
                .unwrap();
            assert_eq!(
                r.secret.expose_secret(),
                format!("v{v}").as_bytes(),
                "s{i} v{v}"
            );
        }
    }
    // The last rotation moves every envelope, whatever KEK version each was left under.
    let (version, moved) = c.rotate_secret_kek(None).await.unwrap();
    assert_eq!(version, 2 + ROTATIONS);
    assert_eq!(moved, PATHS as u64 * VERSIONS);
}

/// The client id of `c`.
fn c_id(_t: &TestServer, c: &Client) -> String {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async { c.whoami().await.unwrap().client })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secret_requests_are_clear_problems() {
    let t = start_broker().await;
    let (c, _) = client(&t, "app").await;
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/ok",
        json!({ "value": b64(b"v") }),
    )
    .await
    .unwrap();
    let signing = default_provider().generate(Algorithm::Ed25519).unwrap();
    let with_d = {
        let k = default_provider().generate(Algorithm::EcdhP256).unwrap();
        let mut j = jwe::public_jwk(k.public_key()).unwrap();
        j["d"] = "AAAA".into();
        j
    };
    let cases: Vec<(&str, &str, Value, u16, &str, &str)> = vec![
        (
            "PUT",
            "/v1/secrets/a//b",
            json!({ "value": "AA==" }),
            400,
            "invalid-request",
            "not a secret path",
        ),
        (
            "PUT",
            "/v1/secrets/bad%20name",
            json!({ "value": "AA==" }),
            400,
            "invalid-request",
            "not a secret path",
        ),
        (
            "PUT",
            "/v1/secrets/x",
            json!({}),
            400,
            "invalid-request",
            "missing 'value'",
        ),
        (
            "PUT",
            "/v1/secrets/x",
            json!({ "value": "%%" }),
            400,
            "invalid-request",
            "base64",
        ),
        (
            "PUT",
            "/v1/secrets/x",
            json!({ "value": "AA==", "tier": 9 }),
            400,
            "invalid-request",
            "tier from 0 to 4",
        ),
        (
            "PUT",
            "/v1/secrets/x",
            json!({ "value": "AA==", "tier": 1, "floor": 2 }),
            400,
            "invalid-request",
            "floor",
        ),
        (
            "POST",
            "/v1/release/ok",
            json!({}),
            400,
            "invalid-request",
            "missing 'epk'",
        ),
        (
            "POST",
            "/v1/release/ok",
            json!({ "epk": with_d }),
            400,
            "invalid-request",
            "private",
        ),
        (
            "POST",
            "/v1/release/ok",
            json!({ "epk": keyhaven::encoding::public_key_jwk(signing.public_key()).unwrap() }),
            400,
            "invalid-request",
            "epk",
        ),
        (
            "POST",
            "/v1/release/ok",
            json!({ "epk": { "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" } }),
            400,
            "invalid-request",
            "epk",
        ),
        (
            "POST",
            "/v1/release/nothing",
            json!({ "epk": jwe::public_jwk(default_provider().generate(Algorithm::X25519).unwrap().public_key()).unwrap() }),
            404,
            "not-found",
            "no secret",
        ),
        (
            "POST",
            "/v1/release/ok",
            json!({ "version": 7, "epk": jwe::public_jwk(default_provider().generate(Algorithm::X25519).unwrap().public_key()).unwrap() }),
            404,
            "not-found",
            "no version 7",
        ),
        (
            "DELETE",
            "/v1/secrets/nothing",
            json!({}),
            404,
            "not-found",
            "no secret",
        ),
    ];
    for (method, path, body, status, name, says) in cases {
        let e = call(&t, &c, method, path, body.clone()).await.unwrap_err();
        assert_eq!(
            (e.0, e.1.as_str()),
            (status, name),
            "{method} {path} {body}: {}",
            e.2
        );
        assert!(e.2.contains(says), "{method} {path}: {}", e.2);
    }
}

const PROD_POLICY: &str = r#"
package keyhaven.release
import rego.v1

default allow := false

allow if input.requester.evidence.kind == "vouched-key"

because contains "vouched hardware key" if input.requester.evidence.kind == "vouched-key"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_policies_decide_by_prefix_explain_themselves_and_refuse_bad_rego() {
    let t = start_broker().await;
    let (c, fp) = client(&t, "app").await;
    let admin_key = t.key(Algorithm::Ed25519, "admin");
    t.make_admin(&admin_key);
    let admin = t.client(&admin_key);
    for path in ["prod/db", "dev/db"] {
        call(
            &t,
            &c,
            "PUT",
            &format!("/v1/secrets/{path}"),
            json!({ "value": b64(path.as_bytes()) }),
        )
        .await
        .unwrap();
    }
    let e = call(
        &t,
        &c,
        "PUT",
        "/v1/admin/policies",
        json!({ "prefix": "prod/", "rego": PROD_POLICY }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 403, "only admins load policies");
    let loaded = call(
        &t,
        &admin,
        "PUT",
        "/v1/admin/policies",
        json!({ "prefix": "prod/", "rego": PROD_POLICY }),
    )
    .await
    .unwrap();
    let sha = loaded["sha256"].as_str().unwrap().to_owned();
    // A policy that does not compile is refused; the one loaded stays.
    let e = call(
        &t,
        &admin,
        "PUT",
        "/v1/admin/policies",
        json!({ "prefix": "prod/", "rego": "package keyhaven.release\nallow if {" }),
    )
    .await
    .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (400, "policy-invalid"), "{}", e.2);
    let listed = call(&t, &admin, "GET", "/v1/admin/policies", json!({}))
        .await
        .unwrap();
    assert_eq!(listed["policies"][0]["sha256"], sha.as_str());

    // dev/ is not covered; prod/ wants a vouched key.
    assert_eq!(
        release(&t, &c, "dev/db", None, Algorithm::X25519)
            .await
            .unwrap()
            .0,
        b"dev/db"
    );
    let e = release(&t, &c, "prod/db", None, Algorithm::X25519)
        .await
        .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (403, "policy-denied"), "{}", e.2);
    assert!(e.2.contains("denied by policy 'prod/'"), "{}", e.2);
    let why = call(
        &t,
        &c,
        "POST",
        "/v1/policy/explain-release/prod/db",
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(why["allow"], false, "{why}");
    assert_eq!(why["policy"], "prod/", "{why}");
    assert_eq!(why["policy_sha256"], sha.as_str(), "{why}");
    assert_eq!(why["tier_rule"]["met"], true, "{why}");
    assert!(
        why["summary"]
            .as_str()
            .unwrap()
            .contains("no allow rule matched"),
        "{why}"
    );
    call(
        &t,
        &admin,
        "POST",
        &format!("/v1/admin/keys/{fp}/tier"),
        json!({ "tier": 2, "reason": "enrolled" }),
    )
    .await
    .unwrap();
    let why = call(
        &t,
        &c,
        "POST",
        "/v1/policy/explain-release/prod/db",
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(why["allow"], true, "{why}");
    assert_eq!(
        why["verdict"]["because"],
        json!(["vouched hardware key"]),
        "{why}"
    );
    let (plain, claims, _) = release(&t, &c, "prod/db", None, Algorithm::X25519)
        .await
        .unwrap();
    assert_eq!(plain, b"prod/db");
    assert_eq!(claims["policy"]["rego"], "prod/");
    assert_eq!(claims["policy"]["rego_sha256"], sha.as_str());
    assert_eq!(claims["policy"]["because"], json!(["vouched hardware key"]));
    // Deleted, the path falls back to the tier rule alone.
    call(
        &t,
        &admin,
        "DELETE",
        "/v1/admin/policies",
        json!({ "prefix": "prod/" }),
    )
    .await
    .unwrap();
    let why = call(
        &t,
        &c,
        "POST",
        "/v1/policy/explain-release/prod/db",
        json!({}),
    )
    .await
    .unwrap();
    assert!(why["policy"].is_null(), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_evidence_is_refused_unless_enabled_and_never_lifts_a_key_above_tier_1() {
    let t = start_broker().await;
    let (c, _) = client(&t, "app").await;
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/s",
        json!({ "value": b64(b"v"), "min_tier": 1 }),
    )
    .await
    .unwrap();
    let sample = |rd: &[u8; 32]| {
        Some(json!({ "type": "sample", "tier": 4, "report_data": hex::encode(rd) }))
    };
    // Off by default: a clear 400 naming the switch.
    let e = c.release_secret_with("s", None, sample).await.unwrap_err();
    match &e {
        ClientError::Problem(p) => {
            assert_eq!(p.status, 400, "{e}");
            assert!(p.detail.contains("--allow-sample-evidence"), "{e}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        t.metric("keyhaven_broker_attestations_total{kind=\"other\",outcome=\"not-accepted\"}"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_sample_evidence_is_bound_to_the_release_and_capped_at_tier_1() {
    let t = crate::support::start_broker_sample().await;
    let (c, _) = client(&t, "app").await;
    for (path, min) in [("s", 1), ("hw", 2)] {
        call(
            &t,
            &c,
            "PUT",
            &format!("/v1/secrets/{path}"),
            json!({ "value": b64(b"v"), "min_tier": min }),
        )
        .await
        .unwrap();
    }
    let sample = |rd: &[u8; 32]| {
        Some(json!({ "type": "sample", "tier": 4, "report_data": hex::encode(rd) }))
    };
    let r = c.release_secret_with("s", None, sample).await.unwrap();
    assert_eq!(
        r.requester_tier, 1,
        "sample evidence claiming tier 4 counts as 1"
    );
    assert_eq!(
        r.claims["evidence"]["attestation"]["kind"], "sample",
        "{}",
        r.claims
    );
    let e = c.release_secret_with("hw", None, sample).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );
    // Evidence made for another release does not count.
    let other =
        |_: &[u8; 32]| Some(json!({ "type": "sample", "tier": 1, "report_data": "00".repeat(32) }));
    let e = c.release_secret_with("s", None, other).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":evidence-refused")),
        "{e}"
    );
    assert_eq!(
        t.metric("keyhaven_broker_attestations_total{kind=\"sample\",outcome=\"refused\"}"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_have_their_own_keks_versions_are_bounded_and_small_order_keys_refused() {
    let t = start_broker().await;
    let (c, _) = client(&t, "app").await;
    // Tier 0 and tier 1 secrets of one tenant, each under its own KEK.
    for (path, tier) in [("open/a", 0), ("kept/b", 1), ("open/c", 0)] {
        let w = call(
            &t,
            &c,
            "PUT",
            &format!("/v1/secrets/{path}"),
            json!({ "value": b64(path.as_bytes()), "tier": tier }),
        )
        .await
        .unwrap();
        assert_eq!(w["tier"], tier);
    }
    for path in ["open/a", "kept/b", "open/c"] {
        let (plain, _, _) = release(&t, &c, path, None, Algorithm::X25519)
            .await
            .unwrap();
        assert_eq!(plain, path.as_bytes());
    }
    let r = call(
        &t,
        &c,
        "POST",
        "/v1/secrets-kek/rotate",
        json!({ "tier": 0 }),
    )
    .await
    .unwrap();
    assert_eq!(
        (r["kek_version"].as_u64(), r["rewrapped"].as_u64()),
        (Some(2), Some(2))
    );
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/kept/b",
        json!({ "value": b64(b"b2") }),
    )
    .await
    .unwrap();
    // An X25519 point of small order (here: zero) is refused before anything is decrypted.
    let zero = json!({ "kty": "OKP", "crv": "X25519", "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" });
    let e = call(&t, &c, "POST", "/v1/release/kept/b", json!({ "epk": zero }))
        .await
        .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (400, "invalid-request"), "{}", e.2);
    // At most MAX_SECRET_VERSIONS versions.
    for _ in 0..keyhaven_server::secrets::MAX_SECRET_VERSIONS {
        if call(
            &t,
            &c,
            "PUT",
            "/v1/secrets/many",
            json!({ "value": "AA==" }),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    let e = call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/many",
        json!({ "value": "AA==" }),
    )
    .await
    .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (409, "too-many-versions"), "{}", e.2);
}

/// A secret whose owner declared a fallback: a requester below its `min_tier` who asks for
/// one gets a capability token of exactly the declared rights (encrypt to the owner's audit
/// key), held by its own key and short-lived, instead of the secret; without asking, or
/// without a fallback, it is refused as before. A fallback grants only operations that
/// disclose nothing, and only the owner declares one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_below_min_tier_gets_the_owners_narrower_capability_instead() {
    use keyhaven_client::secrets::ReleaseOutcome;
    use keyhaven_client::tokens::Right;
    use keyhaven_client::wire::SecretOptions;

    let t = start_broker().await;
    let (alice, _) = client(&t, "alice").await;
    let (bob, bob_fp) = client(&t, "bob").await;
    let (carol, _) = client(&t, "carol").await;
    let guarded = SecretOptions {
        min_tier: Some(2),
        ..SecretOptions::default()
    };
    alice
        .put_secret("db/root", b"hunter2", guarded)
        .await
        .unwrap();
    alice.transit_encrypt("audit", b"first").await.unwrap();
    let encrypt_audit = [Right::new("transit.encrypt", "audit").unwrap()];

    // What a fallback may grant, and for how long; only the owner declares one.
    for (rights, ttl, why) in [
        (
            vec![Right::new("secret.release", "db/").unwrap()],
            None,
            "discloses no secret",
        ),
        (
            vec![Right::new("transit.decrypt", "audit").unwrap()],
            None,
            "discloses no secret",
        ),
        (
            vec![Right::new("*", "").unwrap()],
            None,
            "discloses no secret",
        ),
        (encrypt_audit.to_vec(), Some(7200), "short-lived"),
    ] {
        let e = alice
            .set_secret_fallback("db/root", &rights, ttl)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    let e = alice
        .set_secret_fallback("nothing", &encrypt_audit, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.status == 404),
        "{e}"
    );

    let lend = alice
        .mint_token(
            &bob_fp,
            &[Right::new("secret.release", "db/").unwrap()],
            600,
        )
        .await
        .unwrap();
    let bob_t = bob.clone().with_token(&lend.token).unwrap();
    // No fallback yet: a capability is asked for, and the refusal stands.
    let e = bob_t
        .release_or_capability("db/root", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );

    alice
        .set_secret_fallback("db/root", &encrypt_audit, Some(120))
        .await
        .unwrap();
    let fallback = alice
        .secret_info("db/root")
        .await
        .unwrap()
        .fallback
        .unwrap();
    assert_eq!(
        (fallback.rights, fallback.ttl),
        (encrypt_audit.to_vec(), 120)
    );
    // Not asked for: refused as before.
    let e = bob_t.release_secret("db/root", None).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );
    // Asked for: the capability, not the secret.
    let asked = t.now();
    let cap = match bob_t.release_or_capability("db/root", None).await.unwrap() {
        ReleaseOutcome::Capability(c) => c,
        ReleaseOutcome::Secret(_) => panic!("a tier-1 key got a min_tier-2 secret"),
    };
    assert_eq!(cap.rights, encrypt_audit.to_vec());
    assert_eq!((cap.requester_tier, cap.min_tier), (1, 2));
    // 120 s from the release (the clock may tick during the call).
    assert!((asked + 120..=t.now() + 120).contains(&cap.expires_at));
    assert_eq!(
        t.metric("keyhaven_broker_releases_total{tier=\"1\",outcome=\"capability\"}"),
        1
    );
    // It does what it says, on alice's key, and nothing else.
    let bob_cap = bob.clone().with_token(&cap.token).unwrap();
    let c = bob_cap.transit_encrypt("audit", b"from bob").await.unwrap();
    assert_eq!(
        alice
            .transit_decrypt("audit", &c.ciphertext)
            .await
            .unwrap()
            .expose_secret(),
        b"from bob"
    );
    for e in [
        bob_cap
            .transit_decrypt("audit", &c.ciphertext)
            .await
            .map(|_| ())
            .unwrap_err(),
        bob_cap
            .release_secret("db/root", None)
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(
            matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":token-scope")),
            "{e}"
        );
    }
    // Held by bob's key: carol cannot use it.
    let e = carol
        .clone()
        .with_token(&cap.token)
        .unwrap()
        .transit_encrypt("audit", b"x")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":token-holder")),
        "{e}"
    );
    // Short-lived: two minutes on, it is refused.
    t.advance(121);
    let e = bob_cap.transit_encrypt("audit", b"late").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":token-scope")),
        "{e}"
    );

    // Given through a token, a capability ends with that token and is revoked with it.
    let short = alice
        .mint_token(&bob_fp, &[Right::new("secret.release", "db/").unwrap()], 60)
        .await
        .unwrap();
    let bob_short = bob.clone().with_token(&short.token).unwrap();
    let cap = match bob_short
        .release_or_capability("db/root", None)
        .await
        .unwrap()
    {
        ReleaseOutcome::Capability(c) => c,
        ReleaseOutcome::Secret(_) => panic!("a tier-1 key got a min_tier-2 secret"),
    };
    assert_eq!(
        cap.expires_at, short.expires_at,
        "capped at the token it came through"
    );
    let bob_cap = bob.clone().with_token(&cap.token).unwrap();
    bob_cap.transit_encrypt("audit", b"ok").await.unwrap();
    alice
        .revoke_token(&short.token, true, "bob moved on")
        .await
        .unwrap();
    let e = bob_cap
        .transit_encrypt("audit", b"after")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":token-revoked")),
        "{e}"
    );

    // A token its holder narrowed gets no capability: the narrowing cannot be carried over.
    let narrowed = keyhaven_client::tokens::attenuate(
        &lend.token,
        &keyhaven_client::tokens::Attenuation {
            expires_at: Some(t.now() + 30),
            ..Default::default()
        },
    )
    .unwrap();
    let bob_narrow = bob.clone().with_token(&narrowed).unwrap();
    let e = bob_narrow
        .release_or_capability("db/root", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );

    // The owner removes it: nothing again.
    alice.clear_secret_fallback("db/root").await.unwrap();
    let e = bob_t
        .release_or_capability("db/root", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );
}

/// Recorded AMD SEV-SNP evidence (a real report, VCEK and AMD chain) through a release: the
/// verifier checks it up to AMD's root, and refuses it because the report binds another
/// request's data (a replay); a report with a byte changed is refused for its signature. Both
/// refusals are counted. Skipped when the shared evidence folder is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_snp_evidence_is_checked_to_amds_root_and_a_replayed_report_refused() {
    let Some(snp) = crate::support::recorded_evidence("trustee/snp") else {
        return;
    };
    let report = std::fs::read(snp.join("test-report.bin")).unwrap();
    let vcek = std::fs::read(snp.join("test-vcek.der")).unwrap();
    let chain = std::fs::read_to_string(snp.join("milan_ask_ark_asvk.pem")).unwrap();
    let t = start_broker().await;
    let (c, _) = client(&t, "cvm").await;
    c.put_secret("model/key", b"weights-key", Default::default())
        .await
        .unwrap();
    for (changed, why) in [(None, "report data"), (Some(0x90), "does not verify")] {
        let mut report = report.clone();
        if let Some(i) = changed {
            report[i] ^= 1;
        }
        let evidence = json!({
            "type": "sev-snp",
            "report": Base64::encode_string(&report),
            "vcek": Base64::encode_string(&vcek),
            "chain": chain,
        });
        let e = c
            .release_secret_with("model/key", None, |_| Some(evidence))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":evidence-refused")),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{e}");
    }
    assert_eq!(
        t.metric("keyhaven_broker_attestations_total{kind=\"sev-snp\",outcome=\"refused\"}"),
        2
    );
}

/// A recorded Intel TDX quote with its DCAP collateral through a release, at a time inside the
/// collateral's validity: checked up to Intel's root and refused because the quote binds
/// another request's data (a replay); with a byte of its TD report changed, refused for its
/// signature; at today's date, refused because the collateral is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_tdx_evidence_is_checked_to_intels_root_and_a_replayed_quote_refused() {
    let (quote, collateral) = crate::support::dcap_sample("tdx_quote_td15ex");
    // 2026-10-08T01:09:46Z: an hour after the collateral's TCB Info was issued.
    let t = crate::support::start_broker_at(1_791_421_786).await;
    let (c, _) = client(&t, "td").await;
    c.put_secret("model/key", b"weights-key", Default::default())
        .await
        .unwrap();
    let release = |quote: Vec<u8>| {
        let evidence = json!({
            "type": "tdx",
            "quote": Base64::encode_string(&quote),
            "collateral": collateral.clone(),
        });
        let c = c.clone();
        async move {
            c.release_secret_with("model/key", None, |_| Some(evidence))
                .await
                .unwrap_err()
        }
    };
    let mut changed = quote.clone();
    changed[48 + 6 + 136] ^= 1; // MRTD
    for (quote, why) in [
        (quote.clone(), "other report data"),
        (changed, "not signed by its attestation key"),
    ] {
        let e = release(quote).await;
        assert!(
            matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":evidence-refused")),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{e}");
    }
    t.set_time(keyhaven::unix_now());
    let e = release(quote).await;
    assert!(e.to_string().contains("not valid at"), "{e}");
    assert_eq!(
        t.metric("keyhaven_broker_attestations_total{kind=\"tdx\",outcome=\"refused\"}"),
        3
    );
}

/// Recorded NVIDIA Hopper evidence through a release: checked up to NVIDIA's root, refused
/// because it answers another nonce (a replay), and refused for its signature with a byte
/// changed. Skipped when the shared evidence folder is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_gpu_evidence_is_checked_to_nvidias_root_and_a_replayed_report_refused() {
    let Some(nv) = crate::support::recorded_evidence("trustee/nvidia") else {
        return;
    };
    let report = std::fs::read_to_string(nv.join("hopperAttestationReport.txt")).unwrap();
    let chain = std::fs::read_to_string(nv.join("hopper_cert_chain_case1.txt")).unwrap();
    let t = start_broker().await;
    let (c, _) = client(&t, "gpu").await;
    c.put_secret("model/key", b"weights-key", Default::default())
        .await
        .unwrap();
    let report = report.trim().to_owned();
    let mut flipped = hex::decode(&report).unwrap();
    flipped[60] ^= 1; // inside the first measurement value
    for (report, why) in [(report, "nonce"), (hex::encode(flipped), "not signed")] {
        let evidence = json!({ "type": "nvidia-gpu", "report": report, "chain": chain });
        let e = c
            .release_secret_with("model/key", None, |_| Some(evidence))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":evidence-refused")),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{e}");
    }
}

/// Compromise by measurement: releases made on evidence that carried a measurement are found
/// in the audit trail; revoking it refuses later evidence carrying it (whatever else the
/// evidence says), names what it exposed, and rotates and rewraps the KEK those releases drew
/// from; other evidence, and requests without evidence, are unaffected. Only admins revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_measurement_refuses_new_evidence_and_lists_the_releases_it_affected() {
    let t = crate::support::start_broker_sample().await;
    let (c, _) = client(&t, "cvm").await;
    let admin_key = t.key(Algorithm::Ed25519, "admin");
    t.make_admin(&admin_key);
    let admin = t.client(&admin_key);
    call(
        &t,
        &c,
        "PUT",
        "/v1/secrets/model/key",
        json!({ "value": b64(b"weights-key") }),
    )
    .await
    .unwrap();
    let measured = |m: &str| {
        let m = m.to_owned();
        move |rd: &[u8; 32]| {
            Some(json!({
                "type": "sample", "tier": 1, "report_data": hex::encode(rd),
                "measurements": { "launch": m },
            }))
        }
    };
    // A path long enough that the audit record's subject is cut short before it.
    let long = format!("{}/key", "deep".repeat(80));
    call(
        &t,
        &c,
        "PUT",
        &format!("/v1/secrets/{long}"),
        json!({ "value": b64(b"long") }),
    )
    .await
    .unwrap();
    let bad = "aa11".repeat(24);
    let good = "bb22".repeat(24);
    c.release_secret_with(&long, None, measured(&bad))
        .await
        .unwrap();
    c.release_secret_with("model/key", None, measured(&bad))
        .await
        .unwrap();
    c.release_secret_with("model/key", None, measured(&good))
        .await
        .unwrap();

    // The trail knows which release carried it, before anything is revoked.
    let found = call(
        &t,
        &admin,
        "POST",
        "/v1/admin/attestation/affected",
        json!({ "kind": "measurement", "value": bad }),
    )
    .await
    .unwrap();
    let affected = found["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 2, "{found}");
    assert_eq!(affected[0]["path"], long.as_str());
    assert_eq!(affected[1]["path"], "model/key");
    assert_eq!(affected[1]["version"], 1);

    // A client cannot revoke.
    let e = call(
        &t,
        &c,
        "POST",
        "/v1/admin/attestation/revocations",
        json!({ "kind": "measurement", "value": bad, "reason": "x" }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 403, "{}", e.2);
    // Bad input is named.
    for body in [
        json!({ "kind": "measurement", "value": "xyz", "reason": "r" }),
        json!({ "kind": "colour", "value": "aa", "reason": "r" }),
        json!({ "kind": "tcb", "value": "microcode<3", "reason": "r" }),
        json!({ "kind": "measurement", "value": "aa" }),
    ] {
        let e = call(
            &t,
            &admin,
            "POST",
            "/v1/admin/attestation/revocations",
            body,
        )
        .await
        .unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "invalid-request"), "{}", e.2);
    }

    // Revoked (upper-case hex is the same measurement), with the KEK rotated and rewrapped.
    let revoked = call(
        &t,
        &admin,
        "POST",
        "/v1/admin/attestation/revocations",
        json!({
            "kind": "measurement", "value": bad.to_uppercase(),
            "reason": "image with a leaked signing key", "rewrap": true,
        }),
    )
    .await
    .unwrap();
    assert_eq!(revoked["added"], true);
    assert_eq!(
        revoked["affected"].as_array().unwrap().len(),
        2,
        "{revoked}"
    );
    assert_eq!(revoked["problems"], json!([]), "{revoked}");
    let rewrapped = revoked["rewrapped"].as_array().unwrap();
    assert_eq!(rewrapped.len(), 1, "one tenant and tier: {revoked}");
    assert_eq!(rewrapped[0]["tenant"], affected[0]["tenant"]);
    assert_eq!(
        affected[0]["principal"],
        format!("client:{}", affected[0]["tenant"].as_str().unwrap())
    );
    assert_eq!(rewrapped[0]["rewrapped"], 2);

    // New evidence carrying it is refused, saying why; other evidence and none still work,
    // and the secret (rewrapped) still opens.
    let e = c
        .release_secret_with("model/key", None, measured(&bad))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":evidence-revoked")),
        "{e}"
    );
    assert!(e.to_string().contains("leaked signing key"), "{e}");
    let r = c
        .release_secret_with("model/key", None, measured(&good))
        .await
        .unwrap();
    assert_eq!(r.secret.expose_secret(), b"weights-key");
    c.release_secret_with("model/key", None, |_| None)
        .await
        .unwrap();
    assert_eq!(
        t.metric("keyhaven_broker_attestations_total{kind=\"sample\",outcome=\"revoked\"}"),
        1
    );
    let list = call(
        &t,
        &admin,
        "GET",
        "/v1/admin/attestation/revocations",
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(list["revocations"][0]["value"], bad);
    assert_eq!(list["revocations"][0]["kind"], "measurement");
    assert_eq!(list["revocations"].as_array().unwrap().len(), 1);
    // Revoking again adds nothing.
    let again = call(
        &t,
        &admin,
        "POST",
        "/v1/admin/attestation/revocations",
        json!({ "kind": "measurement", "value": bad, "reason": "again" }),
    )
    .await
    .unwrap();
    assert_eq!(again["added"], false);
}
