//! The backend's own error: which PKCS#11 call failed, with its `CKR_` code, on which token.

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use keyhaven_core::{Error, ErrorKind};

/// A PKCS#11 return value (`CKR_...`), as keyhaven reports it.
///
/// keyhaven keeps the `cryptoki` crate out of its public API: this names the code
/// (`CKR_PIN_INCORRECT`) without exposing cryptoki's own error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ckr(RvError);

impl Ckr {
    /// The code's `CKR_...` name, e.g. `CKR_PIN_INCORRECT`.
    pub fn name(self) -> String {
        ckr_name(self.0)
    }

    pub(crate) fn new(rv: RvError) -> Self {
        Ckr(rv)
    }

    pub(crate) fn rv(self) -> RvError {
        self.0
    }
}

impl std::fmt::Display for Ckr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// What went wrong talking to a PKCS#11 module or token.
///
/// Converted into [`keyhaven_core::Error`] by meaning (see the `From` impl); the original stays
/// available as the source of [`Error::Backend`] where no meaning-level variant fits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The module file does not exist.
    #[error(
        "PKCS#11 module {} does not exist: install the token's PKCS#11 library (for SoftHSM: \
         `apt-get install softhsm2`, module /usr/lib/softhsm/libsofthsm2.so) or fix the module path",
        module.display()
    )]
    ModuleMissing {
        /// The path given.
        module: PathBuf,
    },
    /// The file exists but is not a loadable PKCS#11 module.
    #[error(
        "{} is not a PKCS#11 module ({reason}): point the module path at the token vendor's \
         PKCS#11 library (a shared object exporting C_GetFunctionList)",
        module.display()
    )]
    NotAModule {
        /// The path given.
        module: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// No slot holds a token matching the selector.
    #[error(
        "no token {selector} in PKCS#11 module {}; tokens present: {present}. Check the token \
         label (`pkcs11-tool --module {} --list-token-slots`) or initialize the token",
        module.display(),
        module.display()
    )]
    TokenNotFound {
        /// The module searched.
        module: PathBuf,
        /// The selector, for humans (`labelled 'x'`, `in slot 3`, `with serial 'y'`).
        selector: String,
        /// The tokens that are there, for humans.
        present: String,
    },
    /// Several tokens match the selector, so keyhaven cannot tell which one is meant.
    #[error(
        "{count} tokens {selector} in PKCS#11 module {}: {matches}. keyhaven will not pick one \
         at random: select the token by serial or slot id instead, or relabel one of them",
        module.display()
    )]
    AmbiguousToken {
        /// The module searched.
        module: PathBuf,
        /// The selector, for humans.
        selector: String,
        /// How many tokens match.
        count: usize,
        /// The matching tokens (slot and serial), for humans.
        matches: String,
    },
    /// A PKCS#11 function returned an error.
    #[error("{function} failed with {rv} on {token}")]
    Call {
        /// The PKCS#11 function, e.g. `C_Sign`.
        function: String,
        /// Its return value.
        rv: Ckr,
        /// Which token, for humans (`token 'x' (slot 3) of /path/module.so`).
        token: String,
    },
    /// The wrong user PIN. The login was tried exactly once and not retried.
    #[error(
        "wrong user PIN for {token} (C_Login returned {rv}); keyhaven tried once and did not \
         retry, so the token's retry counter moved by one only{}. This store will not try that \
         PIN again: open the store again with the right PIN",
        if *count_low { " (the token now reports a low PIN retry count)" } else { "" }
    )]
    WrongPin {
        /// Which token.
        token: String,
        /// `CKR_PIN_INCORRECT` or `CKR_PIN_LEN_RANGE`.
        rv: Ckr,
        /// Whether the token reports few retries left.
        count_low: bool,
    },
    /// The user PIN is locked on the token.
    #[error(
        "the user PIN of {token} is locked after too many wrong attempts; unlock it with the \
         security officer PIN (e.g. `pkcs11-tool --login --login-type so --init-pin`)"
    )]
    PinLocked {
        /// Which token.
        token: String,
    },
    /// The token has no room for new objects.
    #[error(
        "{token} is full ({function} returned {rv}): delete unused keys (`pkcs11-tool \
         --list-objects`, `--delete-object`) or use another token"
    )]
    TokenFull {
        /// The PKCS#11 function.
        function: String,
        /// `CKR_DEVICE_MEMORY`.
        rv: Ckr,
        /// Which token.
        token: String,
    },
    /// The token stopped answering (removed, or its storage vanished).
    #[error("{token} is gone: {detail}. Reinsert or restore the token and open the store again")]
    TokenGone {
        /// Which token.
        token: String,
        /// What showed it.
        detail: String,
    },
    /// A key on the token (made by another tool) is less protected than the keys keyhaven
    /// makes: readable in plaintext, extractable, or either in the past. Reported by
    /// [`keyhaven_core::KeyStore::check`]; the key stays usable.
    #[error(
        "{token} key {key} '{label}' is weaker than keyhaven's own keys: {reasons}. Its private \
         part may exist outside the token; replace it with a key keyhaven generates if that \
         matters"
    )]
    WeakKey {
        /// Which token.
        token: String,
        /// The key id.
        key: String,
        /// The key's label.
        label: String,
        /// Which attributes make it weak.
        reasons: String,
    },
    /// The token returned data keyhaven cannot interpret.
    #[error("{token} returned an unusable {what}: {reason}")]
    BadObject {
        /// Which token.
        token: String,
        /// Which attribute or object.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A failure inside the cryptoki wrapper that is not a PKCS#11 return value.
    #[error("cryptoki error on {token}: {source}")]
    Cryptoki {
        /// Which token (or module).
        token: String,
        /// The wrapper's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// The `CKR_...` name of a PKCS#11 return value, from cryptoki's variant name.
pub(crate) fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED({code:#x})"),
        RvError::UnknownErrorCode(code) => format!("CKR_{code:#x}"),
        other => {
            let camel = format!("{other:?}");
            let mut out = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// `C_Sign` for cryptoki's `Function::Sign`.
pub(crate) fn function_name(f: Function) -> String {
    format!("C_{f:?}")
}

impl Pkcs11Error {
    /// Wraps a cryptoki error from an operation on `token`.
    pub(crate) fn from_cryptoki(token: &str, err: CkError) -> Self {
        match err {
            CkError::Pkcs11(RvError::DeviceMemory, f) => Pkcs11Error::TokenFull {
                function: function_name(f),
                rv: Ckr(RvError::DeviceMemory),
                token: token.to_owned(),
            },
            CkError::Pkcs11(rv, f) => Pkcs11Error::Call {
                function: function_name(f),
                rv: Ckr(rv),
                token: token.to_owned(),
            },
            // Every PKCS#11 return value is a `Call` (or `TokenFull`) above: what is left are
            // the wrapper's own failures (conversions, library loading).
            other => Pkcs11Error::Cryptoki {
                token: token.to_owned(),
                source: Box::new(other),
            },
        }
    }

    /// The PKCS#11 return value, if this is a failed call.
    pub fn rv(&self) -> Option<Ckr> {
        match self {
            Pkcs11Error::Call { rv, .. }
            | Pkcs11Error::WrongPin { rv, .. }
            | Pkcs11Error::TokenFull { rv, .. } => Some(*rv),
            _ => None,
        }
    }

    /// Whether the session (or login) was lost, so that re-opening and logging in again may help.
    pub(crate) fn session_lost(&self) -> bool {
        matches!(
            self.rv().map(Ckr::rv),
            Some(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::UserNotLoggedIn
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::DeviceError
            )
        )
    }

    /// Whether an object handle went stale (object destroyed, possibly by another program).
    pub(crate) fn stale_handle(&self) -> bool {
        matches!(
            self.rv().map(Ckr::rv),
            Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
        )
    }
}

impl From<Pkcs11Error> for Error {
    fn from(e: Pkcs11Error) -> Self {
        use ErrorKind as K;
        let kind = match &e {
            Pkcs11Error::ModuleMissing { .. }
            | Pkcs11Error::NotAModule { .. }
            | Pkcs11Error::TokenNotFound { .. }
            | Pkcs11Error::TokenGone { .. } => K::Unavailable,
            Pkcs11Error::AmbiguousToken { .. } => K::InvalidInput,
            Pkcs11Error::WrongPin { .. } => K::BadPassphrase,
            Pkcs11Error::PinLocked { .. } => K::Locked,
            Pkcs11Error::Call { rv, function, .. } => {
                let (kind, note) = match rv.rv() {
                    RvError::PinIncorrect | RvError::PinLenRange => (K::BadPassphrase, None),
                    RvError::PinLocked => (K::Locked, None),
                    RvError::MechanismInvalid
                    | RvError::MechanismParamInvalid
                    | RvError::CurveNotSupported
                    | RvError::DomainParamsInvalid
                    | RvError::FunctionNotSupported
                    | RvError::KeyFunctionNotPermitted
                    | RvError::KeyTypeInconsistent => (
                        K::Unsupported,
                        Some(format!("the token does not support this for {function}")),
                    ),
                    RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::SlotIdInvalid => (
                        K::Unavailable,
                        Some("is the token inserted and the module configured?".to_owned()),
                    ),
                    RvError::UserPinNotInitialized => (
                        K::Locked,
                        Some(
                            "the token has no user PIN yet; set one with the security officer \
                             PIN (pkcs11-tool --login --login-type so --init-pin)"
                                .to_owned(),
                        ),
                    ),
                    RvError::UserAnotherAlreadyLoggedIn => (
                        K::Locked,
                        Some(
                            "the security officer is logged in to the token in this process; \
                             log the SO out first"
                                .to_owned(),
                        ),
                    ),
                    RvError::SessionCount => (
                        K::Unavailable,
                        Some(
                            "the token allows no more sessions; lower max_sessions or close \
                             other applications using it"
                                .to_owned(),
                        ),
                    ),
                    RvError::TokenWriteProtected => (
                        K::PermissionDenied,
                        Some("the token is write-protected".to_owned()),
                    ),
                    _ => (K::Internal, None),
                };
                return match note {
                    Some(note) => Error::other_noted(kind, "pkcs11", e, note),
                    None => Error::other(kind, "pkcs11", e),
                };
            }
            Pkcs11Error::TokenFull { .. }
            | Pkcs11Error::BadObject { .. }
            | Pkcs11Error::WeakKey { .. }
            | Pkcs11Error::Cryptoki { .. } => K::Internal,
        };
        Error::other(kind, "pkcs11", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::CryptokiAlreadyInitialized),
            "CKR_CRYPTOKI_ALREADY_INITIALIZED"
        );
        assert_eq!(ckr_name(RvError::DeviceMemory), "CKR_DEVICE_MEMORY");
        assert_eq!(function_name(Function::Sign), "C_Sign");
    }

    fn call(rv: RvError) -> Error {
        Pkcs11Error::from_cryptoki("token 't'", CkError::Pkcs11(rv, Function::Sign)).into()
    }

    #[test]
    fn meanings() {
        assert!(matches!(
            call(RvError::MechanismInvalid),
            e if e.is(ErrorKind::Unsupported)));
        assert!(matches!(call(RvError::PinLocked), e if e.is(ErrorKind::Locked)));
        assert!(matches!(
            call(RvError::TokenNotPresent),
            e if e.is(ErrorKind::Unavailable)));
        let full = call(RvError::DeviceMemory);
        assert!(full.to_string().contains("is full"), "{full}");
        assert!(full.to_string().contains("CKR_DEVICE_MEMORY"), "{full}");
        let other = call(RvError::GeneralError);
        assert!(other.to_string().contains("C_Sign"), "{other}");
        // The error is the PKCS#11 error itself, kept whole: its message names the call and
        // the CKR, and it can be had back as its own type.
        assert!(other.to_string().contains("CKR_GENERAL_ERROR"), "{other}");
        let Error::Other(o) = &other else {
            panic!("{other:?}")
        };
        assert!(matches!(
            o.downcast_ref::<Pkcs11Error>(),
            Some(Pkcs11Error::Call { .. })
        ));
    }

    #[test]
    fn return_values_are_named_without_cryptoki_types() {
        let e = Pkcs11Error::from_cryptoki(
            "token 't'",
            CkError::Pkcs11(RvError::PinLocked, Function::Login),
        );
        let rv = e.rv().unwrap();
        assert_eq!(rv.name(), "CKR_PIN_LOCKED");
        assert_eq!(rv.to_string(), "CKR_PIN_LOCKED");
        assert_eq!(
            e.to_string(),
            "C_Login failed with CKR_PIN_LOCKED on token 't'"
        );
        // the wrapper's own failures carry no return value
        let other = Pkcs11Error::from_cryptoki("token 't'", CkError::NullFunctionPointer);
        assert!(other.rv().is_none());
        assert!(matches!(other, Pkcs11Error::Cryptoki { .. }));
    }

    #[test]
    fn ambiguous_token_is_invalid_input_listing_the_slots() {
        let e: Error = Pkcs11Error::AmbiguousToken {
            module: "/m.so".into(),
            selector: "labelled 'x'".into(),
            count: 2,
            matches: "'x' (slot 1, serial a), 'x' (slot 2, serial b)".into(),
        }
        .into();
        match e {
            e if e.is(ErrorKind::InvalidInput) => {
                let m = e.to_string();
                assert!(m.contains("slot 1") && m.contains("slot 2"), "{m}");
                assert!(m.contains("serial or slot id"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_pin_says_no_retry() {
        let e: Error = Pkcs11Error::WrongPin {
            token: "token 't'".into(),
            rv: Ckr(RvError::PinIncorrect),
            count_low: true,
        }
        .into();
        assert!(
            matches!(&e, e if e.is(ErrorKind::BadPassphrase) && e.to_string().contains("did not retry"))
        );
    }
}
