//! The client: signs each request with its key, checks each response against the server key.

use std::sync::Arc;
use std::time::Duration;

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use keyhaven_core::{Algorithm, PublicKey, unix_now};
use keyhaven_httpsig::{
    Component, DigestAlgorithm, HttpSigError, Message, Request, Response, SignatureSpec,
    VerifyPolicy, algorithm_name, check_content_digest, content_digest, sign_with, verify,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result};
use crate::signer::RequestSigner;
use crate::wire::{
    BulkRevocation, BulkRevoked, Challenge, ClientView, PROBLEM_JSON, Problem, Registration,
    Rotation, SIGNATURE_LABEL, SelfRevocation, ServerInfo, Stats, WhoAmI,
};

/// The largest response body the client reads (an admin export of many clients fits).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How long a request signature stays valid (its `expires`).
const SIGNATURE_LIFETIME: u64 = 60;

/// A response whose signature verified: from the pinned server key, bound to the request sent.
#[derive(Debug, Clone)]
pub struct SignedResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl SignedResponse {
    /// The body as JSON of type `T`.
    ///
    /// # Errors
    /// [`ClientError::BadResponse`] if it is not.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::BadResponse(format!("the body is not the JSON expected: {e}"))
        })
    }
}

/// A client of one keyhaven server, signing as one key.
///
/// Every request carries an RFC 9421 signature (`@method`, `@target-uri`, `content-digest`
/// for a body; `created`, `expires`, a fresh `nonce`, `keyid` = the key's fingerprint, `alg`),
/// made where the key lives. Every response must carry the server key's signature covering its
/// status, its body's digest and the request's own signature (RFC 9421 section 2.4): an answer
/// that is forged, altered, or replayed from another request is refused with
/// [`ClientError::Unauthentic`] before anything reads it.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    /// Other nodes serving the same state with the same key, tried when one cannot be
    /// reached.
    fallbacks: Vec<reqwest::Url>,
    /// The node that answered last (0: `base`, then the fallbacks in order).
    preferred: Arc<std::sync::atomic::AtomicUsize>,
    signer: Arc<dyn RequestSigner>,
    server_key: PublicKey,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    timeout: Duration,
    roots: Vec<reqwest::Certificate>,
    /// A capability token sent (and signed) with every request.
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("key", &self.signer.public_key().fingerprint().to_hex())
            .field("server_key", &self.server_key.fingerprint().to_hex())
            .finish()
    }
}

fn parse_base(base: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| ClientError::InvalidInput(format!("server URL {base:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ClientError::InvalidInput(format!(
            "server URL {base:?} must be http(s)://host[:port]"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ClientError::InvalidInput(format!(
            "server URL {base:?} must not carry a query, a fragment or credentials"
        )));
    }
    Ok(url)
}

/// Certificates (PEM or DER) to trust.
fn parse_roots(roots: &[Vec<u8>]) -> Result<Vec<reqwest::Certificate>> {
    roots
        .iter()
        .map(|r| {
            if r.starts_with(b"-----BEGIN") {
                reqwest::Certificate::from_pem(r)
            } else {
                reqwest::Certificate::from_der(r)
            }
            .map_err(|e| ClientError::InvalidInput(format!("a trusted certificate: {e}")))
        })
        .collect()
}

/// A node's base URL, ending in `/`.
fn node_base(base: &str) -> Result<reqwest::Url> {
    let mut base = parse_base(base)?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

fn http_client(timeout: Duration, roots: &[reqwest::Certificate]) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    for root in roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ClientError::InvalidInput(format!("cannot build the HTTP client: {e}")))
}

/// The origin of a server URL (`https://host[:port]`, lowercase, the default port dropped):
/// what a server key is pinned under.
///
/// # Errors
/// [`ClientError::InvalidInput`] for a URL that is not `http(s)://host[:port][/path]`.
pub fn origin_of(url: &str) -> Result<String> {
    Ok(parse_base(url)?.origin().ascii_serialization())
}

