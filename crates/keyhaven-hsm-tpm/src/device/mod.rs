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
    Auth, CapabilityData, Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket,
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

mod policy;
mod report;
mod slots;
mod templates;

use policy::key_error;
pub(crate) use report::read_report;
use templates::create_primary;
pub use templates::srk_template;
pub(crate) use templates::{ak_template, curve_of, key_template, left_pad, name_of};

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
            let template = key_template(alg, policy_digest)?;
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

    /// Loads a key's blobs (as its first signature would), so that a blob this TPM refuses, one
    /// of another TPM or another storage key, is found now rather than at first use.
    pub(crate) fn check_loads(
        &mut self,
        id: &KeyId,
        private: &Private,
        public: &Public,
        blob_file: &PathBuf,
    ) -> DevResult<()> {
        self.run(|conn| {
            conn.load(id, private.clone(), public.clone(), Some(blob_file))
                .map(drop)
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

    /// ECDH with an agreement key: `TPM2_ECDH_ZGen` on the peer's point (`x`, `y`, checked on the
    /// curve by the caller and again by the TPM); returns the x-coordinate of the shared point,
    /// left-padded to the curve size.
    pub(crate) fn ecdh_zgen(
        &mut self,
        req: &SignRequest<'_>,
        x: &[u8],
        y: &[u8],
    ) -> DevResult<keyhaven_core::SecretBytes> {
        let c = curve_of(req.alg)?;
        self.run(|conn| {
            let key = conn.key_handle(req)?;
            let wrap = wrap_call("TPM2_ECDH_ZGen", Some(req.id));
            let point = EccPoint::new(
                EccParameter::try_from(x).map_err(&wrap)?,
                EccParameter::try_from(y).map_err(&wrap)?,
            );
            let auth = Auth::try_from(req.auth.unwrap_or_default()).map_err(&wrap)?;
            conn.ctx.tr_set_auth(key.into(), auth).map_err(&wrap)?;
            // The shared point is a secret: it comes back encrypted under a salted session.
            let shared = conn.with_encrypted_response(|conn, encrypt| match req.policy {
                None => conn
                    .ctx
                    .execute_with_sessions(
                        (Some(AuthSession::Password), Some(encrypt), None),
                        |ctx| ctx.ecdh_z_gen(key, point.clone()),
                    )
                    .map_err(|e| Fail::Tpm(key_error(req, "TPM2_ECDH_ZGen", e))),
                Some(policy) => {
                    conn.with_policy(req, policy, "TPM2_ECDH_ZGen", Some(encrypt), |ctx| {
                        ctx.ecdh_z_gen(key, point.clone())
                    })
                }
            })?;
            let x = zeroize::Zeroizing::new(left_pad(shared.x().value(), c.size)?);
            Ok(keyhaven_core::SecretBytes::copy_from(&x))
        })
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
                    .map_err(|e| key_error(req, "TPM2_Sign", e))?,
                Some(policy) => conn.with_policy(req, policy, "TPM2_Sign", None, |c| {
                    c.sign(key, digest.clone(), scheme, ticket.clone())
                })?,
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

    /// `TPM2_Certify` of the key by the TPM's attestation key ([`ak_template`], made for the
    /// occasion and flushed after) over `challenge`: the `TPMS_ATTEST`, the `TPMT_SIGNATURE`
    /// and the attestation key's `TPMT_PUBLIC`, marshalled.
    pub(crate) fn certify(
        &mut self,
        req: &SignRequest<'_>,
        challenge: &[u8],
    ) -> DevResult<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        self.run(|conn| {
            let key = conn.key_handle(req)?;
            conn.make_room(1)?;
            let marshal = |e| TpmError::Wrapper {
                command: "TPM2_Certify",
                source: e,
            };
            let template = ak_template()?;
            let ak = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
                })
                .map_err(wrap_call("TPM2_CreatePrimary (attestation key)", None))?;
            let data = tss_esapi::structures::Data::try_from(challenge.to_vec())
                .map_err(wrap_call("TPM2_Certify", Some(req.id)));
            let auth = Auth::try_from(req.auth.unwrap_or_default())
                .map_err(wrap_call("TPM2_Certify", Some(req.id)));
            let certified = data.and_then(|data| {
                let auth = auth?;
                conn.ctx
                    .tr_set_auth(key.into(), auth)
                    .map_err(wrap_call("TPM2_Certify", Some(req.id)))?;
                conn.ctx
                    .execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::Password),
                            None,
                        ),
                        |c| c.certify(key.into(), ak.key_handle, data, SignatureScheme::Null),
                    )
                    .map_err(wrap_call("TPM2_Certify", Some(req.id)))
            });
            // The AK goes whatever happened; a failed flush only leaves a transient object
            // that the next reconnect drops.
            let _ = conn.ctx.flush_context(ak.key_handle.into());
            let (attest, signature) = certified?;
            Ok((
                attest.marshall().map_err(marshal)?,
                signature.marshall().map_err(marshal)?,
                ak.out_public.marshall().map_err(marshal)?,
            ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven_core::ErrorKind;

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
                Err(e) if e.is(ErrorKind::Unsupported) => {
                    let reason = e.to_string();
                    assert!(reason.contains("TPM 2.0"), "{reason}")
                }
                _ => panic!("{alg} accepted"),
            }
        }
    }

    #[test]
    fn templates_build() {
        srk_template().unwrap();
        for alg in [
            Algorithm::EcdsaP256,
            Algorithm::EcdsaP384,
            Algorithm::EcdhP256,
            Algorithm::EcdhP384,
        ] {
            let t = key_template(alg, None).unwrap();
            let agrees = alg.can_agree();
            assert!(t.object_attributes().user_with_auth());
            assert_eq!(t.object_attributes().sign_encrypt(), !agrees, "{alg}");
            assert_eq!(t.object_attributes().decrypt(), agrees, "{alg}");
            assert!(!t.object_attributes().restricted());
            let with_policy =
                key_template(alg, Some(Digest::try_from(vec![1; 32]).unwrap())).unwrap();
            assert!(!with_policy.object_attributes().user_with_auth());
        }
    }
}
