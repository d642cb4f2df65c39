//! The service: configuration, shared state, the router and the one middleware every request
//! passes (limits, authentication, response signing, metrics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use keyhaven::{PublicKey, ServiceSigner, Signature, unix_now};
use keyhaven_client::wire::{KeyStatus, Role, SIGNATURE_LABEL};
use keyhaven_httpsig::{
    Component, DigestAlgorithm, Message, Request as SignedRequest, Response as SignedResponse,
    SignatureSpec, content_digest, sign_with,
};

use crate::audit::{AuditSink, Decision, NoAudit};
use crate::auth::{self, Caller};
use crate::broker;
use crate::handlers;
use crate::metrics::{Metrics, method_label};
use crate::problem::ApiError;
use crate::ratelimit::{Limiter, Rate};
use crate::secrets;
use crate::storage::Storage;

/// How the server behaves. [`ServerConfig::default`] is what `keyhaven serve` runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The scheme clients use to reach the server (`https` behind TLS), part of the
    /// `@target-uri` they sign. Ignored when [`ServerConfig::public_origin`] is set.
    pub scheme: &'static str,
    /// The origin clients sign for (`https://keys.example.com`): when set, a request whose
    /// `Host` names another authority is refused (421), so a request signed for another
    /// server (staging, say) is never taken here.
    pub public_origin: Option<String>,
    /// The largest request body (bytes).
    pub max_body_bytes: usize,
    /// The most header-field bytes a request may carry (names and values).
    pub max_header_bytes: usize,
    /// How long a request may take, body included.
    pub request_timeout: Duration,
    /// How old a signature's `created` may be (seconds).
    pub max_age: u64,
    /// How far a client's clock may be ahead (seconds).
    pub skew: u64,
    /// How long a registration challenge lasts (seconds).
    pub challenge_ttl: u64,
    /// The longest migration window a rotation may give the old key (seconds).
    pub max_migration: u64,
    /// Requests per key.
    pub per_key: Rate,
    /// Requests per client address (IPv6 addresses by /64).
    pub per_address: Rate,
    /// Requests per client address to the routes anyone may call that write or verify
    /// much (challenges, registrations, rotations).
    pub per_address_open: Rate,
    /// Accept `sample` evidence in release requests (development only: it proves nothing and
    /// never reaches tier 2).
    pub allow_sample_evidence: bool,
    /// The SEV-SNP launch measurements whose guests reach tier 2 (any other genuine SNP guest
    /// is tier 1: anyone can rent a confidential VM and run their own code in it).
    pub snp_measurements: Vec<[u8; 48]>,
    /// The TDX MRTDs whose trust domains reach tier 2 (any other genuine TD is tier 1).
    pub tdx_mr_tds: Vec<[u8; 48]>,
    /// Reference values of other TDX registers (`rtmr0`..`rtmr3`, `mr_config_id`, ...) a TD
    /// must also show to reach tier 2: MRTD measures only the virtual firmware, the kernel and
    /// its command line are in the RTMRs.
    pub tdx_registers: std::collections::BTreeMap<String, [u8; 48]>,
    /// The TPM manufacturers' CA certificates (PEM) whose endorsement keys are trusted: TPM
    /// attestation keys enroll by credential activation against them, and their quotes reach
    /// tier 2. None: TPM evidence is not accepted.
    pub tpm_ek_cas: Option<String>,
    /// PCR reference values (SHA-256 bank) a TPM quote must show.
    pub tpm_pcrs: std::collections::BTreeMap<u8, Vec<u8>>,
    /// TPM attestation keys whose certifications prove a registered key lives in a TPM
    /// (SHA-256 of their `TPM2B_PUBLIC`, hex: what `keyhaven key attest` prints as
    /// `attestation_key`). AKs enrolled by credential activation count as well.
    pub trusted_aks: Vec<String>,
    /// An admin's word alone no longer makes a key tier 2: it needs a key attestation.
    pub require_key_attestation: bool,
    /// The client whose secrets under `kbs/` are served to attested workloads over Trustee's
    /// KBS protocol (`/kbs/v0/`). None: the KBS routes answer 404.
    pub kbs_tenant: Option<String>,
    /// Web origins (`https://app.example.com`) whose pages may call this server from a
    /// browser (CORS): their preflights are answered and their responses expose the
    /// signature headers the browser SDK checks. Empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            scheme: "http",
            public_origin: None,
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            max_age: 300,
            skew: 60,
            challenge_ttl: 300,
            max_migration: 30 * 86_400,
            per_key: Rate {
                per_second: 500.0,
                burst: 1000.0,
            },
            per_address: Rate {
                per_second: 20_000.0,
                burst: 40_000.0,
            },
            per_address_open: Rate {
                per_second: 20.0,
                burst: 100.0,
            },
            allow_sample_evidence: false,
            snp_measurements: Vec::new(),
            tdx_mr_tds: Vec::new(),
            tdx_registers: std::collections::BTreeMap::new(),
            tpm_ek_cas: None,
            tpm_pcrs: std::collections::BTreeMap::new(),
            kbs_tenant: None,
            trusted_aks: Vec::new(),
            require_key_attestation: false,
            cors_origins: Vec::new(),
        }
    }
}

