//! What a backup holds: one [`BackupEntry`] per key, and [`collect`] to gather them from a store.

use std::collections::BTreeMap;

use keyhaven_core::{
    Algorithm, ErrorKind, Fingerprint, KeyId, KeyInfo, KeyStore, Protection, PublicKey, SecretBytes,
};

use crate::error::Result;

/// One key in a backup.
///
/// Software keys carry their private key (PKCS#8 DER, zeroized on drop). Hardware keys (PKCS#11,
/// TPM) carry only the public key and metadata, with `hardware` set: their private part cannot
/// leave the device, so a restore reports them as not restorable.
#[derive(Debug)]
#[non_exhaustive]
pub struct BackupEntry {
    /// The key's id in the store it was backed up from.
    pub id: KeyId,
    /// Its label.
    pub label: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// How the source store protected it.
    pub protection: Protection,
    /// The public key (SPKI DER inside); its fingerprint is what recovery verification checks.
    pub public_key: PublicKey,
    /// Creation time in the source store (seconds since the Unix epoch).
    pub created_at: u64,
    /// The name of the backend it came from, as given to [`collect`].
    pub backend: String,
    /// Caller-defined metadata (rotation versions and states, ...), kept verbatim.
    pub metadata: BTreeMap<String, String>,
    /// The private key as PKCS#8 DER; `None` for hardware keys.
    pub private: Option<SecretBytes>,
    /// True for a key whose private part stayed in hardware.
    pub hardware: bool,
    /// A device-wrapped key ([`keyhaven_core::KeyStore::export_wrapped`]: a TPM's blob),
    /// restorable into the same device only; `None` for keys without one.
    pub tpm_blob: Option<Vec<u8>>,
}

impl BackupEntry {
    /// An entry for a software key with its PKCS#8 private key.
    pub fn software(info: &KeyInfo, backend: &str, pkcs8_der: SecretBytes) -> Self {
        BackupEntry {
            private: Some(pkcs8_der),
            hardware: false,
            ..Self::public_only(info, backend)
        }
    }

    /// An entry for a hardware key: public key and metadata only.
    pub fn hardware(info: &KeyInfo, backend: &str) -> Self {
        BackupEntry {
            hardware: true,
            ..Self::public_only(info, backend)
        }
    }

    fn public_only(info: &KeyInfo, backend: &str) -> Self {
        BackupEntry {
            id: info.id.clone(),
            label: info.label.clone(),
            algorithm: info.algorithm,
            protection: info.protection,
            public_key: info.public_key.clone(),
            created_at: info.created_at,
            backend: backend.to_owned(),
            metadata: BTreeMap::new(),
            private: None,
            hardware: false,
            tpm_blob: None,
        }
    }

    /// The fingerprint of the public key (SHA-256 of the SPKI DER).
    pub fn fingerprint(&self) -> Fingerprint {
        self.public_key.fingerprint()
    }

    /// Sets a metadata entry (builder style).
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Gathers backup entries from a store: every key, or the keys in `ids`, in that order.
///
/// Software keys are exported with `export_pkcs8`; a key whose protection is
/// [`Protection::Hardware`], or whose export the store refuses as `Unsupported`, becomes a
/// public-only entry marked `hardware`. `backend` is the name recorded for where the keys came
/// from (the facade's backend name).
///
/// # Errors
/// The store's error for a failing `list`, `get` or export (other than `Unsupported`).
pub fn collect(
    store: &dyn KeyStore,
    backend: &str,
    ids: Option<&[KeyId]>,
) -> Result<Vec<BackupEntry>> {
    let infos = match ids {
        None => store.list()?,
        Some(ids) => ids
            .iter()
            .map(|id| store.get(id))
            .collect::<std::result::Result<Vec<_>, _>>()?,
    };
    let mut entries = Vec::with_capacity(infos.len());
    for info in &infos {
        if info.protection == Protection::Hardware {
            // The device's wrapped form, where it has one (a TPM's blob, usable only by that
            // TPM): the key then survives the loss of the backend's own files.
            let mut entry = BackupEntry::hardware(info, backend);
            match store.export_wrapped(&info.id) {
                Ok(blob) => entry.tpm_blob = Some(blob),
                Err(e) if e.is(ErrorKind::Unsupported) => {}
                Err(e) => return Err(e.into()),
            }
            entries.push(entry);
            continue;
        }
        match store.export_pkcs8(&info.id) {
            Ok(der) => entries.push(BackupEntry::software(info, backend, der)),
            Err(e) if e.is(ErrorKind::Unsupported) => {
                entries.push(BackupEntry::hardware(info, backend))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(entries)
}
