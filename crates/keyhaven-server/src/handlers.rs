//! The routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, extract::Request};
use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use keyhaven::versions::{ContinuityProof, verify_chain};
use keyhaven::{Algorithm, PublicKey, default_provider};
use keyhaven_client::wire::{
    BulkRevocation, BulkRevoked, Challenge, ClientView, KeyStatus, Registration, Role, Rotation,
    SelfRevocation, ServerInfo, Stats, WhoAmI,
};
use keyhaven_httpsig::HttpSigError;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::audit::Decision;
use crate::auth::{Caller, record_key, refused, verify_signed};
use crate::problem::ApiError;
use crate::server::{Inner, RawBody, Signed};
use crate::storage::{NewClient, NewKey, Revoked, Superseded};

type Answer<T> = Result<T, ApiError>;

/// The most keys one bulk revocation names.
const MAX_BULK: usize = 1000;
/// The most proofs a rotation's chain may hold.
const MAX_CHAIN: usize = 16;
/// The most clients one admin listing returns.
const MAX_LIST: u32 = 1000;

fn json<T: DeserializeOwned>(body: &[u8]) -> Answer<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("the JSON body: {e}")))
}

/// `n` random bytes.
pub(crate) fn random(n: usize) -> Result<Vec<u8>, keyhaven::CoreError> {
    let mut bytes = vec![0u8; n];
    keyhaven::fill_random(&mut bytes)?;
    Ok(bytes)
}

fn internal(e: keyhaven::CoreError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn random_b64url(n: usize) -> Answer<String> {
    Ok(Base64UrlUnpadded::encode_string(
        &random(n).map_err(internal)?,
    ))
}

fn random_hex(n: usize) -> Answer<String> {
    Ok(hex::encode(random(n).map_err(internal)?))
}

/// Text a person wrote (a name, a reason): 1 to `max` characters, none of them control or
/// invisible formatting characters.
fn check_text(what: &str, text: &str, max: usize) -> Answer<()> {
    let n = text.chars().count();
    if n == 0 || n > max {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("{what} must be 1 to {max} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() || keyhaven::is_invisible_format(c))
    {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("{what} contains control or invisible formatting characters"),
        ));
    }
    Ok(())
}

fn check_fingerprint(fp: &str) -> Answer<()> {
    if fp.len() == 64 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-request",
            format!("{fp:?} is not a key fingerprint (64 lowercase hex digits)"),
        ))
    }
}

/// A public key from the wire: the SPKI must parse as a key of `algorithm`.
fn public_key(algorithm: &str, spki_b64: &str) -> Answer<PublicKey> {
    let algorithm: Algorithm = algorithm
        .parse()
        .map_err(|e| ApiError::bad_request("invalid-request", format!("algorithm: {e}")))?;
    if !algorithm.can_sign() {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("{algorithm} keys cannot sign requests; register an ed25519, p256 or p384 key"),
        ));
    }
    let der = Base64::decode_vec(spki_b64).map_err(|e| {
        ApiError::bad_request("invalid-request", format!("public_key is not base64: {e}"))
    })?;
    let key = default_provider()
        .parse_public_key_der(&der)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("public_key: {e}")))?;
    if key.algorithm() != algorithm {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("public_key is a {} key, not {algorithm}", key.algorithm()),
        ));
    }
    Ok(key)
}

fn new_key(key: &PublicKey) -> NewKey {
    NewKey {
        fingerprint: key.fingerprint().to_hex(),
        algorithm: key.algorithm().short_name().to_owned(),
        spki: key.spki_der().to_vec(),
    }
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn readyz(State(inner): State<Arc<Inner>>) -> Answer<&'static str> {
    inner
        .db(|s| s.ping().map_err(ApiError::from))
        .await
        .map(|()| "ready\n")
}

pub(crate) async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        inner.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn server_info(State(inner): State<Arc<Inner>>) -> Json<ServerInfo> {
    let key = inner.signer.public_key();
    Json(ServerInfo {
        algorithm: key.algorithm().short_name().to_owned(),
        fingerprint: key.fingerprint().to_hex(),
        public_key: Base64::encode_string(key.spki_der()),
        api: 1,
        token_key: inner.broker.as_ref().map(|b| b.tokens().public_hex()),
    })
}

