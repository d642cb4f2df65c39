//! The TPM side: one ESAPI context, the storage primary key, an LRU of loaded keys, and
//! recovery when the TPM restarts.
//!
//! Everything here runs under the store's mutex (an ESAPI context is not `Sync`), so the
//! functions take `&mut self`.

use std::collections::HashMap;
use std::path::PathBuf;

use keyhaven_core::{Algorithm, Error, KeyId};
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType, StartupType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket,
    KeyDerivationFunctionScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private,
    Public, PublicBuilder, PublicEccParametersBuilder, Signature as TpmSignature, SignatureScheme,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use crate::config::{PcrBank, StorageKey, Tcti};
use crate::error::{TpmError, TpmRc, raw_rc, rc};

/// A failure inside the device layer: the TPM's (which may call for a reconnect) or another.
#[derive(Debug)]
pub(crate) enum Fail {
    Tpm(TpmError),
    Other(Error),
    /// The storage key our handle names is gone and another object took its handle number (a
    /// program without a resource manager flushed it and made its own): reconnect, re-create
    /// the storage key and retry once; the error is what to report if that does not help.
    StaleParent(TpmError),
}

impl Fail {
    /// Whether reconnecting (a fresh context and storage key, nothing loaded) may help.
    fn lost(&self) -> bool {
        match self {
            Fail::Tpm(e) => e.lost_tpm(),
            Fail::StaleParent(_) => true,
            Fail::Other(_) => false,
        }
    }
}

impl From<TpmError> for Fail {
    fn from(e: TpmError) -> Self {
        Fail::Tpm(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Other(e)
    }
}

impl From<Fail> for Error {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Tpm(e) | Fail::StaleParent(e) => e.into(),
            Fail::Other(e) => e,
        }
    }
}

type DevResult<T> = Result<T, Fail>;

/// The curve, hash and sizes of an ECDSA algorithm on the TPM.
pub(crate) struct Curve {
    pub(crate) curve: EccCurve,
    pub(crate) hash: HashingAlgorithm,
    /// Bytes of a coordinate or a signature half.
    pub(crate) size: usize,
}

/// The TPM parameters of a keyhaven algorithm, or why the TPM cannot have it.
pub(crate) fn curve_of(alg: Algorithm) -> Result<Curve, Error> {
    match alg {
        Algorithm::EcdsaP256 => Ok(Curve {
            curve: EccCurve::NistP256,
            hash: HashingAlgorithm::Sha256,
            size: 32,
        }),
        Algorithm::EcdsaP384 => Ok(Curve {
            curve: EccCurve::NistP384,
            hash: HashingAlgorithm::Sha384,
            size: 48,
        }),
        Algorithm::Ed25519 | Algorithm::X25519 => Err(Error::Unsupported {
            operation: "generate a key in a TPM",
            reason: format!(
                "{alg} is not available on TPM 2.0 devices or swtpm (the TPM 2.0 library \
                 specification defines no Curve25519 algorithms); use p384 or p256, or a \
                 software store for {alg}"
            ),
        }),
        _ => Err(Error::Unsupported {
            operation: "generate a key in a TPM",
            reason: format!("{alg} is not supported by the TPM backend"),
        }),
    }
}

/// The TPM Name of an object with this public area: its name algorithm's identifier, then that
/// hash of the marshalled `TPMT_PUBLIC` (TPM 2.0 Part 1, "Names"). Two objects with the same Name
/// have the same key, attributes and policy.
pub(crate) fn name_of(public: &Public) -> Result<Vec<u8>, TpmError> {
    use sha2::{Digest as _, Sha256, Sha384};
    let bytes = public.marshall().map_err(|e| TpmError::Wrapper {
        command: "computing a Name",
        source: e,
    })?;
    let (alg, digest): (u16, Vec<u8>) = match public.name_hashing_algorithm() {
        HashingAlgorithm::Sha256 => (0x000B, Sha256::digest(&bytes).to_vec()),
        HashingAlgorithm::Sha384 => (0x000C, Sha384::digest(&bytes).to_vec()),
        other => {
            return Err(TpmError::BadResponse {
                what: "public area",
                reason: format!("its name algorithm {other:?} is not SHA-256 or SHA-384"),
            });
        }
    };
    let mut name = alg.to_be_bytes().to_vec();
    name.extend_from_slice(&digest);
    Ok(name)
}

/// The storage primary key's template: ECC P-256, AES-128-CFB, restricted decryption, from the
/// TCG "TPM v2.0 Provisioning Guidance" SRK template (empty unique field, no policy), which is
/// also what `tpm2_createprimary -C o -g sha256 -G ecc256:null:aes128cfb` makes. The same
/// template under the same owner seed always gives the same key.
///
/// # Errors
/// Only if tss-esapi rejects the (constant) template, which would be a bug.
pub fn srk_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(false)
                .with_is_decryption_key(true)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A signing key's template: unrestricted, sign-only ECDSA with the curve's hash,
