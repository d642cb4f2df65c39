//! Exit codes, and turning an error into one line and one code.

use keyhaven::{CoreError, Error as KhError, ErrorKind};

use crate::output::errln;

/// Success (for `verify`: the signature is valid).
pub const OK: u8 = 0;
/// `verify`: the signature is invalid.
pub const VERIFY_FAILED: u8 = 1;
/// Bad arguments (clap's usage errors), or a confirmation needed without a terminal.
pub const USAGE: u8 = 2;
/// A key, backend or file was not found, or there is no default key.
pub const NOT_FOUND: u8 = 3;
/// Wrong passphrase, or locked (no passphrase available).
pub const BAD_PASSPHRASE: u8 = 4;
/// The key or backend cannot do this (signing with X25519, exporting a hardware key).
pub const UNSUPPORTED: u8 = 5;
/// Permission denied, including unsafe permissions on a store's files.
pub const PERMISSION_DENIED: u8 = 6;
/// Damaged data: a truncated or altered record.
pub const CORRUPT: u8 = 7;
/// Something with that name already exists.
pub const ALREADY_EXISTS: u8 = 8;
/// Malformed input: PEM, hex, digest length, configuration, an ambiguous reference.
pub const INVALID_INPUT: u8 = 9;
/// A backend cannot be reached (its keys cannot be used; new keys go to the fallback only if
/// one is allowed).
pub const UNAVAILABLE: u8 = 10;
/// An I/O error.
pub const IO: u8 = 11;
/// The key is revoked.
pub const REVOKED: u8 = 12;
/// `client secret get --accept-capability`: the secret's owner gave a capability token instead
/// of the secret (this key's tier is below the secret's), and it was written out.
pub const CAPABILITY_INSTEAD: u8 = 13;
/// An internal error (a bug).
pub const INTERNAL: u8 = 70;

/// A problem with a passphrase other than the backends' (the passphrase of a key file being
/// imported, or of an export), with the option that supplies it, so the hint names that option
/// rather than `KEYHAVEN_PASSPHRASE`.
#[derive(Debug)]
pub(crate) struct OtherPassphrase {
    /// The command-line option that gives this passphrase, e.g. `--key-passphrase-file`.
    pub(crate) option: &'static str,
    pub(crate) source: CoreError,
}

impl OtherPassphrase {
    /// Wraps passphrase errors (wrong, or none available) of `option`'s passphrase; other errors
    /// pass through unchanged.
    pub(crate) fn wrap(option: &'static str, e: CoreError) -> anyhow::Error {
        match e.kind() {
            ErrorKind::BadPassphrase | ErrorKind::Locked => {
                OtherPassphrase { option, source: e }.into()
            }
            _ => e.into(),
        }
    }
}

impl std::fmt::Display for OtherPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for OtherPassphrase {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A server that presents another key than the one expected (exit code 6): nothing was sent.
#[derive(Debug)]
pub(crate) struct TrustError(pub(crate) String);

impl std::fmt::Display for TrustError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrustError {}

/// A usage problem found after parsing (exit code [`USAGE`]).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error kind. [`ErrorKind::BadSignature`] is [`INTERNAL`]: `verify`
/// reports an invalid signature itself ([`VERIFY_FAILED`]); anywhere else (the quickstart's
/// self-check) a signature that does not verify is a bug.
pub fn code_of_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::AlreadyExists => ALREADY_EXISTS,
        ErrorKind::Unsupported => UNSUPPORTED,
        ErrorKind::InvalidInput => INVALID_INPUT,
        ErrorKind::PermissionDenied => PERMISSION_DENIED,
        ErrorKind::BadPassphrase | ErrorKind::Locked => BAD_PASSPHRASE,
        ErrorKind::Corrupt => CORRUPT,
        ErrorKind::Revoked => REVOKED,
        ErrorKind::Unavailable => UNAVAILABLE,
        ErrorKind::Io => IO,
        _ => INTERNAL,
    }
}

