//! Running child processes: cargo through `$CARGO`, with each command echoed before it runs.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The cargo to call: `$CARGO` (set by cargo for `cargo run`, so `cargo xtask` gets the very cargo
/// that launched it), falling back to `cargo` on `PATH`.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// A `cargo` command whose working directory is `dir`.
pub(crate) fn cargo(dir: &Path) -> Command {
    let mut command = Command::new(cargo_program());
    command.current_dir(dir);
    command
}

/// A shell-like one-line rendering of `command` for the log: its environment overrides, the
/// program's file name (so `$CARGO`'s long toolchain path prints as `cargo`) and its arguments.
pub(crate) fn describe(command: &Command) -> String {
    let mut words: Vec<String> = command
        .get_envs()
        .filter_map(|(key, value)| {
            value.map(|value| format!("{}={}", key.to_string_lossy(), value.to_string_lossy()))
        })
        .collect();
    let program = Path::new(command.get_program());
    words.push(
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned(),
    );
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

/// Echoes `command`, runs it with inherited stdio, and fails unless it exits successfully.
///
/// # Errors
///
/// Fails when the program cannot be started or exits unsuccessfully.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    let line = describe(command);
    println!("xtask: $ {line}");
    let status = command
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// [`run`] as a named step: prints the step's name first and names it in the error.
///
/// # Errors
///
/// Fails, naming `step`, when the command fails.
pub(crate) fn run_step(step: &str, command: &mut Command) -> Result<()> {
    println!("xtask: --- {step} ---");
    run(command).with_context(|| format!("step `{step}` failed"))
}

/// Runs `command` with its output discarded and says whether it started and exited successfully.
pub(crate) fn succeeds_quietly(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `command` and returns its standard output as text (standard error is passed through).
///
/// # Errors
///
/// Fails when the program cannot be started, exits unsuccessfully, or prints non-UTF-8.
pub(crate) fn output(command: &mut Command) -> Result<String> {
    let line = describe(command);
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_env_program_name_and_args() {
        let mut command = Command::new("/opt/toolchain/bin/cargo");
        command
            .args(["test", "--workspace"])
            .env("RUST_BACKTRACE", "1");
        assert_eq!(
            describe(&command),
            "RUST_BACKTRACE=1 cargo test --workspace"
        );
    }

    #[test]
    fn run_reports_failure() {
        assert!(run(&mut Command::new("false")).is_err());
        assert!(run(&mut Command::new("true")).is_ok());
        assert!(!succeeds_quietly(&mut Command::new("/nonexistent/program")));
    }
}
