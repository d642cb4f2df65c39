//! The store logic both file stores share, parameterized by how a key's record is written and
//! read ([`Format`]): label uniqueness, crash-safe ordering, listing that isolates damaged
//! records, and a cache of loaded keys validated against each record's file stamp.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keyhaven_core::{
    Algorithm, Error, ErrorKind, KeyId, KeyInfo, PublicKey, Result, SecretBytes, Signature,
    unix_now, validate_label,
};
use keyhaven_crypto::{CryptoProvider, PrivateKey};

use crate::dir::Claim;
use crate::dir::{RECORD_EXT, StoreDir};
use crate::fsutil::FileStamp;

/// How one kind of store writes and reads a key.
pub(crate) trait Format: Send + Sync + 'static {
    /// Suffixes of files a key has besides its record (removed on delete).
    const EXTRA_FILES: &'static [&'static str];

    /// Writes any files besides the record and returns the record's bytes (written last, as the
    /// commit point).
    fn write_key(&self, dir: &StoreDir, info: &KeyInfo, key: &dyn PrivateKey) -> Result<Vec<u8>>;

    /// Why this format cannot keep keys of `algorithm`, if it cannot.
    fn refuses(&self, _algorithm: keyhaven_core::Algorithm) -> Option<&'static str> {
        None
    }

    /// Parses (and where possible authenticates) a record's public part.
    fn parse_info(&self, id: &KeyId, record: &[u8]) -> Result<KeyInfo, String>;

    /// The file that holds a key's private part (the record itself by default).
    fn private_file(&self, dir: &StoreDir, id: &KeyId) -> std::path::PathBuf {
        dir.record_path(id)
    }

    /// Loads a key's private part.
    fn load_private(
        &self,
        dir: &StoreDir,
        info: &KeyInfo,
        record: &[u8],
    ) -> Result<SecretBytes, Error>;
}

struct Cached {
    stamp: FileStamp,
    info: KeyInfo,
    key: Box<dyn PrivateKey>,
}

/// A file store over a [`Format`].
pub(crate) struct Engine<F: Format> {
    pub(crate) dir: StoreDir,
    pub(crate) format: F,
    provider: &'static CryptoProvider,
    cache: RwLock<HashMap<KeyId, Arc<Cached>>>,
}

fn poisoned() -> Error {
    Error::Unavailable {
        backend: "file".into(),
        reason: "a thread panicked while holding the key cache".into(),
    }
}

impl<F: Format> Engine<F> {
    pub(crate) fn new(dir: StoreDir, format: F, provider: &'static CryptoProvider) -> Self {
        Engine {
            dir,
            format,
            provider,
            cache: RwLock::new(HashMap::new()),
        }
    }

    fn corrupt(&self, id: &KeyId, reason: impl Into<String>) -> Error {
        Error::corrupt(self.dir.record_path(id).display().to_string(), reason)
    }

    fn corrupt_private(&self, id: &KeyId, reason: impl Into<String>) -> Error {
        Error::corrupt(
            self.format
                .private_file(&self.dir, id)
                .display()
                .to_string(),
            reason,
        )
    }

    /// A key that is not in the store, naming the record it would have.
    fn missing(&self, id: &KeyId) -> Error {
        Error::NotFound(format!(
            "key '{id}' (no record {})",
            self.dir.record_path(id).display()
        ))
    }

    pub(crate) fn get(&self, id: &KeyId) -> Result<KeyInfo> {
        let (bytes, _) = self.dir.read_record(id)?.ok_or_else(|| self.missing(id))?;
        self.format
            .parse_info(id, &bytes)
            .map_err(|r| self.corrupt(id, r))
    }

