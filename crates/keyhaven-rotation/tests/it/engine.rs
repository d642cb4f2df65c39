//! Rotations with an injected clock: age, usage, windows, actions, failures, concurrency,
//! the registry.

use keyhaven_core::ErrorKind;
use std::sync::Arc;

use keyhaven_core::{Algorithm, Error, KeyStore};
use keyhaven_rotation::{
    DueAction, DueReason, EventKind, ManualClock, MeteredStore, PolicySet, Registry, Role,
    RotationError, UsageMeter, VersionState, verify_chain,
};

use crate::{DAY, adopt, engine_at, fixture, fixture_with};
use keyhaven_testkit::FaultyStore;

const POLICY: &str = r#"
[defaults.signing]
max_age = "30d"
migration_window = "7d"
retire_after = "10d"
"#;

#[test]
fn rotates_on_age_and_old_versions_verify_only_within_the_window() {
    let f = fixture(POLICY);
    let id = adopt(&f, Algorithm::EcdsaP384, "web", Role::Signing);
    let v1 = f.engine.signing_key(&id).unwrap();
    let sig1 = f.store.sign(&v1, b"hello").unwrap();
    assert!(f.engine.evaluate().unwrap().is_empty());
    f.clock.advance(29 * DAY);
    assert!(f.engine.evaluate().unwrap().is_empty(), "not yet due");
    f.clock.advance(DAY);
    let due = f.engine.evaluate().unwrap();
    assert_eq!(due.len(), 1);
    assert!(
        matches!(due[0].reason, DueReason::Age { age, max_age } if age == 30 * DAY && max_age == 30 * DAY)
    );
    // dry run changes nothing
    let dry = f.engine.rotate_due(true).unwrap();
    assert!(matches!(dry[0].action, DueAction::WouldAct));
    assert_eq!(f.engine.signing_key(&id).unwrap(), v1);

    let out = f.engine.rotate_due(false).unwrap();
    let DueAction::Rotated(o) = &out[0].action else {
        panic!("{out:?}")
    };
    assert_eq!((o.old_version, o.new_version), (Some(1), 2));
    assert_eq!(o.new_key.label, "web.v2");
    assert_eq!(o.new_key.algorithm, Algorithm::EcdsaP384);
    assert!(
        o.proof.is_none(),
        "only identity keys get continuity proofs"
    );
    let v2 = f.engine.signing_key(&id).unwrap();
    assert_eq!(v2, o.new_key.id);
    // idempotent: nothing due right after
    assert!(f.engine.rotate_due(false).unwrap().is_empty());

    let sig2 = f.store.sign(&v2, b"hello").unwrap();
    assert_eq!(f.engine.verify(&id, b"hello", &sig2, false).unwrap(), 2);
    assert_eq!(
        f.engine.verify("web.v2", b"hello", &sig1, false).unwrap(),
        1
    );
    assert!(f.engine.verify(&id, b"other", &sig1, false).is_err());
    f.clock.advance(7 * DAY);
    let e = f.engine.verify(&id, b"hello", &sig1, false).unwrap_err();
    assert!(matches!(e, RotationError::Core(Error::BadSignature)), "{e}");
    assert_eq!(f.engine.verify(&id, b"hello", &sig1, true).unwrap(), 1);

    // the window's end is due; acting on it retires v1
    let due = f.engine.evaluate().unwrap();
    assert!(
        due.iter()
            .any(|d| matches!(d.reason, DueReason::WindowEnded { version: 1, .. }))
    );
    assert_eq!(f.engine.advance().unwrap(), vec![(id.clone(), vec![1])]);
    let key = f.engine.registry().get(&id).unwrap();
    assert_eq!(key.version(1).unwrap().state(), VersionState::Retired);

    // retire_after later it may be destroyed: reported by rotate_due, done by destroy_retired
    f.clock.advance(10 * DAY);
    let out = f.engine.rotate_due(false).unwrap();
    assert!(out.iter().any(
        |o| matches!(o.due.reason, DueReason::Destroyable { version: 1, .. })
            && matches!(o.action, DueAction::Skipped(_))
    ));
    assert_eq!(f.engine.destroy_retired().unwrap(), vec![(id.clone(), 1)]);
    assert!(f.store.get(&v1).is_err(), "key material deleted");
    assert!(f.engine.verify(&id, b"hello", &sig1, true).is_err());

    let kinds: Vec<EventKind> = f
        .engine
        .history(&id)
        .unwrap()
        .iter()
        .map(|h| h.kind)
        .collect();
    assert_eq!(kinds[0], EventKind::Adopted);
    assert!(kinds.contains(&EventKind::RotationStarted));
    assert!(kinds.contains(&EventKind::Created));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::StateChanged)
            .count(),
        3,
        "primary->verify-only, ->retired, ->destroyed"
    );
}

