//! Test devices, run as real processes: SoftHSM2 tokens and swtpm instances.
//!
//! Every backend and front end that talks to a device uses these, so tests of the facade and the
//! command line need nothing from the backend crates' own test code (and this crate needs
//! neither `cryptoki` nor `tss-esapi`: it only runs programs).
//!
//! # SoftHSM2
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, in `C_Initialize`, and builds its slot list then: a token
//! another process creates afterwards stays invisible to a process that has already initialized
//! the module. So:
//! - [`SoftHsm::new`] makes a configuration and token directory of its own, in a temporary
//!   directory. Hand its [`SoftHsm::conf`] to **child processes** (the `keyhaven` binary,
//!   `pkcs11-tool`) through [`SoftHsm::command`]: each test then has its own tokens, invisible to
//!   every other test, and the tests run in parallel;
//! - [`SoftHsm::from_env`] uses the harness's `SOFTHSM2_CONF` (set by `cargo xtask test` for the
//!   whole run), for tests that load the module **in their own process**: make every token they
//!   need with [`SoftHsm::init_token`] before the process first initializes the module (in a
//!   `OnceLock`, say), then give each test its own token by label.
//!
//! Tokens are made with `softhsm2-util --init-token --free --label L --so-pin S --pin P`. Labels
//! should have a fixed width: `pkcs11-tool --token-label` matches a prefix, so `kh-1` would also
//! pick `kh-10`.
//!
//! # swtpm
//!
//! [`Swtpm::start`] runs `swtpm socket --tpm2` in a fresh state directory, on TCP loopback ports
//! (tss-esapi 7.x can only hand the TCTI loader `swtpm:host=H,port=P`, never a socket path): the
//! data channel on `P`, the control channel on `P + 1`. Ports come from a per-process range
//! below the kernel's ephemeral range (32768 and up), so they never collide with the short-lived
//! client connections the swtpm TCTI makes, and a pair found taken is skipped. It waits until
//! both ports answer, and kills swtpm by its pid (SIGKILL, then waits for the pid to be gone) when
//! dropped: swtpm takes about 2 s to exit after SIGTERM, and keeps its state on disk as it
//! changes, so nothing is lost. [`Swtpm::restart`] starts it again on the same state directory
//! and ports.
//!
//! A missing tool fails the test with a message saying how to run the tests (`cargo xtask
//! test`, which installs softhsm2, opensc, swtpm, swtpm-tools and tpm2-tools); a device test
//! never passes silently.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How to get the devices: the message of every failure to find one.
pub const HOW_TO_RUN: &str = "run the tests with `cargo xtask test` (it installs softhsm2, \
     opensc, swtpm, swtpm-tools, tpm2-tools, libtss2-dev and postgresql when missing, and sets \
     KEYHAVEN_PKCS11_MODULE and SOFTHSM2_CONF)";

/// Where Debian and Ubuntu install SoftHSM2's PKCS#11 module (`apt-get install softhsm2`).
pub const SOFTHSM_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The security officer PIN [`SoftHsm::init_token`] gives test tokens by default.
pub const SO_PIN: &str = "87654321";
/// The user PIN [`SoftHsm::init_token`] gives test tokens by default.
pub const USER_PIN: &str = "12345678";

/// The PKCS#11 module for tests: `KEYHAVEN_PKCS11_MODULE` if set, else SoftHSM2's module at one
/// of [`SOFTHSM_MODULE_PATHS`].
///
/// # Panics
/// If there is none, saying how to run the tests.
pub fn pkcs11_module() -> PathBuf {
    if let Some(m) = std::env::var_os("KEYHAVEN_PKCS11_MODULE") {
        let m = PathBuf::from(m);
        assert!(
            m.is_file(),
            "KEYHAVEN_PKCS11_MODULE={} does not exist: {HOW_TO_RUN}",
            m.display()
        );
        return m;
    }
    SOFTHSM_MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "KEYHAVEN_PKCS11_MODULE is not set and SoftHSM2's libsofthsm2.so is not \
                 installed: {HOW_TO_RUN}"
            )
        })
}

/// Panics, saying how to run the tests, if `tool` is not on the `PATH`.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    assert!(found, "`{tool}` is not installed: {HOW_TO_RUN}");
}

/// Runs a command, panicking with its output if it cannot start or fails.
fn run_ok(command: &mut Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {HOW_TO_RUN}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A SoftHSM2 configuration and its token directory (see the [module documentation](self)).
pub struct SoftHsm {
    /// Removed on drop, for configurations of our own.
    _dir: Option<tempfile::TempDir>,
    conf: PathBuf,
    tokendir: PathBuf,
    module: PathBuf,
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftHsm")
            .field("conf", &self.conf)
            .field("tokendir", &self.tokendir)
            .finish_non_exhaustive()
    }
}

