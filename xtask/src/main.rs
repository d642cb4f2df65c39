//! `cargo xtask`: keyhaven's task runner.
//!
//! One binary with hand-parsed subcommands (see [`USAGE`]). It finds the workspace root from its
//! own manifest directory, calls cargo through `$CARGO` (falling back to `cargo`), installs missing
//! Debian packages when it runs as root, and installs the cargo plugins it needs (`cargo-deny`,
//! `cargo-fuzz`) with `cargo install --locked` when they are missing.

#![forbid(unsafe_code)]

mod cmd;
mod layers;
mod python;
mod softhsm;
mod sys;
mod tally;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, run, run_step};

/// The help text printed for `help`, for no subcommand, and for an unknown one.
const USAGE: &str = "\
usage: cargo xtask <SUBCOMMAND> [ARGS]

subcommands:
  test [ARGS]                 install missing system tools (openssl, softhsm2, opensc, swtpm,
                              swtpm-tools, tpm2-tools, pkg-config, libtss2-dev, dbus-daemon,
                              gnome-keyring, libsecret-tools, keyutils) when root,
                              then `cargo test --workspace --features keyhaven/full,
                              keyhaven-cli/full,keyhaven/test-clock --no-fail-fast
                              [ARGS]` (test-clock: the CLI's tests move homes through time
                              with KEYHAVEN_TEST_CLOCK_OFFSET) with
                              KEYHAVEN_INTEROP=1, RUST_BACKTRACE=1, KEYHAVEN_PKCS11_MODULE
                              (SoftHSM2's module) and SOFTHSM2_CONF (a scratch token directory
                              for this run, removed afterwards); without ARGS, then the crypto
                              and software-store suites again with the aws-lc-rs provider
                              (KEYHAVEN_TEST_PROVIDER=aws-lc-rs: the whole suite on it),
                              then the Python binding's pass (test-python) and the browser
                              SDK's (test-js)
  test-python [PYTEST ARGS]   build the Python binding's wheel (maturin, dev profile), install
                              it into target/interop-venv and run pytest over
                              bindings/python/tests against the workspace's `keyhaven` binary
  test-js                     the browser SDK: npm ci (its lockfile), tsc, node --test over
                              clients/js/test (Node-only tests and headless Chromium ones
                              against a live keyhaven serve)
  bench-js                    key generation and signed fetch latency in headless Chromium
  bench-python                the binding's benchmark: a release wheel, then
                              bindings/python/bench/bench_sign.py (per-call overhead of
                              Home.sign over the Rust facade's own loop, same run)
  lint                        cargo fmt --check, cargo clippy -D warnings,
                              cargo deny check licenses bans sources
  check-layers                check that dependencies between workspace crates point down
  bench [ARGS]                install softhsm2, swtpm, tpm2-tools, libtss2-dev when missing
                              (root), then `cargo bench --workspace [ARGS]` with
                              KEYHAVEN_PKCS11_MODULE
  fuzz TARGET [--seconds N] [-- LIBFUZZER_ARGS]
                              run one cargo-fuzz target for N seconds (default 60)
  fuzz --list                 list the cargo-fuzz targets
  ci                          lint, then check-layers, then test (what .ci/run runs)
  help                        print this text
";

/// Default run time of `cargo xtask fuzz`, in seconds.
const DEFAULT_FUZZ_SECONDS: u64 = 60;

/// A command-line mistake: reported with the usage text and exit status 2.
#[derive(Debug)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Entry point: dispatches the subcommand and maps errors to exit statuses (1 for a failed task,
/// 2 for a usage mistake).
fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                eprintln!("xtask: {usage}\n");
                eprint!("{USAGE}");
                ExitCode::from(2)
            } else {
                eprintln!("xtask: error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Parses the command line and runs the chosen subcommand.
///
/// # Errors
///
/// A [`UsageError`] for a bad command line, any other error when the task fails.
fn real_main() -> Result<()> {
    let args = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<Vec<String>, OsString>>()
        .map_err(|arg| UsageError(format!("argument {arg:?} is not valid UTF-8")))?;
    let Some((subcommand, rest)) = args.split_first() else {
        return Err(UsageError("no subcommand given".to_owned()).into());
    };
    let root = workspace_root()?;
    match subcommand.as_str() {
        "test" => test(&root, rest),
        "lint" => no_args("lint", rest).and_then(|()| lint(&root)),
        "check-layers" => no_args("check-layers", rest).and_then(|()| layers::check(&root)),
        "bench" => bench(&root, rest),
        "test-python" => test_python(&root, rest),
        "test-js" => no_args("test-js", rest).and_then(|()| test_js(&root)),
        "bench-js" => no_args("bench-js", rest).and_then(|()| bench_js(&root)),
        "bench-python" => no_args("bench-python", rest).and_then(|()| bench_python(&root)),
        "fuzz" => fuzz(&root, rest),
        "ci" => no_args("ci", rest).and_then(|()| ci(&root)),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(UsageError(format!("unknown subcommand `{other}`")).into()),
    }
}

/// Rejects arguments given to a subcommand that takes none.
///
/// # Errors
///
/// A [`UsageError`] when `rest` is not empty.
fn no_args(subcommand: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(UsageError(format!("`{subcommand}` takes no arguments, got {rest:?}")).into())
    }
}

/// The workspace root: the parent of this crate's manifest directory.
///
/// # Errors
///
/// Fails if the manifest directory has no parent (it always has one in this repository).
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Every feature of the workspace but `aws-lc-rs` (which would make AWS-LC the default
/// provider of the whole run).
const ALL_BUT_PROVIDER: &str = "keyhaven/full,keyhaven-cli/full,keyhaven/test-clock";

/// The packages whose suites run a second time with the aws-lc-rs provider as the default.
const PROVIDER_PASS: &[&str] = &[
    "-p",
    "keyhaven-crypto",
    "-p",
    "keyhaven-store-memory",
    "-p",
    "keyhaven-store-file",
];

/// `cargo xtask test`: makes sure the system tools the tests need are present, then runs the whole
/// workspace's tests with all features, forwarding `extra` to `cargo test`. The PKCS#11 tests get
/// SoftHSM2's module and a scratch token directory for this run ([`softhsm::Scratch`]).
///
/// # Errors
///
/// Fails when a tool is missing and cannot be installed, or when any test fails.
fn test(root: &Path, extra: &[String]) -> Result<()> {
    sys::ensure_tools(sys::TEST_TOOLS)?;
    sys::ensure_libraries(sys::TPM_LIBRARIES)?;
    let pkcs11_module = softhsm::module()?;
    let python = python::interop_python(root)?;
    // Lives until the tests are done, then removes the run's tokens.
    let scratch = softhsm::Scratch::create()?;

    let mut command = cargo(root);
    command.arg("test");
    // `--workspace` and `-p` do not mix: when the caller picks packages, let them.
    let picks_packages = extra
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg == "--package" || arg.starts_with("--package="));
    if !picks_packages {
        command.arg("--workspace");
    }
    // Every feature but the second crypto provider: the suite runs on the default build
    // (RustCrypto); the provider pass below runs the crypto and store suites on aws-lc-rs.
    // KEYHAVEN_TEST_PROVIDER=aws-lc-rs runs the whole suite on the second provider instead.
    let aws_lc = std::env::var("KEYHAVEN_TEST_PROVIDER").is_ok_and(|p| p == "aws-lc-rs");
    let features = if aws_lc {
        format!("{ALL_BUT_PROVIDER},keyhaven-crypto/aws-lc-rs")
    } else {
        ALL_BUT_PROVIDER.to_owned()
    };
    command
        .args(["--features", &features, "--no-fail-fast"])
        .args(extra)
        .env("KEYHAVEN_INTEROP", "1")
        .env("KEYHAVEN_PYTHON", &python)
        .env("RUST_BACKTRACE", "1");
    scratch.apply(&mut command, &pkcs11_module);

    let (status, mut tally) = tally::run_tallied(&mut command, &mut std::io::stdout().lock())?;
    let mut status = status;
    if !picks_packages && extra.is_empty() && !aws_lc {
        // The provider pass: Wycheproof, the provider conformance checks and the backend
        // conformance suite of the software stores, with aws-lc-rs as the default provider.
        println!("xtask: provider pass: the crypto and store suites with aws-lc-rs");
        let mut second = cargo(root);
        second
            .arg("test")
            .args(PROVIDER_PASS)
            .args(["--features", "keyhaven-crypto/aws-lc-rs", "--no-fail-fast"])
            .env("KEYHAVEN_INTEROP", "1")
            .env("KEYHAVEN_PYTHON", &python)
            .env("RUST_BACKTRACE", "1");
        let (s2, t2) = tally::run_tallied(&mut second, &mut std::io::stdout().lock())?;
        if status.success() {
            status = s2;
        }
        tally.add(&t2);
    }
    if !picks_packages && extra.is_empty() && !aws_lc {
        // The Python binding: its wheel built and installed, pytest over it (with this run's
        // SoftHSM2 scratch directory for the HSM example).
        let (s3, t3) = python_pass(root, &python, &[], Some((&scratch, &pkcs11_module)))?;
        if status.success() {
            status = s3;
        }
        tally.add(&t3);
        // The browser SDK, in headless Chromium (the Python pass installed the binding its
        // crossing test uses).
        let (s4, t4) = js_pass(root, &python)?;
        if status.success() {
            status = s4;
        }
        tally.add(&t4);
    }
    drop(scratch);
    // The plain closing line: "tests: N passed, N failed, N skipped".
    println!("{tally}");
    if !status.success() {
        if tally.binaries == 0 {
            bail!(
                "cargo test failed ({status}) before any test binary reported: \
                 see the build errors above"
            );
        }
        bail!(
            "cargo test failed ({status}): {} test(s) failed",
            tally.failed
        );
    }
    Ok(())
}

/// The features the `keyhaven` binary is built with for the Python pass: the test run's, so
/// the test run's build is reused.
fn build_cli(root: &Path) -> Result<PathBuf> {
    run(cargo(root).args([
        "build",
        "-p",
        "keyhaven-cli",
        "--features",
        ALL_BUT_PROVIDER,
    ]))?;
    Ok(root.join("target").join("debug").join("keyhaven"))
}

/// Builds and installs the binding, then runs pytest over `bindings/python/tests` (with
/// `extra` pytest arguments), tallying its closing line.
fn python_pass(
    root: &Path,
    python: &Path,
    extra: &[String],
    softhsm: Option<(&softhsm::Scratch, &Path)>,
) -> Result<(std::process::ExitStatus, tally::Tally)> {
    println!("xtask: python pass: the binding's wheel, then pytest");
    let keyhaven = build_cli(root)?;
    python::install_binding(root, python, false)?;
    let mut pytest = std::process::Command::new(python);
    pytest
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-ra"])
        .arg(root.join("bindings/python/tests"))
        .args(extra)
        .current_dir(root)
        .env("KEYHAVEN_BIN", &keyhaven)
        .env("KEYHAVEN_PYTHON", python)
        .env("KEYHAVEN_INTEROP", "1");
    if let Some((scratch, module)) = softhsm {
        scratch.apply(&mut pytest, module);
    }
    tally::run_tallied(&mut pytest, &mut std::io::stdout().lock())
}

/// The browser SDK built (`npm ci` from its lockfile, `tsc`), the `keyhaven` binary its tests
/// start, and Chromium: (the SDK's directory, the binary, the browser).
fn build_sdk(root: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    sys::ensure_tools(sys::JS_TOOLS)?;
    let dir = root.join("clients/js");
    run(std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir))?;
    run(std::process::Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&dir))?;
    let keyhaven = build_cli(root)?;
    let chromium = sys::which("chromium").context("chromium is not on PATH")?;
    Ok((dir, keyhaven, chromium))
}

