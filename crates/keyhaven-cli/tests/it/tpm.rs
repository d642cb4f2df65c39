//! `tpm` backends on real swtpm instances (one per test), checked with `tpm2-tools` and
//! `openssl`. Built only with the `tpm` feature (`cargo xtask test` turns on every feature).

use keyhaven_testkit::devices::Swtpm;

use crate::{Home, openssl_ok, write_private};

/// A swtpm of this test's own and a home with a backend `tpm` on it.
fn tpm_home() -> (Swtpm, Home) {
    let tpm = Swtpm::start();
    // tpm2-tss logs its own warnings on stderr (e.g. while the store probes a handle): keep the
    // one-line errors readable.
    let h = Home::new().env("TSS2_LOG", "all+NONE");
    let out = h.ok(&["backend", "add", "tpm", "tpm", "--tcti", &tpm.tcti()]);
    assert!(out.contains("added backend 'tpm' (tpm)"), "{out}");
    (tpm, h)
}

fn p(h: &Home, name: &str) -> String {
    h.scratch().join(name).to_str().unwrap().to_owned()
}

/// Signs `msg` in the scratch directory with `key` and checks the signature with `openssl`.
fn sign_and_verify_p384(h: &Home, key: &str, extra: &[&str]) {
    let s = h.scratch();
    std::fs::write(s.join("msg"), b"signed inside the TPM\n").unwrap();
    h.ok(&["key", "public", key, "--out", &p(h, "pub.pem")]);
    let msg = p(h, "msg");
    let sig = p(h, "msg.sig");
    let mut args = vec!["sign", "--key", key, "--message-file", &msg, "--out", &sig];
    args.extend_from_slice(extra);
    h.ok(&args);
    let out = openssl_ok(
        &s,
        &[
            "dgst",
            "-sha384",
            "-verify",
            "pub.pem",
            "-signature",
            "msg.sig",
            "msg",
        ],
    );
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
}

#[test]
fn a_p384_key_made_in_the_tpm_signs_and_openssl_verifies() {
    let (_tpm, h) = tpm_home();
    let key = h.json(&[
        "key",
        "generate",
        "--backend",
        "tpm",
        "--algorithm",
        "p384",
        "--label",
        "release",
        "--json",
    ]);
    assert_eq!(key["protection"], "hardware");
    assert_eq!(key["backend_type"], "tpm");
    let list = h.ok(&["key", "list"]);
    assert!(
        list.contains("release") && list.contains("hardware"),
        "{list}"
    );
    sign_and_verify_p384(&h, "tpm:release", &[]);

    // a digest too, and verify through keyhaven
    let digest = openssl_ok(&h.scratch(), &["dgst", "-sha384", "-binary", "msg"]);
    h.ok(&[
        "sign",
        "--key",
        "release",
        "--digest",
        &hex::encode(digest),
        "--out",
        &p(&h, "d.sig"),
    ]);
    h.ok(&[
        "verify",
        "--public-key",
        &p(&h, "pub.pem"),
        "--message-file",
        &p(&h, "msg"),
        "--signature",
        &p(&h, "d.sig"),
    ]);

    // never leaves the TPM: export is refused, Ed25519 is not a TPM algorithm
    let err = h.fails(&["key", "export", "release", "--out", &p(&h, "k.pem")], 5);
    assert!(!h.scratch().join("k.pem").exists(), "{err}");
    h.fails(
        &[
            "key",
            "generate",
            "--backend",
            "tpm",
            "--algorithm",
            "ed25519",
            "--label",
            "ed",
        ],
        5,
    );
    // the private part is only in the TPM-wrapped blob: no private key file anywhere
    for (path, _) in h.snapshot() {
        let full = h.path().join(&path);
        if full.is_file() {
            let bytes = std::fs::read(&full).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "{}",
                path.display()
            );
        }
    }
    let show = h.json(&["key", "show", "release", "--json"]);
    assert!(show["hardware"]["needs_auth"] == false, "{show}");
}

