//! Rollback protection: a sealed home bound to a monotonic counter in a TPM backend's NV
//! memory (`keyhaven integrity bind-counter --backend TPM`).
//!
//! The manifest records the counter's value with every change and the counter is incremented
//! after each write, so a home copied back whole from an earlier moment (manifest, state and
//! stores together, which nothing inside the home can tell apart) records a value the counter
//! has passed, and is refused (exit 7) until its owner restores the latest backup or accepts
//! the copy with `keyhaven integrity rebind`. The counter's authorization value is derived
//! from the home's integrity key, so only someone who can unlock the home reads or increments
//! it, and the TPM's answers are authenticated with it (a simulator answering on the TPM's
//! port cannot make a value up).
//!
//! It is opt-in: every change of the home's state (each signature that counts usage
//! included) costs a read and an increment of the counter, and a bound home is refused while
//! its TPM is unreachable.

use std::sync::Arc;

use keyhaven_fs::{RollbackCounter, SealedState};

#[cfg(feature = "tpm")]
use crate::Error;
use crate::manager::KeyManager;
use crate::{CoreError, Result};

/// The purpose the counter's authorization value is derived for.
#[cfg(feature = "tpm")]
const COUNTER_AUTH_PURPOSE: &str = "keyhaven tpm rollback counter v1";

/// A counter in a TPM backend's NV memory, as the manifest sees it.
#[cfg(feature = "tpm")]
struct TpmCounter {
    backend: String,
    store: Arc<keyhaven_hsm_tpm::TpmStore>,
    index: u32,
    auth: zeroize::Zeroizing<[u8; 32]>,
}

#[cfg(feature = "tpm")]
impl std::fmt::Debug for TpmCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmCounter")
            .field("backend", &self.backend)
            .field("index", &format_args!("{:#010x}", self.index))
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tpm")]
impl RollbackCounter for TpmCounter {
    fn id(&self) -> String {
        format!("{}/tpm:{:#010x}", self.backend, self.index)
    }

    fn read(&self) -> std::result::Result<u64, CoreError> {
        self.store.counter(self.index, &self.auth).read()
    }

    fn increment(&self) -> std::result::Result<u64, CoreError> {
        self.store.counter(self.index, &self.auth).increment()
    }
}

/// The error for a counter operation in a keyhaven built without TPM support.
#[cfg(not(feature = "tpm"))]
fn without_tpm(operation: &'static str, backend: &str) -> crate::Error {
    CoreError::Unsupported {
        operation,
        reason: format!(
            "the counter is on TPM backend '{backend}', and this keyhaven was built without TPM \
             support (feature `tpm`)"
        ),
    }
    .into()
}

/// The backend and NV index a counter id (`BACKEND/tpm:0x01501234`) names.
fn parse_id(id: &str) -> Option<(&str, u32)> {
    let (backend, rest) = id.rsplit_once("/tpm:")?;
    let index = u32::from_str_radix(rest.strip_prefix("0x")?, 16).ok()?;
    Some((backend, index))
}

/// A counter a home was bound to before it moved to another anchor, to remove once the move
/// is written.
pub(crate) struct OldCounter {
    #[cfg(feature = "tpm")]
    store: Arc<keyhaven_hsm_tpm::TpmStore>,
    #[cfg(feature = "tpm")]
    index: u32,
    #[cfg(feature = "tpm")]
    auth: zeroize::Zeroizing<[u8; 32]>,
}

impl OldCounter {
    /// Removes it from the TPM (best effort: a counter left behind is only NV space).
    pub(crate) fn remove(self) {
        #[cfg(feature = "tpm")]
        {
            let _ = self.store.counter(self.index, &self.auth).undefine();
        }
    }
}

impl KeyManager {
    /// For a home bound to a rollback counter that moves to the anchor whose key is
    /// `new_key`: a new counter on the same TPM backend, authorized by the new key, and the
    /// old one (to remove once the move is written). `None` for a home not bound.
    ///
    /// # Errors
    /// The TPM's errors; [`CoreError::Unsupported`] without TPM support.
    pub(crate) fn counter_for_rekey(
        &self,
        sealed: &SealedState,
        new_key: &keyhaven_fs::StateKey,
    ) -> Result<Option<(Arc<dyn RollbackCounter>, OldCounter)>> {
        let Some((id, _)) = sealed.bound_counter()? else {
            return Ok(None);
        };
        let Some((backend, index)) = parse_id(&id) else {
            return Err(CoreError::InvalidInput(format!(
                "the home names the rollback counter '{id}', which keyhaven cannot read"
            ))
            .into());
        };
        #[cfg(feature = "tpm")]
        {
            let counter =
                self.define_counter(backend, new_key.derive_secret(COUNTER_AUTH_PURPOSE))?;
            let old = OldCounter {
                store: counter.store.clone(),
                index,
                auth: sealed.derive_secret(COUNTER_AUTH_PURPOSE),
            };
            Ok(Some((counter as Arc<dyn RollbackCounter>, old)))
        }
        #[cfg(not(feature = "tpm"))]
        {
            let _ = (new_key, index);
            Err(without_tpm("move the home's rollback counter", backend))
        }
    }

