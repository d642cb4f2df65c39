//! [`TpmStore`]: the `KeyStore` over a TPM and its metadata directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use keyhaven_core::{
    Algorithm, BackendInfo, Error, ErrorKind, KeyDetails, KeyId, KeyInfo, KeySpec, KeyStore,
    Protection, PublicKey, Result, SecretBytes, Signature, unix_now, validate_label,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::config::{PcrPolicy, PersistentHandle, TpmConfig};
use crate::device::{Device, Fail, PolicyInfo, SignRequest, curve_of, left_pad, name_of};
use crate::error::TpmError;
use crate::files::{FileStamp, KeyDir, PRIVATE, PUBLIC, RECORD};
use crate::report::TpmReport;

/// The `format` of a key record.
const RECORD_FORMAT: &str = "keyhaven-tpm-key";
/// The container of [`KeyStore::export_wrapped`].
const WRAPPED_FORMAT: &str = "keyhaven-tpm-wrapped";

/// A TPM key as a backup carries it: its record and the TPM2B blobs, as they are on disk.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    format: String,
    version: u32,
    /// The record, as JSON text.
    record: String,
    /// The TPM2B_PRIVATE file, hex.
    private: String,
    /// The TPM2B_PUBLIC file, hex.
    public: String,
}

/// A key's record (`keys/ID.json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: String,
    version: u32,
    id: KeyId,
    label: String,
    algorithm: Algorithm,
    created_at: u64,
    /// SubjectPublicKeyInfo DER, hex.
    public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    persistent_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pcr_policy: Option<PolicyRecord>,
    /// Whether the key has a passphrase.
    #[serde(default)]
    auth: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRecord {
    /// `sha256:0,7`.
    selection: String,
    /// SHA-256 over the PCR values at creation, hex.
    pcr_digest: String,
    /// The PCR values at creation, hex, in selection order.
    values: Vec<String>,
}

/// A parsed record.
#[derive(Debug)]
struct Key {
    info: KeyInfo,
    persistent: Option<PersistentHandle>,
    policy: Option<PolicyInfo>,
    auth: bool,
}

impl Key {
    fn parse(id: &KeyId, bytes: &[u8]) -> Result<Key, String> {
        let r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.format != RECORD_FORMAT || r.version != 1 {
            return Err(format!(
                "unknown record format '{}' version {}",
                r.format, r.version
            ));
        }
        if &r.id != id {
            return Err(format!("the record is for key {}, not {id}", r.id));
        }
        validate_label(&r.label).map_err(|e| e.to_string())?;
        let der = hex::decode(&r.public_key).map_err(|e| format!("public_key: {e}"))?;
        let public_key = keyhaven_crypto::default_provider()
            .parse_public_key_der_as(r.algorithm, &der)
            .map_err(|e| format!("public_key: {e} (the record says {})", r.algorithm))?;
        let persistent = r
            .persistent_handle
            .as_deref()
            .map(str::parse::<PersistentHandle>)
            .transpose()
            .map_err(|e| e.to_string())?;
        let policy = match r.pcr_policy {
            None => None,
            Some(p) => {
                let selection: PcrPolicy = p.selection.parse().map_err(|e: Error| e.to_string())?;
                let values = p
                    .values
                    .iter()
                    .map(hex::decode)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("pcr_policy.values: {e}"))?;
                if values.len() != selection.pcrs().len() {
                    return Err("pcr_policy: one value per PCR expected".into());
                }
                Some(PolicyInfo {
                    bank: selection.bank(),
                    pcrs: selection.pcrs().to_vec(),
                    pcr_digest: hex::decode(&p.pcr_digest)
                        .map_err(|e| format!("pcr_policy.pcr_digest: {e}"))?,
                    values,
                    text: selection.to_string(),
                })
            }
        };
        Ok(Key {
            info: KeyInfo::new(
                id.clone(),
                r.label,
                Protection::Hardware,
                public_key,
                r.created_at,
            ),
            persistent,
            policy,
            auth: r.auth,
        })
    }
}

