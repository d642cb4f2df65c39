//! System tools the test harness needs, and installing the missing ones from Debian's packages.
//!
//! Only Debian packages are ever installed, and only when xtask runs as root; otherwise xtask stops
//! and says which packages to install.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{output, run};

/// A program the tests need on `PATH`, the Debian package that ships it, and why it is needed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SystemTool {
    /// The executable looked up on `PATH`.
    pub(crate) binary: &'static str,
    /// The Debian package that provides [`Self::binary`].
    pub(crate) package: &'static str,
    /// What needs it, for the messages ("needed by ...").
    pub(crate) why: &'static str,
}

/// The tools `cargo xtask test` makes sure of before running the tests.
pub(crate) const TEST_TOOLS: &[SystemTool] = &[
    SystemTool {
        binary: "openssl",
        package: "openssl",
        why: "interop tests",
    },
    SOFTHSM,
    SystemTool {
        binary: "pkcs11-tool",
        package: "opensc",
        why: "PKCS#11 interop tests",
    },
    SystemTool {
        binary: "curl",
        package: "curl",
        why: "the agent's socket spoken to by a client nobody here wrote",
    },
    // keyhaven-hsm-tpm: one swtpm per test, tpm2-tools for interop, pkg-config to build
    SWTPM,
    SystemTool {
        binary: "swtpm_setup",
        package: "swtpm-tools",
        why: "TPM tests",
    },
    TPM2_TOOLS,
    PKG_CONFIG,
    POSTGRES,
    // keyhaven-store-keyring: a private D-Bus session with GNOME Keyring per test, secret-tool
    // and keyctl to see what keyhaven wrote
    SystemTool {
        binary: "dbus-daemon",
        package: "dbus-daemon",
        why: "the keyring tests' private D-Bus sessions",
    },
    SystemTool {
        binary: "gnome-keyring-daemon",
        package: "gnome-keyring",
        why: "the keyring tests' Secret Service",
    },
    SystemTool {
        binary: "secret-tool",
        package: "libsecret-tools",
        why: "keyring interop tests",
    },
    SystemTool {
        binary: "dbus-send",
        package: "dbus-bin",
        why: "the keyring tests lock a collection",
    },
    SystemTool {
        binary: "keyctl",
        package: "keyutils",
        why: "kernel keyring interop tests",
    },
    // Device backends add their tools here as they land.
];

/// What the browser SDK's tests need: Node and npm (the SDK's build and test runner), and
/// Debian's Chromium, driven headless over the DevTools protocol (nothing downloads a browser
/// of its own).
pub(crate) const JS_TOOLS: &[SystemTool] = &[
    SystemTool {
        binary: "node",
        package: "nodejs",
        why: "the browser SDK's build and tests",
    },
    SystemTool {
        binary: "npm",
        package: "npm",
        why: "the browser SDK's packages (from its lockfile)",
    },
    SystemTool {
        binary: "chromium",
        package: "chromium",
        why: "the browser SDK's tests in a real browser",
    },
];

/// PostgreSQL's server: the server's storage tests start a throwaway cluster (`initdb`,
/// `postgres`), which Debian keeps in `/usr/lib/postgresql/VERSION/bin`, off `PATH`.
pub(crate) const POSTGRES: SystemTool = SystemTool {
    binary: "/usr/lib/postgresql/*/bin/initdb",
    package: "postgresql",
    why: "the key server's PostgreSQL tests and benchmarks",
};

/// swtpm: the TPM 2.0 simulator each TPM test and the TPM benchmark start.
pub(crate) const SWTPM: SystemTool = SystemTool {
    binary: "swtpm",
    package: "swtpm",
    why: "TPM tests and benchmarks",
};

/// tpm2-tools: `tpm2_readpublic`, `tpm2_sign`, ... for TPM interop tests and the benchmark.
pub(crate) const TPM2_TOOLS: SystemTool = SystemTool {
    binary: "tpm2_readpublic",
    package: "tpm2-tools",
    why: "TPM interop tests and benchmarks",
};

