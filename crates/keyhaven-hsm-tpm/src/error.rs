//! The backend's own error: which TPM command failed, with its response code, for which key.

use std::fmt;
use std::path::PathBuf;

use keyhaven_core::{Error, ErrorKind};

/// A TSS2 response code (`TSS2_RC`): the TPM's own code in the low 16 bits and, above it, the
/// layer of the software stack that produced it (0 for the TPM, 10 for the TCTI, 7 for ESAPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TpmRc(pub u32);

/// The layer number of TCTI errors (`TSS2_TCTI_RC_LAYER >> 16`).
const LAYER_TCTI: u32 = 10;
/// The layer number of ESAPI errors.
const LAYER_ESAPI: u32 = 7;
/// The layer number of the resource manager (tpm2-abrmd).
const LAYER_RM: u32 = 11;
/// TPM 2.0 response codes keyhaven reacts to, in their base form (no handle, parameter or
/// session number).
pub(crate) mod rc {
    pub(crate) const INITIALIZE: u32 = 0x100;
    pub(crate) const NV_DEFINED: u32 = 0x14C;
    pub(crate) const AUTH_MISSING: u32 = 0x125;
    pub(crate) const ASYMMETRIC: u32 = 0x081;
    pub(crate) const ATTRIBUTES: u32 = 0x082;
    pub(crate) const VALUE: u32 = 0x084;
    pub(crate) const HANDLE: u32 = 0x08B;
    pub(crate) const AUTH_FAIL: u32 = 0x08E;
    pub(crate) const SIZE: u32 = 0x095;
    pub(crate) const INSUFFICIENT: u32 = 0x09A;
    pub(crate) const KEY: u32 = 0x09C;
    pub(crate) const POLICY_FAIL: u32 = 0x09D;
    pub(crate) const INTEGRITY: u32 = 0x09F;
    pub(crate) const BAD_AUTH: u32 = 0x0A2;
    pub(crate) const BINDING: u32 = 0x0A5;
    pub(crate) const OBJECT_MEMORY: u32 = 0x902;
    /// `TPM_RC_REFERENCE_H0` ..= `_H6`: a handle of the command names no loaded object.
    pub(crate) const REFERENCE_H0: u32 = 0x910;
    pub(crate) const REFERENCE_H6: u32 = 0x916;
    /// `TPM_RC_REFERENCE_S0` ..= `_S6`: a session handle names no loaded session.
    pub(crate) const REFERENCE_S0: u32 = 0x918;
    pub(crate) const REFERENCE_S6: u32 = 0x91E;
    pub(crate) const LOCKOUT: u32 = 0x921;
    /// TCTI: I/O error (the TPM or simulator cannot be reached).
    pub(crate) const TCTI_IO_ERROR: u32 = 0x000A_000A;
}

impl TpmRc {
    /// The raw value.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// The software layer that produced the code (0 = the TPM itself).
    pub fn layer(self) -> u32 {
        self.0 >> 16
    }

    /// For codes from the TPM, the base code with the handle/parameter/session number removed
    /// (for example `0x98E` becomes `0x08E`, `TPM_RC_AUTH_FAIL`); other layers' codes unchanged.
    pub fn base(self) -> u32 {
        if self.layer() != 0 && self.layer() != LAYER_RM {
            return self.0;
        }
        let code = self.0 & 0xFFFF;
        if code & 0x80 != 0 {
            // format one: error number in bits 0..5, flag bit 7
            (code & 0x3F) | 0x80
        } else {
            code & 0x0FFF
        }
    }

    /// Whether the TPM (or the resource manager) said this, as opposed to the software stack.
    pub fn from_tpm(self) -> bool {
        self.layer() == 0 || self.layer() == LAYER_RM
    }

    /// Whether the TPM could not be reached at all (a TCTI I/O or connection error).
    pub fn unreachable(self) -> bool {
        self.layer() == LAYER_TCTI && matches!(self.0 & 0xFFFF, 0x0A | 0x0B | 0x05 | 0x01)
    }

