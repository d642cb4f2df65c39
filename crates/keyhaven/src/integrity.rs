//! The home's integrity: the state files a home trusts are authenticated, so someone who can
//! write the home's files but lacks the passphrase cannot change what keyhaven does unnoticed.
//!
//! - **The key.** The home's *anchor* is its default backend when that is an encrypted store
//!   kept inside the home, else the first such backend by name. The anchor store derives a
//!   32-byte key from its key-encryption key (HKDF-SHA256): only someone who can unlock the
//!   store has it. A home without one whose keys are on a PKCS#11 token reached through a
//!   system module (root's, in root's directories) is anchored by an HMAC key made on the
//!   token: the manifest key is the token's HMAC-SHA256 of a fixed context, so only a session
//!   logged in with the PIN computes it. An encrypted store added later takes over.
//! - **The manifest.** `HOME/integrity.manifest` records the SHA-256 of every state file and is
//!   authenticated with HMAC-SHA256 under that key ([`keyhaven_fs::SealedState`]). It names the
//!   anchor (backend and store id), so pointing the configuration at another store is refused.
//! - **What it covers.** `keyhaven.toml` (backends, the default key), the rotation registry and
//!   its version index, the usage counters, the prekey pools, the revocation registry, and
//!   how far the audit log has reached at its last checkpoint (`audit.witness`), and the
//!   authority's public description (`authority/authority.json`: which key's checkpoints and
//!   revocations verify), and the policies kept in the home (`rotation.toml`, the access
//!   policy).
//!   Every read of one of them is checked: a file edited, swapped, rolled back, removed or
//!   planted is [`crate::CoreError::Corrupt`] naming it (exit 7), and only what depends on
//!   that file stops working.
//! - **When.** A home is sealed when its anchor store is created. A home that holds keys or
//!   state but has no manifest (made by an earlier keyhaven, or whose manifest was removed) is
//!   refused until `keyhaven integrity seal` accepts its present state, on purpose.
//! - **Not covered here.** A home with neither (PEM, memory or TPM only) is not sealed
//!   (`keyhaven doctor` says so). The whole home copied back from an earlier moment
//!   (manifest included) is detected only once the home is bound to a TPM counter
//!   ([`crate::rollback`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use zeroize::Zeroizing;

use keyhaven_fs::{PlainState, SealedState, StateFiles, StateKey};

use crate::backend::{Backend, BackendKind};
use crate::config::CONFIG_FILE;
use crate::manager::KeyManager;
use crate::{CoreError, Error, ErrorKind, Result};

/// What [`KeyManager::integrity_status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityStatus {
    /// The home's state is authenticated.
    Sealed {
        /// The anchor backend.
        anchor: String,
        /// The rollback counter the home is bound to (`BACKEND/tpm:0x015xxxxx`), if any.
        counter: Option<String>,
        /// How many changes the manifest has recorded.
        generation: u64,
        /// How many files it records.
        files: usize,
    },
    /// The home has nothing to anchor its integrity key ([`NO_ANCHOR`]): its state files are
    /// protected by file permissions only.
    NoAnchor,
    /// The anchor backend has no store yet (the home is sealed when it is created).
    NotYetSealed {
        /// The anchor backend.
        anchor: String,
    },
}

/// The state every component of one manager reads and writes through: plain files until the
/// home is sealed (possibly in the middle of this process, when its anchor store is created),
/// then the sealed state. Components keep this one cell, so none of them keeps writing plain
/// files after the home is sealed.
#[derive(Debug)]
pub(crate) struct StateCell {
    current: RwLock<Arc<dyn StateFiles>>,
    /// Serializes sealing.
    sealing: Mutex<()>,
    /// The configuration declares no anchor: nothing to unlock until it changes (so the
    /// question is not asked again on every signature).
    no_anchor: std::sync::atomic::AtomicBool,
}

