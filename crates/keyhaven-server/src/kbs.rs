//! The key broker side of confidential-containers' Trustee KBS attestation protocol (RCAR:
//! request, challenge, attestation, response), so an attestation agent built for Trustee
//! fetches keyhaven secrets as KBS resources. The wire types are those of the `kbs-types`
//! crate (protocol version 0.4.0).
//!
//! 1. `POST /kbs/v0/auth` `{"version": "0.4.0", "tee": "tpm", "extra-params": ...}`: a
//!    session (cookie `kbs-session-id`, five minutes) and its challenge `{"nonce": base64 of
//!    32 random bytes, "extra-params": ""}`.
//! 2. `POST /kbs/v0/attest` with the cookie, `{"runtime-data": {"nonce", "tee-pubkey"},
//!    "tee-evidence": {"primary_evidence", "additional_evidence"}}`: the evidence must bind
//!    SHA-384 of the canonical JSON (RFC 8785) of `{"additional-evidence", "nonce",
//!    "tee-pubkey"}`: a TPM quote's extra data is its first 32 bytes, sample evidence all
//!    48. Verified evidence (the broker's own verifiers: a TPM AK must have been enrolled by
//!    credential activation) earns an attestation token, an IETF RATS EAR (a JWT the server
//!    key signs), kept in the session and answered again for its lifetime.
//! 3. `GET /kbs/v0/resource/{repository}/{type}/{tag}` with the cookie or `Authorization:
//!    Bearer <token>`: the secret `kbs/{repository}/{type}/{tag}` of the tenant the operator
//!    named (`keyhaven serve --kbs-tenant CLIENT`), released when the token's tier meets the
//!    secret's `min_tier` and the release policies allow it, as a flattened JWE
//!    (`ECDH-ES+A256KW`, `A256GCM`) to the TEE key the token names. Audited as a release, with
//!    what the evidence carried, so compromise by measurement finds it.
//!
//! TEE keys are EC P-256 or P-384 (`ECDH-ES+A256KW`, what Trustee's attesters make by
//! default); RSA keys are refused. Device evidence (`additional_evidence`) and init-data are
//! refused rather than ignored: nothing here checks them.
//!
//! Sessions live in this node's memory (at most [`MAX_SESSIONS`]); tokens are checked by
//! signature, so any node of a cluster sharing the server key takes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha384};

use crate::audit::Decision;
use crate::broker::Broker;
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};

/// The KBS protocol version spoken (Trustee's `KBS_PROTOCOL_VERSION`).
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// The session cookie's name.
pub const COOKIE: &str = "kbs-session-id";
/// How long a session and its attestation token last (seconds).
pub const SESSION_TTL: u64 = 300;
/// The most sessions kept.
pub const MAX_SESSIONS: usize = 10_000;
/// The EAR profile of the attestation tokens.
pub const EAR_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// The JWS `typ` of an attestation token.
pub const TOKEN_TYPE: &str = "JWT";
/// Where KBS resources live in the tenant's secrets.
pub const RESOURCE_PREFIX: &str = "kbs/";

/// The TEEs a session may name, and the evidence type each is verified as. (Sample
/// evidence is not offered: over KBS it would make anyone at all a tier-1 requester.)
const TEES: [(&str, &str); 1] = [("tpm", "tpm")];
/// How long a session may take to attest (seconds).
pub const CHALLENGE_TTL: u64 = 60;

/// A KBS session: its challenge, then its token.
struct Session {
    tee: &'static str,
    nonce: String,
    expires: u64,
    token: Option<String>,
}

