//! `keyhaven agent start|status|lock`, and signing through a running agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use keyhaven::CoreError;
use keyhaven_client::agent::{AGENT_SOCK_ENV, AgentClient, AgentError, default_socket};

use crate::ctx::Ctx;
use crate::exit::OK;
use crate::output::{errln, outln};

/// `keyhaven agent`.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The socket (default: `KEYHAVEN_AGENT_SOCK`, else one per home under
    /// `$XDG_RUNTIME_DIR/keyhaven/` or `/tmp/keyhaven-UID/`).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Open the home (asking its passphrase once) and serve signatures to your processes on a
    /// Unix socket, in the foreground (`keyhaven agent start &`, or a service). Prints the
    /// `KEYHAVEN_AGENT_SOCK=...` line to set.
    Start {
        /// Forget everything and stop after this long without a request.
        #[arg(long, default_value = "15m", value_name = "DURATION")]
        idle: String,
    },
    /// Whether an agent runs for this home, and for how long it has been idle.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the agent forget every key and passphrase, and stop.
    Lock,
}

/// The socket for this home: `--socket`, else `KEYHAVEN_AGENT_SOCK`, else the default.
fn socket(ctx: &Ctx, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(s) = given {
        return Ok(s);
    }
    if let Some(s) = std::env::var_os(AGENT_SOCK_ENV).filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(s));
    }
    Ok(default_socket(&ctx.home()?))
}

pub(crate) fn run(ctx: &Ctx, args: AgentArgs) -> Result<u8> {
    let path = socket(ctx, args.socket)?;
    match args.command {
        AgentCommand::Start { idle } => start(ctx, &path, &idle),
        AgentCommand::Status { json } => {
            let status = AgentClient::new(&path).status().map_err(agent_error)?;
            if json {
                crate::output::print_json(&status)?;
            } else {
                outln!(
                    "agent {} for {}: {}, idle {}s of {}s",
                    status.pid,
                    status.home,
                    if status.unlocked {
                        "unlocked"
                    } else {
                        "locked"
                    },
                    status.idle,
                    status.idle_timeout
                )?;
            }
            Ok(OK)
        }
        AgentCommand::Lock => {
            AgentClient::new(&path).lock().map_err(agent_error)?;
            outln!("agent at {} forgot its keys and stopped", path.display())?;
            Ok(OK)
        }
    }
}

/// An agent error as a CLI error with the right exit code.
pub(crate) fn agent_error(e: AgentError) -> anyhow::Error {
    match e {
        AgentError::NotRunning { .. } | AgentError::Died { .. } => CoreError::Unavailable {
            backend: "agent".into(),
            reason: e.to_string(),
        }
        .into(),
        AgentError::Unsafe { .. } => CoreError::PermissionDenied(e.to_string()).into(),
        AgentError::Problem(p) => {
            let name = p.kind.rsplit(':').next().unwrap_or("").to_owned();
            match name.as_str() {
                "not-found" => CoreError::NotFound(p.detail).into(),
                "forbidden" => CoreError::PermissionDenied(p.detail).into(),
                "key-revoked" => CoreError::Revoked(p.detail).into(),
                "invalid-request" => CoreError::InvalidInput(p.detail).into(),
                "key-locked" | "agent-locked" => CoreError::Locked(p.detail).into(),
                _ => CoreError::Unavailable {
                    backend: "agent".into(),
                    reason: p.detail,
                }
                .into(),
            }
        }
        AgentError::BadAnswer(_) => CoreError::Unavailable {
            backend: "agent".into(),
            reason: e.to_string(),
        }
        .into(),
        other => CoreError::Unavailable {
            backend: "agent".into(),
            reason: other.to_string(),
        }
        .into(),
    }
}

fn start(ctx: &Ctx, path: &Path, idle: &str) -> Result<u8> {
    let idle = keyhaven::versions::parse_duration("--idle", idle).map_err(CoreError::from)?;
    if idle > Duration::from_secs(7 * 86_400) {
        return Err(CoreError::InvalidInput("--idle is at most 7 days".into()).into());
    }
    // Open the home and every backend now: the passphrase is asked once, here.
    let m = ctx.manager()?;
    let inventory = m.inventory()?;
    for (backend, problem) in &inventory.problems {
        errln!("warning: backend '{backend}': {problem} (its keys are not served)");
    }
    let dir = path.parent().ok_or_else(|| {
        CoreError::InvalidInput(format!("--socket {}: no directory", path.display()))
    })?;
    keyhaven::fs::create_private_dir(dir)?;
    // A socket already there: a live agent is refused, a stale one (nobody answers) removed.
    if std::fs::symlink_metadata(path).is_ok() {
        match AgentClient::new(path).status() {
            Ok(s) => {
                return Err(CoreError::AlreadyExists(format!(
                    "an agent (pid {}) already serves {} at {}; `keyhaven agent lock` stops it",
                    s.pid,
                    s.home,
                    path.display()
                ))
                .into());
            }
            Err(AgentError::NotRunning { .. } | AgentError::Died { .. }) => {
                std::fs::remove_file(path).map_err(|e| {
                    CoreError::io(format!("remove stale socket {}", path.display()), e)
                })?;
            }
            Err(e) => return Err(agent_error(e)),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = {
        let _guard = runtime.enter();
        let l = tokio::net::UnixListener::bind(path)
            .map_err(|e| CoreError::io(format!("listen on {}", path.display()), e))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| CoreError::io(format!("restrict {}", path.display()), e))?;
        l
    };
    outln!(
        "{AGENT_SOCK_ENV}={}; export {AGENT_SOCK_ENV};",
        path.display()
    )?;
    crate::output::flush_stdout()?;
    errln!(
        "keyhaven agent (pid {}) serves {} ({} key(s)) at {}; it forgets everything after {} \
         idle or on `keyhaven agent lock`",
        std::process::id(),
        m.home().display(),
        inventory.keys.len(),
        path.display(),
        humantime::format_duration(idle)
    );
    let served = runtime.block_on(keyhaven_server::agent::serve_agent(
        listener,
        m,
        idle,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ));
    let _ = std::fs::remove_file(path);
    served.map_err(|e| CoreError::io(format!("serve on {}", path.display()), e))?;
    errln!("keyhaven agent: keys forgotten, stopped");
    Ok(OK)
}

/// The agent of this home, if there is one to ask: `KEYHAVEN_AGENT_SOCK` (used even if
/// nothing is there: the caller says so), else this home's default socket if it exists.
pub(crate) fn agent_for(ctx: &Ctx) -> Result<Option<AgentClient>> {
    if let Some(p) = std::env::var_os(AGENT_SOCK_ENV).filter(|s| !s.is_empty()) {
        return Ok(Some(AgentClient::new(PathBuf::from(p))));
    }
    let path = default_socket(&ctx.home()?);
    Ok(std::fs::symlink_metadata(&path)
        .is_ok()
        .then(|| AgentClient::new(path)))
}
