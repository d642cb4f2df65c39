//! The version state machine: unit cases and property tests over random operation sequences.

use keyhaven_core::{Algorithm, KeyId, KeyInfo, Protection, PublicKey};
use keyhaven_rotation::{EventKind, LogicalKey, Role, RotationError, SecurityLevel, VersionState};
use proptest::prelude::*;

use crate::{DAY, T0};

fn info(n: u8) -> KeyInfo {
    KeyInfo::new(
        KeyId::generate().unwrap(),
        format!("k{n}"),
        Protection::SoftwarePlain,
        PublicKey::new(Algorithm::Ed25519, vec![0x30, n]),
        T0,
    )
}

fn key() -> LogicalKey {
    LogicalKey::adopt("main", &info(0), Role::Signing, T0)
}

#[test]
fn rotation_demotes_the_old_primary() {
    let mut k = key();
    assert_eq!(k.version_for_signing().unwrap().number(), 1);
    let v = k
        .promote_new_version(&info(1), T0 + DAY, T0 + 8 * DAY, "test")
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(k.primary().unwrap().number(), 2);
    assert_eq!(
        k.version(1).unwrap().state(),
        VersionState::VerifyOnly {
            until: T0 + 8 * DAY
        }
    );
    assert!(matches!(
        k.check_can_sign(1),
        Err(RotationError::NotPrimary { .. })
    ));
    assert!(k.can_verify(1, T0 + 8 * DAY - 1, false));
    assert!(!k.can_verify(1, T0 + 8 * DAY, false));
    assert!(k.can_verify(1, T0 + 8 * DAY, true));
    assert_eq!(k.expire(T0 + 8 * DAY), vec![1]);
    assert_eq!(k.version(1).unwrap().state(), VersionState::Retired);
    k.check_invariants().unwrap();
}

