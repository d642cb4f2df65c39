//! `keyhaven agent`: a keyhaven home held open in memory, serving signatures on a Unix socket
//! to processes of the same user, like `ssh-agent`.
//!
//! It speaks what the server speaks (HTTP/1.1, JSON, RFC 9457 problems, the
//! [`keyhaven_client::wire`] types) on a socket in a private directory, and admits only
//! processes of its own user (the kernel's peer credentials, `SO_PEERCRED`). Every signature
//! goes through the home's [`KeyManager`], so access control, revocation, metering and audit
//! apply exactly as in-process. After `idle` without a request, or on `POST /v1/agent/lock`, it
//! drops the manager (the backends zeroize what they hold) and stops; it never writes a secret
//! anywhere.
//!
//! Routes: `GET /v1/agent` ([`keyhaven_client::wire::AgentStatus`]), `POST /v1/agent/key`
//! ([`keyhaven_client::wire::AgentKey`]: which key, which algorithm), `POST /v1/agent/sign`
//! ([`keyhaven_client::wire::AgentSign`] -> [`keyhaven_client::wire::AgentSignature`]),
//! `POST /v1/agent/lock`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64ct::{Base64, Encoding};
use http::StatusCode;
use keyhaven::{ErrorKind, KeyManager, SignInput};
use keyhaven_client::wire::{AgentKey, AgentSign, AgentSignature, AgentStatus};
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::problem::ApiError;

/// The largest request the agent reads (an Ed25519 message is sent whole; larger ones are
/// signed in-process by the CLI).
pub const AGENT_MAX_BODY: usize = 16 * 1024 * 1024;

/// The longest one signature may take (a token that hangs).
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is at the other end of a connection: the peer's user id, from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

struct AgentState {
    /// The open home; `None` once locked.
    manager: Mutex<Option<Arc<KeyManager>>>,
    /// The home's real path, as callers name it.
    home: String,
    /// The principal the home acts for.
    principal: String,
    uid: u32,
    idle: Duration,
    /// Wall-clock seconds of the last request (a suspended machine's sleep counts as idle).
    last: AtomicU64,
    /// The files whose content decides what the home allows (its configuration, its access
    /// policy), with their SHA-256 at start: a change makes the agent forget and stop, so the
    /// next command reads them afresh.
    watched: Vec<(PathBuf, Option<[u8; 32]>)>,
    stop: Notify,
}

fn digest_of(path: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    std::fs::read(path)
        .ok()
        .map(|b| sha2::Sha256::digest(&b).into())
}

impl AgentState {
    fn touch(&self) {
        self.last.store(keyhaven::unix_now(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> u64 {
        keyhaven::unix_now().saturating_sub(self.last.load(Ordering::Relaxed))
    }

    /// Refuses a caller of another home or principal, and stops when the home's configuration
    /// or access policy changed since the start.
    fn check_caller(&self, home: Option<&str>, principal: Option<&str>) -> Result<(), ApiError> {
        if let Some(h) = home
            && h != self.home
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "agent-other-home",
                format!("this agent serves {}, not {h}", self.home),
            ));
        }
        if let Some(p) = principal
            && p != self.principal
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "agent-other-principal",
                format!("this agent acts for {}, not {p}", self.principal),
            ));
        }
        if self
            .watched
            .iter()
            .any(|(path, at_start)| digest_of(path) != *at_start)
        {
            self.forget();
            return Err(ApiError::new(
                StatusCode::LOCKED,
                "agent-locked",
                "the home's configuration or access policy changed since the agent started: it \
                 forgot its keys and stops; start it again to serve the new rules",
            ));
        }
        Ok(())
    }

    /// Drops the home (and with it every unlocked backend) and asks the server to stop.
    fn forget(&self) {
        let taken = self
            .manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(taken);
        self.stop.notify_one();
    }

    fn manager(&self) -> Result<Arc<KeyManager>, ApiError> {
        self.manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::LOCKED,
                    "agent-locked",
                    "the agent has forgotten its keys (locked or idle); start it again with \
                     `keyhaven agent start`",
                )
            })
    }

    fn admit(&self, peer: Peer) -> Result<(), ApiError> {
        match peer.uid {
            Some(uid) if uid == self.uid => Ok(()),
            Some(uid) => Err(ApiError::forbidden(format!(
                "uid {uid} is not this agent's user (uid {}): an agent serves its own user only",
                self.uid
            ))),
            None => Err(ApiError::forbidden(
                "the peer's credentials cannot be read: refused",
            )),
        }
    }
}