/// Asks `base` who it is (`GET /v1/server`, the one unsigned answer). Trust what it says only
/// after comparing its fingerprint with the one the server's operator printed: this is how a
/// client learns the key to pin with [`Client::new`].
///
/// # Errors
/// [`ClientError::Transport`], [`ClientError::BadResponse`] (not a server key, or one whose
/// fingerprint does not match its SPKI).
pub async fn discover(base: &str) -> Result<(ServerInfo, PublicKey)> {
    discover_trusting(base, &[]).await
}

/// [`discover`] over TLS with a certificate of a server that no public authority signed (a
/// development server's self-signed one, PEM or DER) trusted besides.
///
/// # Errors
/// As [`discover`]; [`ClientError::InvalidInput`] for a certificate that does not parse.
pub async fn discover_trusting(base: &str, roots: &[Vec<u8>]) -> Result<(ServerInfo, PublicKey)> {
    let roots = parse_roots(roots)?;
    let url = parse_base(base)?;
    let target = url
        .join("v1/server")
        .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
    let http = http_client(Duration::from_secs(30), &roots)?;
    let response =
        http.get(target.clone())
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: target.to_string(),
                source,
            })?;
    let body = read_limited(response, target.as_str()).await?.1;
    let info: ServerInfo = serde_json::from_slice(&body)
        .map_err(|e| ClientError::BadResponse(format!("not a server description: {e}")))?;
    let algorithm: Algorithm = info
        .algorithm
        .parse()
        .map_err(|e| ClientError::BadResponse(format!("server key algorithm: {e}")))?;
    let spki = Base64::decode_vec(&info.public_key)
        .map_err(|e| ClientError::BadResponse(format!("server key is not base64: {e}")))?;
    let key = PublicKey::new(algorithm, spki);
    if key.fingerprint().to_hex() != info.fingerprint {
        return Err(ClientError::BadResponse(
            "the server key's fingerprint does not match its public key".into(),
        ));
    }
    Ok((info, key))
}

async fn read_limited(
    mut response: reqwest::Response,
    url: &str,
) -> Result<(reqwest::Response, Vec<u8>)> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(ClientError::BadResponse(format!(
            "the response is larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ClientError::BadResponse(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((response, body))
}

/// The headers that sign one request as keyhaven-server checks it (RFC 9421, label
/// `keyhaven`): what [`sign_request`] returns, to add to the request as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    /// `Content-Digest` (RFC 9530, SHA-256) when the request has a body.
    pub content_digest: Option<String>,
    /// `Signature-Input`.
    pub signature_input: String,
    /// `Signature`.
    pub signature: String,
}

impl RequestSignature {
    /// The headers as (name, value) pairs, in the order to send them.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(3);
        if let Some(d) = &self.content_digest {
            out.push(("Content-Digest", d.clone()));
        }
        out.push(("Signature-Input", self.signature_input.clone()));
        out.push(("Signature", self.signature.clone()));
        out
    }
}

