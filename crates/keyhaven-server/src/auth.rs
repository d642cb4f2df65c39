//! Request authentication: an RFC 9421 signature by a registered key in good standing,
//! covering what it must, fresh, with a nonce never seen before (by any node sharing the
//! store).

use std::sync::Arc;

use http::StatusCode;
use keyhaven::PublicKey;
use keyhaven_client::wire::{KeyStatus, Role, SIGNATURE_LABEL};
use keyhaven_httpsig::{
    HttpSigError, Message, Request as SignedRequest, Verified, VerifyPolicy, check_content_digest,
    verify,
};

use crate::audit::Decision;
use crate::problem::ApiError;
use crate::server::Inner;
use crate::storage::KeyRecord;

/// The longest nonce accepted (it is stored until the signature could no longer be fresh).
const MAX_NONCE: usize = 128;

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client.
    pub client_id: String,
    /// The key that signed (its fingerprint).
    pub fingerprint: String,
    /// The key's status.
    pub status: KeyStatus,
    /// The client's role.
    pub role: Role,
    /// The components the request's signature covers (`"@method"`, `"authorization"`, ...).
    pub covered: Vec<String>,
    /// The signature's nonce (unique per request with this key).
    pub nonce: Option<String>,
    /// The network address the request came from.
    pub address: Option<String>,
}

impl Caller {
    /// A decision about this caller's request: its key, address and nonce filled in.
    pub(crate) fn decision(&self, operation: &'static str, principal: String) -> Decision {
        Decision {
            operation,
            principal,
            key: Some(self.fingerprint.clone()),
            address: self.address.clone(),
            request_id: self.nonce.clone(),
            ..Decision::default()
        }
    }
}

/// The problem an RFC 9421 refusal is.
pub(crate) fn problem_of(e: &HttpSigError) -> ApiError {
    let detail = e.to_string();
    match e {
        HttpSigError::NoSignature { .. } => ApiError::unauthenticated(
            "missing-signature",
            format!(
                "{detail}: sign the request (RFC 9421) with a registered key, covering @method, \
                 @target-uri and content-digest, with created, nonce and keyid"
            ),
        ),
        HttpSigError::Malformed { .. } => ApiError::bad_request("malformed-signature", detail),
        HttpSigError::MissingComponent(_)
        | HttpSigError::NotCovered(_)
        | HttpSigError::Parameter { .. }
        | HttpSigError::UnsupportedComponent(_) => {
            ApiError::bad_request("signature-policy", detail)
        }
        HttpSigError::Stale(_) => ApiError::unauthenticated(
            "stale-signature",
            format!("{detail}; check the client's clock"),
        ),
        HttpSigError::Algorithm(_) => ApiError::bad_request("wrong-algorithm", detail),
        HttpSigError::UnknownKey(_) => ApiError::unauthenticated(
            "unknown-key",
            format!("{detail}: register the key first (POST /v1/clients)"),
        ),
        HttpSigError::BadSignature(_) => ApiError::unauthenticated("bad-signature", detail),
        HttpSigError::Digest(_) => ApiError::bad_request("digest-mismatch", detail),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail),
    }
}

/// The policy every signed request meets.
fn policy(inner: &Inner, now: u64) -> Result<VerifyPolicy, ApiError> {
    VerifyPolicy::at(now)
        .max_age(Some(inner.config.max_age))
        .skew(inner.config.skew)
        .require(&["@method"])
        .map(VerifyPolicy::require_nonce)
        .map_err(|e| problem_of(&e))
}

/// Checks what the signature must cover beyond `@method`: the target (whole, or authority,
/// path and query), and the body's digest when there is a body (which must match).
fn check_coverage(
    request: &SignedRequest,
    verified: &Verified,
    body: &[u8],
) -> Result<(), ApiError> {
    let covers = |c: &str| verified.covered.iter().any(|x| x == &format!("\"{c}\""));
    let has_query = request.target_uri().contains('?');
    let target_covered = covers("@target-uri")
        || (covers("@authority") && covers("@path") && (!has_query || covers("@query")));
    if !target_covered {
        return Err(ApiError::bad_request(
            "signature-policy",
            "the signature must cover @target-uri (or @authority, @path and @query)",
        ));
    }
    if !body.is_empty() && !covers("content-digest") {
        return Err(ApiError::bad_request(
            "signature-policy",
            "a request with a body must send Content-Digest (RFC 9530) and sign it",
        ));
    }
    // A covered digest is checked whatever the body, an empty one too.
    if covers("content-digest") {
        let field = Message::Request(request)
            .field("content-digest")
            .unwrap_or_default();
        check_content_digest(&field, body).map_err(|e| problem_of(&e))?;
    }
    Ok(())
}

