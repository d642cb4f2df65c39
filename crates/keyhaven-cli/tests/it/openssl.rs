//! Interoperability with the real `openssl` command.

use std::fs;

use crate::{Home, PASSPHRASE, openssl, openssl_ok, write_private};

#[test]
fn keyhaven_signatures_verify_in_openssl() {
    let h = Home::with_encrypted();
    let s = h.scratch();
    fs::write(s.join("msg"), b"interop message\n").unwrap();
    for alg in ["p384", "p256", "ed25519"] {
        h.generate(alg, alg, &[]);
        h.ok(&[
            "key",
            "public",
            alg,
            "--out",
            s.join(format!("{alg}.pem")).to_str().unwrap(),
        ]);
        h.ok(&[
            "sign",
            "--key",
            alg,
            "--message-file",
            s.join("msg").to_str().unwrap(),
            "--out",
            s.join(format!("{alg}.sig")).to_str().unwrap(),
        ]);
        let pem = format!("{alg}.pem");
        let sig = format!("{alg}.sig");
        let out = match alg {
            "p384" => openssl(
                &s,
                &[
                    "dgst",
                    "-sha384",
                    "-verify",
                    &pem,
                    "-signature",
                    &sig,
                    "msg",
                ],
            ),
            "p256" => openssl(
                &s,
                &[
                    "dgst",
                    "-sha256",
                    "-verify",
                    &pem,
                    "-signature",
                    &sig,
                    "msg",
                ],
            ),
            _ => openssl(
                &s,
                &[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin", "-in", "msg",
                    "-sigfile", &sig,
                ],
            ),
        };
        assert!(
            out.status.success(),
            "openssl rejected the {alg} signature: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // and a tampered message is rejected by openssl too
        fs::write(s.join("msg2"), b"interop messagE\n").unwrap();
        let out = match alg {
            "p384" => openssl(
                &s,
                &[
                    "dgst",
                    "-sha384",
                    "-verify",
                    &pem,
                    "-signature",
                    &sig,
                    "msg2",
                ],
            ),
            "p256" => openssl(
                &s,
                &[
                    "dgst",
                    "-sha256",
                    "-verify",
                    &pem,
                    "-signature",
                    &sig,
                    "msg2",
                ],
            ),
            _ => openssl(
                &s,
                &[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin", "-in", "msg2",
                    "-sigfile", &sig,
                ],
            ),
        };
        assert!(
            !out.status.success(),
            "openssl accepted a tampered {alg} message"
        );
    }
}

#[test]
fn openssl_signatures_verify_in_keyhaven_without_a_home() {
    let h = Home::new();
    let s = h.scratch();
    fs::write(s.join("msg"), b"signed by openssl\n").unwrap();
    for (curve, hash) in [("secp384r1", "-sha384"), ("prime256v1", "-sha256")] {
        let key = format!("{curve}.key");
        let pubf = format!("{curve}.pub");
        let sig = format!("{curve}.sig");
        openssl_ok(
            &s,
            &["ecparam", "-name", curve, "-genkey", "-noout", "-out", &key],
        );
        openssl_ok(&s, &["ec", "-in", &key, "-pubout", "-out", &pubf]);
        openssl_ok(&s, &["dgst", hash, "-sign", &key, "-out", &sig, "msg"]);
        let verify = |msg: &str, sig: &str| {
            let out = h
                .cmd([
                    "verify",
                    "--public-key",
                    s.join(&pubf).to_str().unwrap(),
                    "--message-file",
                    s.join(msg).to_str().unwrap(),
                    "--signature",
                    s.join(sig).to_str().unwrap(),
                ])
                .env_remove("KEYHAVEN_PASSPHRASE")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )
        };
        assert_eq!(verify("msg", &sig), (Some(0), "valid".into()), "{curve}");
        // tampered message
        fs::write(s.join("tampered"), b"signed by openssL\n").unwrap();
        assert_eq!(
            verify("tampered", &sig),
            (Some(1), "invalid".into()),
            "{curve}"
        );
        // tampered signature: flip a bit in the last byte (s), and one in the middle
        let mut bytes = fs::read(s.join(&sig)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(s.join("bad.sig"), &bytes).unwrap();
        assert_eq!(
            verify("msg", "bad.sig"),
            (Some(1), "invalid".into()),
            "{curve}"
        );
        let mut bytes = fs::read(s.join(&sig)).unwrap();
        bytes[1] ^= 0x40;
        fs::write(s.join("bad2.sig"), &bytes).unwrap();
        assert_eq!(
            verify("msg", "bad2.sig").0,
            Some(1),
            "{curve}: malformed DER is invalid"
        );
    }
    // Ed25519 from openssl
    openssl_ok(&s, &["genpkey", "-algorithm", "ed25519", "-out", "ed.key"]);
    openssl_ok(&s, &["pkey", "-in", "ed.key", "-pubout", "-out", "ed.pub"]);
    openssl_ok(
        &s,
        &[
            "pkeyutl", "-sign", "-inkey", "ed.key", "-rawin", "-in", "msg", "-out", "ed.sig",
        ],
    );
    let out = h
        .cmd([
            "verify",
            "--public-key",
            s.join("ed.pub").to_str().unwrap(),
            "--message-file",
            s.join("msg").to_str().unwrap(),
            "--signature",
            s.join("ed.sig").to_str().unwrap(),
        ])
        .env_remove("KEYHAVEN_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // nothing of the home was touched
    assert!(!h.path().exists(), "verify --public-key created the home");
}

#[test]
fn pem_backend_key_files_load_in_openssl() {
    let h = Home::new();
    h.ok(&["backend", "add", "pem", "plain"]);
    for alg in ["p384", "p256", "ed25519", "x25519"] {
        h.generate(alg, alg, &["--backend", "plain"]);
        let shown = h.json(&["key", "show", alg, "--json"]);
        let file = shown["private_key_file"]
            .as_str()
            .expect("PEM keys name their file");
        let public = openssl_ok(&h.scratch(), &["pkey", "-in", file, "-pubout"]);
        assert_eq!(
            String::from_utf8(public).unwrap(),
            shown["public_key_pem"].as_str().unwrap(),
            "{alg}: openssl derives the same public key"
        );
    }
    // openssl signs with the PEM store's key; keyhaven verifies with the key in the store
    let s = h.scratch();
    let shown = h.json(&["key", "show", "p384", "--json"]);
    fs::write(s.join("msg"), b"hello").unwrap();
    openssl_ok(
        &s,
        &[
            "dgst",
            "-sha384",
            "-sign",
            shown["private_key_file"].as_str().unwrap(),
            "-out",
            "sig",
            "msg",
        ],
    );
    let out = h.ok(&[
        "verify",
        "--key",
        "plain:p384",
        "--message-file",
        s.join("msg").to_str().unwrap(),
        "--signature",
        s.join("sig").to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "valid");
}

#[test]
fn exported_keys_load_in_openssl() {
    let h = Home::with_encrypted();
    let s = h.scratch();
    write_private(&s.join("export-pass"), "export secret\n");
    for alg in ["p384", "p256", "ed25519", "x25519"] {
        h.generate(alg, alg, &[]);
        let public = h.ok(&["key", "public", alg]);
        let out = s.join(format!("{alg}.enc.pem"));
        h.ok(&[
            "key",
            "export",
            alg,
            "--out",
            out.to_str().unwrap(),
            "--export-passphrase-file",
            s.join("export-pass").to_str().unwrap(),
        ]);
        let text = fs::read_to_string(&out).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{text}"
        );
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&out).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let derived = openssl_ok(
            &s,
            &[
                "pkey",
                "-in",
                out.to_str().unwrap(),
                "-passin",
                "pass:export secret",
                "-pubout",
            ],
        );
        assert_eq!(String::from_utf8(derived).unwrap(), public, "{alg}");
        let wrong = openssl(
            &s,
            &["pkey", "-in", out.to_str().unwrap(), "-passin", "pass:nope"],
        );
        assert!(!wrong.status.success());

        // plain only on request
        let plain = s.join(format!("{alg}.plain.pem"));
        let o = h.run(&[
            "key",
            "export",
            alg,
            "--out",
            plain.to_str().unwrap(),
            "--insecure-plaintext",
        ]);
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("UNENCRYPTED"));
        let derived = openssl_ok(&s, &["pkey", "-in", plain.to_str().unwrap(), "-pubout"]);
        assert_eq!(String::from_utf8(derived).unwrap(), public, "{alg}");
    }
    // never overwrites; no export passphrase without a terminal is an error
    let err = h.fails(
        &[
            "key",
            "export",
            "p384",
            "--out",
            s.join("p384.enc.pem").to_str().unwrap(),
            "--export-passphrase-file",
            s.join("export-pass").to_str().unwrap(),
        ],
        8,
    );
    assert!(err.contains("refusing to overwrite"), "{err}");
    let err = h.fails(
        &[
            "key",
            "export",
            "p384",
            "--out",
            s.join("new.pem").to_str().unwrap(),
        ],
        4,
    );
    assert!(err.contains("--export-passphrase-file"), "{err}");
    assert!(
        !err.contains("KEYHAVEN_PASSPHRASE"),
        "the hint names the export's option, not the backends': {err}"
    );
    assert!(!s.join("new.pem").exists());
    // a passphrase file and --insecure-plaintext contradict each other (clap: exit 2)
    let out = h.run(&[
        "key",
        "export",
        "p384",
        "--out",
        s.join("new.pem").to_str().unwrap(),
        "--export-passphrase-file",
        s.join("export-pass").to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!s.join("new.pem").exists());
}

#[test]
fn openssl_keys_import() {
    let h = Home::with_encrypted();
    let s = h.scratch();
    // PKCS#8 (Ed25519), SEC1 (P-384, P-256), encrypted PKCS#8 (P-384)
    openssl_ok(&s, &["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    openssl_ok(
        &s,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "sec1-384.pem",
        ],
    );
    openssl_ok(
        &s,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1-256.pem",
        ],
    );
    openssl_ok(
        &s,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "sec1-384.pem",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:imp0rt",
            "-out",
            "enc.pem",
        ],
    );
    write_private(&s.join("imp-pass"), "imp0rt\n");
    for (file, label, extra) in [
        ("ed.pem", "ed", None),
        ("sec1-384.pem", "sec1-384", None),
        ("sec1-256.pem", "sec1-256", None),
        ("enc.pem", "enc", Some("imp-pass")),
    ] {
        let mut args = vec![
            "key".to_owned(),
            "import".to_owned(),
            "--label".to_owned(),
            label.to_owned(),
            s.join(file).to_str().unwrap().to_owned(),
        ];
        if let Some(p) = extra {
            args.push("--key-passphrase-file".into());
            args.push(s.join(p).to_str().unwrap().to_owned());
        }
        h.ok(&args);
        let expected = openssl_ok(
            &s,
            &["pkey", "-in", file, "-pubout", "-passin", "pass:imp0rt"],
        );
        assert_eq!(
            h.ok(&["key", "public", label]),
            String::from_utf8(expected).unwrap(),
            "{file}"
        );
    }
    // the encrypted file without its passphrase, and with a wrong one
    let err = h.fails(
        &[
            "key",
            "import",
            "--label",
            "x",
            s.join("enc.pem").to_str().unwrap(),
        ],
        4,
    );
    assert!(err.contains("--key-passphrase-file"), "{err}");
    assert!(!err.contains("KEYHAVEN_PASSPHRASE"), "{err}");
    write_private(&s.join("wrong-pass"), "wrong\n");
    let err = h.fails(
        &[
            "key",
            "import",
            "--label",
            "x",
            "--key-passphrase-file",
            s.join("wrong-pass").to_str().unwrap(),
            s.join("enc.pem").to_str().unwrap(),
        ],
        4,
    );
    assert!(
        err.contains("wrong passphrase") && err.contains("--key-passphrase-file"),
        "the hint names the import's option: {err}"
    );
    assert!(!err.contains("KEYHAVEN_PASSPHRASE"), "{err}");
    // the store passphrase is not the import passphrase
    assert_ne!(PASSPHRASE, "imp0rt");
}

