//! Which module, which token, which PIN.

use std::fmt;
use std::path::{Path, PathBuf};

use keyhaven_core::Error;
use secrecy::{ExposeSecret, SecretString};

/// The default cap on concurrently open sessions per store.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// How to find the token among the module's slots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenSelector {
    /// The token whose label (`CKA_LABEL` of the token, trailing blanks ignored) is this. The
    /// usual choice: slot ids may change (SoftHSM assigns random ones).
    Label(String),
    /// The token in this slot.
    SlotId(u64),
    /// The token with this serial number (trailing blanks ignored).
    Serial(String),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "labelled '{l}'"),
            TokenSelector::SlotId(s) => write!(f, "in slot {s}"),
            TokenSelector::Serial(s) => write!(f, "with serial '{s}'"),
        }
    }
}

/// Everything needed to open a [`crate::Pkcs11Store`].
///
/// The user PIN is a [`SecretString`] the caller provides (from [`pin_from_env`],
/// [`pin_from_file`] or a prompt); it is never logged, and `Debug` redacts it.
#[derive(Clone)]
#[non_exhaustive]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// The user PIN.
    pub user_pin: SecretString,
    /// The most sessions the store opens at once (threads beyond that wait for a free one).
    /// Clamped to the token's own limit; 0 counts as 1.
    pub max_sessions: usize,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("user_pin", &"[redacted]")
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl Pkcs11Config {
    /// A configuration with the default session cap ([`DEFAULT_MAX_SESSIONS`]).
    pub fn new(module: impl Into<PathBuf>, token: TokenSelector, user_pin: SecretString) -> Self {
        Pkcs11Config {
            module: module.into(),
            token,
            user_pin,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// Sets the session cap (at least 1).
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self
    }
}

/// Reads a PIN from the environment variable `var`.
///
/// # Errors
/// [`Error::Locked`] naming the variable if it is unset or empty, [`Error::InvalidInput`] if it is
/// not UTF-8.
pub fn pin_from_env(var: &str) -> Result<SecretString, Error> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Err(Error::Locked(format!(
            "no PIN: the environment variable {var} is unset or empty"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidInput(format!(
            "the environment variable {var} does not hold UTF-8 text"
        ))),
    }
}

/// Reads a PIN from a file: its first line, without the line ending.
///
/// On Unix the file must not be readable or writable by group or others (like an SSH private
/// key): a looser file is refused with the `chmod` that fixes it.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read, [`Error::PermissionDenied`] for loose permissions,
/// [`Error::Locked`] if the file holds no PIN.
pub fn pin_from_file(path: &Path) -> Result<SecretString, Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("read PIN file {}", path.display()), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::PermissionDenied(format!(
                "PIN file {} has mode {mode:04o}, which lets other users read or change it; \
                 keyhaven refuses to use it. Fix: chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read PIN file {}", path.display()), e))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(Error::Locked(format!(
            "no PIN: the PIN file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(line.to_owned()))
}

/// Whether the PIN is empty (some tokens use protected authentication paths instead).
pub(crate) fn pin_is_empty(pin: &SecretString) -> bool {
    pin.expose_secret().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven_core::ErrorKind;

    #[test]
    fn debug_redacts_pin() {
        let c = Pkcs11Config::new(
            "/m.so",
            TokenSelector::Label("t".into()),
            SecretString::from("123456"),
        );
        let s = format!("{c:?}");
        assert!(!s.contains("123456"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn pin_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "4321\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            matches!(pin_from_file(&p), Err(e) if e.is(ErrorKind::PermissionDenied) && e.to_string().contains("chmod 600"))
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(pin_from_file(&p).unwrap().expose_secret(), "4321");
        std::fs::write(&p, "").unwrap();
        assert!(matches!(pin_from_file(&p), Err(e) if e.is(ErrorKind::Locked)));
        assert!(matches!(
            pin_from_file(&dir.path().join("none")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn pin_env_missing() {
        assert!(matches!(
            pin_from_env("KEYHAVEN_TEST_NO_SUCH_PIN_VAR"),
            Err(e) if e.is(ErrorKind::Locked) && e.to_string().contains("KEYHAVEN_TEST_NO_SUCH_PIN_VAR")));
    }
}
