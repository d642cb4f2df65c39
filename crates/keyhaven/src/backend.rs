//! The backend registry: every backend type the facade knows, what it needs and how it opens.
//!
//! Adding a backend type is one variant of [`BackendKind`] plus its row in each `match` below
//! (name, cargo feature, protection, whether it lives in a directory) and its arm in
//! [`open_store`].

use std::fmt;
use std::path::Path;
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
    /// A PKCS#11 token (an HSM, a smart card, SoftHSM2): keys are generated on the token and
    /// never leave it.
    Pkcs11,
    /// A TPM 2.0 (or swtpm): keys are created inside the TPM and never leave it; keyhaven keeps
    /// their TPM-wrapped blobs in a directory.
    Tpm,
    /// The operating system's keyring (Secret Service, kernel keyring, macOS Keychain): software
    /// keys sealed by keyhaven under the passphrase, kept in the keyring.
    Keyring,
}

impl BackendKind {
    /// Every backend type, in a stable order.
    pub const ALL: &'static [BackendKind] = &[
        BackendKind::Encrypted,
        BackendKind::Pem,
        BackendKind::Memory,
        BackendKind::Pkcs11,
        BackendKind::Tpm,
        BackendKind::Keyring,
    ];

    /// The name used in `keyhaven.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Encrypted => "encrypted",
            BackendKind::Pem => "pem",
            BackendKind::Memory => "memory",
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Tpm => "tpm",
            BackendKind::Keyring => "keyring",
        }
    }

    /// The cargo feature of the `keyhaven` crate that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Encrypted | BackendKind::Pem => "file",
            BackendKind::Memory => "memory",
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Tpm => "tpm",
            BackendKind::Keyring => "keyring",
        }
    }

    /// Whether this build of keyhaven includes the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Encrypted | BackendKind::Pem => cfg!(feature = "file"),
            BackendKind::Memory => cfg!(feature = "memory"),
            BackendKind::Pkcs11 => cfg!(feature = "pkcs11"),
            BackendKind::Tpm => cfg!(feature = "tpm"),
            BackendKind::Keyring => cfg!(feature = "keyring"),
        }
    }

    /// The protection of keys this backend generates.
    pub fn protection(self) -> Protection {
        match self {
            BackendKind::Encrypted | BackendKind::Memory | BackendKind::Keyring => {
                Protection::SoftwareEncrypted
            }
            BackendKind::Pem => Protection::SoftwarePlain,
            BackendKind::Pkcs11 | BackendKind::Tpm => Protection::Hardware,
        }
    }

    /// Whether the backend keeps its keys in files in a directory (`path = ...`). Only such
    /// file backends can serve as the fallback.
    pub fn is_file(self) -> bool {
        matches!(self, BackendKind::Encrypted | BackendKind::Pem)
    }

    /// Whether the backend takes a directory (`path = ...`): the file backends' stores and the
    /// TPM backend's metadata (its TPM-wrapped key blobs).
    pub fn has_path(self) -> bool {
        matches!(
            self,
            BackendKind::Encrypted | BackendKind::Pem | BackendKind::Tpm
        )
    }

    /// Whether the backend is a device keeping its keys inside it (`pkcs11`, `tpm`): its keys
    /// cannot be exported, and it needs device settings to be declared.
    pub fn is_hardware(self) -> bool {
        matches!(self, BackendKind::Pkcs11 | BackendKind::Tpm)
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

/// An opened backend: its configured name and type, where it is, and the store itself.
#[derive(Clone)]
pub struct Backend {
    name: String,
    kind: BackendKind,
    location: String,
    store: Arc<dyn KeyStore>,
    /// The store without the facade's decorators (audit, access control, revocation).
    raw: Arc<dyn KeyStore>,
    /// For an encrypted store: its id and the secret it derives for the home's integrity key.
    anchor: Option<Arc<AnchorSecret>>,
    /// The same store when it is a PKCS#11 token: for what the home asks of the device itself
    /// (the token key anchoring the home's integrity, the doctor's token report), never for key
    /// operations, which all go through the [`KeyStore`] contract.
    #[cfg(feature = "pkcs11")]
    pkcs11: Option<Arc<keyhaven_hsm_pkcs11::Pkcs11Store>>,
    /// The same store when it is a TPM: for the home's rollback counter and the doctor's TPM
    /// report, never for key operations (those go through the [`KeyStore`] contract).
    #[cfg(feature = "tpm")]
    tpm: Option<Arc<keyhaven_hsm_tpm::TpmStore>>,
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
            raw: store.clone(),
            store,
            anchor: None,
            #[cfg(feature = "pkcs11")]
            pkcs11: None,
            #[cfg(feature = "tpm")]
            tpm: None,
        }
    }

    /// What this backend's store contributes to the home's integrity key, if it can anchor one
    /// (encrypted stores).
    pub(crate) fn anchor_secret(&self) -> Option<&Arc<AnchorSecret>> {
        self.anchor.as_ref()
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

    /// The store, to use through the [`KeyStore`] trait: with the facade's decorators (audit,
    /// access control, revocation checks) when it came from a [`crate::KeyManager`].
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The store without the facade's decorators.
    pub(crate) fn store_raw(&self) -> &Arc<dyn KeyStore> {
        &self.raw
    }

    /// The same backend with `store` (the decorated stack over this one) in front.
    pub(crate) fn with_store(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.store = store;
        self
    }

    /// The PKCS#11 store, when this is a `pkcs11` backend.
    #[cfg(feature = "pkcs11")]
    pub(crate) fn pkcs11_store(&self) -> Option<&Arc<keyhaven_hsm_pkcs11::Pkcs11Store>> {
        self.pkcs11.as_ref()
    }

    /// The TPM store, when this is a `tpm` backend.
    #[cfg(feature = "tpm")]
    pub(crate) fn tpm_store(&self) -> Option<&Arc<keyhaven_hsm_tpm::TpmStore>> {
        self.tpm.as_ref()
    }
}

