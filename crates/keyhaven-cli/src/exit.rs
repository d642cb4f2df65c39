//! Exit codes, and turning an error into one line and one code.

use keyhaven::{CoreError, Error as KhError, ErrorKind};

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
/// A backend cannot be reached (and no fallback is allowed).
pub const UNAVAILABLE: u8 = 10;
/// An I/O error.
pub const IO: u8 = 11;
/// The key is revoked.
pub const REVOKED: u8 = 12;
/// An internal error (a bug).
pub const INTERNAL: u8 = 70;

/// A usage problem found after parsing (exit code [`USAGE`]).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error kind.
pub(crate) fn code_of_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::AlreadyExists => ALREADY_EXISTS,
        ErrorKind::Unsupported => UNSUPPORTED,
        ErrorKind::InvalidInput => INVALID_INPUT,
        ErrorKind::PermissionDenied => PERMISSION_DENIED,
        ErrorKind::BadPassphrase | ErrorKind::Locked => BAD_PASSPHRASE,
        ErrorKind::Corrupt => CORRUPT,
        ErrorKind::Revoked => REVOKED,
        ErrorKind::BadSignature => VERIFY_FAILED,
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
        ErrorKind::Locked => "Set KEYHAVEN_PASSPHRASE or pass --passphrase-file",
        ErrorKind::Corrupt => {
            "Restore the named file from a backup or delete that key; the other keys remain usable"
        }
        ErrorKind::Revoked => "Use another key",
        ErrorKind::BadSignature => "The signature does not match",
        ErrorKind::Unavailable => "Run `keyhaven doctor` to see which backends are reachable",
        ErrorKind::Io => "Check the path, the permissions and the free disk space",
        _ => "This is a bug in keyhaven: please report it",
    }
}

/// The exit code and the `what to do` sentence for an error: the first error in the chain
/// that keyhaven knows decides.
pub(crate) fn classify(err: &anyhow::Error) -> (u8, String) {
    for cause in err.chain() {
        if let Some(u) = cause.downcast_ref::<UsageError>() {
            let _ = u;
            return (USAGE, "See `keyhaven --help`".into());
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
                                       or `keyhaven backend add NAME --type encrypted`"
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
                _ => hint_for(kind, e.core()),
            };
            return (code_of_kind(kind), hint);
        }
        if let Some(e) = cause.downcast_ref::<CoreError>() {
            let kind = ErrorKind::of_core(e);
            return (code_of_kind(kind), hint_for(kind, Some(e)));
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            let kind = ErrorKind::of_io(e);
            return (code_of_kind(kind), hint_of_kind(kind).to_owned());
        }
    }
    (INTERNAL, hint_of_kind(ErrorKind::Internal).to_owned())
}

fn hint_for(kind: ErrorKind, core: Option<&CoreError>) -> String {
    // Locked errors from the passphrase source already say what to do.
    if let Some(CoreError::Locked(m)) = core
        && m.contains("KEYHAVEN_PASSPHRASE")
    {
        return String::new();
    }
    hint_of_kind(kind).to_owned()
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
        eprintln!("error: {what}.");
    } else {
        eprintln!("error: {what}. {hint}.");
    }
    code
}
