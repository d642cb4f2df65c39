//! `keyhaven serve`: the key server of this home (embedded mode), and `serve init`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use keyhaven_server::{ServeError, Server, ServerConfig, bootstrap_admin};

use crate::args::AlgorithmArg;
use crate::ctx::Ctx;
use crate::exit::{OK, UsageError};
use crate::output::{errln, outln};

/// `keyhaven serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ServeArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ServeCommand>,
    /// The address to listen on (`127.0.0.1:0` picks a free port, printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8421")]
    pub(crate) listen: SocketAddr,
    /// Keep the server's state in this PostgreSQL database (`postgres://user@host,host2/db`)
    /// instead of the home's SQLite file, so several servers serve together.
    #[arg(
        long,
        global = true,
        env = "KEYHAVEN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) database: Option<String>,
    /// The URL clients use to reach this server (`https://keys.example.com` behind a TLS
    /// proxy): they sign for it, and a request naming another host is refused.
    #[arg(long, value_name = "URL")]
    pub(crate) public_url: Option<String>,
    /// Serve HTTPS. Without --tls-cert, with a self-signed certificate made by the TLS key
    /// (development: its fingerprint is printed and it is written to HOME/server/tls-cert.pem
    /// for clients to trust with `keyhaven client --tls-ca`).
    #[arg(long)]
    pub(crate) tls: bool,
    /// The TLS certificate chain (PEM, the leaf first) for the TLS key.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The key of this home that proves the certificate (default: the server key). It signs
    /// each handshake where it lives (a token, a TPM): it never leaves its backend.
    #[arg(long, value_name = "ID|LABEL", requires = "tls")]
    pub(crate) tls_key: Option<String>,
    /// A web origin (`https://app.example.com`) whose pages may call this server from a
    /// browser (CORS; repeat for more): the browser SDK's signed requests and the signature
    /// headers of the answers. No wildcard: name each origin.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub(crate) cors_origins: Vec<String>,
    /// Serve plain HTTP on an address other than loopback. Without TLS, put a TLS-terminating
    /// proxy in front: signatures protect integrity, not confidentiality.
    #[arg(long)]
    pub(crate) allow_plain_http: bool,
    /// Accept `sample` evidence in release requests: development only (it proves nothing,
    /// and never reaches tier 2).
    #[arg(long)]
    pub(crate) allow_sample_evidence: bool,
    /// A SEV-SNP launch measurement (96 hex digits) whose guests reach tier 2 with their
    /// evidence (repeat for more); any other genuine SNP guest is tier 1.
    #[arg(long = "snp-measurement", value_name = "HEX")]
    pub(crate) snp_measurements: Vec<String>,
    /// A TDX MRTD (96 hex digits) whose trust domains reach tier 2 with their evidence
    /// (repeat for more); any other genuine TD is tier 1.
    #[arg(long = "tdx-mr-td", value_name = "HEX")]
    pub(crate) tdx_mr_tds: Vec<String>,
    /// A TDX register a TD must also show (repeat for more): NAME=HEX, NAME one of rtmr0 to
    /// rtmr3, mr_config_id, mr_owner, mr_owner_config, mr_seam, mr_service_td. MRTD measures
    /// only the firmware; the kernel and its command line are in the RTMRs.
    #[arg(long = "tdx-register", value_name = "NAME=HEX")]
    pub(crate) tdx_registers: Vec<String>,
    /// Accept TPM evidence: the TPM manufacturers' CA certificates (a PEM file) whose
    /// endorsement keys are trusted. Attestation keys enroll by credential activation
    /// (/v1/attestation/tpm/); their quotes reach tier 2.
    #[arg(long = "tpm-ek-ca", value_name = "FILE")]
    pub(crate) tpm_ek_ca: Option<std::path::PathBuf>,
    /// A PCR reference value (SHA-256 bank) TPM quotes must show: INDEX=HEX (repeat for more).
    #[arg(long = "tpm-pcr", value_name = "INDEX=HEX", requires = "tpm_ek_ca")]
    pub(crate) tpm_pcrs: Vec<String>,
    /// Speak Trustee's KBS protocol (/kbs/v0/): attested workloads fetch this client's
    /// secrets under kbs/ (resource REPO/TYPE/TAG is secret kbs/REPO/TYPE/TAG) when their
    /// evidence's tier meets the secret's min_tier.
    #[arg(long = "kbs-tenant", value_name = "CLIENT")]
    pub(crate) kbs_tenant: Option<String>,
    /// A TPM attestation key whose certifications prove a client's key lives in a TPM (SHA-256
    /// of its TPM2B_PUBLIC, hex: `keyhaven key attest` prints it as attestation_key); repeat
    /// for more. Such keys reach tier 2 (`keyhaven client attest-key`).
    #[arg(long = "trusted-ak", value_name = "HEX")]
    pub(crate) trusted_aks: Vec<String>,
    /// An admin's word alone (`client admin vouch`) no longer makes a key tier 2: it needs a
    /// key attestation by a trusted attestation key.
    #[arg(long)]
    pub(crate) require_key_attestation: bool,
}