    /// The counter at `index` on TPM backend `backend`, as `sealed`'s key authorizes it.
    #[cfg(feature = "tpm")]
    fn home_counter(
        &self,
        sealed: &SealedState,
        backend: &str,
        index: u32,
    ) -> Result<Arc<TpmCounter>> {
        Ok(Arc::new(TpmCounter {
            backend: backend.to_owned(),
            store: self.counter_store(backend)?,
            index,
            auth: sealed.derive_secret(COUNTER_AUTH_PURPOSE),
        }))
    }

    /// A new counter on TPM backend `backend`, authorized by `auth`.
    #[cfg(feature = "tpm")]
    fn define_counter(
        &self,
        backend: &str,
        auth: zeroize::Zeroizing<[u8; 32]>,
    ) -> Result<Arc<TpmCounter>> {
        let store = self.counter_store(backend)?;
        let index = store
            .define_counter(&auth)
            .map_err(|e| Error::backend(backend, e))?
            .index();
        Ok(Arc::new(TpmCounter {
            backend: backend.to_owned(),
            store,
            index,
            auth,
        }))
    }

    /// The TPM store of backend `name`, for a counter.
    #[cfg(feature = "tpm")]
    fn counter_store(&self, name: &str) -> Result<Arc<keyhaven_hsm_tpm::TpmStore>> {
        let raw = self.raw_backend(name, false)?.ok_or_else(|| {
            Error::backend(
                name,
                CoreError::NotFound(format!("the metadata directory of TPM backend '{name}'")),
            )
        })?;
        raw.tpm_store().cloned().ok_or_else(|| {
            CoreError::Unsupported {
                operation: "keep a rollback counter",
                reason: format!("backend '{name}' is not a TPM backend"),
            }
            .into()
        })
    }

    /// Attaches the counter `sealed` is bound to, if any (from the configuration as `sealed`
    /// authenticates it), checking that the home was not copied back.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the manifest if it was rolled back; the TPM's errors.
    pub(crate) fn attach_bound_counter(&self, sealed: &SealedState) -> Result<()> {
        let Some((id, _)) = sealed.bound_counter()? else {
            return self.refuse_unbound_copy(sealed);
        };
        let manifest = || {
            crate::integrity::manifest_path(self.home())
                .display()
                .to_string()
        };
        let Some((backend, index)) = parse_id(&id) else {
            return Err(CoreError::corrupt(
                manifest(),
                format!("it names the rollback counter '{id}', which keyhaven cannot read"),
            )
            .into());
        };
        #[cfg(feature = "tpm")]
        {
            let attach = || -> Result<()> {
                sealed
                    .attach_counter(self.home_counter(sealed, backend, index)?)
                    .map_err(|e| Error::backend(backend, e))
            };
            // The TPM away is the whole home's problem, not the backend being opened: never
            // "that backend is unavailable, its keys are skipped".
            attach().map_err(|e| match e {
                Error::Backend { source, .. } if crate::error::is_unavailable(&source) => {
                    CoreError::Unavailable {
                        backend: backend.to_owned(),
                        reason: format!(
                            "the home is bound to its rollback counter {id} there, so nothing \
                             in the home is used until that TPM is back ({})",
                            crate::manager::unavailable_reason(&source)
                        ),
                    }
                    .into()
                }
                other => other,
            })
        }
        #[cfg(not(feature = "tpm"))]
        {
            let _ = index;
            Err(without_tpm("check the home's rollback counter", backend))
        }
    }

