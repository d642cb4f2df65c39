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
//! type = "encrypted"          # encrypted | pem | memory | pkcs11 | tpm
//! path = "backends/default"   # relative paths resolve against the keyhaven home
//!
//! [backends.local]
//! type = "pem"
//!
//! [backends.hsm]                # a PKCS#11 token (feature `pkcs11`)
//! type = "pkcs11"
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "keyhaven"          # or slot = 3, or serial = "..."
//! pin_env = "KEYHAVEN_HSM_PIN"  # or pin_file = "/etc/keyhaven/hsm.pin"; else a prompt
//!
//! [backends.tpm]                # a TPM 2.0 (feature `tpm`)
//! type = "tpm"
//! tcti = "device:/dev/tpmrm0"   # or "swtpm:host=127.0.0.1,port=2321", "tabrmd"
//! path = "backends/tpm"         # the wrapped key blobs and metadata (this is the default)
//! ```
//!
//! The PIN of a token is never written here: only where to read it from.

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
    /// The audit log (`[audit]`): on by default for a home on disk.
    #[serde(
        default,
        skip_serializing_if = "crate::lifecycle::AuditConfig::is_default"
    )]
    pub audit: crate::lifecycle::AuditConfig,
    /// Access control (`[access]`): off unless a policy file is named.
    #[serde(
        default,
        skip_serializing_if = "crate::lifecycle::AccessConfig::is_default"
    )]
    pub access: crate::lifecycle::AccessConfig,
    /// Compromise detection and response (`[compromise]`).
    #[serde(
        default,
        skip_serializing_if = "crate::lifecycle::is_default_compromise"
    )]
    pub compromise: keyhaven_compromise::ResponseConfig,
}

/// One backend's declaration: `[backends.NAME]`.
///
/// Which fields a type takes (others are refused, naming the field):
///
/// | type | fields |
/// |---|---|
/// | `encrypted`, `pem` | `path` (the store directory) |
/// | `memory` | none |
/// | `pkcs11` | `module` (required); one of `token` (label), `slot`, `serial`; at most one of `pin_env`, `pin_file` (neither: the PIN is asked for) |
/// | `tpm` | `tcti` (required); `path` (the metadata directory) |
///
/// Relative paths (`path`, `module`, `pin_file`) resolve against the keyhaven home.
///
/// In the file, a declaration is read through a tagged form with one variant per type, each
/// with only its own fields ([`BackendFile`]): serde itself refuses a field of another type
/// (`unknown field `tcti`, expected one of `module`, `token`, ...`, with its line) and a missing
/// required one, so no type-by-type field check is written by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BackendFile", into = "BackendFile")]
#[non_exhaustive]
pub struct BackendConfig {
    /// The backend type (`type = "encrypted" | "pem" | "memory" | "pkcs11" | "tpm"`).
    pub kind: BackendKind,
    /// The store directory of file backends, or the metadata directory (wrapped key blobs) of a
    /// TPM backend. Defaults to `backends/NAME`. Not allowed for other types.
    pub path: Option<PathBuf>,
    /// `pkcs11`: the PKCS#11 module (shared library) of the token.
    pub module: Option<PathBuf>,
    /// `pkcs11`: the token, by label.
    pub token: Option<String>,
    /// `pkcs11`: the token, by slot id.
    pub slot: Option<u64>,
    /// `pkcs11`: the token, by serial number.
    pub serial: Option<String>,
    /// `pkcs11`: the environment variable holding the user PIN (its name, never the PIN).
    pub pin_env: Option<String>,
    /// `pkcs11`: a file (mode 0600) whose first line is the user PIN.
    pub pin_file: Option<PathBuf>,
    /// `tpm`: how to reach the TPM: `device:/dev/tpmrm0`, `swtpm:host=H,port=P`,
    /// `mssim:host=H,port=P` or `tabrmd`.
    pub tcti: Option<String>,
    /// `keyring`: which keyring: `secret-service` (the default), `kernel-user` or
    /// `kernel-session` (Linux), `keychain` (macOS).
    pub keyring: Option<String>,
    /// `keyring` on the Secret Service: the collection's alias (default `default`).
    pub collection: Option<String>,
    /// `keyring`: the store's name in the keyring (default: the backend's name), so two homes
    /// using one keyring stay apart.
    pub store: Option<String>,
}

