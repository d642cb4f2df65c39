//! `keyhaven client`: register a key of this home with a keyhaven server, and drive it
//! (status, rotate, revoke, admin) with requests the key signs where it lives.
//!
//! The server key is pinned per server in `HOME/client/servers.json` (0600): on the first
//! registration it is checked against `--server-fingerprint`, or trusted on first use with a
//! note; every later answer must be signed by it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use base64ct::{Base64, Encoding};
use clap::{Args, Subcommand};
use keyhaven::{KeyManager, ManagedKey, PublicKey};
use keyhaven_client::wire::{ClientView, KeyView};
use keyhaven_client::{Client, StoreSigner, discover_trusting};
use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::exit::{OK, TrustError, UsageError};
use crate::output::{errln, outln, print_json, print_table};

/// `keyhaven client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The server's URL (default: the one this home last registered with); several, comma
    /// separated, for nodes of one service: a node that cannot be reached is skipped.
    #[arg(long, global = true, env = "KEYHAVEN_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// The key of this home that signs the requests (default: the default key; a versioned
    /// key signs with its current version).
    #[arg(long, global = true, value_name = "ID|LABEL")]
    pub(crate) key: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Trust this certificate (PEM) for HTTPS besides: a development server's self-signed
    /// one (`keyhaven serve --tls` writes it to its HOME/server/tls-cert.pem).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// A capability token (`kht_...`) held by the signing key: secret and transit requests
    /// then act on the resources of the tenant that minted it, within its rights.
    #[arg(
        long,
        global = true,
        env = "KEYHAVEN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    #[command(subcommand)]
    pub(crate) command: ClientCommand,
}

/// What to ask the server.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Register the key with the server (proof of possession over a fresh challenge).
    Register {
        /// The client's name (default: the key's label).
        #[arg(long)]
        name: Option<String>,
        /// The server key's fingerprint, as `keyhaven serve` printed it: checked before
        /// anything is trusted (without it, the key is trusted on first use).
        #[arg(long, value_name = "HEX")]
        server_fingerprint: Option<String>,
    },
    /// Pin the server's key without registering (for a key registered some other way, such
    /// as the admin `keyhaven serve init` registered).
    Trust {
        /// The server key's fingerprint, as `keyhaven serve` printed it.
        #[arg(long, value_name = "HEX")]
        server_fingerprint: String,
    },
    /// This client, its keys and their status on the server.
    Status,
    /// What the server makes of this key's signature.
    Whoami,
    /// Prove the signing key lives in a TPM: send its key attestation (`keyhaven key attest`).
    /// A certification by an attestation key the server trusts (`serve --trusted-ak`, or one
    /// enrolled by credential activation) makes the key tier 2.
    AttestKey,
    /// Tell the server the key was rotated (`keyhaven key rotate`): sends the key's continuity
    /// proofs, signed by its current version.
    Rotate,
    /// Revoke a key of this client on the server (default: the signing key).
    Revoke {
        /// The key to revoke (its fingerprint); default: the signing key.
        #[arg(long, value_name = "HEX")]
        fingerprint: Option<String>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Admin: list, export, revoke, monitor (the key must be an admin's).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The key broker's transit keys (Vault's transit shape): encrypt and decrypt with keys
    /// that never leave the server.
    #[command(subcommand)]
    Transit(TransitCommand),
    /// The key broker's secrets: stored by path at a tier, released encrypted to a key made
    /// for each request, with a receipt the server signs.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// (`keyhaven token mint|revoke` come through here.)
    #[command(skip)]
    Token(crate::token::TokenCall),
    /// (`keyhaven policy load|list|delete|explain-release PATH` come through here.)
    #[command(skip)]
    Policy(crate::policy::PolicyCall),
}

/// Secret requests.
#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Write a new version from a file (or standard input).
    Put {
        /// The path (segments of letters, digits, '.', '_', '-' separated by '/').
        path: String,
        /// The file (`-` or nothing: standard input).
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// The tier to keep it at (0 to 4; default: the broker's).
        #[arg(long)]
        tier: Option<u8>,
        /// Accept a lower tier down to this one if the broker cannot reach --tier.
        #[arg(long)]
        floor: Option<u8>,
        /// The lowest tier of requester it is released to (default: the tier reached).
        #[arg(long)]
        min_tier: Option<u8>,
    },
    /// Release it: the value to standard output (or --out, a new 0600 file).
    Get {
        /// The path.
        path: String,
        /// A version other than the latest.
        #[arg(long)]
        version: Option<u64>,
        /// Write the value here instead (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Keep the release receipt (a JWS the server key signed) in this new file.
        #[arg(long, value_name = "FILE")]
        receipt: Option<PathBuf>,
        /// Below the secret's min_tier, take the owner's fallback instead of a refusal: a
        /// capability token (printed, or written to --out) held by this key.
        #[arg(long)]
        accept_capability: bool,
    },
    /// What a requester below the secret's min_tier gets instead of a refusal: a
    /// short-lived capability of these rights on your resources (operations that disclose
    /// no secret: secret.read, secret.list, transit.read, transit.list, transit.encrypt,
    /// transit.verify), or nothing again with --clear.
    Fallback {
        /// The path.
        path: String,
        /// A right, OPERATION:PREFIX (repeat for more).
        #[arg(
            long = "right",
            value_name = "OPERATION:PREFIX",
            required_unless_present = "clear"
        )]
        rights: Vec<String>,
        /// How long a capability lasts, in seconds (default 300, at most 3600).
        #[arg(long)]
        ttl: Option<u32>,
        /// Remove the fallback.
        #[arg(long, conflicts_with_all = ["rights", "ttl"])]
        clear: bool,
    },
    /// Its tiers and versions (never its value).
    Info {
        /// The path.
        path: String,
    },
    /// This client's secrets under PREFIX.
    List {
        /// The prefix (all without one).
        prefix: Option<String>,
    },
    /// Delete it and every version.
    Delete {
        /// The path.
        path: String,
    },
    /// Check a release receipt against the pinned server key and print what it says (what
    /// was released, to whom, at which tier, on which evidence, under which rule).
    Receipt {
        /// The receipt file (`secret get --receipt FILE` wrote it).
        file: PathBuf,
    },
    /// A new KEK for this client's secrets at a tier, every envelope rewrapped to it.
    RotateKek {
        /// The tier (default: the broker's).
        #[arg(long)]
        tier: Option<u8>,
    },
}

