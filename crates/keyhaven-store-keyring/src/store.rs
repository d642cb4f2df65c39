//! The key store over a keyring: keys sealed by keyhaven, an authenticated index.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use keyhaven_fs::StateFiles;

use base64ct::{Base64, Encoding};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use keyhaven_core::{
    Algorithm, BackendInfo, Error, KeyId, KeyInfo, KeyStore, Protection, PublicKey, Result,
    SecretBytes, Signature, unix_now, validate_label,
};
use keyhaven_crypto::aead::Sealer;
use keyhaven_crypto::{PrivateKey, default_provider, fill_random};

use crate::vault::{KeyringStatus, Vault};

const INDEX: &str = "index";
const KEY_PREFIX: &str = "key-";
const FORMAT: u32 = 1;
// The bounds of the encrypted file store: an index item claiming more is refused before
// Argon2id runs (a forged cost must not exhaust memory or time).
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

/// Which keyring holds the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Keyring {
    /// A collection of the freedesktop.org Secret Service (GNOME Keyring, KWallet,
    /// KeePassXC) on D-Bus.
    SecretService {
        /// The collection's alias (`default`: the user's login keyring).
        collection: String,
        /// The D-Bus address of the bus (`None`: the session bus of
        /// `DBUS_SESSION_BUS_ADDRESS`).
        bus: Option<String>,
    },
    /// The Linux kernel key retention service: kernel memory, gone at reboot.
    #[cfg(target_os = "linux")]
    Kernel(crate::KernelKeyring),
    /// The macOS login Keychain (compiled, not tested here).
    #[cfg(target_os = "macos")]
    Keychain,
}

impl Keyring {
    /// The Secret Service's default collection on the session bus.
    pub fn secret_service() -> Self {
        Keyring::SecretService {
            collection: "default".into(),
            bus: None,
        }
    }

    fn vault(&self, store: &str) -> Result<Box<dyn Vault>> {
        match self {
            #[cfg(target_os = "linux")]
            Keyring::SecretService { collection, bus } => {
                Ok(Box::new(crate::vault::secret_service::SecretServiceVault {
                    alias: collection.clone(),
                    address: bus.clone(),
                    store: store.to_owned(),
                }))
            }
            #[cfg(not(target_os = "linux"))]
            Keyring::SecretService { .. } => Err(Error::Unavailable {
                backend: "Secret Service".into(),
                reason: format!(
                    "the Secret Service is a Linux (freedesktop.org) keyring; store '{store}' \
                     needs the system keyring of this platform"
                ),
            }),
            #[cfg(target_os = "linux")]
            Keyring::Kernel(k) => Ok(Box::new(crate::vault::kernel::KernelVault {
                keyring: *k,
                store: store.to_owned(),
            })),
            #[cfg(target_os = "macos")]
            Keyring::Keychain => Ok(Box::new(crate::vault::keychain::KeychainVault {
                store: store.to_owned(),
            })),
        }
    }
}