/// A store's id and the 32-byte secret it derived for the home's integrity key (only someone
/// who unlocked the store has it). Never printed.
pub(crate) struct AnchorSecret {
    pub(crate) store_id: String,
    pub(crate) key: zeroize::Zeroizing<[u8; 32]>,
}

impl fmt::Debug for AnchorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnchorSecret")
            .field("store_id", &self.store_id)
            .finish_non_exhaustive()
    }
}

/// What the encrypted store derives the integrity key for (HKDF info).
pub(crate) const INTEGRITY_PURPOSE: &str = "keyhaven home integrity manifest v1";

/// The backend types that keep their keys in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Pem,
    Encrypted,
}

/// What opening a backend needs to know.
pub(crate) struct OpenRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: BackendKind,
    /// The whole declaration (device settings).
    #[cfg_attr(not(any(feature = "pkcs11", feature = "tpm")), allow(dead_code))]
    pub(crate) config: &'a crate::BackendConfig,
    /// The directory, for file and TPM backends.
    pub(crate) path: Option<&'a Path>,
    pub(crate) home: &'a Path,
    /// The home's state files (authenticated once the home is sealed).
    #[cfg_attr(not(feature = "keyring"), allow(dead_code))]
    pub(crate) state: Arc<dyn keyhaven_fs::StateFiles>,
    pub(crate) passphrases: &'a dyn PassphraseProvider,
    /// Opened before the configuration is authenticated (the home's anchor): nothing the
    /// configuration says about where a secret comes from is used (a PIN file or variable the
    /// configuration names could hold a PIN someone else chose); the provider is asked.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    pub(crate) unauthenticated: bool,
}

/// The error for a backend type this build does not include.
#[cfg(not(all(
    feature = "file",
    feature = "memory",
    feature = "pkcs11",
    feature = "tpm",
    feature = "keyring"
)))]
fn not_compiled(req: &OpenRequest<'_>) -> Error {
    Error::backend(
        req.name,
        CoreError::Unavailable {
            backend: req.name.to_owned(),
            reason: format!(
                "this keyhaven was built without {} backends (enable the '{}' feature)",
                req.kind,
                req.kind.feature()
            ),
        },
    )
}

