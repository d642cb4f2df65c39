//! The key broker's secrets: stored, versioned, listed, deleted and released by path, each
//! version sealed under its own DEK, which a KEK of the tenant and tier wraps (its associated
//! data binds tenant, tier, path and version).
//!
//! **Tiers.** A secret is stored at a tier (its KEK's scope): at most the broker's own, which
//! is its master key's protection. A writer asks for a tier and may accept less down to a
//! floor (`create_with_fallback`): it learns the tier reached, and a downgrade is audited and
//! counted. A secret also says the lowest tier of requester it is released to. A requester's
//! tier comes from its evidence: here, the signature of a registered key (tier 1) or of a key
//! an admin vouched for as hardware-bound (up to tier 2); tiers 3 and 4 need attestation
//! evidence of confidential computing, which no requester can bring yet.
//!
//! **Releases nobody else reads.** A release is a JWE (ECDH-ES+A256KW, A256GCM) to the
//! ephemeral public key the request carries, with a receipt the server key signs (a JWS of
//! type [`RECEIPT_TYPE`]): what was released, to whom, at which tier, on which evidence and
//! under which rule, bound to the JWE by its digest.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use keyhaven::envelope::Envelope;
use keyhaven::jwe::thumbprint;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::broker::{
    Broker, Call, Params, base64_field, decided, decided_granted, transit_problem, vault_response,
};
use crate::policy::Explanation;
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};
use crate::storage::{KeyTier, SecretMeta, SecretRecord};
use crate::tokens::token_of;

/// The name of the key that holds a tenant's secret KEKs (in its `~secrets` partition).
const KEK_NAME: &str = "kek";
/// The longest secret path.
const MAX_PATH: usize = 512;
/// The most secrets one listing returns.
const MAX_LIST: u32 = 1000;
/// The most versions a secret keeps (each read loads them all): delete and write anew.
pub const MAX_SECRET_VERSIONS: u64 = 100;
/// How many times a write retries when another writer took its version number.
const WRITE_ATTEMPTS: usize = 8;
/// The JWS `typ` of a release receipt.
pub const RECEIPT_TYPE: &str = "keyhaven-release-receipt+jwt";
/// The highest tier an admin's word can give a key (higher tiers need attestation).
pub const MAX_VOUCHED_TIER: u8 = 2;
/// The highest tier there is.
pub(crate) const MAX_TIER: u8 = 4;

/// Checks a secret path: 1 to 512 bytes of segments of `[A-Za-z0-9._-]` separated by single
/// `/`, no segment `.` or `..`.
pub(crate) fn check_path(path: &str) -> Result<(), ApiError> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-request",
            format!(
                "'{}' is not a secret path: segments of letters, digits, '.', '_' or '-' \
                 separated by '/', at most {MAX_PATH} bytes",
                path.chars().take(100).collect::<String>()
            ),
        ))
    }
}

fn tier_param(p: &mut Params, name: &'static str) -> Result<Option<u8>, ApiError> {
    match p.uint(name)? {
        None => Ok(None),
        Some(t) if t <= u32::from(MAX_TIER) => Ok(u8::try_from(t).ok()),
        Some(t) => Err(ApiError::bad_request(
            "invalid-request",
            format!("'{name}' is a tier from 0 to {MAX_TIER}, not {t}"),
        )),
    }
}

/// A requester's tier and the evidence it rests on.
pub(crate) struct Assessment {
    tier: u8,
    evidence: Value,
    /// What verified evidence carried (none without evidence).
    carried: Option<crate::compromise::Carried>,
}

