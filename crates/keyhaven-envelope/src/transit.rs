//! Vault-transit semantics over the hierarchy: named keys with versions, `vault:vN:`
//! ciphertexts, `min_decryption_version`, rewrap and data keys. The HTTP face (paths, JSON,
//! the token header) is the server's; this is what it calls.
//!
//! Each version of a transit key is a [`Kek`] whose scope names the tenant and the key
//! (`TENANT/transit/NAME`), the tier and the version, stored only as a [`WrappedKek`] under the
//! master key: a wrapped version moved to another key's row is refused. A ciphertext is
//! `vault:vN:` and the standard base64 of an [`Envelope`] whose DEK is wrapped under version N in
//! the same scope: a ciphertext of one key, tenant or tier does not decrypt under another.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use base64ct::{Base64, Encoding};
use keyhaven_core::SecretBytes;
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::hierarchy::{Envelope, Kek, KekScope, MasterKey, SecretContext, WrappedKek};

/// The most versions a transit key has (a key is read whole for each operation).
pub const MAX_VERSIONS: u32 = 1000;

/// The prefix of every transit ciphertext, as Vault writes it.
pub const CIPHERTEXT_PREFIX: &str = "vault:v";

/// What a transit key is for, named as Vault names its key types. A key's type is part of its
/// KEKs' scope (the owner `TENANT/transit/NAME` for `aes256-gcm96`, with `/ed25519`,
/// `/ecdsa-p256` or `/ecdsa-p384` after it for signing keys), so it is sealed into every wrapped
/// version by the master key: a row's type cannot be changed without the master key noticing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransitKeyType {
    /// AES-256-GCM envelopes: encrypt, decrypt, rewrap, data keys.
    #[default]
    Aes256Gcm96,
    /// Ed25519 signatures (RFC 8032), derived from each version's KEK.
    Ed25519,
    /// ECDSA P-256 signatures, derived from each version's KEK.
    EcdsaP256,
    /// ECDSA P-384 signatures, derived from each version's KEK.
    EcdsaP384,
}

impl TransitKeyType {
    /// Every type, in the order Vault lists them.
    pub const ALL: [TransitKeyType; 4] = [
        TransitKeyType::Aes256Gcm96,
        TransitKeyType::Ed25519,
        TransitKeyType::EcdsaP256,
        TransitKeyType::EcdsaP384,
    ];

    /// The type Vault calls `name`.
    ///
    /// # Errors
    /// [`EnvelopeError::InvalidInput`] naming the types there are.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                invalid(format!(
                    "key type '{name}' is not supported: use aes256-gcm96, ed25519, ecdsa-p256 \
                     or ecdsa-p384"
                ))
            })
    }

    /// Vault's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitKeyType::Aes256Gcm96 => "aes256-gcm96",
            TransitKeyType::Ed25519 => "ed25519",
            TransitKeyType::EcdsaP256 => "ecdsa-p256",
            TransitKeyType::EcdsaP384 => "ecdsa-p384",
        }
    }

    /// The signature algorithm, for a signing type.
    pub fn signing_algorithm(self) -> Option<keyhaven_core::Algorithm> {
        match self {
            TransitKeyType::Aes256Gcm96 => None,
            TransitKeyType::Ed25519 => Some(keyhaven_core::Algorithm::Ed25519),
            TransitKeyType::EcdsaP256 => Some(keyhaven_core::Algorithm::EcdsaP256),
            TransitKeyType::EcdsaP384 => Some(keyhaven_core::Algorithm::EcdsaP384),
        }
    }

    /// What follows `TENANT/transit/NAME` in the KEK scope's owner.
    fn suffix(self) -> &'static str {
        match self {
            TransitKeyType::Aes256Gcm96 => "",
            TransitKeyType::Ed25519 => "/ed25519",
            TransitKeyType::EcdsaP256 => "/ecdsa-p256",
            TransitKeyType::EcdsaP384 => "/ecdsa-p384",
        }
    }
}

