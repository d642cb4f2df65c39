//! Key versions and rotation end to end: manual and due rotation, verification across versions,
//! identity continuity proofs checked from the first public key alone, policies, prekeys.

use std::fs;

use crate::Home;

fn key_by_label(h: &Home, label: &str) -> serde_json::Value {
    let keys = h.json(&["key", "list", "--json"]);
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == label)
        .unwrap_or_else(|| panic!("no key {label} in {keys}"))
        .clone()
}

#[test]
fn rotation_keeps_old_signatures_verifying_and_signs_with_the_new_version() {
    let h = Home::with_encrypted();
    let v1 = h.generate("p256", "api", &[]);
    let s = h.scratch();
    let msg = s.join("msg");
    fs::write(&msg, b"release 1.0").unwrap();
    let sign = |out: &str| {
        h.ok(&[
            "sign",
            "--key",
            "api",
            "--message-file",
            msg.to_str().unwrap(),
            "--out",
            s.join(out).to_str().unwrap(),
        ]);
    };
    let verify = |sig: &str| {
        h.ok(&[
            "verify",
            "--key",
            "api",
            "--message-file",
            msg.to_str().unwrap(),
            "--signature",
            s.join(sig).to_str().unwrap(),
        ])
    };
    sign("old.sig");
    let v2 = h
        .ok(&["key", "rotate", "api", "--reason", "yearly"])
        .trim()
        .to_owned();
    assert_ne!(v1, v2);
    let old = key_by_label(&h, "api");
    assert_eq!(
        (old["version"].as_u64(), old["state"].as_str()),
        (Some(1), Some("verify-only"))
    );
    let new = key_by_label(&h, "api.v2");
    assert_eq!(
        (new["version"].as_u64(), new["state"].as_str()),
        (Some(2), Some("primary"))
    );
    assert_eq!(new["algorithm"], "p256");
    // `api` now signs with version 2; both signatures verify through the logical key.
    sign("new.sig");
    assert_eq!(verify("old.sig").trim(), "valid (version 1)");
    assert_eq!(verify("new.sig").trim(), "valid (version 2)");
    // The new signature is version 2's: openssl checks it with v2's public key.
    let pem = s.join("v2.pem");
    h.ok(&["key", "public", &v2, "--out", pem.to_str().unwrap()]);
    let o = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(s.join("new.sig"))
        .arg(&msg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An old version never signs, even named by its own id once it is not the logical key.
    h.ok(&["key", "rotate", "api"]);
    let err = h.fails(&["sign", "--key", &v2, "--digest", &"00".repeat(32)], 5);
    assert!(err.contains("only the primary version (v3, "), "{err}");
    // Nor does version 1, named by its id (which is also the logical key's id): only the
    // label means "the logical key, whichever version is primary".
    let v1 = key_by_label(&h, "api")["id"].as_str().unwrap().to_owned();
    let err = h.fails(&["sign", "--key", &v1, "--digest", &"00".repeat(32)], 5);
    assert!(err.contains("only the primary version (v3, "), "{err}");
    let out = h.run(&["sign", "--key", "api", "--digest", &"00".repeat(32)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // History shows every version and event.
    let hist = h.json(&["key", "history", "api", "--json"]);
    let states: Vec<_> = hist["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["verify-only", "verify-only", "primary"]);
    assert!(
        hist["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"].as_str().unwrap_or("").contains("yearly"))
    );
    // A tampered signature is invalid against every version.
    let mut bad = fs::read(s.join("old.sig")).unwrap();
    let n = bad.len();
    bad[n - 3] ^= 1;
    fs::write(s.join("bad.sig"), bad).unwrap();
    let out = h.run(&[
        "verify",
        "--key",
        "api",
        "--message-file",
        msg.to_str().unwrap(),
        "--signature",
        s.join("bad.sig").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn identity_rotations_are_proven_by_a_continuity_chain_anyone_can_check() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "me", &["--role", "identity"]);
    let s = h.scratch();
    let first = s.join("first.pem");
    h.ok(&["key", "public", "me", "--out", first.to_str().unwrap()]);
    let (p1, p2) = (s.join("p1.txt"), s.join("p2.txt"));
    h.ok(&["key", "rotate", "me", "--proof-out", p1.to_str().unwrap()]);
    h.ok(&["key", "rotate", "me", "--proof-out", p2.to_str().unwrap()]);
    let chain = s.join("chain.txt");
    fs::write(
        &chain,
        fs::read_to_string(&p1).unwrap() + &fs::read_to_string(&p2).unwrap(),
    )
    .unwrap();
    let check = |proof: &std::path::Path| {
        h.run(&[
            "verify-continuity",
            proof.to_str().unwrap(),
            "--old-public-key",
            first.to_str().unwrap(),
        ])
    };
    assert!(check(&chain).status.success());
    assert_eq!(
        String::from_utf8_lossy(&check(&chain).stdout).trim(),
        "valid"
    );
    assert!(
        h.run(&["verify-continuity", "--key", "me"])
            .status
            .success(),
        "from the home's stored proofs"
    );
    // A broken chain (the second link alone) and a tampered proof are refused.
    assert!(!check(&p2).status.success());
    let text = fs::read_to_string(&p1).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("issued-at") || l.contains("issued"))
        .unwrap_or("")
        .to_owned();
    assert!(!line.is_empty(), "{text}");
    let tampered = s.join("tampered.txt");
    let edited = line.replace(|c: char| c.is_ascii_digit(), "7");
    fs::write(&tampered, text.replacen(&line, &edited, 1)).unwrap();
    let out = check(&tampered);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn keys_rotate_when_due_by_usage_once_even_when_run_twice() {
    let h = Home::with_encrypted();
    h.generate("p384", "busy", &[]);
    h.generate("p384", "quiet", &[]);
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[defaults.signing]\nmax_usage = 3\nmigration_window = \"1h\"\n",
    );
    // A policy written by hand is checked, then vouched for with the passphrase.
    let check = h.ok(&["policy", "check"]);
    assert!(check.contains("valid"), "{check}");
    assert!(check.contains("integrity accept rotation.toml"), "{check}");
    h.fails(&["rotate", "--due"], 7);
    h.ok(&["integrity", "accept", "rotation.toml"]);
    assert!(!h.ok(&["policy", "check"]).contains("accept"));
    let explain = h.ok(&["policy", "explain", "busy"]);
    assert!(explain.contains("max_usage"), "{explain}");
    for _ in 0..3 {
        assert!(
            h.run(&["sign", "--key", "busy", "--digest", &"ab".repeat(48)])
                .status
                .success()
        );
    }
    let dry = h.ok(&["rotate", "--due", "--dry-run"]);
    assert!(dry.contains("busy") && dry.contains("would act"), "{dry}");
    assert!(!dry.contains("quiet"), "{dry}");
    assert!(
        h.ok(&["key", "list"]).contains("busy"),
        "a dry run changes nothing"
    );
    assert_eq!(key_by_label(&h, "busy")["version"], 1);
    let done = h.ok(&["rotate", "--due"]);
    assert!(done.contains("rotated to v2"), "{done}");
    let again = h.run(&["rotate", "--due"]);
    assert!(again.status.success());
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("rotated"),
        "rotates once"
    );
    assert_eq!(key_by_label(&h, "busy.v2")["state"], "primary");
    // A policy file with a typo is refused, naming the field.
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[defaults.signing]\nmax_usge = 3\n",
    );
    let err = h.fails(&["policy", "check"], 9);
    assert!(err.contains("max_usge"), "{err}");
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[defaults.signing]\nmax_age = \"1d\"\nmigration_window = \"2d\"\n",
    );
    // An invalid policy is never recorded, so it is never in use.
    let err = h.fails(&["integrity", "accept", "rotation.toml"], 9);
    assert!(err.contains("migration_window"), "{err}");
    h.fails(&["rotate", "--due"], 7);
}

