//! `pkcs11` backends on real SoftHSM2 tokens: each test has its own SoftHSM configuration and
//! token directory (handed to every `keyhaven` and `pkcs11-tool` process through
//! `SOFTHSM2_CONF`), and checks the token with `pkcs11-tool` and signatures with `openssl`.

use std::process::Stdio;

use keyhaven_testkit::devices::{SoftHsm, USER_PIN};

use crate::{Home, expect_code, openssl_ok, write_private};

/// The token of every test (in its own token directory). Fixed width: `pkcs11-tool
/// --token-label` matches a prefix.
const TOKEN: &str = "kh-cli-token-00";
/// The variable the backends read the PIN from.
const PIN_VAR: &str = "KEYHAVEN_TEST_HSM_PIN";

/// A token of this test's own, and a home that reaches it (the PIN in `PIN_VAR`).
fn token_home() -> (SoftHsm, Home) {
    let hsm = SoftHsm::new();
    hsm.init_token(TOKEN, USER_PIN);
    // The PIN of a token that anchors the home comes from KEYHAVEN_TOKEN_PIN (or the prompt),
    // never from the configuration; other tokens' from their pin_env / pin_file.
    let home = Home::new()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env(PIN_VAR, USER_PIN)
        .env("KEYHAVEN_TOKEN_PIN", USER_PIN);
    (hsm, home)
}

/// A token of this test's own, and a home with an encrypted store `local` (which anchors the
/// home's integrity, so the token's PIN comes from its backend's `pin_env` / `pin_file`), and
/// no KEYHAVEN_TOKEN_PIN.
fn token_home_with_store() -> (SoftHsm, Home) {
    let hsm = SoftHsm::new();
    hsm.init_token(TOKEN, USER_PIN);
    let home = Home::new()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env(PIN_VAR, USER_PIN);
    home.ok(&["backend", "add", "encrypted", "local"]);
    (hsm, home)
}

/// ... with a backend `hsm` declared on it.
fn hsm_backend() -> (SoftHsm, Home) {
    let (hsm, h) = token_home();
    h.ok(&add_args(&hsm, &["--pin-env", PIN_VAR]));
    (hsm, h)
}