#[test]
fn rotates_on_usage_count() {
    let tmp = tempfile::tempdir().unwrap();
    let meter = Arc::new(UsageMeter::open(&tmp.path().join("usage"), 4).unwrap());
    let bare = Arc::new(keyhaven_store_memory::MemoryStore::new().unwrap());
    let store: Arc<dyn KeyStore> = Arc::new(MeteredStore::new(bare, meter.clone()));
    let mut f = fixture_with(
        "[[policy]]\nname = \"hot\"\nrole = \"signing\"\nmax_usage = 10\nmigration_window = \"1h\"\n",
        store,
    );
    f.engine = engine_at(f._tmp.path(), "[[policy]]\nname = \"hot\"\nrole = \"signing\"\nmax_usage = 10\nmigration_window = \"1h\"\n", f.store.clone(), f.clock.clone())
        .with_meter(meter.clone());
    let id = adopt(&f, Algorithm::Ed25519, "api", Role::Signing);
    let k = f.engine.signing_key(&id).unwrap();
    for _ in 0..9 {
        f.store.sign(&k, b"x").unwrap();
    }
    assert!(f.engine.evaluate().unwrap().is_empty());
    f.store.sign(&k, b"x").unwrap();
    let due = f.engine.evaluate().unwrap();
    assert!(
        matches!(
            due[0].reason,
            DueReason::Usage {
                used: 10,
                max_usage: 10
            }
        ),
        "{due:?}"
    );
    f.engine.rotate_due(false).unwrap();
    let k2 = f.engine.signing_key(&id).unwrap();
    assert_ne!(k, k2);
    assert_eq!(meter.usage(&k2).unwrap(), 0);
    assert!(f.engine.evaluate().unwrap().is_empty());
}