#[test]
fn prekeys_are_replenished_and_each_handed_out_once() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "me", &["--role", "identity"]);
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[prekeys]\nlow_water = 2\nrefill_to = 4\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    assert!(
        h.ok(&["prekeys", "replenish", "--identity", "me"])
            .contains("4 one-time")
    );
    let status = h.json(&["prekeys", "status", "--identity", "me", "--json"]);
    assert_eq!(status["available"], 4);
    assert!(status["signed_prekey_age_seconds"].is_number());
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let t = h.json(&["prekeys", "take", "--identity", "me", "--json"]);
        assert!(t["signed_prekey"]["signature"].is_string());
        assert!(ids.insert(t["one_time_prekey"]["id"].as_str().unwrap().to_owned()));
    }
    // The pool is empty: taking fails clearly until it is replenished.
    let out = h.run(&["prekeys", "take", "--identity", "me"]);
    assert!(!out.status.success());
    assert!(
        h.ok(&["prekeys", "replenish", "--identity", "me"])
            .contains("4 one-time")
    );
}

/// After a rotation the key's label names the key in use: `key public` and `key show` give
/// the primary version, the one `sign --key` signs with, so `openssl` verifies what keyhaven
/// signs with what keyhaven exports.
#[test]
fn a_rotated_keys_label_exports_and_shows_the_version_that_signs() {
    let h = Home::with_encrypted();
    h.generate("p256", "web", &[]);
    let v1 = h.json(&["key", "show", "web", "--json"]);
    h.ok(&["key", "rotate", "web"]);
    let v2 = h.json(&["key", "show", "web.v2", "--json"]);
    let shown = h.json(&["key", "show", "web", "--json"]);
    assert_eq!(shown["fingerprint"], v2["fingerprint"], "{shown}");
    assert_ne!(shown["fingerprint"], v1["fingerprint"]);
    let out = h.run(&["key", "show", "web"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("web.v2"),
        "{out:?}"
    );
    let s = h.scratch();
    std::fs::write(s.join("msg"), b"after the rotation\n").unwrap();
    h.ok(&[
        "key",
        "public",
        "web",
        "--out",
        s.join("pub.pem").to_str().unwrap(),
    ]);
    h.ok(&[
        "sign",
        "--key",
        "web",
        "--message-file",
        s.join("msg").to_str().unwrap(),
        "--out",
        s.join("msg.sig").to_str().unwrap(),
    ]);
    crate::openssl_ok(
        &s,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "msg.sig",
            "msg",
        ],
    );
}

