//! `keyhaven backend ...` and `keyhaven doctor`.

use anyhow::{Context, Result};
use keyhaven::{BackendConfig, KeyManager, Protection};
use serde_json::json;

use crate::args::BackendCommand;
use crate::ctx::{Ctx, print_warnings};
use crate::exit::{CORRUPT, NOT_FOUND, OK, code_of_kind};
use crate::output::{errln, outln, print_json, print_table, warn_plain};

pub(crate) fn run(ctx: &Ctx, cmd: BackendCommand) -> Result<u8> {
    let m = ctx.manager()?;
    let result = dispatch(&m, cmd);
    print_warnings(&m);
    result
}

fn dispatch(m: &KeyManager, cmd: BackendCommand) -> Result<u8> {
    match cmd {
        BackendCommand::List { json } => {
            let config = m.config();
            let rows: Vec<_> = config
                .backends
                .iter()
                .map(|(name, b)| {
                    let location = m
                        .backend_path(name)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "process memory (ephemeral)".into());
                    let mut marks = Vec::new();
                    if config.default_backend.as_deref() == Some(name.as_str()) {
                        marks.push("default");
                    }
                    if config.fallback.backend.as_deref() == Some(name.as_str()) {
                        marks.push(if config.fallback.allow {
                            "fallback"
                        } else {
                            "fallback (not allowed)"
                        });
                    }
                    (name.clone(), b.kind, location, marks.join(", "))
                })
                .collect();
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(name, kind, location, _)| {
                        json!({
                            "name": name,
                            "type": kind.name(),
                            "location": location,
                            "protection": kind.protection().as_str(),
                            "default": config.default_backend.as_deref() == Some(name.as_str()),
                            "fallback": config.fallback.backend.as_deref() == Some(name.as_str()),
                        })
                    })
                    .collect();
                print_json(&json!({
                    "backends": items,
                    "fallback_allowed": config.fallback.allow,
                }))?;
            } else if rows.is_empty() {
                errln!(
                    "No backends. Run `keyhaven quickstart`, or `keyhaven backend add NAME --type \
                     encrypted`."
                );
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(name, kind, location, marks)| {
                        vec![
                            name.clone(),
                            kind.name().to_owned(),
                            kind.protection().to_string(),
                            location.clone(),
                            marks.clone(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "TYPE", "PROTECTION", "LOCATION", ""], &table)?;
            }
            Ok(OK)
        }
        BackendCommand::Add {
            name,
            kind,
            path,
            default,
        } => {
            let path = match path {
                Some(p) if p.is_relative() => Some(
                    std::path::absolute(&p).with_context(|| format!("resolve {}", p.display()))?,
                ),
                other => other,
            };
            let backend = m.add_backend(&name, BackendConfig::new(kind, path))?;
            if default {
                m.set_default_backend(Some(&name))?;
            }
            outln!("added backend '{name}' ({kind}) at {}", backend.location())?;
            match kind.protection() {
                Protection::SoftwarePlain => warn_plain(&[name]),
                _ if kind.is_ephemeral() => errln!(
                    "note: a memory backend is ephemeral: its keys vanish when each keyhaven \
                     command exits."
                ),
                _ => {}
            }
            Ok(OK)
        }
        BackendCommand::Remove { name } => {
            let path = m.backend_path(&name);
            m.remove_backend(&name)?;
            outln!("removed backend '{name}' from keyhaven.toml")?;
            if let Some(p) = path {
                errln!(
                    "Its store at {} was left in place; delete it yourself if you mean to.",
                    p.display()
                );
            }
            Ok(OK)
        }
        BackendCommand::Fallback { name, allow, off } => {
            m.update_config(|c| {
                if off {
                    c.fallback = keyhaven::FallbackConfig::default();
                } else {
                    c.fallback = keyhaven::FallbackConfig::new(allow, name.clone());
                }
                Ok(())
            })?;
            let f = m.config().fallback;
            match (&f.backend, f.allow) {
                (Some(b), true) => outln!(
                    "fallback: new keys for an unavailable backend go to '{b}', with a warning"
                )?,
                (Some(b), false) => {
                    outln!("fallback: '{b}' is named but not allowed (pass --allow to allow it)")?
                }
                (None, _) => outln!("fallback: off")?,
            }
            Ok(OK)
        }
    }
}

pub(crate) fn doctor(ctx: &Ctx, json: bool) -> Result<u8> {
    let m = ctx.manager()?;
    let report = m.doctor();
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        outln!(
            "home:        {} ({})",
            report.home.display(),
            if report.config_exists {
                "keyhaven.toml present"
            } else {
                "no keyhaven.toml yet: run `keyhaven quickstart`"
            }
        )?;
        for b in &report.backends {
            let mut marks = Vec::new();
            if b.default {
                marks.push("default");
            }
            if b.fallback {
                marks.push("fallback");
            }
            if b.ephemeral {
                marks.push("ephemeral");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            };
            let state = if !b.reachable {
                format!("UNREACHABLE: {}", b.error.as_deref().unwrap_or("unknown"))
            } else if !b.initialized {
                "reachable (store not created yet)".to_owned()
            } else {
                let n = b.keys.unwrap_or(0);
                format!("reachable, {n} key{}", if n == 1 { "" } else { "s" })
            };
            let weak = if b.protection == Protection::SoftwarePlain {
                " (WEAKEST: unencrypted files)"
            } else {
                ""
            };
            outln!(
                "backend {} ({}) at {}: {state}; protection {}{weak}{marks}",
                b.name,
                b.kind,
                b.location,
                b.protection
            )?;
            for d in &b.damaged {
                outln!("  damaged: {d}")?;
            }
        }
        if report.backends.is_empty() {
            outln!("backends:    none configured")?;
        }
        match (&report.default_key, &report.default_key_error) {
            (None, _) => outln!("default key: none")?,
            (Some(k), None) => outln!("default key: {k} (ok)")?,
            (Some(k), Some(e)) => outln!("default key: {k} (PROBLEM: {e})")?,
        }
        match (&report.fallback, report.fallback_allowed) {
            (Some(f), true) => outln!(
                "fallback:    allowed: new keys for an unavailable backend go to '{f}', with a warning"
            )?,
            (Some(f), false) => outln!("fallback:    '{f}' named but not allowed")?,
            (None, _) => outln!("fallback:    off")?,
        }
        outln!(
            "result:      {}",
            if report.healthy() {
                "healthy"
            } else {
                "problems found"
            }
        )?;
    }
    print_warnings(&m);
    // Exit with the code of the first problem, so scripts can tell.
    for b in &report.backends {
        if let Some(kind) = b.error_kind {
            return Ok(code_of_kind(kind));
        }
        if !b.damaged.is_empty() {
            return Ok(CORRUPT);
        }
    }
    if report.default_key_error.is_some() {
        return Ok(NOT_FOUND);
    }
    Ok(OK)
}
