//! `keyhaven backend ...` and `keyhaven doctor`.

use std::path::{Path, PathBuf};

use crate::json::{BackendJson, BackendsJson};
use anyhow::{Context, Result};
use keyhaven::{BackendConfig, BackendKind, KeyManager, Protection, TokenRef};

use crate::ctx::{Ctx, print_warnings};
use crate::exit::{CORRUPT, NOT_FOUND, OK, UNSUPPORTED, code_of_kind};
use crate::output::{errln, outln, print_json, print_table, warn_plain};
use clap::{Args, Subcommand};

pub(crate) fn run(ctx: &Ctx, cmd: BackendCommand) -> Result<u8> {
    let m = ctx.manager()?;
    let result = dispatch(&m, cmd);
    print_warnings(&m);
    result
}

fn dispatch(m: &KeyManager, cmd: BackendCommand) -> Result<u8> {
    match cmd {
        BackendCommand::List { json } => {
            let config = m.config();
            let rows: Vec<_> = config
                .backends
                .iter()
                .map(|(name, b)| {
                    let location = config.backend_location(m.home(), name).unwrap_or_default();
                    let mut marks = Vec::new();
                    if config.default_backend.as_deref() == Some(name.as_str()) {
                        marks.push("default");
                    }
                    if config.fallback.backend.as_deref() == Some(name.as_str()) {
                        marks.push(if config.fallback.allow {
                            "fallback"
                        } else {
                            "fallback (not allowed)"
                        });
                    }
                    (name.clone(), b.kind, location, marks.join(", "))
                })
                .collect();
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(name, kind, location, _)| BackendJson {
                        name: name.clone(),
                        kind: kind.name(),
                        location: location.clone(),
                        protection: kind.protection().as_str(),
                        default: config.default_backend.as_deref() == Some(name.as_str()),
                        fallback: config.fallback.backend.as_deref() == Some(name.as_str()),
                    })
                    .collect();
                print_json(&BackendsJson {
                    backends: items,
                    fallback_allowed: config.fallback.allow,
                })?;
            } else if rows.is_empty() {
                errln!(
                    "No backends. Run `keyhaven quickstart`, or `keyhaven backend add encrypted \
                     NAME`."
                );
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(name, kind, location, marks)| {
                        vec![
                            name.clone(),
                            kind.name().to_owned(),
                            kind.protection().to_string(),
                            location.clone(),
                            marks.clone(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "TYPE", "PROTECTION", "LOCATION", ""], &table)?;
            }
            Ok(OK)
        }
        BackendCommand::Add(add) => {
            let kind = add.kind();
            let NewBackend { name, default } = add.new_backend();
            let (name, default) = (name.clone(), *default);
            let config = declaration(add)?;
            let backend = m.add_backend(&name, config)?;
            if default {
                m.set_default_backend(Some(&name))?;
            }
            outln!("added backend '{name}' ({kind}) at {}", backend.location())?;
            // A device that lacks what keyhaven needs is named now, not at the first key.
            if kind.is_hardware()
                && let Ok(report) = m.doctor_backend(&name)
            {
                if let Some(t) = report.token.as_ref().filter(|t| !t.missing.is_empty()) {
                    errln!(
                        "warning: token '{}' lacks {}: keyhaven cannot make keys that need them \
                         there (`keyhaven doctor` lists what it has)",
                        t.label,
                        t.missing.join(", ")
                    );
                }
                if let Some(t) = report.tpm.as_ref().filter(|t| !t.missing_curves.is_empty()) {
                    errln!(
                        "warning: the TPM lacks the curves {}: keyhaven cannot make keys on them \
                         there",
                        t.missing_curves.join(", ")
                    );
                }
            }
            match kind.protection() {
                Protection::SoftwarePlain => warn_plain(&[name]),
                _ if kind.is_ephemeral() => errln!(
                    "note: a memory backend is ephemeral: its keys vanish when each keyhaven \
                     command exits."
                ),
                _ => {}
            }
            Ok(OK)
        }
        BackendCommand::Remove { name } => {
            let path = m.backend_path(&name);
            m.remove_backend(&name)?;
            outln!("removed backend '{name}' from keyhaven.toml")?;
            if let Some(p) = path {
                errln!(
                    "Its store at {} was left in place; delete it yourself if you mean to.",
                    p.display()
                );
            }
            Ok(OK)
        }
        BackendCommand::Fallback { name, allow, off } => {
            m.update_config(|c| {
                if off {
                    c.fallback = keyhaven::FallbackConfig::default();
                } else {
                    c.fallback = keyhaven::FallbackConfig::new(allow, name.clone());
                }
                Ok(())
            })?;
            let f = m.config().fallback.clone();
            match (&f.backend, f.allow) {
                (Some(b), true) => outln!(
                    "fallback: new keys for an unavailable backend go to '{b}', with a warning"
                )?,
                (Some(b), false) => {
                    outln!("fallback: '{b}' is named but not allowed (pass --allow to allow it)")?
                }
                (None, _) => outln!("fallback: off")?,
            }
            Ok(OK)
        }
    }
}