/// Signs a request to a keyhaven server with `signer`, as [`Client`] does: covers `@method`,
/// `@target-uri`, `authorization` (when given) and `content-digest` (when `body` is not
/// empty), with `created` = `now`, `expires` 60 s later, a fresh 128-bit nonce and the key's
/// fingerprint as `keyid`. Blocks while the key signs (a token or TPM key): call it off async
/// threads. This is what HTTP libraries' auth hooks (the Python binding's) call.
///
/// # Errors
/// [`ClientError::InvalidInput`] for a method or URL that cannot be signed,
/// [`ClientError::Sign`] if the key cannot sign.
pub fn sign_request(
    signer: &dyn RequestSigner,
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<RequestSignature> {
    let (_, signature) = sign_parts(signer, method, url, authorization, body, now)?;
    Ok(signature)
}

/// [`sign_request`], also returning the signed message (to check the response against).
fn sign_parts(
    signer: &dyn RequestSigner,
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(Request, RequestSignature)> {
    let mut signed = Request::new(method, url).map_err(ClientError::Sign)?;
    let mut covered = vec!["@method", "@target-uri"];
    if let Some(value) = authorization {
        signed.push_header("Authorization", value);
        covered.push("authorization");
    }
    let content_digest = (!body.is_empty()).then(|| {
        let digest = content_digest(body, DigestAlgorithm::Sha256);
        signed.push_header("Content-Digest", &digest);
        covered.push("content-digest");
        digest
    });
    let spec = SignatureSpec::new(SIGNATURE_LABEL, &signer.public_key().fingerprint().to_hex())
        .covering(&covered)
        .map_err(ClientError::Sign)?
        .created(now)
        .expires(now + SIGNATURE_LIFETIME)
        .nonce(&fresh_nonce()?);
    let algorithm = signer.public_key().algorithm();
    let headers = sign_with(Message::Request(&signed), &spec, algorithm, &mut |base| {
        signer.sign(base)
    })
    .map_err(ClientError::Sign)?;
    signed.push_header("Signature-Input", &headers.signature_input);
    signed.push_header("Signature", &headers.signature);
    Ok((
        signed,
        RequestSignature {
            content_digest,
            signature_input: headers.signature_input,
            signature: headers.signature,
        },
    ))
}

fn fresh_nonce() -> Result<String> {
    let mut bytes = [0u8; 16];
    keyhaven_crypto::fill_random(&mut bytes)
        .map_err(|e| ClientError::Sign(HttpSigError::Sign(e)))?;
    Ok(Base64UrlUnpadded::encode_string(&bytes))
}

impl Client {
    /// A client of the server at `base` (`https://keys.example.com`, or a path prefix under
    /// it), signing as `signer`, trusting responses signed by `server_key` only.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for a base URL that is not `http(s)://host[:port][/path]`.
    pub fn new(base: &str, signer: Arc<dyn RequestSigner>, server_key: PublicKey) -> Result<Self> {
        Ok(Client {
            http: http_client(Duration::from_secs(30), &[])?,
            timeout: Duration::from_secs(30),
            roots: Vec::new(),
            base: node_base(base)?,
            fallbacks: Vec::new(),
            preferred: Arc::default(),
            signer,
            server_key,
            clock: Arc::new(unix_now),
            token: None,
        })
    }

    /// The same client presenting a capability token (`kht_...`, see [`crate::tokens`]) with
    /// every request, in `Authorization: Bearer`, covered by the request's signature: the
    /// broker then acts in the token's tenant, within its rights. The token must be held by
    /// this client's key.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for text that is not a keyhaven token.
    pub fn with_token(mut self, token: &str) -> Result<Self> {
        crate::tokens::parse(token)?;
        self.token = Some(Arc::from(token.trim()));
        Ok(self)
    }

    /// The same client reading time from `clock` (seconds since the epoch) for its
    /// signatures' `created` and for checking the server's, for tests that move time.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        self.clock = clock;
        self
    }

    /// The same client with another node of the same service (several servers on one
    /// database, one server key): a request that cannot reach a node (no connection) goes to
    /// the next, signed again for it; the node that answered is tried first from then on. A
    /// request whose connection broke after it was sent is not sent again (its outcome is
    /// unknown): that error is returned.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for a URL that is not `http(s)://host[:port][/path]`.
    pub fn with_fallback(mut self, base: &str) -> Result<Self> {
        self.fallbacks.push(node_base(base)?);
        Ok(self)
    }

    /// The same client with another request timeout (default 30 s).
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] if the HTTP client cannot be built.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        self.timeout = timeout;
        self.http = http_client(timeout, &self.roots)?;
        Ok(self)
    }

    /// The same client trusting `certificate` (PEM or DER) for TLS besides: a server whose
    /// certificate no public authority signed (`keyhaven serve --tls` in development).
    /// Responses are checked against the pinned server key whatever TLS says.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for a certificate that does not parse.
    pub fn trusting(mut self, certificate: &[u8]) -> Result<Self> {
        self.roots.extend(parse_roots(&[certificate.to_vec()])?);
        self.http = http_client(self.timeout, &self.roots)?;
        Ok(self)
    }

    /// The key this client signs with.
    pub fn public_key(&self) -> &PublicKey {
        self.signer.public_key()
    }

    /// The server key it trusts.
    pub fn server_key(&self) -> &PublicKey {
        &self.server_key
    }

    /// Whether this client presents a capability token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The fingerprint (hex) of the key that signs this client's requests.
    pub fn signer_fingerprint(&self) -> String {
        self.signer.public_key().fingerprint().to_hex()
    }

    /// Registers this client's key under `name`: asks for a challenge, then sends it with the
    /// public key in a request the key signs (its proof of possession).
    ///
    /// # Errors
    /// [`ClientError::Problem`] if the server refuses (the key is registered already: 409), or
    /// the transport and authenticity errors of every call.
    pub async fn register(&self, name: &str) -> Result<ClientView> {
        let challenge: Challenge = self.call("POST", "v1/challenge", None::<&()>).await?;
        let key = self.signer.public_key();
        let algorithm = algorithm_name(key.algorithm())
            .map(|_| key.algorithm().short_name().to_owned())
            .ok_or_else(|| {
                ClientError::InvalidInput(format!("{} keys cannot sign", key.algorithm()))
            })?;
        let registration = Registration {
            challenge: challenge.challenge,
            name: name.to_owned(),
            algorithm,
            public_key: Base64::encode_string(key.spki_der()),
        };
        self.call("POST", "v1/clients", Some(&registration)).await
    }

    /// This client, its keys and their status.
    ///
    /// # Errors
    /// As [`Client::register`]; 401 if the key is not registered, revoked or retired.
    pub async fn status(&self) -> Result<ClientView> {
        self.call("GET", "v1/clients/me", None::<&()>).await
    }

    /// What the server made of this client's signature.
    ///
    /// # Errors
    /// As [`Client::status`].
    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.call("GET", "v1/whoami", None::<&()>).await
    }

    /// Tells the server this client's key was rotated: `proofs` is keyhaven's continuity-proof
    /// chain (text, oldest first) from a registered key to the new one. Sign with the old key
    /// or the new one: the chain is the proof.
    ///
    /// # Errors
    /// As [`Client::status`]; 400 for a chain that does not verify or does not start at a key
    /// of this client.
    pub async fn rotate(&self, proofs: &str) -> Result<ClientView> {
        let body = Rotation {
            proofs: proofs.to_owned(),
        };
        self.call("POST", "v1/clients/me/rotate", Some(&body)).await
    }

    /// Revokes `fingerprint` (one of this client's keys), or the signing key when `None`.
    ///
    /// # Errors
    /// As [`Client::status`].
    pub async fn revoke(&self, fingerprint: Option<&str>, reason: &str) -> Result<ClientView> {
        let body = SelfRevocation {
            fingerprint: fingerprint.map(str::to_owned),
            reason: reason.to_owned(),
        };
        self.call("POST", "v1/clients/me/revoke", Some(&body)).await
    }

    /// Admin: the clients whose name, id or key fingerprint contains `query` (all when empty),
    /// at most `limit`.
    ///
    /// # Errors
    /// As [`Client::status`]; 403 unless this client is an admin.
    pub async fn admin_clients(&self, query: &str, limit: u32) -> Result<Vec<ClientView>> {
        let mut target = self.url("v1/admin/clients")?;
        target
            .query_pairs_mut()
            .append_pair("q", query)
            .append_pair("limit", &limit.to_string());
        let path = target.as_str().to_owned();
        self.call_url("GET", path, None::<&()>).await
    }

    /// Admin: every client and key.
    ///
    /// # Errors
    /// As [`Client::admin_clients`].
    pub async fn admin_export(&self) -> Result<Vec<ClientView>> {
        self.call("GET", "v1/admin/export", None::<&()>).await
    }

    /// Admin: revokes these keys, whoever holds them.
    ///
    /// # Errors
    /// As [`Client::admin_clients`].
    pub async fn admin_revoke(&self, fingerprints: &[String], reason: &str) -> Result<BulkRevoked> {
        let body = BulkRevocation {
            fingerprints: fingerprints.to_vec(),
            reason: reason.to_owned(),
        };
        self.call("POST", "v1/admin/revoke", Some(&body)).await
    }

    /// Admin: registration monitoring.
    ///
    /// # Errors
    /// As [`Client::admin_clients`].
    pub async fn admin_stats(&self) -> Result<Stats> {
        self.call("GET", "v1/admin/stats", None::<&()>).await
    }

    pub(crate) fn url(&self, path: &str) -> Result<reqwest::Url> {
        self.base
            .join(path)
            .map_err(|e| ClientError::InvalidInput(format!("path {path:?}: {e}")))
    }

    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let url = self.url(path)?.as_str().to_owned();
        self.call_url(method, url, body).await
    }

    async fn call_url<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        url: String,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::InvalidInput(format!("cannot encode the body: {e}")))?;
        self.send(method, &url, body).await?.json()
    }

    /// Sends one signed request to `url` (under the server's base) and returns its verified
    /// response: the way to call any endpoint, the ones this client has no method for too.
    /// A body is sent as `application/json`. A refusal becomes [`ClientError::Problem`].
    ///
    /// # Errors
    /// [`ClientError::Sign`] if the key cannot sign, [`ClientError::Transport`],
    /// [`ClientError::Unauthentic`] for an answer the server key did not sign for this
    /// request, [`ClientError::Problem`] for a signed refusal.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<SignedResponse> {
        let target = reqwest::Url::parse(url)
            .map_err(|e| ClientError::InvalidInput(format!("URL {url:?}: {e}")))?;
        let nodes: Vec<&reqwest::Url> =
            std::iter::once(&self.base).chain(&self.fallbacks).collect();
        // The part of the URL under the node it names.
        let relative = nodes
            .iter()
            .find(|b| target.origin() == b.origin() && target.path().starts_with(b.path()))
            .map(|b| {
                let mut rel = target.path()[b.path().len()..].to_owned();
                if let Some(q) = target.query() {
                    rel.push('?');
                    rel.push_str(q);
                }
                rel
            })
            .ok_or_else(|| {
                ClientError::InvalidInput(format!("{url} is not on the server {}", self.base))
            })?;
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::InvalidInput(format!("method {method:?}: {e}")))?;
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % nodes.len();
        let mut last_error = None;
        for i in 0..nodes.len() {
            let n = (first + i) % nodes.len();
            let target = nodes[n]
                .join(&relative)
                .map_err(|e| ClientError::InvalidInput(format!("path {relative:?}: {e}")))?;
            let mut request = reqwest::Request::new(method.clone(), target);
            if let Some(body) = &body {
                request.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                *request.body_mut() = Some(body.clone().into());
            }
            match self.execute(request).await {
                // Never reached the node: the next one may answer.
                Err(ClientError::Transport { url, source }) if source.is_connect() => {
                    last_error = Some(ClientError::Transport { url, source });
                }
                other => {
                    if other.is_ok() {
                        self.preferred
                            .store(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::InvalidInput("no server node".into())))
    }

    /// Signs `request` (any `reqwest` request to this server, its body given as bytes) and
    /// sends it; returns the verified response. This is how code that builds its own requests
    /// gets keyhaven's signatures without doing anything else.
    ///
    /// # Errors
    /// As [`Client::send`]; [`ClientError::InvalidInput`] for a streaming body (sign bytes).
    pub async fn execute(&self, mut request: reqwest::Request) -> Result<SignedResponse> {
        let url = request.url().as_str().to_owned();
        let body: Vec<u8> = match request.body() {
            None => Vec::new(),
            Some(b) => b
                .as_bytes()
                .ok_or_else(|| {
                    ClientError::InvalidInput("a streaming body cannot be signed".into())
                })?
                .to_vec(),
        };
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(value) = &authorization {
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value)
                    .map_err(|e| ClientError::InvalidInput(e.to_string()))?,
            );
        }
        let now = (self.clock)();
        // The key may be in a token or a TPM: sign off the async threads.
        let signer = self.signer.clone();
        let method = request.method().as_str().to_owned();
        let target = url.clone();
        let (signed, signature) = tokio::task::spawn_blocking(move || {
            sign_parts(
                signer.as_ref(),
                &method,
                &target,
                authorization.as_deref(),
                &body,
                now,
            )
        })
        .await
        .map_err(|e| ClientError::InvalidInput(format!("the signing task failed: {e}")))??;
        for (name, value) in signature.headers() {
            request.headers_mut().insert(
                name,
                http::HeaderValue::from_str(&value)
                    .map_err(|e| ClientError::InvalidInput(e.to_string()))?,
            );
        }
        let response =
            self.http
                .execute(request)
                .await
                .map_err(|source| ClientError::Transport {
                    url: url.clone(),
                    source,
                })?;
        self.check_response(signed, response, &url).await
    }

    async fn check_response(
        &self,
        request: Request,
        response: reqwest::Response,
        url: &str,
    ) -> Result<SignedResponse> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut checked = Response::new(status, Some(request));
        for name in ["signature-input", "signature", "content-digest"] {
            for value in response.headers().get_all(name) {
                let value = value.to_str().map_err(|_| {
                    ClientError::Unauthentic(HttpSigError::Malformed {
                        what: "response header",
                        reason: format!("{name} is not visible ASCII"),
                    })
                })?;
                checked.push_header(name, value);
            }
        }
        let (_, body) = read_limited(response, url).await?;
        let mut policy = VerifyPolicy::at((self.clock)())
            .require(&["@status"])
            .map_err(ClientError::Unauthentic)?
            .require_component(
                Component::new("signature")
                    .map_err(ClientError::Unauthentic)?
                    .of_request(),
            );
        // The server digests every body, an empty one too: a body cut away is a mismatch.
        policy = policy
            .require(&["content-digest"])
            .map_err(ClientError::Unauthentic)?
            .require_component(
                Component::new("signature-input")
                    .map_err(ClientError::Unauthentic)?
                    .of_request(),
            );
        let server_fp = self.server_key.fingerprint().to_hex();
        let server_key = self.server_key.clone();
        verify(
            Message::Response(&checked),
            Some(SIGNATURE_LABEL),
            &policy,
            &mut |keyid| Ok((keyid == server_fp).then(|| server_key.clone())),
        )
        .map_err(ClientError::Unauthentic)?;
        let digest = Message::Response(&checked)
            .field("content-digest")
            .unwrap_or_default();
        check_content_digest(&digest, &body).map_err(ClientError::Unauthentic)?;
        if !(200..300).contains(&status) {
            let problem = if content_type.starts_with(PROBLEM_JSON) {
                serde_json::from_slice::<Problem>(&body).ok()
            } else {
                None
            };
            if let Some(p) = problem
                .as_ref()
                .filter(|p| p.kind.ends_with(":replayed-nonce"))
            {
                // The server saw this very signature before: a copy of this request reached
                // it first (someone in between replayed it), and may have been carried out.
                return Err(ClientError::OutcomeUnknown(p.clone()));
            }
            return Err(ClientError::Problem(problem.unwrap_or_else(|| Problem {
                kind: "about:blank".into(),
                title: "HTTP error".into(),
                status,
                detail: String::from_utf8_lossy(&body).chars().take(500).collect(),
            })));
        }
        Ok(SignedResponse { status, body })
    }
}
