//! Capability tokens in the broker (see `keyhaven_client::tokens` for the format): minted for
//! the caller's own tenant, honoured only on a request the holder's key signed, within the
//! rights of the first block and the checks of every later one, unless one of the token's
//! revocation ids is revoked in the store (which every node shares).
//!
//! The root key is Ed25519, derived (HKDF) from an agreement of the master key with its own
//! public key: it exists only in memory, every node with the master key derives the same one,
//! and a new master key makes every old token worthless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use biscuit_auth::builder::{AuthorizerBuilder, Term};
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PrivateKey};
use http::{HeaderMap, StatusCode};
use keyhaven::envelope::MasterKey;
use keyhaven_client::tokens::{self, Right};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::broker::{Call, Params, decided, vault_response};
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};
use crate::storage::{RevokedToken, Storage};

/// What the root key is derived for (HKDF info, after the envelope's own label).
const ROOT_INFO: &[u8] = b"keyhaven capability token root v1";
/// The longest lifetime a minted token may have.
pub const MAX_TTL: u64 = 30 * 86_400;
/// The lifetime of a token when the request does not say.
const DEFAULT_TTL: u64 = 3600;
/// The most rights one token carries.
const MAX_RIGHTS: usize = 32;

/// The broker's token root key.
pub struct TokenRoot {
    keys: KeyPair,
}

impl std::fmt::Debug for TokenRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRoot")
            .field("public", &self.public_hex())
            .finish()
    }
}

/// What a token allowed: the tenant to act in, and the token's family id (for the audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The tenant whose resources the request may use.
    pub tenant: String,
    /// The token's id (its first block's revocation id).
    pub token_id: String,
    /// Every block's revocation id.
    pub revocation_ids: Vec<String>,
    /// The key that minted it.
    pub minter: String,
    /// When its first block expires (seconds since the epoch).
    pub expires_at: Option<u64>,
}

fn bad_token(detail: impl Into<String>) -> ApiError {
    ApiError::unauthenticated("bad-token", detail)
}

impl TokenRoot {
    /// The root key of `master`'s broker (one agreement in its backend).
    ///
    /// # Errors
    /// The backend's error.
    pub fn derive(master: &MasterKey) -> Result<Self, keyhaven::envelope::EnvelopeError> {
        let own = master.info().public_key.clone();
        let seed = master.derive_key(&own, b"", ROOT_INFO, 32)?;
        let private = PrivateKey::from_bytes(
            seed.expose_secret(),
            biscuit_auth::builder::Algorithm::Ed25519,
        )
        .map_err(|e| {
            keyhaven::envelope::EnvelopeError::InvalidInput(format!("the token root key: {e}"))
        })?;
        Ok(TokenRoot {
            keys: KeyPair::from(&private),
        })
    }

    /// The root public key (Ed25519, hex): what checks a token offline.
    pub fn public_hex(&self) -> String {
        hex::encode(self.keys.public().to_bytes())
    }

    /// A token for `tenant`'s resources, held by the key `holder`.
    ///
    /// # Errors
    /// [`ApiError`] (`invalid-request`) for rights that cannot be.
    pub fn mint(
        &self,
        grant: tokens::Grant<'_>,
        rights: &[Right],
        expires_at: u64,
    ) -> Result<String, ApiError> {
        tokens::mint(&self.keys, grant, rights, expires_at)
            .map_err(|e| ApiError::bad_request("invalid-request", e.to_string()))
    }

