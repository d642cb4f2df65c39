//! What every command needs: the home, the passphrase source, and a way to build the manager.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keyhaven::secrecy::{ExposeSecret, SecretString};
use keyhaven::zeroize::Zeroizing;
use keyhaven::{
    CoreError, KeyManager, PassphraseProvider, PassphrasePurpose, PassphraseRequest, SecretBytes,
    Warning,
};

use crate::output::errln;

/// Whether `--allow-weak-passphrase` was given (set once, at startup).
static ALLOW_WEAK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records `--allow-weak-passphrase`.
pub(crate) fn allow_weak_passphrases(allow: bool) {
    ALLOW_WEAK.store(allow, std::sync::atomic::Ordering::Relaxed);
}

/// The shortest passphrase keyhaven takes for something new (a store, a backup, an export)
/// without `--allow-weak-passphrase`.
pub(crate) const MIN_PASSPHRASE_CHARS: usize = 12;

/// Refuses a passphrase for something new (`what`) that is empty, or, unless
/// `--allow-weak-passphrase` was given, shorter than [`MIN_PASSPHRASE_CHARS`] characters or
/// made of fewer than 5 different characters (`aaaaaaaaaaaa`, `121212121212`). Argon2id makes
/// each guess slow, not a short passphrase long.
pub(crate) fn check_new_passphrase(pass: &SecretString, what: &str) -> Result<(), CoreError> {
    let p = pass.expose_secret();
    if p.is_empty() {
        return Err(CoreError::InvalidInput(format!(
            "the {what} may not be empty"
        )));
    }
    if ALLOW_WEAK.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let chars = p.chars().count();
    let distinct = p
        .chars()
        .collect::<std::collections::BTreeSet<char>>()
        .len();
    if chars < MIN_PASSPHRASE_CHARS || distinct < 5 {
        return Err(CoreError::InvalidInput(format!(
            "the {what} is too weak ({}): choose at least {MIN_PASSPHRASE_CHARS} characters, \
             a few random words for instance, or pass --allow-weak-passphrase to take it anyway",
            if chars < MIN_PASSPHRASE_CHARS {
                format!("{chars} characters")
            } else {
                format!("only {distinct} different characters")
            }
        )));
    }
    Ok(())
}

/// The environment variable holding the passphrase of encrypted backends.
pub(crate) const PASSPHRASE_ENV: &str = "KEYHAVEN_PASSPHRASE";

pub(crate) struct Ctx {
    home: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    /// `--request-id`: recorded with every audited operation of this command.
    request_id: Option<String>,
    /// The store passphrases handed out so far (to tell a backup's passphrase apart).
    handed: Handed,
}

/// The store passphrases handed to the manager, as HMAC-SHA256 digests under a random key of
/// this process (never the passphrases themselves): enough to tell whether a backup's
/// passphrase is one of them, in constant time, and nothing else.
#[derive(Clone, Default)]
struct Handed(std::sync::Arc<std::sync::Mutex<HandedInner>>);

#[derive(Default)]
struct HandedInner {
    key: Option<Zeroizing<[u8; 32]>>,
    digests: Vec<[u8; 32]>,
}

impl HandedInner {
    fn digest(&mut self, secret: &SecretString) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let key = self.key.get_or_insert_with(|| {
            let mut k = Zeroizing::new([0u8; 32]);
            // A fixed key if the system has no randomness: digests still never leave the process.
            let _ = keyhaven::fill_random(k.as_mut());
            k
        });
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length")); // ok: infallible
        mac.update(secret.expose_secret().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl Handed {
    fn record(&self, secret: &SecretString) {
        let mut inner = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let d = inner.digest(secret);
        inner.digests.push(d);
    }

    fn contains(&self, secret: &SecretString) -> bool {
        use subtle::ConstantTimeEq;
        let mut inner = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let d = inner.digest(secret);
        inner
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, h| acc | h.ct_eq(&d))
            .into()
    }
}

impl Ctx {
    pub(crate) fn new(home: Option<PathBuf>, passphrase_file: Option<PathBuf>) -> Self {
        Ctx {
            home,
            passphrase_file,
            request_id: None,
            handed: Handed::default(),
        }
    }

    /// Whether `secret` is a store passphrase of this run (given with --passphrase-file or
    /// KEYHAVEN_PASSPHRASE, or typed at a prompt): compared in constant time.
    pub(crate) fn is_store_passphrase(&self, secret: &SecretString) -> bool {
        let given = match &self.passphrase_file {
            Some(f) => read_secret_file(f).ok(),
            None => std::env::var(PASSPHRASE_ENV)
                .ok()
                .map(|v| secret_string(&Zeroizing::new(v))),
        };
        if let Some(g) = &given {
            self.handed.record(g);
        }
        self.handed.contains(secret)
    }