/// What signs the server's responses: a key of the keyhaven home, wherever it lives.
pub trait ResponseSigner: Send + Sync + 'static {
    /// The public key (its fingerprint is the responses' `keyid`).
    fn public_key(&self) -> &PublicKey;
    /// Signs `data`.
    ///
    /// # Errors
    /// The backend's error.
    fn sign(&self, data: &[u8]) -> Result<Signature, keyhaven::CoreError>;
}

impl ResponseSigner for ServiceSigner {
    fn public_key(&self) -> &PublicKey {
        ServiceSigner::public_key(self)
    }
    fn sign(&self, data: &[u8]) -> Result<Signature, keyhaven::CoreError> {
        ServiceSigner::sign(self, data)
    }
}

/// The shared state.
pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) signer: Arc<dyn ResponseSigner>,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) metrics: Metrics,
    pub(crate) per_key: Limiter,
    pub(crate) per_address: Limiter,
    pub(crate) per_address_open: Limiter,
    pub(crate) clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// When this server started: signatures created earlier are refused, so a nonce a power
    /// cut took from the store cannot be replayed after the restart.
    pub(crate) started: u64,
    /// The home's server lock, held while this server lives (embedded mode).
    pub(crate) lock: Option<Arc<keyhaven::fs::FileLock>>,
    /// The server key's reference in the home (`BACKEND:ID`), when it came from one.
    pub(crate) key_reference: Option<String>,
    /// The key broker, when a master key is set up.
    pub(crate) broker: Option<Arc<crate::broker::Broker>>,
}

impl Inner {
    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Runs `f` with the store on the blocking pool, timed in the metrics.
    pub(crate) async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Storage) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            inner.metrics.db_start();
            let t = Instant::now();
            let out = f(inner.storage.as_ref());
            inner.metrics.db_finish(t.elapsed());
            out
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    }

    /// Records a decision; a trail that cannot be written refuses the request.
    pub(crate) fn decide(&self, decision: &Decision) -> Result<(), ApiError> {
        self.audit.record(decision).map_err(|e| {
            tracing::error!(error = %e, "the audit trail cannot be written");
            ApiError::unavailable("the server's audit trail cannot be written; try again later")
        })
    }
}