/// Opens a backend's existing store, creating nothing: `Ok(None)` when a file (or TPM)
/// backend's directory does not exist yet. For lookups and every operation on existing keys.
pub(crate) fn open_existing(req: &OpenRequest<'_>) -> Result<Option<Backend>> {
    match req.kind {
        BackendKind::Memory => open_memory(req).map(Some),
        BackendKind::Pem => open_file(req, FileKind::Pem),
        BackendKind::Encrypted => open_file(req, FileKind::Encrypted),
        BackendKind::Pkcs11 => open_pkcs11(req).map(Some),
        BackendKind::Tpm => open_tpm(req, false),
        BackendKind::Keyring => open_keyring(req, false),
    }
}

/// Opens a backend's store, creating it if it does not exist yet (an encrypted store asks for a
/// new passphrase; a TPM backend gets its metadata directory). For new keys and `backend add`
/// only.
pub(crate) fn open_or_create(req: &OpenRequest<'_>) -> Result<Backend> {
    match req.kind {
        BackendKind::Memory => open_memory(req),
        BackendKind::Pem => create_file(req, FileKind::Pem),
        BackendKind::Encrypted => create_file(req, FileKind::Encrypted),
        BackendKind::Pkcs11 => open_pkcs11(req),
        BackendKind::Tpm => open_tpm(req, true)?.ok_or_else(|| {
            Error::backend(
                req.name,
                CoreError::NotFound(format!("the metadata directory of backend '{}'", req.name)),
            )
        }),
        BackendKind::Keyring => open_keyring(req, true)?.ok_or_else(|| {
            Error::backend(
                req.name,
                CoreError::NotFound(format!("the keyring store of backend '{}'", req.name)),
            )
        }),
    }
}

#[cfg(feature = "keyring")]
pub(crate) use keyring::{keyring_of, open_keyring};

#[cfg(feature = "keyring")]
mod keyring {
    use std::sync::Arc;

    use keyhaven_store_keyring::{Keyring, KeyringConfig, KeyringStore};

    use super::{Backend, BackendKind, OpenRequest};
    use crate::passphrase::{PassphrasePurpose, PassphraseRequest};
    use crate::{BackendConfig, CoreError, Error, Result};

    /// The keyring a `keyring` backend's declaration names.
    pub(crate) fn keyring_of(config: &BackendConfig) -> std::result::Result<Keyring, CoreError> {
        match config.keyring.as_deref().unwrap_or("secret-service") {
            "secret-service" => Ok(Keyring::SecretService {
                collection: config
                    .collection
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                bus: None,
            }),
            #[cfg(target_os = "linux")]
            "kernel-user" => Ok(Keyring::Kernel(keyhaven_store_keyring::KernelKeyring::User)),
            #[cfg(target_os = "linux")]
            "kernel-session" => Ok(Keyring::Kernel(
                keyhaven_store_keyring::KernelKeyring::Session,
            )),
            #[cfg(target_os = "macos")]
            "keychain" => Ok(Keyring::Keychain),
            other => Err(CoreError::Unavailable {
                backend: "keyring".into(),
                reason: format!("the {other} keyring does not exist on this platform"),
            }),
        }
    }

