//! [`KeyManager`]: one interface over keys kept anywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use crate::backend::{Backend, BackendKind, OpenRequest, open_existing, open_or_create};
use crate::config::{BackendConfig, CONFIG_FILE, Config, DefaultKey, validate_backend_name};
use crate::error::is_unavailable;
use crate::fs::{FileLock, check_private, create_private_dir};
use crate::passphrase::PassphraseProvider;
use crate::{
    Algorithm, CoreError, Error, ErrorKind, KeyId, KeyInfo, Protection, PublicKey, Result,
    SecretBytes, Signature,
};

/// Backends that cannot be reached, by name, with why.
type Unreachable = Vec<(String, CoreError)>;

/// Name of the lock file that serializes configuration updates between processes.
const CONFIG_LOCK: &str = ".keyhaven.toml.lock";

/// A key, with the backend that holds it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ManagedKey {
    /// The configured name of the backend that holds the key.
    pub backend: String,
    /// That backend's type.
    pub backend_kind: BackendKind,
    /// What the backend knows of the key.
    pub info: KeyInfo,
    /// Whether it was named as a *logical* key (by its label, or as the default key) rather
    /// than by its id: signing through a logical name uses the primary version, signing
    /// through a version's id means exactly that version.
    pub(crate) logical: bool,
}

impl PartialEq for ManagedKey {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend
            && self.backend_kind == other.backend_kind
            && self.info == other.info
    }
}

impl Eq for ManagedKey {}

impl ManagedKey {
    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.info.id
    }

    /// The key's label.
    pub fn label(&self) -> &str {
        &self.info.label
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.info.algorithm
    }

    /// The key's protection level.
    pub fn protection(&self) -> Protection {
        self.info.protection
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.info.public_key
    }

    /// The fully qualified reference `BACKEND:ID`, which always resolves to this key.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.backend, self.info.id)
    }
}

impl fmt::Display for ManagedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({})", self.backend, self.info.id, self.info.label)
    }
}

/// Something the caller should tell the user, though the operation went ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// A configured backend was unavailable, so a new key meant for it went to the fallback
    /// file backend.
    Fallback {
        /// The unavailable backend.
        backend: String,
        /// Why it was unavailable.
        reason: String,
        /// The backend used instead.
        fallback: String,
        /// The protection the unavailable backend would have given.
        expected: Protection,
        /// The (lower) protection of the fallback.
        actual: Protection,
    },
    /// A backend could not be reached, so its keys were left out of a listing or search.
    Unreachable {
        /// The backend.
        backend: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Fallback {
                backend,
                reason,
                fallback,
                expected,
                actual,
            } => write!(
                f,
                "backend '{backend}' is unavailable ({reason}); the new key went to the fallback \
                 file backend '{fallback}' instead: keys there are {actual}, LOWER protection \
                 than '{backend}' ({expected})"
            ),
            Warning::Unreachable { backend, reason } => write!(
                f,
                "backend '{backend}' is unavailable ({reason}); its keys are not included"
            ),
        }
    }
}

/// Every key of every reachable backend, and the problems the backends report.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Inventory {
    /// The keys, sorted by backend name then label.
    pub keys: Vec<ManagedKey>,
    /// Damaged records and other problems, with the name of the backend reporting each
    /// ([`crate::KeyStore::check`]); their keys are not in `keys`.
    pub problems: Vec<(String, CoreError)>,
}

/// What [`KeyManager::sign_input`] signs.
#[derive(Debug, Clone, Copy)]
pub enum SignInput<'a> {
    /// A whole message (ECDSA hashes it with the curve's hash).
    Message(&'a [u8]),
    /// A prehashed digest (ECDSA only; the length must be the curve hash's).
    Digest(&'a [u8]),
    /// A message hashed as it was read ([`HashedMessage::read`]), so a large file is signed
    /// in constant memory: the signature is the one [`SignInput::Message`] gives (ECDSA
    /// only), and an assertion names the message's SHA-256.
    Hashed(&'a HashedMessage),
}

/// A message read once, in constant memory, into its ECDSA digest and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedMessage {
    /// The curve's hash of the message (SHA-384 for P-384, SHA-256 for P-256): what ECDSA signs.
    pub digest: Vec<u8>,
    /// SHA-256 of the message (what assertions record).
    pub sha256: [u8; 32],
    /// The message's length in bytes.
    pub len: u64,
    /// Whether the message is a keyhaven assertion's JWS signing input (never signed as a
    /// plain message).
    assertion_input: bool,
}

impl HashedMessage {
    /// Whether the message looks like a keyhaven assertion's JWS signing input: signing it as
    /// a plain message is refused (a caller that sends only [`HashedMessage::digest`] elsewhere
    /// must refuse it too).
    pub fn is_assertion_input(&self) -> bool {
        self.assertion_input
    }

    /// Reads `reader` to its end, 64 KiB at a time, hashing for `algorithm`. `None` for an
    /// algorithm that signs whole messages only (Ed25519 hashes the message twice, with its
    /// private key between the passes).
    ///
    /// # Errors
    /// [`CoreError::Io`] if reading fails.
    pub fn read(algorithm: Algorithm, mut reader: impl std::io::Read) -> Result<Option<Self>> {
        use sha2::Digest as _;
        enum Curve {
            P384(sha2::Sha384),
            P256(sha2::Sha256),
        }
        let mut curve = match algorithm {
            Algorithm::EcdsaP384 => Curve::P384(sha2::Sha384::new()),
            Algorithm::EcdsaP256 => Curve::P256(sha2::Sha256::new()),
            _ => return Ok(None),
        };
        let mut sha256 = sha2::Sha256::new();
        let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
        let mut len = 0u64;
        let mut head = Vec::new();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CoreError::io("read the message", e).into()),
            };
            match &mut curve {
                Curve::P384(h) => h.update(&buf[..n]),
                Curve::P256(h) => h.update(&buf[..n]),
            }
            sha256.update(&buf[..n]);
            if head.len() < 4096 {
                let take = n.min(4096 - head.len());
                head.extend_from_slice(&buf[..take]);
            }
            len += n as u64;
        }
        Ok(Some(HashedMessage {
            digest: match curve {
                Curve::P384(h) => h.finalize().to_vec(),
                Curve::P256(h) => h.finalize().to_vec(),
            },
            sha256: sha256.finalize().into(),
            len,
            // A header longer than the window is no header keyhaven writes, but it is refused
            // too rather than looked at partly.
            assertion_input: refuse_assertion_signing_input(&head).is_err()
                || (head.starts_with(b"eyJ") && !head.contains(&b'.') && len > head.len() as u64),
        }))
    }
}