    /// The `TPM_RC_...` / `TSS2_..._RC_...` name, where known.
    pub fn name(self) -> Option<&'static str> {
        if self.layer() == LAYER_TCTI {
            return Some(match self.0 & 0xFFFF {
                0x01 => "TSS2_TCTI_RC_GENERAL_FAILURE",
                0x05 => "TSS2_TCTI_RC_BAD_VALUE",
                0x0A => "TSS2_TCTI_RC_IO_ERROR",
                0x0B => "TSS2_TCTI_RC_BAD_CONTEXT",
                0x10 => "TSS2_TCTI_RC_NOT_SUPPORTED",
                _ => return None,
            });
        }
        if self.layer() == LAYER_ESAPI {
            return None;
        }
        if !self.from_tpm() {
            return None;
        }
        Some(match self.base() {
            0x100 => "TPM_RC_INITIALIZE",
            0x101 => "TPM_RC_FAILURE",
            0x125 => "TPM_RC_AUTH_MISSING",
            0x126 => "TPM_RC_POLICY",
            0x127 => "TPM_RC_PCR",
            0x128 => "TPM_RC_PCR_CHANGED",
            0x14C => "TPM_RC_NV_DEFINED",
            0x14B => "TPM_RC_NV_SPACE",
            0x081 => "TPM_RC_ASYMMETRIC",
            0x082 => "TPM_RC_ATTRIBUTES",
            0x083 => "TPM_RC_HASH",
            0x084 => "TPM_RC_VALUE",
            0x085 => "TPM_RC_HIERARCHY",
            0x08A => "TPM_RC_TYPE",
            0x08B => "TPM_RC_HANDLE",
            0x08E => "TPM_RC_AUTH_FAIL",
            0x092 => "TPM_RC_SCHEME",
            0x095 => "TPM_RC_SIZE",
            0x09A => "TPM_RC_INSUFFICIENT",
            0x09C => "TPM_RC_KEY",
            0x09D => "TPM_RC_POLICY_FAIL",
            0x09F => "TPM_RC_INTEGRITY",
            0x0A2 => "TPM_RC_BAD_AUTH",
            0x0A5 => "TPM_RC_BINDING",
            0x0A6 => "TPM_RC_CURVE",
            0x902 => "TPM_RC_OBJECT_MEMORY",
            0x903 => "TPM_RC_SESSION_MEMORY",
            0x904 => "TPM_RC_MEMORY",
            0x905 => "TPM_RC_SESSION_HANDLES",
            0x906 => "TPM_RC_OBJECT_HANDLES",
            0x90A => "TPM_RC_TESTING",
            0x910..=0x916 => "TPM_RC_REFERENCE_H",
            0x918..=0x91E => "TPM_RC_REFERENCE_S",
            0x921 => "TPM_RC_LOCKOUT",
            0x922 => "TPM_RC_RETRY",
            _ => return None,
        })
    }

    /// Whether a handle the caller used no longer refers to a loaded object or session: what a
    /// TPM that restarted (losing its volatile state) answers.
    pub(crate) fn stale_handle(self) -> bool {
        self.from_tpm()
            && matches!(
                self.base(),
                rc::HANDLE
                    | rc::REFERENCE_H0..=rc::REFERENCE_H6
                    | rc::REFERENCE_S0..=rc::REFERENCE_S6
                    | rc::INITIALIZE
            )
    }
}

impl fmt::Display for TpmRc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#x})", self.0),
            None => write!(f, "TSS2 response code {:#x}", self.0),
        }
    }
}

