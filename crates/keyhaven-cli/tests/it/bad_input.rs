//! Bad input: each case gets its documented exit code and leaves the home exactly as it was.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Home, expect_code};

/// Runs `args` expecting `code`, and checks the home did not change at all.
fn refused(h: &Home, args: &[&str], code: i32) -> String {
    let before = h.snapshot();
    let err = h.fails(args, code);
    assert_eq!(
        before,
        h.snapshot(),
        "keyhaven {} changed the home",
        args.join(" ")
    );
    err
}

fn home_with_keys() -> (Home, String, String) {
    let h = Home::with_encrypted();
    let p384 = h.generate("p384", "signer", &[]);
    let x = h.generate("x25519", "agreement", &[]);
    (h, p384, x)
}

#[test]
fn wrong_passphrase_exits_4_and_changes_nothing() {
    let (h, id, _) = home_with_keys();
    for args in [
        vec!["key", "list"],
        vec!["key", "show", "signer"],
        vec!["key", "generate", "--label", "new"],
        vec!["key", "delete", "signer", "--yes"],
        vec!["sign", "--key", "signer", "--digest", &"ab".repeat(48)],
    ] {
        let before = h.snapshot();
        let out = h
            .cmd(&args)
            .env("KEYHAVEN_PASSPHRASE", "not the passphrase")
            .output()
            .unwrap();
        let err = expect_code(&out, 4, &args);
        assert!(err.contains("wrong passphrase"), "{err}");
        assert!(
            !err.contains("not the passphrase"),
            "the passphrase was printed: {err}"
        );
        assert_eq!(before, h.snapshot(), "{args:?} changed the home");
    }
    h.ok(&["key", "show", &id]);
}

#[test]
fn unknown_id_or_label_exits_3() {
    let (h, _, _) = home_with_keys();
    refused(&h, &["key", "show", "00000000000000000000000000000000"], 3);
    let err = refused(&h, &["key", "show", "no-such-label"], 3);
    assert!(err.contains("'no-such-label' not found"), "{err}");
    refused(
        &h,
        &["sign", "--key", "nope", "--digest", &"00".repeat(48)],
        3,
    );
    refused(&h, &["key", "delete", "nope", "--yes"], 3);
    refused(&h, &["key", "set-default", "nope"], 3);
    refused(
        &h,
        &["key", "generate", "--backend", "nope", "--label", "x"],
        3,
    );
    refused(&h, &["key", "public", "default:nope"], 3);
    let missing = h.scratch().join("missing");
    refused(
        &h,
        &[
            "sign",
            "--key",
            "signer",
            "--message-file",
            missing.to_str().unwrap(),
        ],
        3,
    );
}

#[test]
fn wrong_digest_length_exits_9() {
    let (h, _, _) = home_with_keys();
    let err = refused(
        &h,
        &["sign", "--key", "signer", "--digest", &"00".repeat(32)],
        9,
    );
    assert!(err.contains("48-byte"), "{err}");
    refused(&h, &["sign", "--key", "signer", "--digest", "not hex"], 9);
    let sig = h.scratch().join("sig");
    fs::write(&sig, [0u8; 8]).unwrap();
    refused(
        &h,
        &[
            "verify",
            "--key",
            "signer",
            "--digest",
            &"00".repeat(20),
            "--signature",
            sig.to_str().unwrap(),
        ],
        9,
    );
}

#[test]
fn signing_with_x25519_exits_5() {
    let (h, _, x) = home_with_keys();
    let err = refused(&h, &["sign", "--key", &x, "--digest", &"00".repeat(48)], 5);
    assert!(err.contains("X25519"), "{err}");
    let msg = h.scratch().join("m");
    fs::write(&msg, b"m").unwrap();
    refused(
        &h,
        &[
            "sign",
            "--key",
            "agreement",
            "--message-file",
            msg.to_str().unwrap(),
        ],
        5,
    );
}

