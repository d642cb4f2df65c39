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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
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
    home: String,
    uid: u32,
    idle: Duration,
    started: Instant,
    /// Seconds since `started` of the last request.
    last: AtomicU64,
    stop: Notify,
}

impl AgentState {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_secs(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> u64 {
        self.started
            .elapsed()
            .as_secs()
            .saturating_sub(self.last.load(Ordering::Relaxed))
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
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    let state = Arc::new(AgentState {
        home: manager.home().display().to_string(),
        manager: Mutex::new(Some(Arc::new(manager))),
        uid,
        idle,
        started: Instant::now(),
        last: AtomicU64::new(0),
        stop: Notify::new(),
    });
    let app = Router::new()
        .route("/v1/agent", get(status))
        .route("/v1/agent/key", post(key))
        .route("/v1/agent/sign", post(sign))
        .route("/v1/agent/lock", post(lock))
        .layer(DefaultBodyLimit::max(AGENT_MAX_BODY))
        .with_state(state.clone());
    // The idle watch: checked every second.
    let watch = state.clone();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if watch.idle_for() >= watch.idle.as_secs() {
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

async fn status(
    State(state): State<Arc<AgentState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<AgentStatus>, ApiError> {
    state.admit(peer)?;
    let unlocked = state.manager().is_ok();
    Ok(Json(AgentStatus {
        pid: std::process::id(),
        home: state.home.clone(),
        unlocked,
        idle_timeout: state.idle.as_secs(),
        idle: state.idle_for(),
    }))
}

async fn lock(
    State(state): State<Arc<AgentState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(peer)?;
    state.forget();
    Ok(Json(serde_json::json!({ "locked": true })))
}

async fn sign(
    State(state): State<Arc<AgentState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: axum::body::Bytes,
) -> Result<Json<AgentSignature>, ApiError> {
    state.admit(peer)?;
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
    let job = tokio::task::spawn_blocking(move || sign_blocking(&manager, &request, &input));
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
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: axum::body::Bytes,
) -> Result<Json<AgentKey>, ApiError> {
    state.admit(peer)?;
    let request: AgentKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("not a key request: {e}")))?;
    let manager = state.manager()?;
    state.touch();
    let job = tokio::task::spawn_blocking(move || {
        let key = signing_key(&manager, request.key.as_deref())?;
        Ok::<_, ApiError>(AgentKey {
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
