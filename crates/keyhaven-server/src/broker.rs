//! The key broker's transit engine over HTTP, in HashiCorp Vault's transit shape: the same
//! paths under `/v1/transit/`, the same request and response JSON, `vault:vN:` ciphertexts, so
//! a Vault client works unchanged, once its requests carry an RFC 9421 signature by a
//! registered key (keyhaven's authentication; the `X-Vault-Token` header is not a credential
//! here and is ignored).
//!
//! Each registered client is a tenant: its transit keys are its own, and a KEK (one per key
//! version) is scoped to the tenant, the key and the broker's tier, so a ciphertext of one
//! tenant, key or tier never decrypts under another. KEKs are stored wrapped under the master
//! key; unwrapping one is an agreement inside the master key's backend (a PKCS#11 token, a
//! TPM, or the encrypted store), cached in memory for [`KEK_CACHE_TTL`].
//!
//! Covered: `keys/:name` (create, read), `keys` (list), `keys/:name/rotate`,
//! `keys/:name/config` (`min_decryption_version`), `encrypt/:name`, `decrypt/:name`,
//! `rewrap/:name` (each with `batch_input`), `datakey/plaintext|wrapped/:name`, and
//! `sign/:name[/:hash]`, `verify/:name[/:hash]` (with `batch_input`) for key types `ed25519`,
//! `ecdsa-p256` and `ecdsa-p384` (a signing key is derived from each version's KEK, so it is as
//! wrapped as the KEK is; hashes `sha2-256`, `sha2-384`, `sha2-512`; `asn1` or `jws`
//! marshaling; `prehashed`). Not covered: derived and convergent keys, RSA, HMAC and
//! ChaCha20 keys, export, backup, delete, hmac, random, hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use http::{HeaderMap, Method, StatusCode, header};
use keyhaven::envelope::transit::{SignInput, Transit, TransitKeyType, check_key_name};
use keyhaven::envelope::{EnvelopeError, MasterKey};
use keyhaven::zeroize::Zeroizing;
use keyhaven::{ErrorKind, Protection};
use serde_json::{Map, Value, json};

use crate::audit::Decision;
use crate::auth::Caller;
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};
use crate::storage::{Change, PolicyRecord, Storage, TenantTransit, Watcher};
use crate::tokens::{TokenRoot, token_of};

