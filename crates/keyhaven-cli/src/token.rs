//! `keyhaven token`: capability tokens of the key broker. `mint` and `revoke` ask the server
//! (signed by a key of this home, like `keyhaven client`); `attenuate` and `inspect` work
//! offline, on the token alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use keyhaven_client::tokens::{self, Attenuation, Right};

use crate::client::{ClientArgs, ClientCommand};
use crate::ctx::Ctx;
use crate::exit::{OK, UsageError};
use crate::output::{outln, print_json};

/// `keyhaven token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    pub(crate) command: TokenCommand,
}

/// What to do with a token.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token for your resources on the server, held by another client's key.
    Mint {
        /// The holder's key fingerprint (it must be registered).
        #[arg(long, value_name = "HEX")]
        holder: String,
        /// A right, OPERATION:PREFIX (`secret.release:db/`, `transit.encrypt:payments`,
        /// `*:`); repeat for several.
        #[arg(long = "right", value_name = "OP:PREFIX", required = true)]
        rights: Vec<String>,
        /// How long it lasts (`90s`, `10m`, `1h`, `7d`; at most 30 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Narrow a token offline: only these operations, paths under a prefix, a shorter life.
    /// The result can do less, never more, and needs no server.
    Attenuate {
        /// The token (`kht_...`), or `-` to read it from standard input.
        token: String,
        /// Only this operation (repeat for several).
        #[arg(long = "operation", value_name = "OP")]
        operations: Vec<String>,
        /// Only paths starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Not after this long from now (`10m`, `1h`).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// What a token says (its blocks and ids), read offline: its signature is checked by the
    /// server when it is used.
    Inspect {
        /// The token, or `-` for standard input.
        token: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token on the server: every node refuses it from then on.
    Revoke {
        /// The token, or `-` for standard input.
        token: String,
        /// Revoke only this attenuation (and what was made from it), not the whole family.
        #[arg(long)]
        only_this: bool,
        /// Why (kept in the audit trail).
        #[arg(long, default_value = "revoked")]
        reason: String,
        #[command(flatten)]
        server: ServerOptions,
    },
}

/// The server and the signing key, as `keyhaven client` takes them.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerOptions {
    /// The server's URL (default: the one this home last registered with).
    #[arg(long, env = "KEYHAVEN_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// The key of this home that signs the request (default: the default key).
    #[arg(long, value_name = "ID|LABEL")]
    pub(crate) key: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Trust this certificate (PEM) for HTTPS besides.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
}

/// What `keyhaven client` does for a token command (it has the server and the key).
#[derive(Debug)]
pub(crate) enum TokenCall {
    /// Mint.
    Mint {
        /// The holder.
        holder: String,
        /// The rights.
        rights: Vec<Right>,
        /// Seconds.
        ttl: u64,
    },
    /// Revoke.
    Revoke {
        /// The token.
        token: String,
        /// The family or only this.
        family: bool,
        /// Why.
        reason: String,
    },
}

fn read_token(token: &str) -> Result<String> {
    let text = if token == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)?;
        s
    } else {
        token.to_owned()
    };
    let text = text.trim().to_owned();
    tokens::parse(&text)?;
    Ok(text)
}

fn seconds(text: &str) -> Result<u64> {
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| {
            UsageError(format!(
                "{text:?} is not a duration (90s, 10m, 1h, 7d): {e}"
            ))
            .into()
        })
}

fn client_args(server: ServerOptions, call: TokenCall) -> ClientArgs {
    ClientArgs {
        server: server.server,
        key: server.key,
        json: server.json,
        tls_ca: server.tls_ca,
        token: None,
        command: ClientCommand::Token(call),
    }
}

/// `--right OPERATION:PREFIX` values as rights.
pub(crate) fn parse_rights(rights: &[String]) -> Result<Vec<Right>> {
    rights
        .iter()
        .map(|r| {
            let (op, prefix) = r
                .split_once(':')
                .ok_or_else(|| UsageError(format!("--right {r:?} is OPERATION:PREFIX")))?;
            Right::new(op, prefix).map_err(anyhow::Error::from)
        })
        .collect()
}

pub(crate) fn run(ctx: &Ctx, args: TokenArgs) -> Result<u8> {
    match args.command {
        TokenCommand::Mint {
            holder,
            rights,
            ttl,
            server,
        } => {
            let rights = parse_rights(&rights)?;
            let call = TokenCall::Mint {
                holder: holder.to_ascii_lowercase(),
                rights,
                ttl: seconds(&ttl)?,
            };
            crate::client::run(ctx, client_args(server, call))
        }
        TokenCommand::Revoke {
            token,
            only_this,
            reason,
            server,
        } => {
            let call = TokenCall::Revoke {
                token: read_token(&token)?,
                family: !only_this,
                reason,
            };
            crate::client::run(ctx, client_args(server, call))
        }
        TokenCommand::Attenuate {
            token,
            operations,
            prefix,
            ttl,
        } => {
            let token = read_token(&token)?;
            let expires_at = ttl
                .as_deref()
                .map(seconds)
                .transpose()?
                .map(|s| keyhaven::unix_now() + s);
            let narrowed = tokens::attenuate(
                &token,
                &Attenuation {
                    operations: (!operations.is_empty()).then_some(operations),
                    prefix,
                    expires_at,
                },
            )?;
            outln!("{narrowed}")?;
            Ok(OK)
        }
        TokenCommand::Inspect { token, json } => {
            let view = tokens::inspect(&read_token(&token)?)?;
            if json {
                print_json(&view)?;
            } else {
                outln!("id: {}", view.id)?;
                for (i, (block, id)) in view.blocks.iter().zip(&view.revocation_ids).enumerate() {
                    outln!("block {i} (revocation id {id}):")?;
                    for line in block.lines() {
                        outln!("  {line}")?;
                    }
                }
            }
            Ok(OK)
        }
    }
}