/// Which token of a PKCS#11 module a `pkcs11` backend uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenRef {
    /// By label (`token = "..."`): the usual choice, as slot ids may change.
    Label(String),
    /// By slot id (`slot = N`).
    Slot(u64),
    /// By serial number (`serial = \"...\"`).
    Serial(String),
}

impl std::fmt::Display for TokenRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRef::Label(l) => write!(f, "token '{l}'"),
            TokenRef::Slot(s) => write!(f, "the token in slot {s}"),
            TokenRef::Serial(s) => write!(f, "the token with serial '{s}'"),
        }
    }
}

/// `[backends.NAME]` as written in keyhaven.toml: tagged by `type`, each variant with only the
/// fields its backend takes (`deny_unknown_fields`), so serde refuses the others, names them and
/// lists the ones allowed. [`BackendConfig`] is read and written through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendFile {
    /// `type = "encrypted"`.
    Encrypted(FileBackend),
    /// `type = "pem"`.
    Pem(FileBackend),
    /// `type = "memory"`: no field.
    Memory(MemoryBackend),
    /// `type = "pkcs11"`.
    Pkcs11(Pkcs11Backend),
    /// `type = "tpm"`.
    Tpm(TpmBackend),
    /// `type = "keyring"`.
    Keyring(KeyringBackend),
}

/// The fields of a `keyring` backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyringBackend {
    /// `secret-service` (default), `kernel-user`, `kernel-session` or `keychain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<String>,
    /// The Secret Service collection's alias (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// The store's name in the keyring (default: the backend's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// The fields of a file backend (`encrypted`, `pem`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileBackend {
    /// The store directory (default `backends/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// The fields of a `memory` backend: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryBackend {}

/// The fields of a `pkcs11` backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Pkcs11Backend {
    /// The PKCS#11 module (required).
    pub module: PathBuf,
    /// The token, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The token, by slot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The token, by serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The environment variable holding the user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
    /// A file (0600) whose first line is the user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
}

/// The fields of a `tpm` backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TpmBackend {
    /// How to reach the TPM (required).
    pub tcti: String,
    /// The metadata directory (default `backends/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl From<BackendFile> for BackendConfig {
    fn from(f: BackendFile) -> Self {
        match f {
            BackendFile::Encrypted(b) => BackendConfig::new(BackendKind::Encrypted, b.path),
            BackendFile::Pem(b) => BackendConfig::new(BackendKind::Pem, b.path),
            BackendFile::Memory(MemoryBackend {}) => BackendConfig::new(BackendKind::Memory, None),
            BackendFile::Pkcs11(b) => {
                let mut c = BackendConfig::new(BackendKind::Pkcs11, None);
                c.module = Some(b.module);
                c.token = b.token;
                c.slot = b.slot;
                c.serial = b.serial;
                c.pin_env = b.pin_env;
                c.pin_file = b.pin_file;
                c
            }
            BackendFile::Tpm(b) => BackendConfig::tpm(b.tcti, b.path),
            BackendFile::Keyring(b) => {
                let mut c = BackendConfig::new(BackendKind::Keyring, None);
                c.keyring = b.keyring;
                c.collection = b.collection;
                c.store = b.store;
                c
            }
        }
    }
}

impl From<BackendConfig> for BackendFile {
    /// The typed form; a field the type does not take is left out (a declaration made in code
    /// with one is refused by [`Config::validate`], which names it).
    fn from(c: BackendConfig) -> Self {
        match c.kind {
            BackendKind::Encrypted => BackendFile::Encrypted(FileBackend { path: c.path }),
            BackendKind::Pem => BackendFile::Pem(FileBackend { path: c.path }),
            BackendKind::Memory => BackendFile::Memory(MemoryBackend {}),
            BackendKind::Pkcs11 => BackendFile::Pkcs11(Pkcs11Backend {
                module: c.module.unwrap_or_default(),
                token: c.token,
                slot: c.slot,
                serial: c.serial,
                pin_env: c.pin_env,
                pin_file: c.pin_file,
            }),
            BackendKind::Tpm => BackendFile::Tpm(TpmBackend {
                tcti: c.tcti.unwrap_or_default(),
                path: c.path,
            }),
            BackendKind::Keyring => BackendFile::Keyring(KeyringBackend {
                keyring: c.keyring,
                collection: c.collection,
                store: c.store,
            }),
        }
    }
}

