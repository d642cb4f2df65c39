//! Audit, revocation and compromise response end to end (issue 7's scenario): normal use, an
//! anomaly, scan, respond (revoke, notify), the revoked key refused in another process, the
//! audit log verified, then one edited byte found and named.

use std::fs;

use crate::Home;

/// The actions recorded in compromise report `id`.
fn report_actions(h: &Home, id: &str) -> Vec<serde_json::Value> {
    let shown = h.json(&["compromise", "show", id, "--json"]);
    shown["actions"].as_array().unwrap().clone()
}

fn append_config(h: &Home, text: &str) {
    let path = h.path().join("keyhaven.toml");
    let mut config = fs::read_to_string(&path).unwrap();
    config.push_str(text);
    fs::write(&path, config).unwrap();
    // A hand edit is refused until the owner vouches for it (with the passphrase).
    h.fails(&["key", "list"], 7);
    h.ok(&["integrity", "accept", "keyhaven.toml"]);
}

#[test]
fn anomaly_scan_respond_revoke_and_a_tampered_log() {
    if !crate::is_root() {
        eprintln!("skipped: acting for another principal (KEYHAVEN_PRINCIPAL) needs root");
        return;
    }
    let h = Home::with_encrypted();
    let notified = h.scratch().join("notified.json");
    append_config(
        &h,
        &format!(
            "\n[compromise.thresholds]\nlearning_events = 3\n\n[compromise.notify]\ncommand = \
             [\"sh\", \"-c\", \"cat > {}\"]\ntimeout = \"5s\"\n",
            notified.display()
        ),
    );
    let id = h.generate("p256", "api", &[]);
    let digest = "ab".repeat(32);
    // Normal use by the usual principal.
    for _ in 0..4 {
        h.cmd(["sign", "--key", "api", "--digest", &digest])
            .env("KEYHAVEN_PRINCIPAL", "alice")
            .output()
            .unwrap();
    }
    assert_eq!(
        h.ok(&["compromise", "scan"]).trim(),
        "",
        "no finding on normal use"
    );
    // The anomaly: someone else uses the key.
    let out = h
        .cmd(["sign", "--key", "api", "--digest", &digest])
        .env("KEYHAVEN_PRINCIPAL", "mallory")
        .output()
        .unwrap();
    assert!(out.status.success());
    let scan = h.json(&["compromise", "scan", "--json"]);
    let filed = scan["filed"].as_array().unwrap();
    assert_eq!(filed.len(), 1, "{scan}");
    let report = filed[0].as_str().unwrap().to_owned();
    let shown = h.json(&["compromise", "show", &report, "--json"]);
    assert_eq!(shown["detection"], "new-principal");
    assert_eq!(shown["key_id"], id.as_str());
    assert!(
        shown["evidence"][0]["description"]
            .as_str()
            .unwrap()
            .contains("mallory")
    );
    // A second scan files nothing new.
    assert!(
        h.json(&["compromise", "scan", "--json"])["filed"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Respond: revoke, (rotate: skipped until versions exist), look back, notify.
    let responded = h.json(&["compromise", "respond", &report, "--json"]);
    let actions: Vec<(String, bool)> = responded["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(actions.contains(&("revoke".into(), true)), "{actions:?}");
    assert!(
        actions.contains(&("notify-command".into(), true)),
        "{actions:?}"
    );
    let notification: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&notified).unwrap()).unwrap();
    assert_eq!(notification["id"], report.as_str());

    assert!(actions.contains(&("rotate".into(), true)), "{actions:?}");
    // The compromised version is revoked; the logical key goes on with a new primary version,
    // so `api` signs again, with a new key.
    let keys = h.json(&["key", "list", "--json"]);
    let state_of = |id: &str| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state_of(&id), "compromised", "{keys}");
    let v2 = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "api.v2")
        .unwrap();
    assert_eq!(
        (v2["version"].as_u64(), v2["state"].as_str()),
        (Some(2), Some("primary"))
    );
    let assertion = h.scratch().join("after.json");
    let out = h
        .cmd([
            "sign",
            "--key",
            "api",
            "--digest",
            &digest,
            "--assertion",
            assertion.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&assertion).unwrap()).unwrap();
    assert_eq!(
        a["key_id"], v2["id"],
        "signed by the new version, never the revoked one"
    );
    assert_eq!(
        h.json(&["compromise", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The response is in the audit log: the emergency rotation and the response itself.
    let rotated = h.ok(&["audit", "search", "--key", &id, "--operation", "rotate"]);
    assert!(rotated.contains(" allowed"), "{rotated}");
    let responded = h.ok(&["audit", "search", "--operation", "compromise-respond"]);
    assert!(responded.contains(&report), "{responded}");

    // The log is whole; then one edited byte is found and named.
    let verified = h.ok(&["audit", "verify"]);
    assert!(verified.starts_with("audit log intact"), "{verified}");
    let log = h.path().join("audit").join("audit.1.log");
    let mut bytes = fs::read(&log).unwrap();
    let pos = bytes.windows(7).position(|w| w == b"mallory").unwrap();
    bytes[pos] = b'M';
    fs::write(&log, bytes).unwrap();
    let line = fs::read_to_string(&log).unwrap()[..pos]
        .matches('\n')
        .count()
        + 1;
    let err = h.fails(&["audit", "verify"], 7);
    assert!(
        err.contains(&format!("audit.1.log:{line}"))
            || err.contains(&format!("audit.1.log:{}", line + 1)),
        "{err}"
    );
    assert!(err.contains("edited"), "{err}");
}

#[test]
fn revoked_keys_are_refused_by_verify_after_the_revocation_time_only() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "doc", &[]);
    let s = h.scratch();
    let msg = s.join("msg");
    fs::write(&msg, b"contract v1").unwrap();
    let (sig, assertion) = (s.join("sig"), s.join("assertion.json"));
    h.ok(&[
        "sign",
        "--key",
        "doc",
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
        "--assertion",
        assertion.to_str().unwrap(),
    ]);
    let pubkey = s.join("doc.pem");
    h.ok(&["key", "public", "doc", "--out", pubkey.to_str().unwrap()]);
    let verify = |extra: &[&str], key: &[&str]| {
        let mut args = vec![
            "verify",
            "--message-file",
            msg.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
        ];
        args.extend_from_slice(key);
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(h.ok(&verify(&[], &["--key", "doc"])).trim(), "valid");

    h.advance(3600);
    h.ok(&["key", "revoke", "doc", "--reason", "laptop stolen"]);
    // Without a signing time, a revoked key's signature is refused (exit 12).
    let err = h.fails(&verify(&[], &["--key", "doc"]), 12);
    assert!(err.contains("laptop stolen"), "{err}");
    // The assertion shows it was made before the revocation: still valid.
    assert_eq!(
        h.ok(&verify(
            &["--assertion", assertion.to_str().unwrap()],
            &["--key", "doc"]
        ))
        .trim(),
        "valid"
    );

    // Verifiers outside the home load the exported list, pinning the authority.
    let list = s.join("revocations.json");
    h.ok(&["revocations", "export", "--out", list.to_str().unwrap()]);
    let fp: serde_json::Value = serde_json::from_str(&fs::read_to_string(&list).unwrap()).unwrap();
    let fp = fp["issuer"]["fingerprint"].as_str().unwrap().to_owned();
    let outside = [
        "--revocations",
        list.to_str().unwrap(),
        "--authority",
        &fp[..16],
    ];
    let err = h.fails(
        &verify(&outside, &["--public-key", pubkey.to_str().unwrap()]),
        12,
    );
    assert!(err.contains("revoked"), "{err}");
    let mut with_time = outside.to_vec();
    with_time.extend_from_slice(&["--assertion", assertion.to_str().unwrap()]);
    assert_eq!(
        h.ok(&verify(
            &with_time,
            &["--public-key", pubkey.to_str().unwrap()]
        ))
        .trim(),
        "valid"
    );
    // A forged list (an edited statement) is refused.
    let text = fs::read_to_string(&list)
        .unwrap()
        .replace("laptop stolen", "laptop found!");
    fs::write(&list, text).unwrap();
    let err = h.fails(
        &verify(&outside, &["--public-key", pubkey.to_str().unwrap()]),
        7,
    );
    assert!(err.contains("not genuine"), "{err}");
    // The wrong pinned authority is refused.
    let wrong = [
        "--revocations",
        list.to_str().unwrap(),
        "--authority",
        "00000000000000000000",
    ];
    h.fails(
        &verify(&wrong, &["--public-key", pubkey.to_str().unwrap()]),
        7,
    );
}

#[test]
fn a_compromise_report_for_an_unknown_key_is_refused() {
    let h = Home::with_encrypted();
    h.generate("p384", "k", &[]);
    h.fails(
        &["compromise", "report", "no-such-key", "--evidence", "x"],
        3,
    );
    let err = h.fails(&["compromise", "show", "CR-20260101-00000000"], 3);
    // the advice naming a command is the CLI's, not the library's message
    assert!(
        err.contains("no compromise report 'CR-20260101-00000000'. `keyhaven compromise list` shows the reports"),
        "{err}"
    );
    h.fails(&["compromise", "respond", "CR-20260101-00000000"], 3);
    assert!(
        h.json(&["compromise", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn key_revoke_with_compromised_files_a_confirmed_report() {
    let h = Home::with_encrypted();
    let id = h.generate("p384", "k", &[]);
    h.ok(&[
        "key",
        "revoke",
        "k",
        "--reason",
        "key leaked",
        "--compromised",
    ]);
    let list = h.json(&["compromise", "list", "--json"]);
    assert_eq!(list[0]["key_id"], id.as_str());
    assert_eq!(list[0]["type"], "confirmed");
    let revs = h.json(&["revocations", "list", "--json"]);
    assert_eq!(revs[0]["compromised"], true);
    // Revoking again keeps the first statement.
    h.ok(&["key", "revoke", "k", "--reason", "again"]);
    assert_eq!(
        h.json(&["revocations", "list", "--json"])[0]["reason"],
        "key leaked"
    );
    let tail = h.ok(&["audit", "tail", "-n", "50"]);
    assert!(tail.contains(" revoke "), "{tail}");
}

#[test]
fn access_rules_deny_by_principal_and_denials_are_audited() {
    if !crate::is_root() {
        eprintln!("skipped: acting for another principal (KEYHAVEN_PRINCIPAL) needs root");
        return;
    }
    let h = Home::with_encrypted();
    crate::write_private(
        &h.path().join("access.toml"),
        "[default]\ngenerate = { principals = [\"alice\"] }\nsign = { principals = \
         [\"alice\"] }\n\n[[keys]]\nlabel = \"release\"\nallow.sign = { principals = [\"ci\"] \
         }\n",
    );
    append_config(&h, "\n[access]\npolicy = \"access.toml\"\n");
    // The policy is in the home: it is in use once its owner vouches for it.
    h.fails(&["key", "list"], 7);
    h.ok(&["integrity", "accept", "access.toml"]);
    let as_user = |user: &str, args: &[&str]| {
        h.cmd(args)
            .env("KEYHAVEN_PRINCIPAL", user)
            .output()
            .unwrap()
    };
    let gen_args = [
        "key",
        "generate",
        "--label",
        "release",
        "--algorithm",
        "p256",
    ];
    let out = as_user("mallory", &gen_args);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(as_user("alice", &gen_args).status.success());
    let sign = ["sign", "--key", "release", "--digest", &"cd".repeat(32)];
    let out = as_user("alice", &sign);
    assert_eq!(out.status.code(), Some(6), "only ci may sign with release");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission"));
    assert!(as_user("ci", &sign).status.success());
    let denied = h.ok(&["audit", "search", "--outcome", "denied"]);
    assert!(
        denied.contains("mallory@") && denied.contains(" generate "),
        "{denied}"
    );
    assert!(
        denied.contains("alice@") && denied.contains(" sign_digest "),
        "{denied}"
    );
    assert!(h.ok(&["audit", "verify"]).starts_with("audit log intact"));
}

#[test]
fn an_unwritable_audit_log_refuses_operations() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let digest = "ab".repeat(32);
    assert!(
        h.run(&["sign", "--key", "k", "--digest", &digest])
            .status
            .success()
    );
    let log = h.path().join("audit").join("audit.1.log");
    if crate::is_root() {
        // root ignores file modes: replace the log with a directory instead.
        fs::remove_file(&log).unwrap();
        fs::create_dir(&log).unwrap();
    } else {
        fs::set_permissions(&log, fs::Permissions::from_mode(0o400)).unwrap();
    }
    // Refused (fail closed): unavailable when an append fails, an I/O error when the log
    // cannot even be opened; either way no signature is written.
    let out = h.run(&["sign", "--key", "k", "--digest", &digest]);
    assert!(matches!(out.status.code(), Some(10 | 11)), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no signature without its audit record"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit"));
}

#[test]
fn the_principal_is_the_os_account_not_what_user_says() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let out = h
        .cmd(["sign", "--key", "k", "--digest", &"ab".repeat(32)])
        .env("USER", "someone-else")
        .env("LOGNAME", "someone-else")
        .output()
        .unwrap();
    assert!(out.status.success());
    let signs = h.ok(&[
        "audit",
        "search",
        "--operation",
        "sign_digest",
        "--outcome",
        "allowed",
    ]);
    assert!(!signs.is_empty());
    assert!(!signs.contains("someone-else"), "{signs}");
    if !crate::is_root() {
        // Only root may name the principal it acts for.
        let out = h
            .cmd(["sign", "--key", "k", "--digest", &"ab".repeat(32)])
            .env("KEYHAVEN_PRINCIPAL", "mallory")
            .output()
            .unwrap();
        assert!(out.status.success());
        let signs = h.ok(&["audit", "search", "--principal", "mallory"]);
        assert!(signs.trim().is_empty(), "{signs}");
    }
}

#[test]
fn records_cut_from_the_end_are_found_against_an_earlier_verification() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    for _ in 0..2 {
        assert!(
            h.run(&["sign", "--key", "k", "--digest", &"ab".repeat(32)])
                .status
                .success()
        );
    }
    let seen = h.json(&["audit", "verify", "--json"]);
    let (records, head) = (
        seen["records"].to_string(),
        seen["head"].as_str().unwrap().to_owned(),
    );
    let expect = [
        "audit",
        "verify",
        "--expect-records",
        &records,
        "--expect-head",
        &head,
    ];
    assert!(h.ok(&expect).starts_with("audit log intact"));
    // Someone removes the last records (no checkpoint covers them yet).
    let log = h.path().join("audit").join("audit.1.log");
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&log, lines[..lines.len() - 3].join("\n") + "\n").unwrap();
    assert!(
        h.ok(&["audit", "verify"]).starts_with("audit log intact"),
        "the chain alone cannot tell"
    );
    let err = h.fails(&expect, 7);
    assert!(
        err.contains("deleted") && err.contains("audit.1.log:"),
        "{err}"
    );
}

