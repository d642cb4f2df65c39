//! `keyhaven key ...`

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use keyhaven::secrecy::ExposeSecret;
use keyhaven::{CoreError, KeyManager, KeySpec, ManagedKey, Protection, encoding, hazmat, rfc3339};
use serde_json::json;

use crate::args::{KeyCommand, PublicFormat, TpmKeyArgs};
use crate::ctx::SecretSource;
use crate::ctx::{Ctx, confirm, interactive, print_warnings, read_secret_file};
use crate::exit::{OK, OtherPassphrase, UsageError};
use crate::output::{errln, key_json, outln, print_json, print_table, warn_plain, write_stdout};

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
            role,
            json,
            tpm,
        } => {
            let had_default = m.config().default_key.is_some();
            let spec = key_spec(algorithm.into(), &label, tpm)?;
            let role = role
                .map(|r| r.parse::<keyhaven::versions::Role>())
                .transpose()
                .map_err(keyhaven::CoreError::from)?;
            let key = m.generate_with(backend.as_deref(), &spec)?;
            if role.is_some() {
                m.rotation().adopt_key(&key, role)?;
            }
            print_warnings(m);
            if json {
                print_json(&key_json(&key, is_default(m, &key))?)?;
            } else {
                outln!("{}", key.id())?;
            }
            if key.protection() == Protection::SoftwarePlain {
                warn_plain(std::slice::from_ref(&key.backend));
            }
            if !had_default && is_default(m, &key) {
                errln!("{} is now the default key.", key);
            }
            Ok(OK)
        }
        KeyCommand::List { json } => list(m, json),
        KeyCommand::Show { key, json } => show(m, &key, json),
        KeyCommand::SetDefault { key } => {
            let key = m.resolve(&key)?;
            m.set_default_key(&key)?;
            outln!("default key: {key}")?;
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
        KeyCommand::Delete { key, yes } => {
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
        KeyCommand::Public { key, format, out } => {
            let key = m.resolve(&key)?;
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
        KeyCommand::Import {
            backend,
            label,
            key_passphrase_file,
            json,
            file,
        } => {
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
            if json {
                print_json(&key_json(&key, is_default(m, &key))?)?;
            } else {
                outln!("{}", key.id())?;
            }
            if key.protection() == Protection::SoftwarePlain {
                warn_plain(std::slice::from_ref(&key.backend));
            }
            Ok(OK)
        }
        KeyCommand::Export {
            key,
            out,
            export_passphrase_file,
            insecure_plaintext,
            format,
            pbkdf2,
        } => {
            const OPTION: &str = "--export-passphrase-file";
            let backup_format = format.backup_format();
            if backup_format.is_some() && (insecure_plaintext || pbkdf2) {
                return Err(UsageError(
                    "--insecure-plaintext and --pbkdf2 are for --format pkcs8-encrypted only"
                        .into(),
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
                return crate::backup::export_key(
                    m,
                    &key,
                    &out,
                    f,
                    export_passphrase_file.as_deref(),
                );
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
    }
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
        options = options.option(name.trim(), value.trim());
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

fn list(m: &KeyManager, json: bool) -> Result<u8> {
    let keyhaven::Inventory { keys, problems, .. } = m.inventory()?;
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
                let mut v = key_json(k, is_def(k))?;
                let (version, state, logical) = version_of(k)?;
                v["version"] = version.into();
                v["state"] = state.into();
                v["logical_key"] = logical.into();
                Ok(v)
            })
            .collect::<Result<Vec<_>>>()?;
        print_json(&serde_json::Value::Array(items))?;
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
    let key = m.resolve(reference)?;
    let backend = m.backend(&key.backend)?;
    let default = is_default(m, &key);
    let details = m.details(&key)?;
    let private_file = details.private_key_file.clone();
    let hardware = details.in_device.then_some(&details);
    if json {
        let mut v = key_json(&key, default)?;
        v["location"] = json!(backend.location());
        if let Some(f) = &private_file {
            v["private_key_file"] = json!(f.display().to_string());
        }
        if let Some(d) = &hardware {
            v["hardware"] = serde_json::to_value(d)?;
        }
        print_json(&v)?;
    } else {
        let alg = key.algorithm();
        outln!("id:           {}", key.id())?;
        outln!("label:        {}", key.label())?;
        outln!("backend:      {} ({})", key.backend, key.backend_kind)?;
        outln!("location:     {}", backend.location())?;
        outln!("algorithm:    {} ({})", alg.short_name(), alg.jose_name())?;
        outln!("protection:   {}", key.protection())?;
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
