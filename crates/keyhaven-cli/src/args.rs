//! The command line, declared with clap's derive API.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use keyhaven::{Algorithm, SignatureFormat};

const AFTER_HELP: &str = "\
Exit codes:
   0  success (for verify: the signature is valid)
   1  verification failed: the signature is invalid
   2  usage error (bad arguments, or a confirmation needed without a terminal)
   3  not found (key, backend, file, no default key)
   4  wrong passphrase or PIN, or locked (no passphrase or PIN available)
   5  unsupported (e.g. signing with an X25519 key, exporting a hardware key)
   6  permission denied, including unsafe file permissions on a store
   7  corrupt data (a damaged or truncated record)
   8  already exists
   9  invalid input (malformed PEM, wrong digest length, bad config, ambiguous reference)
  10  backend unavailable (token or TPM not reachable, drive not mounted)
  11  I/O error
  12  key revoked
  13  client secret get --accept-capability: a capability token came instead of the secret
  70  internal error

Environment:
  KEYHAVEN_HOME        the keyhaven home (default: the platform data directory + /keyhaven)
  KEYHAVEN_PASSPHRASE  the passphrase of encrypted backends (else --passphrase-file, else a prompt);
                       never used as a token PIN (a pkcs11 backend names its own --pin-env or
                       --pin-file, else the PIN is asked on the terminal)

  KEYHAVEN_PRINCIPAL   for root only: the principal root acts for (audit records, access rules);
                       everyone else is their OS account, whatever $USER says

Start with `keyhaven quickstart`.";

/// keyhaven: keys kept anywhere, behind one interface.
#[derive(Debug, Parser)]
#[command(name = "keyhaven", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// The keyhaven home: keyhaven.toml and the default backends' stores.
    #[arg(long, global = true, env = "KEYHAVEN_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,

    /// Read the passphrase of encrypted backends from this file (first line; the file must be
    /// mode 0600). Else KEYHAVEN_PASSPHRASE, else an interactive prompt.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,

    /// Take a passphrase for a new store, backup or export even if it is short (under 12
    /// characters) or repetitive.
    #[arg(long, global = true, env = "KEYHAVEN_ALLOW_WEAK_PASSPHRASE")]
    pub(crate) allow_weak_passphrase: bool,

    /// Your id for this request (a message or job id), recorded with every audited operation
    /// of this command (signatures, agreements, exports, rotations, ...): the same id used
    /// twice with one key shows up in `keyhaven compromise scan` as a replay.
    #[arg(long, global = true, env = "KEYHAVEN_REQUEST_ID", value_name = "ID")]
    pub(crate) request_id: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage keys: generate, list, show, set-default, delete, public, import, export.
    #[command(subcommand)]
    Key(crate::key::KeyCommand),
    /// Sign a digest, a file or standard input (with the default key unless --key is given).
    Sign(crate::sign::SignArgs),
    /// Verify a signature; exit 0 if valid, 1 if invalid.
    Verify(crate::sign::VerifyArgs),
    /// Declare backends in keyhaven.toml: list, add, remove, fallback.
    #[command(subcommand)]
    Backend(crate::backend::BackendCommand),
    /// Show which backends are configured and reachable, and how well their keys are protected.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set up a home with an encrypted backend and a default P-384 key, then sign and verify a
    /// sample.
    Quickstart,
    /// Rotate every key that is due by policy (HOME/rotation.toml); safe to run from cron.
    Rotate {
        /// Act on what is due (the only mode).
        #[arg(long, required = true)]
        due: bool,
        /// Only list what is due.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotation policies (check, explain) and the key broker's release policies (load, list,
    /// delete, check-release, explain-release).
    #[command(subcommand)]
    Policy(crate::rotation::PolicyCommand),
    /// Verify an identity's continuity proofs (old key signs the new, new countersigns); exit 0
    /// if the chain is valid.
    VerifyContinuity {
        /// The proof file (one or more proofs, oldest first). With --key and no file, the
        /// proofs stored in the home.
        #[arg(value_name = "PROOF")]
        proof: Option<PathBuf>,
        /// The first identity's public key (PEM): anyone holding it can check the chain.
        #[arg(long, value_name = "PEM_FILE", conflicts_with = "key")]
        old_public_key: Option<PathBuf>,
        /// A versioned key of this home (its version 1 starts the chain).
        #[arg(long, value_name = "ID|LABEL")]
        key: Option<String>,
    },
    /// One-time prekeys and the signed prekey of an identity key.
    #[command(subcommand)]
    Prekeys(crate::rotation::PrekeysCommand),
    /// Encrypted backups: create, inspect, verify, restore; Shamir custodian shares.
    #[command(subcommand)]
    Backup(crate::backup::BackupCommand),
    /// The audit log: verify it is whole and untouched, tail, search, export.
    #[command(subcommand)]
    Audit(crate::lifecycle::AuditCommand),
    /// Compromise reports: report, list, show, scan the audit log, respond.
    #[command(subcommand)]
    Compromise(crate::lifecycle::CompromiseCommand),
    /// Signed revocation statements: list them, export the list verifiers load.
    #[command(subcommand)]
    Revocations(crate::lifecycle::RevocationsCommand),
    /// The home's authenticated state: status, verify, seal, accept a file you edited.
    #[command(subcommand)]
    Integrity(crate::integrity::IntegrityCommand),
    /// Run the key server of this home (`serve init` sets it up first).
    Serve(crate::serve::ServeArgs),
    /// Register a key of this home with a keyhaven server; status, rotate, revoke, admin.
    Client(crate::client::ClientArgs),
    /// Capability tokens of the key broker: mint, attenuate (offline), inspect, revoke.
    Token(crate::token::TokenArgs),
    /// A signing agent: the home held open in memory for your processes (`keyhaven sign` uses
    /// it when KEYHAVEN_AGENT_SOCK is set or this home's agent runs); start, status, lock.
    Agent(crate::agent::AgentArgs),
}