/// How long an unwrapped KEK stays in memory after its unwrap.
pub const KEK_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long release policies read from the store are used without reading them again (a
/// change on any node drops them sooner, through the store's watch).
pub const POLICY_TTL: Duration = Duration::from_secs(30);
/// The most items one `batch_input` may carry.
const MAX_BATCH: usize = 1000;
/// The most tenants whose engines are kept at once (beyond, all are dropped and rebuilt).
const MAX_ENGINES: usize = 10_000;

type Engine = Transit<TenantTransit>;

/// Engines by partition and tier, with when each was made.
type Engines = HashMap<(String, u8), (Arc<Engine>, Instant)>;

/// The key broker: the master key and one transit engine per tenant.
pub struct Broker {
    master: Arc<MasterKey>,
    tier: u8,
    storage: Arc<dyn Storage>,
    engines: Mutex<Engines>,
    tokens: TokenRoot,
    policies: crate::policy::PolicyCache,
    /// The release policies as last read, and when: dropped when a node changes them (the
    /// store's watch), and read again after [`POLICY_TTL`] whatever happens.
    loaded_policies: Mutex<Option<(Arc<Vec<PolicyRecord>>, Instant)>>,
    /// Counts the times the policies were dropped: a read that a drop overtook is not kept.
    policy_generation: std::sync::atomic::AtomicU64,
    attestation: crate::attest::Attestation,
    tpm: Option<Arc<crate::attest::TpmVerifier>>,
    kbs: Option<crate::kbs::Kbs>,
    /// TPM attestation keys the operator pinned (SHA-256 of their `TPM2B_PUBLIC`, hex).
    trusted_aks: Vec<String>,
    /// Whether an admin's word alone no longer makes a key tier 2 (it needs key attestation).
    require_key_attestation: bool,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("master", &self.master.info().id)
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker whose KEKs are wrapped under `master`, kept in `storage`. Its tier is the
    /// master key's protection: 2 (secure) for a key in hardware, 1 (encrypted) for a software
    /// key encrypted at rest.
    ///
    /// Blocks: one agreement in the master key's backend derives the token root key.
    ///
    /// # Errors
    /// [`ApiError`] (`invalid-request`) for a master key stored in plain text;
    /// (`unavailable`) when its backend cannot make the agreement.
    pub fn new(master: MasterKey, storage: Arc<dyn Storage>) -> Result<Self, ApiError> {
        let tier = match master.info().protection {
            Protection::Hardware => 2,
            Protection::SoftwareEncrypted => 1,
            other => {
                return Err(ApiError::bad_request(
                    "invalid-request",
                    format!(
                        "the master key {} is {other}: keep it in hardware or an encrypted store",
                        master.info().id
                    ),
                ));
            }
        };
        let tokens = TokenRoot::derive(&master).map_err(|e| {
            tracing::error!(error = %e, "the master key cannot derive the token root key");
            ApiError::unavailable("the master key cannot derive the capability token key")
        })?;
        Ok(Broker {
            master: Arc::new(master),
            tier,
            storage,
            engines: Mutex::new(HashMap::new()),
            tokens,
            policies: crate::policy::PolicyCache::default(),
            loaded_policies: Mutex::new(None),
            policy_generation: std::sync::atomic::AtomicU64::new(0),
            attestation: crate::attest::Attestation::default(),
            tpm: None,
            kbs: None,
            trusted_aks: Vec::new(),
            require_key_attestation: false,
        })
    }

    /// Has the store tell this broker when another node changes what it caches (PostgreSQL
    /// `LISTEN`/`NOTIFY`; nothing to do for the embedded store). Watches until the broker is
    /// dropped. [`crate::Server::with_broker`] calls it.
    ///
    /// # Errors
    /// The store's, when its listener cannot start.
    pub fn watch_store(self: &Arc<Self>) -> Result<(), ApiError> {
        let this: Arc<dyn Watcher> = Arc::clone(self) as Arc<dyn Watcher>;
        self.storage.watch(Arc::downgrade(&this))?;
        Ok(())
    }

    /// The release policies, from memory when read within [`POLICY_TTL`] and unchanged since.
    ///
    /// # Errors
    /// The store's.
    pub(crate) fn current_policies(&self) -> Result<Arc<Vec<PolicyRecord>>, ApiError> {
        if let Some((p, at)) = &*self
            .loaded_policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < POLICY_TTL
        {
            return Ok(Arc::clone(p));
        }
        use std::sync::atomic::Ordering;
        let generation = self.policy_generation.load(Ordering::SeqCst);
        let read = Arc::new(self.storage.policies()?);
        let mut loaded = self
            .loaded_policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A change told while this read ran may not be in it: use it once, keep nothing.
        if self.policy_generation.load(Ordering::SeqCst) == generation {
            *loaded = Some((Arc::clone(&read), Instant::now()));
        }
        Ok(read)
    }

    /// Forgets the release policies read (after this node or another changed them).
    pub(crate) fn forget_policies(&self) {
        let mut loaded = self
            .loaded_policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.policy_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *loaded = None;
    }

    /// The tier this broker's KEKs are scoped to.
    pub fn tier(&self) -> u8 {
        self.tier
    }

    /// The transit engine of `tenant` (a client id, for the HTTP routes), for callers in the
    /// same process; its cache of unwrapped KEKs lasts [`KEK_CACHE_TTL`]. Blocks (database and
    /// backend calls): call it off the async threads.
    ///
    /// # Errors
    /// [`ApiError`] (`invalid-request`) for a tenant that cannot be one.
    pub fn transit(&self, tenant: &str) -> Result<Arc<Transit<TenantTransit>>, ApiError> {
        self.engine(tenant, self.tier)
    }

    /// The engine whose key `kek` holds `tenant`'s secret KEKs at `tier` (one KEK per tenant
    /// and tier, versioned; its rows are the tenant's `~secrets~tN` partition, which no client
    /// id can name). Blocks, like [`Broker::transit`].
    ///
    /// # Errors
    /// [`ApiError`] (`tier-unavailable`) for a tier above the broker's own.
    pub fn secret_keks(
        &self,
        tenant: &str,
        tier: u8,
    ) -> Result<Arc<Transit<TenantTransit>>, ApiError> {
        if tier > self.tier {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tier-unavailable",
                format!(
                    "this broker's master key reaches tier {}, not {tier}",
                    self.tier
                ),
            ));
        }
        self.engine(&format!("{tenant}~secrets~t{tier}"), tier)
    }

    fn engine(&self, tenant: &str, tier: u8) -> Result<Arc<Engine>, ApiError> {
        let key = (tenant.to_owned(), tier);
        let mut engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((engine, since)) = engines.get(&key)
            && since.elapsed() < KEK_CACHE_TTL
        {
            return Ok(Arc::clone(engine));
        }
        if engines.len() >= MAX_ENGINES {
            engines.clear();
        }
        let store = TenantTransit {
            storage: self.storage.clone(),
            tenant: tenant.to_owned(),
        };
        let engine = Arc::new(
            Transit::new(Arc::clone(&self.master), store, tenant, tier)
                .map_err(|e| transit_problem(&e))?,
        );
        engines.insert(key, (Arc::clone(&engine), Instant::now()));
        Ok(engine)
    }

    /// The same broker accepting evidence of `verifier`'s type in release requests.
    #[must_use]
    pub fn accepting(mut self, verifier: Arc<dyn crate::attest::EvidenceVerifier>) -> Self {
        self.attestation.add(verifier);
        self
    }

    /// The same broker remembering verified evidence for `ttl` (zero: verifying every piece
    /// again; [`crate::attest::ATTESTATION_TTL`] by default).
    #[must_use]
    pub fn with_attestation_cache(mut self, ttl: std::time::Duration) -> Self {
        self.attestation.set_cache_ttl(ttl);
        self
    }

    /// The same broker enrolling TPM attestation keys (credential activation,
    /// `/v1/attestation/tpm/`) and accepting `tpm` evidence from enrolled ones.
    pub fn accepting_tpm(mut self, verifier: Arc<crate::attest::TpmVerifier>) -> Self {
        self.attestation.add(verifier.clone());
        self.tpm = Some(verifier);
        self
    }

    /// The same broker speaking Trustee's KBS protocol (`/kbs/v0/`, see [`crate::kbs`]),
    /// serving `tenant`'s secrets under `kbs/` as resources to attested workloads.
    #[must_use]
    pub fn serving_kbs(mut self, tenant: String) -> Self {
        self.kbs = Some(crate::kbs::Kbs::new(tenant));
        self
    }

    /// The same broker taking key attestations (`POST /v1/clients/me/key-attestation`) by
    /// the TPM attestation keys `trusted_aks` (SHA-256 of their `TPM2B_PUBLIC`, hex) or by
    /// AKs enrolled by credential activation; with `required`, a key counts as tier 2 only
    /// when attested, whatever an admin vouched.
    #[must_use]
    pub fn with_key_attestation(mut self, trusted_aks: Vec<String>, required: bool) -> Self {
        self.trusted_aks = trusted_aks
            .into_iter()
            .map(|a| a.to_ascii_lowercase())
            .collect();
        self.require_key_attestation = required;
        self
    }

    /// The pinned attestation keys.
    pub(crate) fn trusted_aks(&self) -> &[String] {
        &self.trusted_aks
    }

    /// Whether tier 2 needs key attestation.
    pub(crate) fn requires_key_attestation(&self) -> bool {
        self.require_key_attestation
    }

    /// The KBS face, when on.
    pub(crate) fn kbs(&self) -> Option<&crate::kbs::Kbs> {
        self.kbs.as_ref()
    }

    /// The TPM verifier, when TPM evidence is accepted.
    pub(crate) fn tpm(&self) -> Option<&Arc<crate::attest::TpmVerifier>> {
        self.tpm.as_ref()
    }

    /// The evidence verifiers, and their recent results.
    pub(crate) fn attestation(&self) -> &crate::attest::Attestation {
        &self.attestation
    }

    /// The compiled release policies.
    pub(crate) fn policies(&self) -> &crate::policy::PolicyCache {
        &self.policies
    }

    /// The capability token root key.
    pub fn tokens(&self) -> &TokenRoot {
        &self.tokens
    }

    /// The store the broker keeps its state in.
    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Forgets every unwrapped KEK and the policies read (after a change made by another
    /// node).
    pub fn clear_cache(&self) {
        self.engines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.forget_policies();
    }
}

