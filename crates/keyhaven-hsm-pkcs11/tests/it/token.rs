//! Per-test SoftHSM2 tokens.
//!
//! # Design: one SoftHSM configuration per test binary, one token per test
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, in `C_Initialize`, and a PKCS#11 module is initialized
//! once per process and shared by every store in it. So all the tests of this binary (which
//! libtest runs as threads of one process) share one configuration and one token directory,
//! and each test gets **its own token** in it, found by its unique label. Tests never share a
//! token, so they run in parallel and cannot see each other's keys.
//!
//! The configuration comes from the harness: `cargo xtask test` writes a scratch
//! `softhsm2.conf` (`directories.tokendir = <tmp>/tokens`, `objectstore.backend = file`,
//! `log.level = ERROR`), exports `SOFTHSM2_CONF` for the whole run and `KEYHAVEN_PKCS11_MODULE`
//! (the Debian path of `libsofthsm2.so`), and removes the directory afterwards. Setting
//! `SOFTHSM2_CONF` from inside the test process would need `unsafe` (`std::env::set_var`),
//! which the workspace forbids, and would race with threads already running.
//!
//! The tokens are made once, when the first test asks for one: [`env`] initializes the module
//! and, before any test can use it, makes a pool of [`TOKEN_POOL`] tokens through it
//! (`C_InitToken` on SoftHSM's free slot and `C_InitPIN`, exactly what `softhsm2-util
//! --init-token --free --label ... --so-pin ... --pin ...` does); each test then takes the next
//! token of the pool. Three facts of SoftHSM 2.6.1, all measured here, shape this:
//! - SoftHSM builds its slot list at `C_Initialize`: a token that another process (such as
//!   `softhsm2-util`) creates afterwards stays invisible to this process, so tokens cannot be
//!   made with `softhsm2-util` on demand;
//! - `softhsm2-util` processes run side by side fail ("Could not get info about the token in
//!   slot 0"), and one after the other they take about 75 ms each (3.5 s for the pool), against
//!   about 10 ms in-process;
//! - a token initialized through the loaded module appears at once, but the next
//!   `C_GetSlotList` adds a new free slot without any locking: two threads listing slots then
//!   (a test opening its store while another makes its token) add two slots with the same id
//!   and SoftHSM aborts the process (`SlotManager::insertToken: Assertion 'result.second'
//!   failed`). Hence the pool is made while no other thread uses the module.
//!
//! The tokens are ordinary on-disk tokens: the interop tests check that `softhsm2-util
//! --show-slots` and `pkcs11-tool` (other processes, started after the pool exists) see them.
//!
//! A hand run without the harness fails with a message saying how to run the tests; it never
//! passes silently and never touches the system's token directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyhaven_hsm_pkcs11::{Pkcs11Config, Pkcs11Store, TokenSelector};
use secrecy::SecretString;

/// The security officer PIN of every test token.
pub(crate) const SO_PIN: &str = "87654321";
/// The user PIN of every test token.
pub(crate) const USER_PIN: &str = "12345678";

const HOW_TO_RUN: &str = "run the PKCS#11 tests through the harness: `cargo xtask test -p \
     keyhaven-hsm-pkcs11` (it installs softhsm2 and opensc when missing and sets \
     KEYHAVEN_PKCS11_MODULE and SOFTHSM2_CONF), or set KEYHAVEN_PKCS11_MODULE to \
     libsofthsm2.so and SOFTHSM2_CONF to a softhsm2.conf whose directories.tokendir is a scratch \
     directory";

/// What the harness provides.
pub(crate) struct Env {
    /// The PKCS#11 module.
    pub(crate) module: PathBuf,
    /// Its token directory.
    pub(crate) tokendir: PathBuf,
    /// The module, initialized in this process (shared with the stores under test).
    pkcs11: Pkcs11,
    /// The labels of the tokens made for this process's tests.
    pool: Vec<String>,
}

/// How many tokens the tests of this binary may take (each test takes one; `TestToken::new`
/// says so when they run out).
pub(crate) const TOKEN_POOL: usize = 48;

/// Makes [`TOKEN_POOL`] tokens through the freshly initialized module, one after the other:
/// `C_InitToken` on SoftHSM's free slot, then `C_InitPIN` as the security officer (what
/// `softhsm2-util --init-token --free` does). Runs inside [`env`]'s one-time initialization, so
/// no other thread uses the module meanwhile. Returns their labels.
fn make_tokens(p: &Pkcs11) -> Vec<String> {
    let labels: Vec<String> = (0..TOKEN_POOL)
        // Fixed width: pkcs11-tool's --token-label matches a prefix, so "kh-1-4" would also
        // pick "kh-1-40".
        .map(|n| format!("kh-{}-{n:03}", std::process::id()))
        .collect();
    for label in &labels {
        let free = p
            .get_all_slots()
            .unwrap()
            .into_iter()
            .find(|s| p.get_token_info(*s).is_ok_and(|t| !t.token_initialized()))
            .expect("SoftHSM always offers a free slot");
        p.init_token(free, &AuthPin::from(SO_PIN), label).unwrap();
        let session = p.open_rw_session(free).unwrap();
        session
            .login(UserType::So, Some(&AuthPin::from(SO_PIN)))
            .unwrap();
        session.init_pin(&AuthPin::from(USER_PIN)).unwrap();
        session.logout().unwrap();
    }
    // the slot list call that adds the next free slot, while still alone in the module
    p.get_all_slots().unwrap();
    labels
}

