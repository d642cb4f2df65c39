//! One swtpm per test.
//!
//! # Design
//!
//! Each test starts its own `swtpm socket --tpm2` in a fresh temporary state directory, so tests
//! run in parallel and never see each other's keys, and kills it by pid when its guard drops.
//! Three facts shape the details (swtpm 0.7.1, tpm2-tss 3.2.1, tss-esapi 7.7.0, all measured):
//! - tss-esapi 7.x can only hand the TCTI loader `swtpm:host=H,port=P`, never `path=`, so swtpm
//!   listens on TCP loopback here, not on a Unix socket: the data channel on `P` and the control
//!   channel on `P + 1` (where libtss2-tcti-swtpm looks for it). Ports come from a per-process
//!   range below the kernel's ephemeral range (32768+), so they never collide with the
//!   short-lived client connections the swtpm TCTI makes (one per TPM command), and a pair that
//!   turns out to be taken is skipped;
//! - swtpm serves one connection at a time, and the swtpm TCTI connects per command, so a
//!   store and `tpm2_*` tools can use the same swtpm one command after another;
//! - swtpm takes about 2 s to exit after SIGTERM: the guard sends SIGKILL (the state directory
//!   keeps everything persistent: swtpm writes its NV state as it changes) and waits for the
//!   pid to be gone before the ports are reused.
//!
//! If swtpm is not installed the tests fail, saying how to run them: `cargo xtask test` installs
//! swtpm, swtpm-tools, tpm2-tools and libtss2-dev. They never pass silently.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use keyhaven_hsm_tpm::{TpmConfig, TpmStore};

const HOW_TO_RUN: &str = "run the TPM tests through the harness: `cargo xtask test -p \
     keyhaven-hsm-tpm` (it installs swtpm, swtpm-tools, tpm2-tools and libtss2-dev when missing)";

/// The next port pair to try: per-process blocks of 200 ports in 20000..32000.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + u16::try_from(std::process::id() % 60).unwrap() * 200;
    let n = NEXT.fetch_add(2, Ordering::Relaxed) % 200;
    base + n
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Panics with how to run the tests if a tool is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    assert!(found, "`{tool}` is not installed: {HOW_TO_RUN}");
}

/// A running swtpm, killed on drop.
pub struct Swtpm {
    state: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Starts a swtpm with a fresh state directory and waits until it answers.
    pub fn start() -> Swtpm {
        require("swtpm");
        let state = tempfile::tempdir().unwrap();
        let mut tpm = Swtpm {
            state,
            port: 0,
            child: None,
        };
        for _ in 0..50 {
            let port = next_port();
            if !free(port) || !free(port + 1) {
                continue;
            }
            tpm.port = port;
            if tpm.launch() {
                return tpm;
            }
        }
        panic!("could not start swtpm on any free port pair in 50 tries");
    }

    /// Starts swtpm on `self.port`; false if it exited (its port was taken meanwhile).
    fn launch(&mut self) -> bool {
        let dir = self.state.path();
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let up = |p: u16| {
                TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), Duration::from_millis(200))
                    .is_ok()
            };
            if up(self.port) && up(self.port + 1) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "swtpm did not answer on port {} within 10 s; its log: {}",
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI that reaches it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Kills it (SIGKILL, by pid) and waits for the pid to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same state directory and ports.
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
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "swtpm is still running");
        self.restart();
    }

    /// A tpm2-tools command aimed at this swtpm.
    pub fn tool(&self, program: &str) -> Command {
        require(program);
        let mut c = Command::new(program);
        c.env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE");
        c
    }

    /// Runs a tpm2-tools command and returns its stdout, panicking with its stderr on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.tool(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A swtpm and a metadata directory for a store on it.
pub struct TestTpm {
    /// The TPM.
    pub swtpm: Swtpm,
    keys: tempfile::TempDir,
}

impl TestTpm {
    /// A fresh swtpm and an empty key directory.
    pub fn new() -> TestTpm {
        TestTpm {
            swtpm: Swtpm::start(),
            keys: tempfile::tempdir().unwrap(),
        }
    }

    /// The store's metadata directory.
    pub fn dir(&self) -> PathBuf {
        self.keys.path().join("tpm")
    }

    /// The store's configuration.
    pub fn config(&self) -> TpmConfig {
        TpmConfig::new(&self.swtpm.tcti(), self.dir()).unwrap()
    }

    /// Opens the store.
    pub fn store(&self) -> TpmStore {
        TpmStore::open(self.config()).unwrap()
    }

    /// A scratch path for files the test writes.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }
}
