//! Capability tokens through a real server: minted by a tenant for another client's key,
//! honoured only on that key's signature, within their rights, narrowed offline, refused
//! once expired or revoked, and worthless when signed by anyone but the broker.

use base64ct::{Base64, Encoding};
use keyhaven::{Algorithm, default_provider, jwe};
use keyhaven_client::tokens::{self, Attenuation, Right};
use keyhaven_client::{Client, ClientError};
use serde_json::{Value, json};

use crate::support::{TestServer, start_broker};

async fn client(t: &TestServer, name: &str) -> (Client, String) {
    let key = t.key(Algorithm::Ed25519, name);
    let c = t.client(&key);
    c.register(name).await.unwrap();
    (c, key.fingerprint().to_hex())
}

type Refusal = (u16, String, String);

async fn call(
    t: &TestServer,
    c: &Client,
    method: &str,
    path: &str,
    body: Value,
) -> Result<Value, Refusal> {
    let body = (method != "GET").then(|| body.to_string().into_bytes());
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

async fn release(t: &TestServer, c: &Client, path: &str) -> Result<Vec<u8>, Refusal> {
    let eph = default_provider().generate(Algorithm::X25519).unwrap();
    let body = json!({ "epk": jwe::public_jwk(eph.public_key()).unwrap() });
    let out = call(t, c, "POST", &format!("/v1/release/{path}"), body).await?;
    let (_, plain) = jwe::decrypt(out["jwe"].as_str().unwrap(), eph.as_ref()).unwrap();
    Ok(plain.expose_secret().to_vec())
}

fn assert_refused(r: Result<impl std::fmt::Debug, Refusal>, status: u16, name: &str, says: &str) {
    let e = r.unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (status, name), "{}", e.2);
    assert!(e.2.contains(says), "{}", e.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lends_a_tenants_secrets_to_its_holder_only_within_its_rights() {
    let t = start_broker().await;
    let (alice, _) = client(&t, "alice").await;
    let (bob_plain, bob) = client(&t, "bob").await;
    let (carol_plain, _) = client(&t, "carol").await;
    for (path, value) in [
        ("shared/db", "s3cret"),
        ("shared/cache", "c4che"),
        ("private/x", "mine"),
    ] {
        call(
            &t,
            &alice,
            "PUT",
            &format!("/v1/secrets/{path}"),
            json!({ "value": Base64::encode_string(value.as_bytes()) }),
        )
        .await
        .unwrap();
    }
    let minted = alice
        .mint_token(
            &bob,
            &[Right::new("secret.release", "shared/").unwrap()],
            600,
        )
        .await
        .unwrap();
    assert!(minted.token.starts_with("kht_"));
    // Bob alone has none of alice's secrets; with the token he has the shared ones.
    assert_refused(
        release(&t, &bob_plain, "shared/db").await,
        404,
        "not-found",
        "no secret",
    );
    let bob_t = bob_plain.clone().with_token(&minted.token).unwrap();
    assert_eq!(release(&t, &bob_t, "shared/db").await.unwrap(), b"s3cret");
    assert_refused(
        release(&t, &bob_t, "private/x").await,
        403,
        "token-scope",
        "private/x",
    );
    assert_refused(
        call(
            &t,
            &bob_t,
            "PUT",
            "/v1/secrets/shared/db",
            json!({ "value": "AA==" }),
        )
        .await,
        403,
        "token-scope",
        "secret.write",
    );
    // Carol holds a copy of the token but not bob's key.
    let carol_t = carol_plain.clone().with_token(&minted.token).unwrap();
    assert_refused(
        release(&t, &carol_t, "shared/db").await,
        403,
        "token-holder",
        &bob,
    );

    // Bob narrows it offline to one secret and a minute; the narrower token does less.
    let narrow = tokens::attenuate(
        &minted.token,
        &Attenuation {
            prefix: Some("shared/db".into()),
            expires_at: Some(t.now() + 60),
            ..Attenuation::default()
        },
    )
    .unwrap();
    let bob_n = bob_plain.clone().with_token(&narrow).unwrap();
    assert_eq!(release(&t, &bob_n, "shared/db").await.unwrap(), b"s3cret");
    assert_refused(
        release(&t, &bob_n, "shared/cache").await,
        403,
        "token-scope",
        "starts_with",
    );
    // Over-attenuated: naming an operation the token never had grants nothing.
    let wider = tokens::attenuate(
        &minted.token,
        &Attenuation {
            operations: Some(vec!["secret.release".into(), "secret.delete".into()]),
            ..Attenuation::default()
        },
    )
    .unwrap();
    let bob_w = bob_plain.clone().with_token(&wider).unwrap();
    assert_refused(
        call(&t, &bob_w, "DELETE", "/v1/secrets/shared/db", json!({})).await,
        403,
        "token-scope",
        "secret.delete",
    );
    // The narrower token's minute passes (the original's hour does not).
    t.advance(120);
    assert_refused(
        release(&t, &bob_n, "shared/db").await,
        403,
        "token-scope",
        "time",
    );
    assert_eq!(release(&t, &bob_t, "shared/db").await.unwrap(), b"s3cret");
    t.advance(3600);
    assert_refused(
        release(&t, &bob_t, "shared/db").await,
        403,
        "token-scope",
        "time",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_forged_and_malformed_tokens_are_refused() {
    let t = start_broker().await;
    let (alice, alice_fp) = client(&t, "alice").await;
    let (bob_plain, bob) = client(&t, "bob").await;
    call(
        &t,
        &alice,
        "PUT",
        "/v1/secrets/shared/db",
        json!({ "value": "AQID" }),
    )
    .await
    .unwrap();
    let minted = alice
        .mint_token(&bob, &[Right::new("*", "").unwrap()], 600)
        .await
        .unwrap();
    let narrow = tokens::attenuate(
        &minted.token,
        &Attenuation {
            prefix: Some("shared/".into()),
            ..Attenuation::default()
        },
    )
    .unwrap();
    let bob_t = bob_plain.clone().with_token(&minted.token).unwrap();
    let bob_n = bob_plain.clone().with_token(&narrow).unwrap();
    assert_eq!(release(&t, &bob_n, "shared/db").await.unwrap(), [1, 2, 3]);
    // Revoking only the attenuation leaves the original working.
    let id = alice
        .revoke_token(&narrow, false, "handed to a contractor")
        .await
        .unwrap();
    assert_ne!(id, minted.id);
    assert_refused(
        release(&t, &bob_n, "shared/db").await,
        401,
        "token-revoked",
        "contractor",
    );
    assert_eq!(release(&t, &bob_t, "shared/db").await.unwrap(), [1, 2, 3]);
    // Revoking the family ends both; another tenant cannot revoke it.
    let (mallory, _) = client(&t, "mallory").await;
    let e = mallory
        .revoke_token(&minted.token, true, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.status == 403),
        "{e}"
    );
    assert_eq!(
        alice
            .revoke_token(&minted.token, true, "rotated")
            .await
            .unwrap(),
        minted.id
    );
    assert_refused(
        release(&t, &bob_t, "shared/db").await,
        401,
        "token-revoked",
        "rotated",
    );

    // A token signed by another root key, with the same claims.
    let alice_id = c_id(&alice).await;
    let grant = tokens::Grant {
        tenant: &alice_id,
        minter: &alice_fp,
        holder: &bob,
    };
    let forged = tokens::mint(
        &biscuit_auth::KeyPair::new(),
        grant,
        &[Right::new("*", "").unwrap()],
        t.now() + 600,
    )
    .unwrap();
    let bob_f = bob_plain.clone().with_token(&forged).unwrap();
    assert_refused(
        release(&t, &bob_f, "shared/db").await,
        401,
        "bad-token",
        "not signed by this broker",
    );
    // Garbage after the prefix, and an Authorization header of another scheme.
    let r = bob_plain
        .send("GET", &t.url("/v1/secrets?prefix="), None)
        .await;
    assert!(r.is_ok());
    let mut req = reqwest::Request::new(
        reqwest::Method::GET,
        reqwest::Url::parse(&t.url("/v1/secrets?prefix=")).unwrap(),
    );
    req.headers_mut().insert(
        "authorization",
        "Bearer kht_bm90LWEtdG9rZW4".parse().unwrap(),
    );
    let e = bob_plain.execute(req).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":bad-token")),
        "{e}"
    );
    let mut req = reqwest::Request::new(
        reqwest::Method::GET,
        reqwest::Url::parse(&t.url("/v1/secrets?prefix=")).unwrap(),
    );
    req.headers_mut()
        .insert("authorization", "Basic Ym9iOnB3".parse().unwrap());
    let e = bob_plain.execute(req).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.status == 401),
        "{e}"
    );
    // Minting: a holder that is not registered, bad rights, a too-long life.
    for (body, says) in [
        (
            json!({ "holder": "ab".repeat(32), "rights": [{ "operation": "*", "prefix": "" }] }),
            "no registered key",
        ),
        (json!({ "holder": bob, "rights": [] }), "1 to 32 rights"),
        (
            json!({ "holder": bob, "rights": [{ "operation": "steal", "prefix": "" }] }),
            "not an operation",
        ),
        (
            json!({ "holder": bob, "rights": [{ "operation": "*", "prefix": "" }], "ttl": 99_999_999 }),
            "'ttl'",
        ),
    ] {
        let e = call(&t, &alice, "POST", "/v1/tokens", body.clone())
            .await
            .unwrap_err();
        assert!(e.2.contains(says), "{body}: {}", e.2);
    }
    // A token cannot mint tokens.
    let again = alice
        .mint_token(&bob, &[Right::new("*", "").unwrap()], 60)
        .await
        .unwrap();
    let bob_a = bob_plain.clone().with_token(&again.token).unwrap();
    let e = bob_a
        .mint_token(&bob, &[Right::new("*", "").unwrap()], 60)
        .await
        .unwrap();
    let view = tokens::inspect(&e.token).unwrap();
    assert!(
        view.blocks[0].contains(&c_id(&bob_plain).await),
        "minted for bob's own tenant: {:?}",
        view.blocks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lends_one_transit_operation_on_one_key() {
    let t = start_broker().await;
    let (alice, _) = client(&t, "alice").await;
    let (bob_plain, bob) = client(&t, "bob").await;
    let c = alice.transit_encrypt("payments", b"card").await.unwrap();
    let minted = alice
        .mint_token(
            &bob,
            &[Right::new("transit.encrypt", "payments").unwrap()],
            600,
        )
        .await
        .unwrap();
    let bob_t = bob_plain.clone().with_token(&minted.token).unwrap();
    let mine = bob_t
        .transit_encrypt("payments", b"from bob")
        .await
        .unwrap();
    // Encrypted under alice's key: alice decrypts it.
    assert_eq!(
        alice
            .transit_decrypt("payments", &mine.ciphertext)
            .await
            .unwrap()
            .expose_secret(),
        b"from bob"
    );
    let e = bob_t
        .transit_decrypt("payments", &c.ciphertext)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":token-scope")),
        "{e}"
    );
}

