//! `keyhaven key ...`

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use keyhaven::secrecy::ExposeSecret;
use keyhaven::versions::SecurityLevel;
use keyhaven::{CoreError, KeyManager, KeySpec, ManagedKey, Protection, encoding, hazmat, rfc3339};

use clap::{Args, Subcommand};

use crate::args::{AlgorithmArg, PublicFormat};
use crate::ctx::SecretSource;
use crate::ctx::{Ctx, confirm, interactive, print_warnings, read_secret_file};
use crate::exit::{OK, OtherPassphrase, UsageError};
use crate::json::{KeyJson, ListedKeyJson};
use crate::output::{errln, outln, print_json, print_table, warn_plain, write_stdout};

/// A security level named on the command line.
fn parse_level(text: &str) -> Result<SecurityLevel> {
    Ok(text.parse::<SecurityLevel>().map_err(CoreError::from)?)
}

fn is_default(m: &KeyManager, key: &ManagedKey) -> bool {
    m.config()
        .default_key
        .as_ref()
        .is_some_and(|d| d.backend == key.backend && d.id == key.info.id)
}

pub(crate) fn run(ctx: &Ctx, cmd: KeyCommand) -> Result<u8> {
    let m = ctx.manager()?;
    let result = dispatch(&m, cmd);
    print_warnings(&m);
    result
}

fn dispatch(m: &KeyManager, cmd: KeyCommand) -> Result<u8> {
    match cmd {
        KeyCommand::Generate {
            backend,
            algorithm,
            label,
            lifecycle,
            json,
            tpm,
        } => generate(m, backend, algorithm, label, lifecycle, json, tpm),
        KeyCommand::List { json, all } => list(m, json, all),
        KeyCommand::Show { key, json } => show(m, &key, json),
        KeyCommand::SetDefault { key } => {
            let key = m.resolve(&key)?;
            m.set_default_key(&key)?;
            outln!("default key: {key}")?;
            Ok(OK)
        }
        KeyCommand::SetLevel { key, level, reason } => {
            let level = parse_level(&level)?;
            let key = m.resolve(&key)?;
            let before = m.rotation().version_info(&key)?.level;
            let logical = m.rotation().set_level(&key, level, &reason)?;
            if before == level {
                outln!("{key}: security level is already {level}")?;
            } else {
                outln!(
                    "{key}: security level {before} -> {} (logical key {})",
                    logical.level(),
                    logical.id()
                )?;
            }
            Ok(OK)
        }
        KeyCommand::Rotate {
            key,
            reason,
            proof_out,
            migration_window,
            json,
        } => {
            let window = migration_window
                .map(|w| {
                    keyhaven::versions::parse_duration("--migration-window", &w)
                        .map_err(CoreError::from)
                })
                .transpose()?;
            crate::rotation::rotate_key(m, &key, &reason, json, proof_out.as_deref(), window)
        }
        KeyCommand::History { key, json } => crate::rotation::history(m, &key, json),
        KeyCommand::Revoke {
            key,
            reason,
            compromised,
        } => crate::lifecycle::revoke(m, &key, &reason, compromised),
        KeyCommand::Delete { key, yes } => delete(m, key, yes),
        KeyCommand::Public { key, format, out } => public(m, key, format, out),
        KeyCommand::Attest {
            key,
            challenge,
            out,
        } => attest(m, &key, challenge.as_deref(), out),
        KeyCommand::Import {
            backend,
            label,
            key_passphrase_file,
            json,
            file,
        } => import(m, backend, label, key_passphrase_file, json, file),
        KeyCommand::Export {
            key,
            out,
            export_passphrase_file,
            insecure_plaintext,
            format,
            pbkdf2,
        } => export(
            m,
            key,
            out,
            export_passphrase_file,
            insecure_plaintext,
            format,
            pbkdf2,
        ),
    }
}

