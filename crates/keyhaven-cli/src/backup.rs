//! `keyhaven backup ...`, and the backup formats of `keyhaven key export --format`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use keyhaven::backup::{
    self as kb, BackupHeader, BackupProtection, BackupSecret, Custodian, Format, KdfParams,
    OnConflict, Outcome, RestoreReport, Share, ShareCheck,
};
use keyhaven::secrecy::SecretString;
use keyhaven::zeroize::Zeroizing;
use keyhaven::{CoreError, ErrorKind, KeyManager, ManagedKey, PublicKey, Warning, rfc3339};

use crate::ctx::SecretSource;
use crate::ctx::{Ctx, print_warnings, read_secret_file};
use crate::exit::{OK, OtherPassphrase, UsageError};
use crate::json::{
    BackupHeaderJson, BackupVerifyJson, RestoreJson, RestoreTestCounts, RestoreTestJson,
    RestoredKeyJson,
};
use crate::output::{errln, outln, print_json, read_file};

/// The option that gives a backup's passphrase.
const PASSPHRASE_OPTION: &str = "--backup-passphrase-file";
/// The environment variable holding a backup's passphrase (never the stores' passphrase).
const PASSPHRASE_ENV: &str = "KEYHAVEN_BACKUP_PASSPHRASE";
/// The option that gives an export's passphrase (`key export`).
const EXPORT_OPTION: &str = "--export-passphrase-file";

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Write an encrypted backup of keys (default: every key of every reachable backend), under
    /// a backup passphrase or a Shamir key split between custodians.
    Create(CreateArgs),
    /// Show a backup's header: its keys, protection and fingerprint (no secret needed).
    Inspect {
        /// The backup file.
        file: PathBuf,
        /// Print the header as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a backup: structure and integrity without a secret; with one, every record and
    /// private key. Exits 7 naming what is damaged.
    Verify {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Also restore it into a scratch home kept in memory (never the real one) and sign and
        /// verify with every restored key: a tested restoration (needs the secret).
        #[arg(long)]
        restore_test: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore keys into a backend. Each restored key first signs a challenge that must verify
    /// against the public key recorded in the backup; any failure removes everything restored.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The backend to restore into (default: the default backend).
        #[arg(long, value_name = "BACKEND")]
        into: Option<String>,
        /// What to do when a backed-up key's label is taken by another key: fail (nothing is
        /// restored), skip it, rename the restored key, or replace the existing key.
        #[arg(long, value_enum, default_value_t = ConflictArg::Fail)]
        on_conflict: ConflictArg,
        #[command(flatten)]
        secret: SecretArgs,
        /// Restore it even though its expiry has passed (its creator meant it not to be).
        #[arg(long)]
        allow_expired: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Custodian shares of Shamir backups: verify, decrypt.
    #[command(subcommand)]
    Shares(SharesCommand),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Back up only these keys (ID, LABEL or BACKEND:ID|LABEL; repeatable).
    #[arg(long = "keys", value_name = "REF", num_args = 1..)]
    keys: Vec<String>,
    /// The backup file to write (0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// text (mailable, diffable) or binary (compact).
    #[arg(long, value_enum, default_value_t = BackupFormat::Text)]
    format: BackupFormat,
    /// The backup passphrase, from the first line of this file (mode 0600). Else
    /// KEYHAVEN_BACKUP_PASSPHRASE, else a prompt (asked twice). Never the stores' passphrase.
    #[arg(long, value_name = "FILE", conflicts_with = "shamir")]
    backup_passphrase_file: Option<PathBuf>,
    /// Protect the backup with a random key split into N custodian shares, any T of which
    /// restore it (e.g. 2-of-3). Needs N --custodian and --share-dir.
    #[arg(long, value_name = "T-of-N", value_parser = parse_shamir, requires_all = ["custodian", "share_dir"])]
    shamir: Option<ShamirSpec>,
    /// A custodian, in share order: NAME, or NAME=PUBKEY to encrypt their share to an X25519
    /// public key: a key of this home (ID, LABEL or BACKEND:ID|LABEL) or a PEM file.
    #[arg(long, value_name = "NAME[=PUBKEY]", requires = "shamir")]
    custodian: Vec<String>,
    /// The directory for the share files, one per custodian (0600; the directory is created
    /// 0700 if missing and must be private).
    #[arg(long, value_name = "DIR", requires = "shamir")]
    share_dir: Option<PathBuf>,
    /// What the backup is for, recorded (authenticated) in its header.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// After this long (e.g. 90d, 1y) a restore refuses the backup unless given
    /// --allow-expired.
    #[arg(long, value_name = "DURATION")]
    expires_in: Option<String>,
}

/// The secret that opens a backup.
#[derive(Debug, Args)]
pub(crate) struct SecretArgs {
    /// The backup passphrase, from the first line of this file (mode 0600). Else
    /// KEYHAVEN_BACKUP_PASSPHRASE, else a prompt.
    #[arg(long, value_name = "FILE", conflicts_with = "share")]
    backup_passphrase_file: Option<PathBuf>,
    /// Custodian share files of a Shamir backup (repeatable); the threshold of them opens it.
    #[arg(long = "share", value_name = "FILE", num_args = 1..)]
    share: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SharesCommand {
    /// Check that shares are genuine (Feldman commitments) without the secret; exits 7 naming
    /// the first bad one.
    Verify {
        /// Share files.
        #[arg(value_name = "SHARE", required = true)]
        shares: Vec<PathBuf>,
    },
    /// Decrypt a share encrypted to a custodian's X25519 key of this home into a plain share
    /// file (the key agreement happens in the key's backend).
    Decrypt {
        /// The encrypted share file.
        #[arg(value_name = "SHARE")]
        share: PathBuf,
        /// The custodian's X25519 key (ID, LABEL or BACKEND:ID|LABEL).
        #[arg(long, value_name = "ID|LABEL")]
        key: String,
        /// The plain share file to write (0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Backup encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackupFormat {
    /// Line-oriented text: JSON header, base64 records.
    Text,
    /// Compact binary.
    Binary,
}

impl From<BackupFormat> for Format {
    fn from(f: BackupFormat) -> Self {
        match f {
            BackupFormat::Text => Format::Text,
            BackupFormat::Binary => Format::Binary,
        }
    }
}

/// `key export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// Encrypted PKCS#8 PEM (PBES2, AES-256-CBC): what `openssl pkey` reads.
    Pkcs8Encrypted,
    /// A one-key keyhaven backup file (text), under the export passphrase.
    Keyhaven,
    /// A one-key keyhaven backup file (binary), under the export passphrase.
    Binary,
}

impl ExportFormat {
    /// The backup encoding, for the keyhaven formats.
    pub(crate) fn backup_format(self) -> Option<Format> {
        match self {
            ExportFormat::Pkcs8Encrypted => None,
            ExportFormat::Keyhaven => Some(Format::Text),
            ExportFormat::Binary => Some(Format::Binary),
        }
    }
}

/// Conflict policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ConflictArg {
    /// Refuse the restore; nothing is changed.
    Fail,
    /// Keep the existing key, do not restore the backed-up one.
    Skip,
    /// Restore under a free label (`LABEL (restored)`).
    Rename,
    /// Replace the existing key (verified first; put back if anything fails).
    Replace,
}

impl From<ConflictArg> for OnConflict {
    fn from(c: ConflictArg) -> Self {
        match c {
            ConflictArg::Fail => OnConflict::Fail,
            ConflictArg::Skip => OnConflict::Skip,
            ConflictArg::Rename => OnConflict::Rename,
            ConflictArg::Replace => OnConflict::Replace,
        }
    }
}

/// `--shamir T-of-N`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShamirSpec {
    threshold: u8,
    shares: u8,
}