impl std::fmt::Display for TransitKeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a signature is made over: the message, hashed by the engine (Ed25519 signs it whole),
/// or a digest the caller made (Vault's `prehashed`, ECDSA only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInput<'a> {
    /// The message, and the hash ECDSA signs it with (Ed25519 ignores it, as Vault does).
    Message(&'a [u8], keyhaven_crypto::kdf::Hash),
    /// A digest the caller computed.
    Digest(&'a [u8]),
}

/// The label a transit signing key is derived under (with the version's scope).
const SIGNING_PURPOSE: &str = "keyhaven transit signing key";

/// A transit key as stored: its versions (wrapped) and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitKeyRecord {
    /// Its name.
    pub name: String,
    /// When it was made (seconds since the epoch).
    pub created_at: u64,
    /// Versions below this do not decrypt (Vault's `min_decryption_version`).
    pub min_decryption_version: u32,
    /// Each version's wrapped KEK ([`WrappedKek::to_bytes`]) and when it was made.
    pub versions: BTreeMap<u32, (Vec<u8>, u64)>,
}

impl TransitKeyRecord {
    /// The newest version.
    pub fn latest_version(&self) -> u32 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }
}

/// Where transit keys live (the server's database in production). Every method is one
/// transaction; `add_version` must refuse a version that is not `latest + 1`, so two nodes
/// rotating at once cannot both win.
pub trait TransitStore: Send + Sync {
    /// The key `name`, if any.
    ///
    /// # Errors
    /// The store's failure.
    fn load(&self, name: &str) -> Result<Option<TransitKeyRecord>>;

    /// Creates a key with its first version; `false` if the name is taken.
    ///
    /// # Errors
    /// The store's failure.
    fn create(&self, record: &TransitKeyRecord) -> Result<bool>;

    /// Adds `version` to `name`; `false` if `version` is not the latest plus one (another
    /// rotation won) or the key does not exist.
    ///
    /// # Errors
    /// The store's failure.
    fn add_version(&self, name: &str, version: u32, wrapped: &[u8], at: u64) -> Result<bool>;

    /// Sets `min_decryption_version`; `false` if the key does not exist.
    ///
    /// # Errors
    /// The store's failure.
    fn set_min_decryption_version(&self, name: &str, version: u32) -> Result<bool>;
}

/// Why a transit call was refused, apart from the hierarchy's own errors.
fn invalid(message: impl Into<String>) -> EnvelopeError {
    EnvelopeError::InvalidInput(message.into())
}

/// Checks a transit key name: 1 to 128 of `[A-Za-z0-9._-]`, as a URL path segment takes it.
///
/// # Errors
/// [`EnvelopeError::InvalidInput`] naming what is wrong.
pub fn check_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "'{name}' is not a transit key name: use 1 to 128 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// Splits `vault:vN:BASE64` into N and the envelope.
///
/// # Errors
/// [`EnvelopeError::Malformed`] saying what is wrong.
pub fn parse_ciphertext(ciphertext: &str) -> Result<(u32, Envelope)> {
    let bad = |reason: &str| EnvelopeError::Malformed {
        what: "transit ciphertext",
        reason: reason.into(),
    };
    let rest = ciphertext
        .strip_prefix(CIPHERTEXT_PREFIX)
        .ok_or_else(|| bad("it does not start with vault:v"))?;
    let (version, body) = rest
        .split_once(':')
        .ok_or_else(|| bad("no ':' after the version"))?;
    if version.is_empty()
        || version.len() > 10
        || version.starts_with('0')
        || !version.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad(
            "the version is not a number from 1 without leading zeros",
        ));
    }
    let version: u32 = version
        .parse()
        .map_err(|_| bad("the version is out of range"))?;
    let bytes = Base64::decode_vec(body).map_err(|_| bad("the body is not standard base64"))?;
    let envelope = Envelope::from_bytes(&bytes)?;
    if envelope.kek_version() != version {
        return Err(bad("the version in the prefix is not the one inside"));
    }
    Ok((version, envelope))
}

fn format_ciphertext(envelope: &Envelope) -> String {
    format!(
        "{CIPHERTEXT_PREFIX}{}:{}",
        envelope.kek_version(),
        Base64::encode_string(&envelope.to_bytes())
    )
}

/// The transit engine of one tenant and tier: its master key, its store, and a cache of
/// unwrapped versions (each unwrap is one agreement in the master key's backend).
pub struct Transit<S> {
    master: Arc<MasterKey>,
    store: S,
    tenant: String,
    tier: u8,
    cache: Mutex<HashMap<(String, u32), Arc<Kek>>>,
}

