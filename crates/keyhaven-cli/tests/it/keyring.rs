//! `keyring` backends on a real GNOME Keyring (a private D-Bus session per test): keys made and
//! used through the CLI, seen by `secret-tool`, and a locked or absent keyring named by the
//! error and by `doctor`. Built only with the `keyring` feature (`cargo xtask test` turns on
//! every feature).

use keyhaven_testkit::devices::SecretServiceSession;

use crate::{Home, openssl_ok};

fn keyring_home(session: &SecretServiceSession) -> Home {
    let h = Home::new().env("DBUS_SESSION_BUS_ADDRESS", session.address());
    let out = h.ok(&[
        "backend",
        "add",
        "keyring",
        "kr",
        "--store",
        "cli-test",
        "--default",
    ]);
    assert!(out.contains("added backend 'kr' (keyring)"), "{out}");
    h
}

#[test]
fn keys_in_the_secret_service_sign_what_openssl_verifies_and_secret_tool_sees_them() {
    let session = SecretServiceSession::start();
    let h = keyring_home(&session);
    h.generate("p256", "deploy", &[]);
    let shown = h.json(&["key", "show", "deploy", "--json"]);
    assert_eq!(shown["protection"], "software-encrypted");
    assert!(
        shown["location"]
            .as_str()
            .unwrap()
            .contains("Secret Service collection 'default'"),
        "{shown}"
    );
    let s = h.scratch();
    std::fs::write(s.join("msg"), b"release 1.2.3").unwrap();
    std::fs::write(s.join("pub.pem"), shown["public_key_pem"].as_str().unwrap()).unwrap();
    let msg = s.join("msg");
    let sig = s.join("sig");
    h.ok(&[
        "sign",
        "--key",
        "deploy",
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
    ]);
    openssl_ok(
        &s,
        &[
            "dgst",
            "-sha256",
            "-verify",
            s.join("pub.pem").to_str().unwrap(),
            "-signature",
            sig.to_str().unwrap(),
            msg.to_str().unwrap(),
        ],
    );
    let out = session.secret_tool(
        &[
            "search",
            "--all",
            "application",
            "keyhaven",
            "keyhaven-store",
            "cli-test",
        ],
        None,
    );
    let listed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        listed.contains(&format!(
            "attribute.keyhaven-item = key-{}",
            shown["id"].as_str().unwrap()
        )),
        "{listed}"
    );
    assert!(
        listed.contains("label = keyhaven cli-test: key"),
        "{listed}"
    );
    assert!(
        !listed.contains("deploy"),
        "the key's label stays sealed: {listed}"
    );
    let doctor = h.ok(&["doctor"]);
    assert!(
        doctor.contains("keyring:     Secret Service collection 'default': ready"),
        "{doctor}"
    );
}

#[test]
fn a_locked_or_absent_keyring_gets_a_clear_exit_and_doctor_says_how_to_unlock() {
    let session = SecretServiceSession::start();
    let h = keyring_home(&session);
    h.generate("ed25519", "k", &[]);
    session.lock();
    let err = h.fails(&["key", "list"], 4);
    assert!(err.contains("is locked"), "{err}");
    assert!(err.contains("Unlock the keyring"), "{err}");
    let doctor = h.run(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("'default': locked"), "{text}");
    assert!(text.contains("gnome-keyring-daemon --unlock"), "{text}");

    // no Secret Service at all: unavailable (exit 10), and the doctor says why
    let gone = Home::new().env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus");
    let err = gone.fails(&["backend", "add", "keyring", "kr"], 10);
    assert!(err.contains("no D-Bus session bus"), "{err}");
    assert!(err.contains("keyhaven doctor"), "{err}");
}
