//! The home's integrity, tried as an attacker who can write the home's files but does not
//! know the passphrase: every edit, removal, rollback, swap, planted file or symbolic link is
//! refused with exit 7 (6 for ownership and links) naming the file, and the rest keeps
//! working. Each test is one claim of SECURITY.md.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Home;

/// A home with a rotated key (`release`: v1 verify-only, v2 primary), a plain key (`other`)
/// that has signed, and a revoked key (`gone`). Returns the ids (release v1, other, gone).
fn populated() -> (Home, String, String, String) {
    let h = Home::with_encrypted();
    let release = h.generate("ed25519", "release", &[]);
    h.ok(&["key", "rotate", "release"]);
    let other = h.generate("p256", "other", &[]);
    let gone = h.generate("ed25519", "gone", &[]);
    h.ok(&["key", "revoke", "gone", "--reason", "laptop stolen"]);
    sign(&h, "other").expect("the plain key signs");
    (h, release, other, gone)
}

/// Signs a message with `key`; `Err((code, stderr))` if refused.
fn sign(h: &Home, key: &str) -> Result<(), (i32, String)> {
    let msg = h.scratch().join("msg");
    fs::write(&msg, b"a message").unwrap();
    let out = h.run(&[
        "sign",
        "--key",
        key,
        "--message-file",
        msg.to_str().unwrap(),
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn refused(h: &Home, key: &str, code: i32, names: &Path) -> String {
    let (got, err) = sign(h, key).expect_err("must be refused");
    assert_eq!(got, code, "{err}");
    assert!(
        err.contains(names.to_str().unwrap()),
        "the error names {}: {err}",
        names.display()
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    crate::write_private(path, contents);
}

#[test]
fn a_swapped_public_key_in_the_registry_is_named_and_other_keys_still_sign() {
    let (h, release, other, _) = populated();
    let entry = h
        .path()
        .join(format!("rotation/registry/keys/{release}.json"));
    let text = fs::read_to_string(&entry).unwrap();
    // Put `other`'s public key (any key the attacker holds) in place of v2's.
    let list = h.json(&["key", "list", "--json"]);
    let keys = list.as_array().unwrap();
    let pem_of = |id: &str| {
        keys.iter()
            .find(|k| k["id"] == id)
            .unwrap()
            .get("fingerprint")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let v2 = keys.iter().find(|k| k["label"] == "release.v2").unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains(&v2), "the registry records v2's fingerprint");
    write(&entry, text.replace(&v2, &pem_of(&other)));
    let err = refused(&h, "release", 7, &entry);
    assert!(err.contains("changed outside keyhaven"), "{err}");
    // verify --key trusts the registry too
    let msg = h.scratch().join("m");
    fs::write(&msg, b"m").unwrap();
    let sig = h.scratch().join("m.sig");
    fs::write(&sig, [0u8; 64]).unwrap();
    let e = h.fails(
        &[
            "verify",
            "--key",
            "release",
            "--message-file",
            msg.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
        ],
        7,
    );
    assert!(e.contains(entry.to_str().unwrap()), "{e}");
    // One damaged entry stays one damaged entry: listed as damaged with a warning naming it,
    // reported by doctor, and every other key works.
    sign(&h, "other").expect("other keys are unaffected");
    let out = h.run(&["key", "list"]);
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("damaged"), "{stdout}");
    assert!(stdout.contains("other"), "{stdout}");
    assert!(stderr.contains(entry.to_str().unwrap()), "{stderr}");
    let doctor = h.ok(&["doctor"]);
    assert!(doctor.contains("problems found"), "{doctor}");
    assert!(doctor.contains(entry.to_str().unwrap()), "{doctor}");
    // Put back, it works again.
    write(&entry, text);
    sign(&h, "release").expect("restored");
}

#[test]
fn a_label_claim_pointing_at_another_key_is_refused() {
    let (h, _, other, _) = populated();
    let claim = h.path().join(format!(
        "backends/default/labels/{}",
        hex::encode(Sha256::digest(b"release"))
    ));
    assert!(claim.exists());
    write(&claim, &other);
    refused(&h, "release", 7, &claim);
}

#[test]
fn removing_or_emptying_the_revocations_never_brings_a_revoked_key_back() {
    let (h, _, _, _) = populated();
    let (code, err) = sign(&h, "gone").unwrap_err();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("revoked"), "{err}");
    let file = h.path().join("revocations/revocations.json");
    let saved = fs::read(&file).unwrap();
    fs::remove_file(&file).unwrap();
    let err = refused(&h, "gone", 7, &file);
    assert!(err.contains("removed outside keyhaven"), "{err}");
    // Fail closed: no key signs while the revocation list cannot be trusted.
    refused(&h, "other", 7, &file);
    write(&file, br#"{"version":1,"statements":[]}"#);
    refused(&h, "gone", 7, &file);
    write(&file, &saved);
    let (_, err) = sign(&h, "gone").unwrap_err();
    assert!(err.contains("revoked"), "{err}");
}

#[test]
fn a_reset_or_removed_usage_counter_is_detected() {
    let (h, _, other, _) = populated();
    let counter = h.path().join(format!("rotation/usage/{other}.count"));
    let saved = fs::read(&counter).unwrap();
    write(&counter, "0\n");
    refused(&h, "other", 7, &counter);
    fs::remove_file(&counter).unwrap();
    refused(&h, "other", 7, &counter);
    write(&counter, &saved);
    sign(&h, "other").unwrap();
}

#[test]
fn a_rolled_back_configuration_is_detected_and_its_owner_can_vouch_for_an_edit() {
    let (h, _, _, _) = populated();
    let config = h.path().join("keyhaven.toml");
    let before = fs::read(&config).unwrap();
    h.ok(&["key", "set-default", "other"]);
    // Roll back to the earlier default key.
    write(&config, &before);
    let e = h.fails(&["key", "list"], 7);
    assert!(e.contains(config.to_str().unwrap()), "{e}");
    assert!(e.contains("keyhaven integrity accept"), "{e}");
    // Without the passphrase nobody can vouch for it.
    let out = h
        .cmd(["integrity", "accept", "keyhaven.toml"])
        .env("KEYHAVEN_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    h.ok(&["integrity", "accept", "keyhaven.toml"]);
    h.ok(&["key", "list"]);
}

#[test]
fn a_removed_or_forged_manifest_stops_the_home_until_it_is_sealed_again() {
    let (h, _, _, _) = populated();
    let manifest = h.path().join("integrity.manifest");
    let saved = fs::read(&manifest).unwrap();
    // forged: one byte of the recorded state changed
    let mut forged = saved.clone();
    let last = forged.len() - 3;
    forged[last] ^= 1;
    write(&manifest, &forged);
    let e = h.fails(&["key", "list"], 7);
    assert!(e.contains(manifest.to_str().unwrap()), "{e}");
    // removed
    fs::remove_file(&manifest).unwrap();
    let e = h.fails(&["key", "list"], 7);
    assert!(e.contains("integrity seal"), "{e}");
    // the owner accepts the home's present state on purpose
    let out = h.ok(&["integrity", "seal"]);
    assert!(out.contains("sealed by backend 'default'"), "{out}");
    h.ok(&["key", "list"]);
    let e = h.fails(&["integrity", "seal"], 8);
    assert!(e.contains("sealed"), "{e}");
}

#[test]
fn integrity_verify_names_every_file_changed() {
    let (h, release, other, _) = populated();
    let status = h.json(&["integrity", "status", "--json"]);
    assert_eq!(status["sealed"], true, "{status}");
    assert!(status["files"].as_u64().unwrap() >= 4, "{status}");
    h.ok(&["integrity", "verify"]);
    let entry = h
        .path()
        .join(format!("rotation/registry/keys/{release}.json"));
    let counter = h.path().join(format!("rotation/usage/{other}.count"));
    fs::remove_file(&entry).unwrap();
    write(&counter, "7\n");
    let planted = h
        .path()
        .join("rotation/registry/keys/00000000000000000000000000000000.json");
    write(&planted, "{}");
    let out = h.run(&["integrity", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(7));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    for f in [&entry, &counter, &planted] {
        assert!(
            problems.iter().any(|p| p.contains(f.to_str().unwrap())),
            "{} in {problems:?}",
            f.display()
        );
    }
}

fn chown(path: &Path, uid: u32) {
    let ok = std::process::Command::new("chown")
        .arg(uid.to_string())
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn files_owned_by_another_user_are_refused_even_for_root() {
    if !crate::is_root() {
        eprintln!("skipped: giving a file to another user needs root");
        return;
    }
    let (h, _, _, _) = populated();
    let config = h.path().join("keyhaven.toml");
    chown(&config, 12345);
    let e = h.fails(&["key", "list"], 6);
    assert!(e.contains(config.to_str().unwrap()), "{e}");
    assert!(e.contains("uid 12345"), "{e}");
    chown(&config, 0);
    h.ok(&["key", "list"]);
    // the home itself
    chown(&h.path(), 12345);
    let e = h.fails(&["key", "list"], 6);
    assert!(e.contains("uid 12345"), "{e}");
    chown(&h.path(), 0);
    // a registry entry
    let entry: PathBuf = fs::read_dir(h.path().join("rotation/registry/keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    chown(&entry, 12345);
    let (code, e) = sign(&h, "release").unwrap_err();
    assert_eq!(code, 6, "{e}");
    assert!(e.contains(entry.to_str().unwrap()), "{e}");
}

#[test]
fn a_symlink_in_place_of_the_audit_log_is_never_followed() {
    let (h, _, _, _) = populated();
    let log = h.path().join("audit/audit.1.log");
    let outside = h.scratch().join("elsewhere.log");
    fs::copy(&log, &outside).unwrap();
    let before = fs::read(&outside).unwrap();
    fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    let (code, e) = sign(&h, "other").unwrap_err();
    assert_eq!(code, 6, "{e}");
    assert!(e.contains(log.to_str().unwrap()), "{e}");
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(
        fs::read(&outside).unwrap(),
        before,
        "nothing written through the link"
    );
}

#[test]
fn a_symlink_in_place_of_a_state_file_is_refused() {
    let (h, _, other, _) = populated();
    let counter = h.path().join(format!("rotation/usage/{other}.count"));
    let outside = h.scratch().join("count");
    fs::copy(&counter, &outside).unwrap();
    fs::remove_file(&counter).unwrap();
    std::os::unix::fs::symlink(&outside, &counter).unwrap();
    refused(&h, "other", 6, &counter);
}

#[test]
fn whole_audit_files_removed_are_found_against_the_witness() {
    let (h, _, _, _) = populated();
    h.ok(&["audit", "checkpoint"]);
    let second = h.ok(&["audit", "rotate"]);
    assert!(second.trim().ends_with("audit.2.log"), "{second}");
    sign(&h, "other").unwrap();
    h.ok(&["audit", "checkpoint"]);
    assert!(h.ok(&["audit", "verify"]).starts_with("audit log intact"));
    // The newest file removed: the chain that is left is whole, but shorter than the home's
    // authenticated witness says it was.
    let log2 = h.path().join("audit/audit.2.log");
    fs::remove_file(&log2).unwrap();
    let e = h.fails(&["audit", "verify"], 7);
    assert!(e.contains("deleted") || e.contains("removed"), "{e}");
    // And the witness itself cannot be rolled back or removed unnoticed.
    let witness = h.path().join("audit.witness");
    fs::remove_file(&witness).unwrap();
    let e = h.fails(&["audit", "verify"], 7);
    assert!(e.contains(witness.to_str().unwrap()), "{e}");
}

#[test]
fn a_damaged_audit_log_stops_key_operations_until_recovered_and_the_break_is_reported() {
    let (h, _, _, _) = populated();
    let log = h.path().join("audit/audit.1.log");
    let mut bytes = fs::read(&log).unwrap();
    bytes[0] ^= 0x20;
    write(&log, &bytes);
    let damaged_sha = hex::encode(Sha256::digest(&bytes));
    // Fail closed, saying what happened and how to recover.
    let (code, e) = sign(&h, "other").unwrap_err();
    assert_eq!(code, 7, "{e}");
    assert!(e.contains(log.to_str().unwrap()), "{e}");
    assert!(e.contains("keyhaven audit recover"), "{e}");
    h.fails(&["audit", "verify"], 7);
    // Recovery needs the passphrase (the authority signs the break).
    let out = h
        .cmd(["audit", "recover"])
        .env("KEYHAVEN_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let out = h.ok(&["audit", "recover"]);
    assert!(out.contains("kept as evidence"), "{out}");
    // The damaged file is kept, byte for byte.
    let kept: Vec<PathBuf> = fs::read_dir(h.path().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        hex::encode(Sha256::digest(fs::read(&kept[0]).unwrap())),
        damaged_sha
    );
    // Verify passes and reports the break; keys work again; the break is in the JSON too.
    let out = h.run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("BREAK"));
    sign(&h, "other").unwrap();
    let report = h.json(&["audit", "verify", "--json"]);
    assert_eq!(report["breaks"].as_array().unwrap().len(), 1, "{report}");
    // Nothing to recover in a whole log.
    h.fails(&["audit", "recover"], 9);
    // A forged break (its text edited) does not verify.
    let text = fs::read_to_string(&log).unwrap();
    let edited = text.replacen(
        "\"kind\":\"break\",\"at\":\"",
        "\"kind\":\"break\",\"at\":\"x",
        1,
    );
    assert_ne!(edited, text);
    write(&log, edited);
    h.fails(&["audit", "verify"], 7);
}

#[test]
fn a_log_cut_short_is_recovered_with_a_break_naming_the_loss() {
    let (h, _, _, _) = populated();
    h.ok(&["audit", "checkpoint"]);
    h.ok(&["audit", "rotate"]);
    sign(&h, "other").unwrap();
    h.ok(&["audit", "checkpoint"]);
    fs::remove_file(h.path().join("audit/audit.2.log")).unwrap();
    h.fails(&["audit", "verify"], 7);
    h.ok(&["audit", "recover"]);
    let out = h.run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BREAK") && stderr.contains("removed"),
        "{stderr}"
    );
    sign(&h, "other").unwrap();
}

#[test]
fn a_claimed_anchor_that_is_not_an_encrypted_store_in_the_home_is_never_opened() {
    let (h, _, _, _) = populated();
    // A "module" in the home, a pkcs11 backend naming it, and the manifest's anchor claim
    // pointed at that backend: nothing of it may be loaded before the home is authenticated.
    let module = h.path().join("evil.so");
    write(&module, b"not a library");
    let config = h.path().join("keyhaven.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[backends.hsm]\ntype = \"pkcs11\"\nmodule = \"{}\"\ntoken = \"x\"\n",
        module.display()
    ));
    write(&config, text);
    let manifest = h.path().join("integrity.manifest");
    let m = fs::read_to_string(&manifest).unwrap();
    let anchor_start = m.find("\"anchor\":\"").unwrap() + 10;
    let anchor_end = anchor_start + m[anchor_start..].find('"').unwrap();
    write(
        &manifest,
        format!("{}hsm/x{}", &m[..anchor_start], &m[anchor_end..]),
    );
    let (code, e) = sign(&h, "other").unwrap_err();
    assert_eq!(code, 7, "{e}");
    assert!(e.contains("integrity.manifest"), "{e}");
    assert!(!e.to_lowercase().contains("module"), "{e}");
}

#[test]
fn removing_the_manifest_and_steering_the_anchor_away_never_runs_the_home_unsealed() {
    let (h, _, other, _) = populated();
    let counter = h.path().join(format!("rotation/usage/{other}.count"));
    let config = h.path().join("keyhaven.toml");
    let original = fs::read_to_string(&config).unwrap();
    fs::remove_file(h.path().join("integrity.manifest")).unwrap();
    write(&counter, "0\n");
    // (a) a new encrypted backend made the default (its store does not exist)
    write(
        &config,
        format!(
            "{}\n[backends.a0]\ntype = \"encrypted\"\n",
            original.replace("default_backend = \"default\"", "default_backend = \"a0\"")
        ),
    );
    let (code, e) = sign(&h, "other").unwrap_err();
    assert_eq!(code, 7, "{e}");
    assert!(e.contains("integrity seal"), "{e}");
    // (b) the real store reached through a path that leaves the home and comes back
    let home = h.path();
    let twisted = format!(
        "{}/../{}/backends/default",
        home.display(),
        home.file_name().unwrap().to_string_lossy()
    );
    assert!(original.contains("[backends.default]\n"), "{original}");
    write(
        &config,
        original.replace(
            "[backends.default]\n",
            &format!("[backends.default]\npath = \"{twisted}\"\n"),
        ),
    );
    let (code, e) = sign(&h, "other").unwrap_err();
    assert_eq!(code, 7, "{e}");
}

#[test]
fn a_removed_registry_directory_never_lets_an_old_version_sign() {
    let (h, release, _, _) = populated();
    fs::remove_dir_all(h.path().join("rotation/registry")).unwrap();
    let (code, e) = sign(&h, &release).unwrap_err();
    assert_eq!(code, 7, "{e}");
    assert!(e.contains("rotation/registry"), "{e}");
}

#[test]
fn an_assertion_signing_input_is_never_signed_as_a_plain_message() {
    let (h, _, _, _) = populated();
    let msg = h.scratch().join("artifact");
    fs::write(&msg, b"x").unwrap();
    let a = h.scratch().join("a.json");
    h.ok(&[
        "sign",
        "--key",
        "other",
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        h.scratch().join("a.sig").to_str().unwrap(),
        "--assertion",
        a.to_str().unwrap(),
    ]);
    let assertion: serde_json::Value = serde_json::from_slice(&fs::read(&a).unwrap()).unwrap();
    let jws = assertion["jws"].as_str().unwrap();
    let signing_input = &jws[..jws.rfind('.').unwrap()];
    let crafted = h.scratch().join("crafted");
    fs::write(&crafted, signing_input).unwrap();
    let (code, e) = sign(&h, "other")
        .map(|()| (0, String::new()))
        .unwrap_or_else(|x| x);
    assert_eq!(code, 0, "{e}");
    let out = h.run(&[
        "sign",
        "--key",
        "other",
        "--message-file",
        crafted.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("assertion"));
}

#[test]
fn a_deleted_key_put_back_from_an_old_copy_never_signs() {
    let (h, _, _, _) = populated();
    let id = h.generate("p256", "leaked", &[]);
    let record = h.path().join(format!("backends/default/keys/{id}.json"));
    let claim = h.path().join(format!(
        "backends/default/labels/{}",
        hex::encode(Sha256::digest(b"leaked"))
    ));
    let (saved_record, saved_claim) = (fs::read(&record).unwrap(), fs::read(&claim).unwrap());
    h.ok(&["key", "delete", "leaked", "--yes"]);
    write(&record, &saved_record);
    write(&claim, &saved_claim);
    let (code, e) = sign(&h, "leaked").unwrap_err();
    assert_eq!(code, 7, "{e}");
    assert!(
        e.contains("deleted-keys.json") && e.contains("was deleted"),
        "{e}"
    );
    // Other keys are unaffected.
    sign(&h, "other").unwrap();
}

#[test]
fn policies_loosened_removed_or_planted_are_refused_until_their_owner_vouches() {
    let (h, _, _, _) = populated();
    let rotation = h.path().join("rotation.toml");
    let strict = "[defaults.signing]\nmax_usage = 1000\n";
    // Planted: not used until accepted with the passphrase.
    write(&rotation, strict);
    let e = h.fails(&["rotate", "--due"], 7);
    assert!(e.contains(rotation.to_str().unwrap()), "{e}");
    assert!(e.contains("integrity accept rotation.toml"), "{e}");
    let out = h
        .cmd(["integrity", "accept", "rotation.toml"])
        .env("KEYHAVEN_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    h.ok(&["integrity", "accept", "rotation.toml"]);
    h.ok(&["rotate", "--due"]);
    // Loosened, then removed ("nothing is ever due"): both named.
    write(&rotation, "[defaults.signing]\nmax_usage = 100000000\n");
    h.fails(&["rotate", "--due"], 7);
    fs::remove_file(&rotation).unwrap();
    let e = h.fails(&["policy", "explain", "other"], 7);
    assert!(e.contains(rotation.to_str().unwrap()), "{e}");
    write(&rotation, strict);
    h.ok(&["rotate", "--due"]);

    // The access policy: deny-by-default rules an attacker would like to open up.
    let access = h.path().join("access.toml");
    write(&access, "[default]\nsign = { principals = [\"nobody\"] }\n");
    let config = h.path().join("keyhaven.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("\n[access]\npolicy = \"access.toml\"\n");
    write(&config, text);
    h.ok(&["integrity", "accept", "keyhaven.toml"]);
    h.ok(&["integrity", "accept", "access.toml"]);
    let (code, err) = sign(&h, "other").expect_err("the policy denies signing");
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("access policy"), "{err}");
    write(&access, "[default]\nsign = { principals = [\"*\"] }\n");
    refused(&h, "other", 7, &access);
    fs::remove_file(&access).unwrap();
    refused(&h, "other", 7, &access);
    // `integrity verify` names it too.
    write(&access, "[default]\nsign = { principals = [\"*\"] }\n");
    let out = h.run(&["integrity", "verify"]);
    assert_eq!(out.status.code(), Some(7));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(access.to_str().unwrap()), "{report}");
}

/// Moves `dir` out of the home and puts a link to it in its place.
fn link_dir_away(h: &Home, dir: &Path) -> PathBuf {
    let away = h.scratch().join(format!(
        "away-{}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    fs::rename(dir, &away).unwrap();
    std::os::unix::fs::symlink(&away, dir).unwrap();
    away
}

#[test]
fn a_directory_of_the_home_replaced_by_a_link_is_never_followed() {
    // The usage counters' directory (state), the store's key directory, the audit log's.
    for rel in ["rotation/usage", "backends/default/keys", "audit"] {
        let (h, _, _, _) = populated();
        let dir = h.path().join(rel);
        let away = link_dir_away(&h, &dir);
        let (code, e) = sign(&h, "other").expect_err(rel);
        assert_eq!(code, 6, "{rel}: {e}");
        assert!(e.contains(dir.to_str().unwrap()), "{rel}: {e}");
        assert!(e.contains("symbolic link"), "{rel}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        // Put back, everything works again.
        fs::remove_file(&dir).unwrap();
        fs::rename(&away, &dir).unwrap();
        sign(&h, "other").unwrap_or_else(|e| panic!("{rel}: {e:?}"));
    }
}