#[test]
fn the_log_rotates_and_checkpoints_keeping_one_chain() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    assert!(
        h.run(&["sign", "--key", "k", "--digest", &"ab".repeat(32)])
            .status
            .success()
    );
    assert!(
        h.ok(&["audit", "checkpoint"])
            .starts_with("checkpoint at record")
    );
    let next = h.ok(&["audit", "rotate"]);
    assert!(next.trim().ends_with("audit.2.log"), "{next}");
    assert!(
        h.run(&["sign", "--key", "k", "--digest", &"cd".repeat(32)])
            .status
            .success()
    );
    let verified = h.json(&["audit", "verify", "--json"]);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["files"], 2);
    assert!(verified["checkpoints"].as_u64().unwrap() >= 2, "{verified}");
    // Removing the first file breaks the chain, and verify says which.
    fs::remove_file(h.path().join("audit").join("audit.1.log")).unwrap();
    let err = h.fails(&["audit", "verify"], 7);
    assert!(err.contains("audit.2.log"), "{err}");
}

#[test]
fn looking_a_key_up_by_label_leaves_no_failed_records_and_search_takes_a_label() {
    let h = Home::with_encrypted();
    let v1 = h.generate("ed25519", "release", &[]);
    let msg = h.scratch().join("m");
    fs::write(&msg, b"m").unwrap();
    let sig = h.scratch().join("sig");
    let sign = |h: &Home| {
        h.ok(&[
            "sign",
            "--key",
            "release",
            "--message-file",
            msg.to_str().unwrap(),
            "--out",
            sig.to_str().unwrap(),
        ]);
    };
    sign(&h);
    let v2 = h.ok(&["key", "rotate", "release"]).trim().to_owned();
    sign(&h);
    // No lookup by label left a "get ... failed" record behind.
    let failed = h.ok(&["audit", "search", "--outcome", "failed", "--json"]);
    assert_eq!(failed.trim(), "", "{failed}");
    // Searching by the label finds the signatures of both versions.
    let found = h.ok(&["audit", "search", "--key", "release", "--json"]);
    let records: Vec<serde_json::Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let signed = |id: &str| {
        records.iter().any(|r| {
            r["body"]["key_id"] == id
                && r["body"]["outcome"] == "allowed"
                && r["body"]["operation"].as_str().unwrap().starts_with("sign")
        })
    };
    let ids = [("v1", signed(&v1)), ("v2", signed(&v2))]
        .iter()
        .filter(|(_, s)| *s)
        .map(|(v, _)| *v)
        .collect::<Vec<_>>();
    assert_eq!(ids, ["v1", "v2"], "{found}");
}