/// `fixedTPM|fixedParent|sensitiveDataOrigin|sign` plus `userWithAuth` unless it has a policy
/// (with `userWithAuth` a passphrase alone would bypass the PCR policy).
pub(crate) fn signing_template(alg: Algorithm, policy: Option<Digest>) -> DevResult<Public> {
    let c = curve_of(alg)?;
    let wrap = |e| TpmError::Wrapper {
        command: "building the key template",
        source: e,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(policy.is_none())
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(wrap)?;
    let params = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(c.hash)),
        c.curve,
    )
    .build()
    .map_err(wrap)?;
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default());
    if let Some(digest) = policy {
        builder = builder.with_auth_policy(digest);
    }
    Ok(builder.build().map_err(wrap)?)
}

/// A key's PCR policy as the device needs it.
#[derive(Debug)]
pub(crate) struct PolicyInfo {
    /// The bank.
    pub(crate) bank: PcrBank,
    /// The PCRs, ascending.
    pub(crate) pcrs: Vec<u8>,
    /// SHA-256 over the PCR values at creation (the `pcrDigest` of `TPM2_PolicyPCR`).
    pub(crate) pcr_digest: Vec<u8>,
    /// The PCR values at creation, in `pcrs` order.
    pub(crate) values: Vec<Vec<u8>>,
    /// The policy as text, for messages.
    pub(crate) text: String,
}

/// What the device needs to sign with one key.
pub(crate) struct SignRequest<'a> {
    pub(crate) id: &'a KeyId,
    pub(crate) alg: Algorithm,
    pub(crate) digest: &'a [u8],
    pub(crate) persistent: Option<u32>,
    /// The authorization value, if the key has one.
    pub(crate) auth: Option<&'a [u8]>,
    pub(crate) policy: Option<&'a PolicyInfo>,
    /// The blob file (for messages).
    pub(crate) blob_file: PathBuf,
    /// Reads the key's wrapped private part and public area (only when it must be loaded).
    pub(crate) blobs: &'a dyn Fn() -> Result<(Private, Public), Error>,
}

/// What `TPM2_Create` returned.
pub(crate) struct Created {
    pub(crate) private: Private,
    pub(crate) public: Public,
    pub(crate) policy: Option<PolicyInfo>,
}

/// A live connection: the context, the primary key and the loaded keys.
struct Conn {
    ctx: Context,
    primary: KeyHandle,
    /// The storage key's Name, to tell it from another object at the same handle number later.
    primary_name: Vec<u8>,
    /// Whether `primary` is a transient object we created (and must flush).
    primary_transient: bool,
    /// Loaded keys, least recently used first.
    loaded: Vec<(KeyId, KeyHandle)>,
    /// ESAPI handles of persistent keys, by TPM handle, with the key each was checked to be.
    persistent: HashMap<u32, (KeyId, ObjectHandle)>,
    /// How many keys may be loaded at once.
    capacity: usize,
    /// `TPM2_Load` calls on this connection.
    loads: u64,
}

/// The TPM, as one store uses it.
pub(crate) struct Device {
    tcti: Tcti,
    storage: StorageKey,
    max_loaded_keys: Option<usize>,
    conn: Option<Conn>,
    /// How many times the context was re-established after losing the TPM (for tests/doctor).
    reconnects: u64,
    /// `TPM2_Load` calls on connections that are gone.
    loads_before: u64,
}

fn wrap_call(command: &'static str, key: Option<&KeyId>) -> impl Fn(tss_esapi::Error) -> TpmError {
    move |e| TpmError::call(command, key.map(KeyId::as_str), e)
}

