//! Response procedures: revoke, rotate, lookback over a real audit log, notification hooks
//! (a real command, a real HTTP listener, a hanging hook killed on time).

use keyhaven_core::ErrorKind;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhaven_audit::{AuditLog, AuditOptions, AuditSigner, AuditedStore, CallerContext};
use keyhaven_compromise::{
    CompromiseReport, CompromiseType, Delivery, DetectionMethod, NotifyConfig, NotifyContext,
    Procedure, ReportStore, Responder, ResponseConfig, RevocationCheckedStore, Revocations,
    Rotator, Severity, Status, Step, WebhookSigner,
};
use keyhaven_core::{Algorithm, Error, KeyStore};
use keyhaven_store_memory::MemoryStore;
use keyhaven_testkit::devices::WebhookReceiver;

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
        notify: NotifyContext::default(),
        before_notify: None,
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
        notify: NotifyContext::default(),
        before_notify: None,
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
        timeout: 1,
        ..NotifyConfig::default()
    };
    let start = std::time::Instant::now();
    let results = keyhaven_compromise::notify(&config, &report, &NotifyContext::default());
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let e = results[0].1.as_ref().unwrap_err().to_string();
    assert!(e.contains("timed out after 1s"), "{e}");
}

fn webhook(url: String, retries: u32) -> NotifyConfig {
    NotifyConfig {
        webhook: Some(url),
        timeout: 5,
        retries,
        backoff: Duration::from_millis(20),
        ..NotifyConfig::default()
    }
}

fn a_report() -> CompromiseReport {
    CompromiseReport::new(
        "k9",
        CompromiseType::Confirmed,
        Severity::High,
        DetectionMethod::Manual,
        "x",
        1,
    )
}

/// Signs nothing real: says which delivery it was asked to sign, so the test sees that every
/// retry carries the same fields.
struct Stamp(Mutex<Vec<String>>);

impl WebhookSigner for Stamp {
    fn sign(&self, d: &Delivery<'_>) -> keyhaven_core::Result<Vec<(String, String)>> {
        self.0.lock().unwrap().push(d.id.to_owned());
        Ok(vec![(
            "X-Stamp".into(),
            format!("{}:{}", d.id, d.body.len()),
        )])
    }
}

#[test]
fn the_webhook_is_retried_with_back_off_on_what_a_retry_can_fix_only() {
    // 503 then 500 then 200: three attempts, one delivery, signed once.
    let receiver = WebhookReceiver::start(&[503, 500, 200], false);
    let stamp = Stamp(Mutex::default());
    let config = webhook(receiver.url("/hooks/keyhaven?team=sec"), 3);
    let done = keyhaven_compromise::notify(
        &config,
        &a_report(),
        &NotifyContext::default().signed_by(&stamp),
    )
    .remove(0)
    .1
    .unwrap();
    assert!(done.contains("answered 200 at attempt 3"), "{done}");
    assert!(done.contains("1: answered HTTP/1.1 503"), "{done}");
    assert!(done.ends_with("signed"), "{done}");
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert_eq!(stamp.0.lock().unwrap().len(), 1, "signed once per delivery");
    for r in &got {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/hooks/keyhaven?team=sec")
        );
        assert_eq!(r.header("X-Stamp"), got[0].header("X-Stamp"));
        assert_eq!(
            r.header("Keyhaven-Delivery"),
            got[0].header("Keyhaven-Delivery")
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["key_id"], "k9");
    }

    // A 4xx other than 408/425/429 is the receiver saying no: not retried.
    let receiver = WebhookReceiver::start(&[403], false);
    let e = keyhaven_compromise::notify(
        &webhook(receiver.url("/"), 3),
        &a_report(),
        &NotifyContext::default(),
    )
    .remove(0)
    .1
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("answered HTTP/1.1 403") && e.contains("(1 attempt)"),
        "{e}"
    );
    assert_eq!(receiver.received().len(), 1);

    // Retries run out: each attempt is named.
    let receiver = WebhookReceiver::start(&[429, 502, 503], false);
    let e = keyhaven_compromise::notify(
        &webhook(receiver.url("/"), 2),
        &a_report(),
        &NotifyContext::default(),
    )
    .remove(0)
    .1
    .unwrap_err()
    .to_string();
    assert!(e.contains("(3 attempts)"), "{e}");
    assert!(
        e.contains("1: answered HTTP/1.1 429") && e.contains("3: answered HTTP/1.1 503"),
        "{e}"
    );

    // Nobody listening: retried, then given up, naming the refusal.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = keyhaven_compromise::notify(
        &webhook(format!("http://127.0.0.1:{port}/"), 1),
        &a_report(),
        &NotifyContext::default(),
    )
    .remove(0)
    .1
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot connect") && e.contains("(2 attempts)"),
        "{e}"
    );
}

#[test]
fn a_webhook_that_hangs_times_out_at_each_attempt() {
    let receiver = WebhookReceiver::start(&[0, 0], false);
    let config = NotifyConfig {
        timeout: 1,
        ..webhook(receiver.url("/"), 1)
    };
    let start = std::time::Instant::now();
    let e = keyhaven_compromise::notify(&config, &a_report(), &NotifyContext::default())
        .remove(0)
        .1
        .unwrap_err()
        .to_string();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(
        e.contains("1: timed out after 1s") && e.contains("2: timed out after 1s"),
        "{e}"
    );
    assert_eq!(receiver.received().len(), 2);
}

