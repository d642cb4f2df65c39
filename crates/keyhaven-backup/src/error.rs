//! The crate's error, converted into [`keyhaven_core::Error`].

/// A failure of a backup, restore or Shamir share operation.
///
/// Every variant names what it is about: the backup part, the record (index and key id), or the
/// share (its index and custodian, or its position in the input when it could not be parsed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The file is not a keyhaven backup at all.
    #[error("not a keyhaven backup: {0}")]
    NotABackup(String),
    /// The backup was written by a newer keyhaven.
    #[error(
        "this backup was written by a newer keyhaven (format {found}; this one reads up to {supported}): upgrade keyhaven to read it"
    )]
    NewerFormat {
        /// The format version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The backup's expiry has passed (its creator meant it not to be restored after).
    #[error("backup {backup_id} expired at {}", rfc3339(*expired_at))]
    Expired {
        /// When it expired.
        expired_at: u64,
        /// Which backup.
        backup_id: String,
    },
    /// The backup's structure or integrity digest is wrong: truncated, altered or damaged.
    #[error("backup is damaged ({part}): {reason}")]
    Damaged {
        /// Which part: "header", "record 3 (key abc...)", "integrity digest", ...
        part: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The passphrase does not open the backup.
    #[error("wrong passphrase for this backup (or the header was altered)")]
    BadPassphrase,
    /// The master key (from Shamir shares) does not open the backup.
    #[error(
        "the master key does not open this backup: the shares belong to another backup or were forged"
    )]
    WrongMasterKey,
    /// The secret given does not fit the backup's protection (a passphrase for a Shamir backup...).
    #[error("{0}")]
    WrongSecretKind(String),
    /// A record fails authentication under the right key.
    #[error("record {index} (key {key}) fails authentication: it was altered or moved")]
    RecordAuth {
        /// The record's position.
        index: usize,
        /// The key id recorded for it in the header.
        key: String,
    },
    /// A share could not be parsed, or fails its checksum or Feldman check.
    #[error("{share}: {reason}")]
    BadShare {
        /// Which share: "share 3 of 5 (alice)" or "input share #2".
        share: String,
        /// What is wrong.
        reason: String,
    },
    /// Shares cannot be combined: too few, mixed backups, duplicates.
    #[error("cannot combine the shares: {0}")]
    Combine(String),
    /// An argument is not acceptable (threshold out of range, empty label, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A restore failed; everything it created was removed again.
    #[error(
        "restore of key '{key}' failed ({stage}): {source}; everything this restore created was removed{rollback}"
    )]
    Restore {
        /// The key (label) being restored.
        key: String,
        /// The failing stage: "import", "recovery verification", ...
        stage: &'static str,
        /// The store's error.
        #[source]
        source: keyhaven_core::Error,
        /// Empty, or notes on the rollback (a replaced key put back under a new id, a step
        /// that itself failed).
        rollback: String,
    },
    /// An error from a key store or the crypto layer.
    #[error(transparent)]
    Core(#[from] keyhaven_core::Error),
}

impl BackupError {
    pub(crate) fn damaged(part: impl Into<String>, reason: impl Into<String>) -> Self {
        BackupError::Damaged {
            part: part.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn share(share: impl Into<String>, reason: impl Into<String>) -> Self {
        BackupError::BadShare {
            share: share.into(),
            reason: reason.into(),
        }
    }
}

impl From<BackupError> for keyhaven_core::Error {
    fn from(e: BackupError) -> Self {
        use keyhaven_core::{Error, ErrorKind};
        // A restore's message, with the store's own kind (a label taken, a locked store).
        let restore_kind = match &e {
            BackupError::Restore { source, .. } => source.kind(),
            _ => ErrorKind::Internal,
        };
        match e {
            BackupError::Core(inner) => inner,
            BackupError::BadPassphrase => Error::other(ErrorKind::BadPassphrase, "backup", e),
            BackupError::NotABackup(_)
            | BackupError::WrongSecretKind(_)
            | BackupError::Combine(_)
            | BackupError::InvalidInput(_) => Error::other(ErrorKind::InvalidInput, "backup", e),
            BackupError::NewerFormat { .. } => Error::other(ErrorKind::Unsupported, "backup", e),
            BackupError::Expired { .. } => Error::other(ErrorKind::PermissionDenied, "backup", e),
            BackupError::Damaged {
                ref part,
                ref reason,
            } => Error::corrupt(format!("backup {part}"), reason.clone()),
            BackupError::WrongMasterKey | BackupError::RecordAuth { .. } => {
                Error::corrupt("backup", e.to_string())
            }
            BackupError::BadShare {
                ref share,
                ref reason,
            } => Error::corrupt(share.clone(), reason.clone()),
            BackupError::Restore { .. } => Error::other(restore_kind, "backup restore", e),
        }
    }
}

/// A result with [`BackupError`].
pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// A time for messages.
fn rfc3339(secs: u64) -> String {
    keyhaven_core::rfc3339(secs)
}
