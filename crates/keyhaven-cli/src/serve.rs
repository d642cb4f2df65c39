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
    /// Serve plain HTTP on an address other than loopback. Without TLS, put a TLS-terminating
    /// proxy in front: signatures protect integrity, not confidentiality.
    #[arg(long)]
    pub(crate) allow_plain_http: bool,
}

/// `keyhaven serve init`.
#[derive(Debug, Subcommand)]
pub(crate) enum ServeCommand {
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
}

/// Unwraps the server's error so the exit code and advice come from what failed.
pub(crate) fn serve_error(e: ServeError) -> anyhow::Error {
    match e {
        ServeError::Keyhaven(e) => e.into(),
        other => other.into(),
    }
}

pub(crate) fn run(ctx: &Ctx, args: ServeArgs) -> Result<u8> {
    match args.command {
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
        None => serve(
            ctx,
            args.listen,
            args.allow_plain_http,
            args.public_url,
            args.database.as_deref(),
        ),
    }
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

fn serve(
    ctx: &Ctx,
    listen: SocketAddr,
    allow_plain_http: bool,
    public_url: Option<String>,
    database: Option<&str>,
) -> Result<u8> {
    let mut config = ServerConfig::default();
    if let Some(url) = public_url {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                UsageError(format!(
                    "--public-url {url:?} must start with https:// or http://"
                ))
            })?;
        if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
            return Err(UsageError(format!(
                "--public-url {url:?} must be an origin (scheme and host, no path)"
            ))
            .into());
        }
        config.public_origin = Some(url.trim_end_matches('/').to_owned());
    }
    if !listen.ip().is_loopback() && !allow_plain_http {
        return Err(UsageError(format!(
            "{listen} is not a loopback address and this server speaks plain HTTP: put a TLS \
             proxy in front and pass --allow-plain-http, or listen on 127.0.0.1"
        ))
        .into());
    }
    let m = ctx.manager()?;
    let server = match database {
        Some(url) => Server::from_home_postgres(&m, config, url),
        None => Server::from_home(&m, config),
    }
    .map_err(serve_error)?;
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
        outln!("keyhaven server listening on http://{bound}")?;
        outln!(
            "server key: {} ({}); clients check it with `keyhaven client register --server-fingerprint`",
            key.fingerprint().to_hex(),
            key.algorithm()
        )?;
        crate::output::flush_stdout()?;
        keyhaven_server::serve(listener, server, shutdown_signal())
            .await
            .map_err(serve_error)?;
        errln!("keyhaven server stopped");
        Ok(OK)
    })
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
