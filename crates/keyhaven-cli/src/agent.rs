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
        AgentError::Died { sent: true, .. } => CoreError::Unavailable {
            backend: "agent".into(),
            reason: format!(
                "{e}; it had the whole request and may have signed (`keyhaven audit search` \
                 shows it): not signed again here"
            ),
        }
        .into(),
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

/// Passphrases and PINs while the agent starts (the terminal, the file, the environment, as
/// every command); once it serves, none: a backend that needs one later answers "locked" (the
/// CLI then signs in-process, asking itself) instead of a prompt that would stop the agent.
struct StartupOnly {
    inner: crate::ctx::CliPassphrases,
    serving: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl keyhaven::PassphraseProvider for StartupOnly {
    fn passphrase(
        &self,
        request: &keyhaven::PassphraseRequest,
    ) -> std::result::Result<keyhaven::secrecy::SecretString, CoreError> {
        if self.serving.load(std::sync::atomic::Ordering::Acquire) {
            return Err(CoreError::Locked(format!(
                "{}: the agent asks no passphrase once it serves; sign without the agent",
                request.backend
            )));
        }
        self.inner.passphrase(request)
    }
}

/// The agent holds keys in memory: no core dump of it, no other process of the user reading
/// its memory (ptrace, /proc/PID/mem), as ssh-agent does.
fn harden() -> Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| CoreError::io("make the agent undumpable", e.into()))?;
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| CoreError::io("turn core dumps off", e.into()))?;
    Ok(())
}

/// A socket path the agent can listen on and a shell can be told: absolute, UTF-8, no shell
/// metacharacters, short enough for `sun_path`.
fn check_socket_path(path: &Path) -> Result<()> {
    let text = path.to_str().ok_or_else(|| {
        CoreError::InvalidInput(format!("--socket {}: not UTF-8", path.display()))
    })?;
    if !path.is_absolute() {
        return Err(
            CoreError::InvalidInput(format!("--socket {text}: give an absolute path")).into(),
        );
    }
    if text.len() > 100 {
        return Err(CoreError::InvalidInput(format!(
            "--socket {text}: {} bytes, longer than a Unix socket path may be (100)",
            text.len()
        ))
        .into());
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        return Err(CoreError::InvalidInput(format!(
            "--socket {text}: only letters, digits and / . _ - + (it is printed for a shell)"
        ))
        .into());
    }
    Ok(())
}

fn start(ctx: &Ctx, path: &Path, idle: &str) -> Result<u8> {
    let idle = keyhaven::versions::parse_duration("--idle", idle).map_err(CoreError::from)?;
    if idle > Duration::from_secs(7 * 86_400) {
        return Err(CoreError::InvalidInput("--idle is at most 7 days".into()).into());
    }
    check_socket_path(path)?;
    harden()?;
    // Open the home and every backend now: the passphrase is asked once, here.
    let serving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let m = keyhaven::KeyManager::open(
        ctx.home()?,
        StartupOnly {
            inner: ctx.passphrases(),
            serving: serving.clone(),
        },
    )?;
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
    serving.store(true, std::sync::atomic::Ordering::Release);
    // Checked above: nothing in the path needs quoting.
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
    let served = runtime.block_on(async {
        // SIGINT or SIGTERM: forget and stop, as on lock.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        keyhaven_server::agent::serve_agent(listener, m, idle, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
    });
    let _ = std::fs::remove_file(path);
    // A signature still running on a device that hangs is not waited for long: the process
    // ends, and with it everything it held.
    runtime.shutdown_timeout(Duration::from_secs(5));
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
