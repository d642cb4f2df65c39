//! The home's authority key (it signs audit checkpoints and revocation statements), kept by
//! default in an encrypted store of its own, `HOME/authority/store`, under the passphrase of
//! the home's encrypted backends.
//!
//! Nothing about it is asked for until it is needed: the store and its key are created, and
//! later opened, only when the key must sign (an audit checkpoint, a revocation) or its public
//! key is first wanted. Its public description (`HOME/authority/authority.json`: id, label,
//! public key) is plain, so verifying the audit log or exporting revocations later needs no
//! passphrase. A home whose backends are all hardware and that has no passphrase at hand
//! therefore keeps working; its periodic checkpoints are skipped until one can be signed (or
//! `[audit] authority` names a key on the device).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use keyhaven_core::{
    Algorithm, BackendInfo, Error as CoreError, KeyId, KeyInfo, KeyStore, Protection, PublicKey,
    Result as CoreResult, SecretBytes, Signature,
};
use serde::{Deserialize, Serialize};

use crate::passphrase::{PassphraseProvider, PassphrasePurpose, PassphraseRequest};

/// The authority's description file inside its directory.
const DESCRIPTION: &str = "authority.json";
/// The backend name passphrase requests carry.
const NAME: &str = "authority";
/// The id the audit log and revocations use for the authority key; the store's own id for it
/// is in the description.
pub(crate) const AUTHORITY_KEY_ID: &str = "keyhaven-authority";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    key_id: String,
    label: String,
    public_key_pem: String,
    created_at: u64,
}

struct Opened {
    info: Option<KeyInfo>,
    store: Option<Arc<dyn KeyStore>>,
}

/// The authority store: created and opened on demand, answering about its key from the
/// description when it can.
pub(crate) struct AuthorityStore {
    dir: PathBuf,
    label: String,
    passphrases: Arc<dyn PassphraseProvider>,
    /// The home's state: the description decides which signatures verify, so it is checked
    /// against the integrity manifest like every state file.
    files: Arc<dyn keyhaven_fs::StateFiles>,
    state: Mutex<Opened>,
}

impl AuthorityStore {
    /// The authority in `dir` (nothing is read or created yet).
    pub(crate) fn new(
        dir: &Path,
        label: &str,
        passphrases: Arc<dyn PassphraseProvider>,
        files: Arc<dyn keyhaven_fs::StateFiles>,
    ) -> Self {
        AuthorityStore {
            dir: dir.to_owned(),
            label: label.to_owned(),
            passphrases,
            files,
            state: Mutex::new(Opened {
                info: None,
                store: None,
            }),
        }
    }

