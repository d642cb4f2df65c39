//! What a requester below a secret's `min_tier` gets instead of the secret, when the owner
//! said: a **narrower, shorter-lived capability**. The owner declares, per secret, rights that
//! never disclose a secret (encrypt to or verify with a transit key, read a secret's metadata,
//! list) and a lifetime of at most an hour; a release asked with `accept_capability` by a
//! requester whose tier is too low (and whom no policy denies outright) gets a capability
//! token of exactly those rights on the owner's resources, held by the requester's own key,
//! instead of a refusal. It is audited and counted (`outcome="capability"`).
//!
//! The token is minted in the name of the owner's key that declared the fallback, so it
//! stops working when that key is revoked or retired, as any token does (and none is given
//! once it is). A release asked through a token (another tenant's requester) gets a
//! capability that ends when that token does and is revoked with it.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use http::StatusCode;
use keyhaven_client::tokens::{self, Right};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::broker::{Broker, Call, Params, decided, vault_response};
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};
use crate::storage::{SecretFallback, SecretRecord};

/// The operations a fallback may grant: none of them returns a secret's value or a
/// plaintext.
pub const FALLBACK_OPERATIONS: &[&str] = &[
    "secret.read",
    "secret.list",
    "transit.read",
    "transit.list",
    "transit.encrypt",
    "transit.verify",
];

/// The longest a fallback capability lasts (seconds).
pub const MAX_FALLBACK_TTL: u64 = 3600;
/// How long it lasts unless the owner said (seconds).
pub const DEFAULT_FALLBACK_TTL: u64 = 300;

fn internal(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
}

fn parse_rights(stored: &str) -> Result<Vec<Right>, ApiError> {
    serde_json::from_str::<Vec<Right>>(stored).map_err(|e| {
        tracing::error!(error = %e, "a stored secret fallback does not parse");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the secret's fallback is damaged; the operator's log says why",
        )
    })
}

/// The fallback as the secret's view shows it.
pub(crate) fn view(f: &SecretFallback) -> Value {
    let rights: Value = serde_json::from_str(&f.rights).unwrap_or(Value::Null);
    json!({
        "rights": rights,
        "ttl": f.ttl,
        "declared_by": f.declared_by,
        "at": f.at,
    })
}

/// A capability instead of `record`, for the requester key `holder` acting in `tenant`
/// (through the token `via` grants, if any), if the secret has a fallback whose declaring key
/// still stands: the token, its id, expiry and rights.
///
/// # Errors
/// The store's; `internal` for a stored fallback that is not one this module writes.
pub(crate) fn capability(
    broker: &Broker,
    tenant: &str,
    record: &SecretRecord,
    holder: &str,
    now: u64,
    via: Option<&crate::tokens::Granted>,
) -> Result<Option<Value>, ApiError> {
    let storage = broker.storage();
    let Some(fallback) = storage.secret_fallback(tenant, &record.path)? else {
        return Ok(None);
    };
    // Read back as written: a row that grants more than a fallback may (planted in the
    // database) is refused, not minted.
    let rights = parse_rights(&fallback.rights)?;
    if rights
        .iter()
        .any(|r| !FALLBACK_OPERATIONS.contains(&r.operation.as_str()))
        || fallback.ttl == 0
        || fallback.ttl > MAX_FALLBACK_TTL
    {
        tracing::error!(path = %record.path, "a stored secret fallback grants more than a fallback may");
        return Err(internal(
            "the secret's fallback is damaged; the operator's log says why",
        ));
    }
    // The declaring key must still stand for the tenant: its tokens would not count.
    let standing = storage
        .key(&fallback.declared_by)?
        .filter(|k| k.client_id == tenant)
        .is_some_and(|k| k.status_at(now).accepted());
    if !standing {
        return Ok(None);
    }
    let mut expires_at = now + fallback.ttl;
    let mut parent = tokens::Parent::default();
    if let Some(g) = via {
        // A token its holder narrowed (more than one block): its narrowing (a shorter expiry,
        // fewer paths) cannot be carried into another token, so it gets no capability.
        if g.revocation_ids.len() > 1 {
            return Ok(None);
        }
        expires_at = expires_at.min(g.expires_at.unwrap_or(now));
        parent = tokens::Parent {
            ids: &g.revocation_ids,
            minter: Some(&g.minter),
        };
    }
    if expires_at <= now {
        return Ok(None);
    }
    let grant = tokens::Grant {
        tenant,
        minter: &fallback.declared_by,
        holder,
    };
    let token = broker
        .tokens()
        .mint_derived(grant, &rights, expires_at, parent)?;
    let id = tokens::inspect(&token)
        .map(|v| v.id)
        .map_err(|e| internal(e.to_string()))?;
    Ok(Some(json!({
        "token": token,
        "id": id,
        "expires_at": expires_at,
        "rights": rights,
    })))
}