/// Serves the agent on `listener` until it is locked, idle for `idle`, or `shutdown`
/// completes; the manager is dropped before this returns.
///
/// # Errors
/// The listener fails.
pub async fn serve_agent(
    listener: UnixListener,
    manager: KeyManager,
    idle: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let uid = keyhaven::fs::effective_uid();
    let home = std::fs::canonicalize(manager.home())?;
    let mut watched = vec![home.join("keyhaven.toml")];
    if let Some(policy) = &manager.config().access.policy {
        watched.push(if policy.is_absolute() {
            policy.clone()
        } else {
            home.join(policy)
        });
    }
    let state = Arc::new(AgentState {
        home: home.display().to_string(),
        principal: manager.caller().principal,
        manager: Mutex::new(Some(Arc::new(manager))),
        uid,
        idle,
        last: AtomicU64::new(keyhaven::unix_now()),
        watched: watched
            .into_iter()
            .map(|p| {
                let d = digest_of(&p);
                (p, d)
            })
            .collect(),
        stop: Notify::new(),
    });
    let app = Router::new()
        .route("/v1/agent", get(status))
        .route("/v1/agent/key", post(key))
        .route("/v1/agent/sign", post(sign))
        .route("/v1/agent/lock", post(lock))
        .layer(DefaultBodyLimit::max(AGENT_MAX_BODY))
        // Before any body is read: a peer of another user is refused at once.
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .with_state(state.clone());
    // The idle watch: checked every second.
    let watch = state.clone();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if watch.idle_for() >= watch.idle.as_secs().max(1) {
                watch.forget();
                return;
            }
        }
    });
    let stopping = state.clone();
    let result = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = stopping.stop.notified() => {}
                () = shutdown => {}
            }
        })
        .await;
    watcher.abort();
    state.forget();
    result
}

/// The peer check, before anything else of the request is read.
async fn admit(
    State(state): State<Arc<AgentState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.admit(peer)?;
    Ok(next.run(request).await)
}

async fn status(State(state): State<Arc<AgentState>>) -> Result<Json<AgentStatus>, ApiError> {
    let unlocked = state.manager().is_ok();
    Ok(Json(AgentStatus {
        pid: std::process::id(),
        home: state.home.clone(),
        unlocked,
        idle_timeout: state.idle.as_secs(),
        idle: state.idle_for(),
    }))
}

async fn lock(State(state): State<Arc<AgentState>>) -> Result<Json<serde_json::Value>, ApiError> {
    state.forget();
    Ok(Json(serde_json::json!({ "locked": true })))
}

async fn sign(
    State(state): State<Arc<AgentState>>,
    body: axum::body::Bytes,
) -> Result<Json<AgentSignature>, ApiError> {
    let request: AgentSign = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid-request", format!("not a sign request: {e}"))
    })?;
    let input = match (&request.message, &request.digest) {
        (Some(m), None) => Input::Message(
            Base64::decode_vec(m)
                .map_err(|_| ApiError::bad_request("invalid-request", "message is not base64"))?,
        ),
        (None, Some(d)) => {
            Input::Digest(hex::decode(d).map_err(|_| {
                ApiError::bad_request("invalid-request", "digest is not hexadecimal")
            })?)
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid-request",
                "give exactly one of message and digest",
            ));
        }
    };
    let manager = state.manager()?;
    state.touch();
    // The caller check reads the home's files: on the blocking pool, with the signature.
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || {
        st.check_caller(request.home.as_deref(), request.principal.as_deref())?;
        sign_blocking(&manager, &request, &input)
    });
    let signed = tokio::time::timeout(SIGN_TIMEOUT, job)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the signature took longer than 30 seconds (a device not answering?)",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    state.touch();
    signed.map(Json)
}

async fn key(
    State(state): State<Arc<AgentState>>,
    body: axum::body::Bytes,
) -> Result<Json<AgentKey>, ApiError> {
    let request: AgentKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("not a key request: {e}")))?;
    let manager = state.manager()?;
    state.touch();
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || {
        st.check_caller(request.home.as_deref(), request.principal.as_deref())?;
        let key = signing_key(&manager, request.key.as_deref())?;
        Ok::<_, ApiError>(AgentKey {
            home: None,
            principal: None,
            key: Some(format!("{}:{}", key.backend, key.id())),
            algorithm: Some(key.algorithm().short_name().to_owned()),
        })
    });
    let found = tokio::time::timeout(SIGN_TIMEOUT, job)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the lookup took too long",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    found.map(Json)
}

/// The key a reference names (unset: the default key), as it signs: a logical key's primary
/// version.
fn signing_key(m: &KeyManager, reference: Option<&str>) -> Result<keyhaven::ManagedKey, ApiError> {
    let key = match reference {
        Some(r) => m.resolve(r),
        None => m.default_key(),
    }
    .map_err(refusal)?;
    m.rotation().signing_target(&key).map_err(refusal)
}

enum Input {
    Message(Vec<u8>),
    Digest(Vec<u8>),
}

fn sign_blocking(
    manager: &KeyManager,
    request: &AgentSign,
    input: &Input,
) -> Result<AgentSignature, ApiError> {
    let m = manager;
    let key = signing_key(m, request.key.as_deref())?;
    let sig = match input {
        Input::Message(msg) => m.sign_input(&key, SignInput::Message(msg)),
        Input::Digest(d) => m.sign_input(&key, SignInput::Digest(d)),
    }
    .map_err(refusal)?;
    Ok(AgentSignature {
        key: format!("{}:{}", key.backend, key.id()),
        algorithm: key.algorithm().short_name().to_owned(),
        signature: Base64::encode_string(sig.as_raw()),
    })
}

/// A facade error as a problem: its kind decides the status, its message is the detail.
fn refusal(e: keyhaven::Error) -> ApiError {
    let (status, name) = match e.kind() {
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::Revoked => (StatusCode::FORBIDDEN, "key-revoked"),
        ErrorKind::InvalidInput | ErrorKind::Unsupported => {
            (StatusCode::BAD_REQUEST, "invalid-request")
        }
        ErrorKind::Locked | ErrorKind::BadPassphrase => (StatusCode::LOCKED, "key-locked"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, name, e.to_string())
}
