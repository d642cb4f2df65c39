//! Monotonic counters in the TPM's non-volatile memory (an NV index of type *counter*): a
//! value that only grows, kept outside every file, so a directory copied back from an earlier
//! moment is told apart from the present one.
//!
//! Each counter has an authorization value chosen by its owner (keyhaven derives it from a
//! home's integrity key) that reads and increments need (`TPMA_NV_AUTHREAD`,
//! `TPMA_NV_AUTHWRITE`), always in an HMAC session. The TPM's answers are authenticated with
//! that value too, so something that only pretends to be the TPM (a simulator on the port the
//! TCTI names) cannot make up a value. Failed authorizations do not count towards the TPM's
//! dictionary-attack lockout (`TPMA_NV_NO_DA`: the value is a 256-bit key, not a PIN).

use tss_esapi::Context;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::NvIndexType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::{Auth, NvPublicBuilder};
use zeroize::Zeroizing;

use keyhaven_core::{Error, Result};

use crate::error::{TpmError, raw_rc};
use crate::store::TpmStore;

/// Where keyhaven puts its counters: owner NV indices `0x0150_0000` + a random 16-bit offset
/// (clear of the TCG's reserved ranges, such as the endorsement certificates at 0x01C0_0000).
const INDEX_BASE: u32 = 0x0150_0000;

/// `TPM_RC_NV_DEFINED`: the index is taken.
const RC_NV_DEFINED: u32 = 0x14c;
/// `TPM_RC_HANDLE` (any handle position): no such index.
const RC_HANDLE: u32 = 0x08b;
/// `TPM_RC_AUTH_FAIL` (any session position): the authorization value is not the index's.
const RC_AUTH_FAIL: u32 = 0x08e;
/// `TPM_RC_BAD_AUTH` (any session position): the same, for an index without lockout.
const RC_BAD_AUTH: u32 = 0x0a2;
/// `TPM_RC_NV_UNINITIALIZED`: the counter was never incremented.
const RC_NV_UNINITIALIZED: u32 = 0x14a;

/// A counter in the TPM's NV memory, with the authorization value that reads and increments
/// it. The value is kept in memory only, and zeroized on drop.
pub struct NvCounter<'a> {
    store: &'a TpmStore,
    index: u32,
    auth: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for NvCounter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvCounter")
            .field("index", &format_args!("{:#010x}", self.index))
            .finish_non_exhaustive()
    }
}