fn parse_shamir(s: &str) -> Result<ShamirSpec, String> {
    let bad = || format!("'{s}' is not T-of-N (e.g. 2-of-3, with 2 <= T <= N <= 255)");
    let (t, n) = s.split_once("-of-").ok_or_else(bad)?;
    let threshold: u8 = t.parse().map_err(|_| bad())?;
    let shares: u8 = n.parse().map_err(|_| bad())?;
    if threshold < 2 || threshold > shares {
        return Err(bad());
    }
    Ok(ShamirSpec { threshold, shares })
}

pub(crate) fn run(ctx: &Ctx, cmd: BackupCommand) -> Result<u8> {
    match cmd {
        // These need no home: a custodian checks a backup or shares anywhere.
        BackupCommand::Inspect { file, json } => inspect(&file, json),
        BackupCommand::Verify {
            file,
            secret,
            restore_test,
            json,
        } => {
            let code = verify(&file, &secret, json)?;
            if restore_test {
                restore_test_run(&file, &secret, json)?;
            }
            Ok(code)
        }
        BackupCommand::Shares(SharesCommand::Verify { shares }) => verify_shares(&shares),
        cmd => {
            let m = ctx.manager()?;
            let result = with_manager(ctx, &m, cmd);
            print_warnings(&m);
            result
        }
    }
}