/// What to do about an error of this kind.
fn hint_of_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => {
            "Run `keyhaven key list` to see the keys and `keyhaven backend list` for the backends"
        }
        ErrorKind::AlreadyExists => {
            "Choose another name or label, or remove the existing one first"
        }
        ErrorKind::Unsupported => {
            "Use a key or backend that supports this (see `keyhaven key show` and `keyhaven doctor`)"
        }
        ErrorKind::InvalidInput => "Check the input (see `keyhaven --help`)",
        ErrorKind::PermissionDenied => {
            "Restrict the permissions as the message says (chmod 600 for files, 700 for directories) or run as the owner"
        }
        ErrorKind::BadPassphrase => {
            "Check KEYHAVEN_PASSPHRASE or the --passphrase-file; nothing was changed"
        }
        ErrorKind::Locked => "Set KEYHAVEN_PASSPHRASE or pass --passphrase-file FILE",
        ErrorKind::Corrupt => {
            "Restore the named file from a backup or delete that key; the other keys remain usable"
        }
        ErrorKind::Revoked => "Use another key",
        ErrorKind::Unavailable => "Run `keyhaven doctor` to see which backends are reachable",
        ErrorKind::Io => "Check the path, the permissions and the free disk space",
        _ => "This is a bug in keyhaven: please report it",
    }
}

/// What to do about a file that could not be read or written: never the advice for a missing
/// key (a file named on the command line is not a key).
fn hint_of_io(e: &std::io::Error, kind: ErrorKind) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "Check the path: that file or directory does not exist".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            "Check that you may read (or write) that file, and its directory".to_owned()
        }
        _ => hint_of_kind(kind).to_owned(),
    }
}

/// A hint more precise than the kind's, for damaged data that is not a key store's record.
fn hint_of_core(e: &CoreError) -> Option<String> {
    // Advice that names a command belongs here, not in the library's message: the layer an
    // error came from says which command helps.
    if let CoreError::Unavailable { backend, .. } = e
        && backend == "compromise response"
    {
        // Not a backend: a hook or a step failed, and the message names it.
        return Some(
            "The steps that succeeded stand; `keyhaven compromise show ID` lists each step's \
             outcome"
                .into(),
        );
    }
    if let CoreError::Other(o) = e
        && o.kind() == ErrorKind::Locked
        && o.origin() == "keyring"
    {
        // The OS keyring is locked, not keyhaven's store: a passphrase would not help.
        return Some(
            "Unlock the keyring as the message says; `keyhaven doctor` shows which keyrings are \
             reachable and locked"
                .into(),
        );
    }
    if let CoreError::Other(o) = e
        && o.kind() == ErrorKind::NotFound
        && o.origin() == "compromise"
    {
        return Some("`keyhaven compromise list` shows the reports".into());
    }
    if let CoreError::Other(o) = e
        && let Some(keyhaven::backup::BackupError::Expired { .. }) =
            o.downcast_ref::<keyhaven::backup::BackupError>()
    {
        return Some(
            "Its creator meant it not to be restored after that time; pass --allow-expired to \
             restore it anyway"
                .into(),
        );
    }
    if let CoreError::Io { source, .. } = e {
        return Some(hint_of_io(source, e.kind()));
    }
    if e.is(ErrorKind::PermissionDenied) && e.to_string().contains("no access rule allows it") {
        return Some(
            "The home's access policy (`[access] policy` in keyhaven.toml) does not allow this \
             caller: ask the home's owner to add a rule"
                .into(),
        );
    }
    let CoreError::Corrupt { what, .. } = e else {
        return None;
    };
    if what.contains("/audit/audit.") || what.contains("audit log") {
        Some(
            "The audit log is damaged, so key operations stop (fail closed): `keyhaven audit \
             verify` shows the first bad record, and `keyhaven audit recover` sets the damaged \
             file aside as evidence and records a signed break"
                .into(),
        )
    } else if what.ends_with("integrity.manifest") {
        Some(
            "The home's integrity manifest cannot vouch for its state: restore the home from a \
             backup (`keyhaven integrity status` says which backend anchors it)"
                .into(),
        )
    } else if e.to_string().contains("integrity manifest") {
        Some(
            "That file was changed outside keyhaven: restore it from a backup; `keyhaven \
             integrity verify` lists every file affected"
                .into(),
        )
    } else if what.starts_with("backup") || what.starts_with("share") {
        Some(
            "Use an intact copy of the backup or share (`keyhaven backup verify FILE` checks a \
             backup without its secret); nothing was restored"
                .into(),
        )
    } else if what.starts_with("revocation statement") {
        Some("Get the revocation list again from its issuer; this one was not used".into())
    } else {
        None
    }
}