pub(crate) async fn challenge(State(inner): State<Arc<Inner>>) -> Answer<Response> {
    let challenge = random_b64url(32)?;
    let expires_at = inner.now() + inner.config.challenge_ttl;
    let c = challenge.clone();
    inner
        .db(move |s| s.put_challenge(&c, expires_at).map_err(ApiError::from))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Challenge {
            challenge,
            expires_at,
        }),
    )
        .into_response())
}

pub(crate) async fn register(
    State(inner): State<Arc<Inner>>,
    Extension(Signed(signed)): Extension<Signed>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Answer<Response> {
    let registration: Registration = json(&body)?;
    check_text("name", &registration.name, 128)?;
    let key = public_key(&registration.algorithm, &registration.public_key)?;
    let fingerprint = key.fingerprint().to_hex();
    let i = inner.clone();
    let record = tokio::task::spawn_blocking(move || {
        // The proof of possession: the request is signed by the key it registers, and the
        // signature covers the body (the challenge and the key) through its digest.
        let fp = fingerprint.clone();
        let outcome = verify_signed(&i, &signed, &body, &mut |keyid| {
            if keyid == fp {
                Ok(Some(key.clone()))
            } else {
                Err(HttpSigError::UnknownKey(format!(
                    "{keyid} (a registration is signed by the key it registers, {fp})"
                )))
            }
        })
        .and_then(|_| {
            if i.storage.take_challenge(&registration.challenge, i.now())? {
                Ok(())
            } else {
                Err(ApiError::bad_request(
                    "bad-challenge",
                    "the challenge is unknown, used or expired: ask POST /v1/challenge for a \
                     new one",
                ))
            }
        })
        .and_then(|()| {
            Ok(i.storage.register(&NewClient {
                id: random_hex(16)?,
                name: registration.name.clone(),
                role: Role::Client,
                at: i.now(),
                key: new_key(&key),
            })?)
        });
        match outcome {
            Ok(record) => {
                i.metrics.registered();
                i.decide(&Decision {
                    operation: "server.register",
                    principal: format!("client:{}", record.id),
                    key: Some(fingerprint),
                    allowed: true,
                    reason: format!("registered {:?}", record.name),
                    ..Decision::default()
                })?;
                Ok(record)
            }
            Err(e) => {
                refused(&i, "server.register", Some(fingerprint), None, &e)?;
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok((StatusCode::CREATED, Json(record.view(inner.now()))).into_response())
}

pub(crate) async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        client: caller.client_id,
        key: caller.fingerprint,
        status: caller.status,
        role: caller.role,
    })
}

async fn client_view(inner: &Arc<Inner>, id: String) -> Answer<Json<ClientView>> {
    let now = inner.now();
    let record = inner
        .db(move |s| {
            s.client(&id)?
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such client"))
        })
        .await?;
    Ok(Json(record.view(now)))
}

pub(crate) async fn me(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
) -> Answer<Json<ClientView>> {
    client_view(&inner, caller.client_id).await
}

pub(crate) async fn rotate(
    State(inner): State<Arc<Inner>>,
    Extension(Signed(signed)): Extension<Signed>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Answer<Json<ClientView>> {
    let rotation: Rotation = json(&body)?;
    let bad = |detail: String| ApiError::bad_request("bad-continuity-proof", detail);
    let proofs = ContinuityProof::parse_chain(&rotation.proofs).map_err(|e| bad(e.to_string()))?;
    if proofs.is_empty() {
        return Err(bad("the chain holds no proof".into()));
    }
    if proofs.len() > MAX_CHAIN {
        return Err(bad(format!(
            "the chain holds {} proofs; send at most {MAX_CHAIN}, from the client's active key",
            proofs.len()
        )));
    }
    let i = inner.clone();
    let record = tokio::task::spawn_blocking(move || {
        let mut signer_key = None;
        let outcome = rotate_blocking(&i, &signed, &body, &proofs, &mut signer_key);
        match outcome {
            Ok((record, new_fp, superseded)) => {
                i.metrics.rotated();
                i.decide(&Decision {
                    operation: "server.rotate",
                    principal: format!("client:{}", record.id),
                    key: Some(new_fp),
                    allowed: true,
                    reason: format!("succeeds {}", superseded.join(", ")),
                    ..Decision::default()
                })?;
                Ok(record)
            }
            Err(e) => {
                refused(&i, "server.rotate", signer_key, None, &e)?;
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(record.view(inner.now())))
}

/// A rotation: the chain must start (at some proof) from an accepted key of a client and
/// verify from there; the request must be signed by the chain's new key (proving possession
/// of it) or by an accepted key of the same client. Returns the client, the new key's
/// fingerprint and the keys it supersedes.
fn rotate_blocking(
    i: &Inner,
    signed: &keyhaven_httpsig::Request,
    body: &[u8],
    proofs: &[ContinuityProof],
    signer_key: &mut Option<String>,
) -> Answer<(crate::storage::ClientRecord, String, Vec<String>)> {
    let bad = |detail: String| ApiError::bad_request("bad-continuity-proof", detail);
    let s = i.storage.as_ref();
    let now = i.now();
    // Who asks comes first, before any chain is verified: the request is signed by the
    // chain's new key or by a registered key.
    let newest = proofs
        .last()
        .map(ContinuityProof::new_public_key)
        .ok_or_else(|| bad("the chain holds no proof".into()))?;
    let newest = default_provider()
        .parse_public_key_der(newest.spki_der())
        .map_err(|e| bad(format!("the new key: {e}")))?;
    let newest_fp = newest.fingerprint().to_hex();
    let mut signer = None;
    let mut db_error = None;
    let verified = verify_signed(i, signed, body, &mut |keyid| {
        if keyid == newest_fp {
            return Ok(Some(newest.clone()));
        }
        match s.key(keyid) {
            Ok(Some(r)) => {
                let key = record_key(&r).ok_or_else(|| HttpSigError::UnknownKey(keyid.into()))?;
                signer = Some(r);
                Ok(Some(key))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                db_error = Some(e);
                Ok(None)
            }
        }
    });
    if let Some(e) = db_error {
        return Err(e.into());
    }
    let verified = verified?;
    *signer_key = Some(verified.keyid.clone());
    let signer = signer.filter(|r| r.fingerprint == verified.keyid);

    // The chain is taken from its first proof whose old key is active: a key already
    // superseded (rotating, in its window) or revoked anchors no new rotation, so someone who
    // holds only an old key cannot rotate the client away from its owner.
    let mut start = None;
    let mut seen = Vec::new();
    for (at, p) in proofs.iter().enumerate() {
        if let Some(r) = s.key(&p.old_fingerprint)? {
            if r.status_at(now) == KeyStatus::Active {
                start = Some((at, r));
                break;
            }
            seen.push(format!(
                "{} is {}",
                r.fingerprint,
                r.status_at(now).as_str()
            ));
        }
    }
    let (at, start) = start.ok_or_else(|| {
        bad(if seen.is_empty() {
            "no key the chain rotates from is registered: the chain must start from an active \
             key of this client"
                .into()
        } else {
            format!(
                "the chain starts from no active key ({}): rotate from the client's active key",
                seen.join("; ")
            )
        })
    })?;
    let proofs = &proofs[at..];
    if signer
        .as_ref()
        .is_some_and(|r| r.client_id != start.client_id || !r.status_at(now).accepted())
    {
        return Err(ApiError::forbidden(
            "a rotation is signed by its new key or by an accepted key of the same client",
        ));
    }
    let start_key =
        record_key(&start).ok_or_else(|| bad("the starting key's record is unsound".into()))?;
    let last = verify_chain(&start_key, proofs).map_err(|e| bad(e.to_string()))?;
    let last = default_provider()
        .parse_public_key_der(last.spki_der())
        .map_err(|e| bad(format!("the new key: {e}")))?;
    let last_fp = last.fingerprint().to_hex();
    if signer.is_none() && last_fp != verified.keyid {
        return Err(ApiError::forbidden(
            "a rotation is signed by its new key or by an accepted key of the same client",
        ));
    }

    let mut superseded = Vec::new();
    for p in proofs {
        match s.key(&p.old_fingerprint)? {
            Some(r) if r.client_id == start.client_id => superseded.push(Superseded {
                old: p.old_fingerprint.clone(),
                until: p.migration_end.min(now + i.config.max_migration),
            }),
            Some(_) => {
                return Err(bad(format!(
                    "key {} in the chain belongs to another client",
                    p.old_fingerprint
                )));
            }
            None => {}
        }
    }
    let record = s.rotate(&start.client_id, &superseded, &new_key(&last), now)?;
    let olds = superseded.into_iter().map(|s| s.old).collect();
    Ok((record, last_fp, olds))
}

pub(crate) async fn revoke(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Answer<Json<ClientView>> {
    let revocation: SelfRevocation = json(&body)?;
    check_text("reason", &revocation.reason, 256)?;
    let fingerprint = revocation
        .fingerprint
        .clone()
        .unwrap_or_else(|| caller.fingerprint.clone());
    check_fingerprint(&fingerprint)?;
    if fingerprint != caller.fingerprint && caller.status != KeyStatus::Active {
        return Err(ApiError::forbidden(
            "a superseded (rotating) key may revoke only itself; sign with the client's active \
             key",
        ));
    }
    let i = inner.clone();
    let client = caller.client_id.clone();
    inner
        .db(move |s| {
            if s.key(&fingerprint)?
                .is_none_or(|r| r.client_id != caller.client_id)
            {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    format!("key {fingerprint} is not one of this client's keys"),
                ));
            }
            let outcome = s.revoke(&fingerprint, i.now(), &revocation.reason, "self")?;
            if outcome == Revoked::Now {
                i.metrics.revoked("self", 1);
            }
            i.decide(&Decision {
                operation: "server.revoke",
                principal: format!("client:{}", caller.client_id),
                key: Some(fingerprint),
                allowed: true,
                reason: revocation.reason,
                ..Decision::default()
            })
        })
        .await?;
    client_view(&inner, client).await
}

/// `?q=...&limit=...`
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    limit: Option<u32>,
}

pub(crate) async fn admin_clients(
    State(inner): State<Arc<Inner>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<Vec<ClientView>>> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("invalid-request", format!("the query: {e}")))?;
    if query.q.chars().count() > 256 {
        return Err(ApiError::bad_request(
            "invalid-request",
            "q is longer than 256 characters",
        ));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let now = inner.now();
    let records = inner.db(move |s| Ok(s.search(&query.q, limit)?)).await?;
    Ok(Json(records.iter().map(|r| r.view(now)).collect()))
}

pub(crate) async fn admin_export(State(inner): State<Arc<Inner>>) -> Answer<Json<Vec<ClientView>>> {
    let now = inner.now();
    let records = inner.db(move |s| Ok(s.search("", u32::MAX)?)).await?;
    Ok(Json(records.iter().map(|r| r.view(now)).collect()))
}

pub(crate) async fn admin_revoke(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Answer<Json<BulkRevoked>> {
    let bulk: BulkRevocation = json(&body)?;
    check_text("reason", &bulk.reason, 256)?;
    if bulk.fingerprints.is_empty() || bulk.fingerprints.len() > MAX_BULK {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("name 1 to {MAX_BULK} fingerprints"),
        ));
    }
    for fp in &bulk.fingerprints {
        check_fingerprint(fp)?;
    }
    let i = inner.clone();
    let result = inner
        .db(move |s| {
            let now = i.now();
            let by = format!("admin:{}", caller.fingerprint);
            let mut out = BulkRevoked {
                revoked: Vec::new(),
                already: Vec::new(),
                unknown: Vec::new(),
            };
            for fp in bulk.fingerprints {
                match s.revoke(&fp, now, &bulk.reason, &by)? {
                    Revoked::Now => {
                        i.decide(&Decision {
                            operation: "server.revoke",
                            principal: format!("client:{}", caller.client_id),
                            key: Some(fp.clone()),
                            allowed: true,
                            reason: bulk.reason.clone(),
                            ..Decision::default()
                        })?;
                        out.revoked.push(fp);
                    }
                    Revoked::Already => out.already.push(fp),
                    Revoked::Unknown => out.unknown.push(fp),
                }
            }
            i.metrics.revoked("admin", out.revoked.len() as u64);
            Ok(out)
        })
        .await?;
    Ok(Json(result))
}

pub(crate) async fn admin_stats(State(inner): State<Arc<Inner>>) -> Answer<Json<Stats>> {
    let now = inner.now();
    Ok(Json(inner.db(move |s| Ok(s.stats(now)?)).await?))
}

pub(crate) async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!(
            "no route {}",
            request.uri().path().chars().take(200).collect::<String>()
        ),
    )
}

pub(crate) async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not allowed on this route", request.method()),
    )
}
