//! The command line, declared with clap's derive API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keyhaven::{Algorithm, BackendKind, SignatureFormat};

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

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage keys: generate, list, show, set-default, delete, public, import, export.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign a digest, a file or standard input (with the default key unless --key is given).
    Sign(SignArgs),
    /// Verify a signature; exit 0 if valid, 1 if invalid.
    Verify(VerifyArgs),
    /// Declare backends in keyhaven.toml: list, add, remove, fallback.
    #[command(subcommand)]
    Backend(BackendCommand),
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
    /// Rotation policies: check the file, explain which applies to a key.
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
    Audit(AuditCommand),
    /// Compromise reports: report, list, show, scan the audit log, respond.
    #[command(subcommand)]
    Compromise(CompromiseCommand),
    /// Signed revocation statements: list them, export the list verifiers load.
    #[command(subcommand)]
    Revocations(RevocationsCommand),
    /// The home's authenticated state: status, verify, seal, accept a file you edited.
    #[command(subcommand)]
    Integrity(crate::integrity::IntegrityCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; exit 7 naming the first bad record.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The record count an earlier verification printed: fewer now means records were
        /// removed from the end (or the log replaced), even after the last checkpoint.
        #[arg(long, value_name = "N")]
        expect_records: Option<u64>,
        /// The head an earlier verification printed (with --expect-records): the record at that
        /// position must still hash to it.
        #[arg(long, value_name = "HEX", requires = "expect_records")]
        expect_head: Option<String>,
    },
    /// The last records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Records matching every filter given.
    Search {
        /// Only this key: an id, a label or a logical key (every version of it).
        #[arg(long, value_name = "ID|LABEL")]
        key: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only this operation (sign, generate, delete, revoke, ...).
        #[arg(long)]
        operation: Option<String>,
        /// Only this outcome: allowed, denied, failed, intent.
        #[arg(long)]
        outcome: Option<String>,
        /// Only records this recent (a duration such as 1h or 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Seal the current log file with a signed checkpoint and start the next one (the chain
    /// runs on across files); prints the new file.
    Rotate,
    /// Write a signed checkpoint of the chain head now.
    Checkpoint,
    /// Recover a damaged log without hiding the damage: set the damaged files aside (kept as
    /// evidence), keep the good records, and record a break signed by the authority, which
    /// `audit verify` reports from then on.
    Recover,
    /// Every record as one JSON array.
    Export {
        /// JSON (the only format).
        #[arg(long, required = true)]
        json: bool,
        /// Write to this file (0600, atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CompromiseCommand {
    /// File a report for a key.
    Report {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// suspected or confirmed.
        #[arg(long = "type", value_name = "TYPE", default_value = "suspected", value_parser = ["suspected", "confirmed"])]
        kind: String,
        /// low, medium, high or critical.
        #[arg(long, default_value = "high", value_parser = ["low", "medium", "high", "critical"])]
        severity: String,
        /// What shows it (repeatable).
        #[arg(long)]
        evidence: Vec<String>,
        /// The key's role, which selects the response procedure.
        #[arg(long)]
        role: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the reports.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one report.
    Show {
        /// The report id (CR-...).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scan the audit log for suspicious use and file a suspected report per new finding.
    Scan {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the response procedure of a report (revoke, rotate, lookback, notify).
    Respond {
        /// The report id (CR-...).
        id: String,
        /// `key` (the reported key) or `home` (then every key of the home is rotated too: the
        /// whole home is compromised).
        #[arg(long, default_value = "key", value_parser = ["key", "home"])]
        scope: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a report as not a compromise (a false positive); it is not responded to until
    /// reopened. Who and why are kept with it.
    Dismiss {
        /// The report id (CR-...).
        id: String,
        /// Why it is not a compromise.
        #[arg(long)]
        reason: String,
    },
    /// Open a dismissed report again.
    Reopen {
        /// The report id (CR-...).
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RevocationsCommand {
    /// List the revoked keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the signed list that verifiers load (`keyhaven verify --revocations`).
    Export {
        /// Write to this file (atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Record the statements of an exported list in this home (a home restored from a backup
    /// taking in revocations made since): its keys are then refused here too.
    Import {
        /// The list (`keyhaven revocations export`).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The fingerprint (hex, at least 16 characters) of the authority that must have
        /// signed it (`keyhaven revocations export` prints it).
        #[arg(long, value_name = "FINGERPRINT")]
        authority: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a key pair inside a backend; prints its id.
    Generate {
        /// The backend (default: the default backend).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// The algorithm.
        #[arg(long, value_enum, default_value_t = AlgorithmArg::P384)]
        algorithm: AlgorithmArg,
        /// A label, unique in the backend.
        #[arg(long)]
        label: String,
        /// The key's role, which selects its rotation policy: identity, signing, encryption,
        /// signed-prekey, one-time-prekey (default: signing; encryption for X25519).
        #[arg(long)]
        role: Option<String>,
        /// Print the key's details as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tpm: TpmKeyArgs,
    },
    /// List the keys of every backend.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a key the default for `keyhaven sign`.
    SetDefault {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
    },
    /// Rotate a key to a new version in the same backend (the old one verifies during its
    /// migration window); prints the new version's id.
    Rotate {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Why (recorded in the key's history).
        #[arg(long, default_value = "manual rotation")]
        reason: String,
        /// Write the continuity proof (identity keys) here.
        #[arg(long, value_name = "FILE")]
        proof_out: Option<PathBuf>,
        /// How long the old version keeps verifying, for this rotation (e.g. 14d), instead of
        /// the policy's migration window.
        #[arg(long, value_name = "DURATION")]
        migration_window: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A key's versions (with their states) and its history.
    History {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it refuses every private operation from now on, in every process, and a
    /// signed revocation statement is recorded (`keyhaven revocations export`).
    Revoke {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Why (recorded in the signed statement).
        #[arg(long)]
        reason: String,
        /// The key is (or may be) compromised: also files a confirmed compromise report.
        #[arg(long)]
        compromised: bool,
    },
    /// Delete a key (asks for confirmation unless --yes).
    Delete {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Do not ask. Required when standard input is not a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Print or write a key's public key.
    Public {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// pem (SPKI), der (SPKI) or jwk.
        #[arg(long, value_enum, default_value_t = PublicFormat::Pem)]
        format: PublicFormat,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import a private key: PKCS#8 PEM, encrypted PKCS#8 PEM, or SEC1 EC PEM.
    Import {
        /// The backend (default: the default backend).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// A label, unique in the backend.
        #[arg(long)]
        label: String,
        /// The passphrase of an encrypted PKCS#8 file, from the first line of this file (mode
        /// 0600; else a prompt).
        #[arg(long, value_name = "FILE")]
        key_passphrase_file: Option<PathBuf>,
        /// Print the key's details as JSON.
        #[arg(long)]
        json: bool,
        /// The PEM file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Export a software private key: encrypted PKCS#8 PEM unless --insecure-plaintext.
    Export {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID")]
        key: String,
        /// The file to write (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The export passphrase, from the first line of this file (mode 0600; else a prompt,
        /// asked twice).
        #[arg(long, value_name = "FILE", conflicts_with = "insecure_plaintext")]
        export_passphrase_file: Option<PathBuf>,
        /// Write the private key UNENCRYPTED (PKCS#8 PEM). Anyone who reads the file has the key.
        #[arg(long)]
        insecure_plaintext: bool,
        /// pkcs8-encrypted (PEM that `openssl pkey` reads), or a one-key keyhaven backup file:
        /// keyhaven (text) or binary (`keyhaven backup restore` reads both).
        #[arg(long, value_enum, default_value_t = crate::backup::ExportFormat::Pkcs8Encrypted)]
        format: crate::backup::ExportFormat,
        /// pkcs8-encrypted only: derive the key with PBKDF2-SHA256 (600 000 iterations) instead
        /// of scrypt, for readers without scrypt.
        #[arg(long, conflicts_with = "insecure_plaintext")]
        pbkdf2: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["digest", "message_file", "stdin"])))]
pub(crate) struct SignArgs {
    /// The key (default: the default key).
    #[arg(long, value_name = "ID|LABEL")]
    pub(crate) key: Option<String>,
    /// Sign this prehashed digest (hex; ECDSA: 48 bytes for P-384, 32 for P-256).
    #[arg(long, value_name = "HEX")]
    pub(crate) digest: Option<String>,
    /// Sign the contents of this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) message_file: Option<PathBuf>,
    /// `-`: sign standard input.
    #[arg(value_name = "-", value_parser = dash)]
    pub(crate) stdin: Option<String>,
    /// der (ASN.1, what openssl reads) or raw (r||s). Ed25519 signatures are always raw.
    #[arg(long, value_enum, default_value_t = FormatArg::Der)]
    pub(crate) signature_format: FormatArg,
    /// Write the signature here (0600, atomically; default: standard output, base64 if that is
    /// a terminal).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Also write a JSON assertion (key, backend, protection, fingerprint, time) here, after
    /// the signature.
    #[arg(long, value_name = "FILE")]
    pub(crate) assertion: Option<PathBuf>,
    /// The passphrase of a TPM key made with `key generate --key-auth-file`: the first line of
    /// this file (mode 0600). Without it, such a key's passphrase is asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_auth_file: Option<PathBuf>,
    /// Your id for this request (a message or job id): recorded in the audit log, so the same
    /// request signed twice with a key shows up in `keyhaven compromise scan` as a replay.
    #[arg(long, value_name = "ID")]
    pub(crate) request_id: Option<String>,
}

/// Options of `key generate` that only a TPM backend takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "TPM key options (tpm backends only)")]
pub(crate) struct TpmKeyArgs {
    /// Also make the key persistent at this handle (0x81000000 to 0x817fffff), where
    /// `tpm2_readpublic -c HANDLE` finds it.
    #[arg(long, value_name = "HANDLE")]
    pub(crate) persistent: Option<String>,
    /// Bind the key to the current values of these PCRs: it signs only while they are
    /// unchanged (BANK:PCR[,PCR...], e.g. sha256:0,7).
    #[arg(long, value_name = "BANK:PCRS")]
    pub(crate) pcr_policy: Option<String>,
    /// Protect the key with a passphrase of its own, from the first line of this file (mode
    /// 0600); `keyhaven sign` then needs it (--key-auth-file, or the terminal).
    #[arg(long, value_name = "FILE")]
    pub(crate) key_auth_file: Option<PathBuf>,
    /// Any other option the backend takes, as NAME=VALUE (repeatable); the backend refuses
    /// names it does not know.
    #[arg(long = "option", value_name = "NAME=VALUE")]
    pub(crate) options: Vec<String>,
}

/// Options of `backend add pkcs11`: clap requires the module and exactly one way of naming
/// the token.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("token_ref").required(true).args(["token", "slot", "serial"])))]
pub(crate) struct Pkcs11Args {
    /// The token's PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, value_name = "PATH")]
    pub(crate) module: PathBuf,
    /// The token, by label.
    #[arg(long, value_name = "LABEL", conflicts_with_all = ["slot", "serial"])]
    pub(crate) token: Option<String>,
    /// The token, by slot id.
    #[arg(long, value_name = "ID", conflicts_with = "serial")]
    pub(crate) slot: Option<u64>,
    /// The token, by serial number.
    #[arg(long, value_name = "SERIAL")]
    pub(crate) serial: Option<String>,
    /// Read the user PIN from this environment variable (its name is saved, never the PIN).
    /// Without --pin-env or --pin-file, the PIN is asked on the terminal each time.
    #[arg(long, value_name = "VAR", conflicts_with = "pin_file")]
    pub(crate) pin_env: Option<String>,
    /// Read the user PIN from the first line of this file (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) pin_file: Option<PathBuf>,
}

/// `backend add TYPE NAME`: one subcommand per backend type, each taking only its own options
/// (clap refuses the others and asks for what a type needs).
#[derive(Debug, Subcommand)]
pub(crate) enum AddCommand {
    /// An encrypted store (recommended): keys sealed under your passphrase.
    Encrypted(FileAdd),
    /// Plain PEM files that openssl reads: the weakest protection.
    Pem(FileAdd),
    /// Keys in process memory: they vanish when each command exits.
    Memory(NewBackend),
    /// A PKCS#11 token (a hardware security module, or SoftHSM2).
    Pkcs11(Pkcs11Add),
    /// A TPM 2.0.
    Tpm(TpmAdd),
}

impl AddCommand {
    /// The backend type.
    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            AddCommand::Encrypted(_) => BackendKind::Encrypted,
            AddCommand::Pem(_) => BackendKind::Pem,
            AddCommand::Memory(_) => BackendKind::Memory,
            AddCommand::Pkcs11(_) => BackendKind::Pkcs11,
            AddCommand::Tpm(_) => BackendKind::Tpm,
        }
    }

    /// The name and `--default` of the new backend.
    pub(crate) fn new_backend(&self) -> &NewBackend {
        match self {
            AddCommand::Encrypted(a) | AddCommand::Pem(a) => &a.new,
            AddCommand::Memory(n) => n,
            AddCommand::Pkcs11(a) => &a.new,
            AddCommand::Tpm(a) => &a.new,
        }
    }
}

/// What every new backend has: a name, and whether it becomes the default.
#[derive(Debug, Args)]
pub(crate) struct NewBackend {
    /// A name: letters, digits, '_' and '-'.
    pub(crate) name: String,
    /// Make it the default backend.
    #[arg(long)]
    pub(crate) default: bool,
}

/// `backend add encrypted|pem NAME [--path DIR]`.
#[derive(Debug, Args)]
pub(crate) struct FileAdd {
    #[command(flatten)]
    pub(crate) new: NewBackend,
    /// The store directory (default: HOME/backends/NAME). A relative path is taken from the
    /// current directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) path: Option<PathBuf>,
}

/// `backend add pkcs11 NAME --module PATH --token LABEL|--slot ID|--serial S`.
#[derive(Debug, Args)]
pub(crate) struct Pkcs11Add {
    #[command(flatten)]
    pub(crate) new: NewBackend,
    #[command(flatten)]
    pub(crate) token: Pkcs11Args,
}

/// `backend add tpm NAME --tcti TCTI [--path DIR]`.
#[derive(Debug, Args)]
pub(crate) struct TpmAdd {
    #[command(flatten)]
    pub(crate) new: NewBackend,
    /// How to reach the TPM: device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P or
    /// tabrmd.
    #[arg(long, value_name = "TCTI")]
    pub(crate) tcti: String,
    /// The metadata directory (TPM-wrapped key blobs; default: HOME/backends/NAME). A relative
    /// path is taken from the current directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) path: Option<PathBuf>,
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("who").args(["key", "public_key"])))]
#[command(group(clap::ArgGroup::new("input").required(true).args(["digest", "message_file"])))]
pub(crate) struct VerifyArgs {
    /// A key in a backend.
    #[arg(long, value_name = "ID|LABEL")]
    pub(crate) key: Option<String>,
    /// A public key PEM file (SPKI). Needs no home and no passphrase.
    #[arg(long, value_name = "PEM_FILE")]
    pub(crate) public_key: Option<PathBuf>,
    /// The prehashed digest that was signed (hex).
    #[arg(long, value_name = "HEX")]
    pub(crate) digest: Option<String>,
    /// The file that was signed.
    #[arg(long, value_name = "FILE")]
    pub(crate) message_file: Option<PathBuf>,
    /// The signature file. Without it, --assertion gives the signature (and its signed
    /// metadata is checked too).
    #[arg(long, value_name = "FILE", required_unless_present = "assertion")]
    pub(crate) signature: Option<PathBuf>,
    /// der or raw.
    #[arg(long, value_enum, default_value_t = FormatArg::Der)]
    pub(crate) signature_format: FormatArg,
    /// With --key: also accept retired versions of the key (revoked, compromised and
    /// destroyed versions never verify).
    #[arg(long, requires = "key")]
    pub(crate) allow_retired: bool,
    /// The assertion written with the signature (`keyhaven sign --assertion`): its signed
    /// metadata is checked (an edited field makes it invalid), and its time decides whether a
    /// revocation applies (signatures asserted before it still verify). Without --signature,
    /// it is checked on its own (with --key or --public-key: it must be that key's).
    #[arg(long, value_name = "FILE")]
    pub(crate) assertion: Option<PathBuf>,
    /// A revocation list (`keyhaven revocations export`) to check the key against; needs
    /// --authority. With --key, the home's own revocations are always checked.
    #[arg(long, value_name = "FILE", requires = "authority")]
    pub(crate) revocations: Option<PathBuf>,
    /// The fingerprint (hex, at least 16 characters) of the authority that must have signed
    /// the revocation list.
    #[arg(long, value_name = "FINGERPRINT", requires = "revocations")]
    pub(crate) authority: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackendCommand {
    /// List the configured backends (opens none of them).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Declare a backend and create its store: `backend add TYPE NAME [options of that type]`
    /// (the older `backend add NAME --type TYPE` still works, with a note).
    #[command(subcommand)]
    Add(AddCommand),
    /// Remove a backend from keyhaven.toml (its files are left in place).
    Remove {
        /// The backend's name.
        name: String,
    },
    /// Set the fallback rule: which file backend takes the new keys meant for an unavailable
    /// one (existing keys are never looked up there).
    Fallback {
        /// The file backend to fall back to.
        #[arg(value_name = "NAME", required_unless_present = "off")]
        name: Option<String>,
        /// Allow falling back (protection may be lower; a warning is printed each time).
        #[arg(long)]
        allow: bool,
        /// Turn the fallback off.
        #[arg(long, conflicts_with_all = ["name", "allow"])]
        off: bool,
    },
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

fn dash(s: &str) -> Result<String, String> {
    if s == "-" {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not '-': use --message-file FILE to sign a file, or - for standard input"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;

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
        let Command::Backend(BackendCommand::Add(add)) = ok.command else {
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