/// Builds the browser SDK (`npm ci` from its lockfile, `tsc`) and runs its tests with Node's
/// test runner: the Node-only ones and the headless Chromium ones, against the workspace's
/// `keyhaven` binary.
fn js_pass(root: &Path, python: &Path) -> Result<(std::process::ExitStatus, tally::Tally)> {
    println!("xtask: browser pass: the SDK built, then node --test (headless Chromium)");
    let (dir, keyhaven, chromium) = build_sdk(root)?;
    let mut node = std::process::Command::new("node");
    node.args([
        "--test",
        "--test-reporter=tap",
        "test/unit.test.mjs",
        "test/browser.test.mjs",
    ])
    .current_dir(&dir)
    .env("KEYHAVEN_BIN", &keyhaven)
    .env("KEYHAVEN_PYTHON", python)
    .env("KEYHAVEN_CHROMIUM", chromium);
    tally::run_tallied(&mut node, &mut std::io::stdout().lock())
}

/// `cargo xtask test-js`: the browser pass alone (the binding built first, for the crossing
/// test).
///
/// # Errors
/// The SDK cannot be built, or a test fails.
fn test_js(root: &Path) -> Result<()> {
    let python = python::interop_python(root)?;
    python::install_binding(root, &python, false)?;
    let (status, tally) = js_pass(root, &python)?;
    println!("{tally}");
    if !status.success() {
        bail!(
            "node --test failed ({status}): {} test(s) failed",
            tally.failed
        );
    }
    Ok(())
}