impl BackendConfig {
    /// A backend of `kind`, with an optional directory (for `encrypted`, `pem`, `memory`; see
    /// [`BackendConfig::pkcs11`] and [`BackendConfig::tpm`] for the hardware types).
    pub fn new(kind: BackendKind, path: Option<PathBuf>) -> Self {
        BackendConfig {
            kind,
            path,
            module: None,
            token: None,
            slot: None,
            serial: None,
            pin_env: None,
            pin_file: None,
            tcti: None,
            keyring: None,
            collection: None,
            store: None,
        }
    }

    /// A `keyring` backend: `keyring` is `secret-service`, `kernel-user`, `kernel-session` or
    /// `keychain`; `store` its name there (default: the backend's name).
    pub fn keyring(keyring: impl Into<String>, store: Option<String>) -> Self {
        let mut c = BackendConfig::new(BackendKind::Keyring, None);
        c.keyring = Some(keyring.into());
        c.store = store;
        c
    }

    /// The Secret Service collection (its alias) a `keyring` backend uses.
    pub fn with_collection(mut self, collection: impl Into<String>) -> Self {
        self.collection = Some(collection.into());
        self
    }

    /// A `pkcs11` backend: the token `token` of the PKCS#11 module `module`. Without
    /// [`BackendConfig::with_pin_env`] or [`BackendConfig::with_pin_file`], the user PIN is
    /// asked of the [`crate::PassphraseProvider`] each time the backend is opened.
    pub fn pkcs11(module: impl Into<PathBuf>, token: TokenRef) -> Self {
        let mut c = BackendConfig::new(BackendKind::Pkcs11, None);
        c.module = Some(module.into());
        match token {
            TokenRef::Label(l) => c.token = Some(l),
            TokenRef::Slot(s) => c.slot = Some(s),
            TokenRef::Serial(s) => c.serial = Some(s),
        }
        c
    }

    /// Reads the user PIN from the environment variable `var` (only its name is kept).
    pub fn with_pin_env(mut self, var: impl Into<String>) -> Self {
        self.pin_env = Some(var.into());
        self.pin_file = None;
        self
    }