impl Watcher for Broker {
    fn changed(&self, change: Change) {
        tracing::debug!(
            change = change.as_str(),
            "another node changed the broker's state"
        );
        match change {
            Change::Policies | Change::All => self.forget_policies(),
            // Unwrapped KEKs stay valid while their version exists (a version is never
            // removed or changed; a rotation or min_decryption_version elsewhere is read from
            // the store on every call), so a key change drops nothing: dropping every
            // tenant's KEKs would let any client make every node unwrap afresh.
            // Revoked tokens and vouched tiers are read from the store on every request.
            Change::Keys | Change::Tokens | Change::Tiers => {}
        }
    }
}

/// A transit failure as a problem: what the caller can fix is a 4xx, a backend that is away a
/// 503.
pub(crate) fn transit_problem(e: &EnvelopeError) -> ApiError {
    let detail = e.to_string();
    match e {
        EnvelopeError::InvalidInput(_) | EnvelopeError::Malformed { .. } => {
            ApiError::bad_request("invalid-request", detail)
        }
        EnvelopeError::Unauthentic { .. } | EnvelopeError::WrongKek { .. } => {
            ApiError::bad_request("undecryptable", detail)
        }
        EnvelopeError::Backend(inner) => match inner.kind() {
            ErrorKind::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not-found", detail),
            ErrorKind::InvalidInput => ApiError::bad_request("invalid-request", detail),
            ErrorKind::Unavailable | ErrorKind::Locked => {
                tracing::error!(error = %detail, "the key broker's master key or database is unavailable");
                ApiError::unavailable(
                    "the key broker's master key or database is unavailable; nothing was \
                     released or changed; try again later",
                )
            }
            _ => {
                tracing::error!(error = %detail, "the key broker failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the key broker failed; the operator's log says why",
                )
            }
        },
        _ => {
            tracing::error!(error = %detail, "the key broker failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the key broker's master key does not match its KEKs; the operator's log says why",
            )
        }
    }
}

/// A request's JSON object (an empty body is an empty object), with the fields it names read
/// out; the fields left are reported back as Vault does, in `warnings`.
pub(crate) struct Params {
    fields: Map<String, Value>,
}

impl Params {
    pub(crate) fn parse(body: &[u8]) -> Result<Params, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params { fields: Map::new() });
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(Params { fields }),
            Ok(_) => Err(ApiError::bad_request(
                "invalid-request",
                "the body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(
                "invalid-request",
                format!("the JSON body: {e}"),
            )),
        }
    }

    pub(crate) fn take(&mut self, name: &'static str) -> Option<Value> {
        self.fields.remove(name).filter(|v| !v.is_null())
    }

    pub(crate) fn string(&mut self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_request(
                "invalid-request",
                format!("'{name}' must be a string"),
            )),
        }
    }

    /// A non-negative integer, as a number or a decimal string (Vault takes both).
    pub(crate) fn uint(&mut self, name: &'static str) -> Result<Option<u32>, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "invalid-request",
                format!("'{name}' must be a whole number from 0 to {}", u32::MAX),
            )
        };
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(bad),
            Some(Value::String(s)) => s.parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    pub(crate) fn flag(&mut self, name: &'static str) -> Result<bool, ApiError> {
        match self.take(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(_) => Err(ApiError::bad_request(
                "invalid-request",
                format!("'{name}' must be true or false"),
            )),
        }
    }

    /// Refuses a feature this engine does not have, when the request turns it on.
    fn refuse_flag(&mut self, name: &'static str, why: &str) -> Result<(), ApiError> {
        if self.flag(name)? {
            return Err(ApiError::bad_request(
                "unsupported",
                format!("'{name}' is not supported: {why}"),
            ));
        }
        Ok(())
    }

    /// `batch_input`, when given: a list of objects.
    fn batch(&mut self) -> Result<Option<Vec<Map<String, Value>>>, ApiError> {
        let Some(v) = self.take("batch_input") else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(ApiError::bad_request(
                "invalid-request",
                "'batch_input' must be a list of objects",
            ));
        };
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(ApiError::bad_request(
                "invalid-request",
                format!("'batch_input' holds 1 to {MAX_BATCH} items"),
            ));
        }
        items
            .into_iter()
            .map(|i| match i {
                Value::Object(m) => Ok(m),
                _ => Err(ApiError::bad_request(
                    "invalid-request",
                    "each item of 'batch_input' must be an object",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Vault's warning for the fields nobody read.
    pub(crate) fn warnings(&self) -> Value {
        if self.fields.is_empty() {
            Value::Null
        } else {
            let names: Vec<&str> = self.fields.keys().map(String::as_str).collect();
            json!([format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                names.join(" ")
            )])
        }
    }
}

/// Standard base64 from the wire, decoded into memory that is wiped when dropped.
pub(crate) fn base64_field(name: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    Base64::decode_vec(value)
        .map(Zeroizing::new)
        .map_err(|_| ApiError::bad_request("invalid-request", format!("'{name}' is not base64")))
}

/// A context or nonce: only for derived or convergent keys, which this engine does not make.
fn refuse_derivation(p: &mut Params) -> Result<(), ApiError> {
    for name in ["context", "nonce"] {
        if p.string(name)?.is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                "unsupported",
                format!("'{name}' is for derived or convergent keys, which keyhaven does not make"),
            ));
        }
    }
    Ok(())
}

