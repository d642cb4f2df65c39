//! The decorators: `AuditedStore<AccessControlledStore<S>>` keeps the `KeyStore` contract, audits
//! every operation (denials included), fails closed, and the policy denies by default.

use keyhaven_core::ErrorKind;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use keyhaven_audit::{
    AccessControlledStore, AuditLog, AuditedStore, Body, CallerContext, Event, Grant, KeyRule,
    Operation, Outcome, Policy, Record,
};
use keyhaven_core::{Algorithm, Error, KeyStore, Protection, SecretBytes};
use keyhaven_crypto::default_provider;
use keyhaven_testkit::Capabilities;
use sha2::{Digest, Sha256};

use crate::Fixture;
use crate::simple::SimpleStore;

type Stack = AuditedStore<AccessControlledStore<Arc<SimpleStore>>>;

/// The recommended stack: audit outside, access control inside, then the backend.
fn stack(log: &Arc<AuditLog>, inner: &Arc<SimpleStore>, policy: Policy, who: &str) -> Stack {
    let caller = CallerContext::new(who);
    AuditedStore::new(
        AccessControlledStore::new(inner.clone(), policy, caller.clone()),
        log.clone(),
        caller,
    )
}

fn events(fx: &Fixture) -> Vec<Event> {
    let mut out = Vec::new();
    keyhaven_audit::export_json(&fx.dir, &mut out).unwrap();
    serde_json::from_slice::<Vec<Record>>(&out)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            Body::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn conformance_fixture() -> keyhaven_testkit::Fixture {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(100));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let store = stack(&log, &inner, Policy::allow_all(), "conformance");
    keyhaven_testkit::Fixture::with_guard(store, fx)
}

mod suite {
    use super::*;
    // Import and export per the inner store's capabilities: a software store does both.
    keyhaven_testkit::conformance_suite!(
        conformance_fixture,
        Capabilities::software(Protection::SoftwarePlain)
    );
}

#[test]
fn decorated_stores_are_object_safe_send_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Stack>();
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let boxed: Arc<dyn KeyStore> = Arc::new(stack(&log, &inner, Policy::allow_all(), "a"));
    // and a stack over a trait object
    let _: Box<dyn KeyStore> = Box::new(AuditedStore::new(
        AccessControlledStore::new(boxed, Policy::allow_all(), CallerContext::new("a")),
        log,
        CallerContext::new("a"),
    ));
}

