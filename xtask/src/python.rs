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
    run(pip_install(&python).arg("-r").arg(&requirements))?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(python)
}

/// Builds the Python binding's wheel with maturin (from the virtualenv; the dev profile, or
/// `release` for benchmarks) into `target/wheels` and installs it into the virtualenv in place
/// of any earlier one.
///
/// # Errors
/// maturin fails to build, or pip to install the wheel.
pub(crate) fn install_binding(root: &Path, python: &Path, release: bool) -> Result<()> {
    let bin = python
        .parent()
        .context("the virtualenv's interpreter has no directory")?;
    let out = root.join("target").join("wheels");
    if out.exists() {
        for entry in std::fs::read_dir(&out).with_context(|| format!("read {}", out.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "whl") {
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
            }
        }
    }
    let mut build = Command::new(bin.join("maturin"));
    build
        .args(["build", "--manifest-path"])
        .arg(root.join("bindings/python/Cargo.toml"))
        .arg("--interpreter")
        .arg(python)
        .arg("--out")
        .arg(&out);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let wheel = std::fs::read_dir(&out)
        .with_context(|| format!("read {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("maturin left no wheel in {}", out.display()))?;
    run(pip_install(python)
        .args(["--no-deps", "--force-reinstall"])
        .arg(&wheel))
}

/// `python -m pip install --quiet --disable-pip-version-check`, to add what to install to.
fn pip_install(python: &Path) -> Command {
    let mut c = Command::new(python);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    c
}