fn add_args(hsm: &SoftHsm, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["backend", "add", "pkcs11", "hsm", "--module"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.push(hsm.module().display().to_string());
    args.extend(["--token".into(), TOKEN.into()]);
    args.extend(extra.iter().map(ToString::to_string));
    args
}

/// The objects `pkcs11-tool --list-objects` shows: (kind line, label, ID, access).
fn token_objects(hsm: &SoftHsm) -> Vec<(String, String, String, String)> {
    let text = hsm.pkcs11_tool(TOKEN, USER_PIN, &["--list-objects"]);
    let mut objects = Vec::new();
    for block in text
        .split('\n')
        .fold(Vec::<Vec<&str>>::new(), |mut acc, line| {
            if !line.starts_with(' ') && !line.is_empty() {
                acc.push(vec![line]);
            } else if let Some(last) = acc.last_mut() {
                last.push(line);
            }
            acc
        })
    {
        let field = |name: &str| {
            block
                .iter()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        objects.push((
            block[0].to_owned(),
            field("label:"),
            field("ID:"),
            field("Access:"),
        ));
    }
    objects
}

fn verify_p384(dir: &std::path::Path, public: &str, sig: &str, msg: &str) {
    let out = openssl_ok(
        dir,
        &["dgst", "-sha384", "-verify", public, "-signature", sig, msg],
    );
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
}

#[test]
fn keys_made_by_keyhaven_are_on_the_token_with_our_label_and_paired_ids() {
    let (hsm, h) = hsm_backend();
    let config = std::fs::read_to_string(h.path().join("keyhaven.toml")).unwrap();
    assert!(
        config.contains("type = \"pkcs11\"") && config.contains(PIN_VAR),
        "{config}"
    );
    assert!(
        !config.contains(USER_PIN),
        "the PIN is never written: {config}"
    );

    let key = h.json(&[
        "key",
        "generate",
        "--backend",
        "hsm",
        "--algorithm",
        "p384",
        "--label",
        "release",
        "--json",
    ]);
    assert_eq!(key["protection"], "hardware");
    assert_eq!(key["backend_type"], "pkcs11");
    let id = key["id"].as_str().unwrap().to_owned();

    let objects = token_objects(&hsm);
    let ours: Vec<_> = objects.iter().filter(|o| o.1 == "release").collect();
    assert_eq!(ours.len(), 2, "a private and a public object: {objects:?}");
    let private = ours
        .iter()
        .find(|o| o.0.starts_with("Private Key Object; EC"))
        .unwrap_or_else(|| panic!("no private key object: {objects:?}"));
    let public = ours
        .iter()
        .find(|o| o.0.starts_with("Public Key Object; EC"))
        .unwrap_or_else(|| panic!("no public key object: {objects:?}"));
    assert_eq!(private.2, id, "the key id is the hex of CKA_ID");
    assert_eq!(public.2, id, "public and private objects pair up by CKA_ID");
    assert!(
        private.3.contains("sensitive") && private.3.contains("never extractable"),
        "{private:?}"
    );

    let list = h.json(&["key", "list", "--json"]);
    let listed = list.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["protection"], "hardware");
    let text = h.ok(&["key", "list"]);
    assert!(
        text.contains("hardware") && text.contains("release"),
        "{text}"
    );
    let show = h.ok(&["key", "show", "hsm:release"]);
    assert!(show.contains("protection:   hardware"), "{show}");
    assert!(show.contains(&format!("token:        {TOKEN}")), "{show}");

    // sign a message and a digest; openssl verifies both
    let s = h.scratch();
    std::fs::write(s.join("msg"), b"signed on the token\n").unwrap();
    let p = |f: &str| s.join(f).to_str().unwrap().to_owned();
    h.ok(&["key", "public", "release", "--out", &p("pub.pem")]);
    h.ok(&[
        "sign",
        "--key",
        "hsm:release",
        "--message-file",
        &p("msg"),
        "--out",
        &p("msg.sig"),
    ]);
    verify_p384(&s, "pub.pem", "msg.sig", "msg");
    let digest = openssl_ok(&s, &["dgst", "-sha384", "-binary", "msg"]);
    h.ok(&[
        "sign",
        "--key",
        &id,
        "--digest",
        &hex::encode(&digest),
        "--out",
        &p("digest.sig"),
    ]);
    verify_p384(&s, "pub.pem", "digest.sig", "msg");
    h.ok(&[
        "verify",
        "--key",
        "release",
        "--message-file",
        &p("msg"),
        "--signature",
        &p("digest.sig"),
    ]);
}

#[test]
fn a_key_made_by_pkcs11_tool_is_listed_and_signs() {
    let (hsm, h) = hsm_backend();
    hsm.pkcs11_tool(
        TOKEN,
        USER_PIN,
        &[
            "--keypairgen",
            "--key-type",
            "EC:secp384r1",
            "--label",
            "tool-made",
            "--id",
            "0a0b0c0d",
        ],
    );
    let list = h.json(&["key", "list", "--json"]);
    let found = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "tool-made")
        .unwrap_or_else(|| panic!("not listed: {list}"));
    assert_eq!(found["id"], "0a0b0c0d");
    assert_eq!(found["backend"], "hsm");
    assert_eq!(found["algorithm"], "p384");
    assert_eq!(found["protection"], "hardware");

    let s = h.scratch();
    std::fs::write(s.join("msg"), b"made by pkcs11-tool, used by keyhaven\n").unwrap();
    let p = |f: &str| s.join(f).to_str().unwrap().to_owned();
    h.ok(&[
        "sign",
        "--key",
        "hsm:tool-made",
        "--message-file",
        &p("msg"),
        "--out",
        &p("sig"),
    ]);
    h.ok(&["key", "public", "hsm:0a0b0c0d", "--out", &p("pub.pem")]);
    verify_p384(&s, "pub.pem", "sig", "msg");
}