/// One interface over keys kept in every configured backend.
///
/// Built from a keyhaven home (the directory holding `keyhaven.toml` and, by default, the
/// backends' stores). Backends are opened lazily, the first time an operation needs them; an
/// encrypted backend asks the [`PassphraseProvider`] then, and only then.
///
/// Keys are named by references: `ID`, `LABEL`, or `BACKEND:ID|LABEL`. An unqualified reference
/// is looked up in every backend; an exact id match wins over label matches, and a reference
/// that matches keys in several backends is [`Error::Ambiguous`].
///
/// A backend of type `memory` is ephemeral: its keys live as long as this manager, so neither
/// it nor its keys ever become the default backend or key on their own.
///
/// The fallback rule (`[fallback]` in `keyhaven.toml`) applies only to new keys: when the backend
/// a key is generated or imported into is unavailable, the key goes to the fallback file backend
/// (if allowed) with a [`Warning::Fallback`]. Keys of an unavailable backend are never looked up
/// elsewhere: using them fails with [`Error::Unavailable`].
///
/// Key operations are methods of the manager; the lifecycle areas are views of it:
/// [`KeyManager::rotation`], [`KeyManager::audit`], [`KeyManager::revocations`],
/// [`KeyManager::compromise`] and [`KeyManager::backups`].
///
/// # Locks, and the order they are taken in
///
/// This is the one place the order is written down; code that takes two of these takes them in
/// this order, and never holds one while waiting for an earlier one:
///
/// 1. the configuration (`RwLock<Arc<Config>>`): held only to clone the `Arc` or to swap it;
///    nothing else is ever taken while it is held;
/// 2. the backend map: held only to find or make a backend's slot;
/// 3. one backend's slot (its opened, decorated store): held while that backend opens, which
///    may prompt, run Argon2id or log in to a token; never two slots at once, so opening one
///    backend never waits for another;
/// 4. the per-name opening lock of that backend's bare store (the map of these is held only to
///    find the lock), then the map of bare stores opened (held only to read or insert);
/// 5. the home's state files (`integrity::StateCell`, and the file locks `keyhaven-fs` takes
///    for each change); a store's own file lock is taken and released inside each call to
///    that store, so it is never held across any of the above.
///
/// The `OnceLock`s of the lifecycle (audit log, authority, revocations, meter, registry) are
/// initialised without holding any of the above, and the warnings list is a leaf: it is taken
/// alone, to push or drain.
pub struct KeyManager {
    home: PathBuf,
    config_path: Option<PathBuf>,
    /// Swapped whole on each change: readers share it without copying.
    config: RwLock<std::sync::Arc<Config>>,
    passphrases: std::sync::Arc<dyn PassphraseProvider>,
    /// Each backend's opened, decorated store, in a slot of its own: opening one (which may
    /// prompt, run Argon2id or log in to a token) holds only its slot, so it never waits for
    /// another backend. Lock order: this map (held only to find or make a slot), then one
    /// slot; never two slots at once.
    backends: Mutex<BTreeMap<String, Slot>>,
    warnings: Mutex<Vec<Warning>>,
    caller: keyhaven_audit::CallerContext,
    lifecycle: crate::lifecycle::State,
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("home", &self.home)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

/// The environment variable through which **root** (only) names the principal it acts for, as
/// `sudo -u` would: root can read every key file anyway, so this grants nothing, and it lets
/// one administrative account act, and be audited, on others' behalf.
pub const PRINCIPAL_ENV: &str = "KEYHAVEN_PRINCIPAL";

/// The OS account running this process (its effective uid's name), or, for root, the
/// principal named by [`PRINCIPAL_ENV`]; `unknown` when the account cannot be told.
fn default_caller() -> keyhaven_audit::CallerContext {
    if keyhaven_audit::effective_uid() == Some(0)
        && let Ok(p) = std::env::var(PRINCIPAL_ENV)
        && !p.trim().is_empty()
    {
        return keyhaven_audit::CallerContext::new(p.trim());
    }
    keyhaven_audit::CallerContext::current_os_user()
        .unwrap_or_else(|_| keyhaven_audit::CallerContext::new("unknown"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KeyManager {
    /// A manager over the home directory `home`, configured by `home/keyhaven.toml` (a missing
    /// file is an empty configuration; the home itself is created, 0700, only when something is
    /// written).
    ///
    /// The home and the configuration decide where keys are kept, so both must be private: an
    /// existing home or `keyhaven.toml` that other users may read or write is refused.
    ///
    /// # Errors
    /// [`Error::Config`] if the configuration is invalid, [`Error::Io`] if it cannot be read,
    /// [`CoreError::PermissionDenied`] (naming the `chmod` that fixes it) if the home or the
    /// configuration file is open to other users.
    pub fn open(
        home: impl Into<PathBuf>,
        passphrases: impl PassphraseProvider + 'static,
    ) -> Result<Self> {
        let home = home.into();
        match check_private(&home) {
            Ok(meta) if !meta.is_dir() => {
                return Err(CoreError::InvalidInput(format!(
                    "the keyhaven home {} is not a directory",
                    home.display()
                ))
                .into());
            }
            Ok(_) => {}
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Nobody else may be able to swap the home (or a directory above it) for another.
        if let Some(parent) = home.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fs::check_ancestors(parent)?;
        }
        let config_path = home.join(CONFIG_FILE);
        let config = Config::load(&config_path)?;
        if !config_path.exists() {
            refuse_orphaned_stores(&home, &config_path)?;
        }
        sweep_leftovers(&home);
        let m = KeyManager {
            home,
            config_path: Some(config_path),
            config: RwLock::new(std::sync::Arc::new(config)),
            passphrases: std::sync::Arc::new(passphrases),
            backends: Mutex::new(BTreeMap::new()),
            warnings: Mutex::new(Vec::new()),
            caller: default_caller(),
            lifecycle: crate::lifecycle::State::default(),
        };
        // A sealed home whose configuration names no anchor was changed outside keyhaven
        // (emptied, or its encrypted backends removed): refuse before using any of it.
        if crate::integrity::manifest_path(&m.home).exists() && m.integrity_anchor().is_none() {
            return Err(CoreError::corrupt(
                m.home.join(CONFIG_FILE).display().to_string(),
                "the home is sealed, but this configuration declares no backend that can unlock \
                 it: it was emptied or changed outside keyhaven; restore it from a backup",
            )
            .into());
        }
        Ok(m)
    }

    /// A manager over a configuration held only in memory: changes (default key, backends) are
    /// not written anywhere. Relative backend paths resolve against `home`.
    ///
    /// # Errors
    /// [`Error::Config`] if the configuration is invalid.
    pub fn with_config(
        home: impl Into<PathBuf>,
        config: Config,
        passphrases: impl PassphraseProvider + 'static,
    ) -> Result<Self> {
        config.validate()?;
        Ok(KeyManager {
            home: home.into(),
            config_path: None,
            config: RwLock::new(std::sync::Arc::new(config)),
            passphrases: std::sync::Arc::new(passphrases),
            backends: Mutex::new(BTreeMap::new()),
            warnings: Mutex::new(Vec::new()),
            caller: default_caller(),
            lifecycle: crate::lifecycle::State::default(),
        })
    }

    /// The same manager acting for `caller`: the principal written into audit records and
    /// checked by access rules (default: the OS user running the process). Set it before the
    /// first operation: backends opened earlier keep the caller they were opened for.
    #[must_use]
    pub fn with_caller(mut self, caller: keyhaven_audit::CallerContext) -> Self {
        self.caller = caller;
        self
    }

    /// Who this manager acts for.
    pub fn caller(&self) -> keyhaven_audit::CallerContext {
        self.caller.clone()
    }

    #[cfg_attr(not(feature = "file"), allow(dead_code))]
    pub(crate) fn passphrase_provider(&self) -> std::sync::Arc<dyn PassphraseProvider> {
        self.passphrases.clone()
    }

    pub(crate) fn lifecycle(&self) -> &crate::lifecycle::State {
        &self.lifecycle
    }

    /// The keyhaven home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The configuration file, unless the configuration is held in memory only.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The current configuration (shared, not copied: a change swaps in a new one).
    pub fn config(&self) -> std::sync::Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `config` (read through the authenticated state) in place of the one in use.
    pub(crate) fn replace_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = std::sync::Arc::new(config);
    }

    /// `name`'s store without decorators: an encrypted one is opened once per manager (it may
    /// anchor the home's integrity, and each open costs an Argon2id); `create` makes a missing
    /// store. `Ok(None)` if it has none and `create` is false.
    pub(crate) fn raw_backend(&self, name: &str, create: bool) -> Result<Option<Backend>> {
        if let Some(b) = lock(&self.lifecycle().raw).get(name) {
            return Ok(Some(b.clone()));
        }
        let opening = lock(&self.lifecycle().opening)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let _opening = lock(&opening);
        // Another thread may have opened it while this one waited.
        if let Some(b) = lock(&self.lifecycle().raw).get(name) {
            return Ok(Some(b.clone()));
        }
        let config = self.backend_config(name)?;
        let path = self.backend_path(name);
        let req = self.open_request(name, &config, path.as_deref());
        let backend = if create {
            Some(open_or_create(&req)?)
        } else {
            open_existing(&req)?
        };
        // Opened once per manager: an encrypted or keyring store runs Argon2id, a token asks
        // for its PIN.
        if let Some(b) = &backend
            && matches!(
                b.kind(),
                BackendKind::Encrypted
                    | BackendKind::Pkcs11
                    | BackendKind::Tpm
                    | BackendKind::Keyring
            )
        {
            lock(&self.lifecycle().raw).insert(name.to_owned(), b.clone());
        }
        Ok(backend)
    }

    /// Warnings recorded so far (fallbacks used, backends skipped), oldest first.
    pub fn warnings(&self) -> Vec<Warning> {
        lock(&self.warnings).clone()
    }

    /// Returns and forgets the warnings recorded so far.
    pub fn take_warnings(&self) -> Vec<Warning> {
        std::mem::take(&mut *lock(&self.warnings))
    }

    fn warn(&self, w: Warning) {
        let mut warnings = lock(&self.warnings);
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }

    /// The directory of a file backend (its `path` resolved against the home).
    pub fn backend_path(&self, name: &str) -> Option<PathBuf> {
        self.config().backend_path(&self.home, name)
    }

    pub(crate) fn backend_config(&self, name: &str) -> Result<BackendConfig> {
        let config = self.config();
        config
            .backends
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownBackend {
                name: name.to_owned(),
                known: known_names(&config),
            })
    }

    fn open_request<'a>(
        &'a self,
        name: &'a str,
        config: &'a BackendConfig,
        path: Option<&'a Path>,
    ) -> OpenRequest<'a> {
        OpenRequest {
            name,
            kind: config.kind,
            config,
            path,
            home: &self.home,
            state: self.lifecycle().state.clone(),
            passphrases: self.passphrases.as_ref(),
            unauthenticated: config.kind == BackendKind::Pkcs11
                && !keyhaven_fs::StateFiles::is_authenticated(self.lifecycle().state.as_ref())
                && self.integrity_anchor().as_deref() == Some(name),
        }
    }