    /// Opens the backend's store in its keyring; `None` when the keyring holds none yet and
    /// `create` is false. The lock file `backends/NAME.keyring.lock` in the home serialises
    /// changes between processes.
    pub(crate) fn open_keyring(req: &OpenRequest<'_>, create: bool) -> Result<Option<Backend>> {
        let name = req.name;
        let err = |e| Error::backend(name, e);
        let keyring = keyring_of(req.config).map_err(err)?;
        let store = req.config.store.clone().unwrap_or_else(|| name.to_owned());
        let dir = req.home.join(crate::config::BACKENDS_DIR);
        crate::fs::create_private_dir(req.home)?;
        crate::fs::create_private_dir(&dir)?;
        // The lock serialises changes between processes; the generation file (a state file of
        // the home, authenticated when it is sealed) lets every process notice an index put
        // back from an older copy.
        let config = KeyringConfig::new(keyring, store)
            .with_lock_file(dir.join(format!("{name}.keyring.lock")))
            .with_generation_file(
                dir.join(format!("{name}.keyring-generation")),
                req.state.clone(),
            );
        let exists = KeyringStore::exists(&config).map_err(err)?;
        if !exists && !create {
            return Ok(None);
        }
        let purpose = if exists {
            PassphrasePurpose::Unlock
        } else {
            PassphrasePurpose::Create
        };
        let request = PassphraseRequest::new(name, &dir, purpose);
        let pass = req.passphrases.passphrase(&request).map_err(err)?;
        let store = KeyringStore::open(&config, &pass).map_err(err)?;
        let location = store.info().location;
        Ok(Some(Backend::new(
            name,
            BackendKind::Keyring,
            location,
            Arc::new(store),
        )))
    }

    use keyhaven_core::KeyStore as _;
}

#[cfg(not(feature = "keyring"))]
fn open_keyring(req: &OpenRequest<'_>, _create: bool) -> Result<Option<Backend>> {
    Err(not_compiled(req))
}

/// The directory of a backend that needs one.
#[cfg(any(feature = "file", feature = "tpm"))]
fn store_dir<'a>(req: &OpenRequest<'a>) -> Result<&'a Path> {
    let dir = req.path.ok_or_else(|| Error::Config {
        origin: "configuration".into(),
        message: format!("backends.{}: a {} backend needs a path", req.name, req.kind),
    })?;
    // Inside the home, the store is never reached through a linked directory (nor is it one).
    keyhaven_fs::refuse_linked_dirs(req.home, &dir.join("keyhaven-store.json"))
        .map_err(|e| Error::backend(req.name, e))?;
    Ok(dir)
}

/// A directory outside the home whose parent is missing (an unmounted drive) makes the backend
/// unavailable.
#[cfg(any(feature = "file", feature = "tpm"))]
fn check_mounted(name: &str, dir: &Path, home: &Path) -> Result<()> {
    if dir.starts_with(home) || dir.exists() {
        return Ok(());
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => Err(Error::backend(
            name,
            CoreError::Unavailable {
                backend: name.to_owned(),
                reason: format!(
                    "directory {} does not exist (is the drive mounted?)",
                    parent.display()
                ),
            },
        )),
        _ => Ok(()),
    }
}

#[cfg(feature = "memory")]
fn open_memory(req: &OpenRequest<'_>) -> Result<Backend> {
    let store =
        keyhaven_store_memory::MemoryStore::new().map_err(|e| Error::backend(req.name, e))?;
    Ok(Backend::new(
        req.name,
        BackendKind::Memory,
        "process memory (ephemeral)",
        Arc::new(store),
    ))
}

#[cfg(not(feature = "memory"))]
fn open_memory(req: &OpenRequest<'_>) -> Result<Backend> {
    Err(not_compiled(req))
}

#[cfg(feature = "file")]
use file::{create_file, open_file};

#[cfg(feature = "file")]
mod file {
    use std::path::Path;
    use std::sync::Arc;

    use keyhaven_store_file::{EncryptedStore, KdfParams, PemStore, StoreKind};

    use super::{Backend, BackendKind, FileKind, OpenRequest, check_mounted, store_dir};
    use crate::passphrase::{PassphrasePurpose, PassphraseRequest};
    use crate::{CoreError, Error, Result};

    fn request(req: &OpenRequest<'_>, dir: &Path, purpose: PassphrasePurpose) -> PassphraseRequest {
        PassphraseRequest::new(req.name, dir, purpose)
    }