/// `cargo xtask bench-js`: key generation and signed `fetch` latency in headless Chromium.
///
/// # Errors
/// The SDK cannot be built, or the benchmark fails.
fn bench_js(root: &Path) -> Result<()> {
    let (dir, keyhaven, chromium) = build_sdk(root)?;
    run(std::process::Command::new("node")
        .arg("bench/browser.mjs")
        .current_dir(&dir)
        .env("KEYHAVEN_BIN", &keyhaven)
        .env("KEYHAVEN_CHROMIUM", chromium))
}

/// `cargo xtask test-python`: the Python pass alone.
///
/// # Errors
/// The wheel cannot be built or installed, or a test fails.
fn test_python(root: &Path, extra: &[String]) -> Result<()> {
    sys::ensure_tools(sys::TEST_TOOLS)?;
    let pkcs11_module = softhsm::module()?;
    let python = python::interop_python(root)?;
    let scratch = softhsm::Scratch::create()?;
    let (status, tally) = python_pass(root, &python, extra, Some((&scratch, &pkcs11_module)))?;
    drop(scratch);
    println!("{tally}");
    if !status.success() {
        bail!("pytest failed ({status}): {} test(s) failed", tally.failed);
    }
    Ok(())
}

/// `cargo xtask bench-python`: a release wheel, then the binding's benchmark script.
///
/// # Errors
/// The wheel cannot be built, or the benchmark fails.
fn bench_python(root: &Path) -> Result<()> {
    let python = python::interop_python(root)?;
    python::install_binding(root, &python, true)?;
    run(std::process::Command::new(&python)
        .arg(root.join("bindings/python/bench/bench_sign.py"))
        .current_dir(root))
}

