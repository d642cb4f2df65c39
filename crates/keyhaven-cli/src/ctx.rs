//! What every command needs: the home, the passphrase source, and a way to build the manager.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keyhaven::secrecy::{ExposeSecret, SecretString};
use keyhaven::{
    CoreError, KeyManager, PassphraseProvider, PassphrasePurpose, PassphraseRequest, Warning,
};

/// The environment variable holding the passphrase of encrypted backends.
pub(crate) const PASSPHRASE_ENV: &str = "KEYHAVEN_PASSPHRASE";

pub(crate) struct Ctx {
    home: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
}

impl Ctx {
    pub(crate) fn new(home: Option<PathBuf>, passphrase_file: Option<PathBuf>) -> Self {
        Ctx {
            home,
            passphrase_file,
        }
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
        }
    }

    pub(crate) fn manager(&self) -> Result<KeyManager> {
        let home = self.home()?;
        Ok(KeyManager::open(home, self.passphrases())?)
    }
}

/// Prints the manager's warnings on standard error.
pub(crate) fn print_warnings(manager: &KeyManager) {
    for w in manager.take_warnings() {
        match w {
            Warning::Fallback { .. } => eprintln!("WARNING: {w}"),
            _ => eprintln!("warning: {w}"),
        }
    }
}

/// Whether we may ask the user something.
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Passphrases for encrypted backends: `--passphrase-file`, else `KEYHAVEN_PASSPHRASE`, else a
/// prompt on the terminal (twice, compared, for a new store).
pub(crate) struct CliPassphrases {
    file: Option<PathBuf>,
}

impl PassphraseProvider for CliPassphrases {
    fn passphrase(&self, request: &PassphraseRequest) -> Result<SecretString, CoreError> {
        let new = request.purpose == PassphrasePurpose::Create;
        let given = if let Some(f) = &self.file {
            Some(read_secret_file(f)?)
        } else {
            std::env::var(PASSPHRASE_ENV).ok().map(SecretString::from)
        };
        if let Some(p) = given {
            if new && p.expose_secret().is_empty() {
                return Err(CoreError::InvalidInput(
                    "the passphrase for a new store may not be empty".into(),
                ));
            }
            return Ok(p);
        }
        let what = format!(
            "backend '{}' ({})",
            request.backend,
            request.location.display()
        );
        if new {
            prompt_new(&format!("New passphrase for {what}"))
        } else {
            prompt(&format!("Passphrase for {what}: "))
        }
    }
}

fn no_terminal() -> CoreError {
    CoreError::Locked(format!(
        "a passphrase is needed and standard input is not a terminal: set {PASSPHRASE_ENV} or \
         pass --passphrase-file FILE"
    ))
}

/// Reads a secret from the first line of a file (a trailing newline is not part of it).
pub(crate) fn read_secret_file(path: &Path) -> Result<SecretString, CoreError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CoreError::io(format!("read passphrase file {}", path.display()), e))?;
    let secret = SecretString::from(text);
    let line = secret
        .expose_secret()
        .split(['\n', '\r'])
        .next()
        .unwrap_or_default();
    Ok(SecretString::from(line))
}

/// Asks once, without echo.
pub(crate) fn prompt(message: &str) -> Result<SecretString, CoreError> {
    if !interactive() {
        return Err(no_terminal());
    }
    rpassword::prompt_password(message)
        .map(SecretString::from)
        .map_err(|e| CoreError::io("read the passphrase from the terminal", e))
}

/// Asks twice for a new secret and checks both entries match and are not empty.
pub(crate) fn prompt_new(what: &str) -> Result<SecretString, CoreError> {
    let first = prompt(&format!("{what}: "))?;
    if first.expose_secret().is_empty() {
        return Err(CoreError::InvalidInput(
            "an empty passphrase is not allowed".into(),
        ));
    }
    let second = prompt("Repeat it: ")?;
    if first.expose_secret() != second.expose_secret() {
        return Err(CoreError::InvalidInput("the two passphrases differ".into()));
    }
    Ok(first)
}

/// Asks a yes/no question on the terminal; anything but y/yes is no.
pub(crate) fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().context("write to the terminal")?;
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