#[test]
fn every_operation_is_audited_once_with_the_right_fields() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let caller = CallerContext::new("alice").role("ops");
    let store = AuditedStore::new(
        AccessControlledStore::new(inner.clone(), Policy::allow_all(), caller.clone()),
        log.clone(),
        caller,
    );
    let k = store.generate(Algorithm::EcdsaP256, "signer").unwrap();
    let x = store.generate(Algorithm::X25519, "agreer").unwrap();
    store.list().unwrap();
    store.get(&k.id).unwrap();
    store.find_by_label("signer").unwrap();
    store.resolve("agreer").unwrap();
    store.public_key(&k.id).unwrap();
    let secret_message = b"a secret message that must never reach the log";
    store.sign(&k.id, secret_message).unwrap();
    let digest = Sha256::digest(b"artifact");
    store.sign_digest(&k.id, &digest).unwrap();
    let peer = default_provider().generate(Algorithm::X25519).unwrap();
    store.agree(&x.id, peer.public_key()).unwrap();
    let der = store.export_pkcs8(&k.id).unwrap();
    let imported = store
        .import_pkcs8("imported", &SecretBytes::copy_from(der.expose_secret()))
        .unwrap();
    store.check().unwrap();
    store.delete(&imported.id).unwrap();
    // a failing operation is audited as failed
    assert!(matches!(
        store.sign_digest(&k.id, &[0; 7]),
        Err(e) if e.is(ErrorKind::InvalidInput)));

    let all = events(&fx);
    let mut outcomes: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut intents: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &all {
        assert_eq!(e.principal, "alice");
        assert_eq!(e.backend, "simple");
        assert_eq!(e.pid, std::process::id());
        assert_eq!(e.host, keyhaven_audit::hostname());
        if e.outcome == Outcome::Intent {
            *intents.entry(e.operation.as_str()).or_default() += 1;
        } else {
            outcomes.entry(e.operation.as_str()).or_default().push(e);
        }
    }
    let private = [
        "generate",
        "sign",
        "sign_digest",
        "agree",
        "export",
        "import",
        "delete",
    ];
    let reads = [
        "list",
        "get",
        "find_by_label",
        "resolve",
        "public_key",
        "check",
    ];
    for op in private.iter().chain(&reads) {
        // one outcome record per call: two calls of generate (two keys) and of sign_digest
        // (one allowed, one failed), one of everything else
        let want = if ["generate", "sign_digest"].contains(op) {
            2
        } else {
            1
        };
        let n = outcomes.get(op).map_or(0, Vec::len);
        assert_eq!(n, want, "outcome records for {op}: {outcomes:#?}");
        if private.contains(op) {
            // and exactly one intent record before each private-key call
            assert_eq!(intents.get(op).copied(), Some(want), "intents for {op}");
        }
    }
    for op in reads {
        assert_eq!(intents.get(op), None, "reads write no intent: {op}");
    }
    // every intent comes before its outcome, with the same key and digest
    for (i, e) in all.iter().enumerate() {
        if e.outcome == Outcome::Intent {
            let next = &all[i + 1];
            assert_eq!(
                (&next.operation, &next.digest),
                (&e.operation, &e.digest),
                "intent then outcome"
            );
        }
    }

    let by = |op: &str| outcomes[op][0];
    let sign = by("sign");
    assert_eq!(sign.outcome, Outcome::Allowed);
    assert_eq!(sign.key_id.as_deref(), Some(k.id.as_str()));
    assert_eq!(
        sign.digest.as_deref(),
        Some(hex::encode(Sha256::digest(secret_message)).as_str())
    );
    assert_eq!(
        by("sign_digest").digest.as_deref(),
        Some(hex::encode(Sha256::digest(digest)).as_str())
    );
    assert_eq!(by("generate").key_id.as_deref(), Some(k.id.as_str()));
    assert_eq!(by("import").key_id.as_deref(), Some(imported.id.as_str()));
    assert_eq!(by("find_by_label").key_id.as_deref(), Some(k.id.as_str()));
    assert_eq!(by("resolve").key_id.as_deref(), Some(x.id.as_str()));
    assert_eq!(by("agree").key_id.as_deref(), Some(x.id.as_str()));
    assert_eq!(by("list").key_id, None);
    let failed = outcomes["sign_digest"][1];
    assert_eq!(failed.outcome, Outcome::Failed);
    assert!(
        failed.reason.as_deref().unwrap().contains("32"),
        "{failed:?}"
    );

    // the data is never in the log, only its digest
    let text: String = log
        .files()
        .unwrap()
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    assert!(!text.contains("a secret message"));
    assert!(!text.contains(&hex::encode(der.expose_secret())));

    log.checkpoint().unwrap();
    let r = fx.verify();
    assert!(r.is_ok(), "{:?}", r.problem);
    assert_eq!(r.events, all.len() as u64);
}