/// Argon2id costs of the store key (the passphrase's hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KdfCost {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfCost {
    /// OWASP's Argon2id minimum (19 MiB, 2 passes, 1 lane), as the encrypted file store.
    fn default() -> Self {
        KdfCost {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl KdfCost {
    /// Tiny costs for tests only: never for real keys.
    pub fn insecure_for_tests() -> Self {
        KdfCost {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// Where a keyring store lives and how it is protected.
#[derive(Clone)]
#[non_exhaustive]
pub struct KeyringConfig {
    /// The keyring.
    pub keyring: Keyring,
    /// The store's name: its items carry it, so stores in one keyring stay apart.
    pub store: String,
    /// A lock file (0600, in a 0700 directory) that serialises changes across processes;
    /// without one only this process's threads are serialised.
    pub lock_file: Option<PathBuf>,
    /// Argon2id costs for a new store (an existing one keeps its own).
    pub kdf: KdfCost,
    /// Where the highest index generation seen is kept outside the keyring (in a sealed
    /// keyhaven home: authenticated), so an older index put back is noticed by every process.
    pub generation_file: Option<(PathBuf, Arc<dyn StateFiles>)>,
}

impl std::fmt::Debug for KeyringConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringConfig")
            .field("keyring", &self.keyring)
            .field("store", &self.store)
            .field("lock_file", &self.lock_file)
            .field("kdf", &self.kdf)
            .field(
                "generation_file",
                &self.generation_file.as_ref().map(|(p, _)| p),
            )
            .finish()
    }
}

impl KeyringConfig {
    /// Store `store` in `keyring`, default costs, no lock file.
    pub fn new(keyring: Keyring, store: impl Into<String>) -> Self {
        KeyringConfig {
            keyring,
            store: store.into(),
            lock_file: None,
            kdf: KdfCost::default(),
            generation_file: None,
        }
    }

    /// Keeps the highest index generation seen in `path`, read and written through `state`
    /// (the home's state: authenticated when the home is sealed), so a rolled-back index is
    /// refused by every process, not only one that saw the newer index.
    pub fn with_generation_file(
        mut self,
        path: impl Into<PathBuf>,
        state: Arc<dyn StateFiles>,
    ) -> Self {
        self.generation_file = Some((path.into(), state));
        self
    }

    /// Serialises changes across processes with the lock file `path`.
    pub fn with_lock_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.lock_file = Some(path.into());
        self
    }

    /// Argon2id costs for a new store.
    pub fn with_kdf(mut self, kdf: KdfCost) -> Self {
        self.kdf = kdf;
        self
    }
}

/// Whether `keyring` can be used now (for `keyhaven doctor`): ready, locked (with how to
/// unlock it), or unreachable (with why).
pub fn probe(keyring: &Keyring) -> KeyringStatus {
    match keyring.vault("probe") {
        Ok(v) => v.status(),
        Err(e) => KeyringStatus::Unreachable {
            keyring: format!("{keyring:?}"),
            reason: e.to_string(),
        },
    }
}

/// The index item: the store's Argon2id parameters in the clear, its keys sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexItem {
    format: u32,
    salt: String,
    kdf: KdfCost,
    sealed: String,
}

/// What the index seals.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Index {
    generation: u64,
    keys: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    id: KeyId,
    label: String,
    algorithm: Algorithm,
    created_at: u64,
    public_key: String,
}

impl IndexEntry {
    fn info(&self, store: &str) -> Result<KeyInfo> {
        let der = Base64::decode_vec(&self.public_key).map_err(|_| {
            Error::corrupt(
                format!("the index of keyring store '{store}'"),
                "bad public key",
            )
        })?;
        Ok(KeyInfo::new(
            self.id.clone(),
            self.label.clone(),
            Protection::SoftwareEncrypted,
            PublicKey::new(self.algorithm, der),
            self.created_at,
        ))
    }
}

/// A key store in an OS keyring. See the crate documentation.
pub struct KeyringStore {
    vault: Box<dyn Vault>,
    store: String,
    sealer: Sealer,
    lock_file: Option<PathBuf>,
    generation_file: Option<(PathBuf, Arc<dyn StateFiles>)>,
    /// Readers share it, a change holds it alone: a reader never sees a generation older than
    /// one a writer of this process already recorded.
    access: RwLock<()>,
    /// The highest index generation this process has seen: an older one is a rollback.
    seen: AtomicU64,
}

impl std::fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringStore")
            .field("keyring", &self.vault.describe())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn index_ad(store: &str) -> Vec<u8> {
    format!("keyhaven-keyring/v1 index\0{store}").into_bytes()
}

fn key_ad(store: &str, entry: &IndexEntry) -> Vec<u8> {
    let mut ad = format!(
        "keyhaven-keyring/v1 key\0{store}\0{}\0{}\0",
        entry.id,
        entry.algorithm.short_name()
    )
    .into_bytes();
    ad.extend_from_slice(entry.public_key.as_bytes());
    ad
}

