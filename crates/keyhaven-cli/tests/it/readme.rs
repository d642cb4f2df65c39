//! The README's shell walkthrough ("Quick start" and "The life of a key") runs as written,
//! against the `keyhaven` binary under test and the system's `openssl`, so the documentation
//! cannot drift from the CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The first ```sh block after the heading `heading`.
fn sh_block<'a>(readme: &'a str, heading: &str) -> &'a str {
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("the README has no heading {heading:?}"));
    let rest = &readme[at..];
    let open = rest.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let close = rest[open..].find("```").expect("the block's end");
    &rest[open..open + close]
}

fn readme() -> (PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("README.md")).unwrap();
    (root, text)
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let (root, text) = readme();
    let quick = sh_block(&text, "## Quick start");
    let life = sh_block(&text, "## The life of a key");
    let home = crate::Home::new();
    let dir = home.scratch();
    // The walkthrough signs the workspace's Cargo.toml.
    std::fs::copy(root.join("Cargo.toml"), dir.join("Cargo.toml")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_keyhaven")).parent().unwrap();
    let script = format!(
        "set -euo pipefail\n\
         # `alias keyhaven=...` is for a reader's shell; here `keyhaven` is the binary under test.\n\
         {quick}\n{life}\n"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("KEYHAVEN_HOME")
        .env_remove("KEYHAVEN_PASSPHRASE")
        .env("TSS2_LOG", "all+NONE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's walkthrough failed ({:?}):\n--- stdout (end)\n{}\n--- stderr\n{stderr}",
        out.status,
        stdout
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What the comments promise.
    for promised in [
        "Verified Successfully",
        "1 link(s) from",
        "audit log intact",
        "intact: every state file matches",
    ] {
        assert!(
            stdout.contains(promised) || stderr.contains(promised),
            "{promised}: {stdout}"
        );
    }
    assert!(dir.join("restored/integrity.manifest").exists());
}
