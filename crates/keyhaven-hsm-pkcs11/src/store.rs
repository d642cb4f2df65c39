//! The [`KeyStore`] over a PKCS#11 token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError, RwLock};

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Date;
use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyDetails, KeyId, KeyInfo, KeyStore, Protection, PublicKey,
    Result, SecretBytes, Signature, unix_now, validate_label,
};
use sha2::{Digest, Sha256, Sha384};

use crate::config::Pkcs11Config;
use crate::error::Pkcs11Error;
use crate::keys;
use crate::pool::Token;
use crate::report::TokenReport;

/// The bytes of the random `CKA_ID` given to generated keys (their [`KeyId`] is its hex).
const GENERATED_ID_LEN: usize = 16;

/// The private-key attributes that say whether the key can leave the token.
const GUARD_ATTRIBUTES: [AttributeType; 4] = [
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::AlwaysSensitive,
    AttributeType::NeverExtractable,
];

/// A key's private object, as cached for signing.
#[derive(Clone, Copy)]
struct Signer {
    handle: ObjectHandle,
    algorithm: Algorithm,
}

/// A whole-token scan: usable keys (sorted by id) with their private handles, and problems.
type Scan = (Vec<(KeyInfo, ObjectHandle)>, Vec<Error>);

/// What the token says about one key object.
struct Object {
    handle: ObjectHandle,
    id: Vec<u8>,
    label: String,
    key_type: Option<KeyType>,
    params: Option<Vec<u8>>,
    point: Option<Vec<u8>>,
    start: Option<u64>,
    /// For private objects: how well the token guards the key.
    guard: Guard,
    /// For private objects: `CKA_SIGN` and `CKA_DERIVE`, which tell an ECDH key from an ECDSA
    /// key on the same curve.
    sign: Option<bool>,
    derive: Option<bool>,
}

/// The attributes that say whether a private key can leave the token (each `None` when the token
/// does not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Guard {
    /// `CKA_SENSITIVE`: the value cannot be read in plaintext.
    sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`: the key can be wrapped (exported) under another key.
    extractable: Option<bool>,
    /// `CKA_ALWAYS_SENSITIVE`: it has been sensitive since it was made.
    always_sensitive: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`: it has never been extractable.
    never_extractable: Option<bool>,
}

impl Guard {
    /// The attributes that make a key weaker than keyhaven's own, as reasons for humans; empty
    /// for a key that is sensitive, not extractable, and has always been so (as far as the
    /// token says).
    fn weaknesses(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.sensitive == Some(false) {
            out.push(
                "CKA_SENSITIVE is false: its private value can be read off the token in plaintext",
            );
        }
        if self.extractable == Some(true) {
            out.push("CKA_EXTRACTABLE is true: it can be exported (wrapped under another key)");
        }
        if self.sensitive != Some(false) && self.always_sensitive == Some(false) {
            out.push("CKA_ALWAYS_SENSITIVE is false: it was readable in the past");
        }
        if self.extractable != Some(true) && self.never_extractable == Some(false) {
            out.push("CKA_NEVER_EXTRACTABLE is false: it was extractable in the past");
        }
        out
    }

    /// Whether the token confirms what keyhaven's template asks for a new key.
    fn as_generated(self) -> bool {
        self.sensitive == Some(true) && self.extractable == Some(false)
    }
}

/// A PKCS#11 token as a key store: keys are generated on the token, marked sensitive and
/// non-extractable, and used there; only public keys and signatures come out.
///
/// Keys are the token's pairs of private and public key objects with the same `CKA_ID`: the key
/// id is the lowercase hex of `CKA_ID` (16 random bytes, 32 hex digits, for keys keyhaven
/// generates), so keys made by other tools (`pkcs11-tool --keypairgen --id 0102...`) are listed
/// and used too. Objects with an empty or over-long (> 64 bytes) `CKA_ID`, a private key with no
/// public half, several keys sharing one `CKA_ID`, and keys of other types or curves are left out
/// of [`KeyStore::list`] and reported by [`KeyStore::check`].
///
/// `delete` destroys every key object with the key's `CKA_ID` — both halves, or the one half
/// left behind by another tool (which `check` reports as an orphan).
///
/// `created_at` is the day of the public object's `CKA_START_DATE` (midnight UTC), which keyhaven
/// sets on the keys it generates; keys without a start date report 0 (unknown).
///
/// The store is `Send + Sync`: see the crate documentation for sessions, login and recovery.
pub struct Pkcs11Store {
    token: Token,
    /// Private key handles by key id, so that signing does not search the token each time. A
    /// handle that went stale (the key was deleted, maybe by another program) is dropped and the
    /// key looked up again once.
    signers: RwLock<HashMap<KeyId, Signer>>,
    /// Makes the label check and the generation one step within this process.
    generating: Mutex<()>,
}

