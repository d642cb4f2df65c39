//! Output helpers: key descriptions, tables, files.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use keyhaven::{CoreError, ManagedKey, Protection, rfc3339};
use serde_json::{Value, json};

/// A key as JSON.
pub(crate) fn key_json(key: &ManagedKey, is_default: bool) -> Result<Value> {
    Ok(json!({
        "backend": key.backend,
        "backend_type": key.backend_kind.name(),
        "id": key.id().as_str(),
        "label": key.label(),
        "algorithm": key.algorithm().short_name(),
        "jose_algorithm": key.algorithm().jose_name(),
        "protection": key.protection().as_str(),
        "fingerprint": key.info.fingerprint().to_hex(),
        "created_at": rfc3339(key.info.created_at),
        "default": is_default,
        "public_key_pem": key.public_key().to_pem()?,
    }))
}

pub(crate) fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as left-aligned columns.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The loud warning for keys kept in plain files.
pub(crate) fn warn_plain(backends: &[String]) {
    if backends.is_empty() {
        return;
    }
    eprintln!(
        "WARNING: keys in backend(s) {} are {}: unencrypted PEM files, the WEAKEST protection \
         keyhaven offers. Anyone who can read those files has the keys. Prefer an `encrypted` \
         backend (or hardware) for anything that matters.",
        backends.join(", "),
        Protection::SoftwarePlain
    );
}

/// Writes a new file, refusing to overwrite one; `private` files are 0600.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::Error::from(CoreError::AlreadyExists(format!(
                "file {} (refusing to overwrite it)",
                path.display()
            )))
        } else {
            anyhow::Error::from(CoreError::io(format!("create {}", path.display()), e))
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
        .inspect_err(|_| {
            let _ = fs::remove_file(path);
        })
}

/// Writes (or replaces) an output file.
pub(crate) fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    fs::write(path, contents)
        .map_err(|e| CoreError::io(format!("write {}", path.display()), e).into())
}

/// Reads an input file.
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| CoreError::io(format!("read {what} {}", path.display()), e).into())
}

/// Writes bytes to standard output.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("write to standard output")
}
