//! One swtpm per test, started by `keyhaven_testkit::devices::Swtpm` (shared with the facade's
//! and the CLI's tests).
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

use std::path::PathBuf;

use keyhaven_hsm_tpm::{TpmConfig, TpmStore};
pub use keyhaven_testkit::devices::Swtpm;

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