/// pkg-config: how tss-esapi's build finds libtss2 (see [`TPM_LIBRARIES`]).
pub(crate) const PKG_CONFIG: SystemTool = SystemTool {
    binary: "pkg-config",
    package: "pkg-config",
    why: "building keyhaven-hsm-tpm",
};

/// A C library a crate links at build time: its pkg-config name and the Debian package with
/// its headers and `.pc` file. There is no binary to look for, so pkg-config finds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SystemLibrary {
    /// The pkg-config module, e.g. `tss2-esys`.
    pub(crate) pkg_config: &'static str,
    /// The Debian package that provides it.
    pub(crate) package: &'static str,
    /// What needs it.
    pub(crate) why: &'static str,
}

/// The libraries `cargo xtask test` and `bench` make sure of (after [`PKG_CONFIG`]).
pub(crate) const TPM_LIBRARIES: &[SystemLibrary] = &[SystemLibrary {
    pkg_config: "tss2-esys",
    package: "libtss2-dev",
    why: "building keyhaven-hsm-tpm (tss-esapi links tpm2-tss)",
}];

/// SoftHSM2: the PKCS#11 token the tests and benchmarks use (`libsofthsm2.so`, and
/// `softhsm2-util` to make tokens).
pub(crate) const SOFTHSM: SystemTool = SystemTool {
    binary: "softhsm2-util",
    package: "softhsm2",
    why: "PKCS#11 tests and benchmarks",
};

/// The tools `cargo xtask bench` makes sure of.
pub(crate) const BENCH_TOOLS: &[SystemTool] = &[SOFTHSM, SWTPM, TPM2_TOOLS, PKG_CONFIG];

/// The tools `cargo xtask fuzz` makes sure of: libfuzzer-sys compiles libFuzzer, which is C++.
pub(crate) const FUZZ_TOOLS: &[SystemTool] = &[SystemTool {
    binary: "c++",
    package: "g++",
    why: "cargo xtask fuzz: libfuzzer-sys builds libFuzzer",
}];