/// `cargo xtask lint`: rustfmt, clippy, cargo-deny and a compile check of the fuzz targets,
/// stopping at the first failing step.
///
/// # Errors
///
/// Fails naming the first step that failed.
fn lint(root: &Path) -> Result<()> {
    // clippy runs with --all-features, which builds the TPM backend: it links libtss2.
    sys::ensure_tools(&[sys::PKG_CONFIG])?;
    sys::ensure_libraries(sys::TPM_LIBRARIES)?;
    run_step(
        "lint 1/4: rustfmt",
        cargo(root).args(["fmt", "--all", "--", "--check"]),
    )?;
    run_step(
        "lint 2/4: clippy",
        cargo(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    ensure_cargo_plugin(root, "deny", "cargo-deny", "`cargo xtask lint`")?;
    // Never `advisories`: the advisory database cannot be fetched from this network.
    run_step(
        "lint 3/4: cargo-deny",
        cargo(root).args(["deny", "check", "licenses", "bans", "sources"]),
    )?;
    // The fuzz crate is its own workspace, so the steps above never see it: make sure the
    // targets still compile (a plain check; `cargo xtask fuzz` builds them instrumented).
    sys::ensure_tools(sys::FUZZ_TOOLS)?;
    run_step(
        "lint 4/4: fuzz targets compile",
        cargo(root).args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"]),
    )?;
    println!("xtask lint: all 4 steps passed");
    Ok(())
}

/// `cargo xtask bench`: `cargo bench --workspace`, forwarding `extra`, with SoftHSM2 installed
/// for the PKCS#11 benchmarks.
///
/// # Errors
///
/// Fails when the benchmarks fail to build or run.
fn bench(root: &Path, extra: &[String]) -> Result<()> {
    sys::ensure_tools(sys::BENCH_TOOLS)?;
    sys::ensure_libraries(sys::TPM_LIBRARIES)?;
    // The PKCS#11 bench makes its own scratch token; it only needs the module.
    run(cargo(root)
        .args(["bench", "--workspace"])
        .args(extra)
        .env("KEYHAVEN_PKCS11_MODULE", softhsm::module()?))
}

/// `cargo xtask fuzz`: lists the cargo-fuzz targets, or runs one for a bounded time.
///
/// # Errors
///
/// A [`UsageError`] for a bad command line; otherwise fails when cargo-fuzz cannot be installed or
/// the fuzz run fails (a crash found is a failure).
fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let request = parse_fuzz_args(args)?;
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: there are no fuzz targets yet",
            fuzz_dir.display()
        );
    }
    sys::ensure_tools(sys::FUZZ_TOOLS)?;
    ensure_cargo_plugin(root, "fuzz", "cargo-fuzz", "`cargo xtask fuzz`")?;
    let mut command = cargo(&fuzz_dir);
    // The toolchain is stable; cargo-fuzz passes nightly-only flags (-Zsanitizer, ...).
    command.env("RUSTC_BOOTSTRAP", "1");
    match request {
        FuzzRequest::List => command.args(["fuzz", "list"]),
        FuzzRequest::Run {
            target,
            seconds,
            libfuzzer_args,
        } => command
            .args(["fuzz", "run", &target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .args(libfuzzer_args),
    };
    run(&mut command)
}

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, PartialEq, Eq)]
enum FuzzRequest {
    /// `--list`: print the targets.
    List,
    /// Run one target.
    Run {
        /// The cargo-fuzz target name.
        target: String,
        /// libFuzzer's `-max_total_time`.
        seconds: u64,
        /// Extra libFuzzer arguments (everything after `--`).
        libfuzzer_args: Vec<String>,
    },
}