/// What the signing key earns (tier 1 for a registered key, up to tier 2 for one an admin
/// vouched for), and what `evidence` bound to `report_data` adds: the higher of the two.
fn assess(
    broker: &Broker,
    metrics: &crate::metrics::Metrics,
    caller: &Caller,
    evidence: Option<&Value>,
    report_data: &[u8],
    now: u64,
) -> Result<Assessment, ApiError> {
    let proved = crate::attest::proved_key(broker, &caller.fingerprint, now)?;
    let key = match broker.storage().key_tier(&caller.fingerprint)? {
        // Proved to live in a TPM: tier 2 (with or without an admin's word).
        _ if proved.is_some() => Assessment {
            tier: crate::attest::ATTESTED_KEY_TIER,
            evidence: json!({
                "kind": "attested-key",
                "key": caller.fingerprint,
                "tier": crate::attest::ATTESTED_KEY_TIER,
                "key_attestation": proved,
            }),
            carried: None,
        },
        Some(t) => {
            // Where key attestation is required, an admin's word alone stops at tier 1.
            let required = broker.requires_key_attestation();
            let cap = if required { 1 } else { MAX_VOUCHED_TIER };
            Assessment {
                tier: t.tier.min(cap),
                evidence: json!({
                    "kind": "vouched-key",
                    "key": caller.fingerprint,
                    "tier": t.tier,
                    "vouched_by": t.vouched_by,
                    "vouched_at": t.at,
                    "key_attestation_required": required,
                }),
                carried: None,
            }
        }
        None => Assessment {
            tier: 1,
            evidence: json!({ "kind": "registered-key", "key": caller.fingerprint, "tier": 1 }),
            carried: None,
        },
    };
    let Some(evidence) = evidence else {
        return Ok(key);
    };
    let kinds = broker.attestation().kinds();
    let label = kinds
        .iter()
        .copied()
        .find(|k| evidence["type"].as_str() == Some(*k))
        .unwrap_or("other");
    match broker.attestation().verify(evidence, report_data, now) {
        Ok(a) => {
            // Verified; then nothing it carried may be revoked (a measurement, a TCB, an
            // advisory: see crate::compromise).
            let carried = crate::compromise::Carried::of(&a.kind, &a.claims);
            if let Err(e) = crate::compromise::check(broker, &carried) {
                metrics.attestation(label, "revoked");
                return Err(e);
            }
            metrics.attestation(label, "verified");
            let attested = json!({ "kind": a.kind, "tier": a.tier, "claims": a.claims });
            Ok(if a.tier > key.tier {
                Assessment {
                    tier: a.tier,
                    evidence: json!({ "kind": "attested", "attestation": attested, "key": key.evidence }),
                    carried: Some(carried),
                }
            } else {
                Assessment {
                    tier: key.tier,
                    evidence: json!({ "kind": key.evidence["kind"], "key": key.evidence, "attestation": attested }),
                    carried: Some(carried),
                }
            })
        }
        Err(crate::attest::EvidenceError::NotAccepted(m)) => {
            metrics.attestation(label, "not-accepted");
            Err(ApiError::bad_request("evidence-not-accepted", m))
        }
        Err(crate::attest::EvidenceError::Refused(m)) => {
            metrics.attestation(label, "refused");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "evidence-refused",
                format!("the evidence does not verify: {m}"),
            ))
        }
    }
}

pub(crate) fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no secret '{path}' of this client"),
    )
}

fn secret_view(r: &SecretRecord) -> Value {
    let versions: Vec<Value> = r
        .versions
        .iter()
        .map(|(v, (_, at))| json!({ "version": v, "created_at": at }))
        .collect();
    json!({
        "path": r.path,
        "tier": r.tier,
        "min_tier": r.min_tier,
        "created_at": r.created_at,
        "latest_version": r.latest_version(),
        "versions": versions,
    })
}