/// A Vault response: `data` and the envelope fields Vault clients read.
pub(crate) fn vault_response(data: Value, warnings: Value) -> Response {
    let body = json!({
        "request_id": "",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": null,
    });
    // The body may carry plaintext (decrypt, data keys): its bytes are wiped after sending.
    let bytes = Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], bytes.to_vec()).into_response()
}

/// The operations, as metrics and audit name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Read,
    List,
    Rotate,
    Config,
    Encrypt,
    Decrypt,
    Rewrap,
    DataKey,
    Sign,
    Verify,
}

impl Op {
    /// Whether a success is audited: every change and every release of plaintext (encrypt,
    /// rewrap, read and list return no secret and are counted only).
    fn audited(self) -> bool {
        matches!(
            self,
            Op::Create | Op::Rotate | Op::Config | Op::Decrypt | Op::DataKey | Op::Sign
        )
    }
}

/// What a broker call is, for its audit record, its count and a token's scope.
pub(crate) struct Call {
    /// The audit operation, also the metrics label and a token right's operation
    /// (`transit.encrypt`, `secret.release`).
    pub(crate) operation: &'static str,
    /// What it is about (`transit key 'orders'`), bounded, for the audit record.
    pub(crate) subject: String,
    /// The path (a secret path, a transit key name, a listing's prefix) a token must cover.
    pub(crate) path: String,
    /// Whether a success is audited (a refusal always is).
    pub(crate) audit_success: bool,
}

/// The broker, or the problem of a server without one.
pub(crate) fn broker_of(inner: &Inner) -> Result<Arc<Broker>, ApiError> {
    inner.broker.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no-broker",
            "this server has no key broker: set one up with `keyhaven serve init-broker`",
        )
    })
}

/// Runs `f` with the broker and the tenant the request acts in, on the blocking pool
/// (agreements in the master key's backend and database calls block); counts it, and audits
/// every refusal and the successes `call` says. The tenant is the caller's own, or, with a
/// capability `token`, the token's (after checking it covers `call`).
pub(crate) async fn decided<T: Send + 'static>(
    inner: Arc<Inner>,
    caller: Caller,
    token: Option<String>,
    call: Call,
    f: impl FnOnce(&Broker, &str, u64) -> Result<(T, String), ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    decided_granted(inner, caller, token, call, move |broker, tenant, now, _| {
        f(broker, tenant, now)
    })
    .await
}