/// `generate`.
fn generate(
    m: &KeyManager,
    backend: Option<String>,
    algorithm: AlgorithmArg,
    label: String,
    lifecycle: LifecycleArgs,
    json: bool,
    tpm: TpmKeyArgs,
) -> Result<u8> {
    let LifecycleArgs { role, level } = lifecycle;
    let had_default = m.config().default_key.is_some();
    let spec = key_spec(algorithm.into(), &label, tpm)?;
    let role = role
        .map(|r| r.parse::<keyhaven::versions::Role>())
        .transpose()
        .map_err(keyhaven::CoreError::from)?;
    let level = level.as_deref().map(parse_level).transpose()?;
    let key = m.generate_with(backend.as_deref(), &spec)?;
    if (role.is_some() || level.is_some())
        && let Err(e) = m
            .rotation()
            .adopt_key_at(&key, role, level.unwrap_or_default())
    {
        // All or nothing: a key without the role or level asked for is not left behind.
        if let Err(d) = m.delete(&key) {
            errln!("warning: the new key {key} could not be removed after the failure: {d}");
        }
        return Err(e.into());
    }
    print_warnings(m);
    print_new_key(m, &key, json)?;
    if !had_default && is_default(m, &key) {
        errln!("{} is now the default key.", key);
    }
    Ok(OK)
}

/// `delete`.
fn delete(m: &KeyManager, key: String, yes: bool) -> Result<u8> {
    let key = m.resolve(&key)?;
    if !yes {
        if !interactive() {
            return Err(UsageError(format!(
                "refusing to delete {key} without confirmation: standard input is not a \
                 terminal. Pass --yes to delete it"
            ))
            .into());
        }
        if !confirm(&format!("Delete key {key}? This cannot be undone."))? {
            errln!("Not deleted.");
            return Ok(OK);
        }
    }
    m.delete(&key)?;
    outln!("deleted {key}")?;
    Ok(OK)
}

/// `public`.
fn public(m: &KeyManager, key: String, format: PublicFormat, out: Option<PathBuf>) -> Result<u8> {
    // A rotated key's label or first id names the key in use: its primary version (the one
    // `sign --key` signs with), so what is exported verifies what is signed.
    let key = m.rotation().current_version(&m.resolve(&key)?)?;
    let pk = m.public_key(&key)?;
    let bytes = match format {
        PublicFormat::Pem => pk.to_pem()?.into_bytes(),
        PublicFormat::Der => pk.spki_der().to_vec(),
        PublicFormat::Jwk => {
            let mut s = serde_json::to_string_pretty(&encoding::public_key_jwk(&pk)?)?;
            s.push('\n');
            s.into_bytes()
        }
    };
    match out {
        Some(path) => keyhaven::fs::atomic_write(&path, &bytes)?,
        None => write_stdout(&bytes)?,
    }
    Ok(OK)
}

/// `attest`.
fn attest(m: &KeyManager, key: &str, challenge: Option<&str>, out: Option<PathBuf>) -> Result<u8> {
    let key = m.resolve(key)?;
    let challenge = match challenge {
        Some(h) => hex::decode(h).map_err(|_| {
            keyhaven::CoreError::InvalidInput(format!("--challenge {h:?} is not hex"))
        })?,
        None => Vec::new(),
    };
    let attestation = m.attest_key(&key, &challenge)?;
    let attestation_key = match &attestation {
        keyhaven::KeyAttestation::Tpm2Certify { ak_public, .. } => {
            use base64ct::{Base64, Encoding};
            use sha2::Digest;
            Base64::decode_vec(ak_public)
                .ok()
                .map(|ak| hex::encode(sha2::Sha256::digest(ak)))
        }
        _ => None,
    };
    let mut text = serde_json::to_string_pretty(&serde_json::json!({
        "key": key.reference(),
        "fingerprint": key.info.fingerprint().to_hex(),
        "challenge": hex::encode(&challenge),
        "proof": attestation.is_proof(),
        "attestation_key": attestation_key,
        "attestation": attestation,
    }))?;
    text.push('\n');
    match out {
        Some(path) => keyhaven::fs::atomic_write(&path, text.as_bytes())?,
        None => write_stdout(text.as_bytes())?,
    }
    Ok(OK)
}

/// `import`.
fn import(
    m: &KeyManager,
    backend: Option<String>,
    label: String,
    key_passphrase_file: Option<PathBuf>,
    json: bool,
    file: PathBuf,
) -> Result<u8> {
    const OPTION: &str = "--key-passphrase-file";
    // The private key, in the clear: held only in zeroizing buffers.
    let bytes = keyhaven::fs::read_secret(&file)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        CoreError::InvalidInput(format!("{} is not a PEM text file", file.display()))
    })?;
    let passphrase = if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        Some(
            SecretSource {
                option: OPTION,
                file: key_passphrase_file.as_deref(),
                env: None,
                what: format!("passphrase of {} (it is encrypted)", file.display()),
                new: false,
                otherwise: "",
            }
            .get()?,
        )
    } else {
        None
    };
    let der = hazmat::private_key_pem_to_pkcs8(
        text,
        passphrase.as_ref().map(|p| p.expose_secret().as_bytes()),
    )
    .map_err(|e| OtherPassphrase::wrap(OPTION, e))
    .with_context(|| format!("import {}", file.display()))?;
    let key = m.import_pkcs8(backend.as_deref(), &label, &der)?;
    print_new_key(m, &key, json)?;
    Ok(OK)
}