#[test]
fn one_rotation_can_have_its_own_migration_window() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "me", &["--role", "identity"]);
    let out = h.json(&["key", "rotate", "me", "--migration-window", "3d", "--json"]);
    let end = out["migration_end"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    let expected = std::process::Command::new("date")
        .args(["-u", "-d", "+3 days", "+%Y-%m-%dT%H:%M"])
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout).trim().to_owned();
    // (to the minute; a minute boundary may fall in between)
    assert!(end.starts_with(&expected[..13]), "{end} vs {expected}");
    for bad in ["0s", "500ms", "soon", "-1d", "100y"] {
        let arg = format!("--migration-window={bad}");
        let err = h.fails(&["key", "rotate", "me", &arg], 9);
        assert!(err.contains("migration"), "{bad}: {err}");
    }
}

#[test]
fn without_a_policy_file_identity_keys_follow_the_built_in_schedule() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "me", &["--role", "identity"]);
    h.generate("ed25519", "plain", &[]);
    let explain = h.ok(&["policy", "explain", "me"]);
    assert!(explain.contains("built-in"), "{explain}");
    assert!(explain.contains("max_age 1year"), "{explain}");
    let explain = h.ok(&["policy", "explain", "plain"]);
    assert!(explain.contains("no policy"), "{explain}");
    assert!(h.ok(&["policy", "check"]).contains("built-in schedule"));
    // An identity's prekeys: the built-in schedule too, said by explain and check.
    let explain = h.ok(&["policy", "explain", "me"]);
    assert!(
        explain.contains("prekeys: built-in (seed 002's schedule): signed prekey rotated every 30days, one-time prekeys refilled below 10"),
        "{explain}"
    );
    h.ok(&["prekeys", "replenish", "--identity", "me"]);
    // A [prekeys] section of the user's is the schedule: a higher low-water mark makes the
    // pool due at once.
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[prekeys]\nlow_water = 150\nrefill_to = 200\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    assert!(
        h.ok(&["policy", "check"])
            .contains("prekeys: [prekeys] in rotation.toml")
    );
    let dry = h.ok(&["rotate", "--due", "--dry-run"]);
    assert!(dry.contains("one-time prekeys"), "{dry}");
    // ... and `rotate --due` (from cron) refills it, without being asked about prekeys.
    h.ok(&["rotate", "--due"]);
    let status = h.json(&["prekeys", "status", "--identity", "me", "--json"]);
    assert_eq!(status["available"], 200, "{status}");
    // Switched off, with no [prekeys]: nothing about prekeys is due, and explain says so.
    crate::write_private(
        &h.path().join("rotation.toml"),
        "builtin_defaults = false\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    let explain = h.ok(&["policy", "explain", "me"]);
    assert!(explain.contains("no policy"), "{explain}");
    assert!(explain.contains("prekeys: no schedule"), "{explain}");
    let dry = h.ok(&["rotate", "--due", "--dry-run"]);
    assert!(!dry.contains("prekeys"), "{dry}");
}