#[test]
fn a_notification_without_a_hook_is_reported_as_not_configured_never_ok() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "laptop", &[]);
    let out = h.run(&[
        "key",
        "revoke",
        "laptop",
        "--reason",
        "stolen",
        "--compromised",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = text
        .split_whitespace()
        .find(|w| w.starts_with("CR-"))
        .map(|w| w.trim_end_matches(['.', ',']).to_owned())
        .unwrap_or_else(|| panic!("a report id in: {text}"));
    let shown = h.ok(&["compromise", "respond", &id]);
    let notify = shown
        .lines()
        .find(|l| l.contains("notify"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(notify.contains("not configured"), "{notify}");
    assert!(!notify.contains(" ok"), "{notify}");
}

#[test]
fn failed_verifications_against_a_key_are_audited_and_a_burst_is_a_finding() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "api", &[]);
    let msg = h.scratch().join("m");
    fs::write(&msg, b"the real message").unwrap();
    let sig = h.scratch().join("sig");
    h.ok(&[
        "sign",
        "--key",
        "api",
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
    ]);
    let forged = h.scratch().join("forged");
    fs::write(&forged, b"a message the key never signed").unwrap();
    for _ in 0..12 {
        let out = h.run(&[
            "verify",
            "--key",
            "api",
            "--message-file",
            forged.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    let failed = h.ok(&[
        "audit",
        "search",
        "--key",
        "api",
        "--operation",
        "verify",
        "--outcome",
        "failed",
    ]);
    assert!(
        failed.lines().filter(|l| l.contains("verify")).count() >= 12,
        "{failed}"
    );
    let scan = h.run(&["compromise", "scan", "--json"]);
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(text.contains("\"failure-burst\""), "{text}");
}

/// Runs `keyhaven ARGS` against `h` as if on another machine: in a UTS namespace of its own
/// whose host name is `host` (`unshare`; the same user). `None` where namespaces are refused.
fn on_host(h: &Home, host: &str, args: &[String]) -> Option<std::process::Output> {
    let inner = h.cmd(args);
    let mut c = std::process::Command::new("unshare");
    c.args(["--uts", "--user", "--map-current-user", "sh", "-c"])
        .arg(format!("hostname {host} && exec \"$0\" \"$@\""))
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .envs(
            inner
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null());
    let probe = std::process::Command::new("unshare")
        .args(["--uts", "--user", "--map-current-user", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: this machine refuses unshare --uts --user");
        return None;
    }
    Some(c.output().unwrap())
}

/// Seed 002's "concurrent use from several locations": a key signing on this host, then on
/// another (a UTS namespace named `elsewhere`), then here again within the window is a
/// finding naming both hosts; a key that moved to the other host once is not.
#[test]
fn one_key_used_from_two_hosts_at_once_is_a_finding_and_a_move_is_not() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "shared", &[]);
    h.generate("ed25519", "moved", &[]);
    let msg = h.scratch().join("m");
    fs::write(&msg, b"release 1.0").unwrap();
    let sig = h.scratch().join("sig");
    let sign = |key: &str| {
        vec![
            "sign".to_owned(),
            "--key".into(),
            key.into(),
            "--message-file".into(),
            msg.to_str().unwrap().into(),
            "--out".into(),
            sig.to_str().unwrap().into(),
        ]
    };
    h.ok(&sign("shared"));
    h.ok(&sign("moved"));
    h.advance(60);
    let Some(out) = on_host(&h, "elsewhere", &sign("shared")) else {
        return;
    };
    assert!(out.status.success(), "{out:?}");
    let out = on_host(&h, "elsewhere", &sign("moved")).unwrap();
    assert!(out.status.success(), "{out:?}");
    h.advance(60);
    h.ok(&sign("shared"));
    let out = on_host(&h, "elsewhere", &sign("moved")).unwrap();
    assert!(out.status.success(), "{out:?}");

    let audit = h.ok(&["audit", "search", "--key", "shared"]);
    assert!(audit.contains("@elsewhere"), "{audit}");
    let scan = h.json(&["compromise", "scan", "--json"]);
    let text = scan.to_string();
    let concurrent: Vec<_> = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["method"] == "concurrent-hosts")
        .collect();
    assert_eq!(concurrent.len(), 1, "{text}");
    let summary = concurrent[0]["summary"].as_str().unwrap();
    assert!(summary.contains("\"elsewhere\""), "{summary}");
    let shared = h.json(&["key", "show", "shared", "--json"]);
    assert_eq!(concurrent[0]["key_id"], shared["id"], "{text}");
}

#[test]
fn the_same_request_signed_twice_with_a_key_is_a_replay_finding() {
    let h = Home::with_encrypted();
    h.generate("ed25519", "api", &[]);
    let msg = h.scratch().join("m");
    fs::write(&msg, b"transfer 100").unwrap();
    let sig = h.scratch().join("sig");
    let sign = |id: &str| {
        h.ok(&[
            "sign",
            "--key",
            "api",
            "--message-file",
            msg.to_str().unwrap(),
            "--out",
            sig.to_str().unwrap(),
            "--request-id",
            id,
        ]);
    };
    sign("req-1");
    sign("req-2");
    // The same id with another key is another request (ids are the caller's, per key).
    h.generate("ed25519", "other", &[]);
    h.ok(&[
        "sign",
        "--key",
        "other",
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
        "--request-id",
        "req-1",
    ]);
    let scan = h.run(&["compromise", "scan", "--json"]);
    assert!(
        !String::from_utf8_lossy(&scan.stdout).contains("replay"),
        "distinct ids, or one id with two keys"
    );
    sign("req-1");
    let scan = h.run(&["compromise", "scan", "--json"]);
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(text.contains("replay"), "{text}");
    assert!(text.contains("req-1"), "{text}");
    // Every audited operation takes the id (a global option, or KEYHAVEN_REQUEST_ID): the
    // same export made twice under one id is a replay too.
    let pass = h.scratch().join("export-pass");
    crate::write_private(&pass, "an export password\n");
    for n in 0..2 {
        let out = h.scratch().join(format!("export-{n}.pem"));
        h.ok(&[
            "--request-id",
            "export-job-9",
            "key",
            "export",
            "api",
            "--out",
            out.to_str().unwrap(),
            "--export-passphrase-file",
            pass.to_str().unwrap(),
        ]);
    }
    let audit = h.ok(&["audit", "search", "--key", "api"]);
    assert!(audit.contains("request \"export-job-9\""), "{audit}");
    let scan = h.run(&["compromise", "scan", "--json"]);
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(text.contains("export-job-9"), "{text}");
    // An id that could change how a line reads (a bidi override) or is empty is refused
    // before anything is signed.
    h.fails(
        &[
            "sign",
            "--key",
            "api",
            "--message-file",
            msg.to_str().unwrap(),
            "--request-id",
            "req\u{202E}1",
        ],
        9,
    );
    h.fails(
        &[
            "sign",
            "--key",
            "api",
            "--message-file",
            msg.to_str().unwrap(),
            "--request-id",
            "",
        ],
        9,
    );
}

#[test]
fn a_report_can_be_dismissed_with_who_and_why_and_reopened() {
    let h = Home::with_encrypted();
    let v1 = h.generate("ed25519", "api", &[]);
    let out = h.json(&[
        "compromise",
        "report",
        "api",
        "--evidence",
        "an alert from the SIEM",
        "--json",
    ]);
    let id = out["id"].as_str().unwrap().to_owned();
    // A reason is required.
    h.fails(&["compromise", "dismiss", &id, "--reason", " "], 9);
    h.ok(&[
        "compromise",
        "dismiss",
        &id,
        "--reason",
        "the SIEM rule misfired",
    ]);
    let shown = h.json(&["compromise", "show", &id, "--json"]);
    assert_eq!(shown["status"], "dismissed", "{shown}");
    let last = shown["actions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "dismiss");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("the SIEM rule misfired")
    );
    // A dismissed report is not responded to: nothing is revoked.
    let err = h.fails(&["compromise", "respond", &id], 9);
    assert!(err.contains("dismissed") && err.contains("reopen"), "{err}");
    let msg = h.scratch().join("m");
    fs::write(&msg, b"m").unwrap();
    h.ok(&[
        "sign",
        "--key",
        "api",
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        h.scratch().join("s").to_str().unwrap(),
    ]);
    // Reopened, it is.
    h.ok(&[
        "compromise",
        "reopen",
        &id,
        "--reason",
        "seen again on another host",
    ]);
    let shown = h.json(&["compromise", "show", &id, "--json"]);
    assert_eq!(shown["status"], "open", "{shown}");
    h.ok(&["compromise", "respond", &id]);
    // (the response revoked the reported version and rotated the key: the old id refuses)
    let out = h.run(&[
        "sign",
        "--key",
        &v1,
        "--message-file",
        msg.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    let history = h.ok(&["key", "history", "api"]);
    assert!(
        history.contains("compromised") || history.contains("revoked"),
        "{history}"
    );
}

#[test]
fn a_compromise_of_the_home_rotates_every_key_in_it() {
    let h = Home::with_encrypted();
    let laptop = h.generate("ed25519", "laptop", &[]);
    let release = h.generate("p256", "release", &[]);
    let ci = h.generate("p384", "ci", &[]);
    let report = h.json(&["compromise", "report", "laptop", "--json"]);
    let id = report["id"].as_str().unwrap().to_owned();
    let shown = h.ok(&["compromise", "respond", &id, "--scope", "home"]);
    assert!(shown.matches("rotate-home").count() >= 2, "{shown}");
    // Every key of the home is at version 2 now, and every replaced version is revoked as
    // compromised (the whole home was): none verifies through a migration window.
    for (label, v1) in [("release", &release), ("ci", &ci), ("laptop", &laptop)] {
        let history = h.ok(&["key", "history", label]);
        assert!(history.contains("v2"), "{label}: {history}");
        assert!(history.contains(v1.as_str()), "{label}: {history}");
        let versions = h.json(&["key", "history", label, "--json"]);
        assert_eq!(
            versions["versions"][0]["state"], "compromised",
            "{label}: {versions}"
        );
        assert_eq!(
            versions["versions"][1]["state"], "primary",
            "{label}: {versions}"
        );
    }
    let revoked = h.json(&["revocations", "list", "--json"]);
    for v1 in [&release, &ci, &laptop] {
        assert!(
            revoked
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["key_id"] == v1.as_str() && r["compromised"] == true),
            "{v1}: {revoked}"
        );
    }
    // Run again: nothing is rotated twice.
    let again = h.ok(&["compromise", "respond", &id, "--scope", "home"]);
    let history = h.ok(&["key", "history", "release"]);
    assert!(!history.contains("v3"), "{again}\n{history}");
}

/// Checks a delivery as a receiver nobody here wrote would: PyPI's `http-message-signatures`
/// verifies the RFC 9421 signature with the authority's pinned public key; `hashlib` checks
/// the RFC 9530 digest against the body.
const PY_VERIFY_WEBHOOK: &str = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
job = json.load(sys.stdin)
public = serialization.load_der_public_key(base64.b64decode(job["spki"]))
class Keys(HTTPSignatureKeyResolver):
    def resolve_public_key(self, key_id):
        assert key_id == job["fingerprint"], key_id
        return public
class Msg:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers
headers = dict(job["headers"])
body = base64.b64decode(job["body"])
out = {}
try:
    r = HTTPMessageVerifier(signature_algorithm=algorithms.ECDSA_P384_SHA384,
                            key_resolver=Keys()).verify(Msg("POST", job["url"], headers), max_age=None)
    out["ok"] = True
    out["covered"] = [str(c) for c in r[0].covered_components]
    out["params"] = {k: str(v) for k, v in r[0].parameters.items()}
except Exception as e:
    out["ok"] = False
    out["error"] = f"{type(e).__name__}: {e}"
want = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
out["digest_ok"] = headers.get("Content-Digest") == want
print(json.dumps(out))
"#;

#[test]
fn compromise_webhooks_go_over_https_are_retried_and_signed_by_the_authority() {
    use keyhaven_testkit::devices::{WebhookReceiver, python};
    let h = Home::with_encrypted();
    // The receiver (Python's http.server over OpenSSL) fails once, then takes it.
    let receiver = WebhookReceiver::start(&[503, 200], true);
    crate::write_private(
        &h.path().join("webhook-ca.pem"),
        fs::read_to_string(receiver.ca()).unwrap(),
    );
    let url = receiver.url("/hooks/keyhaven");
    append_config(
        &h,
        &format!(
            "\n[compromise.notify]\nwebhook = \"{url}\"\nca_file = \"webhook-ca.pem\"\n\
             retries = 2\nbackoff = \"50ms\"\ntimeout = \"5s\"\n"
        ),
    );
    h.generate("p256", "api", &[]);
    let report = h.json(&[
        "compromise",
        "report",
        "api",
        "--type",
        "confirmed",
        "--json",
    ]);
    let id = report["id"].as_str().unwrap().to_owned();
    // The CA is trust: a file put in the home outside keyhaven is refused before any step,
    // until its owner vouches for it.
    let err = h.fails(&["compromise", "respond", &id], 7);
    assert!(err.contains("webhook-ca.pem"), "{err}");
    let untouched = h.json(&["compromise", "show", &id, "--json"]);
    assert_eq!(
        untouched["actions"].as_array().map(Vec::len),
        Some(0),
        "{untouched}"
    );
    h.ok(&["integrity", "accept", "webhook-ca.pem"]);
    let responded = h.json(&["compromise", "respond", &id, "--json"]);
    let notify = responded["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "notify-webhook")
        .unwrap_or_else(|| panic!("{responded}"))
        .clone();
    assert_eq!(notify["ok"], true, "{notify}");
    let detail = notify["detail"].as_str().unwrap();
    assert!(detail.contains("answered 200 at attempt 2"), "{detail}");
    assert!(
        detail.contains("503") && detail.ends_with("signed"),
        "{detail}"
    );

    let got = receiver.received();
    assert_eq!(got.len(), 2, "one failed attempt, one delivered");
    assert_eq!(got[0].header("Signature"), got[1].header("Signature"));
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["id"], id.as_str());

    // The authority, as receivers pin it.
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["revocations", "export"])).unwrap();
    let issuer = &list["issuer"];
    let mut job = serde_json::json!({
        "url": url,
        "headers": got[1].headers,
        "body": <base64ct::Base64 as base64ct::Encoding>::encode_string(&got[1].body),
        "spki": issuer["spki"],
        "fingerprint": issuer["fingerprint"],
    });
    let verify = |job: &serde_json::Value| -> serde_json::Value {
        let mut child = std::process::Command::new(python())
            .args(["-c", PY_VERIFY_WEBHOOK])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), job.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let out = verify(&job);
    assert_eq!(
        (&out["ok"], &out["digest_ok"]),
        (&true.into(), &true.into()),
        "{out}"
    );
    let covered = out["covered"].to_string();
    for c in ["@method", "@target-uri", "content-type", "content-digest"] {
        assert!(covered.contains(c), "{covered}");
    }
    assert_eq!(out["params"]["tag"], "keyhaven-notify", "{out}");
    let delivery = got[1].header("Keyhaven-Delivery").unwrap();
    assert_eq!(out["params"]["nonce"], delivery, "{out}");

    // An attacker on the path who changes the body (and fixes up the digest) or sends it to
    // another URL is caught by the signature.
    let tampered = br#"{"id":"CR-forged"}"#.to_vec();
    let forged_digest = {
        use sha2::Digest;
        format!(
            "sha-256=:{}:",
            <base64ct::Base64 as base64ct::Encoding>::encode_string(
                &sha2::Sha256::digest(&tampered)[..]
            )
        )
    };
    let headers: Vec<(String, String)> = got[1]
        .headers
        .iter()
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case("content-digest") {
                (n.clone(), forged_digest.clone())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect();
    job["headers"] = serde_json::json!(headers);
    job["body"] = <base64ct::Base64 as base64ct::Encoding>::encode_string(&tampered).into();
    assert_eq!(verify(&job)["ok"], false);
    job["headers"] = serde_json::json!(got[1].headers);
    job["url"] = receiver.url("/elsewhere").into();
    assert_eq!(verify(&job)["ok"], false);
}

/// A receiver that accepts the connection and never answers: each attempt ends at the
/// configured timeout, the failure is recorded with the attempts made, the revocation stands.
#[test]
fn a_webhook_that_hangs_times_out_and_is_recorded() {
    let h = Home::with_encrypted();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts (the TLS handshake then waits for an answer that never comes) and holds on.
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < until && open.len() < 2 {
            match listener.accept() {
                Ok((c, _)) => open.push(c),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        open.len()
    });
    append_config(
        &h,
        &format!(
            "\n[compromise.notify]\nwebhook = \"https://127.0.0.1:{port}/x\"\nretries = 1\n\
             backoff = \"10ms\"\ntimeout = \"1s\"\n"
        ),
    );
    h.generate("p256", "api", &[]);
    let report = h.json(&["compromise", "report", "api", "--json"]);
    let id = report["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let err = h.fails(&["compromise", "respond", &id], 10);
    assert!(err.contains("notify-webhook"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "bounded by the timeout"
    );
    assert_eq!(
        held.join().unwrap(),
        2,
        "both attempts reached the receiver"
    );
    let actions = report_actions(&h, &id);
    let hook = actions
        .iter()
        .find(|a| a["action"] == "notify-webhook")
        .unwrap();
    assert_eq!(hook["ok"], false);
    let detail = hook["detail"].as_str().unwrap();
    assert!(
        detail.contains("(2 attempts)") && detail.contains("timed out"),
        "{hook}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "revoke" && a["ok"] == true)
    );
}

#[test]
fn an_unreachable_webhook_is_recorded_as_failed_and_the_revocation_stands() {
    let h = Home::with_encrypted();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    append_config(
        &h,
        &format!(
            "\n[compromise.notify]\nwebhook = \"https://127.0.0.1:{port}/x\"\nretries = 1\n\
             backoff = \"10ms\"\ntimeout = \"2s\"\n"
        ),
    );
    let key = h.generate("p256", "api", &[]);
    let report = h.json(&["compromise", "report", "api", "--json"]);
    let id = report["id"].as_str().unwrap().to_owned();
    let err = h.fails(&["compromise", "respond", &id], 10);
    assert!(err.contains("notify-webhook"), "{err}");
    assert!(err.contains("compromise show"), "{err}");
    assert!(!err.contains("doctor"), "{err}");
    let actions = report_actions(&h, &id);
    let hook = actions
        .iter()
        .find(|a| a["action"] == "notify-webhook")
        .unwrap();
    assert_eq!(hook["ok"], false);
    assert!(
        hook["detail"].as_str().unwrap().contains("(2 attempts)"),
        "{hook}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "revoke" && a["ok"] == true)
    );
    assert!(
        h.ok(&["revocations", "list"]).contains(&key),
        "the revocation stands"
    );
}

#[test]
fn lowering_a_keys_security_level_needs_the_right_to_revoke_it() {
    if !crate::is_root() {
        eprintln!("skipped: acting for another principal (KEYHAVEN_PRINCIPAL) needs root");
        return;
    }
    let h = Home::with_encrypted();
    h.generate("p256", "release", &["--level", "high"]);
    crate::write_private(
        &h.path().join("access.toml"),
        "[default]\nrotate = { principals = [\"ops\", \"owner\"] }\nrevoke = { principals = \
         [\"owner\"] }\n",
    );
    append_config(&h, "\n[access]\npolicy = \"access.toml\"\n");
    h.ok(&["integrity", "accept", "access.toml"]);
    let as_user = |user: &str, args: &[&str]| {
        h.cmd(args)
            .env("KEYHAVEN_PRINCIPAL", user)
            .output()
            .unwrap()
    };
    // Raising it only needs the right to rotate.
    let out = as_user("ops", &["key", "set-level", "release", "critical"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Lowering it could take it out of a stricter policy: refused without the right to revoke.
    let out = as_user("ops", &["key", "set-level", "release", "standard"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        h.ok(&["key", "show", "release"])
            .contains("level:        critical")
    );
    let out = as_user("owner", &["key", "set-level", "release", "standard"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        h.ok(&["key", "show", "release"])
            .contains("level:        standard")
    );
}

#[test]
fn a_signature_whose_outcome_a_crash_lost_is_listed_by_audit_verify() {
    let h = Home::with_encrypted();
    h.generate("p256", "api", &[]);
    let out = h.run(&["sign", "--key", "api", "--digest", &"ab".repeat(32)]);
    assert!(out.status.success());
    let clean = h.json(&["audit", "verify", "--json"]);
    assert_eq!(clean["unfinished"], serde_json::json!([]), "{clean}");
    // The machine crashed after the signature's intent was fsynced and before its outcome
    // was: the outcome (the last record) is gone.
    let log = h.path().join("audit").join("audit.1.log");
    let text = fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap();
    assert!(
        last.contains("\"sign_digest\"") && last.contains("\"allowed\""),
        "{last}"
    );
    crate::write_private(&log, format!("{}\n", lines.join("\n")));
    let out = h.cmd(["audit", "verify"]).output().unwrap();
    assert!(out.status.success(), "not tampering: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 operation(s) have an intent record and no outcome"),
        "{err}"
    );
    let report = h.json(&["audit", "verify", "--json"]);
    assert_eq!(
        report["unfinished"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
}