/// A new key (generated or imported): its id, or its JSON; a warning if it is stored plain.
fn print_new_key(m: &KeyManager, key: &ManagedKey, json: bool) -> Result<()> {
    if json {
        print_json(&KeyJson::of(key, is_default(m, key))?)?;
    } else {
        outln!("{}", key.id())?;
    }
    if key.protection() == Protection::SoftwarePlain {
        warn_plain(std::slice::from_ref(&key.backend));
    }
    Ok(())
}

/// `export`.
fn export(
    m: &KeyManager,
    key: String,
    out: PathBuf,
    export_passphrase_file: Option<PathBuf>,
    insecure_plaintext: bool,
    format: crate::backup::ExportFormat,
    pbkdf2: bool,
) -> Result<u8> {
    const OPTION: &str = "--export-passphrase-file";
    let backup_format = format.backup_format();
    if backup_format.is_some() && (insecure_plaintext || pbkdf2) {
        return Err(UsageError(
            "--insecure-plaintext and --pbkdf2 are for --format pkcs8-encrypted only".into(),
        )
        .into());
    }
    let key = m.resolve(&key)?;
    // Checked early to ask for nothing in vain; the write itself never overwrites.
    if out.symlink_metadata().is_ok() {
        return Err(CoreError::AlreadyExists(format!(
            "file {} (refusing to overwrite it)",
            out.display()
        ))
        .into());
    }
    if let Some(f) = backup_format {
        return crate::backup::export_key(m, &key, &out, f, export_passphrase_file.as_deref());
    }
    let der = m.export_pkcs8(&key)?;
    let pem = if insecure_plaintext {
        errln!(
            "WARNING: writing the private key of {key} UNENCRYPTED to {}. Anyone who \
             reads that file has the key.",
            out.display()
        );
        hazmat::pkcs8_to_pem(&der)?
    } else {
        let pass = SecretSource {
            option: OPTION,
            file: export_passphrase_file.as_deref(),
            env: None,
            what: format!("passphrase to encrypt {}", out.display()),
            new: true,
            otherwise: " (or --insecure-plaintext to write the key unencrypted)",
        }
        .get()?;
        crate::ctx::check_new_passphrase(&pass, "export passphrase")
            .map_err(|e| OtherPassphrase::wrap(OPTION, e))?;
        if pbkdf2 {
            crate::backup::pkcs8_pbkdf2(&der, &pass)?
        } else {
            hazmat::pkcs8_encrypt_pem(&der, pass.expose_secret().as_bytes())?
        }
    };
    keyhaven::fs::atomic_write_new(&out, pem.as_bytes())?;
    errln!(
        "exported {key} to {} ({})",
        out.display(),
        if insecure_plaintext {
            "plain PKCS#8 PEM"
        } else {
            "encrypted PKCS#8 PEM; `openssl pkey -in FILE` asks for the passphrase"
        }
    );
    Ok(OK)
}

/// The key `key generate` asks for, with its backend options: the flags of the TPM's options,
/// and any other as `--option NAME=VALUE` (the backend refuses names it does not know).
fn key_spec(algorithm: keyhaven::Algorithm, label: &str, args: TpmKeyArgs) -> Result<KeySpec> {
    const OPTION: &str = "--key-auth-file";
    let mut options = KeySpec::new(algorithm, label);
    for pair in &args.options {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--option takes NAME=VALUE, not '{pair}'")))?;
        let name = name.trim();
        if name == "auth" {
            // A passphrase on the command line is readable by every user (ps, /proc) and
            // stays in shell history.
            return Err(UsageError(
                "a key passphrase is never an --option: give it with --key-auth-file FILE".into(),
            )
            .into());
        }
        options = options.option(name, value.trim());
    }
    if let Some(handle) = args.persistent {
        options = options.option("persistent", handle);
    }
    if let Some(policy) = args.pcr_policy {
        options = options.option("pcr-policy", policy);
    }
    if let Some(file) = &args.key_auth_file {
        let pass = read_secret_file(file).map_err(|e| OtherPassphrase::wrap(OPTION, e))?;
        if pass.expose_secret().is_empty() {
            return Err(CoreError::InvalidInput(format!(
                "the key passphrase in {} is empty",
                file.display()
            ))
            .into());
        }
        options = options.secret_option("auth", pass);
    }
    Ok(options)
}