#[test]
fn importing_malformed_pem_exits_9() {
    let (h, _, _) = home_with_keys();
    let s = h.scratch();
    let cases: [(&str, &[u8]); 5] = [
        ("garbage.pem", b"this is not a key\n"),
        (
            "truncated.pem",
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n",
        ),
        (
            "badbase64.pem",
            b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        ),
        (
            "cert.pem",
            b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        ),
        ("binary.der", &[0x30, 0x82, 0xff, 0x00, 0xc3]),
    ];
    for (name, bytes) in cases {
        let path = s.join(name);
        fs::write(&path, bytes).unwrap();
        refused(
            &h,
            &[
                "key",
                "import",
                "--label",
                "imported",
                path.to_str().unwrap(),
            ],
            9,
        );
    }
    // a well-formed PEM of an algorithm keyhaven does not handle (DER of junk inside)
    let junk = s.join("junk.pem");
    fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    refused(
        &h,
        &[
            "key",
            "import",
            "--label",
            "imported",
            junk.to_str().unwrap(),
        ],
        9,
    );
}

fn pem_home() -> (Home, String, String) {
    let h = Home::new();
    h.ok(&["backend", "add", "pem", "plain"]);
    let a = h.generate("p384", "a", &["--backend", "plain"]);
    let b = h.generate("ed25519", "b", &["--backend", "plain"]);
    (h, a, b)
}

#[test]
fn a_world_readable_key_file_exits_6() {
    use std::os::unix::fs::PermissionsExt;
    let (h, a, _b) = pem_home();
    let shown = h.json(&["key", "show", &a, "--json"]);
    let file = PathBuf::from(shown["private_key_file"].as_str().unwrap());
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(&h, &["sign", "--key", &a, "--digest", &"11".repeat(48)], 6);
    assert!(err.contains("chmod") || err.contains("permission"), "{err}");
    assert!(
        err.contains(file.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );
    // fixed permissions: it works again
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    h.ok(&[
        "sign",
        "--key",
        &a,
        "--digest",
        &"11".repeat(48),
        "--out",
        "/dev/null",
    ]);
}

#[test]
fn a_world_readable_store_directory_exits_6() {
    use std::os::unix::fs::PermissionsExt;
    let (h, a, _b) = pem_home();
    let dir = h.path().join("backends/plain");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    refused(&h, &["key", "list"], 6);
    refused(&h, &["sign", "--key", &a, "--digest", &"11".repeat(48)], 6);
}

/// Every file under `dir` whose name contains `id`.
fn files_of(dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files_of(&p, id));
        } else if p.file_name().unwrap().to_string_lossy().contains(id) {
            out.push(p);
        }
    }
    out
}

/// Changes one character of the longest string value in a JSON record (the sealed key).
fn flip_longest_string(path: &Path) {
    let text = fs::read_to_string(path).unwrap();
    let mut best = (0, 0);
    let mut in_str = None;
    for (i, c) in text.char_indices() {
        match (c, in_str) {
            ('"', None) => in_str = Some(i + 1),
            ('"', Some(start)) => {
                if i - start > best.1 - best.0 {
                    best = (start, i);
                }
                in_str = None;
            }
            _ => {}
        }
    }
    let mid = (best.0 + best.1) / 2;
    let mut bytes = text.into_bytes();
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_bit_flipped_record_exits_7_and_the_rest_stays_usable() {
    let h = Home::with_encrypted();
    let victim = h.generate("p384", "victim", &[]);
    let other = h.generate("ed25519", "other", &[]);
    let third = h.generate("p256", "third", &[]);
    let records: Vec<_> = files_of(&h.path().join("backends/default"), &victim);
    assert!(!records.is_empty(), "no record file for {victim}");
    for r in &records {
        flip_longest_string(r);
    }
    let err = refused(&h, &["key", "show", &victim], 7);
    assert!(err.contains(&victim), "names the damaged record: {err}");
    refused(
        &h,
        &["sign", "--key", &victim, "--digest", &"22".repeat(48)],
        7,
    );
    // the other keys are listed and usable; the damaged one is reported
    let before = h.snapshot();
    let out = h.run(&["key", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&other) && ids.contains(&third), "{ids:?}");
    assert!(!ids.contains(&victim));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("corrupt") && stderr.contains(&victim),
        "{stderr}"
    );
    assert_eq!(before, h.snapshot());
    h.ok(&[
        "sign",
        "--key",
        &other,
        "--message-file",
        "/dev/null",
        "--out",
        "/dev/null",
    ]);
    let doctor = h.run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(7), "doctor reports damage");
}