    /// The home: `--home`, else `KEYHAVEN_HOME` (both through clap), else the platform data
    /// directory.
    pub(crate) fn home(&self) -> Result<PathBuf> {
        if let Some(h) = &self.home {
            return std::path::absolute(h)
                .map_err(|e| CoreError::io(format!("resolve home {}", h.display()), e).into());
        }
        let data = dirs::data_dir().ok_or_else(|| {
            CoreError::NotFound(
                "the platform data directory (no HOME?); pass --home DIR or set KEYHAVEN_HOME"
                    .into(),
            )
        })?;
        Ok(data.join("keyhaven"))
    }

    pub(crate) fn passphrases(&self) -> CliPassphrases {
        CliPassphrases {
            file: self.passphrase_file.clone(),
            handed: self.handed.clone(),
        }
    }

    /// With `--request-id`.
    pub(crate) fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    /// `--request-id`, if given.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    pub(crate) fn manager(&self) -> Result<KeyManager> {
        let home = self.home()?;
        let m = KeyManager::open(home, self.passphrases())?;
        Ok(match &self.request_id {
            Some(id) => {
                let caller = m
                    .caller()
                    .with_request_id(id.clone())
                    .map_err(|e| CoreError::InvalidInput(format!("--request-id: {e}")))?;
                m.with_caller(caller)
            }
            None => m,
        })
    }
}

/// Prints the manager's warnings on standard error.
pub(crate) fn print_warnings(manager: &KeyManager) {
    for w in manager.take_warnings() {
        match w {
            Warning::Fallback { .. } => errln!("WARNING: {w}"),
            _ => errln!("warning: {w}"),
        }
    }
}

/// The environment variable a token's PIN is read from when the configuration does not say
/// (and always for a token that anchors the home's integrity).
pub(crate) const TOKEN_PIN_ENV: &str = "KEYHAVEN_TOKEN_PIN";

/// Whether we may ask the user something.
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Passphrases for encrypted backends: `--passphrase-file`, else `KEYHAVEN_PASSPHRASE`, else a
/// prompt on the terminal naming the backend (twice, compared, for a new store). Token PINs (of
/// `pkcs11` backends without `pin_env` or `pin_file`, and of a token that anchors the home):
/// `KEYHAVEN_TOKEN_PIN`, else a prompt on the terminal.
pub(crate) struct CliPassphrases {
    file: Option<PathBuf>,
    handed: Handed,
}

impl PassphraseProvider for CliPassphrases {
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        let p = self.answer(request)?;
        if request.purpose != PassphrasePurpose::TokenPin {
            self.handed.record(&p);
        }
        Ok(p)
    }
}

impl CliPassphrases {
    fn answer(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        if request.purpose == PassphrasePurpose::TokenPin {
            // Never the store passphrase (KEYHAVEN_PASSPHRASE, --passphrase-file): each wrong PIN
            // costs one of the token's tries. The backend's pin_env / pin_file, or the terminal.
            let what = request.describe();
            if let Ok(pin) = std::env::var(TOKEN_PIN_ENV) {
                return Ok(secret_string(&Zeroizing::new(pin)));
            }
            if !interactive() {
                return Err(CoreError::Locked(format!(
                    "{what} is needed and standard input is not a terminal (set \
                     {TOKEN_PIN_ENV})"
                )));
            }
            return prompt(&format!("{}: ", capitalized(&what)));
        }
        let new = request.purpose == PassphrasePurpose::Create;
        let given = if let Some(f) = &self.file {
            Some(read_secret_file(f)?)
        } else {
            std::env::var(PASSPHRASE_ENV)
                .ok()
                .map(|v| secret_string(&Zeroizing::new(v)))
        };
        if let Some(p) = given {
            if new {
                check_new_passphrase(&p, "passphrase for a new store")?;
            }
            return Ok(p);
        }
        let what = format!(
            "backend '{}' ({})",
            request.backend,
            request.location.display()
        );
        if !interactive() {
            // The hint (exit.rs) says how to give it.
            return Err(CoreError::Locked(format!(
                "{what} needs a passphrase and standard input is not a terminal"
            )));
        }
        if new {
            let p = prompt_new(&format!("New passphrase for {what}"))?;
            check_new_passphrase(&p, "passphrase for a new store")?;
            Ok(p)
        } else {
            prompt(&format!("Passphrase for {what}: "))
        }
    }
}