/// A keyhaven server: its state, to serve with [`Server::router`] or [`crate::serve`].
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.config)
            .field(
                "server_key",
                &self.inner.signer.public_key().fingerprint().to_hex(),
            )
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server over `storage`, signing responses with `signer`, with no audit trail yet.
    pub fn new(
        config: ServerConfig,
        storage: Arc<dyn Storage>,
        signer: Arc<dyn ResponseSigner>,
    ) -> Self {
        let per_key = Limiter::new(config.per_key, 100_000);
        let per_address = Limiter::new(config.per_address, 100_000);
        let per_address_open = Limiter::new(config.per_address_open, 100_000);
        Server {
            inner: Arc::new(Inner {
                config,
                storage,
                signer,
                audit: Arc::new(NoAudit),
                metrics: Metrics::default(),
                per_key,
                per_address,
                per_address_open,
                clock: Arc::new(unix_now),
                started: unix_now(),
                lock: None,
                key_reference: None,
                broker: None,
            }),
        }
    }

    pub(crate) fn with_inner(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                config: shared.config.clone(),
                storage: shared.storage.clone(),
                signer: shared.signer.clone(),
                audit: shared.audit.clone(),
                metrics: Metrics::default(),
                per_key: Limiter::new(shared.config.per_key, 100_000),
                per_address: Limiter::new(shared.config.per_address, 100_000),
                per_address_open: Limiter::new(shared.config.per_address_open, 100_000),
                clock: shared.clock.clone(),
                started: shared.started,
                lock: shared.lock.clone(),
                key_reference: shared.key_reference.clone(),
                broker: shared.broker.clone(),
            },
        };
        inner
            .metrics
            .set_broker_tier(inner.broker.as_ref().map(|b| b.tier()));
        change(&mut inner);
        Server {
            inner: Arc::new(inner),
        }
    }

    /// The same server recording its decisions in `audit`.
    #[must_use]
    pub fn with_audit(self, audit: Arc<dyn AuditSink>) -> Self {
        self.with_inner(|i| i.audit = audit)
    }

    /// The same server reading time from `clock` (seconds since the epoch), for tests.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        self.with_inner(|i| {
            i.started = clock();
            i.clock = clock;
        })
    }

    /// The same server with a key broker (the transit routes under `/v1/transit/`).
    #[must_use]
    pub fn with_broker(self, broker: Arc<crate::broker::Broker>) -> Self {
        // On PostgreSQL, another node's change to policies or keys drops this node's cached
        // copies; if the listener cannot start, they still expire on their own
        // (`broker::POLICY_TTL`, `broker::KEK_CACHE_TTL`).
        if let Err(e) = broker.watch_store() {
            tracing::error!(error = %e.detail, "cannot watch the store for other nodes' changes");
        }
        self.with_inner(|i| {
            i.metrics.set_broker_tier(Some(broker.tier()));
            i.broker = Some(broker);
        })
    }

    /// The key broker, if this server has one.
    pub fn broker(&self) -> Option<&Arc<crate::broker::Broker>> {
        self.inner.broker.as_ref()
    }

    /// The server key's reference in its home (`BACKEND:ID`), for a server made from one.
    pub fn key_reference(&self) -> Option<&str> {
        self.inner.key_reference.as_deref()
    }

    /// The key that signs the responses.
    pub fn public_key(&self) -> &PublicKey {
        self.inner.signer.public_key()
    }

    /// The metrics in Prometheus text format (what `/metrics` serves).
    pub fn metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// The router: every route behind the middleware that limits, authenticates, signs and
    /// counts.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(handlers::healthz))
            .route("/readyz", get(handlers::readyz))
            .route("/metrics", get(handlers::metrics))
            .route("/v1/server", get(handlers::server_info))
            .route("/v1/challenge", post(handlers::challenge))
            .route("/v1/clients", post(handlers::register))
            .route("/v1/whoami", get(handlers::whoami))
            .route("/v1/clients/me", get(handlers::me))
            .route("/v1/clients/me/rotate", post(handlers::rotate))
            .route("/v1/clients/me/revoke", post(handlers::revoke))
            .route(
                "/v1/clients/me/key-attestation",
                post(crate::enroll::key_attestation),
            )
            .route("/v1/admin/clients", get(handlers::admin_clients))
            .route("/v1/admin/export", get(handlers::admin_export))
            .route("/v1/admin/revoke", post(handlers::admin_revoke))
            .route("/v1/admin/stats", get(handlers::admin_stats))
            .route(
                "/v1/transit/keys/{name}",
                post(broker::create).put(broker::create).get(broker::read),
            )
            .route("/v1/transit/keys", any(broker::list))
            .route(
                "/v1/transit/keys/{name}/rotate",
                post(broker::rotate).put(broker::rotate),
            )
            .route(
                "/v1/transit/keys/{name}/config",
                post(broker::config).put(broker::config),
            )
            .route(
                "/v1/transit/encrypt/{name}",
                post(broker::encrypt).put(broker::encrypt),
            )
            .route(
                "/v1/transit/decrypt/{name}",
                post(broker::decrypt).put(broker::decrypt),
            )
            .route(
                "/v1/transit/rewrap/{name}",
                post(broker::rewrap).put(broker::rewrap),
            )
            .route(
                "/v1/transit/datakey/{kind}/{name}",
                post(broker::datakey).put(broker::datakey),
            )
            .route(
                "/v1/transit/sign/{name}",
                post(broker::sign).put(broker::sign),
            )
            .route(
                "/v1/transit/sign/{name}/{hash}",
                post(broker::sign).put(broker::sign),
            )
            .route(
                "/v1/transit/verify/{name}",
                post(broker::verify).put(broker::verify),
            )
            .route(
                "/v1/transit/verify/{name}/{hash}",
                post(broker::verify).put(broker::verify),
            )
            .route("/v1/secrets", get(secrets::list))
            .route(
                "/v1/secrets/{*path}",
                put(secrets::put)
                    .post(secrets::put)
                    .get(secrets::read)
                    .delete(secrets::delete),
            )
            .route("/v1/release/{*path}", post(secrets::release))
            .route("/v1/secrets-kek/rotate", post(secrets::rotate_kek))
            .route(
                "/v1/secret-fallbacks/{*path}",
                put(crate::fallback::put)
                    .post(crate::fallback::put)
                    .delete(crate::fallback::delete),
            )
            .route("/v1/admin/keys/{fingerprint}/tier", post(secrets::vouch))
            .route(
                "/v1/admin/attestation/revocations",
                get(crate::compromise::list).post(crate::compromise::revoke),
            )
            .route(
                "/v1/admin/attestation/affected",
                post(crate::compromise::query),
            )
            .route(
                "/v1/attestation/tpm/challenge",
                post(crate::enroll::challenge),
            )
            .route(
                "/v1/attestation/tpm/activate",
                post(crate::enroll::activate),
            )
            .route(
                "/v1/admin/policies",
                put(crate::policy::put)
                    .get(crate::policy::list)
                    .delete(crate::policy::delete),
            )
            .route("/v1/policy/explain-release/{*path}", post(secrets::explain))
            .route("/kbs/v0/auth", post(crate::kbs::auth))
            .route("/kbs/v0/attest", post(crate::kbs::attest))
            .route(
                "/kbs/v0/resource/{repository}/{kind}/{tag}",
                get(crate::kbs::resource),
            )
            .route("/v1/tokens", post(crate::tokens::mint))
            .route("/v1/tokens/revoke", post(crate::tokens::revoke))
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                pipeline,
            ))
            // Outside the pipeline: a preflight carries no signature and is answered here;
            // the CORS headers of an answer are not part of what the server signs.
            .layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                cors,
            ))
            .with_state(self.inner.clone())
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone (the response is signed all the same).
    Open,
    /// Anyone, but it writes: limited per address more tightly.
    Costly,
    /// A registration or a rotation: the handler checks the signature with the key the body
    /// brings (the key registered; a rotation's new key, or a registered key of the client).
    SelfProving,
    /// A registered key in good standing.
    Client,
    /// A registered key of an admin.
    Admin,
}