#[test]
fn actions_get_the_rotation_in_their_environment_and_a_failing_pre_action_cancels() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("post.env");
    let policy = format!(
        "[defaults.signing]\nmigration_window = \"1d\"\npost_rotate = [\"sh\", \"-c\", \"env | grep ^KEYHAVEN_ > {}\"]\n\
         [[policy]]\nname = \"gated\"\nrole = \"signing\"\nalgorithm = \"p256\"\npre_rotate = [\"sh\", \"-c\", \"echo denied by approver >&2; exit 3\"]\n",
        log.display()
    );
    let f = fixture(&policy);
    let id = adopt(&f, Algorithm::EcdsaP384, "ok", Role::Signing);
    let out = f.engine.rotate(&id, "manual").unwrap();
    assert!(out.post_action_error.is_none());
    let env = std::fs::read_to_string(&log).unwrap();
    let old = f
        .engine
        .registry()
        .get(&id)
        .unwrap()
        .version(1)
        .unwrap()
        .fingerprint()
        .to_owned();
    for want in [
        format!("KEYHAVEN_KEY_ID={id}"),
        format!("KEYHAVEN_OLD_FINGERPRINT={old}"),
        format!(
            "KEYHAVEN_NEW_FINGERPRINT={}",
            out.new_key.fingerprint().to_hex()
        ),
        "KEYHAVEN_NEW_VERSION=2".into(),
        "KEYHAVEN_OLD_VERSION=1".into(),
        "KEYHAVEN_ROTATION_PHASE=post".into(),
    ] {
        assert!(env.contains(&want), "{want} missing from {env}");
    }

    let gated = adopt(&f, Algorithm::EcdsaP256, "gated", Role::Signing);
    let before = f.store.list().unwrap().len();
    let e = f.engine.rotate(&gated, "manual").unwrap_err();
    assert!(
        matches!(e, RotationError::PreActionFailed { old_version: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("denied by approver"), "{e}");
    assert_eq!(
        f.store.list().unwrap().len(),
        before,
        "the new key was deleted"
    );
    let key = f.engine.registry().get(&gated).unwrap();
    assert_eq!(key.primary().unwrap().number(), 1);
    assert_eq!(key.versions().len(), 1);
    assert!(key.pending().is_none());
    assert_eq!(
        key.history().last().unwrap().kind,
        EventKind::RotationFailed
    );
}

#[test]
fn a_failing_post_action_is_reported_and_the_rotation_stands() {
    let f = fixture("[defaults.signing]\npost_rotate = [\"false\"]\n");
    let id = adopt(&f, Algorithm::Ed25519, "p", Role::Signing);
    let out = f.engine.rotate(&id, "manual").unwrap();
    assert!(out.post_action_error.unwrap().contains("false"));
    assert_eq!(
        f.engine
            .registry()
            .get(&id)
            .unwrap()
            .primary()
            .unwrap()
            .number(),
        2
    );
    assert_eq!(
        f.engine.history(&id).unwrap().last().unwrap().kind,
        EventKind::ActionFailed
    );
}

#[test]
fn a_pre_action_that_hangs_is_killed_after_its_timeout() {
    let f = fixture(
        "[defaults.signing]\npre_rotate = [\"sleep\", \"30\"]\naction_timeout = \"300ms\"\n",
    );
    let id = adopt(&f, Algorithm::Ed25519, "slow", Role::Signing);
    let t = std::time::Instant::now();
    let e = f.engine.rotate(&id, "manual").unwrap_err().to_string();
    assert!(e.contains("did not finish"), "{e}");
    assert!(t.elapsed().as_secs() < 10);
    assert_eq!(f.engine.registry().get(&id).unwrap().versions().len(), 1);
}

#[test]
fn a_backend_that_is_gone_leaves_the_old_version_primary() {
    let flaky = Arc::new(FaultyStore::new(
        keyhaven_store_memory::MemoryStore::new().unwrap(),
    ));
    let f = fixture_with(POLICY, flaky.clone());
    let id = adopt(&f, Algorithm::EcdsaP256, "hsm", Role::Signing);
    flaky.set_gone(true);
    let e = f.engine.rotate(&id, "manual").unwrap_err();
    assert!(
        matches!(e, RotationError::RotationFailed { old_version: 1, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("token not present") && e.to_string().contains("stays primary"),
        "{e}"
    );
    let core: Error = e.into();
    assert!(matches!(&core, e if e.is(ErrorKind::Unavailable)), "{core}");
    let key = f.engine.registry().get(&id).unwrap();
    assert_eq!(key.primary().unwrap().number(), 1);
    assert!(key.pending().is_none());
    // rotate_due reports the failure per key and keeps going
    f.clock.advance(31 * DAY);
    let out = f.engine.rotate_due(false).unwrap();
    assert!(matches!(&out[0].action, DueAction::Failed(m) if m.contains("stays primary")));
    flaky.set_gone(false);
    assert_eq!(f.engine.rotate(&id, "token back").unwrap().new_version, 2);
}

#[test]
fn identity_rotations_make_a_verifiable_chain() {
    let f = fixture("[defaults.identity]\nmax_age = \"365d\"\nmigration_window = \"30d\"\n");
    let id = adopt(&f, Algorithm::Ed25519, "me", Role::Identity);
    let first = f
        .store
        .get(&f.engine.signing_key(&id).unwrap())
        .unwrap()
        .public_key;
    for _ in 0..3 {
        f.clock.advance(400 * DAY);
        let out = f.engine.rotate_due(false).unwrap();
        let DueAction::Rotated(o) = &out[0].action else {
            panic!("{out:?}")
        };
        assert!(o.proof.is_some());
    }
    let chain = f.engine.continuity_chain(&id).unwrap();
    assert_eq!(chain.len(), 3);
    let current = verify_chain(&first, &chain).unwrap();
    let primary = f
        .store
        .get(&f.engine.signing_key(&id).unwrap())
        .unwrap()
        .public_key;
    assert_eq!(current, primary);
}

#[test]
fn revoked_and_compromised_versions_never_verify() {
    let f = fixture(POLICY);
    let id = adopt(&f, Algorithm::EcdsaP256, "r", Role::Signing);
    let v1 = f.engine.signing_key(&id).unwrap();
    let sig = f.store.sign(&v1, b"m").unwrap();
    f.engine.rotate(&id, "r").unwrap();
    f.engine.revoke(&id, 1, true, "leaked").unwrap();
    assert!(f.engine.verify(&id, b"m", &sig, true).is_err());
    let e = f.engine.revoke(&id, 1, false, "again").unwrap_err();
    assert!(matches!(e, RotationError::InvalidTransition { .. }), "{e}");
    f.engine.revoke(&id, 2, false, "retire the key").unwrap();
    assert!(matches!(
        f.engine.signing_key(&id),
        Err(RotationError::NoPrimary(_))
    ));
    // a rotation makes a fresh primary; revoked versions stay revoked
    f.engine.rotate(&id, "replace").unwrap();
    let key = f.engine.registry().get(&id).unwrap();
    assert_eq!(key.version(1).unwrap().state(), VersionState::Compromised);
    assert_eq!(key.version(2).unwrap().state(), VersionState::Revoked);
    assert_eq!(key.primary().unwrap().number(), 3);
    f.engine.destroy_version(&id, 1, "wipe").unwrap();
    assert!(f.store.get(&v1).is_err());
}

#[test]
fn concurrent_rotate_due_runs_rotate_once() {
    let f = fixture(POLICY);
    let ids: Vec<String> = (0..4)
        .map(|i| adopt(&f, Algorithm::Ed25519, &format!("c{i}"), Role::Signing))
        .collect();
    f.clock.advance(40 * DAY);
    let engines: Vec<_> = (0..4)
        .map(|_| {
            Arc::new(engine_at(
                f._tmp.path(),
                POLICY,
                f.store.clone(),
                f.clock.clone(),
            ))
        })
        .collect();
    let handles: Vec<_> = engines
        .into_iter()
        .map(|e| std::thread::spawn(move || e.rotate_due(false).unwrap()))
        .collect();
    let rotated: usize = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap()
                .iter()
                .filter(|o| matches!(o.action, DueAction::Rotated(_)))
                .count()
        })
        .sum();
    assert_eq!(rotated, ids.len());
    for id in &ids {
        assert_eq!(f.engine.registry().get(id).unwrap().versions().len(), 2);
    }
}

#[test]
fn the_registry_finds_keys_and_reports_damaged_files_by_name() {
    let f = fixture(POLICY);
    let a = adopt(&f, Algorithm::Ed25519, "alpha", Role::Signing);
    let b = adopt(&f, Algorithm::Ed25519, "beta", Role::Signing);
    let reg = f.engine.registry();
    // adopting again is a no-op
    assert_eq!(f.engine.adopt("main", "alpha", None).unwrap().id(), a);
    let out = f.engine.rotate(&a, "r").unwrap();
    assert_eq!(reg.find("alpha").unwrap().id(), a);
    assert_eq!(reg.find("alpha.v2").unwrap().id(), a);
    assert_eq!(reg.find(out.new_key.id.as_str()).unwrap().id(), a);
    assert_eq!(f.engine.adopt("main", "alpha.v2", None).unwrap().id(), a);
    assert!(matches!(reg.find("gamma"), Err(RotationError::NotFound(_))));
    let path = reg.path().join("keys").join(format!("{b}.json"));
    std::fs::write(&path, "{ not json").unwrap();
    let problems = reg.check().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().contains(&format!("{b}.json")),
        "{}",
        problems[0]
    );
    assert_eq!(
        reg.list().unwrap().len(),
        1,
        "the damaged file does not hide the other key"
    );
    assert!(matches!(reg.get(&b), Err(RotationError::Corrupt { .. })));
    // a registry whose directory is open to others is refused
    let loose = f._tmp.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(Registry::open(&loose).is_err());
    let _ = ManualClock::new(0);
}