/// The KBS face of a broker: the tenant whose secrets it serves, and the sessions.
pub(crate) struct Kbs {
    tenant: String,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Kbs {
    /// Serves `tenant`'s secrets under [`RESOURCE_PREFIX`].
    pub(crate) fn new(tenant: String) -> Self {
        Kbs {
            tenant,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant served.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// A KBS refusal: problem+json, whose `type` and `detail` Trustee clients read as their
/// `ErrorInformation`.
fn unauthorized(name: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, name, detail)
}

fn kbs_of(inner: &Inner) -> Result<(Arc<Broker>, &Inner), ApiError> {
    match &inner.broker {
        Some(b) if b.kbs().is_some() => Ok((b.clone(), inner)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-kbs",
            "this server does not speak the KBS protocol: start it with a key broker and \
             --kbs-tenant CLIENT naming whose secrets (under kbs/) it serves",
        )),
    }
}

fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; n];
    keyhaven::fill_random(&mut b)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(hex::encode(b))
}

fn session_cookie(id: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Max-Age={SESSION_TTL}; Path=/kbs/v0; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn json_with_cookie(body: &Value, id: &str, secure: bool) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(http::header::SET_COOKIE, session_cookie(id, secure));
    response
}

/// Whether clients reach the server over TLS (the cookie is then `Secure`).
fn secure(inner: &Inner) -> bool {
    inner.config.scheme == "https"
        || inner
            .config
            .public_origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://"))
}

/// The session id the request's cookie names.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn body_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("the body is not JSON: {e}")))
}

/// `POST /kbs/v0/auth`.
pub(crate) async fn auth(
    State(inner): State<Arc<Inner>>,
    axum::Extension(RawBody(body)): axum::Extension<RawBody>,
) -> Result<Response, ApiError> {
    let (broker, inner) = kbs_of(&inner)?;
    let request = body_json(&body)?;
    let version = request["version"].as_str().unwrap_or("");
    let compatible = version
        .strip_prefix("0.4.")
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()));
    if !compatible {
        return Err(unauthorized(
            "protocol-version",
            format!(
                "KBS protocol version '{}' is not spoken here: this broker speaks {PROTOCOL_VERSION}",
                version.chars().take(20).collect::<String>()
            ),
        ));
    }
    let named = request["tee"].as_str().unwrap_or("");
    let accepted = broker.attestation().kinds();
    let tee = TEES
        .iter()
        .find(|(t, kind)| *t == named && accepted.contains(kind))
        .map(|(t, _)| *t)
        .ok_or_else(|| {
            let offered: Vec<&str> = TEES
                .iter()
                .filter(|(_, k)| accepted.contains(k))
                .map(|(t, _)| *t)
                .collect();
            ApiError::bad_request(
                "tee-not-accepted",
                format!(
                    "TEE '{}' is not accepted over KBS here; accepted: [{}]",
                    named.chars().take(20).collect::<String>(),
                    offered.join(", ")
                ),
            )
        })?;
    let id = random_hex(16)?;
    let mut nonce = [0u8; 32];
    keyhaven::fill_random(&mut nonce)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let nonce = Base64::encode_string(&nonce);
    let now = inner.now();
    {
        let kbs = broker.kbs().ok_or_else(|| internal("no KBS"))?;
        let mut sessions = kbs.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            // Full of live sessions: those still waiting to attest give way (a flood of
            // challenges displaces only challenges, never an attested session).
            let waiting: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.token.is_none())
                .map(|(k, _)| k.clone())
                .take(MAX_SESSIONS / 10)
                .collect();
            for k in waiting {
                sessions.remove(&k);
            }
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(ApiError::unavailable(
                "too many KBS sessions are open; try again in a few minutes",
            ));
        }
        sessions.insert(
            id.clone(),
            Session {
                tee,
                nonce: nonce.clone(),
                expires: now + CHALLENGE_TTL,
                token: None,
            },
        );
    }
    Ok(json_with_cookie(
        &json!({ "nonce": nonce, "extra-params": "" }),
        &id,
        secure(inner),
    ))
}

fn internal(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        what.to_owned(),
    )
}