    /// A counter this home's key authorizes, on one of its TPM backends (the marker a binding
    /// leaves on the TPM), with the backend's name. TPMs out of reach are skipped.
    #[cfg(feature = "tpm")]
    fn find_own_counter(&self, sealed: &SealedState) -> Result<Option<(String, u32)>> {
        let auth = sealed.derive_secret(COUNTER_AUTH_PURPOSE);
        let tpms: Vec<String> = {
            let config = self.config();
            config
                .backends
                .iter()
                .filter(|(_, b)| b.kind == crate::BackendKind::Tpm)
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in tpms {
            let store = match self.counter_store(&name) {
                Ok(s) => s,
                Err(Error::Backend { source, .. }) if crate::error::is_unavailable(&source) => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            match store.find_counter(&auth) {
                Ok(Some(c)) => return Ok(Some((name, c.index()))),
                Ok(None) => {}
                Err(e) if crate::error::is_unavailable(&e) => {}
                Err(e) => return Err(Error::backend(&name, e)),
            }
        }
        Ok(None)
    }

    /// A home whose manifest is not bound to a counter, though its TPM holds one this home's
    /// key authorizes, was bound once: the manifest was copied back from before the binding.
    fn refuse_unbound_copy(&self, sealed: &SealedState) -> Result<()> {
        #[cfg(feature = "tpm")]
        if let Some((backend, index)) = self.find_own_counter(sealed)? {
            return Err(CoreError::corrupt(
                crate::integrity::manifest_path(self.home())
                    .display()
                    .to_string(),
                format!(
                    "it is not bound to a rollback counter, but TPM backend '{backend}' holds \
                     this home's counter {index:#010x}: the home was copied back from before it \
                     was bound. Restore the latest backup, or, if you copied it back on \
                     purpose, run `keyhaven integrity rebind` (asks for the passphrase)"
                ),
            )
            .into());
        }
        let _ = sealed;
        Ok(())
    }

    /// Binds the home's integrity manifest to a new monotonic counter on TPM backend
    /// `backend` (see the [module docs](crate::rollback)). Unlocks the home. Returns the
    /// counter's id (`BACKEND/tpm:0x015xxxxx`).
    ///
    /// # Errors
    /// [`CoreError::AlreadyExists`] if the home is bound already; [`CoreError::Unsupported`]
    /// for a backend that is not a TPM, or a keyhaven built without `tpm`; the TPM's errors.
    pub fn bind_rollback_counter(&self, backend: &str) -> Result<String> {
        let sealed = self.sealed_state()?;
        if let Some((id, _)) = sealed.bound_counter()? {
            return Err(CoreError::AlreadyExists(format!(
                "a rollback counter for the home ({id}); `keyhaven integrity unbind-counter` \
                 removes it"
            ))
            .into());
        }
        #[cfg(feature = "tpm")]
        {
            let counter =
                self.define_counter(backend, sealed.derive_secret(COUNTER_AUTH_PURPOSE))?;
            let id = counter.id();
            if let Err(e) = sealed.bind_counter(counter.clone()) {
                let _ = counter
                    .store
                    .counter(counter.index, &counter.auth)
                    .undefine();
                return Err(e.into());
            }
            self.use_sealed(sealed);
            Ok(id)
        }
        #[cfg(not(feature = "tpm"))]
        {
            let _ = sealed;
            Err(without_tpm("keep a rollback counter", backend))
        }
    }

    /// Unbinds the home from its rollback counter and removes the counter from the TPM.
    /// Unlocks the home; the present manifest must be the latest, unless `force` (the counter
    /// is gone: the TPM was cleared or replaced), which accepts the home's present state
    /// without asking the counter.
    ///
    /// # Errors
    /// As attaching the bound counter; the TPM's errors.
    pub fn unbind_rollback_counter(&self, force: bool) -> Result<Option<String>> {
        if force {
            let sealed = self.sealed_state_unattached()?;
            let bound = sealed.bound_counter()?.map(|(id, _)| id);
            sealed.forget_counter()?;
            self.use_sealed(sealed);
            return Ok(bound);
        }
        let sealed = self.sealed_state()?;
        let Some((id, _)) = sealed.bound_counter()? else {
            return Ok(None);
        };
        sealed.unbind_counter()?;
        #[cfg(feature = "tpm")]
        if let Some((backend, index)) = parse_id(&id)
            && let Ok(store) = self.counter_store(backend)
        {
            let auth = sealed.derive_secret(COUNTER_AUTH_PURPOSE);
            store
                .counter(index, &auth)
                .undefine()
                .map_err(|e| Error::backend(backend, e))?;
        }
        self.use_sealed(sealed);
        Ok(Some(id))
    }

    /// Accepts a home copied back from an earlier moment on purpose (by its owner, from a
    /// copy they trust): the present manifest is recorded against the counter's present
    /// value. Unlocks the home.
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] if the home is not bound to a counter; the TPM's errors.
    pub fn rebind_rollback_counter(&self) -> Result<String> {
        let sealed = self.sealed_state_unattached()?;
        let Some((id, _)) = sealed.bound_counter()? else {
            // Copied back from before it was bound: bound again to the counter the TPM holds.
            #[cfg(feature = "tpm")]
            if let Some((backend, index)) = self.find_own_counter(&sealed)? {
                let counter = self.home_counter(&sealed, &backend, index)?;
                let id = counter.id();
                sealed.bind_counter(counter)?;
                self.use_sealed(sealed);
                return Ok(id);
            }
            return Err(CoreError::InvalidInput(
                "the home is not bound to a rollback counter".into(),
            )
            .into());
        };
        let Some((backend, index)) = parse_id(&id) else {
            return Err(CoreError::InvalidInput(format!(
                "the home names the rollback counter '{id}', which keyhaven cannot read"
            ))
            .into());
        };
        #[cfg(feature = "tpm")]
        {
            sealed
                .rebind_counter(self.home_counter(&sealed, backend, index)?)
                .map_err(|e| Error::backend(backend, e))?;
            self.use_sealed(sealed);
            Ok(id)
        }
        #[cfg(not(feature = "tpm"))]
        {
            let _ = index;
            Err(without_tpm("check the home's rollback counter", backend))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counter_ids_name_a_backend_and_an_index() {
        assert_eq!(
            super::parse_id("tpm/tpm:0x01501234"),
            Some(("tpm", 0x0150_1234))
        );
        assert_eq!(
            super::parse_id("a/b/tpm:0x0150ffff"),
            Some(("a/b", 0x0150_ffff))
        );
        assert_eq!(super::parse_id("tpm/tpm:01501234"), None);
        assert_eq!(super::parse_id("tpm:0x1"), None);
        assert_eq!(super::parse_id("tpm/tpm:0xzz"), None);
    }
}