/// SubjectPublicKeyInfo DER prefixes (everything before `04 || x || y`).
const SPKI_P256: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const SPKI_P384: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// The public key of a TPM public area, as SPKI DER (uncompressed point, coordinates padded to
/// the curve size), checked to be a point on the curve.
fn spki_of(alg: Algorithm, public: &Public) -> Result<PublicKey, String> {
    let curve = curve_of(alg).map_err(|e| e.to_string())?;
    let Public::Ecc {
        unique, parameters, ..
    } = public
    else {
        return Err("not an ECC key".into());
    };
    if parameters.ecc_curve() != curve.curve {
        return Err(format!(
            "the key is on {:?}, not {alg}",
            parameters.ecc_curve()
        ));
    }
    let mut der = match alg.nist_curve() {
        Some("P-256") => SPKI_P256.to_vec(),
        _ => SPKI_P384.to_vec(),
    };
    der.push(0x04);
    for coordinate in [unique.x().value(), unique.y().value()] {
        der.extend_from_slice(&left_pad(coordinate, curve.size).map_err(|e| e.to_string())?);
    }
    keyhaven_crypto::default_provider()
        .parse_public_key_der_as(alg, &der)
        .map_err(|e| format!("the public point is not valid: {e}"))
}

/// `bytes` as a TPM2B (a big-endian 16-bit size, then the bytes): the form `tpm2_create -u/-r`
/// writes and `tpm2_load -u/-r` reads.
fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(bytes.len()).map_err(|_| {
        Error::from(TpmError::BadResponse {
            what: "TPM2B buffer",
            reason: format!("{} bytes do not fit a TPM2B", bytes.len()),
        })
    })?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

/// The contents of a TPM2B, checking its size field.
fn untpm2b(bytes: &[u8]) -> Result<&[u8], String> {
    let [hi, lo, rest @ ..] = bytes else {
        return Err("shorter than its size field".into());
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if len != rest.len() {
        return Err(format!(
            "its size field says {len} bytes but {} follow",
            rest.len()
        ));
    }
    Ok(rest)
}

/// The authorization value a passphrase gives: its SHA-256 (so any length fits the TPM's
/// 32-byte limit for SHA-256 keys).
fn auth_value(passphrase: &SecretString) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(Sha256::digest(passphrase.expose_secret().as_bytes()).to_vec())
}

/// Whether two authorization values are equal, in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the store knows about a key beyond [`KeyInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TpmKeyDetails {
    /// The persistent handle it is also stored at, if any.
    pub persistent: Option<PersistentHandle>,
    /// The PCR policy it is bound to, if any.
    pub pcr_policy: Option<PcrPolicy>,
    /// Whether it needs a passphrase.
    pub needs_auth: bool,
    /// The file holding its TPM-wrapped private part.
    pub blob_file: std::path::PathBuf,
}

/// How many keys are loaded in the TPM now, and how many may be at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadedKeys {
    /// Keys loaded now.
    pub loaded: usize,
    /// The limit (least recently used keys are flushed beyond it).
    pub capacity: usize,
    /// How many times the store reconnected after losing the TPM.
    pub reconnects: u64,
    /// How many times the store loaded a key into the TPM (`TPM2_Load`) since it opened: a key
    /// signing again while it is loaded adds nothing.
    pub loads: u64,
}

/// A key store in a TPM 2.0: keys are created inside the TPM under a storage primary key and
/// never leave it; keyhaven keeps each key's TPM-wrapped private blob, public area and metadata
/// in a directory. See the crate documentation.
pub struct TpmStore {
    dir: KeyDir,
    /// The TCTI, for messages and [`KeyStore::info`] (kept out of the device's mutex, which a
    /// slow TPM command may hold).
    tcti: String,
    device: Mutex<Device>,
    records: Mutex<HashMap<KeyId, (FileStamp, Arc<Key>)>>,
    auth: Mutex<HashMap<KeyId, Zeroizing<Vec<u8>>>>,
}

fn poisoned<T>(_: T) -> Error {
    TpmError::Poisoned.into()
}