/// A path as given on the command line, made absolute (keyhaven.toml resolves relative paths
/// against the home, not the current directory).
fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))
}

/// The declaration `backend add TYPE NAME ...` makes (relative paths from the current
/// directory made absolute).
fn declaration(add: AddCommand) -> Result<BackendConfig> {
    let dir = |p: Option<PathBuf>| p.map(|p| absolute(&p)).transpose();
    Ok(match add {
        AddCommand::Encrypted(a) => BackendConfig::new(BackendKind::Encrypted, dir(a.path)?),
        AddCommand::Pem(a) => BackendConfig::new(BackendKind::Pem, dir(a.path)?),
        AddCommand::Memory(_) => BackendConfig::new(BackendKind::Memory, None),
        AddCommand::Pkcs11(a) => {
            let t = a.token;
            let token = match (t.token, t.slot, t.serial) {
                (_, Some(slot), _) => TokenRef::Slot(slot),
                (_, _, Some(serial)) => TokenRef::Serial(serial),
                (label, _, _) => TokenRef::Label(label.unwrap_or_default()),
            };
            let config = BackendConfig::pkcs11(absolute(&t.module)?, token);
            match (t.pin_env, t.pin_file) {
                (Some(var), _) => config.with_pin_env(var),
                (None, Some(file)) => config.with_pin_file(absolute(&file)?),
                (None, None) => config,
            }
        }
        AddCommand::Tpm(a) => BackendConfig::tpm(a.tcti, dir(a.path)?),
        AddCommand::Keyring(a) => {
            // A store name of its own, so two homes sharing the user's keyring stay apart.
            let store = match a.store {
                Some(s) => s,
                None => {
                    let mut tag = [0u8; 4];
                    keyhaven::fill_random(&mut tag)?;
                    format!("{}-{}", a.new.name, hex::encode(tag))
                }
            };
            let config = BackendConfig::keyring(a.keyring, Some(store));
            match a.collection {
                Some(c) => config.with_collection(c),
                None => config,
            }
        }
    })
}

pub(crate) fn doctor(ctx: &Ctx, json: bool) -> Result<u8> {
    let m = ctx.manager()?;
    let report = m.doctor();
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        outln!(
            "home:        {} ({})",
            report.home.display(),
            if report.config_exists {
                "keyhaven.toml present"
            } else {
                "no keyhaven.toml yet: run `keyhaven quickstart`"
            }
        )?;
        for b in &report.backends {
            let mut marks = Vec::new();
            if b.default {
                marks.push("default");
            }
            if b.fallback {
                marks.push("fallback");
            }
            if b.ephemeral {
                marks.push("ephemeral");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            };
            let state = if !b.reachable {
                format!("UNREACHABLE: {}", b.error.as_deref().unwrap_or("unknown"))
            } else if !b.initialized {
                "reachable (store not created yet)".to_owned()
            } else {
                let n = b.keys.unwrap_or(0);
                format!("reachable, {n} key{}", if n == 1 { "" } else { "s" })
            };
            let weak = if b.protection == Protection::SoftwarePlain {
                " (WEAKEST: unencrypted files)"
            } else {
                ""
            };
            outln!(
                "backend {} ({}) at {}: {state}; protection {}{weak}{marks}",
                b.name,
                b.kind,
                b.location,
                b.protection
            )?;
            for d in &b.damaged {
                outln!("  damaged: {d}")?;
            }
            if let Some(t) = &b.token {
                print_token(t)?;
            }
            if let Some(t) = &b.tpm {
                print_tpm(t)?;
            }
        }
        if report.backends.is_empty() {
            outln!("backends:    none configured")?;
        }
        match (&report.default_key, &report.default_key_error) {
            (None, _) => outln!("default key: none")?,
            (Some(k), None) => outln!("default key: {k} (ok)")?,
            (Some(k), Some(e)) => outln!("default key: {k} (PROBLEM: {e})")?,
        }
        match (&report.fallback, report.fallback_allowed) {
            (Some(f), true) => outln!(
                "fallback:    allowed: new keys for an unavailable backend go to '{f}', with a warning"
            )?,
            (Some(f), false) => outln!("fallback:    '{f}' named but not allowed")?,
            (None, _) => outln!("fallback:    off")?,
        }
        outln!("integrity:   {}", report.integrity)?;
        for p in &report.integrity_problems {
            outln!("  damaged:   {p}")?;
        }
        for k in &report.keyrings {
            match &k.detail {
                Some(d) => outln!("keyring:     {}: {} ({d})", k.keyring, k.state)?,
                None => outln!("keyring:     {}: {}", k.keyring, k.state)?,
            }
        }
        outln!(
            "result:      {}",
            if report.healthy() {
                "healthy"
            } else {
                "problems found"
            }
        )?;
    }
    print_warnings(&m);
    // Exit with the code of the first problem, so scripts can tell.
    for b in &report.backends {
        if let Some(kind) = b.error_kind {
            return Ok(code_of_kind(kind));
        }
        if !b.damaged.is_empty() {
            return Ok(CORRUPT);
        }
        let token_lacks = b.token.as_ref().is_some_and(|t| !t.missing.is_empty());
        let tpm_lacks = b.tpm.as_ref().is_some_and(|t| !t.missing_curves.is_empty());
        if token_lacks || tpm_lacks {
            return Ok(UNSUPPORTED);
        }
    }
    if report.default_key_error.is_some() {
        return Ok(NOT_FOUND);
    }
    Ok(OK)
}