/// `keyhaven serve init`, `keyhaven serve audit-verify`.
#[derive(Debug, Subcommand)]
pub(crate) enum ServeCommand {
    /// Check the audit trail of servers sharing a PostgreSQL database (--database): every
    /// chain whole, every checkpoint signed by the server key and still true; exit 7 naming
    /// the first break.
    AuditVerify,
    /// Set the server up in this home: make its key (unless it has one) and register a key of
    /// this home as an admin.
    Init {
        /// The key of this home to register as an admin (default: the default key).
        #[arg(long, value_name = "ID|LABEL")]
        admin: Option<String>,
        /// The admin client's name.
        #[arg(long, default_value = "admin")]
        admin_name: String,
        /// Register no admin now.
        #[arg(long, conflicts_with_all = ["admin", "admin_name"])]
        no_admin: bool,
        /// The server key's algorithm (it signs every response: ed25519 is the fastest).
        #[arg(long, value_enum, default_value = "ed25519")]
        algorithm: AlgorithmArg,
        /// The backend to make the server key in (default: the default backend).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
    },
    /// Set up the key broker: make its master key (unless there is one), an agreement key
    /// whose private part never leaves its backend; KEKs are wrapped under it and the server
    /// then serves the transit routes (`/v1/transit/`, Vault's shape).
    InitBroker {
        /// The backend for the master key (default: the default backend): a PKCS#11 token or
        /// a TPM for tier 2, the encrypted store for tier 1.
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// The master key's algorithm (default: ecdh-p384 in hardware, x25519 in software).
        #[arg(long, value_enum)]
        algorithm: Option<MasterAlgorithmArg>,
    },
}

/// Agreement algorithms for a master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MasterAlgorithmArg {
    /// X25519 (software backends).
    X25519,
    /// ECDH on P-256 (tokens and TPMs).
    EcdhP256,
    /// ECDH on P-384 (tokens and TPMs).
    EcdhP384,
}

impl From<MasterAlgorithmArg> for keyhaven::Algorithm {
    fn from(a: MasterAlgorithmArg) -> Self {
        match a {
            MasterAlgorithmArg::X25519 => keyhaven::Algorithm::X25519,
            MasterAlgorithmArg::EcdhP256 => keyhaven::Algorithm::EcdhP256,
            MasterAlgorithmArg::EcdhP384 => keyhaven::Algorithm::EcdhP384,
        }
    }
}

/// Unwraps the server's error so the exit code and advice come from what failed.
pub(crate) fn serve_error(e: ServeError) -> anyhow::Error {
    match e {
        ServeError::Keyhaven(e) => e.into(),
        ServeError::Storage(e) => e.into(),
        other => other.into(),
    }
}

