//! `keyhaven integrity`: the home's authenticated state (see `keyhaven::integrity`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use keyhaven::IntegrityStatus;

use crate::ctx::Ctx;
use crate::exit::{CORRUPT, OK};
use crate::json::{IntegrityStatusJson, IntegrityVerifyJson};
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
    /// Bind the home to a monotonic counter in a TPM backend's NV memory, so that a copy of
    /// the whole home from an earlier moment (manifest and all) is refused. Every change of
    /// the home's state then also reads and increments the counter, and the home needs its
    /// TPM. Needs the passphrase.
    BindCounter {
        /// The TPM backend that keeps the counter.
        #[arg(long, value_name = "NAME")]
        backend: String,
    },
    /// Unbind the home from its rollback counter, and remove the counter from the TPM.
    UnbindCounter {
        /// The counter is gone (the TPM was cleared or replaced): unbind without asking it,
        /// accepting the home's present state. Needs the passphrase.
        #[arg(long)]
        force: bool,
    },
    /// Accept a home you copied back from an earlier moment on purpose (restored from a copy
    /// you trust): its present state is recorded against the counter's present value.
    Rebind,
}

fn status_json(s: &IntegrityStatus) -> IntegrityStatusJson {
    match s {
        IntegrityStatus::Sealed {
            anchor,
            counter,
            generation,
            files,
        } => IntegrityStatusJson {
            sealed: true,
            anchor: Some(anchor.clone()),
            rollback_counter: Some(counter.clone()),
            generation: Some(*generation),
            files: Some(*files),
            reason: None,
        },
        IntegrityStatus::NotYetSealed { anchor } => IntegrityStatusJson {
            anchor: Some(anchor.clone()),
            reason: Some("the anchor store does not exist yet"),
            ..IntegrityStatusJson::default()
        },
        IntegrityStatus::NoAnchor => IntegrityStatusJson {
            reason: Some(keyhaven::integrity::NO_ANCHOR),
            ..IntegrityStatusJson::default()
        },
        _ => IntegrityStatusJson::default(),
    }
}

fn print_status(s: &IntegrityStatus) -> Result<()> {
    match s {
        IntegrityStatus::Sealed {
            anchor,
            counter,
            generation,
            files,
        } => {
            outln!(
                "sealed by backend '{anchor}': {files} state file(s) authenticated, \
                 {generation} change(s) recorded"
            )?;
            match counter {
                Some(c) => {
                    outln!("rollback counter: {c} (a copy of the home from before is refused)")
                }
                None => outln!(
                    "rollback counter: none (a copy of the whole home from before is not \
                     detected; see `keyhaven integrity bind-counter`)"
                ),
            }
        }
        IntegrityStatus::NotYetSealed { anchor } => {
            outln!("not sealed yet: the home is sealed when backend '{anchor}' creates its store")
        }
        IntegrityStatus::NoAnchor => outln!(
            "NOT SEALED: {}, so its state files are protected by file permissions only (add \
             one: keyhaven backend add encrypted vault)",
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
                print_json(&IntegrityVerifyJson {
                    intact: problems.is_empty(),
                    problems: list,
                })?;
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
        IntegrityCommand::BindCounter { backend } => {
            let id = m.bind_rollback_counter(&backend)?;
            outln!(
                "bound to the rollback counter {id}: a copy of the home from before is refused"
            )?;
            Ok(OK)
        }
        IntegrityCommand::UnbindCounter { force } => {
            match m.unbind_rollback_counter(force)? {
                Some(id) => outln!("unbound; the counter {id} was removed from the TPM")?,
                None => outln!("the home is not bound to a rollback counter")?,
            }
            Ok(OK)
        }
        IntegrityCommand::Rebind => {
            let id = m.rebind_rollback_counter()?;
            outln!("the home's present state is recorded against the counter {id}")?;
            Ok(OK)
        }
    }
}
