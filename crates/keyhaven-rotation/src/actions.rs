//! Pre- and post-rotation actions: commands run with the rotation described in the environment.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What an action is told, as environment variables.
#[derive(Debug, Clone)]
pub(crate) struct ActionEnv<'a> {
    pub(crate) phase: &'static str,
    pub(crate) key_id: &'a str,
    pub(crate) old_fingerprint: &'a str,
    pub(crate) new_fingerprint: &'a str,
    pub(crate) old_version: u32,
    pub(crate) new_version: u32,
}

/// The most standard error output kept for an error message.
const STDERR_LIMIT: usize = 4096;

/// Runs `argv` with the rotation in its environment (`KEYHAVEN_ROTATION_PHASE`,
/// `KEYHAVEN_KEY_ID`, `KEYHAVEN_OLD_FINGERPRINT`, `KEYHAVEN_NEW_FINGERPRINT`,
/// `KEYHAVEN_OLD_VERSION`, `KEYHAVEN_NEW_VERSION`); standard input and output are closed. Kills
/// it after `timeout`. `Err` says why it failed, with the end of its standard error.
pub(crate) fn run(argv: &[String], env: &ActionEnv<'_>, timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = Command::new(program)
        .args(args)
        .env("KEYHAVEN_ROTATION_PHASE", env.phase)
        .env("KEYHAVEN_KEY_ID", env.key_id)
        .env("KEYHAVEN_OLD_FINGERPRINT", env.old_fingerprint)
        .env("KEYHAVEN_NEW_FINGERPRINT", env.new_fingerprint)
        .env("KEYHAVEN_OLD_VERSION", env.old_version.to_string())
        .env("KEYHAVEN_NEW_VERSION", env.new_version.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > STDERR_LIMIT {
                    buf.drain(..buf.len() - STDERR_LIMIT);
                }
            }
            String::from_utf8_lossy(&buf).trim().to_owned()
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    let output = match status {
        // a process that outlives its parent's pipe would block us: only read after it ended
        Some(_) => stderr.and_then(|h| h.join().ok()).unwrap_or_default(),
        None => String::new(),
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(if output.is_empty() {
            format!("it exited with {s}")
        } else {
            format!("it exited with {s}: {output}")
        }),
        None => Err(format!(
            "it did not finish within {} and was killed",
            humantime::format_duration(timeout)
        )),
    }
}