#[test]
fn a_policy_can_revoke_an_old_identity_version_when_its_window_ends() {
    let h = Home::with_encrypted();
    let v1 = h.generate("ed25519", "me", &["--role", "identity"]);
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[defaults.identity]\nrevoke_after_migration = true\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    // The role default says only what happens after the window: the yearly schedule stays.
    let explain = h.ok(&["policy", "explain", "me"]);
    assert!(
        explain.contains("old version is revoked (revoke_after_migration)")
            && explain.contains("max_age 1year"),
        "{explain}"
    );
    h.ok(&["key", "rotate", "me", "--migration-window", "7d"]);
    // Within the window the old version still verifies and is not revoked.
    h.ok(&["rotate", "--due"]);
    let during = h.json(&["key", "history", "me", "--json"]);
    assert_ne!(during["versions"][0]["state"], "revoked", "{during}");
    h.advance(8 * 86_400);
    h.ok(&["rotate", "--due"]);
    let history = h.json(&["key", "history", "me", "--json"]);
    assert_eq!(history["versions"][0]["key_id"], v1.as_str(), "{history}");
    assert_eq!(history["versions"][0]["state"], "revoked", "{history}");
    // ... and only it: v2 (whose logical key shares v1's id) stays primary.
    assert_eq!(history["versions"][1]["state"], "primary", "{history}");
    // A signed statement verifiers can use, not only this home's state.
    let list = h.scratch().join("revocations.json");
    h.ok(&["revocations", "export", "--out", list.to_str().unwrap()]);
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(text.contains(&v1), "{text}");
}