    pub(super) fn open_file(req: &OpenRequest<'_>, want: FileKind) -> Result<Option<Backend>> {
        let name = req.name;
        let err = |e| Error::backend(name, e);
        let dir = store_dir(req)?;
        check_mounted(name, dir, req.home)?;
        let Some(found) = keyhaven_store_file::detect(dir).map_err(err)? else {
            // A store directory that holds keys but lost its header is damage, not "no store
            // yet" (which would let a new, empty store be made over it).
            if dir.join("keys").is_dir() {
                return Err(err(CoreError::corrupt(
                    dir.join("keyhaven-store.json").display().to_string(),
                    "it is missing, but the store's keys are there: restore it from a backup",
                )));
            }
            return Ok(None);
        };
        let location = dir.display().to_string();
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
        match (want, found) {
            (FileKind::Pem, StoreKind::Pem) => {
                let store = Arc::new(PemStore::open(dir).map_err(err)?);
                Ok(Some(pem_backend(name, location, store)))
            }
            (FileKind::Encrypted, StoreKind::Encrypted) => {
                let pass = req
                    .passphrases
                    .passphrase(&request(req, dir, PassphrasePurpose::Unlock))
                    .map_err(err)?;
                let store = EncryptedStore::open(dir, &pass).map_err(err)?;
                encrypted_backend(name, location, store).map(Some)
            }
            (FileKind::Pem, StoreKind::Encrypted) => mismatch("encrypted"),
            (FileKind::Encrypted, StoreKind::Pem) => mismatch("pem"),
        }
    }

    pub(super) fn create_file(req: &OpenRequest<'_>, want: FileKind) -> Result<Backend> {
        if let Some(b) = open_file(req, want)? {
            return Ok(b);
        }
        let name = req.name;
        let err = |e| Error::backend(name, e);
        let dir = store_dir(req)?;
        // The passphrase first: a refused one (too weak, mistyped twice) leaves nothing behind.
        let pass = match want {
            FileKind::Encrypted => Some(
                req.passphrases
                    .passphrase(&request(req, dir, PassphrasePurpose::Create))
                    .map_err(err)?,
            ),
            FileKind::Pem => None,
        };
        // Inside the home we create what is missing, privately.
        if dir.starts_with(req.home)
            && let Some(parent) = dir.parent()
        {
            crate::fs::create_private_dir(parent)?;
        }
        let location = dir.display().to_string();
        match (want, pass) {
            (FileKind::Pem, _) => {
                let store = Arc::new(PemStore::open_or_create(dir).map_err(err)?);
                Ok(pem_backend(name, location, store))
            }
            (FileKind::Encrypted, None) => Err(err(CoreError::Locked(format!(
                "no passphrase for the new store of backend '{name}'"
            )))),
            (FileKind::Encrypted, Some(pass)) => {
                let store = match EncryptedStore::create(dir, &pass, KdfParams::default()) {
                    // Another process created it meanwhile: open it with the same passphrase.
                    Err(e) if e.is(crate::ErrorKind::AlreadyExists) => {
                        EncryptedStore::open(dir, &pass)
                    }
                    other => other,
                }
                .map_err(err)?;
                encrypted_backend(name, location, store)
            }
        }
    }

    fn encrypted_backend(name: &str, location: String, store: EncryptedStore) -> Result<Backend> {
        let key = store
            .derive_secret(super::INTEGRITY_PURPOSE)
            .map_err(|e| Error::backend(name, e))?;
        let anchor = super::AnchorSecret {
            store_id: store.store_id().to_owned(),
            key,
        };
        let mut backend = Backend::new(name, BackendKind::Encrypted, location, Arc::new(store));
        backend.anchor = Some(Arc::new(anchor));
        Ok(backend)
    }

    fn pem_backend(name: &str, location: String, store: Arc<PemStore>) -> Backend {
        Backend::new(name, BackendKind::Pem, location, store as _)
    }
}

#[cfg(not(feature = "file"))]
fn open_file(req: &OpenRequest<'_>, _want: FileKind) -> Result<Option<Backend>> {
    let _ = (req.path, req.home, req.passphrases);
    Err(not_compiled(req))
}

#[cfg(not(feature = "file"))]
fn create_file(req: &OpenRequest<'_>, _want: FileKind) -> Result<Backend> {
    Err(not_compiled(req))
}

#[cfg(feature = "pkcs11")]
pub(crate) use pkcs11::{open_pkcs11, target as pkcs11_target};

