//! The report store.

use keyhaven_audit::Outcome;
use keyhaven_compromise::{
    CompromiseReport, CompromiseType, DetectionMethod, KeyStates, ReportStore, Severity, Status,
    Thresholds, scan,
};

use crate::detect::Log;
use crate::{private_tempdir, sub};

#[test]
fn reports_are_filed_listed_updated_and_named_when_missing_or_damaged() {
    let dir = private_tempdir();
    let store = ReportStore::open(&sub(dir.path(), "reports")).unwrap();
    let a = CompromiseReport::new(
        "k1",
        CompromiseType::Confirmed,
        Severity::Critical,
        DetectionMethod::Manual,
        "alice",
        200,
    );
    let b = CompromiseReport::new(
        "k2",
        CompromiseType::Suspected,
        Severity::Low,
        DetectionMethod::Manual,
        "bob",
        100,
    );
    assert!(a.id.starts_with("CR-19700101-"), "{}", a.id);
    store.file(&a).unwrap();
    store.file(&b).unwrap();
    assert!(store.file(&a).is_err(), "an id is never reused");
    let ids: Vec<_> = store.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, [b.id.clone(), a.id.clone()], "oldest first");
    assert_eq!(store.get(&a.id).unwrap(), a);
    store
        .update(&a.id, |r| {
            r.status = Status::Dismissed;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.get(&a.id).unwrap().status, Status::Dismissed);

    let e = store.get("CR-nope").unwrap_err();
    assert!(e.to_string().contains("CR-nope"), "{e}");
    assert!(matches!(
        e,
        keyhaven_compromise::CompromiseError::ReportNotFound(_)
    ));
    assert!(store.get("../../etc/passwd").is_err(), "ids are not paths");
    let path = dir.path().join("reports").join(format!("{}.json", b.id));
    keyhaven_fs::atomic_write(&path, b"{").unwrap();
    let e = store.list().unwrap_err();
    assert!(
        e.to_string().contains(&b.id),
        "names the damaged report: {e}"
    );
}

#[test]
fn findings_are_filed_once_as_suspected_reports() {
    let dir = private_tempdir();
    let store = ReportStore::open(&sub(dir.path(), "reports")).unwrap();
    let mut log = Log::default();
    log.ev(1, "a", "sign", "k", Outcome::Allowed).request_id = Some("r".into());
    log.ev(2, "a", "sign", "k", Outcome::Allowed).request_id = Some("r".into());
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    let filed = store.file_findings(&f, 1_700_000_100).unwrap();
    assert_eq!(filed.len(), 1);
    let r = &filed[0];
    assert_eq!(
        (r.kind, r.detection, r.severity),
        (
            CompromiseType::Suspected,
            DetectionMethod::Replay,
            Severity::High
        )
    );
    assert_eq!(r.evidence[0].audit_seqs, [0, 1]);
    assert_eq!(r.status, Status::Open);
    // Scanning again files nothing new.
    assert!(store.file_findings(&f, 1_700_000_200).unwrap().is_empty());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_world_readable_report_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = private_tempdir();
    let p = sub(dir.path(), "reports");
    ReportStore::open(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = ReportStore::open(&p).unwrap_err();
    assert!(e.to_string().contains("chmod 700"), "{e}");
}