/// `PUT /v1/secrets/*path`: writes a new version. Body: `value` (base64), optionally `tier`
/// (default: the broker's), `floor` (the lowest tier accepted instead, default `tier`) and
/// `min_tier` (the lowest requester tier it is released to, default the tier reached).
pub(crate) async fn put(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let value = p
        .string("value")?
        .ok_or_else(|| ApiError::bad_request("invalid-request", "missing 'value' (base64)"))?;
    let value = base64_field("value", &value)?;
    let tier = tier_param(&mut p, "tier")?;
    let floor = tier_param(&mut p, "floor")?;
    let min_tier = tier_param(&mut p, "min_tier")?;
    let warnings = p.warnings();
    let call = Call {
        operation: "secret.write",
        subject: format!("secret '{path}'"),
        path: path.clone(),
        audit_success: true,
    };
    let metrics_inner = inner.clone();
    let token = token_of(&headers, &caller)?;
    let own = caller.client_id.clone();
    let data = decided(inner, caller, token, call, move |broker, tenant, now| {
        check_path(&path)?;
        let storage = broker.storage();
        let mut existing = storage.secret(tenant, &path)?;
        // A secret's min_tier covers every version: only its owner lowers it (a token that
        // may write could otherwise open the old versions to lower tiers).
        if let (Some(r), Some(m)) = (&existing, min_tier)
            && m < r.min_tier
            && tenant != own
        {
            return Err(ApiError::forbidden(format!(
                "only the owner of secret '{path}' lowers its min_tier (tier {}): a token may \
                 keep or raise it",
                r.min_tier
            )));
        }
        let requested = tier.unwrap_or_else(|| existing.as_ref().map_or(broker.tier(), |r| r.tier));
        let floor = floor.unwrap_or(requested);
        if floor > requested {
            return Err(ApiError::bad_request(
                "invalid-request",
                format!("the floor (tier {floor}) is above the tier asked for ({requested})"),
            ));
        }
        let reached = match &existing {
            Some(r) if tier.is_some_and(|t| t != r.tier) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "tier-conflict",
                    format!(
                        "secret '{path}' is stored at tier {}: write it without 'tier', or \
                         delete it and write it anew",
                        r.tier
                    ),
                ));
            }
            Some(r) => r.tier,
            None => requested.min(broker.tier()),
        };
        if reached < floor {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tier-unavailable",
                format!(
                    "tier {requested} was asked for, accepting down to {floor}; this broker \
                     reaches tier {} (its master key's protection)",
                    broker.tier()
                ),
            ));
        }
        let meta = SecretMeta {
            tier: reached,
            min_tier: min_tier.unwrap_or_else(|| existing.as_ref().map_or(reached, |r| r.min_tier)),
        };
        let keks = broker.secret_keks(tenant, reached)?;
        keks.ensure_key(KEK_NAME, now)
            .map_err(|e| transit_problem(&e))?;
        let mut written = None;
        for _ in 0..WRITE_ATTEMPTS {
            let version = existing.as_ref().map_or(0, SecretRecord::latest_version) + 1;
            if version > MAX_SECRET_VERSIONS {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "too-many-versions",
                    format!(
                        "secret '{path}' has {MAX_SECRET_VERSIONS} versions, the most one keeps: \
                         delete it and write it anew"
                    ),
                ));
            }
            let envelope = keks
                .seal_secret(KEK_NAME, &path, version, &value)
                .map_err(|e| transit_problem(&e))?;
            if storage.secret_add_version(
                tenant,
                &path,
                meta,
                version,
                &envelope.to_bytes(),
                now,
            )? {
                written = Some(version);
                break;
            }
            existing = storage.secret(tenant, &path)?;
            if existing.as_ref().is_some_and(|r| r.tier != reached) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "tier-conflict",
                    format!("secret '{path}' was made at another tier meanwhile: write it again"),
                ));
            }
        }
        let version = written.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "write-conflict",
                format!("secret '{path}' is being written by others: try again"),
            )
        })?;
        let downgraded = reached < requested;
        let mut what = format!("version {version} at tier {reached}");
        if downgraded {
            metrics_inner.metrics.downgrade(requested, reached);
            what.push_str(&format!(" (downgraded from tier {requested})"));
        }
        Ok((
            json!({
                "path": path,
                "version": version,
                "tier": reached,
                "requested_tier": requested,
                "min_tier": meta.min_tier,
                "downgraded": downgraded,
            }),
            what,
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `GET /v1/secrets/*path`: the secret's tiers and versions (never its value).
pub(crate) async fn read(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let call = Call {
        operation: "secret.read",
        subject: format!("secret '{path}'"),
        path: path.clone(),
        audit_success: false,
    };
    let token = token_of(&headers, &caller)?;
    let data = decided(inner, caller, token, call, move |broker, tenant, _| {
        check_path(&path)?;
        let r = broker
            .storage()
            .secret(tenant, &path)?
            .ok_or_else(|| not_found(&path))?;
        let mut view = secret_view(&r);
        if let Some(f) = broker.storage().secret_fallback(tenant, &path)? {
            view["fallback"] = crate::fallback::view(&f);
        }
        Ok((view, String::new()))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}

/// What a listing asks for.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<u32>,
}

/// `GET /v1/secrets?prefix=P&limit=N`: the caller's secrets under a prefix.
pub(crate) async fn list(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let call = Call {
        operation: "secret.list",
        subject: format!("secrets under '{}'", q.prefix),
        path: q.prefix.clone(),
        audit_success: false,
    };
    let token = token_of(&headers, &caller)?;
    let data = decided(inner, caller, token, call, move |broker, tenant, _| {
        if q.prefix.len() > MAX_PATH {
            return Err(ApiError::bad_request(
                "invalid-request",
                "the prefix is too long",
            ));
        }
        let limit = q.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
        let found = broker.storage().secret_list(tenant, &q.prefix, "", limit)?;
        let secrets: Vec<Value> = found
            .iter()
            .map(|s| {
                json!({
                    "path": s.path,
                    "tier": s.tier,
                    "min_tier": s.min_tier,
                    "latest_version": s.latest_version,
                    "created_at": s.created_at,
                })
            })
            .collect();
        Ok((json!({ "secrets": secrets }), String::new()))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}

/// `DELETE /v1/secrets/*path`: the secret and every version.
pub(crate) async fn delete(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let call = Call {
        operation: "secret.delete",
        subject: format!("secret '{path}'"),
        path: path.clone(),
        audit_success: true,
    };
    let token = token_of(&headers, &caller)?;
    let data = decided(inner, caller, token, call, move |broker, tenant, _| {
        check_path(&path)?;
        if !broker.storage().secret_delete(tenant, &path)? {
            return Err(not_found(&path));
        }
        Ok((
            json!({ "path": path, "deleted": true }),
            "deleted".to_owned(),
        ))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}

/// `POST /v1/release/*path`: the secret (latest version, or `version`) encrypted to the
/// ephemeral public key `epk` (a JWK: EC P-256, P-384 or OKP X25519), with a signed receipt.
/// Refused (403 `tier-too-low`) when the requester's tier is below the secret's `min_tier`.
pub(crate) async fn release(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let epk = p.take("epk").ok_or_else(|| {
        ApiError::bad_request(
            "invalid-request",
            "missing 'epk': the public JWK (EC P-256, P-384 or OKP X25519) of a key pair made \
             for this request; the secret comes back encrypted to it",
        )
    })?;
    let recipient = keyhaven::jwe::public_key_from_jwk(&epk)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("'epk': {e}")))?;
    let version = p.uint("version")?.map(u64::from);
    let evidence = p.take("evidence");
    let accept_capability = matches!(p.take("accept_capability"), Some(Value::Bool(true)));
    let warnings = p.warnings();
    let call = Call {
        operation: "secret.release",
        subject: format!("secret '{path}'"),
        path: path.clone(),
        audit_success: true,
    };
    let signer = inner.signer.clone();
    let metrics_inner = inner.clone();
    let client = caller.clone();
    let token = token_of(&headers, &caller)?;
    let data = decided_granted(
        inner,
        caller,
        token,
        call,
        move |broker, tenant, now, via| {
            check_path(&path)?;
            let storage = broker.storage();
            let record = storage
                .secret(tenant, &path)?
                .ok_or_else(|| not_found(&path))?;
            // The JWE's key agreement first: a key nothing can be encrypted to (an X25519 point
            // of small order) is refused before anything is decrypted.
            let mut receipt_id = [0u8; 16];
            keyhaven::fill_random(&mut receipt_id).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            let receipt_id = hex::encode(receipt_id);
            let mut header = Map::new();
            header.insert("kid".into(), receipt_id.clone().into());
            header.insert("cty".into(), "keyhaven-secret".into());
            let sealing = keyhaven::jwe::prepare(&recipient, &header)
                .map_err(|e| ApiError::bad_request("invalid-request", format!("'epk': {e}")))?;
            let version = version.unwrap_or_else(|| record.latest_version());
            let thumb = thumbprint(&epk);
            let ask = Ask {
                client: &client,
                evidence: evidence.as_ref(),
                epk_thumbprint: &thumb,
                metrics: &metrics_inner.metrics,
            };
            let (assessment, explanation) =
                decide_release(broker, tenant, &ask, &record, version, now)?;
            if !explanation.allow {
                // Too low a tier, and no policy refuses outright: the owner's fallback, if the
                // requester takes one.
                let tier_met = explanation.tier_rule["met"].as_bool().unwrap_or(false);
                let policy_refuses = explanation.verdict.as_ref().is_some_and(|v| !v.allow);
                if accept_capability
                    && !tier_met
                    && !policy_refuses
                    && let Some(capability) = crate::fallback::capability(
                        broker,
                        tenant,
                        &record,
                        &client.fingerprint,
                        now,
                        via,
                    )?
                {
                    metrics_inner.metrics.release(record.tier, "capability");
                    let what = format!(
                        "a capability (token {}) instead of version {version}: requester tier {} \
                     is below min_tier {}",
                        capability["id"].as_str().unwrap_or(""),
                        assessment.tier,
                        record.min_tier
                    );
                    return Ok((
                        json!({
                            "path": path,
                            "version": version,
                            "tier": record.tier,
                            "min_tier": record.min_tier,
                            "requester_tier": assessment.tier,
                            "capability": capability,
                        }),
                        what,
                    ));
                }
                metrics_inner.metrics.release(record.tier, "denied");
                return Err(refusal(&path, &assessment, &explanation));
            }
            let jwe = seal_version(broker, tenant, &record, version, sealing)?;
            let claims = json!({
                "jti": receipt_id,
                "iss": signer.public_key().fingerprint().to_hex(),
                "sub": client.client_id,
                "tenant": tenant,
                "iat": now,
                "path": path,
                "version": version,
                "secret_tier": record.tier,
                "requester_tier": assessment.tier,
                "evidence": assessment.evidence,
                "policy": {
                    "rule": "min-tier",
                    "min_tier": record.min_tier,
                    "rego": explanation.policy,
                    "rego_sha256": explanation.policy_sha256,
                    "because": explanation.verdict.as_ref().map(|v| v.because.clone()),
                },
                "jwe_sha256": hex::encode(Sha256::digest(jwe.as_bytes())),
                "epk_thumbprint": thumbprint(&epk),
            });
            let receipt =
                keyhaven::jws::sign(signer.public_key(), RECEIPT_TYPE, &claims, &mut |m| {
                    signer.sign(m)
                })
                .map_err(|e| {
                    tracing::error!(error = %e, "the server key cannot sign a release receipt");
                    ApiError::unavailable(
                        "the server key cannot sign the receipt; nothing was released",
                    )
                })?;
            metrics_inner.metrics.release(record.tier, "released");
            Ok((
                json!({
                    "path": path,
                    "version": version,
                    "tier": record.tier,
                    "requester_tier": assessment.tier,
                    "jwe": jwe,
                    "receipt": receipt,
                }),
                // What was released, whole (the subject before it is cut short for long
                // paths), and what the evidence carried: a later compromise of a measurement
                // finds this release in the audit trail (crate::compromise).
                format!(
                    "version {version} at tier {} to a tier {} requester (receipt {receipt_id}){}",
                    record.tier,
                    assessment.tier,
                    crate::compromise::release_record(&crate::compromise::ReleaseRecord {
                        tenant: tenant.to_owned(),
                        path: path.clone(),
                        version,
                        tier: record.tier,
                        receipt: receipt_id.clone(),
                        carried: assessment.carried.clone(),
                    })
                ),
            ))
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// Decides a release of `version` of `record` to `client` acting in `tenant`: the tier rule,
/// then the release policy covering the path (see [`crate::policy`]).
struct Ask<'a> {
    client: &'a Caller,
    evidence: Option<&'a Value>,
    epk_thumbprint: &'a str,
    metrics: &'a crate::metrics::Metrics,
}

fn decide_release(
    broker: &Broker,
    tenant: &str,
    ask: &Ask<'_>,
    record: &SecretRecord,
    version: u64,
    now: u64,
) -> Result<(Assessment, Explanation), ApiError> {
    let client = ask.client;
    let rd = crate::attest::report_data(&client.fingerprint, &record.path, ask.epk_thumbprint);
    let assessment = assess(broker, ask.metrics, client, ask.evidence, &rd, now)?;
    let requester = json!({
        "client": client.client_id,
        "key": client.fingerprint,
        "tier": assessment.tier,
        "evidence": assessment.evidence,
        "via_token": tenant != client.client_id,
    });
    let explanation = explain_release(broker, tenant, record, version, &requester, now)?;
    Ok((assessment, explanation))
}

/// The tier rule and the release policy covering `record`'s path, for `requester` (what the
/// policy sees of it: its `tier` at least) asking for `version` in `tenant`.
pub(crate) fn explain_release(
    broker: &Broker,
    tenant: &str,
    record: &SecretRecord,
    version: u64,
    requester: &Value,
    now: u64,
) -> Result<Explanation, ApiError> {
    let tier = requester["tier"]
        .as_u64()
        .and_then(|t| u8::try_from(t).ok())
        .unwrap_or(0);
    let input = json!({
        "operation": "secret.release",
        "tenant": tenant,
        "path": record.path,
        "time": now,
        "requester": requester,
        "secret": {
            "path": record.path,
            "version": version,
            "tier": record.tier,
            "min_tier": record.min_tier,
        },
    });
    let policies = broker.current_policies()?;
    broker
        .policies()
        .explain(&policies, &record.path, tier, record.min_tier, &input)
        .map_err(|e| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "policy-denied",
                format!("nothing was released: {e}"),
            )
        })
}

/// Opens `version` of `record` (in `tenant`) and seals it with `sealing`: the release's JWE.
/// The plaintext lives only in between, and is wiped.
pub(crate) fn seal_version(
    broker: &Broker,
    tenant: &str,
    record: &SecretRecord,
    version: u64,
    sealing: keyhaven::jwe::Prepared,
) -> Result<String, ApiError> {
    let path = &record.path;
    let (bytes, _) = record.versions.get(&version).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("secret '{path}' has no version {version}"),
        )
    })?;
    let envelope = Envelope::from_bytes(bytes).map_err(|e| {
        tracing::error!(error = %e, "a stored secret envelope is damaged");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the stored secret is damaged; the operator's log says why",
        )
    })?;
    let plaintext = broker
        .secret_keks(tenant, record.tier)?
        .open_secret(KEK_NAME, path, version, &envelope)
        .map_err(|e| transit_problem(&e))?;
    sealing
        .seal(plaintext.expose_secret())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// The refusal of a release the tier rule or a policy denied, saying which.
fn refusal(path: &str, assessment: &Assessment, explanation: &Explanation) -> ApiError {
    let met = explanation.tier_rule["met"].as_bool().unwrap_or(false);
    if met {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "policy-denied",
            format!("secret '{path}': {}", explanation.summary()),
        )
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "tier-too-low",
            format!(
                "secret '{path}' is released at tier {} or above; this key is tier {} ({}). \
                 A key a trusted TPM certified (keyhaven client attest-key), or one in \
                 hardware an admin vouched for, reaches tier 2",
                explanation.tier_rule["min_tier"],
                assessment.tier,
                assessment.evidence["kind"].as_str().unwrap_or("")
            ),
        )
    }
}

