//! Restore with recovery verification: every restored key proves, before it counts, that it is
//! the key recorded in the backup; any failure removes everything the restore created.

use std::collections::{BTreeMap, BTreeSet};

use keyhaven_core::{Error, ErrorKind, KeyId, KeyInfo, KeyStore, SecretBytes, validate_label};
use keyhaven_crypto::default_provider;
use subtle::ConstantTimeEq;

use crate::error::{BackupError, Result};
use crate::model::BackupEntry;

/// What to do when a backed-up key's label is already taken in the target store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Refuse the whole restore (nothing is touched) and list the conflicts. The default: a
    /// restore over existing keys needs an explicit choice.
    #[default]
    Fail,
    /// Keep the existing key; do not restore the backed-up one.
    Skip,
    /// Restore the backed-up key under a free label (`label (restored)`, `label (restored 2)`...).
    Rename,
    /// Replace the existing key: the backed-up key is imported and verified first, the existing
    /// key is exported (kept in memory for rollback), then deleted, and the backed-up key is
    /// imported under the label. Refused for an existing key that cannot be exported (it would
    /// be lost).
    Replace,
}

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Restored under its label with a new id.
    Restored {
        /// The id in the target store.
        new_id: KeyId,
    },
    /// Restored under another label because its label was taken.
    Renamed {
        /// The id in the target store.
        new_id: KeyId,
        /// The label it got.
        label: String,
    },
    /// Replaced the existing key with that label.
    Replaced {
        /// The id in the target store.
        new_id: KeyId,
        /// The id of the key it replaced (now deleted).
        old_id: KeyId,
    },
    /// Not restored: its label is taken and the policy was [`OnConflict::Skip`].
    Skipped {
        /// The existing key with that label.
        existing: KeyId,
    },
    /// Not restored: the very same key (same fingerprint) is already in the store.
    AlreadyPresent {
        /// The existing key.
        existing: KeyId,
    },
    /// A hardware key: the backup holds only its public key, so it cannot be restored.
    HardwarePublicOnly,
}

/// One key's line in a [`RestoreReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoredKey {
    /// The key's id in the backup (its original store).
    pub original_id: KeyId,
    /// Its label in the backup.
    pub label: String,
    /// Its fingerprint (hex), verified for every restored key.
    pub fingerprint: String,
    /// What happened.
    pub outcome: Outcome,
}

/// The result of [`restore`], one line per backed-up key, in backup order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The keys.
    pub keys: Vec<RestoredKey>,
}