#[test]
fn a_persistent_key_reads_back_with_tpm2_readpublic() {
    let (tpm, h) = tpm_home();
    h.ok(&[
        "key",
        "generate",
        "--backend",
        "tpm",
        "--algorithm",
        "p384",
        "--label",
        "persisted",
        "--persistent",
        "0x81000010",
    ]);
    let ours = p(&h, "ours.pem");
    let theirs = p(&h, "theirs.pem");
    h.ok(&["key", "public", "persisted", "--out", &ours]);
    tpm.run(
        "tpm2_readpublic",
        &["-c", "0x81000010", "-f", "pem", "-o", &theirs],
    );
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        std::fs::read_to_string(&ours).unwrap(),
        "tpm2_readpublic -c 0x81000010 gives keyhaven's public key"
    );
    let show = h.ok(&["key", "show", "persisted"]);
    assert!(show.contains("persistent:   0x81000010"), "{show}");
    sign_and_verify_p384(&h, "persisted", &[]);

    // the handle is taken now
    h.fails(
        &[
            "key",
            "generate",
            "--backend",
            "tpm",
            "--label",
            "second",
            "--persistent",
            "0x81000010",
        ],
        8,
    );
    // a malformed handle is bad input
    h.fails(
        &[
            "key",
            "generate",
            "--backend",
            "tpm",
            "--label",
            "third",
            "--persistent",
            "81000010",
        ],
        9,
    );
    // deleting the key evicts it from its handle
    h.ok(&["key", "delete", "persisted", "--yes"]);
    let handles = tpm.run("tpm2_getcap", &["handles-persistent"]);
    assert!(!handles.contains("0x81000010"), "{handles}");
}