#[test]
fn policies_match_security_levels_set_at_generation_and_changed_later() {
    let h = Home::with_encrypted();
    h.generate("p384", "release", &["--level", "critical"]);
    h.generate("p384", "ordinary", &[]);
    let shown = h.ok(&["key", "show", "release"]);
    assert!(shown.contains("level:        critical"), "{shown}");
    assert!(shown.contains("role:         signing"), "{shown}");
    let shown = h.json(&["key", "show", "ordinary", "--json"]);
    assert_eq!(shown["security_level"], "standard", "{shown}");
    assert_eq!(shown["role"], "signing", "{shown}");

    crate::write_private(
        &h.path().join("rotation.toml"),
        "[[policy]]\nname = \"critical-by-use\"\nlevels = [\"high\", \"critical\"]\n\
         max_usage = 1\nmigration_window = \"1h\"\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    let explain = h.ok(&["policy", "explain", "release"]);
    assert!(explain.contains("policy 'critical-by-use'"), "{explain}");
    let explain = h.ok(&["policy", "explain", "ordinary"]);
    assert!(
        explain.contains("security level is standard, the policy wants high or critical"),
        "{explain}"
    );
    for key in ["release", "ordinary"] {
        let out = h.run(&["sign", "--key", key, "--digest", &"ab".repeat(48)]);
        assert!(out.status.success(), "{out:?}");
    }
    let dry = h.ok(&["rotate", "--due", "--dry-run"]);
    assert!(
        dry.contains("release") && !dry.contains("ordinary"),
        "{dry}"
    );

    // Raised later: the policy takes it from then on; the change is in its history.
    let out = h.ok(&[
        "key",
        "set-level",
        "ordinary",
        "high",
        "--reason",
        "signs releases now",
    ]);
    assert!(out.contains("standard -> high"), "{out}");
    assert!(
        h.ok(&["key", "set-level", "ordinary", "high"])
            .contains("already high")
    );
    let history = h.ok(&["key", "history", "ordinary"]);
    assert!(history.contains("level-changed"), "{history}");
    assert!(history.contains("signs releases now"), "{history}");
    let dry = h.ok(&["rotate", "--due", "--dry-run"]);
    assert!(dry.contains("ordinary"), "{dry}");
    let audit = h.ok(&["audit", "search", "--key", "ordinary"]);
    assert!(audit.contains("set-level"), "{audit}");

    // An unknown level is refused before anything is made or changed.
    let err = h.fails(&["key", "generate", "--label", "x", "--level", "secret"], 9);
    assert!(err.contains("unknown security level 'secret'"), "{err}");
    assert!(!h.ok(&["key", "list"]).contains(" x "));
    let err = h.fails(&["key", "set-level", "ordinary", "top"], 9);
    assert!(err.contains("use standard, high or critical"), "{err}");
    assert!(
        h.ok(&["key", "show", "ordinary"])
            .contains("level:        high")
    );
}

/// Seed 003's `applicable_key_types`: policies match lists of algorithms and protections; an
/// empty list, an unknown level or algorithm, or a name listed twice is refused naming the
/// field, before the owner can even vouch for the file.
#[test]
fn policies_match_algorithm_and_protection_lists_and_refuse_bad_matchers() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "ed", &[]);
    h.generate("p256", "nist", &[]);
    h.generate("p384", "big", &[]);
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[[policy]]\nname = \"small-curves\"\nalgorithms = [\"ed25519\", \"p256\"]\n\
         protections = [\"software-encrypted\", \"hardware\"]\nmax_usage = 1\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    for key in ["ed", "nist", "big"] {
        let sig = h.scratch().join("sig");
        h.ok(&[
            "sign",
            "--key",
            key,
            "--message-file",
            "/dev/null",
            "--out",
            sig.to_str().unwrap(),
        ]);
    }
    let dry = h.ok(&["rotate", "--due", "--dry-run"]);
    assert!(
        dry.contains("ed") && dry.contains("nist") && !dry.contains("big"),
        "{dry}"
    );
    let explain = h.ok(&["policy", "explain", "big"]);
    assert!(
        explain.contains("algorithm is p384, the policy wants ed25519 or p256"),
        "{explain}"
    );

    let refused = [
        (
            "roles = []",
            "policy 'x'.roles: an empty list matches no key",
        ),
        (
            "levels = []",
            "policy 'x'.levels: an empty list matches no key",
        ),
        (
            "levels = [\"high\", \"top-secret\"]",
            "policy 'x'.level: unknown security level 'top-secret'",
        ),
        ("algorithms = [\"rsa\"]", "policy 'x'.algorithm"),
        (
            "protections = [\"hardware\", \"hardware\"]",
            "policy 'x'.protections: 'hardware' is listed twice",
        ),
        (
            "level = \"high\"\nlevels = [\"high\"]",
            "give `level` or `levels`, not both",
        ),
    ];
    for (matcher, says) in refused {
        crate::write_private(
            &h.path().join("rotation.toml"),
            format!("[[policy]]\nname = \"x\"\n{matcher}\nmax_usage = 1\n"),
        );
        let err = h.fails(&["integrity", "accept", "rotation.toml"], 9);
        assert!(err.contains(says), "{matcher}: {err}");
    }
}