fn with_manager(ctx: &Ctx, m: &KeyManager, cmd: BackupCommand) -> Result<u8> {
    match cmd {
        BackupCommand::Create(args) => create(ctx, m, args),
        BackupCommand::Restore {
            file,
            into,
            on_conflict,
            secret,
            allow_expired,
            json,
        } => restore(
            m,
            &file,
            into.as_deref(),
            on_conflict.into(),
            &secret,
            allow_expired,
            json,
        ),
        BackupCommand::Shares(SharesCommand::Decrypt { share, key, out }) => {
            decrypt_share(m, &share, &key, &out)
        }
        BackupCommand::Inspect { .. }
        | BackupCommand::Verify { .. }
        | BackupCommand::Shares(SharesCommand::Verify { .. }) => {
            Err(anyhow::anyhow!("internal: dispatched twice"))
        }
    }
}

/// A library error, with a wrong or missing passphrase reported as the backup passphrase's.
fn backup_error(e: kb::BackupError) -> anyhow::Error {
    OtherPassphrase::wrap(PASSPHRASE_OPTION, e.into())
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(CoreError::AlreadyExists(format!(
            "file {} (refusing to overwrite it)",
            path.display()
        ))
        .into());
    }
    Ok(())
}

fn read_backup(path: &Path) -> Result<(Vec<u8>, BackupHeader)> {
    let bytes = read_file(path, "backup")?;
    let header = kb::inspect(&bytes)
        .map_err(backup_error)
        .with_context(|| format!("backup {}", path.display()))?;
    Ok((bytes, header))
}

/// The passphrase for a new backup: the file, else the variable, else a prompt asked twice.
fn new_passphrase(file: Option<&Path>, what: &str) -> Result<SecretString> {
    SecretSource {
        option: PASSPHRASE_OPTION,
        file,
        env: Some(PASSPHRASE_ENV),
        what: format!("passphrase for the backup {what}"),
        new: true,
        otherwise: " (the stores' passphrase is never used for backups), or use --shamir",
    }
    .get()
}

/// Reads custodian share files (each may hold several shares).
fn load_shares(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Share)>> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = keyhaven::fs::read_private(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            CoreError::InvalidInput(format!("{} is not a share (not text)", path.display()))
        })?;
        let shares = Share::parse_all(text)
            .map_err(CoreError::from)
            .with_context(|| format!("share file {}", path.display()))?;
        if shares.is_empty() {
            return Err(CoreError::InvalidInput(format!(
                "{} holds no BEGIN KEYHAVEN SHARE block",
                path.display()
            ))
            .into());
        }
        out.extend(shares.into_iter().map(|s| (path.clone(), s)));
    }
    Ok(out)
}

/// The secret to open a backup with: shares, the passphrase file, the variable (passphrase
/// backups), or (if `needed`) a prompt. `None` when not needed and none is given.
fn backup_secret(
    header: &BackupHeader,
    args: &SecretArgs,
    needed: bool,
) -> Result<Option<BackupSecret>> {
    let shamir = match &header.protection {
        BackupProtection::Shamir {
            threshold, shares, ..
        } => Some((*threshold, *shares)),
        _ => None,
    };
    if !args.share.is_empty() {
        let shares = load_shares(&args.share)?;
        for (path, s) in &shares {
            if s.backup_id() != header.backup_id || s.fingerprint() != header.fingerprint {
                return Err(CoreError::InvalidInput(format!(
                    "{} in {} belongs to backup {} ({}), not to this backup {} ({})",
                    s.name(),
                    path.display(),
                    s.backup_id(),
                    s.fingerprint(),
                    header.backup_id,
                    header.fingerprint
                ))
                .into());
            }
        }
        let shares: Vec<Share> = shares.into_iter().map(|(_, s)| s).collect();
        let master = kb::combine(&shares).map_err(backup_error)?;
        return Ok(Some(BackupSecret::MasterKey(master.into_secret())));
    }
    if let Some(f) = &args.backup_passphrase_file {
        let pass = read_secret_file(f).map_err(|e| OtherPassphrase::wrap(PASSPHRASE_OPTION, e))?;
        return Ok(Some(BackupSecret::Passphrase(pass)));
    }
    if let Some((t, n)) = shamir {
        if !needed {
            return Ok(None);
        }
        return Err(CoreError::InvalidInput(format!(
            "this backup is protected by Shamir shares ({t} of {n}): pass --share FILE for at \
             least {t} custodians' shares"
        ))
        .into());
    }
    if !needed && std::env::var_os(PASSPHRASE_ENV).is_none() {
        return Ok(None);
    }
    let pass = SecretSource {
        option: PASSPHRASE_OPTION,
        file: None,
        env: Some(PASSPHRASE_ENV),
        what: "passphrase of the backup".into(),
        new: false,
        otherwise: "",
    }
    .get()?;
    Ok(Some(BackupSecret::Passphrase(pass)))
}

