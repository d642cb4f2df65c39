//! Each command, used as a person would.

use std::fs;
use std::process::Stdio;

use sha2::{Digest, Sha256, Sha384};

use crate::{Home, PASSPHRASE, assert_success, expect_code, mode, write_private};

#[test]
fn quickstart_end_to_end() {
    let h = Home::new();
    let out = h.ok(&["quickstart"]);
    assert!(out.contains("created an encrypted store"), "{out}");
    assert!(out.contains("Next, try:"), "{out}");
    assert!(out.contains("keyhaven key list"), "{out}");
    let q = h.path().join("quickstart");
    for f in ["message.txt", "message.sig", "assertion.json", "public.pem"] {
        assert!(q.join(f).is_file(), "{f} missing");
        assert_eq!(mode(&q.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&q), 0o700);
    assert_eq!(mode(&h.path()), 0o700);
    // config and default key
    let config = fs::read_to_string(h.path().join("keyhaven.toml")).unwrap();
    assert!(config.contains("[backends.default]") && config.contains("type = \"encrypted\""));
    let keys = h.json(&["key", "list", "--json"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["label"], "default");
    assert_eq!(keys[0]["algorithm"], "p384");
    assert_eq!(keys[0]["default"], true);
    assert_eq!(keys[0]["protection"], "software-encrypted");
    // the sample verifies
    let v = h.ok(&[
        "verify".as_ref(),
        "--public-key".as_ref(),
        q.join("public.pem").as_os_str(),
        "--message-file".as_ref(),
        q.join("message.txt").as_os_str(),
        "--signature".as_ref(),
        q.join("message.sig").as_os_str(),
    ]);
    assert_eq!(v.trim(), "valid");
    let assertion: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(q.join("assertion.json")).unwrap()).unwrap();
    assert_eq!(assertion["key_id"], keys[0]["id"]);
    assert_eq!(assertion["backend"], "default");
    assert_eq!(assertion["backend_type"], "encrypted");
    assert_eq!(assertion["algorithm"], "ES384");
    // a second run reuses everything
    let again = h.ok(&["quickstart"]);
    assert!(again.contains("already configured"), "{again}");
    assert_eq!(
        h.json(&["key", "list", "--json"]).as_array().unwrap().len(),
        1
    );
    // doctor is happy
    let report = h.json(&["doctor", "--json"]);
    assert_eq!(report["backends"][0]["reachable"], true);
    assert_eq!(report["backends"][0]["keys"], 1);
}

#[test]
fn every_algorithm_generate_list_show_public_sign_verify() {
    let h = Home::with_encrypted();
    let s = h.scratch();
    let msg = s.join("msg");
    fs::write(&msg, b"release v1.2.3\n").unwrap();
    for alg in ["p384", "p256", "ed25519", "x25519"] {
        let label = format!("key-{alg}");
        let details = h.json(&[
            "key",
            "generate",
            "--algorithm",
            alg,
            "--label",
            &label,
            "--json",
        ]);
        let id = details["id"].as_str().unwrap().to_owned();
        assert_eq!(details["algorithm"], alg);
        assert_eq!(details["backend"], "default");

        let shown = h.json(&["key", "show", &label, "--json"]);
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown, h.json(&["key", "show", &id, "--json"]));
        assert_eq!(
            shown,
            h.json(&["key", "show", &format!("default:{label}"), "--json"])
        );
        let text = h.ok(&["key", "show", &label]);
        assert!(
            text.contains(&id) && text.contains("BEGIN PUBLIC KEY"),
            "{text}"
        );

        let pem = h.ok(&["key", "public", &label]);
        assert_eq!(pem, shown["public_key_pem"].as_str().unwrap());
        let der_path = s.join(format!("{alg}.der"));
        h.ok(&[
            "key".as_ref(),
            "public".as_ref(),
            label.as_ref(),
            "--format".as_ref(),
            "der".as_ref(),
            "--out".as_ref(),
            der_path.as_os_str(),
        ]);
        let der = fs::read(&der_path).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&der)),
            shown["fingerprint"].as_str().unwrap()
        );
        let jwk: serde_json::Value =
            serde_json::from_str(&h.ok(&["key", "public", &label, "--format", "jwk"])).unwrap();
        assert_eq!(jwk["kid"], shown["fingerprint"]);

        let pub_path = s.join(format!("{alg}.pub.pem"));
        fs::write(&pub_path, &pem).unwrap();
        let sig = s.join(format!("{alg}.sig"));
        let sign = [
            "sign".as_ref(),
            "--key".as_ref(),
            label.as_ref(),
            "--message-file".as_ref(),
            msg.as_os_str(),
            "--out".as_ref(),
            sig.as_os_str(),
        ];
        if alg == "x25519" {
            let err = h.fails(&sign, 5);
            assert!(err.contains("cannot sign"), "{err}");
            continue;
        }
        h.ok(&sign);
        for who in [
            vec!["--key".as_ref(), label.as_ref()],
            vec!["--public-key".as_ref(), pub_path.as_os_str()],
        ] {
            let mut args = vec!["verify".as_ref()];
            args.extend(who);
            args.extend(["--message-file".as_ref(), msg.as_os_str()]);
            args.extend(["--signature".as_ref(), sig.as_os_str()]);
            assert_eq!(h.ok(&args).trim(), "valid");
        }

        // raw signatures, and standard input
        let mut child = h
            .cmd(["sign", "--key", &label, "--signature-format", "raw", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"release v1.2.3\n")
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw_len = match alg {
            "p384" => 96,
            _ => 64,
        };
        assert_eq!(out.stdout.len(), raw_len, "{alg} raw signature length");
        let raw_sig = s.join(format!("{alg}.raw"));
        fs::write(&raw_sig, &out.stdout).unwrap();
        let verify_raw = [
            "verify".as_ref(),
            "--public-key".as_ref(),
            pub_path.as_os_str(),
            "--message-file".as_ref(),
            msg.as_os_str(),
            "--signature".as_ref(),
            raw_sig.as_os_str(),
            "--signature-format".as_ref(),
            "raw".as_ref(),
        ];
        assert_eq!(h.ok(&verify_raw).trim(), "valid");

        // prehashed digests (ECDSA)
        let digest = match alg {
            "p384" => hex::encode(Sha384::digest(b"release v1.2.3\n")),
            "p256" => hex::encode(Sha256::digest(b"release v1.2.3\n")),
            _ => {
                let d = hex::encode(Sha256::digest(b"x"));
                h.fails(&["sign", "--key", &label, "--digest", &d], 5);
                continue;
            }
        };
        let dsig = s.join(format!("{alg}.dsig"));
        h.ok(&[
            "sign".as_ref(),
            "--key".as_ref(),
            label.as_ref(),
            "--digest".as_ref(),
            digest.as_ref(),
            "--out".as_ref(),
            dsig.as_os_str(),
        ]);
        // a signature over the digest verifies over the message, and vice versa
        let check = [
            "verify".as_ref(),
            "--key".as_ref(),
            label.as_ref(),
            "--message-file".as_ref(),
            msg.as_os_str(),
            "--signature".as_ref(),
            dsig.as_os_str(),
        ];
        assert_eq!(h.ok(&check).trim(), "valid");
        let check = [
            "verify".as_ref(),
            "--key".as_ref(),
            label.as_ref(),
            "--digest".as_ref(),
            digest.as_ref(),
            "--signature".as_ref(),
            sig.as_os_str(),
        ];
        assert_eq!(h.ok(&check).trim(), "valid");
    }
    let listed = h.ok(&["key", "list"]);
    for alg in ["p384", "p256", "ed25519", "x25519"] {
        assert!(listed.contains(&format!("key-{alg}")), "{listed}");
    }
    assert!(
        listed.contains("BACKEND") && listed.contains("FINGERPRINT"),
        "{listed}"
    );
}