/// Parses `TARGET [--seconds N] [-- ARGS]` or `--list`.
///
/// # Errors
///
/// A [`UsageError`] when the target is missing, a flag is unknown, or N is not a positive integer.
fn parse_fuzz_args(args: &[String]) -> Result<FuzzRequest> {
    let mut target = None;
    let mut seconds = DEFAULT_FUZZ_SECONDS;
    let mut list = false;
    let mut iter = args.iter();
    let mut libfuzzer_args = Vec::new();
    while let Some(arg) = iter.next() {
        if arg == "--seconds" {
            let value = iter
                .next()
                .ok_or_else(|| UsageError("--seconds needs a value".to_owned()))?;
            seconds = parse_seconds(value)?;
        } else if let Some(value) = arg.strip_prefix("--seconds=") {
            seconds = parse_seconds(value)?;
        } else if arg == "--list" {
            list = true;
        } else if arg == "--" {
            libfuzzer_args.extend(iter.by_ref().cloned());
        } else if arg.starts_with('-') {
            return Err(UsageError(format!("unknown fuzz option `{arg}`")).into());
        } else if target.is_none() {
            target = Some(arg.clone());
        } else {
            return Err(UsageError(format!("fuzz takes one TARGET, got a second: `{arg}`")).into());
        }
    }
    match (list, target) {
        (true, None) => Ok(FuzzRequest::List),
        (true, Some(_)) => {
            Err(UsageError("fuzz: give either --list or a TARGET".to_owned()).into())
        }
        (false, None) => Err(UsageError("fuzz needs a TARGET (or --list)".to_owned()).into()),
        (false, Some(target)) => Ok(FuzzRequest::Run {
            target,
            seconds,
            libfuzzer_args,
        }),
    }
}