/// A custodian's X25519 public key: a PEM file, else a key of this home.
fn custodian_public(m: &KeyManager, name: &str, spec: &str) -> Result<PublicKey> {
    let path = Path::new(spec);
    let pk = if path.is_file() {
        let text = read_file(path, "public key file")?;
        let text = String::from_utf8(text).map_err(|_| {
            CoreError::InvalidInput(format!("{} is not a PEM file", path.display()))
        })?;
        keyhaven::default_provider()
            .parse_public_key_pem(&text)
            .with_context(|| format!("custodian {name}: read public key {}", path.display()))?
    } else {
        m.resolve(spec)
            .with_context(|| format!("custodian {name}: key '{spec}'"))?
            .public_key()
            .clone()
    };
    if pk.algorithm() != keyhaven::Algorithm::X25519 {
        return Err(CoreError::InvalidInput(format!(
            "custodian {name}: a share can be encrypted only to an X25519 key, and '{spec}' is \
             {}",
            pk.algorithm()
        ))
        .into());
    }
    Ok(pk)
}

/// A file-name-safe form of a custodian's name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How `backup create` protects the backup.
enum Protect {
    Passphrase(SecretString),
    Shamir {
        threshold: u8,
        custodians: Vec<Custodian>,
        dir: PathBuf,
    },
}

fn create(ctx: &Ctx, m: &KeyManager, args: CreateArgs) -> Result<u8> {
    refuse_existing(&args.out)?;
    // A backup kept in the home is lost with it (seed 002: keep backups elsewhere).
    if let (Ok(out), Ok(home)) = (
        std::path::absolute(&args.out),
        std::path::absolute(m.home()),
    ) && out.starts_with(&home)
    {
        errln!(
            "warning: {} is inside the home {}: a backup lost with the home is no backup; move \
             it elsewhere",
            args.out.display(),
            home.display()
        );
    }
    let format = Format::from(args.format);
    // Everything about the protection is settled before any key is exported.
    let plan = match (&args.shamir, &args.share_dir) {
        (Some(spec), Some(dir)) => {
            if args.custodian.len() != usize::from(spec.shares) {
                return Err(UsageError(format!(
                    "--shamir {}-of-{} needs {} --custodian, got {}",
                    spec.threshold,
                    spec.shares,
                    spec.shares,
                    args.custodian.len()
                ))
                .into());
            }
            let mut custodians = Vec::with_capacity(args.custodian.len());
            for c in &args.custodian {
                custodians.push(match c.split_once('=') {
                    Some((name, key)) => Custodian::with_key(name, custodian_public(m, name, key)?),
                    None => Custodian::named(c.as_str()),
                });
            }
            Protect::Shamir {
                threshold: spec.threshold,
                custodians,
                dir: dir.clone(),
            }
        }
        _ => {
            let pass = new_passphrase(
                args.backup_passphrase_file.as_deref(),
                &args.out.display().to_string(),
            )?;
            if ctx.is_store_passphrase(&pass) {
                return Err(CoreError::InvalidInput(
                    "the backup's passphrase is the stores' passphrase: whoever learns one would \
                     have both. Choose another for the backup"
                        .into(),
                )
                .into());
            }
            Protect::Passphrase(pass)
        }
    };
    let refs = (!args.keys.is_empty()).then_some(args.keys.as_slice());
    let entries = m.backups().collect(refs)?;
    // (again, now that the stores were opened: a passphrase typed at their prompt counts too;
    // nothing has been written yet)
    if let Protect::Passphrase(pass) = &plan
        && ctx.is_store_passphrase(pass)
    {
        return Err(CoreError::InvalidInput(
            "the backup's passphrase is the stores' passphrase: whoever learns one would have \
             both. Choose another for the backup"
                .into(),
        )
        .into());
    }
    if entries.is_empty() {
        return Err(
            CoreError::NotFound("keys to back up (no reachable backend holds any)".into()).into(),
        );
    }
    let hardware = entries.iter().filter(|e| e.hardware).count();
    let valid_for = match &args.expires_in {
        Some(d) => {
            let d = humantime::parse_duration(d).map_err(|e| {
                CoreError::InvalidInput(format!("--expires-in {d:?}: {e} (e.g. 90d, 1y)"))
            })?;
            Some(d.as_secs().max(1))
        }
        None => None,
    };
    let meta = kb::BackupMeta::new(
        Some(m.caller().principal.clone()),
        args.description.clone(),
        valid_for,
    );
    let (bytes, shares, dir) = match plan {
        Protect::Passphrase(pass) => (
            kb::write_with_meta(&entries, &pass, KdfParams::default(), format, &meta)
                .map_err(backup_error)?,
            Vec::new(),
            None,
        ),
        Protect::Shamir {
            threshold,
            custodians,
            dir,
        } => {
            let (bytes, shares) =
                kb::write_shamir_with_meta(&entries, threshold, &custodians, format, &meta)
                    .map_err(backup_error)?;
            (bytes, shares, Some(dir))
        }
    };
    drop(entries);
    let header = kb::inspect(&bytes).map_err(backup_error)?;
    let share_files: Vec<PathBuf> = match &dir {
        Some(dir) => shares
            .iter()
            .map(|s| {
                dir.join(format!(
                    "{}-{}-{}.share",
                    header.backup_id,
                    s.index(),
                    file_safe(s.custodian())
                ))
            })
            .collect(),
        None => Vec::new(),
    };
    if let Some(dir) = &dir {
        keyhaven::fs::create_private_dir(dir)?;
    }
    for f in &share_files {
        refuse_existing(f)?;
    }
    kb::save(&args.out, &bytes)?;
    let mut written = vec![args.out.clone()];
    for (s, f) in shares.iter().zip(&share_files) {
        if let Err(e) = kb::save(f, s.to_text().as_bytes()) {
            for w in &written {
                let _ = std::fs::remove_file(w);
            }
            return Err(anyhow::Error::from(e).context(format!(
                "write share {} (nothing was kept: the backup and the shares written so far were \
                 removed)",
                s.name()
            )));
        }
        written.push(f.clone());
    }
    outln!(
        "backup {} written to {} ({format}, {} key(s))",
        header.backup_id,
        args.out.display(),
        header.key_count
    )?;
    outln!("fingerprint: {}", header.fingerprint)?;
    for (s, f) in shares.iter().zip(&share_files) {
        let to = s
            .encrypted_to()
            .map(|fp| format!(", encrypted to key {}", &fp[..16.min(fp.len())]))
            .unwrap_or_default();
        outln!("{}: {}{to}", s.name(), f.display())?;
    }
    if let Some(s) = shares.first() {
        errln!(
            "Give each custodian their share file; any {} of the {} shares restore the backup. \
             Each custodian can check theirs with `keyhaven backup shares verify FILE` (the \
             fingerprint {} is printed on every share).",
            s.threshold(),
            s.total(),
            header.fingerprint
        );
    }
    if hardware > 0 {
        errln!(
            "note: {hardware} hardware key(s) are backed up as public key and metadata only: \
             their private part cannot leave the device."
        );
    }
    Ok(OK)
}