#[test]
fn sign_uses_the_default_key_and_writes_an_assertion() {
    let h = Home::with_encrypted();
    let first = h.generate("p384", "first", &[]);
    let second = h.generate("ed25519", "second", &[]);
    let s = h.scratch();
    let msg = s.join("m");
    fs::write(&msg, b"artifact").unwrap();
    let assertion = s.join("a.json");
    let out = h
        .cmd([
            "sign".as_ref(),
            "--message-file".as_ref(),
            msg.as_os_str(),
            "--assertion".as_ref(),
            assertion.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.len() > 64, "DER P-384 signature on stdout");
    let a: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&assertion).unwrap()).unwrap();
    assert_eq!(a["key_id"], first.as_str(), "the first key is the default");
    assert_eq!(a["protection"], "software-encrypted");
    assert_eq!(a["signature_format"], "der");
    assert_eq!(
        a["message_sha256"],
        hex::encode(Sha256::digest(b"artifact"))
    );
    for field in [
        "version",
        "fingerprint",
        "public_key_pem",
        "signature",
        "created_at",
        "key_label",
        "backend",
        "backend_type",
        "algorithm",
    ] {
        assert!(!a[field].is_null(), "assertion lacks {field}");
    }

    let out = h.ok(&["key", "set-default", "second"]);
    assert!(out.contains(&second), "{out}");
    let out = h
        .cmd([
            "sign".as_ref(),
            "--message-file".as_ref(),
            msg.as_os_str(),
            "--assertion".as_ref(),
            assertion.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 64, "Ed25519 signature");
    let a: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&assertion).unwrap()).unwrap();
    assert_eq!(a["key_id"], second.as_str());
    assert_eq!(a["algorithm"], "EdDSA");
}

