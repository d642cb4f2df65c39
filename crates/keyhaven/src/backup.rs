//! Encrypted backups of the manager's keys, and restore into a backend (keyhaven-backup).
//!
//! The API of `keyhaven-backup` is re-exported here: the backup file formats ([`write()`],
//! [`write_shamir`], [`inspect`], [`verify`], [`open`], [`open_with_shares`], [`convert`]),
//! encrypted PKCS#8 exports ([`export_pkcs8_pem`]), restore with recovery verification
//! ([`restore`], [`OnConflict`], [`RestoreReport`]) and Shamir custodian shares ([`shamir`]).
//! On top of them, [`KeyManager`] gathers keys by reference from every backend
//! ([`crate::BackupsView::collect`]), restores into a configured backend
//! ([`crate::BackupsView::restore`]) and decrypts a custodian's share with a key it manages
//! ([`crate::BackupsView::decrypt_share`]). Backends are used through their decorated stores, so every
//! export and import is checked by access control and written to the audit log.

use std::collections::BTreeSet;

pub use keyhaven_backup::{
    BackupEntry, BackupError, BackupHeader, BackupMeta, BackupProtection, BackupSecret, Custodian,
    FORMAT_VERSION, Format, HeaderKey, KdfParams, MAX_DESCRIPTION, MasterKey, OnConflict, Outcome,
    Pbes2, RestoreReport, RestoredKey, Share, ShareCheck, VerifyReport, check_expiry, collect,
    combine, convert, decrypt_share, export_pkcs8_pem, inspect, open, open_with, open_with_shares,
    recovery_verify, restore, save, shamir, split, verify, verify_share, write, write_shamir,
    write_shamir_with_meta, write_with_meta,
};

use crate::manager::managed;

/// Backup entry metadata: the logical key's registry entry (JSON), once per logical key.
pub const META_REGISTRY: &str = "rotation.registry";
/// Backup entry metadata: the key's usage count.
pub const META_USAGE: &str = "usage";
/// Backup entry metadata: `true` on the home's default key.
pub const META_DEFAULT: &str = "default";
/// Backup entry metadata (first entry): the home's revocation list (JSON).
pub const META_REVOCATIONS: &str = "home.revocations";
use crate::{Backend, CoreError, Error, ErrorKind, KeyId, KeyManager, ManagedKey, Result};