/// The token of a `pkcs11` backend, under its line in `keyhaven doctor`.
fn print_token(t: &keyhaven::TokenDiagnosis) -> Result<()> {
    outln!("  token:        '{}' in slot {}", t.label, t.slot_id)?;
    outln!("  manufacturer: {}", t.manufacturer)?;
    outln!("  model:        {}", t.model)?;
    outln!("  serial:       {}", t.serial)?;
    outln!(
        "  versions:     hardware {}, firmware {}",
        t.hardware_version,
        t.firmware_version
    )?;
    outln!("  module:       {} ({})", t.module.display(), t.library)?;
    outln!("  slots:        {} free of {}", t.free_slots, t.total_slots)?;
    outln!("  user PIN:     {}", t.user_pin)?;
    outln!("  mechanisms:")?;
    for m in &t.mechanisms {
        outln!(
            "    {:<31} {:<8} {}",
            m.name,
            if m.present { "present" } else { "MISSING" },
            m.needed_for
        )?;
    }
    if !t.missing.is_empty() {
        outln!(
            "  PROBLEM: the token lacks {}: keys that need them cannot be used there",
            t.missing.join(", ")
        )?;
    }
    Ok(())
}

/// The TPM of a `tpm` backend, under its line in `keyhaven doctor`.
fn print_tpm(t: &keyhaven::TpmDiagnosis) -> Result<()> {
    outln!("  TPM:          via {}", t.tcti)?;
    outln!("  manufacturer: {} ({})", t.manufacturer, t.vendor)?;
    outln!("  firmware:     {}", t.firmware_version)?;
    outln!("  spec:         revision {}", t.spec_revision)?;
    outln!("  curves:       {}", t.ecc_curves.join(", "))?;
    outln!(
        "  loaded keys:  at most {} objects at once",
        t.transient_slots
    )?;
    if !t.missing_curves.is_empty() {
        outln!(
            "  PROBLEM: the TPM lacks {}: keys on those curves cannot be made there",
            t.missing_curves.join(", ")
        )?;
    }
    Ok(())
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
    /// The operating system's keyring (Secret Service, kernel keyring): keys sealed under your
    /// passphrase, kept in the keyring.
    Keyring(KeyringAdd),
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
            AddCommand::Keyring(_) => BackendKind::Keyring,
        }
    }

    /// The name and `--default` of the new backend.
    pub(crate) fn new_backend(&self) -> &NewBackend {
        match self {
            AddCommand::Encrypted(a) | AddCommand::Pem(a) => &a.new,
            AddCommand::Memory(n) => n,
            AddCommand::Pkcs11(a) => &a.new,
            AddCommand::Tpm(a) => &a.new,
            AddCommand::Keyring(a) => &a.new,
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

/// `backend add keyring NAME [--keyring K] [--collection C] [--store S]`.
#[derive(Debug, Args)]
pub(crate) struct KeyringAdd {
    #[command(flatten)]
    pub(crate) new: NewBackend,
    /// Which keyring: secret-service (GNOME Keyring, KWallet, KeePassXC), kernel-user or
    /// kernel-session (the Linux kernel's: forgotten at reboot or logout), keychain (macOS).
    #[arg(long, value_name = "KEYRING", default_value = "secret-service")]
    pub(crate) keyring: String,
    /// The Secret Service collection, by alias (default: default, the login keyring).
    #[arg(long, value_name = "ALIAS")]
    pub(crate) collection: Option<String>,
    /// The store's name in the keyring (default: NAME and a random suffix).
    #[arg(long, value_name = "STORE")]
    pub(crate) store: Option<String>,
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