/// The raw response code inside a `tss_esapi` error, if it carries one.
pub(crate) fn raw_rc(e: &tss_esapi::Error) -> Option<TpmRc> {
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::Success) => Some(TpmRc(0)),
        tss_esapi::Error::Tss2Error(code) => {
            // tss-esapi 7.7 keeps the value private; its Display is "Response code value: 0x..".
            let text = match code {
                Tss2ResponseCode::FormatZero(c) => c.to_string(),
                Tss2ResponseCode::FormatOne(c) => c.to_string(),
                Tss2ResponseCode::Success => return Some(TpmRc(0)),
            };
            let hex = text.rsplit("0x").next()?;
            u32::from_str_radix(hex.trim(), 16).ok().map(TpmRc)
        }
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// What went wrong talking to the TPM.
///
/// Converted into [`keyhaven_core::Error`] by meaning (see the `From` impl); where no
/// meaning-level variant fits, it stays available as the source of [`Error::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string is malformed or names an unknown interface.
    #[error("invalid TCTI '{tcti}': {reason}")]
    InvalidTcti {
        /// The string given.
        tcti: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TPM cannot be reached through the TCTI.
    #[error("cannot reach the TPM through TCTI '{tcti}' ({rc}): {hint}")]
    Unreachable {
        /// The TCTI.
        tcti: String,
        /// The code the TCTI or ESAPI returned.
        rc: TpmRc,
        /// What to do about it, for this kind of TCTI.
        hint: &'static str,
    },
    /// A TPM command failed.
    #[error("{command} failed with {rc}{}", key.as_ref().map(|k| format!(" for key {k}")).unwrap_or_default())]
    Command {
        /// The TPM command (`TPM2_Sign`, `TPM2_Load`, ...).
        command: &'static str,
        /// The response code.
        rc: TpmRc,
        /// The key concerned, if any.
        key: Option<String>,
    },
    /// The tss-esapi wrapper refused a call before it reached the TPM.
    #[error("{command}: tss-esapi refused the call: {source}")]
    Wrapper {
        /// The TPM command.
        command: &'static str,
        /// The wrapper's error.
        #[source]
        source: tss_esapi::Error,
    },
    /// The key's authorization value (passphrase) is wrong.
    #[error(
        "wrong passphrase for key {key} ({command} returned {rc}); each failure counts toward \
         the TPM's dictionary-attack lockout"
    )]
    AuthFail {
        /// The key.
        key: String,
        /// The command.
        command: &'static str,
        /// `TPM_RC_AUTH_FAIL` or `TPM_RC_BAD_AUTH`.
        rc: TpmRc,
    },
    /// The key needs a passphrase and none was given.
    #[error(
        "key {key} is protected by a passphrase: give it with TpmStore::set_key_auth (the CLI \
         asks for it) before signing"
    )]
    AuthNeeded {
        /// The key.
        key: String,
    },
    /// The TPM is in dictionary-attack lockout.
    #[error(
        "the TPM is in dictionary-attack lockout after too many wrong passphrases ({command} \
         returned {rc}); wait for the lockout to expire or reset it with the lockout \
         authorization (`tpm2_dictionarylockout --clear-lockout`)"
    )]
    Lockout {
        /// The command.
        command: &'static str,
        /// `TPM_RC_LOCKOUT`.
        rc: TpmRc,
    },
    /// The key's PCR policy is not satisfied: the PCRs differ from when the key was created.
    #[error(
        "key {key} is bound to PCRs {policy} and they differ from when it was created{}: the \
         TPM refuses to sign ({rc})",
        if changed.is_empty() { String::new() } else {
            format!(" (changed: {})", changed.iter().map(u8::to_string).collect::<Vec<_>>().join(", "))
        }
    )]
    PcrMismatch {
        /// The key.
        key: String,
        /// The policy, e.g. `sha256:0,7`.
        policy: String,
        /// Which of its PCRs now hold other values (empty if they could not be read).
        changed: Vec<u8>,
        /// What the TPM returned.
        rc: TpmRc,
    },
    /// The TPM has no free object slot.
    #[error(
        "the TPM has no room for another loaded object ({command} returned {rc}): keyhaven \
         holds only {kept} object(s) there (its storage key), so other programs hold the rest; \
         flush their transient objects (`tpm2_flushcontext -t`) or use a resource manager \
         (/dev/tpmrm0, tabrmd)"
    )]
    ObjectMemory {
        /// The command.
        command: &'static str,
        /// `TPM_RC_OBJECT_MEMORY`.
        rc: TpmRc,
        /// How many objects keyhaven held when it failed.
        kept: usize,
    },
    /// The TPM refuses a key's wrapped private blob: made by another TPM (or under another
    /// storage key), or damaged.
    #[error(
        "the TPM refuses the wrapped private key in {} ({rc}): the blob was made by another TPM \
         or under another storage key, or the file is damaged; key {key} cannot be used with \
         this TPM",
        file.display()
    )]
    ForeignBlob {
        /// The key.
        key: String,
        /// The blob file.
        file: PathBuf,
        /// What `TPM2_Load` returned.
        rc: TpmRc,
    },
    /// The owner hierarchy has an authorization value, so the storage key cannot be created.
    #[error(
        "cannot create the storage primary key under the owner hierarchy ({rc}): the owner \
         hierarchy has an authorization value; keyhaven needs an empty owner authorization"
    )]
    OwnerAuth {
        /// What `TPM2_CreatePrimary` returned.
        rc: TpmRc,
    },
    /// A key's persistent handle holds another object than the key (its Name differs from the
    /// key's public area): another program evicted the key and persisted something else there.
    #[error(
        "persistent handle {handle:#010x} no longer holds key {key}: the object there has another \
         Name than the key's public area, so another program replaced it. keyhaven will not use \
         it. Look at it with `tpm2_readpublic -c {handle:#010x}`; if it is not needed, evict it \
         (`tpm2_evictcontrol -C o -c {handle:#010x}`) and keyhaven signs with the key's wrapped \
         blob instead"
    )]
    ForeignPersistent {
        /// The handle.
        handle: u32,
        /// The key the store expected there.
        key: String,
    },
    /// A persistent handle is already taken.
    #[error("persistent handle {handle:#010x} is already in use on the TPM ({rc})")]
    HandleInUse {
        /// The handle.
        handle: u32,
        /// `TPM_RC_NV_DEFINED`.
        rc: TpmRc,
    },
    /// The TPM answered with data keyhaven cannot use.
    #[error("the TPM returned an unusable {what}: {reason}")]
    BadResponse {
        /// What was returned.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A thread panicked while holding the TPM context.
    #[error("a thread panicked while using the TPM context; open the store again")]
    Poisoned,
}