#[test]
fn denied_operations_fail_with_permission_denied_and_are_audited() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let policy = Policy::deny_all()
        .allow(Operation::Generate, Grant::roles(["key-admin"]))
        .allow(Operation::Sign, Grant::roles(["signer"]))
        .key(KeyRule::for_label("bobs").allow(Operation::Sign, Grant::principals(["bob"])));
    let admin = AuditedStore::new(
        AccessControlledStore::new(
            inner.clone(),
            policy.clone(),
            CallerContext::new("root").role("key-admin"),
        ),
        log.clone(),
        CallerContext::new("root").role("key-admin"),
    );
    let k = admin.generate(Algorithm::Ed25519, "shared").unwrap();
    let bobs = admin.generate(Algorithm::Ed25519, "bobs").unwrap();
    let bob = stack(&log, &inner, policy.clone(), "bob");

    let err = bob.sign(&k.id, b"m").unwrap_err();
    let Error::PermissionDenied(msg) = &err else {
        panic!("{err:?}")
    };
    for part in ["bob", "sign", k.id.as_str()] {
        assert!(msg.contains(part), "{msg} names {part}");
    }
    assert_eq!(inner.uses(), 0, "a denied sign never reaches the key");
    for r in [
        bob.export_pkcs8(&k.id).map(|_| ()),
        bob.delete(&k.id),
        bob.generate(Algorithm::Ed25519, "mine").map(|_| ()),
        bob.agree(&k.id, &k.public_key).map(|_| ()),
    ] {
        assert!(
            matches!(&r, Err(e) if e.is(ErrorKind::PermissionDenied)),
            "{r:?}"
        );
    }
    assert_eq!(inner.uses(), 0);
    // a per-key rule lets bob sign with his key only; reads are not gated
    bob.sign(&bobs.id, b"m").unwrap();
    assert_eq!(inner.uses(), 1);
    bob.get(&k.id).unwrap();
    // a caller with the role signs with any key
    let carol = AuditedStore::new(
        AccessControlledStore::new(
            inner.clone(),
            policy,
            CallerContext::new("carol").role("signer"),
        ),
        log.clone(),
        CallerContext::new("carol").role("signer"),
    );
    carol.sign(&k.id, b"m").unwrap();

    let denied: Vec<Event> = events(&fx)
        .into_iter()
        .filter(|e| e.outcome == Outcome::Denied)
        .collect();
    let ops: Vec<&str> = denied.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops, ["sign", "export", "delete", "generate", "agree"]);
    assert!(denied.iter().all(|e| e.principal == "bob"));
    assert_eq!(denied[0].key_id.as_deref(), Some(k.id.as_str()));
    assert!(
        denied[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("may not sign")
    );
    assert_eq!(
        denied[0].digest.as_deref(),
        Some(hex::encode(Sha256::digest(b"m")).as_str())
    );
    log.checkpoint().unwrap();
    assert!(fx.verify().is_ok());
}

#[test]
fn the_other_stack_order_loses_denials() {
    // AccessControlled<Audited<S>>: the denial happens before the audit layer sees the call.
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let k = inner.generate(Algorithm::Ed25519, "k").unwrap();
    let wrong = AccessControlledStore::new(
        AuditedStore::new(inner.clone(), log.clone(), CallerContext::new("eve")),
        Policy::deny_all(),
        CallerContext::new("eve"),
    );
    assert!(matches!(
        wrong.sign(&k.id, b"m"),
        Err(e) if e.is(ErrorKind::PermissionDenied)));
    assert!(events(&fx).is_empty(), "the wrong order audits nothing");
    let right = stack(&log, &inner, Policy::deny_all(), "eve");
    assert!(right.sign(&k.id, b"m").is_err());
    assert_eq!(events(&fx).last().map(|e| e.outcome), Some(Outcome::Denied));
}