/// The harness's environment, checked once; panics with how to run the tests if it is missing.
pub(crate) fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // Module and SOFTHSM2_CONF discovery (failing with how to run the tests) is shared with
        // the facade's and the CLI's tests.
        let softhsm = keyhaven_testkit::devices::SoftHsm::from_env();
        let module = softhsm.module().to_path_buf();
        let tokendir = softhsm.tokendir().to_path_buf();
        let pkcs11 = Pkcs11::new(&module).unwrap();
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize of {}: {e}", module.display()),
        }
        let pool = make_tokens(&pkcs11);
        Env {
            module,
            tokendir,
            pkcs11,
            pool,
        }
    })
}

/// A fresh, empty token of this test's own.
pub(crate) struct TestToken {
    /// The token's label (unique in the token directory).
    pub(crate) label: String,
}

impl TestToken {
    /// The next unused token of the pool.
    pub(crate) fn new() -> TestToken {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let env = env();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let label = env.pool.get(n).unwrap_or_else(|| {
            panic!(
                "all {TOKEN_POOL} pre-made tokens are taken: raise TOKEN_POOL in \
                 tests/it/token.rs"
            )
        });
        TestToken {
            label: label.clone(),
        }
    }

    /// The store configuration for this token, with a PIN.
    pub(crate) fn config_with_pin(&self, pin: &str) -> Pkcs11Config {
        Pkcs11Config::new(
            &env().module,
            TokenSelector::Label(self.label.clone()),
            SecretString::from(pin),
        )
    }

    /// The store configuration for this token.
    pub(crate) fn config(&self) -> Pkcs11Config {
        self.config_with_pin(USER_PIN)
    }

    /// A store on this token.
    pub(crate) fn store(&self) -> Pkcs11Store {
        Pkcs11Store::open(self.config()).unwrap()
    }

    /// The token's directory under the token directory (SoftHSM names it by a UUID; the label
    /// is in its `token.object`).
    pub(crate) fn directory(&self) -> PathBuf {
        let needle = self.label.as_bytes();
        for entry in std::fs::read_dir(&env().tokendir).unwrap() {
            let dir = entry.unwrap().path();
            let Ok(bytes) = std::fs::read(dir.join("token.object")) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                // the label is padded with blanks to 32 bytes: make sure it is not a prefix of
                // a longer label
                let at = bytes
                    .windows(needle.len())
                    .position(|w| w == needle)
                    .unwrap();
                let next = bytes.get(at + needle.len()).copied();
                if matches!(next, Some(b' ') | None) {
                    return dir;
                }
            }
        }
        panic!("no token directory holds token {}", self.label)
    }
}

/// Runs a command-line tool with the harness's `SOFTHSM2_CONF` (inherited), failing clearly if
/// it is not installed.
pub(crate) fn tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{program}` ({e}): install it (softhsm2-util: softhsm2, pkcs11-tool: \
                 opensc) or {HOW_TO_RUN}"
            )
        })
}

/// `pkcs11-tool --module M --token-label L --login --pin P ARGS`; panics with its output if it
/// fails.
pub(crate) fn pkcs11_tool(token: &TestToken, args: &[&str]) -> String {
    let module = env().module.to_str().unwrap().to_owned();
    let mut all = vec![
        "--module",
        &module,
        "--token-label",
        &token.label,
        "--login",
        "--pin",
        USER_PIN,
    ];
    all.extend_from_slice(args);
    let out = tool("pkcs11-tool", &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pkcs11-tool {args:?} failed:\n{text}");
    text
}

/// The module path as given to the stores.
pub(crate) fn module() -> &'static Path {
    &env().module
}

/// Logs the user out of `token` through a session of the test's own: PKCS#11 login state is per
/// application and token, so every session of every store on it loses its login.
pub(crate) fn logout_everywhere(token: &TestToken) {
    let session = env().pkcs11.open_ro_session(slot_of(token)).unwrap();
    session.logout().unwrap();
}

/// The slot holding `token`.
fn slot_of(token: &TestToken) -> cryptoki::slot::Slot {
    let p = &env().pkcs11;
    p.get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == token.label)
        })
        .unwrap()
}

/// The security attributes (and, if readable, the value) of the private key with this CKA_ID.
/// Needs a store logged in to the token in this process.
pub(crate) fn private_key_attributes(token: &TestToken, cka_id: &[u8]) -> Vec<Attribute> {
    let session = env().pkcs11.open_ro_session(slot_of(token)).unwrap();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(cka_id.to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    session
        .get_attributes(
            found[0],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Sign,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Label,
                AttributeType::Value,
            ],
        )
        .unwrap()
}

/// Creates a token object from `template` in a read-write session (needs a store logged in to
/// the token in this process): what another program with the PIN could put there.
pub(crate) fn create_object(token: &TestToken, template: &[Attribute]) {
    let session = env().pkcs11.open_rw_session(slot_of(token)).unwrap();
    session.create_object(template).unwrap();
}