/// A store whose keys report device options (as a TPM's do), and which records the spec each
/// new key is asked for.
struct DeviceLike {
    inner: keyhaven_store_memory::MemoryStore,
    details: std::sync::Mutex<keyhaven_core::KeyDetails>,
    asked: std::sync::Mutex<Vec<String>>,
}

impl KeyStore for DeviceLike {
    keyhaven_core::forward_key_store!(inner; info, generate, list, get, find_by_label, resolve,
        public_key, sign, sign_digest, agree, delete, check);

    fn details(
        &self,
        id: &keyhaven_core::KeyId,
    ) -> keyhaven_core::Result<keyhaven_core::KeyDetails> {
        self.inner.get(id)?;
        Ok(self.details.lock().unwrap().clone())
    }

    fn generate_with(
        &self,
        spec: &keyhaven_core::KeySpec,
    ) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
        self.asked.lock().unwrap().push(spec.options.describe());
        self.inner.generate(spec.algorithm, &spec.label)
    }
}

#[test]
fn a_rotation_carries_device_options_over_and_refuses_what_it_cannot_choose() {
    let store = Arc::new(DeviceLike {
        inner: keyhaven_store_memory::MemoryStore::new().unwrap(),
        details: std::sync::Mutex::new(keyhaven_core::KeyDetails::default()),
        asked: std::sync::Mutex::new(Vec::new()),
    });
    let f = fixture_with(POLICY, store.clone());
    let id = adopt(&f, Algorithm::EcdsaP256, "sealed", Role::Signing);
    // bound to PCRs: the new version is asked for the same policy, not made without it
    store.details.lock().unwrap().pcr_policy = Some("sha256:0,7".into());
    assert_eq!(f.engine.rotate(&id, "yearly").unwrap().new_version, 2);
    assert_eq!(store.asked.lock().unwrap().as_slice(), ["pcr-policy"]);
    // a key with its own passphrase, or at a persistent handle: refused, v2 stays primary
    for (needs_auth, handle) in [(true, None), (false, Some("0x81000010".to_owned()))] {
        {
            let mut d = store.details.lock().unwrap();
            d.needs_auth = needs_auth;
            d.persistent_handle = handle;
        }
        let e = f.engine.rotate(&id, "again").unwrap_err();
        let core: Error = e.into();
        assert_eq!(core.kind(), ErrorKind::Unsupported, "{core}");
        assert!(core.to_string().contains("by hand"), "{core}");
        assert_eq!(
            f.engine
                .registry()
                .get(&id)
                .unwrap()
                .primary()
                .unwrap()
                .number(),
            2
        );
    }
}

