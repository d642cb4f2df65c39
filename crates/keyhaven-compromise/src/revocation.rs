//! Signed revocation statements, the local revocation registry every process consults, the
//! exportable list verifiers load, and the store decorator that refuses revoked keys.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64ct::{Base64, Encoding};
use keyhaven_core::{Error, KeyId, KeyInfo, KeyStore, PublicKey, SecretBytes, Signature};
use serde::{Deserialize, Serialize};

use crate::error::{CompromiseError, Result};

/// The format tag of an exported revocation list.
pub const LIST_FORMAT: &str = "keyhaven-revocations";
/// The version of statements and lists this crate writes and reads.
pub const REVOCATION_VERSION: u32 = 1;
/// The largest revocation list accepted (a list of tens of thousands of statements is far smaller).
pub const MAX_LIST_BYTES: usize = 64 << 20;

/// The key that signs revocation statements (the *revocation authority*): a key in a store,
/// reached through the trait, so it may live in an HSM. Verifiers pin its public key.
#[derive(Clone)]
pub struct Authority {
    /// The store holding the authority key.
    pub store: Arc<dyn KeyStore>,
    /// The authority key's id in that store.
    pub key: KeyId,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// One signed statement: "key `key_id` (public key fingerprint `fingerprint`) is revoked from
/// `revoked_at` on, because `reason`", signed by the authority whose fingerprint is `issuer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Statement version ([`REVOCATION_VERSION`]).
    pub v: u32,
    /// The revoked key's id in its backend.
    pub key_id: String,
    /// SHA-256 fingerprint (hex) of the revoked key's SPKI: what verifiers match on.
    pub fingerprint: String,
    /// From when the key is revoked, seconds since the Unix epoch. Signatures asserting a later
    /// time are refused.
    pub revoked_at: u64,
    /// Why (free text, e.g. "key compromise", "superseded").
    pub reason: String,
    /// Whether the key is known or suspected to be compromised.
    pub compromised: bool,
    /// The compromise report that led to the revocation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Fingerprint (hex) of the authority key that signed the statement.
    pub issuer: String,
    /// The authority key's algorithm (JOSE name).
    pub algorithm: String,
    /// The authority's signature over [`Revocation::signed_bytes`], raw, base64.
    pub signature: String,
}

impl Revocation {
    /// The exact bytes the authority signs: a domain-separation line, then the fields as a JSON
    /// array (deterministic: strings and integers only).
    pub fn signed_bytes(&self) -> Vec<u8> {
        // A JSON array built as a value: its text form cannot fail (unlike serializing an
        // arbitrary type), so the signed bytes are never silently short.
        let fields = serde_json::json!([
            self.v,
            self.key_id,
            self.fingerprint,
            self.revoked_at,
            self.reason,
            self.compromised,
            self.report,
            self.issuer,
            self.algorithm,
        ]);
        let mut out = b"keyhaven-revocation/v1\n".to_vec();
        out.extend(fields.to_string().into_bytes());
        out
    }

    /// Signs a statement revoking `key` with the authority key.
    ///
    /// # Errors
    /// The authority key cannot sign (missing, revoked, device error) or is an X25519 key.
    pub fn issue(
        authority: &Authority,
        key: &KeyInfo,
        revoked_at: u64,
        reason: &str,
        compromised: bool,
        report: Option<&str>,
    ) -> Result<Self> {
        let auth = authority.store.get(&authority.key)?;
        if !auth.algorithm.can_sign() {
            return Err(CompromiseError::Invalid(format!(
                "the revocation authority key '{}' is {}, which cannot sign",
                authority.key,
                auth.algorithm.short_name()
            )));
        }
        let mut statement = Revocation {
            v: REVOCATION_VERSION,
            key_id: key.id.to_string(),
            fingerprint: key.fingerprint().to_hex(),
            revoked_at,
            reason: reason.to_owned(),
            compromised,
            report: report.map(str::to_owned),
            issuer: auth.fingerprint().to_hex(),
            algorithm: auth.algorithm.jose_name().to_owned(),
            signature: String::new(),
        };
        let sig = authority
            .store
            .sign(&authority.key, &statement.signed_bytes())?;
        statement.signature = Base64::encode_string(sig.as_raw());
        Ok(statement)
    }

