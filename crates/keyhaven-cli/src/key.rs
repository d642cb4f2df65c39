//! `keyhaven key ...`

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use keyhaven::secrecy::ExposeSecret;
use keyhaven::{CoreError, KeyManager, ManagedKey, Protection, encoding, hazmat, rfc3339};
use serde_json::json;

use crate::args::{KeyCommand, PublicFormat};
use crate::ctx::{Ctx, confirm, interactive, print_warnings, prompt, prompt_new, read_secret_file};
use crate::exit::{OK, UsageError};
use crate::output::{
    key_json, print_json, print_table, read_file, warn_plain, write_file, write_new_file,
    write_stdout,
};

fn is_default(m: &KeyManager, key: &ManagedKey) -> bool {
    m.config()
        .default_key
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
            json,
        } => {
            let had_default = m.config().default_key.is_some();
            let key = m.generate(backend.as_deref(), algorithm.into(), &label)?;
            print_warnings(m);
            if json {
                print_json(&key_json(&key, is_default(m, &key))?)?;
            } else {
                println!("{}", key.id());
            }
            if key.protection() == Protection::SoftwarePlain {
                warn_plain(std::slice::from_ref(&key.backend));
            }
            if !had_default && is_default(m, &key) {
                eprintln!("{} is now the default key.", key);
            }
            Ok(OK)
        }
        KeyCommand::List { json } => list(m, json),
        KeyCommand::Show { key, json } => show(m, &key, json),
        KeyCommand::SetDefault { key } => {
            let key = m.resolve(&key)?;
            m.set_default_key(&key)?;
            println!("default key: {key}");
            Ok(OK)
        }
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
                    eprintln!("Not deleted.");
                    return Ok(OK);
                }
            }
            m.delete(&key)?;
            println!("deleted {key}");
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
                Some(path) => write_file(&path, &bytes)?,
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
            let bytes = read_file(&file, "key file")?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not a PEM text file", file.display()))
            })?;
            let passphrase = if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                Some(match &key_passphrase_file {
                    Some(f) => read_secret_file(f)?,
                    None if interactive() => {
                        prompt(&format!("Passphrase of {}: ", file.display()))?
                    }
                    None => {
                        return Err(CoreError::Locked(format!(
                            "{} is encrypted and standard input is not a terminal: pass \
                             --key-passphrase-file FILE",
                            file.display()
                        ))
                        .into());
                    }
                })
            } else {
                None
            };
            let der = hazmat::private_key_pem_to_pkcs8(
                text,
                passphrase.as_ref().map(|p| p.expose_secret().as_bytes()),
            )
            .with_context(|| format!("import {}", file.display()))?;
            let key = m.import_pkcs8(backend.as_deref(), &label, &der)?;
            if json {
                print_json(&key_json(&key, is_default(m, &key))?)?;
            } else {
                println!("{}", key.id());
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
        } => {
            let key = m.resolve(&key)?;
            if out.exists() {
                return Err(CoreError::AlreadyExists(format!(
                    "file {} (refusing to overwrite it)",
                    out.display()
                ))
                .into());
            }
            let der = m.export_pkcs8(&key)?;
            let pem = if insecure_plaintext {
                eprintln!(
                    "WARNING: writing the private key of {key} UNENCRYPTED to {}. Anyone who \
                     reads that file has the key.",
                    out.display()
                );
                hazmat::pkcs8_to_pem(&der)?
            } else {
                let pass = match &export_passphrase_file {
                    Some(f) => read_secret_file(f)?,
                    None if interactive() => {
                        prompt_new(&format!("Passphrase to encrypt {}", out.display()))?
                    }
                    None => {
                        return Err(CoreError::Locked(
                            "an export passphrase is needed and standard input is not a \
                             terminal: pass --export-passphrase-file FILE (or \
                             --insecure-plaintext)"
                                .into(),
                        )
                        .into());
                    }
                };
                if pass.expose_secret().is_empty() {
                    return Err(CoreError::InvalidInput(
                        "the export passphrase may not be empty".into(),
                    )
                    .into());
                }
                hazmat::pkcs8_encrypt_pem(&der, pass.expose_secret().as_bytes())?
            };
            write_new_file(&out, pem.as_bytes(), true)?;
            eprintln!(
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

fn list(m: &KeyManager, json: bool) -> Result<u8> {
    let keys = m.list_keys()?;
    let problems = m.problems()?;
    let default = m.config().default_key;
    let is_def = |k: &ManagedKey| {
        default
            .as_ref()
            .is_some_and(|d| d.backend == k.backend && d.id == k.info.id)
    };
    if json {
        let items = keys
            .iter()
            .map(|k| key_json(k, is_def(k)))
            .collect::<Result<Vec<_>>>()?;
        print_json(&serde_json::Value::Array(items))?;
    } else if m.config().backends.is_empty() {
        eprintln!(
            "No backends are configured in {}. Run `keyhaven quickstart`, or `keyhaven backend \
             add NAME --type encrypted`.",
            m.home().display()
        );
    } else if keys.is_empty() {
        eprintln!("No keys. Create one with `keyhaven key generate --label NAME`.");
    } else {
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                vec![
                    if is_def(k) { "*".into() } else { String::new() },
                    k.backend.clone(),
                    k.id().to_string(),
                    k.label().to_owned(),
                    k.algorithm().short_name().to_owned(),
                    k.protection().to_string(),
                    k.info.fingerprint().short(),
                ]
            })
            .collect();
        print_table(
            &[
                "",
                "BACKEND",
                "ID",
                "LABEL",
                "ALGORITHM",
                "PROTECTION",
                "FINGERPRINT",
            ],
            &rows,
        );
    }
    for (backend, problem) in &problems {
        eprintln!(
            "warning: backend '{backend}': {problem} (not listed; the other keys are usable)"
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
    let private_file = backend.private_key_file(key.id());
    let default = is_default(m, &key);
    if json {
        let mut v = key_json(&key, default)?;
        v["location"] = json!(backend.location());
        if let Some(f) = &private_file {
            v["private_key_file"] = json!(f.display().to_string());
        }
        print_json(&v)?;
    } else {
        let alg = key.algorithm();
        println!("id:           {}", key.id());
        println!("label:        {}", key.label());
        println!("backend:      {} ({})", key.backend, key.backend_kind);
        println!("location:     {}", backend.location());
        println!("algorithm:    {} ({})", alg.short_name(), alg.jose_name());
        println!("protection:   {}", key.protection());
        println!("fingerprint:  {}", key.info.fingerprint());
        println!("created:      {}", rfc3339(key.info.created_at));
        println!("default:      {}", if default { "yes" } else { "no" });
        if let Some(f) = &private_file {
            println!("private key:  {}", f.display());
        }
        print!("{}", key.public_key().to_pem()?);
    }
    if key.protection() == Protection::SoftwarePlain {
        warn_plain(std::slice::from_ref(&key.backend));
    }
    Ok(OK)
}