impl Device {
    pub(crate) fn new(tcti: Tcti, storage: StorageKey, max_loaded_keys: Option<usize>) -> Self {
        Device {
            tcti,
            storage,
            max_loaded_keys,
            conn: None,
            reconnects: 0,
            loads_before: 0,
        }
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// `TPM2_Load` calls over the store's life (for tests and diagnostics).
    pub(crate) fn loads(&self) -> u64 {
        self.loads_before + self.conn.as_ref().map_or(0, |c| c.loads)
    }

    /// Opens an ESAPI context on the TCTI.
    pub(crate) fn open_context(tcti: &Tcti) -> Result<Context, TpmError> {
        Context::new(tcti.name_conf()).map_err(|e| TpmError::Unreachable {
            tcti: tcti.to_string(),
            rc: raw_rc(&e).unwrap_or(TpmRc(rc::TCTI_IO_ERROR)),
            hint: tcti.unreachable_hint(),
        })
    }

    fn connect(&self) -> Result<Conn, TpmError> {
        let mut ctx = Device::open_context(&self.tcti)?;
        let (primary, primary_transient) = match self.storage {
            StorageKey::Derived => (create_primary(&mut ctx)?, true),
            StorageKey::Persistent(handle) => {
                let tpm_handle = PersistentTpmHandle::new(handle.value())
                    .map_err(wrap_call("TPM2_ReadPublic", None))?;
                let obj = ctx
                    .execute_without_session(|c| {
                        c.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle))
                    })
                    .map_err(wrap_call("TPM2_ReadPublic (storage key)", None))?;
                (KeyHandle::from(obj), false)
            }
        };
        let primary_name = ctx
            .tr_get_name(primary.into())
            .map_err(wrap_call("TPM2_ReadPublic (storage key)", None))?
            .value()
            .to_vec();
        let capacity = match self.max_loaded_keys {
            Some(n) => n,
            None => {
                let min = ctx
                    .get_tpm_property(PropertyTag::HrTransientMin)
                    .map_err(wrap_call("TPM2_GetCapability", None))?
                    .unwrap_or(3);
                // a transient storage key holds one slot for good (a persistent one takes a
                // slot only while it is used as a parent: see `make_room`)
                let min = usize::try_from(min).unwrap_or(3);
                min.saturating_sub(usize::from(primary_transient)).max(1)
            }
        };
        Ok(Conn {
            ctx,
            primary,
            primary_name,
            primary_transient,
            loaded: Vec::new(),
            persistent: HashMap::new(),
            capacity,
            loads: 0,
        })
    }

    /// Forgets the connection without sending anything to the TPM: after a restart our handles
    /// name nothing (or, worse, another client's objects), so they are closed locally only.
    fn forget(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            self.loads_before += conn.loads;
            let mut handles: Vec<ObjectHandle> = conn
                .loaded
                .drain(..)
                .map(|(_, h)| ObjectHandle::from(h))
                .collect();
            handles.extend(conn.persistent.drain().map(|(_, (_, h))| h));
            handles.push(ObjectHandle::from(conn.primary));
            for mut h in handles {
                // Errors only mean the wrapper tracked it as "to flush"; it is untracked anyway.
                let _ = conn.ctx.tr_close(&mut h);
            }
            drop(conn);
        }
    }

    /// Runs `op` on the connection, connecting first if needed; if the TPM was lost (I/O
    /// error, or our handles are gone because it restarted), reconnects and tries once more.
    fn run<T>(&mut self, mut op: impl FnMut(&mut Conn) -> DevResult<T>) -> DevResult<T> {
        let mut retried = false;
        loop {
            if self.conn.is_none() {
                self.conn = Some(self.connect()?);
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            match op(conn) {
                Err(f) if f.lost() && !retried => {
                    retried = true;
                    self.reconnects += 1;
                    self.forget();
                }
                Err(f) if f.lost() => {
                    self.forget();
                    return Err(f);
                }
                other => return other,
            }
        }
    }

    /// Creates a signing key under the primary (and its PCR policy digest, if any).
    pub(crate) fn create_key(
        &mut self,
        alg: Algorithm,
        auth: Option<&[u8]>,
        policy: Option<(PcrBank, &[u8], &str)>,
    ) -> DevResult<Created> {
        self.run(|conn| {
            let policy_info = match policy {
                Some((bank, pcrs, text)) => Some(conn.policy_for(bank, pcrs, text)?),
                None => None,
            };
            let policy_digest = match &policy_info {
                Some(p) => Some(conn.trial_policy_digest(p, auth.is_some())?),
                None => None,
            };
            let template = signing_template(alg, policy_digest)?;
            let auth_value = auth
                .map(Auth::try_from)
                .transpose()
                .map_err(wrap_call("TPM2_Create", None))?;
            conn.make_room(1 + usize::from(!conn.primary_transient))?;
            // TPM2_Create under another program's storage key (which took our storage key's
            // handle number after flushing it) would succeed, and the blob would load under
            // that key only: make sure the parent is ours first.
            if !conn.primary_is_ours() {
                return Err(Fail::StaleParent(TpmError::BadResponse {
                    what: "storage key",
                    reason: "its handle holds another object, even after re-creating it".into(),
                }));
            }
            let primary = conn.primary;
            let created = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.create(primary, template, auth_value, None, None, None)
                })
                .map_err(wrap_call("TPM2_Create", None))?;
            Ok(Created {
                private: created.out_private,
                public: created.out_public,
                policy: policy_info,
            })
        })
    }

    /// Makes a just-created key persistent at `handle`.
    ///
    /// If the handle is taken by this very key (same Name) — the reply to an earlier
    /// `TPM2_EvictControl` was lost and [`Device::run`] retried — that is success.
    pub(crate) fn persist(
        &mut self,
        id: &KeyId,
        private: &Private,
        public: &Public,
        handle: u32,
    ) -> DevResult<()> {
        let name = name_of(public)?;
        self.run(|conn| {
            let key = conn.load(id, private.clone(), public.clone(), None)?;
            conn.make_room(1)?;
            let tpm_handle = PersistentTpmHandle::new(handle)
                .map_err(wrap_call("TPM2_EvictControl", Some(id)))?;
            let result = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.evict_control(
                        Provision::Owner,
                        key.into(),
                        Persistent::Persistent(tpm_handle),
                    )
                });
            match result {
                Ok(persistent) => {
                    conn.persistent.insert(handle, (id.clone(), persistent));
                    Ok(())
                }
                Err(e) => match raw_rc(&e) {
                    Some(code) if code.from_tpm() && code.base() == rc::NV_DEFINED => {
                        match conn.persistent_handle(handle, id, &|| Ok(name.clone())) {
                            Ok(_) => Ok(()), // ours already: an earlier attempt got through
                            Err(Fail::Tpm(TpmError::ForeignPersistent { .. })) => {
                                Err(TpmError::HandleInUse { handle, rc: code }.into())
                            }
                            Err(other) => Err(other),
                        }
                    }
                    _ => Err(TpmError::call("TPM2_EvictControl", Some(id.as_str()), e).into()),
                },
            }
        })
    }

    /// Removes the persistent copy of a key at `handle`. Absent is fine, and so is another
    /// object there (its Name is not `expected()`, the Name of the key's public area): that one
    /// is not ours and is left alone.
    pub(crate) fn unpersist(
        &mut self,
        id: &KeyId,
        handle: u32,
        expected: &dyn Fn() -> DevResult<Vec<u8>>,
    ) -> DevResult<()> {
        self.run(|conn| {
            conn.make_room(1)?;
            let obj = match conn.persistent_handle(handle, id, expected) {
                Ok(obj) => obj,
                Err(Fail::Tpm(TpmError::Command { rc: code, .. }))
                    if code.from_tpm() && code.base() == rc::HANDLE =>
                {
                    return Ok(());
                }
                Err(Fail::Tpm(TpmError::ForeignPersistent { .. })) => return Ok(()),
                Err(e) => return Err(e),
            };
            let tpm_handle = PersistentTpmHandle::new(handle)
                .map_err(wrap_call("TPM2_EvictControl", Some(id)))?;
            conn.ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.evict_control(Provision::Owner, obj, Persistent::Persistent(tpm_handle))
                })
                .map_err(wrap_call("TPM2_EvictControl", Some(id)))?;
            conn.persistent.remove(&handle);
            Ok(())
        })
    }

    /// Flushes a key from the LRU if it is loaded (after delete).
    pub(crate) fn unload(&mut self, id: &KeyId) {
        if let Some(conn) = self.conn.as_mut()
            && let Some(pos) = conn.loaded.iter().position(|(k, _)| k == id)
        {
            let (_, handle) = conn.loaded.remove(pos);
            let _ = conn.flush(handle.into());
        }
    }

    /// Signs a digest: TPM2_Sign with the curve's ECDSA scheme; returns r || s, each left-padded
    /// to the curve size.
    pub(crate) fn sign(&mut self, req: &SignRequest<'_>) -> DevResult<Vec<u8>> {
        let c = curve_of(req.alg)?;
        self.run(|conn| {
            let key = conn.key_handle(req)?;
            let digest =
                Digest::try_from(req.digest).map_err(wrap_call("TPM2_Sign", Some(req.id)))?;
            let scheme = SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(c.hash),
            };
            let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
                tag: TPM2_ST_HASHCHECK,
                hierarchy: TPM2_RH_NULL,
                digest: Default::default(),
            })
            .map_err(wrap_call("TPM2_Sign", Some(req.id)))?;
            let auth = Auth::try_from(req.auth.unwrap_or_default())
                .map_err(wrap_call("TPM2_Sign", Some(req.id)))?;
            conn.ctx
                .tr_set_auth(key.into(), auth)
                .map_err(wrap_call("TPM2_Sign", Some(req.id)))?;
            let signature = match req.policy {
                None => conn
                    .ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.sign(key, digest, scheme, ticket)
                    })
                    .map_err(|e| sign_error(req, e))?,
                Some(policy) => conn.sign_with_policy(req, policy, key, digest, scheme, ticket)?,
            };
            let TpmSignature::EcDsa(sig) = signature else {
                return Err(TpmError::BadResponse {
                    what: "signature",
                    reason: "not an ECDSA signature".into(),
                }
                .into());
            };
            let mut raw = Vec::with_capacity(2 * c.size);
            for half in [sig.signature_r().value(), sig.signature_s().value()] {
                raw.extend_from_slice(&left_pad(half, c.size)?);
            }
            Ok(raw)
        })
    }

    /// Drops the connection (nothing sent to the TPM): the next command connects afresh.
    pub(crate) fn reset(&mut self) {
        self.forget();
    }

    /// Runs `f` on the raw context (for the report).
    pub(crate) fn with_context<T>(
        &mut self,
        mut f: impl FnMut(&mut Context) -> Result<T, TpmError>,
    ) -> DevResult<T> {
        self.run(|conn| Ok(f(&mut conn.ctx)?))
    }

    /// How many keys are loaded now, and how many may be (for tests and diagnostics).
    pub(crate) fn loaded(&self) -> (usize, usize) {
        self.conn
            .as_ref()
            .map_or((0, 0), |c| (c.loaded.len(), c.capacity))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let loaded: Vec<KeyHandle> = conn.loaded.drain(..).map(|(_, h)| h).collect();
            for h in loaded {
                let _ = conn.flush(h.into());
            }
            if conn.primary_transient {
                let _ = conn.flush(conn.primary.into());
            }
            // The context's own drop closes the remaining (persistent) handles locally.
        }
    }
}