impl<S: TransitStore> Transit<S> {
    /// The engine for `tenant` at `tier`. One opened master key serves every engine (opening
    /// one asks its backend for two agreements).
    ///
    /// # Errors
    /// [`EnvelopeError::InvalidInput`] for a bad tenant (over 100 bytes, empty, control
    /// characters, or a '/') or tier.
    pub fn new(master: Arc<MasterKey>, store: S, tenant: &str, tier: u8) -> Result<Self> {
        if tenant.len() > 100 || tenant.contains('/') {
            return Err(invalid(format!(
                "a transit tenant is 1 to 100 bytes without '/', not {tenant:?}"
            )));
        }
        KekScope::new(tenant, tier, 1)?;
        Ok(Transit {
            master,
            store,
            tenant: tenant.to_owned(),
            tier,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The scope owner of key `name`'s KEKs and ciphertexts.
    fn owner(&self, name: &str) -> String {
        format!("{}/transit/{name}", self.tenant)
    }

    fn scope_of(&self, name: &str, key_type: TransitKeyType, version: u32) -> Result<KekScope> {
        KekScope::new(
            &format!("{}{}", self.owner(name), key_type.suffix()),
            self.tier,
            version,
        )
    }

    /// The type of a stored key, read from the scope sealed into its first version (the
    /// unwrap of every version checks the whole scope again).
    ///
    /// # Errors
    /// [`EnvelopeError::Malformed`] for a version that is not a wrapped KEK of this key.
    pub fn key_type(&self, record: &TransitKeyRecord) -> Result<TransitKeyType> {
        let malformed = |reason: String| EnvelopeError::Malformed {
            what: "transit key",
            reason,
        };
        let (_, (first, _)) = record
            .versions
            .first_key_value()
            .ok_or_else(|| malformed(format!("key '{}' has no version", record.name)))?;
        let scope = WrappedKek::peek_scope(first)?;
        TransitKeyType::ALL
            .into_iter()
            .find(|t| scope.tenant() == format!("{}{}", self.owner(&record.name), t.suffix()))
            .ok_or_else(|| {
                malformed(format!(
                    "key '{}' holds the KEK of {scope}, not one of its own",
                    record.name
                ))
            })
    }

    /// The record of `name`, refused unless it is an `aes256-gcm96` key.
    fn aes_record(&self, name: &str) -> Result<TransitKeyRecord> {
        let record = self.record(name)?;
        match self.key_type(&record)? {
            TransitKeyType::Aes256Gcm96 => Ok(record),
            other => Err(invalid(format!(
                "key '{name}' is an {other} key: it signs and verifies, it does not encrypt"
            ))),
        }
    }

    fn context(&self, name: &str) -> Result<SecretContext> {
        SecretContext::new(&self.owner(name), "data", 0, self.tier)
    }

    fn record(&self, name: &str) -> Result<TransitKeyRecord> {
        check_key_name(name)?;
        self.store
            .load(name)?
            .ok_or_else(|| EnvelopeError::Backend(keyhaven_core::Error::key_not_found(name)))
    }

    /// The version `version` of `name` unwrapped, from the cache or the master key.
    fn kek(&self, record: &TransitKeyRecord, version: u32) -> Result<Arc<Kek>> {
        let key = (record.name.clone(), version);
        let expected = self.scope_of(&record.name, self.key_type(record)?, version)?;
        // A cached KEK serves only the scope the record calls for now: a record whose type
        // was changed in the store does not get the old type's KEK from memory.
        if let Some(k) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            && k.scope() == &expected
        {
            return Ok(Arc::clone(k));
        }
        let (wrapped, _) = record
            .versions
            .get(&version)
            .ok_or_else(|| invalid(format!("key '{}' has no version {version}", record.name)))?;
        let wrapped = WrappedKek::from_bytes(wrapped)?;
        if wrapped.scope() != &expected {
            return Err(EnvelopeError::Malformed {
                what: "wrapped KEK",
                reason: format!(
                    "key '{}' version {version} holds the KEK of {}, not of {expected}",
                    record.name,
                    wrapped.scope()
                ),
            });
        }
        let kek = Arc::new(self.master.unwrap(&wrapped, &expected)?);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&kek));
        Ok(kek)
    }

    /// Creates the key `name` with version 1; `false` if it exists already (nothing changes,
    /// as Vault answers a second create).
    ///
    /// # Errors
    /// A bad name, the RNG or the store.
    pub fn create_key(&self, name: &str, now: u64) -> Result<bool> {
        self.create_key_of(name, TransitKeyType::Aes256Gcm96, now)
    }

    /// Creates the key `name` of type `key_type` with version 1; `false` if a key of that name
    /// exists already, whatever its type (nothing changes).
    ///
    /// # Errors
    /// As [`Transit::create_key`].
    pub fn create_key_of(&self, name: &str, key_type: TransitKeyType, now: u64) -> Result<bool> {
        check_key_name(name)?;
        let kek = Kek::generate(self.scope_of(name, key_type, 1)?)?;
        let wrapped = self.master.wrap(&kek)?.to_bytes();
        let record = TransitKeyRecord {
            name: name.to_owned(),
            created_at: now,
            min_decryption_version: 1,
            versions: BTreeMap::from([(1, (wrapped, now))]),
        };
        self.store.create(&record)
    }

    /// The key's record (versions and settings), for reading it.
    ///
    /// # Errors
    /// `NotFound` for an unknown key.
    pub fn read_key(&self, name: &str) -> Result<TransitKeyRecord> {
        self.record(name)
    }

    /// Adds a version; returns it. New encryptions use it; older versions still decrypt.
    ///
    /// # Errors
    /// `NotFound`; [`EnvelopeError::InvalidInput`] if another rotation won the race (retry),
    /// or the key has [`MAX_VERSIONS`] already.
    pub fn rotate(&self, name: &str, now: u64) -> Result<u32> {
        let record = self.record(name)?;
        if record.latest_version() >= MAX_VERSIONS {
            return Err(invalid(format!(
                "key '{name}' has {MAX_VERSIONS} versions, the most a key has: make a new key"
            )));
        }
        let scope = self
            .scope_of(name, self.key_type(&record)?, record.latest_version())?
            .next()?;
        let next = scope.version();
        let kek = Kek::generate(scope)?;
        let wrapped = self.master.wrap(&kek)?.to_bytes();
        if !self.store.add_version(name, next, &wrapped, now)? {
            return Err(invalid(format!(
                "key '{name}' was rotated meanwhile: read it and try again"
            )));
        }
        Ok(next)
    }

    /// Sets `min_decryption_version` (1 to the latest version).
    ///
    /// # Errors
    /// `NotFound`; [`EnvelopeError::InvalidInput`] for a version outside 1..=latest.
    pub fn set_min_decryption_version(&self, name: &str, version: u32) -> Result<()> {
        let record = self.record(name)?;
        if version == 0 || version > record.latest_version() {
            return Err(invalid(format!(
                "min_decryption_version {version} is outside 1 to {} (key '{name}')",
                record.latest_version()
            )));
        }
        self.store.set_min_decryption_version(name, version)?;
        Ok(())
    }

    /// Encrypts under the latest version (or `version`): `vault:vN:...`.
    ///
    /// # Errors
    /// `NotFound`; [`EnvelopeError::InvalidInput`] for a version that does not exist or is
    /// below `min_decryption_version` (Vault refuses to encrypt to a version it would not
    /// decrypt); the backend's error if the master key cannot be used.
    pub fn encrypt(&self, name: &str, plaintext: &[u8], version: Option<u32>) -> Result<String> {
        let record = self.aes_record(name)?;
        let version = version.unwrap_or_else(|| record.latest_version());
        if version < record.min_decryption_version {
            return Err(invalid(format!(
                "version {version} of key '{name}' is below its min_decryption_version {}",
                record.min_decryption_version
            )));
        }
        let kek = self.kek(&record, version)?;
        Ok(format_ciphertext(
            &kek.seal(&self.context(name)?, plaintext)?,
        ))
    }

    /// Decrypts a `vault:vN:` ciphertext of this key.
    ///
    /// # Errors
    /// [`EnvelopeError::Malformed`] for a ciphertext that is not one; [`EnvelopeError::InvalidInput`]
    /// for a version below `min_decryption_version` or above the latest;
    /// [`EnvelopeError::Unauthentic`] for a changed one or one of another key, tenant or tier.
    pub fn decrypt(&self, name: &str, ciphertext: &str) -> Result<SecretBytes> {
        let record = self.aes_record(name)?;
        let (version, envelope) = parse_ciphertext(ciphertext)?;
        self.check_decryptable(&record, version)?;
        let kek = self.kek(&record, version)?;
        kek.open(&self.context(name)?, &envelope)
    }

    fn check_decryptable(&self, record: &TransitKeyRecord, version: u32) -> Result<()> {
        if version < record.min_decryption_version {
            return Err(invalid(format!(
                "ciphertext version {version} is disallowed by policy (too old): key '{}' \
                 decrypts from version {}",
                record.name, record.min_decryption_version
            )));
        }
        if version > record.latest_version() {
            return Err(invalid(format!(
                "key '{}' has no version {version} (its latest is {})",
                record.name,
                record.latest_version()
            )));
        }
        Ok(())
    }

    /// Moves a ciphertext to the latest version without its plaintext leaving the envelope
    /// layer: only the DEK is unwrapped and wrapped again.
    ///
    /// # Errors
    /// As [`Transit::decrypt`].
    pub fn rewrap(&self, name: &str, ciphertext: &str) -> Result<String> {
        let record = self.aes_record(name)?;
        let (version, envelope) = parse_ciphertext(ciphertext)?;
        self.check_decryptable(&record, version)?;
        let old = self.kek(&record, version)?;
        let new = self.kek(&record, record.latest_version())?;
        let moved = new.rewrap(&old, &self.context(name)?, &envelope)?;
        Ok(format_ciphertext(&moved))
    }

    /// A fresh data key of `bits` (128, 256 or 512) for the caller's own envelope encryption:
    /// the key and its encryption under this transit key.
    ///
    /// # Errors
    /// [`EnvelopeError::InvalidInput`] for another size; as [`Transit::encrypt`].
    pub fn data_key(&self, name: &str, bits: u32) -> Result<(SecretBytes, String)> {
        if !matches!(bits, 128 | 256 | 512) {
            return Err(invalid(format!(
                "a data key is 128, 256 or 512 bits, not {bits}"
            )));
        }
        let mut key = Zeroizing::new(vec![0u8; (bits / 8) as usize]);
        keyhaven_crypto::fill_random(&mut key)?;
        let ciphertext = self.encrypt(name, &key, None)?;
        Ok((SecretBytes::new(std::mem::take(&mut *key)), ciphertext))
    }

    /// The record of `name` and its signature algorithm, refused unless it signs.
    fn signing_record(&self, name: &str) -> Result<(TransitKeyRecord, keyhaven_core::Algorithm)> {
        let record = self.record(name)?;
        let key_type = self.key_type(&record)?;
        let algorithm = key_type.signing_algorithm().ok_or_else(|| {
            invalid(format!(
                "key '{name}' is an {key_type} key: it encrypts, it does not sign"
            ))
        })?;
        Ok((record, algorithm))
    }

    fn signing_key(
        &self,
        record: &TransitKeyRecord,
        algorithm: keyhaven_core::Algorithm,
        version: u32,
    ) -> Result<keyhaven_crypto::hazmat::SeededKey> {
        self.kek(record, version)?
            .signing_key(algorithm, SIGNING_PURPOSE)
    }

    /// Signs with the latest version of the signing key `name` (or `version`); returns the
    /// signature and the version that made it. Ed25519 signs the message itself; ECDSA signs
    /// its hash (deterministic nonces, RFC 6979).
    ///
    /// # Errors
    /// `NotFound`; [`EnvelopeError::InvalidInput`] for a key that does not sign, a version
    /// outside `min_decryption_version` to the latest, or a digest given to Ed25519.
    pub fn sign(
        &self,
        name: &str,
        input: SignInput<'_>,
        version: Option<u32>,
    ) -> Result<(keyhaven_core::Signature, u32)> {
        let (record, algorithm) = self.signing_record(name)?;
        let version = version.unwrap_or_else(|| record.latest_version());
        self.check_decryptable(&record, version)?;
        let key = self.signing_key(&record, algorithm, version)?;
        let signature = match (algorithm, input) {
            (keyhaven_core::Algorithm::Ed25519, SignInput::Digest(_)) => {
                return Err(invalid(format!(
                    "key '{name}' is an ed25519 key: it signs messages, not digests \
                     (leave 'prehashed' out)"
                )));
            }
            (keyhaven_core::Algorithm::Ed25519, SignInput::Message(m, _)) => key.sign(m)?,
            (_, SignInput::Message(m, hash)) => key.sign_prehash(&hash.digest(m))?,
            (_, SignInput::Digest(d)) => key.sign_prehash(d)?,
        };
        Ok((signature, version))
    }

    /// Whether `signature`, made by version `version` of `name`, signs `input`.
    ///
    /// # Errors
    /// As [`Transit::sign`]; a signature of another algorithm or a malformed digest. A
    /// signature that does not verify is `Ok(false)`.
    pub fn verify(
        &self,
        name: &str,
        input: SignInput<'_>,
        version: u32,
        signature: &keyhaven_core::Signature,
    ) -> Result<bool> {
        let (record, algorithm) = self.signing_record(name)?;
        self.check_decryptable(&record, version)?;
        if signature.algorithm() != algorithm {
            return Err(invalid(format!(
                "key '{name}' makes {} signatures, not {}",
                algorithm.jose_name(),
                signature.algorithm().jose_name()
            )));
        }
        let key = self.signing_key(&record, algorithm, version)?;
        let checked = match (algorithm, input) {
            (keyhaven_core::Algorithm::Ed25519, SignInput::Digest(_)) => {
                return Err(invalid(format!(
                    "key '{name}' is an ed25519 key: it verifies messages, not digests"
                )));
            }
            (keyhaven_core::Algorithm::Ed25519, SignInput::Message(m, _)) => {
                keyhaven_crypto::verify(key.public_key(), m, signature)
            }
            (_, SignInput::Message(m, hash)) => keyhaven_crypto::hazmat::verify_prehash(
                key.public_key(),
                &hash.digest(m),
                signature,
            ),
            (_, SignInput::Digest(d)) => {
                keyhaven_crypto::hazmat::verify_prehash(key.public_key(), d, signature)
            }
        };
        match checked {
            Ok(()) => Ok(true),
            Err(keyhaven_core::Error::BadSignature) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The public key of every version of the signing key `name`, oldest first.
    ///
    /// # Errors
    /// `NotFound`; [`EnvelopeError::InvalidInput`] for a key that does not sign; the master
    /// key's backend (each version not cached yet is one unwrap).
    pub fn public_keys(&self, name: &str) -> Result<Vec<(u32, keyhaven_core::PublicKey)>> {
        let (record, algorithm) = self.signing_record(name)?;
        record
            .versions
            .keys()
            .map(|&v| {
                let key = self.signing_key(&record, algorithm, v)?;
                Ok((v, key.public_key().clone()))
            })
            .collect()
    }

    /// Makes the key `name` if it does not exist (a race with another maker is no error).
    ///
    /// # Errors
    /// As [`Transit::create_key`].
    pub fn ensure_key(&self, name: &str, now: u64) -> Result<TransitKeyRecord> {
        if let Some(r) = self.store.load(name)? {
            return Ok(r);
        }
        self.create_key(name, now)?;
        self.record(name)
    }

    /// The context a secret's version is sealed in: this engine's tenant, the key and its
    /// tier, and the secret's own path and version.
    fn secret_context(&self, name: &str, path: &str, version: u64) -> Result<SecretContext> {
        SecretContext::new(&self.owner(name), path, version, self.tier)
    }

    /// Seals version `version` of the secret at `path` under the latest version of the key
    /// `name` (its KEK): the associated data binds tenant, key, tier, path and version, so
    /// the envelope opens nowhere else.
    ///
    /// # Errors
    /// `NotFound` for an unknown key; the master key's backend failing.
    pub fn seal_secret(
        &self,
        name: &str,
        path: &str,
        version: u64,
        plaintext: &[u8],
    ) -> Result<Envelope> {
        let record = self.aes_record(name)?;
        let kek = self.kek(&record, record.latest_version())?;
        kek.seal(&self.secret_context(name, path, version)?, plaintext)
    }

    /// Opens what [`Transit::seal_secret`] sealed for `path` and `version`.
    ///
    /// # Errors
    /// [`EnvelopeError::Unauthentic`] for an envelope of another secret, version, tenant or
    /// tier, or a changed one; [`EnvelopeError::InvalidInput`] for a KEK version the key does
    /// not have.
    pub fn open_secret(
        &self,
        name: &str,
        path: &str,
        version: u64,
        envelope: &Envelope,
    ) -> Result<SecretBytes> {
        let record = self.aes_record(name)?;
        let kek = self.kek(&record, envelope.kek_version())?;
        kek.open(&self.secret_context(name, path, version)?, envelope)
    }

    /// Moves a secret's envelope to the key's latest version (only its DEK is unwrapped and
    /// wrapped again); `None` if it is there already.
    ///
    /// # Errors
    /// As [`Transit::open_secret`].
    pub fn rewrap_secret(
        &self,
        name: &str,
        path: &str,
        version: u64,
        envelope: &Envelope,
    ) -> Result<Option<Envelope>> {
        let record = self.aes_record(name)?;
        let latest = record.latest_version();
        if envelope.kek_version() == latest {
            return Ok(None);
        }
        let old = self.kek(&record, envelope.kek_version())?;
        let new = self.kek(&record, latest)?;
        new.rewrap(&old, &self.secret_context(name, path, version)?, envelope)
            .map(Some)
    }

    /// Forgets every unwrapped version (after a policy or key change elsewhere).
    pub fn clear_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