/// The live session `id` names, as (its TEE, its nonce, its token).
fn session(
    broker: &Broker,
    id: &str,
    now: u64,
) -> Result<(&'static str, String, Option<String>), ApiError> {
    let kbs = broker.kbs().ok_or_else(|| internal("no KBS"))?;
    let mut sessions = kbs.sessions.lock().unwrap_or_else(PoisonError::into_inner);
    match sessions.get(id) {
        Some(s) if s.expires > now => Ok((s.tee, s.nonce.clone(), s.token.clone())),
        Some(_) => {
            sessions.remove(id);
            Err(no_session())
        }
        None => Err(no_session()),
    }
}

fn no_session() -> ApiError {
    unauthorized(
        "no-session",
        "no KBS session of this cookie (expired, or another node's): start again at \
         POST /kbs/v0/auth",
    )
}

/// The TEE key of `runtime-data`, checked, as the JSON the binding hashes (its members
/// sorted) and the JWK a release is encrypted to.
fn tee_key(runtime: &Value) -> Result<(Value, keyhaven::PublicKey), ApiError> {
    let k = &runtime["tee-pubkey"];
    let field = |name: &str| -> Result<String, ApiError> {
        k[name]
            .as_str()
            .filter(|v| v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-request",
                    format!("'runtime-data.tee-pubkey' needs '{name}'"),
                )
            })
    };
    if k["kty"].as_str() != Some("EC") {
        return Err(ApiError::bad_request(
            "tee-key-not-accepted",
            "the TEE key must be EC P-256 or P-384 with alg ECDH-ES+A256KW (RSA and other keys \
             are not accepted): releases are ECDH-ES+A256KW JWEs",
        ));
    }
    let (alg, crv, x, y) = (field("alg")?, field("crv")?, field("x")?, field("y")?);
    if alg != "ECDH-ES+A256KW" {
        return Err(ApiError::bad_request(
            "tee-key-not-accepted",
            format!("the TEE key's alg is '{alg}'; ECDH-ES+A256KW is the one accepted"),
        ));
    }
    // kbs-types' member order, sorted (RFC 8785): alg, crv, kty, x, y.
    let bound = json!({ "alg": alg, "crv": crv, "kty": "EC", "x": x, "y": y });
    let jwk = json!({ "crv": crv, "kty": "EC", "x": x, "y": y });
    let key = keyhaven::jwe::public_key_from_jwk(&jwk)
        .map_err(|e| ApiError::bad_request("tee-key-not-accepted", format!("the TEE key: {e}")))?;
    if !matches!(crv.as_str(), "P-256" | "P-384") {
        return Err(ApiError::bad_request(
            "tee-key-not-accepted",
            format!("the TEE key's curve is '{crv}'; P-256 or P-384 are accepted"),
        ));
    }
    Ok((bound, key))
}

/// SHA-384 of the RFC 8785 canonical JSON of the runtime data, what the evidence binds.
/// Every value is a string and every member name ASCII, so serde_json's compact form with
/// members sorted is the canonical form.
pub fn binding(additional_evidence: &str, nonce: &str, tee_key: &Value) -> [u8; 48] {
    let mut text = String::from("{\"additional-evidence\":");
    text.push_str(&Value::from(additional_evidence).to_string());
    text.push_str(",\"nonce\":");
    text.push_str(&Value::from(nonce).to_string());
    text.push_str(",\"tee-pubkey\":{");
    let mut first = true;
    for name in ["alg", "crv", "kty", "x", "y"] {
        if !first {
            text.push(',');
        }
        first = false;
        text.push_str(&format!("\"{name}\":{}", tee_key[name]));
    }
    text.push_str("}}");
    Sha384::digest(text.as_bytes()).into()
}

/// The primary evidence as the broker's verifier of `tee` reads it, and the report data it
/// must bind.
fn evidence_for(
    tee: &str,
    primary: &Value,
    binding: &[u8; 48],
) -> Result<(Value, Vec<u8>), ApiError> {
    match tee {
        // Trustee's TPM attester puts the binding's first 32 bytes in the quote.
        "tpm" => {
            let mut e = primary.clone();
            let obj = e.as_object_mut().ok_or_else(|| {
                ApiError::bad_request("invalid-request", "TPM evidence is a JSON object")
            })?;
            obj.insert("type".into(), "tpm".into());
            Ok((e, binding[..32].to_vec()))
        }
        other => Err(ApiError::bad_request(
            "tee-not-accepted",
            format!("TEE '{other}' is not accepted over KBS here"),
        )),
    }
}