/// Creates the storage primary key, starting the TPM up first if it was never started.
fn create_primary(ctx: &mut Context) -> Result<KeyHandle, TpmError> {
    let template = srk_template().map_err(|e| TpmError::Wrapper {
        command: "building the storage key template",
        source: e,
    })?;
    for attempt in 0..2 {
        let result = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
        });
        match result {
            Ok(created) => return Ok(created.key_handle),
            Err(e) => match raw_rc(&e) {
                Some(code) if code.from_tpm() && code.base() == rc::INITIALIZE && attempt == 0 => {
                    ctx.execute_without_session(|c| c.startup(StartupType::Clear))
                        .map_err(wrap_call("TPM2_Startup", None))?;
                }
                Some(code)
                    if code.from_tpm()
                        && matches!(
                            code.base(),
                            rc::AUTH_FAIL | rc::BAD_AUTH | rc::AUTH_MISSING
                        ) =>
                {
                    return Err(TpmError::OwnerAuth { rc: code });
                }
                _ => return Err(TpmError::call("TPM2_CreatePrimary", None, e)),
            },
        }
    }
    Err(TpmError::BadResponse {
        what: "startup state",
        reason: "the TPM still reports TPM_RC_INITIALIZE after TPM2_Startup".into(),
    })
}

fn sign_error(req: &SignRequest<'_>, e: tss_esapi::Error) -> TpmError {
    match raw_rc(&e) {
        Some(code) if code.from_tpm() && matches!(code.base(), rc::AUTH_FAIL | rc::BAD_AUTH) => {
            TpmError::AuthFail {
                key: req.id.to_string(),
                command: "TPM2_Sign",
                rc: code,
            }
        }
        Some(code) if code.from_tpm() && code.base() == rc::LOCKOUT => TpmError::Lockout {
            command: "TPM2_Sign",
            rc: code,
        },
        _ => TpmError::call("TPM2_Sign", Some(req.id.as_str()), e),
    }
}