impl KeyringStore {
    /// Opens store `config.store` in its keyring with `passphrase`, creating it when the
    /// keyring has none of its items.
    ///
    /// # Errors
    /// [`Error::Unavailable`] for a keyring out of reach; [`keyhaven_core::ErrorKind::Locked`]
    /// for a locked one (keyhaven never prompts: the message says how to unlock it);
    /// [`Error::BadPassphrase`] for a wrong passphrase (or an index another program changed);
    /// [`Error::Corrupt`] for a store whose index item was removed while its keys remain.
    pub fn open(config: &KeyringConfig, passphrase: &SecretString) -> Result<Self> {
        if config.store.is_empty()
            || !config
                .store
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::InvalidInput(format!(
                "'{}' is not a keyring store name (letters, digits, - _ .)",
                config.store.escape_debug()
            )));
        }
        let vault = config.keyring.vault(&config.store)?;
        let _lock = match &config.lock_file {
            Some(p) => Some(keyhaven_fs::FileLock::acquire(p)?),
            None => None,
        };
        let (salt, kdf, existing) = match vault.read(INDEX)? {
            Some(bytes) => {
                let item: IndexItem = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::corrupt(
                        format!("the index item of keyring store '{}'", config.store),
                        format!("changed by another program: {e}"),
                    )
                })?;
                let bad = |what: &str| {
                    Error::corrupt(
                        format!("the index item of keyring store '{}'", config.store),
                        format!("changed by another program: {what}"),
                    )
                };
                let salt = Base64::decode_vec(&item.salt).map_err(|_| bad("bad salt"))?;
                let k = item.kdf;
                if !(16..=64).contains(&salt.len())
                    || !(1..=MAX_P_COST).contains(&k.p_cost)
                    || !(1..=MAX_T_COST).contains(&k.t_cost)
                    || k.m_cost_kib < 8 * k.p_cost
                    || k.m_cost_kib > MAX_M_COST_KIB
                {
                    return Err(bad("Argon2id parameters or salt out of range"));
                }
                (salt, k, true)
            }
            None => {
                let orphans = vault
                    .names()?
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.starts_with(KEY_PREFIX))
                    .count();
                if orphans > 0 {
                    return Err(Error::corrupt(
                        format!("keyring store '{}' in {}", config.store, vault.describe()),
                        format!(
                            "its index item was removed while {orphans} key item(s) remain: \
                             restore the store from a backup"
                        ),
                    ));
                }
                let mut salt = vec![0u8; 16];
                fill_random(&mut salt)?;
                (salt, config.kdf, false)
            }
        };
        let key = keyhaven_crypto::aead::argon2id(
            passphrase.expose_secret().as_bytes(),
            &salt,
            kdf.m_cost_kib,
            kdf.t_cost,
            kdf.p_cost,
        )?;
        let store = KeyringStore {
            vault,
            store: config.store.clone(),
            sealer: Sealer::new(key.as_ref())?,
            lock_file: config.lock_file.clone(),
            generation_file: config.generation_file.clone(),
            access: RwLock::new(()),
            seen: AtomicU64::new(0),
        };
        if existing {
            // A wrong passphrase and an edited index look the same: both are said.
            if store.unseal(&store.read_item()?).is_none() {
                return Err(Error::BadPassphrase(format!(
                    "the passphrase does not open keyring store '{}' in {} (or another \
                     program changed its index item)",
                    store.store,
                    store.vault.describe()
                )));
            }
            // Then the generation: an index older than one recorded is refused.
            store.read_index()?;
        } else {
            let item = IndexItem {
                format: FORMAT,
                salt: Base64::encode_string(&salt),
                kdf,
                sealed: String::new(),
            };
            store.write_index_item(item, &Index::default())?;
        }
        Ok(store)
    }

    /// Whether the keyring holds store `config.store` (its index item), without the
    /// passphrase.
    ///
    /// # Errors
    /// As [`KeyringStore::open`] for a keyring out of reach or locked.
    pub fn exists(config: &KeyringConfig) -> Result<bool> {
        Ok(config.keyring.vault(&config.store)?.read(INDEX)?.is_some())
    }

    fn what(&self, item: &str) -> String {
        format!(
            "item '{item}' of keyring store '{}' in {}",
            self.store,
            self.vault.describe()
        )
    }

    fn read_item(&self) -> Result<IndexItem> {
        let bytes = self.vault.read(INDEX)?.ok_or_else(|| {
            Error::corrupt(
                self.what(INDEX),
                "removed by another program: restore the store from a backup",
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(self.what(INDEX), format!("changed by another program: {e}"))
        })
    }

    fn read_index(&self) -> Result<Index> {
        let _shared = self.access.read().unwrap_or_else(PoisonError::into_inner);
        Ok(self.load()?.1)
    }

    /// The generation recorded outside the keyring, if one is kept.
    fn floor(&self) -> Result<u64> {
        let Some((path, state)) = &self.generation_file else {
            return Ok(0);
        };
        match state.read(path)? {
            None => Ok(0),
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| {
                    Error::corrupt(path.display().to_string(), "not an index generation")
                }),
        }
    }

    /// The index item and what it seals.
    fn load(&self) -> Result<(IndexItem, Index)> {
        let item = self.read_item()?;
        if item.format != FORMAT {
            return Err(Error::corrupt(
                self.what(INDEX),
                format!("unsupported format {}", item.format),
            ));
        }
        let index = self.unseal(&item).ok_or_else(|| {
            Error::corrupt(
                self.what(INDEX),
                "changed by another program: it does not open under the store's key",
            )
        })?;
        let seen = self
            .seen
            .fetch_max(index.generation, Ordering::SeqCst)
            .max(self.floor()?);
        if index.generation < seen {
            return Err(Error::corrupt(
                self.what(INDEX),
                format!(
                    "rolled back: generation {} after {seen} was seen (another program put an \
                     older copy back)",
                    index.generation
                ),
            ));
        }
        Ok((item, index))
    }

    /// What the index item seals, if it opens under the store's key.
    fn unseal(&self, item: &IndexItem) -> Option<Index> {
        let sealed = Base64::decode_vec(&item.sealed).ok()?;
        let plain = self.sealer.open_joined(&sealed, &index_ad(&self.store))?;
        serde_json::from_slice(&plain).ok()
    }

    fn write_index_item(&self, mut item: IndexItem, index: &Index) -> Result<()> {
        let plain =
            Zeroizing::new(serde_json::to_vec(index).map_err(|e| {
                Error::InvalidInput(format!("cannot encode the keyring index: {e}"))
            })?);
        let sealed = self.sealer.seal_joined(&plain, &index_ad(&self.store))?;
        item.sealed = Base64::encode_string(&sealed);
        let json = serde_json::to_vec(&item)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the keyring index: {e}")))?;
        self.vault
            .write(INDEX, &format!("keyhaven {}: index", self.store), &json)?;
        self.seen.fetch_max(index.generation, Ordering::SeqCst);
        if let Some((path, state)) = &self.generation_file {
            state.write(path, index.generation.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Runs `f` on the index under the store's locks, then writes it with the next generation.
    fn change<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _alone = self.access.write().unwrap_or_else(PoisonError::into_inner);
        let _lock = match &self.lock_file {
            Some(p) => Some(keyhaven_fs::FileLock::acquire(p)?),
            None => None,
        };
        let (item, mut index) = self.load()?;
        let out = f(&mut index)?;
        index.generation += 1;
        self.write_index_item(item, &index)?;
        Ok(out)
    }

    fn entry(&self, id: &KeyId) -> Result<IndexEntry> {
        self.read_index()?
            .keys
            .into_iter()
            .find(|k| &k.id == id)
            .ok_or_else(|| Error::key_not_found(id))
    }

    fn open_key(&self, id: &KeyId) -> Result<Box<dyn PrivateKey>> {
        let entry = self.entry(id)?;
        let name = format!("{KEY_PREFIX}{id}");
        let bytes = self.vault.read(&name)?.ok_or_else(|| {
            Error::corrupt(
                self.what(&name),
                "removed by another program while the store's index lists it: restore the key \
                 from a backup",
            )
        })?;
        let changed = || {
            Error::corrupt(
                self.what(&name),
                "changed by another program: it does not open under the store's key for this \
                 key id",
            )
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| changed())?;
        let sealed = Base64::decode_vec(text.trim()).map_err(|_| changed())?;
        let pkcs8 = self
            .sealer
            .open_joined(&sealed, &key_ad(&self.store, &entry))
            .ok_or_else(changed)?;
        let key = default_provider().load_pkcs8_as(entry.algorithm, &pkcs8)?;
        if Base64::encode_string(key.public_key().spki_der()) != entry.public_key {
            return Err(changed());
        }
        Ok(key)
    }

    fn insert(
        &self,
        id: KeyId,
        label: &str,
        key: &dyn PrivateKey,
        created_at: u64,
    ) -> Result<KeyInfo> {
        validate_label(label)?;
        let entry = IndexEntry {
            id: id.clone(),
            label: label.to_owned(),
            algorithm: key.algorithm(),
            created_at,
            public_key: Base64::encode_string(key.public_key().spki_der()),
        };
        let name = format!("{KEY_PREFIX}{id}");
        let wrote = std::cell::Cell::new(false);
        let result = self.change(|index| {
            if index.keys.iter().any(|k| k.label == label) {
                return Err(Error::AlreadyExists(format!(
                    "a key labelled '{label}' in keyring store '{}'",
                    self.store
                )));
            }
            if index.keys.iter().any(|k| k.id == id) {
                return Err(Error::AlreadyExists(format!("a key with id {id}")));
            }
            let pkcs8 = key.to_pkcs8_der()?;
            let sealed = self
                .sealer
                .seal_joined(pkcs8.expose_secret(), &key_ad(&self.store, &entry))?;
            // The item's label says whose it is, not the key's label (sealed in the index).
            self.vault.write(
                &name,
                &format!("keyhaven {}: key", self.store),
                Base64::encode_string(&sealed).as_bytes(),
            )?;
            wrote.set(true);
            index.keys.push(entry.clone());
            Ok(())
        });
        if result.is_err() && wrote.get() {
            // The item without an index entry would be an orphan: take it back (best effort;
            // `check` reports any left), unless the index did take it (a write reported as
            // failed that the keyring carried out).
            let listed = self
                .read_index()
                .map(|index| index.keys.iter().any(|k| k.id == id))
                .unwrap_or(true);
            if !listed {
                let _ = self.vault.remove(&name);
            }
        }
        result?;
        entry.info(&self.store)
    }
}

impl KeyStore for KeyringStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new(
            "keyring",
            Protection::SoftwareEncrypted,
            format!("{} (store '{}')", self.vault.describe(), self.store),
        )
    }

    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = default_provider().generate(algorithm)?;
        self.insert(KeyId::generate()?, label, key.as_ref(), unix_now())
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut keys: Vec<KeyInfo> = self
            .read_index()?
            .keys
            .iter()
            .map(|k| k.info(&self.store))
            .collect::<Result<_>>()?;
        // By id, as every store lists them.
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        self.entry(id)?.info(&self.store)
    }

    fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.open_key(id)?.sign(message)
    }

    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        // One index read and one item read: the key knows its algorithm.
        let key = self.open_key(id)?;
        key.algorithm().check_digest(digest)?;
        key.sign_digest(digest)
    }

    fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.open_key(id)?.agree(peer)
    }

    fn delete(&self, id: &KeyId) -> Result<()> {
        self.change(|index| {
            let before = index.keys.len();
            index.keys.retain(|k| &k.id != id);
            if index.keys.len() == before {
                return Err(Error::key_not_found(id));
            }
            Ok(())
        })?;
        // Out of the index first: a crash here leaves an orphan item `check` reports, never
        // an index entry without its key.
        self.vault.remove(&format!("{KEY_PREFIX}{id}"))?;
        Ok(())
    }

    fn check(&self) -> Result<Vec<Error>> {
        let index = self.read_index()?;
        let mut problems = Vec::new();
        for entry in &index.keys {
            if let Err(e) = self.open_key(&entry.id) {
                problems.push(e);
            }
        }
        if let Some(names) = self.vault.names()? {
            for name in names {
                let Some(id) = name.strip_prefix(KEY_PREFIX) else {
                    continue;
                };
                if !index.keys.iter().any(|k| k.id.as_str() == id) {
                    problems.push(Error::corrupt(
                        self.what(&name),
                        "not in the store's index: left by an interrupted write, or put back \
                         after it was deleted; it is not used",
                    ));
                }
            }
        }
        Ok(problems)
    }

    fn import_pkcs8(&self, label: &str, pkcs8_der: &SecretBytes) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = default_provider().load_pkcs8(pkcs8_der.expose_secret())?;
        self.insert(KeyId::generate()?, label, key.as_ref(), unix_now())
    }

    fn restore_pkcs8(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8_der: &SecretBytes,
    ) -> Result<KeyInfo> {
        let key = default_provider().load_restored(original, pkcs8_der.expose_secret())?;
        self.insert(
            original.id.clone(),
            label,
            key.as_ref(),
            original.created_at,
        )
    }

    fn export_pkcs8(&self, id: &KeyId) -> Result<SecretBytes> {
        self.open_key(id)?.to_pkcs8_der()
    }
}