#[test]
fn a_version_retired_before_its_policy_said_revoke_is_revoked_by_the_next_run() {
    let h = Home::with_encrypted();
    let v1 = h.generate("ed25519", "late", &["--role", "identity"]);
    h.ok(&["key", "rotate", "late", "--migration-window", "7d"]);
    h.ok(&["rotate", "--due"]);
    h.advance(8 * 86_400);
    h.ok(&["rotate", "--due"]);
    let history = h.json(&["key", "history", "late", "--json"]);
    assert_eq!(history["versions"][0]["state"], "retired", "{history}");
    // The policy comes later (or the first revocation failed): the next run revokes it, once.
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[defaults.identity]\nrevoke_after_migration = true\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    h.ok(&["rotate", "--due"]);
    h.ok(&["rotate", "--due"]);
    let revoked = h.json(&["revocations", "list", "--json"]);
    let statements: Vec<_> = revoked
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key_id"] == v1.as_str())
        .collect();
    assert_eq!(statements.len(), 1, "{revoked}");
}

#[test]
fn policy_modes_notify_and_disabled_through_the_cli() {
    let h = Home::with_encrypted();
    h.generate("p256", "watched", &[]);
    h.generate("p256", "frozen", &["--level", "critical"]);
    let marker = h.scratch().join("phase.txt");
    crate::write_private(
        &h.path().join("rotation.toml"),
        format!(
            "[[policy]]\nname = \"watch\"\nroles = [\"signing\"]\nmax_usage = 1\nmode = \
             \"notify\"\npost_rotate = [\"/bin/sh\", \"-c\", \"echo $KEYHAVEN_ROTATION_PHASE >> \
             {}\"]\n\n[[policy]]\nname = \"frozen\"\nroles = [\"signing\"]\nlevel = \
             \"critical\"\nmax_usage = 1\nmode = \"disabled\"\n",
            marker.display()
        ),
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    for key in ["watched", "frozen"] {
        let out = h.run(&["sign", "--key", key, "--digest", &"ab".repeat(32)]);
        assert!(out.status.success(), "{out:?}");
    }
    h.ok(&["rotate", "--due"]);
    // notify: reported and its action run with phase notify, nothing rotated.
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "notify");
    let history = h.ok(&["key", "history", "watched"]);
    assert!(history.contains("mode is notify"), "{history}");
    // neither key has a second version
    let keys = h.ok(&["key", "list"]);
    assert!(
        !keys.contains("watched.v2") && !keys.contains("frozen.v2"),
        "{keys}"
    );
    let explain = h.ok(&["policy", "explain", "frozen"]);
    assert!(explain.contains("policy 'frozen'"), "{explain}");
    assert!(explain.contains("mode: disabled"), "{explain}");
    // An unknown mode is refused naming the field: the owner cannot even vouch for it.
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[[policy]]\nname = \"x\"\nmode = \"sometimes\"\n",
    );
    let err = h.fails(&["integrity", "accept", "rotation.toml"], 9);
    assert!(
        err.contains("policy 'x'.mode: unknown mode 'sometimes'"),
        "{err}"
    );
}