impl TpmError {
    /// Wraps a failed tss-esapi call.
    pub(crate) fn call(command: &'static str, key: Option<&str>, e: tss_esapi::Error) -> Self {
        match raw_rc(&e) {
            Some(rc) => TpmError::Command {
                command,
                rc,
                key: key.map(str::to_owned),
            },
            None => TpmError::Wrapper { command, source: e },
        }
    }

    /// The response code, if this is a failed TPM command.
    pub fn rc(&self) -> Option<TpmRc> {
        match self {
            TpmError::Unreachable { rc, .. }
            | TpmError::Command { rc, .. }
            | TpmError::AuthFail { rc, .. }
            | TpmError::Lockout { rc, .. }
            | TpmError::PcrMismatch { rc, .. }
            | TpmError::ObjectMemory { rc, .. }
            | TpmError::ForeignBlob { rc, .. }
            | TpmError::OwnerAuth { rc }
            | TpmError::HandleInUse { rc, .. } => Some(*rc),
            _ => None,
        }
    }

    /// Whether the context lost the TPM (unreachable, or our handles are gone because the TPM
    /// restarted), so that reconnecting, re-creating the primary and reloading may help.
    pub(crate) fn lost_tpm(&self) -> bool {
        match self {
            TpmError::Unreachable { .. } => true,
            TpmError::Command { rc, .. } => rc.unreachable() || rc.stale_handle(),
            _ => false,
        }
    }
}