impl SoftHsm {
    /// A configuration of its own (`softhsm2.conf` and `tokens/` in a temporary directory,
    /// removed on drop), with no tokens yet. For child processes: see [`SoftHsm::command`].
    ///
    /// # Panics
    /// If SoftHSM2 is not installed.
    // Not `Default`: this creates files and needs SoftHSM2 installed.
    #[allow(clippy::new_without_default)]
    pub fn new() -> SoftHsm {
        let module = pkcs11_module();
        require("softhsm2-util");
        let dir = tempfile::tempdir().expect("temporary directory"); // ok: test assertion
        let tokendir = dir.path().join("tokens");
        std::fs::create_dir(&tokendir).expect("token directory"); // ok: test assertion
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "# a SoftHSM2 configuration of one test\n\
                 directories.tokendir = {}\n\
                 objectstore.backend = file\n\
                 log.level = ERROR\n",
                tokendir.display()
            ),
        )
        .expect("write softhsm2.conf"); // ok: test assertion
        SoftHsm {
            _dir: Some(dir),
            conf,
            tokendir,
            module,
        }
    }

    /// The harness's configuration (`SOFTHSM2_CONF`, which `cargo xtask test` sets for the whole
    /// run), for tests that load the module in their own process. Nothing is removed on drop.
    ///
    /// # Panics
    /// If `SOFTHSM2_CONF` is unset, unreadable, or names no existing token directory.
    pub fn from_env() -> SoftHsm {
        let module = pkcs11_module();
        let conf = std::env::var_os("SOFTHSM2_CONF")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("SOFTHSM2_CONF is not set: {HOW_TO_RUN}"));
        let text = std::fs::read_to_string(&conf).unwrap_or_else(|e| {
            panic!(
                "cannot read SOFTHSM2_CONF={} ({e}): {HOW_TO_RUN}",
                conf.display()
            )
        });
        let tokendir = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("directories.tokendir"))
            .filter_map(|rest| rest.trim().strip_prefix('='))
            .map(|v| PathBuf::from(v.trim()))
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "{} sets no directories.tokendir: {HOW_TO_RUN}",
                    conf.display()
                )
            });
        assert!(
            tokendir.is_dir(),
            "the token directory {} of {} does not exist: {HOW_TO_RUN}",
            tokendir.display(),
            conf.display()
        );
        SoftHsm {
            _dir: None,
            conf,
            tokendir,
            module,
        }
    }

    /// The configuration file: the `SOFTHSM2_CONF` of processes that should see these tokens.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The token directory.
    pub fn tokendir(&self) -> &Path {
        &self.tokendir
    }

    /// The PKCS#11 module (`libsofthsm2.so`).
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// A command for `program` with `SOFTHSM2_CONF` set to this configuration.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// Makes a token labelled `label` in a free slot, with the security officer PIN [`SO_PIN`]
    /// and the user PIN `user_pin`.
    ///
    /// # Panics
    /// If `softhsm2-util` fails.
    pub fn init_token(&self, label: &str, user_pin: &str) {
        require("softhsm2-util");
        run_ok(
            self.command("softhsm2-util").args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                user_pin,
            ]),
            &format!("softhsm2-util --init-token --label {label}"),
        );
    }

    /// The directory of the token labelled `label` (SoftHSM names it by a UUID; the label, padded
    /// with blanks to 32 bytes, is in its `token.object`).
    ///
    /// # Panics
    /// If no token has that label.
    pub fn token_directory(&self, label: &str) -> PathBuf {
        let mut padded = label.as_bytes().to_vec();
        padded.resize(32.max(padded.len()), b' ');
        // ok: test harness only (publish = false): a panic fails the test that set the token up
        let entries = std::fs::read_dir(&self.tokendir).expect("read the token directory"); // ok: as above
        for entry in entries {
            let dir = entry.expect("token directory entry").path(); // ok: test assertion
            let Ok(bytes) = std::fs::read(dir.join("token.object")) else {
                continue;
            };
            if bytes.windows(padded.len()).any(|w| w == padded.as_slice()) {
                return dir;
            }
        }
        panic!("no token labelled {label} in {}", self.tokendir.display())
    }

    /// `pkcs11-tool --module M --token-label L --login --pin PIN ARGS` with this configuration;
    /// returns its standard output and error.
    ///
    /// # Panics
    /// If `pkcs11-tool` is missing or fails.
    pub fn pkcs11_tool(&self, label: &str, pin: &str, args: &[&str]) -> String {
        require("pkcs11-tool");
        let out = run_ok(
            self.command("pkcs11-tool")
                .arg("--module")
                .arg(&self.module)
                .args(["--token-label", label, "--login", "--pin", pin])
                .args(args),
            &format!("pkcs11-tool {}", args.join(" ")),
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The next port pair to try: per-process blocks of 200 ports in 20000..32000.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = u16::try_from(std::process::id() % 60).expect("below 60"); // ok: test assertion
    let n = NEXT.fetch_add(2, Ordering::Relaxed) % 200;
    20_000 + block * 200 + n
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Waits until `up()` (true), or `child` exits (false: its port was taken meanwhile).
///
/// # Panics
/// After `seconds`, killing `child` and showing its log.
fn wait_until_up(
    child: &mut Child,
    what: &str,
    log: &Path,
    seconds: u64,
    up: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if up() {
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not answer within {seconds} s; its log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// A running swtpm, killed by its pid on drop (see the [module documentation](self)).
pub struct Swtpm {
    state: tempfile::TempDir,
    /// The TPM state's own directory when it is not `state` (a manufactured TPM keeps its CA
    /// beside it).
    state_subdir: Option<std::path::PathBuf>,
    port: u16,
    child: Option<Child>,
}

impl std::fmt::Debug for Swtpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swtpm")
            .field("state", &self.state.path())
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Swtpm {
    /// Starts a swtpm with a fresh state directory on a free pair of loopback ports, and waits
    /// until it answers.
    ///
    /// # Panics
    /// If swtpm is not installed or does not start.
    pub fn start() -> Swtpm {
        require("swtpm");
        let mut tpm = Swtpm {
            state: tempfile::tempdir().expect("temporary directory"), // ok: test assertion
            state_subdir: None,
            port: 0,
            child: None,
        };
        tpm.launch_on_free_ports();
        tpm
    }

    /// Starts a swtpm manufactured like a real TPM: `swtpm_setup` makes its endorsement keys
    /// (RSA 2048 and ECC P-384) and certificates issued by a local CA (`swtpm_localca`, a CA
    /// made in its own directory), stored in the TPM's NV memory as a manufacturer does. The
    /// CA's certificates are [`Swtpm::ek_ca`].
    ///
    /// # Panics
    /// If swtpm, swtpm_setup or swtpm_localca is not installed, or the setup fails.
    pub fn start_with_ek_certificate() -> Swtpm {
        require("swtpm_setup");
        require("swtpm_localca");
        let mut tpm = Swtpm {
            state: tempfile::tempdir().expect("temporary directory"), // ok: test assertion
            state_subdir: None,
            port: 0,
            child: None,
        };
        let dir = tpm.state.path().to_path_buf();
        let ca = dir.join("ca");
        std::fs::create_dir_all(&ca).expect("CA directory"); // ok: test assertion
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).expect("swtpm_setup configuration"); // ok: test assertion
        };
        write(
            "localca.conf",
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
                 certserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        );
        write(
            "localca.options",
            "--platform-manufacturer keyhaven\n--platform-version 2.1\n--platform-model swtpm\n"
                .to_owned(),
        );
        write(
            "setup.conf",
            format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {d}/localca.conf\n\
                 create_certs_tool_options = {d}/localca.options\nactive_pcr_banks = sha256\n",
                d = dir.display()
            ),
        );
        let state = dir.join("tpm");
        std::fs::create_dir_all(&state).expect("state directory"); // ok: test assertion
        run_ok(
            Command::new("swtpm_setup")
                .args([
                    "--tpm2",
                    "--create-ek-cert",
                    "--pcr-banks",
                    "sha256",
                    "--tpmstate",
                ])
                .arg(&state)
                .arg("--config")
                .arg(dir.join("setup.conf"))
                .arg("--write-ek-cert-files")
                .arg(&dir),
            "swtpm_setup --create-ek-cert",
        );
        tpm.state_subdir = Some(state);
        tpm.launch_on_free_ports();
        tpm
    }

    /// The local CA of a TPM from [`Swtpm::start_with_ek_certificate`]: its issuing
    /// certificate and its root, PEM (issuer first).
    ///
    /// # Panics
    /// If this TPM was not made with an EK certificate.
    pub fn ek_ca(&self) -> String {
        let ca = self.state.path().join("ca");
        let read = |name: &str| {
            std::fs::read_to_string(ca.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e} (a swtpm without an EK certificate?)"))
        };
        read("issuercert.pem") + &read("swtpm-localca-rootca-cert.pem")
    }

    /// The RSA 2048 endorsement key's certificate, DER, as `swtpm_setup` wrote it.
    ///
    /// # Panics
    /// If this TPM was not made with an EK certificate.
    pub fn ek_certificate(&self) -> Vec<u8> {
        std::fs::read(self.state.path().join("ek-rsa2048.crt"))
            .unwrap_or_else(|e| panic!("ek-rsa2048.crt: {e} (a swtpm without an EK certificate?)"))
    }

    /// Starts it on a free pair of loopback ports.
    fn launch_on_free_ports(&mut self) {
        for _ in 0..50 {
            let port = next_port();
            if !port_free(port) || !port_free(port + 1) {
                continue;
            }
            self.port = port;
            if self.launch() {
                return;
            }
        }
        panic!("could not start swtpm on any free port pair in 50 tries");
    }

    /// Starts swtpm on `self.port`; false if it exited at once (its port was taken meanwhile).
    fn launch(&mut self) -> bool {
        let dir = self
            .state_subdir
            .clone()
            .unwrap_or_else(|| self.state.path().to_path_buf());
        let dir = dir.as_path();
        let log = dir.join("swtpm.log");
        let mut child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .arg("--log")
            .arg(format!("file={},level=1", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run swtpm ({e}): {HOW_TO_RUN}"));
        let port = self.port;
        let up = wait_until_up(&mut child, "swtpm", &log, 10, || {
            answers(port) && answers(port + 1)
        });
        if up {
            self.child = Some(child);
        }
        up
    }

    /// The TCTI that reaches it: `swtpm:host=127.0.0.1,port=P`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Its data port (the control channel is on the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        self.state_subdir.as_deref().unwrap_or(self.state.path())
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL, by pid) and waits for the pid to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same state directory and ports.
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.launch() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("swtpm did not restart on port {}", self.port);
    }

    /// Starts it again after [`Swtpm::kill`].
    ///
    /// # Panics
    /// If it is still running, or does not come back.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "swtpm is still running");
        self.restart();
    }

    /// A tpm2-tools command aimed at this swtpm (`TPM2TOOLS_TCTI` set, tpm2-tss's own logging
    /// off).
    ///
    /// # Panics
    /// If `program` is not installed.
    pub fn tool(&self, program: &str) -> Command {
        require(program);
        let mut c = Command::new(program);
        c.env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE");
        c
    }

    /// Runs a tpm2-tools command and returns its standard output.
    ///
    /// # Panics
    /// If it fails, with its standard error.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = run_ok(
            self.tool(program).args(args),
            &format!("{program} {}", args.join(" ")),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `script` with the interop virtualenv's interpreter ([`python`]), `stdin` as its
/// input, and returns its output (not asserting success: the caller says what it expects).
///
/// # Panics
/// When the interpreter cannot be started.
pub fn run_python(script: &str, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the interop python"); // ok: test assertion
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).expect("python's stdin"); // ok: test assertion
    }
    child.wait_with_output().expect("python's output") // ok: test assertion
}

