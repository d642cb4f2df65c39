//! RFC 9457 problem documents: every refusal says why, with a stable `type`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use keyhaven_client::wire::{PROBLEM_JSON, Problem, problem_type};

use crate::storage::StorageError;

/// A refusal or failure, answered as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The stable name (the `type` is `urn:keyhaven:problem:<name>`); also the metrics label.
    pub name: &'static str,
    /// What went wrong with this request.
    pub detail: String,
}

impl ApiError {
    /// A refusal.
    pub fn new(status: StatusCode, name: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            name,
            detail: detail.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, name, detail)
    }

    /// 401: the signature does not authenticate the request.
    pub fn unauthenticated(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, name, detail)
    }

    /// 403: authenticated, not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 503: the store is not answering.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// The title of a problem type.
    pub fn title(&self) -> &'static str {
        match self.name {
            "malformed-signature" => "The request signature is malformed",
            "missing-signature" => "The request is not signed",
            "signature-policy" => "The signature does not cover what it must",
            "stale-signature" => "The signature is not valid at this time",
            "unknown-key" => "The signing key is not registered",
            "key-not-accepted" => "The signing key is revoked or retired",
            "bad-signature" => "The signature does not verify",
            "wrong-algorithm" => "The signature algorithm is not the key's",
            "replayed-nonce" => "The nonce was used before",
            "digest-mismatch" => "The content digest does not match the body",
            "bad-challenge" => "The challenge is unknown, used or expired",
            "key-exists" => "The key is registered already",
            "bad-continuity-proof" => "The continuity proof does not verify",
            "too-large" => "The request is too large",
            "misdirected-request" => "The request was meant for another server",
            "headers-too-large" => "The request's header fields are too large",
            "rate-limited" => "Too many requests",
            "forbidden" => "Not allowed",
            "not-found" => "Not found",
            "unavailable" => "The server cannot answer now",
            "timeout" => "The request took too long",
            "agent-locked" => "The agent has forgotten its keys",
            "key-locked" => "The key needs its passphrase",
            "key-revoked" => "The key is revoked",
            "internal" => "The server failed",
            "no-broker" => "This server has no key broker",
            "undecryptable" => "The ciphertext does not decrypt under this key",
            "unsupported" => "The feature is not supported",
            _ => "The request is invalid",
        }
    }

    /// The document.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: problem_type(self.name),
            title: self.title().to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.name,
            self.detail
        )
    }
}

impl std::error::Error for ApiError {}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::KeyExists(fp) => ApiError::new(
                StatusCode::CONFLICT,
                "key-exists",
                format!("key {fp} is registered already; use it, or register another key"),
            ),
            StorageError::NotActive(detail) => {
                ApiError::new(StatusCode::CONFLICT, "bad-continuity-proof", detail)
            }
            StorageError::NoClient(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no client {id}"),
            ),
            StorageError::NoKey(fp) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("key {fp} is not one of this client's keys"),
            ),
            e @ (StorageError::Database { .. }
            | StorageError::Guard(_)
            | StorageError::Retry(_)) => {
                tracing::error!(error = %e, "the server database failed");
                ApiError::unavailable("the server's database failed; try again later")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The detail again as `errors`, an extension member where Vault clients read it.
        let body = serde_json::to_value(self.problem())
            .map(|mut v| {
                v["errors"] = serde_json::json!([self.detail]);
                v
            })
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response.extensions_mut().insert(self);
        response
    }
}