    /// Checks the statement's signature with the authority's public key.
    ///
    /// # Errors
    /// [`CompromiseError::Forged`] naming the key if the issuer, algorithm or signature do not
    /// match `authority`.
    pub fn verify(&self, authority: &PublicKey) -> Result<()> {
        let forged = |reason: &str| CompromiseError::Forged {
            key_id: self.key_id.clone(),
            reason: reason.to_owned(),
        };
        if self.v != REVOCATION_VERSION {
            return Err(forged(&format!("unknown statement version {}", self.v)));
        }
        if self.issuer != authority.fingerprint().to_hex() {
            return Err(forged(&format!(
                "issued by {}, not by the trusted authority {}",
                short(&self.issuer),
                authority.fingerprint().short()
            )));
        }
        if self.algorithm != authority.algorithm().jose_name() {
            return Err(forged("algorithm does not match the authority key"));
        }
        let raw = Base64::decode_vec(&self.signature)
            .map_err(|_| forged("the signature is not base64"))?;
        let sig = Signature::from_raw(authority.algorithm(), raw)
            .map_err(|_| forged("the signature has the wrong length"))?;
        keyhaven_crypto::verify(authority, &self.signed_bytes(), &sig)
            .map_err(|_| forged("the signature does not verify under the authority key"))
    }

    /// `revoked_at` as RFC 3339.
    pub fn revoked_at_rfc3339(&self) -> String {
        rfc3339(self.revoked_at)
    }
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

pub(crate) fn rfc3339(secs: u64) -> String {
    keyhaven_core::rfc3339(secs)
}

/// The authority's public key as carried in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// JOSE algorithm name.
    pub algorithm: String,
    /// SPKI DER, base64.
    pub spki: String,
    /// SHA-256 fingerprint of the SPKI, hex.
    pub fingerprint: String,
}

/// An exported list of revocation statements: what verifiers load (`keyhaven revocations
/// export`). Each statement is signed on its own; the list carries the authority's public key
/// for convenience, but a verifier must pin the authority (its public key or fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// [`LIST_FORMAT`].
    pub format: String,
    /// [`REVOCATION_VERSION`].
    pub version: u32,
    /// The authority that signed the statements.
    pub issuer: Issuer,
    /// The statements, oldest first.
    pub statements: Vec<Revocation>,
}

impl RevocationList {
    /// A list of `statements` by the authority with public key `issuer`.
    pub fn new(issuer: &PublicKey, statements: Vec<Revocation>) -> Self {
        RevocationList {
            format: LIST_FORMAT.to_owned(),
            version: REVOCATION_VERSION,
            issuer: Issuer {
                algorithm: issuer.algorithm().jose_name().to_owned(),
                spki: Base64::encode_string(issuer.spki_der()),
                fingerprint: issuer.fingerprint().to_hex(),
            },
            statements,
        }
    }

    /// Parses a list (untrusted bytes: nothing is believed until [`RevocationList::verify`]).
    ///
    /// # Errors
    /// [`CompromiseError::Invalid`] for anything that is not a version-1 list.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_LIST_BYTES {
            return Err(CompromiseError::Invalid(format!(
                "revocation list is {} bytes, over the {MAX_LIST_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let list: RevocationList = serde_json::from_slice(bytes).map_err(|e| {
            CompromiseError::Invalid(format!("not a keyhaven revocation list: {e}"))
        })?;
        if list.format != LIST_FORMAT {
            return Err(CompromiseError::Invalid(format!(
                "not a keyhaven revocation list (format '{}')",
                list.format
            )));
        }
        if list.version != REVOCATION_VERSION {
            return Err(CompromiseError::Invalid(format!(
                "revocation list version {} is not supported (this keyhaven reads version \
                 {REVOCATION_VERSION}); upgrade keyhaven",
                list.version
            )));
        }
        Ok(list)
    }

