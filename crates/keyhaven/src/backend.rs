//! The backend registry: every backend type the facade knows, what it needs and how it opens.
//!
//! Adding a backend type is one variant of [`BackendKind`] plus its row in each `match` below
//! (name, cargo feature, protection, whether it lives in a directory) and its arm in
//! [`open_store`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::passphrase::PassphraseProvider;
use crate::{CoreError, Error, KeyStore, Protection, Result};

/// A type of backend that can be declared in `keyhaven.toml` (`type = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum BackendKind {
    /// The encrypted file store (Argon2id + AES-256-GCM): the default for new homes.
    Encrypted,
    /// The PEM directory store: plain files `openssl` reads. The weakest protection.
    Pem,
    /// The in-memory store: ephemeral, its keys vanish when the process exits.
    Memory,
}

impl BackendKind {
    /// Every backend type, in a stable order.
    pub const ALL: &'static [BackendKind] = &[
        BackendKind::Encrypted,
        BackendKind::Pem,
        BackendKind::Memory,
    ];

    /// The name used in `keyhaven.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Encrypted => "encrypted",
            BackendKind::Pem => "pem",
            BackendKind::Memory => "memory",
        }
    }

    /// The cargo feature of the `keyhaven` crate that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Encrypted | BackendKind::Pem => "file",
            BackendKind::Memory => "memory",
        }
    }

    /// Whether this build of keyhaven includes the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Encrypted | BackendKind::Pem => cfg!(feature = "file"),
            BackendKind::Memory => cfg!(feature = "memory"),
        }
    }

    /// The protection of keys this backend generates.
    pub fn protection(self) -> Protection {
        match self {
            BackendKind::Encrypted | BackendKind::Memory => Protection::SoftwareEncrypted,
            BackendKind::Pem => Protection::SoftwarePlain,
        }
    }

    /// Whether the backend keeps its keys in a directory (`path = ...`). Only such file
    /// backends can serve as the fallback.
    pub fn is_file(self) -> bool {
        matches!(self, BackendKind::Encrypted | BackendKind::Pem)
    }

    /// Whether the backend forgets its keys when the process exits.
    pub fn is_ephemeral(self) -> bool {
        matches!(self, BackendKind::Memory)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        BackendKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = BackendKind::ALL.iter().map(|k| k.name()).collect();
                CoreError::InvalidInput(format!(
                    "unknown backend type '{s}' (known types: {})",
                    known.join(", ")
                ))
            })
    }
}

impl TryFrom<String> for BackendKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map_err(|e: CoreError| match e {
            CoreError::InvalidInput(m) => m,
            other => other.to_string(),
        })
    }
}

impl From<BackendKind> for String {
    fn from(k: BackendKind) -> String {
        k.name().to_owned()
    }
}

/// Maps a key id to the file holding its private key (PEM store).
type KeyFiles = Arc<dyn Fn(&crate::KeyId) -> PathBuf + Send + Sync>;

/// An opened backend: its configured name and type, where it is, and the store itself.
#[derive(Clone)]
pub struct Backend {
    name: String,
    kind: BackendKind,
    location: String,
    store: Arc<dyn KeyStore>,
    key_files: Option<KeyFiles>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Wraps an opened store.
    pub fn new(
        name: impl Into<String>,
        kind: BackendKind,
        location: impl Into<String>,
        store: Arc<dyn KeyStore>,
    ) -> Self {
        Backend {
            name: name.into(),
            kind,
            location: location.into(),
            store,
            key_files: None,
        }
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend type.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Where the keys are, for humans (a directory, "process memory", ...).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The store, to use through the [`KeyStore`] trait.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// For backends that keep each private key in a file `openssl` reads (the PEM store): that
    /// file's path.
    pub fn private_key_file(&self, id: &crate::KeyId) -> Option<PathBuf> {
        self.key_files.as_ref().map(|f| f(id))
    }
}

/// Whether to create a missing store or report it as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Open only a store that exists (listing, lookups): a missing store is `None`.
    Existing,
    /// Create the store if it is missing (generate, import, backend add).
    Create,
}

/// What [`open_store`] needs to know.
pub(crate) struct OpenRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: BackendKind,
    /// The store directory, for file backends.
    pub(crate) path: Option<&'a Path>,
    pub(crate) home: &'a Path,
    pub(crate) mode: OpenMode,
    pub(crate) passphrases: &'a dyn PassphraseProvider,
}

/// Opens (or creates) one backend. `Ok(None)` when the store does not exist and `mode` is
/// [`OpenMode::Existing`].
pub(crate) fn open_store(req: &OpenRequest<'_>) -> Result<Option<Backend>> {
    let name = req.name;
    if !req.kind.is_compiled() {
        return Err(Error::backend(
            name,
            CoreError::Unavailable {
                backend: name.to_owned(),
                reason: format!(
                    "this keyhaven was built without {} backends (enable the '{}' feature)",
                    req.kind,
                    req.kind.feature()
                ),
            },
        ));
    }
    match req.kind {
        BackendKind::Memory => open_memory(req),
        BackendKind::Pem | BackendKind::Encrypted => open_file(req),
    }
}