impl KeyManager {
    /// [`crate::BackupsView::collect`].
    pub(crate) fn collect_backup(&self, refs: Option<&[String]>) -> Result<Vec<BackupEntry>> {
        let keys = match refs {
            // Revoked keys refuse to be exported and must never be restored: a whole-home
            // backup leaves them out (naming one explicitly is refused with `Revoked`).
            None => {
                let mut keys = Vec::new();
                for k in self.list_keys()? {
                    if self.revocation_of(&k)?.is_none() {
                        keys.push(k);
                    }
                }
                keys
            }
            Some(refs) => {
                let mut seen = BTreeSet::new();
                let mut keys = Vec::with_capacity(refs.len());
                for r in refs {
                    let key = self.resolve(r)?;
                    // A logical key is backed up whole: every version whose key still
                    // exists and is not revoked, so its history restores with it.
                    let mut named = vec![key.clone()];
                    if let Some(l) = self.logical_key(&key)? {
                        for v in l.versions() {
                            if v.key_id() == key.id() || v.state().is_terminal() {
                                continue;
                            }
                            match self.resolve(&format!("{}:{}", l.backend(), v.key_id())) {
                                Ok(k) if self.revocation_of(&k)?.is_none() => named.push(k),
                                Ok(_) => {}
                                Err(e) if e.kind() == ErrorKind::NotFound && e.core().is_some() => {
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    for k in named {
                        if seen.insert((k.backend.clone(), k.info.id.clone())) {
                            keys.push(k);
                        }
                    }
                }
                keys
            }
        };
        let mut entries = Vec::with_capacity(keys.len());
        for run in keys.chunk_by(|a, b| a.backend == b.backend) {
            let Some(first) = run.first() else { continue };
            let b = self.key_backend(first)?;
            let ids: Vec<_> = run.iter().map(|k| k.info.id.clone()).collect();
            let mut collected = keyhaven_backup::collect(b.store().as_ref(), b.name(), Some(&ids))
                .map_err(|e| Error::backend(b.name(), e.into()))?;
            // The key's place in its logical key (version, state, role), for the record.
            for entry in &mut collected {
                if let Some(key) = run.iter().find(|k| k.info.id == entry.id) {
                    let v = self.version_info(key)?;
                    entry
                        .metadata
                        .insert("version".into(), v.version.to_string());
                    entry.metadata.insert("state".into(), v.state);
                    if let Some(l) = self.logical_key(key)? {
                        entry
                            .metadata
                            .insert("logical_key".into(), l.id().to_owned());
                        entry
                            .metadata
                            .insert("role".into(), l.role().as_str().to_owned());
                    }
                }
            }
            entries.extend(collected);
        }
        self.record_lifecycle(&mut entries)?;
        Ok(entries)
    }

    /// Adds to the entries what a restore needs to bring the keys' lifecycle back: each logical
    /// key's registry entry (versions, states, history, continuity proofs; once per logical
    /// key), usage counts, which key is the default, and the home's revocation statements.
    /// All of it travels inside the backup's encrypted, authenticated records.
    fn record_lifecycle(&self, entries: &mut [BackupEntry]) -> Result<()> {
        let meter = self.usage_meter()?;
        let default = self.config().default_key.clone();
        let mut logical_seen = BTreeSet::new();
        for e in entries.iter_mut() {
            let usage = meter.usage(&e.id).map_err(|e| Error::Core(e.into()))?;
            if usage > 0 {
                e.metadata.insert(META_USAGE.into(), usage.to_string());
            }
            if default
                .as_ref()
                .is_some_and(|d| d.backend == e.backend && d.id == e.id)
            {
                e.metadata.insert(META_DEFAULT.into(), "true".into());
            }
            let Some(logical) = e.metadata.get("logical_key").cloned() else {
                continue;
            };
            if logical_seen.insert(logical.clone())
                && let Some(l) = self.find_logical_key(&logical)?
            {
                let json = serde_json::to_string(&l).map_err(|err| {
                    CoreError::InvalidInput(format!("cannot encode logical key {logical}: {err}"))
                })?;
                e.metadata.insert(META_REGISTRY.into(), json);
            }
        }
        if !self
            .revocation_registry()?
            .all()
            .map_err(CoreError::from)?
            .is_empty()
            && let Some(first) = entries.first_mut()
        {
            let list = self.export_revocations()?;
            first.metadata.insert(
                META_REVOCATIONS.into(),
                list.to_json().map_err(CoreError::from)?,
            );
        }
        Ok(())
    }

    /// After a restore: the logical keys (with their versions' new ids), usage counts and the
    /// default key the backup recorded. A logical key already registered is left as it is.
    fn restore_lifecycle(
        &self,
        b: &Backend,
        entries: &[BackupEntry],
        report: &RestoreReport,
    ) -> Result<()> {
        let ids = report.id_map();
        let registry = self.rotation_registry()?;
        for e in entries {
            let Some(json) = e.metadata.get(META_REGISTRY) else {
                continue;
            };
            let logical: crate::versions::LogicalKey =
                serde_json::from_str(json).map_err(|err| {
                    CoreError::corrupt(
                        format!("backup entry '{}'", e.label),
                        format!("its rotation record is not a logical key: {err}"),
                    )
                })?;
            // A backup's rotation record may only describe keys this very restore brought,
            // each the key it says (its fingerprint), and never name a key the home already
            // has: a crafted record could otherwise take over an existing key's label.
            let fingerprints: std::collections::BTreeMap<&KeyId, String> = entries
                .iter()
                .map(|x| (&x.id, x.fingerprint().to_hex()))
                .collect();
            // Already registered here (a home's own backup restored into it): left as it is.
            if registry.get(logical.id()).is_ok() {
                continue;
            }
            for v in logical.versions() {
                let ok = match ids.get(v.key_id()) {
                    Some(_) => fingerprints.get(v.key_id()) == Some(&v.fingerprint().to_owned()),
                    // Not restored (already present, destroyed, revoked, hardware): it must not
                    // be another key here.
                    None => match b.store().get(v.key_id()) {
                        Err(e) if e.is(ErrorKind::NotFound) => true,
                        Ok(info) => info.fingerprint().to_hex() == v.fingerprint(),
                        Err(_) => false,
                    },
                };
                if !ok {
                    return Err(CoreError::corrupt(
                        format!("backup entry '{}'", e.label),
                        format!(
                            "its rotation record names key {} (version {}), which this restore \
                             did not bring or which is not the key it says: not restored",
                            v.key_id(),
                            v.number()
                        ),
                    )
                    .into());
                }
            }
            let restored = logical
                .restored(b.name(), &ids)
                .map_err(|err| Error::Core(err.into()))?;
            match registry.insert_restored(&restored) {
                Ok(()) => {}
                Err(crate::versions::RotationError::Core(e)) if e.is(ErrorKind::AlreadyExists) => {}
                Err(err) => return Err(Error::Core(err.into())),
            }
        }
        let meter = self.usage_meter()?;
        for e in entries {
            let (Some(usage), Some(new)) = (e.metadata.get(META_USAGE), ids.get(&e.id)) else {
                continue;
            };
            if let Ok(n) = usage.parse::<u64>() {
                meter
                    .add_restored(new, n)
                    .map_err(|err| Error::Core(err.into()))?;
            }
        }
        Ok(())
    }

    /// Keeps the default key pointing at the same key after a restore: a replaced default key
    /// is followed to its replacement, and a default key that no longer exists (a wiped store)
    /// to the restored copy of it. Without a default key, the first restored key becomes it.
    fn follow_default(
        &self,
        b: &Backend,
        entries: &[BackupEntry],
        report: &RestoreReport,
    ) -> Result<()> {
        let current = self.config().default_key.clone();
        // The key the backup recorded as the default, when it was restored.
        let recorded = entries
            .iter()
            .find(|e| e.metadata.get(META_DEFAULT).is_some_and(|v| v == "true"))
            .and_then(|e| report.id_map().get(&e.id).cloned());
        let mut replacement = None;
        let mut restored_copy = None;
        let mut first = None;
        for k in &report.keys {
            match &k.outcome {
                Outcome::Replaced { new_id, old_id } => {
                    if current
                        .as_ref()
                        .is_some_and(|d| d.backend == b.name() && &d.id == old_id)
                    {
                        replacement = Some(new_id);
                    }
                    first = first.or(Some(new_id));
                }
                Outcome::Restored { new_id } | Outcome::Renamed { new_id, .. } => {
                    if current.as_ref().is_some_and(|d| d.id == k.original_id) {
                        restored_copy = Some(new_id);
                    }
                    first = first.or(Some(new_id));
                }
                _ => {}
            }
        }
        // Only a default key that is gone is moved to its restored copy.
        let gone = || matches!(self.default_key(), Err(Error::NoDefaultKey(_)));
        let target = match (replacement, restored_copy) {
            (Some(id), _) => Some(id),
            (None, Some(id)) if gone() => Some(id),
            _ => None,
        };
        let info = |id| b.store().get(id).map_err(|e| Error::backend(b.name(), e));
        if let Some(id) = target {
            if !b.kind().is_ephemeral() {
                self.set_default_key(&managed(b, info(id)?))?;
            }
        } else if current.is_none()
            && let Some(id) = recorded.as_ref().or(first)
        {
            self.default_if_none(&managed(b, info(id)?))?;
        }
        Ok(())
    }

    /// [`crate::BackupsView::decrypt_share`].
    pub(crate) fn decrypt_share(&self, share: &Share, key: &ManagedKey) -> Result<Share> {
        let b = self.key_backend(key)?;
        keyhaven_backup::decrypt_share(share, b.store().as_ref(), &key.info.id)
            .map_err(|e| Error::backend(b.name(), e.into()))
    }
}

/// The labels (quoted) of backed-up software keys that are not in `store` yet but whose label a
/// key of `store` (or an earlier entry) already has: what [`restore`] refuses under
/// [`OnConflict::Fail`].
fn label_conflicts(
    store: &dyn crate::KeyStore,
    entries: &[BackupEntry],
) -> std::result::Result<Vec<String>, CoreError> {
    let existing = store.list()?;
    let present: BTreeSet<String> = existing.iter().map(|k| k.fingerprint().to_hex()).collect();
    let mut taken: BTreeSet<&str> = existing.iter().map(|k| k.label.as_str()).collect();
    let mut conflicts = Vec::new();
    for e in entries {
        if e.hardware || present.contains(&e.fingerprint().to_hex()) {
            continue;
        }
        if !taken.insert(e.label.as_str()) {
            conflicts.push(format!("'{}'", e.label));
        }
    }
    Ok(conflicts)
}

/// A failed restore as a core error of the failing step's own kind (so a caller maps it to the
/// right exit code), its message saying which key and step failed and what the rollback did.
fn restore_error(e: BackupError) -> CoreError {
    let BackupError::Restore {
        key,
        stage,
        source,
        rollback,
    } = e
    else {
        return e.into();
    };
    let note = format!(
        "while restoring key '{key}' ({stage}); everything this restore created was \
         removed{rollback}"
    );
    // The failing step's own error, kept whole (its kind, its chain), with the note.
    CoreError::other_noted(source.kind(), "backup restore", source, note)
}

impl crate::RevocationsView<'_> {
    /// Records the revocation statements of `list` in this home, each checked against the
    /// list's issuer, or, with `pinned`, only if the issuer's fingerprint starts with it.
    /// Revocations only ever take keys away, so a home accepts them from its own earlier
    /// authority (a restored backup) as from its current one. Returns how many were new.
    ///
    /// # Errors
    /// A forged statement or an issuer that is not the pinned one; the registry cannot be
    /// written.
    pub fn import(
        &self,
        list: &crate::compromise::RevocationList,
        pinned: Option<&str>,
    ) -> Result<usize> {
        let m = self.0;
        let issuer = list.issuer_key().map_err(CoreError::from)?;
        match pinned {
            Some(pin) => {
                list.verify_pinned(pin).map_err(CoreError::from)?;
            }
            None => {
                list.verify(&issuer).map_err(CoreError::from)?;
            }
        }
        let registry = m.revocation_registry()?;
        let before = registry.all().map_err(CoreError::from)?.len();
        for s in &list.statements {
            registry
                .record(s.clone(), &issuer)
                .map_err(CoreError::from)?;
        }
        Ok(registry.all().map_err(CoreError::from)?.len() - before)
    }
}

impl crate::BackupsView<'_> {
    /// Restores backup entries into the backend `into` (default: the default backend), its
    /// store created if needed and the fallback rule applied as for
    /// [`KeyManager::generate`]. Every restored key signs a challenge checked against the public
    /// key recorded in the backup before it counts (see [`restore`]); hardware entries are
    /// reported as public-only. The default key keeps pointing at the same key: a replaced
    /// default key is followed to its replacement, a default key that no longer exists (a wiped
    /// store) to its restored copy; without a default key, the first restored key becomes it
    /// (unless the backend is ephemeral).
    ///
    /// Under [`OnConflict::Fail`], a backed-up key whose label is taken by a different key
    /// refuses the whole restore before anything is changed.
    ///
    /// # Errors
    /// [`CoreError::AlreadyExists`] listing the taken labels under [`OnConflict::Fail`];
    /// [`Error::NoBackend`], [`Error::Unavailable`] as for [`KeyManager::generate`]; the
    /// failing step's error (of its own kind: a store refusing the import, a key failing
    /// recovery verification as [`CoreError::Corrupt`], ...) after everything this restore
    /// created was removed again.
    pub fn restore(
        &self,
        entries: &[BackupEntry],
        into: Option<&str>,
        on_conflict: OnConflict,
    ) -> Result<RestoreReport> {
        let m = self.0;
        let name = match into {
            Some(b) => b.to_owned(),
            None => m.default_backend_name()?,
        };
        // The revocations the backup recorded come first: a key revoked in the backup's home
        // never comes back, here either.
        for e in entries {
            if let Some(json) = e.metadata.get(META_REVOCATIONS) {
                let list = crate::compromise::RevocationList::parse(json.as_bytes())
                    .map_err(CoreError::from)?;
                m.revocations().import(&list, None)?;
            }
        }
        // Revoked key material never comes back under a new id.
        for e in entries {
            m.refuse_revoked_material(&e.public_key, &e.label)?;
        }
        let b = m.backend_for_new_key(&name, None)?;
        let store = b.store().as_ref();
        if on_conflict == OnConflict::Fail {
            let taken = label_conflicts(store, entries).map_err(|e| Error::backend(b.name(), e))?;
            if !taken.is_empty() {
                let what = if taken.len() == 1 {
                    format!("a different key labelled {}", taken.join(""))
                } else {
                    format!("different keys labelled {}", taken.join(", "))
                };
                return Err(Error::backend(
                    b.name(),
                    CoreError::AlreadyExists(format!("{what} (nothing was restored)")),
                ));
            }
        }
        let report = keyhaven_backup::restore(store, entries, on_conflict)
            .map_err(|e| Error::backend(b.name(), restore_error(e)))?;
        m.restore_lifecycle(&b, entries, &report)?;
        m.follow_default(&b, entries, &report)?;
        Ok(report)
    }
}
