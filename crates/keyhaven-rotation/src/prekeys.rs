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
const DOMAIN: &[u8] = b"keyhaven-signed-prekey/v1\n";

/// A signed prekey: an X25519 public key signed by the identity key.
///
/// The identity key signs `"keyhaven-signed-prekey/v1\n" || created_at (decimal) || "\n" ||
/// SPKI DER`, so the signature binds the key and its creation time and cannot be confused
/// with any other statement the identity key signs.
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
        let mut m = DOMAIN.to_vec();
        m.extend_from_slice(format!("{created_at}\n").as_bytes());
        m.extend_from_slice(spki_der);
        m
    }

    /// Checks the signature with the identity public key alone.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::BadSignature`] if it does not verify.
    pub fn verify(&self, identity: &PublicKey) -> Result<()> {
        if self.key.algorithm() != Algorithm::X25519 {
            return Err(
                CoreError::InvalidInput("a signed prekey must be an X25519 key".into()).into(),
            );
        }
        let m = Self::signed_message(self.key.spki_der(), self.created_at);
        Ok(keyhaven_crypto::verify(identity, &m, &self.signature)?)
    }
}

/// A one-time prekey handed out by [`PrekeyPool::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OneTimePrekey {
    /// Its id (the key's id in the store): what the peer sends back so the owner can
    /// [`PrekeyPool::consume`] it.
    pub id: KeyId,
    /// The X25519 public key.
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
    identity: KeyId,
    /// Oldest first; the last is current, the one before is kept for handshakes in flight.
    signed: Vec<SignedRecord>,
    one_time: Vec<OtkRecord>,
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
        };
        let _lock = pool.lock()?;
        let state = pool.read()?;
        if state.identity != pool.identity {
            return Err(CoreError::InvalidInput(format!(
                "the prekey pool in {} belongs to identity {}, not {}",
                dir.display(),
                state.identity,
                pool.identity
            ))
            .into());
        }
        Ok(pool)
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

    /// A short tag of the identity id, so labels stay short whatever the id's length.
    fn tag(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.identity.as_str().as_bytes())[..8])
    }

    fn label(&self, prefix: &str) -> Result<String> {
        Ok(format!("{prefix}{}-{}", self.tag(), KeyId::generate()?))
    }

    /// Deletes keys of this pool (by label prefix) that the state does not know.
    fn sweep(&self, state: &PoolState, prefix: &str) -> Result<()> {
        let mine = format!("{prefix}{}-", self.tag());
        for k in self.store.list()? {
            if k.label.starts_with(&mine)
                && !state.one_time.iter().any(|o| o.id == k.id)
                && !state.signed.iter().any(|s| s.key_id == k.id)
            {
                match self.store.delete(&k.id) {
                    Ok(()) => {}
                    Err(e) if e.is(ErrorKind::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
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
            match self
                .label(ONE_TIME_PREFIX)
                .and_then(|l| Ok(self.store.generate(Algorithm::X25519, &l)?))
            {
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
        let der = Base64::decode_vec(&rec.public_key).map_err(|_| {
            RotationError::corrupt(self.dir.join(STATE).display().to_string(), "bad public key")
        })?;
        let out = OneTimePrekey {
            id: rec.id.clone(),
            public: PublicKey::new(Algorithm::X25519, der),
        };
        self.write(&state)?;
        Ok(out)
    }

    /// Does the X25519 agreement between one-time prekey `id` and `peer`, then deletes the
    /// prekey's private part from the store. Works once per prekey.
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
        match self.store.delete(id) {
            Ok(()) => {}
            Err(e) if e.is(ErrorKind::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        state.one_time[i].state = OtkState::Consumed;
        self.write(&state)?;
        Ok(secret)
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
            .map(|s| self.decode_signed(s))
            .transpose()
    }

    fn decode_signed(&self, s: &SignedRecord) -> Result<SignedPrekey> {
        let bad = || {
            RotationError::corrupt(
                self.dir.join(STATE).display().to_string(),
                "bad signed prekey",
            )
        };
        let der = Base64::decode_vec(&s.public_key).map_err(|_| bad())?;
        let sig = Base64::decode_vec(&s.signature).map_err(|_| bad())?;
        let alg = self.store.get(&self.identity)?.algorithm;
        Ok(SignedPrekey {
            key_id: s.key_id.clone(),
            key: PublicKey::new(Algorithm::X25519, der),
            signature: Signature::from_raw(alg, sig).map_err(|_| bad())?,
            created_at: s.created_at,
        })
    }

    /// Makes a new signed prekey: an X25519 key in the store whose SPKI the identity key signs.
    /// The previous one is kept (for handshakes in flight); older ones are deleted.
    ///
    /// # Errors
    /// Backend errors (the identity key cannot sign, the backend is gone); storage errors.
    pub fn rotate_signed_prekey(&self) -> Result<SignedPrekey> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        self.sweep(&state, SIGNED_PREFIX)?;
        let now = self.clock.now();
        let info = self
            .store
            .generate(Algorithm::X25519, &self.label(SIGNED_PREFIX)?)?;
        let message = SignedPrekey::signed_message(info.public_key.spki_der(), now);
        let signature = match self.store.sign(&self.identity, &message) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.store.delete(&info.id);
                return Err(e.into());
            }
        };
        state.signed.push(SignedRecord {
            key_id: info.id.clone(),
            public_key: b64_key(&info.public_key),
            signature: Base64::encode_string(signature.as_raw()),
            created_at: now,
        });
        let old: Vec<SignedRecord> = if state.signed.len() > 2 {
            state.signed.drain(..state.signed.len() - 2).collect()
        } else {
            Vec::new()
        };
        self.write(&state)?;
        for o in old {
            match self.store.delete(&o.key_id) {
                Ok(()) => {}
                Err(e) if e.is(ErrorKind::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(SignedPrekey {
            key_id: info.id,
            key: info.public_key,
            signature,
            created_at: now,
        })
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

    /// X25519 agreement with the current (or the previous) signed prekey `key_id`.
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