impl TpmStore {
    /// Defines a new counter (in the owner hierarchy, whose authorization must be empty, as
    /// it is unless an administrator set one) at a free index, with `auth` as its authorization
    /// value, and increments it once (a counter is readable only then). Its first value is
    /// the highest any counter on this TPM has had, so it never starts below an earlier one.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the TPM cannot be reached; [`Error::Unsupported`] if it
    /// refuses to define the index (no NV space left, an owner password).
    ///
    /// The index is one of a few that `auth` determines ([`TpmStore::find_counter`] looks
    /// there), else a random one.
    pub fn define_counter(&self, auth: &[u8; 32]) -> Result<NvCounter<'_>> {
        let mut tries = 0;
        let preferred = candidate_indices(auth);
        loop {
            let index = if let Some(i) = preferred.get(tries) {
                *i
            } else {
                let mut r = [0u8; 2];
                keyhaven_crypto::fill_random(&mut r)?;
                INDEX_BASE + u32::from(u16::from_be_bytes(r))
            };
            let counter = NvCounter {
                store: self,
                index,
                auth: Zeroizing::new(auth.to_vec()),
            };
            match counter.define() {
                Ok(()) => {
                    counter.increment()?;
                    return Ok(counter);
                }
                Err(Rc(RC_NV_DEFINED, _)) if tries < 16 => tries += 1,
                Err(Rc(_, e)) => {
                    return Err(Error::Unsupported {
                        operation: "define a counter in the TPM's NV memory",
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// The counter [`TpmStore::define_counter`] made with `auth` at one of the indices `auth`
    /// determines, if the TPM holds it: an index there that is not a counter like keyhaven's
    /// is never tried with `auth` (another owner's index might count failures towards the
    /// TPM's lockout), and one that does not take `auth` is someone else's.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the TPM cannot be reached.
    pub fn find_counter(&self, auth: &[u8; 32]) -> Result<Option<NvCounter<'_>>> {
        for index in candidate_indices(auth) {
            let counter = self.counter(index, auth);
            if !counter.looks_like_ours()? {
                continue;
            }
            match counter.read() {
                Ok(_) => return Ok(Some(counter)),
                Err(Error::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The counter at `index` (as [`NvCounter::index`] gave it), read and incremented with
    /// `auth`. Nothing is sent to the TPM yet.
    pub fn counter(&self, index: u32, auth: &[u8; 32]) -> NvCounter<'_> {
        NvCounter {
            store: self,
            index,
            auth: Zeroizing::new(auth.to_vec()),
        }
    }
}

/// The few indices a counter with authorization `auth` is defined at when they are free.
fn candidate_indices(auth: &[u8; 32]) -> Vec<u32> {
    use sha2::Digest;
    (0u8..4)
        .map(|i| {
            let mut h = sha2::Sha256::new();
            h.update(b"keyhaven tpm counter index v1\0");
            h.update(auth);
            h.update([i]);
            let d = h.finalize();
            INDEX_BASE + u32::from(u16::from_be_bytes([d[0], d[1]]))
        })
        .collect()
}

/// A TPM error with its response code (0 when it has none).
struct Rc(u32, Error);

impl NvCounter<'_> {
    /// The NV index (`0x015xxxxx`).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The counter's value now.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the TPM has no such counter (it was removed, or this is another
    /// TPM) or it does not accept the authorization value (it was replaced), or its answer is
    /// not authenticated; [`Error::Unavailable`] if the TPM cannot be reached.
    pub fn read(&self) -> Result<u64> {
        let data = self.with_index("TPM2_NV_Read", |ctx, h| {
            with_hmac_session(ctx, |ctx| ctx.nv_read(NvAuth::NvIndex(h), h, 8, 0))
        })?;
        let bytes: [u8; 8] = data.value().try_into().map_err(|_| {
            Error::corrupt(
                self.name(),
                format!("the TPM answered {} bytes, not a counter's 8", data.len()),
            )
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Adds one to the counter and returns its new value.
    ///
    /// # Errors
    /// As [`NvCounter::read`].
    pub fn increment(&self) -> Result<u64> {
        self.with_index("TPM2_NV_Increment", |ctx, h| {
            with_hmac_session(ctx, |ctx| ctx.nv_increment(NvAuth::NvIndex(h), h))
        })?;
        self.read()
    }

    /// Removes the counter from the TPM (with the owner's authorization, empty as for
    /// [`TpmStore::define_counter`]). A counter already gone is not an error.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the TPM cannot be reached; the TPM's refusal.
    pub fn undefine(&self) -> Result<()> {
        match self.with_index("TPM2_NV_UndefineSpace", |ctx, h| {
            with_hmac_session(ctx, |ctx| ctx.nv_undefine_space(Provision::Owner, h))
        }) {
            Ok(()) => Ok(()),
            Err(Error::Corrupt { reason, .. })
                if reason.starts_with("the TPM holds no counter") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the TPM holds an index here with the attributes keyhaven gives its counters
    /// (read without authorization: `TPM2_NV_ReadPublic`).
    fn looks_like_ours(&self) -> Result<bool> {
        let mut device = self.store.device_guard()?;
        let outcome = device.with_context(|ctx| {
            let Ok(tpm_handle) = NvIndexTpmHandle::new(self.index) else {
                return Ok(false);
            };
            let Ok(object) = ctx
                .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
            else {
                return Ok(false);
            };
            let handle: NvIndexHandle = object.into();
            let public = ctx.execute_without_session(|c| c.nv_read_public(handle));
            let _ = ctx.tr_close(&mut ObjectHandle::from(handle));
            Ok(public.is_ok_and(|(p, _)| {
                let a = p.attributes();
                a.index_type().is_ok_and(|t| t == NvIndexType::Counter)
                    && a.auth_read()
                    && a.auth_write()
                    && a.no_da()
            }))
        });
        Ok(outcome?)
    }

    fn name(&self) -> String {
        format!(
            "the TPM counter {:#010x} ({})",
            self.index,
            self.store.tcti_name()
        )
    }

    fn define(&self) -> std::result::Result<(), Rc> {
        let fail = |e: tss_esapi::Error| {
            let code = raw_rc(&e).map_or(0, |r| r.0);
            Rc(code, TpmError::call("TPM2_NV_DefineSpace", None, e).into())
        };
        let handle = NvIndexTpmHandle::new(self.index).map_err(fail)?;
        let attributes = NvIndexAttributesBuilder::new()
            .with_nv_index_type(NvIndexType::Counter)
            .with_auth_read(true)
            .with_auth_write(true)
            .with_no_da(true)
            .build()
            .map_err(fail)?;
        let public = NvPublicBuilder::new()
            .with_nv_index(handle)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .map_err(fail)?;
        let auth = Auth::try_from(self.auth.to_vec()).map_err(fail)?;
        let mut device = self.store.device_guard().map_err(|e| Rc(0, e))?;
        let outcome = device.with_context(|ctx| {
            let defined = with_hmac_session(ctx, |ctx| {
                ctx.nv_define_space(Provision::Owner, Some(auth.clone()), public.clone())
            });
            Ok(match defined {
                Ok(h) => {
                    let _ = ctx.tr_close(&mut ObjectHandle::from(h));
                    Ok(())
                }
                Err(e) => Err(fail(e)),
            })
        });
        outcome.map_err(|f| Rc(0, f.into()))?
    }

    /// Runs `op` on the index's handle (read from the TPM, with the authorization value set),
    /// closing the handle afterwards.
    fn with_index<T>(
        &self,
        command: &'static str,
        op: impl Fn(&mut Context, NvIndexHandle) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let name = self.name();
        let auth = Auth::try_from(self.auth.to_vec())
            .map_err(|e| Error::from(TpmError::call(command, None, e)))?;
        let mut device = self.store.device_guard()?;
        let outcome = device.with_context(|ctx| {
            let tpm_handle =
                NvIndexTpmHandle::new(self.index).map_err(|e| TpmError::call(command, None, e))?;
            let handle: NvIndexHandle = match ctx
                .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
            {
                Ok(h) => h.into(),
                Err(e) => return Ok((Err(classify(&name, command, e)), false)),
            };
            let result = ctx
                .tr_set_auth(handle.into(), auth.clone())
                .and_then(|()| op(ctx, handle));
            let esys_failed = result
                .as_ref()
                .err()
                .and_then(raw_rc)
                .is_some_and(|rc| rc.0 & 0x00ff_0000 == ESYS_LAYER);
            let _ = ctx.tr_close(&mut ObjectHandle::from(handle));
            Ok((result.map_err(|e| classify(&name, command, e)), esys_failed))
        });
        let (result, esys_failed) = outcome.map_err(Error::from)?;
        if esys_failed {
            // An answer ESAPI refused leaves its context unusable: start afresh next time
            // (with a resource manager, closing the connection also flushes what it loaded).
            device.reset();
        }
        result
    }
}

/// Runs `f` in a fresh HMAC session (unsalted and unbound: its key is the authorization value
/// of the entity `f` uses, so the TPM's answer is authenticated with it), flushing the session
/// afterwards without letting a failed flush hide `f`'s own error.
fn with_hmac_session<T>(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
) -> tss_esapi::Result<T> {
    use tss_esapi::attributes::SessionAttributesBuilder;
    use tss_esapi::constants::SessionType;
    use tss_esapi::structures::SymmetricDefinition;
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?
        .ok_or(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongValueFromTpm,
        ))?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .build();
    let result = ctx
        .tr_sess_set_attributes(session, attributes, mask)
        .and_then(|()| ctx.execute_with_session(Some(session), f));
    let handle: ObjectHandle = tss_esapi::handles::SessionHandle::from(session).into();
    let _ = ctx.flush_context(handle);
    result
}

/// The layer of ESAPI's own response codes (`TSS2_ESYS_RC_*`).
const ESYS_LAYER: u32 = 0x0007_0000;
/// `TSS2_ESYS_RC_RSP_AUTH_FAILED`: ESAPI found the TPM's answer not authenticated.
const ESYS_RSP_AUTH_FAILED: u32 = 0x0007_001b;

/// What a failed counter command means to the caller.
fn classify(name: &str, command: &'static str, e: tss_esapi::Error) -> Error {
    match raw_rc(&e).map(|r| r.0) {
        Some(ESYS_RSP_AUTH_FAILED) => Error::corrupt(
            name,
            "the TPM's answer is not authenticated with this home's authorization: something \
             other than the TPM answered",
        ),
        Some(rc) if rc & 0xffff_f000 == 0 && rc & 0x0bf == RC_HANDLE => Error::corrupt(
            name,
            "the TPM holds no counter there: it was removed from the TPM (or this is another \
             TPM)",
        ),
        Some(rc)
            if rc & 0xffff_f000 == 0
                && (rc & 0x0bf == RC_AUTH_FAIL || rc & 0x0bf == RC_BAD_AUTH) =>
        {
            Error::corrupt(
                name,
                "the counter there does not take this home's authorization: it was replaced",
            )
        }
        Some(RC_NV_UNINITIALIZED) => Error::corrupt(name, "the counter was never set"),
        _ => TpmError::call(command, None, e).into(),
    }
}