/// EAR's trustworthiness vector and status from keyhaven's claims (AR4SI values).
fn appraisal(claims: &Value) -> (Value, &'static str) {
    let mut vector = serde_json::Map::new();
    let mut worst = 0u8;
    for (aspect, v) in claims["trust"].as_object().into_iter().flatten() {
        let (n, rank) = match v.as_str() {
            Some("affirming") => (2, 1),
            Some("warning") => (32, 2),
            Some("contraindicated") => (96, 3),
            _ => (0, 0),
        };
        worst = worst.max(rank);
        vector.insert(aspect.clone(), json!(n));
    }
    let status = match worst {
        // Genuine, but running code nobody named: not "affirming" to a relying party.
        1 if vector.get("executables") != Some(&json!(2)) => "warning",
        1 => "affirming",
        2 => "warning",
        3 => "contraindicated",
        _ => "none",
    };
    (Value::Object(vector), status)
}

/// `POST /kbs/v0/attest`.
pub(crate) async fn attest(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    axum::Extension(RawBody(body)): axum::Extension<RawBody>,
) -> Result<Response, ApiError> {
    let (broker, _) = kbs_of(&inner)?;
    let id = cookie_of(&headers).ok_or_else(|| {
        unauthorized(
            "no-session",
            format!("attestation needs the '{COOKIE}' cookie POST /kbs/v0/auth set"),
        )
    })?;
    let now = inner.now();
    let (tee, nonce, token) = session(&broker, &id, now)?;
    if let Some(token) = token {
        // Attested already: the same token, for its lifetime.
        return Ok(json_with_cookie(
            &json!({ "token": token }),
            &id,
            secure(&inner),
        ));
    }
    let attestation = body_json(&body)?;
    let runtime = &attestation["runtime-data"];
    let sent = runtime["nonce"].as_str().unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        sent.as_bytes(),
        nonce.as_bytes(),
    )) {
        return Err(unauthorized(
            "wrong-nonce",
            "'runtime-data.nonce' is not this session's challenge",
        ));
    }
    if !attestation["init-data"].is_null() {
        return Err(ApiError::bad_request(
            "init-data-not-accepted",
            "this broker does not check init-data; attest without it",
        ));
    }
    let evidence = &attestation["tee-evidence"];
    let additional = evidence["additional_evidence"].as_str().unwrap_or("");
    if !additional.is_empty() {
        return Err(ApiError::bad_request(
            "device-evidence-not-accepted",
            "additional (device) evidence is not checked over KBS here; send the primary \
             evidence alone",
        ));
    }
    let (bound_key, _) = tee_key(runtime)?;
    let binding = binding(additional, &nonce, &bound_key);
    let (evidence, report_data) = evidence_for(tee, &evidence["primary_evidence"], &binding)?;
    let i = inner.clone();
    let b = broker.clone();
    let runtime = json!({ "nonce": nonce, "tee-pubkey": bound_key });
    let tenant = broker
        .kbs()
        .map(|k| k.tenant().to_owned())
        .unwrap_or_default();
    let jti = random_hex(16)?;
    tokio::task::spawn_blocking(move || {
        let verified = b
            .attestation()
            .verify(&evidence, &report_data, now)
            .map_err(|e| match e {
                crate::attest::EvidenceError::NotAccepted(m)
                | crate::attest::EvidenceError::Refused(m) => unauthorized(
                    "attestation-failed",
                    format!("the evidence does not verify: {m}"),
                ),
            })
            .and_then(|a| {
                // Over KBS the TPM is the requester's only identity: its AK must have been
                // enrolled by the tenant whose resources are served, not by any client.
                if a.claims["enrolled_by"].as_str() != Some(tenant.as_str()) {
                    return Err(unauthorized(
                        "attestation-failed",
                        "this attestation key was not enrolled by the client whose resources \
                         this KBS serves: that client enrolls the TPMs it trusts",
                    ));
                }
                let carried = crate::compromise::Carried::of(&a.kind, &a.claims);
                crate::compromise::check(&b, &carried)?;
                Ok(a)
            });
        // The session id is a bearer secret until it expires: the trail names the token's id.
        let principal = format!("kbs:{jti}");
        let (allowed, reason) = match &verified {
            Ok(a) => (
                true,
                format!("KBS token {jti}: {} evidence, tier {}", a.kind, a.tier),
            ),
            Err(e) => (false, format!("KBS token {jti}: {}: {}", e.name, e.detail)),
        };
        i.decide(&Decision {
            operation: "kbs.attest",
            principal,
            key: None,
            allowed,
            reason: reason.chars().take(400).collect(),
            ..Decision::default()
        })?;
        let a = verified?;
        i.metrics.attestation(tee, "verified");
        let (vector, status) = appraisal(&a.claims);
        let mut annotated = serde_json::Map::new();
        annotated.insert(a.kind.clone(), a.claims.clone());
        annotated.insert("runtime_data_claims".into(), runtime);
        annotated.insert("report_data".into(), hex::encode(binding).into());
        let claims = json!({
            "eat_profile": EAR_PROFILE,
            "iat": now,
            "exp": now + SESSION_TTL,
            "iss": i.signer.public_key().fingerprint().to_hex(),
            "jti": jti,
            "aud": format!("kbs:{tenant}"),
            "ear.verifier-id": {
                "developer": "https://github.com/keyhaven",
                "build": concat!("keyhaven-server ", env!("CARGO_PKG_VERSION")),
            },
            "submods": {
                "cpu0": {
                    "ear.status": status,
                    "ear.trustworthiness-vector": vector,
                    "ear.appraisal-policy-id": format!("keyhaven:tier-{}", a.tier),
                    "ear.veraison.annotated-evidence": annotated,
                }
            },
            "keyhaven.tier": a.tier,
            "keyhaven.evidence": a.kind,
        });
        let token = keyhaven::jws::sign(i.signer.public_key(), TOKEN_TYPE, &claims, &mut |m| {
            i.signer.sign(m)
        })
        .map_err(|e| {
            tracing::error!(error = %e, "the server key cannot sign an attestation token");
            ApiError::unavailable("the server key cannot sign the attestation token")
        })?;
        if let Some(kbs) = b.kbs() {
            let mut sessions = kbs.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = sessions.get_mut(&id) {
                s.token = Some(token.clone());
                s.expires = now + SESSION_TTL;
            }
        }
        Ok(json_with_cookie(
            &json!({ "token": token }),
            &id,
            secure(&i),
        ))
    })
    .await
    .map_err(|e| internal(&e.to_string()))?
}

