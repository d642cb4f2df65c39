//! Prekeys (seed 002): a signed prekey rotated on a schedule and a pool of one-time prekeys.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};

use keyhaven_core::{
    Algorithm, Error as CoreError, ErrorKind, KeyId, KeyStore, PublicKey, SecretBytes, Signature,
};
use keyhaven_fs::{FileLock, PlainState, StateFiles, create_private_dir};

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, RotationError};

const STATE: &str = "pool.json";
const LOCK: &str = "pool.lock";
const SIGNED_PREFIX: &str = "spk-";
const ONE_TIME_PREFIX: &str = "otpk-";
const IDENTITY_KEY_PREFIX: &str = "idk-";
const DOMAIN: &[u8] = b"keyhaven-signed-prekey/v1\n";
const IDENTITY_DOMAIN: &[u8] = b"keyhaven-identity-agreement-key/v1\n";
/// Consumed one-time prekeys remembered (so a second use is named as such); older markers are
/// dropped, and a prekey consumed that long ago is then reported as unknown.
pub const CONSUMED_MARKERS_KEPT: usize = 1024;

/// The labels of the keys a pool keeps in its identity's backend: one-time prekeys, signed
/// prekeys and the identity agreement key. Listings may hide them (they are not keys a person
/// uses by name).
pub const PREKEY_LABEL_PREFIXES: [&str; 3] = [ONE_TIME_PREFIX, SIGNED_PREFIX, IDENTITY_KEY_PREFIX];

/// Who may take over a pool: see [`PrekeyPool::open_succeeding`].
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Succession<'a> {
    /// Earlier versions whose pool passes on (re-signed).
    pub trusted: &'a [KeyId],
    /// Earlier versions whose pool is emptied (compromised or revoked).
    pub abandoned: &'a [KeyId],
}

impl<'a> Succession<'a> {
    /// A succession from `trusted` versions, with `abandoned` ones whose pools are emptied.
    pub fn new(trusted: &'a [KeyId], abandoned: &'a [KeyId]) -> Self {
        Succession { trusted, abandoned }
    }
}