/// ECDSA signs a large file in constant memory: under a 300 MB address-space limit, a 512 MiB
/// file is signed (reading it whole could not be), and openssl verifies the signature.
#[test]
fn ecdsa_signs_a_file_larger_than_the_memory_it_may_use() {
    let h = crate::Home::with_encrypted();
    h.generate("p384", "big", &[]);
    let dir = h.scratch();
    let big = dir.join("big.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(512 << 20).unwrap();
    drop(f);
    let sig = dir.join("big.sig");
    let pem = dir.join("big.pem");
    h.ok(&["key", "public", "big", "--out", pem.to_str().unwrap()]);
    let assertion = dir.join("big.json");
    let cmd = h.cmd(["sign"]);
    // Re-run the same command line under `ulimit -v` through the shell.
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut limited = std::process::Command::new("sh");
    limited
        .arg("-c")
        .arg("ulimit -v 307200 && exec \"$@\"")
        .arg("sh")
        .arg(program)
        .args(args)
        .args(["--key", "big", "--message-file"])
        .arg(&big)
        .arg("--out")
        .arg(&sig)
        .arg("--assertion")
        .arg(&assertion);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => limited.env(k, v),
            None => limited.env_remove(k),
        };
    }
    let out = limited.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = std::process::Command::new("openssl")
        .args(["dgst", "-sha384", "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(&sig)
        .arg(&big)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The assertion names the file's SHA-256, and verifies against the file, streamed too.
    let out = h.run(&[
        "verify",
        "--assertion",
        assertion.to_str().unwrap(),
        "--message-file",
        big.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
