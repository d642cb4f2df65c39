//! The server's JSON documents, shared by the server (which writes them) and the client (which
//! reads them), so the two cannot drift apart. Field names are part of the API (version 1).

use serde::{Deserialize, Serialize};

/// The media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The label of the signatures keyhaven makes on requests and responses.
pub const SIGNATURE_LABEL: &str = "keyhaven";

/// `GET /v1/server`: who answers (the key that signs every response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server key's algorithm (`ed25519`, `p256`, `p384`).
    pub algorithm: String,
    /// SHA-256 of the server key's SPKI DER, lowercase hex: compare it with what the operator
    /// printed before trusting it.
    pub fingerprint: String,
    /// The server key's SPKI DER, base64.
    pub public_key: String,
    /// The API version.
    pub api: u32,
    /// The key broker's capability token root key (Ed25519, hex), when the server has a
    /// broker: what checks a token offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
}

/// `POST /v1/challenge`: a single-use value a registration must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The challenge (base64url, 32 random bytes).
    pub challenge: String,
    /// When it stops being accepted (seconds since the epoch).
    pub expires_at: u64,
}

/// `POST /v1/clients`: the body of a registration. The request is signed (RFC 9421) by the key
/// being registered, covering this body through `Content-Digest`: that signature is the proof
/// of possession, bound to the challenge and to the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// A challenge from `POST /v1/challenge`.
    pub challenge: String,
    /// The client's name (1 to 128 printable characters).
    pub name: String,
    /// The key's algorithm (`ed25519`, `p256`, `p384`).
    pub algorithm: String,
    /// The key's SPKI DER, base64.
    pub public_key: String,
}

/// `POST /v1/clients/me/rotate`: a continuity-proof chain from one of the caller's active keys
/// to its successor (keyhaven's text form, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The chain.
    pub proofs: String,
}

/// `POST /v1/clients/me/revoke`: revoke one of the caller's keys (by default the one that signs
/// this request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfRevocation {
    /// The key to revoke; `None` for the signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why (1 to 256 printable characters).
    pub reason: String,
}

/// `POST /v1/admin/revoke`: revoke many keys at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRevocation {
    /// The keys' fingerprints (1 to 1000).
    pub fingerprints: Vec<String>,
    /// Why.
    pub reason: String,
}

/// The answer to a bulk revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRevoked {
    /// Keys revoked now.
    pub revoked: Vec<String>,
    /// Keys that were already revoked.
    pub already: Vec<String>,
    /// Fingerprints no client has.
    pub unknown: Vec<String>,
}

/// A key's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Accepted.
    Active,
    /// Superseded by a continuity proof, still accepted until `until`.
    Rotating,
    /// Superseded and past its migration window: refused.
    Retired,
    /// Revoked: refused.
    Revoked,
}

impl KeyStatus {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Rotating => "rotating",
            KeyStatus::Retired => "retired",
            KeyStatus::Revoked => "revoked",
        }
    }

    /// Whether a request signed by a key in this status is accepted.
    pub fn accepted(self) -> bool {
        matches!(self, KeyStatus::Active | KeyStatus::Rotating)
    }
}

/// A client's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary client.
    Client,
    /// May list, search, export and revoke every client's keys.
    Admin,
}

impl Role {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// One registered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// SHA-256 of its SPKI DER, lowercase hex (the `keyid` of its signatures).
    pub fingerprint: String,
    /// `ed25519`, `p256` or `p384`.
    pub algorithm: String,
    /// Its status now.
    pub status: KeyStatus,
    /// When it was registered (seconds since the epoch).
    pub added_at: u64,
    /// For a rotating or retired key: when its migration window ends (ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// For a revoked key: when, why and by whom (a key fingerprint, or `admin:<fingerprint>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevokedView>,
    /// For a key added by rotation: the fingerprint of the key it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_of: Option<String>,
}

/// How a key was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedView {
    /// When (seconds since the epoch).
    pub at: u64,
    /// Why.
    pub reason: String,
    /// Who: `self` or `admin:<fingerprint>`.
    pub by: String,
}