#[test]
fn exporting_a_token_key_is_refused_with_exit_5() {
    let (_hsm, h) = hsm_backend();
    h.generate("p384", "kept", &["--backend", "hsm"]);
    let out = h.scratch().join("key.pem");
    for extra in [&["--insecure-plaintext"][..], &[]] {
        let mut args = vec!["key", "export", "hsm:kept", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let err = h.fails(&args, 5);
        assert!(err.contains("non-extractable"), "{err}");
        assert!(!out.exists(), "nothing is written");
    }
}

#[test]
fn token_keys_rotate_on_the_token_and_a_gone_token_leaves_the_old_version_primary() {
    let (hsm, h) = hsm_backend();
    let v1 = h.generate("p384", "rot", &["--backend", "hsm"]);
    let v2 = h.ok(&["key", "rotate", "hsm:rot"]).trim().to_owned();
    // Both versions are keys on the token, where pkcs11-tool sees them.
    let labels: Vec<String> = token_objects(&hsm).into_iter().map(|o| o.1).collect();
    assert!(
        labels.iter().any(|l| l == "rot") && labels.iter().any(|l| l == "rot.v2"),
        "{labels:?}"
    );
    let hist = h.json(&["key", "history", "hsm:rot", "--json"]);
    assert_eq!(hist["versions"][1]["key_id"], v2.as_str());
    assert_eq!(hist["versions"][0]["key_id"], v1.as_str());
    // The token goes away: rotating fails as unavailable. The token anchors the home's
    // integrity, so nothing in the home is trusted (or used) until it is back ...
    let tokendir = hsm.token_directory(TOKEN);
    let aside = h.scratch().join("token-aside");
    std::fs::rename(&tokendir, &aside).unwrap();
    let err = h.fails(&["key", "rotate", &v1], 10);
    assert!(err.contains("hsm") || err.contains("token"), "{err}");
    let err = h.fails(&["key", "history", &v1], 10);
    assert!(err.contains("hsm"), "{err}");
    // ... and then v2 is still primary.
    std::fs::rename(&aside, &tokendir).unwrap();
    let hist = h.json(&["key", "history", &v1, "--json"]);
    let states: Vec<_> = hist["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["verify-only", "primary"], "{hist}");
}

#[test]
fn a_token_directory_removed_mid_run_is_an_error_not_a_panic() {
    let (hsm, h) = hsm_backend();
    let s = h.scratch();
    std::fs::write(s.join("msg"), b"m").unwrap();
    let msg = s.join("msg");
    h.generate("p384", "doomed", &["--backend", "hsm"]);
    let tokendir = hsm.token_directory(TOKEN);

    // signers in flight while the token's directory disappears
    let signers: Vec<_> = (0..6)
        .map(|i| {
            let mut c = h.cmd([
                "sign",
                "--key",
                "hsm:doomed",
                "--message-file",
                msg.to_str().unwrap(),
                "--out",
                s.join(format!("sig{i}")).to_str().unwrap(),
            ]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // SoftHSM may create a lock file in it meanwhile ("directory not empty"): try again
    for attempt in 0.. {
        match std::fs::remove_dir_all(&tokendir) {
            Ok(()) => break,
            Err(e) if attempt < 50 => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot remove {}: {e}", tokendir.display()),
        }
    }
    for child in signers {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code.is_some_and(|c| c != 70 && c != 101),
            "a clean exit, not a crash or a panic: {:?}: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        if code != Some(0) {
            assert_eq!(
                stderr.lines().filter(|l| l.starts_with("error: ")).count(),
                1,
                "{stderr}"
            );
        }
    }

    // afterwards: the token is gone, and every command says so cleanly
    let err = h.fails(
        &[
            "sign",
            "--key",
            "hsm:doomed",
            "--message-file",
            msg.to_str().unwrap(),
        ],
        10,
    );
    assert!(
        err.contains("no token labelled") && err.contains(TOKEN),
        "{err}"
    );
    h.fails(
        &["key", "generate", "--backend", "hsm", "--label", "again"],
        10,
    );
    let out = h.run(&["key", "list"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backend 'hsm' is unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = h.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNREACHABLE"));
}

#[test]
fn a_wrong_or_missing_pin_exits_4_and_changes_nothing() {
    let (hsm, h) = token_home_with_store();
    // declaring the backend logs in once: a wrong PIN is refused, and nothing is saved
    let h = h.env("KEYHAVEN_TEST_WRONG_PIN", "00000000");
    let err = h.fails(
        &add_args(&hsm, &["--pin-env", "KEYHAVEN_TEST_WRONG_PIN"]),
        4,
    );
    assert!(err.contains("wrong user PIN"), "{err}");
    assert!(err.contains("KEYHAVEN_TEST_WRONG_PIN"), "{err}");
    assert!(!err.contains("00000000"), "the PIN is never shown: {err}");
    let config = std::fs::read_to_string(h.path().join("keyhaven.toml")).unwrap();
    assert!(!config.contains("pkcs11"), "nothing saved: {config}");

    // without a PIN source and without a terminal: locked, with how to give one
    let err = h.fails(&add_args(&hsm, &[]), 4);
    assert!(
        err.contains(&format!("user PIN of token '{TOKEN}'")) && err.contains("not a terminal"),
        "{err}"
    );
    assert!(err.contains("pin_env"), "{err}");

    h.ok(&add_args(&hsm, &["--pin-env", PIN_VAR]));
    h.generate("p384", "k", &["--backend", "hsm"]);
    let before = h.snapshot();
    // the variable holds a wrong PIN
    let mut c = h.cmd(["sign", "--key", "hsm:k", "--digest", &"ab".repeat(48)]);
    c.env(PIN_VAR, "11111111");
    let out = c.output().unwrap();
    let err = expect_code(&out, 4, &["sign"]);
    assert!(
        err.contains("wrong user PIN") && err.contains(PIN_VAR),
        "{err}"
    );
    // the variable is unset
    let mut c = h.cmd(["sign", "--key", "hsm:k", "--digest", &"ab".repeat(48)]);
    c.env_remove(PIN_VAR);
    let out = c.output().unwrap();
    let err = expect_code(&out, 4, &["sign"]);
    assert!(err.contains(PIN_VAR) && err.contains("unset"), "{err}");
    assert_eq!(h.snapshot(), before, "nothing changed");
    // the token still takes the right PIN
    let out = h.run(&["sign", "--key", "hsm:k", "--digest", &"ab".repeat(48)]);
    assert!(out.status.success());
}

#[test]
fn a_pin_file_must_be_private() {
    let (hsm, h) = token_home_with_store();
    let pin = h.scratch().join("hsm.pin");
    write_private(&pin, format!("{USER_PIN}\n"));
    h.ok(&add_args(&hsm, &["--pin-file", pin.to_str().unwrap()]));
    h.generate("p256", "k", &["--backend", "hsm"]);
    let config = std::fs::read_to_string(h.path().join("keyhaven.toml")).unwrap();
    assert!(
        config.contains(&format!("pin_file = \"{}\"", pin.display())),
        "{config}"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = h.fails(&["sign", "--key", "hsm:k", "--digest", &"ab".repeat(32)], 6);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn doctor_reports_the_token_and_its_mechanisms() {
    let (_hsm, h) = hsm_backend();
    h.generate("p384", "k", &["--backend", "hsm"]);
    let text = h.ok(&["doctor"]);
    for needle in [
        &format!("token:        '{TOKEN}'"),
        "manufacturer: SoftHSM project",
        "model:        SoftHSM v2",
        "serial:       ",
        "free of",
        "user PIN:     set",
        "CKM_EC_KEY_PAIR_GEN",
        "CKM_ECDSA ",
        "CKM_EDDSA",
        "present",
        "reachable, 1 key; protection hardware",
        "result:      healthy",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let report = h.json(&["doctor", "--json"]);
    let b = &report["backends"][0];
    assert_eq!(b["type"], "pkcs11");
    assert_eq!(b["protection"], "hardware");
    let token = &b["token"];
    assert_eq!(token["label"], TOKEN);
    assert_eq!(token["manufacturer"], "SoftHSM project");
    assert!(token["free_slots"].as_u64().unwrap() >= 1, "{token}");
    assert!(!token["serial"].as_str().unwrap().is_empty());
    assert_eq!(token["missing"].as_array().unwrap().len(), 0);
    let mechanisms = token["mechanisms"].as_array().unwrap();
    for name in [
        "CKM_EC_KEY_PAIR_GEN",
        "CKM_ECDSA",
        "CKM_ECDH1_DERIVE",
        "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        "CKM_EDDSA",
    ] {
        assert!(
            mechanisms
                .iter()
                .any(|m| m["name"] == name && m["present"] == true),
            "{name}: {token}"
        );
    }
    // the backend listing shows where the keys are, and opens nothing
    let list = h.json(&["backend", "list", "--json"]);
    assert_eq!(list["backends"][0]["protection"], "hardware");
    assert!(
        list["backends"][0]["location"]
            .as_str()
            .unwrap()
            .contains(&format!("token '{TOKEN}'")),
        "{list}"
    );
}

#[test]
fn device_options_belong_to_their_backend_type() {
    let (hsm, h) = hsm_backend();
    let module = hsm.module().to_str().unwrap().to_owned();
    for args in [
        vec!["backend", "add", "pem", "x", "--module", &module],
        vec!["backend", "add", "encrypted", "x", "--token", "t"],
        vec!["backend", "add", "memory", "x", "--pin-env", "V"],
        vec!["backend", "add", "pem", "x", "--tcti", "tabrmd"],
        vec!["backend", "add", "pkcs11", "x", "--token", "t"],
        vec!["backend", "add", "pkcs11", "x", "--module", &module],
        vec![
            "backend", "add", "pkcs11", "x", "--module", &module, "--token", "t", "--path", "/tmp",
        ],
        vec![
            "backend",
            "add",
            "pkcs11",
            "x",
            "--module",
            &module,
            "--token",
            "t",
            "--pin-env",
            "A",
            "--pin-file",
            "f",
        ],
        vec!["backend", "add", "tpm", "x"],
        vec!["backend", "add", "pkcs12", "x"],
    ] {
        let out = h.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    // the types come from the facade's list
    let help = h.run(&["backend", "add", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("pkcs11") && help.contains("tpm"), "{help}");
    let out = h.run(&["backend", "add", "nope", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand 'nope'"), "{err}");
    // the older spelling still works, with a note saying the new one
    let out = h.run(&["backend", "add", "old", "--type", "memory"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("write `backend add TYPE NAME`"), "{err}");
    // and a type's options belong to that type only: clap refuses the others
    let out = h.run(&["backend", "add", "encrypted", "e", "--tcti", "tabrmd"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--tcti'"));

    // TPM key options on a token: unsupported
    h.generate("p384", "k", &["--backend", "hsm"]);
    let err = h.fails(
        &[
            "key",
            "generate",
            "--backend",
            "hsm",
            "--label",
            "p",
            "--persistent",
            "0x81000010",
        ],
        5,
    );
    assert!(
        err.contains("the pkcs11 backend takes no key options"),
        "{err}"
    );
    let auth = h.scratch().join("auth");
    write_private(&auth, "pw\n");
    let err = h.fails(
        &[
            "sign",
            "--key",
            "hsm:k",
            "--digest",
            &"ab".repeat(48),
            "--key-auth-file",
            auth.to_str().unwrap(),
        ],
        5,
    );
    assert!(err.contains("have no passphrase of their own"), "{err}");
}

#[test]
#[cfg(feature = "file")]
fn new_keys_for_an_unreachable_token_may_fall_back_with_a_warning() {
    let (hsm, h) = hsm_backend();
    h.ok(&["backend", "add", "encrypted", "local"]);
    h.ok(&["backend", "fallback", "local", "--allow"]);
    std::fs::remove_dir_all(hsm.token_directory(TOKEN)).unwrap();
    let out = h.run(&["key", "generate", "--backend", "hsm", "--label", "n"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING") && err.contains("LOWER protection") && err.contains("hardware"),
        "{err}"
    );
    let k = h.json(&["key", "show", "local:n", "--json"]);
    assert_eq!(k["protection"], "software-encrypted");
    // the token's own keys are never looked up there
    h.fails(
        &["sign", "--key", "hsm:n", "--digest", &"ab".repeat(48)],
        10,
    );
}

#[test]
fn a_module_others_can_change_is_never_loaded() {
    let (hsm, h) = hsm_backend();
    let copy = h.scratch().join("module.so");
    std::fs::copy(hsm.module(), &copy).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let out = h.run(&[
        "backend",
        "add",
        "pkcs11",
        "loose",
        "--module",
        copy.to_str().unwrap(),
        "--token",
        TOKEN,
    ]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(copy.to_str().unwrap()) && err.contains("refuses to load"),
        "{err}"
    );
}

#[test]
fn a_module_only_the_user_could_have_put_there_is_loaded_only_when_allowed() {
    let (hsm, h) = hsm_backend();
    // A private copy (0755 file, in the scratch directory under /tmp): fine by the user's own
    // standards, but the kind of file anyone who can write the user's files could replace.
    let dir = h.scratch().join("mine");
    std::fs::create_dir(&dir).unwrap();
    let copy = dir.join("module.so");
    std::fs::copy(hsm.module(), &copy).unwrap();
    let args = [
        "backend",
        "add",
        "pkcs11",
        "mine",
        "--module",
        copy.to_str().unwrap(),
        "--token",
        TOKEN,
        "--pin-env",
        PIN_VAR,
    ];
    let err = h.fails(&args, 6);
    assert!(
        err.contains(copy.to_str().unwrap()) && err.contains("does not belong to root"),
        "{err}"
    );
    assert!(err.contains("KEYHAVEN_ALLOW_USER_MODULES"), "{err}");
    let out = h
        .cmd(args)
        .env("KEYHAVEN_ALLOW_USER_MODULES", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The secret key objects on the token, as `pkcs11-tool` lists them.
fn secret_keys(hsm: &SoftHsm) -> usize {
    hsm.pkcs11_tool(TOKEN, USER_PIN, &["--list-objects", "--type", "secrkey"])
        .matches("Secret Key Object")
        .count()
}

#[test]
fn a_home_whose_keys_are_on_a_token_is_sealed_by_the_token() {
    let (hsm, h) = hsm_backend();
    let v1 = h.generate("p384", "release", &["--backend", "hsm"]);
    h.ok(&["key", "rotate", "hsm:release"]);
    let status = h.json(&["integrity", "status", "--json"]);
    assert_eq!(status["sealed"], true, "{status}");
    assert_eq!(status["anchor"], "hsm", "{status}");
    // The integrity key is an HMAC key on the token: never extractable.
    assert_eq!(secret_keys(&hsm), 1);
    let listed = hsm.pkcs11_tool(TOKEN, USER_PIN, &["--list-objects", "--type", "secrkey"]);
    assert!(listed.contains("never extractable"), "{listed}");

    // Without the PIN, a change to the home's state is detected: the registry entry of the
    // rotated key, and the configuration.
    let entry = h.path().join(format!("rotation/registry/keys/{v1}.json"));
    let saved = std::fs::read(&entry).unwrap();
    let mut edited = saved.clone();
    let at = edited.iter().position(|&b| b == b'"').unwrap();
    edited.insert(at, b' ');
    write_private(&entry, &edited);
    let err = h.fails(&["key", "history", "hsm:release"], 7);
    assert!(err.contains(entry.to_str().unwrap()), "{err}");
    write_private(&entry, &saved);
    h.ok(&["key", "history", "hsm:release"]);
    let config = h.path().join("keyhaven.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    write_private(
        &config,
        format!("{text}\n[backends.planted]\ntype = \"pem\"\npath = \"/tmp/planted\"\n"),
    );
    let err = h.fails(&["key", "list"], 7);
    assert!(
        err.contains("keyhaven.toml") || err.contains("manifest"),
        "{err}"
    );
    write_private(&config, &text);
    // A wrong PIN cannot vouch for an edit.
    let out = h
        .cmd(["integrity", "accept", "keyhaven.toml"])
        .env("KEYHAVEN_TOKEN_PIN", "00000000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Nor can a PIN the (unauthenticated) configuration points at: the anchor's PIN comes
    // from the user only.
    let planted = h.scratch().join("planted.pin");
    write_private(&planted, "00000000\n");
    write_private(
        &config,
        text.replace(
            &format!("pin_env = \"{PIN_VAR}\""),
            &format!("pin_file = \"{}\"", planted.display()),
        ),
    );
    let out = h
        .cmd(["key", "list"])
        .env_remove("KEYHAVEN_TOKEN_PIN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KEYHAVEN_TOKEN_PIN"),
        "{out:?}"
    );
    write_private(&config, &text);
    h.ok(&["integrity", "verify"]);

    // An encrypted store added inside the home takes over as the anchor (it is there whenever
    // the home is; a token can be unplugged), and the token's integrity key is destroyed.
    h.ok(&["backend", "add", "encrypted", "local"]);
    let status = h.json(&["integrity", "status", "--json"]);
    assert_eq!(status["anchor"], "local", "{status}");
    assert_eq!(secret_keys(&hsm), 0);
    h.ok(&["integrity", "verify"]);
    h.ok(&["key", "history", "hsm:release"]);
}

#[test]
fn a_token_home_whose_manifest_is_removed_is_not_run_unsealed() {
    let (_hsm, h) = hsm_backend();
    h.generate("p256", "k", &["--backend", "hsm"]);
    std::fs::remove_file(h.path().join("integrity.manifest")).unwrap();
    let err = h.fails(&["key", "list"], 7);
    assert!(err.contains("integrity seal"), "{err}");
    h.ok(&["integrity", "seal"]);
    h.ok(&["key", "list"]);
}

#[test]
fn a_token_home_steered_to_look_unsealed_never_uses_the_token() {
    let (_hsm, h) = hsm_backend();
    h.generate("p256", "k", &["--backend", "hsm"]);
    // The attacker removes the manifest and makes the anchor unreachable (a token that is not
    // there), while a second backend reaches the same token.
    std::fs::remove_file(h.path().join("integrity.manifest")).unwrap();
    let config = h.path().join("keyhaven.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let block_start = text.find("[backends.hsm]").unwrap();
    let block = &text[block_start..];
    let second = block.replace("[backends.hsm]", "[backends.hsm2]");
    let broken = text.replace(TOKEN, "no-such-token");
    assert_ne!(broken, text, "{text}");
    write_private(&config, format!("{broken}\n{second}"));
    let out = h.run(&["sign", "--key", "hsm2:k", "--digest", &"ab".repeat(32)]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("integrity.manifest") && err.contains("anchors this home"),
        "{err}"
    );
}

/// A token key's attestation is the token's word: its attributes (never extractable, always
/// sensitive, made on the token), the same `pkcs11-tool` lists; an assertion carries it as a
/// statement, never as proof, so `verify --require-hardware` does not take it.
#[test]
fn a_token_keys_attestation_is_the_tokens_statement_not_a_proof() {
    let (hsm, h) = hsm_backend();
    h.ok(&[
        "key",
        "generate",
        "--backend",
        "hsm",
        "--algorithm",
        "p384",
        "--label",
        "stated",
    ]);
    let attested = h.json(&["key", "attest", "hsm:stated"]);
    let a = &attested["attestation"];
    assert_eq!(a["format"], "pkcs11-attributes", "{attested}");
    assert_eq!(attested["proof"], false);
    for (name, want) in [
        ("never_extractable", true),
        ("always_sensitive", true),
        ("sensitive", true),
        ("local", true),
        ("extractable", false),
    ] {
        assert_eq!(a[name], want, "{name}: {attested}");
    }
    assert!(
        a["token"].as_str().unwrap().contains("SoftHSM"),
        "{attested}"
    );
    // pkcs11-tool reads the same attributes off the token.
    let listed = hsm.pkcs11_tool(TOKEN, USER_PIN, &["--list-objects", "--type", "privkey"]);
    assert!(
        listed.contains("never extractable") && listed.contains("always sensitive"),
        "{listed}"
    );

    let s = h.scratch();
    std::fs::write(s.join("msg"), b"on the token\n").unwrap();
    let p = |f: &str| s.join(f).to_str().unwrap().to_owned();
    h.ok(&[
        "sign",
        "--key",
        "hsm:stated",
        "--message-file",
        &p("msg"),
        "--out",
        &p("sig"),
        "--assertion",
        &p("a.json"),
        "--attest",
    ]);
    let out = h.run(&[
        "verify",
        "--assertion",
        &p("a.json"),
        "--message-file",
        &p("msg"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stated by token") && stderr.contains("never extractable"),
        "{stderr}"
    );
    let out = h.run(&[
        "verify",
        "--assertion",
        &p("a.json"),
        "--message-file",
        &p("msg"),
        "--require-hardware",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unproved");
}

/// Seed 002's post-compromise "rotate all keys" reaches keys in a token too: `compromise
/// respond --scope home` rotates the token's key (its new version made inside the token) as
/// well as the software ones, each step recorded in the report.
#[test]
fn a_compromise_of_the_home_rotates_token_keys_too() {
    let (_hsm, h) = token_home_with_store();
    h.ok(&add_args(&_hsm, &["--pin-env", PIN_VAR]));
    h.generate("p256", "laptop", &["--backend", "local"]);
    let token_key = h.generate("p256", "in-token", &["--backend", "hsm"]);
    let report = h.json(&["compromise", "report", "laptop", "--json"]);
    let id = report["id"].as_str().unwrap().to_owned();
    h.ok(&["compromise", "respond", &id, "--scope", "home"]);
    let history = h.json(&["key", "history", "in-token", "--json"]);
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{history}");
    assert_eq!(versions[0]["key_id"], token_key.as_str(), "{history}");
    assert_ne!(versions[1]["key_id"], token_key.as_str(), "{history}");
    assert_eq!(versions[0]["state"], "compromised", "{history}");
    // The new version lives in the token, and signs there.
    let shown = h.json(&["key", "show", "in-token", "--json"]);
    assert_eq!(shown["protection"], "hardware", "{shown}");
    assert_eq!(shown["backend"], "hsm", "{shown}");
    let sig = h.scratch().join("sig");
    h.ok(&[
        "sign",
        "--key",
        "in-token",
        "--message-file",
        "/dev/null",
        "--out",
        sig.to_str().unwrap(),
    ]);
    let report = h.json(&["compromise", "show", &id, "--json"]);
    let rotated: Vec<_> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "rotate-home" && a["ok"] == true)
        .map(|a| a["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(rotated.iter().any(|d| d.contains("in-token")), "{report}");
}