/// Verifies the request's signature with the key `key_of` gives, its coverage, then uses up
/// its nonce. Runs on the blocking pool.
pub(crate) fn verify_signed(
    inner: &Inner,
    request: &SignedRequest,
    body: &[u8],
    key_of: &mut dyn FnMut(&str) -> Result<Option<PublicKey>, HttpSigError>,
) -> Result<Verified, ApiError> {
    let now = inner.now();
    let policy = policy(inner, now)?;
    let message = Message::Request(request);
    let verified = match verify(message, None, &policy, key_of) {
        // Several signatures: keyhaven's is the one labelled so.
        Err(HttpSigError::Parameter { param: "label", .. }) => {
            verify(message, Some(SIGNATURE_LABEL), &policy, key_of)
        }
        other => other,
    }
    .map_err(|e| problem_of(&e))?;
    check_coverage(request, &verified, body)?;
    if verified.created.is_some_and(|c| c < inner.started) {
        return Err(ApiError::unauthenticated(
            "stale-signature",
            "the signature was made before this server started (its replay protection starts \
             then): sign the request again",
        ));
    }
    if verified.nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE) {
        return Err(ApiError::bad_request(
            "signature-policy",
            format!("the nonce is longer than {MAX_NONCE} characters"),
        ));
    }
    let nonce = verified.nonce.clone().unwrap_or_default();
    // Kept while the signature could be fresh (its last moment is `created` + the maximum
    // age, `created` being at most the skew ahead), and computed from the signature alone, so
    // a replay at any time lands where the first use was kept.
    let created = verified.created.unwrap_or(now);
    let keep_until = created + inner.config.max_age + inner.config.skew;
    if !inner
        .storage
        .use_nonce(&verified.keyid, &nonce, keep_until)?
    {
        // The nonce is named (structured-field text: printable ASCII, bounded here) so the
        // audit trail shows which request was replayed: `keyhaven compromise scan` reports it.
        let shown: String = nonce.chars().take(64).collect();
        return Err(ApiError::unauthenticated(
            "replayed-nonce",
            format!(
                "nonce \"{shown}\" was used before with this key: sign each request with a \
                 fresh nonce"
            ),
        ));
    }
    Ok(verified)
}

/// A stored key's public key, if the record is sound: its fingerprint must be the SHA-256 of
/// its SPKI (a row whose key was swapped under another's fingerprint is not used).
pub(crate) fn record_key(r: &KeyRecord) -> Option<PublicKey> {
    let key = PublicKey::new(r.algorithm.parse().ok()?, r.spki.clone());
    if key.fingerprint().to_hex() == r.fingerprint {
        Some(key)
    } else {
        tracing::error!(key = %r.fingerprint, "a stored key does not match its fingerprint");
        None
    }
}

/// Why a check did not let a request through.
pub(crate) enum Refusal {
    /// The key is not in the store's memory: check again on the blocking pool.
    NeedsIo,
    /// Refused: the problem, and the key that signed if one was found.
    Refused(ApiError, Option<String>),
}

/// Checks a request to a route for registered keys (no audit). With `cached_only`, keys come
/// only from the store's memory and nonces must be kept in memory too: no I/O at all, so it
/// may run on the async threads; a key not in memory gives [`Refusal::NeedsIo`].
pub(crate) fn check(
    inner: &Inner,
    request: &SignedRequest,
    body: &[u8],
    cached_only: bool,
) -> Result<Caller, Refusal> {
    let mut record: Option<KeyRecord> = None;
    let mut db_error = None;
    let mut missed = false;
    let outcome = verify_signed(inner, request, body, &mut |keyid| {
        let found = if cached_only {
            let hit = inner.storage.key_if_cached(keyid);
            missed = hit.is_none();
            Ok(hit)
        } else {
            inner.storage.key(keyid)
        };
        match found {
            Ok(Some(r)) => {
                let key = record_key(&r).ok_or_else(|| HttpSigError::UnknownKey(keyid.into()))?;
                record = Some(r);
                Ok(Some(key))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                db_error = Some(e);
                Ok(None)
            }
        }
    });
    if missed {
        return Err(Refusal::NeedsIo);
    }
    let signer = record.as_ref().map(|r| r.fingerprint.clone());
    if let Some(e) = db_error {
        return Err(Refusal::Refused(e.into(), signer));
    }
    let now = inner.now();
    outcome
        .and_then(|v| {
            let r = record
                .as_ref()
                .ok_or_else(|| ApiError::unauthenticated("unknown-key", "unknown key"))?;
            let status = r.status_at(now);
            if !status.accepted() {
                return Err(ApiError::unauthenticated(
                    "key-not-accepted",
                    format!(
                        "key {} is {}: sign with an active key of this client",
                        v.keyid,
                        status.as_str()
                    ),
                ));
            }
            Ok(Caller {
                client_id: r.client_id.clone(),
                fingerprint: r.fingerprint.clone(),
                status,
                role: r.role,
                covered: v.covered.clone(),
                nonce: v.nonce.clone(),
                address: None,
            })
        })
        .map_err(|e| Refusal::Refused(e, signer))
}

/// Authenticates a request to a route for registered keys on the blocking pool; audits a
/// refusal.
pub(crate) fn authenticate(
    inner: &Arc<Inner>,
    request: &SignedRequest,
    body: &[u8],
    address: Option<&str>,
) -> Result<Caller, ApiError> {
    match check(inner, request, body, false) {
        Ok(caller) => Ok(Caller {
            address: address.map(str::to_owned),
            ..caller
        }),
        Err(Refusal::Refused(e, key)) => {
            refused(inner, "server.authenticate", key, address, &e)?;
            Err(e)
        }
        Err(Refusal::NeedsIo) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "a key lookup asked for I/O it was given",
        )),
    }
}

/// Counts and audits a refused request; the trail's own failure wins.
pub(crate) fn refused(
    inner: &Inner,
    operation: &'static str,
    key: Option<String>,
    address: Option<&str>,
    e: &ApiError,
) -> Result<(), ApiError> {
    inner.metrics.auth_failure(e.name);
    let principal = match (&key, address) {
        (Some(k), _) => format!("key:{k}"),
        (None, Some(a)) => format!("address:{a}"),
        (None, None) => "unknown".into(),
    };
    // The detail may echo what the request said: bounded, so a refusal's record stays small.
    let detail: String = e.detail.chars().take(200).collect();
    inner.decide(&Decision {
        operation,
        principal,
        key,
        allowed: false,
        reason: format!("{}: {detail}", e.name),
        address: address.map(str::to_owned),
        request_id: None,
    })
}