#[test]
fn https_webhooks_verify_the_receiver_against_the_configured_ca() {
    let receiver = WebhookReceiver::start(&[200], true);
    let config = NotifyConfig {
        ca_file: Some(receiver.ca()),
        ..webhook(receiver.url("/hook"), 0)
    };
    let done = keyhaven_compromise::notify(&config, &a_report(), &NotifyContext::default())
        .remove(0)
        .1
        .unwrap();
    assert!(done.contains("answered 200"), "{done}");
    assert!(done.ends_with("unsigned"), "{done}");
    assert_eq!(receiver.received().len(), 1);

    // Another CA (here: the system's roots, or another receiver's CA) does not vouch for it:
    // refused at the handshake, not retried, nothing delivered.
    let other = WebhookReceiver::start(&[], true);
    for ca in [Some(other.ca()), None] {
        let config = NotifyConfig {
            ca_file: ca,
            ..webhook(receiver.url("/hook"), 3)
        };
        let e = keyhaven_compromise::notify(&config, &a_report(), &NotifyContext::default())
            .remove(0)
            .1
            .unwrap_err()
            .to_string();
        // (a machine without system roots refuses before any attempt)
        assert!(
            (e.contains("TLS") && e.contains("(1 attempt)")) || e.contains("no system root"),
            "{e}"
        );
    }
    assert_eq!(receiver.received().len(), 1);

    // The name must match the certificate: 127.0.0.1 is in it, 127.0.0.2 is not.
    let by_ip = receiver.url("/hook").replace("localhost", "127.0.0.1");
    let config = NotifyConfig {
        ca_file: Some(receiver.ca()),
        ..webhook(by_ip, 0)
    };
    assert!(
        keyhaven_compromise::notify(&config, &a_report(), &NotifyContext::default())[0]
            .1
            .is_ok()
    );

    // A CA file that is not certificates is a configuration error naming it.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let config = NotifyConfig {
        ca_file: Some(junk),
        ..webhook(receiver.url("/hook"), 0)
    };
    let e = keyhaven_compromise::notify(&config, &a_report(), &NotifyContext::default())
        .remove(0)
        .1
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ca_file") && e.contains("holds no certificate"),
        "{e}"
    );
}

#[test]
fn notification_settings_are_validated() {
    let check = |notify: NotifyConfig| {
        ResponseConfig {
            notify,
            ..ResponseConfig::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    };
    let ok = webhook("https://hooks.example/x".into(), 3);
    assert!(check(ok.clone()).is_ok());
    for (bad, needle) in [
        (
            NotifyConfig {
                retries: 11,
                ..ok.clone()
            },
            "retries must be at most 10",
        ),
        (
            NotifyConfig {
                backoff: Duration::from_millis(1),
                ..ok.clone()
            },
            "backoff must be between",
        ),
        (
            NotifyConfig {
                webhook: Some("ftp://x/".into()),
                ..ok.clone()
            },
            "must start with http:// or https://",
        ),
        (
            NotifyConfig {
                webhook: None,
                ca_file: Some("ca.pem".into()),
                ..ok.clone()
            },
            "no webhook",
        ),
    ] {
        let e = check(bad).unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
    // As written in keyhaven.toml: humantime durations, milliseconds kept.
    let parsed: NotifyConfig =
        serde_json::from_str(r#"{"webhook": "https://h/", "backoff": "250ms", "retries": 5}"#)
            .unwrap();
    assert_eq!(
        (parsed.backoff, parsed.retries),
        (Duration::from_millis(250), 5)
    );
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
        (
            r#"{"notify": {"webhook": "https://u@x/"}}"#,
            "user information",
        ),
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

/// A receiver beside the real one, for faults Python's server will not make: it reads the
/// request's head, then writes `answer` a chunk at a time with `pause` between chunks.
fn scripted_receiver(answer: Vec<&'static [u8]>, pause: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            for chunk in answer {
                if s.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        }
    });
    url
}

#[test]
fn a_receiver_trickling_its_answer_cannot_stretch_an_attempt() {
    // One byte every 300 ms: each read is quick, the attempt as a whole is not.
    let trickle: Vec<&'static [u8]> = b"HTTP/1.1 200 OK\r\n\r\n".chunks(1).collect::<Vec<_>>();
    let url = scripted_receiver(trickle, Duration::from_millis(300));
    let config = NotifyConfig {
        timeout: 1,
        ..webhook(url, 0)
    };
    let start = std::time::Instant::now();
    let e = keyhaven_compromise::notify(&config, &a_report(), &NotifyContext::default())
        .remove(0)
        .1
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(e.contains("timed out after 1s"), "{e}");
}

#[test]
fn an_interim_answer_is_followed_by_the_final_one() {
    let url = scripted_receiver(
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        ],
        Duration::from_millis(20),
    );
    let done =
        keyhaven_compromise::notify(&webhook(url, 0), &a_report(), &NotifyContext::default())
            .remove(0)
            .1
            .unwrap();
    assert!(done.contains("answered 202"), "{done}");
}