/// The attestation token a resource request carries: `Authorization: Bearer`, or its
/// session's.
fn token_of(broker: &Broker, headers: &HeaderMap, now: u64) -> Result<String, ApiError> {
    if let Some(auth) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return auth
            .strip_prefix("Bearer ")
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| {
                unauthorized("token-not-found", "Authorization takes 'Bearer <token>'")
            });
    }
    let id = cookie_of(headers).ok_or_else(|| {
        unauthorized(
            "token-not-found",
            "no attestation token: attest first (POST /kbs/v0/auth, then /attest), and send \
             the session cookie or Authorization: Bearer <token>",
        )
    })?;
    let (_, _, token) = session(broker, &id, now)?;
    token.ok_or_else(|| {
        unauthorized(
            "token-not-found",
            "this session has not attested: POST /kbs/v0/attest first",
        )
    })
}

/// What a verified token says: its claims, the tier, and the TEE key.
fn check_token(inner: &Inner, token: &str, now: u64) -> Result<Value, ApiError> {
    let key = inner.signer.public_key();
    let claims = keyhaven::jws::verify(token, key, TOKEN_TYPE).map_err(|e| {
        unauthorized(
            "bad-token",
            format!("the attestation token is not this broker's: {e}"),
        )
    })?;
    if claims["iss"].as_str() != Some(key.fingerprint().to_hex().as_str())
        || claims["eat_profile"].as_str() != Some(EAR_PROFILE)
    {
        return Err(unauthorized(
            "bad-token",
            "the attestation token is not a KBS token of this broker",
        ));
    }
    let tenant = inner
        .broker
        .as_ref()
        .and_then(|b| b.kbs())
        .map(|k| format!("kbs:{}", k.tenant()));
    if claims["aud"].as_str() != tenant.as_deref() {
        return Err(unauthorized(
            "bad-token",
            "the attestation token was made for another tenant's KBS",
        ));
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err(unauthorized(
            "token-expired",
            "the attestation token has expired: attest again",
        ));
    }
    Ok(claims)
}