/// `s` with its first letter in upper case.
fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}

/// A `SecretString` holding a copy of `s` in an allocation of exactly its length (so no
/// reallocation leaves a copy behind); the caller zeroizes `s`.
fn secret_string(s: &str) -> SecretString {
    SecretString::from(Box::<str>::from(s))
}

/// Reads a secret from the first line of a file (the line ending is not part of it). The file
/// must be private (mode 0600 or stricter); its contents are held in zeroizing buffers only.
pub(crate) fn read_secret_file(path: &Path) -> Result<SecretString, CoreError> {
    let bytes = keyhaven::fs::read_private(path)?;
    let end = bytes
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(bytes.len());
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| {
        CoreError::InvalidInput(format!(
            "the first line of {} is not UTF-8 text",
            path.display()
        ))
    })?;
    Ok(secret_string(line))
}

/// Where a secret the user gives on the command line comes from: the file an option names,
/// else an environment variable, else the terminal (asked twice for a new secret), else
/// [`CoreError::Locked`] saying how to give it. The one place this order is written; every
/// secret option (backup, export, import, key passphrases) goes through it.
pub(crate) struct SecretSource<'a> {
    /// The option that names the file, e.g. `--backup-passphrase-file` (errors name it).
    pub(crate) option: &'static str,
    /// The file, if the option was given.
    pub(crate) file: Option<&'a Path>,
    /// The environment variable read when no file is given, if this secret has one.
    pub(crate) env: Option<&'static str>,
    /// What the secret is, for the prompt and the errors (`the passphrase of k.pem`).
    pub(crate) what: String,
    /// A new secret (to encrypt with): asked twice, and held to the minimum strength.
    pub(crate) new: bool,
    /// Added to the error when there is no way to ask (another way to go, say).
    pub(crate) otherwise: &'static str,
}

impl SecretSource<'_> {
    /// The secret.
    ///
    /// # Errors
    /// The file cannot be read or is not private; a new secret too weak; no terminal to ask
    /// (exit 4, naming the option).
    pub(crate) fn get(&self) -> anyhow::Result<SecretString> {
        let wrap = |e| crate::exit::OtherPassphrase::wrap(self.option, e);
        let secret = if let Some(f) = self.file {
            read_secret_file(f).map_err(wrap)?
        } else if let Some(v) = self.env.and_then(|var| std::env::var(var).ok()) {
            secret_string(&Zeroizing::new(v))
        } else if interactive() {
            if self.new {
                prompt_new(&capitalized(&self.what)).map_err(wrap)?
            } else {
                prompt(&format!("{}: ", capitalized(&self.what))).map_err(wrap)?
            }
        } else {
            let env = self.env.map(|v| format!(" or set {v}")).unwrap_or_default();
            return Err(wrap(CoreError::Locked(format!(
                "{} is needed and standard input is not a terminal: pass {} FILE{env}{}",
                self.what, self.option, self.otherwise
            ))));
        };
        if self.new {
            check_new_passphrase(&secret, &self.what).map_err(wrap)?;
        }
        Ok(secret)
    }
}

/// Asks once, without echo.
pub(crate) fn prompt(message: &str) -> Result<SecretString, CoreError> {
    if !interactive() {
        return Err(CoreError::Locked(
            "a passphrase is needed and standard input is not a terminal".into(),
        ));
    }
    let typed = Zeroizing::new(
        rpassword::prompt_password(message)
            .map_err(|e| CoreError::io("read the passphrase from the terminal", e))?,
    );
    Ok(secret_string(&typed))
}

/// Asks twice for a new secret and checks both entries match (in constant time) and are not
/// empty.
pub(crate) fn prompt_new(what: &str) -> Result<SecretString, CoreError> {
    let first = prompt(&format!("{what}: "))?;
    if first.expose_secret().is_empty() {
        return Err(CoreError::InvalidInput(
            "an empty passphrase is not allowed".into(),
        ));
    }
    let second = prompt("Repeat it: ")?;
    let same = SecretBytes::copy_from(first.expose_secret().as_bytes())
        == SecretBytes::copy_from(second.expose_secret().as_bytes());
    if !same {
        return Err(CoreError::InvalidInput("the two passphrases differ".into()));
    }
    Ok(first)
}

/// Asks a yes/no question on the terminal; anything but y/yes is no.
pub(crate) fn confirm(question: &str) -> Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")
        .and_then(|()| err.flush())
        .context("write to the terminal")?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