/// [`decided`], telling `f` what the token granted, when the request carried one.
pub(crate) async fn decided_granted<T: Send + 'static>(
    inner: Arc<Inner>,
    caller: Caller,
    token: Option<String>,
    call: Call,
    f: impl FnOnce(&Broker, &str, u64, Option<&crate::tokens::Granted>) -> Result<(T, String), ApiError>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let broker = broker_of(&inner)?;
    let i = inner.clone();
    tokio::task::spawn_blocking(move || {
        let now = i.now();
        let granted = match &token {
            None => Ok(None),
            Some(t) => broker
                .tokens()
                .authorize(
                    t,
                    &caller.fingerprint,
                    call.operation,
                    &call.path,
                    now,
                    broker.storage().as_ref(),
                )
                .map(Some),
        };
        let principal = match &granted {
            Ok(Some(g)) => format!("client:{} token:{}", caller.client_id, g.token_id),
            _ => format!("client:{}", caller.client_id),
        };
        let outcome = granted.and_then(|g| {
            let tenant = g
                .as_ref()
                .map_or_else(|| caller.client_id.clone(), |g| g.tenant.clone());
            f(&broker, &tenant, now, g.as_ref())
        });
        let subject: String = call.subject.chars().take(160).collect();
        let (allowed, reason, outcome) = match outcome {
            Ok((data, what)) => {
                i.metrics.broker(call.operation, "ok");
                if !call.audit_success {
                    return Ok(data);
                }
                (true, format!("{subject}: {what}"), Ok(data))
            }
            Err(e) => {
                i.metrics.broker(call.operation, e.name);
                let detail: String = e.detail.chars().take(200).collect();
                (false, format!("{subject}: {}: {detail}", e.name), Err(e))
            }
        };
        i.decide(&Decision {
            allowed,
            reason,
            ..caller.decision(call.operation, principal)
        })?;
        outcome
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// Runs `f` with the transit engine of the tenant the request acts in (see [`decided`]), and
/// whether the caller owns it (acts without a token).
async fn run(
    inner: Arc<Inner>,
    caller: Caller,
    headers: &HeaderMap,
    op: Op,
    name: String,
    f: impl FnOnce(&Engine, &str, u64, bool) -> Result<(Value, String), ApiError> + Send + 'static,
) -> Result<Value, ApiError> {
    let call = Call {
        operation: transit_operation(op),
        subject: format!("transit key '{name}'"),
        path: name.clone(),
        audit_success: op.audited(),
    };
    let token = token_of(headers, &caller)?;
    let own = caller.client_id.clone();
    decided(inner, caller, token, call, move |broker, tenant, now| {
        check_key_name(&name).map_err(|e| transit_problem(&e))?;
        let engine = broker.transit(tenant)?;
        f(&engine, &name, now, tenant == own)
    })
    .await
}

fn transit_operation(op: Op) -> &'static str {
    match op {
        Op::Create => "transit.create",
        Op::Read => "transit.read",
        Op::List => "transit.list",
        Op::Rotate => "transit.rotate",
        Op::Config => "transit.config",
        Op::Encrypt => "transit.encrypt",
        Op::Decrypt => "transit.decrypt",
        Op::Rewrap => "transit.rewrap",
        Op::DataKey => "transit.datakey",
        Op::Sign => "transit.sign",
        Op::Verify => "transit.verify",
    }
}

/// Whether a read found no key.
fn is_missing<T>(read: &Result<T, EnvelopeError>) -> bool {
    matches!(read, Err(EnvelopeError::Backend(e)) if e.kind() == ErrorKind::NotFound)
}

fn key_view(engine: &Engine, name: &str) -> Result<Value, ApiError> {
    let problem = |e: EnvelopeError| transit_problem(&e);
    let record = engine.read_key(name).map_err(problem)?;
    let key_type = engine.key_type(&record).map_err(problem)?;
    let keys: Map<String, Value> = match key_type.signing_algorithm() {
        // Vault gives an encryption key's versions as their creation times.
        None => record
            .versions
            .iter()
            .map(|(v, (_, at))| (v.to_string(), json!(at)))
            .collect(),
        // And a signing key's as their public keys: PEM for ECDSA, Ed25519's 32 bytes in
        // base64.
        Some(algorithm) => {
            let publics = engine.public_keys(name).map_err(problem)?;
            publics
                .into_iter()
                .map(|(v, public)| {
                    let at = record.versions.get(&v).map_or(0, |(_, at)| *at);
                    let (curve, text) = match algorithm {
                        keyhaven::Algorithm::Ed25519 => {
                            let der = public.spki_der();
                            let raw = der.get(der.len().saturating_sub(32)..).unwrap_or(der);
                            ("ed25519", Base64::encode_string(raw))
                        }
                        keyhaven::Algorithm::EcdsaP256 => {
                            ("P-256", public.to_pem().unwrap_or_default())
                        }
                        _ => ("P-384", public.to_pem().unwrap_or_default()),
                    };
                    let entry = json!({
                        "name": curve,
                        "public_key": text,
                        "creation_time": keyhaven::rfc3339(at),
                    });
                    (v.to_string(), entry)
                })
                .collect()
        }
    };
    let signs = key_type.signing_algorithm().is_some();
    Ok(json!({
        "name": record.name,
        "type": key_type.as_str(),
        "keys": keys,
        "latest_version": record.latest_version(),
        "min_available_version": 0,
        "min_decryption_version": record.min_decryption_version,
        "min_encryption_version": 0,
        "deletion_allowed": false,
        "derived": false,
        "exportable": false,
        "allow_plaintext_backup": false,
        "supports_encryption": !signs,
        "supports_decryption": !signs,
        "supports_derivation": false,
        "supports_signing": signs,
        "auto_rotate_period": 0,
        "imported_key": false,
    }))
}

/// The key type a create asks for (`aes256-gcm96` unless said).
fn key_type_of(p: &mut Params) -> Result<TransitKeyType, ApiError> {
    match p.string("type")? {
        None => Ok(TransitKeyType::Aes256Gcm96),
        Some(t) => TransitKeyType::parse(&t)
            .map_err(|e| ApiError::bad_request("unsupported", e.to_string())),
    }
}

/// The key type an encrypt's upsert asks for: only `aes256-gcm96` encrypts.
fn check_type(p: &mut Params) -> Result<(), ApiError> {
    match key_type_of(p)? {
        TransitKeyType::Aes256Gcm96 => Ok(()),
        t => Err(ApiError::bad_request(
            "unsupported",
            format!("an {t} key does not encrypt: make it with the key's create call"),
        )),
    }
}

/// `POST /v1/transit/keys/:name`: creates a key (a second create changes nothing).
pub(crate) async fn create(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let asked = p.fields.contains_key("type");
    let key_type = key_type_of(&mut p)?;
    p.refuse_flag("derived", "keyhaven's transit keys are not derived")?;
    p.refuse_flag("convergent_encryption", "it needs derived keys")?;
    p.refuse_flag("exportable", "a KEK never leaves the broker")?;
    p.refuse_flag("allow_plaintext_backup", "a KEK never leaves the broker")?;
    let warnings = p.warnings();
    let data = run(
        inner,
        caller,
        &headers,
        Op::Create,
        name,
        move |engine, name, now, _| {
            let created = engine
                .create_key_of(name, key_type, now)
                .map_err(|e| transit_problem(&e))?;
            if !created && asked {
                let record = engine.read_key(name).map_err(|e| transit_problem(&e))?;
                let have = engine.key_type(&record).map_err(|e| transit_problem(&e))?;
                if have != key_type {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "key-exists",
                        format!(
                            "transit key '{name}' exists as an {have} key, not {key_type}: \
                             choose another name"
                        ),
                    ));
                }
            }
            let view = key_view(engine, name)?;
            let what = if created {
                format!("created ({key_type})")
            } else {
                "exists".to_owned()
            };
            Ok((view, what))
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// `GET /v1/transit/keys/:name`.
pub(crate) async fn read(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let data = run(
        inner,
        caller,
        &headers,
        Op::Read,
        name,
        |engine, name, _, _| Ok((key_view(engine, name)?, String::new())),
    )
    .await?;
    Ok(vault_response(data, Value::Null))
}

/// `LIST /v1/transit/keys` (or `GET` with `?list=true`): the caller's keys; 404 when none, as
/// Vault answers.
pub(crate) async fn list(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let listing = request.method().as_str() == "LIST"
        || (request.method() == Method::GET
            && request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "list=true")));
    if !listing {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "list the keys with LIST, or GET with ?list=true",
        ));
    }
    let call = Call {
        operation: transit_operation(Op::List),
        subject: "transit keys".to_owned(),
        path: String::new(),
        audit_success: false,
    };
    let token = token_of(request.headers(), &caller)?;
    let names = decided(inner, caller, token, call, |broker, tenant, _| {
        let names = broker.storage.transit_list(tenant)?;
        if names.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "this client has no transit keys",
            ));
        }
        Ok((names, String::new()))
    })
    .await?;
    Ok(vault_response(json!({ "keys": names }), Value::Null))
}