/// The route's metrics label and who may call it.
fn classify(path: &str) -> (&'static str, Access) {
    match path {
        "/healthz" => ("healthz", Access::Open),
        "/readyz" => ("readyz", Access::Open),
        "/metrics" => ("metrics", Access::Open),
        "/v1/server" => ("server", Access::Open),
        "/v1/challenge" => ("challenge", Access::Costly),
        "/v1/clients" => ("register", Access::SelfProving),
        "/v1/whoami" => ("whoami", Access::Client),
        "/v1/clients/me" => ("me", Access::Client),
        "/v1/clients/me/rotate" => ("rotate", Access::SelfProving),
        "/v1/clients/me/revoke" => ("revoke", Access::Client),
        "/v1/clients/me/key-attestation" => ("key_attestation", Access::Client),
        "/v1/admin/clients" => ("admin_clients", Access::Admin),
        "/v1/admin/export" => ("admin_export", Access::Admin),
        "/v1/admin/revoke" => ("admin_revoke", Access::Admin),
        "/v1/admin/stats" => ("admin_stats", Access::Admin),
        p if p.starts_with("/v1/transit/") => ("transit", Access::Client),
        p if p == "/v1/secrets" || p.starts_with("/v1/secrets/") => ("secrets", Access::Client),
        p if p.starts_with("/v1/release/") => ("release", Access::Client),
        "/v1/secrets-kek/rotate" => ("secrets_kek", Access::Client),
        p if p.starts_with("/v1/secret-fallbacks/") => ("secret_fallbacks", Access::Client),
        "/v1/tokens" => ("tokens", Access::Client),
        "/v1/tokens/revoke" => ("tokens_revoke", Access::Client),
        p if p.starts_with("/v1/admin/keys/") => ("admin_keys", Access::Admin),
        "/v1/attestation/tpm/challenge" | "/v1/attestation/tpm/activate" => {
            ("tpm_enroll", Access::Client)
        }
        "/v1/admin/attestation/revocations" | "/v1/admin/attestation/affected" => {
            ("admin_attestation", Access::Admin)
        }
        "/v1/admin/policies" => ("admin_policies", Access::Admin),
        "/kbs/v0/auth" => ("kbs_auth", Access::Costly),
        "/kbs/v0/attest" => ("kbs_attest", Access::Costly),
        p if p.starts_with("/kbs/v0/resource/") => ("kbs_resource", Access::Costly),
        p if p.starts_with("/v1/policy/explain-release/") => ("explain", Access::Client),
        _ => ("other", Access::Open),
    }
}

