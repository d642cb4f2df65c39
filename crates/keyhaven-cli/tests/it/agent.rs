//! `keyhaven agent`: the home held open, signatures without the passphrase, the same access
//! control, revocation and audit as in-process; lock, idle timeout, a stale or unsafe socket
//! and a dead agent each fall back to opening the store, saying so.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::Home;

/// A running agent, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private directory for sockets, short enough for a socket path.
fn socket_dir(h: &Home) -> PathBuf {
    let d = h.scratch().join("run");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn start(h: &Home, socket: &Path, idle: &str) -> Agent {
    let mut child = h
        .cmd(["agent", "start", "--idle", idle, "--socket"])
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with(&format!("KEYHAVEN_AGENT_SOCK={}; export", socket.display())),
        "{line:?}"
    );
    Agent {
        child,
        socket: socket.to_owned(),
    }
}

/// `keyhaven ARGS` through the agent: no passphrase in the environment, so anything that
/// opens the store itself fails.
fn through_agent(h: &Home, socket: &Path, args: &[&str]) -> std::process::Output {
    h.cmd(args)
        .env_remove("KEYHAVEN_PASSPHRASE")
        .env("KEYHAVEN_AGENT_SOCK", socket)
        .output()
        .unwrap()
}

fn wait_gone(child: &mut Child, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_agent_signs_without_the_passphrase_and_openssl_verifies() {
    let h = Home::with_encrypted();
    h.generate("p384", "release", &[]);
    h.generate("ed25519", "ed", &[]);
    let s = h.scratch();
    let file = s.join("artifact.bin");
    std::fs::write(&file, vec![0x5a_u8; 300_000]).unwrap();
    h.ok(&[
        "key",
        "public",
        "release",
        "--out",
        s.join("p384.pem").to_str().unwrap(),
    ]);
    h.ok(&[
        "key",
        "public",
        "ed",
        "--out",
        s.join("ed.pem").to_str().unwrap(),
    ]);
    let agent = start(&h, &socket_dir(&h).join("a.sock"), "10m");

    // Without the agent, and without the passphrase, signing cannot open the store.
    let out = h
        .cmd([
            "sign",
            "--key",
            "release",
            "--message-file",
            file.to_str().unwrap(),
        ])
        .env_remove("KEYHAVEN_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!out.status.success());

    for (key, sig, verify) in [
        (
            "release",
            s.join("p384.sig"),
            vec![
                "dgst",
                "-sha384",
                "-verify",
                "p384.pem",
                "-signature",
                "p384.sig",
            ],
        ),
        (
            "ed",
            s.join("ed.sig"),
            vec![
                "pkeyutl", "-verify", "-pubin", "-inkey", "ed.pem", "-rawin", "-sigfile", "ed.sig",
                "-in",
            ],
        ),
    ] {
        let out = through_agent(
            &h,
            &agent.socket,
            &[
                "sign",
                "--key",
                key,
                "--out",
                sig.to_str().unwrap(),
                "--message-file",
                file.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{key}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // openssl, which nobody here wrote, verifies it
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(&verify).arg("artifact.bin").current_dir(&s);
        let v = cmd.output().unwrap();
        assert!(v.status.success(), "{key}: {v:?}");
    }
    // A digest, as in-process.
    let out = through_agent(
        &h,
        &agent.socket,
        &["sign", "--key", "release", "--digest", &"ab".repeat(48)],
    );
    assert!(out.status.success(), "{out:?}");

    // The audit log has the agent's signatures, as the caller's principal.
    let audit = h.ok(&[
        "audit",
        "search",
        "--key",
        "release",
        "--operation",
        "sign_digest",
    ]);
    assert!(audit.lines().count() >= 2, "{audit}");

    // Revoked in another process: the agent refuses at once, as in-process.
    h.ok(&["key", "revoke", "release", "--reason", "rotated out"]);
    let out = through_agent(
        &h,
        &agent.socket,
        &["sign", "--key", "release", "--digest", &"ab".repeat(48)],
    );
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));

    // An unknown key is the agent's refusal, not a fallback.
    let out = through_agent(
        &h,
        &agent.socket,
        &["sign", "--key", "nope", "--digest", "ab"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn lock_idle_a_stale_or_unsafe_socket_and_a_killed_agent_fall_back_saying_so() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let dir = socket_dir(&h);
    let digest = "cd".repeat(32);
    let sign = |socket: &Path| {
        h.cmd(["sign", "--key", "k", "--digest", &digest])
            .env("KEYHAVEN_AGENT_SOCK", socket)
            .output()
            .unwrap()
    };

    // status, then lock: the agent forgets and exits, its socket is gone.
    let mut agent = start(&h, &dir.join("lock.sock"), "10m");
    let st = h
        .cmd(["agent", "status", "--json", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["unlocked"], true, "{st}");
    h.cmd(["agent", "lock", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(wait_gone(&mut agent.child, Duration::from_secs(10)));
    assert!(!agent.socket.exists());
    let out = sign(&agent.socket);
    assert!(
        out.status.success(),
        "falls back with the passphrase: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signing without the agent"),
        "{out:?}"
    );

    // Idle: gone by itself.
    let mut idle = start(&h, &dir.join("idle.sock"), "1s");
    assert!(wait_gone(&mut idle.child, Duration::from_secs(10)));

    // Killed: the socket stays behind (stale); the CLI says so and signs itself; a new agent
    // replaces the stale socket.
    let mut killed = start(&h, &dir.join("killed.sock"), "10m");
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    assert!(killed.socket.exists());
    let out = sign(&killed.socket);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stale socket"), "{err}");
    let again = start(&h, &killed.socket, "10m");
    assert!(
        through_agent(
            &h,
            &again.socket,
            &["sign", "--key", "k", "--digest", &digest]
        )
        .status
        .success()
    );
    // A second agent on a live socket is refused.
    let out = h
        .cmd(["agent", "start", "--socket"])
        .arg(&again.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{out:?}");

    // A socket directory others may enter: not used, said, signed in-process.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = sign(&again.socket);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not safe to use") && err.contains("chmod 700"),
        "{err}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// `curl --unix-socket` (a client nobody here wrote) asking the agent for its status, as
/// `user` if given (through `setpriv`).
fn curl(socket: &Path, user: Option<u32>) -> (String, String) {
    let mut cmd = match user {
        Some(uid) => {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("curl");
            c
        }
        None => std::process::Command::new("curl"),
    };
    let out = cmd
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg("http://agent/v1/agent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_owned(), body.to_owned())
}

#[test]
fn the_agent_speaks_http_to_curl_and_refuses_another_user_by_peer_credentials() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let dir = socket_dir(&h);
    let agent = start(&h, &dir.join("peer.sock"), "10m");
    let (code, body) = curl(&agent.socket, None);
    assert_eq!(code, "200", "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["unlocked"], true);
    if !crate::is_root() {
        eprintln!("skipped: acting as another user needs root");
        return;
    }
    // Open the directory and the socket to everyone: the kernel's peer credentials still
    // keep another user out.
    for p in [h.scratch(), h.path().parent().unwrap().to_owned()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, body) = curl(&agent.socket, Some(65534));
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("urn:keyhaven:problem:forbidden"), "{body}");
    assert!(
        body.contains("uid 65534 is not this agent's user"),
        "{body}"
    );
}

#[test]
fn an_agent_of_another_home_or_of_old_rules_is_not_used() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let other = Home::with_encrypted();
    other.generate("p256", "k", &[]);
    let digest = "ef".repeat(32);
    let mut agent = start(&h, &socket_dir(&h).join("home.sock"), "10m");
    // Another home's command pointed at this agent: refused by the agent, signed in-process
    // with the other home's own key.
    let out = other
        .cmd(["sign", "--key", "k", "--digest", &digest])
        .env("KEYHAVEN_AGENT_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this agent serves") && err.contains("signing without the agent"),
        "{err}"
    );
    // The home's configuration changes (an access policy added): the agent forgets and stops,
    // and the next command reads the new rules itself.
    crate::write_private(
        &h.path().join("access.toml"),
        "[default]\nsign = { principals = [\"nobody-here\"] }\n",
    );
    let config = h.path().join("keyhaven.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[access]\npolicy = \"access.toml\"\n");
    std::fs::write(&config, text).unwrap();
    h.ok(&["integrity", "accept", "keyhaven.toml"]);
    h.ok(&["integrity", "accept", "access.toml"]);
    let out = h
        .cmd(["sign", "--key", "k", "--digest", &digest])
        .env("KEYHAVEN_AGENT_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "the new policy denies: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configuration or access policy changed"),
        "{err}"
    );
    assert!(wait_gone(&mut agent.child, Duration::from_secs(10)));
}