pub(crate) fn run(ctx: &Ctx, args: ServeArgs) -> Result<u8> {
    match args.command {
        Some(ServeCommand::AuditVerify) => audit_verify(ctx, args.database.as_deref()),
        Some(ServeCommand::Init {
            admin,
            admin_name,
            no_admin,
            algorithm,
            backend,
        }) => init(
            ctx,
            args.database.as_deref(),
            admin,
            &admin_name,
            no_admin,
            algorithm,
            backend,
        ),
        Some(ServeCommand::InitBroker { backend, algorithm }) => init_broker(
            ctx,
            args.database.as_deref(),
            backend.as_deref(),
            algorithm.map(Into::into),
        ),
        None => serve(ctx, &args),
    }
}

fn init_broker(
    ctx: &Ctx,
    database: Option<&str>,
    backend: Option<&str>,
    algorithm: Option<keyhaven::Algorithm>,
) -> Result<u8> {
    let m = ctx.manager()?;
    let key = match database {
        Some(url) => keyhaven_server::setup_broker_postgres(&m, url, backend, algorithm),
        None => keyhaven_server::setup_broker(&m, backend, algorithm),
    }
    .map_err(serve_error)?;
    let tier = if key.protection() == keyhaven::Protection::Hardware {
        2
    } else {
        1
    };
    outln!(
        "master key: {} ({}, {}, {}): the broker serves tier {tier}",
        key.public_key().fingerprint().to_hex(),
        key.algorithm(),
        key.protection(),
        key.reference()
    )?;
    outln!("restart `keyhaven serve` to serve the transit routes")?;
    Ok(OK)
}

fn audit_verify(ctx: &Ctx, database: Option<&str>) -> Result<u8> {
    let url = database.ok_or_else(|| {
        UsageError(
            "the audit trail to check is a PostgreSQL database's: pass --database URL (an \
             embedded server's decisions are in the home's log: `keyhaven audit verify`)"
                .into(),
        )
    })?;
    let m = ctx.manager()?;
    let (storage, key) = Server::postgres_server_key(&m, url).map_err(serve_error)?;
    let report = keyhaven_server::verify_trail(&storage, &key)?;
    outln!(
        "{} chains, {} records, {} signed checkpoints",
        report.chains,
        report.records,
        report.checkpoints
    )?;
    if let Some(first) = report.problems.first() {
        for p in &report.problems {
            errln!("{p}");
        }
        return Err(keyhaven::CoreError::corrupt("the server audit trail", first.clone()).into());
    }
    outln!("the audit trail is whole")?;
    Ok(OK)
}

fn init(
    ctx: &Ctx,
    database: Option<&str>,
    admin: Option<String>,
    admin_name: &str,
    no_admin: bool,
    algorithm: AlgorithmArg,
    backend: Option<String>,
) -> Result<u8> {
    let m = ctx.manager()?;
    let admin = if no_admin {
        None
    } else {
        Some(match admin {
            Some(r) => m.resolve(&r)?,
            None => m.default_key()?,
        })
    };
    let admin = admin.map(|k| m.rotation().signing_target(&k)).transpose()?;
    let admin = admin.as_ref().map(|k| (k, admin_name));
    let server_key = match database {
        Some(url) => keyhaven_server::bootstrap_admin_postgres(
            &m,
            url,
            backend.as_deref(),
            Some(algorithm.into()),
            admin,
        ),
        None => bootstrap_admin(&m, backend.as_deref(), Some(algorithm.into()), admin),
    }
    .map_err(serve_error)?;
    outln!(
        "server key: {} ({}, {})",
        server_key.public_key().fingerprint().to_hex(),
        server_key.algorithm(),
        server_key.reference()
    )?;
    if let Some((a, _)) = admin {
        outln!(
            "admin '{admin_name}': key {} ({})",
            a.public_key().fingerprint().to_hex(),
            a.reference()
        )?;
    }
    outln!("start it with `keyhaven serve`")?;
    Ok(OK)
}