    /// `name`'s existing store without the decorator stack and outside the manager's set of
    /// opened backends (for the authority key, which the audit layer itself needs).
    pub(crate) fn open_undecorated(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<dyn crate::KeyStore>> {
        match self.raw_backend(name, false)? {
            Some(b) => Ok(b.store_raw().clone()),
            None => Err(Error::backend(
                name,
                CoreError::NotFound(format!("the store of backend '{name}'")),
            )),
        }
    }

    /// Before a backend other than the anchor is opened (a PKCS#11 backend loads the module
    /// its declaration names; another store's path could lead anywhere): unlock the home's
    /// state, so the declaration used is the authenticated one.
    fn before_open(&self, name: &str) -> Result<()> {
        // Only the anchor itself is opened from the configuration as read; every other
        // backend from the authenticated one (its path, its module).
        if self.integrity_anchor().as_deref() != Some(name) {
            self.state()?;
        }
        Ok(())
    }

    /// `name`'s slot (made empty if it has none).
    fn slot(&self, name: &str) -> Slot {
        lock(&self.backends)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Opens `name`'s existing store (no fallback, nothing created): `Ok(None)` if it has none
    /// yet.
    fn open_direct(&self, name: &str) -> Result<Option<Backend>> {
        let slot = self.slot(name);
        let mut opened = lock(&slot);
        if let Some(b) = opened.as_ref() {
            return Ok(Some(b.clone()));
        }
        self.before_open(name)?;
        let backend = self
            .raw_backend(name, false)?
            .map(|b| self.decorate(b))
            .transpose()?;
        opened.clone_from(&backend);
        Ok(backend)
    }

    /// Opens `name`'s store, creating it if it has none yet (no fallback).
    fn create_direct(&self, name: &str) -> Result<Backend> {
        let slot = self.slot(name);
        let mut opened = lock(&slot);
        if let Some(b) = opened.as_ref() {
            return Ok(b.clone());
        }
        self.before_open(name)?;
        let raw = self
            .raw_backend(name, true)?
            .ok_or_else(|| CoreError::NotFound(format!("the store of backend '{name}'")))?;
        let backend = self.decorate(raw)?;
        *opened = Some(backend.clone());
        Ok(backend)
    }

    /// The backend a new key goes to: `name`, its store created if needed, or, when `name` is
    /// unavailable and the fallback is allowed, the fallback file backend (with a
    /// [`Warning::Fallback`]). The only place the fallback rule applies.
    ///
    /// `device_options` names the options of the new key that only `name`'s device can honour
    /// (TPM key options); with them, the fallback is never used.
    pub(crate) fn backend_for_new_key(
        &self,
        name: &str,
        device_options: Option<&str>,
    ) -> Result<Backend> {
        let source = match self.create_direct(name) {
            Err(Error::Backend { source, .. }) if is_unavailable(&source) => source,
            other => return other,
        };
        if let Some(options) = device_options {
            return Err(Error::Unavailable {
                backend: name.to_owned(),
                source,
                hint: format!(
                    ". The new key asks for {options}, which only '{name}' can provide, so no \
                     fallback is used: reconnect it and try again"
                ),
            });
        }
        let config = self.config();
        let fallback = config.fallback.backend.clone().filter(|f| f != name);
        let Some(fallback) = fallback.filter(|_| config.fallback.allow) else {
            let hint = match &config.fallback.backend {
                Some(f) if f != name => format!(
                    ". Falling back to the file backend '{f}' is not allowed ([fallback] allow = \
                     false in keyhaven.toml)"
                ),
                _ => ". Reconnect it (or mount its drive), or choose another backend".into(),
            };
            return Err(Error::Unavailable {
                backend: name.to_owned(),
                source,
                hint,
            });
        };
        let stand_in = self.create_direct(&fallback)?;
        let expected = self.backend_config(name)?.kind.protection();
        self.warn(Warning::Fallback {
            backend: name.to_owned(),
            reason: unavailable_reason(&source),
            fallback,
            expected,
            actual: stand_in.kind().protection(),
        });
        Ok(stand_in)
    }

    /// The error for using the existing keys of `name`, which is unavailable: never the fallback.
    fn unavailable(&self, name: &str, source: CoreError) -> Error {
        let config = self.config();
        let mut hint = String::from(
            ". Its keys can be used only through it: reconnect it (or mount its drive) and try \
             again",
        );
        if let Some(f) = config
            .fallback
            .backend
            .clone()
            .filter(|f| f != name && config.fallback.allow)
        {
            hint.push_str(&format!(
                " (the fallback backend '{f}' takes new keys only; it never stands in for '{name}' \
                 when existing keys are used)"
            ));
        }
        Error::Unavailable {
            backend: name.to_owned(),
            source,
            hint,
        }
    }

    /// The backend `name`, opened (no fallback, nothing created).
    ///
    /// # Errors
    /// [`Error::UnknownBackend`]; [`Error::Unavailable`] when it cannot be reached;
    /// [`CoreError::NotFound`] if its store has not been created yet; or the backend's error
    /// (wrong passphrase, unsafe permissions, ...).
    pub fn backend(&self, name: &str) -> Result<Backend> {
        self.existing_backend(name)?.ok_or_else(|| {
            Error::backend(
                name,
                CoreError::NotFound(format!(
                    "the store of backend '{name}' (it is created with its first key)"
                )),
            )
        })
    }

    /// Opens `name` itself (no fallback, no creation, errors as the backend reports them), for
    /// diagnostics.
    pub(crate) fn probe(&self, name: &str) -> Result<Option<Backend>> {
        self.open_direct(name)
    }

    /// Opens `name`'s existing store, for lookups and operations on existing keys: `Ok(None)`
    /// if it has none yet, [`Error::Unavailable`] if it cannot be reached.
    fn existing_backend(&self, name: &str) -> Result<Option<Backend>> {
        match self.probe(name) {
            Err(Error::Backend { source, .. }) if is_unavailable(&source) => {
                Err(self.unavailable(name, source))
            }
            other => other,
        }
    }

    /// The opened backend holding `key`.
    pub(crate) fn key_backend(&self, key: &ManagedKey) -> Result<Backend> {
        self.existing_backend(&key.backend)?
            .ok_or_else(|| Error::backend(&key.backend, CoreError::key_not_found(key.id())))
    }

    /// The backend new keys go to when none is named: `default_backend`, else the only backend.
    ///
    /// # Errors
    /// [`Error::NoBackend`] if there is no such backend.
    pub fn default_backend_name(&self) -> Result<String> {
        let config = self.config();
        if let Some(d) = &config.default_backend {
            return Ok(d.clone());
        }
        let mut names = config.backends.keys();
        match (names.next(), names.next()) {
            (Some(only), None) => Ok(only.clone()),
            _ => Err(Error::NoBackend),
        }
    }

    /// Every backend whose store exists and can be opened, and the unavailable ones with why.
    fn scan_backends(&self) -> Result<(Vec<Backend>, Unreachable)> {
        let mut reachable = Vec::new();
        let mut unreachable = Vec::new();
        for name in self.config().backend_names() {
            match self.existing_backend(&name) {
                Ok(Some(b)) => reachable.push(b),
                Ok(None) => {}
                Err(Error::Unavailable {
                    backend, source, ..
                }) => unreachable.push((backend, source)),
                Err(e) => return Err(e),
            }
        }
        Ok((reachable, unreachable))
    }

    fn warn_unreachable(&self, unreachable: Unreachable) {
        for (backend, source) in unreachable {
            self.warn(Warning::Unreachable {
                backend,
                reason: unavailable_reason(&source),
            });
        }
    }

    /// Every backend that can be reached (for the rotation engine).
    pub(crate) fn reachable_backends_for_rotation(&self) -> Result<Vec<Backend>> {
        self.reachable_backends()
    }

    /// Every backend that can be reached; unavailable backends are recorded as warnings.
    fn reachable_backends(&self) -> Result<Vec<Backend>> {
        let (reachable, unreachable) = self.scan_backends()?;
        self.warn_unreachable(unreachable);
        Ok(reachable)
    }

    /// Every key of every reachable backend, sorted by backend name then label.
    ///
    /// # Errors
    /// A backend's error other than being unavailable (wrong passphrase, unsafe permissions,
    /// damaged store header); unavailable backends are skipped with a [`Warning::Unreachable`].
    pub fn list_keys(&self) -> Result<Vec<ManagedKey>> {
        let mut keys = Vec::new();
        for b in self.reachable_backends()? {
            let listed = b.store().list().map_err(|e| Error::backend(b.name(), e))?;
            keys.extend(listed.into_iter().map(|info| managed(&b, info)));
        }
        sort_keys(&mut keys);
        Ok(keys)
    }

    /// [`KeyManager::list_keys`] and the problems each reachable backend reports
    /// ([`crate::KeyStore::check`]: damaged records), opening each backend once.
    ///
    /// # Errors
    /// As [`KeyManager::list_keys`].
    pub fn inventory(&self) -> Result<Inventory> {
        let mut inventory = Inventory::default();
        for b in self.reachable_backends()? {
            let err = |e| Error::backend(b.name(), e);
            let listed = b.store().list().map_err(err)?;
            let found = b.store().check().map_err(err)?;
            inventory
                .keys
                .extend(listed.into_iter().map(|info| managed(&b, info)));
            inventory
                .problems
                .extend(found.into_iter().map(|e| (b.name().to_owned(), e)));
        }
        sort_keys(&mut inventory.keys);
        Ok(inventory)
    }

    /// Finds a key by reference: `ID`, `LABEL`, or `BACKEND:ID|LABEL`.
    ///
    /// An unqualified reference is looked up in every backend. While a backend is unavailable,
    /// only an exact id match resolves: a label could also name a key in the unavailable
    /// backend, so it is refused rather than resolved to a possibly different key.
    ///
    /// # Errors
    /// [`CoreError::NotFound`] (as [`Error::Core`]) if nothing matches, [`Error::Ambiguous`]
    /// listing the candidates if several keys match, [`Error::Unavailable`] if the backend
    /// named (or, for an unqualified reference not matched by id, any backend) is unavailable,
    /// or a backend's error (for example [`CoreError::Corrupt`] for a damaged record).
    pub fn resolve(&self, reference: &str) -> Result<ManagedKey> {
        if reference.is_empty() {
            return Err(CoreError::InvalidInput("an empty key reference".into()).into());
        }
        // Labels are stored in NFC: look them up the same way, however they were typed.
        let normalized = keyhaven_core::normalize_label(reference).ok();
        let reference = normalized.as_deref().unwrap_or(reference);
        let config = self.config();
        if let Some((backend, rest)) = reference.split_once(':')
            && config.backends.contains_key(backend)
        {
            let b = self
                .existing_backend(backend)?
                .ok_or_else(|| CoreError::key_not_found(reference))?;
            let info = match b.store().resolve(rest) {
                Err(e)
                    if e.is(ErrorKind::NotFound)
                        && let Some(info) = label_in_records(&b, rest)? =>
                {
                    info
                }
                other => other.map_err(|e| Error::backend(b.name(), e))?,
            };
            let by_label = info.id.as_str() != rest;
            return Ok(managed(&b, info).named_logically(by_label));
        }
        let id = reference.parse::<KeyId>().ok();
        let mut by_id = Vec::new();
        let mut by_label = Vec::new();
        let (reachable, unreachable) = self.scan_backends()?;
        // A label whose claim names a key gone from its store: said, if nothing else matches.
        let plain_miss = CoreError::key_not_found(reference).to_string();
        let mut detail: Option<(String, CoreError)> = None;
        for b in reachable {
            if let Some(id) = &id {
                match b.store().get(id) {
                    Ok(info) => by_id.push(managed(&b, info)),
                    Err(e) if e.is(ErrorKind::NotFound) => {}
                    Err(e) => return Err(Error::backend(b.name(), e)),
                }
            }
            match b.store().find_by_label(reference) {
                Ok(info) => by_label.push(managed(&b, info).named_logically(true)),
                Err(e) if e.is(ErrorKind::NotFound) => {
                    if e.to_string() != plain_miss && detail.is_none() {
                        detail = Some((b.name().to_owned(), e));
                    }
                }
                Err(e) => return Err(Error::backend(b.name(), e)),
            }
        }
        let mut unreachable = unreachable.into_iter();
        if by_id.is_empty()
            && let Some((backend, source)) = unreachable.next()
        {
            let hint = format!(
                ". It may hold a key '{reference}' too, so '{reference}' is not looked up \
                 elsewhere: name the key as BACKEND:LABEL or BACKEND:ID, or reconnect '{backend}'"
            );
            return Err(Error::Unavailable {
                backend,
                source,
                hint,
            });
        }
        self.warn_unreachable(unreachable.collect());
        if by_id.is_empty() && by_label.is_empty() {
            // The slow path, for a miss only: a label whose index entry is gone (a label
            // claim removed) is still each record's own (authenticated) label.
            let (reachable, _) = self.scan_backends()?;
            for b in reachable {
                if let Some(info) = label_in_records(&b, reference)? {
                    by_label.push(managed(&b, info).named_logically(true));
                }
            }
        }
        let mut candidates = if by_id.is_empty() { by_label } else { by_id };
        candidates.dedup_by(|a, b| a.backend == b.backend && a.info.id == b.info.id);
        match candidates.len() {
            0 => Err(match detail {
                Some((backend, e)) => Error::backend(&backend, e),
                None => CoreError::key_not_found(reference).into(),
            }),
            1 => Ok(candidates.remove(0)),
            _ => Err(Error::Ambiguous {
                reference: reference.to_owned(),
                candidates: candidates.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    /// Generates a key in `backend` (or the default backend), creating its store if needed. If
    /// that backend is unavailable, the fallback rule applies (see [`KeyManager`]). If no
    /// default key is set yet, the new key becomes the default (unless its backend is
    /// ephemeral).
    ///
    /// # Errors
    /// [`Error::NoBackend`] without a backend to use; [`Error::Unavailable`] if it cannot be
    /// reached and no fallback is allowed; the backend's errors ([`CoreError::AlreadyExists`]
    /// for a taken label, ...).
    pub fn generate(
        &self,
        backend: Option<&str>,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<ManagedKey> {
        self.generate_with(backend, &crate::KeySpec::new(algorithm, label))
    }

    /// The label a new key gets: `label` in Unicode NFC ([`keyhaven_core::normalize_label`]),
    /// refused if it is the id of a key of a reachable backend (a reference to it would then
    /// name two keys).
    pub(crate) fn new_label(&self, label: &str) -> Result<String> {
        let label = keyhaven_core::normalize_label(label)?;
        if let Ok(id) = label.parse::<KeyId>() {
            let (reachable, _) = self.scan_backends()?;
            for b in reachable {
                if b.store().get(&id).is_ok() {
                    return Err(CoreError::InvalidInput(format!(
                        "the label '{label}' is the id of key {}:{id}; a label equal to a key id \
                         would make `{label}` name two keys: choose another label",
                        b.name()
                    ))
                    .into());
                }
            }
        }
        Ok(label)
    }

    /// Imports a PKCS#8 DER private key into `backend` (or the default backend), with the
    /// fallback rule and default key as for [`KeyManager::generate`].
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] for a malformed key, [`CoreError::Unsupported`] for backends
    /// that do not import, [`CoreError::AlreadyExists`] for a taken label.
    pub fn import_pkcs8(
        &self,
        backend: Option<&str>,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<ManagedKey> {
        let label = &self.new_label(label)?;
        // Revoked key material never comes back under a new id.
        if let Ok(k) = crate::default_provider().load_pkcs8(pkcs8_der.expose_secret()) {
            self.refuse_revoked_material(k.public_key(), label)?;
        }
        let name = match backend {
            Some(b) => b.to_owned(),
            None => self.default_backend_name()?,
        };
        let b = self.backend_for_new_key(&name, None)?;
        let info = b
            .store()
            .import_pkcs8(label, pkcs8_der)
            .map_err(|e| Error::backend(b.name(), e))?;
        let key = managed(&b, info);
        self.default_if_none(&key)?;
        Ok(key)
    }

    /// Exports a private key as PKCS#8 DER. Hazardous: protect the result (encrypt it with
    /// [`crate::hazmat::pkcs8_encrypt_pem`]).
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] for keys that cannot leave their backend (hardware).
    pub fn export_pkcs8(&self, key: &ManagedKey) -> Result<SecretBytes> {
        let b = self.key_backend(key)?;
        b.store()
            .export_pkcs8(&key.info.id)
            .map_err(|e| Error::backend(b.name(), e))
    }

    /// Signs a message (ECDSA hashes it with the curve's hash first).
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] for X25519 keys, or the backend's error.
    pub fn sign(&self, key: &ManagedKey, message: &[u8]) -> Result<Signature> {
        self.sign_input(key, SignInput::Message(message))
    }

    /// `key` as a RustCrypto signer ([`signature::Signer`], [`signature::Verifier`],
    /// [`signature::Keypair`]) for keyhaven's [`Signature`] and the algorithm crates' types,
    /// so code written against those traits signs with any keyhaven key (on a token or a TPM
    /// too) through this manager: each signature is checked, audited and counted like
    /// [`KeyManager::sign`]'s.
    ///
    /// ```
    /// use keyhaven::signature::{Keypair, Signer, Verifier};
    /// use keyhaven::{Algorithm, BackendConfig, BackendKind, FixedPassphrase, KeyManager};
    ///
    /// // Code that knows nothing of keyhaven: any P-384 signer will do.
    /// fn sign_release<S: Signer<p384::ecdsa::Signature>>(s: &S) -> p384::ecdsa::Signature {
    ///     s.sign(b"release 1.0")
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let manager = KeyManager::open(dir.path().join("home"), FixedPassphrase::new("pw"))?;
    /// # #[cfg(feature = "memory")] {
    /// manager.add_backend("scratch", BackendConfig::new(BackendKind::Memory, None))?;
    /// let key = manager.generate(None, Algorithm::EcdsaP384, "release")?;
    /// let signer = manager.signer(&key);
    /// let sig = sign_release(&signer);
    /// // RustCrypto's own verifier accepts it ...
    /// let spki = key.public_key().spki_der();
    /// use p384::pkcs8::DecodePublicKey;
    /// let vk = p384::ecdsa::VerifyingKey::from_public_key_der(spki)?;
    /// vk.verify(b"release 1.0", &sig)?;
    /// // ... and so does the signer, as a Verifier.
    /// signer.verify(b"release 1.0", &sig)?;
    /// assert_eq!(&signer.verifying_key(), key.public_key());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn signer(&self, key: &ManagedKey) -> keyhaven_crypto::KeySigner<ManagedSigner<'_>> {
        keyhaven_crypto::KeySigner(ManagedSigner {
            manager: self,
            key: key.clone(),
        })
    }

    /// `key` as a signer for a service that signs at a high rate (a server signing each
    /// response, a TLS handshake): made after the access policy allows this caller to sign
    /// with the key (a logical key signs with its primary version), with one audit record
    /// (`service-signer`, with `purpose`) now rather than one per signature. Each signature
    /// then checks the key's revocation (the registry every process reads), so a key revoked
    /// while the service runs stops signing at once. Its signatures are **not metered** (a
    /// `max_usage` rotation policy does not count them) and not audited one by one. The
    /// private key stays in its backend.
    ///
    /// # Errors
    /// [`CoreError::PermissionDenied`] when the access policy refuses, [`CoreError::Revoked`]
    /// for a revoked key, [`CoreError::Unsupported`] for an X25519 key, the backend's or the
    /// audit log's error.
    pub fn service_signer(&self, key: &ManagedKey, purpose: &str) -> Result<ServiceSigner> {
        if !key.algorithm().can_sign() {
            return Err(CoreError::Unsupported {
                operation: "sign",
                reason: format!("{} keys never sign", key.algorithm()),
            }
            .into());
        }
        let key = &self.signing_target(key)?;
        self.authorize(keyhaven_audit::Operation::Sign, key)?;
        self.refuse_revoked_material(key.public_key(), key.label())?;
        let b = self.key_backend(key)?;
        // Through the decorated stack: a deleted key whose record was put back is refused.
        let info = b
            .store()
            .get(&key.info.id)
            .map_err(|e| Error::backend(b.name(), e))?;
        let revocations = self.revocation_registry()?;
        self.audit_event(
            "service-signer",
            Some(key),
            keyhaven_audit::Outcome::Allowed,
            purpose,
        )?;
        Ok(ServiceSigner {
            store: b.store_raw().clone(),
            key: info,
            revocations,
        })
    }

    /// Opens `key` (an agreement key: X25519, or ECDH P-256/P-384 on a token or a TPM) as the
    /// master key of a key hierarchy ([`crate::envelope`]): KEKs are wrapped and unwrapped
    /// through agreements inside its backend, and its private part never leaves it. Checked
    /// like [`KeyManager::service_signer`]: access policy (`sign`, which covers agreement),
    /// revocation, and one audit record naming `purpose`; the agreements it makes later are
    /// not audited one by one (the service that holds it audits its own decisions).
    ///
    /// # Errors
    /// [`CoreError::PermissionDenied`], [`CoreError::Revoked`]; the envelope's
    /// `NotAgreementKey` (as [`CoreError::Unsupported`]) for a signing key; the backend's error
    /// (a token unplugged is `Unavailable`).
    pub fn master_key(
        &self,
        key: &ManagedKey,
        purpose: &str,
    ) -> Result<keyhaven_envelope::MasterKey> {
        if !key.algorithm().can_agree() {
            return Err(CoreError::Unsupported {
                operation: "agree",
                reason: format!(
                    "{} keys never agree: a master key is x25519, ecdh-p256 or ecdh-p384",
                    key.algorithm()
                ),
            }
            .into());
        }
        self.authorize(keyhaven_audit::Operation::Sign, key)?;
        self.refuse_revoked_material(key.public_key(), key.label())?;
        let b = self.key_backend(key)?;
        let master = keyhaven_envelope::MasterKey::new(b.store_raw().clone(), key.info.id.as_str())
            .map_err(|e| Error::backend(b.name(), CoreError::from(e)))?;
        self.audit_event(
            "master-key",
            Some(key),
            keyhaven_audit::Outcome::Allowed,
            purpose,
        )?;
        Ok(master)
    }

    /// Signs a prehashed digest (ECDSA only).
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] for a digest of the wrong length, [`CoreError::Unsupported`]
    /// for keys that cannot sign digests.
    pub fn sign_digest(&self, key: &ManagedKey, digest: &[u8]) -> Result<Signature> {
        self.sign_input(key, SignInput::Digest(digest))
    }

    /// Signs a message or a digest.
    ///
    /// # Errors
    /// As [`KeyManager::sign`] and [`KeyManager::sign_digest`].
    pub fn sign_input(&self, key: &ManagedKey, input: SignInput<'_>) -> Result<Signature> {
        let alg = key.algorithm();
        if !alg.can_sign() {
            return Err(Error::backend(
                &key.backend,
                CoreError::Unsupported {
                    operation: "sign",
                    reason: format!(
                        "{} keys do key agreement only; use an ECDSA or Ed25519 key to sign",
                        alg.short_name().to_uppercase()
                    ),
                },
            ));
        }
        match input {
            SignInput::Message(m) => refuse_assertion_signing_input(m)?,
            SignInput::Hashed(h) if h.assertion_input => return Err(assertion_input_refused()),
            _ => {}
        }
        self.sign_checked_input(key, input)
    }

    /// [`KeyManager::sign_input`] without the refusal of assertion signing inputs (for
    /// [`KeyManager::make_assertion`]).
    pub(crate) fn sign_checked_input(
        &self,
        key: &ManagedKey,
        input: SignInput<'_>,
    ) -> Result<Signature> {
        let key = &self.signing_target(key)?;
        let b = self.key_backend(key)?;
        let id = &key.info.id;
        match input {
            SignInput::Message(m) => b.store().sign(id, m),
            SignInput::Digest(d) => b.store().sign_digest(id, d),
            SignInput::Hashed(h) => b.store().sign_digest(id, &h.digest),
        }
        .map_err(|e| Error::backend(b.name(), e))
    }

    /// Verifies a signature with the key's public key (the backend is not involved).
    ///
    /// # Errors
    /// [`CoreError::BadSignature`] if it does not verify.
    pub fn verify(
        &self,
        key: &ManagedKey,
        input: SignInput<'_>,
        signature: &Signature,
    ) -> Result<()> {
        let pk = &key.info.public_key;
        let verified = match input {
            SignInput::Message(m) => crate::verify(pk, m, signature),
            SignInput::Digest(d) => crate::verify_digest(pk, d, signature),
            SignInput::Hashed(h) => crate::verify_digest(pk, &h.digest, signature),
        };
        self.audit_verification(key, verified.is_ok())?;
        verified.map_err(Error::from)
    }

    /// [`crate::AuditView::record_verification`].
    pub(crate) fn audit_verification(&self, key: &ManagedKey, verified: bool) -> Result<()> {
        let (outcome, reason) = if verified {
            (keyhaven_audit::Outcome::Allowed, "")
        } else {
            (
                keyhaven_audit::Outcome::Failed,
                "the signature does not verify",
            )
        };
        self.audit_event("verify", Some(key), outcome, reason)
    }

    /// X25519 key agreement with a peer's public key.
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] for signing keys, [`CoreError::InvalidInput`] for a bad peer.
    pub fn agree(&self, key: &ManagedKey, peer: &PublicKey) -> Result<SecretBytes> {
        let b = self.key_backend(key)?;
        b.store()
            .agree(&key.info.id, peer)
            .map_err(|e| Error::backend(b.name(), e))
    }

    /// A key's public key, from its backend.
    ///
    /// # Errors
    /// [`CoreError::NotFound`] if the key is gone.
    pub fn public_key(&self, key: &ManagedKey) -> Result<PublicKey> {
        let b = self.key_backend(key)?;
        b.store()
            .public_key(&key.info.id)
            .map_err(|e| Error::backend(b.name(), e))
    }

    /// Deletes a key; if it was the default key, there is no default key afterwards.
    ///
    /// # Errors
    /// [`CoreError::NotFound`] if it is gone already, or a storage error.
    pub fn delete(&self, key: &ManagedKey) -> Result<()> {
        let b = self.key_backend(key)?;
        b.store()
            .delete(&key.info.id)
            .map_err(|e| Error::backend(b.name(), e))?;
        self.update_config(|c| {
            if c.default_key
                .as_ref()
                .is_some_and(|d| d.backend == key.backend && d.id == key.info.id)
            {
                c.default_key = None;
            }
            Ok(())
        })
    }

    /// The default key.
    ///
    /// # Errors
    /// [`Error::NoDefaultKey`] if none is set or it no longer exists; the backend's errors.
    pub fn default_key(&self) -> Result<ManagedKey> {
        let Some(d) = self.config().default_key.clone() else {
            return Err(Error::NoDefaultKey("no default key is set".into()));
        };
        let gone = || {
            Error::NoDefaultKey(format!(
                "the default key {}:{} no longer exists",
                d.backend, d.id
            ))
        };
        let b = self.existing_backend(&d.backend)?.ok_or_else(gone)?;
        match b.store().get(&d.id) {
            // The default key names a logical key: it signs with its primary version.
            Ok(info) => Ok(managed(&b, info).named_logically(true)),
            Err(e) if e.is(ErrorKind::NotFound) => Err(gone()),
            Err(e) => Err(Error::backend(b.name(), e)),
        }
    }

    /// Makes `key` the default key (saved in `keyhaven.toml`).
    ///
    /// # Errors
    /// [`CoreError::InvalidInput`] for a key of an ephemeral (`memory`) backend when the
    /// configuration is saved to a file (the key would be gone when it is next read);
    /// [`Error::Io`] if the configuration cannot be written.
    pub fn set_default_key(&self, key: &ManagedKey) -> Result<()> {
        if key.backend_kind.is_ephemeral() && self.config_path.is_some() {
            return Err(CoreError::InvalidInput(format!(
                "{key} is in the ephemeral {} backend '{}' and vanishes when this process \
                 exits; it cannot be the default key saved in keyhaven.toml",
                key.backend_kind, key.backend
            ))
            .into());
        }
        // Checked under the configuration lock: a `delete` of the key in another process either
        // happened before (then this is refused) or clears the default after (deletes take the
        // same lock once the key is gone), so the default never names a deleted key.
        let b = self.key_backend(key)?;
        self.update_config(|c| {
            b.store()
                .get(&key.info.id)
                .map_err(|e| Error::backend(b.name(), e))?;
            c.default_key = Some(DefaultKey::new(key.backend.clone(), key.info.id.clone()));
            Ok(())
        })
    }

    /// Makes `key` the default key if there is none, unless it is ephemeral.
    pub(crate) fn default_if_none(&self, key: &ManagedKey) -> Result<()> {
        if key.backend_kind.is_ephemeral() || self.config().default_key.is_some() {
            return Ok(());
        }
        let b = self.key_backend(key)?;
        self.update_config(|c| {
            if c.default_key.is_none() && b.store().get(&key.info.id).is_ok() {
                c.default_key = Some(DefaultKey::new(key.backend.clone(), key.info.id.clone()));
            }
            Ok(())
        })
    }

    /// Declares a backend and opens it once, creating its store if there is none (an encrypted
    /// store asks for a new passphrase). The first backend declared becomes the default
    /// backend, unless it is ephemeral (`memory`).
    ///
    /// # Errors
    /// [`CoreError::AlreadyExists`] if the name is taken, [`Error::Config`] for a bad name or
    /// declaration, or the backend's error when it cannot be opened (nothing is saved then).
    pub fn add_backend(&self, name: &str, backend: BackendConfig) -> Result<Backend> {
        validate_backend_name(name)?;
        let mut candidate = (*self.config()).clone();
        if candidate.backends.contains_key(name) {
            return Err(CoreError::AlreadyExists(format!("a backend named '{name}'")).into());
        }
        candidate.backends.insert(name.to_owned(), backend.clone());
        candidate.validate()?;
        let path = candidate.backend_path(&self.home, name);
        if path.as_deref().is_some_and(|p| p.starts_with(&self.home)) || path.is_none() {
            create_private_dir(&self.home)?;
        }
        let opened = open_or_create(&self.open_request(name, &backend, path.as_deref()))?;
        if matches!(opened.kind(), BackendKind::Encrypted | BackendKind::Pkcs11) {
            lock(&self.lifecycle().raw).insert(name.to_owned(), opened.clone());
        }
        self.update_config(|c| {
            if c.backends.contains_key(name) {
                return Err(CoreError::AlreadyExists(format!("a backend named '{name}'")).into());
            }
            c.backends.insert(name.to_owned(), backend.clone());
            if c.default_backend.is_none() && !backend.kind.is_ephemeral() {
                c.default_backend = Some(name.to_owned());
            }
            Ok(())
        })?;
        self.adopt_anchor(name, &opened)?;
        // Used from now on through the same decorator stack as every other backend (which
        // seals the home if this backend is its first encrypted store).
        let opened = self.decorate(opened)?;
        *lock(&self.slot(name)) = Some(opened.clone());
        Ok(opened)
    }

    /// Removes a backend from the configuration. Its store (files) is left where it is. The
    /// default backend and default key are unset if they pointed at it.
    ///
    /// # Errors
    /// [`Error::UnknownBackend`]; [`Error::Config`] if it is the fallback backend.
    pub fn remove_backend(&self, name: &str) -> Result<BackendConfig> {
        let removed = self.update_config(|c| {
            let Some(b) = c.backends.remove(name) else {
                return Err(Error::UnknownBackend {
                    name: name.to_owned(),
                    known: known_names(c),
                });
            };
            if c.fallback.backend.as_deref() == Some(name) {
                return Err(Error::Config {
                    origin: "keyhaven.toml".into(),
                    message: format!(
                        "'{name}' is the fallback backend: change or remove [fallback] first"
                    ),
                });
            }
            if c.default_backend.as_deref() == Some(name) {
                c.default_backend = None;
            }
            if c.default_key.as_ref().is_some_and(|d| d.backend == name) {
                c.default_key = None;
            }
            Ok(b)
        })?;
        lock(&self.backends).remove(name);
        Ok(removed)
    }

    /// Sets (or clears) the default backend.
    ///
    /// # Errors
    /// [`Error::Config`] if no backend has that name.
    pub fn set_default_backend(&self, name: Option<&str>) -> Result<()> {
        self.update_config(|c| {
            c.default_backend = name.map(str::to_owned);
            Ok(())
        })
    }

    /// Changes the configuration under the configuration lock: re-reads the file, applies
    /// `change`, validates, and writes it atomically (0600) if it changed. Returns what
    /// `change` returns.
    ///
    /// # Errors
    /// What `change` returns, [`Error::Config`] if the result is invalid, [`Error::Io`].
    pub fn update_config<T>(&self, change: impl FnOnce(&mut Config) -> Result<T>) -> Result<T> {
        // Unlocked before the configuration's own lock is taken (unlocking reads it).
        let state = match &self.config_path {
            Some(_) => Some(self.state()?),
            None => None,
        };
        let mut guard = self.config.write().unwrap_or_else(PoisonError::into_inner);
        let (Some(path), Some(state)) = (&self.config_path, state) else {
            let mut next = (**guard).clone();
            let out = change(&mut next)?;
            next.validate()?;
            *guard = std::sync::Arc::new(next);
            return Ok(out);
        };
        create_private_dir(&self.home)?;
        let _lock = FileLock::acquire(&self.home.join(CONFIG_LOCK))?;
        let mut next = Config::load_from(state.as_ref(), path)?;
        let before = next.clone();
        let out = change(&mut next)?;
        if next != before {
            // Naming an access policy inside a sealed home vouches for it as it is now (it must
            // be valid): whoever changes the configuration has unlocked the home.
            let policy = next
                .access
                .policy
                .as_ref()
                .filter(|p| before.access.policy.as_ref() != Some(*p))
                .map(|p| {
                    if p.is_absolute() {
                        p.clone()
                    } else {
                        self.home.join(p)
                    }
                })
                .filter(|p| state.is_authenticated() && std::fs::symlink_metadata(p).is_ok());
            if let Some(p) = &policy {
                let text = keyhaven_fs::read_config(p)?;
                keyhaven_audit::Policy::from_toml_str(&text)
                    .map_err(|e| CoreError::InvalidInput(format!("{}: {e}", p.display())))?;
                if p.starts_with(&self.home) {
                    state.write(p, text.as_bytes())?;
                }
            }
            next.save_to(state.as_ref(), path)?;
            self.lifecycle().state.config_changed();
            // A backend whose configuration changed is opened anew (its PIN source, its path);
            // one just added was opened with its new configuration.
            for name in before.backends.keys() {
                if before.backends.get(name) != next.backends.get(name) {
                    lock(&self.lifecycle().raw).remove(name);
                    lock(&self.backends).remove(name);
                }
            }
        }
        *guard = std::sync::Arc::new(next);
        Ok(out)
    }
}

/// A message that is a keyhaven assertion's JWS signing input is only signed by
/// [`KeyManager::make_assertion`]: signing it as an ordinary message would let whoever may sign
/// make an assertion with any metadata (a claimed protection, a backdated time).
fn refuse_assertion_signing_input(message: &[u8]) -> Result<()> {
    use base64ct::{Base64UrlUnpadded, Encoding};
    // `{"` in base64url: every JWS header starts so.
    if !message.starts_with(b"eyJ") {
        return Ok(());
    }
    let Some(dot) = message.iter().position(|&b| b == b'.') else {
        return Ok(());
    };
    let Ok(header) = std::str::from_utf8(&message[..dot]) else {
        return Ok(());
    };
    let Ok(json) = Base64UrlUnpadded::decode_vec(header) else {
        return Ok(());
    };
    let typ = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("typ").and_then(|t| t.as_str()).map(str::to_owned));
    if typ.as_deref() == Some(crate::ASSERTION_JWS_TYPE) {
        return Err(assertion_input_refused());
    }
    Ok(())
}

fn assertion_input_refused() -> Error {
    CoreError::InvalidInput(
        "this message is a keyhaven assertion's signing input; assertions are made with \
         `keyhaven sign --assertion` (the metadata is then the key's own)"
            .into(),
    )
    .into()
}

/// The key of `b` whose record carries `label`, found by listing (not through the label index).
fn label_in_records(b: &Backend, label: &str) -> Result<Option<KeyInfo>> {
    let keys = b.store().list().map_err(|e| Error::backend(b.name(), e))?;
    let mut found = keys.into_iter().filter(|k| k.label == label);
    Ok(match (found.next(), found.next()) {
        (Some(k), None) => Some(k),
        _ => None,
    })
}

/// A home without `keyhaven.toml` whose stores or manifest are still there lost its
/// configuration: say so instead of showing an empty home.
fn refuse_orphaned_stores(home: &Path, config_path: &Path) -> Result<()> {
    let stores: Vec<String> = std::fs::read_dir(home.join("backends"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let sealed = crate::integrity::manifest_path(home).exists();
    if stores.is_empty() && !sealed {
        return Ok(());
    }
    Err(CoreError::corrupt(
        config_path.display().to_string(),
        format!(
            "it is missing, but the home still holds {}: restore keyhaven.toml from a backup \
             (or, to start afresh, move the home's other files aside)",
            if stores.is_empty() {
                "its integrity manifest".to_owned()
            } else {
                format!("the stores of backends {}", stores.join(", "))
            }
        ),
    )
    .into())
}

/// Removes the temporary files a killed keyhaven left in the home's state directories (older
/// than a minute: a write going on now in another process is younger). Best effort.
fn sweep_leftovers(home: &Path) {
    let age = std::time::Duration::from_secs(60);
    let mut dirs = crate::integrity::state_dirs(home);
    dirs.push(home.to_owned());
    for dir in dirs {
        let _ = crate::fs::sweep_temp_files(&dir, &[crate::fs::TEMP_PREFIX], age);
    }
}

pub(crate) fn managed(b: &Backend, info: KeyInfo) -> ManagedKey {
    ManagedKey {
        backend: b.name().to_owned(),
        backend_kind: b.kind(),
        info,
        logical: false,
    }
}

impl ManagedKey {
    pub(crate) fn named_logically(mut self, logical: bool) -> Self {
        self.logical = logical;
        self
    }
}

fn sort_keys(keys: &mut [ManagedKey]) {
    keys.sort_by(|a, b| (&a.backend, &a.info.label).cmp(&(&b.backend, &b.info.label)));
}

fn known_names(config: &Config) -> String {
    let names = config.backend_names();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub(crate) fn unavailable_reason(e: &CoreError) -> String {
    match e {
        CoreError::Unavailable { reason, .. } => reason.clone(),
        CoreError::Other(o) if o.kind() == ErrorKind::Unavailable => o.to_string(),
        other => other.to_string(),
    }
}

/// A key that signs at a service's rate (see [`KeyManager::service_signer`]): owned, `Send +
/// Sync`, one audit record when it is made rather than one per signature.
#[derive(Clone)]
pub struct ServiceSigner {
    store: std::sync::Arc<dyn crate::KeyStore>,
    key: KeyInfo,
    revocations: std::sync::Arc<keyhaven_compromise::Revocations>,
}

impl fmt::Debug for ServiceSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSigner")
            .field("key", &self.key.id)
            .field("fingerprint", &self.key.fingerprint().to_hex())
            .finish_non_exhaustive()
    }
}

impl ServiceSigner {
    /// The key.
    pub fn key(&self) -> &KeyInfo {
        &self.key
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key.public_key
    }

    /// Signs `message` in the key's backend (in the device for hardware keys), unless the
    /// key was revoked meanwhile.
    ///
    /// # Errors
    /// [`CoreError::Revoked`]; the backend's error (a token removed, a TPM gone).
    pub fn sign(&self, message: &[u8]) -> keyhaven_core::Result<Signature> {
        if let Some(r) = self
            .revocations
            .check(self.key.id.as_str())
            .map_err(CoreError::from)?
        {
            return Err(CoreError::Revoked(format!(
                "{} (revoked at {}: {})",
                self.key.id,
                crate::rfc3339(r.revoked_at),
                r.reason
            )));
        }
        self.store.sign(&self.key.id, message)
    }
}

/// One backend's opened store (see `KeyManager::backends`).
type Slot = std::sync::Arc<Mutex<Option<Backend>>>;

/// A key of a [`KeyManager`] that signs through it (see [`KeyManager::signer`]).
#[derive(Debug, Clone)]
pub struct ManagedSigner<'a> {
    manager: &'a KeyManager,
    key: ManagedKey,
}

impl keyhaven_crypto::SignWith for ManagedSigner<'_> {
    type Error = Error;

    fn public_key(&self) -> &crate::PublicKey {
        self.key.public_key()
    }

    fn sign_message(&self, message: &[u8]) -> Result<Signature> {
        self.manager.sign(&self.key, message)
    }

    fn verify_message(&self, message: &[u8], signature: &Signature) -> bool {
        // Audited like any check against a key of the home (a failed audit write fails it).
        self.manager
            .verify(&self.key, SignInput::Message(message), signature)
            .is_ok()
    }
}