#[test]
fn security_levels_are_kept_recorded_and_read_from_older_files() {
    let k = key();
    assert_eq!(k.level(), SecurityLevel::Standard);
    // A standard key's file says nothing of levels: files written before levels existed read
    // the same, and a key written now is read by them.
    let json = serde_json::to_string(&k).unwrap();
    assert!(!json.contains("level"), "{json}");
    assert_eq!(serde_json::from_str::<LogicalKey>(&json).unwrap(), k);

    // Set at registration: part of the adoption, not a change.
    let high = key().with_level(SecurityLevel::High);
    assert_eq!(high.level(), SecurityLevel::High);
    assert_eq!(high.history().len(), 1);
    assert!(high.history()[0].detail.ends_with("security level high"));
    let json = serde_json::to_string(&high).unwrap();
    assert!(json.contains(r#""level":"high""#), "{json}");
    assert_eq!(serde_json::from_str::<LogicalKey>(&json).unwrap(), high);

    // Changed later: recorded with from, to and why; setting the same level records nothing.
    let mut k = high;
    k.set_level(SecurityLevel::High, T0 + DAY, "again");
    assert_eq!(k.history().len(), 1);
    k.set_level(SecurityLevel::Critical, T0 + DAY, "signs releases now");
    let e = k.history().last().unwrap();
    assert_eq!(e.kind, EventKind::LevelChanged);
    assert_eq!(
        (e.from.as_deref(), e.to.as_deref(), e.detail.as_str()),
        (Some("high"), Some("critical"), "signs releases now")
    );
    // An unknown level in a file is refused, not read as standard.
    let bad = serde_json::to_string(&k)
        .unwrap()
        .replace(r#""critical""#, r#""secret""#);
    assert!(serde_json::from_str::<LogicalKey>(&bad).is_err());
}

#[test]
fn terminal_states_are_final() {
    let mut k = key();
    k.revoke(1, T0, "lost").unwrap();
    assert!(k.primary().is_none());
    assert!(matches!(
        k.version_for_signing(),
        Err(RotationError::NoPrimary(_))
    ));
    for r in [
        k.clone().revoke(1, T0, "again"),
        k.clone().compromise(1, T0, "worse"),
        k.clone().retire(1, T0, "x"),
    ] {
        assert!(
            matches!(r, Err(RotationError::InvalidTransition { .. })),
            "{r:?}"
        );
    }
    // material may be destroyed once; the state stays revoked
    k.destroy(1, T0, "wipe").unwrap();
    assert_eq!(k.version(1).unwrap().state(), VersionState::Revoked);
    assert!(k.version(1).unwrap().material_destroyed());
    assert!(k.destroy(1, T0, "wipe").is_err());
    assert!(!k.can_verify(1, T0, true));
    // a new primary can still be made after revocation
    k.promote_new_version(&info(2), T0, T0 + DAY, "replace")
        .unwrap();
    assert_eq!(k.version(1).unwrap().state(), VersionState::Revoked);
}

#[test]
fn destroy_needs_retirement_and_wrong_algorithms_are_refused() {
    let mut k = key();
    assert!(
        k.destroy(1, T0, "x").is_err(),
        "primary cannot be destroyed"
    );
    k.promote_new_version(&info(1), T0, T0 + DAY, "r").unwrap();
    assert!(
        k.destroy(1, T0, "x").is_err(),
        "verify-only must be retired first"
    );
    k.retire(1, T0, "early").unwrap();
    k.destroy(1, T0, "x").unwrap();
    assert!(k.version(1).unwrap().material_destroyed());
    let x = KeyInfo::new(
        KeyId::generate().unwrap(),
        "x".into(),
        Protection::SoftwarePlain,
        PublicKey::new(Algorithm::X25519, vec![1]),
        T0,
    );
    assert!(k.promote_new_version(&x, T0, T0, "wrong alg").is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Rotate { window: u64 },
    Advance(u64),
    Expire,
    Retire(u32),
    Destroy(u32),
    Revoke(u32),
    Compromise(u32),
    Usage(u32, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..5 * DAY).prop_map(|window| Op::Rotate { window }),
        (0u64..3 * DAY).prop_map(Op::Advance),
        Just(Op::Expire),
        (1u32..8).prop_map(Op::Retire),
        (1u32..8).prop_map(Op::Destroy),
        (1u32..8).prop_map(Op::Revoke),
        (1u32..8).prop_map(Op::Compromise),
        ((1u32..8), (0u64..1000)).prop_map(|(v, n)| Op::Usage(v, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_over_random_operations(ops in proptest::collection::vec(op(), 1..40)) {
        let mut k = key();
        let mut now = T0;
        let mut n = 1u8;
        for op in ops {
            let before = k.clone();
            let result = match op {
                Op::Rotate { window } => {
                    n = n.wrapping_add(1);
                    k.promote_new_version(&info(n), now, now + window, "p").map(|_| ())
                }
                Op::Advance(d) => { now += d; Ok(()) }
                Op::Expire => { k.expire(now); Ok(()) }
                Op::Retire(v) => k.retire(v, now, "p"),
                Op::Destroy(v) => k.destroy(v, now, "p"),
                Op::Revoke(v) => k.revoke(v, now, "p"),
                Op::Compromise(v) => k.compromise(v, now, "p"),
                Op::Usage(v, c) => {
                    if let Some(id) = k.version(v).map(|x| x.key_id().clone()) {
                        k.record_usage(&id, c);
                    }
                    Ok(())
                }
            };
            if result.is_err() {
                prop_assert_eq!(&k, &before, "a refused transition changed nothing");
            }
            k.check_invariants().unwrap();
            let primaries = k.versions().iter().filter(|v| v.state() == VersionState::Primary).count();
            prop_assert!(primaries <= 1);
            for (old, new) in before.versions().iter().zip(k.versions()) {
                // nothing leaves a terminal state; destroyed material stays destroyed
                if old.state().is_terminal() {
                    prop_assert_eq!(old.state(), new.state());
                }
                prop_assert!(!old.material_destroyed() || new.material_destroyed());
                // usage never goes backwards
                prop_assert!(new.usage() >= old.usage());
                // only the primary signs
                prop_assert_eq!(k.check_can_sign(new.number()).is_ok(), new.state() == VersionState::Primary);
                // destroyed only from retired (or material of revoked/compromised)
                if new.state() == VersionState::Destroyed && old.state() != VersionState::Destroyed {
                    prop_assert_eq!(old.state(), VersionState::Retired);
                }
                // no version ever becomes primary again
                if old.state() != VersionState::Primary {
                    prop_assert!(new.state() != VersionState::Primary);
                }
                if matches!(new.state(), VersionState::Destroyed | VersionState::Revoked | VersionState::Compromised) {
                    prop_assert!(!k.can_verify(new.number(), now, true));
                }
            }
            let json = serde_json::to_string(&k).unwrap();
            prop_assert_eq!(serde_json::from_str::<LogicalKey>(&json).unwrap(), k.clone());
        }
    }
}