impl Default for StateCell {
    fn default() -> Self {
        StateCell {
            current: RwLock::new(Arc::new(PlainState)),
            sealing: Mutex::new(()),
            no_anchor: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl StateCell {
    fn current(&self) -> Arc<dyn StateFiles> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The configuration changed: an anchor may have been declared.
    pub(crate) fn config_changed(&self) {
        self.no_anchor
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn set(&self, state: Arc<dyn StateFiles>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

impl StateFiles for StateCell {
    fn read(&self, path: &Path) -> std::result::Result<Option<Zeroizing<Vec<u8>>>, CoreError> {
        self.current().read(path)
    }

    fn write(&self, path: &Path, contents: &[u8]) -> std::result::Result<(), CoreError> {
        self.current().write(path, contents)
    }

    fn remove(&self, path: &Path) -> std::result::Result<(), CoreError> {
        self.current().remove(path)
    }

    fn list(&self, dir: &Path) -> std::result::Result<Vec<PathBuf>, CoreError> {
        self.current().list(dir)
    }

    fn is_authenticated(&self) -> bool {
        self.current().is_authenticated()
    }
}

/// A `keyhaven.toml` that does not match the manifest may have been edited by its owner: say
/// how to vouch for it.
fn config_hint(e: Error, path: &Path) -> Error {
    match e {
        Error::Core(CoreError::Corrupt { what, reason }) if what == path.display().to_string() => {
            CoreError::corrupt(
                what,
                format!(
                    "{reason}. If you edited it yourself, check it and run `keyhaven integrity \
                     accept keyhaven.toml` (asks for the passphrase); keyhaven's own commands \
                     (`keyhaven backend ...`) change it without this step"
                ),
            )
            .into()
        }
        other => other,
    }
}

/// Whether `path` is inside `home`, judged on the real paths (`..` and links resolved where
/// they exist), so `HOME/../HOME/x` and a link out of the home are told apart.
fn inside(home: &Path, path: &Path) -> bool {
    let real = |p: &Path| -> Option<PathBuf> {
        let p = &std::path::absolute(p).ok()?;
        if let Ok(c) = std::fs::canonicalize(p) {
            return Some(c);
        }
        // Not there yet: its nearest existing ancestor, plus the rest (without `..`).
        let mut rest = Vec::new();
        let mut cur: &Path = p;
        loop {
            if let Ok(c) = std::fs::canonicalize(cur) {
                let mut out = c;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Some(out);
            }
            let name = cur.file_name()?;
            if name == ".." {
                return None;
            }
            rest.push(name.to_owned());
            cur = cur.parent()?;
        }
    };
    match (real(home), real(path)) {
        (Some(h), Some(p)) => p != h && p.starts_with(&h),
        _ => false,
    }
}

/// Whether `path` is inside `home` as written (without following links: a linked directory
/// on the way is refused when the file is read through the manifest, never taken as "outside
/// the home").
fn lexically_inside(home: &Path, path: &Path) -> bool {
    path != home
        && path.starts_with(home)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// The kind of the file store in `dir`, if there is one.
fn keyhaven_store_file_kind(dir: &Path) -> Option<BackendKind> {
    #[cfg(feature = "file")]
    {
        match keyhaven_store_file::detect(dir) {
            Ok(Some(keyhaven_store_file::StoreKind::Encrypted)) => Some(BackendKind::Encrypted),
            Ok(Some(_)) => Some(BackendKind::Pem),
            _ => None,
        }
    }
    #[cfg(not(feature = "file"))]
    {
        let _ = dir;
        None
    }
}

/// The directories of a home that hold state files (each file in them is one), besides the
/// home itself: the rotation registry and its version index, the usage counters, the
/// revocations, and each prekey pool.
pub(crate) fn state_dirs(home: &Path) -> Vec<PathBuf> {
    let rotation = home.join(crate::rotation::ROTATION_DIR);
    let mut dirs = vec![
        rotation.join("registry").join("keys"),
        rotation.join("registry").join("versions"),
        rotation.join("usage"),
        home.join(crate::lifecycle::REVOCATIONS_DIR),
    ];
    if let Ok(pools) = std::fs::read_dir(rotation.join("prekeys")) {
        dirs.extend(pools.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    dirs
}

/// The context a token's HMAC key authenticates a home's manifest under.
#[cfg(feature = "pkcs11")]
const TOKEN_CONTEXT: &[u8] = b"keyhaven home integrity manifest v1";

/// The integrity key of a sealed home, from its anchor `raw` (backend `anchor`): the manifest's
/// label (`BACKEND/STORE_ID` for an encrypted store, `BACKEND/pkcs11:SERIAL:KEY_ID` for a
/// token; checked on every open) and the key material. `claimed` is the label the manifest
/// claims (unauthenticated: it only says which token key to ask; a wrong one fails the MAC).
fn anchor_key(
    anchor: &str,
    raw: &Backend,
    claimed: Option<&str>,
    tag: &str,
) -> Result<(String, Zeroizing<[u8; 32]>)> {
    if let Some(secret) = raw.anchor_secret() {
        return Ok((format!("{anchor}/{}", secret.store_id), secret.key.clone()));
    }
    #[cfg(feature = "pkcs11")]
    if let Some(token) = raw.pkcs11_store() {
        let manifest_error = |why: String| -> Error {
            CoreError::corrupt("the home's integrity manifest (its anchor)", why).into()
        };
        let claimed = claimed.ok_or_else(|| manifest_error("it names no anchor".into()))?;
        let rest = claimed
            .strip_prefix(anchor)
            .and_then(|r| r.strip_prefix("/pkcs11:"))
            .ok_or_else(|| {
                manifest_error(format!(
                    "it names the anchor '{claimed}', not a key on the token of backend \
                     '{anchor}'"
                ))
            })?;
        let (serial, key_id) = rest
            .rsplit_once(':')
            .ok_or_else(|| manifest_error(format!("'{claimed}' is not a token key")))?;
        let actual = token.token_serial();
        if actual != serial {
            return Err(manifest_error(format!(
                "the home was sealed with the token whose serial is '{serial}', but backend \
                 '{anchor}' is the token '{actual}': put the right token back (or restore \
                 keyhaven.toml)"
            )));
        }
        let key = token
            .token_hmac(key_id, tag, TOKEN_CONTEXT)
            .map_err(|e| Error::backend(anchor, e))?;
        return Ok((claimed.to_owned(), key));
    }
    let _ = (claimed, tag);
    Err(not_an_anchor(anchor))
}

/// A new integrity key for sealing a home with `raw` (backend `anchor`): its label, key
/// material, and (for a token) the id of the key made for it, to destroy if sealing fails.
fn new_anchor_key(
    anchor: &str,
    raw: &Backend,
    tag: &str,
) -> Result<(String, Zeroizing<[u8; 32]>, Option<String>)> {
    if raw.anchor_secret().is_some() {
        let (label, key) = anchor_key(anchor, raw, None, tag)?;
        return Ok((label, key, None));
    }
    #[cfg(feature = "pkcs11")]
    if let Some(token) = raw.pkcs11_store() {
        let err = |e| Error::backend(anchor, e);
        let serial = token.token_serial();
        let key_id = token.create_hmac_key(tag).map_err(err)?;
        let label = format!("{anchor}/pkcs11:{serial}:{key_id}");
        let key = match token.token_hmac(&key_id, tag, TOKEN_CONTEXT) {
            Ok(k) => k,
            Err(e) => {
                let _ = token.destroy_hmac_key(&key_id);
                return Err(err(e));
            }
        };
        return Ok((label, key, Some(key_id)));
    }
    let _ = tag;
    Err(not_an_anchor(anchor))
}

/// Destroys the token key made for a seal that did not happen.
fn discard_anchor_key(raw: &Backend, made: Option<String>) {
    #[cfg(feature = "pkcs11")]
    if let (Some(token), Some(key_id)) = (raw.pkcs11_store(), made.as_deref()) {
        let _ = token.destroy_hmac_key(key_id);
    }
    let _ = (raw, made);
}

fn not_an_anchor(anchor: &str) -> Error {
    Error::backend(
        anchor,
        CoreError::Unsupported {
            operation: "anchor the home's integrity",
            reason: format!("backend '{anchor}' derives no integrity key"),
        },
    )
}

/// Whether the PKCS#11 module at `module` may be loaded before the home's configuration is
/// authenticated (as a home's anchor is): it and every directory above it belong to root and
/// are writable by no one else, so someone who can write the user's files cannot have put it
/// there.
pub(crate) fn system_module(module: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(real) = std::fs::canonicalize(module) else {
        return false;
    };
    let root_only =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    std::fs::metadata(&real).is_ok_and(|m| m.is_file()) && real.ancestors().all(root_only)
}

/// Why a home is not sealed when it has no anchor.
pub const NO_ANCHOR: &str = "no encrypted backend inside the home, and no PKCS#11 token \
     reached through a module that belongs to root, holds an integrity key";

/// The manifest's path in `home`.
pub fn manifest_path(home: &std::path::Path) -> PathBuf {
    SealedState::manifest_path(home)
}

impl KeyManager {
    /// What names this home on a token that anchors it (the label of its HMAC key there): the
    /// first 16 hex digits of the SHA-256 of the home's real path. A token may anchor several
    /// homes; a home without a manifest recognises its own key by it.
    pub(crate) fn home_tag(&self) -> String {
        use sha2::Digest;
        let real = std::fs::canonicalize(self.home()).unwrap_or_else(|_| self.home().to_owned());
        let digest = sha2::Sha256::digest(real.as_os_str().as_encoded_bytes());
        hex::encode(&digest[..8])
    }

    /// A home without a manifest never uses a token that anchors it (the token holds the
    /// home's HMAC key): its manifest was removed, and the configuration may have been steered
    /// so that the home looks unsealed.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the manifest; the token's errors.
    pub(crate) fn refuse_token_of_unsealed_home(&self, backend: &Backend) -> Result<()> {
        #[cfg(feature = "pkcs11")]
        if let Some(token) = backend.pkcs11_store()
            && self.config_path().is_some()
            && !SealedState::exists(self.home())
            && token
                .has_hmac_key(&self.home_tag())
                .map_err(|e| Error::backend(backend.name(), e))?
        {
            return Err(CoreError::corrupt(
                manifest_path(self.home()).display().to_string(),
                format!(
                    "it is missing, but the token of backend '{}' anchors this home's integrity \
                     (it holds the home's key): the manifest was removed outside keyhaven. \
                     Restore it from a backup, or accept the home's present state with \
                     `keyhaven integrity seal`",
                    backend.name()
                ),
            )
            .into());
        }
        let _ = backend;
        Ok(())
    }

    /// The backend that anchors the home's integrity key: the one the manifest names, or, for
    /// a home not sealed yet, the default backend if it is an encrypted store inside the home,
    /// else the first such backend by name, else (a home whose keys are on a token) the
    /// default or first PKCS#11 backend whose module belongs to root. `None` for a
    /// configuration held in memory or a home with neither.
    pub fn integrity_anchor(&self) -> Option<String> {
        self.config_path()?;
        let config = self.config();
        // Only an encrypted store kept inside the home, or a token reached through a module
        // only root can have put there, can be the anchor, whatever the (unauthenticated)
        // manifest or configuration claim: nothing else is ever opened before the
        // configuration is authenticated.
        let encrypted = |n: &String| {
            config
                .backends
                .get(n)
                .is_some_and(|b| b.kind == BackendKind::Encrypted)
                && config
                    .backend_path(self.home(), n)
                    .is_some_and(|p| inside(self.home(), &p))
        };
        let token = |n: &String| {
            config.backends.get(n).is_some_and(|b| {
                b.kind == BackendKind::Pkcs11
                    && b.module.as_deref().is_some_and(|m| {
                        system_module(&crate::config::resolve_path(self.home(), m))
                    })
            })
        };
        // A claim picks among eligible backends only. A token claimed wrongly gains nothing:
        // before the configuration is authenticated its PIN comes from the user (never from a
        // file or variable the configuration names), so only the user's own token opens, and
        // only a key keyhaven generated there counts.
        if let Some(claimed) = SealedState::peek_anchor(self.home())
            && let Some((name, _)) = claimed.split_once('/')
            && (encrypted(&name.to_owned()) || token(&name.to_owned()))
        {
            return Some(name.to_owned());
        }
        // The default backend, then any other, but only a store kept inside the home (the
        // anchor must be there whenever the home is, not on a drive that may be away); then
        // a token.
        let candidates = || config.default_backend.iter().chain(config.backends.keys());
        candidates()
            .find(|n| encrypted(n))
            .or_else(|| candidates().find(|n| token(n)))
            .cloned()
    }

    /// A home that holds an encrypted store with keys but has no manifest was sealed once (or
    /// made by an earlier keyhaven): whatever its configuration says now (another anchor, one
    /// that cannot be opened, a path that leads out of the home and back), it is not run
    /// unauthenticated.
    fn refuse_unsealed_with_keys(&self) -> Result<()> {
        if SealedState::exists(self.home()) {
            return Ok(());
        }
        // The default place of stores, and wherever the configuration puts one inside the home.
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.home().join("backends"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let config = self.config();
        for name in config.backends.keys() {
            if let Some(p) = config.backend_path(self.home(), name)
                && inside(self.home(), &p)
            {
                dirs.push(p);
            }
        }
        for dir in dirs {
            let encrypted = matches!(keyhaven_store_file_kind(&dir), Some(BackendKind::Encrypted));
            let has_keys = std::fs::read_dir(dir.join("keys"))
                .map(|mut rd| {
                    rd.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.')))
                })
                .unwrap_or(false);
            if encrypted && has_keys {
                return Err(CoreError::corrupt(
                    manifest_path(self.home()).display().to_string(),
                    format!(
                        "the home holds the encrypted store {} with keys but no integrity \
                         manifest: it was removed (or the home was made by a keyhaven before \
                         0.1.1). Nothing in the home is trusted until you restore the manifest \
                         from a backup, or accept the home's present state with `keyhaven \
                         integrity seal`",
                        dir.display()
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// The state files of this home, read and written through the integrity manifest when the
    /// home is sealed (see the [module docs](crate::integrity)). Unlocks the anchor backend
    /// (asking for its passphrase) the first time.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the manifest (missing, altered, or sealed by another
    /// store) or `keyhaven.toml` (changed outside keyhaven); the anchor's errors (a wrong
    /// passphrase, ...).
    pub fn state(&self) -> Result<Arc<dyn StateFiles>> {
        let cell = self.lifecycle().state.clone();
        if cell.is_authenticated() || cell.no_anchor.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(cell);
        }
        let _sealing = cell.sealing.lock().unwrap_or_else(PoisonError::into_inner);
        if cell.is_authenticated() {
            return Ok(cell.clone());
        }
        if let Some(sealed) = self.unlock_state()? {
            // From now on the configuration in use is the authenticated one.
            if let Some(path) = self.config_path() {
                let verified =
                    crate::Config::load_from(&sealed, path).map_err(|e| config_hint(e, path))?;
                self.replace_config(verified);
            }
            // A home bound to a rollback counter is checked against it (through the TPM
            // backend the authenticated configuration names) before anything is used.
            self.attach_bound_counter(&sealed)?;
            cell.set(Arc::new(sealed));
            // A token-anchored home given an encrypted store whose move to it did not finish
            // (a crash after the store was added) moves now.
            self.finish_adoption()?;
        }
        Ok(cell.clone())
    }

    /// The sealed state, sealing a fresh home whose anchor store exists; `None` while the home
    /// has no anchor (store).
    fn unlock_state(&self) -> Result<Option<SealedState>> {
        let Some(anchor) = self.integrity_anchor() else {
            self.refuse_unsealed_with_keys()?;
            if SealedState::exists(self.home()) {
                return Err(CoreError::corrupt(
                    manifest_path(self.home()).display().to_string(),
                    "the home is sealed, but keyhaven.toml declares no backend that can unlock \
                     it: the configuration was changed outside keyhaven; restore it",
                )
                .into());
            }
            self.lifecycle()
                .state
                .no_anchor
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(None);
        };
        let sealed = SealedState::exists(self.home());
        let raw = match self.raw_backend(&anchor, false) {
            Ok(r) => r,
            // An anchor out of reach (an unmounted drive) of a home not sealed yet.
            Err(Error::Backend { source, .. } | Error::Core(source))
                if !sealed && crate::error::is_unavailable(&source) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let Some(raw) = raw else {
            if sealed {
                return Err(self.anchor_missing(&anchor));
            }
            self.refuse_unsealed_with_keys()?;
            // Nothing to protect yet: the home is sealed when the anchor store is created.
            return Ok(None);
        };
        if sealed {
            let claimed = SealedState::peek_anchor(self.home());
            let (label, key) = anchor_key(&anchor, &raw, claimed.as_deref(), &self.home_tag())?;
            Ok(Some(SealedState::open(
                self.home(),
                StateKey::new(key),
                &label,
            )?))
        } else {
            if !self.is_fresh(&raw)? {
                return Err(CoreError::corrupt(
                    manifest_path(self.home()).display().to_string(),
                    "the home holds keys and state but no integrity manifest: it was removed \
                     (or the home was made by a keyhaven before 0.1.1). Nothing in the home is \
                     trusted until you restore the manifest from a backup, or accept the \
                     home's present state with `keyhaven integrity seal`",
                )
                .into());
            }
            let (label, key, made) = new_anchor_key(&anchor, &raw, &self.home_tag())?;
            let created =
                SealedState::create(self.home(), StateKey::new(key), &label, &self.state_files());
            match created {
                Ok(sealed) => Ok(Some(sealed)),
                // Another process sealed it meanwhile: its key is the home's.
                Err(e) if e.is(ErrorKind::AlreadyExists) => {
                    discard_anchor_key(&raw, made);
                    let claimed = SealedState::peek_anchor(self.home());
                    let (label, key) =
                        anchor_key(&anchor, &raw, claimed.as_deref(), &self.home_tag())?;
                    Ok(Some(SealedState::open(
                        self.home(),
                        StateKey::new(key),
                        &label,
                    )?))
                }
                Err(e) => {
                    discard_anchor_key(&raw, made);
                    Err(e.into())
                }
            }
        }
    }

    /// The error for a sealed home whose anchor store is gone, naming its header file.
    fn anchor_missing(&self, anchor: &str) -> Error {
        let header = self
            .backend_path(anchor)
            .map(|p| p.join("keyhaven-store.json"));
        CoreError::corrupt(
            header.as_ref().map_or_else(
                || manifest_path(self.home()).display().to_string(),
                |h| h.display().to_string(),
            ),
            format!(
                "it is missing, but the home is sealed by backend '{anchor}', whose store it \
                 heads: restore the store from a backup"
            ),
        )
        .into()
    }

    /// Whether the home holds nothing worth protecting yet: the anchor store holds no key and
    /// no lifecycle state file exists.
    fn is_fresh(&self, anchor: &Backend) -> Result<bool> {
        let no_keys = anchor
            .store_raw()
            .list()
            .map_err(|e| Error::backend(anchor.name(), e))?
            .is_empty();
        let config = self.config_path().map(std::path::Path::to_owned);
        // The configuration and policies the user wrote before the first key are adopted.
        let policies = self.policy_files();
        let only_config = self
            .state_files()
            .iter()
            .all(|p| Some(p) == config.as_ref() || policies.contains(p));
        Ok(no_keys && only_config)
    }

    /// The policy files the home trusts that are kept inside it: the rotation policies and,
    /// if the configuration names one there, the access policy.
    pub(crate) fn policy_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.rotation_policy_path()];
        if let Some(p) = self.access_policy_path()
            && (lexically_inside(self.home(), &p) || inside(self.home(), &p))
        {
            files.push(p);
        }
        files
    }

    /// The text of a policy file (`None`: there is none). Inside a sealed home it is read
    /// through the manifest, so a policy loosened, removed or planted by someone without the
    /// passphrase is refused, naming the file; a file outside the home must belong to the user
    /// (or root) and be writable by no one else.
    ///
    /// # Errors
    /// [`CoreError::Corrupt`] naming the file (changed outside keyhaven, or not recorded: run
    /// `keyhaven integrity accept FILE` after checking it); I/O errors.
    pub(crate) fn policy_text(&self, path: &Path) -> Result<Option<String>> {
        let exists = std::fs::symlink_metadata(path).is_ok();
        let in_home = lexically_inside(self.home(), path) || inside(self.home(), path);
        let state = if in_home && self.config_path().is_some() {
            Some(self.state()?).filter(|s| s.is_authenticated())
        } else {
            None
        };
        // Outside the home, or in a home not sealed: the file as it is, if it is the user's.
        let Some(state) = state else {
            return Ok(exists.then(|| keyhaven_fs::read_config(path)).transpose()?);
        };
        let hint = |reason: String| -> Error {
            let rel = path.strip_prefix(self.home()).unwrap_or(path);
            CoreError::corrupt(
                path.display().to_string(),
                format!(
                    "{reason}. If you wrote it yourself, check it (`keyhaven policy check`) and \
                     run `keyhaven integrity accept {}` (asks for the passphrase)",
                    rel.display()
                ),
            )
            .into()
        };
        match state.read(path) {
            Ok(Some(bytes)) => String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not UTF-8 text", path.display())).into()
            }),
            Ok(None) if exists => Err(hint(
                "it is not recorded in the home's integrity manifest: it was put there outside \
                 keyhaven"
                    .into(),
            )),
            Ok(None) => Ok(None),
            Err(CoreError::Corrupt { what, reason }) if what == path.display().to_string() => {
                Err(hint(reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every state file the home holds now (what `keyhaven integrity seal` adopts).
    pub(crate) fn state_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let authority = self
            .home()
            .join(crate::lifecycle::AUTHORITY_DIR)
            .join("authority.json");
        for file in [
            self.home().join(CONFIG_FILE),
            self.home().join(crate::lifecycle::AUDIT_WITNESS),
            self.home().join(crate::tombstones::TOMBSTONES),
            authority,
        ]
        .into_iter()
        .chain(self.policy_files())
        {
            if file.exists() {
                files.push(file);
            }
        }
        for dir in state_dirs(self.home()) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || name.ends_with(".lock") {
                    continue;
                }
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(entry.path());
                }
            }
        }
        files.sort();
        files
    }

    /// Seals a home that has no manifest, accepting every state file as it is now: for a
    /// home made by an earlier keyhaven, or one whose manifest was lost and whose state you
    /// have checked. Unlocks the anchor backend.
    ///
    /// # Errors
    /// [`CoreError::AlreadyExists`] if the home is sealed; [`CoreError::Unsupported`] without
    /// an encrypted backend to anchor it; the anchor's errors.
    pub fn seal_home(&self) -> Result<IntegrityStatus> {
        if SealedState::exists(self.home()) {
            return Err(CoreError::AlreadyExists(format!(
                "the integrity manifest {} (the home is sealed)",
                manifest_path(self.home()).display()
            ))
            .into());
        }
        let anchor = self
            .integrity_anchor()
            .ok_or_else(|| CoreError::Unsupported {
                operation: "seal the home",
                reason: format!("{NO_ANCHOR}; add one with `keyhaven backend add encrypted NAME`"),
            })?;
        let raw = self.raw_backend(&anchor, true)?.ok_or_else(|| {
            Error::backend(
                &anchor,
                CoreError::NotFound(format!("the store of backend '{anchor}'")),
            )
        })?;
        let (label, key, made) = new_anchor_key(&anchor, &raw, &self.home_tag())?;
        if let Err(e) =
            SealedState::create(self.home(), StateKey::new(key), &label, &self.state_files())
        {
            discard_anchor_key(&raw, made);
            return Err(e.into());
        }
        self.integrity_status()
    }

    /// A home anchored by a token moves to an encrypted store inside it once one is added
    /// (`name`, opened as `raw`): the store is there whenever the home is, while a token can be
    /// unplugged, and a home whose anchor is away is refused. The manifest is checked under
    /// the token's key and written anew under the store's; the token's key is then destroyed.
    ///
    /// # Errors
    /// The manifest does not authenticate; the token cannot be reached.
    pub(crate) fn adopt_anchor(&self, name: &str, raw: &Backend) -> Result<()> {
        if raw.anchor_secret().is_none()
            || !self
                .backend_path(name)
                .is_some_and(|p| inside(self.home(), &p))
        {
            return Ok(());
        }
        let Some(claimed) = SealedState::peek_anchor(self.home()) else {
            return Ok(());
        };
        let Some((current, rest)) = claimed.split_once('/') else {
            return Ok(());
        };
        let Some(token_key) = rest
            .strip_prefix("pkcs11:")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(_, id)| id.to_owned())
        else {
            return Ok(());
        };
        let sealed = self.sealed_state()?;
        let (label, key) = anchor_key(name, raw, None, &self.home_tag())?;
        let key = StateKey::new(key);
        // A rollback counter moves too: its authorization comes from the anchor's key.
        let (counter, old_counter) = match self.counter_for_rekey(&sealed, &key)? {
            Some((c, old)) => (Some(c), Some(old)),
            None => (None, None),
        };
        let moved = sealed.rekey(key, &label, counter)?;
        self.lifecycle().state.set(Arc::new(moved));
        if let Some(old) = old_counter {
            old.remove();
        }
        #[cfg(feature = "pkcs11")]
        if let Ok(Some(old)) = self.raw_backend(current, false)
            && let Some(token) = old.pkcs11_store()
        {
            let _ = token.destroy_hmac_key(&token_key);
        }
        let _ = (current, token_key);
        Ok(())
    }

    /// Moves a token-anchored home to the encrypted store inside it, if it has one (see
    /// [`KeyManager::adopt_anchor`]).
    fn finish_adoption(&self) -> Result<()> {
        let Some(claimed) = SealedState::peek_anchor(self.home()) else {
            return Ok(());
        };
        if !claimed.contains("/pkcs11:") {
            return Ok(());
        }
        let config = self.config();
        let store = config
            .default_backend
            .iter()
            .chain(config.backends.keys())
            .find(|n| {
                config
                    .backends
                    .get(*n)
                    .is_some_and(|b| b.kind == BackendKind::Encrypted)
                    && config
                        .backend_path(self.home(), n)
                        .is_some_and(|p| inside(self.home(), &p))
            })
            .cloned();
        drop(config);
        let Some(store) = store else {
            return Ok(());
        };
        match self.raw_backend(&store, false)? {
            Some(raw) => self.adopt_anchor(&store, &raw),
            None => Ok(()),
        }
    }

    /// Records `file` (a state file of the home, such as a hand-edited `keyhaven.toml`) as it
    /// is now. Unlocks the home: only someone who can may vouch for a change.
    ///
    /// # Errors
    /// [`CoreError::Unsupported`] if the home is not sealed; [`CoreError::InvalidInput`] for a
    /// file outside the home.
    pub fn accept_state_file(&self, file: &std::path::Path) -> Result<()> {
        let sealed = self.sealed_state()?;
        let file = if file.is_absolute() {
            file.to_owned()
        } else {
            self.home().join(file)
        };
        self.validate_before_accept(&file)?;
        sealed.accept(&file)?;
        Ok(())
    }

    /// A configuration or policy file is recorded only if keyhaven can use it: a typo is
    /// reported now, not on the next signature.
    fn validate_before_accept(&self, file: &Path) -> Result<()> {
        if std::fs::symlink_metadata(file).is_err() {
            return Ok(());
        }
        let text = || keyhaven_fs::read_config(file);
        if self.config_path() == Some(file) {
            crate::Config::from_toml_str(&text()?, &file.display().to_string())?;
        } else if file == self.rotation_policy_path() {
            keyhaven_rotation::PolicySet::from_toml_str(&text()?)
                .map_err(|e| CoreError::InvalidInput(format!("{}: {e}", file.display())))?;
        } else if self.access_policy_path().as_deref() == Some(file) {
            keyhaven_audit::Policy::from_toml_str(&text()?)
                .map_err(|e| CoreError::InvalidInput(format!("{}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// The sealed state, checked against its rollback counter if it is bound to one.
    pub(crate) fn sealed_state(&self) -> Result<SealedState> {
        let sealed = self.sealed_state_unattached()?;
        self.attach_bound_counter(&sealed)?;
        Ok(sealed)
    }

    /// From now on this manager reads and writes the home's state through `sealed`.
    pub(crate) fn use_sealed(&self, sealed: SealedState) {
        self.lifecycle().state.set(Arc::new(sealed));
    }

    /// The sealed state, authenticated but not yet checked against a rollback counter.
    pub(crate) fn sealed_state_unattached(&self) -> Result<SealedState> {
        let anchor = self
            .integrity_anchor()
            .ok_or_else(|| CoreError::Unsupported {
                operation: "check the home's integrity",
                reason: format!("the home is not sealed: {NO_ANCHOR}"),
            })?;
        let raw = self
            .raw_backend(&anchor, false)?
            .ok_or_else(|| self.anchor_missing(&anchor))?;
        let claimed = SealedState::peek_anchor(self.home());
        let (label, key) = anchor_key(&anchor, &raw, claimed.as_deref(), &self.home_tag())?;
        Ok(SealedState::open(self.home(), StateKey::new(key), &label)?)
    }

    /// Whether and how the home is sealed (unlocks the anchor if it is).
    ///
    /// # Errors
    /// The manifest does not authenticate; the anchor cannot be unlocked.
    pub fn integrity_status(&self) -> Result<IntegrityStatus> {
        let Some(anchor) = self.integrity_anchor() else {
            return Ok(IntegrityStatus::NoAnchor);
        };
        if !SealedState::exists(self.home()) && self.raw_backend(&anchor, false)?.is_none() {
            return Ok(IntegrityStatus::NotYetSealed { anchor });
        }
        let sealed = self.sealed_state()?;
        Ok(IntegrityStatus::Sealed {
            anchor,
            counter: sealed.bound_counter()?.map(|(id, _)| id),
            generation: sealed.generation()?,
            files: sealed.recorded()?.len(),
        })
    }

    /// Checks every file the manifest records; returns one error per file that does not
    /// match (empty: the home's state is intact).
    ///
    /// # Errors
    /// The manifest itself does not authenticate, or the home is not sealed.
    pub fn verify_integrity(&self) -> Result<Vec<CoreError>> {
        let sealed = self.sealed_state()?;
        let mut problems = sealed.verify_all()?;
        // Files put where state lives that the manifest does not record (planted): never
        // used, but reported.
        let recorded = sealed.recorded()?;
        for file in self.state_files() {
            if !recorded.contains(&file) {
                problems.push(CoreError::corrupt(
                    file.display().to_string(),
                    "it is not recorded in the home's integrity manifest: it was put there \
                     outside keyhaven, and keyhaven ignores it; remove it",
                ));
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::system_module;

    #[test]
    fn only_modules_root_alone_could_have_put_there_are_system_modules() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // A root-owned library in a root-owned directory (any Linux has libc's directory).
        let lib = [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.exists());
        if let Some(lib) = lib {
            assert!(system_module(lib), "{}", lib.display());
        }
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("module.so");
        std::fs::write(&module, b"not really").unwrap();
        std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o644)).unwrap();
        let by_root = std::fs::metadata(&module).unwrap().uid() == 0;
        if by_root {
            // Root's own file, but in a directory others can write to.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            assert!(!system_module(&module));
        } else {
            assert!(!system_module(&module), "a module the user owns");
        }
        assert!(!system_module(&dir.path().join("missing.so")));
        assert!(!system_module(dir.path()), "a directory is no module");
    }
}