impl TpmStore {
    /// Opens (creating if needed) the metadata directory and connects to the TPM: creates the
    /// storage primary key, so a TPM that cannot be reached fails here, clearly.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the TPM cannot be reached, [`Error::PermissionDenied`] for a
    /// directory others may read or write, [`Error::Corrupt`] for a foreign directory.
    pub fn open(config: TpmConfig) -> Result<Self> {
        let dir = KeyDir::open_or_create(&config.dir)?;
        let tcti = config.tcti.to_string();
        let mut device = Device::new(config.tcti, config.storage_key, config.max_loaded_keys);
        device.with_context(|_| Ok(()))?;
        Ok(TpmStore {
            dir,
            tcti,
            device: Mutex::new(device),
            records: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The metadata directory.
    pub fn dir(&self) -> &Path {
        self.dir.root()
    }

    /// The TCTI the store uses.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    fn device(&self) -> Result<MutexGuard<'_, Device>> {
        self.device.lock().map_err(poisoned)
    }

    /// The device, for the counters.
    pub(crate) fn device_guard(&self) -> Result<MutexGuard<'_, Device>> {
        self.device()
    }

    /// The TCTI the store talks to, for messages.
    pub(crate) fn tcti_name(&self) -> &str {
        &self.tcti
    }

    /// Gives the passphrase of a key made with [`KeyOptions::auth`](crate::KeyOptions), for this
    /// store's later signatures (kept in memory, zeroized on drop). It is checked by the TPM at
    /// the next signature: a wrong one is [`Error::BadPassphrase`] then.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown key.
    pub fn set_key_auth(&self, id: &KeyId, passphrase: &SecretString) -> Result<()> {
        self.key(id)?;
        self.auth
            .lock()
            .map_err(poisoned)?
            .insert(id.clone(), auth_value(passphrase));
        Ok(())
    }

    /// Forgets a key's passphrase.
    ///
    /// # Errors
    /// Only if a thread panicked while holding the passphrases.
    pub fn forget_key_auth(&self, id: &KeyId) -> Result<()> {
        self.auth.lock().map_err(poisoned)?.remove(id);
        Ok(())
    }

    /// Generates a key with options: a passphrase, a PCR policy, a persistent handle.
    ///
    /// # Errors
    /// As [`KeyStore::generate`]; [`Error::AlreadyExists`] for a persistent handle in use.
    pub fn generate_with_options(
        &self,
        algorithm: Algorithm,
        label: &str,
        options: crate::KeyOptions,
    ) -> Result<KeyInfo> {
        validate_label(label)?;
        curve_of(algorithm)?;
        let auth = options.auth.as_ref().map(auth_value);
        let id = KeyId::generate()?;
        let lock = self.dir.lock()?;
        self.dir.claim_label(&lock, label, &id)?;
        let mut persisted = None;
        let result = (|| {
            let policy_text = options.pcr_policy.as_ref().map(ToString::to_string);
            let created = {
                let mut device = self.device()?;
                let policy = options
                    .pcr_policy
                    .as_ref()
                    .zip(policy_text.as_deref())
                    .map(|(p, t)| (p.bank(), p.pcrs(), t));
                device.create_key(algorithm, auth.as_deref().map(Vec::as_slice), policy)?
            };
            let public_key = spki_of(algorithm, &created.public).map_err(|reason| {
                Error::from(TpmError::BadResponse {
                    what: "public area",
                    reason,
                })
            })?;
            if let Some(handle) = options.persistent {
                let name = name_of(&created.public)?;
                self.device()?
                    .persist(&id, &created.private, &created.public, handle.value())?;
                persisted = Some((handle, name));
            }
            let public_bytes = created.public.marshall().map_err(|e| TpmError::Wrapper {
                command: "marshalling the public area",
                source: e,
            })?;
            self.dir
                .write_key_file(&id, PRIVATE, &tpm2b(created.private.value())?)?;
            self.dir
                .write_key_file(&id, PUBLIC, &tpm2b(&public_bytes)?)?;
            let info = KeyInfo::new(
                id.clone(),
                label.to_owned(),
                Protection::Hardware,
                public_key,
                unix_now(),
            );
            let record = Record {
                format: RECORD_FORMAT.into(),
                version: 1,
                id: id.clone(),
                label: label.to_owned(),
                algorithm,
                created_at: info.created_at,
                public_key: hex::encode(info.public_key.spki_der()),
                persistent_handle: options.persistent.map(|h| h.to_string()),
                pcr_policy: created.policy.as_ref().map(|p| PolicyRecord {
                    selection: p.text.clone(),
                    pcr_digest: hex::encode(&p.pcr_digest),
                    values: p.values.iter().map(hex::encode).collect(),
                }),
                auth: auth.is_some(),
            };
            let mut json = serde_json::to_vec_pretty(&record)
                .map_err(|e| Error::InvalidInput(format!("cannot encode the record: {e}")))?;
            json.push(b'\n');
            self.dir.write_key_file(&id, RECORD, &json)?;
            Ok(info)
        })();
        match result {
            Ok(info) => {
                if let Some(auth) = auth {
                    self.auth.lock().map_err(poisoned)?.insert(id, auth);
                }
                Ok(info)
            }
            Err(e) => {
                if let Some((handle, name)) = persisted
                    && let Ok(mut device) = self.device()
                {
                    let _ = device.unpersist(&id, handle.value(), &|| Ok(name.clone()));
                }
                let _ = self.dir.remove_key(&lock, &id);
                let _ = self.dir.release_label(&lock, label, &id);
                Err(e)
            }
        }
    }

    /// A key's TPM-specific details.
    ///
    /// # Errors
    /// [`Error::NotFound`], or [`Error::Corrupt`] for a damaged record.
    pub fn key_details(&self, id: &KeyId) -> Result<TpmKeyDetails> {
        let key = self.key(id)?;
        Ok(TpmKeyDetails {
            persistent: key.persistent,
            pcr_policy: key
                .policy
                .as_ref()
                .and_then(|p| p.text.parse::<PcrPolicy>().ok()),
            needs_auth: key.auth,
            blob_file: self.dir.key_file(id, PRIVATE),
        })
    }

    /// The TPM's identity and capabilities.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the TPM cannot be reached.
    pub fn report(&self) -> Result<TpmReport> {
        let mut report = self.device()?.with_context(crate::device::read_report)?;
        report.tcti.clone_from(&self.tcti);
        Ok(report)
    }

    /// How many keys are loaded in the TPM (the LRU), for diagnostics.
    ///
    /// # Errors
    /// Only if a thread panicked while using the TPM.
    pub fn loaded_keys(&self) -> Result<LoadedKeys> {
        let device = self.device()?;
        let (loaded, capacity) = device.loaded();
        Ok(LoadedKeys {
            loaded,
            capacity,
            reconnects: device.reconnects(),
            loads: device.loads(),
        })
    }

    /// A key's parsed record, cached while its file is unchanged.
    fn key(&self, id: &KeyId) -> Result<Arc<Key>> {
        let Some(stamp) = self.dir.record_stamp(id)? else {
            self.records.lock().map_err(poisoned)?.remove(id);
            return Err(Error::key_not_found(id));
        };
        if let Some((s, key)) = self.records.lock().map_err(poisoned)?.get(id)
            && *s == stamp
        {
            return Ok(Arc::clone(key));
        }
        let bytes = self
            .dir
            .read_key_file(id, RECORD)?
            .ok_or_else(|| Error::key_not_found(id))?;
        let key = Key::parse(id, &bytes).map_err(|reason| {
            Error::corrupt(self.dir.key_file(id, RECORD).display().to_string(), reason)
        })?;
        let key = Arc::new(key);
        self.records
            .lock()
            .map_err(poisoned)?
            .insert(id.clone(), (stamp, Arc::clone(&key)));
        Ok(key)
    }

    /// Reads and checks a key's wrapped private part and public area.
    fn blobs(&self, key: &Key) -> Result<(Private, Public)> {
        let id = &key.info.id;
        let corrupt = |suffix: &str, reason: String| {
            Error::corrupt(self.dir.key_file(id, suffix).display().to_string(), reason)
        };
        let private = self
            .dir
            .read_key_file(id, PRIVATE)?
            .ok_or_else(|| corrupt(PRIVATE, "the wrapped private key file is missing".into()))?;
        let private = untpm2b(&private)
            .and_then(|p| Private::try_from(p).map_err(|e| e.to_string()))
            .map_err(|e| corrupt(PRIVATE, format!("not a TPM2B_PRIVATE blob: {e}")))?;
        let public = self
            .dir
            .read_key_file(id, PUBLIC)?
            .ok_or_else(|| corrupt(PUBLIC, "the public area file is missing".into()))?;
        let public = untpm2b(&public)
            .and_then(|p| Public::unmarshall(p).map_err(|e| e.to_string()))
            .map_err(|e| corrupt(PUBLIC, format!("not a TPM2B_PUBLIC area: {e}")))?;
        let attrs = public.object_attributes();
        let agrees = key.info.algorithm.can_agree();
        if !attrs.fixed_tpm()
            || attrs.sign_encrypt() == agrees
            || attrs.decrypt() != agrees
            || attrs.restricted()
        {
            return Err(corrupt(
                PUBLIC,
                if agrees {
                    "the public area is not a fixedTPM, unrestricted, decrypt-only key".into()
                } else {
                    "the public area is not a fixedTPM, unrestricted, sign-only key".into()
                },
            ));
        }
        match spki_of(key.info.algorithm, &public) {
            Ok(pk) if pk == key.info.public_key => Ok((private, public)),
            Ok(_) => Err(corrupt(
                PUBLIC,
                "the public area does not match the recorded public key".into(),
            )),
            Err(reason) => Err(corrupt(PUBLIC, reason)),
        }
    }

    fn sign_prehashed(&self, key: &Key, digest: &[u8]) -> Result<Signature> {
        let raw = self.with_key_auth(key, |device, request| {
            device.sign(&SignRequest {
                digest,
                blob_file: request.blob_file.clone(),
                ..*request
            })
        })?;
        Signature::from_raw(key.info.algorithm, raw)
    }

    /// Runs one device operation with `key`: its held passphrase (`Locked` if it needs one and
    /// none is held) and its blobs. A passphrase the TPM refuses is forgotten.
    fn with_key_auth<T>(
        &self,
        key: &Key,
        op: impl FnOnce(&mut Device, &SignRequest<'_>) -> std::result::Result<T, Fail>,
    ) -> Result<T> {
        let id = &key.info.id;
        let auth = if key.auth {
            let held = self.auth.lock().map_err(poisoned)?.get(id).cloned();
            Some(held.ok_or_else(|| TpmError::AuthNeeded {
                key: id.to_string(),
            })?)
        } else {
            None
        };
        let blobs = || self.blobs(key);
        let request = SignRequest {
            id,
            alg: key.info.algorithm,
            digest: &[],
            persistent: key.persistent.map(PersistentHandle::value),
            auth: auth.as_deref().map(Vec::as_slice),
            policy: key.policy.as_ref(),
            blob_file: self.dir.key_file(id, PRIVATE),
            blobs: &blobs,
        };
        let result = op(&mut *self.device()?, &request);
        match result {
            Ok(out) => Ok(out),
            Err(Fail::Tpm(e @ TpmError::AuthFail { .. })) => {
                // A wrong passphrase stays wrong: forget it, so that the next use asks for one
                // (Locked) instead of sending it again and again, each time counting toward the
                // TPM's dictionary-attack lockout. (Unless another thread has set a new one
                // meanwhile.)
                let mut held = self.auth.lock().map_err(poisoned)?;
                if let (Some(used), Some(now)) = (&auth, held.get(id))
                    && same_secret(used, now)
                {
                    held.remove(id);
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl std::fmt::Debug for TpmStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmStore")
            .field("dir", &self.dir.root())
            .finish_non_exhaustive()
    }
}

impl KeyStore for TpmStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new(
            "tpm",
            Protection::Hardware,
            format!("{} (TCTI {})", self.dir.root().display(), self.tcti),
        )
    }

    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        self.generate_with_options(algorithm, label, crate::KeyOptions::default())
    }

    fn generate_with(&self, spec: &KeySpec) -> Result<KeyInfo> {
        let options = crate::KeyOptions::from_spec(&spec.options)?;
        self.generate_with_options(spec.algorithm, &spec.label, options)
    }

    fn details(&self, id: &KeyId) -> Result<KeyDetails> {
        let d = self.key_details(id)?;
        let mut out = KeyDetails::default();
        out.in_device = true;
        out.persistent_handle = d.persistent.map(|h| h.to_string());
        out.pcr_policy = d.pcr_policy.map(|p| p.to_string());
        out.needs_auth = d.needs_auth;
        Ok(out)
    }

    fn unlock(&self, id: &KeyId, secret: &SecretString) -> Result<()> {
        self.set_key_auth(id, secret)
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for id in self.dir.record_ids()? {
            match self.key(&id) {
                Ok(key) => out.push(key.info.clone()),
                // damaged records are reported by check(); deleted meanwhile is fine
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        Ok(self.key(id)?.info.clone())
    }

    fn find_by_label(&self, label: &str) -> Result<KeyInfo> {
        match self.dir.label_owner(label)? {
            Some(id) => self.get(&id),
            None => Err(Error::key_not_found(label)),
        }
    }

    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        let key = self.key(id)?;
        if !key.info.algorithm.can_sign() {
            return Err(Error::Unsupported {
                operation: "sign",
                reason: format!(
                    "{} keys do key agreement only",
                    key.info.algorithm.display_name()
                ),
            });
        }
        let digest = match key.info.algorithm {
            Algorithm::EcdsaP384 => Sha384::digest(message).to_vec(),
            _ => Sha256::digest(message).to_vec(),
        };
        self.sign_prehashed(&key, &digest)
    }

    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        let key = self.key(id)?;
        key.info.algorithm.check_digest(digest)?;
        self.sign_prehashed(&key, digest)
    }

    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        let key = self.key(id)?;
        let alg = key.info.algorithm;
        if !alg.can_agree() {
            return Err(Error::Unsupported {
                operation: "key agreement",
                reason: format!(
                    "{} is a {} signing key; generate an ecdh-p384 or ecdh-p256 key to agree in \
                     the TPM",
                    key.info.id, alg
                ),
            });
        }
        alg.check_peer(peer.algorithm())?;
        // On the curve, checked here before the TPM sees it (invalid-curve points are the
        // classic attack on ECDH; the TPM checks too).
        let point = keyhaven_crypto::encoding::ec_point_uncompressed(peer)?;
        let size = (point.len() - 1) / 2;
        let (x, y) = point[1..].split_at(size);
        self.with_key_auth(&key, |device, request| device.ecdh_zgen(request, x, y))
    }

    fn delete(&self, id: &KeyId) -> Result<()> {
        let lock = self.dir.lock()?;
        let key = match self.key(id) {
            Ok(key) => Some(key),
            // a damaged record can still be deleted; its label claim then goes stale
            Err(Error::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        {
            let mut device = self.device()?;
            if let Some(key) = &key
                && let Some(handle) = key.persistent
            {
                // Evict only the key itself: the object at the handle must have the Name of
                // the key's public area (another program may have put its own there).
                let expected = || -> Result<Vec<u8>, Fail> {
                    let (_, public) = self.blobs(key).map_err(|e| {
                        Error::corrupt(
                            self.dir.key_file(id, PUBLIC).display().to_string(),
                            format!(
                                "{e}; so keyhaven cannot tell whether persistent handle {handle} \
                                 still holds key {id}, and does not evict it. Look with \
                                 `tpm2_readpublic -c {handle}`, evict it with `tpm2_evictcontrol \
                                 -C o -c {handle}` if it is this key, then delete the key again"
                            ),
                        )
                    })?;
                    Ok(name_of(&public)?)
                };
                device.unpersist(id, handle.value(), &expected)?;
            }
            device.unload(id);
        }
        self.dir.remove_key(&lock, id)?;
        if let Some(key) = &key {
            self.dir.release_label(&lock, &key.info.label, id)?;
        }
        self.records.lock().map_err(poisoned)?.remove(id);
        self.auth.lock().map_err(poisoned)?.remove(id);
        Ok(())
    }

    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        let _ = (label, pkcs8_der);
        Err(Error::Unsupported {
            operation: "import a private key",
            reason: "keys in the TPM backend are created inside the TPM, which never held a \
                     copy elsewhere; keyhaven does not import keys into it"
                .into(),
        })
    }

    /// `TPM2_Certify` of the key by the TPM's attestation key over `challenge` (at most 32
    /// bytes), with both public areas.
    fn attest_key(&self, id: &KeyId, challenge: &[u8]) -> Result<keyhaven_core::KeyAttestation> {
        use base64ct::{Base64, Encoding};
        if challenge.len() > 32 {
            return Err(Error::InvalidInput(format!(
                "a TPM certification carries a challenge of at most 32 bytes, not {}",
                challenge.len()
            )));
        }
        let key = self.key(id)?;
        let (certify_info, signature, ak_public) =
            self.with_key_auth(&key, |device, request| device.certify(request, challenge))?;
        let (_, public) = self.blobs(&key)?;
        let key_public = public.marshall().map_err(|e| {
            Error::from(TpmError::Wrapper {
                command: "TPM2_Certify",
                source: e,
            })
        })?;
        Ok(keyhaven_core::KeyAttestation::Tpm2Certify {
            certify_info: Base64::encode_string(&certify_info),
            signature: Base64::encode_string(&signature),
            ak_public: Base64::encode_string(&tpm2b(&ak_public)?),
            key_public: Base64::encode_string(&tpm2b(&key_public)?),
        })
    }

    /// The key's record, TPM-wrapped private part and public area, in one container: only this
    /// TPM (under the same storage key) can load the private part.
    fn export_wrapped(&self, id: &KeyId) -> Result<Vec<u8>> {
        let key = self.key(id)?;
        let file = |suffix: &str| -> Result<Vec<u8>> {
            self.dir.read_key_file(id, suffix)?.ok_or_else(|| {
                Error::corrupt(
                    self.dir.key_file(id, suffix).display().to_string(),
                    "the file is missing",
                )
            })
        };
        let wrapped = Wrapped {
            format: WRAPPED_FORMAT.into(),
            version: 1,
            record: String::from_utf8(file(RECORD)?).map_err(|_| {
                Error::corrupt(
                    self.dir.key_file(id, RECORD).display().to_string(),
                    "the record is not UTF-8",
                )
            })?,
            private: hex::encode(file(PRIVATE)?),
            public: hex::encode(file(PUBLIC)?),
        };
        let _ = key;
        serde_json::to_vec(&wrapped)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the wrapped key: {e}")))
    }

    /// Puts a wrapped key back under its id: the record (relabelled), the blobs, then a load
    /// into this TPM, which refuses a blob of another TPM; on any failure nothing stays.
    fn restore_wrapped(&self, original: &KeyInfo, label: &str, wrapped: &[u8]) -> Result<KeyInfo> {
        validate_label(label)?;
        let bad = |why: &str| {
            Error::InvalidInput(format!("not a TPM-wrapped key of {}: {why}", original.id))
        };
        let w: Wrapped = serde_json::from_slice(wrapped).map_err(|e| bad(&e.to_string()))?;
        if w.format != WRAPPED_FORMAT || w.version != 1 {
            return Err(bad("unknown container format"));
        }
        let mut record: Record =
            serde_json::from_str(&w.record).map_err(|e| bad(&e.to_string()))?;
        if record.id != original.id
            || record.public_key != hex::encode(original.public_key.spki_der())
        {
            return Err(bad("its record is another key's"));
        }
        record.label = label.to_owned();
        let private = hex::decode(&w.private).map_err(|_| bad("the private part is not hex"))?;
        let public = hex::decode(&w.public).map_err(|_| bad("the public area is not hex"))?;
        let mut json = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the record: {e}")))?;
        json.push(b'\n');
        let id = &original.id;
        let lock = self.dir.lock()?;
        if self.dir.record_stamp(id)?.is_some() {
            return Err(Error::AlreadyExists(format!("key {id} in the TPM backend")));
        }
        self.dir.claim_label(&lock, label, id)?;
        let written = (|| {
            self.dir.write_key_file(id, PRIVATE, &private)?;
            self.dir.write_key_file(id, PUBLIC, &public)?;
            self.dir.write_key_file(id, RECORD, &json)?;
            let key = self.key(id)?;
            // The TPM itself checks the blob: a foreign one is refused here, not at first use.
            let (private, public) = self.blobs(&key)?;
            let blob_file = self.dir.key_file(id, PRIVATE);
            self.device()?
                .check_loads(id, &private, &public, &blob_file)?;
            Ok::<_, Error>(key.info.clone())
        })();
        match written {
            Ok(info) => Ok(info),
            Err(e) => {
                let _ = self.dir.remove_key(&lock, id);
                let _ = self.dir.release_label(&lock, label, id);
                self.records.lock().map_err(poisoned)?.remove(id);
                Err(e)
            }
        }
    }

    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        let key = self.key(id)?; // an unknown id is NotFound, not Unsupported
        Err(Error::Unsupported {
            operation: "export a private key",
            reason: format!(
                "key {} was created inside the TPM (fixedTPM, fixedParent): its private part \
                 exists outside it only as the blob in {}, which only this TPM can load. Back \
                 up its public key and metadata only",
                key.info.id,
                self.dir.key_file(id, PRIVATE).display()
            ),
        })
    }

    fn check(&self) -> Result<Vec<Error>> {
        let mut problems = Vec::new();
        for id in self.dir.record_ids()? {
            match self.key(&id) {
                Ok(key) => {
                    if let Err(e) = self.blobs(&key) {
                        problems.push(e);
                    }
                }
                Err(e) if e.is(ErrorKind::NotFound) => {}
                Err(e) => problems.push(e),
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn tpm2b_framing() {
        assert_eq!(tpm2b(b"abc").unwrap(), b"\x00\x03abc");
        assert_eq!(untpm2b(b"\x00\x03abc").unwrap(), b"abc");
        assert!(untpm2b(b"\x00\x04abc").is_err());
        assert!(untpm2b(b"\x00").is_err());
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let provider = keyhaven_crypto::default_provider();
        let key = provider.generate(Algorithm::EcdsaP256).unwrap();
        let id = KeyId::generate().unwrap();
        let record = Record {
            format: RECORD_FORMAT.into(),
            version: 1,
            id: id.clone(),
            label: "l".into(),
            algorithm: Algorithm::EcdsaP256,
            created_at: 1_700_000_000,
            public_key: hex::encode(key.public_key().spki_der()),
            persistent_handle: Some("0x81000010".into()),
            pcr_policy: Some(PolicyRecord {
                selection: "sha256:0,7".into(),
                pcr_digest: "00".repeat(32),
                values: vec!["00".repeat(32), "11".repeat(32)],
            }),
            auth: true,
        };
        let json = serde_json::to_vec(&record).unwrap();
        let parsed = Key::parse(&id, &json).unwrap();
        assert_eq!(&parsed.info.public_key, key.public_key());
        assert_eq!(parsed.persistent.unwrap().value(), 0x8100_0010);
        assert_eq!(parsed.policy.unwrap().pcrs, vec![0, 7]);
        assert!(parsed.auth);
        let other = KeyId::generate().unwrap();
        assert!(Key::parse(&other, &json).unwrap_err().contains("not"));
        assert!(Key::parse(&id, b"{").is_err());
    }
}