/// Makes sure every tool in `tools` is on `PATH`. Missing ones are installed with
/// `apt-get update` (once) and `apt-get install -y --no-install-recommends` when running as root.
///
/// # Errors
///
/// Fails when a tool is missing and we are not root (naming the packages to install), or when the
/// installation fails or does not provide the tool.
pub(crate) fn ensure_tools(tools: &[SystemTool]) -> Result<()> {
    let missing = missing_tools(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let packages = packages_of(&missing);
    let reasons = missing
        .iter()
        .map(|tool| format!("{} (needed by {})", tool.package, tool.why))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ");
    if !is_root() {
        let details = missing
            .iter()
            .map(|tool| {
                format!(
                    "{} (Debian package {}, needed by {})",
                    tool.binary, tool.package, tool.why
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        bail!(
            "missing system tools: {details}. Install them as root with \
             `apt-get install -y --no-install-recommends {}`, or run this as root",
            packages.join(" ")
        );
    }
    println!("xtask: installing {reasons}...");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still_missing = missing_tools(tools);
    if !still_missing.is_empty() {
        let binaries = still_missing
            .iter()
            .map(|tool| tool.binary)
            .collect::<Vec<_>>();
        bail!(
            "installed {} but still cannot find {binaries:?}",
            packages.join(" ")
        );
    }
    Ok(())
}

/// Makes sure every library in `libs` is known to pkg-config, installing the missing packages
/// with `apt-get` when running as root (like [`ensure_tools`]). Needs pkg-config itself.
///
/// # Errors
///
/// Fails when a library is missing and we are not root (naming the packages), or when the
/// installation fails or does not provide it.
pub(crate) fn ensure_libraries(libs: &[SystemLibrary]) -> Result<()> {
    let missing = missing_libraries(libs);
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|lib| lib.package).collect();
    packages.dedup();
    let details = missing
        .iter()
        .map(|lib| {
            format!(
                "{} (pkg-config {}, needed for {})",
                lib.package, lib.pkg_config, lib.why
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if !is_root() {
        bail!(
            "missing system libraries: {details}. Install them as root with \
             `apt-get install -y --no-install-recommends {}`, or run this as root",
            packages.join(" ")
        );
    }
    println!("xtask: installing {details}...");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still_missing = missing_libraries(libs);
    if !still_missing.is_empty() {
        let names = still_missing
            .iter()
            .map(|lib| lib.pkg_config)
            .collect::<Vec<_>>();
        bail!(
            "installed {} but pkg-config still cannot find {names:?}",
            packages.join(" ")
        );
    }
    Ok(())
}

/// The libraries of `libs` that `pkg-config --exists` does not find.
fn missing_libraries(libs: &[SystemLibrary]) -> Vec<SystemLibrary> {
    libs.iter()
        .copied()
        .filter(|lib| {
            !crate::cmd::succeeds_quietly(
                Command::new("pkg-config").args(["--exists", lib.pkg_config]),
            )
        })
        .collect()
}

/// The tools of `tools` not found on `PATH`.
fn missing_tools(tools: &[SystemTool]) -> Vec<SystemTool> {
    tools
        .iter()
        .copied()
        .filter(|tool| !installed(tool.binary))
        .collect()
}

/// Whether `binary` is installed: on `PATH`, or, for a path with one `*` directory
/// (`/usr/lib/postgresql/*/bin/initdb`), in any directory the `*` stands for.
fn installed(binary: &str) -> bool {
    let Some((before, after)) = binary.split_once("/*/") else {
        return on_path(binary);
    };
    std::fs::read_dir(before).is_ok_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(e.path().join(after))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The distinct Debian packages that provide `tools`, in table order.
fn packages_of(tools: &[SystemTool]) -> Vec<&'static str> {
    let mut seen = BTreeSet::new();
    tools
        .iter()
        .map(|tool| tool.package)
        .filter(|package| seen.insert(*package))
        .collect()
}

/// Whether an executable file called `binary` is in one of `PATH`'s directories.
fn on_path(binary: &str) -> bool {
    which(binary).is_some()
}

/// The first executable file called `binary` in `PATH`'s directories.
pub(crate) fn which(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

/// Whether `path` is a regular file with an execute bit set (any file, off Unix).
fn is_executable(path: &Path) -> bool {
    let Ok(metadata) = path.metadata() else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        metadata.is_file()
    }
}

/// Whether we run as root, by `id -u` printing `0`.
fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_but_not_a_made_up_binary() {
        assert!(on_path("sh"));
        assert!(!on_path("keyhaven-no-such-binary-xyz"));
        assert!(installed("/usr/*/sh") || !std::path::Path::new("/usr/bin/sh").exists());
        assert!(!installed("/usr/*/keyhaven-no-such-binary-xyz"));
    }

    #[test]
    fn packages_are_deduplicated_in_order() {
        let tools = [
            SystemTool {
                binary: "swtpm",
                package: "swtpm",
                why: "a",
            },
            SystemTool {
                binary: "swtpm_setup",
                package: "swtpm-tools",
                why: "b",
            },
            SystemTool {
                binary: "swtpm_ioctl",
                package: "swtpm-tools",
                why: "c",
            },
        ];
        assert_eq!(packages_of(&tools), ["swtpm", "swtpm-tools"]);
    }

    #[test]
    fn libraries_are_probed_with_pkg_config() {
        let made_up = SystemLibrary {
            pkg_config: "keyhaven-no-such-library-xyz",
            package: "none",
            why: "test",
        };
        assert_eq!(missing_libraries(&[made_up]).len(), 1);
        assert!(ensure_libraries(&[]).is_ok());
    }

    #[test]
    fn nothing_missing_means_nothing_to_do() {
        let tools = [SystemTool {
            binary: "sh",
            package: "dash",
            why: "test",
        }];
        assert!(missing_tools(&tools).is_empty());
        assert!(ensure_tools(&tools).is_ok());
    }
}