fn protection_text(p: &BackupProtection) -> String {
    match p {
        BackupProtection::Passphrase { kdf, params, .. } => format!(
            "passphrase ({kdf}, {} KiB, {} iterations, {} lane(s))",
            params.m_cost_kib, params.t_cost, params.p_cost
        ),
        BackupProtection::Shamir {
            threshold,
            shares,
            custodians,
            ..
        } => format!(
            "Shamir {threshold} of {shares} (custodians: {})",
            custodians.join(", ")
        ),
        _ => "unknown".into(),
    }
}

fn inspect(file: &Path, json: bool) -> Result<u8> {
    let (bytes, header) = read_backup(file)?;
    let format = Format::detect(&bytes).map_or("unknown".to_owned(), |f| f.to_string());
    if json {
        print_json(&BackupHeaderJson {
            header: &header,
            encoding: format,
        })?;
        return Ok(OK);
    }
    outln!("backup:       {}", header.backup_id)?;
    outln!("fingerprint:  {}", header.fingerprint)?;
    outln!("format:       {} ({format})", header.format)?;
    outln!("created:      {}", rfc3339(header.created_at))?;
    outln!("protection:   {}", protection_text(&header.protection))?;
    outln!("keys:         {}", header.key_count)?;
    if header.creator.is_some() || header.description.is_some() || header.expires_at.is_some() {
        // The header is readable without the secret, so none of it is authenticated yet:
        // `backup verify` with the secret (or a restore) checks it.
        outln!("metadata:     as the file says (unauthenticated until opened with its secret)")?;
    }
    if let Some(c) = &header.creator {
        outln!("creator:      {c}")?;
    }
    if let Some(d) = &header.description {
        outln!("description:  {d}")?;
    }
    if let Some(at) = header.expires_at {
        let state = if keyhaven::unix_now() >= at {
            "EXPIRED: restore refuses it without --allow-expired"
        } else {
            "not yet expired"
        };
        outln!("expires:      {} ({state})", rfc3339(at))?;
    }
    for k in &header.keys {
        outln!(
            "  {}  {}  {}  {}  {}{}",
            k.id,
            k.label,
            k.algorithm.short_name(),
            k.backend,
            &k.fingerprint[..16.min(k.fingerprint.len())],
            if k.hardware {
                "  (hardware: public key only)"
            } else {
                ""
            }
        )?;
    }
    Ok(OK)
}