#[test]
fn unwritable_audit_log_refuses_private_operations_before_the_key_is_used() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let store = stack(&log, &inner, Policy::allow_all(), "alice");
    let k = store.generate(Algorithm::EcdsaP256, "k").unwrap();
    store.sign(&k.id, b"before").unwrap();
    assert_eq!(inner.uses(), 1);
    let before = events(&fx).len();

    // The log becomes unusable (loose permissions are refused, even for root).
    let file = fx.file(1);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.sign(&k.id, b"during").unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { backend, reason } if backend == "audit" && reason.contains("`sign` was refused")),
        "{err:?}"
    );
    assert!(store.sign_digest(&k.id, &[1; 32]).is_err());
    assert!(store.export_pkcs8(&k.id).is_err());
    assert!(store.delete(&k.id).is_err());
    assert!(store.generate(Algorithm::Ed25519, "new").is_err());
    assert!(store.list().is_err());
    assert_eq!(inner.uses(), 1, "no private-key use while the log is down");
    assert_eq!(
        inner.list().unwrap().len(),
        1,
        "nothing generated or deleted"
    );

    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    store.sign(&k.id, b"after").unwrap();
    assert_eq!(inner.uses(), 2);
    assert_eq!(events(&fx).len(), before + 2);

    // The log removed mid-run: same.
    fs::remove_file(&file).unwrap();
    assert!(store.sign(&k.id, b"gone").is_err());
    assert_eq!(inner.uses(), 2);
}

#[test]
fn hardware_keys_are_never_exported_whatever_the_rules() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::Hardware));
    let policy =
        Policy::allow_all().key(KeyRule::for_label("hw").allow(Operation::Export, Grant::anyone()));
    let store = stack(&log, &inner, policy, "root");
    let k = store.generate(Algorithm::EcdsaP384, "hw").unwrap();
    let err = store.export_pkcs8(&k.id).unwrap_err();
    let Error::Unsupported { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("hardware key") && reason.contains("whatever the access policy says"),
        "{reason}"
    );
    // refused by the decorator, before the inner store
    let bare =
        AccessControlledStore::new(inner.clone(), Policy::allow_all(), CallerContext::new("x"));
    assert!(
        matches!(bare.export_pkcs8(&k.id), Err(e) if e.is(ErrorKind::Unsupported) && e.to_string().contains("policy"))
    );
    let last = events(&fx).pop().unwrap();
    assert_eq!(
        (last.operation.as_str(), last.outcome),
        ("export", Outcome::Failed)
    );
}

#[test]
fn policy_toml_parses_and_typos_are_named() {
    let text = r#"
[default]
generate = { roles = ["key-admin"] }
sign = { roles = ["signer"], principals = ["ci"] }

[[keys]]
label = "release"
allow.export = { principals = ["backup"] }

[[keys]]
id = "0123"
allow.sign = { principals = [] }
"#;
    let p = Policy::from_toml_str(text).unwrap();
    use keyhaven_audit::KeyRef;
    let release = KeyRef {
        id: Some("x"),
        label: Some("release"),
    };
    let locked = KeyRef {
        id: Some("0123"),
        label: None,
    };
    assert!(p.allows(&CallerContext::new("ci"), Operation::Sign, &release));
    assert!(p.allows(&CallerContext::new("backup"), Operation::Export, &release));
    assert!(!p.allows(&CallerContext::new("ci"), Operation::Export, &locked));
    assert!(
        !p.allows(&CallerContext::new("ci"), Operation::Sign, &locked),
        "key rule overrides"
    );
    assert!(
        !p.allows(&CallerContext::new("x"), Operation::Delete, &release),
        "deny by default"
    );

    for (typo, field) in [
        ("[default]\nsgin = { roles = [\"a\"] }\n", "sgin"),
        ("[default]\nsign = { principal = [\"a\"] }\n", "principal"),
        ("[[keys]]\nlable = \"x\"\n", "lable"),
        ("[[keys]]\nlabel = \"x\"\nallow.exprt = {}\n", "exprt"),
        ("[defaults]\n", "defaults"),
    ] {
        let err = Policy::from_toml_str(typo).unwrap_err();
        assert!(
            matches!(&err, e if e.is(ErrorKind::InvalidInput) && e.to_string().contains(field)),
            "{typo}: {err}"
        );
    }
    let err = Policy::from_toml_str("[[keys]]\nid = \"a\"\nlabel = \"b\"\n").unwrap_err();
    assert!(err.to_string().contains("keys[0]"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    fs::write(&path, "[default]\nsgin = {}\n").unwrap();
    let err = Policy::load(&path).unwrap_err().to_string();
    assert!(err.contains("policy.toml") && err.contains("sgin"), "{err}");
}

#[test]
fn an_outcome_lost_in_a_crash_shows_as_an_unfinished_operation() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let store = stack(&log, &inner, Policy::allow_all(), "alice");
    let k = store.generate(Algorithm::EcdsaP256, "signer").unwrap();
    store.sign(&k.id, b"one").unwrap();
    store.sign(&k.id, b"two").unwrap();
    drop(store);
    drop(log);
    // Every intent has its outcome.
    let report = fx.verify();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.unfinished.is_empty(), "{:?}", report.unfinished);

    // A machine crash before the next fsync loses the last outcome (the last line): the chain
    // still verifies, and the operation is named, not forgotten.
    let path = fx.file(1);
    let mut all = crate::lines(&path);
    let outcome = all.pop().unwrap();
    assert!(String::from_utf8_lossy(&outcome).contains("\"allowed\""));
    crate::write_lines(&path, &all);
    let report = fx.verify();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.unfinished, [report.records - 1], "{report:?}");

    // With durable outcomes asked for, the same operations verify the same way.
    let fx = Fixture::new();
    let log = Arc::new(
        AuditLog::open(
            &fx.dir,
            fx.signer(),
            keyhaven_audit::AuditOptions::checkpoint_every(0).with_durable_outcomes(true),
        )
        .unwrap(),
    );
    let store = stack(&log, &inner, Policy::allow_all(), "alice");
    store.sign(&k.id, b"three").unwrap();
    drop(store);
    drop(log);
    let report = fx.verify();
    assert!(report.is_ok() && report.unfinished.is_empty(), "{report:?}");
}

