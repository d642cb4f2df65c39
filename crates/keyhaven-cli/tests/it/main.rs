//! End-to-end tests of the `keyhaven` binary: each test has its own temporary home and runs the
//! built binary with `KEYHAVEN_PASSPHRASE` set and standard input closed (no terminal). Device
//! tests (`pkcs11.rs`, `tpm.rs` with the `tpm` feature) also have their own SoftHSM2 token or
//! swtpm, from `keyhaven_testkit::devices`; run them with `cargo xtask test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod assertion;
mod backup;
mod bad_input;
mod cmd_cases;
mod commands;
mod every_file;
mod integrity;
mod json_shapes;
#[cfg(feature = "keyring")]
mod keyring;
mod lifecycle;
mod openssl;
#[cfg(feature = "pkcs11")]
mod pkcs11;
mod readme;
mod rotation;
mod server;
#[cfg(feature = "tpm")]
mod tpm;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub(crate) const PASSPHRASE: &str = "correct horse battery staple";

/// A temporary keyhaven home and a way to run the binary against it.
pub(crate) struct Home {
    dir: tempfile::TempDir,
    /// Extra environment of every command (a device's configuration, a PIN variable).
    env: Vec<(OsString, OsString)>,
    /// Seconds the home's clock is ahead of the wall clock (`KEYHAVEN_TEST_CLOCK_OFFSET`: the
    /// binary under test is built with keyhaven-core's `test-clock`).
    clock: std::sync::atomic::AtomicI64,
}

impl Home {
    pub(crate) fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
            clock: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Sets an environment variable for every command run against this home.
    #[cfg_attr(not(any(feature = "pkcs11", feature = "tpm")), allow(dead_code))]
    pub(crate) fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Moves this home's clock `secs` seconds ahead for every later command (no sleeping).
    pub(crate) fn advance(&self, secs: i64) {
        self.clock
            .fetch_add(secs, std::sync::atomic::Ordering::Relaxed);
    }

    /// A fresh home with an encrypted backend `default` (via quickstart's little brother).
    pub(crate) fn with_encrypted() -> Self {
        let h = Home::new();
        h.ok(&["backend", "add", "encrypted", "default"]);
        h
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A scratch directory beside the home, for inputs and outputs.
    pub(crate) fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub(crate) fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
        c.arg("--home")
            .arg(self.path())
            .args(args)
            .env("KEYHAVEN_PASSPHRASE", PASSPHRASE)
            .env_remove("KEYHAVEN_HOME")
            .env(
                "KEYHAVEN_TEST_CLOCK_OFFSET",
                self.clock
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs, asserts success, returns standard output.
    pub(crate) fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json` semantics: parses standard output.
    pub(crate) fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Runs, expecting failure with `code`; checks the one-line error and returns it.
    pub(crate) fn fails<S: AsRef<OsStr>>(&self, args: &[S], code: i32) -> String {
        let out = self.run(args);
        expect_code(&out, code, args)
    }

    /// Generates a key, returning its id.
    pub(crate) fn generate(&self, algorithm: &str, label: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "key",
            "generate",
            "--algorithm",
            algorithm,
            "--label",
            label,
        ];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_owned()
    }

    /// Every file and directory under the home: path -> (mode, SHA-256 of the contents).
    /// Every file and directory of the home with its mode and content hash, except the audit
    /// log's files and the usage counters: the log grows with every operation, refused ones
    /// included, and a counter is reserved before a signature is attempted, by design.
    pub(crate) fn snapshot(&self) -> BTreeMap<PathBuf, (u32, String)> {
        let mut out = BTreeMap::new();
        walk(&self.path(), &self.path(), &mut out);
        // The audit log and the usage counters record attempts too (a failed signature was
        // metered, then given back); the integrity manifest records the counters.
        out.retain(|p, _| {
            (!p.starts_with("audit") || p == Path::new("audit"))
                && (!p.starts_with("rotation/usage") || p == Path::new("rotation/usage"))
                && p != Path::new("integrity.manifest")
        });
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            meta.permissions().mode()
        };
        let rel = path.strip_prefix(root).unwrap().to_owned();
        if meta.is_dir() {
            out.insert(rel, (mode, "dir".into()));
            walk(root, &path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.insert(rel, (mode, hex::encode(Sha256::digest(&bytes))));
        }
    }
}

fn show_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn assert_success<S: AsRef<OsStr>>(out: &Output, args: &[S]) {
    assert!(
        out.status.success(),
        "keyhaven {} failed ({:?}):\nstdout: {}\nstderr: {}",
        show_args(args),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks the exit code and that the error is one line `error: <what>. <what to do>`.
pub(crate) fn expect_code<S: AsRef<OsStr>>(out: &Output, code: i32, args: &[S]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "keyhaven {}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
        show_args(args),
        String::from_utf8_lossy(&out.stdout),
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    if code >= 3 {
        assert_eq!(errors.len(), 1, "one error line expected, got: {stderr}");
        assert!(errors[0].ends_with('.'), "{}", errors[0]);
    }
    stderr
}

/// Writes a file only its owner may read (passphrase files must be private).
pub(crate) fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A file's permission bits.
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs `openssl`, panicking with instructions if it is not installed.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}): install openssl or run `cargo xtask test`, which \
                 installs what the tests need"
            )
        })
}

pub(crate) fn openssl_ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether the tests run as root (some need to give files to another user).
pub(crate) fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