    /// The issuer public key the list carries.
    ///
    /// # Errors
    /// [`CompromiseError::Invalid`] if it is malformed.
    pub fn issuer_key(&self) -> Result<PublicKey> {
        let bad = |what: &str| CompromiseError::Invalid(format!("revocation list issuer: {what}"));
        let der = Base64::decode_vec(&self.issuer.spki).map_err(|_| bad("SPKI is not base64"))?;
        let key = keyhaven_crypto::default_provider()
            .parse_public_key_der(&der)
            .map_err(|_| bad("SPKI is not a valid public key"))?;
        if key.algorithm().jose_name() != self.issuer.algorithm {
            return Err(bad("algorithm does not match its SPKI"));
        }
        if key.fingerprint().to_hex() != self.issuer.fingerprint {
            return Err(bad("fingerprint does not match its SPKI"));
        }
        Ok(key)
    }

    /// Verifies every statement against the pinned `authority` key.
    ///
    /// # Errors
    /// [`CompromiseError::Forged`] naming the first statement that does not verify.
    pub fn verify(&self, authority: &PublicKey) -> Result<VerifiedRevocations> {
        for s in &self.statements {
            s.verify(authority)?;
        }
        Ok(VerifiedRevocations::from_statements(
            self.statements.clone(),
        ))
    }

    /// Verifies the list against the authority it carries, after checking that authority's
    /// fingerprint is `pinned_fingerprint` (hex, or its first 16+ characters).
    ///
    /// # Errors
    /// [`CompromiseError::Forged`] if the authority is not the pinned one or a statement does
    /// not verify; [`CompromiseError::Invalid`] for a malformed issuer.
    pub fn verify_pinned(&self, pinned_fingerprint: &str) -> Result<VerifiedRevocations> {
        let key = self.issuer_key()?;
        let fp = key.fingerprint().to_hex();
        let pin = pinned_fingerprint.to_ascii_lowercase();
        if pin.len() < 16 || !fp.starts_with(&pin) {
            return Err(CompromiseError::Forged {
                key_id: "(list)".into(),
                reason: format!(
                    "the list is signed by {}, not by the pinned authority {pinned_fingerprint}",
                    key.fingerprint().short()
                ),
            });
        }
        self.verify(&key)
    }

    /// The list as pretty JSON.
    ///
    /// # Errors
    /// [`CompromiseError::Invalid`] if it cannot be encoded (never for a list of statements;
    /// the error is kept so nothing is ever written empty).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| CompromiseError::Invalid(format!("cannot encode the list: {e}")))
    }
}

/// Statements whose signatures have been checked: answer "was this key revoked at time t?".
#[derive(Debug, Clone, Default)]
pub struct VerifiedRevocations {
    by_fingerprint: BTreeMap<String, Revocation>,
    by_key_id: BTreeMap<String, Revocation>,
}

impl VerifiedRevocations {
    fn from_statements(statements: Vec<Revocation>) -> Self {
        let mut v = VerifiedRevocations::default();
        for s in statements {
            // Keep the earliest revocation of a key.
            let keep = |old: &Revocation| old.revoked_at <= s.revoked_at;
            if !v.by_fingerprint.get(&s.fingerprint).is_some_and(keep) {
                v.by_fingerprint.insert(s.fingerprint.clone(), s.clone());
            }
            if !v.by_key_id.get(&s.key_id).is_some_and(keep) {
                v.by_key_id.insert(s.key_id.clone(), s);
            }
        }
        v
    }

    /// The revocation of the key with this public key, if any.
    pub fn for_key(&self, key: &PublicKey) -> Option<&Revocation> {
        self.by_fingerprint.get(&key.fingerprint().to_hex())
    }

    /// The revocation of the key with this id, if any.
    pub fn for_key_id(&self, key_id: &str) -> Option<&Revocation> {
        self.by_key_id.get(key_id)
    }

    /// Whether a signature by `key` asserting time `at` (seconds) must be refused: the key is
    /// revoked and `at` is at or after the revocation (or unknown). A key revoked as
    /// **compromised** is refused whatever time is asserted: whoever holds it can backdate.
    pub fn refuses(&self, key: &PublicKey, at: Option<u64>) -> Option<&Revocation> {
        self.for_key(key)
            .filter(|r| r.compromised || at.is_none_or(|t| t >= r.revoked_at))
    }