/// The request as signed: what handlers that check signatures themselves need.
#[derive(Clone)]
pub(crate) struct Signed(pub(crate) Arc<SignedRequest>);

/// The request body, read once, within the limit.
#[derive(Clone)]
pub(crate) struct RawBody(pub(crate) Bytes);

/// The request as RFC 9421 sees it: method, target URI (scheme, `Host`, path and query) and
/// every header field that is visible ASCII.
fn signed_view(
    config: &ServerConfig,
    parts: &http::request::Parts,
) -> Result<SignedRequest, ApiError> {
    let authority = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .ok_or_else(|| ApiError::bad_request("invalid-request", "the request has no Host"))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let target = match &config.public_origin {
        Some(origin) => {
            let ours = origin
                .split_once("://")
                .map_or(origin.as_str(), |(_, a)| a)
                .trim_end_matches('/');
            if !authority.eq_ignore_ascii_case(ours) {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "misdirected-request",
                    format!("this server answers for {origin}, not for {authority}"),
                ));
            }
            format!("{}{path}", origin.trim_end_matches('/'))
        }
        None => format!("{}://{authority}{path}", config.scheme),
    };
    let mut request = SignedRequest::new(parts.method.as_str(), &target).map_err(|e| {
        ApiError::bad_request("invalid-request", format!("the request target: {e}"))
    })?;
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            request.push_header(name.as_str(), v);
        }
    }
    Ok(request)
}

/// The request headers a browser may send cross-origin: the RFC 9421 and RFC 9530 fields, a
/// capability token, JSON.
const CORS_REQUEST_HEADERS: &str =
    "content-type, content-digest, signature, signature-input, authorization";
/// The response headers a page may read: what checks the server's signature.
const CORS_EXPOSED_HEADERS: &str = "signature, signature-input, content-digest";

/// CORS for the configured origins only: a preflight from one is answered (204) without
/// reaching the pipeline; another request from one gets `Access-Control-Allow-Origin` and the
/// signature headers exposed. Requests from any other origin pass untouched (the browser then
/// withholds the answer from the page).
async fn cors(State(inner): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    if inner.config.cors_origins.is_empty() {
        return next.run(request).await;
    }
    let origin = request
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| inner.config.cors_origins.iter().any(|c| c == o))
        .map(str::to_owned);
    // Answers differ by Origin whenever CORS is on: caches must keep them apart.
    let vary = |mut r: Response| {
        r.headers_mut()
            .append(http::header::VARY, HeaderValue::from_static("origin"));
        r
    };
    let Some(allow) = origin.and_then(|o| HeaderValue::from_str(&o).ok()) else {
        return vary(next.run(request).await);
    };
    let preflight = request.method() == http::Method::OPTIONS
        && request
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE"),
        );
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_REQUEST_HEADERS),
        );
        h.insert(
            http::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        let mut r = next.run(request).await;
        r.headers_mut().insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSED_HEADERS),
        );
        r
    };
    response
        .headers_mut()
        .insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    vary(response)
}

