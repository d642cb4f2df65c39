//! `keyhaven backup ...` and `keyhaven key export --format`: a home backed up, wiped and
//! restored; Shamir custodian shares; bad passphrases, damaged backups, conflicts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Home, PASSPHRASE, openssl_ok, write_private};

const BACKUP_PASSPHRASE: &str = "a different, long backup passphrase";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (label, fingerprint) of every key of the home.
fn fingerprints(h: &Home) -> BTreeSet<(String, String)> {
    h.json(&["key", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["label"].as_str().unwrap().to_owned(),
                k["fingerprint"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A private file holding the backup passphrase.
fn passphrase_file(dir: &Path, name: &str, pass: &str) -> PathBuf {
    let f = dir.join(name);
    write_private(&f, format!("{pass}\n"));
    f
}

/// The share file of `custodian` in `dir`.
fn share_of(dir: &Path, custodian: &str) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| s(p).ends_with(&format!("-{custodian}.share")))
        .unwrap_or_else(|| panic!("no share of {custodian} in {}", dir.display()))
}

#[test]
fn a_wiped_home_is_restored_with_the_same_keys_and_they_sign() {
    let h = Home::with_encrypted();
    let dir = h.scratch();
    h.generate("p384", "signer", &[]);
    h.generate("ed25519", "ed", &[]);
    h.generate("x25519", "dh", &[]);
    let before = fingerprints(&h);
    h.ok(&[
        "key",
        "public",
        "signer",
        "--out",
        s(&dir.join("signer.pem")),
    ]);
    let pass = passphrase_file(&dir, "backup-pass", BACKUP_PASSPHRASE);
    let backup = dir.join("home.khb");
    let out = h.ok(&[
        "backup",
        "create",
        "--out",
        s(&backup),
        "--format",
        "binary",
        "--backup-passphrase-file",
        s(&pass),
    ]);
    assert!(out.contains("fingerprint: "), "{out}");
    assert_eq!(crate::mode(&backup), 0o600);
    // Never overwritten.
    let e = h.fails(
        &[
            "backup",
            "create",
            "--out",
            s(&backup),
            "--backup-passphrase-file",
            s(&pass),
        ],
        8,
    );
    assert!(e.contains("refusing to overwrite"), "{e}");

    // The header is readable without the secret; verify checks integrity without it and every
    // record with it.
    let header = h.json(&["backup", "inspect", s(&backup), "--json"]);
    assert_eq!(header["key_count"], 3);
    assert_eq!(header["encoding"], "binary");
    let labels: BTreeSet<&str> = header["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, BTreeSet::from(["signer", "ed", "dh"]));
    let v = h.json(&[
        "backup",
        "verify",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
        "--json",
    ]);
    assert_eq!(v["authenticated"], true);
    assert_eq!(v["private_keys_checked"], 3);

    // Wipe the home, then restore into a new one: same keys, same fingerprints.
    fs::remove_dir_all(h.path()).unwrap();
    h.ok(&["backend", "add", "encrypted", "default"]);
    let out = h.ok(&[
        "backup",
        "restore",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
    ]);
    assert_eq!(out.matches("verified").count(), 3, "{out}");
    assert_eq!(fingerprints(&h), before);

    // The restored key signs, and openssl verifies with the ORIGINAL public key.
    fs::write(dir.join("msg"), b"signed after restore\n").unwrap();
    h.ok(&[
        "sign",
        "--key",
        "signer",
        "--message-file",
        s(&dir.join("msg")),
        "--out",
        s(&dir.join("msg.sig")),
    ]);
    openssl_ok(
        &dir,
        &[
            "dgst",
            "-sha384",
            "-verify",
            "signer.pem",
            "-signature",
            "msg.sig",
            "msg",
        ],
    );
}

#[test]
fn shamir_two_of_three_with_a_custodian_key() {
    let h = Home::with_encrypted();
    let dir = h.scratch();
    h.generate("p256", "vault", &[]);
    h.generate("x25519", "bob-key", &[]);
    let shares = dir.join("shares");
    let backup = dir.join("vault.khb");
    let create = |out: &Path, share_dir: &Path| {
        h.ok(&[
            "backup",
            "create",
            "--keys",
            "vault",
            "--out",
            s(out),
            "--shamir",
            "2-of-3",
            "--custodian",
            "alice",
            "--custodian",
            "bob=bob-key",
            "--custodian",
            "carol",
            "--share-dir",
            s(share_dir),
        ])
    };
    let out = create(&backup, &shares);
    assert!(out.contains("share 2 of 3 (bob)") && out.contains("encrypted to key"));
    let (alice, bob, carol) = (
        share_of(&shares, "alice"),
        share_of(&shares, "bob"),
        share_of(&shares, "carol"),
    );
    assert_eq!(crate::mode(&alice), 0o600);
    assert_eq!(crate::mode(&shares), 0o700);

    // Each custodian checks their share without the secret; bob's is encrypted to his key.
    let out = h.ok(&["backup", "shares", "verify", s(&alice), s(&bob), s(&carol)]);
    assert_eq!(out.matches(": genuine").count(), 2, "{out}");
    assert!(out.contains("encrypted to key"), "{out}");
    // Bob decrypts his share with his X25519 key of this home.
    let bob_plain = dir.join("bob.plain");
    h.ok(&[
        "backup",
        "shares",
        "decrypt",
        s(&bob),
        "--key",
        "bob-key",
        "--out",
        s(&bob_plain),
    ]);
    assert_eq!(crate::mode(&bob_plain), 0o600);
    // Still encrypted, it cannot be combined.
    let e = h.fails(
        &[
            "backup",
            "verify",
            s(&backup),
            "--share",
            s(&alice),
            s(&bob),
        ],
        7,
    );
    assert!(e.contains("decrypt it first"), "{e}");

    // Any two shares, in any order, authenticate the whole backup; one share does not.
    for pair in [[&carol, &alice], [&bob_plain, &carol], [&alice, &bob_plain]] {
        let v = h.json(&[
            "backup",
            "verify",
            s(&backup),
            "--share",
            s(pair[0]),
            "--share",
            s(pair[1]),
            "--json",
        ]);
        assert_eq!(v["authenticated"], true);
    }
    let e = h.fails(&["backup", "verify", s(&backup), "--share", s(&alice)], 9);
    assert!(e.contains("needs 2"), "{e}");

    // A share with one character changed is caught and named.
    let text = fs::read_to_string(&carol).unwrap();
    let at = text.find("data: ").unwrap() + 10;
    let mut typo = text.into_bytes();
    typo[at] = if typo[at] == b'A' { b'B' } else { b'A' };
    let typo_file = dir.join("carol-typo.share");
    write_private(&typo_file, &typo);
    let e = h.fails(&["backup", "shares", "verify", s(&typo_file)], 7);
    assert!(e.contains("carol") && e.contains("line"), "{e}");
    let e = h.fails(
        &[
            "backup",
            "restore",
            s(&backup),
            "--share",
            s(&alice),
            s(&typo_file),
        ],
        7,
    );
    assert!(e.contains("carol"), "{e}");

    // Shares of another backup are refused, naming the share.
    let other = dir.join("other.khb");
    let other_shares = dir.join("other-shares");
    create(&other, &other_shares);
    let e = h.fails(
        &[
            "backup",
            "verify",
            s(&backup),
            "--share",
            s(&alice),
            s(&share_of(&other_shares, "carol")),
        ],
        9,
    );
    assert!(
        e.contains("share 3 of 3 (carol)") && e.contains("not to this backup"),
        "{e}"
    );

    // Two shares restore it into a fresh home.
    let fresh = Home::with_encrypted();
    let out = fresh.ok(&[
        "backup",
        "restore",
        s(&backup),
        "--share",
        s(&bob_plain),
        s(&alice),
    ]);
    assert!(
        out.contains("restored  'vault'") && out.contains("verified"),
        "{out}"
    );
    let vault: BTreeSet<_> = fingerprints(&h)
        .into_iter()
        .filter(|(l, _)| l == "vault")
        .collect();
    assert_eq!(fingerprints(&fresh), vault);
}

#[test]
fn bad_passphrases_damage_and_conflicts_change_nothing() {
    let h = Home::with_encrypted();
    let dir = h.scratch();
    h.generate("p384", "k", &[]);
    let pass = passphrase_file(&dir, "backup-pass", BACKUP_PASSPHRASE);
    let wrong = passphrase_file(&dir, "wrong-pass", "not the passphrase");
    let backup = dir.join("k.khb");
    // The backup never silently takes the stores' passphrase (KEYHAVEN_PASSPHRASE is set).
    let e = h.fails(&["backup", "create", "--out", s(&backup)], 4);
    assert!(e.contains("--backup-passphrase-file"), "{e}");
    h.ok(&[
        "backup",
        "create",
        "--out",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
    ]);
    // Replace the key by another with the same label: the backup's key now conflicts.
    h.ok(&["key", "delete", "k", "--yes"]);
    h.generate("p384", "k", &[]);
    let before = h.snapshot();
    let restore = |args: &[&str], code: i32| {
        let mut all = vec!["backup", "restore", s(&backup)];
        all.extend_from_slice(args);
        h.fails(&all, code)
    };
    let e = restore(&["--backup-passphrase-file", s(&wrong)], 4);
    assert!(e.contains("wrong passphrase"), "{e}");
    let e = restore(&["--backup-passphrase-file", s(&pass)], 8);
    assert!(e.contains("'k'") && e.contains("--on-conflict"), "{e}");
    assert_eq!(h.snapshot(), before, "a refused restore changed the home");

    // A truncated or bit-flipped backup: exit 7, with or without the secret.
    let bytes = fs::read(&backup).unwrap();
    let truncated = dir.join("truncated.khb");
    fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = h.fails(&["backup", "verify", s(&truncated)], 7);
    assert!(
        e.contains("corrupt data in backup") && e.contains("truncated"),
        "{e}"
    );
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let flipped_file = dir.join("flipped.khb");
    fs::write(&flipped_file, &flipped).unwrap();
    h.fails(&["backup", "verify", s(&flipped_file)], 7);
    h.fails(
        &[
            "backup",
            "restore",
            s(&flipped_file),
            "--backup-passphrase-file",
            s(&pass),
            "--on-conflict",
            "rename",
        ],
        7,
    );
    assert_eq!(h.snapshot(), before, "a damaged backup changed the home");

    // Rename keeps both keys.
    let out = h.ok(&[
        "backup",
        "restore",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
        "--on-conflict",
        "rename",
    ]);
    assert!(out.contains("as 'k (restored)'"), "{out}");
    assert_eq!(fingerprints(&h).len(), 2);
}

#[test]
fn key_export_formats() {
    let h = Home::with_encrypted();
    let dir = h.scratch();
    h.generate("p256", "k", &[]);
    h.ok(&["key", "public", "k", "--out", s(&dir.join("k.pub.pem"))]);
    let expected = fs::read_to_string(dir.join("k.pub.pem")).unwrap();
    let pass = passphrase_file(&dir, "export-pass", PASSPHRASE);
    // Encrypted PKCS#8 (scrypt by default, PBKDF2-SHA256 on request): openssl reads both.
    for (file, extra) in [("k.scrypt.pem", None), ("k.pbkdf2.pem", Some("--pbkdf2"))] {
        let mut args = vec![
            "key",
            "export",
            "k",
            "--format",
            "pkcs8-encrypted",
            "--out",
            file,
            "--export-passphrase-file",
            s(&pass),
        ];
        args.extend(extra);
        let out = h.cmd(&args).current_dir(&dir).output().unwrap();
        crate::assert_success(&out, &args);
        let public = openssl_ok(
            &dir,
            &[
                "pkey",
                "-in",
                file,
                "-passin",
                "file:export-pass",
                "-pubout",
            ],
        );
        assert_eq!(String::from_utf8(public).unwrap(), expected, "{file}");
    }
    let asn1 = openssl_ok(&dir, &["asn1parse", "-in", "k.pbkdf2.pem"]);
    let asn1 = String::from_utf8_lossy(&asn1);
    assert!(
        asn1.contains("PBKDF2") && !asn1.contains("scrypt"),
        "{asn1}"
    );

    // A one-key keyhaven backup under the export passphrase.
    let khb = dir.join("k.khb");
    h.ok(&[
        "key",
        "export",
        "k",
        "--format",
        "binary",
        "--out",
        s(&khb),
        "--export-passphrase-file",
        s(&pass),
    ]);
    let v = h.json(&[
        "backup",
        "verify",
        s(&khb),
        "--backup-passphrase-file",
        s(&pass),
        "--json",
    ]);
    assert_eq!(
        (v["keys"].as_u64(), v["authenticated"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(v["encoding"], "binary");
    h.fails(
        &[
            "key",
            "export",
            "k",
            "--format",
            "keyhaven",
            "--insecure-plaintext",
            "--out",
            s(&dir.join("x")),
        ],
        2,
    );
}

/// `key list --json` as a set of comparable rows (paths, if any, left out).
fn listing(h: &Home) -> BTreeSet<String> {
    let list = h.json(&["key", "list", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let mut k = k.clone();
            k.as_object_mut().unwrap().remove("private_key_file");
            k.to_string()
        })
        .collect()
}

fn sign_ok(h: &Home, key: &str, msg: &Path) -> bool {
    h.run(&["sign", "--key", key, "--message-file", s(msg)])
        .status
        .success()
}

#[test]
fn a_backup_carries_the_whole_lifecycle_into_a_fresh_home() {
    let h = Home::with_encrypted();
    let dir = h.scratch();
    let msg = dir.join("msg");
    fs::write(&msg, b"lifecycle\n").unwrap();
    // A rotated identity (v1 verify-only, v2 primary, with a continuity proof), a metered key
    // that is the default, a key revoked before the backup and one revoked after it.
    let id_v1 = h.generate("ed25519", "identity", &["--role", "identity"]);
    h.ok(&["key", "rotate", "identity"]);
    let metered = h.generate("p256", "metered", &[]);
    for _ in 0..3 {
        assert!(sign_ok(&h, "metered", &msg));
    }
    h.ok(&["key", "set-default", "metered"]);
    h.generate("ed25519", "old", &[]);
    h.ok(&["key", "revoke", "old", "--reason", "retired device"]);
    let later = h.generate("p384", "later", &[]);
    let before: BTreeSet<String> = listing(&h)
        .into_iter()
        .filter(|row| !row.contains("\"label\":\"old\""))
        .collect();
    let counted = |h: &Home| {
        fs::read_to_string(h.path().join(format!("rotation/usage/{metered}.count")))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let usage_before = counted(&h);
    assert!(usage_before >= 3);

    let pass = passphrase_file(&dir, "backup-pass", BACKUP_PASSPHRASE);
    let backup = dir.join("home.khb");
    h.ok(&[
        "backup",
        "create",
        "--out",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
    ]);
    // One logical key named by its label is backed up whole: both versions.
    let one = dir.join("identity.khb");
    h.ok(&[
        "backup",
        "create",
        "--keys",
        "identity",
        "--out",
        s(&one),
        "--backup-passphrase-file",
        s(&pass),
    ]);
    let header = h.json(&["backup", "inspect", s(&one), "--json"]);
    assert_eq!(header["key_count"], 2, "{header}");

    // Revoked after the backup was taken; its list is exported with the authority's pin.
    h.ok(&["key", "revoke", "later", "--reason", "leaked"]);
    let list = dir.join("revocations.json");
    let out = h.run(&["revocations", "export", "--out", s(&list)]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pin = stderr
        .split("--authority ")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches(')')
        .to_owned();

    // Wipe, restore into a fresh home.
    fs::remove_dir_all(h.path()).unwrap();
    h.ok(&["backend", "add", "encrypted", "default"]);
    h.ok(&[
        "backup",
        "restore",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
    ]);
    // Same ids, versions, states, default key: the listing matches.
    assert_eq!(listing(&h), before);
    assert!(counted(&h) >= usage_before, "usage counts never go down");
    // The identity's history and continuity chain came back.
    let hist = h.json(&["key", "history", "identity", "--json"]);
    assert_eq!(hist["versions"].as_array().unwrap().len(), 2, "{hist}");
    h.ok(&["verify-continuity", "--key", &id_v1]);
    // v1 still refuses to sign; the logical key signs with v2.
    h.fails(&["sign", "--key", &id_v1, "--message-file", s(&msg)], 5);
    assert!(sign_ok(&h, "identity", &msg));
    // The key revoked before the backup never came back.
    h.fails(&["key", "show", "old"], 3);
    // The key revoked after the backup signs until the current list is taken in.
    assert!(sign_ok(&h, "later", &msg));
    let out = h.ok(&["revocations", "import", s(&list), "--authority", &pin]);
    assert!(out.contains("new revocation"), "{out}");
    assert!(!sign_ok(&h, "later", &msg));
    let shown = h.json(&["key", "show", &later, "--json"]);
    assert_eq!(shown["id"], later.as_str());
    // A list from an authority other than the pinned one is refused.
    h.fails(
        &[
            "revocations",
            "import",
            s(&list),
            "--authority",
            "0123456789abcdef",
        ],
        7,
    );
}

#[test]
fn a_backup_passphrase_equal_to_the_stores_is_refused_and_a_backup_in_the_home_is_warned_about() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "k", &[]);
    let same = h.scratch().join("same.pass");
    write_private(&same, format!("{PASSPHRASE}\n"));
    let out = h.scratch().join("b.khb");
    let err = h.fails(
        &[
            "backup",
            "create",
            "--out",
            out.to_str().unwrap(),
            "--backup-passphrase-file",
            same.to_str().unwrap(),
        ],
        9,
    );
    assert!(err.contains("the stores' passphrase"), "{err}");
    assert!(!out.exists(), "nothing written");

    let other = h.scratch().join("other.pass");
    write_private(&other, "a different backup passphrase\n");
    let inside = h.path().join("b.khb");
    let res = h.run(&[
        "backup",
        "create",
        "--out",
        inside.to_str().unwrap(),
        "--backup-passphrase-file",
        other.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{res:?}");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("inside the home"), "{stderr}");
}

#[test]
fn a_backup_can_be_restore_tested_without_touching_the_home() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "release", &[]);
    h.generate("p256", "ci", &[]);
    h.generate("x25519", "inbox", &[]);
    h.ok(&["key", "rotate", "release"]);
    let pass = h.scratch().join("b.pass");
    write_private(&pass, "a long backup passphrase\n");
    let out = h.scratch().join("home.khb");
    h.ok(&[
        "backup",
        "create",
        "--out",
        out.to_str().unwrap(),
        "--backup-passphrase-file",
        pass.to_str().unwrap(),
    ]);
    let before = h.ok(&["key", "list", "--json"]);
    let report = h.ok(&[
        "backup",
        "verify",
        out.to_str().unwrap(),
        "--backup-passphrase-file",
        pass.to_str().unwrap(),
        "--restore-test",
    ]);
    assert!(report.contains("restore test: 4 of 4"), "{report}");
    assert!(report.contains("not touched"), "{report}");
    assert_eq!(
        h.ok(&["key", "list", "--json"]),
        before,
        "the home is as it was"
    );
    // Without the secret there is nothing to test with.
    let out2 = h
        .cmd(["backup", "verify", out.to_str().unwrap(), "--restore-test"])
        .env_remove("KEYHAVEN_BACKUP_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(out2.status.code(), Some(4), "{out2:?}");
}

#[test]
fn a_backup_records_its_creator_description_and_expiry_and_an_expired_one_needs_allow_expired() {
    let h = Home::with_encrypted();
    let dir = h.scratch();
    h.generate("ed25519", "ed", &[]);
    let pass = passphrase_file(&dir, "backup-pass", BACKUP_PASSPHRASE);
    let backup = dir.join("home.khb");
    h.ok(&[
        "backup",
        "create",
        "--out",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
        "--description",
        "before the migration",
        "--expires-in",
        "30d",
    ]);
    let header = h.json(&["backup", "inspect", s(&backup), "--json"]);
    assert_eq!(header["format"], 2);
    assert_eq!(header["description"], "before the migration");
    assert!(
        header["creator"].as_str().is_some_and(|c| !c.is_empty()),
        "{header}"
    );
    let expires = header["expires_at"].as_u64().unwrap();
    assert!(expires > header["created_at"].as_u64().unwrap());
    let shown = h.ok(&["backup", "inspect", s(&backup)]);
    assert!(
        shown.contains("description:  before the migration"),
        "{shown}"
    );
    // within its 30 days a restore is fine; once expired, restore refuses and says how
    let fresh = Home::with_encrypted();
    fresh.advance(29 * 86_400);
    fresh.ok(&[
        "backup",
        "verify",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
    ]);
    fresh.advance(2 * 86_400);
    let before = listing(&fresh);
    let e = fresh.fails(
        &[
            "backup",
            "restore",
            s(&backup),
            "--backup-passphrase-file",
            s(&pass),
        ],
        6,
    );
    assert!(
        e.contains("expired at") && e.contains("--allow-expired"),
        "{e}"
    );
    assert_eq!(listing(&fresh), before, "nothing was restored");
    fresh.ok(&[
        "backup",
        "restore",
        s(&backup),
        "--backup-passphrase-file",
        s(&pass),
        "--allow-expired",
    ]);
    assert!(listing(&fresh).iter().any(|k| k.contains("ed")));
    // an expiry in the past, or an unreadable duration, is refused before anything is written
    let other = dir.join("other.khb");
    h.fails(
        &[
            "backup",
            "create",
            "--out",
            s(&other),
            "--backup-passphrase-file",
            s(&pass),
            "--expires-in",
            "soon",
        ],
        9,
    );
    assert!(!other.exists());
}