impl std::fmt::Debug for Pkcs11Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Store")
            .field("token", &self.token.name)
            .finish_non_exhaustive()
    }
}

fn mechanism(algorithm: Algorithm) -> Mechanism<'static> {
    match algorithm {
        Algorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        _ => Mechanism::Ecdsa,
    }
}

/// A boolean attribute for messages: `true`, `false` or `not reported`.
fn shown(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "true",
        Some(false) => "false",
        None => "not reported",
    }
}

fn key_type_matches(key_type: Option<KeyType>, algorithm: Algorithm) -> bool {
    match key_type {
        None => true,
        Some(t) => match algorithm {
            Algorithm::EcdsaP384
            | Algorithm::EcdsaP256
            | Algorithm::EcdhP384
            | Algorithm::EcdhP256 => t == KeyType::EC,
            Algorithm::Ed25519 => t == KeyType::EC_EDWARDS,
            _ => t == KeyType::EC_MONTGOMERY,
        },
    }
}

impl Pkcs11Store {
    /// Opens the token: loads the module (once per process), finds the token, and logs in with
    /// the user PIN — exactly one `C_Login`, never retried, so a wrong PIN costs one try of the
    /// token's retry counter.
    ///
    /// # Errors
    /// [`Error::Unavailable`] for a missing module file, a file that is not a PKCS#11 module, or
    /// no such token (the message lists the tokens present); [`Error::BadPassphrase`] for a wrong
    /// PIN; [`Error::Locked`] for a locked PIN or no PIN; other token errors.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        let token = Token::open(config)?;
        Ok(Pkcs11Store {
            token,
            signers: RwLock::new(HashMap::new()),
            generating: Mutex::new(()),
        })
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token.label
    }

    /// Manufacturer, model, serial, firmware, slots, and which of the mechanisms keyhaven uses
    /// the token has.
    ///
    /// # Errors
    /// If the token no longer answers.
    pub fn report(&self) -> Result<TokenReport> {
        Ok(TokenReport::of_slot(
            &self.token.pkcs11,
            self.token.module(),
            self.token.slot(),
        )?)
    }

    /// How many sessions the store has open now (idle and in use).
    pub fn open_sessions(&self) -> usize {
        self.token.open_sessions()
    }

    /// How many times this store has called `C_Login` (diagnostics): once when it opened, and
    /// once per recovery from a lost login. A PIN the token refused is never tried again.
    pub fn login_attempts(&self) -> u64 {
        self.token.logins()
    }

    /// The token and its session pool.
    pub(crate) fn token(&self) -> &Token {
        &self.token
    }

    fn bad(&self, what: impl Into<String>, reason: impl Into<String>) -> Pkcs11Error {
        Pkcs11Error::BadObject {
            token: self.token.name.clone(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// `NotFound` for `key`, naming the token and how to see what it holds — unless the token
    /// itself is gone, which is said instead.
    fn not_found(&self, key: impl std::fmt::Display) -> Error {
        match self.token.check_present() {
            Ok(_) => Error::NotFound(format!(
                "key '{key}' on {} (list the token's keys with `pkcs11-tool --module {} \
                 --token-label '{}' --login --list-objects`; a key another program deleted is \
                 gone for good)",
                self.token.name,
                self.token.module().display(),
                self.token.label
            )),
            Err(e) => e.into(),
        }
    }

    fn read_object(
        session: &Session,
        handle: ObjectHandle,
        public: bool,
    ) -> std::result::Result<Object, CkError> {
        let mut wanted = vec![
            AttributeType::Id,
            AttributeType::Label,
            AttributeType::KeyType,
            AttributeType::EcParams,
        ];
        if !public {
            wanted.extend(GUARD_ATTRIBUTES);
            wanted.extend([AttributeType::Sign, AttributeType::Derive]);
        }
        if public {
            // Only public objects: SoftHSM 2.6.1 fails C_GetAttributeValue with
            // CKR_GENERAL_ERROR for CKA_START_DATE on a private key (its attributes are
            // encrypted and the date does not survive), so the date lives on the public key.
            wanted.extend([AttributeType::EcPoint, AttributeType::StartDate]);
        }
        let mut obj = Object {
            handle,
            id: Vec::new(),
            label: String::new(),
            key_type: None,
            params: None,
            point: None,
            start: None,
            guard: Guard::default(),
            sign: None,
            derive: None,
        };
        for attr in session.get_attributes(handle, &wanted)? {
            match attr {
                Attribute::Sensitive(b) => obj.guard.sensitive = Some(b),
                Attribute::Extractable(b) => obj.guard.extractable = Some(b),
                Attribute::AlwaysSensitive(b) => obj.guard.always_sensitive = Some(b),
                Attribute::NeverExtractable(b) => obj.guard.never_extractable = Some(b),
                Attribute::Sign(b) => obj.sign = Some(b),
                Attribute::Derive(b) => obj.derive = Some(b),
                Attribute::Id(v) => obj.id = v,
                Attribute::Label(v) => obj.label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::KeyType(t) => obj.key_type = Some(t),
                Attribute::EcParams(v) => obj.params = Some(v),
                Attribute::EcPoint(v) => obj.point = Some(v),
                Attribute::StartDate(d) if !d.is_empty() => {
                    obj.start = keys::unix_of_date(&d.year, &d.month, &d.day);
                }
                _ => {}
            }
        }
        Ok(obj)
    }

    fn find(
        session: &Session,
        class: ObjectClass,
        extra: Vec<Attribute>,
    ) -> std::result::Result<Vec<Object>, CkError> {
        let mut template = vec![Attribute::Class(class)];
        template.extend(extra);
        let public = class == ObjectClass::PUBLIC_KEY;
        session
            .find_objects(&template)?
            .into_iter()
            .map(|h| Self::read_object(session, h, public))
            .collect()
    }

    /// The algorithm of a key object, if it is one keyhaven handles.
    fn algorithm_of(obj: &Object) -> Option<Algorithm> {
        let alg = keys::algorithm_of_params(obj.params.as_deref()?)?;
        key_type_matches(obj.key_type, alg).then_some(alg)
    }

    /// A key's info from its private and public objects.
    fn info_of(&self, private: &Object, public: &Object) -> std::result::Result<KeyInfo, String> {
        let id = keys::key_id_of(&private.id).ok_or("its CKA_ID is empty or over 64 bytes")?;
        let algorithm = Self::algorithm_of(public)
            .or_else(|| Self::algorithm_of(private))
            .ok_or("it is not a P-384, P-256 or Ed25519 key (CKA_KEY_TYPE / CKA_EC_PARAMS)")?;
        if Self::algorithm_of(private).is_some_and(|a| a != algorithm) {
            return Err("its private and public objects are on different curves".into());
        }
        // A NIST-curve key made for derivation and not for signing is an ECDH key.
        let algorithm = match algorithm {
            Algorithm::EcdsaP384 | Algorithm::EcdsaP256
                if private.derive == Some(true) && private.sign != Some(true) =>
            {
                keys::ecdh_of(algorithm)
            }
            other => other,
        };
        let point = public
            .point
            .as_deref()
            .ok_or("its public key has no CKA_EC_POINT")?;
        let raw = keys::raw_point(algorithm, point)?;
        let der = keys::spki_der(algorithm, raw);
        let public_key = keyhaven_crypto::default_provider()
            .parse_public_key_der_as(algorithm, &der)
            .map_err(|e| format!("its CKA_EC_POINT is not a valid public key: {e}"))?;
        let label = if private.label.is_empty() {
            public.label.clone()
        } else {
            private.label.clone()
        };
        Ok(KeyInfo::new(
            id,
            label,
            Protection::Hardware,
            PublicKey::new(algorithm, public_key.spki_der().to_vec()),
            public.start.unwrap_or(0),
        ))
    }

    fn remember(&self, info: &KeyInfo, handle: ObjectHandle) {
        self.signers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                info.id.clone(),
                Signer {
                    handle,
                    algorithm: info.algorithm,
                },
            );
    }

    fn forget(&self, id: &KeyId) {
        self.signers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Looks a key up on the token by id: `Ok(None)` if there is no such usable key.
    fn lookup(&self, id: &KeyId) -> Result<Option<KeyInfo>> {
        let Some(cka_id) = keys::cka_id_of(id) else {
            return Ok(None);
        };
        let (privs, pubs) = self.token.run(|s| {
            let privs = Self::find(
                s,
                ObjectClass::PRIVATE_KEY,
                vec![Attribute::Id(cka_id.clone())],
            )?;
            let pubs = Self::find(
                s,
                ObjectClass::PUBLIC_KEY,
                vec![Attribute::Id(cka_id.clone())],
            )?;
            Ok((privs, pubs))
        })?;
        let (Some(private), Some(public)) = (privs.first(), pubs.first()) else {
            return Ok(None);
        };
        if privs.len() > 1 || pubs.len() > 1 {
            return Err(Error::corrupt(
                format!("{} key {id}", self.token.name),
                format!(
                    "{} private and {} public key objects share its CKA_ID: remove the extra ones \
                     (pkcs11-tool --delete-object)",
                    privs.len(),
                    pubs.len()
                ),
            ));
        }
        match self.info_of(private, public) {
            Ok(info) => {
                self.remember(&info, private.handle);
                Ok(Some(info))
            }
            // Keys keyhaven cannot use are not keys of this store (see `check`).
            Err(_) => Ok(None),
        }
    }

    /// How the token guards the private key of `id` (which must exist: `NotFound` otherwise).
    fn guard(&self, id: &KeyId) -> Result<Guard> {
        self.get(id)?;
        let Some(cka_id) = keys::cka_id_of(id) else {
            return Err(self.not_found(id));
        };
        let privs = self.token.run(|s| {
            Self::find(
                s,
                ObjectClass::PRIVATE_KEY,
                vec![Attribute::Id(cka_id.clone())],
            )
        })?;
        match privs.as_slice() {
            [p] => Ok(p.guard),
            _ => Err(self.not_found(id)),
        }
    }

    /// The private object to sign with, from the cache or the token.
    fn signer(&self, id: &KeyId) -> Result<Signer> {
        if let Some(s) = self
            .signers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(*s);
        }
        self.get(id)?;
        self.signers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
            .ok_or_else(|| self.not_found(id))
    }

    /// Signs `data` (a digest for ECDSA, the message for Ed25519) with the key's private object;
    /// a stale cached handle is looked up again once.
    fn sign_raw(&self, id: &KeyId, signer: Signer, data: &[u8]) -> Result<Signature> {
        let run = |s: Signer| {
            self.token
                .run(|session| session.sign(&mechanism(s.algorithm), s.handle, data))
        };
        let raw = match run(signer) {
            Err(e) if e.stale_handle() => {
                self.forget(id);
                let fresh = self.signer(id)?;
                if fresh.algorithm != signer.algorithm {
                    return Err(self.not_found(id));
                }
                run(fresh).map_err(|e| {
                    if e.stale_handle() {
                        self.not_found(id)
                    } else {
                        e.into()
                    }
                })?
            }
            other => other?,
        };
        let len = raw.len();
        Signature::from_raw(signer.algorithm, raw).map_err(|_| {
            self.bad(
                "signature",
                format!(
                    "{len} bytes from C_Sign, not the {}-byte fixed-size form",
                    signer.algorithm.raw_signature_len().unwrap_or(0)
                ),
            )
            .into()
        })
    }

    /// Every key object, read once: the usable keys sorted by id, and what is wrong with the rest.
    fn scan(&self) -> Result<Scan> {
        self.token.check_present()?;
        self.token.ensure_login()?;
        let (privs, pubs) = self.token.run(|s| {
            Ok((
                Self::find(s, ObjectClass::PRIVATE_KEY, Vec::new())?,
                Self::find(s, ObjectClass::PUBLIC_KEY, Vec::new())?,
            ))
        })?;
        let mut problems = Vec::new();
        let what = |kind: &str, obj: &Object| {
            format!(
                "{} {kind} object '{}' (CKA_ID {})",
                self.token.name,
                obj.label,
                if obj.id.is_empty() {
                    "empty".to_owned()
                } else {
                    hex::encode(&obj.id)
                }
            )
        };
        let mut by_id: BTreeMap<Vec<u8>, (Vec<&Object>, Vec<&Object>)> = BTreeMap::new();
        for o in &privs {
            by_id.entry(o.id.clone()).or_default().0.push(o);
        }
        for o in &pubs {
            by_id.entry(o.id.clone()).or_default().1.push(o);
        }
        let mut keys = Vec::new();
        for (cka_id, (ps, qs)) in &by_id {
            let first = ps.first().or(qs.first());
            let Some(first) = first else { continue };
            if keys::key_id_of(cka_id).is_none() {
                problems.push(Error::corrupt(
                    what("key", first),
                    "its CKA_ID is empty or longer than 64 bytes, so it has no keyhaven id; \
                     give it one with pkcs11-tool --set-id",
                ));
                continue;
            }
            match (ps.as_slice(), qs.as_slice()) {
                ([p], [q]) => match self.info_of(p, q) {
                    Ok(info) => {
                        let weak = p.guard.weaknesses();
                        if !weak.is_empty() {
                            problems.push(
                                Pkcs11Error::WeakKey {
                                    token: self.token.name.clone(),
                                    key: info.id.to_string(),
                                    label: info.label.clone(),
                                    reasons: weak.join("; "),
                                }
                                .into(),
                            );
                        }
                        keys.push((info, p.handle));
                    }
                    Err(reason) => problems.push(Error::corrupt(what("key", p), reason)),
                },
                ([p], []) => problems.push(Error::corrupt(
                    what("private key", p),
                    "orphan: no public key object has its CKA_ID, so its public key is unknown",
                )),
                ([], [q]) => problems.push(Error::corrupt(
                    what("public key", q),
                    "orphan: no private key object has its CKA_ID (delete it by its id)",
                )),
                _ => problems.push(Error::corrupt(
                    what("key", first),
                    format!(
                        "{} private and {} public key objects share this CKA_ID",
                        ps.len(),
                        qs.len()
                    ),
                )),
            }
        }
        keys.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok((keys, problems))
    }

    /// The first usable key with this label (on its private object, or else its public one).
    fn lookup_label(&self, label: &str) -> Result<Option<KeyInfo>> {
        let l = label.as_bytes().to_vec();
        let ids = self.token.run(|s| {
            let mut ids = Vec::new();
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                for h in s.find_objects(&[Attribute::Class(class), Attribute::Label(l.clone())])? {
                    for a in s.get_attributes(h, &[AttributeType::Id])? {
                        if let Attribute::Id(v) = a {
                            ids.push(v);
                        }
                    }
                }
            }
            Ok(ids)
        })?;
        for cka_id in ids {
            if let Some(id) = keys::key_id_of(&cka_id)
                && let Some(info) = self.lookup(&id)?
            {
                return Ok(Some(info));
            }
        }
        Ok(None)
    }

    /// Whether any key object on the token has this label.
    fn label_taken(&self, label: &str) -> Result<bool> {
        let l = label.as_bytes().to_vec();
        Ok(self.token.run(|s| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let template = [Attribute::Class(class), Attribute::Label(l.clone())];
                if !s.find_objects(&template)?.is_empty() {
                    return Ok(true);
                }
            }
            Ok(false)
        })?)
    }

    fn require(&self, algorithm: Algorithm, mechanisms: &[(MechanismType, &str)]) -> Result<()> {
        for (m, name) in mechanisms {
            if !self.token.has(*m) {
                return Err(Error::Unsupported {
                    operation: "generate a key on the PKCS#11 token",
                    reason: format!(
                        "{} does not offer {name}, which {} keys need",
                        self.token.name,
                        algorithm.jose_name()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl KeyStore for Pkcs11Store {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("pkcs11", Protection::Hardware, self.token.name.clone())
    }

    fn details(&self, id: &KeyId) -> Result<KeyDetails> {
        self.get(id)?;
        let mut details = KeyDetails::default();
        details.in_device = true;
        details.token = Some(self.token_label().to_owned());
        Ok(details)
    }

    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        validate_label(label)?;
        match algorithm {
            Algorithm::EcdsaP384
            | Algorithm::EcdsaP256
            | Algorithm::EcdhP384
            | Algorithm::EcdhP256 => {
                let usage = if algorithm.can_agree() {
                    (MechanismType::ECDH1_DERIVE, "CKM_ECDH1_DERIVE")
                } else {
                    (MechanismType::ECDSA, "CKM_ECDSA")
                };
                self.require(
                    algorithm,
                    &[
                        (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
                        usage,
                    ],
                )?;
            }
            Algorithm::Ed25519 => {
                self.require(
                    algorithm,
                    &[
                        (
                            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                            "CKM_EC_EDWARDS_KEY_PAIR_GEN",
                        ),
                        (MechanismType::EDDSA, "CKM_EDDSA"),
                    ],
                )?;
            }
            _ => {
                let reason = if self.token.has(MechanismType::ECC_MONTGOMERY_KEY_PAIR_GEN) {
                    format!(
                        "{} offers CKM_EC_MONTGOMERY_KEY_PAIR_GEN, but keyhaven does not do \
                         X25519 agreement through PKCS#11 yet: use a software store for X25519",
                        self.token.name
                    )
                } else {
                    format!(
                        "{} does not offer CKM_EC_MONTGOMERY_KEY_PAIR_GEN (SoftHSM 2.6 has no \
                         X25519): use a software store for X25519 keys",
                        self.token.name
                    )
                };
                return Err(Error::Unsupported {
                    operation: "generate an X25519 key on the PKCS#11 token",
                    reason,
                });
            }
        };
        let _one_at_a_time = self
            .generating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.label_taken(label)? {
            return Err(Error::AlreadyExists(format!(
                "a key labelled '{label}' on {}",
                self.token.name
            )));
        }
        let mut cka_id = [0u8; GENERATED_ID_LEN];
        keyhaven_crypto::fill_random(&mut cka_id)?;
        let (year, month, day) = keys::date_of_unix(unix_now());
        let date = Date::new(year, month, day);
        let common = |private: bool| {
            vec![
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Id(cka_id.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ]
        };
        // One use per key: a signing key never derives, an agreement key never signs.
        let agrees = algorithm.can_agree();
        let mut public_template = common(false);
        public_template.extend([
            Attribute::StartDate(date),
            Attribute::Verify(!agrees),
            Attribute::EcParams(keys::ec_params(algorithm).to_vec()),
        ]);
        let mut private_template = common(true);
        private_template.extend([
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(!agrees),
            Attribute::Derive(agrees),
        ]);
        let (public, private) = self.token.run(|s| {
            let mech = match algorithm {
                Algorithm::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
                _ => Mechanism::EccKeyPairGen,
            };
            s.generate_key_pair(&mech, &public_template, &private_template)
        })?;
        let read = self.token.run(|s| {
            Ok((
                Self::read_object(s, private, false)?,
                Self::read_object(s, public, true)?,
            ))
        });
        let info = read.map_err(Error::from).and_then(|(p, q)| {
            if !p.guard.as_generated() {
                // The token ignored the template: this key is not what keyhaven promises.
                return Err(Error::Unsupported {
                    operation: "generate a non-extractable key on the PKCS#11 token",
                    reason: format!(
                        "{} ignored keyhaven's template (CKA_SENSITIVE true, CKA_EXTRACTABLE \
                         false): the new key reads back with CKA_SENSITIVE {} and \
                         CKA_EXTRACTABLE {}, so its private part could leave the token. The key \
                         was deleted",
                        self.token.name,
                        shown(p.guard.sensitive),
                        shown(p.guard.extractable)
                    ),
                });
            }
            self.info_of(&p, &q)
                .map_err(|r| self.bad("new key", r).into())
        });
        match info {
            Ok(info) => {
                self.remember(&info, private);
                Ok(info)
            }
            Err(e) => {
                // Leave no half-made key behind; the original error is what matters.
                let _ = self.token.run(|s| {
                    let _ = s.destroy_object(private);
                    s.destroy_object(public)
                });
                Err(e)
            }
        }
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let (keys, _) = self.scan()?;
        Ok(keys
            .into_iter()
            .map(|(info, handle)| {
                self.remember(&info, handle);
                info
            })
            .collect())
    }

    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        if let Some(info) = self.lookup(id)? {
            return Ok(info);
        }
        // Private objects are invisible without a login: make sure of the login (recovering it
        // if it was lost, here or meanwhile in another thread) and look once more before saying
        // the key does not exist.
        if keys::cka_id_of(id).is_some() {
            self.token.ensure_login()?;
            if let Some(info) = self.lookup(id)? {
                return Ok(info);
            }
        }
        Err(self.not_found(id))
    }

    fn find_by_label(&self, label: &str) -> Result<KeyInfo> {
        if let Some(info) = self.lookup_label(label)? {
            return Ok(info);
        }
        self.token.ensure_login()?;
        if let Some(info) = self.lookup_label(label)? {
            return Ok(info);
        }
        Err(self.not_found(label))
    }

    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        let signer = self.signer(id)?;
        match signer.algorithm {
            Algorithm::EcdsaP384 => self.sign_raw(id, signer, &Sha384::digest(message)),
            Algorithm::EcdsaP256 => self.sign_raw(id, signer, &Sha256::digest(message)),
            Algorithm::Ed25519 => self.sign_raw(id, signer, message),
            other => Err(Error::Unsupported {
                operation: "sign",
                reason: format!("{} keys do key agreement only", other.display_name()),
            }),
        }
    }

    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        let signer = self.signer(id)?;
        signer.algorithm.check_digest(digest)?;
        self.sign_raw(id, signer, digest)
    }

    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        let signer = self.signer(id)?;
        let Some(len) = signer
            .algorithm
            .shared_secret_len()
            .filter(|_| signer.algorithm.is_nist_ecdh())
        else {
            return Err(Error::Unsupported {
                operation: "agree on a shared secret",
                reason: format!(
                    "{} keys sign; generate an ecdh-p384 or ecdh-p256 key to agree on the token",
                    signer.algorithm.jose_name()
                ),
            });
        };
        signer.algorithm.check_peer(peer.algorithm())?;
        // Checked on the curve here, not left to the token (an invalid-curve point is the
        // classic attack on ECDH).
        let point = keyhaven_crypto::encoding::ec_point_uncompressed(peer)?;
        let derive = |s: Signer| {
            self.token.run(|session| {
                let params = Ecdh1DeriveParams::new(EcKdf::null(), &point);
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen((len as u64).into()),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ];
                let secret =
                    session.derive_key(&Mechanism::Ecdh1Derive(params), s.handle, &template)?;
                let value = session.get_attributes(secret, &[AttributeType::Value]);
                // A session object: destroyed now, and by the token when the session closes.
                let destroyed = session.destroy_object(secret);
                let mut out = None;
                for attr in value? {
                    if let Attribute::Value(v) = attr {
                        out = Some(SecretBytes::new(v));
                    }
                }
                destroyed?;
                Ok(out)
            })
        };
        let shared = match derive(signer) {
            Err(e) if e.stale_handle() => {
                self.forget(id);
                let fresh = self.signer(id)?;
                if fresh.algorithm != signer.algorithm {
                    return Err(self.not_found(id));
                }
                derive(fresh)?
            }
            other => other?,
        };
        match shared {
            Some(s) if s.len() == len => Ok(s),
            Some(s) => Err(self
                .bad(
                    "shared secret",
                    format!("{} bytes from C_DeriveKey, not {len}", s.len()),
                )
                .into()),
            None => Err(self
                .bad("shared secret", "C_GetAttributeValue gave no CKA_VALUE")
                .into()),
        }
    }

    fn delete(&self, id: &KeyId) -> Result<()> {
        let Some(cka_id) = keys::cka_id_of(id) else {
            return Err(self.not_found(id));
        };
        self.forget(id);
        let destroyed = self.token.run(|s| {
            let mut n = 0;
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                for h in
                    s.find_objects(&[Attribute::Class(class), Attribute::Id(cka_id.clone())])?
                {
                    match s.destroy_object(h) {
                        Ok(()) => n += 1,
                        // destroyed meanwhile by someone else: just as good
                        Err(CkError::Pkcs11(cryptoki::error::RvError::ObjectHandleInvalid, _)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(n)
        })?;
        self.forget(id);
        if destroyed == 0 {
            return Err(self.not_found(id));
        }
        Ok(())
    }

    fn check(&self) -> Result<Vec<Error>> {
        Ok(self.scan()?.1)
    }

    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        let _ = (label, pkcs8_der);
        Err(Error::Unsupported {
            operation: "import a private key",
            reason: format!(
                "keyhaven does not import private keys into {}: generate keys on the token, \
                 where they are made non-extractable",
                self.token.name
            ),
        })
    }

    fn attest_key(&self, id: &KeyId, challenge: &[u8]) -> Result<keyhaven_core::KeyAttestation> {
        // A token's attributes answer no challenge: they are its word, not a proof.
        let _ = challenge;
        let signer = self.signer(id)?;
        let info = self.token.check_present()?;
        let attributes = self.token.run(|session| {
            session.get_attributes(
                signer.handle,
                &[
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::Local,
                ],
            )
        })?;
        let (mut never_extractable, mut always_sensitive, mut extractable) = (false, false, true);
        let (mut sensitive, mut local) = (false, false);
        for a in attributes {
            match a {
                Attribute::NeverExtractable(v) => never_extractable = v,
                Attribute::AlwaysSensitive(v) => always_sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Local(v) => local = v,
                _ => {}
            }
        }
        Ok(keyhaven_core::KeyAttestation::Pkcs11Attributes {
            token: format!(
                "{} {} {}",
                info.manufacturer_id().trim(),
                info.model().trim(),
                info.serial_number().trim()
            ),
            never_extractable,
            always_sensitive,
            extractable,
            sensitive,
            local,
        })
    }

    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        let guard = self.guard(id)?;
        let token = &self.token.name;
        let weak = guard.weaknesses();
        let reason = if guard.sensitive == Some(true) && guard.extractable == Some(false) {
            if weak.is_empty() {
                format!(
                    "key {id} is non-extractable on {token} (CKA_SENSITIVE true, \
                     CKA_EXTRACTABLE false{}): its private part does not leave the token. Back up \
                     its public key and metadata only",
                    if guard.always_sensitive == Some(true) && guard.never_extractable == Some(true)
                    {
                        ", and it never was extractable"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
                    "key {id} is non-extractable on {token} now (CKA_SENSITIVE true, \
                     CKA_EXTRACTABLE false), so the token refuses to let it out; but {}, so \
                     copies may exist elsewhere. Back up its public key and metadata only",
                    weak.join("; ")
                )
            }
        } else if weak.is_empty() {
            format!(
                "keyhaven does not export private keys from PKCS#11 tokens; {token} does not say \
                 whether key {id} is extractable (CKA_SENSITIVE {}, CKA_EXTRACTABLE {})",
                shown(guard.sensitive),
                shown(guard.extractable)
            )
        } else {
            format!(
                "keyhaven does not export private keys from PKCS#11 tokens, but key {id} on \
                 {token} is not protected like keyhaven's own keys: {}. Another tool could take \
                 it off the token, so treat it as possibly known outside the token",
                weak.join("; ")
            )
        };
        Err(Error::Unsupported {
            operation: "export a private key",
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(s: bool, e: bool, always: bool, never: bool) -> Guard {
        Guard {
            sensitive: Some(s),
            extractable: Some(e),
            always_sensitive: Some(always),
            never_extractable: Some(never),
        }
    }

    #[test]
    fn weak_keys_are_named_by_attribute() {
        assert!(guard(true, false, true, true).weaknesses().is_empty());
        assert!(guard(true, false, true, true).as_generated());
        // what `pkcs11-tool --keypairgen --extractable` makes on SoftHSM
        let extractable = guard(true, true, true, false).weaknesses();
        assert_eq!(extractable.len(), 1, "{extractable:?}");
        assert!(extractable[0].contains("CKA_EXTRACTABLE is true"));
        let plain = guard(false, true, false, false).weaknesses();
        assert!(plain.iter().any(|w| w.contains("CKA_SENSITIVE is false")));
        assert!(plain.iter().any(|w| w.contains("CKA_EXTRACTABLE is true")));
        assert_eq!(plain.len(), 2, "no double counting: {plain:?}");
        // locked down later: sensitive and non-extractable now, but not always
        let history = guard(true, false, false, false).weaknesses();
        assert_eq!(history.len(), 2, "{history:?}");
        // a token that ignored the template, or says nothing, is not taken for a good key
        assert!(!guard(false, false, true, true).as_generated());
        assert!(!guard(true, true, true, true).as_generated());
        assert!(!Guard::default().as_generated());
        assert!(Guard::default().weaknesses().is_empty());
    }
}