/// Python's `cryptography` (code nobody here wrote) checks the signed prekey and the identity
/// agreement key of `prekeys take --json` with the identity public key it names: the domain
/// (`keyhaven-signed-prekey/v1\n`, `keyhaven-identity-agreement-key/v1\n`) || unix time ||
/// `\n` || the key's SPKI DER.
fn python_verifies_signed_prekey(bundle: &serde_json::Value) {
    let script = r#"
import json, sys, datetime
from cryptography.hazmat.primitives import serialization
b = json.loads(sys.stdin.read())
identity = serialization.load_pem_public_key(b["identity_public_key_pem"].encode())
for field, domain in [("signed_prekey", b"keyhaven-signed-prekey/v1\n"),
                      ("identity_agreement_key", b"keyhaven-identity-agreement-key/v1\n")]:
    k = b[field]
    der = serialization.load_pem_public_key(k["public_key_pem"].encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    t = int(datetime.datetime.fromisoformat(k["created_at"].replace("Z", "+00:00")).timestamp())
    identity.verify(bytes.fromhex(k["signature"]), domain + str(t).encode() + b"\n" + der)
print("verified")
"#;
    let out = keyhaven_testkit::devices::run_python(script, bundle.to_string().as_bytes());
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bundle
    );
}

#[test]
fn an_identity_rotated_twice_keeps_serving_prekeys_and_one_time_prekeys_serve_once() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "me", &["--role", "identity"]);
    crate::write_private(
        &h.path().join("rotation.toml"),
        "[prekeys]\nlow_water = 2\nrefill_to = 6\n",
    );
    h.ok(&["integrity", "accept", "rotation.toml"]);
    h.ok(&["prekeys", "replenish", "--identity", "me"]);
    let mut taken = Vec::new();
    for round in 0..3 {
        if round > 0 {
            h.ok(&["key", "rotate", "me"]);
        }
        let status = h.json(&["prekeys", "status", "--identity", "me", "--json"]);
        assert_eq!(status["taken"], round, "the pool carried over: {status}");
        h.ok(&["prekeys", "replenish", "--identity", "me"]);
        let bundle = h.json(&["prekeys", "take", "--identity", "me", "--json"]);
        let label = if round == 0 {
            "me".to_owned()
        } else {
            format!("me.v{}", round + 1)
        };
        let current = h.json(&["key", "show", &label, "--json"]);
        assert_eq!(
            bundle["identity_public_key_pem"], current["public_key_pem"],
            "round {round}: signed by the current version: {current}"
        );
        python_verifies_signed_prekey(&bundle);
        taken.push(bundle["one_time_prekey"].clone());
    }

    // A peer's agreement, made by openssl, against a one-time prekey: once.
    let dir = h.scratch();
    let otpk = &taken[0];
    std::fs::write(
        dir.join("otpk.pem"),
        otpk["public_key_pem"].as_str().unwrap(),
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    openssl(&["genpkey", "-algorithm", "X25519", "-out", "peer.key"]);
    openssl(&["pkey", "-in", "peer.key", "-pubout", "-out", "peer.pem"]);
    let theirs = openssl(&[
        "pkeyutl", "-derive", "-inkey", "peer.key", "-peerkey", "otpk.pem",
    ]);
    let id = otpk["id"].as_str().unwrap();
    let peer = dir.join("peer.pem");
    let out = dir.join("secret.bin");
    let peer_arg = peer.to_str().unwrap();
    let out_arg = out.to_str().unwrap();
    h.ok(&[
        "prekeys",
        "consume",
        id,
        "--peer",
        peer_arg,
        "--out",
        out_arg,
        "--identity",
        "me",
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), theirs);
    let err = h.fails(
        &[
            "prekeys",
            "consume",
            id,
            "--peer",
            peer_arg,
            "--identity",
            "me",
        ],
        12,
    );
    assert!(err.contains("already consumed"), "{err}");
    // another taken prekey whose peer never answers: discarded
    let other = taken[1]["id"].as_str().unwrap();
    h.ok(&["prekeys", "discard", other, "--identity", "me"]);
    let status = h.json(&["prekeys", "status", "--identity", "me", "--json"]);
    assert_eq!(status["consumed"], 2, "{status}");

    // prekeys stay out of `key list` unless asked for
    let listed = h.run(&["key", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !text.contains("otpk-") && !text.contains("spk-") && !text.contains("idk-"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&listed.stderr).contains("prekey(s) not listed"));
    assert!(text.contains("me"));
    let all = h.ok(&["key", "list", "--all"]);
    assert!(all.contains("otpk-") && all.contains("spk-"), "{all}");
}
