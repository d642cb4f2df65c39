//! The Python environment of the interop tests: a virtualenv under `target/interop-venv` with
//! the pinned packages of `xtask/interop-requirements.txt` (from PyPI), made once and remade
//! when the requirements change. Tests find its interpreter in `KEYHAVEN_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::run;
use crate::sys::{self, SystemTool};

/// Python 3 with its venv module (Debian splits it out).
const PYTHON: SystemTool = SystemTool {
    binary: "python3",
    package: "python3-venv",
    why: "interop tests with independent Python libraries (JOSE)",
};

/// Makes sure the virtualenv exists with exactly the pinned requirements; returns its
/// interpreter.
///
/// # Errors
/// Python cannot be installed, or pip cannot install the requirements.
pub(crate) fn interop_python(root: &Path) -> Result<PathBuf> {
    sys::ensure_tools(&[PYTHON])?;
    let requirements = root.join("xtask").join("interop-requirements.txt");
    let wanted =
        std::fs::read(&requirements).with_context(|| format!("read {}", requirements.display()))?;
    let venv = root.join("target").join("interop-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("requirements.installed");
    if python.exists() && std::fs::read(&stamp).is_ok_and(|have| have == wanted) {
        return Ok(python);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("-r")
        .arg(&requirements))?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(python)
}