#[test]
fn an_outcome_written_without_its_fsync_is_in_order_and_chained() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(2));
    let intent = Event::new("bob", "sign", "file", Outcome::Intent).key("k", None);
    let done = Event::new("bob", "sign", "file", Outcome::Allowed).key("k", None);
    for _ in 0..5 {
        let a = log.append(intent.clone()).unwrap();
        let b = log.append_outcome(done.clone()).unwrap();
        assert!(b > a);
    }
    log.sync().unwrap();
    // Another process reads it all at once, checkpoints included (they are always synced).
    let report = fx.verify();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.checkpoints >= 4, "{report:?}");
    assert!(report.unfinished.is_empty());
    assert_eq!(events(&fx).len(), 10);
}

#[test]
fn an_outcome_names_its_intent_and_other_records_close_none() {
    let fx = Fixture::new();
    let log = Arc::new(fx.open(0));
    let inner = Arc::new(SimpleStore::new(Protection::SoftwarePlain));
    let store = stack(&log, &inner, Policy::allow_all(), "alice");
    let k = store.generate(Algorithm::EcdsaP256, "signer").unwrap();
    drop(store);
    // A signature's intent, then a record of the same process and operation with no intent
    // of its own (a denial the facade writes), then the signature's outcome naming its intent.
    let sign = |outcome| Event::new("alice", "sign", "memory", outcome).key(k.id.as_str(), None);
    let intent = log.append(sign(Outcome::Intent)).unwrap();
    log.append(sign(Outcome::Denied)).unwrap();
    let mut done = sign(Outcome::Allowed);
    done.intent = Some(intent);
    log.append_outcome(done).unwrap();
    drop(log);
    assert!(fx.verify().unfinished.is_empty());
    // A crash loses the outcome (the last line): the denial does not stand in for it.
    let path = fx.file(1);
    let mut all = crate::lines(&path);
    all.pop();
    crate::write_lines(&path, &all);
    let report = fx.verify();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.unfinished, [intent]);
}