/// Whether `label` is one a prekey pool gives its keys: a prefix of
/// [`PREKEY_LABEL_PREFIXES`], 16 hex digits of the pool's tag, `-` and a key id. A user's key
/// that merely starts with `otpk-` is not one.
pub fn is_prekey_label(label: &str) -> bool {
    PREKEY_LABEL_PREFIXES.iter().any(|p| {
        label.strip_prefix(p).is_some_and(|rest| {
            rest.len() > 17
                && rest.as_bytes()[16] == b'-'
                && rest[..16].bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}

/// Whether `alg` can be a pool's agreement curve: X25519 (the default), or ECDH over P-256 or
/// P-384 for devices without X25519 (SoftHSM 2.6, most TPMs).
fn agreement_curve(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::X25519 | Algorithm::EcdhP256 | Algorithm::EcdhP384
    )
}

/// A signed prekey: an agreement public key (X25519 unless the pool was made for a P-256 or
/// P-384 device) signed by the identity key. The identity agreement key
/// ([`PrekeyPool::identity_agreement_key`]) has the same shape under another domain.
///
/// The identity key signs `"keyhaven-signed-prekey/v1\n" || created_at (decimal) || "\n" ||
/// SPKI DER` (`"keyhaven-identity-agreement-key/v1\n"` for the identity agreement key), so the
/// signature binds the key and its creation time and cannot be confused with any other
/// statement the identity key signs, nor a signed prekey with the identity agreement key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignedPrekey {
    /// The prekey's id in the store.
    pub key_id: KeyId,
    /// The X25519 public key.
    pub key: PublicKey,
    /// The identity key's signature.
    pub signature: Signature,
    /// When it was made.
    pub created_at: u64,
}

impl SignedPrekey {
    /// The bytes the identity key signs for a prekey with SPKI `spki_der` made at `created_at`.
    pub fn signed_message(spki_der: &[u8], created_at: u64) -> Vec<u8> {
        message(DOMAIN, spki_der, created_at)
    }

    /// The bytes the identity key signs for an identity agreement key.
    pub fn identity_key_message(spki_der: &[u8], created_at: u64) -> Vec<u8> {
        message(IDENTITY_DOMAIN, spki_der, created_at)
    }

    /// Checks the signature of a signed prekey with the identity public key alone.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::BadSignature`] if it does not verify;
    /// [`keyhaven_core::Error::InvalidInput`] if the key is not an agreement key.
    pub fn verify(&self, identity: &PublicKey) -> Result<()> {
        self.verify_under(identity, DOMAIN)
    }

    /// Checks the signature of an identity agreement key with the identity public key alone.
    ///
    /// # Errors
    /// As [`SignedPrekey::verify`].
    pub fn verify_as_identity_key(&self, identity: &PublicKey) -> Result<()> {
        self.verify_under(identity, IDENTITY_DOMAIN)
    }

    fn verify_under(&self, identity: &PublicKey, domain: &[u8]) -> Result<()> {
        if !agreement_curve(self.key.algorithm()) {
            return Err(CoreError::InvalidInput(format!(
                "a signed prekey must be an X25519, ECDH P-256 or ECDH P-384 key, not {}",
                self.key.algorithm()
            ))
            .into());
        }
        let m = message(domain, self.key.spki_der(), self.created_at);
        Ok(keyhaven_crypto::verify(identity, &m, &self.signature)?)
    }
}

fn message(domain: &[u8], spki_der: &[u8], created_at: u64) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend_from_slice(format!("{created_at}\n").as_bytes());
    m.extend_from_slice(spki_der);
    m
}

/// A one-time prekey handed out by [`PrekeyPool::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OneTimePrekey {
    /// Its id (the key's id in the store): what the peer sends back so the owner can
    /// [`PrekeyPool::consume`] it.
    pub id: KeyId,
    /// The public key (on the pool's curve).
    pub public: PublicKey,
}