/// `PUT /v1/secret-fallbacks/*path` (the owner, without a token): what a requester below the
/// secret's `min_tier` gets instead. Body: `rights` (`[{"operation", "prefix"}]`, operations
/// of [`FALLBACK_OPERATIONS`]), `ttl` (seconds, default [`DEFAULT_FALLBACK_TTL`], at most
/// [`MAX_FALLBACK_TTL`]).
pub(crate) async fn put(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let rights = crate::tokens::rights_of(p.take("rights"))?;
    if let Some(r) = rights
        .iter()
        .find(|r| !FALLBACK_OPERATIONS.contains(&r.operation.as_str()))
    {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!(
                "a fallback grants only what discloses no secret ({}), not '{}'",
                FALLBACK_OPERATIONS.join(", "),
                r.operation
            ),
        ));
    }
    let ttl = p.uint("ttl")?.map_or(DEFAULT_FALLBACK_TTL, u64::from);
    if ttl == 0 || ttl > MAX_FALLBACK_TTL {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("'ttl' is 1 to {MAX_FALLBACK_TTL} seconds: a fallback is short-lived"),
        ));
    }
    let warnings = p.warnings();
    let active = caller.status == keyhaven_client::wire::KeyStatus::Active;
    let call = Call {
        operation: "secret.fallback",
        subject: format!("secret '{path}'"),
        path: path.clone(),
        audit_success: true,
    };
    let declared_by = caller.fingerprint.clone();
    let stored = serde_json::to_string(&rights)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    // No token: a fallback mints capabilities on the owner's resources, so only the owner
    // declares one.
    let data = decided(inner, caller, None, call, move |broker, tenant, now| {
        crate::secrets::check_path(&path)?;
        if !active {
            return Err(ApiError::forbidden(
                "a fallback is declared with an active key; this one is superseded",
            ));
        }
        let fallback = SecretFallback {
            rights: stored,
            ttl,
            declared_by,
            at: now,
        };
        if !broker
            .storage()
            .set_secret_fallback(tenant, &path, Some(&fallback))?
        {
            return Err(crate::secrets::not_found(&path));
        }
        let listed: Vec<String> = rights
            .iter()
            .map(|r| format!("{} on '{}'", r.operation, r.prefix))
            .collect();
        Ok((
            json!({ "path": path, "fallback": view(&fallback) }),
            format!("below min_tier: {} for {ttl} s", listed.join(", ")),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `DELETE /v1/secret-fallbacks/*path` (the owner): a requester below `min_tier` gets
/// nothing again.
pub(crate) async fn delete(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let call = Call {
        operation: "secret.fallback",
        subject: format!("secret '{path}' (removed)"),
        path: path.clone(),
        audit_success: true,
    };
    let data = decided(inner, caller, None, call, move |broker, tenant, _| {
        crate::secrets::check_path(&path)?;
        if !broker.storage().set_secret_fallback(tenant, &path, None)? {
            return Err(crate::secrets::not_found(&path));
        }
        Ok((
            json!({ "path": path, "fallback": null }),
            "removed".to_owned(),
        ))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}