/// Transit requests.
#[derive(Debug, Subcommand)]
pub(crate) enum TransitCommand {
    /// Create a transit key (nothing changes if it exists).
    Create {
        /// Its name (letters, digits, '.', '_', '-').
        name: String,
        /// What it is: aes256-gcm96 (encrypts), ed25519, ecdsa-p256 or ecdsa-p384 (sign).
        #[arg(long = "type", value_name = "TYPE", default_value = "aes256-gcm96")]
        key_type: String,
    },
    /// A transit key's versions and settings.
    Read {
        /// Its name.
        name: String,
    },
    /// This client's transit keys.
    List,
    /// Add a version: new encryptions use it, older versions still decrypt.
    Rotate {
        /// Its name.
        name: String,
    },
    /// Refuse ciphertexts of versions below VERSION from now on.
    MinDecryptionVersion {
        /// Its name.
        name: String,
        /// The oldest version that still decrypts.
        version: u32,
    },
    /// Encrypt a file (or standard input) and print the `vault:vN:` ciphertext.
    Encrypt {
        /// The transit key (made if it does not exist).
        name: String,
        /// The file to encrypt (`-` or nothing: standard input).
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Decrypt a `vault:vN:` ciphertext and write the plaintext to standard output (or --out,
    /// a new file made 0600).
    Decrypt {
        /// The transit key.
        name: String,
        /// The ciphertext.
        ciphertext: String,
        /// Write the plaintext here instead (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Move a ciphertext to the key's latest version (the plaintext stays in the server).
    Rewrap {
        /// The transit key.
        name: String,
        /// The ciphertext.
        ciphertext: String,
    },
    /// Sign a file (or standard input) with a signing key and print the `vault:vN:` signature.
    Sign {
        /// The signing key (ed25519, ecdsa-p256 or ecdsa-p384).
        name: String,
        /// The file to sign (`-` or nothing: standard input).
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// The hash ECDSA signs: sha2-256 (Vault's default), sha2-384 or sha2-512.
        #[arg(long, value_name = "HASH")]
        hash: Option<String>,
    },
    /// Verify a `vault:vN:` signature over a file (or standard input): exit 0 when it is the
    /// key's, 1 when it is not.
    Verify {
        /// The signing key.
        name: String,
        /// The signature.
        signature: String,
        /// The signed file (`-` or nothing: standard input).
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// The hash it was signed with (as for sign).
        #[arg(long, value_name = "HASH")]
        hash: Option<String>,
    },
    /// A fresh data key for your own envelope encryption: its ciphertext, and its plaintext
    /// (base64) unless --wrapped.
    Datakey {
        /// The transit key.
        name: String,
        /// Its size in bits: 128, 256 or 512.
        #[arg(long, default_value_t = 256)]
        bits: u32,
        /// Only the ciphertext.
        #[arg(long)]
        wrapped: bool,
    },
}

/// Admin requests.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Clients whose name, id or key fingerprint contains QUERY (all without one).
    List {
        /// What to look for.
        query: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Every client and key, as JSON.
    Export,
    /// Vouch that a registered key lives in hardware you enrolled: it reaches TIER (0 to 2)
    /// for secret releases.
    Vouch {
        /// The key's fingerprint.
        fingerprint: String,
        /// The tier.
        #[arg(long)]
        tier: u8,
        /// How it was enrolled (kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Revoke keys, whoever holds them.
    Revoke {
        /// The keys' fingerprints.
        #[arg(required = true, value_name = "HEX")]
        fingerprints: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Registration monitoring: clients and keys by status, recent registrations.
    Stats,
    /// Revoke attestation evidence carrying a measurement, a TCB or an advisory: later
    /// releases on such evidence are refused; prints the releases already made on it (from
    /// the audit trail).
    RevokeEvidence {
        #[command(flatten)]
        carried: CarriedArg,
        /// Why (kept in the audit trail and shown to refused requesters).
        #[arg(long)]
        reason: String,
        /// Also rotate the KEK of each tenant and tier those releases drew from, and rewrap
        /// every envelope under it.
        #[arg(long)]
        rewrap: bool,
    },
    /// The releases made on evidence carrying a measurement, a TCB or an advisory (from the
    /// audit trail), without revoking anything.
    Affected {
        #[command(flatten)]
        carried: CarriedArg,
    },
    /// The evidence revocations in force.
    EvidenceRevocations,
}

/// What evidence carried: exactly one of these.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct CarriedArg {
    /// A measurement (hex): an SNP launch digest, a TDX MRTD or RTMR, a GPU measurement.
    #[arg(long, value_name = "HEX")]
    measurement: Option<String>,
    /// A TCB: PLATFORM:COMPONENT<N (every value below N) or PLATFORM:COMPONENT=N, such as
    /// sev-snp:microcode<213.
    #[arg(long, value_name = "TCB")]
    tcb: Option<String>,
    /// A vendor advisory id, such as INTEL-SA-00837.
    #[arg(long, value_name = "ID")]
    advisory: Option<String>,
}

impl CarriedArg {
    fn kind_value(&self) -> (&'static str, &str) {
        match (&self.measurement, &self.tcb, &self.advisory) {
            (Some(m), _, _) => ("measurement", m),
            (_, Some(t), _) => ("tcb", t),
            (_, _, Some(a)) => ("advisory", a),
            // clap's group makes one of them present.
            _ => ("measurement", ""),
        }
    }
}

/// The releases of an `affected` list, one line each.
fn print_affected(affected: &serde_json::Value) -> Result<()> {
    let rows: Vec<Vec<String>> = affected
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                keyhaven::rfc3339(r["at"].as_u64().unwrap_or(0)),
                r["tenant"].as_str().unwrap_or("").to_owned(),
                r["path"].as_str().unwrap_or("").to_owned(),
                r["version"].to_string(),
                r["receipt"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    print_table(&["AT", "TENANT", "PATH", "VERSION", "RECEIPT"], &rows)
}

/// One pinned server.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pin {
    algorithm: String,
    fingerprint: String,
    public_key: String,
}

/// `HOME/client/servers.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Pins {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    servers: BTreeMap<String, Pin>,
}

fn pins_path(m: &KeyManager) -> PathBuf {
    m.home().join("client").join("servers.json")
}

/// The pinned server keys, read through the home's authenticated state: a pin swapped in the
/// file by someone without the home's passphrase (or PIN) is refused, not trusted.
fn load_pins(m: &KeyManager) -> Result<Pins> {
    let path = pins_path(m);
    let Some(bytes) = m.state()?.read(&path)? else {
        return Ok(Pins::default());
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| keyhaven::CoreError::corrupt(path.display().to_string(), e.to_string()).into())
}

fn save_pins(m: &KeyManager, pins: &Pins) -> Result<()> {
    let path = pins_path(m);
    if let Some(dir) = path.parent() {
        keyhaven::fs::create_private_dir(dir)?;
    }
    m.state()?.write(&path, &serde_json::to_vec_pretty(pins)?)?;
    Ok(())
}

/// The server's origin, the key under which it is pinned (`http://host:port`).
fn origin(url: &str) -> Result<String> {
    keyhaven_client::origin_of(url)
        .map_err(|_| UsageError(format!("--server {url:?} must be http(s)://host[:port]")).into())
}

fn server_url(args_server: Option<&str>, pins: &Pins) -> Result<String> {
    args_server
        .map(str::to_owned)
        .or_else(|| pins.default.clone())
        .ok_or_else(|| {
            UsageError(
                "no server: pass --server URL (or set KEYHAVEN_SERVER); `keyhaven client \
                 register` remembers the last one"
                    .into(),
            )
            .into()
        })
}

fn pinned_key(pin: &Pin) -> Result<PublicKey> {
    let algorithm = pin.algorithm.parse()?;
    let der = Base64::decode_vec(&pin.public_key)
        .map_err(|e| anyhow::anyhow!("the pinned server key is not base64: {e}"))?;
    let key = PublicKey::new(algorithm, der);
    if key.fingerprint().to_hex() != pin.fingerprint {
        return Err(keyhaven::CoreError::corrupt(
            "client/servers.json",
            "a pinned server key does not match its fingerprint",
        )
        .into());
    }
    Ok(key)
}

/// The key named (or the default key), as named: a logical key, or one version.
fn named_key(m: &KeyManager, key: Option<&str>) -> Result<ManagedKey> {
    Ok(match key {
        Some(r) => m.resolve(r)?,
        None => m.default_key()?,
    })
}

/// The key that signs for it: a logical key's current version.
fn signing_key(m: &KeyManager, key: Option<&str>) -> Result<ManagedKey> {
    Ok(m.rotation().signing_target(&named_key(m, key)?)?)
}

fn client_for(
    m: &KeyManager,
    key: &ManagedKey,
    url: &str,
    server_key: PublicKey,
    roots: &[Vec<u8>],
) -> Result<Client> {
    let store = m.backend(&key.backend)?.store().clone();
    let signer = StoreSigner::new(store, key.id())?;
    let mut client = Client::new(url, Arc::new(signer), server_key)?;
    for root in roots {
        client = client.trusting(root)?;
    }
    Ok(client)
}

pub(crate) fn run(ctx: &Ctx, args: ClientArgs) -> Result<u8> {
    let m = ctx.manager()?;
    let mut pins = load_pins(&m)?;
    let urls = server_url(args.server.as_deref(), &pins)?;
    let mut nodes = urls.split(',').map(str::trim).filter(|u| !u.is_empty());
    let url = nodes.next().unwrap_or_default().to_owned();
    let mut fallbacks: Vec<String> = Vec::new();
    for node in nodes {
        if node != url && !fallbacks.iter().any(|f| f == node) {
            fallbacks.push(node.to_owned());
        }
    }
    let origin = origin(&url)?;
    let roots: Vec<Vec<u8>> = match &args.tls_ca {
        Some(path) => vec![keyhaven::fs::read_config(path)?.into_bytes()],
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let (register, expected) = match &args.command {
        ClientCommand::Register {
            name,
            server_fingerprint,
        } => (Some(name.clone()), server_fingerprint.clone()),
        ClientCommand::Trust { server_fingerprint } => (None, Some(server_fingerprint.clone())),
        _ => (None, None),
    };
    if matches!(
        args.command,
        ClientCommand::Register { .. } | ClientCommand::Trust { .. }
    ) {
        // The first node that answers says who the service is.
        let mut discovered = None;
        for node in std::iter::once(&url).chain(&fallbacks) {
            match runtime.block_on(discover_trusting(node, &roots)) {
                Ok(found) => {
                    discovered = Some(found);
                    break;
                }
                Err(e) if discovered.is_none() && node != fallbacks.last().unwrap_or(&url) => {
                    errln!("note: {node} does not answer ({e}); trying the next node");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (info, server_key) =
            discovered.ok_or_else(|| UsageError("no server node answers".into()))?;
        match (&expected, pins.servers.get(&origin)) {
            (Some(fp), _) if !fp.eq_ignore_ascii_case(&info.fingerprint) => {
                return Err(TrustError(format!(
                    "the server at {url} presents key {}, not the {fp} you gave",
                    info.fingerprint
                ))
                .into());
            }
            (None, Some(pin)) if pin.fingerprint != info.fingerprint => {
                return Err(TrustError(format!(
                    "the server at {url} presents key {}, but this home pinned {} (if the \
                     server key really changed, pass --server-fingerprint)",
                    info.fingerprint, pin.fingerprint
                ))
                .into());
            }
            (None, None) => errln!(
                "note: trusting the server key {} on first use; compare it with what \
                 `keyhaven serve` printed",
                info.fingerprint
            ),
            _ => {}
        }
        let fingerprint = info.fingerprint.clone();
        let pin = Pin {
            algorithm: info.algorithm,
            fingerprint: info.fingerprint,
            public_key: info.public_key,
        };
        if let Some(name) = register {
            let key = signing_key(&m, args.key.as_deref())?;
            let mut client = client_for(&m, &key, &url, server_key, &roots)?;
            for node in &fallbacks {
                client = client.with_fallback(node)?;
            }
            let name = name.unwrap_or_else(|| key.label().to_owned());
            let me = runtime.block_on(client.register(&name))?;
            pins.servers.insert(origin, pin);
            pins.default = Some(urls);
            save_pins(&m, &pins)?;
            print_client(&me, args.json)?;
        } else {
            pins.servers.insert(origin, pin);
            pins.default = Some(urls.clone());
            save_pins(&m, &pins)?;
            outln!("pinned the key {fingerprint} of {url}")?;
        }
        return Ok(OK);
    }

    let pin = pins.servers.get(&origin).ok_or_else(|| {
        UsageError(format!(
            "no server key is pinned for {origin}: run `keyhaven client register --server {url}` \
             first"
        ))
    })?;
    let key = signing_key(&m, args.key.as_deref())?;
    let mut client = client_for(&m, &key, &url, pinned_key(pin)?, &roots)?;
    for node in &fallbacks {
        client = client.with_fallback(node)?;
    }
    if let Some(token) = &args.token {
        client = client.with_token(token)?;
    }
    let json = args.json;
    match args.command {
        // Answered above, before a pin is needed.
        ClientCommand::Register { .. } | ClientCommand::Trust { .. } => {}
        ClientCommand::Status => print_client(&runtime.block_on(client.status())?, json)?,
        ClientCommand::AttestKey => {
            let attestation = serde_json::to_value(m.attest_key(&key, &[])?)?;
            let answer = runtime.block_on(client.submit_key_attestation(&attestation))?;
            if json {
                print_json(&answer)?;
            } else {
                outln!(
                    "key {} is tier {}: born in a TPM, certified by attestation key {} ({})",
                    answer["key"].as_str().unwrap_or(""),
                    answer["tier"],
                    answer["attestation_key"].as_str().unwrap_or(""),
                    answer["certified_by"].as_str().unwrap_or("")
                )?;
            }
        }
        ClientCommand::Whoami => {
            let who = runtime.block_on(client.whoami())?;
            if json {
                print_json(&who)?;
            } else {
                outln!(
                    "client {} ({}), key {} ({})",
                    who.client,
                    who.role.as_str(),
                    who.key,
                    who.status.as_str()
                )?;
            }
        }
        ClientCommand::Rotate => {
            let named = named_key(&m, args.key.as_deref())?;
            let chain = m.rotation().continuity_chain(&named)?;
            if chain.is_empty() {
                return Err(UsageError(format!(
                    "key {named} has no continuity proofs: identity keys get one at each \
                     rotation (`keyhaven key rotate {}`); a key registered with a server should \
                     have the identity role (`key generate --role identity`)",
                    named.label()
                ))
                .into());
            }
            let text: String = chain.iter().map(|p| p.to_text()).collect();
            print_client(&runtime.block_on(client.rotate(&text))?, json)?;
        }
        ClientCommand::Revoke {
            fingerprint,
            reason,
        } => print_client(
            &runtime.block_on(client.revoke(fingerprint.as_deref(), &reason))?,
            json,
        )?,
        ClientCommand::Admin(cmd) => admin(&runtime, &client, cmd, json)?,
        ClientCommand::Transit(cmd) => return transit(&runtime, &client, cmd, json),
        ClientCommand::Secret(cmd) => return secret(&runtime, &client, cmd, json),
        ClientCommand::Token(call) => token(&runtime, &client, call, json)?,
        ClientCommand::Policy(call) => return policy(&runtime, &client, call, json),
    }
    Ok(OK)
}

fn print_transit_key(k: &keyhaven_client::wire::TransitKeyView, json: bool) -> Result<()> {
    if json {
        return print_json(k);
    }
    outln!(
        "{} ({}): versions 1 to {}, decrypts from version {}",
        k.name,
        k.kind,
        k.latest_version,
        k.min_decryption_version
    )
}

fn policy(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    call: crate::policy::PolicyCall,
    json: bool,
) -> Result<u8> {
    use crate::policy::PolicyCall;
    match call {
        PolicyCall::Load { prefix, rego } => {
            let sha = runtime.block_on(client.admin_put_policy(&prefix, &rego))?;
            outln!("loaded the policy of '{prefix}' (sha256 {sha})")?;
        }
        PolicyCall::List => {
            let all = runtime.block_on(client.admin_policies())?;
            if json {
                print_json(&all)?;
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|p| {
                        vec![
                            format!("'{}'", p["prefix"].as_str().unwrap_or("")),
                            p["sha256"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .take(16)
                                .collect(),
                            keyhaven::rfc3339(p["updated_at"].as_u64().unwrap_or(0)),
                            p["updated_by"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                print_table(&["PREFIX", "SHA256", "LOADED", "BY"], &rows)?;
            }
        }
        PolicyCall::Delete { prefix } => {
            runtime.block_on(client.admin_delete_policy(&prefix))?;
            outln!("deleted the policy of '{prefix}'")?;
        }
        PolicyCall::Explain { path } => {
            let why = runtime.block_on(client.explain_release(&path))?;
            if json {
                print_json(&why)?;
            } else {
                outln!("{}", why["summary"].as_str().unwrap_or(""))?;
            }
            if why["allow"] != serde_json::Value::Bool(true) {
                return Ok(crate::exit::VERIFY_FAILED);
            }
        }
    }
    Ok(OK)
}

fn token(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    call: crate::token::TokenCall,
    json: bool,
) -> Result<()> {
    match call {
        crate::token::TokenCall::Mint {
            holder,
            rights,
            ttl,
        } => {
            let minted = runtime.block_on(client.mint_token(&holder, &rights, ttl))?;
            if json {
                return print_json(&minted);
            }
            errln!(
                "token {} for key {holder}, until {}",
                minted.id,
                keyhaven::rfc3339(minted.expires_at)
            );
            outln!("{}", minted.token)
        }
        crate::token::TokenCall::Revoke {
            token,
            family,
            reason,
        } => {
            let id = runtime.block_on(client.revoke_token(&token, family, &reason))?;
            outln!("revoked {id}")
        }
    }
}

/// Reads a value from a file, or standard input for none or `-`, into memory wiped after.
fn read_value(input: Option<&std::path::Path>) -> Result<keyhaven::zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut data = keyhaven::zeroize::Zeroizing::new(Vec::new());
    match input.filter(|p| p.as_os_str() != "-") {
        None => std::io::stdin()
            .lock()
            .read_to_end(&mut data)
            .context("read standard input"),
        Some(p) => std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .with_context(|| format!("read {}", p.display())),
    }?;
    Ok(data)
}

/// Writes a secret value to a new private file, or standard output.
fn write_value(out: Option<&std::path::Path>, value: &[u8]) -> Result<()> {
    use std::io::Write;
    match out {
        Some(path) => keyhaven::fs::atomic_write_new(path, value).map_err(anyhow::Error::from),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(value)
                .and_then(|()| stdout.flush())
                .context("write the value")
        }
    }
}

fn secret(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    cmd: SecretCommand,
    json: bool,
) -> Result<u8> {
    // A release that may give a capability instead says which it gave by its exit code.
    if let SecretCommand::Get {
        path,
        version,
        out,
        receipt,
        accept_capability: true,
    } = cmd
    {
        use keyhaven_client::secrets::ReleaseOutcome;
        return match runtime.block_on(client.release_or_capability(&path, version))? {
            ReleaseOutcome::Secret(r) => {
                if let Some(file) = &receipt {
                    keyhaven::fs::atomic_write_new(file, r.receipt.as_bytes())?;
                }
                write_value(out.as_deref(), r.secret.expose_secret())?;
                Ok(OK)
            }
            ReleaseOutcome::Capability(c) => {
                let rights: Vec<String> = c
                    .rights
                    .iter()
                    .map(|r| format!("{}:{}", r.operation, r.prefix))
                    .collect();
                errln!(
                    "this key is tier {}, below the secret's min_tier {}: the owner's fallback \
                     is a capability ({}) until {} (use it with --token); exit 13",
                    c.requester_tier,
                    c.min_tier,
                    rights.join(", "),
                    keyhaven::rfc3339(c.expires_at)
                );
                let line = format!("{}\n", c.token);
                write_value(out.as_deref(), line.as_bytes())?;
                Ok(crate::exit::CAPABILITY_INSTEAD)
            }
        };
    }
    secret_call(runtime, client, cmd, json)?;
    Ok(OK)
}

fn secret_call(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    cmd: SecretCommand,
    json: bool,
) -> Result<()> {
    match cmd {
        SecretCommand::Put {
            path,
            input,
            tier,
            floor,
            min_tier,
        } => {
            let value = read_value(input.as_deref())?;
            let options = keyhaven_client::wire::SecretOptions {
                tier,
                floor,
                min_tier,
            };
            let w = runtime.block_on(client.put_secret(&path, &value, options))?;
            if json {
                return print_json(&w);
            }
            outln!(
                "{} version {} at tier {} (released to tier {} and above)",
                w.path,
                w.version,
                w.tier,
                w.min_tier
            )?;
            if w.downgraded {
                errln!(
                    "note: tier {} was asked for; this broker keeps it at tier {}",
                    w.requested_tier,
                    w.tier
                );
            }
            Ok(())
        }
        // Answered by `secret` before it calls here.
        SecretCommand::Get {
            accept_capability: true,
            ..
        } => Ok(()),
        SecretCommand::Fallback {
            path,
            rights,
            ttl,
            clear,
        } => {
            if clear {
                runtime.block_on(client.clear_secret_fallback(&path))?;
                return outln!("'{path}': a requester below its min_tier gets nothing");
            }
            let rights = crate::token::parse_rights(&rights)?;
            runtime.block_on(client.set_secret_fallback(&path, &rights, ttl))?;
            outln!(
                "'{path}': a requester below its min_tier gets a capability of {} right(s) for \
                 {} s",
                rights.len(),
                ttl.unwrap_or(300)
            )
        }
        SecretCommand::Get {
            path,
            version,
            out,
            receipt,
            accept_capability: false,
        } => {
            let r = runtime.block_on(client.release_secret(&path, version))?;
            if let Some(file) = &receipt {
                keyhaven::fs::atomic_write_new(file, r.receipt.as_bytes())?;
            }
            write_value(out.as_deref(), r.secret.expose_secret())
        }
        SecretCommand::Info { path } => {
            let v = runtime.block_on(client.secret_info(&path))?;
            if json {
                return print_json(&v);
            }
            outln!(
                "{}: versions 1 to {}, kept at tier {}, released to tier {} and above",
                v.path,
                v.latest_version,
                v.tier,
                v.min_tier
            )
        }
        SecretCommand::List { prefix } => {
            let all = runtime.block_on(client.list_secrets(prefix.as_deref().unwrap_or("")))?;
            if json {
                return print_json(&all);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.path.clone(),
                        s.latest_version.to_string(),
                        s.tier.to_string(),
                        s.min_tier.to_string(),
                    ]
                })
                .collect();
            print_table(&["PATH", "VERSION", "TIER", "MIN TIER"], &rows)
        }
        SecretCommand::Delete { path } => {
            runtime.block_on(client.delete_secret(&path))?;
            outln!("deleted {path}")
        }
        SecretCommand::Receipt { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let claims = keyhaven::jws::verify(
                text.trim(),
                client.server_key(),
                keyhaven_client::secrets::RECEIPT_TYPE,
            )
            .map_err(|e| {
                keyhaven::CoreError::corrupt(
                    file.display().to_string(),
                    format!("not a release receipt of the pinned server key: {e}"),
                )
            })?;
            print_json(&claims)
        }
        SecretCommand::RotateKek { tier } => {
            let (version, moved) = runtime.block_on(client.rotate_secret_kek(tier))?;
            outln!("KEK version {version}; {moved} envelopes rewrapped")
        }
    }
}

fn transit(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    cmd: TransitCommand,
    json: bool,
) -> Result<u8> {
    // A verify's answer is its exit code; every other call succeeds or fails.
    if let TransitCommand::Verify {
        name,
        signature,
        input,
        hash,
    } = cmd
    {
        let data = read_value(input.as_deref())?;
        let valid =
            runtime.block_on(client.transit_verify(&name, &data, &signature, hash.as_deref()))?;
        if json {
            print_json(&serde_json::json!({ "valid": valid }))?;
        } else {
            outln!("{}", if valid { "valid" } else { "invalid" })?;
        }
        return Ok(if valid {
            OK
        } else {
            crate::exit::VERIFY_FAILED
        });
    }
    transit_call(runtime, client, cmd, json)?;
    Ok(OK)
}

fn transit_call(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    cmd: TransitCommand,
    json: bool,
) -> Result<()> {
    match cmd {
        // Answered by `transit` before it calls here.
        TransitCommand::Verify { .. } => Ok(()),
        TransitCommand::Create { name, key_type } => print_transit_key(
            &runtime.block_on(client.transit_create_of(&name, &key_type))?,
            json,
        ),
        TransitCommand::Sign { name, input, hash } => {
            let data = read_value(input.as_deref())?;
            let out = runtime.block_on(client.transit_sign(&name, &data, hash.as_deref()))?;
            if json {
                return print_json(&out);
            }
            outln!("{}", out.signature)
        }
        TransitCommand::Read { name } => {
            print_transit_key(&runtime.block_on(client.transit_read(&name))?, json)
        }
        TransitCommand::Rotate { name } => {
            print_transit_key(&runtime.block_on(client.transit_rotate(&name))?, json)
        }
        TransitCommand::MinDecryptionVersion { name, version } => print_transit_key(
            &runtime.block_on(client.transit_set_min_decryption_version(&name, version))?,
            json,
        ),
        TransitCommand::List => {
            let names = runtime.block_on(client.transit_list())?;
            if json {
                return print_json(&names);
            }
            for n in names {
                outln!("{n}")?;
            }
            Ok(())
        }
        TransitCommand::Encrypt { name, input } => {
            let data = read_value(input.as_deref())?;
            let out = runtime.block_on(client.transit_encrypt(&name, &data))?;
            if json {
                return print_json(&out);
            }
            outln!("{}", out.ciphertext)
        }
        TransitCommand::Decrypt {
            name,
            ciphertext,
            out,
        } => {
            let plain = runtime.block_on(client.transit_decrypt(&name, &ciphertext))?;
            write_value(out.as_deref(), plain.expose_secret())
        }
        TransitCommand::Rewrap { name, ciphertext } => {
            let out = runtime.block_on(client.transit_rewrap(&name, &ciphertext))?;
            if json {
                return print_json(&out);
            }
            outln!("{}", out.ciphertext)
        }
        TransitCommand::Datakey {
            name,
            bits,
            wrapped,
        } => {
            let key = runtime.block_on(client.transit_data_key(&name, bits, !wrapped))?;
            if json {
                return print_json(&key);
            }
            outln!("ciphertext: {}", key.ciphertext)?;
            if let Some(p) = &key.plaintext {
                outln!("plaintext: {p}")?;
            }
            Ok(())
        }
    }
}

fn admin(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    cmd: AdminCommand,
    json: bool,
) -> Result<()> {
    match cmd {
        AdminCommand::List { query, limit } => {
            let clients =
                runtime.block_on(client.admin_clients(query.as_deref().unwrap_or(""), limit))?;
            if json {
                return print_json(&clients);
            }
            let rows = clients
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.name.clone(),
                        c.role.as_str().to_owned(),
                        keyhaven::rfc3339(c.registered_at),
                        c.keys
                            .iter()
                            .map(|k| {
                                format!(
                                    "{}:{}",
                                    k.fingerprint.get(..16).unwrap_or(&k.fingerprint),
                                    k.status.as_str()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect::<Vec<_>>();
            print_table(&["ID", "NAME", "ROLE", "REGISTERED", "KEYS"], &rows)
        }
        AdminCommand::Export => print_json(&runtime.block_on(client.admin_export())?),
        AdminCommand::Vouch {
            fingerprint,
            tier,
            reason,
        } => {
            runtime.block_on(client.admin_vouch(&fingerprint, tier, &reason))?;
            outln!("key {fingerprint} reaches tier {tier}")
        }
        AdminCommand::Revoke {
            fingerprints,
            reason,
        } => {
            let out = runtime.block_on(client.admin_revoke(&fingerprints, &reason))?;
            if json {
                return print_json(&out);
            }
            outln!(
                "revoked {}, already revoked {}, unknown {}",
                out.revoked.len(),
                out.already.len(),
                out.unknown.len()
            )?;
            for fp in &out.unknown {
                errln!("warning: no client has key {fp}");
            }
            Ok(())
        }
        AdminCommand::RevokeEvidence {
            carried,
            reason,
            rewrap,
        } => {
            let (kind, value) = carried.kind_value();
            let out =
                runtime.block_on(client.admin_revoke_evidence(kind, value, &reason, rewrap))?;
            if json {
                return print_json(&out);
            }
            let affected = out["affected"].as_array().map_or(0, Vec::len);
            outln!(
                "{} {kind} {}: {affected} release(s) were made on evidence carrying it",
                if out["added"] == true {
                    "revoked"
                } else {
                    "already revoked"
                },
                out["revocation"]["value"].as_str().unwrap_or(value)
            )?;
            if affected > 0 {
                print_affected(&out["affected"])?;
            }
            for p in out["problems"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                errln!("warning: {}", p.as_str().unwrap_or(""));
            }
            for r in out["rewrapped"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                outln!(
                    "rotated tenant {} tier {} KEK to version {}: {} envelope(s) rewrapped",
                    r["tenant"].as_str().unwrap_or(""),
                    r["tier"],
                    r["kek_version"],
                    r["rewrapped"]
                )?;
            }
            Ok(())
        }
        AdminCommand::Affected { carried } => {
            let (kind, value) = carried.kind_value();
            let out = runtime.block_on(client.admin_evidence_affected(kind, value))?;
            if json {
                return print_json(&out);
            }
            print_affected(&out)
        }
        AdminCommand::EvidenceRevocations => {
            let out = runtime.block_on(client.admin_evidence_revocations())?;
            if json {
                return print_json(&out);
            }
            let rows: Vec<Vec<String>> = out
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        r["kind"].as_str().unwrap_or("").to_owned(),
                        r["value"].as_str().unwrap_or("").to_owned(),
                        keyhaven::rfc3339(r["at"].as_u64().unwrap_or(0)),
                        r["reason"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect();
            print_table(&["KIND", "VALUE", "AT", "REASON"], &rows)
        }
        AdminCommand::Stats => {
            let s = runtime.block_on(client.admin_stats())?;
            if json {
                return print_json(&s);
            }
            outln!("clients: {}", s.clients)?;
            outln!(
                "keys: {} active, {} rotating, {} retired, {} revoked",
                s.active_keys,
                s.rotating_keys,
                s.retired_keys,
                s.revoked_keys
            )?;
            outln!(
                "registrations: {} in the last hour, {} in the last day",
                s.registrations_last_hour,
                s.registrations_last_day
            )
        }
    }
}

fn key_line(k: &KeyView) -> String {
    let mut line = format!("{} {} {}", k.fingerprint, k.algorithm, k.status.as_str());
    if let Some(until) = k.until {
        line.push_str(&format!(" until {}", keyhaven::rfc3339(until)));
    }
    if let Some(r) = &k.revoked {
        line.push_str(&format!(
            " by {} at {}: {}",
            r.by,
            keyhaven::rfc3339(r.at),
            r.reason
        ));
    }
    line
}

fn print_client(c: &ClientView, json: bool) -> Result<()> {
    if json {
        return print_json(c);
    }
    outln!("client {} '{}' ({})", c.id, c.name, c.role.as_str())?;
    for k in &c.keys {
        outln!("  {}", key_line(k))?;
    }
    Ok(())
}