/// `POST /v1/policy/explain-release/*path`: what a release of the secret to this caller
/// would decide, and why (the tier rule, the policy that applies, its `because` and `deny`),
/// without releasing anything.
pub(crate) async fn explain(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let version = p.uint("version")?.map(u64::from);
    let evidence = p.take("evidence");
    let thumb = p.take("epk").as_ref().map(thumbprint).unwrap_or_default();
    let warnings = p.warnings();
    let metrics_inner = inner.clone();
    let call = Call {
        operation: "secret.release",
        subject: format!("secret '{path}' (explain)"),
        path: path.clone(),
        audit_success: false,
    };
    let client = caller.clone();
    let token = token_of(&headers, &caller)?;
    let data = decided(inner, caller, token, call, move |broker, tenant, now| {
        check_path(&path)?;
        let record = broker
            .storage()
            .secret(tenant, &path)?
            .ok_or_else(|| not_found(&path))?;
        let version = version.unwrap_or_else(|| record.latest_version());
        let ask = Ask {
            client: &client,
            evidence: evidence.as_ref(),
            epk_thumbprint: &thumb,
            metrics: &metrics_inner.metrics,
        };
        let (_, explanation) = decide_release(broker, tenant, &ask, &record, version, now)?;
        let mut out = serde_json::to_value(&explanation).unwrap_or(Value::Null);
        out["summary"] = Value::String(explanation.summary());
        Ok((out, String::new()))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `POST /v1/secrets-kek/rotate`: a new KEK version for the caller's secrets at `tier`, and
/// every envelope under an older one rewrapped to it (only DEKs move: no plaintext leaves the
/// envelope layer). Safe beside writers: a version written meanwhile keeps its KEK version,
/// which still opens.
pub(crate) async fn rotate_kek(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let tier = tier_param(&mut p, "tier")?;
    let warnings = p.warnings();
    let call = Call {
        operation: "secret.rotate-kek",
        subject: "secret KEK".to_owned(),
        path: String::new(),
        audit_success: true,
    };
    let data = decided(inner, caller, None, call, move |broker, tenant, now| {
        let tier = tier.unwrap_or(broker.tier());
        let (kek_version, rewrapped) = rotate_and_rewrap(broker, tenant, tier, now)?;
        Ok((
            json!({ "tier": tier, "kek_version": kek_version, "rewrapped": rewrapped }),
            format!("tier {tier} KEK version {kek_version}, {rewrapped} envelopes rewrapped"),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// Rotates `tenant`'s KEK at `tier` and rewraps every envelope of that tier to it; returns
/// the new KEK version and how many envelopes moved.
pub(crate) fn rotate_and_rewrap(
    broker: &Broker,
    tenant: &str,
    tier: u8,
    now: u64,
) -> Result<(u32, u64), ApiError> {
    let keks = broker.secret_keks(tenant, tier)?;
    // One rotation of this KEK at a time, across every node sharing the store: a second
    // waits, then rotates again (a compare-and-swap alone would refuse it).
    let _held = broker
        .storage()
        .exclusive(&format!("secret KEK rotation {tenant} tier {tier}"))?;
    keks.ensure_key(KEK_NAME, now)
        .map_err(|e| transit_problem(&e))?;
    let version = keks
        .rotate(KEK_NAME, now)
        .map_err(|e| transit_problem(&e))?;
    let storage = broker.storage();
    let mut moved = 0u64;
    let mut after = String::new();
    loop {
        let page = storage.secret_list(tenant, "", &after, MAX_LIST)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.path.clone();
        for summary in page.iter().filter(|s| s.tier == tier) {
            let Some(record) = storage.secret(tenant, &summary.path)? else {
                continue;
            };
            for (v, (bytes, _)) in &record.versions {
                let Ok(envelope) = Envelope::from_bytes(bytes) else {
                    tracing::error!(path = %summary.path, version = v, "a stored secret envelope is damaged");
                    continue;
                };
                if let Some(new) = keks
                    .rewrap_secret(KEK_NAME, &summary.path, *v, &envelope)
                    .map_err(|e| transit_problem(&e))?
                {
                    // Only from what was read: a concurrent change wins and is left alone.
                    if storage.secret_replace(tenant, &summary.path, *v, bytes, &new.to_bytes())? {
                        moved += 1;
                    }
                }
            }
        }
    }
    Ok((version, moved))
}

/// `POST /v1/admin/keys/:fingerprint/tier` (admins): vouches that a registered key lives in
/// hardware the admin enrolled, giving it `tier` (0 to 2) for releases. Body: `tier`,
/// `reason`.
pub(crate) async fn vouch(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(fingerprint): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let tier = tier_param(&mut p, "tier")?
        .ok_or_else(|| ApiError::bad_request("invalid-request", "missing 'tier'"))?;
    if tier > MAX_VOUCHED_TIER {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!(
                "an admin vouches up to tier {MAX_VOUCHED_TIER}; tiers 3 and 4 come from \
                 attestation evidence"
            ),
        ));
    }
    let reason = p
        .string("reason")?
        .filter(|r| {
            !r.trim().is_empty() && r.chars().count() <= 200 && !r.chars().any(char::is_control)
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-request",
                "'reason' (1 to 200 characters, no control characters) says how the key was \
                 enrolled",
            )
        })?;
    let warnings = p.warnings();
    let call = Call {
        operation: "server.vouch-key",
        subject: format!("key {fingerprint}"),
        path: String::new(),
        audit_success: true,
    };
    let admin = caller.client_id.clone();
    let data = decided(inner, caller, None, call, move |broker, _, now| {
        let storage = broker.storage();
        if storage.key(&fingerprint)?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no registered key {fingerprint}"),
            ));
        }
        storage.set_key_tier(&KeyTier {
            fingerprint: fingerprint.clone(),
            tier,
            vouched_by: admin,
            reason: reason.clone(),
            at: now,
        })?;
        Ok((
            json!({ "key": fingerprint, "tier": tier }),
            format!("tier {tier}: {reason}"),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

impl Broker {
    /// Runs `f` with version `version` (default: the latest) of `tenant`'s secret at `path`,
    /// decrypted in this process, and wipes the plaintext when `f` returns: for Rust code
    /// beside the broker that must not keep the material. No tier or policy decision is made
    /// here (the caller is the broker's own process); the read is not audited by the server.
    /// Blocks (database, master key backend).
    ///
    /// # Errors
    /// 404 for no such secret or version; the envelope's and the store's errors as
    /// [`ApiError`].
    pub fn use_secret<T>(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, ApiError> {
        check_path(path)?;
        let record = self
            .storage()
            .secret(tenant, path)?
            .ok_or_else(|| not_found(path))?;
        let version = version.unwrap_or_else(|| record.latest_version());
        let (bytes, _) = record
            .versions
            .get(&version)
            .ok_or_else(|| not_found(path))?;
        let envelope = Envelope::from_bytes(bytes).map_err(|e| transit_problem(&e))?;
        let plaintext = self
            .secret_keks(tenant, record.tier)?
            .open_secret(KEK_NAME, path, version, &envelope)
            .map_err(|e| transit_problem(&e))?;
        // `plaintext` is wiped when it drops, right after `f`.
        Ok(f(plaintext.expose_secret()))
    }
}
