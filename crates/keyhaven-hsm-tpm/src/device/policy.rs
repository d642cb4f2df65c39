//! PCR policies: reading PCRs, policy sessions, trial digests, and signing under a policy.

use super::*;

pub(super) fn selection(bank: PcrBank, pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
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

pub(super) fn key_error(
    req: &SignRequest<'_>,
    command: &'static str,
    e: tss_esapi::Error,
) -> TpmError {
    match raw_rc(&e) {
        Some(code) if code.from_tpm() && matches!(code.base(), rc::AUTH_FAIL | rc::BAD_AUTH) => {
            TpmError::AuthFail {
                key: req.id.to_string(),
                command,
                rc: code,
            }
        }
        Some(code) if code.from_tpm() && code.base() == rc::LOCKOUT => {
            TpmError::Lockout { command, rc: code }
        }
        _ => TpmError::call(command, Some(req.id.as_str()), e),
    }
}

impl Conn {
    pub(super) fn read_pcrs(&mut self, bank: PcrBank, pcrs: &[u8]) -> DevResult<Vec<Vec<u8>>> {
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

    pub(super) fn policy_for(
        &mut self,
        bank: PcrBank,
        pcrs: &[u8],
        text: &str,
    ) -> DevResult<PolicyInfo> {
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
    pub(super) fn start_policy_session(&mut self, trial: bool) -> DevResult<AuthSession> {
        let kind = if trial {
            SessionType::Trial
        } else {
            SessionType::Policy
        };
        self.start_session(None, kind, SymmetricDefinition::Null)
    }

    /// TPM2_StartAuthSession, SHA-256, salted to `salt_key` if given.
    fn start_session(
        &mut self,
        salt_key: Option<KeyHandle>,
        kind: SessionType,
        symmetric: SymmetricDefinition,
    ) -> DevResult<AuthSession> {
        self.ctx.clear_sessions();
        let session = self
            .ctx
            .start_auth_session(
                salt_key,
                None,
                None,
                kind,
                symmetric,
                HashingAlgorithm::Sha256,
            )
            .map_err(wrap_call("TPM2_StartAuthSession", None))?
            .ok_or_else(|| TpmError::BadResponse {
                what: "session handle",
                reason: "TPM2_StartAuthSession returned no session".into(),
            })?;
        Ok(session)
    }

    /// An HMAC session salted to the storage key, authorizing nothing, with response encryption
    /// (AES-128-CFB) on: its session key comes from a secret only this TPM and this process
    /// share, so what the TPM answers (an ECDH shared point) does not cross the bus in the
    /// clear. It rides as the command's second session; the key's own authorization (password
    /// or policy) stays in the first, so no key passphrase enters the encryption key.
    fn start_encrypt_session(&mut self) -> DevResult<AuthSession> {
        use tss_esapi::attributes::SessionAttributesBuilder;
        let primary = self.primary;
        let session = self.start_session(
            Some(primary),
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
        )?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_encrypt(true)
            .build();
        if let Err(e) = self.ctx.tr_sess_set_attributes(session, attributes, mask) {
            self.end_session(session);
            return Err(wrap_call("TPM2_StartAuthSession (salted)", None)(e).into());
        }
        Ok(session)
    }

    /// Runs `f` with a fresh response-encrypting session (see
    /// [`Conn::start_encrypt_session`]), flushed afterwards.
    pub(super) fn with_encrypted_response<T>(
        &mut self,
        f: impl FnOnce(&mut Self, AuthSession) -> DevResult<T>,
    ) -> DevResult<T> {
        let session = self.start_encrypt_session()?;
        let result = f(self, session);
        self.end_session(session);
        result
    }

    pub(super) fn end_session(&mut self, session: AuthSession) {
        let handle = ObjectHandle::from(SessionHandle::from(session));
        let _ = self.flush(handle);
    }

    /// Runs PolicyPCR (and PolicyPassword for keys with a passphrase) in `session`.
    pub(super) fn apply_policy(
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
    pub(super) fn trial_policy_digest(
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

    /// Runs one command with the key (`command` names it in errors) in a policy session that
    /// satisfies the key's PCR policy.
    /// `second` rides along as the command's second session (a response-encrypting one).
    pub(super) fn with_policy<T>(
        &mut self,
        req: &SignRequest<'_>,
        policy: &PolicyInfo,
        command: &'static str,
        second: Option<AuthSession>,
        op: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
    ) -> DevResult<T> {
        let session = self.start_policy_session(false)?;
        let result = match self.apply_policy(session, policy, req.auth.is_some(), Some(req.id)) {
            Ok(()) => self
                .ctx
                .execute_with_sessions((Some(session), second, None), op)
                .map_err(|e| Fail::Tpm(key_error(req, command, e))),
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