/// Left-pads a big-endian integer to `size` bytes (the TPM drops leading zero bytes of r and s).
pub(crate) fn left_pad(value: &[u8], size: usize) -> Result<Vec<u8>, TpmError> {
    let trimmed = {
        let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
        &value[first..]
    };
    if trimmed.len() > size {
        return Err(TpmError::BadResponse {
            what: "ECDSA signature",
            reason: format!("a {}-byte half for a {size}-byte curve", trimmed.len()),
        });
    }
    let mut out = vec![0u8; size - trimmed.len()];
    out.extend_from_slice(trimmed);
    Ok(out)
}

fn selection(bank: PcrBank, pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&p| PcrSlot::try_from(1u32 << p))
        .collect::<tss_esapi::Result<Vec<_>>>()
        .map_err(wrap_call("TPM2_PCR_Read", None))?;
    PcrSelectionListBuilder::new()
        .with_selection(bank.hashing_algorithm(), &slots)
        .build()
        .map_err(wrap_call("TPM2_PCR_Read", None))
}

impl Conn {
    /// Flushes least recently used keys until `extra` more objects fit beside the loaded
    /// ones: `TPM2_Create`, `TPM2_EvictControl` and commands on persistent objects need a free
    /// object slot of their own while they run.
    fn make_room(&mut self, extra: usize) -> Result<(), TpmError> {
        while !self.loaded.is_empty() && self.loaded.len() + extra > self.capacity {
            let (_, lru) = self.loaded.remove(0);
            self.flush(lru.into())?;
        }
        Ok(())
    }