#[cfg(feature = "pkcs11")]
mod pkcs11 {
    use std::path::PathBuf;
    use std::sync::Arc;

    use keyhaven_hsm_pkcs11::{
        Pkcs11Config, Pkcs11Store, TokenReport, TokenSelector, pin_from_env, pin_from_file,
    };

    use super::{Backend, BackendKind, OpenRequest};
    use crate::config::{TokenRef, resolve_path};
    use crate::passphrase::PassphraseRequest;
    use crate::{BackendConfig, CoreError, Error, Result};

    /// The module (resolved against the home) and the token selector of a `pkcs11` backend.
    pub(crate) fn target(
        name: &str,
        config: &BackendConfig,
        home: &std::path::Path,
    ) -> Result<(PathBuf, TokenSelector)> {
        let missing = |field: &str| Error::Config {
            origin: "configuration".into(),
            message: format!("backends.{name}.{field}: missing (a pkcs11 backend needs it)"),
        };
        let module = config.module.as_deref().ok_or_else(|| missing("module"))?;
        let selector = match config.token_ref().ok_or_else(|| missing("token"))? {
            TokenRef::Label(l) => TokenSelector::Label(l),
            TokenRef::Slot(s) => TokenSelector::SlotId(s),
            TokenRef::Serial(s) => TokenSelector::Serial(s),
        };
        Ok((resolve_path(home, module), selector))
    }

    /// The environment variable that lets keyhaven load PKCS#11 modules the user (not root)
    /// installed: the environment is not in reach of someone who can only write the home.
    pub(crate) const ALLOW_USER_MODULES: &str = "KEYHAVEN_ALLOW_USER_MODULES";

    /// Code keyhaven loads must be as trustworthy as keyhaven itself: the module (and the
    /// directories above it) must belong to root and be writable by no one else, since a
    /// module the user owns is one that anyone who can write the user's files could have
    /// replaced (`KEYHAVEN_ALLOW_USER_MODULES=1` accepts the user's own, not writable by
    /// others). A missing module is left to the probe (the backend is then unavailable).
    /// Returns the path to load: the module's real path, so what was checked is what loads.
    fn check_module(module: &std::path::Path) -> std::result::Result<PathBuf, CoreError> {
        let Ok(meta) = std::fs::metadata(module) else {
            return Ok(module.to_owned());
        };
        let real = std::fs::canonicalize(module)
            .map_err(|e| CoreError::io(format!("resolve {}", module.display()), e))?;
        let user_modules = std::env::var(ALLOW_USER_MODULES).is_ok_and(|v| v == "1");
        if !user_modules && !crate::integrity::system_module(&real) {
            return Err(CoreError::PermissionDenied(format!(
                "the PKCS#11 module {} does not belong to root (it, or a directory above it, is \
                 owned or writable by another user): someone who can write your files could \
                 have replaced it, so keyhaven refuses to load it. Use a module installed by \
                 the system (e.g. /usr/lib/softhsm/libsofthsm2.so), or set \
                 {ALLOW_USER_MODULES}=1 to load your own",
                module.display()
            )));
        }
        keyhaven_fs::check_owner(module, &meta)?;
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o022 != 0 {
            return Err(CoreError::PermissionDenied(format!(
                "the PKCS#11 module {} can be changed by other users; keyhaven refuses to load \
                 it. Fix: chmod go-w {}",
                module.display(),
                module.display()
            )));
        }
        if let Some(dir) = real.parent() {
            keyhaven_fs::check_ancestors(dir)?;
        }
        Ok(real)
    }