#[cfg(feature = "memory")]
fn open_memory(req: &OpenRequest<'_>) -> Result<Option<Backend>> {
    let store =
        keyhaven_store_memory::MemoryStore::new().map_err(|e| Error::backend(req.name, e))?;
    Ok(Some(Backend::new(
        req.name,
        BackendKind::Memory,
        "process memory (ephemeral)",
        Arc::new(store),
    )))
}

#[cfg(not(feature = "memory"))]
fn open_memory(_req: &OpenRequest<'_>) -> Result<Option<Backend>> {
    Err(Error::NoBackend)
}

#[cfg(feature = "file")]
use file::open_file;

#[cfg(feature = "file")]
mod file {
    use std::path::Path;
    use std::sync::Arc;

    use keyhaven_store_file::{EncryptedStore, KdfParams, PemStore, StoreKind};

    use super::{Backend, BackendKind, OpenMode, OpenRequest};
    use crate::passphrase::{PassphrasePurpose, PassphraseRequest};
    use crate::{CoreError, Error, Result};

    /// Whether the store directory may be created: inside the home we create what is missing; a
    /// directory elsewhere whose parent is missing (an unmounted drive) makes the backend
    /// unavailable instead.
    fn may_create(name: &str, dir: &Path, home: &Path) -> Result<()> {
        if dir.starts_with(home) {
            if let Some(parent) = dir.parent() {
                crate::fsutil::create_private_dir_all(parent)?;
            }
            return Ok(());
        }
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => {
                Err(Error::backend(
                    name,
                    CoreError::Unavailable {
                        backend: name.to_owned(),
                        reason: format!(
                            "directory {} does not exist (is the drive mounted?)",
                            parent.display()
                        ),
                    },
                ))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn open_file(req: &OpenRequest<'_>) -> Result<Option<Backend>> {
        let name = req.name;
        let err = |e| Error::backend(name, e);
        let Some(dir) = req.path else {
            return Err(Error::Config {
                origin: "configuration".into(),
                message: format!("backends.{name}: a {} backend needs a path", req.kind),
            });
        };
        let location = dir.display().to_string();
        let found = keyhaven_store_file::detect(dir).map_err(err)?;
        let mismatch = |found: &str| {
            Err(Error::backend(
                name,
                CoreError::InvalidInput(format!(
                    "{} holds a {found} store but the backend is declared as type '{}'; fix its \
                     type in keyhaven.toml",
                    dir.display(),
                    req.kind
                )),
            ))
        };
        let request = |purpose| PassphraseRequest {
            backend: name.to_owned(),
            location: dir.to_owned(),
            purpose,
        };
        match (req.kind, found) {
            (BackendKind::Pem, Some(StoreKind::Pem)) => {
                let store = Arc::new(PemStore::open(dir).map_err(err)?);
                Ok(Some(pem_backend(name, location, store)))
            }
            (BackendKind::Encrypted, Some(StoreKind::Encrypted)) => {
                let pass = req
                    .passphrases
                    .passphrase(&request(PassphrasePurpose::Unlock))
                    .map_err(err)?;
                let store = EncryptedStore::open(dir, &pass).map_err(err)?;
                Ok(Some(Backend::new(
                    name,
                    BackendKind::Encrypted,
                    location,
                    Arc::new(store),
                )))
            }
            (BackendKind::Pem, Some(StoreKind::Encrypted)) => mismatch("encrypted"),
            (BackendKind::Encrypted, Some(StoreKind::Pem)) => mismatch("pem"),
            (_, None) => {
                if !dir.exists() && !dir.starts_with(req.home) {
                    // A directory outside the home that is gone: unavailable, whatever the mode.
                    may_create(name, dir, req.home)?;
                }
                if req.mode == OpenMode::Existing {
                    return Ok(None);
                }
                may_create(name, dir, req.home)?;
                if req.kind == BackendKind::Pem {
                    let store = Arc::new(PemStore::open_or_create(dir).map_err(err)?);
                    return Ok(Some(pem_backend(name, location, store)));
                }
                let pass = req
                    .passphrases
                    .passphrase(&request(PassphrasePurpose::Create))
                    .map_err(err)?;
                let store = match EncryptedStore::create(dir, &pass, KdfParams::default()) {
                    // Another process created it meanwhile: open it with the same passphrase.
                    Err(CoreError::AlreadyExists(_)) => EncryptedStore::open(dir, &pass),
                    other => other,
                }
                .map_err(err)?;
                Ok(Some(Backend::new(
                    name,
                    BackendKind::Encrypted,
                    location,
                    Arc::new(store),
                )))
            }
            (BackendKind::Memory, _) => Err(Error::NoBackend),
        }
    }

    fn pem_backend(
        name: &str,
        location: String,
        store: Arc<keyhaven_store_file::PemStore>,
    ) -> Backend {
        let files = Arc::clone(&store);
        let mut backend = Backend::new(name, BackendKind::Pem, location, store);
        backend.key_files = Some(Arc::new(move |id| files.private_key_path(id)));
        backend
    }
}

#[cfg(not(feature = "file"))]
fn open_file(req: &OpenRequest<'_>) -> Result<Option<Backend>> {
    let _ = (req.path, req.home, req.mode, req.passphrases);
    Err(Error::NoBackend)
}