    /// Reads the user PIN from the first line of `file` (which must be mode 0600 or stricter).
    pub fn with_pin_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.pin_file = Some(file.into());
        self.pin_env = None;
        self
    }

    /// A `tpm` backend reached through `tcti`, keeping its wrapped key blobs and metadata in
    /// `path` (default: `backends/NAME` in the home).
    pub fn tpm(tcti: impl Into<String>, path: Option<PathBuf>) -> Self {
        let mut c = BackendConfig::new(BackendKind::Tpm, path);
        c.tcti = Some(tcti.into());
        c
    }

    /// The token a `pkcs11` backend names, if exactly one way of naming it is set.
    pub fn token_ref(&self) -> Option<TokenRef> {
        match (&self.token, self.slot, &self.serial) {
            (Some(l), None, None) => Some(TokenRef::Label(l.clone())),
            (None, Some(s), None) => Some(TokenRef::Slot(s)),
            (None, None, Some(s)) => Some(TokenRef::Serial(s.clone())),
            _ => None,
        }
    }

    /// Checks the fields against the type; the message names the field (`backends.NAME.FIELD`).
    /// A file's declaration cannot hold a field of another type (serde refuses it, see
    /// [`BackendFile`]); one made in code is checked by the same typed form: whatever does not
    /// survive the round trip through it is not a field of this type.
    fn check(&self, name: &str) -> std::result::Result<(), String> {
        let kind = self.kind;
        let field = |f: &str| format!("backends.{name}.{f}");
        let kept = BackendConfig::from(BackendFile::from(self.clone()));
        let fields = [
            ("path", self.path != kept.path),
            (
                "module",
                self.module.is_some() && self.module != kept.module,
            ),
            ("token", self.token != kept.token),
            ("slot", self.slot != kept.slot),
            ("serial", self.serial != kept.serial),
            ("pin_env", self.pin_env != kept.pin_env),
            ("pin_file", self.pin_file != kept.pin_file),
            ("tcti", self.tcti.is_some() && self.tcti != kept.tcti),
            ("keyring", self.keyring != kept.keyring),
            ("collection", self.collection != kept.collection),
            ("store", self.store != kept.store),
        ];
        if let Some((f, _)) = fields.iter().find(|(_, lost)| *lost) {
            return Err(format!(
                "{}: a {kind} backend does not take `{f}`; remove it",
                field(f)
            ));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(format!("{}: may not be empty", field("path")));
        }
        match kind {
            BackendKind::Pkcs11 => self.check_pkcs11(&field),
            BackendKind::Tpm => self.check_tpm(&field),
            BackendKind::Keyring => self.check_keyring(&field),
            _ => Ok(()),
        }
    }

    fn check_keyring(&self, field: &dyn Fn(&str) -> String) -> std::result::Result<(), String> {
        const KINDS: [&str; 4] = [
            "secret-service",
            "kernel-user",
            "kernel-session",
            "keychain",
        ];
        let kind = self.keyring.as_deref().unwrap_or("secret-service");
        if !KINDS.contains(&kind) {
            return Err(format!(
                "{}: '{}' is not a keyring: use secret-service, kernel-user, kernel-session or \
                 keychain",
                field("keyring"),
                kind.escape_debug()
            ));
        }
        if self.collection.is_some() && kind != "secret-service" {
            return Err(format!(
                "{}: only a secret-service keyring has collections; remove it",
                field("collection")
            ));
        }
        for (f, v) in [("collection", &self.collection), ("store", &self.store)] {
            if let Some(v) = v
                && (v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(format!(
                    "{}: '{}' is not a name (letters, digits, - _ .)",
                    field(f),
                    v.escape_debug()
                ));
            }
        }
        Ok(())
    }

    fn check_pkcs11(&self, field: &dyn Fn(&str) -> String) -> std::result::Result<(), String> {
        match &self.module {
            None => {
                return Err(format!(
                    "{}: a pkcs11 backend needs `module`, the path of the token's PKCS#11 \
                     library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)",
                    field("module")
                ));
            }
            Some(m) if m.as_os_str().is_empty() => {
                return Err(format!("{}: may not be empty", field("module")));
            }
            Some(_) => {}
        }
        let named = [
            self.token.is_some(),
            self.slot.is_some(),
            self.serial.is_some(),
        ];
        match named.iter().filter(|n| **n).count() {
            0 => {
                return Err(format!(
                    "{}: a pkcs11 backend needs the token: `token = \"LABEL\"` (or `slot = N`, \
                     or `serial = \"...\"`)",
                    field("token")
                ));
            }
            1 => {}
            _ => {
                return Err(format!(
                    "{}: give only one of `token`, `slot` and `serial`",
                    field("token")
                ));
            }
        }
        for (f, v) in [("token", &self.token), ("serial", &self.serial)] {
            if v.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{}: may not be empty", field(f)));
            }
        }
        if self.pin_env.is_some() && self.pin_file.is_some() {
            return Err(format!(
                "{}: give only one of `pin_env` and `pin_file`",
                field("pin_env")
            ));
        }
        if let Some(var) = &self.pin_env {
            let ok = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(format!(
                    "{}: '{}' is not an environment variable name (A-Z a-z 0-9 _, not starting \
                     with a digit); give the variable's NAME, never the PIN itself",
                    field("pin_env"),
                    var.escape_debug()
                ));
            }
        }
        if self
            .pin_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(format!("{}: may not be empty", field("pin_file")));
        }
        Ok(())
    }

    fn check_tpm(&self, field: &dyn Fn(&str) -> String) -> std::result::Result<(), String> {
        let Some(tcti) = &self.tcti else {
            return Err(format!(
                "{}: a tpm backend needs `tcti`: device:/dev/tpmrm0, swtpm:host=H,port=P, \
                 mssim:host=H,port=P or tabrmd",
                field("tcti")
            ));
        };
        let interface = tcti.split_once(':').map_or(tcti.as_str(), |(i, _)| i);
        if !["device", "swtpm", "mssim", "tabrmd"].contains(&interface) {
            return Err(format!(
                "{}: '{}' is not a TCTI: use device:/dev/tpmrm0, swtpm:host=H,port=P, \
                 mssim:host=H,port=P or tabrmd",
                field("tcti"),
                tcti.escape_debug()
            ));
        }
        #[cfg(feature = "tpm")]
        if let Err(e) = tcti.parse::<keyhaven_hsm_tpm::Tcti>() {
            return Err(format!("{}: {e}", field("tcti")));
        }
        Ok(())
    }
}