/// What to do about a failed call to a keyhaven server.
fn hint_of_client(e: &keyhaven_client::ClientError) -> String {
    use keyhaven_client::ClientError;
    match e {
        ClientError::Problem(p) => match p.kind.rsplit(':').next().unwrap_or("") {
            "unknown-key" => "Register the key first with `keyhaven client register`".into(),
            "key-not-accepted" => {
                "Sign with an active key of this client (`--key`); `keyhaven client status` \
                 with it lists them"
                    .into()
            }
            "stale-signature" => "Check this machine's clock (NTP)".into(),
            "forbidden" => {
                "Use an admin's key (`keyhaven serve init --admin KEY` on the server's home)".into()
            }
            "rate-limited" => "Wait a moment and retry".into(),
            "unavailable" => {
                "Retry when the server's master key device or database is back; nothing was \
                 released or changed"
                    .into()
            }
            "no-broker" => {
                "The server has no key broker: run `keyhaven serve init-broker` on its home, \
                 then restart it"
                    .into()
            }
            "undecryptable" => {
                "Nothing was decrypted: the ciphertext was changed, or it belongs to another \
                 transit key or client"
                    .into()
            }
            "key-exists" => "The key is registered already: `keyhaven client status`".into(),
            "bad-continuity-proof" => {
                "Rotate with `keyhaven key rotate`, then send the chain again; \
                 `keyhaven verify-continuity --key KEY` checks it locally"
                    .into()
            }
            _ => "The server's answer above says what to fix".into(),
        },
        ClientError::Transport { .. } => {
            "Check --server and that `keyhaven serve` runs there".into()
        }
        ClientError::Unauthentic(_) => {
            "Nothing from that answer was used: it is not signed by the server key this home \
             pinned (HOME/client/servers.json) for this request; check which server answers"
                .into()
        }
        ClientError::Receipt(_) => {
            "Nothing from that release was used: its receipt is not the pinned server key's \
             for this release; check which server answers"
                .into()
        }
        ClientError::BadResponse(_) => {
            "The server answered something this keyhaven does not understand: check that \
             client and server are of the same version"
                .into()
        }
        ClientError::OutcomeUnknown(_) => {
            "Check the state with `keyhaven client status` before retrying: the request may \
             have been carried out"
                .into()
        }
        _ => hint_of_kind(e.kind()).to_owned(),
    }
}

/// The exit code for an error, as `keyhaven` exits with it.
pub fn code_of(err: &anyhow::Error) -> u8 {
    classify(err).0
}