    fn flush(&mut self, handle: ObjectHandle) -> Result<(), TpmError> {
        let mut h = handle;
        match self.ctx.flush_context(handle) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Untrack it so the context's drop does not flush a handle number that may
                // belong to someone else by then.
                let _ = self.ctx.tr_close(&mut h);
                Err(TpmError::call("TPM2_FlushContext", None, e))
            }
        }
    }

    /// The ESAPI handle of the persistent object at `handle` that is key `id`, cached.
    ///
    /// The first time, the object's Name (which ESAPI reads from the TPM with `TPM2_ReadPublic`)
    /// must be `expected()`, the Name of the key's own public area: another program may have
    /// evicted the key and persisted another object at the same handle, and keyhaven never uses
    /// that one ([`TpmError::ForeignPersistent`]).
    fn persistent_handle(
        &mut self,
        handle: u32,
        id: &KeyId,
        expected: &dyn Fn() -> DevResult<Vec<u8>>,
    ) -> DevResult<ObjectHandle> {
        if let Some((key, h)) = self.persistent.get(&handle)
            && key == id
        {
            return Ok(*h);
        }
        let tpm_handle =
            PersistentTpmHandle::new(handle).map_err(wrap_call("TPM2_ReadPublic", Some(id)))?;
        let mut obj = self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle)))
            .map_err(wrap_call("TPM2_ReadPublic", Some(id)))?;
        let checked = self
            .ctx
            .tr_get_name(obj)
            .map_err(|e| Fail::from(TpmError::call("TPM2_ReadPublic", Some(id.as_str()), e)))
            .and_then(|name| Ok(name.value() == expected()?.as_slice()));
        match checked {
            Ok(true) => {
                if let Some((_, mut old)) = self.persistent.insert(handle, (id.clone(), obj)) {
                    let _ = self.ctx.tr_close(&mut old);
                }
                Ok(obj)
            }
            other => {
                // Untracked locally only: closing a persistent object's ESAPI handle leaves the
                // object in the TPM.
                let _ = self.ctx.tr_close(&mut obj);
                match other {
                    Err(e) => Err(e),
                    _ => Err(TpmError::ForeignPersistent {
                        handle,
                        key: id.to_string(),
                    }
                    .into()),
                }
            }
        }
    }

    /// Whether `primary` still names our storage key: without a resource manager, another
    /// program may have flushed it and made an object that got the same handle number.
    fn primary_is_ours(&mut self) -> bool {
        let primary = self.primary;
        self.ctx
            .execute_without_session(|c| c.read_public(primary))
            .is_ok_and(|(_, name, _)| name.value() == self.primary_name.as_slice())
    }

    /// Loads a key (making room in the LRU first), or returns its handle if loaded; marks it
    /// most recently used.
    fn load(
        &mut self,
        id: &KeyId,
        private: Private,
        public: Public,
        blob_file: Option<&PathBuf>,
    ) -> DevResult<KeyHandle> {
        if let Some(pos) = self.loaded.iter().position(|(k, _)| k == id) {
            let entry = self.loaded.remove(pos);
            let handle = entry.1;
            self.loaded.push(entry);
            return Ok(handle);
        }
        // the new key, and a persistent parent while it is used
        self.make_room(1 + usize::from(!self.primary_transient))?;
        let primary = self.primary;
        loop {
            self.loads += 1;
            let result = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(primary, private.clone(), public.clone())
                });
            match result {
                Ok(handle) => {
                    self.loaded.push((id.clone(), handle));
                    return Ok(handle);
                }
                Err(e) => match raw_rc(&e) {
                    Some(code) if code.from_tpm() && code.base() == rc::OBJECT_MEMORY => {
                        if self.loaded.is_empty() {
                            return Err(TpmError::ObjectMemory {
                                command: "TPM2_Load",
                                rc: code,
                                kept: usize::from(self.primary_transient),
                            }
                            .into());
                        }
                        let (_, lru) = self.loaded.remove(0);
                        self.flush(lru.into())?;
                    }
                    Some(code)
                        if code.from_tpm()
                            && !code.stale_handle()
                            && matches!(
                                code.base(),
                                rc::INTEGRITY
                                    | rc::SIZE
                                    | rc::INSUFFICIENT
                                    | rc::KEY
                                    | rc::BINDING
                                    | rc::ASYMMETRIC
                                    | rc::ATTRIBUTES
                            ) =>
                    {
                        let refused = TpmError::ForeignBlob {
                            key: id.to_string(),
                            file: blob_file.cloned().unwrap_or_default(),
                            rc: code,
                        };
                        // The parent may be the problem rather than the blob: with no resource
                        // manager another program can flush our storage key and get its handle
                        // number for an object of its own. Then reconnect (a fresh storage key)
                        // and try once more before blaming the blob.
                        return Err(if self.primary_is_ours() {
                            refused.into()
                        } else {
                            Fail::StaleParent(refused)
                        });
                    }
                    _ => return Err(TpmError::call("TPM2_Load", Some(id.as_str()), e).into()),
                },
            }
        }
    }

    /// The handle to sign with: the persistent object if the key has one (falling back to its
    /// blob if it was evicted behind our back), else the loaded blob.
    fn key_handle(&mut self, req: &SignRequest<'_>) -> DevResult<KeyHandle> {
        if let Some(handle) = req.persistent {
            let expected = || -> DevResult<Vec<u8>> {
                let (_, public) = (req.blobs)()?;
                Ok(name_of(&public)?)
            };
            match self.persistent_handle(handle, req.id, &expected) {
                Ok(obj) => {
                    self.make_room(1)?;
                    return Ok(KeyHandle::from(obj));
                }
                Err(Fail::Tpm(TpmError::Command { rc: code, .. }))
                    if code.from_tpm() && code.base() == rc::HANDLE => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(pos) = self.loaded.iter().position(|(k, _)| k == req.id) {
            let entry = self.loaded.remove(pos);
            let handle = entry.1;
            self.loaded.push(entry);
            return Ok(handle);
        }
        let (private, public) = (req.blobs)()?;
        self.load(req.id, private, public, Some(&req.blob_file))
    }

    fn read_pcrs(&mut self, bank: PcrBank, pcrs: &[u8]) -> DevResult<Vec<Vec<u8>>> {
        let mut values = Vec::with_capacity(pcrs.len());
        for &p in pcrs {
            let sel = selection(bank, &[p])?;
            let (_, _, digests) = self
                .ctx
                .execute_without_session(|c| c.pcr_read(sel))
                .map_err(wrap_call("TPM2_PCR_Read", None))?;
            let Some(value) = digests.value().first() else {
                return Err(TpmError::BadResponse {
                    what: "PCR read",
                    reason: format!("the TPM has no {} bank value for PCR {p}", bank.name()),
                }
                .into());
            };
            values.push(value.value().to_vec());
        }
        Ok(values)
    }

    fn policy_for(&mut self, bank: PcrBank, pcrs: &[u8], text: &str) -> DevResult<PolicyInfo> {
        use sha2::{Digest as _, Sha256};
        let values = self.read_pcrs(bank, pcrs)?;
        let mut h = Sha256::new();
        for v in &values {
            h.update(v);
        }
        Ok(PolicyInfo {
            bank,
            pcrs: pcrs.to_vec(),
            pcr_digest: h.finalize().to_vec(),
            values,
            text: text.to_owned(),
        })
    }

    /// Starts a policy (or trial) session. `StartAuthSession` fails while a password session is
    /// set on the context, so the context's sessions are cleared first.
    fn start_policy_session(&mut self, trial: bool) -> DevResult<AuthSession> {
        self.ctx.clear_sessions();
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                if trial {
                    SessionType::Trial
                } else {
                    SessionType::Policy
                },
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
            .map_err(wrap_call("TPM2_StartAuthSession", None))?
            .ok_or_else(|| TpmError::BadResponse {
                what: "session handle",
                reason: "TPM2_StartAuthSession returned no session".into(),
            })?;
        Ok(session)
    }

    fn end_session(&mut self, session: AuthSession) {
        let handle = ObjectHandle::from(SessionHandle::from(session));
        let _ = self.flush(handle);
    }

    /// Runs PolicyPCR (and PolicyPassword for keys with a passphrase) in `session`.
    fn apply_policy(
        &mut self,
        session: AuthSession,
        policy: &PolicyInfo,
        with_password: bool,
        key: Option<&KeyId>,
    ) -> DevResult<()> {
        let policy_session =
            PolicySession::try_from(session).map_err(wrap_call("TPM2_PolicyPCR", key))?;
        let digest = Digest::try_from(policy.pcr_digest.as_slice())
            .map_err(wrap_call("TPM2_PolicyPCR", key))?;
        let sel = selection(policy.bank, &policy.pcrs)?;
        self.ctx
            .execute_without_session(|c| c.policy_pcr(policy_session, digest, sel))
            .map_err(wrap_call("TPM2_PolicyPCR", key))?;
        if with_password {
            self.ctx
                .execute_without_session(|c| c.policy_password(policy_session))
                .map_err(wrap_call("TPM2_PolicyPassword", key))?;
        }
        Ok(())
    }

    /// The policy digest a key bound to `policy` gets (computed by the TPM in a trial session).
    fn trial_policy_digest(
        &mut self,
        policy: &PolicyInfo,
        with_password: bool,
    ) -> DevResult<Digest> {
        let session = self.start_policy_session(true)?;
        let result = self
            .apply_policy(session, policy, with_password, None)
            .and_then(|()| {
                let policy_session = PolicySession::try_from(session)
                    .map_err(wrap_call("TPM2_PolicyGetDigest", None))?;
                Ok(self
                    .ctx
                    .execute_without_session(|c| c.policy_get_digest(policy_session))
                    .map_err(wrap_call("TPM2_PolicyGetDigest", None))?)
            });
        self.end_session(session);
        result
    }

    fn sign_with_policy(
        &mut self,
        req: &SignRequest<'_>,
        policy: &PolicyInfo,
        key: KeyHandle,
        digest: Digest,
        scheme: SignatureScheme,
        ticket: HashcheckTicket,
    ) -> DevResult<TpmSignature> {
        let session = self.start_policy_session(false)?;
        let result = match self.apply_policy(session, policy, req.auth.is_some(), Some(req.id)) {
            Ok(()) => self
                .ctx
                .execute_with_session(Some(session), |c| c.sign(key, digest, scheme, ticket))
                .map_err(|e| Fail::Tpm(sign_error(req, e))),
            Err(e) => Err(e),
        };
        self.end_session(session);
        match result {
            Err(Fail::Tpm(TpmError::Command {
                command, rc: code, ..
            })) if code.from_tpm()
                && ((command == "TPM2_PolicyPCR" && code.base() == rc::VALUE)
                    || code.base() == rc::POLICY_FAIL) =>
            {
                let changed = match self.read_pcrs(policy.bank, &policy.pcrs) {
                    Ok(now) => policy
                        .pcrs
                        .iter()
                        .zip(now.iter().zip(&policy.values))
                        .filter(|(_, (now, then))| now != then)
                        .map(|(p, _)| *p)
                        .collect(),
                    Err(_) => Vec::new(),
                };
                Err(TpmError::PcrMismatch {
                    key: req.id.to_string(),
                    policy: policy.text.clone(),
                    changed,
                    rc: code,
                }
                .into())
            }
            other => other,
        }
    }
}

/// Reads the TPM's identity and ECC curves.
pub(crate) fn read_report(ctx: &mut Context) -> Result<crate::TpmReport, TpmError> {
    let prop = |ctx: &mut Context, tag| {
        ctx.get_tpm_property(tag)
            .map_err(wrap_call("TPM2_GetCapability", None))
            .map(Option::unwrap_or_default)
    };
    let ascii = |v: u32| -> String {
        v.to_be_bytes()
            .iter()
            .filter(|b| b.is_ascii_graphic() || **b == b' ')
            .map(|&b| char::from(b))
            .collect()
    };
    let manufacturer = ascii(prop(ctx, PropertyTag::Manufacturer)?)
        .trim()
        .to_owned();
    let mut vendor = String::new();
    for tag in [
        PropertyTag::VendorString1,
        PropertyTag::VendorString2,
        PropertyTag::VendorString3,
        PropertyTag::VendorString4,
    ] {
        vendor.push_str(&ascii(prop(ctx, tag)?));
    }
    let fw1 = prop(ctx, PropertyTag::FirmwareVersion1)?;
    let fw2 = prop(ctx, PropertyTag::FirmwareVersion2)?;
    let revision = prop(ctx, PropertyTag::Revision)?;
    let transient_slots = prop(ctx, PropertyTag::HrTransientMin)?;
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::EccCurves, 0, 64))
        .map_err(wrap_call("TPM2_GetCapability", None))?;
    let ecc_curves = match data {
        CapabilityData::EccCurves(list) => list
            .into_inner()
            .into_iter()
            .map(|c| {
                use tss_esapi::constants::EccCurveIdentifier as C;
                match c {
                    C::NistP192 => "NIST P-192",
                    C::NistP224 => "NIST P-224",
                    C::NistP256 => "NIST P-256",
                    C::NistP384 => "NIST P-384",
                    C::NistP521 => "NIST P-521",
                    C::BnP256 => "BN P-256",
                    C::BnP638 => "BN P-638",
                    C::Sm2P256 => "SM2 P-256",
                }
                .to_owned()
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(crate::TpmReport {
        tcti: String::new(),
        manufacturer,
        vendor: vendor.trim().to_owned(),
        firmware_version: format!(
            "{}.{}.{}.{}",
            fw1 >> 16,
            fw1 & 0xFFFF,
            fw2 >> 16,
            fw2 & 0xFFFF
        ),
        spec_revision: format!("{}.{:02}", revision / 100, revision % 100),
        transient_slots,
        ecc_curves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_short_halves() {
        assert_eq!(left_pad(&[1, 2], 4).unwrap(), vec![0, 0, 1, 2]);
        assert_eq!(left_pad(&[0, 0, 1, 2], 3).unwrap(), vec![0, 1, 2]);
        assert_eq!(left_pad(&[], 2).unwrap(), vec![0, 0]);
        assert!(left_pad(&[1, 2, 3], 2).is_err());
    }

    #[test]
    fn curve25519_is_unsupported_with_the_reason() {
        for alg in [Algorithm::Ed25519, Algorithm::X25519] {
            match curve_of(alg) {
                Err(Error::Unsupported { reason, .. }) => {
                    assert!(reason.contains("TPM 2.0"), "{reason}")
                }
                _ => panic!("{alg} accepted"),
            }
        }
    }

    #[test]
    fn templates_build() {
        srk_template().unwrap();
        for alg in [Algorithm::EcdsaP256, Algorithm::EcdsaP384] {
            let t = signing_template(alg, None).unwrap();
            assert!(t.object_attributes().user_with_auth());
            assert!(t.object_attributes().sign_encrypt());
            assert!(!t.object_attributes().decrypt());
            let with_policy =
                signing_template(alg, Some(Digest::try_from(vec![1; 32]).unwrap())).unwrap();
            assert!(!with_policy.object_attributes().user_with_auth());
        }
    }
}