    /// A token given through the token whose revocation ids are `parents`: revoking any of
    /// them revokes it too.
    ///
    /// # Errors
    /// [`ApiError`] (`internal`) when it cannot be built from rights the broker checked.
    pub fn mint_derived(
        &self,
        grant: tokens::Grant<'_>,
        rights: &[Right],
        expires_at: u64,
        parent: tokens::Parent<'_>,
    ) -> Result<String, ApiError> {
        tokens::mint_derived(&self.keys, grant, rights, expires_at, parent).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })
    }

    /// Verifies `token` (signed by this root), then authorizes `operation` on `path` for a
    /// request signed by `signer` at `now`: the holder must be the signer, a right of the
    /// first block must cover the operation and path, every check of every block must pass,
    /// and no revocation id may be revoked.
    ///
    /// # Errors
    /// 401 `bad-token` for a token that is not this broker's; 401 `token-revoked`; 403
    /// `token-holder` for a request not signed by the holder; 403 `token-scope` naming the
    /// check that refused (an expiry, a narrowed operation or path, no right).
    pub fn authorize(
        &self,
        token: &str,
        signer: &str,
        operation: &str,
        path: &str,
        now: u64,
        storage: &dyn Storage,
    ) -> Result<Granted, ApiError> {
        let unverified = tokens::parse(token).map_err(|e| bad_token(e.to_string()))?;
        let biscuit: Biscuit = unverified.verify(self.keys.public()).map_err(|_| {
            bad_token("the token is not signed by this broker's token key (or was changed)")
        })?;
        let ids: Vec<String> = biscuit
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect();
        let token_id = ids.first().cloned().unwrap_or_default();
        if let Some(r) = storage.revoked_token(&ids)? {
            return Err(ApiError::unauthenticated(
                "token-revoked",
                format!(
                    "the token (id {}) was revoked: {}",
                    r.id,
                    r.reason.chars().take(100).collect::<String>()
                ),
            ));
        }
        let mut params = HashMap::new();
        params.insert("operation".to_owned(), Term::Str(operation.to_owned()));
        params.insert("path".to_owned(), Term::Str(path.to_owned()));
        params.insert("signer".to_owned(), Term::Str(signer.to_owned()));
        params.insert("now".to_owned(), Term::Date(now));
        let mut authorizer = AuthorizerBuilder::new()
            .code_with_params(
                "operation({operation}); path({path}); signer({signer}); time({now});
                 allow if operation($op), path($p), right($op, $prefix), $p.starts_with($prefix);
                 allow if path($p), right(\"*\", $prefix), $p.starts_with($prefix);
                 deny if true;",
                params,
                HashMap::new(),
            )
            .map_err(|e| bad_token(format!("the token cannot be checked: {e}")))?
            .set_limits(AuthorizerLimits {
                max_facts: 1000,
                max_iterations: 100,
                max_time: Duration::from_millis(50),
            })
            .build(&biscuit)
            .map_err(|e| bad_token(format!("the token cannot be checked: {e}")))?;
        // The first block's facts only: later blocks cannot add a tenant, holder or right.
        let holders: Vec<(String,)> = authorizer
            .query("data($h) <- holder($h)")
            .map_err(|e| bad_token(format!("the token names no holder: {e}")))?;
        if holders.len() != 1 {
            return Err(bad_token("the token must name exactly one holder"));
        }
        if holders[0].0 != signer {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "token-holder",
                format!(
                    "the token is held by key {}; this request is signed by {signer}: sign with \
                     the holder's key",
                    holders[0].0
                ),
            ));
        }
        let tenants: Vec<(String,)> = authorizer
            .query("data($t) <- tenant($t)")
            .map_err(|e| bad_token(format!("the token names no tenant: {e}")))?;
        let [(tenant,)] = tenants.as_slice() else {
            return Err(bad_token("the token must name exactly one tenant"));
        };
        // The token lives as long as the standing of the tenant's key that minted it: revoked
        // or retired, its tokens die with it.
        let minters: Vec<(String,)> = authorizer
            .query("data($m) <- minter($m)")
            .map_err(|e| bad_token(format!("the token names no minter: {e}")))?;
        let [(minter,)] = minters.as_slice() else {
            return Err(bad_token("the token must name exactly one minter"));
        };
        // A token given through another (a release's fallback capability) dies with it.
        let parents: Vec<(String,)> = authorizer
            .query("data($p) <- parent($p)")
            .map_err(|e| bad_token(format!("the token's parents cannot be read: {e}")))?;
        if !parents.is_empty() {
            let parents: Vec<String> = parents.into_iter().map(|(p,)| p).collect();
            if let Some(r) = storage.revoked_token(&parents)? {
                return Err(ApiError::unauthenticated(
                    "token-revoked",
                    format!(
                        "the token was given through token {}, which was revoked: {}",
                        r.id,
                        r.reason.chars().take(100).collect::<String>()
                    ),
                ));
            }
        }
        let parent_minters: Vec<(String,)> = authorizer
            .query("data($m) <- parent_minter($m)")
            .map_err(|e| bad_token(format!("the token's parents cannot be read: {e}")))?;
        for (m,) in &parent_minters {
            let stands = storage.key(m)?.is_some_and(|k| k.status_at(now).accepted());
            if !stands {
                return Err(ApiError::unauthenticated(
                    "token-revoked",
                    format!(
                        "the token was given through a token minted by key {m}, which no longer \
                         stands"
                    ),
                ));
            }
        }
        let expiries: Vec<(std::time::SystemTime,)> =
            authorizer
                .query("data($e) <- expires($e)")
                .map_err(|e| bad_token(format!("the token's expiry cannot be read: {e}")))?;
        let expires_at = match expiries.as_slice() {
            [(t,)] => t
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
            _ => None,
        };
        let standing = storage
            .key(minter)?
            .filter(|k| &k.client_id == tenant)
            .map(|k| k.status_at(now));
        if !standing.is_some_and(|s| s.accepted()) {
            return Err(ApiError::unauthenticated(
                "token-revoked",
                format!(
                    "the key that minted the token ({minter}) is {}: its tokens no longer count",
                    standing.map_or("unknown", |s| s.as_str())
                ),
            ));
        }
        match authorizer.authorize() {
            Ok(_) => Ok(Granted {
                tenant: tenant.clone(),
                token_id,
                revocation_ids: ids,
                minter: minter.clone(),
                expires_at,
            }),
            Err(biscuit_auth::error::Token::FailedLogic(logic)) => {
                let why = match &logic {
                    biscuit_auth::error::Logic::Unauthorized { checks, .. }
                    | biscuit_auth::error::Logic::NoMatchingPolicy { checks }
                        if !checks.is_empty() =>
                    {
                        checks
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    }
                    _ => format!("no right of the token covers {operation} on '{path}'"),
                };
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token-scope",
                    format!("the token does not allow {operation} on '{path}': {why}"),
                ))
            }
            Err(e) => Err(bad_token(format!("the token cannot be checked: {e}"))),
        }
    }
}

