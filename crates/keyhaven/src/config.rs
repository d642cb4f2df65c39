//! `keyhaven.toml`: named backends, the default backend and key, and the fallback rule.
//!
//! ```toml
//! default_backend = "default"
//!
//! [default_key]
//! backend = "default"
//! id = "3f1c0e5b9a7d4c2e8f6a1b3c5d7e9f01"
//!
//! [fallback]          # seed 000 section 7: off unless allowed
//! allow = false
//! backend = "local"
//!
//! [backends.default]
//! type = "encrypted"          # encrypted | pem | memory
//! path = "backends/default"   # relative paths resolve against the keyhaven home
//!
//! [backends.local]
//! type = "pem"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::{Error, KeyId, Result};

/// The configuration file's name inside the keyhaven home.
pub const CONFIG_FILE: &str = "keyhaven.toml";

/// Where relative backend paths default to inside the home: `backends/NAME`.
pub const BACKENDS_DIR: &str = "backends";

/// The longest backend name accepted.
const MAX_NAME: usize = 64;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The backend new keys go to when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    /// The key used when an operation names none (`keyhaven sign` without `--key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_key: Option<DefaultKey>,
    /// What to do when a configured backend is unavailable.
    #[serde(default, skip_serializing_if = "FallbackConfig::is_default")]
    pub fallback: FallbackConfig,
    /// The backends, by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
}

/// One backend's declaration: `[backends.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendConfig {
    /// The backend type (`type = "encrypted" | "pem" | "memory"`).
    #[serde(rename = "type")]
    pub kind: BackendKind,
    /// The store directory of file backends; relative paths resolve against the home. Defaults
    /// to `backends/NAME`. Not allowed for other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl BackendConfig {
    /// A backend of `kind`, with an optional directory.
    pub fn new(kind: BackendKind, path: Option<PathBuf>) -> Self {
        BackendConfig { kind, path }
    }
}

/// The default key: `[default_key] backend = "NAME"`, `id = "ID"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DefaultKey {
    /// The backend holding it.
    pub backend: String,
    /// Its id in that backend.
    pub id: KeyId,
}

impl DefaultKey {
    /// A default key reference.
    pub fn new(backend: impl Into<String>, id: KeyId) -> Self {
        DefaultKey {
            backend: backend.into(),
            id,
        }
    }
}

/// The fallback rule (seed 000 section 7): `[fallback] allow = false`, `backend = "NAME"`.
///
/// When a configured backend is unavailable (its device is missing, its directory's drive is not
/// mounted, its support is not compiled in), **new** keys meant for it (generate, import) go to
/// the `backend` file store instead, **only** if `allow` is true, and the manager records a
/// [`crate::Warning`] saying that protection is lower. Existing keys are never looked up in the
/// fallback: using a key of an unavailable backend (sign, export, delete, look up) fails with
/// [`crate::Error::Unavailable`]. A wrong passphrase, unsafe permissions or a damaged store
/// never fall back either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FallbackConfig {
    /// Whether falling back is allowed at all. Off by default.
    #[serde(default)]
    pub allow: bool,
    /// The file backend (`pem` or `encrypted`) to fall back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

impl FallbackConfig {
    /// A fallback rule.
    pub fn new(allow: bool, backend: Option<String>) -> Self {
        FallbackConfig { allow, backend }
    }

    fn is_default(&self) -> bool {
        *self == FallbackConfig::default()
    }
}

/// Checks a backend name: 1 to 64 characters of `A-Z a-z 0-9 _ -` (no `:`, which separates the
/// backend from the key in references like `default:signing`).
///
/// # Errors
/// [`Error::Config`] saying what is wrong.
pub fn validate_backend_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Config {
            origin: "backend name".into(),
            message: format!(
                "'{}' is not a valid backend name (1-{MAX_NAME} characters of A-Z a-z 0-9 _ -)",
                name.escape_debug()
            ),
        })
    }
}

