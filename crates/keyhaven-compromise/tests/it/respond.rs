//! Response procedures: revoke, rotate, lookback over a real audit log, notification hooks
//! (a real command, a real HTTP listener, a hanging hook killed on time).

use keyhaven_core::ErrorKind;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use keyhaven_audit::{AuditLog, AuditOptions, AuditSigner, AuditedStore, CallerContext};
use keyhaven_compromise::{
    CompromiseReport, CompromiseType, DetectionMethod, NotifyConfig, Procedure, ReportStore,
    Responder, ResponseConfig, RevocationCheckedStore, Revocations, Rotator, Severity, Status,
    Step,
};
use keyhaven_core::{Algorithm, Error, KeyStore};
use keyhaven_store_memory::MemoryStore;

use crate::{authority, private_tempdir, sub};

/// Records emergency rotations asked for (the facade provides the real engine).
#[derive(Default)]
struct RecordingRotator(Mutex<Vec<String>>, bool);

impl Rotator for RecordingRotator {
    fn emergency_rotate(&self, key_id: &str, reason: &str) -> keyhaven_core::Result<String> {
        if self.1 {
            return Err(Error::Unavailable {
                backend: "pkcs11".into(),
                reason: "token gone".into(),
            });
        }
        self.0.lock().unwrap().push(format!("{key_id}: {reason}"));
        Ok(format!("{key_id} now at version 2"))
    }
}

#[test]
fn the_default_procedure_revokes_rotates_looks_back_and_notifies() {
    let dir = private_tempdir();
    let auth = authority();
    let revs = Arc::new(Revocations::open(&sub(dir.path(), "rev")).unwrap());
    // The key store behind revocation checks and an audit log, as the facade stacks it.
    let audit_store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let audit_key = audit_store.generate(Algorithm::Ed25519, "audit").unwrap();
    let log = Arc::new(
        AuditLog::open(
            &sub(dir.path(), "audit"),
            AuditSigner {
                store: audit_store,
                key: audit_key.id,
            },
            AuditOptions::default(),
        )
        .unwrap(),
    );
    let store = AuditedStore::new(
        RevocationCheckedStore::new(MemoryStore::new().unwrap(), revs.clone()),
        log,
        CallerContext::new("alice"),
    );
    let key = store.generate(Algorithm::EcdsaP384, "api").unwrap();
    for _ in 0..3 {
        store.sign(&key.id, b"work").unwrap();
    }

    let out = sub(dir.path(), "notified.json");
    let reports = ReportStore::open(&sub(dir.path(), "reports")).unwrap();
    let now = keyhaven_core::unix_now();
    let mut report = CompromiseReport::new(
        key.id.as_str(),
        CompromiseType::Confirmed,
        Severity::Critical,
        DetectionMethod::Manual,
        "alice",
        now,
    );
    report.role = Some("signing".into());
    reports.file(&report).unwrap();
    let config = ResponseConfig {
        notify: NotifyConfig {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "cat > {} && echo \"$KEYHAVEN_REPORT_ID $KEYHAVEN_SEVERITY\" >> {}",
                    out.display(),
                    out.display()
                ),
            ]),
            ..NotifyConfig::default()
        },
        ..ResponseConfig::default()
    };
    let rotator = RecordingRotator::default();
    let responder = Responder {
        reports: &reports,
        revocations: &revs,
        authority: &auth,
        audit_dir: Some(&sub(dir.path(), "audit")),
        rotator: Some(&rotator),
        config: &config,
    };
    let outcome = responder.respond(&report.id, &key, now).unwrap();
    let r = &outcome.report;
    assert_eq!(r.status, Status::Responded, "{r:#?}");
    let actions: Vec<_> = r
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.ok))
        .collect();
    assert_eq!(
        actions,
        [
            ("revoke", true),
            ("rotate", true),
            ("lookback", true),
            ("notify-command", true)
        ]
    );
    assert!(
        r.actions[2].detail.contains("sign x3"),
        "{}",
        r.actions[2].detail
    );
    assert_eq!(
        outcome.lookback.len(),
        4,
        "generate + 3 signatures (outcomes, not intents)"
    );
    assert_eq!(rotator.0.lock().unwrap().len(), 1);
    // The key is revoked: the next signature is refused, and the refusal is audited.
    assert!(matches!(
        store.sign(&key.id, b"more").unwrap_err(),
        e if e.is(ErrorKind::Revoked)));
    // The hook got the report as JSON on stdin, with the actions so far, and its environment.
    let text = std::fs::read_to_string(&out).unwrap();
    let (json, env) = text.rsplit_once('}').unwrap();
    let notified: CompromiseReport = serde_json::from_str(&format!("{json}}}")).unwrap();
    assert_eq!(notified.id, report.id);
    assert_eq!(notified.actions.len(), 3);
    assert_eq!(env.trim(), format!("{} critical", report.id));
    // The stored report says the same.
    assert_eq!(reports.get(&report.id).unwrap(), outcome.report);
}