/// Parses the value of `--seconds`: a positive integer.
///
/// # Errors
///
/// A [`UsageError`] for anything else.
fn parse_seconds(value: &str) -> Result<u64> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(UsageError(format!("--seconds wants a positive integer, got `{value}`")).into()),
    }
}

/// `cargo xtask ci`: lint, check-layers and test, in that order (what `.ci/run` runs).
///
/// # Errors
///
/// Fails at the first failing stage.
fn ci(root: &Path) -> Result<()> {
    println!("xtask ci: == lint ==");
    lint(root).context("ci stage `lint` failed")?;
    println!("xtask ci: == check-layers ==");
    layers::check(root).context("ci stage `check-layers` failed")?;
    println!("xtask ci: == test ==");
    test(root, &[]).context("ci stage `test` failed")
}

/// Makes sure the cargo plugin `cargo-<subcommand>` runs, installing crate `krate` with
/// `cargo install --locked` (from crates.io) when it does not.
///
/// # Errors
///
/// Fails when the installation fails.
fn ensure_cargo_plugin(root: &Path, subcommand: &str, krate: &str, needed_by: &str) -> Result<()> {
    if cmd::succeeds_quietly(cargo(root).args([subcommand, "--version"])) {
        return Ok(());
    }
    println!(
        "xtask: installing {krate} (needed by {needed_by}) with `cargo install --locked {krate}`; \
         this takes a few minutes..."
    );
    run(cargo(root).args(["install", "--locked", krate]))
        .with_context(|| format!("installing {krate} failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    fn is_usage_error(result: Result<FuzzRequest>) -> bool {
        result.is_err_and(|err| err.downcast_ref::<UsageError>().is_some())
    }

    #[test]
    fn fuzz_defaults_to_sixty_seconds() {
        let request = parse_fuzz_args(&strings(&["parse_pem"])).unwrap();
        assert_eq!(
            request,
            FuzzRequest::Run {
                target: "parse_pem".to_owned(),
                seconds: 60,
                libfuzzer_args: vec![]
            }
        );
    }

    #[test]
    fn fuzz_parses_seconds_both_ways_and_extra_args() {
        for args in [
            &["t", "--seconds", "5", "--", "-jobs=2"][..],
            &["--seconds=5", "t", "--", "-jobs=2"],
        ] {
            let request = parse_fuzz_args(&strings(args)).unwrap();
            assert_eq!(
                request,
                FuzzRequest::Run {
                    target: "t".to_owned(),
                    seconds: 5,
                    libfuzzer_args: strings(&["-jobs=2"])
                }
            );
        }
    }

    #[test]
    fn fuzz_list() {
        assert_eq!(
            parse_fuzz_args(&strings(&["--list"])).unwrap(),
            FuzzRequest::List
        );
    }

    #[test]
    fn fuzz_rejects_bad_command_lines() {
        assert!(is_usage_error(parse_fuzz_args(&[])));
        assert!(is_usage_error(parse_fuzz_args(&strings(&[
            "t",
            "--seconds"
        ]))));
        assert!(is_usage_error(parse_fuzz_args(&strings(&[
            "t",
            "--seconds",
            "0"
        ]))));
        assert!(is_usage_error(parse_fuzz_args(&strings(&[
            "t",
            "--seconds",
            "x"
        ]))));
        assert!(is_usage_error(parse_fuzz_args(&strings(&["t", "u"]))));
        assert!(is_usage_error(parse_fuzz_args(&strings(&["t", "--bogus"]))));
        assert!(is_usage_error(parse_fuzz_args(&strings(&["t", "--list"]))));
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root().unwrap();
        assert!(root.join("Cargo.toml").is_file());
        assert!(root.join("xtask").is_dir());
    }
}
