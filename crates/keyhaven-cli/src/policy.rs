//! `keyhaven policy`: the key broker's release policies (Rego). `load`, `list`, `delete` and
//! `explain-release PATH` ask the server; `check` and `explain-release --policy --input` work
//! offline with the same evaluator the server runs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use keyhaven_server::policy::{Policy, PolicyCache};
use keyhaven_server::storage::PolicyRecord;

use crate::client::{ClientArgs, ClientCommand};
use crate::ctx::Ctx;
use crate::exit::{OK, UsageError};
use crate::output::{outln, print_json};
use crate::token::ServerOptions;

/// What to do with release policies.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// (Admins) load a policy (a Rego module of package keyhaven.release defining `allow`)
    /// for the secrets under a path prefix; refused if it does not compile.
    Load {
        /// The Rego file.
        file: PathBuf,
        /// The path prefix it covers (default: every path).
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// (Admins) the policies loaded.
    List {
        #[command(flatten)]
        server: ServerOptions,
    },
    /// (Admins) remove the policy of a prefix.
    Delete {
        /// The prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Compile a release policy here, as the server would at load.
    CheckRelease {
        /// The Rego file.
        file: PathBuf,
    },
    /// Why a release is allowed or denied: the tier rule, the policy that applies and the
    /// rule that decided. With PATH, the server answers for your key (nothing is released);
    /// with --policy and --input, it is decided here.
    ExplainRelease {
        /// The secret's path (asks the server).
        path: Option<String>,
        /// A Rego file to decide with, here.
        #[arg(long, requires = "input", conflicts_with = "path")]
        policy: Option<PathBuf>,
        /// The input document (JSON) for --policy.
        #[arg(long, requires = "policy")]
        input: Option<PathBuf>,
        #[command(flatten)]
        server: ServerOptions,
    },
}

/// What `keyhaven client` does for a policy command.
#[derive(Debug)]
pub(crate) enum PolicyCall {
    /// Load.
    Load {
        /// The prefix.
        prefix: String,
        /// The source.
        rego: String,
    },
    /// List.
    List,
    /// Delete.
    Delete {
        /// The prefix.
        prefix: String,
    },
    /// Explain a release.
    Explain {
        /// The path.
        path: String,
    },
}

fn read(file: &PathBuf) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))
}

fn online(ctx: &Ctx, server: ServerOptions, call: PolicyCall) -> Result<u8> {
    crate::client::run(
        ctx,
        ClientArgs {
            server: server.server,
            key: server.key,
            json: server.json,
            tls_ca: server.tls_ca,
            token: None,
            command: ClientCommand::Policy(call),
        },
    )
}

pub(crate) fn run(ctx: &Ctx, command: PolicyCommand) -> Result<u8> {
    match command {
        PolicyCommand::Load {
            file,
            prefix,
            server,
        } => {
            let rego = read(&file)?;
            online(ctx, server, PolicyCall::Load { prefix, rego })
        }
        PolicyCommand::List { server } => online(ctx, server, PolicyCall::List),
        PolicyCommand::Delete { prefix, server } => {
            online(ctx, server, PolicyCall::Delete { prefix })
        }
        PolicyCommand::CheckRelease { file } => {
            Policy::compile(&read(&file)?).map_err(|e| {
                keyhaven::CoreError::InvalidInput(format!("{}: {e}", file.display()))
            })?;
            outln!("{}: a release policy that compiles", file.display())?;
            Ok(OK)
        }
        PolicyCommand::ExplainRelease {
            path,
            policy,
            input,
            server,
        } => match (path, policy, input) {
            (Some(path), None, None) => online(ctx, server, PolicyCall::Explain { path }),
            (None, Some(policy), Some(input)) => {
                let source = read(&policy)?;
                let input: serde_json::Value = serde_json::from_str(&read(&input)?)
                    .map_err(|e| UsageError(format!("--input is not JSON: {e}")))?;
                let path = input["path"].as_str().unwrap_or_default().to_owned();
                let tier = |v: &serde_json::Value| {
                    u8::try_from(v.as_u64().unwrap_or(0)).unwrap_or(u8::MAX)
                };
                let record = PolicyRecord {
                    prefix: String::new(),
                    source,
                    updated_at: 0,
                    updated_by: String::new(),
                };
                let explanation = PolicyCache::default()
                    .explain(
                        &[record],
                        &path,
                        tier(&input["requester"]["tier"]),
                        tier(&input["secret"]["min_tier"]),
                        &input,
                    )
                    .map_err(|e| keyhaven::CoreError::InvalidInput(e.to_string()))?;
                if server.json {
                    print_json(&explanation)?;
                } else {
                    outln!("{}", explanation.summary())?;
                }
                Ok(if explanation.allow { OK } else { 1 })
            }
            _ => Err(UsageError(
                "explain-release takes a PATH (asks the server) or --policy FILE --input FILE"
                    .into(),
            )
            .into()),
        },
    }
}