#[test]
fn a_failing_step_is_recorded_and_the_others_still_run() {
    let dir = private_tempdir();
    let auth = authority();
    let revs = Revocations::open(&sub(dir.path(), "rev")).unwrap();
    let reports = ReportStore::open(&sub(dir.path(), "reports")).unwrap();
    let key = MemoryStore::new()
        .unwrap()
        .generate(Algorithm::Ed25519, "k")
        .unwrap();
    let report = CompromiseReport::new(
        key.id.as_str(),
        CompromiseType::Suspected,
        Severity::High,
        DetectionMethod::Manual,
        "bob",
        1_700_000_000,
    );
    reports.file(&report).unwrap();
    let config = ResponseConfig {
        notify: NotifyConfig {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "echo 'pager is down' >&2; exit 4".into(),
            ]),
            ..NotifyConfig::default()
        },
        ..ResponseConfig::default()
    };
    let broken = RecordingRotator(Mutex::default(), true);
    let responder = Responder {
        reports: &reports,
        revocations: &revs,
        authority: &auth,
        audit_dir: None,
        rotator: Some(&broken),
        config: &config,
    };
    let r = responder
        .respond(&report.id, &key, 1_700_000_000)
        .unwrap()
        .report;
    assert_eq!(r.status, Status::Incomplete);
    let actions: Vec<_> = r
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.ok))
        .collect();
    assert_eq!(
        actions,
        [
            ("revoke", true),
            ("rotate", false),
            ("lookback", true),
            ("notify-command", false)
        ]
    );
    assert!(
        r.actions[1].detail.contains("token gone"),
        "{}",
        r.actions[1].detail
    );
    assert!(
        r.actions[2].detail.starts_with("skipped"),
        "{}",
        r.actions[2].detail
    );
    assert!(
        r.actions[3].detail.contains("pager is down"),
        "{}",
        r.actions[3].detail
    );
    // The revocation stands.
    assert!(revs.check(key.id.as_str()).unwrap().is_some());
    // Responding again is safe: the revocation is not duplicated.
    responder.respond(&report.id, &key, 1_700_000_500).unwrap();
    assert_eq!(revs.all().unwrap().len(), 1);
    // The wrong key for a report is refused.
    let other = MemoryStore::new()
        .unwrap()
        .generate(Algorithm::Ed25519, "o")
        .unwrap();
    assert!(responder.respond(&report.id, &other, 1).is_err());
}

#[test]
fn a_hanging_hook_is_killed_at_its_timeout() {
    let report = CompromiseReport::new(
        "k",
        CompromiseType::Suspected,
        Severity::Low,
        DetectionMethod::Manual,
        "x",
        1,
    );
    let config = NotifyConfig {
        command: Some(vec!["sleep".into(), "30".into()]),
        webhook: None,
        timeout: 1,
    };
    let start = std::time::Instant::now();
    let results = keyhaven_compromise::notify(&config, &report);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let e = results[0].1.as_ref().unwrap_err().to_string();
    assert!(e.contains("timed out after 1s"), "{e}");
}

#[test]
fn the_webhook_receives_the_report_and_its_status_is_checked() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for status in ["200 OK", "500 Internal Server Error"] {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers and the body announced by Content-Length.
            loop {
                let n = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    if buf.len() >= i + 4 + len {
                        bodies.push(text);
                        break;
                    }
                }
            }
            write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
        }
        bodies
    });
    let report = CompromiseReport::new(
        "k9",
        CompromiseType::Confirmed,
        Severity::High,
        DetectionMethod::Manual,
        "x",
        1,
    );
    let config = NotifyConfig {
        command: None,
        webhook: Some(format!("http://127.0.0.1:{port}/hooks/keyhaven")),
        timeout: 5,
    };
    let ok = keyhaven_compromise::notify(&config, &report);
    assert_eq!(ok[0].0, "notify-webhook");
    assert!(ok[0].1.as_ref().unwrap().contains("200"));
    let failed = keyhaven_compromise::notify(&config, &report);
    assert!(
        failed[0]
            .1
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("500")
    );
    let bodies = server.join().unwrap();
    assert!(
        bodies[0].starts_with("POST /hooks/keyhaven HTTP/1.1"),
        "{}",
        bodies[0]
    );
    assert!(bodies[0].contains("\"key_id\": \"k9\""));
    // A webhook that accepts but never answers times out.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = NotifyConfig {
        command: None,
        webhook: Some(format!("http://{}/", silent.local_addr().unwrap())),
        timeout: 1,
    };
    let e = keyhaven_compromise::notify(&config, &report)
        .remove(0)
        .1
        .unwrap_err()
        .to_string();
    assert!(e.contains("timed out"), "{e}");
}

#[test]
fn procedures_are_chosen_by_role_and_validated() {
    let toml_like = r#"{
        "thresholds": {"rate_factor": 5},
        "procedure": [
            {"steps": ["revoke", "notify"]},
            {"role": "identity", "steps": ["revoke", "rotate", "lookback", "notify"], "lookback": "30d"}
        ],
        "notify": {"webhook": "http://127.0.0.1:9/x", "timeout": "3s"}
    }"#;
    let c: ResponseConfig = serde_json::from_str(toml_like).unwrap();
    c.validate().unwrap();
    assert_eq!(c.procedure_for(Some("identity")).lookback, 30 * 86_400);
    assert_eq!(
        c.procedure_for(Some("signing")).steps,
        [Step::Revoke, Step::Notify]
    );
    assert_eq!(
        ResponseConfig::default().procedure_for(None),
        Procedure::default()
    );
    for (bad, needle) in [
        (r#"{"notify": {"webhook": "https://x/"}}"#, "https"),
        (r#"{"notify": {"webhook": "ftp://x/"}}"#, "http://"),
        (r#"{"notify": {"command": []}}"#, "command"),
        (r#"{"notify": {"timeout": 0}}"#, "timeout"),
        (r#"{"procedure": [{"steps": []}]}"#, "steps"),
        (
            r#"{"procedure": [{"steps": ["revoke"]}, {"steps": ["notify"]}]}"#,
            "two procedures",
        ),
    ] {
        let c: ResponseConfig = serde_json::from_str(bad).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    assert!(
        serde_json::from_str::<ResponseConfig>(r#"{"procedure": [{"steps": ["explode"]}]}"#)
            .is_err()
    );
    assert!(serde_json::from_str::<ResponseConfig>(r#"{"notfy": {}}"#).is_err());
}
