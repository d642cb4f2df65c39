//! The PKCS#11 test device: SoftHSM2's module and a scratch SoftHSM configuration per run.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when its module is initialized, once per process. `cargo xtask
//! test` writes a configuration whose token directory is a fresh temporary directory, exports it
//! (with `KEYHAVEN_PKCS11_MODULE`) to every test process, and removes the directory when the run
//! ends, so tests never touch the system's tokens (`/var/lib/softhsm/tokens`). Each test creates
//! its own token in that directory and finds it by label (see
//! `crates/keyhaven-hsm-pkcs11/tests/it/token.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where Debian and Ubuntu install `libsofthsm2.so` (package `softhsm2`).
const MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// The PKCS#11 module the tests use: `$KEYHAVEN_PKCS11_MODULE` if set, else SoftHSM2's.
///
/// # Errors
///
/// Fails when the variable names a missing file, or SoftHSM2's module is not installed.
pub(crate) fn module() -> Result<PathBuf> {
    if let Some(module) = std::env::var_os("KEYHAVEN_PKCS11_MODULE") {
        let module = PathBuf::from(module);
        if !module.is_file() {
            bail!(
                "KEYHAVEN_PKCS11_MODULE={} does not exist: unset it to use SoftHSM2's module",
                module.display()
            );
        }
        return Ok(module);
    }
    MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "SoftHSM2's PKCS#11 module is not at any of {MODULE_PATHS:?}: install it with \
                 `apt-get install softhsm2` or set KEYHAVEN_PKCS11_MODULE"
            )
        })
}

/// A scratch SoftHSM configuration and token directory, removed on drop.
pub(crate) struct Scratch {
    dir: PathBuf,
    conf: PathBuf,
}

impl Scratch {
    /// Creates `<tmp>/keyhaven-softhsm-<pid>/{softhsm2.conf,tokens/}`.
    ///
    /// # Errors
    ///
    /// Fails when the directory or file cannot be written.
    pub(crate) fn create() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("keyhaven-softhsm-{}", std::process::id()));
        // A leftover from an earlier run with the same pid holds nothing worth keeping.
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens)
            .with_context(|| format!("creating {}", tokens.display()))?;
        let conf = dir.join("softhsm2.conf");
        std::fs::write(&conf, conf_text(&tokens))
            .with_context(|| format!("writing {}", conf.display()))?;
        Ok(Scratch { dir, conf })
    }

    /// Sets `KEYHAVEN_PKCS11_MODULE` and `SOFTHSM2_CONF` on `command`.
    pub(crate) fn apply(&self, command: &mut Command, module: &Path) {
        command
            .env("KEYHAVEN_PKCS11_MODULE", module)
            .env("SOFTHSM2_CONF", &self.conf);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The text of a SoftHSM configuration whose tokens live in `tokens`.
fn conf_text(tokens: &Path) -> String {
    format!(
        "# written by cargo xtask test for one run\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n",
        tokens.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_config_points_at_its_own_token_directory_and_is_removed() {
        let scratch = Scratch::create().unwrap();
        let text = std::fs::read_to_string(&scratch.conf).unwrap();
        let tokens = scratch.dir.join("tokens");
        assert!(text.contains(&format!("directories.tokendir = {}\n", tokens.display())));
        assert!(text.contains("objectstore.backend = file\n"));
        assert!(tokens.is_dir());
        let dir = scratch.dir.clone();
        drop(scratch);
        assert!(!dir.exists());
    }
}