#[test]
fn keys_survive_a_swtpm_restart() {
    let (mut tpm, h) = tpm_home();
    h.generate("p384", "before", &["--backend", "tpm"]);
    h.generate(
        "p256",
        "persisted",
        &["--backend", "tpm", "--persistent", "0x81000011"],
    );
    sign_and_verify_p384(&h, "before", &[]);

    // while swtpm is down: unavailable, cleanly
    tpm.kill();
    let err = h.fails(
        &["sign", "--key", "tpm:before", "--digest", &"ab".repeat(48)],
        10,
    );
    assert!(err.contains("backend 'tpm' is unavailable"), "{err}");
    let out = h.run(&["key", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend 'tpm' is unavailable"));
    assert_eq!(h.run(&["doctor"]).status.code(), Some(10));

    tpm.start_again();
    sign_and_verify_p384(&h, "before", &[]);
    h.ok(&[
        "sign",
        "--key",
        "persisted",
        "--digest",
        &"cd".repeat(32),
        "--out",
        &p(&h, "p.sig"),
    ]);
    let list = h.json(&["key", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    tpm.restart();
    sign_and_verify_p384(&h, "tpm:before", &[]);
}

#[test]
fn doctor_reports_the_tpm() {
    let (tpm, h) = tpm_home();
    h.generate("p384", "k", &["--backend", "tpm"]);
    let text = h.ok(&["doctor"]);
    for needle in [
        &format!("TPM:          via {}", tpm.tcti()),
        "manufacturer: IBM",
        "firmware:     ",
        "NIST P-384",
        "NIST P-256",
        "reachable, 1 key; protection hardware",
        "result:      healthy",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let report = h.json(&["doctor", "--json"]);
    let t = &report["backends"][0]["tpm"];
    assert_eq!(t["tcti"], tpm.tcti().as_str());
    assert_eq!(t["manufacturer"], "IBM");
    assert!(!t["firmware_version"].as_str().unwrap().is_empty());
    let curves = t["ecc_curves"].as_array().unwrap();
    assert!(curves.iter().any(|c| c == "NIST P-384"), "{t}");
    assert_eq!(t["missing_curves"].as_array().unwrap().len(), 0);
}

#[test]
fn key_passphrases_and_pcr_policies() {
    let (tpm, h) = tpm_home();
    let auth = h.scratch().join("auth");
    write_private(&auth, "key passphrase\n");
    let wrong = h.scratch().join("wrong");
    write_private(&wrong, "not it\n");
    h.generate(
        "p384",
        "sealed",
        &[
            "--backend",
            "tpm",
            "--key-auth-file",
            auth.to_str().unwrap(),
            "--pcr-policy",
            "sha256:0,7",
        ],
    );
    let show = h.ok(&["key", "show", "sealed"]);
    assert!(
        show.contains("PCR policy:   sha256:0,7") && show.contains("passphrase:   needed"),
        "{show}"
    );
    let digest = "ab".repeat(48);
    let sign = ["sign", "--key", "sealed", "--digest", &digest];
    // without its passphrase (and without a terminal): locked, naming the option
    let err = h.fails(&sign, 4);
    assert!(err.contains("--key-auth-file"), "{err}");
    let with = |f: &std::path::Path| {
        let mut a: Vec<String> = sign.iter().map(ToString::to_string).collect();
        a.extend(["--key-auth-file".into(), f.to_str().unwrap().to_owned()]);
        a
    };
    let err = h.fails(&with(&wrong), 4);
    assert!(err.contains("--key-auth-file"), "{err}");
    sign_and_verify_p384(&h, "sealed", &["--key-auth-file", auth.to_str().unwrap()]);

    // PCR 7 changes: the key no longer signs
    tpm.run(
        "tpm2_pcrextend",
        &[&format!("7:sha256={}", "11".repeat(32))],
    );
    let err = h.fails(&with(&auth), 6);
    assert!(err.contains("PCR"), "{err}");
}

#[test]
#[cfg(feature = "file")]
fn tpm_options_need_a_tpm_backend() {
    let (_tpm, h) = tpm_home();
    h.ok(&["backend", "add", "encrypted", "soft"]);
    for extra in [
        &["--persistent", "0x81000012"][..],
        &["--pcr-policy", "sha256:0"],
    ] {
        let mut args = vec!["key", "generate", "--backend", "soft", "--label", "x"];
        args.extend_from_slice(extra);
        let err = h.fails(&args, 5);
        assert!(
            err.contains("the encrypted backend takes no key options"),
            "{err}"
        );
    }
    let out = h.run(&[
        "backend", "add", "tpm", "x", "--tcti", "tabrmd", "--module", "/m.so",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// Copies a directory tree as it is (modes and owners kept).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_home_bound_to_a_tpm_counter_copied_back_whole_is_refused() {
    let (tpm, h) = tpm_home();
    h.ok(&["backend", "add", "encrypted", "vault"]);
    h.generate("ed25519", "release", &["--backend", "vault"]);
    h.generate("ed25519", "laptop", &["--backend", "vault"]);
    let bound = h.ok(&["integrity", "bind-counter", "--backend", "tpm"]);
    assert!(
        bound.contains("vault") || bound.contains("tpm/tpm:0x015"),
        "{bound}"
    );
    let status = h.json(&["integrity", "status", "--json"]);
    let id = status["rollback_counter"].as_str().unwrap().to_owned();
    let index = id.rsplit_once("tpm:").unwrap().1.to_owned();
    // tpm2-tools sees the counter: an NV counter that needs its authorization value.
    let public = tpm.run("tpm2_nvreadpublic", &[&index]);
    assert!(
        public.contains("authread") && public.contains("nt=0x1"),
        "{public}"
    );

    // The whole home, saved before the laptop key is revoked ...
    let saved = h.scratch().join("saved-home");
    copy_tree(&h.path(), &saved);
    std::fs::write(h.scratch().join("m"), b"m").unwrap();
    let m = h.scratch().join("m");
    let sig = h.scratch().join("sig");
    let sig = sig.to_str().unwrap();
    h.ok(&[
        "sign",
        "--key",
        "release",
        "--message-file",
        m.to_str().unwrap(),
        "--out",
        sig,
    ]);
    h.ok(&["key", "revoke", "laptop", "--reason", "stolen"]);
    // ... and copied back: the laptop key would sign again, but the counter has moved on.
    std::fs::remove_dir_all(h.path()).unwrap();
    copy_tree(&saved, &h.path());
    let out = h.run(&[
        "sign",
        "--key",
        "laptop",
        "--message-file",
        m.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("integrity.manifest") && err.contains("copied back"),
        "{err}"
    );
    h.fails(&["key", "list"], 7);
    // Without the passphrase nobody can accept the copy.
    let out = h
        .cmd(["integrity", "rebind"])
        .env("KEYHAVEN_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Its owner can (on purpose, knowing the laptop key is usable again).
    h.ok(&["integrity", "rebind"]);
    h.ok(&[
        "sign",
        "--key",
        "laptop",
        "--message-file",
        m.to_str().unwrap(),
        "--out",
        sig,
    ]);
    h.ok(&["integrity", "verify"]);

    // Unbinding removes the counter from the TPM.
    h.ok(&["integrity", "unbind-counter"]);
    let gone = tpm.tool("tpm2_nvreadpublic").arg(&index).output().unwrap();
    assert!(!gone.status.success(), "{gone:?}");
    let status = h.json(&["integrity", "status", "--json"]);
    assert!(status["rollback_counter"].is_null(), "{status}");
    h.ok(&[
        "sign",
        "--key",
        "release",
        "--message-file",
        m.to_str().unwrap(),
        "--out",
        sig,
    ]);
}

#[test]
fn a_bound_home_whose_tpm_is_away_is_refused_not_run_unchecked() {
    let (mut tpm, h) = tpm_home();
    h.ok(&["backend", "add", "encrypted", "vault"]);
    h.generate("ed25519", "release", &["--backend", "vault"]);
    h.ok(&["integrity", "bind-counter", "--backend", "tpm"]);
    tpm.kill();
    let err = h.fails(&["key", "list"], 10);
    assert!(err.contains("tpm"), "{err}");
    tpm.start_again();
    h.ok(&["key", "list"]);
}

#[test]
fn a_copy_from_before_the_binding_is_refused_and_a_lost_counter_can_be_let_go() {
    let (tpm, h) = tpm_home();
    h.ok(&["backend", "add", "encrypted", "vault"]);
    h.generate("ed25519", "laptop", &["--backend", "vault"]);
    let saved = h.scratch().join("before-binding");
    copy_tree(&h.path(), &saved);
    h.ok(&["integrity", "bind-counter", "--backend", "tpm"]);
    h.ok(&["key", "revoke", "laptop", "--reason", "stolen"]);
    // The copy from before the binding says nothing of a counter, but the TPM holds this
    // home's counter.
    std::fs::remove_dir_all(h.path()).unwrap();
    copy_tree(&saved, &h.path());
    let err = h.fails(&["key", "list"], 7);
    assert!(
        err.contains("copied back from before it was bound"),
        "{err}"
    );
    h.ok(&["integrity", "rebind"]);
    let status = h.json(&["integrity", "status", "--json"]);
    let id = status["rollback_counter"].as_str().unwrap().to_owned();
    h.ok(&["key", "list"]);

    // The TPM is cleared (the counter is gone): refused, until its owner lets it go.
    let index = id.rsplit_once("tpm:").unwrap().1.to_owned();
    tpm.run("tpm2_nvundefine", &[&index, "-C", "o"]);
    let err = h.fails(&["key", "list"], 7);
    assert!(err.contains("no counter"), "{err}");
    h.fails(&["integrity", "unbind-counter"], 7);
    h.ok(&["integrity", "unbind-counter", "--force"]);
    h.ok(&["key", "list"]);
}

#[test]
#[cfg(feature = "pkcs11")]
fn a_bound_token_home_moving_to_an_encrypted_store_takes_its_counter_along() {
    use keyhaven_testkit::devices::{SoftHsm, USER_PIN};
    let hsm = SoftHsm::new();
    hsm.init_token("kh-moving-token", USER_PIN);
    let tpm = Swtpm::start();
    let h = Home::new()
        .env("TSS2_LOG", "all+NONE")
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("KEYHAVEN_TOKEN_PIN", USER_PIN);
    h.ok(&[
        "backend",
        "add",
        "pkcs11",
        "hsm",
        "--module",
        hsm.module().to_str().unwrap(),
        "--token",
        "kh-moving-token",
    ]);
    h.generate("p256", "k", &["--backend", "hsm"]);
    h.ok(&["backend", "add", "tpm", "tpm", "--tcti", &tpm.tcti()]);
    h.ok(&["integrity", "bind-counter", "--backend", "tpm"]);
    let before = h.json(&["integrity", "status", "--json"]);
    assert_eq!(before["anchor"], "hsm", "{before}");
    let old = before["rollback_counter"].as_str().unwrap().to_owned();

    h.ok(&["backend", "add", "encrypted", "vault"]);
    let after = h.json(&["integrity", "status", "--json"]);
    assert_eq!(after["anchor"], "vault", "{after}");
    let new = after["rollback_counter"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "a counter the new anchor's key authorizes");
    // The old counter is gone from the TPM; the home works, checked against the new one.
    let old_index = old.rsplit_once("tpm:").unwrap().1.to_owned();
    let gone = tpm
        .tool("tpm2_nvreadpublic")
        .arg(&old_index)
        .output()
        .unwrap();
    assert!(!gone.status.success(), "{gone:?}");
    h.ok(&["key", "list"]);
    h.ok(&["integrity", "verify"]);
}

#[test]
fn a_tpm_key_is_backed_up_wrapped_and_comes_back_into_the_same_tpm_only() {
    let (_tpm, h) = tpm_home();
    h.ok(&["key", "generate", "--backend", "tpm", "--label", "sealed"]);
    let before = h.json(&["key", "show", "sealed", "--json"]);
    let pass = h.scratch().join("backup-pass");
    crate::write_private(&pass, "a long backup passphrase for the tpm test\n");
    let backup = p(&h, "tpm.khb");
    h.ok(&[
        "backup",
        "create",
        "--out",
        &backup,
        "--backup-passphrase-file",
        pass.to_str().unwrap(),
    ]);
    // the restore test checks what it can in a scratch home and names what it cannot
    let tested = h.ok(&[
        "backup",
        "verify",
        &backup,
        "--backup-passphrase-file",
        pass.to_str().unwrap(),
        "--restore-test",
    ]);
    assert!(
        tested.contains("restore test: 0 of 0")
            && tested.contains("1 TPM-wrapped key(s) not tested"),
        "{tested}"
    );
    // another TPM cannot load the blob: refused, and nothing is left behind there
    let other = Swtpm::start();
    h.ok(&[
        "backend",
        "add",
        "tpm",
        "elsewhere",
        "--tcti",
        &other.tcti(),
    ]);
    let restore = |into: &str| {
        vec![
            "backup".to_owned(),
            "restore".into(),
            backup.clone(),
            "--backup-passphrase-file".into(),
            pass.to_str().unwrap().to_owned(),
            "--into".into(),
            into.into(),
        ]
    };
    let e = h.fails(&restore("elsewhere"), 7);
    assert!(e.contains("another TPM") || e.contains("TPM_RC"), "{e}");
    let listed = h.json(&["key", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // the backend's own files are lost: the backup brings the key back into its TPM
    std::fs::remove_dir_all(h.path().join("backends/tpm")).unwrap();
    assert!(
        h.json(&["key", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    h.ok(&restore("tpm"));
    let after = h.json(&["key", "show", "sealed", "--json"]);
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["fingerprint"], before["fingerprint"]);
    sign_and_verify_p384(&h, "sealed", &[]);
}

/// The key broker with its master key in a TPM (swtpm; the KEK unwrap is `ECDH_ZGen` inside
/// it, tier 2). A client encrypts and signs through the transit API; then the TPM goes away: a
/// request whose KEK is not in memory is answered 503 (exit 10) and changes nothing, one whose
/// KEK is (the 5-minute cache) is still served; when the TPM is back the refused request
/// succeeds and everything made before reads back.
#[test]
fn the_broker_master_key_in_a_tpm_away_is_unavailable_and_back_loses_nothing() {
    let mut tpm = Swtpm::start();
    let s = Home::with_encrypted().env("TSS2_LOG", "all+NONE");
    s.generate("p256", "admin", &[]);
    s.ok(&["serve", "init", "--admin", "admin"]);
    s.ok(&["backend", "add", "tpm", "tpm", "--tcti", &tpm.tcti()]);
    let out = s.ok(&["serve", "init-broker", "--backend", "tpm"]);
    assert!(
        out.contains("ecdh-p") && out.contains("hardware") && out.contains("tier 2"),
        "{out}"
    );
    let served = crate::server::Served::start(&s);

    let c = Home::with_encrypted();
    c.generate("ed25519", "app", &[]);
    served.register(&c, "app");
    let file = c.scratch().join("card.txt");
    write_private(&file, b"4111 1111 1111 1111");
    let file = file.display().to_string();
    let warm = c.ok(&[
        "client", "transit", "encrypt", "warm", "--in", &file, "--key", "app",
    ]);
    let warm = warm.trim().to_owned();
    // Made while the TPM is there, never used: its KEK is wrapped (no TPM call), not in memory.
    c.ok(&["client", "transit", "create", "cold", "--key", "app"]);
    let signer = c.json(&[
        "client",
        "transit",
        "create",
        "signer",
        "--type",
        "ecdsa-p256",
        "--key",
        "app",
        "--json",
    ]);
    assert_eq!(signer["latest_version"], 1, "{signer}");

    tpm.kill();
    let e = c.fails(
        &[
            "client", "transit", "encrypt", "cold", "--in", &file, "--key", "app",
        ],
        10,
    );
    assert!(
        e.contains("unavailable") && e.contains("nothing was"),
        "{e}"
    );
    // The refusal changed nothing: the key is still at version 1.
    let cold = c.json(&[
        "client", "transit", "read", "cold", "--key", "app", "--json",
    ]);
    assert_eq!(cold["latest_version"], 1, "{cold}");
    // A KEK unwrapped before is served from memory for its cache lifetime.
    let plain = c.ok(&[
        "client", "transit", "decrypt", "warm", &warm, "--key", "app",
    ]);
    assert_eq!(plain, "4111 1111 1111 1111");

    tpm.start_again();
    let cold_c = c.ok(&[
        "client", "transit", "encrypt", "cold", "--in", &file, "--key", "app",
    ]);
    let cold_c = cold_c.trim();
    assert!(cold_c.starts_with("vault:v1:"), "{cold_c}");
    let plain = c.ok(&[
        "client", "transit", "decrypt", "cold", cold_c, "--key", "app",
    ]);
    assert_eq!(plain, "4111 1111 1111 1111");
    let sig = c.ok(&[
        "client", "transit", "sign", "signer", "--in", &file, "--key", "app",
    ]);
    let valid = c.ok(&[
        "client",
        "transit",
        "verify",
        "signer",
        sig.trim(),
        "--in",
        &file,
        "--key",
        "app",
    ]);
    assert_eq!(valid.trim(), "valid");
}

/// `key attest` and `sign --attest`: a TPM key's assertion proves its `hardware` claim (a
/// TPM2_Certify by the TPM's attestation key over the assertion's own signature), and
/// `verify --require-hardware` takes it once that attestation key is trusted. An edited
/// certification and a software key claiming hardware are refused.
#[test]
fn a_tpm_keys_assertion_proves_its_hardware_claim_and_a_software_keys_cannot() {
    // An encrypted store (the default backend) and a TPM.
    let _tpm = Swtpm::start();
    let h = Home::with_encrypted().env("TSS2_LOG", "all+NONE");
    h.ok(&["backend", "add", "tpm", "tpm", "--tcti", &_tpm.tcti()]);
    h.ok(&[
        "key",
        "generate",
        "--backend",
        "tpm",
        "--algorithm",
        "p384",
        "--label",
        "hw",
    ]);
    let attested = h.json(&["key", "attest", "tpm:hw", "--challenge", "00112233"]);
    assert_eq!(attested["proof"], true, "{attested}");
    assert_eq!(attested["challenge"], "00112233");
    assert_eq!(
        attested["attestation"]["format"], "tpm2-certify",
        "{attested}"
    );
    let ak = attested["attestation_key"].as_str().unwrap().to_owned();
    assert_eq!(ak.len(), 64);
    // The same TPM, the same attestation key (a primary of its endorsement hierarchy).
    let again = h.json(&["key", "attest", "tpm:hw"]);
    assert_eq!(again["attestation_key"], ak.as_str());

    std::fs::write(h.scratch().join("msg"), b"made in a tpm\n").unwrap();
    let sign = |label: &str, assertion: &str| {
        h.ok(&[
            "sign",
            "--key",
            label,
            "--message-file",
            &p(&h, "msg"),
            "--out",
            &p(&h, &format!("{assertion}.sig")),
            "--assertion",
            &p(&h, assertion),
            "--attest",
        ]);
    };
    sign("tpm:hw", "a.json");
    let verify = |assertion: &str, extra: &[&str]| {
        let mut args = vec![
            "verify".to_owned(),
            "--assertion".to_owned(),
            p(&h, assertion),
            "--message-file".to_owned(),
            p(&h, "msg"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        h.run(&args)
    };
    // Not yet trusted: valid, certified, not proof; --require-hardware refuses.
    let out = verify("a.json", &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no --trusted-ak names"), "{stderr}");
    let out = verify("a.json", &["--require-hardware"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unproved");
    // Trusted: proved.
    let out = verify("a.json", &["--require-hardware", "--trusted-ak", &ak]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("proved by a TPM certification"), "{stderr}");

    // Edited: a byte of the certification changed, which the assertion's JWS no longer covers.
    let text = std::fs::read_to_string(h.scratch().join("a.json")).unwrap();
    let a: serde_json::Value = serde_json::from_str(&text).unwrap();
    let info = a["key_attestation"]["certify_info"].as_str().unwrap();
    let mut edited = a.clone();
    edited["key_attestation"]["certify_info"] = format!("A{}", &info[1..]).into();
    std::fs::write(h.scratch().join("edited.json"), edited.to_string()).unwrap();
    let out = verify("edited.json", &["--trusted-ak", &ak]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "invalid");

    // A key of the encrypted store: nothing attests it, and its bare claim is not proof.
    h.generate("p384", "soft", &[]);
    let err = h.fails(
        &[
            "sign",
            "--key",
            "soft",
            "--message-file",
            &p(&h, "msg"),
            "--out",
            &p(&h, "s.sig"),
            "--assertion",
            &p(&h, "s.json"),
            "--attest",
        ],
        5,
    );
    assert!(err.contains("nothing but the software attests"), "{err}");
    let err = h.fails(&["key", "attest", "soft"], 5);
    assert!(err.contains("attest"), "{err}");
    h.ok(&[
        "sign",
        "--key",
        "soft",
        "--message-file",
        &p(&h, "msg"),
        "--out",
        &p(&h, "s.sig"),
        "--assertion",
        &p(&h, "s.json"),
    ]);
    let out = verify("s.json", &["--require-hardware", "--trusted-ak", &ak]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a software key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `keyhaven client attest-key`: a client whose key lives in a TPM sends the key's TPM
/// certification; with the TPM's attestation key trusted (`serve --trusted-ak`) the key is
/// tier 2 and receives a tier-2 secret. With `--require-key-attestation`, an admin's word alone
/// (`client admin vouch`) stops at tier 1, and a software key's attestation cannot be made.
#[test]
fn a_client_key_a_trusted_tpm_certified_reaches_tier_2_and_an_admins_word_alone_does_not() {
    let tpm = Swtpm::start();
    let c = Home::with_encrypted().env("TSS2_LOG", "all+NONE");
    c.ok(&["backend", "add", "tpm", "tpm", "--tcti", &tpm.tcti()]);
    c.ok(&[
        "key",
        "generate",
        "--backend",
        "tpm",
        "--algorithm",
        "p384",
        "--label",
        "dev",
    ]);
    c.generate("p384", "soft", &[]);
    let ak = c.json(&["key", "attest", "tpm:dev"])["attestation_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let s = crate::server::server_home();
    s.ok(&["serve", "init-broker"]);
    let e = s.fails(&["serve", "--trusted-ak", "abc"], 2);
    assert!(e.contains("64 hex digits"), "{e}");
    let (served, _) = crate::server::Served::start_args(
        &s,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--trusted-ak",
            &ak,
            "--require-key-attestation",
        ],
        2,
    );
    served.register(&c, "tpm:dev");
    let input = c.scratch().join("in");
    crate::write_private(&input, b"sealed-for-hardware");
    let put = |key: &str, path: &str| {
        c.ok(&[
            "client",
            "secret",
            "put",
            path,
            "--in",
            &input.display().to_string(),
            "--min-tier",
            "2",
            "--key",
            key,
        ]);
    };
    put("tpm:dev", "hw/secret");
    let e = c.fails(
        &["client", "secret", "get", "hw/secret", "--key", "tpm:dev"],
        6,
    );
    assert!(e.contains("tier 2") && e.contains("attest-key"), "{e}");

    // The admin's word alone: tier 1 still, since key attestation is required.
    s.ok(&[
        "client",
        "trust",
        "--server",
        &served.url,
        "--server-fingerprint",
        &served.fingerprint,
    ]);
    let who = c.json(&["client", "whoami", "--key", "tpm:dev", "--json"]);
    let fingerprint = who["key"].as_str().unwrap().to_owned();
    s.ok(&[
        "client",
        "admin",
        "vouch",
        &fingerprint,
        "--tier",
        "2",
        "--reason",
        "said so",
        "--key",
        "admin",
    ]);
    c.fails(
        &["client", "secret", "get", "hw/secret", "--key", "tpm:dev"],
        6,
    );

    // The TPM's certification of the key: tier 2, and the secret.
    let out = c.ok(&["client", "attest-key", "--key", "tpm:dev"]);
    assert!(out.contains("is tier 2") && out.contains(&ak), "{out}");
    let got = c.ok(&["client", "secret", "get", "hw/secret", "--key", "tpm:dev"]);
    assert_eq!(got, "sealed-for-hardware");

    // A key of the encrypted store has no attestation to send.
    served.register(&c, "soft");
    let e = c.fails(&["client", "attest-key", "--key", "soft"], 5);
    assert!(e.contains("attest"), "{e}");
}
