//! The client of `keyhaven agent`: HTTP/1.1 and JSON (the server's conventions: RFC 9457
//! problems, [`crate::wire`] types) over a Unix socket, blocking, for short-lived processes such
//! as `keyhaven sign`.
//!
//! The socket is used only if it is safe: its directory belongs to the user and is private
//! (0700), and the socket belongs to the user. Otherwise, and when no agent answers (a stale
//! socket), [`AgentError::is_fallback`] says the caller may open the store itself.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::{AgentKey, AgentSign, AgentSignature, AgentStatus, PROBLEM_JSON, Problem};

/// The most bytes of an answer read.
const MAX_ANSWER: u64 = 1 << 20;

/// Why the agent could not be used, or what it refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// No agent at the socket: nothing there, or a socket nobody listens on (stale).
    #[error("no keyhaven agent answers at {path}: {reason}")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The socket or its directory is not the user's alone: it is not used.
    #[error("the agent socket {path} is not safe to use: {reason}")]
    Unsafe {
        /// The socket.
        path: PathBuf,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// The agent went away in the middle of a request (no answer, or half of one).
    #[error("the keyhaven agent at {path} stopped answering mid-request: {reason}")]
    Died {
        /// The socket.
        path: PathBuf,
        /// What happened.
        reason: String,
        /// Whether the whole request had been sent: then the agent may have done it (a
        /// signature made, audited and counted), and doing it again elsewhere is not safe.
        sent: bool,
    },
    /// The agent answered with a problem (a refusal, a locked agent, a failed operation).
    #[error("the keyhaven agent refused: {}", .0.detail)]
    Problem(Problem),
    /// The answer was not what the agent sends.
    #[error("the keyhaven agent's answer is malformed: {0}")]
    BadAnswer(String),
}

impl AgentError {
    /// Whether the caller may do the work itself instead: no agent, an unsafe socket, an agent
    /// that died before it had the whole request, a locked agent, an agent of another home or
    /// principal, a key that needs a passphrase the agent cannot ask for. Never for a refusal
    /// of the operation itself, nor once the agent may have done it.
    pub fn is_fallback(&self) -> bool {
        match self {
            AgentError::NotRunning { .. } | AgentError::Unsafe { .. } => true,
            AgentError::Died { sent, .. } => !sent,
            AgentError::Problem(p) => [
                "agent-locked",
                "agent-other-home",
                "agent-other-principal",
                "key-locked",
            ]
            .iter()
            .any(|name| p.kind == crate::wire::problem_type(name)),
            AgentError::BadAnswer(_) => false,
        }
    }
}

/// A connection to the agent at one socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    path: PathBuf,
    timeout: Duration,
}