/// The interpreter of the interop virtualenv, with the pinned PyPI packages of
/// `xtask/interop-requirements.txt` (`cargo xtask test` makes it and sets `KEYHAVEN_PYTHON`).
///
/// # Panics
/// When `KEYHAVEN_PYTHON` is not set, saying how to run the tests.
pub fn python() -> PathBuf {
    match std::env::var_os("KEYHAVEN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "KEYHAVEN_PYTHON is not set: run the tests with `cargo xtask test` (it makes a \
             virtualenv with the pinned interop packages)"
        ),
    }
}

/// A number `id ARGS` prints (a uid or gid).
fn id(args: &[&str]) -> u32 {
    let out = run_ok(Command::new("id").args(args), "id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("id prints a number") // ok: test assertion
}

/// Where Debian puts PostgreSQL's server programs (`initdb`, `postgres`), newest first.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").is_file());
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("PostgreSQL's server (initdb) is not installed: {HOW_TO_RUN}"))
}

/// A throwaway PostgreSQL cluster (`initdb` in a temporary directory, `postgres` on a free
/// loopback port, no fsync), killed by its pid on drop. As root, it runs as the `postgres`
/// user (PostgreSQL refuses root).
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Postgres {
    /// Makes a cluster and starts it, waiting until it accepts connections.
    ///
    /// # Panics
    /// If PostgreSQL is not installed or does not start.
    pub fn start() -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().expect("temporary directory"); // ok: test assertion
        let data = dir.path().join("data");
        let as_root = id(&["-u"]) == 0;
        if as_root {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                "chown",
            );
        }
        let mut initdb = Self::as_owner(as_root, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "keyhaven",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run_ok(&mut initdb, "initdb");
        let mut pg = Postgres {
            dir,
            port: 0,
            child: None,
        };
        for _ in 0..50 {
            let port = next_port();
            if !port_free(port) {
                continue;
            }
            pg.port = port;
            if pg.launch(&bin, as_root) {
                return pg;
            }
        }
        panic!("could not start PostgreSQL on any free port in 50 tries");
    }

    /// `program`, run as the `postgres` user when we are root (set before exec: the child's
    /// pid is the program's own, so killing it kills the server).
    fn as_owner(as_root: bool, program: &Path) -> Command {
        let mut c = Command::new(program);
        if as_root {
            use std::os::unix::process::CommandExt;
            c.uid(id(&["-u", "postgres"])).gid(id(&["-g", "postgres"]));
        }
        c
    }

    fn launch(&mut self, bin: &Path, as_root: bool) -> bool {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).expect("log file"); // ok: test assertion
        if as_root {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&log)
                .status();
        }
        let mut child = Self::as_owner(as_root, &bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run postgres ({e}): {HOW_TO_RUN}"));
        let port = self.port;
        let up = wait_until_up(&mut child, "postgres", &log, 30, || answers(port));
        if up {
            // Accepting TCP is not yet accepting sessions: give it a moment more.
            std::thread::sleep(Duration::from_millis(200));
            self.child = Some(child);
        }
        up
    }

    /// A connection string for it (`postgres://keyhaven@127.0.0.1:PORT/postgres`).
    pub fn url(&self) -> String {
        format!("postgres://keyhaven@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it at once: SIGQUIT (the postmaster ends its workers too), then SIGKILL if it is
    /// still there after 5 s; waits for the pid to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The receiver's program: Python's `http.server` (over Python's `ssl`, i.e. OpenSSL, with
/// `--tls CERT KEY`), answering each POST with the next scripted status (0: never answer,
/// holding the connection until the process ends; past the script: 200), and appending each
/// request as one JSON line to the log.
const WEBHOOK_RECEIVER: &str = r#"
import base64, http.server, json, ssl, sys, threading, time
log_path, statuses = sys.argv[1], [int(s) for s in sys.argv[2].split(",") if s]
lock = threading.Lock()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            status = statuses.pop(0) if statuses else 200
            with open(log_path, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path,
                                    "headers": [[k, v] for k, v in self.headers.items()],
                                    "body": base64.b64encode(body).decode()}) + "\n")
        if status == 0:
            time.sleep(3600)
            return
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
if len(sys.argv) > 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A webhook receiver nobody here wrote: Python's `http.server`, over TLS from Python's `ssl`
/// (OpenSSL) with a certificate for `localhost` and `127.0.0.1` made by the `openssl` command
/// under a CA of its own, answering scripted statuses and recording every request. Killed on
/// drop.
pub struct WebhookReceiver {
    child: std::process::Child,
    port: u16,
    tls: bool,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The header fields, in order, as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl WebhookReceiver {
    /// Starts a receiver answering `statuses` in turn (0: hang), over HTTPS when `tls`.
    ///
    /// # Panics
    /// When `openssl` or the interop Python cannot be run.
    pub fn start(statuses: &[u16], tls: bool) -> WebhookReceiver {
        let dir = tempfile::tempdir().expect("temporary directory"); // ok: test setup
        let d = dir.path();
        let script = d.join("receiver.py");
        std::fs::write(&script, WEBHOOK_RECEIVER).expect("write the receiver"); // ok: test setup
        let statuses = statuses
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(python());
        cmd.arg(&script).arg(d.join("log.jsonl")).arg(statuses);
        if tls {
            let openssl = |args: &[&str]| {
                run_ok(Command::new("openssl").args(args).current_dir(d), "openssl");
            };
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=keyhaven test webhook CA",
            ]);
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ]);
            std::fs::write(
                d.join("ext.cnf"),
                "subjectAltName = DNS:localhost, IP:127.0.0.1\n",
            )
            .expect("write the extensions"); // ok: test setup
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ]);
            cmd.arg(d.join("server.pem")).arg(d.join("server.key"));
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the webhook receiver: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the webhook receiver printed no port: {line:?}"));
        WebhookReceiver {
            child,
            port,
            tls,
            dir,
        }
    }

    /// The URL to post to (`https://localhost:PORT/PATH` or `http://127.0.0.1:PORT/PATH`).
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.port)
        } else {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
    }

    /// The CA certificate (PEM) that issued the receiver's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        let text = std::fs::read_to_string(self.dir.path().join("log.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                use base64ct::Encoding;
                ReceivedRequest {
                    method: s("method"),
                    path: s("path"),
                    headers: v["headers"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|p| {
                                    (
                                        p[0].as_str().unwrap_or_default().to_owned(),
                                        p[1].as_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    body: base64ct::Base64::decode_vec(&s("body")).unwrap_or_default(),
                }
            })
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SoftHSM tokens for the tests of one process, made with `softhsm2-util` in the harness's
/// token directory before the process first loads SoftHSM (which sees only the tokens that
/// exist when it is initialized). Every test that loads the module takes a token first, with
/// [`TokenPool::take`]; tests never share a token.
pub struct TokenPool {
    hsm: SoftHsm,
    labels: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
}

impl TokenPool {
    /// Makes `size` tokens labelled `PREFIX-PID-NN` with the user PIN [`USER_PIN`], once per
    /// process: later calls return the same pool.
    ///
    /// # Panics
    /// If the harness's SoftHSM configuration is missing or `softhsm2-util` fails.
    pub fn get(prefix: &str, size: usize) -> &'static TokenPool {
        static POOL: std::sync::OnceLock<TokenPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let hsm = SoftHsm::from_env();
            let labels: Vec<String> = (0..size)
                .map(|n| format!("{prefix}-{}-{n:02}", std::process::id()))
                .collect();
            for l in &labels {
                hsm.init_token(l, USER_PIN);
            }
            TokenPool {
                hsm,
                labels,
                next: std::sync::atomic::AtomicUsize::new(0),
            }
        })
    }

    /// A token of the caller's own: (module, label).
    ///
    /// # Panics
    /// When every token is taken (raise the pool's size).
    pub fn take(&self) -> (PathBuf, String) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let label = self
            .labels
            .get(n)
            .unwrap_or_else(|| {
                panic!(
                    "all {} tokens are taken: raise the pool's size",
                    self.labels.len()
                )
            })
            .clone();
        (self.hsm.module().to_owned(), label)
    }

    /// The configuration the tokens live in.
    pub fn hsm(&self) -> &SoftHsm {
        &self.hsm
    }
}