/// `GET /kbs/v0/resource/{repository}/{type}/{tag}`.
pub(crate) async fn resource(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path((repository, kind, tag)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (broker, _) = kbs_of(&inner)?;
    let now = inner.now();
    let token = token_of(&broker, &headers, now)?;
    let claims = check_token(&inner, &token, now)?;
    let path = format!("{RESOURCE_PREFIX}{repository}/{kind}/{tag}");
    crate::secrets::check_path(&path)?;
    let i = inner.clone();
    let jwe = tokio::task::spawn_blocking(move || release(&i, &broker, &claims, &path, now))
        .await
        .map_err(|e| internal(&e.to_string()))??;
    // The compact JWE, flattened into kbs-types' `Response` (its protected header is
    // `{"alg","enc","epk"}`, in the order kbs-types serializes it again for the AAD).
    let mut parts = jwe.split('.');
    let mut next = || parts.next().unwrap_or("").to_owned();
    let (protected, encrypted_key, iv, ciphertext, tag) = (next(), next(), next(), next(), next());
    Ok(axum::Json(json!({
        "protected": protected,
        "encrypted_key": encrypted_key,
        "iv": iv,
        "ciphertext": ciphertext,
        "tag": tag,
    }))
    .into_response())
}

/// Releases `path` to the holder of the token whose `claims` are given; audited.
fn release(
    inner: &Inner,
    broker: &Broker,
    claims: &Value,
    path: &str,
    now: u64,
) -> Result<String, ApiError> {
    let tenant = broker
        .kbs()
        .map(|k| k.tenant().to_owned())
        .unwrap_or_default();
    let tier = claims["keyhaven.tier"]
        .as_u64()
        .and_then(|t| u8::try_from(t).ok())
        .unwrap_or(0);
    let kind = claims["keyhaven.evidence"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    let tee_claims = &annotated[kind.as_str()];
    let jwk = &annotated["runtime_data_claims"]["tee-pubkey"];
    let principal = format!("kbs:{}", claims["jti"].as_str().unwrap_or(""));
    let carried = crate::compromise::Carried::of(&kind, tee_claims);
    let outcome = (|| {
        // Revoked since the token was made: refused all the same.
        crate::compromise::check(broker, &carried)?;
        let record = broker
            .storage()
            .secret(&tenant, path)?
            .ok_or_else(|| crate::secrets::not_found(path))?;
        let version = record.latest_version();
        let requester = json!({
            "client": principal,
            "key": keyhaven::jwe::thumbprint(jwk),
            "tier": tier,
            "evidence": { "kind": "attested", "attestation": { "kind": kind, "tier": tier, "claims": tee_claims } },
            "via_token": true,
        });
        let explanation =
            crate::secrets::explain_release(broker, &tenant, &record, version, &requester, now)?;
        if !explanation.allow {
            inner.metrics.release(record.tier, "denied");
            let met = explanation.tier_rule["met"].as_bool().unwrap_or(false);
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                if met { "policy-denied" } else { "tier-too-low" },
                if met {
                    format!("resource '{path}': {}", explanation.summary())
                } else {
                    format!(
                        "resource '{path}' is released at tier {} or above; this attestation \
                         is tier {tier} ({kind} evidence)",
                        record.min_tier
                    )
                },
            ));
        }
        let bound = jwk.clone();
        let recipient = keyhaven::jwe::public_key_from_jwk(&json!({
            "crv": bound["crv"], "kty": "EC", "x": bound["x"], "y": bound["y"],
        }))
        .map_err(|e| ApiError::bad_request("invalid-request", format!("the TEE key: {e}")))?;
        let sealing = keyhaven::jwe::prepare(&recipient, &serde_json::Map::new())
            .map_err(|e| ApiError::bad_request("invalid-request", format!("the TEE key: {e}")))?;
        let jwe = crate::secrets::seal_version(broker, &tenant, &record, version, sealing)?;
        inner.metrics.release(record.tier, "released");
        let receipt = hex::encode(&Sha384::digest(jwe.as_bytes())[..16]);
        Ok((
            jwe,
            format!(
                "version {version} at tier {} to a tier {tier} KBS requester (jwe {receipt}){}",
                record.tier,
                crate::compromise::release_record(&crate::compromise::ReleaseRecord {
                    tenant: tenant.clone(),
                    path: path.to_owned(),
                    version,
                    tier: record.tier,
                    receipt: receipt.clone(),
                    carried: Some(carried.clone()),
                })
            ),
        ))
    })();
    let subject: String = format!("secret '{path}'").chars().take(160).collect();
    let (allowed, reason) = match &outcome {
        Ok((_, what)) => (true, format!("{subject}: {what}")),
        Err(e) => (
            false,
            format!(
                "{subject}: {}: {}",
                e.name,
                e.detail.chars().take(200).collect::<String>()
            ),
        ),
    };
    inner.decide(&Decision {
        operation: "secret.release",
        principal,
        key: None,
        allowed,
        reason,
        ..Decision::default()
    })?;
    outcome.map(|(jwe, _)| jwe)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_binding_is_sha384_of_the_canonical_runtime_data() {
        // Computed with Python's json.dumps(sort_keys=True, separators=(",", ":")) and
        // hashlib, as a Trustee attester canonicalises it (RFC 8785).
        let key = json!({ "alg": "ECDH-ES+A256KW", "crv": "P-256", "kty": "EC", "x": "AAAA", "y": "BBBB" });
        assert_eq!(
            hex::encode(binding("", "bm9uY2U=", &key)),
            "d20490d30e5f16cba693abc1ca3c31ed977d2722d0adf01a980972d16913dc38\
             f103c1f12abf477df0523af2b12e4b43"
        );
    }

    #[test]
    fn the_session_cookie_is_read_among_others_and_nothing_else_is_taken_for_it() {
        let mut h = HeaderMap::new();
        let id = "00112233445566778899aabbccddeeff";
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}; c=d")).unwrap(),
        );
        assert_eq!(cookie_of(&h).as_deref(), Some(id));
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_static("kbs-session-id=../../etc"),
        );
        assert_eq!(cookie_of(&h), None);
    }

    #[test]
    fn the_ear_status_is_the_worst_aspect() {
        let claims = json!({ "trust": { "hardware": "affirming", "executables": "warning" } });
        let (vector, status) = appraisal(&claims);
        assert_eq!(status, "warning");
        assert_eq!(vector["hardware"], 2);
        assert_eq!(vector["executables"], 32);
        assert_eq!(appraisal(&json!({})).1, "none");
        // A genuine TPM whose boot nobody named is not "affirming".
        let unknown = json!({ "trust": { "hardware": "affirming", "executables": "none" } });
        assert_eq!(appraisal(&unknown).1, "warning");
        let known = json!({ "trust": { "hardware": "affirming", "executables": "affirming" } });
        assert_eq!(appraisal(&known).1, "affirming");
    }
}