#[test]
fn a_notify_policy_reports_and_runs_its_action_and_a_disabled_one_rotates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("notified");
    let notify = format!(
        "[[policy]]\nname = \"watch\"\nroles = [\"signing\"]\nmax_age = \"30d\"\nmode = \"notify\"\npost_rotate = [\"/bin/sh\", \"-c\", \"echo $KEYHAVEN_ROTATION_PHASE >> {}\"]\n",
        marker.display()
    );
    let f = fixture(&notify);
    let id = adopt(&f, Algorithm::EcdsaP256, "watched", Role::Signing);
    f.clock.advance(31 * DAY);
    let out = f.engine.rotate_due(false).unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        matches!(&out[0].action, DueAction::Notified(m) if m.contains("not rotated")),
        "{:?}",
        out[0].action
    );
    let key = f.engine.registry().get(&id).unwrap();
    assert_eq!(key.versions().len(), 1, "nothing was rotated");
    assert!(
        key.history()
            .iter()
            .any(|h| h.detail.contains("mode is notify") && h.detail.contains("ran")),
        "{:?}",
        key.history()
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "notify");

    let f = fixture("[[policy]]\nname = \"off\"\nmax_age = \"30d\"\nmode = \"disabled\"\n");
    adopt(&f, Algorithm::EcdsaP256, "left", Role::Signing);
    f.clock.advance(400 * DAY);
    assert!(
        f.engine.evaluate().unwrap().is_empty(),
        "a disabled policy rotates nothing"
    );
    // an unknown mode is refused naming the field
    let e =
        PolicySet::from_toml_str("[[policy]]\nname = \"x\"\nmode = \"sometimes\"\n").unwrap_err();
    assert!(e.to_string().contains("policy 'x'.mode"), "{e}");
}