/// `POST /v1/transit/keys/:name/rotate`: a new version; older ones still decrypt.
pub(crate) async fn rotate(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let p = Params::parse(&body)?;
    let warnings = p.warnings();
    let data = run(
        inner,
        caller,
        &headers,
        Op::Rotate,
        name,
        |engine, name, now, _| {
            let version = engine.rotate(name, now).map_err(|e| transit_problem(&e))?;
            Ok((key_view(engine, name)?, format!("version {version}")))
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// `POST /v1/transit/keys/:name/config`: `min_decryption_version` (the other settings are
/// accepted only at the values this engine has).
pub(crate) async fn config(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let min = p.uint("min_decryption_version")?;
    if p.uint("min_encryption_version")?.is_some_and(|v| v != 0) {
        return Err(ApiError::bad_request(
            "unsupported",
            "'min_encryption_version' is not supported: encryption uses the latest version or \
             the one asked for",
        ));
    }
    p.refuse_flag("deletion_allowed", "transit keys are not deleted here")?;
    p.refuse_flag("exportable", "a KEK never leaves the broker")?;
    p.refuse_flag("allow_plaintext_backup", "a KEK never leaves the broker")?;
    let warnings = p.warnings();
    let data = run(
        inner,
        caller,
        &headers,
        Op::Config,
        name,
        move |engine, name, _, _| {
            if let Some(v) = min {
                engine
                    .set_min_decryption_version(name, v)
                    .map_err(|e| transit_problem(&e))?;
            }
            let what = min.map_or_else(String::new, |v| format!("min_decryption_version {v}"));
            Ok((key_view(engine, name)?, what))
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// What one item of an encrypt, decrypt or rewrap carries.
enum Item {
    Plaintext(Zeroizing<Vec<u8>>),
    Ciphertext(String),
}

fn item_of(fields: &mut Params, op: Op) -> Result<Item, ApiError> {
    refuse_derivation(fields)?;
    match op {
        Op::Encrypt => {
            let b64 = fields.string("plaintext")?.ok_or_else(|| {
                ApiError::bad_request("invalid-request", "missing 'plaintext' (base64) to encrypt")
            })?;
            Ok(Item::Plaintext(base64_field("plaintext", &b64)?))
        }
        _ => fields
            .string("ciphertext")?
            .map(Item::Ciphertext)
            .ok_or_else(|| ApiError::bad_request("invalid-request", "missing 'ciphertext'")),
    }
}

/// One item's answer.
fn answer(
    engine: &Engine,
    name: &str,
    op: Op,
    item: &Item,
    version: Option<u32>,
) -> Result<Value, ApiError> {
    let problem = |e: EnvelopeError| transit_problem(&e);
    let version_of = |ciphertext: &str| {
        keyhaven::envelope::transit::parse_ciphertext(ciphertext)
            .map(|(v, _)| v)
            .unwrap_or(0)
    };
    match (op, item) {
        (Op::Encrypt, Item::Plaintext(p)) => {
            let c = engine.encrypt(name, p, version).map_err(problem)?;
            Ok(json!({ "ciphertext": c, "key_version": version_of(&c) }))
        }
        (Op::Decrypt, Item::Ciphertext(c)) => {
            let plain = engine.decrypt(name, c).map_err(problem)?;
            let b64 = Zeroizing::new(Base64::encode_string(plain.expose_secret()));
            Ok(json!({ "plaintext": b64.as_str() }))
        }
        (Op::Rewrap, Item::Ciphertext(c)) => {
            if version.is_some() {
                return Err(ApiError::bad_request(
                    "unsupported",
                    "'key_version' is not supported on rewrap: it moves to the latest version",
                ));
            }
            let moved = engine.rewrap(name, c).map_err(problem)?;
            Ok(json!({ "ciphertext": moved, "key_version": version_of(&moved) }))
        }
        _ => Err(ApiError::bad_request(
            "invalid-request",
            "no such operation",
        )),
    }
}

/// `POST /v1/transit/encrypt|decrypt|rewrap/:name`, one item or a `batch_input`.
async fn crypt(
    inner: Arc<Inner>,
    caller: Caller,
    headers: &HeaderMap,
    op: Op,
    name: String,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut p = Params::parse(body)?;
    let version = p.uint("key_version")?.filter(|v| *v != 0);
    if op == Op::Encrypt {
        check_type(&mut p)?;
    }
    let batch = p.batch()?;
    let single = if batch.is_none() {
        Some(item_of(&mut p, op)?)
    } else {
        None
    };
    // Each item of a batch is checked on its own, and fails on its own, as in Vault.
    let items: Option<Vec<Result<Item, ApiError>>> = batch.map(|items| {
        items
            .into_iter()
            .map(|fields| {
                let mut fields = Params { fields };
                item_of(&mut fields, op)
            })
            .collect()
    });
    let warnings = p.warnings();
    let data = run(
        inner,
        caller,
        headers,
        op,
        name,
        move |engine, name, now, owner| {
            // Vault's encrypt makes a key that does not exist yet (an upsert); a token lends
            // keys, it never makes them.
            if op == Op::Encrypt && is_missing(&engine.read_key(name)) {
                if !owner {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not-found",
                        format!(
                            "no transit key '{name}' of the token's tenant (a token makes none)"
                        ),
                    ));
                }
                engine
                    .create_key(name, now)
                    .map_err(|e| transit_problem(&e))?;
            }
            match (single, items) {
                (Some(item), _) => {
                    let out = answer(engine, name, op, &item, version)?;
                    Ok((out, "1 item".to_owned()))
                }
                (None, Some(items)) => {
                    let n = items.len();
                    let mut failed = 0usize;
                    let results: Vec<Value> = items
                        .into_iter()
                        .map(|item| {
                            item.and_then(|item| answer(engine, name, op, &item, version))
                                .unwrap_or_else(|e| {
                                    failed += 1;
                                    json!({ "error": e.detail })
                                })
                        })
                        .collect();
                    Ok((
                        json!({ "batch_results": results }),
                        format!("{n} items, {failed} refused"),
                    ))
                }
                (None, None) => Err(ApiError::bad_request("invalid-request", "nothing to do")),
            }
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// `POST /v1/transit/encrypt/:name`.
pub(crate) async fn encrypt(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    crypt(inner, caller, &headers, Op::Encrypt, name, &body).await
}

/// `POST /v1/transit/decrypt/:name`.
pub(crate) async fn decrypt(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    crypt(inner, caller, &headers, Op::Decrypt, name, &body).await
}

/// `POST /v1/transit/rewrap/:name`.
pub(crate) async fn rewrap(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    crypt(inner, caller, &headers, Op::Rewrap, name, &body).await
}

/// `POST /v1/transit/datakey/:plaintext|wrapped/:name`: a fresh key of `bits` (256 unless
/// said) and its ciphertext; `wrapped` leaves the plaintext out.
pub(crate) async fn datakey(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let with_plaintext = match kind.as_str() {
        "plaintext" => true,
        "wrapped" => false,
        _ => {
            return Err(ApiError::bad_request(
                "invalid-request",
                "a data key is 'plaintext' or 'wrapped'",
            ));
        }
    };
    let mut p = Params::parse(&body)?;
    refuse_derivation(&mut p)?;
    let bits = p.uint("bits")?.unwrap_or(256);
    let warnings = p.warnings();
    let data = run(
        inner,
        caller,
        &headers,
        Op::DataKey,
        name,
        move |engine, name, _, _| {
            let (key, ciphertext) = engine
                .data_key(name, bits)
                .map_err(|e| transit_problem(&e))?;
            let version = keyhaven::envelope::transit::parse_ciphertext(&ciphertext)
                .map(|(v, _)| v)
                .unwrap_or(0);
            let mut data = json!({ "ciphertext": ciphertext, "key_version": version });
            if with_plaintext {
                let b64 = Zeroizing::new(Base64::encode_string(key.expose_secret()));
                data["plaintext"] = Value::String(b64.as_str().to_owned());
            }
            let what = if with_plaintext {
                "plaintext data key"
            } else {
                "wrapped data key"
            };
            Ok((data, format!("{what} of {bits} bits")))
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// A signature's hash as Vault names it (`sha2-256` unless said): from the path, else the body.
fn sign_hash(path: Option<&str>, p: &mut Params) -> Result<keyhaven::kdf::Hash, ApiError> {
    use keyhaven::kdf::Hash;
    let named = match path {
        Some(h) => Some(h.to_owned()),
        None => p.string("hash_algorithm")?,
    };
    match named.as_deref().unwrap_or("sha2-256") {
        "sha2-256" => Ok(Hash::Sha256),
        "sha2-384" => Ok(Hash::Sha384),
        "sha2-512" => Ok(Hash::Sha512),
        other => Err(ApiError::bad_request(
            "unsupported",
            format!(
                "hash_algorithm '{other}' is not supported: use sha2-256, sha2-384 or sha2-512"
            ),
        )),
    }
}

/// How a signature is written after `vault:vN:`: `asn1` (standard base64 of DER for ECDSA,
/// Vault's default) or `jws` (base64url of the fixed-size form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marshaling {
    Asn1,
    Jws,
}

fn marshaling_of(p: &mut Params) -> Result<Marshaling, ApiError> {
    match p.string("marshaling_algorithm")?.as_deref() {
        None | Some("asn1") => Ok(Marshaling::Asn1),
        Some("jws") => Ok(Marshaling::Jws),
        Some(other) => Err(ApiError::bad_request(
            "invalid-request",
            format!("marshaling_algorithm '{other}' is not asn1 or jws"),
        )),
    }
}

fn format_signature(
    signature: &keyhaven::Signature,
    version: u32,
    marshaling: Marshaling,
) -> Result<String, ApiError> {
    use keyhaven::encoding::encode_signature;
    let body = match marshaling {
        Marshaling::Asn1 => Base64::encode_string(
            &encode_signature(signature, keyhaven::SignatureFormat::Der)
                .map_err(|e| ApiError::bad_request("invalid-request", e.to_string()))?,
        ),
        Marshaling::Jws => base64ct::Base64UrlUnpadded::encode_string(signature.as_raw()),
    };
    Ok(format!("vault:v{version}:{body}"))
}

/// Reads `vault:vN:...` as a signature of `algorithm`: its version and the signature.
fn parse_signature(
    text: &str,
    algorithm: keyhaven::Algorithm,
    marshaling: Marshaling,
) -> Result<(u32, keyhaven::Signature), ApiError> {
    use keyhaven::encoding::decode_signature;
    let bad = |why: &str| {
        ApiError::bad_request(
            "invalid-request",
            format!("the signature is malformed: {why}"),
        )
    };
    let rest = text
        .strip_prefix("vault:v")
        .ok_or_else(|| bad("it does not start with vault:v"))?;
    let (version, body) = rest
        .split_once(':')
        .ok_or_else(|| bad("no ':' after the version"))?;
    if version.is_empty() || version.len() > 10 || version.starts_with('0') {
        return Err(bad("the version is not a number from 1"));
    }
    let version: u32 = version
        .parse()
        .map_err(|_| bad("the version is not a number from 1"))?;
    let (bytes, format) = match marshaling {
        Marshaling::Asn1 => (
            Base64::decode_vec(body).map_err(|_| bad("the body is not standard base64"))?,
            keyhaven::SignatureFormat::Der,
        ),
        Marshaling::Jws => (
            base64ct::Base64UrlUnpadded::decode_vec(body)
                .map_err(|_| bad("the body is not base64url"))?,
            keyhaven::SignatureFormat::Raw,
        ),
    };
    let signature = decode_signature(algorithm, &bytes, format).map_err(|e| bad(&e.to_string()))?;
    Ok((version, signature))
}

/// One item of a sign or verify: the input, and for a verify the signature.
struct SignItem {
    input: Zeroizing<Vec<u8>>,
    signature: Option<String>,
}

fn sign_item(fields: &mut Params, verify: bool) -> Result<SignItem, ApiError> {
    refuse_derivation(fields)?;
    let b64 = fields.string("input")?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid-request",
            "missing 'input' (base64) to sign or verify",
        )
    })?;
    let input = base64_field("input", &b64)?;
    let signature = if verify {
        if fields.string("hmac")?.is_some() {
            return Err(ApiError::bad_request(
                "unsupported",
                "'hmac' is not supported: transit keys here make signatures, not HMACs",
            ));
        }
        Some(fields.string("signature")?.ok_or_else(|| {
            ApiError::bad_request("invalid-request", "missing 'signature' to verify")
        })?)
    } else {
        None
    };
    Ok(SignItem { input, signature })
}

/// The settings a sign or verify request shares across its items.
#[derive(Clone, Copy)]
struct SignSettings {
    hash: keyhaven::kdf::Hash,
    prehashed: bool,
    marshaling: Marshaling,
    version: Option<u32>,
}

/// The signature algorithm of the key `name`, refused unless it signs (read once for a
/// whole verify batch).
fn verify_algorithm(engine: &Engine, name: &str) -> Result<keyhaven::Algorithm, ApiError> {
    let problem = |e: EnvelopeError| transit_problem(&e);
    let record = engine.read_key(name).map_err(problem)?;
    let key_type = engine.key_type(&record).map_err(problem)?;
    key_type.signing_algorithm().ok_or_else(|| {
        ApiError::bad_request(
            "invalid-request",
            format!("key '{name}' is an {key_type} key: it does not verify signatures"),
        )
    })
}

fn sign_answer(
    engine: &Engine,
    name: &str,
    item: &SignItem,
    s: SignSettings,
    algorithm: Option<keyhaven::Algorithm>,
) -> Result<Value, ApiError> {
    let problem = |e: EnvelopeError| transit_problem(&e);
    let input = if s.prehashed {
        SignInput::Digest(&item.input)
    } else {
        SignInput::Message(&item.input, s.hash)
    };
    match &item.signature {
        None => {
            let (signature, version) = engine.sign(name, input, s.version).map_err(problem)?;
            Ok(json!({
                "signature": format_signature(&signature, version, s.marshaling)?,
                "key_version": version,
            }))
        }
        Some(text) => {
            let algorithm = match algorithm {
                Some(a) => a,
                None => verify_algorithm(engine, name)?,
            };
            let (version, signature) = parse_signature(text, algorithm, s.marshaling)?;
            let valid = engine
                .verify(name, input, version, &signature)
                .map_err(problem)?;
            Ok(json!({ "valid": valid }))
        }
    }
}

/// `POST /v1/transit/sign|verify/:name[/:hash]`, one item or a `batch_input`.
async fn sign_or_verify(
    inner: Arc<Inner>,
    caller: Caller,
    headers: &HeaderMap,
    op: Op,
    name: String,
    hash: Option<String>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let verify = op == Op::Verify;
    let mut p = Params::parse(body)?;
    let settings = SignSettings {
        hash: sign_hash(hash.as_deref(), &mut p)?,
        prehashed: p.flag("prehashed")?,
        marshaling: marshaling_of(&mut p)?,
        version: p.uint("key_version")?.filter(|v| *v != 0),
    };
    if verify && settings.version.is_some() {
        return Err(ApiError::bad_request(
            "invalid-request",
            "'key_version' is for sign: a signature names its version",
        ));
    }
    let batch = p.batch()?;
    let single = batch.is_none();
    let items: Vec<Result<SignItem, ApiError>> = match batch {
        None => vec![Ok(sign_item(&mut p, verify)?)],
        Some(batch) => batch
            .into_iter()
            .map(|fields| sign_item(&mut Params { fields }, verify))
            .collect(),
    };
    let warnings = p.warnings();
    let data = run(
        inner,
        caller,
        headers,
        op,
        name,
        move |engine, name, _, _| {
            let algorithm = if verify {
                Some(verify_algorithm(engine, name)?)
            } else {
                None
            };
            if single {
                let item = items
                    .into_iter()
                    .next()
                    .ok_or_else(|| ApiError::bad_request("invalid-request", "nothing to do"))??;
                return Ok((
                    sign_answer(engine, name, &item, settings, algorithm)?,
                    "1 item".to_owned(),
                ));
            }
            let n = items.len();
            let mut failed = 0usize;
            let results: Vec<Value> = items
                .into_iter()
                .map(|item| {
                    item.and_then(|item| sign_answer(engine, name, &item, settings, algorithm))
                        .unwrap_or_else(|e| {
                            failed += 1;
                            json!({ "error": e.detail })
                        })
                })
                .collect();
            Ok((
                json!({ "batch_results": results }),
                format!("{n} items, {failed} refused"),
            ))
        },
    )
    .await?;
    Ok(vault_response(data, warnings))
}

/// The path of a sign or verify: the key's name, and the hash when the path names one.
#[derive(serde::Deserialize)]
pub(crate) struct SignPath {
    name: String,
    hash: Option<String>,
}

/// `POST /v1/transit/sign/:name[/:hash_algorithm]`.
pub(crate) async fn sign(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(p): Path<SignPath>,
) -> Result<Response, ApiError> {
    sign_or_verify(inner, caller, &headers, Op::Sign, p.name, p.hash, &body).await
}

/// `POST /v1/transit/verify/:name[/:hash_algorithm]`.
pub(crate) async fn verify(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Extension(RawBody(body)): Extension<RawBody>,
    Path(p): Path<SignPath>,
) -> Result<Response, ApiError> {
    sign_or_verify(inner, caller, &headers, Op::Verify, p.name, p.hash, &body).await
}