async fn pipeline(State(inner): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    inner.metrics.start();
    let (route, access) = classify(request.uri().path());
    let method = method_label(request.method());
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let timeout = inner.config.request_timeout;
    let (signed, response) =
        match tokio::time::timeout(timeout, handle(&inner, request, access, address, next)).await {
            Ok(out) => out,
            Err(_) => (
                None,
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!("the request took longer than {} s", timeout.as_secs()),
                )
                .into_response(),
            ),
        };
    let response = sign_response(&inner, signed, response).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    inner.metrics.finish(route, method, status, elapsed);
    // One structured line per request: bounded fields only (never a key, a path or a body).
    let problem = response.extensions().get::<ApiError>().map(|e| e.name);
    if status >= 400 {
        tracing::info!(
            route,
            method,
            status,
            problem,
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request refused"
        );
    } else {
        tracing::debug!(
            route,
            method,
            status,
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
    response
}

/// Limits, reads, authenticates and runs one request; returns it as signed (when it could
/// be read) with the handler's answer.
async fn handle(
    inner: &Arc<Inner>,
    request: Request,
    access: Access,
    address: Option<std::net::IpAddr>,
    next: Next,
) -> (Option<Arc<SignedRequest>>, Response) {
    if let Some(ip) = address {
        let who = address_bucket(ip);
        let now = Instant::now();
        let costly = matches!(access, Access::Costly | Access::SelfProving);
        if !inner.per_address.allow(&who, now)
            || (costly && !inner.per_address_open.allow(&who, now))
        {
            inner.metrics.rate_limited();
            return (None, rate_limited("this address"));
        }
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > inner.config.max_header_bytes {
        return (
            None,
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                format!(
                    "the header fields are {header_bytes} bytes; at most {} are read",
                    inner.config.max_header_bytes
                ),
            )
            .into_response(),
        );
    }
    let (parts, body) = request.into_parts();
    let signed = match signed_view(&inner.config, &parts) {
        Ok(s) => Arc::new(s),
        Err(e) => return (None, e.into_response()),
    };
    let max = inner.config.max_body_bytes;
    if parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return (Some(signed), too_large(max));
    }
    let body = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return (Some(signed), too_large(max));
        }
        Err(e) => {
            return (
                Some(signed),
                ApiError::bad_request("invalid-request", format!("the body cannot be read: {e}"))
                    .into_response(),
            );
        }
    };
    let caller = match access {
        Access::Open | Access::Costly | Access::SelfProving => None,
        Access::Client | Access::Admin => {
            match authenticate_request(inner, &signed, &body, address).await {
                Ok(caller) => Some(caller),
                Err(e) => return (Some(signed), e.into_response()),
            }
        }
    };
    if let Some(caller) = &caller {
        if access == Access::Admin && caller.role != Role::Admin {
            return (
                Some(signed),
                ApiError::forbidden("this route is for admins; your key is a client's")
                    .into_response(),
            );
        }
        if access == Access::Admin && caller.status != KeyStatus::Active {
            return (
                Some(signed),
                ApiError::forbidden(
                    "admin routes take an active admin key; this one is superseded (rotating)",
                )
                .into_response(),
            );
        }
        if !inner.per_key.allow(&caller.fingerprint, Instant::now()) {
            inner.metrics.rate_limited();
            return (Some(signed), rate_limited("this key"));
        }
    }
    let mut request = Request::from_parts(parts, Body::from(body.clone()));
    request.extensions_mut().insert(Signed(signed.clone()));
    request.extensions_mut().insert(RawBody(body));
    if let Some(caller) = caller {
        request.extensions_mut().insert::<Caller>(caller);
    }
    (Some(signed), next.run(request).await)
}