    /// Opens the token: first reached without a PIN (a missing module or token is
    /// `Unavailable`, so the fallback rule applies and nobody is asked for a PIN in vain), then
    /// logged in to with the PIN from `pin_env`, `pin_file`, or the passphrase provider. The PIN
    /// is held as a `SecretString` only, and never logged or written.
    pub(crate) fn open_pkcs11(req: &OpenRequest<'_>) -> Result<Backend> {
        let name = req.name;
        let c = req.config;
        let (module, selector) = target(name, c, req.home)?;
        let module = check_module(&module).map_err(|e| Error::backend(name, e))?;
        let report = TokenReport::probe(&module, &selector).map_err(|e| Error::backend(name, e))?;
        let (pin, origin) = if req.unauthenticated {
            let request = PassphraseRequest::token_pin(name, &module, &report.label);
            (
                req.passphrases.passphrase(&request),
                "the PIN prompt (or KEYHAVEN_TOKEN_PIN): the token anchors the home, so its PIN \
                 never comes from the configuration"
                    .to_owned(),
            )
        } else if let Some(var) = &c.pin_env {
            (pin_from_env(var), format!("the environment variable {var}"))
        } else if let Some(file) = &c.pin_file {
            let file = resolve_path(req.home, file);
            (
                pin_from_file(&file),
                format!("the PIN file {}", file.display()),
            )
        } else {
            let request = PassphraseRequest::token_pin(name, &module, &report.label);
            (
                req.passphrases.passphrase(&request),
                "the PIN prompt".to_owned(),
            )
        };
        let pin_error = |source: CoreError| match source.kind() {
            crate::ErrorKind::BadPassphrase | crate::ErrorKind::Locked => Error::Pin {
                backend: name.to_owned(),
                origin: origin.clone(),
                source,
            },
            _ => Error::backend(name, source),
        };
        let pin = pin.map_err(pin_error)?;
        let store =
            Pkcs11Store::open(Pkcs11Config::new(&module, selector, pin)).map_err(pin_error)?;
        let location = format!(
            "token '{}' (slot {}) of {}",
            report.label,
            report.slot_id,
            module.display()
        );
        let store = Arc::new(store);
        let mut backend =
            Backend::new(name, BackendKind::Pkcs11, location, Arc::clone(&store) as _);
        backend.pkcs11 = Some(store);
        Ok(backend)
    }
}

#[cfg(not(feature = "pkcs11"))]
fn open_pkcs11(req: &OpenRequest<'_>) -> Result<Backend> {
    Err(not_compiled(req))
}

#[cfg(feature = "tpm")]
use tpm::open_tpm;

#[cfg(feature = "tpm")]
mod tpm {
    use std::sync::Arc;

    use keyhaven_hsm_tpm::{TpmConfig, TpmReport, TpmStore};

    use super::{Backend, BackendKind, OpenRequest, check_mounted, store_dir};
    use crate::{Error, Result};

    /// Opens a TPM backend: its metadata directory and a connection to the TPM (which creates
    /// the storage key, so an unreachable TPM is `Unavailable` here). Without `create`, a
    /// missing directory is `Ok(None)`; with it, the TPM is reached before anything is created.
    pub(in crate::backend) fn open_tpm(
        req: &OpenRequest<'_>,
        create: bool,
    ) -> Result<Option<Backend>> {
        let name = req.name;
        let err = |e| Error::backend(name, e);
        let dir = store_dir(req)?;
        let tcti = req.config.tcti.as_deref().ok_or_else(|| Error::Config {
            origin: "configuration".into(),
            message: format!("backends.{name}.tcti: missing (a tpm backend needs it)"),
        })?;
        check_mounted(name, dir, req.home)?;
        if !dir.exists() {
            if !create {
                return Ok(None);
            }
            TpmReport::probe(tcti).map_err(err)?;
            if dir.starts_with(req.home)
                && let Some(parent) = dir.parent()
            {
                crate::fs::create_private_dir(parent)?;
            }
        }
        let config = TpmConfig::new(tcti, dir).map_err(err)?;
        let store = Arc::new(TpmStore::open(config).map_err(err)?);
        let location = format!("{} (TCTI {tcti})", dir.display());
        let mut backend = Backend::new(name, BackendKind::Tpm, location, Arc::clone(&store) as _);
        backend.tpm = Some(store);
        Ok(Some(backend))
    }
}

#[cfg(not(feature = "tpm"))]
fn open_tpm(req: &OpenRequest<'_>, _create: bool) -> Result<Option<Backend>> {
    Err(not_compiled(req))
}