#[test]
fn no_default_key_is_a_clear_error() {
    let h = Home::with_encrypted();
    let err = h.fails(&["sign", "--digest", &"00".repeat(48)], 3);
    assert!(
        err.contains("no default key") && err.contains("set-default"),
        "{err}"
    );
}

#[test]
fn delete_needs_confirmation_without_a_terminal() {
    let h = Home::with_encrypted();
    let id = h.generate("p256", "doomed", &[]);
    let err = h.fails(&["key", "delete", "doomed"], 2);
    assert!(err.contains("--yes"), "{err}");
    h.ok(&["key", "show", &id]);
    let out = h.ok(&["key", "delete", "doomed", "--yes"]);
    assert!(out.contains(&id), "{out}");
    h.fails(&["key", "show", &id], 3);
    // it was the default key: no default now
    h.fails(&["sign", "--digest", &"00".repeat(32)], 3);
}

#[test]
fn backends_add_list_remove() {
    let h = Home::new();
    h.ok(&["backend", "add", "encrypted", "vault"]);
    let out = h.run(&["backend", "add", "pem", "plain"]);
    assert_success(&out, &["backend add plain"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WEAKEST"), "loud warning for pem: {stderr}");
    h.ok(&["backend", "add", "memory", "scratch"]);
    h.fails(&["backend", "add", "pem", "plain"], 8);
    h.fails(&["backend", "add", "pem", "bad:name"], 9);
    let list = h.json(&["backend", "list", "--json"]);
    let names: Vec<_> = list["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["plain", "scratch", "vault"]);
    assert_eq!(
        list["backends"][2]["default"], true,
        "the first added is the default"
    );
    let text = h.ok(&["backend", "list"]);
    assert!(
        text.contains("software-plain") && text.contains("default"),
        "{text}"
    );

    // keys go where asked; PEM keys are flagged loudly when listed
    h.generate("p384", "v", &["--backend", "vault"]);
    h.generate("p384", "p", &["--backend", "plain"]);
    let out = h.run(&["key", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("software-plain"));
    // both keys have label-unique names; the same label in two backends is ambiguous
    h.generate("p256", "twin", &["--backend", "vault"]);
    h.generate("p256", "twin", &["--backend", "plain"]);
    let err = h.fails(&["key", "show", "twin"], 9);
    assert!(
        err.contains("matches 2 keys") && err.contains("vault:") && err.contains("plain:"),
        "{err}"
    );
    h.ok(&["key", "show", "plain:twin"]);

    let out = h.ok(&["backend", "remove", "plain"]);
    assert!(out.contains("removed"), "{out}");
    assert!(
        h.path().join("backends/plain").is_dir(),
        "files are left in place"
    );
    h.fails(&["backend", "remove", "plain"], 3);
    h.ok(&["key", "show", "twin"]);
}

#[test]
fn fallback_is_refused_unless_allowed() {
    let h = Home::new();
    let drive = h.scratch().join("usb-drive");
    fs::create_dir(&drive).unwrap();
    let usb_path = drive.join("keys");
    h.ok(&[
        "backend".as_ref(),
        "add".as_ref(),
        "usb".as_ref(),
        "--type".as_ref(),
        "encrypted".as_ref(),
        "--path".as_ref(),
        usb_path.as_os_str(),
    ]);
    h.ok(&["backend", "add", "pem", "local"]);
    h.generate("p384", "on-usb", &["--backend", "usb"]);
    // the drive is unplugged
    fs::rename(&drive, h.scratch().join("elsewhere")).unwrap();
    let err = h.fails(&["key", "generate", "--backend", "usb", "--label", "x"], 10);
    assert!(err.contains("unavailable"), "{err}");
    // listing still works, with a warning
    let out = h.run(&["key", "list"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'usb' is unavailable"));
    // named but not allowed
    h.ok(&["backend", "fallback", "local"]);
    let err = h.fails(&["key", "generate", "--backend", "usb", "--label", "x"], 10);
    assert!(err.contains("not allowed"), "{err}");
    // allowed: the key goes to the fallback, with a loud warning
    h.ok(&["backend", "fallback", "local", "--allow"]);
    let out = h.run(&[
        "key",
        "generate",
        "--backend",
        "usb",
        "--label",
        "x",
        "--json",
    ]);
    assert_success(&out, &["key generate --backend usb"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("LOWER protection"),
        "{stderr}"
    );
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(key["backend"], "local");
    assert_eq!(key["protection"], "software-plain");
    let out = h.run(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "doctor reports the unreachable backend"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let usb = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "usb")
        .unwrap()
        .clone();
    assert_eq!(usb["reachable"], false);
    let out = h.run(&["doctor"]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "doctor reports the unreachable backend"
    );
    h.ok(&["backend", "fallback", "--off"]);
    h.fails(&["key", "generate", "--backend", "usb", "--label", "y"], 10);
}

#[test]
fn concurrent_generates_lose_no_key() {
    let h = Home::with_encrypted();
    let children: Vec<_> = (0..2)
        .map(|p| {
            let script: Vec<String> = (0..5)
                .map(|i| {
                    format!(
                        "{} --home '{}' key generate --algorithm ed25519 --label p{p}-k{i} || exit 1",
                        env!("CARGO_BIN_EXE_keyhaven"),
                        h.path().display()
                    )
                })
                .collect();
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script.join("\n"))
                .env("KEYHAVEN_PASSPHRASE", PASSPHRASE)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    assert_eq!(ids.len(), 10);
    let listed = h.json(&["key", "list", "--json"]);
    let listed: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        assert!(listed.contains(id), "key {id} was lost");
    }
    assert_eq!(listed.len(), 10);
    // exactly one of them became the default
    let defaults = h.json(&["key", "list", "--json"]);
    let n = defaults
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["default"] == true)
        .count();
    assert_eq!(n, 1);
    // every listed key signs
    for id in &listed {
        h.ok(&[
            "sign",
            "--key",
            id,
            "--message-file",
            "/dev/null",
            "--out",
            "/dev/null",
        ]);
    }
}

#[test]
fn passphrase_sources() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let s = h.scratch();
    // --passphrase-file wins over the environment
    let pf = s.join("pass");
    write_private(&pf, format!("{PASSPHRASE}\n"));
    let out = h
        .cmd([
            "--passphrase-file".as_ref(),
            pf.as_os_str(),
            "key".as_ref(),
            "list".as_ref(),
        ])
        .env("KEYHAVEN_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert_success(&out, &["--passphrase-file"]);
    // no source and no terminal: one line saying what to set
    let out = h
        .cmd(["key", "list"])
        .env_remove("KEYHAVEN_PASSPHRASE")
        .output()
        .unwrap();
    let err = expect_code(&out, 4, &["key list (no passphrase)"]);
    assert!(
        err.contains("KEYHAVEN_PASSPHRASE") && err.contains("--passphrase-file"),
        "{err}"
    );
    assert!(
        err.contains("backend 'default'"),
        "names the backend: {err}"
    );
    // only the first line counts, whatever its line ending
    write_private(&pf, format!("{PASSPHRASE}\r\nsomething else\n"));
    let out = h
        .cmd([
            "--passphrase-file".as_ref(),
            pf.as_os_str(),
            "key".as_ref(),
            "list".as_ref(),
        ])
        .env_remove("KEYHAVEN_PASSPHRASE")
        .output()
        .unwrap();
    assert_success(&out, &["--passphrase-file (CRLF)"]);
    // the passphrase is never printed
    for args in [vec!["key", "list"], vec!["doctor"]] {
        let out = h.run(&args);
        assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSPHRASE));
        assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSPHRASE));
    }
    // KEYHAVEN_HOME is honoured when --home is absent
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyhaven"))
        .args(["key", "list", "--json"])
        .env("KEYHAVEN_HOME", h.path())
        .env("KEYHAVEN_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, &["KEYHAVEN_HOME key list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn help_documents_the_exit_codes() {
    let h = Home::new();
    let help = h.ok(&["--help"]);
    for needle in [
        "Exit codes",
        "not found",
        "wrong passphrase",
        "70  internal",
        "KEYHAVEN_PASSPHRASE",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let out = h.run(&["key", "generate"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
    let out = h.run(&["sign", "--digest", "00", "--message-file", "x"]);
    assert_eq!(out.status.code(), Some(2), "one input only");
}

/// A home where `usb` (encrypted, on a "drive" in the scratch directory) and `local` (PEM, the
/// allowed fallback) each hold a key labelled `release`, the usb one being the default key;
/// then the drive is unplugged. Returns the id of local's `release`.
fn unplugged_usb(h: &Home) -> String {
    let drive = h.scratch().join("usb-drive");
    fs::create_dir(&drive).unwrap();
    let usb_path = drive.join("keys");
    h.ok(&[
        "backend".as_ref(),
        "add".as_ref(),
        "usb".as_ref(),
        "--type".as_ref(),
        "encrypted".as_ref(),
        "--path".as_ref(),
        usb_path.as_os_str(),
    ]);
    h.ok(&["backend", "add", "pem", "local"]);
    h.generate("p384", "release", &["--backend", "usb"]);
    let local = h.generate("p384", "release", &["--backend", "local"]);
    h.ok(&["backend", "fallback", "local", "--allow"]);
    fs::rename(&drive, h.scratch().join("unplugged")).unwrap();
    local
}

#[test]
fn the_fallback_never_stands_in_for_existing_keys() {
    let h = Home::new();
    let local = unplugged_usb(&h);
    let s = h.scratch();
    let digest = "ab".repeat(48);
    let sig = s.join("sig");
    // signing with usb's key must not sign with local's `release`, a different key
    for args in [
        vec!["sign", "--key", "usb:release", "--digest", &digest],
        vec!["sign", "--key", "release", "--digest", &digest],
        vec!["sign", "--digest", &digest],
        vec!["key", "show", "usb:release"],
        vec!["key", "delete", "usb:release", "--yes"],
        vec!["key", "public", "usb:release"],
    ] {
        let out = h.run(&args);
        let err = expect_code(&out, 10, &args);
        assert!(out.stdout.is_empty(), "{args:?} printed something");
        assert!(
            err.contains("backend 'usb' is unavailable") && err.contains("reconnect"),
            "names the backend and what to do: {err}"
        );
        assert!(!err.contains("WARNING"), "no fallback was used: {err}");
    }
    let out = h.run(&[
        "key",
        "export",
        "usb:release",
        "--out",
        s.join("x.pem").to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    expect_code(&out, 10, &["key export usb:release"]);
    assert!(!s.join("x.pem").exists());
    fs::write(&sig, [0u8; 8]).unwrap();
    let verify = [
        "verify",
        "--key",
        "usb:release",
        "--digest",
        &digest,
        "--signature",
        sig.to_str().unwrap(),
    ];
    expect_code(&h.run(&verify), 10, &verify);
    // local's key is used when named, and new keys for usb go to local, with the warning
    let out = h.ok(&["key", "show", "local:release", "--json"]);
    assert!(out.contains(&local), "{out}");
    h.ok(&[
        "sign",
        "--key",
        &local,
        "--digest",
        &digest,
        "--out",
        "/dev/null",
    ]);
    let out = h.run(&["key", "generate", "--backend", "usb", "--label", "new"]);
    assert_success(&out, &["key generate --backend usb"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOWER protection"));
    h.ok(&["key", "show", "local:new"]);
}

#[test]
fn read_only_commands_never_create_the_fallback_store_nor_ask_for_its_passphrase() {
    let h = Home::new();
    let home = h.path();
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o700).create(&home).unwrap();
    }
    let gone = h.scratch().join("not-mounted/keys");
    write_private(
        &home.join("keyhaven.toml"),
        format!(
            "default_backend = \"usb\"\n\n[fallback]\nallow = true\nbackend = \"safe\"\n\n\
             [backends.usb]\ntype = \"encrypted\"\npath = \"{}\"\n\n\
             [backends.safe]\ntype = \"encrypted\"\n",
            gone.display()
        ),
    );
    let s = h.scratch();
    let sig = s.join("sig");
    fs::write(&sig, [0u8; 8]).unwrap();
    let digest = "00".repeat(48);
    for (args, code) in [
        (vec!["key", "list"], 0),
        (vec!["key", "list", "--json"], 0),
        (vec!["key", "show", "k"], 10),
        (vec!["sign", "--key", "usb:k", "--digest", &digest], 10),
        (
            vec![
                "verify",
                "--key",
                "usb:k",
                "--digest",
                &digest,
                "--signature",
                sig.to_str().unwrap(),
            ],
            10,
        ),
        (vec!["backend", "list"], 0),
    ] {
        // no passphrase available: asking for one would fail with exit 4
        let out = h
            .cmd(&args)
            .env_remove("KEYHAVEN_PASSPHRASE")
            .output()
            .unwrap();
        expect_code(&out, code, &args);
        assert!(
            !home.join("backends").exists(),
            "`keyhaven {}` created a store",
            args.join(" ")
        );
    }
    let out = h
        .cmd(["doctor"])
        .env_remove("KEYHAVEN_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(10),
        "doctor reports usb unreachable"
    );
    assert!(!home.join("backends").exists(), "doctor created a store");
    // creating a key is what creates it
    let out = h.run(&["key", "generate", "--label", "k"]);
    assert_success(&out, &["key generate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING"));
    assert!(home.join("backends/safe").is_dir());
}

#[test]
fn memory_backends_and_their_keys_never_become_saved_defaults() {
    let h = Home::new();
    let out = h.run(&["backend", "add", "memory", "scratch"]);
    assert_success(&out, &["backend add scratch"]);
    let config = || fs::read_to_string(h.path().join("keyhaven.toml")).unwrap();
    assert!(!config().contains("default_backend"), "{}", config());
    let out = h.run(&["key", "generate", "--backend", "scratch", "--label", "k"]);
    assert_success(&out, &["key generate --backend scratch"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("default key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!config().contains("default_key"), "{}", config());
    // the next run has no dangling default key
    let err = h.fails(&["sign", "--digest", &"00".repeat(48)], 3);
    assert!(err.contains("no default key is set"), "{err}");
    // a persistent backend added later takes the defaults
    h.ok(&["backend", "add", "encrypted", "vault"]);
    assert!(
        config().contains("default_backend = \"vault\""),
        "{}",
        config()
    );
    let id = h.generate("p384", "kept", &[]);
    let shown = h.json(&["key", "show", &id, "--json"]);
    assert_eq!(shown["backend"], "vault");
    assert_eq!(shown["default"], true);
}

#[test]
fn every_output_file_is_written_atomically_and_privately() {
    let h = Home::with_encrypted();
    let id = h.generate("p384", "k", &[]);
    let s = h.scratch();
    let msg = s.join("m");
    fs::write(&msg, b"artifact").unwrap();
    let out_dir = s.join("out");
    fs::create_dir(&out_dir).unwrap();
    let sig = out_dir.join("m.sig");
    let assertion = out_dir.join("m.json");
    // an existing file open to others is replaced by a private one
    fs::write(&sig, b"old").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&sig, fs::Permissions::from_mode(0o644)).unwrap();
    }
    h.ok(&[
        "sign".as_ref(),
        "--message-file".as_ref(),
        msg.as_os_str(),
        "--out".as_ref(),
        sig.as_os_str(),
        "--assertion".as_ref(),
        assertion.as_os_str(),
    ]);
    let public = out_dir.join("k.pem");
    h.ok(&[
        "key".as_ref(),
        "public".as_ref(),
        "k".as_ref(),
        "--out".as_ref(),
        public.as_os_str(),
    ]);
    for f in [&sig, &assertion, &public] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let mut names: Vec<_> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["k.pem", "m.json", "m.sig"],
        "no temporary files left"
    );
    let check = [
        "verify".as_ref(),
        "--key".as_ref(),
        id.as_ref(),
        "--message-file".as_ref(),
        msg.as_os_str(),
        "--signature".as_ref(),
        sig.as_os_str(),
    ];
    assert_eq!(h.ok(&check).trim(), "valid");

    // the signature is written before the assertion: if the assertion cannot be written, the
    // signature is there all the same (never an assertion without its signature)
    fs::remove_file(&sig).unwrap();
    let unwritable = s.join("missing-dir/m.json");
    let args = [
        "sign".as_ref(),
        "--message-file".as_ref(),
        msg.as_os_str(),
        "--out".as_ref(),
        sig.as_os_str(),
        "--assertion".as_ref(),
        unwritable.as_os_str(),
    ];
    let err = expect_code(&h.run(&args), 3, &args);
    assert!(err.contains("missing-dir"), "{err}");
    assert_eq!(h.ok(&check).trim(), "valid");

    // /dev/null is written to, never replaced
    h.ok(&[
        "sign",
        "--key",
        "k",
        "--message-file",
        "/dev/null",
        "--out",
        "/dev/null",
    ]);
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    // an export never replaces anything, not even a dangling link
    let link = out_dir.join("link.pem");
    std::os::unix::fs::symlink(out_dir.join("target.pem"), &link).unwrap();
    let err = h.fails(
        &[
            "key",
            "export",
            "k",
            "--out",
            link.to_str().unwrap(),
            "--insecure-plaintext",
        ],
        8,
    );
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(!out_dir.join("target.pem").exists());
}

#[test]
fn a_closed_standard_output_ends_quietly_and_successfully() {
    let h = Home::with_encrypted();
    for i in 0..3 {
        h.generate("ed25519", &format!("k{i}"), &[]);
    }
    for args in [
        vec!["key", "list"],
        vec!["key", "list", "--json"],
        vec!["key", "show", "k0"],
        vec!["key", "public", "k0"],
        vec!["backend", "list"],
        vec!["sign", "--key", "k0", "--message-file", "/dev/null"],
    ] {
        let mut child = h
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before keyhaven writes (it first reads its configuration and
        // derives the store key), so every write meets a closed pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: {stderr}"
        );
    }
    // verify keeps its answer even so: an invalid signature is exit 1
    let s = h.scratch();
    let bad = s.join("bad.sig");
    fs::write(&bad, [0u8; 64]).unwrap();
    let mut child = h
        .cmd([
            "verify",
            "--key",
            "k0",
            "--message-file",
            "/dev/null",
            "--signature",
            bad.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

#[test]
fn a_bad_signature_outside_verify_is_an_internal_error() {
    use keyhaven::CoreError;
    use keyhaven_cli::exit;
    let e = anyhow::Error::from(CoreError::BadSignature).context("quickstart self-check");
    assert_eq!(exit::code_of(&e), exit::INTERNAL);
    assert_eq!(
        exit::code_of_kind(keyhaven::ErrorKind::BadSignature),
        exit::INTERNAL
    );
    assert_eq!(
        exit::code_of(&anyhow::Error::from(CoreError::BadPassphrase("x".into()))),
        exit::BAD_PASSPHRASE
    );
}