    pub(crate) fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for id in self.dir.record_ids()? {
            match self.get(&id) {
                Ok(info) => out.push(info),
                // damaged records are reported by check(); deleted meanwhile is fine
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub(crate) fn check(&self) -> Result<Vec<Error>> {
        let mut problems = Vec::new();
        for id in self.dir.record_ids()? {
            match self.get(&id) {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => problems.push(e),
            }
        }
        Ok(problems)
    }

    pub(crate) fn find_by_label(&self, label: &str) -> Result<KeyInfo> {
        match self.dir.label_claim(label)? {
            Claim::Live(id) => {
                let info = self.get(&id)?;
                // The claim file is only an index; the record's label is authenticated (it is
                // associated data of the record's seal). A claim pointing at another key was
                // written outside keyhaven: never follow it to the wrong key.
                if info.label != label {
                    return Err(Error::corrupt(
                        self.dir.claim_path(label).display().to_string(),
                        format!(
                            "the claim for label '{label}' names key {id}, which is labelled \
                             '{}': the claim was changed outside keyhaven; remove the file and \
                             name the key by its id",
                            info.label
                        ),
                    ));
                }
                Ok(info)
            }
            // No claim: no such label here (the common answer when a reference is looked up
            // in every backend, so it stays one file check).
            Claim::None => Err(Error::key_not_found(label)),
            // A claim that names nothing (damaged, or its key's record is gone): the records
            // are what counts, and each says its own label.
            Claim::Broken(why) => self.find_by_label_in_records(label, Some(why)),
        }
    }

    /// Finds `label` among the records themselves (a missing or broken claim); a record gone
    /// from under its claim is named.
    fn find_by_label_in_records(&self, label: &str, broken: Option<String>) -> Result<KeyInfo> {
        let mut found = self.list()?.into_iter().filter(|k| k.label == label);
        match (found.next(), found.next()) {
            (Some(k), None) => Ok(k),
            (Some(_), Some(_)) => Err(Error::corrupt(
                self.dir.claim_path(label).display().to_string(),
                format!("two records carry the label '{label}'; name the key by its id"),
            )),
            (None, _) => match broken {
                Some(why) => Err(Error::NotFound(format!(
                    "key '{label}' ({}: {why})",
                    self.dir.claim_path(label).display()
                ))),
                None => Err(Error::key_not_found(label)),
            },
        }
    }

    /// The loaded key for `id`, from the cache while its record is unchanged on disk.
    fn loaded(&self, id: &KeyId) -> Result<Arc<Cached>> {
        let Some(stamp) = self.dir.record_stamp(id)? else {
            self.evict(id);
            return Err(Error::key_not_found(id));
        };
        if let Some(hit) = self.cache.read().map_err(|_| poisoned())?.get(id)
            && hit.stamp == stamp
        {
            return Ok(Arc::clone(hit));
        }
        let (bytes, stamp) = self.dir.read_record(id)?.ok_or_else(|| self.missing(id))?;
        let info = self
            .format
            .parse_info(id, &bytes)
            .map_err(|r| self.corrupt(id, r))?;
        let pkcs8 = self.format.load_private(&self.dir, &info, &bytes)?;
        let key = self
            .provider
            .load_pkcs8_as(info.algorithm, pkcs8.expose_secret())
            .map_err(|_| self.corrupt_private(id, "the private key does not parse"))?;
        if key.public_key() != &info.public_key {
            return Err(
                self.corrupt_private(id, "the private key does not match the recorded public key")
            );
        }
        let cached = Arc::new(Cached { stamp, info, key });
        self.cache
            .write()
            .map_err(|_| poisoned())?
            .insert(id.clone(), Arc::clone(&cached));
        Ok(cached)
    }

    fn evict(&self, id: &KeyId) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(id);
        }
    }

    pub(crate) fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
        protection: keyhaven_core::Protection,
    ) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = self.provider.generate(algorithm)?;
        self.insert(None, label, key.as_ref(), protection)
    }

    pub(crate) fn import(
        &self,
        label: &str,
        pkcs8: &SecretBytes,
        protection: keyhaven_core::Protection,
    ) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = self.provider.load_pkcs8(pkcs8.expose_secret())?;
        self.insert(None, label, key.as_ref(), protection)
    }

    /// [`Engine::import`] as the key `original` (a restored backup: its id and creation time).
    pub(crate) fn restore(
        &self,
        original: &KeyInfo,
        label: &str,
        pkcs8: &SecretBytes,
        protection: keyhaven_core::Protection,
    ) -> Result<KeyInfo> {
        validate_label(label)?;
        let key = self
            .provider
            .load_restored(original, pkcs8.expose_secret())?;
        self.insert(Some(original), label, key.as_ref(), protection)
    }

    fn insert(
        &self,
        original: Option<&KeyInfo>,
        label: &str,
        key: &dyn PrivateKey,
        protection: keyhaven_core::Protection,
    ) -> Result<KeyInfo> {
        if let Some(reason) = self.format.refuses(key.algorithm()) {
            return Err(Error::Unsupported {
                operation: "keep this key",
                reason: reason.into(),
            });
        }
        let (id, created_at) = match original {
            Some(o) => (o.id.clone(), o.created_at),
            None => (KeyId::generate()?, unix_now()),
        };
        let info = KeyInfo::new(
            id.clone(),
            label.to_owned(),
            protection,
            key.public_key().clone(),
            created_at,
        );
        let lock = self.dir.lock()?;
        if self.dir.has_record(&id) {
            return Err(Error::AlreadyExists(format!("a key with id {id}")));
        }
        // Claim the label first: a crash after this leaves a stale claim (no record), which
        // the next writer reuses; a crash before the record is written leaves no listed key.
        self.dir.claim_label(&lock, label, &id)?;
        let written = self
            .format
            .write_key(&self.dir, &info, key)
            .and_then(|record| self.dir.write_key_file(&id, RECORD_EXT, &record));
        if let Err(e) = written {
            let _ = self.dir.remove_key(&lock, &id, F::EXTRA_FILES);
            let _ = self.dir.release_label(&lock, label, &id);
            return Err(e);
        }
        Ok(info)
    }

    pub(crate) fn delete(&self, id: &KeyId) -> Result<()> {
        let lock = self.dir.lock()?;
        let label = match self.get(id) {
            Ok(info) => Some(info.label),
            // a damaged record can still be deleted; its label claim then goes stale
            Err(Error::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        self.dir.remove_key(&lock, id, F::EXTRA_FILES)?;
        if let Some(label) = label {
            self.dir.release_label(&lock, &label, id)?;
        }
        self.evict(id);
        Ok(())
    }

    pub(crate) fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
        self.loaded(id)?.key.sign(message)
    }

    pub(crate) fn sign_digest(&self, id: &KeyId, digest: &[u8]) -> Result<Signature> {
        let cached = self.loaded(id)?;
        cached.info.algorithm.check_digest(digest)?;
        cached.key.sign_digest(digest)
    }

    pub(crate) fn agree(&self, id: &KeyId, peer: &PublicKey) -> Result<SecretBytes> {
        self.loaded(id)?.key.agree(peer)
    }

    pub(crate) fn export(&self, id: &KeyId) -> Result<SecretBytes> {
        self.loaded(id)?.key.to_pkcs8_der()
    }
}

