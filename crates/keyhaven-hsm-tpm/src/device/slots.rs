//! Key slots: loading keys into the TPM's few object slots (least recently used first out),
//! persistent handles, and flushing.

use super::*;

impl Conn {
    /// Flushes least recently used keys until `extra` more objects fit beside the loaded
    /// ones: `TPM2_Create`, `TPM2_EvictControl` and commands on persistent objects need a free
    /// object slot of their own while they run.
    pub(super) fn make_room(&mut self, extra: usize) -> Result<(), TpmError> {
        while !self.loaded.is_empty() && self.loaded.len() + extra > self.capacity {
            let (_, lru) = self.loaded.remove(0);
            self.flush(lru.into())?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self, handle: ObjectHandle) -> Result<(), TpmError> {
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
    pub(super) fn persistent_handle(
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
    pub(super) fn primary_is_ours(&mut self) -> bool {
        let primary = self.primary;
        self.ctx
            .execute_without_session(|c| c.read_public(primary))
            .is_ok_and(|(_, name, _)| name.value() == self.primary_name.as_slice())
    }

    /// Loads a key (making room in the LRU first), or returns its handle if loaded; marks it
    /// most recently used.
    pub(super) fn load(
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
    pub(super) fn key_handle(&mut self, req: &SignRequest<'_>) -> DevResult<KeyHandle> {
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
}