/// The older spelling `backend add NAME --type TYPE [...]` as `backend add TYPE NAME [...]`:
/// the arguments with `--type TYPE` moved, and whether they were moved (to print a note).
pub(crate) fn modernize(args: Vec<std::ffi::OsString>) -> (Vec<std::ffi::OsString>, bool) {
    let at = args
        .windows(2)
        .position(|w| w[0] == "backend" && w[1] == "add")
        .map(|i| i + 2);
    let Some(start) = at else {
        return (args, false);
    };
    let mut rest: Vec<std::ffi::OsString> = args[start..].to_vec();
    let mut kind = None;
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i].to_string_lossy().into_owned();
        if arg == "--" {
            break;
        }
        if arg == "--type" && i + 1 < rest.len() {
            kind = Some(rest.remove(i + 1));
            rest.remove(i);
            break;
        }
        if let Some(v) = arg.strip_prefix("--type=") {
            kind = Some(v.into());
            rest.remove(i);
            break;
        }
        i += 1;
    }
    let Some(kind) = kind else {
        return (args, false);
    };
    let mut out = args[..start].to_vec();
    out.push(kind);
    out.extend(rest);
    (out, true)
}

/// Key algorithms on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AlgorithmArg {
    /// ECDSA P-384 with SHA-384 (ES384).
    P384,
    /// ECDSA P-256 with SHA-256 (ES256).
    P256,
    /// Ed25519 (EdDSA).
    Ed25519,
    /// X25519 key agreement (cannot sign).
    X25519,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::P384 => Algorithm::EcdsaP384,
            AlgorithmArg::P256 => Algorithm::EcdsaP256,
            AlgorithmArg::Ed25519 => Algorithm::Ed25519,
            AlgorithmArg::X25519 => Algorithm::X25519,
        }
    }
}

/// Signature encodings on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    /// ASN.1 DER (ECDSA); Ed25519's 64 bytes.
    Der,
    /// Fixed-size r||s; Ed25519's 64 bytes.
    Raw,
}

impl From<FormatArg> for SignatureFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Der => SignatureFormat::Der,
            FormatArg::Raw => SignatureFormat::Raw,
        }
    }
}

/// Public key encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PublicFormat {
    /// SubjectPublicKeyInfo PEM.
    Pem,
    /// SubjectPublicKeyInfo DER (binary).
    Der,
    /// JSON Web Key.
    Jwk,
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;

    use keyhaven::BackendKind;

    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn the_older_backend_add_spelling_is_moved_to_the_new_one() {
        for (old, new) in [
            (
                "keyhaven backend add hsm --type pkcs11 --module /m.so --token t",
                "keyhaven backend add pkcs11 hsm --module /m.so --token t",
            ),
            (
                "keyhaven --home h backend add v --type=encrypted --default",
                "keyhaven --home h backend add encrypted v --default",
            ),
            (
                "keyhaven backend add --type tpm t --tcti tabrmd",
                "keyhaven backend add tpm t --tcti tabrmd",
            ),
        ] {
            assert_eq!(modernize(argv(old)), (argv(new), true), "{old}");
        }
        // the new spelling, other commands and a `--type` after `--` are left alone
        for same in [
            "keyhaven backend add pem p",
            "keyhaven key generate --label x",
            "keyhaven backend add pem p -- --type x",
        ] {
            assert_eq!(modernize(argv(same)), (argv(same), false), "{same}");
        }
    }

    #[test]
    fn each_backend_type_takes_only_its_own_options() {
        let parse = |s: &str| Cli::try_parse_from(argv(s));
        let ok = parse("keyhaven backend add tpm t --tcti tabrmd --path /d").unwrap();
        let Command::Backend(crate::backend::BackendCommand::Add(add)) = ok.command else {
            panic!("not backend add")
        };
        assert_eq!(add.kind(), BackendKind::Tpm);
        assert_eq!(add.new_backend().name, "t");
        for bad in [
            "keyhaven backend add memory m --path /d",
            "keyhaven backend add pem p --tcti tabrmd",
            "keyhaven backend add pkcs11 h --token t",
            "keyhaven backend add pkcs11 h --module /m.so",
            "keyhaven backend add pkcs11 h --module /m.so --token t --slot 1",
            "keyhaven backend add tpm t",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }
}