/// A client and its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    /// The server's id for it (32 hex digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it registered (seconds since the epoch).
    pub registered_at: u64,
    /// Its keys, oldest first.
    pub keys: Vec<KeyView>,
}

/// `GET /v1/whoami`: what the server made of the request's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The client.
    pub client: String,
    /// The key that signed.
    pub key: String,
    /// The key's status.
    pub status: KeyStatus,
    /// The client's role.
    pub role: Role,
}

/// `GET /v1/admin/stats`: registration monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Clients registered.
    pub clients: u64,
    /// Keys by status.
    pub active_keys: u64,
    /// Keys in a migration window.
    pub rotating_keys: u64,
    /// Keys past their migration window.
    pub retired_keys: u64,
    /// Keys revoked.
    pub revoked_keys: u64,
    /// Registrations in the last hour.
    pub registrations_last_hour: u64,
    /// Registrations in the last day.
    pub registrations_last_day: u64,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A stable URI naming the kind of failure (`urn:keyhaven:problem:<name>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request, and what to do.
    pub detail: String,
}

/// The `type` URI of a problem named `name`.
pub fn problem_type(name: &str) -> String {
    format!("urn:keyhaven:problem:{name}")
}

/// `POST /v1/agent/sign` (the signing agent, on its Unix socket): what to sign, with which key.
/// Exactly one of `message` and `digest` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSign {
    /// The home the caller means (its real path): an agent of another home refuses
    /// (`agent-other-home`), so the caller signs in-process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// The principal the caller acts for, if it names one (`KEYHAVEN_PRINCIPAL`): an agent
    /// acting for another refuses (`agent-other-principal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The key, as `keyhaven sign --key` takes it (unset: the home's default key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The message, base64 (Ed25519 signs whole messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The digest of the message, hex (ECDSA: the curve's hash, SHA-384 for P-384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `POST /v1/agent/key`: which key a reference names, and its algorithm (so a caller knows
/// whether to send a digest or the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentKey {
    /// As [`AgentSign::home`] (requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// As [`AgentSign::principal`] (requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The reference as `keyhaven sign --key` takes it (in a request; unset: the default key),
    /// or the key that signs, `BACKEND:ID` (in the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's algorithm (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

/// The agent's answer to [`AgentSign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSignature {
    /// The key that signed, `BACKEND:ID` (a logical key's primary version).
    pub key: String,
    /// Its algorithm (`p384`, `p256`, `ed25519`).
    pub algorithm: String,
    /// The signature, fixed-size (`r||s` for ECDSA), base64.
    pub signature: String,
}

/// `GET /v1/agent`: the agent's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    /// The agent's process id.
    pub pid: u32,
    /// The keyhaven home it holds open.
    pub home: String,
    /// Whether it still holds the home's backends (false once locked: it then exits).
    pub unlocked: bool,
    /// It forgets everything after this many seconds without a request.
    pub idle_timeout: u64,
    /// Seconds since the last request.
    pub idle: u64,
}

/// A Vault-shaped answer of the transit routes: what matters is in `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultData<T> {
    /// The answer.
    pub data: T,
    /// Vault's warnings (fields the server ignored), if any.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

/// A transit key (`GET /v1/transit/keys/:name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitKeyView {
    /// Its name.
    pub name: String,
    /// `aes256-gcm96`, `ed25519`, `ecdsa-p256` or `ecdsa-p384`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Each version: when it was made, or a signing key's public key.
    pub keys: std::collections::BTreeMap<String, TransitVersion>,
    /// Whether it signs (a signing key does not encrypt).
    #[serde(default)]
    pub supports_signing: bool,
    /// The newest version (new encryptions use it).
    pub latest_version: u32,
    /// Ciphertexts of older versions do not decrypt.
    pub min_decryption_version: u32,
}