/// The capability token a request carries: `Authorization: Bearer kht_...`, or Vault's
/// `X-Vault-Token: kht_...` (any other `X-Vault-Token` value is not a credential here and is
/// ignored, so Vault clients that must send one still work). The header must be covered by
/// the request's signature: a token slipped into someone else's signed request (to move their
/// writes into another tenant) is refused.
///
/// # Errors
/// 401 `bad-token` for an `Authorization` header that is not a keyhaven token, or a token
/// header the signature does not cover.
pub(crate) fn token_of(headers: &HeaderMap, caller: &Caller) -> Result<Option<String>, ApiError> {
    let covers = |name: &str| caller.covered.iter().any(|c| c == &format!("\"{name}\""));
    let uncovered = |name: &str| {
        bad_token(format!(
            "the request carries a capability token in {name} that its signature does not \
             cover: sign the {name} header with the request"
        ))
    };
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let text = v
            .to_str()
            .map_err(|_| bad_token("the Authorization header is not text"))?;
        let token = text
            .strip_prefix("Bearer ")
            .filter(|t| t.starts_with(tokens::PREFIX))
            .ok_or_else(|| {
                bad_token(format!(
                    "Authorization takes `Bearer {}...` (a keyhaven capability token)",
                    tokens::PREFIX
                ))
            })?;
        if !covers("authorization") {
            return Err(uncovered("Authorization"));
        }
        return Ok(Some(token.to_owned()));
    }
    let vault = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.starts_with(tokens::PREFIX));
    match vault {
        Some(_) if !covers("x-vault-token") => Err(uncovered("X-Vault-Token")),
        other => Ok(other.map(str::to_owned)),
    }
}

pub(crate) fn rights_of(value: Option<Value>) -> Result<Vec<Right>, ApiError> {
    let Some(Value::Array(items)) = value else {
        return Err(ApiError::bad_request(
            "invalid-request",
            "'rights' is a list of {\"operation\", \"prefix\"}",
        ));
    };
    if items.is_empty() || items.len() > MAX_RIGHTS {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("a token carries 1 to {MAX_RIGHTS} rights"),
        ));
    }
    items
        .iter()
        .map(|item| {
            let op = item["operation"].as_str().unwrap_or("");
            let prefix = item["prefix"].as_str().unwrap_or("");
            Right::new(op, prefix)
                .map_err(|e| ApiError::bad_request("invalid-request", e.to_string()))
        })
        .collect()
}

