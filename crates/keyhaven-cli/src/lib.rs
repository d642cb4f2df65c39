#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod agent;
mod args;
mod backend;
mod backup;
mod client;
mod ctx;
pub mod exit;
mod integrity;
mod json;
mod key;
mod lifecycle;
mod output;
mod policy;
mod quickstart;
mod rotation;
mod serve;
mod sign;
mod token;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::ctx::Ctx;

/// Runs the `keyhaven` command line with the process's arguments and returns its exit code
/// (see [`exit`]). Errors are printed on standard error as one line:
/// `error: <what>. <what to do>`. Standard output closed by its reader ends the command
/// quietly, successfully.
pub fn main() -> ExitCode {
    // The older `backend add NAME --type TYPE` is rewritten only when the command line as
    // given does not parse, so no other command's arguments are ever touched.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(first) => match args::modernize(argv) {
            (moved, true) => match Cli::try_parse_from(moved) {
                Ok(cli) => {
                    output::errln!(
                        "note: `backend add NAME --type TYPE` is deprecated; write `backend add \
                         TYPE NAME` (each type then takes only its own options)"
                    );
                    cli
                }
                // Not the older spelling after all: the error of what was typed.
                Err(_) => first.exit(),
            },
            (_, false) => first.exit(),
        },
    };
    ctx::allow_weak_passphrases(cli.allow_weak_passphrase);
    let ctx = Ctx::new(cli.home, cli.passphrase_file).with_request_id(cli.request_id);
    let outcome = match cli.command {
        Command::Key(cmd) => key::run(&ctx, cmd),
        Command::Sign(args) => sign::sign(&ctx, args),
        Command::Verify(args) => sign::verify(&ctx, args),
        Command::Backend(cmd) => backend::run(&ctx, cmd),
        Command::Backup(cmd) => backup::run(&ctx, cmd),
        Command::Doctor { json } => backend::doctor(&ctx, json),
        Command::Quickstart => quickstart::run(&ctx),
        Command::Rotate {
            due: _,
            dry_run,
            json,
        } => rotation::rotate_due(&ctx, dry_run, json),
        Command::Policy(cmd) => rotation::policy(&ctx, cmd),
        Command::VerifyContinuity {
            proof,
            old_public_key,
            key,
        } => rotation::verify_continuity(&ctx, proof, old_public_key, key),
        Command::Prekeys(cmd) => rotation::prekeys(&ctx, cmd),
        Command::Audit(cmd) => lifecycle::audit(&ctx, cmd),
        Command::Compromise(cmd) => lifecycle::compromise(&ctx, cmd),
        Command::Revocations(cmd) => lifecycle::revocations(&ctx, cmd),
        Command::Integrity(cmd) => integrity::run(&ctx, cmd),
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Client(args) => client::run(&ctx, args),
        Command::Agent(args) => agent::run(&ctx, args),
        Command::Token(args) => token::run(&ctx, args),
    };
    // Output is flushed before a success is reported, so a write error is never lost; a
    // failure code (`verify`: invalid) stands whatever happens to the output.
    let outcome = outcome.and_then(|code| {
        let flushed = output::flush_stdout();
        if code == exit::OK {
            flushed.map(|()| code)
        } else {
            Ok(code)
        }
    });
    ExitCode::from(match outcome {
        Ok(code) => code,
        // The reader of standard output stopped reading (`keyhaven key list | head -1`).
        Err(e) if output::is_stdout_closed(&e) => exit::OK,
        Err(e) => exit::report(&e),
    })
}