fn list(m: &KeyManager, json: bool, all: bool) -> Result<u8> {
    let keyhaven::Inventory {
        mut keys, problems, ..
    } = m.inventory()?;
    let before = keys.len();
    if !all {
        keys.retain(|k| !keyhaven::versions::is_prekey_label(k.label()));
    }
    let hidden = before - keys.len();
    let default = m.config().default_key.clone();
    let is_def = |k: &ManagedKey| {
        default
            .as_ref()
            .is_some_and(|d| d.backend == k.backend && d.id == k.info.id)
    };
    // A key whose lifecycle state cannot be read (a damaged or tampered registry entry) is
    // listed as damaged with a warning naming the file; the others are listed as usual.
    let mut damaged: Vec<String> = Vec::new();
    let mut version_of = |k: &ManagedKey| -> Result<(Option<u32>, String, Option<String>)> {
        match m.rotation().version_info(k) {
            Ok(info) => Ok((Some(info.version), info.state, info.logical)),
            Err(e)
                if matches!(
                    e.kind(),
                    keyhaven::ErrorKind::Corrupt | keyhaven::ErrorKind::PermissionDenied
                ) =>
            {
                damaged.push(format!("key {}: {e}", k.id()));
                Ok((None, "damaged".into(), None))
            }
            Err(e) => Err(e.into()),
        }
    };
    if json {
        let items = keys
            .iter()
            .map(|k| {
                let (version, state, logical_key) = version_of(k)?;
                Ok(ListedKeyJson {
                    key: KeyJson::of(k, is_def(k))?,
                    version,
                    state,
                    logical_key,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        print_json(&items)?;
    } else if m.config().backends.is_empty() {
        errln!(
            "No backends are configured in {}. Run `keyhaven quickstart`, or `keyhaven backend \
             add encrypted NAME`.",
            m.home().display()
        );
    } else if keys.is_empty() {
        errln!("No keys. Create one with `keyhaven key generate --label NAME`.");
    } else {
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                let (version, state, _) = version_of(k)?;
                Ok(vec![
                    if is_def(k) { "*".into() } else { String::new() },
                    k.backend.clone(),
                    k.id().to_string(),
                    k.label().to_owned(),
                    version.map_or_else(|| "?".into(), |v| format!("v{v}")),
                    state,
                    k.algorithm().short_name().to_owned(),
                    k.protection().to_string(),
                    k.info.fingerprint().short(),
                ])
            })
            .collect::<Result<_>>()?;
        print_table(
            &[
                "",
                "BACKEND",
                "ID",
                "LABEL",
                "VERSION",
                "STATE",
                "ALGORITHM",
                "PROTECTION",
                "FINGERPRINT",
            ],
            &rows,
        )?;
    }
    if hidden > 0 && !json {
        errln!(
            "{hidden} prekey(s) not listed (`key list --all` lists them; `keyhaven prekeys \
             status` counts them)"
        );
    }
    for (backend, problem) in &problems {
        errln!("warning: backend '{backend}': {problem} (not listed; the other keys are usable)");
    }
    for d in &damaged {
        errln!(
            "warning: {d} (the key refuses to sign until it is restored; the others are usable)"
        );
    }
    let plain: BTreeSet<String> = keys
        .iter()
        .filter(|k| k.protection() == Protection::SoftwarePlain)
        .map(|k| k.backend.clone())
        .collect();
    warn_plain(&plain.into_iter().collect::<Vec<_>>());
    Ok(OK)
}

fn show(m: &KeyManager, reference: &str, json: bool) -> Result<u8> {
    let named = m.resolve(reference)?;
    // As `key public` and `sign --key`: a rotated key is shown as its version in use.
    let key = m.rotation().current_version(&named)?;
    if key.id() != named.id() && !json {
        errln!(
            "note: {reference} is at a later version: showing {} ({}); `keyhaven key history \
             {reference}` lists every version",
            key.label(),
            key.id()
        );
    }
    let backend = m.backend(&key.backend)?;
    let default = is_default(m, &key);
    let details = m.details(&key)?;
    let private_file = details.private_key_file.clone();
    let hardware = details.in_device.then_some(&details);
    // Damaged lifecycle state (a registry entry changed outside keyhaven) does not hide the
    // key's details: role and level are then unknown, with a warning naming the damage.
    let version = match m.rotation().version_info(&key) {
        Ok(v) => Some(v),
        Err(e)
            if matches!(
                e.kind(),
                keyhaven::ErrorKind::Corrupt | keyhaven::ErrorKind::PermissionDenied
            ) =>
        {
            errln!(
                "warning: key {}: {e} (its role and level are unknown)",
                key.id()
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        let mut v = KeyJson::of(&key, default)?;
        v.role = version.as_ref().map(|v| v.role.as_str());
        v.security_level = version.as_ref().map(|v| v.level.as_str());
        v.location = Some(backend.location().to_owned());
        v.private_key_file = private_file.as_ref().map(|f| f.display().to_string());
        v.hardware = hardware.cloned();
        print_json(&v)?;
    } else {
        let alg = key.algorithm();
        outln!("id:           {}", key.id())?;
        outln!("label:        {}", key.label())?;
        outln!("backend:      {} ({})", key.backend, key.backend_kind)?;
        outln!("location:     {}", backend.location())?;
        outln!("algorithm:    {} ({})", alg.short_name(), alg.jose_name())?;
        outln!("protection:   {}", key.protection())?;
        let unknown = || "unknown (damaged lifecycle state)".to_owned();
        outln!(
            "role:         {}",
            version
                .as_ref()
                .map_or_else(unknown, |v| v.role.to_string())
        )?;
        outln!(
            "level:        {}",
            version
                .as_ref()
                .map_or_else(unknown, |v| v.level.to_string())
        )?;
        outln!("fingerprint:  {}", key.info.fingerprint())?;
        outln!("created:      {}", rfc3339(key.info.created_at))?;
        outln!("default:      {}", if default { "yes" } else { "no" })?;
        if let Some(f) = &private_file {
            outln!("private key:  {}", f.display())?;
        }
        if let Some(d) = &hardware {
            outln!("private key:  inside the device; it cannot be exported")?;
            if let Some(t) = &d.token {
                outln!("token:        {t}")?;
            }
            if let Some(h) = &d.persistent_handle {
                outln!("persistent:   {h}")?;
            }
            if let Some(p) = &d.pcr_policy {
                outln!("PCR policy:   {p}")?;
            }
            if d.needs_auth {
                outln!("passphrase:   needed to sign (--key-auth-file)")?;
            }
        }
        write_stdout(key.public_key().to_pem()?.as_bytes())?;
    }
    if key.protection() == Protection::SoftwarePlain {
        warn_plain(std::slice::from_ref(&key.backend));
    }
    Ok(OK)
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a key pair inside a backend; prints its id.
    Generate {
        /// The backend (default: the default backend).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// The algorithm.
        #[arg(long, value_enum, default_value_t = AlgorithmArg::P384)]
        algorithm: AlgorithmArg,
        /// A label, unique in the backend.
        #[arg(long)]
        label: String,
        #[command(flatten)]
        lifecycle: LifecycleArgs,
        /// Print the key's details as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tpm: TpmKeyArgs,
    },
    /// List the keys of every backend.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also list the keys of prekey pools (one-time and signed prekeys, identity agreement
        /// keys), hidden by default: `keyhaven prekeys status` counts them.
        #[arg(long)]
        all: bool,
    },
    /// Show one key.
    Show {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a key the default for `keyhaven sign`.
    SetDefault {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
    },
    /// Set a key's security level (standard, high, critical), which decides the rotation
    /// policies that match it; recorded in its history and the audit log.
    SetLevel {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// standard, high or critical.
        #[arg(value_name = "LEVEL")]
        level: String,
        /// Why (kept in the key's history and the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Rotate a key to a new version in the same backend (the old one verifies during its
    /// migration window); prints the new version's id.
    Rotate {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Why (recorded in the key's history).
        #[arg(long, default_value = "manual rotation")]
        reason: String,
        /// Write the continuity proof (identity keys) here.
        #[arg(long, value_name = "FILE")]
        proof_out: Option<PathBuf>,
        /// How long the old version keeps verifying, for this rotation (e.g. 14d), instead of
        /// the policy's migration window.
        #[arg(long, value_name = "DURATION")]
        migration_window: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A key's versions (with their states) and its history.
    History {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it refuses every private operation from now on, in every process, and a
    /// signed revocation statement is recorded (`keyhaven revocations export`).
    Revoke {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Why (recorded in the signed statement).
        #[arg(long)]
        reason: String,
        /// The key is (or may be) compromised: also files a confirmed compromise report.
        #[arg(long)]
        compromised: bool,
    },
    /// Delete a key (asks for confirmation unless --yes).
    Delete {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Do not ask. Required when standard input is not a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Show where a key lives, as its backend attests it: a TPM key's TPM2_Certify by the TPM's
    /// attestation key (a proof, checkable offline by whoever trusts that key; its id is
    /// printed as attestation_key), or a PKCS#11 key's token attributes (the token's word, not
    /// a proof). Software keys have none.
    Attest {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// A challenge the certification answers (hex, at most 32 bytes): a verifier's nonce.
        #[arg(long, value_name = "HEX")]
        challenge: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print or write a key's public key.
    Public {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// pem (SPKI), der (SPKI) or jwk.
        #[arg(long, value_enum, default_value_t = PublicFormat::Pem)]
        format: PublicFormat,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import a private key: PKCS#8 PEM, encrypted PKCS#8 PEM, or SEC1 EC PEM.
    Import {
        /// The backend (default: the default backend).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// A label, unique in the backend.
        #[arg(long)]
        label: String,
        /// The passphrase of an encrypted PKCS#8 file, from the first line of this file (mode
        /// 0600; else a prompt).
        #[arg(long, value_name = "FILE")]
        key_passphrase_file: Option<PathBuf>,
        /// Print the key's details as JSON.
        #[arg(long)]
        json: bool,
        /// The PEM file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Export a software private key: encrypted PKCS#8 PEM unless --insecure-plaintext.
    Export {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID")]
        key: String,
        /// The file to write (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The export passphrase, from the first line of this file (mode 0600; else a prompt,
        /// asked twice).
        #[arg(long, value_name = "FILE", conflicts_with = "insecure_plaintext")]
        export_passphrase_file: Option<PathBuf>,
        /// Write the private key UNENCRYPTED (PKCS#8 PEM). Anyone who reads the file has the key.
        #[arg(long)]
        insecure_plaintext: bool,
        /// pkcs8-encrypted (PEM that `openssl pkey` reads), or a one-key keyhaven backup file:
        /// keyhaven (text) or binary (`keyhaven backup restore` reads both).
        #[arg(long, value_enum, default_value_t = crate::backup::ExportFormat::Pkcs8Encrypted)]
        format: crate::backup::ExportFormat,
        /// pkcs8-encrypted only: derive the key with PBKDF2-SHA256 (600 000 iterations) instead
        /// of scrypt, for readers without scrypt.
        #[arg(long, conflicts_with = "insecure_plaintext")]
        pbkdf2: bool,
    },
}

/// What rotation policies match a new key on.
#[derive(Debug, Args)]
pub(crate) struct LifecycleArgs {
    /// The key's role, which selects its rotation policy: identity, signing, encryption,
    /// signed-prekey, one-time-prekey (default: signing; encryption for X25519).
    #[arg(long)]
    role: Option<String>,
    /// The key's security level, which rotation policies match on: standard (the default),
    /// high, critical. Shown by `key show`; changed later with `key set-level`.
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
}

/// Options of `key generate` that only a TPM backend takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "TPM key options (tpm backends only)")]
pub(crate) struct TpmKeyArgs {
    /// Also make the key persistent at this handle (0x81000000 to 0x817fffff), where
    /// `tpm2_readpublic -c HANDLE` finds it.
    #[arg(long, value_name = "HANDLE")]
    pub(crate) persistent: Option<String>,
    /// Bind the key to the current values of these PCRs: it signs only while they are
    /// unchanged (BANK:PCR[,PCR...], e.g. sha256:0,7).
    #[arg(long, value_name = "BANK:PCRS")]
    pub(crate) pcr_policy: Option<String>,
    /// Protect the key with a passphrase of its own, from the first line of this file (mode
    /// 0600); `keyhaven sign` then needs it (--key-auth-file, or the terminal).
    #[arg(long, value_name = "FILE")]
    pub(crate) key_auth_file: Option<PathBuf>,
    /// Any other option the backend takes, as NAME=VALUE (repeatable); the backend refuses
    /// names it does not know.
    #[arg(long = "option", value_name = "NAME=VALUE")]
    pub(crate) options: Vec<String>,
}