fn verify(file: &Path, args: &SecretArgs, json: bool) -> Result<u8> {
    let (bytes, header) = read_backup(file)?;
    let secret = backup_secret(&header, args, false)?;
    let report = kb::verify(&bytes, secret.as_ref())
        .map_err(backup_error)
        .with_context(|| format!("backup {}", file.display()))?;
    if json {
        print_json(&BackupVerifyJson {
            backup_id: report.header.backup_id.to_string(),
            fingerprint: report.header.fingerprint.to_string(),
            encoding: report.format.to_string(),
            keys: report.header.key_count,
            integrity_ok: report.integrity_ok,
            authenticated: report.authenticated,
            private_keys_checked: report.private_keys_checked,
            hardware_keys: report.hardware_keys,
        })?;
        return Ok(OK);
    }
    outln!(
        "backup {} ({}): structure and integrity OK, {} key(s)",
        header.backup_id,
        header.fingerprint,
        header.key_count
    )?;
    if report.authenticated {
        outln!(
            "authenticated: every record; {} private key(s) match their recorded public keys{}",
            report.private_keys_checked,
            if report.hardware_keys > 0 {
                format!(
                    " ({} hardware key(s): public key only)",
                    report.hardware_keys
                )
            } else {
                String::new()
            }
        )?;
    } else {
        errln!(
            "Not authenticated: give {PASSPHRASE_OPTION} FILE (or {PASSPHRASE_ENV}) or --share \
             FILE... to check every record with the secret."
        );
    }
    Ok(OK)
}

/// The backup's keys, decrypted with its secret (asked for if needed; dropped once used).
/// Opens a backup (one read of the file: the expiry checked is that of the bytes decrypted).
fn open_entries(
    file: &Path,
    args: &SecretArgs,
    allow_expired: bool,
) -> Result<Vec<kb::BackupEntry>> {
    let (bytes, header) = read_backup(file)?;
    let secret = backup_secret(&header, args, true)?
        .ok_or_else(|| anyhow::anyhow!("internal: no secret to open the backup"))?;
    let entries = kb::open_with(&bytes, &secret, allow_expired)
        .map_err(backup_error)
        .with_context(|| format!("backup {}", file.display()))?;
    Ok(entries)
}