#[test]
fn a_truncated_record_exits_7() {
    let h = Home::with_encrypted();
    let victim = h.generate("ed25519", "victim", &[]);
    let other = h.generate("ed25519", "other", &[]);
    for r in files_of(&h.path().join("backends/default"), &victim) {
        let bytes = fs::read(&r).unwrap();
        fs::write(&r, &bytes[..bytes.len() / 2]).unwrap();
    }
    refused(&h, &["key", "show", &victim], 7);
    h.ok(&["key", "show", &other]);
}

#[test]
fn a_bad_config_exits_9_naming_the_field() {
    let h = Home::with_encrypted();
    let config = h.path().join("keyhaven.toml");
    let good = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{good}\n[backends.x]\ntype = \"tape\"\n")).unwrap();
    let err = refused(&h, &["key", "list"], 9);
    assert!(
        err.contains("unknown backend type 'tape'") && err.contains("line"),
        "{err}"
    );
    fs::write(&config, format!("colour = \"blue\"\n{good}")).unwrap();
    let err = refused(&h, &["key", "list"], 9);
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn a_home_or_config_open_to_other_users_exits_6() {
    use std::os::unix::fs::PermissionsExt;
    let (h, id, _) = home_with_keys();
    let home = h.path();
    let config = home.join("keyhaven.toml");
    for (path, loose, fix) in [
        (&home, 0o755, "chmod 700"),
        (&home, 0o770, "chmod 700"),
        (&config, 0o644, "chmod 600"),
        (&config, 0o602, "chmod 600"),
    ] {
        let good = if path == &home { 0o700 } else { 0o600 };
        fs::set_permissions(path, fs::Permissions::from_mode(loose)).unwrap();
        for args in [
            vec!["key", "list"],
            vec!["sign", "--key", "signer", "--digest", &"00".repeat(48)],
            vec!["key", "generate", "--label", "new"],
            vec!["quickstart"],
        ] {
            let err = refused(&h, &args, 6);
            assert!(
                err.contains(&format!("{fix} {}", path.display())),
                "names the path and the fix: {err}"
            );
        }
        fs::set_permissions(path, fs::Permissions::from_mode(good)).unwrap();
        h.ok(&["key", "show", &id]);
    }
}

#[test]
fn passphrase_files_open_to_other_users_exit_6() {
    use std::os::unix::fs::PermissionsExt;
    let (h, _, _) = home_with_keys();
    let s = h.scratch();
    let pf = s.join("pass");
    fs::write(&pf, format!("{}\n", crate::PASSPHRASE)).unwrap();
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o644)).unwrap();
    let pf_arg = pf.to_str().unwrap();
    let err = refused(&h, &["--passphrase-file", pf_arg, "key", "list"], 6);
    assert!(
        err.contains(&format!("chmod 600 {}", pf.display())),
        "{err}"
    );
    let out = s.join("exported.pem");
    refused(
        &h,
        &[
            "key",
            "export",
            "signer",
            "--out",
            out.to_str().unwrap(),
            "--export-passphrase-file",
            pf_arg,
        ],
        6,
    );
    assert!(!out.exists());
    // an encrypted key file to import, with a loose passphrase file
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o600)).unwrap();
    h.ok(&[
        "key",
        "export",
        "signer",
        "--out",
        out.to_str().unwrap(),
        "--export-passphrase-file",
        pf_arg,
    ]);
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o640)).unwrap();
    let err = refused(
        &h,
        &[
            "key",
            "import",
            "--label",
            "again",
            "--key-passphrase-file",
            pf_arg,
            out.to_str().unwrap(),
        ],
        6,
    );
    assert!(err.contains("chmod 600"), "{err}");
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o600)).unwrap();
    h.ok(&[
        "key",
        "import",
        "--label",
        "again",
        "--key-passphrase-file",
        pf_arg,
        out.to_str().unwrap(),
    ]);
}