impl From<TpmError> for Error {
    fn from(e: TpmError) -> Self {
        use ErrorKind as K;
        let kind = match &e {
            TpmError::InvalidTcti { .. } => K::InvalidInput,
            TpmError::Unreachable { .. } => K::Unavailable,
            TpmError::AuthFail { .. } => K::BadPassphrase,
            TpmError::AuthNeeded { .. } | TpmError::Lockout { .. } => K::Locked,
            TpmError::PcrMismatch { .. } | TpmError::OwnerAuth { .. } => K::PermissionDenied,
            TpmError::ForeignBlob { .. } | TpmError::ForeignPersistent { .. } => K::Corrupt,
            TpmError::HandleInUse { .. } => K::AlreadyExists,
            TpmError::Command { rc, .. } if rc.unreachable() => K::Unavailable,
            TpmError::Command { rc, .. } if rc.from_tpm() && rc.base() == rc::LOCKOUT => K::Locked,
            TpmError::Command { .. }
            | TpmError::Wrapper { .. }
            | TpmError::ObjectMemory { .. }
            | TpmError::BadResponse { .. }
            | TpmError::Poisoned => K::Internal,
        };
        Error::other(kind, "tpm", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_decode() {
        let auth = TpmRc(0x98E);
        assert_eq!(auth.base(), rc::AUTH_FAIL);
        assert_eq!(auth.name(), Some("TPM_RC_AUTH_FAIL"));
        assert_eq!(TpmRc(0x9A2).base(), rc::BAD_AUTH);
        assert_eq!(TpmRc(0x1DF).base(), rc::INTEGRITY);
        assert_eq!(TpmRc(0x902).base(), rc::OBJECT_MEMORY);
        assert!(TpmRc(0x18B).stale_handle());
        assert!(TpmRc(0x910).stale_handle());
        assert!(!TpmRc(0x98E).stale_handle());
        let io = TpmRc(rc::TCTI_IO_ERROR);
        assert!(io.unreachable());
        assert_eq!(io.to_string(), "TSS2_TCTI_RC_IO_ERROR (0xa000a)");
        assert!(!TpmRc(0x98E).unreachable());
    }

    #[test]
    fn raw_codes_come_out_of_tss_esapi_errors() {
        use tss_esapi::constants::response_code::Tss2ResponseCode;
        for raw in [0x98E_u32, 0x902, 0x000A_000A, 0x1DF] {
            let e = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(raw));
            assert_eq!(raw_rc(&e), Some(TpmRc(raw)), "{raw:#x}");
        }
    }

    #[test]
    fn meanings() {
        let auth: Error = TpmError::AuthFail {
            key: "k1".into(),
            command: "TPM2_Sign",
            rc: TpmRc(0x98E),
        }
        .into();
        assert!(
            matches!(&auth, e if e.is(ErrorKind::BadPassphrase) && e.to_string().contains("k1"))
        );
        let pcr: Error = TpmError::PcrMismatch {
            key: "k".into(),
            policy: "sha256:0,7".into(),
            changed: vec![7],
            rc: TpmRc(0x984),
        }
        .into();
        assert!(
            matches!(&pcr, e if e.is(ErrorKind::PermissionDenied) && e.to_string().contains("changed: 7"))
        );
        let gone: Error = TpmError::Unreachable {
            tcti: "swtpm:port=1".into(),
            rc: TpmRc(rc::TCTI_IO_ERROR),
            hint: "start it",
        }
        .into();
        assert!(
            matches!(&gone, e if e.is(ErrorKind::Unavailable) && e.to_string().contains("start it"))
        );
        let other: Error = TpmError::Command {
            command: "TPM2_Sign",
            rc: TpmRc(0x101),
            key: Some("k".into()),
        }
        .into();
        // Kept whole: the TPM command and its response code, and the TPM error type itself.
        assert_eq!(other.kind(), ErrorKind::Internal);
        assert!(
            other
                .to_string()
                .contains("TPM2_Sign failed with TPM_RC_FAILURE"),
            "{other}"
        );
        let Error::Other(o) = &other else {
            panic!("{other:?}")
        };
        assert_eq!(o.origin(), "tpm");
        assert!(matches!(
            o.downcast_ref::<TpmError>(),
            Some(TpmError::Command { .. })
        ));
    }
}
