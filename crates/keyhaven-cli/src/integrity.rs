//! `keyhaven integrity`: the home's authenticated state (see `keyhaven::integrity`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use keyhaven::IntegrityStatus;
use serde_json::json;

use crate::ctx::Ctx;
use crate::exit::{CORRUPT, OK};
use crate::output::{errln, outln, print_json};

/// `keyhaven integrity ...`
#[derive(Debug, Subcommand)]
pub(crate) enum IntegrityCommand {
    /// Whether the home's state is sealed, by which backend, and how many files it covers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every state file against the home's integrity manifest; exit 7 naming each file
    /// changed, removed or planted outside keyhaven.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seal a home that has no manifest (made by an earlier keyhaven, or whose manifest was
    /// lost), accepting its state files as they are now. Check them first.
    Seal,
    /// Vouch for a state file you changed yourself (a hand-edited keyhaven.toml): record it as
    /// it is now. Needs the passphrase.
    Accept {
        /// The file, relative to the home (e.g. keyhaven.toml) or absolute.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn status_json(s: &IntegrityStatus) -> serde_json::Value {
    match s {
        IntegrityStatus::Sealed {
            anchor,
            generation,
            files,
        } => json!({"sealed": true, "anchor": anchor, "generation": generation, "files": files}),
        IntegrityStatus::NotYetSealed { anchor } => {
            json!({"sealed": false, "anchor": anchor, "reason": "the anchor store does not exist yet"})
        }
        IntegrityStatus::NoAnchor => json!({
            "sealed": false,
            "reason": keyhaven::integrity::NO_ANCHOR
        }),
        _ => json!({"sealed": false}),
    }
}

fn print_status(s: &IntegrityStatus) -> Result<()> {
    match s {
        IntegrityStatus::Sealed {
            anchor,
            generation,
            files,
        } => outln!(
            "sealed by backend '{anchor}': {files} state file(s) authenticated, {generation} \
             change(s) recorded"
        ),
        IntegrityStatus::NotYetSealed { anchor } => {
            outln!("not sealed yet: the home is sealed when backend '{anchor}' creates its store")
        }
        IntegrityStatus::NoAnchor => outln!(
            "NOT SEALED: {}, so its state files are protected by file permissions only (add \
             one: keyhaven backend add vault --type encrypted)",
            keyhaven::integrity::NO_ANCHOR
        ),
        _ => outln!("unknown"),
    }
}

/// Runs `keyhaven integrity ...`.
pub(crate) fn run(ctx: &Ctx, cmd: IntegrityCommand) -> Result<u8> {
    let m = ctx.manager()?;
    match cmd {
        IntegrityCommand::Status { json } => {
            let s = m.integrity_status()?;
            if json {
                print_json(&status_json(&s))?;
            } else {
                print_status(&s)?;
            }
            Ok(OK)
        }
        IntegrityCommand::Verify { json } => {
            let problems = m.verify_integrity()?;
            if json {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                print_json(&json!({"intact": problems.is_empty(), "problems": list}))?;
            } else if problems.is_empty() {
                outln!("intact: every state file matches the home's integrity manifest")?;
            } else {
                for p in &problems {
                    errln!("{p}");
                }
                errln!(
                    "{} state file(s) changed outside keyhaven: restore them from a backup",
                    problems.len()
                );
            }
            Ok(if problems.is_empty() { OK } else { CORRUPT })
        }
        IntegrityCommand::Seal => {
            let s = m.seal_home()?;
            print_status(&s)?;
            Ok(OK)
        }
        IntegrityCommand::Accept { file } => {
            m.accept_state_file(&file)?;
            outln!("recorded {} as it is now", file.display())?;
            Ok(OK)
        }
    }
}