impl AgentClient {
    /// The agent at `path` (nothing is connected yet), with a 40-second timeout per request
    /// (longer than the agent gives one signature, so the agent answers first).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AgentClient {
            path: path.into(),
            timeout: Duration::from_secs(40),
        }
    }

    /// The same client with another timeout per request.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signs through the agent.
    ///
    /// # Errors
    /// [`AgentError`]; see [`AgentError::is_fallback`].
    pub fn sign(&self, request: &AgentSign) -> Result<AgentSignature, AgentError> {
        let body = serde_json::to_vec(request).map_err(|e| AgentError::BadAnswer(e.to_string()))?;
        let answer = self.call("POST", "/v1/agent/sign", Some(&body))?;
        serde_json::from_slice(&answer).map_err(|e| AgentError::BadAnswer(e.to_string()))
    }

    /// The key `request.key` names (unset: the default key) and its algorithm.
    ///
    /// # Errors
    /// [`AgentError`].
    pub fn key(&self, request: &AgentKey) -> Result<AgentKey, AgentError> {
        let body = serde_json::to_vec(request).map_err(|e| AgentError::BadAnswer(e.to_string()))?;
        let answer = self.call("POST", "/v1/agent/key", Some(&body))?;
        serde_json::from_slice(&answer).map_err(|e| AgentError::BadAnswer(e.to_string()))
    }

    /// The agent's state.
    ///
    /// # Errors
    /// [`AgentError`].
    pub fn status(&self) -> Result<AgentStatus, AgentError> {
        let answer = self.call("GET", "/v1/agent", None)?;
        serde_json::from_slice(&answer).map_err(|e| AgentError::BadAnswer(e.to_string()))
    }

    /// Makes the agent forget every key and passphrase and exit.
    ///
    /// # Errors
    /// [`AgentError`].
    pub fn lock(&self) -> Result<(), AgentError> {
        self.call("POST", "/v1/agent/lock", Some(b"{}")).map(|_| ())
    }

    /// Checks the socket is the user's alone (its directory private and the user's, the socket
    /// the user's).
    fn check(&self) -> Result<(), AgentError> {
        let unsafe_ = |reason: String| AgentError::Unsafe {
            path: self.path.clone(),
            reason,
        };
        let uid = rustix::process::geteuid().as_raw();
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                return Err(AgentError::NotRunning {
                    path: self.path.clone(),
                    reason: e.to_string(),
                });
            }
        };
        if meta.uid() != uid {
            return Err(unsafe_(format!(
                "it belongs to uid {}, not to you (uid {uid}): someone else's agent",
                meta.uid()
            )));
        }
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(unsafe_("it is not a socket".into()));
        }
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let d = std::fs::symlink_metadata(dir)
            .map_err(|e| unsafe_(format!("its directory cannot be read: {e}")))?;
        if !d.is_dir() || d.uid() != uid || d.permissions().mode() & 0o077 != 0 {
            return Err(unsafe_(format!(
                "its directory {} must be yours and private (chmod 700), not mode {:o}",
                dir.display(),
                d.permissions().mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// One request, `Connection: close`; the answer's body once it is a 2xx.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, AgentError> {
        self.check()?;
        let mut stream = UnixStream::connect(&self.path).map_err(|e| AgentError::NotRunning {
            path: self.path.clone(),
            reason: match e.kind() {
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                    format!("{e} (a stale socket: the agent is gone)")
                }
                _ => e.to_string(),
            },
        })?;
        // Who answers, from the kernel: the path could have been swapped between the check
        // and the connection, the peer cannot.
        let uid = rustix::process::geteuid().as_raw();
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) if c.uid.as_raw() == uid => {}
            Ok(c) => {
                return Err(AgentError::Unsafe {
                    path: self.path.clone(),
                    reason: format!(
                        "the process listening there runs as uid {}, not as you (uid {uid})",
                        c.uid.as_raw()
                    ),
                });
            }
            Err(e) => {
                return Err(AgentError::Unsafe {
                    path: self.path.clone(),
                    reason: format!("its peer cannot be identified: {e}"),
                });
            }
        }
        let died = |reason: String, sent: bool| AgentError::Died {
            path: self.path.clone(),
            reason,
            sent,
        };
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| died(e.to_string(), false))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: keyhaven-agent\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|e| died(format!("cannot send: {e}"), false))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .map_err(|e| died(format!("cannot read the answer: {e}"), true))?;
        if answer.is_empty() {
            return Err(died(
                "it closed the connection without answering".into(),
                true,
            ));
        }
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| died("half an answer".into(), true))?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let body = answer[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AgentError::BadAnswer("no HTTP status".into()))?;
        let chunked = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("transfer-encoding")
                    && v.trim().eq_ignore_ascii_case("chunked")
            })
        });
        let body = if chunked { dechunk(&body)? } else { body };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let is_problem = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("content-type") && v.trim() == PROBLEM_JSON
            })
        });
        if is_problem && let Ok(p) = serde_json::from_slice::<Problem>(&body) {
            return Err(AgentError::Problem(p));
        }
        Err(AgentError::BadAnswer(format!("status {status}")))
    }
}

/// A chunked body, whole.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, AgentError> {
    let bad = || AgentError::BadAnswer("malformed chunked body".into());
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Where the agent of `home` listens unless `KEYHAVEN_AGENT_SOCK` says otherwise:
/// `$XDG_RUNTIME_DIR/keyhaven/agent-<hash of the home>.sock`, else
/// `/tmp/keyhaven-<uid>/agent-<hash of the home>.sock` (one agent per home).
pub fn default_socket(home: &Path) -> PathBuf {
    use sha2::Digest;
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    let hash = hex::encode(&sha2::Sha256::digest(home.as_os_str().as_encoded_bytes())[..8]);
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("keyhaven"),
        None => {
            let uid = rustix::process::geteuid().as_raw();
            PathBuf::from(format!("/tmp/keyhaven-{uid}"))
        }
    };
    dir.join(format!("agent-{hash}.sock"))
}

/// The environment variable naming the agent's socket.
pub const AGENT_SOCK_ENV: &str = "KEYHAVEN_AGENT_SOCK";

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_joined_and_malformed_ones_refused() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\nabc\r\n").is_err());
        assert!(dechunk(b"9\r\nabc\r\n").is_err());
    }
}