/// `POST /v1/tokens`: mints a token for the caller's own resources. Body: `holder` (a
/// registered key's fingerprint), `rights` (`[{"operation", "prefix"}]`), `ttl` (seconds,
/// default an hour, at most 30 days). A token cannot mint tokens.
pub(crate) async fn mint(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let holder = p.string("holder")?.ok_or_else(|| {
        ApiError::bad_request("invalid-request", "missing 'holder' (a key fingerprint)")
    })?;
    let rights = rights_of(p.take("rights"))?;
    let ttl = p.uint("ttl")?.map_or(DEFAULT_TTL, u64::from);
    if ttl == 0 || ttl > MAX_TTL {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("'ttl' is 1 to {MAX_TTL} seconds"),
        ));
    }
    let warnings = p.warnings();
    let call = Call {
        operation: "token.mint",
        subject: format!("token for key {holder}"),
        path: String::new(),
        audit_success: true,
    };
    if caller.status != keyhaven_client::wire::KeyStatus::Active {
        return Err(ApiError::forbidden(
            "tokens are minted with an active key; this one is superseded",
        ));
    }
    let minter = caller.fingerprint.clone();
    let data = decided(inner, caller, None, call, move |broker, tenant, now| {
        if broker.storage().key(&holder)?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no registered key {holder}: the holder registers first"),
            ));
        }
        let expires_at = now + ttl;
        let grant = tokens::Grant {
            tenant,
            minter: &minter,
            holder: &holder,
        };
        let token = broker.tokens().mint(grant, &rights, expires_at)?;
        let view = tokens::inspect(&token)
            .map_err(|e| ApiError::bad_request("invalid-request", e.to_string()))?;
        let listed: Vec<String> = rights
            .iter()
            .map(|r| format!("{} on '{}'", r.operation, r.prefix))
            .collect();
        Ok((
            json!({ "token": token, "id": view.id, "expires_at": expires_at }),
            format!(
                "token {} until {expires_at}: {}",
                view.id,
                listed.join(", ")
            ),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `POST /v1/tokens/revoke`: revokes a token of the caller's tenant. Body: `token`, and
/// `scope`: `family` (default: its first block's id, so it and every attenuation of it) or
/// `this` (its last block's id: this attenuation and what was made from it); `reason`.
/// Admins may revoke a raw `id` of any tenant.
pub(crate) async fn revoke(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let token = p.string("token")?;
    let raw_id = p.string("id")?;
    let scope = p.string("scope")?.unwrap_or_else(|| "family".to_owned());
    let reason = p.string("reason")?.unwrap_or_else(|| "revoked".to_owned());
    if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid-request",
            "'reason' is at most 200 characters, without control characters",
        ));
    }
    if scope != "family" && scope != "this" {
        return Err(ApiError::bad_request(
            "invalid-request",
            "'scope' is family or this",
        ));
    }
    let warnings = p.warnings();
    let call = Call {
        operation: "token.revoke",
        subject: "token".to_owned(),
        path: String::new(),
        audit_success: true,
    };
    let role = caller.role;
    let who = caller.client_id.clone();
    let data = decided(inner, caller, None, call, move |broker, tenant, now| {
        let (id, token_tenant) = match (&token, &raw_id) {
            (Some(t), None) => {
                let unverified = tokens::parse(t).map_err(|e| bad_token(e.to_string()))?;
                let biscuit = unverified
                    .verify(broker.tokens().keys.public())
                    .map_err(|_| bad_token("the token is not signed by this broker's token key"))?;
                let ids = biscuit.revocation_identifiers();
                let pick = if scope == "this" {
                    ids.last()
                } else {
                    ids.first()
                };
                let id = pick.map(hex::encode).unwrap_or_default();
                let mut a = AuthorizerBuilder::new()
                    .build(&biscuit)
                    .map_err(|e| bad_token(e.to_string()))?;
                let tenants: Vec<(String,)> = a
                    .query("data($t) <- tenant($t)")
                    .map_err(|e| bad_token(e.to_string()))?;
                (id, tenants.first().map(|t| t.0.clone()).unwrap_or_default())
            }
            (None, Some(id)) if role == keyhaven_client::wire::Role::Admin => {
                if id.len() > 256 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::bad_request("invalid-request", "'id' is hex"));
                }
                (id.to_ascii_lowercase(), String::new())
            }
            (None, Some(_)) => {
                return Err(ApiError::forbidden(
                    "revoking by raw id is for admins; send the token itself",
                ));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-request",
                    "send 'token' (or, as an admin, 'id')",
                ));
            }
        };
        if token.is_some() && token_tenant != tenant && role != keyhaven_client::wire::Role::Admin {
            return Err(ApiError::forbidden(
                "the token is another tenant's: only its tenant or an admin revokes it",
            ));
        }
        let fresh = broker.storage().revoke_token(&RevokedToken {
            id: id.clone(),
            tenant: token_tenant,
            revoked_by: who,
            reason: reason.clone(),
            at: now,
        })?;
        Ok((
            json!({ "id": id, "revoked": true, "already": !fresh }),
            format!("id {id}: {reason}"),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}
