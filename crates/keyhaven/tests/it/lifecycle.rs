//! The lifecycle through the manager's API: the decorator stack (audit, access control,
//! revocation, metering), rotation with logical keys, compromise response with emergency
//! rotation, and what the audit log shows of it.

use keyhaven::audit::{CallerContext, Filter, Outcome};
use keyhaven::compromise::{CompromiseType, Severity};
use keyhaven::{
    Algorithm, BackendConfig, BackendKind, CoreError, Error, FixedPassphrase, KeyManager, SignInput,
};

fn manager(home: &std::path::Path, user: &str) -> KeyManager {
    KeyManager::open(home, FixedPassphrase::new("pw"))
        .unwrap()
        .with_caller(CallerContext::new(user))
}

#[test]
fn operations_are_audited_and_revocation_holds_across_managers() {
    let home = crate::private_tempdir();
    let m = manager(home.path(), "alice");
    m.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let key = m.generate(None, Algorithm::EcdsaP256, "svc").unwrap();
    m.sign(&key, b"one").unwrap();
    let records = keyhaven::audit::search(&m.audit().dir(), &Filter::default()).unwrap();
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.body, keyhaven::audit::Body::Event(e)
            if e.operation == "sign" && e.outcome == Outcome::Allowed && e.principal == "alice"
                && e.key_id.as_deref() == Some(key.id().as_str()))),
        "the signature is in the log"
    );
    // Another manager (as another process would) revokes the key: the first one refuses it.
    let other = manager(home.path(), "security");
    let k2 = other.resolve("svc").unwrap();
    let statement = other
        .revocations()
        .revoke(&k2, "key leaked", true, None)
        .unwrap();
    assert!(statement.compromised);
    let e = m.sign(&key, b"two").unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Backend { source, .. } if source.is(keyhaven::ErrorKind::Revoked)
        ),
        "{e}"
    );
    assert_eq!(
        m.rotation().version_info(&key).unwrap().state,
        "compromised"
    );
    // The list verifies against the authority key.
    let list = m.revocations().export().unwrap();
    let verified = list
        .verify(&m.audit().authority_public_key().unwrap())
        .unwrap();
    assert!(verified.refuses(key.public_key(), None).is_some());
    assert!(m.audit().verify().unwrap().is_ok());
}

#[test]
fn rotation_through_the_manager_keeps_one_logical_key() {
    let home = crate::private_tempdir();
    let m = manager(home.path(), "ops");
    m.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let v1 = m.generate(None, Algorithm::Ed25519, "doc").unwrap();
    let old_sig = m.sign(&v1, b"m").unwrap();
    let out = m.rotation().rotate_key(&v1, "test").unwrap();
    assert_eq!((out.old_version, out.new_version), (Some(1), 2));
    // The logical key (named by v1) signs with v2 now; both verify through it.
    let new_sig = m.sign(&v1, b"m").unwrap();
    keyhaven::verify(&out.new_key.public_key, b"m", &new_sig).unwrap();
    let (n, _) = m
        .rotation()
        .verify_versions(&v1, SignInput::Message(b"m"), &old_sig, false)
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    let (n, k) = m
        .rotation()
        .verify_versions(&v1, SignInput::Message(b"m"), &new_sig, false)
        .unwrap()
        .unwrap();
    assert_eq!((n, k.id()), (2, &out.new_key.id));
    assert_eq!(m.rotation().version_info(&v1).unwrap().state, "verify-only");
    // An emergency response rotates again, after marking the reported version compromised.
    let v2 = m.resolve(out.new_key.id.as_str()).unwrap();
    let report = m
        .compromise()
        .report(
            &v2,
            CompromiseType::Confirmed,
            Severity::Critical,
            &["test".into()],
            None,
        )
        .unwrap();
    let resp = m.compromise().respond(&report.id, None).unwrap();
    let actions: Vec<_> = resp
        .report
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.ok))
        .collect();
    assert!(
        actions.contains(&("revoke", true)) && actions.contains(&("rotate", true)),
        "{actions:?}"
    );
    assert_eq!(m.rotation().version_info(&v2).unwrap().state, "compromised");
    let history = m.rotation().logical_key(&v1).unwrap().unwrap();
    let states: Vec<_> = history
        .versions()
        .iter()
        .map(|v| v.state().name())
        .collect();
    assert_eq!(states, ["verify-only", "compromised", "primary"]);
    // A signature by the compromised v2 no longer verifies through the logical key.
    assert!(
        m.rotation()
            .verify_versions(&v1, SignInput::Message(b"m"), &new_sig, true)
            .is_err()
    );
}

#[test]
fn access_rules_apply_to_the_callers_of_the_manager() {
    let home = crate::private_tempdir();
    std::fs::write(
        home.path().join("access.toml"),
        "[default]\ngenerate = { principals = [\"admin\"] }\nsign = { roles = [\"signer\"] }\n",
    )
    .unwrap();
    {
        let m = manager(home.path(), "admin");
        m.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
            .unwrap();
        m.update_config(|c| {
            c.access.policy = Some("access.toml".into());
            Ok(())
        })
        .unwrap();
    }
    let admin = manager(home.path(), "admin");
    let key = admin.generate(None, Algorithm::EcdsaP384, "k").unwrap();
    assert!(matches!(
        admin.sign(&key, b"x").unwrap_err(),
        Error::Backend {
            source: CoreError::PermissionDenied(_),
            ..
        }
    ));
    let signer = KeyManager::open(home.path(), FixedPassphrase::new("pw"))
        .unwrap()
        .with_caller(CallerContext::new("ci").role("signer"));
    signer.sign(&key, b"x").unwrap();
    let denied = keyhaven::audit::search(
        &admin.audit().dir(),
        &Filter {
            outcome: Some(Outcome::Denied),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(denied.len(), 1);
}

#[test]
fn a_configured_authority_signs_from_its_own_backend_and_revoked_keys_stay_out() {
    let home = crate::private_tempdir();
    let m = manager(home.path(), "ops");
    m.add_backend("b", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let auth = m.generate(None, Algorithm::EcdsaP384, "auth").unwrap();
    m.update_config(|c| {
        c.audit.authority = Some("b:auth".into());
        c.audit.checkpoint_every = Some(2);
        Ok(())
    })
    .unwrap();
    drop(m);
    // A fresh manager: its backend's audit layer needs the authority, which lives in that very
    // backend (opened apart, so nothing waits on itself).
    let m = manager(home.path(), "ops");
    let key = m.generate(None, Algorithm::Ed25519, "k").unwrap();
    for _ in 0..4 {
        m.sign(&key, b"x").unwrap();
    }
    assert_eq!(
        m.audit().authority_public_key().unwrap(),
        auth.info.public_key
    );
    let report = m.audit().verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert!(report.checkpoints >= 2, "{report:?}");

    // Revoked key material never comes back: not in a whole-home backup, not by restore.
    let before = m.backups().collect(Some(&["k".to_owned()])).unwrap();
    m.revocations().revoke(&key, "lost", true, None).unwrap();
    let all = m.backups().collect(None).unwrap();
    assert!(
        all.iter().all(|e| e.id != *key.id()),
        "revoked keys are left out"
    );
    let e = m
        .backups()
        .restore(&before, None, keyhaven::backup::OnConflict::Rename)
        .unwrap_err();
    assert!(matches!(&e, Error::Core(CoreError::Revoked(_))), "{e}");
}