/// The exit code and the `what to do` sentence for an error: the first error in the chain
/// that keyhaven knows decides.
pub(crate) fn classify(err: &anyhow::Error) -> (u8, String) {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return (USAGE, "See `keyhaven --help`".into());
        }
        if let Some(p) = cause.downcast_ref::<OtherPassphrase>() {
            let kind = p.source.kind();
            let hint = match kind {
                ErrorKind::BadPassphrase => format!(
                    "Check the passphrase given with {} (or at the prompt); nothing was changed",
                    p.option
                ),
                ErrorKind::Locked => format!("Pass {} FILE", p.option),
                _ => hint_of_kind(kind).to_owned(),
            };
            return (code_of_kind(kind), hint);
        }
        if let Some(e) = cause.downcast_ref::<keyhaven_client::ClientError>() {
            return (code_of_kind(e.kind()), hint_of_client(e));
        }
        if let Some(e) = cause.downcast_ref::<keyhaven_server::ServeError>() {
            use keyhaven_server::ServeError;
            match e {
                ServeError::NotSetUp(_) => {
                    return (
                        code_of_kind(ErrorKind::NotFound),
                        "Run `keyhaven serve init`".into(),
                    );
                }
                ServeError::Busy(_) => {
                    return (
                        code_of_kind(ErrorKind::Unavailable),
                        "Stop the running server first (SIGTERM lets it finish its requests)"
                            .into(),
                    );
                }
                ServeError::Setup(_) => {
                    return (
                        code_of_kind(ErrorKind::InvalidInput),
                        "Change what the message names".into(),
                    );
                }
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<TrustError>() {
            let _ = e;
            return (
                code_of_kind(ErrorKind::PermissionDenied),
                "Compare the server key's fingerprint with what `keyhaven serve` printed; \
                 nothing was sent"
                    .into(),
            );
        }
        if let Some(e) = cause.downcast_ref::<keyhaven_server::StorageError>() {
            let kind = match e {
                keyhaven_server::StorageError::KeyExists(_) => ErrorKind::AlreadyExists,
                keyhaven_server::StorageError::NoClient(_)
                | keyhaven_server::StorageError::NoKey(_) => ErrorKind::NotFound,
                _ => ErrorKind::Io,
            };
            return (
                code_of_kind(kind),
                "Check the server database named above (HOME/server/server.db); nothing was \
                 changed"
                    .into(),
            );
        }
        if let Some(e) = cause.downcast_ref::<KhError>() {
            let kind = e.kind();
            let hint = match e {
                KhError::NoDefaultKey(_) => {
                    "Pass --key ID|LABEL, or choose one with `keyhaven key set-default ID|LABEL`"
                        .to_owned()
                }
                KhError::NoBackend => {
                    "Pass --backend NAME, or set one up with `keyhaven quickstart` \
                                       or `keyhaven backend add encrypted NAME`"
                        .to_owned()
                }
                KhError::Ambiguous { .. } => {
                    "Name the key as BACKEND:ID (see `keyhaven key list`)".to_owned()
                }
                KhError::UnknownBackend { .. } => {
                    "Run `keyhaven backend list`, or add it with `keyhaven backend add`".to_owned()
                }
                KhError::Config { .. } => {
                    "Fix keyhaven.toml (or use `keyhaven backend add/remove`)".to_owned()
                }
                KhError::Pin { backend, .. } if kind == ErrorKind::BadPassphrase => format!(
                    "Check the user PIN of backend '{backend}' (pin_env or pin_file under \
                     [backends.{backend}] in keyhaven.toml, or the prompt); it was tried once \
                     and nothing was changed"
                ),
                KhError::Pin { backend, .. } => format!(
                    "Give the token's user PIN: set the variable its pin_env names, or fix its \
                     pin_file (under [backends.{backend}] in keyhaven.toml), or run keyhaven on a \
                     terminal to be asked; a locked PIN is reset with the security officer PIN"
                ),
                KhError::Core(c) | KhError::Backend { source: c, .. } => {
                    hint_of_core(c).unwrap_or_else(|| hint_of_kind(kind).to_owned())
                }
                _ => hint_of_kind(kind).to_owned(),
            };
            return (code_of_kind(kind), hint);
        }
        if let Some(e) = cause.downcast_ref::<CoreError>() {
            let kind = e.kind();
            return (
                code_of_kind(kind),
                hint_of_core(e).unwrap_or_else(|| hint_of_kind(kind).to_owned()),
            );
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            let kind = ErrorKind::of_io(e);
            return (code_of_kind(kind), hint_of_io(e, kind));
        }
    }
    (INTERNAL, hint_of_kind(ErrorKind::Internal).to_owned())
}

/// The error as one line: each cause once, joined by `: `.
pub(crate) fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        let msg = msg.trim();
        if msg.is_empty() || line.contains(msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(msg);
    }
    line.replace(['\n', '\r'], " ")
}

/// Prints `error: <what>. <what to do>` on standard error and returns the exit code.
pub(crate) fn report(err: &anyhow::Error) -> u8 {
    let (code, hint) = classify(err);
    let mut what = one_line(err);
    while what.ends_with('.') {
        what.pop();
    }
    if hint.is_empty() {
        errln!("error: {what}.");
    } else {
        errln!("error: {what}. {hint}.");
    }
    code
}