impl RestoreReport {
    /// How many keys are now in the store from this backup (restored, renamed or replaced).
    pub fn restored(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| {
                matches!(
                    k.outcome,
                    Outcome::Restored { .. } | Outcome::Renamed { .. } | Outcome::Replaced { .. }
                )
            })
            .count()
    }

    /// Original id -> id in the target store, for every key restored (to remap metadata).
    pub fn id_map(&self) -> BTreeMap<KeyId, KeyId> {
        self.keys
            .iter()
            .filter_map(|k| match &k.outcome {
                Outcome::Restored { new_id }
                | Outcome::Renamed { new_id, .. }
                | Outcome::Replaced { new_id, .. } => Some((k.original_id.clone(), new_id.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Proves that `id` in `store` is the key recorded in `entry`: the public key's fingerprint must
/// match, and the key signs a random challenge that verifies against the PUBLIC KEY RECORDED IN
/// THE BACKUP (X25519: agreement with an ephemeral key gives the same secret as agreement with
/// the recorded public key).
///
/// # Errors
/// [`Error::Corrupt`] naming the key on a mismatch; the store's error if it cannot sign.
pub fn recovery_verify(
    store: &dyn KeyStore,
    id: &KeyId,
    entry: &BackupEntry,
) -> std::result::Result<(), Error> {
    let mismatch = || {
        Error::corrupt(
            format!("restored key '{}'", entry.label),
            "it does not match the fingerprint recorded in the backup",
        )
    };
    if store.public_key(id)?.fingerprint() != entry.fingerprint() {
        return Err(mismatch());
    }
    if entry.algorithm.can_sign() {
        let mut challenge = b"keyhaven-backup/v1 recovery challenge\0".to_vec();
        let mut nonce = [0u8; 32];
        keyhaven_crypto::fill_random(&mut nonce)?;
        challenge.extend_from_slice(&nonce);
        let sig = store.sign(id, &challenge)?;
        keyhaven_crypto::verify(&entry.public_key, &challenge, &sig).map_err(|_| mismatch())?;
    } else if entry.algorithm.can_agree() {
        let eph = default_provider().generate(entry.algorithm)?;
        let ours = store.agree(id, eph.public_key())?;
        let theirs = eph.agree(&entry.public_key)?;
        if !bool::from(ours.expose_secret().ct_eq(theirs.expose_secret())) {
            return Err(mismatch());
        }
    } else {
        return Err(Error::Unsupported {
            operation: "verify a restored key",
            reason: format!("no recovery check for {} keys", entry.algorithm),
        });
    }
    Ok(())
}

enum Plan<'a> {
    Import {
        entry: &'a BackupEntry,
        label: String,
        renamed: bool,
    },
    Replace {
        entry: &'a BackupEntry,
        old: KeyInfo,
        old_der: SecretBytes,
    },
    Done(Outcome),
}

fn truncate_label(label: &str, room: usize) -> String {
    label
        .chars()
        .take(room)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

fn free_label(label: &str, taken: &BTreeSet<String>) -> String {
    let mut n = 1u64;
    loop {
        let suffix = if n == 1 {
            " (restored)".to_owned()
        } else {
            format!(" (restored {n})")
        };
        let candidate = format!("{}{suffix}", truncate_label(label, 128 - suffix.len()));
        if !taken.contains(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

fn temp_label(label: &str) -> Result<String> {
    let mut r = [0u8; 6];
    keyhaven_crypto::fill_random(&mut r)?;
    let suffix = format!(" (restoring {})", hex::encode(r));
    Ok(format!(
        "{}{suffix}",
        truncate_label(label, 128 - suffix.len())
    ))
}

/// Undo log: keys this restore created, and existing keys it deleted (with their private key).
#[derive(Default)]
struct Undo {
    created: Vec<KeyId>,
    deleted: Vec<(KeyInfo, SecretBytes)>,
}

impl Undo {
    fn rollback(self, store: &dyn KeyStore) -> String {
        let mut problems = Vec::new();
        for id in self.created.iter().rev() {
            if let Err(e) = store.delete(id) {
                problems.push(format!("could not delete restored key {id}: {e}"));
            }
        }
        for (old, der) in &self.deleted {
            let (id, label) = (&old.id, &old.label);
            // Back under its own id where the store allows it.
            let back = put_back(store, old, label, der);
            match back {
                Ok(info) if info.id == *id => {}
                Ok(info) => problems.push(format!(
                    "the replaced key '{label}' was put back with new id {}",
                    info.id
                )),
                Err(e) => problems.push(format!(
                    "COULD NOT PUT BACK the replaced key '{label}': {e}; restore it from another backup"
                )),
            }
        }
        if problems.is_empty() {
            String::new()
        } else {
            format!(" (rollback: {})", problems.join("; "))
        }
    }
}

fn fail(
    store: &dyn KeyStore,
    undo: Undo,
    key: &str,
    stage: &'static str,
    source: Error,
) -> BackupError {
    let rollback = undo.rollback(store);
    BackupError::Restore {
        key: key.to_owned(),
        stage,
        source,
        rollback,
    }
}

fn import_verified(
    store: &dyn KeyStore,
    entry: &BackupEntry,
    label: &str,
    undo: &mut Undo,
) -> std::result::Result<KeyId, (&'static str, Error)> {
    // The key keeps its id where the store allows it (and the id is free), so everything that
    // names it (versions, history, the default key) still does; otherwise it gets a new one.
    let original = KeyInfo::new(
        entry.id.clone(),
        entry.label.clone(),
        entry.protection,
        entry.public_key.clone(),
        entry.created_at,
    );
    // A device-wrapped key goes back into its device, under its id, or not at all.
    if let Some(blob) = &entry.tpm_blob {
        let info = store
            .restore_wrapped(&original, label, blob)
            .map_err(|e| ("restore into the device", e))?;
        undo.created.push(info.id.clone());
        recovery_verify(store, &info.id, entry).map_err(|e| ("recovery verification", e))?;
        return Ok(info.id);
    }
    let der = entry
        .private
        .as_ref()
        .ok_or_else(|| ("import", Error::InvalidInput("no private key".into())))?;
    let info = put_back(store, &original, label, der).map_err(|e| ("import", e))?;
    undo.created.push(info.id.clone());
    recovery_verify(store, &info.id, entry).map_err(|e| ("recovery verification", e))?;
    Ok(info.id)
}

/// Puts a software key back: under its own id where the store allows it and the id is free;
/// else under a new id, still as the recorded algorithm (the DER of an ECDH key is an ECDSA
/// key's, so a plain import would change what the key is for).
fn put_back(
    store: &dyn KeyStore,
    original: &KeyInfo,
    label: &str,
    der: &SecretBytes,
) -> std::result::Result<KeyInfo, Error> {
    match store.restore_pkcs8(original, label, der) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && label_is_free(store, label) => {
            let mut fresh = original.clone();
            fresh.id = KeyId::generate()?;
            store.restore_pkcs8(&fresh, label, der)
        }
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            // An import reads an EC key as ECDSA: an ECDH key cannot come back that way.
            if original.algorithm.is_nist_ecdh() {
                return Err(Error::Unsupported {
                    operation: "restore the key",
                    reason: format!(
                        "this store cannot restore a {} key under its algorithm (an import \
                         would make it an ECDSA key)",
                        original.algorithm
                    ),
                });
            }
            let info = store.import_pkcs8(label, der)?;
            if info.algorithm != original.algorithm {
                // Not left behind as a key of the wrong kind: a failed delete is reported.
                let gone = store.delete(&info.id);
                return Err(Error::Unsupported {
                    operation: "restore the key",
                    reason: format!(
                        "this store imports it as a {} key, but it is a {} key{}",
                        info.algorithm,
                        original.algorithm,
                        match gone {
                            Ok(()) => String::new(),
                            Err(e) => format!(
                                " (and the imported copy {} could not be deleted: {e})",
                                info.id
                            ),
                        }
                    ),
                });
            }
            Ok(info)
        }
        other => other,
    }
}

/// Whether no key of `store` has the label `label`.
fn label_is_free(store: &dyn KeyStore, label: &str) -> bool {
    matches!(store.find_by_label(label), Err(e) if e.kind() == ErrorKind::NotFound)
}

/// Restores entries into a store, verifying each restored key (see [`recovery_verify`]) before
/// it counts. Conflicts: a key whose fingerprint is already in the store is `AlreadyPresent`
/// (never duplicated); a taken label is handled by `on_conflict`. Hardware entries are reported
/// as public-only. If anything fails, everything this restore created is deleted (and replaced
/// keys are put back), so no partial restore is left behind.
///
/// Restored keys keep their ids where the store can restore under an id and the id is free
/// ([`KeyStore::restore_pkcs8`]); otherwise they get new ones. [`RestoreReport::id_map`] maps
/// backed-up ids to restored ones.
///
/// # Errors
/// [`BackupError::InvalidInput`] listing the conflicts under [`OnConflict::Fail`], or for a
/// `Replace` of a key that cannot be exported; [`BackupError::Restore`] naming the key and stage
/// that failed, after rollback.
pub fn restore(
    into: &dyn KeyStore,
    entries: &[BackupEntry],
    on_conflict: OnConflict,
) -> Result<RestoreReport> {
    let existing = into.list()?;
    let by_label: BTreeMap<&str, &KeyInfo> =
        existing.iter().map(|k| (k.label.as_str(), k)).collect();
    let by_fp: BTreeMap<String, &KeyInfo> = existing
        .iter()
        .map(|k| (k.fingerprint().to_hex(), k))
        .collect();
    let mut taken: BTreeSet<String> = existing.iter().map(|k| k.label.clone()).collect();
    let mut conflicts = Vec::new();
    let mut plans = Vec::with_capacity(entries.len());
    for entry in entries {
        let plan = if entry.hardware && entry.tpm_blob.is_none() {
            Plan::Done(Outcome::HardwarePublicOnly)
        } else if let Some(k) = by_fp.get(&entry.fingerprint().to_hex()) {
            Plan::Done(Outcome::AlreadyPresent {
                existing: k.id.clone(),
            })
        } else if taken.contains(&entry.label) {
            let holder = by_label.get(entry.label.as_str());
            match (on_conflict, holder) {
                (OnConflict::Fail, _) => {
                    conflicts.push(format!("'{}'", entry.label));
                    continue;
                }
                (OnConflict::Skip, Some(k)) => Plan::Done(Outcome::Skipped {
                    existing: k.id.clone(),
                }),
                (OnConflict::Rename, _) => {
                    let label = free_label(&entry.label, &taken);
                    taken.insert(label.clone());
                    Plan::Import {
                        entry,
                        label,
                        renamed: true,
                    }
                }
                (OnConflict::Replace, Some(k)) => {
                    let old_der = into.export_pkcs8(&k.id).map_err(|e| {
                        BackupError::InvalidInput(format!(
                            "cannot replace key '{}' ({}): it cannot be exported, so replacing it would lose it ({e}); use rename or skip",
                            k.label, k.id
                        ))
                    })?;
                    Plan::Replace {
                        entry,
                        old: (*k).clone(),
                        old_der,
                    }
                }
                // Two keys with one label inside the backup itself.
                (OnConflict::Skip | OnConflict::Replace, None) => {
                    return Err(BackupError::InvalidInput(format!(
                        "the backup holds two keys labelled '{}': restore with rename",
                        entry.label
                    )));
                }
            }
        } else {
            validate_label(&entry.label)?;
            taken.insert(entry.label.clone());
            Plan::Import {
                entry,
                label: entry.label.clone(),
                renamed: false,
            }
        };
        plans.push((entry, plan));
    }
    if !conflicts.is_empty() {
        return Err(BackupError::InvalidInput(format!(
            "labels already in the target store: {}; choose skip, rename or replace",
            conflicts.join(", ")
        )));
    }

    // Phase 1: import everything (replacements under a temporary label) and verify it.
    let mut undo = Undo::default();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(plans.len());
    let mut temps: Vec<Option<KeyId>> = Vec::with_capacity(plans.len());
    for (entry, plan) in &plans {
        match plan {
            Plan::Done(o) => {
                outcomes.push(Some(o.clone()));
                temps.push(None);
            }
            Plan::Import {
                entry,
                label,
                renamed,
            } => match import_verified(into, entry, label, &mut undo) {
                Ok(new_id) => {
                    outcomes.push(Some(if *renamed {
                        Outcome::Renamed {
                            new_id,
                            label: label.clone(),
                        }
                    } else {
                        Outcome::Restored { new_id }
                    }));
                    temps.push(None);
                }
                Err((stage, e)) => return Err(fail(into, undo, &entry.label, stage, e)),
            },
            Plan::Replace { .. } => {
                let label = temp_label(&entry.label)?;
                match import_verified(into, entry, &label, &mut undo) {
                    Ok(tmp) => {
                        outcomes.push(None);
                        temps.push(Some(tmp));
                    }
                    Err((stage, e)) => return Err(fail(into, undo, &entry.label, stage, e)),
                }
            }
        }
    }

    // Phase 2: replacements. Delete the old key (its private key is held for rollback), import
    // the backed-up key under the label, verify, drop the temporary copy.
    for (i, (_, plan)) in plans.iter().enumerate() {
        let Plan::Replace {
            entry,
            old,
            old_der,
        } = plan
        else {
            continue;
        };
        if let Err(e) = into.delete(&old.id) {
            return Err(fail(into, undo, &entry.label, "delete the replaced key", e));
        }
        undo.deleted
            .push((old.clone(), SecretBytes::copy_from(old_der.expose_secret())));
        let new_id = match import_verified(into, entry, &entry.label, &mut undo) {
            Ok(id) => id,
            Err((stage, e)) => return Err(fail(into, undo, &entry.label, stage, e)),
        };
        if let Some(tmp) = temps.get_mut(i).and_then(Option::take) {
            if let Err(e) = into.delete(&tmp) {
                return Err(fail(
                    into,
                    undo,
                    &entry.label,
                    "delete the temporary copy",
                    e,
                ));
            }
            undo.created.retain(|id| id != &tmp);
        }
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(Outcome::Replaced {
                new_id,
                old_id: old.id.clone(),
            });
        }
    }

    let keys = plans
        .iter()
        .zip(outcomes)
        .map(|((entry, _), outcome)| RestoredKey {
            original_id: entry.id.clone(),
            label: entry.label.clone(),
            fingerprint: entry.fingerprint().to_hex(),
            outcome: outcome.unwrap_or(Outcome::HardwarePublicOnly),
        })
        .collect();
    Ok(RestoreReport { keys })
}