/// The state of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// One-time prekeys not yet handed out.
    pub available: u64,
    /// Handed out, not yet consumed.
    pub taken: u64,
    /// Consumed (private part destroyed).
    pub consumed: u64,
    /// The signed prekey's age in seconds, if there is one.
    pub signed_prekey_age: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum OtkState {
    Available,
    Taken,
    Consumed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtkRecord {
    id: KeyId,
    public_key: String,
    state: OtkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taken_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedRecord {
    key_id: KeyId,
    public_key: String,
    signature: String,
    created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolState {
    format: u32,
    /// The identity key (version) that signed the signed records.
    identity: KeyId,
    /// The label tag, fixed when the pool is made (absent in pools made before it was kept:
    /// then derived from `identity`, which had not changed yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    /// The agreement algorithm's short name (absent: X25519).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    curve: Option<String>,
    /// The identity agreement key (X3DH's IK), signed by the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity_key: Option<SignedRecord>,
    /// Oldest first; the last is current, the one before is kept for handshakes in flight.
    signed: Vec<SignedRecord>,
    one_time: Vec<OtkRecord>,
}

impl PoolState {
    fn curve(&self) -> Result<Algorithm> {
        match &self.curve {
            None => Ok(Algorithm::X25519),
            Some(name) => name
                .parse::<Algorithm>()
                .ok()
                .filter(|a| agreement_curve(*a))
                .ok_or_else(|| {
                    RotationError::corrupt("the prekey pool", format!("unknown curve '{name}'"))
                }),
        }
    }

    fn knows(&self, id: &KeyId) -> bool {
        self.one_time.iter().any(|o| &o.id == id)
            || self.signed.iter().any(|s| &s.key_id == id)
            || self.identity_key.as_ref().is_some_and(|k| &k.key_id == id)
    }
}

/// A pool of one-time prekeys and the signed prekey, for one identity key in one store.
///
/// State lives in `DIR/pool.json` (0600, atomic writes), changed only under an exclusive lock
/// on `DIR/pool.lock`: a one-time prekey is marked taken and written durably *before*
/// [`PrekeyPool::take`] returns it, so it is handed out at most once even across processes.
/// Keys are labelled `otpk-<tag>-<random>` and `spk-<tag>-<random>` (`tag`: 16 hex digits of
/// SHA-256 of the identity id) in the store;
/// keys with those labels that the state does not know (left by a crash during a refill) are
/// deleted at the next refill or signed prekey rotation.
pub struct PrekeyPool {
    dir: PathBuf,
    state: Arc<dyn StateFiles>,
    store: Arc<dyn KeyStore>,
    identity: KeyId,
    clock: Arc<dyn Clock>,
    /// The curve a new pool's keys are made on.
    new_curve: Algorithm,
}

impl std::fmt::Debug for PrekeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeyPool")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn b64_key(pk: &PublicKey) -> String {
    Base64::encode_string(pk.spki_der())
}

impl PrekeyPool {
    /// Opens (creating, 0700) the pool in `dir` for the identity key `identity` of `store`.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::NotFound`] if the identity key is not in the store;
    /// [`keyhaven_core::Error::InvalidInput`] if it cannot sign or the pool belongs to another
    /// identity; [`RotationError::Corrupt`] for a damaged state file.
    pub fn open(dir: &Path, store: Arc<dyn KeyStore>, identity: KeyId) -> Result<Self> {
        Self::open_with_state(dir, store, identity, Arc::new(PlainState))
    }

    /// [`PrekeyPool::open`], reading and writing the pool's state file through `state` (in a
    /// sealed home: checked against the home's integrity manifest).
    ///
    /// # Errors
    /// As [`PrekeyPool::open`].
    pub fn open_with_state(
        dir: &Path,
        store: Arc<dyn KeyStore>,
        identity: KeyId,
        state: Arc<dyn StateFiles>,
    ) -> Result<Self> {
        Self::open_succeeding(dir, store, identity, state, &Succession::default())
    }

    /// [`PrekeyPool::open_with_state`] for an identity that succeeds other keys (the earlier
    /// versions of a rotated identity):
    /// - a pool that belongs to one of `succession.trusted` passes to `identity`: each signed
    ///   record (signed prekeys, the identity agreement key) whose key is in the store with the
    ///   recorded public key and whose signature by the previous identity verifies is re-signed
    ///   by `identity` (creation times unchanged: handshakes in flight keep working); one-time
    ///   prekeys are kept. A record that fails either check is an error naming the pool: the
    ///   new identity never vouches for a key its predecessor did not;
    /// - a pool that belongs to one of `succession.abandoned` (a compromised or revoked
    ///   version), or to a trusted one no longer in the store (its signatures cannot be checked),
    ///   is emptied: every key of it deleted, a new pool started for `identity`;
    /// - a pool of any other identity is refused.
    ///
    /// # Errors
    /// As [`PrekeyPool::open`]; [`RotationError::Corrupt`] for a record that cannot be vouched
    /// for; the new identity's signing errors.
    pub fn open_succeeding(
        dir: &Path,
        store: Arc<dyn KeyStore>,
        identity: KeyId,
        state: Arc<dyn StateFiles>,
        succession: &Succession<'_>,
    ) -> Result<Self> {
        let info = store.get(&identity)?;
        if !info.algorithm.can_sign() {
            return Err(CoreError::InvalidInput(format!(
                "identity key {identity} is {}, which cannot sign prekeys",
                info.algorithm
            ))
            .into());
        }
        create_private_dir(dir)?;
        let pool = PrekeyPool {
            dir: dir.to_owned(),
            state,
            store,
            identity,
            clock: Arc::new(SystemClock),
            new_curve: Algorithm::X25519,
        };
        let _lock = pool.lock()?;
        let mut state = pool.read()?;
        if state.identity != pool.identity {
            let previous = state.identity.clone();
            if succession.abandoned.contains(&previous) {
                pool.abandon(&state)?;
            } else if !succession.trusted.contains(&previous) {
                return Err(CoreError::InvalidInput(format!(
                    "the prekey pool in {} belongs to identity {previous}, not {}",
                    dir.display(),
                    pool.identity
                ))
                .into());
            } else {
                match pool.store.get(&previous) {
                    Ok(old) => pool.pass_to_successor(&mut state, &old.public_key)?,
                    Err(e) if e.is(ErrorKind::NotFound) => pool.abandon(&state)?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(pool)
    }

    /// Deletes every key of the pool and starts an empty one for the pool's identity.
    fn abandon(&self, state: &PoolState) -> Result<()> {
        let ids = state
            .one_time
            .iter()
            .filter(|o| o.state != OtkState::Consumed)
            .map(|o| &o.id)
            .chain(state.signed.iter().map(|s| &s.key_id))
            .chain(state.identity_key.iter().map(|k| &k.key_id));
        for id in ids {
            self.delete_key(id)?;
        }
        let fresh = PoolState {
            format: 1,
            identity: self.identity.clone(),
            tag: Some(tag_of(&self.identity)),
            curve: state.curve.clone(),
            identity_key: None,
            signed: Vec::new(),
            one_time: Vec::new(),
        };
        self.write(&fresh)
    }

    /// Re-signs every signed record under the pool's (new) identity and records it, each only
    /// if its key is in the store as recorded and `previous` signed it.
    fn pass_to_successor(&self, state: &mut PoolState, previous: &PublicKey) -> Result<()> {
        if state.tag.is_none() {
            state.tag = Some(tag_of(&state.identity));
        }
        let mut records: Vec<(&mut SignedRecord, &[u8])> = state
            .signed
            .iter_mut()
            .map(|r| (r, DOMAIN))
            .chain(state.identity_key.iter_mut().map(|r| (r, IDENTITY_DOMAIN)))
            .collect();
        for (rec, domain) in records.iter_mut() {
            let der = self.vouched_der(rec)?;
            let bad = || {
                RotationError::corrupt(
                    self.dir.join(STATE).display().to_string(),
                    format!(
                        "key {} is not signed by the previous identity: the pool was changed \
                         outside keyhaven, and the new identity will not vouch for it",
                        rec.key_id
                    ),
                )
            };
            let sig = Base64::decode_vec(&rec.signature).map_err(|_| bad())?;
            let sig = Signature::from_raw(previous.algorithm(), sig).map_err(|_| bad())?;
            keyhaven_crypto::verify(previous, &message(domain, &der, rec.created_at), &sig)
                .map_err(|_| bad())?;
            let m = message(domain, &der, rec.created_at);
            rec.signature = Base64::encode_string(self.store.sign(&self.identity, &m)?.as_raw());
        }
        state.identity = self.identity.clone();
        self.write(state)
    }

    /// The recorded public key of a pool key, if the store holds that key with that public key.
    fn vouched_der(&self, rec: &SignedRecord) -> Result<Vec<u8>> {
        let recorded = self.decode_der(&rec.public_key)?;
        let stored = self.store.get(&rec.key_id)?.public_key;
        if stored.spki_der() != recorded.as_slice() {
            return Err(RotationError::corrupt(
                self.dir.join(STATE).display().to_string(),
                format!(
                    "the public key recorded for key {} is not the store's: the pool was changed \
                     outside keyhaven",
                    rec.key_id
                ),
            ));
        }
        Ok(recorded)
    }

    /// Makes a new pool's keys on `curve` (X25519 by default; ECDH P-256 or P-384 for a device
    /// without X25519). A pool that already has keys keeps the curve it has.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::InvalidInput`] if `curve` is not an agreement algorithm.
    pub fn with_curve(mut self, curve: Algorithm) -> Result<Self> {
        if !agreement_curve(curve) {
            return Err(CoreError::InvalidInput(format!(
                "a prekey pool's curve must be x25519, ecdh-p256 or ecdh-p384, not {curve}"
            ))
            .into());
        }
        self.new_curve = curve;
        Ok(self)
    }

    /// The curve of the pool's keys.
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] for a damaged state file.
    pub fn curve(&self) -> Result<Algorithm> {
        let state = self.read()?;
        if state.signed.is_empty() && state.one_time.is_empty() && state.identity_key.is_none() {
            return Ok(self.new_curve);
        }
        state.curve()
    }

    /// The identity key (version) the pool's signed keys are signed by.
    pub fn identity(&self) -> &KeyId {
        &self.identity
    }

    /// The store the pool's keys live in.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    fn decode_der(&self, b64: &str) -> Result<Vec<u8>> {
        Base64::decode_vec(b64).map_err(|_| {
            RotationError::corrupt(self.dir.join(STATE).display().to_string(), "bad public key")
        })
    }

    /// Uses `clock` for creation times and ages.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn lock(&self) -> Result<FileLock> {
        Ok(FileLock::acquire(&self.dir.join(LOCK))?)
    }

    fn read(&self) -> Result<PoolState> {
        let path = self.dir.join(STATE);
        let Some(bytes) = self.state.read(&path)? else {
            return Ok(PoolState {
                format: 1,
                identity: self.identity.clone(),
                tag: Some(tag_of(&self.identity)),
                curve: (self.new_curve != Algorithm::X25519)
                    .then(|| self.new_curve.short_name().to_owned()),
                identity_key: None,
                signed: Vec::new(),
                one_time: Vec::new(),
            });
        };
        let state: PoolState = serde_json::from_slice(&bytes).map_err(|e| {
            RotationError::corrupt(
                path.display().to_string(),
                format!("not a prekey pool: {e}"),
            )
        })?;
        if state.format != 1 {
            return Err(RotationError::corrupt(
                path.display().to_string(),
                format!("unsupported pool format {}", state.format),
            ));
        }
        Ok(state)
    }

    fn write(&self, state: &PoolState) -> Result<()> {
        let json = serde_json::to_vec(state)
            .map_err(|e| CoreError::InvalidInput(format!("cannot encode the prekey pool: {e}")))?;
        self.state.write(&self.dir.join(STATE), &json)?;
        Ok(())
    }

    fn tag(state: &PoolState) -> String {
        state.tag.clone().unwrap_or_else(|| tag_of(&state.identity))
    }

    fn label(state: &PoolState, prefix: &str) -> Result<String> {
        Ok(format!(
            "{prefix}{}-{}",
            Self::tag(state),
            KeyId::generate()?
        ))
    }

    /// Generates a key of the pool on its curve.
    fn generate(&self, state: &mut PoolState, prefix: &str) -> Result<keyhaven_core::KeyInfo> {
        if state.signed.is_empty() && state.one_time.is_empty() && state.identity_key.is_none() {
            state.curve = (self.new_curve != Algorithm::X25519)
                .then(|| self.new_curve.short_name().to_owned());
        }
        let curve = state.curve()?;
        Ok(self.store.generate(curve, &Self::label(state, prefix)?)?)
    }

    /// Deletes keys of this pool (by label prefix) that the state does not know.
    fn sweep(&self, state: &PoolState, prefix: &str) -> Result<()> {
        let mine = format!("{prefix}{}-", Self::tag(state));
        for k in self.store.list()? {
            if k.label.starts_with(&mine) && !state.knows(&k.id) {
                self.delete_key(&k.id)?;
            }
        }
        Ok(())
    }

    /// Counts of available, taken and consumed one-time prekeys, and the signed prekey's age.
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] for a damaged state file; I/O errors.
    pub fn status(&self) -> Result<PoolStatus> {
        let state = self.read()?;
        let count = |s| state.one_time.iter().filter(|o| o.state == s).count() as u64;
        Ok(PoolStatus {
            available: count(OtkState::Available),
            taken: count(OtkState::Taken),
            consumed: count(OtkState::Consumed),
            signed_prekey_age: state
                .signed
                .last()
                .map(|s| self.clock.now().saturating_sub(s.created_at)),
        })
    }

    /// If fewer than `low_water` one-time prekeys are available, generates enough to have
    /// `refill_to`. Returns how many were made.
    ///
    /// # Errors
    /// Backend and storage errors (prekeys made before the error are kept).
    pub fn replenish(&self, low_water: u32, refill_to: u32) -> Result<usize> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        let available = state
            .one_time
            .iter()
            .filter(|o| o.state == OtkState::Available)
            .count();
        if available >= low_water as usize {
            return Ok(0);
        }
        self.sweep(&state, ONE_TIME_PREFIX)?;
        let want = (refill_to as usize).saturating_sub(available);
        let mut made = 0;
        let mut result = Ok(());
        for _ in 0..want {
            match self.generate(&mut state, ONE_TIME_PREFIX) {
                Ok(info) => {
                    state.one_time.push(OtkRecord {
                        id: info.id.clone(),
                        public_key: b64_key(&info.public_key),
                        state: OtkState::Available,
                        taken_at: None,
                    });
                    made += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if made > 0 {
            self.write(&state)?;
        }
        result.map(|()| made)
    }

    /// Hands out one available one-time prekey, marking it taken durably before returning it:
    /// never the same one twice, even to concurrent processes.
    ///
    /// # Errors
    /// [`RotationError::NotFound`] when none is available (replenish the pool); storage errors.
    pub fn take(&self) -> Result<OneTimePrekey> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        let now = self.clock.now();
        let Some(rec) = state
            .one_time
            .iter_mut()
            .find(|o| o.state == OtkState::Available)
        else {
            return Err(RotationError::NotFound(
                "an available one-time prekey (the pool is empty: replenish it)".into(),
            ));
        };
        rec.state = OtkState::Taken;
        rec.taken_at = Some(now);
        let (id, b64) = (rec.id.clone(), rec.public_key.clone());
        // The store's public key, which must be the one recorded (never a key swapped into the
        // state file).
        let public = self.store.get(&id)?.public_key;
        if public.spki_der() != self.decode_der(&b64)?.as_slice() {
            return Err(RotationError::corrupt(
                self.dir.join(STATE).display().to_string(),
                format!("the public key recorded for one-time prekey {id} is not the store's"),
            ));
        }
        let out = OneTimePrekey {
            id,
            public: PublicKey::new(state.curve()?, public.spki_der().to_vec()),
        };
        self.write(&state)?;
        Ok(out)
    }

    /// Does the agreement between one-time prekey `id` and `peer`, then deletes the prekey's
    /// private part from the store. Works once per prekey. The consumed marker stays (a second
    /// use is refused as such) among the last [`CONSUMED_MARKERS_KEPT`]; older ones are dropped.
    ///
    /// # Errors
    /// [`RotationError::PrekeyUsed`] if it was already consumed (or never handed out);
    /// [`RotationError::NotFound`] for an unknown id; agreement and backend errors.
    pub fn consume(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        let Some(i) = state.one_time.iter().position(|o| &o.id == id) else {
            return Err(RotationError::NotFound(format!("one-time prekey {id}")));
        };
        match state.one_time[i].state {
            OtkState::Taken => {}
            OtkState::Consumed => {
                return Err(RotationError::PrekeyUsed {
                    id: id.to_string(),
                    reason: "already consumed: its private part was destroyed".into(),
                });
            }
            OtkState::Available => {
                return Err(RotationError::PrekeyUsed {
                    id: id.to_string(),
                    reason: "it was never handed out (take it first)".into(),
                });
            }
        }
        let secret = self.store.agree(id, peer)?;
        self.delete_key(id)?;
        self.mark_consumed(&mut state, i);
        self.write(&state)?;
        Ok(secret)
    }

    /// Deletes key `id` of the pool from the store; one already gone is fine.
    fn delete_key(&self, id: &KeyId) -> Result<()> {
        match self.store.delete(id) {
            Ok(()) => Ok(()),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks one-time prekey `i` consumed (its public key forgotten) and drops the oldest
    /// markers beyond [`CONSUMED_MARKERS_KEPT`].
    fn mark_consumed(&self, state: &mut PoolState, i: usize) {
        let rec = &mut state.one_time[i];
        rec.state = OtkState::Consumed;
        rec.public_key.clear();
        rec.taken_at = Some(self.clock.now());
        compact(state);
    }

    /// Destroys one-time prekey `id` without agreeing: a prekey handed out whose handshake
    /// will never come, or one the owner wants gone. Taken and available ones alike.
    ///
    /// # Errors
    /// [`RotationError::PrekeyUsed`] if it was already consumed; [`RotationError::NotFound`]
    /// for an unknown id; backend errors.
    pub fn discard(&self, id: &KeyId) -> Result<()> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        let Some(i) = state.one_time.iter().position(|o| &o.id == id) else {
            return Err(RotationError::NotFound(format!("one-time prekey {id}")));
        };
        if state.one_time[i].state == OtkState::Consumed {
            return Err(RotationError::PrekeyUsed {
                id: id.to_string(),
                reason: "already consumed: its private part was destroyed".into(),
            });
        }
        self.delete_key(id)?;
        self.mark_consumed(&mut state, i);
        self.write(&state)
    }

    /// The current signed prekey, if one was made.
    ///
    /// # Errors
    /// [`RotationError::Corrupt`] for a damaged state file.
    pub fn signed_prekey(&self) -> Result<Option<SignedPrekey>> {
        let state = self.read()?;
        state
            .signed
            .last()
            .map(|s| self.decode_signed(s, state.curve()?))
            .transpose()
    }

    fn decode_signed(&self, s: &SignedRecord, curve: Algorithm) -> Result<SignedPrekey> {
        let bad = || {
            RotationError::corrupt(
                self.dir.join(STATE).display().to_string(),
                "bad signed prekey",
            )
        };
        let der = self.vouched_der(s)?;
        let sig = Base64::decode_vec(&s.signature).map_err(|_| bad())?;
        let alg = self.store.get(&self.identity)?.algorithm;
        Ok(SignedPrekey {
            key_id: s.key_id.clone(),
            key: PublicKey::new(curve, der),
            signature: Signature::from_raw(alg, sig).map_err(|_| bad())?,
            created_at: s.created_at,
        })
    }

    /// The identity agreement key (X3DH's identity key IK: the identity signs, this key
    /// agrees), made on first use and signed by the identity; it lives as long as the pool and
    /// is re-signed when the identity is rotated.
    ///
    /// # Errors
    /// Backend errors; storage errors.
    pub fn identity_agreement_key(&self) -> Result<SignedPrekey> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        if let Some(rec) = &state.identity_key {
            return self.decode_signed(rec, state.curve()?);
        }
        self.sweep(&state, IDENTITY_KEY_PREFIX)?;
        let (record, key) = self.make_signed(&mut state, IDENTITY_KEY_PREFIX, IDENTITY_DOMAIN)?;
        state.identity_key = Some(record);
        self.write(&state)?;
        Ok(key)
    }

    /// A new key of the pool, signed by the identity under `domain` (deleted again if the
    /// identity cannot sign): its record and what it is.
    fn make_signed(
        &self,
        state: &mut PoolState,
        prefix: &str,
        domain: &[u8],
    ) -> Result<(SignedRecord, SignedPrekey)> {
        let now = self.clock.now();
        let info = self.generate(state, prefix)?;
        let m = message(domain, info.public_key.spki_der(), now);
        let signature = match self.store.sign(&self.identity, &m) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.store.delete(&info.id);
                return Err(e.into());
            }
        };
        let record = SignedRecord {
            key_id: info.id.clone(),
            public_key: b64_key(&info.public_key),
            signature: Base64::encode_string(signature.as_raw()),
            created_at: now,
        };
        Ok((
            record,
            SignedPrekey {
                key_id: info.id,
                key: info.public_key,
                signature,
                created_at: now,
            },
        ))
    }

    /// Agreement between the identity agreement key and `peer`.
    ///
    /// # Errors
    /// [`RotationError::NotFound`] if the pool has no identity agreement key yet.
    pub fn agree_identity(&self, peer: &PublicKey) -> Result<SecretBytes> {
        let state = self.read()?;
        let Some(rec) = &state.identity_key else {
            return Err(RotationError::NotFound(
                "the pool's identity agreement key (none was made yet)".into(),
            ));
        };
        Ok(self.store.agree(&rec.key_id, peer)?)
    }

    /// Makes a new signed prekey: an agreement key in the store whose SPKI the identity key
    /// signs. The previous one is kept (for handshakes in flight); older ones are deleted.
    ///
    /// # Errors
    /// Backend errors (the identity key cannot sign, the backend is gone); storage errors.
    pub fn rotate_signed_prekey(&self) -> Result<SignedPrekey> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        self.sweep(&state, SIGNED_PREFIX)?;
        let (record, key) = self.make_signed(&mut state, SIGNED_PREFIX, DOMAIN)?;
        state.signed.push(record);
        let old: Vec<SignedRecord> = if state.signed.len() > 2 {
            state.signed.drain(..state.signed.len() - 2).collect()
        } else {
            Vec::new()
        };
        self.write(&state)?;
        for o in old {
            self.delete_key(&o.key_id)?;
        }
        Ok(key)
    }

    /// [`PrekeyPool::rotate_signed_prekey`] if there is none or it is at least `max_age`
    /// seconds old.
    ///
    /// # Errors
    /// As [`PrekeyPool::rotate_signed_prekey`].
    pub fn rotate_signed_prekey_if_due(&self, max_age: u64) -> Result<Option<SignedPrekey>> {
        match self.status()?.signed_prekey_age {
            Some(age) if age < max_age => Ok(None),
            _ => self.rotate_signed_prekey().map(Some),
        }
    }

    /// Agreement with the current (or the previous) signed prekey `key_id`.
    ///
    /// # Errors
    /// [`RotationError::NotFound`] if `key_id` is not one of the pool's signed prekeys.
    pub fn agree_signed(&self, key_id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        let state = self.read()?;
        if !state.signed.iter().any(|s| &s.key_id == key_id) {
            return Err(RotationError::NotFound(format!("signed prekey {key_id}")));
        }
        Ok(self.store.agree(key_id, peer)?)
    }
}

/// A short tag of an identity id, so labels stay short whatever the id's length.
fn tag_of(identity: &KeyId) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(identity.as_str().as_bytes())[..8])
}

/// Drops the oldest consumed markers beyond [`CONSUMED_MARKERS_KEPT`].
fn compact(state: &mut PoolState) {
    let consumed = state
        .one_time
        .iter()
        .filter(|o| o.state == OtkState::Consumed)
        .count();
    let mut excess = consumed.saturating_sub(CONSUMED_MARKERS_KEPT);
    state.one_time.retain(|o| {
        if excess > 0 && o.state == OtkState::Consumed {
            excess -= 1;
            false
        } else {
            true
        }
    });
}