/// Structured logs (JSON lines on standard error), filtered by `KEYHAVEN_LOG` (default
/// `info`: refusals, failures; `debug` adds every request).
fn start_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYHAVEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// SHA-384 measurements given as hex on the command line.
fn measurements(hexes: &[String], flag: &str, what: &str) -> Result<Vec<[u8; 48]>> {
    hexes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 48]>::try_from(b).ok())
                .ok_or_else(|| {
                    anyhow::Error::new(crate::exit::UsageError(format!(
                        "{flag} {h:?} is not 96 hex digits (a SHA-384 {what} digest)"
                    )))
                })
        })
        .collect()
}

fn serve(ctx: &Ctx, args: &ServeArgs) -> Result<u8> {
    start_logging();
    let listen = args.listen;
    let snp_measurements = measurements(&args.snp_measurements, "--snp-measurement", "launch")?;
    let tdx_mr_tds = measurements(&args.tdx_mr_tds, "--tdx-mr-td", "MRTD")?;
    let mut tdx_registers = std::collections::BTreeMap::new();
    for given in &args.tdx_registers {
        const NAMES: [&str; 9] = [
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mr_config_id",
            "mr_owner",
            "mr_owner_config",
            "mr_seam",
            "mr_service_td",
        ];
        let (name, value) = given
            .split_once('=')
            .filter(|(n, _)| NAMES.contains(n))
            .ok_or_else(|| {
                crate::exit::UsageError(format!(
                    "--tdx-register {given:?} is NAME=HEX, NAME one of {}",
                    NAMES.join(", ")
                ))
            })?;
        let [value] = measurements(&[value.to_owned()], "--tdx-register", "register")?[..] else {
            continue;
        };
        tdx_registers.insert(name.to_owned(), value);
    }
    let mut tpm_pcrs = std::collections::BTreeMap::new();
    for given in &args.tpm_pcrs {
        let parsed = given.split_once('=').and_then(|(i, h)| {
            let index = i.parse::<u8>().ok().filter(|i| *i < 24)?;
            let value = hex::decode(h).ok().filter(|v| v.len() == 32)?;
            Some((index, value))
        });
        let (index, value) = parsed.ok_or_else(|| {
            crate::exit::UsageError(format!(
                "--tpm-pcr {given:?} is INDEX=HEX: a PCR from 0 to 23 and 64 hex digits"
            ))
        })?;
        if tpm_pcrs.insert(index, value).is_some() {
            return Err(crate::exit::UsageError(format!(
                "--tpm-pcr names PCR {index} twice: one reference value each"
            ))
            .into());
        }
    }
    if let Some(bad) = args
        .trusted_aks
        .iter()
        .find(|a| a.len() != 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(crate::exit::UsageError(format!(
            "--trusted-ak {bad:?} is 64 hex digits: the attestation_key `keyhaven key attest` \
             prints"
        ))
        .into());
    }
    let tpm_ek_cas = match &args.tpm_ek_ca {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                crate::exit::UsageError(format!(
                    "--tpm-ek-ca {}: {e} (a PEM file of CA certificates)",
                    path.display()
                ))
            })?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(crate::exit::UsageError(format!(
                    "--tpm-ek-ca {}: no PEM certificate in it",
                    path.display()
                ))
                .into());
            }
            Some(text)
        }
    };
    let mut config = ServerConfig {
        allow_sample_evidence: args.allow_sample_evidence,
        snp_measurements,
        tdx_mr_tds,
        tdx_registers,
        tpm_ek_cas,
        tpm_pcrs,
        kbs_tenant: args.kbs_tenant.clone(),
        trusted_aks: args.trusted_aks.clone(),
        require_key_attestation: args.require_key_attestation,
        ..ServerConfig::default()
    };
    if let Some(url) = &args.public_url {
        // An origin only: scheme, host and port, nothing after.
        let origin = keyhaven_client::origin_of(url)
            .ok()
            .filter(|o| o.as_str() == url.trim_end_matches('/'))
            .ok_or_else(|| {
                UsageError(format!(
                    "--public-url {url:?} must be an origin: http(s)://host[:port], no path"
                ))
            })?;
        config.public_origin = Some(origin);
    }
    for o in &args.cors_origins {
        let origin = keyhaven_client::origin_of(o)
            .ok()
            .filter(|origin| origin.as_str() == o.as_str())
            .ok_or_else(|| {
                UsageError(format!(
                    "--cors-origin {o:?} must be an origin as browsers send it: \
                     http(s)://host[:port], no path, no trailing slash, no wildcard"
                ))
            })?;
        config.cors_origins.push(origin);
    }
    if !listen.ip().is_loopback() && !args.allow_plain_http && !args.tls {
        return Err(UsageError(format!(
            "{listen} is not a loopback address: serve HTTPS (--tls), or put a TLS proxy in \
             front and pass --allow-plain-http, or listen on 127.0.0.1"
        ))
        .into());
    }
    if args.tls {
        config.scheme = "https";
    }
    let m = ctx.manager()?;
    let server = match args.database.as_deref() {
        Some(url) => Server::from_home_postgres(&m, config, url),
        None => Server::from_home(&m, config),
    }
    .map_err(serve_error)?;
    let identity = if args.tls {
        Some(tls_identity(&m, &server, args, listen)?)
    } else {
        None
    };
    crate::ctx::print_warnings(&m);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        let bound = listener.local_addr()?;
        let key = server.public_key();
        let scheme = if identity.is_some() { "https" } else { "http" };
        outln!("keyhaven server listening on {scheme}://{bound}")?;
        outln!(
            "server key: {} ({}); clients check it with `keyhaven client register --server-fingerprint`",
            key.fingerprint().to_hex(),
            key.algorithm()
        )?;
        if let Some(id) = &identity {
            outln!("TLS certificate: sha256 {}", id.fingerprint())?;
        }
        crate::output::flush_stdout()?;
        match identity {
            Some(id) => keyhaven_server::serve_tls(listener, server, id, shutdown_signal()).await,
            None => keyhaven_server::serve(listener, server, shutdown_signal()).await,
        }
        .map_err(serve_error)?;
        errln!("keyhaven server stopped");
        Ok(OK)
    })
}