    /// How many keys are revoked.
    pub fn len(&self) -> usize {
        self.by_fingerprint.len()
    }

    /// Whether no key is revoked.
    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }
}

/// The local revocation registry: `revocations.json` in a private directory, shared by every
/// process of a keyhaven home. A revocation written by one process is seen by the next private
/// operation of every other (each check compares the file's identity, one `stat`).
#[derive(Debug)]
pub struct Revocations {
    dir: PathBuf,
    state: Arc<dyn keyhaven_fs::StateFiles>,
    cache: Mutex<Cache>,
}

/// Device, inode, size, mtime and ctime: a file rewritten in place with its mtime set back
/// still changes its ctime.
type Stamp = (u64, u64, u64, (i64, i64), (i64, i64));

#[derive(Debug, Default)]
struct Cache {
    stamp: Option<Stamp>,
    by_key_id: Arc<BTreeMap<String, Revocation>>,
}

const FILE: &str = "revocations.json";
const LOCK: &str = ".revocations.lock";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    statements: Vec<Revocation>,
}

impl Revocations {
    /// Opens (creating it 0700 if missing) the registry in `dir`.
    ///
    /// # Errors
    /// The directory cannot be created or has loose permissions.
    pub fn open(dir: &Path) -> Result<Self> {
        keyhaven_fs::create_private_dir(dir)?;
        Ok(Revocations {
            dir: dir.to_owned(),
            state: Arc::new(keyhaven_fs::PlainState),
            cache: Mutex::new(Cache::default()),
        })
    }

    /// Reads and writes the registry through `state` (default: plain files). In a sealed home
    /// the file is checked against the home's integrity manifest: removing it, emptying it or
    /// putting back an older version is reported, and private operations are refused (fail
    /// closed) until it is restored.
    #[must_use]
    pub fn with_state(mut self, state: Arc<dyn keyhaven_fs::StateFiles>) -> Self {
        self.state = state;
        self
    }

    /// The registry's file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn read(&self) -> Result<Stored> {
        let path = self.path();
        let Some(bytes) = self.state.read(&path)? else {
            return Ok(Stored::default());
        };
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|e| CompromiseError::corrupt(&path, e))?;
        if stored.version != REVOCATION_VERSION {
            return Err(CompromiseError::corrupt(
                &path,
                format!("unsupported version {}", stored.version),
            ));
        }
        Ok(stored)
    }

    /// Records a statement (after checking it verifies under `authority`). Revoking a key
    /// twice keeps the first statement and returns it.
    ///
    /// # Errors
    /// A forged statement, an unreadable registry, a failed write.
    pub fn record(&self, statement: Revocation, authority: &PublicKey) -> Result<Revocation> {
        statement.verify(authority)?;
        let _lock = keyhaven_fs::FileLock::acquire(&self.dir.join(LOCK))?;
        let mut stored = self.read()?;
        stored.version = REVOCATION_VERSION;
        if let Some(existing) = stored
            .statements
            .iter()
            .find(|s| s.key_id == statement.key_id)
        {
            return Ok(existing.clone());
        }
        stored.statements.push(statement.clone());
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| CompromiseError::Invalid(e.to_string()))?;
        self.state.write(&self.path(), &json)?;
        Ok(statement)
    }

    /// Every statement, oldest first.
    ///
    /// # Errors
    /// The registry cannot be read.
    pub fn all(&self) -> Result<Vec<Revocation>> {
        Ok(self.read()?.statements)
    }

    /// The revocation of `key_id`, if any, reading the file again only if it changed.
    ///
    /// # Errors
    /// The registry cannot be read (callers must then refuse the operation: fail closed).
    pub fn check(&self, key_id: &str) -> Result<Option<Revocation>> {
        let path = self.path();
        let stamp = match std::fs::symlink_metadata(&path) {
            Ok(m) => Some((
                m.dev(),
                m.ino(),
                m.size(),
                (m.mtime(), m.mtime_nsec()),
                (m.ctime(), m.ctime_nsec()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::io(format!("inspect {}", path.display()), e).into());
            }
        };
        let map = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            (cache.stamp == stamp && stamp.is_some()).then(|| cache.by_key_id.clone())
        };
        let map = match map {
            Some(m) => m,
            // No file: unless the state says one was removed (then `read` fails: fail closed).
            None if stamp.is_none() => {
                self.read()?;
                return Ok(None);
            }
            None => {
                let stored = self.read()?;
                let map: Arc<BTreeMap<_, _>> = Arc::new(
                    stored
                        .statements
                        .into_iter()
                        .map(|s| (s.key_id.clone(), s))
                        .collect(),
                );
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.stamp = stamp;
                cache.by_key_id = map.clone();
                map
            }
        };
        Ok(map.get(key_id).cloned())
    }

    /// The exportable list of every statement, with the authority's public key.
    ///
    /// # Errors
    /// The registry cannot be read.
    pub fn export(&self, authority: &PublicKey) -> Result<RevocationList> {
        Ok(RevocationList::new(authority, self.all()?))
    }
}