/// Implements `KeyStore` for a wrapper struct with an `engine` field and a `PROTECTION` const;
/// `details` names the private key's file when `$file` is the suffix of a file others read.
macro_rules! delegate_keystore {
    ($ty:ty, $kind:literal, $file:expr) => {
        impl keyhaven_core::KeyStore for $ty {
            fn info(&self) -> keyhaven_core::BackendInfo {
                keyhaven_core::BackendInfo::new(
                    $kind,
                    Self::PROTECTION,
                    self.engine.dir.root().display().to_string(),
                )
            }
            fn generate(
                &self,
                algorithm: keyhaven_core::Algorithm,
                label: &str,
            ) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
                self.engine.generate(algorithm, label, Self::PROTECTION)
            }
            fn list(&self) -> keyhaven_core::Result<Vec<keyhaven_core::KeyInfo>> {
                self.engine.list()
            }
            fn details(
                &self,
                id: &keyhaven_core::KeyId,
            ) -> keyhaven_core::Result<keyhaven_core::KeyDetails> {
                self.engine.get(id)?;
                let mut details = keyhaven_core::KeyDetails::default();
                let file: Option<&str> = $file;
                details.private_key_file = file.map(|suffix| self.engine.dir.key_file(id, suffix));
                Ok(details)
            }
            fn get(
                &self,
                id: &keyhaven_core::KeyId,
            ) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
                self.engine.get(id)
            }
            fn find_by_label(&self, label: &str) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
                self.engine.find_by_label(label)
            }
            fn sign(
                &self,
                id: &keyhaven_core::KeyId,
                message: &[u8],
            ) -> keyhaven_core::Result<keyhaven_core::Signature> {
                self.engine.sign(id, message)
            }
            fn sign_digest(
                &self,
                id: &keyhaven_core::KeyId,
                digest: &[u8],
            ) -> keyhaven_core::Result<keyhaven_core::Signature> {
                self.engine.sign_digest(id, digest)
            }
            fn agree(
                &self,
                id: &keyhaven_core::KeyId,
                peer: &keyhaven_core::PublicKey,
            ) -> keyhaven_core::Result<keyhaven_core::SecretBytes> {
                self.engine.agree(id, peer)
            }
            fn delete(&self, id: &keyhaven_core::KeyId) -> keyhaven_core::Result<()> {
                self.engine.delete(id)
            }
            fn check(&self) -> keyhaven_core::Result<Vec<keyhaven_core::Error>> {
                self.engine.check()
            }
            fn import_pkcs8(
                &self,
                label: &str,
                pkcs8_der: &keyhaven_core::SecretBytes,
            ) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
                self.engine.import(label, pkcs8_der, Self::PROTECTION)
            }
            fn restore_pkcs8(
                &self,
                original: &keyhaven_core::KeyInfo,
                label: &str,
                pkcs8_der: &keyhaven_core::SecretBytes,
            ) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
                self.engine
                    .restore(original, label, pkcs8_der, Self::PROTECTION)
            }
            fn export_pkcs8(
                &self,
                id: &keyhaven_core::KeyId,
            ) -> keyhaven_core::Result<keyhaven_core::SecretBytes> {
                self.engine.export(id)
            }
        }
    };
}
pub(crate) use delegate_keystore;