/// One version of a transit key, as Vault shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TransitVersion {
    /// An encryption key's version: when it was made (seconds since the epoch).
    Created(u64),
    /// A signing key's version: its public key.
    Signing {
        /// The curve: `P-256`, `P-384` or `ed25519`.
        name: String,
        /// PEM for ECDSA; Ed25519's 32 bytes in standard base64.
        public_key: String,
        /// When it was made (RFC 3339).
        creation_time: String,
    },
}

/// A transit signature, with the key version that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitSignature {
    /// `vault:vN:...` (standard base64 of DER for ECDSA, of the 64 bytes for Ed25519).
    pub signature: String,
    /// N.
    pub key_version: u32,
}

/// A transit ciphertext, with the key version it was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitCiphertext {
    /// `vault:vN:...`.
    pub ciphertext: String,
    /// N.
    pub key_version: u32,
}

/// A transit data key: its ciphertext, and its plaintext (base64) unless it was asked for
/// `wrapped`. The plaintext is secret: the client crate wipes what it decodes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitDataKey {
    /// The key under the transit key.
    pub ciphertext: String,
    /// The transit key's version.
    pub key_version: u32,
    /// The key (base64), for `plaintext` data keys.
    #[serde(default)]
    pub plaintext: Option<String>,
}

impl std::fmt::Debug for TransitDataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitDataKey")
            .field("ciphertext", &self.ciphertext)
            .field("key_version", &self.key_version)
            .field("plaintext", &self.plaintext.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

impl Drop for TransitDataKey {
    fn drop(&mut self) {
        if let Some(p) = self.plaintext.as_mut() {
            zeroize::Zeroize::zeroize(p);
        }
    }
}

/// What a secret write asks for (`PUT /v1/secrets/*path`): the tier to keep it at, the lowest
/// tier accepted instead, and the lowest requester tier it is released to (each defaulting to
/// the server's choice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretOptions {
    /// The tier asked for (default: the broker's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    /// The lowest tier accepted instead (default: the tier asked for: no fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<u8>,
    /// The lowest tier of requester it is released to (default: the tier reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tier: Option<u8>,
}

/// What a secret write reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretWritten {
    /// The secret's path.
    pub path: String,
    /// The version written.
    pub version: u64,
    /// The tier it is kept at.
    pub tier: u8,
    /// The tier asked for.
    pub requested_tier: u8,
    /// The lowest requester tier it is released to.
    pub min_tier: u8,
    /// Whether it is kept below the tier asked for.
    pub downgraded: bool,
}

/// A version of a secret, in its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersionView {
    /// The version.
    pub version: u64,
    /// When it was written.
    pub created_at: u64,
}

/// A secret's metadata (`GET /v1/secrets/*path`): never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    /// Its path.
    pub path: String,
    /// The tier it is kept at.
    pub tier: u8,
    /// The lowest requester tier it is released to.
    pub min_tier: u8,
    /// When it was first written.
    pub created_at: u64,
    /// Its newest version.
    pub latest_version: u64,
    /// Its versions.
    #[serde(default)]
    pub versions: Vec<SecretVersionView>,
    /// What a requester below `min_tier` gets instead, if the owner declared it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackView>,
}

/// A secret's fallback: the capability a requester below its `min_tier` gets instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackView {
    /// The rights of the capability.
    pub rights: Vec<crate::tokens::Right>,
    /// How long a capability lasts (seconds).
    pub ttl: u64,
    /// The owner's key that declared it.
    pub declared_by: String,
    /// When.
    pub at: u64,
}

/// A release (`POST /v1/release/*path`) as it comes back: the JWE and the signed receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The secret's path.
    pub path: String,
    /// The version released.
    pub version: u64,
    /// The tier the secret is kept at.
    pub tier: u8,
    /// The requester's tier, as the server assessed it.
    pub requester_tier: u8,
    /// The secret, encrypted to the request's ephemeral key (compact JWE).
    pub jwe: String,
    /// The receipt (compact JWS by the server key).
    pub receipt: String,
}