#[test]
fn weak_passphrases_for_new_stores_backups_and_exports_are_refused_unless_allowed() {
    let h = Home::new().env("KEYHAVEN_PASSPHRASE", "hunter2");
    let e = h.fails(&["backend", "add", "encrypted", "default"], 9);
    assert!(
        e.contains("too weak") && e.contains("--allow-weak-passphrase"),
        "{e}"
    );
    assert!(!h.path().join("backends").exists(), "nothing was created");
    let out = h.run(&[
        "--allow-weak-passphrase",
        "backend",
        "add",
        "encrypted",
        "default",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An existing store opens with whatever passphrase it has.
    h.generate("p256", "k", &[]);
    // Exports and backups take new passphrases too.
    let dir = h.scratch();
    let weak = dir.join("weak");
    crate::write_private(&weak, "aaaaaaaaaaaaaaaa\n");
    let e = h.fails(
        &[
            "key",
            "export",
            "k",
            "--export-passphrase-file",
            weak.to_str().unwrap(),
            "--out",
            dir.join("k.pem").to_str().unwrap(),
        ],
        9,
    );
    assert!(e.contains("different characters"), "{e}");
    let e = h.fails(
        &[
            "backup",
            "create",
            "--out",
            dir.join("b.khb").to_str().unwrap(),
            "--backup-passphrase-file",
            weak.to_str().unwrap(),
        ],
        9,
    );
    assert!(e.contains("too weak"), "{e}");
}

#[test]
fn temporary_files_a_killed_writer_left_are_removed_on_the_next_open() {
    let (h, _, _) = home_with_keys();
    let age = |p: &Path| {
        let ok = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(p)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let left = [
        h.path().join(".keyhaven-tmp-AbC123"),
        h.path().join("rotation/usage/.keyhaven-tmp-x1"),
        h.path()
            .join("backends/default/keys/.tmp-0000.json-deadbeef"),
    ];
    for p in &left {
        crate::write_private(p, "half a write");
        age(p);
    }
    // One being written right now by another process stays.
    let fresh = h.path().join(".keyhaven-tmp-now");
    crate::write_private(&fresh, "in progress");
    h.ok(&["key", "list"]);
    for p in &left {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(fresh.exists());
}

#[test]
fn a_home_that_lost_its_configuration_says_so() {
    let (h, _, _) = home_with_keys();
    let config = h.path().join("keyhaven.toml");
    fs::remove_file(&config).unwrap();
    let e = h.fails(&["key", "list"], 7);
    assert!(
        e.contains(config.to_str().unwrap()) && e.contains("missing"),
        "{e}"
    );
    assert!(e.contains("backends default"), "{e}");
}

#[test]
fn a_missing_file_is_advised_as_a_path_never_as_a_missing_key() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "k", &[]);
    let nope = h.scratch().join("nope");
    let nope = nope.to_str().unwrap();
    let pem = h.scratch().join("k.pem");
    let pem = pem.to_str().unwrap();
    h.ok(&["key", "public", "k", "--out", pem]);
    for args in [
        vec!["sign", "--key", "k", "--message-file", nope],
        vec!["backup", "verify", nope],
        vec!["verify-continuity", nope, "--old-public-key", pem],
        vec!["key", "import", nope, "--label", "x"],
    ] {
        let err = h.fails(&args, 3);
        assert!(err.contains(nope), "{args:?}: {err}");
        assert!(err.contains("Check the path"), "{args:?}: {err}");
        assert!(!err.contains("keyhaven key list"), "{args:?}: {err}");
    }
    // A key that is not there still gets the advice for keys.
    let err = h.fails(
        &["sign", "--key", "nokey", "--message-file", "/dev/null"],
        3,
    );
    assert!(err.contains("keyhaven key list"), "{err}");
}