/// Reads each `[backends.NAME]` through its typed form ([`BackendFile`]) first, so that a
/// field of another type, a missing one or an unknown type is reported as
/// `backends.NAME.FIELD: ...` with the line of that field (serde's tagged enums lose positions).
fn check_backend_sections(text: &str, origin: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Sections {
        #[serde(default)]
        backends: BTreeMap<String, toml::Spanned<toml::Value>>,
    }
    // Anything else wrong with the file is reported by the full parse, with its line.
    let Ok(sections) = toml::from_str::<Sections>(text) else {
        return Ok(());
    };
    for (name, section) in sections.backends {
        let start = section.span().start.min(text.len());
        let Err(e) = BackendFile::deserialize(section.into_inner()) else {
            continue;
        };
        let message = e.to_string().trim().replace('\n', " ");
        // `unknown field `X``, `missing field `X``, `unknown variant `X`` (the type).
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| message.split_once(p))
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| f.to_owned());
        let unknown_type = message.starts_with("unknown variant `");
        // The field at fault: the one serde names, `type` for an unknown type; for a value of
        // the wrong type serde names none, so the section is named.
        let key = match (&field, unknown_type) {
            (Some(f), _) => Some(f.clone()),
            (None, true) => Some("type".to_owned()),
            (None, false) => None,
        };
        // The line of that key in this section, else of the section itself.
        let at = text[start..]
            .lines()
            .scan(start, |offset, line| {
                let here = *offset;
                *offset += line.len() + 1;
                Some((here, line))
            })
            .take_while(|(here, line)| *here == start || !line.trim_start().starts_with('['))
            .find(|(_, line)| {
                key.as_deref().is_some_and(|k| {
                    line.trim_start()
                        .strip_prefix(k)
                        .is_some_and(|r| r.trim_start().starts_with('='))
                })
            })
            .map_or(start, |(here, _)| here);
        let line = text[..at].matches('\n').count() + 1;
        let message = match message
            .strip_prefix("unknown variant `")
            .and_then(|r| r.split_once('`'))
        {
            Some((kind, _)) => format!(
                "unknown backend type '{kind}' (known: {})",
                BackendKind::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => message,
        };
        // What a missing required field is, as the hand-made declarations say it.
        let hint = match (message.starts_with("missing field"), key.as_deref()) {
            (true, Some("module")) => {
                " (the token's PKCS#11 library, e.g. SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
            }
            (true, Some("tcti")) => {
                " (device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P or tabrmd)"
            }
            _ => "",
        };
        let place = match &key {
            Some(k) => format!("backends.{name}.{k}"),
            None => format!("backends.{name}"),
        };
        return Err(Error::Config {
            origin: format!("{origin} line {line}"),
            message: format!("{place}: {message}{hint}"),
        });
    }
    Ok(())
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
        check_backend_sections(text, origin)?;
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
        Self::load_from(&keyhaven_fs::PlainState, path)
    }

    /// [`Config::load`] through `state` (in a sealed home: checked against the home's
    /// integrity manifest).
    ///
    /// # Errors
    /// As [`Config::load`]; [`crate::CoreError::Corrupt`] if the file was changed outside keyhaven.
    pub fn load_from(state: &dyn keyhaven_fs::StateFiles, path: &Path) -> Result<Self> {
        let Some(bytes) = state.read(path)? else {
            return Ok(Config::default());
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::Config {
            origin: path.display().to_string(),
            message: "not UTF-8 text".into(),
        })?;
        Config::from_toml_str(text, &path.display().to_string())
    }

    /// Validates, then writes the configuration atomically (temporary file, fsync, rename,
    /// fsync of the directory) with mode 0600.
    ///
    /// # Errors
    /// [`Error::Config`] if invalid, [`Error::Io`] if it cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_to(&keyhaven_fs::PlainState, path)
    }

    /// [`Config::save`] through `state` (in a sealed home: recorded in the home's integrity
    /// manifest).
    ///
    /// # Errors
    /// As [`Config::save`].
    pub fn save_to(&self, state: &dyn keyhaven_fs::StateFiles, path: &Path) -> Result<()> {
        self.validate()?;
        let mut text = String::from(
            "# keyhaven configuration: see `keyhaven backend --help`. Written by keyhaven; \
             comments are not kept.\n",
        );
        text.push_str(&self.to_toml_string()?);
        Ok(state.write(path, text.as_bytes())?)
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
        if let Err(message) = crate::lifecycle::validate(self) {
            return bad(message);
        }
        let known = || self.backend_names().join(", ");
        for (name, backend) in &self.backends {
            if let Err(Error::Config { message, .. }) = validate_backend_name(name) {
                return bad(format!("backends.{name}: {message}"));
            }
            if let Err(message) = backend.check(name) {
                return bad(message);
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

    /// The directory of a backend that has one (a file backend's store, a TPM backend's
    /// metadata): its `path` resolved against `home`, or `HOME/backends/NAME`. `None` for
    /// backends without a directory or unknown names.
    pub fn backend_path(&self, home: &Path, name: &str) -> Option<PathBuf> {
        let backend = self.backends.get(name)?;
        if !backend.kind.has_path() {
            return None;
        }
        Some(match &backend.path {
            Some(p) => resolve_path(home, p),
            None => home.join(BACKENDS_DIR).join(name),
        })
    }

    /// Where a backend's keys are, for humans: its directory, "process memory (ephemeral)",
    /// `token 'L' of MODULE`, or `DIR (TCTI T)`. `None` for unknown names.
    pub fn backend_location(&self, home: &Path, name: &str) -> Option<String> {
        let backend = self.backends.get(name)?;
        let dir = self.backend_path(home, name);
        Some(match backend.kind {
            BackendKind::Memory => "process memory (ephemeral)".to_owned(),
            BackendKind::Pkcs11 => {
                let token = backend
                    .token_ref()
                    .map_or_else(|| "a token".to_owned(), |t| t.to_string());
                let module = backend
                    .module
                    .as_deref()
                    .map(|m| resolve_path(home, m).display().to_string())
                    .unwrap_or_default();
                format!("{token} of {module}")
            }
            BackendKind::Tpm => format!(
                "{} (TCTI {})",
                dir.map(|d| d.display().to_string()).unwrap_or_default(),
                backend.tcti.as_deref().unwrap_or("?")
            ),
            BackendKind::Keyring => {
                let kind = backend.keyring.as_deref().unwrap_or("secret-service");
                let store = backend.store.as_deref().unwrap_or(name);
                match kind {
                    "secret-service" => format!(
                        "Secret Service collection '{}' (store '{store}')",
                        backend.collection.as_deref().unwrap_or("default")
                    ),
                    "kernel-user" => format!("kernel user keyring (store '{store}')"),
                    "kernel-session" => format!("kernel session keyring (store '{store}')"),
                    other => format!("{other} (store '{store}')"),
                }
            }
            _ => dir.map(|d| d.display().to_string()).unwrap_or_default(),
        })
    }
}

/// A configured path: absolute as given, relative against the home.
pub(crate) fn resolve_path(home: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        home.join(p)
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "none".into() } else { s }
}