/// Authenticates on the async threads when the store answers from memory (a key it holds,
/// nonces it keeps): the check is then pure computation. Otherwise, and to audit a refusal,
/// on the blocking pool.
async fn authenticate_request(
    inner: &Arc<Inner>,
    signed: &Arc<SignedRequest>,
    body: &Bytes,
    address: Option<std::net::IpAddr>,
) -> Result<Caller, ApiError> {
    let address = address.map(|a| a.to_string());
    if inner.storage.nonces_in_memory() {
        match auth::check(inner, signed, body, true) {
            Ok(caller) => return Ok(auth::Caller { address, ..caller }),
            Err(auth::Refusal::Refused(e, key)) => {
                let i = inner.clone();
                return tokio::task::spawn_blocking(move || {
                    auth::refused(&i, "server.authenticate", key, address.as_deref(), &e)?;
                    Err(e)
                })
                .await
                .unwrap_or_else(|e| Err(internal(&e)));
            }
            Err(auth::Refusal::NeedsIo) => {}
        }
    }
    let (i, s, b) = (inner.clone(), signed.clone(), body.clone());
    tokio::task::spawn_blocking(move || auth::authenticate(&i, &s, &b, address.as_deref()))
        .await
        .unwrap_or_else(|e| Err(internal(&e)))
}

fn internal(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// The rate-limit bucket of an address: an IPv4 address, or an IPv6 /64 (one host has a
/// whole /64 to pick from).
fn address_bucket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn too_large(max: usize) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("the body is larger than {max} bytes"),
    )
    .into_response()
}

fn rate_limited(what: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("too many requests from {what}; slow down and retry"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Signs `response` with the server key (RFC 9421): its status, its body's digest, and, bound
/// to the request it answers, the request's method, target URI and signature.
async fn sign_response(
    inner: &Arc<Inner>,
    request: Option<Arc<SignedRequest>>,
    response: Response,
) -> Response {
    let (mut parts, body) = response.into_parts();
    // Our own bodies: small and already in memory.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "a response body could not be read");
            Bytes::new()
        }
    };
    // Every answer carries its body's digest, an empty one too: a body cut away in transit is
    // then a digest mismatch.
    let digest = content_digest(&body, DigestAlgorithm::Sha256);
    if let Ok(v) = HeaderValue::from_str(&digest) {
        parts.headers.insert("content-digest", v);
    }
    let now = inner.now();
    let status = parts.status.as_u16();
    let digest = parts
        .headers
        .get("content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let signer = inner.signer.clone();
    let signed = tokio::task::spawn_blocking(move || {
        let mut message = SignedResponse::new(status, request.as_deref().cloned());
        let mut spec =
            SignatureSpec::new(SIGNATURE_LABEL, &signer.public_key().fingerprint().to_hex())
                .created(now);
        spec = spec.cover(Component::new("@status")?);
        if let Some(d) = &digest {
            message.push_header("content-digest", d);
            spec = spec.cover(Component::new("content-digest")?);
        }
        if let Some(r) = &request {
            spec = spec
                .cover(Component::new("@method")?.of_request())
                .cover(Component::new("@target-uri")?.of_request());
            if Message::Request(r).field("signature").is_some() {
                spec = spec
                    .cover(Component::new("signature-input")?.of_request())
                    .cover(Component::new("signature")?.of_request());
            }
        }
        let algorithm = signer.public_key().algorithm();
        sign_with(Message::Response(&message), &spec, algorithm, &mut |base| {
            signer.sign(base)
        })
    })
    .await;
    match signed {
        Ok(Ok(headers)) => {
            for (name, value) in [
                ("signature-input", headers.signature_input),
                ("signature", headers.signature),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    parts.headers.insert(name, v);
                }
            }
            Response::from_parts(parts, Body::from(body))
        }
        other => {
            let reason = match other {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(_)) => String::new(),
            };
            tracing::error!(error = %reason, "the server key cannot sign a response");
            // An unsigned answer would be refused by every client: say why instead.
            let mut r = ApiError::unavailable(
                "the server key cannot sign responses now; the operator must check its backend",
            )
            .into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}