    /// The key's description, reading it (or creating the store and key) if needed.
    fn info(&self, need_store: bool) -> CoreResult<(KeyInfo, Option<Arc<dyn KeyStore>>)> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(info) = &st.info
            && (!need_store || st.store.is_some())
        {
            return Ok((info.clone(), st.store.clone()));
        }
        keyhaven_fs::create_private_dir(&self.dir)?;
        let _lock = keyhaven_fs::FileLock::acquire(&self.dir.join(".authority.lock"))?;
        let description = self.dir.join(DESCRIPTION);
        let store_dir = self.dir.join("store");
        let read = match self.files.read(&description)? {
            Some(bytes) => Ok(bytes),
            // The key exists but its description is gone: never make a second authority.
            None if store_dir.join("keyhaven-store.json").exists() => {
                return Err(CoreError::corrupt(
                    description.display().to_string(),
                    format!(
                        "it is missing, but the authority's store {} exists: restore it from a \
                         backup (a new authority would not verify the old checkpoints and \
                         revocations)",
                        store_dir.display()
                    ),
                ));
            }
            None => Err(CoreError::io(
                format!("read {}", description.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
        };
        match read {
            Ok(bytes) => {
                let d: Description = serde_json::from_slice(&bytes).map_err(|e| {
                    CoreError::corrupt(description.display().to_string(), e.to_string())
                })?;
                st.info = Some(describe(&description, &d)?);
                if need_store && st.store.is_none() {
                    let pass = self.passphrases.passphrase(&PassphraseRequest::new(
                        NAME,
                        &store_dir,
                        PassphrasePurpose::Unlock,
                    ))?;
                    st.store = Some(Arc::new(keyhaven_store_file::EncryptedStore::open(
                        &store_dir, &pass,
                    )?));
                }
            }
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // First use, under the lock: one key however many processes start at once.
                let pass = self.passphrases.passphrase(&PassphraseRequest::new(
                    NAME,
                    &store_dir,
                    PassphrasePurpose::Create,
                ))?;
                let store = keyhaven_store_file::EncryptedStore::create(
                    &store_dir,
                    &pass,
                    keyhaven_store_file::KdfParams::default(),
                )?;
                let info = store.generate(Algorithm::EcdsaP384, &self.label)?;
                let d = Description {
                    key_id: info.id.to_string(),
                    label: info.label.clone(),
                    public_key_pem: info.public_key.to_pem()?,
                    created_at: info.created_at,
                };
                let json = serde_json::to_vec_pretty(&d)
                    .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
                self.files.write(&description, &json)?;
                st.info = Some(info);
                st.store = Some(Arc::new(store));
            }
            Err(e) => return Err(e),
        }
        let info = st
            .info
            .clone()
            .ok_or_else(|| CoreError::corrupt(description.display().to_string(), "unreadable"))?;
        Ok((info, st.store.clone()))
    }

    fn is_ours(id: &KeyId) -> CoreResult<()> {
        if id.as_str() == AUTHORITY_KEY_ID {
            Ok(())
        } else {
            Err(CoreError::key_not_found(id))
        }
    }

    fn sign_with<T>(
        &self,
        id: &KeyId,
        f: impl FnOnce(&dyn KeyStore, &KeyId) -> CoreResult<T>,
    ) -> CoreResult<T> {
        Self::is_ours(id)?;
        let (info, store) = self.info(true)?;
        let store =
            store.ok_or_else(|| CoreError::Locked("the authority store is not open".into()))?;
        f(store.as_ref(), &info.id)
    }

    fn public_info(&self) -> CoreResult<KeyInfo> {
        let (mut info, _) = self.info(false)?;
        info.id = AUTHORITY_KEY_ID
            .parse()
            .map_err(|_| CoreError::InvalidInput("authority key id".into()))?;
        Ok(info)
    }
}

fn describe(path: &Path, d: &Description) -> CoreResult<KeyInfo> {
    let bad = |why: String| CoreError::corrupt(path.display().to_string(), why);
    let id: KeyId = d.key_id.parse().map_err(|_| bad("bad key id".into()))?;
    let pk = keyhaven_crypto::default_provider()
        .parse_public_key_pem(&d.public_key_pem)
        .map_err(|e| bad(e.to_string()))?;
    Ok(KeyInfo::new(
        id,
        d.label.clone(),
        Protection::SoftwareEncrypted,
        pk,
        d.created_at,
    ))
}

fn only_signing(operation: &'static str) -> CoreError {
    CoreError::Unsupported {
        operation,
        reason: "the authority store keeps its one key, which only signs".into(),
    }
}

impl KeyStore for AuthorityStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new(
            "encrypted",
            Protection::SoftwareEncrypted,
            self.dir.display().to_string(),
        )
    }
    fn generate(&self, _algorithm: Algorithm, _label: &str) -> CoreResult<KeyInfo> {
        Err(only_signing("generate"))
    }
    fn list(&self) -> CoreResult<Vec<KeyInfo>> {
        Ok(vec![self.public_info()?])
    }
    fn get(&self, id: &KeyId) -> CoreResult<KeyInfo> {
        Self::is_ours(id)?;
        self.public_info()
    }
    fn public_key(&self, id: &KeyId) -> CoreResult<PublicKey> {
        Ok(self.get(id)?.public_key)
    }
    fn sign(&self, id: &KeyId, message: &[u8]) -> CoreResult<Signature> {
        self.sign_with(id, |s, real| s.sign(real, message))
    }
    fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> CoreResult<Signature> {
        self.sign_with(id, |s, real| s.sign_digest(real, digest))
    }
    fn agree(&self, _id: &KeyId, _peer: &PublicKey) -> CoreResult<SecretBytes> {
        Err(only_signing("agree"))
    }
    fn delete(&self, _id: &KeyId) -> CoreResult<()> {
        Err(only_signing("delete"))
    }
}