/// The TLS certificate and the key of the home that proves it.
fn tls_identity(
    m: &keyhaven::KeyManager,
    server: &Server,
    args: &ServeArgs,
    listen: SocketAddr,
) -> Result<keyhaven_server::TlsIdentity> {
    let reference = match &args.tls_key {
        Some(r) => r.as_str(),
        None => server
            .key_reference()
            .ok_or_else(|| anyhow::anyhow!("the server key is not a key of this home"))?,
    };
    let key = m.resolve(reference)?;
    let signer = m.service_signer(&key, "sign TLS handshakes")?;
    let identity = match &args.tls_cert {
        Some(path) => {
            let pem = keyhaven::fs::read_config(path)?;
            keyhaven_server::TlsIdentity::from_pem(&pem, signer)
        }
        None => {
            let mut names = vec!["localhost".to_owned(), listen.ip().to_string()];
            if let Some(origin) = &args.public_url
                && let Some(host) = origin.split("://").nth(1)
            {
                let host = host.trim_end_matches('/');
                // `[::1]:8443`, `[::1]`, `keys.example.com:8443`, `keys.example.com`.
                let host = match host.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(v6),
                    None => host.rsplit_once(':').map_or(host, |(h, _)| h),
                };
                names.push(host.to_owned());
            }
            names.dedup();
            keyhaven_server::TlsIdentity::self_signed(signer, &names)
        }
    }
    .map_err(serve_error)?;
    if args.tls_cert.is_none() {
        let path = m.home().join("server").join("tls-cert.pem");
        keyhaven::fs::atomic_write(&path, identity.certificate_pem().as_bytes())?;
    }
    Ok(identity)
}

/// SIGTERM or SIGINT: stop accepting, let requests in flight finish.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