/// tpm2-tools driving one swtpm, as a TPM's owner would (code nobody here wrote): the prover
/// side of attestation. Files go to a directory of its own; each command's transient objects
/// and sessions are flushed after it (no resource manager sits in between).
pub struct Tpm2Tools {
    tcti: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Tpm2Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm2Tools")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

impl Tpm2Tools {
    /// The tools for `tpm`.
    ///
    /// # Panics
    /// If tpm2-tools is not installed.
    pub fn new(tpm: &Swtpm) -> Tpm2Tools {
        require("tpm2_createek");
        Tpm2Tools {
            tcti: tpm.tcti(),
            dir: tempfile::tempdir().expect("temporary directory"), // ok: test assertion
        }
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one tool with `args`, without flushing anything.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}): {HOW_TO_RUN}", args[0]))
    }

    fn flush(&self) {
        for kind in ["-t", "-s"] {
            self.run(&["tpm2_flushcontext", kind]);
        }
    }

    /// Runs one tool and flushes; its stderr when it fails.
    ///
    /// # Errors
    /// What the tool printed.
    pub fn try_run(&self, args: &[&str]) -> Result<Output, String> {
        let out = self.run(args);
        self.flush();
        if out.status.success() {
            Ok(out)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs one tool and flushes.
    ///
    /// # Panics
    /// If it fails.
    pub fn must(&self, args: &[&str]) -> Output {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// A file of its directory.
    ///
    /// # Panics
    /// If it cannot be read.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Makes the RSA endorsement key (the certified one) as `ek.ctx`.
    pub fn create_ek(&self) {
        self.must(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    }

    /// Makes an ECC P-256 attestation key under the EK as `NAME.ctx`; its `TPM2B_PUBLIC` and
    /// its name.
    pub fn create_ak(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        self.create_ak_of(name, "ecc", "ecdsa")
    }

    /// Makes an RSA 2048 attestation key signing RSASSA (what Trustee's TPM attester uses)
    /// under the EK as `NAME.ctx`; its `TPM2B_PUBLIC` and its name.
    pub fn create_rsa_ak(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        self.create_ak_of(name, "rsa", "rsassa")
    }

    /// Makes an ECDSA P-256 signing key under a primary of the owner hierarchy, loaded as
    /// `NAME.ctx` (`tpm2_createprimary`, `tpm2_create`, `tpm2_load`); its `TPM2B_PUBLIC`.
    pub fn create_key(&self, name: &str) -> Vec<u8> {
        self.must(&["tpm2_createprimary", "-C", "o", "-c", "primary.ctx"]);
        self.must(&[
            "tpm2_create",
            "-C",
            "primary.ctx",
            "-G",
            "ecc256:ecdsa",
            "-u",
            &format!("{name}.pub"),
            "-r",
            &format!("{name}.priv"),
        ]);
        self.must(&[
            "tpm2_load",
            "-C",
            "primary.ctx",
            "-u",
            &format!("{name}.pub"),
            "-r",
            &format!("{name}.priv"),
            "-c",
            &format!("{name}.ctx"),
        ]);
        self.read(&format!("{name}.pub"))
    }

    /// `TPM2_Certify` of key `KEY.ctx` by attestation key `AK.ctx` (`tpm2_certify`, whose
    /// qualifying data is always `00ff55aa`): its `TPMS_ATTEST` and `TPMT_SIGNATURE`.
    pub fn certify(&self, key: &str, ak: &str) -> (Vec<u8>, Vec<u8>) {
        self.must(&[
            "tpm2_certify",
            "-c",
            &format!("{key}.ctx"),
            "-C",
            &format!("{ak}.ctx"),
            "-g",
            "sha256",
            "-o",
            "certify.attest",
            "-s",
            "certify.sig",
        ]);
        (self.read("certify.attest"), self.read("certify.sig"))
    }

    /// The SubjectPublicKeyInfo (DER) of key `NAME.ctx`, as `tpm2_readpublic` writes it.
    pub fn spki(&self, name: &str) -> Vec<u8> {
        self.must(&[
            "tpm2_readpublic",
            "-c",
            &format!("{name}.ctx"),
            "-f",
            "der",
            "-o",
            &format!("{name}.spki"),
        ]);
        self.read(&format!("{name}.spki"))
    }

    fn create_ak_of(&self, name: &str, key: &str, scheme: &str) -> (Vec<u8>, Vec<u8>) {
        self.must(&[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            &format!("{name}.ctx"),
            "-G",
            key,
            "-g",
            "sha256",
            "-s",
            scheme,
            "-u",
            &format!("{name}.pub"),
            "-n",
            &format!("{name}.name"),
        ]);
        (
            self.read(&format!("{name}.pub")),
            self.read(&format!("{name}.name")),
        )
    }

    /// `TPM2_ActivateCredential` of a credential (`TPM2B_ID_OBJECT`, `TPM2B_ENCRYPTED_SECRET`)
    /// with attestation key `ak` and the EK, under the EK's policy (PolicySecret of the
    /// endorsement hierarchy): the secret, or what the TPM said.
    ///
    /// # Errors
    /// The tools' output when the TPM refuses.
    pub fn activate_credential(
        &self,
        ak: &str,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, String> {
        // tpm2-tools' credential file: magic, version, then the two TPM2Bs.
        let mut file = 0xBADC_C0DEu32.to_be_bytes().to_vec();
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend_from_slice(id_object);
        file.extend_from_slice(encrypted_secret);
        std::fs::write(self.dir.path().join("cred.bin"), file).expect("credential file"); // ok: test assertion
        let _ = std::fs::remove_file(self.dir.path().join("secret.out"));
        let outs = [
            self.run(&[
                "tpm2_startauthsession",
                "--policy-session",
                "-S",
                "session.ctx",
            ]),
            self.run(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e"]),
            self.run(&[
                "tpm2_activatecredential",
                "-c",
                &format!("{ak}.ctx"),
                "-C",
                "ek.ctx",
                "-i",
                "cred.bin",
                "-o",
                "secret.out",
                "-P",
                "session:session.ctx",
            ]),
        ];
        self.flush();
        if outs.iter().all(|o| o.status.success()) {
            Ok(self.read("secret.out"))
        } else {
            Err(outs
                .iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .collect())
        }
    }

    /// Extends SHA-256 PCR `index` with `digest`.
    pub fn extend_pcr(&self, index: u8, digest: &[u8; 32]) {
        self.must(&[
            "tpm2_pcrextend",
            &format!("{index}:sha256={}", hex::encode(digest)),
        ]);
    }

    /// The SHA-256 bank's PCRs `indices`.
    pub fn read_pcrs(&self, indices: &[u8]) -> std::collections::BTreeMap<u8, Vec<u8>> {
        let list: Vec<String> = indices.iter().map(u8::to_string).collect();
        self.must(&[
            "tpm2_pcrread",
            &format!("sha256:{}", list.join(",")),
            "-o",
            "pcrs.bin",
        ]);
        self.read("pcrs.bin")
            .chunks(32)
            .zip(indices)
            .map(|(v, i)| (*i, v.to_vec()))
            .collect()
    }

    /// A quote by attestation key `ak` of PCRs `indices` over `nonce`: its `TPMS_ATTEST` and
    /// `TPMT_SIGNATURE`.
    pub fn quote(&self, ak: &str, indices: &[u8], nonce: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let list: Vec<String> = indices.iter().map(u8::to_string).collect();
        self.must(&[
            "tpm2_quote",
            "-c",
            &format!("{ak}.ctx"),
            "-l",
            &format!("sha256:{}", list.join(",")),
            "-q",
            &hex::encode(nonce),
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-g",
            "sha256",
        ]);
        (self.read("quote.msg"), self.read("quote.sig"))
    }
}

/// A private D-Bus session bus with a real GNOME Keyring Secret Service on it, its login
/// collection created and unlocked with [`SecretServiceSession::PASSWORD`]: both processes are
/// killed by their pid on drop. Nothing of the user's own session is touched (its own `HOME`,
/// `XDG_DATA_HOME` and `XDG_RUNTIME_DIR` in a temporary directory).
pub struct SecretServiceSession {
    dir: tempfile::TempDir,
    address: String,
    bus: Option<Child>,
    keyring: Option<Child>,
}

impl std::fmt::Debug for SecretServiceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretServiceSession")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl SecretServiceSession {
    /// The login collection's password.
    pub const PASSWORD: &'static str = "keyhaven test keyring";

    /// Starts `dbus-daemon --session` and `gnome-keyring-daemon --unlock --components=secrets`
    /// on it, and waits until `secret-tool` can store an item.
    ///
    /// # Panics
    /// If dbus-daemon, gnome-keyring-daemon or secret-tool is missing or does not start.
    pub fn start() -> SecretServiceSession {
        use std::io::{BufRead, Write};
        require("dbus-daemon");
        require("gnome-keyring-daemon");
        require("secret-tool");
        let dir = tempfile::tempdir().expect("temporary directory"); // ok: test assertion
        for sub in ["home", "data", "run"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).expect("session directory"); // ok: test assertion
            set_mode(&p, 0o700);
        }
        // A bus of our own with no service directories: nothing is started by D-Bus
        // activation (an activated gnome-keyring without our password would take the name
        // first and leave the login collection locked).
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration \
                 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>unix:dir={}</listen>\
                 <auth>EXTERNAL</auth><policy context=\"default\">\
                 <allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                dir.path().join("run").display()
            ),
        )
        .expect("bus configuration"); // ok: test assertion
        let mut bus = Command::new("dbus-daemon")
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbus-daemon ({e}): {HOW_TO_RUN}"));
        let mut address = String::new();
        let stdout = bus.stdout.take().expect("piped stdout"); // ok: test assertion
        std::io::BufReader::new(stdout)
            .read_line(&mut address)
            .expect("dbus-daemon prints its address"); // ok: test assertion
        let address = address.trim().to_owned();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        let mut session = SecretServiceSession {
            dir,
            address,
            bus: Some(bus),
            keyring: None,
        };
        let mut keyring = session
            .command("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gnome-keyring-daemon ({e}): {HOW_TO_RUN}"));
        {
            let mut stdin = keyring.stdin.take().expect("piped stdin"); // ok: test assertion
            stdin
                .write_all(Self::PASSWORD.as_bytes())
                .expect("the keyring password"); // ok: test assertion
        }
        session.keyring = Some(keyring);
        // Generous: dozens of sessions start at once when the whole suite runs on two cores.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut probe = session
                .command("secret-tool")
                .args(["store", "--label=probe", "keyhaven-probe", "1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("secret-tool"); // ok: test assertion
            if let Some(mut stdin) = probe.stdin.take() {
                let _ = stdin.write_all(b"probe");
            }
            if probe.wait().is_ok_and(|s| s.success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Secret Service did not come up on {}",
                session.address
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = session
            .command("secret-tool")
            .args(["clear", "keyhaven-probe", "1"])
            .output();
        session
    }

    /// The bus's D-Bus address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A command with this session's bus and home in its environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("HOME", self.dir.path().join("home"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"));
        c
    }

    /// Locks the login collection (`org.freedesktop.Secret.Service.Lock` through `dbus-send`;
    /// `secret-tool lock` hangs on Debian 12's libsecret). Unlocking would need a prompt.
    ///
    /// # Panics
    /// If the call fails.
    pub fn lock(&self) {
        require("dbus-send");
        run_ok(
            self.command("dbus-send").args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.Lock",
                "array:objpath:/org/freedesktop/secrets/collection/login",
            ]),
            "dbus-send ... Secret.Service.Lock",
        );
    }

    /// Runs `secret-tool ARGS` (with `stdin` as its input when given) and returns its output.
    pub fn secret_tool(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = self
            .command("secret-tool")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("secret-tool"); // ok: test assertion
        if let (Some(mut input), Some(bytes)) = (child.stdin.take(), stdin) {
            input.write_all(bytes).expect("secret-tool stdin"); // ok: test assertion
        }
        child.wait_with_output().expect("secret-tool output") // ok: test assertion
    }
}

impl Drop for SecretServiceSession {
    fn drop(&mut self) {
        for child in [self.keyring.take(), self.bus.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("set permissions"); // ok: test assertion
}