/// Restores the backup into a scratch home (a private temporary directory with a memory
/// backend: nothing of the real home is touched), then signs a challenge with every restored
/// key and verifies it with the public key the backup recorded.
fn restore_test_run(file: &Path, args: &SecretArgs, json: bool) -> Result<()> {
    use keyhaven::{Algorithm, BackendConfig, BackendKind, Config, FixedPassphrase};
    // A restore test restores nothing real: an expired backup may still be tested.
    let (wrapped, entries): (Vec<_>, Vec<_>) = open_entries(file, args, true)?
        .into_iter()
        .partition(|e| e.tpm_blob.is_some());
    // A TPM-wrapped key loads only into the TPM that made it: restoring it there would touch
    // the real home, so it is counted and named, not tested.
    let wrapped = wrapped.len();
    let mut random = [0u8; 8];
    keyhaven::fill_random(&mut random)?;
    let scratch =
        std::env::temp_dir().join(format!("keyhaven-restore-test-{}", hex::encode(random)));
    keyhaven::fs::create_private_dir(&scratch)?;
    let outcome = (|| -> Result<(usize, usize)> {
        let mut config = Config::default();
        config.backends.insert(
            "scratch".into(),
            BackendConfig::new(BackendKind::Memory, None),
        );
        config.default_backend = Some("scratch".into());
        config.audit.enabled = Some(false);
        let m = KeyManager::with_config(&scratch, config, FixedPassphrase::new("scratch"))?;
        let report = m
            .backups()
            .restore(&entries, Some("scratch"), OnConflict::Fail)?;
        let mut signed = 0;
        for k in &report.keys {
            let id = match &k.outcome {
                kb::Outcome::Restored { new_id }
                | kb::Outcome::Renamed { new_id, .. }
                | kb::Outcome::Replaced { new_id, .. } => new_id,
                _ => continue,
            };
            let key = m.resolve(&format!("scratch:{id}"))?;
            // The key material itself is tested, through the store: a verify-only version
            // (its lifecycle restored too) may not sign through the manager, yet must work.
            let store = m.backend("scratch")?.store().clone();
            if key.algorithm() == Algorithm::X25519 {
                // Agreement keys: an agreement (with the key's own public key as the peer)
                // stands for the signature.
                store.agree(id, key.public_key())?;
            } else {
                let challenge = format!("keyhaven restore test {}", k.fingerprint);
                let sig = store.sign(id, challenge.as_bytes())?;
                keyhaven::verify(key.public_key(), challenge.as_bytes(), &sig)?;
            }
            if key.public_key().fingerprint().to_hex() != k.fingerprint {
                return Err(CoreError::corrupt(
                    format!("backup {}", file.display()),
                    format!("key {} came back with another public key", k.label),
                )
                .into());
            }
            signed += 1;
        }
        Ok((signed, report.keys.len()))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (used, total) = outcome.context("restore test")?;
    if json {
        print_json(&RestoreTestJson {
            restore_test: RestoreTestCounts {
                keys: total,
                used,
                tpm_wrapped: wrapped,
            },
        })?;
    } else {
        outln!(
            "restore test: {used} of {total} key(s) restored into a scratch home and used \
             (signed and verified, or agreed); the real home was not touched"
        )?;
        if wrapped > 0 {
            outln!(
                "{wrapped} TPM-wrapped key(s) not tested: each loads only into the TPM that \
                 made it (`keyhaven backup restore --into` that TPM's backend checks it)"
            )?;
        }
    }
    Ok(())
}

fn restore(
    m: &KeyManager,
    file: &Path,
    into: Option<&str>,
    on_conflict: OnConflict,
    args: &SecretArgs,
    allow_expired: bool,
    json: bool,
) -> Result<u8> {
    let entries = open_entries(file, args, allow_expired)?;
    let target = match into {
        Some(b) => b.to_owned(),
        None => m.default_backend_name()?,
    };
    let report = m
        .backups()
        .restore(&entries, Some(&target), on_conflict)
        .map_err(|e| {
            let conflict = e.kind() == ErrorKind::AlreadyExists && on_conflict == OnConflict::Fail;
            let e = anyhow::Error::from(e);
            if conflict {
                e.context(
                    "the backup's labels conflict with existing keys (pass --on-conflict skip, \
                     rename or replace)",
                )
            } else {
                e
            }
        })?;
    // A fallback backend may have taken the keys (see the warning).
    let backend = m
        .warnings()
        .into_iter()
        .find_map(|w| match w {
            Warning::Fallback {
                backend, fallback, ..
            } if backend == target => Some(fallback),
            _ => None,
        })
        .unwrap_or(target);
    print_report(&backend, &report, json)?;
    Ok(OK)
}

fn print_report(backend: &str, report: &RestoreReport, json: bool) -> Result<()> {
    let short = |fp: &str| fp[..16.min(fp.len())].to_owned();
    if json {
        let keys: Vec<_> = report
            .keys
            .iter()
            .map(|k| {
                let (outcome, new_id, detail) = match &k.outcome {
                    Outcome::Restored { new_id } => ("restored", Some(new_id), None),
                    Outcome::Renamed { new_id, label } => {
                        ("renamed", Some(new_id), Some(label.clone()))
                    }
                    Outcome::Replaced { new_id, old_id } => {
                        ("replaced", Some(new_id), Some(old_id.to_string()))
                    }
                    Outcome::Skipped { existing } => ("skipped", None, Some(existing.to_string())),
                    Outcome::AlreadyPresent { existing } => {
                        ("already-present", None, Some(existing.to_string()))
                    }
                    Outcome::HardwarePublicOnly => ("hardware-public-only", None, None),
                    _ => ("other", None, None),
                };
                RestoredKeyJson {
                    original_id: k.original_id.to_string(),
                    label: k.label.clone(),
                    fingerprint: k.fingerprint.clone(),
                    outcome,
                    backend: backend.to_owned(),
                    new_id: new_id.map(ToString::to_string),
                    verified: new_id.is_some(),
                    detail,
                }
            })
            .collect();
        return print_json(&RestoreJson {
            backend: backend.to_owned(),
            keys,
        });
    }
    for k in &report.keys {
        let fp = short(&k.fingerprint);
        let line = match &k.outcome {
            Outcome::Restored { new_id } => format!(
                "restored  '{}'  {} -> {backend}:{new_id}  {fp}  verified",
                k.label, k.original_id
            ),
            Outcome::Renamed { new_id, label } => format!(
                "renamed   '{}' as '{label}'  {} -> {backend}:{new_id}  {fp}  verified",
                k.label, k.original_id
            ),
            Outcome::Replaced { new_id, old_id } => format!(
                "replaced  '{}'  {} -> {backend}:{new_id} (replaced {old_id})  {fp}  verified",
                k.label, k.original_id
            ),
            Outcome::Skipped { existing } => format!(
                "skipped   '{}'  {}: the label is taken by {backend}:{existing}  {fp}",
                k.label, k.original_id
            ),
            Outcome::AlreadyPresent { existing } => format!(
                "present   '{}'  {}: already in {backend} as {existing}  {fp}",
                k.label, k.original_id
            ),
            Outcome::HardwarePublicOnly => format!(
                "public    '{}'  {}: a hardware key, public key only in the backup: not \
                 restorable  {fp}",
                k.label, k.original_id
            ),
            other => format!("'{}'  {}: {other:?}", k.label, k.original_id),
        };
        outln!("{line}")?;
    }
    let restored = report.restored();
    errln!(
        "{restored} of {} key(s) restored into backend '{backend}'{}.",
        report.keys.len(),
        if restored > 0 {
            ", each verified against the public key recorded in the backup"
        } else {
            ""
        }
    );
    Ok(())
}

fn verify_shares(paths: &[PathBuf]) -> Result<u8> {
    for (path, share) in load_shares(paths)? {
        let check = kb::verify_share(&share)
            .map_err(CoreError::from)
            .with_context(|| format!("share file {}", path.display()))?;
        let status = match check {
            ShareCheck::Genuine => "genuine".to_owned(),
            ShareCheck::EncryptedStructureOk => format!(
                "well-formed, encrypted to key {} (decrypt it to check its value: `keyhaven \
                 backup shares decrypt`)",
                share.encrypted_to().unwrap_or_default()
            ),
            _ => "checked".to_owned(),
        };
        outln!(
            "{}: {}, threshold {}, backup {} ({}): {status}",
            path.display(),
            share.name(),
            share.threshold(),
            share.backup_id(),
            share.fingerprint()
        )?;
    }
    Ok(OK)
}

fn decrypt_share(m: &KeyManager, share: &Path, key: &str, out: &Path) -> Result<u8> {
    refuse_existing(out)?;
    let shares = load_shares(std::slice::from_ref(&share.to_path_buf()))?;
    let [(_, encrypted)] = shares.as_slice() else {
        return Err(CoreError::InvalidInput(format!(
            "{} holds {} shares; decrypt one share file at a time",
            share.display(),
            shares.len()
        ))
        .into());
    };
    let key = m.resolve(key)?;
    let plain = m
        .backups()
        .decrypt_share(encrypted, &key)
        .with_context(|| format!("share file {}", share.display()))?;
    kb::save(out, plain.to_text().as_bytes())?;
    outln!(
        "{} of backup {} ({}) decrypted with {key} and verified: {}",
        plain.name(),
        plain.backup_id(),
        plain.fingerprint(),
        out.display()
    )?;
    Ok(OK)
}

/// `key export --format keyhaven|binary`: a one-key backup under the export passphrase.
pub(crate) fn export_key(
    m: &KeyManager,
    key: &ManagedKey,
    out: &Path,
    format: Format,
    passphrase_file: Option<&Path>,
) -> Result<u8> {
    let entries = m.backups().collect(Some(&[key.reference()]))?;
    if entries.iter().any(|e| e.hardware) {
        return Err(CoreError::Unsupported {
            operation: "export a private key",
            reason: format!(
                "{key} is a hardware key: its private part cannot leave the device (`keyhaven \
                 backup create --keys {}` records its public key and metadata)",
                key.reference()
            ),
        }
        .into());
    }
    let pass = SecretSource {
        option: EXPORT_OPTION,
        file: passphrase_file,
        env: None,
        what: format!("passphrase to encrypt {}", out.display()),
        new: true,
        otherwise: "",
    }
    .get()?;
    let bytes = kb::write(&entries, &pass, KdfParams::default(), format)
        .map_err(|e| OtherPassphrase::wrap(EXPORT_OPTION, e.into()))?;
    kb::save(out, &bytes)?;
    let header = kb::inspect(&bytes).map_err(backup_error)?;
    errln!(
        "exported {key} to {} (keyhaven backup, {format}, fingerprint {}); `keyhaven backup \
         restore FILE` reads it",
        out.display(),
        header.fingerprint
    );
    Ok(OK)
}

/// `key export --format pkcs8-encrypted --pbkdf2`: PBES2 with PBKDF2-SHA256 instead of scrypt.
pub(crate) fn pkcs8_pbkdf2(
    der: &keyhaven::SecretBytes,
    pass: &SecretString,
) -> Result<Zeroizing<String>> {
    kb::export_pkcs8_pem(der, pass, kb::Pbes2::pbkdf2_sha256())
        .map_err(|e| OtherPassphrase::wrap(EXPORT_OPTION, e.into()))
}