impl Config {
    /// Parses and validates configuration text; `origin` names it in errors (a file path).
    ///
    /// # Errors
    /// [`Error::Config`] with the line and the field or backend at fault.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            Error::Config {
                origin: match line {
                    Some(l) => format!("{origin} line {l}"),
                    None => origin.to_owned(),
                },
                message,
            }
        })?;
        config.validate().map_err(|e| match e {
            Error::Config { message, .. } => Error::Config {
                origin: origin.to_owned(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The configuration as TOML text.
    ///
    /// # Errors
    /// [`Error::Config`] if it cannot be serialized (it always can when valid).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config {
            origin: "configuration".into(),
            message: format!("cannot serialize: {e}"),
        })
    }

    /// Reads and validates a configuration file; a missing file is the empty configuration.
    ///
    /// The file decides where keys are kept and whether to fall back, so it must be private: a
    /// file other users may read or write (mode `& 0o077 != 0`) is refused.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`CoreError::PermissionDenied`](crate::CoreError)
    /// (naming the `chmod 600` fix) if others may read or write it, [`Error::Config`] if it is
    /// invalid.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let read_err = |e| Error::io(format!("read {}", path.display()), e);
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(read_err(e)),
        };
        let meta = file.metadata().map_err(read_err)?;
        crate::fs::check_meta(path, &meta)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_err)?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Validates, then writes the configuration atomically (temporary file, fsync, rename,
    /// fsync of the directory) with mode 0600.
    ///
    /// # Errors
    /// [`Error::Config`] if invalid, [`Error::Io`] if it cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let mut text = String::from(
            "# keyhaven configuration: see `keyhaven backend --help`. Written by keyhaven; \
             comments are not kept.\n",
        );
        text.push_str(&self.to_toml_string()?);
        Ok(crate::fs::atomic_write(path, text.as_bytes())?)
    }

    /// Checks references between sections and each backend's fields.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field or backend at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                origin: "configuration".into(),
                message,
            })
        };
        let known = || self.backend_names().join(", ");
        for (name, backend) in &self.backends {
            if let Err(Error::Config { message, .. }) = validate_backend_name(name) {
                return bad(format!("backends.{name}: {message}"));
            }
            if !backend.kind.is_file() && backend.path.is_some() {
                return bad(format!(
                    "backends.{name}.path: a {} backend has no directory; remove `path`",
                    backend.kind
                ));
            }
            if let Some(p) = &backend.path
                && p.as_os_str().is_empty()
            {
                return bad(format!("backends.{name}.path: may not be empty"));
            }
        }
        if let Some(d) = &self.default_backend
            && !self.backends.contains_key(d)
        {
            return bad(format!(
                "default_backend: no backend named '{d}' (configured: {})",
                or_none(known())
            ));
        }
        if let Some(k) = &self.default_key
            && !self.backends.contains_key(&k.backend)
        {
            return bad(format!(
                "default_key.backend: no backend named '{}' (configured: {})",
                k.backend,
                or_none(known())
            ));
        }
        match (&self.fallback.backend, self.fallback.allow) {
            (None, true) => {
                return bad(
                    "fallback: `allow = true` needs `backend = \"NAME\"`, the file backend to \
                     fall back to"
                        .into(),
                );
            }
            (Some(f), _) => match self.backends.get(f) {
                None => {
                    return bad(format!(
                        "fallback.backend: no backend named '{f}' (configured: {})",
                        or_none(known())
                    ));
                }
                Some(b) if !b.kind.is_file() => {
                    return bad(format!(
                        "fallback.backend: '{f}' is a {} backend; the fallback must be a file \
                         backend (pem or encrypted)",
                        b.kind
                    ));
                }
                Some(_) => {}
            },
            (None, false) => {}
        }
        Ok(())
    }

    /// The configured backend names, sorted.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    /// The directory of a file backend: its `path` resolved against `home`, or
    /// `HOME/backends/NAME`. `None` for backends without a directory or unknown names.
    pub fn backend_path(&self, home: &Path, name: &str) -> Option<PathBuf> {
        let backend = self.backends.get(name)?;
        if !backend.kind.is_file() {
            return None;
        }
        Some(match &backend.path {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => home.join(p),
            None => home.join(BACKENDS_DIR).join(name),
        })
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "none".into() } else { s }
}