/// The client id of `c`.
async fn c_id(c: &Client) -> String {
    c.whoami().await.unwrap().client
}

/// What a second reader found: a token slipped into someone else's signed request, a token
/// outliving the key that minted it, a token lowering a secret's min_tier, a token making
/// transit keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_cannot_be_injected_outlive_their_minter_or_lower_the_bar() {
    let t = start_broker().await;
    let (alice, alice_fp) = client(&t, "alice").await;
    let (mallory, _) = client(&t, "mallory").await;
    let (victim, victim_fp) = client(&t, "victim").await;
    // Mallory mints a token for the victim's key into mallory's tenant, and a party on the
    // path adds it to the victim's signed request: refused, as the signature does not cover it.
    let trap = mallory
        .mint_token(&victim_fp, &[Right::new("*", "").unwrap()], 600)
        .await
        .unwrap();
    let url = t.url("/v1/secrets/db/pw");
    let mut req = reqwest::Request::new(reqwest::Method::PUT, reqwest::Url::parse(&url).unwrap());
    *req.body_mut() = Some(br#"{"value":"c2VjcmV0"}"#.to_vec().into());
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", trap.token).parse().unwrap(),
    );
    let e = victim.execute(req).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":bad-token") && p.detail.contains("does not cover")),
        "{e}"
    );
    let mut req = reqwest::Request::new(reqwest::Method::PUT, reqwest::Url::parse(&url).unwrap());
    *req.body_mut() = Some(br#"{"value":"c2VjcmV0"}"#.to_vec().into());
    req.headers_mut()
        .insert("x-vault-token", trap.token.parse().unwrap());
    assert!(victim.execute(req).await.is_err(), "X-Vault-Token too");

    // A token dies with the standing of the key that minted it.
    let (bob_plain, bob) = client(&t, "bob").await;
    call(
        &t,
        &alice,
        "PUT",
        "/v1/secrets/shared/x",
        json!({ "value": "AQ==", "min_tier": 1 }),
    )
    .await
    .unwrap();
    let minted = alice
        .mint_token(&bob, &[Right::new("*", "shared/").unwrap()], 600)
        .await
        .unwrap();
    let bob_t = bob_plain.clone().with_token(&minted.token).unwrap();
    assert_eq!(release(&t, &bob_t, "shared/x").await.unwrap(), [1]);
    // Bob may write (his token says "*"), but not lower the bar for every version.
    assert_refused(
        call(
            &t,
            &bob_t,
            "PUT",
            "/v1/secrets/shared/x",
            json!({ "value": "Ag==", "min_tier": 0 }),
        )
        .await,
        403,
        "forbidden",
        "only the owner",
    );
    // Nor make transit keys in alice's tenant through encrypt's upsert.
    let any_key = alice
        .mint_token(&bob, &[Right::new("transit.encrypt", "").unwrap()], 600)
        .await
        .unwrap();
    let bob_k = bob_plain.clone().with_token(&any_key.token).unwrap();
    let e = bob_k
        .transit_encrypt("made-by-bob", b"x")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.status == 404),
        "{e}"
    );
    alice.revoke(None, "key retired").await.unwrap();
    assert_refused(
        release(&t, &bob_t, "shared/x").await,
        401,
        "token-revoked",
        &alice_fp,
    );
}