/// A store that refuses private operations (`sign`, `sign_digest`, `agree`, `export_pkcs8`)
/// with a revoked key, consulting the shared [`Revocations`] registry on every call. A
/// registry that cannot be read refuses the operation too (fail closed).
pub struct RevocationCheckedStore<S: KeyStore> {
    inner: S,
    revocations: Arc<Revocations>,
}

impl<S: KeyStore> std::fmt::Debug for RevocationCheckedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationCheckedStore")
            .field("revocations", &self.revocations.dir)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> RevocationCheckedStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, revocations: Arc<Revocations>) -> Self {
        RevocationCheckedStore { inner, revocations }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn ensure_usable(&self, id: &KeyId) -> keyhaven_core::Result<()> {
        match self.revocations.check(id.as_str()) {
            Ok(None) => Ok(()),
            Ok(Some(r)) => Err(CompromiseError::Revoked {
                key_id: r.key_id,
                at: rfc3339(r.revoked_at),
                reason: r.reason,
            }
            .into()),
            // Fail closed, keeping what the failure means: a registry changed outside
            // keyhaven is corrupt (named), an unsafe file is a permission problem.
            Err(e) => Err(match Error::from(e) {
                Error::Corrupt { what, reason } => Error::Corrupt {
                    what,
                    reason: format!("{reason} (every private operation is refused until then)"),
                },
                e if e.is(keyhaven_core::ErrorKind::PermissionDenied) => e,
                e => Error::Unavailable {
                    backend: "revocations".into(),
                    reason: format!(
                        "the revocation registry cannot be read, so the operation was refused: \
                         {e}"
                    ),
                },
            }),
        }
    }
}

impl<S: KeyStore> KeyStore for RevocationCheckedStore<S> {
    // Giving a revoked key its passphrase uses nothing: the private operations refuse it.
    keyhaven_core::forward_key_store!(inner; info, generate, generate_with, details, unlock, list,
        get, find_by_label, resolve, public_key, delete, check, import_pkcs8, restore_pkcs8,
        restore_wrapped, attest_key);

    fn sign(&self, id: &KeyId, message: &[u8]) -> keyhaven_core::Result<Signature> {
        self.ensure_usable(id)?;
        self.inner.sign(id, message)
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> keyhaven_core::Result<Signature> {
        self.ensure_usable(id)?;
        self.inner.sign_digest(id, digest)
    }
    fn agree(&self, id: &KeyId, peer: &PublicKey) -> keyhaven_core::Result<SecretBytes> {
        self.ensure_usable(id)?;
        self.inner.agree(id, peer)
    }
    fn export_pkcs8(&self, id: &KeyId) -> keyhaven_core::Result<SecretBytes> {
        self.ensure_usable(id)?;
        self.inner.export_pkcs8(id)
    }
    fn export_wrapped(&self, id: &KeyId) -> keyhaven_core::Result<Vec<u8>> {
        self.ensure_usable(id)?;
        self.inner.export_wrapped(id)
    }
}
