//! The checks every [`Storage`] passes: the embedded store runs them in its tests, and any
//! other implementation must too. Each takes a fresh, empty store and panics (it is test code)
//! on the first behaviour that differs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use keyhaven_client::wire::{KeyStatus, Role};

use super::{KeyState, NewClient, NewKey, Revoked, Storage, StorageError, Superseded};

fn key(n: u8) -> NewKey {
    NewKey {
        fingerprint: format!("{n:02x}").repeat(32),
        algorithm: "ed25519".into(),
        spki: vec![n; 44],
    }
}

fn client(id: &str, name: &str, k: u8, at: u64) -> NewClient {
    NewClient {
        id: id.into(),
        name: name.into(),
        role: Role::Client,
        at,
        key: key(k),
    }
}

/// Runs every check, each on a store `fresh` makes.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn Storage>) {
    challenges_are_single_use_and_expire(fresh().as_ref());
    registration_keeps_clients_and_refuses_a_known_key(fresh().as_ref());
    nonces_are_accepted_once(fresh().as_ref());
    rotation_supersedes_and_revocation_sticks(fresh().as_ref());
    search_and_stats(fresh().as_ref());
    settings_round_trip(fresh().as_ref());
    transit_keys_version_and_stay_with_their_tenant(fresh().as_ref());
    secrets_version_list_and_delete_by_tenant(fresh().as_ref());
    token_revocations_stick(fresh().as_ref());
    policies_round_trip(fresh().as_ref());
    secret_fallbacks_follow_their_secret(fresh().as_ref());
}

/// A challenge is taken once, and not after it expired.
pub fn challenges_are_single_use_and_expire(s: &dyn Storage) {
    s.put_challenge("c1", 100).unwrap(); // ok: a conformance check fails by panicking
    s.put_challenge("c2", 100).unwrap(); // ok: a conformance check fails by panicking
    assert!(s.take_challenge("c1", 50).unwrap()); // ok: a conformance check fails by panicking
    assert!(!s.take_challenge("c1", 50).unwrap(), "used twice"); // ok: a conformance check fails by panicking
    assert!(!s.take_challenge("c2", 100).unwrap(), "taken at its expiry"); // ok: a conformance check fails by panicking
    assert!(
        !s.take_challenge("c2", 50).unwrap(), // ok: a conformance check fails by panicking
        "an expired take still uses it up"
    );
    assert!(!s.take_challenge("never", 0).unwrap()); // ok: a conformance check fails by panicking
    s.put_challenge("c3", 10).unwrap(); // ok: a conformance check fails by panicking
    assert!(s.prune(20).unwrap() >= 1); // ok: a conformance check fails by panicking
    assert!(!s.take_challenge("c3", 5).unwrap(), "pruned"); // ok: a conformance check fails by panicking
}

/// Clients and keys come back as registered; a key registers once, to one client.
pub fn registration_keeps_clients_and_refuses_a_known_key(s: &dyn Storage) {
    let c = s.register(&client("a1", "alpha", 1, 10)).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        (c.id.as_str(), c.name.as_str(), c.role),
        ("a1", "alpha", Role::Client)
    );
    assert_eq!(c.keys.len(), 1);
    let k = &c.keys[0];
    assert_eq!(k.fingerprint, key(1).fingerprint);
    assert_eq!(k.spki, key(1).spki);
    assert_eq!(k.state, KeyState::Active);
    assert_eq!(k.status_at(10), KeyStatus::Active);
    assert_eq!(s.key(&key(1).fingerprint).unwrap().unwrap(), *k); // ok: a conformance check fails by panicking
    assert_eq!(s.client("a1").unwrap().unwrap(), c); // ok: a conformance check fails by panicking
    assert!(s.client("nobody").unwrap().is_none()); // ok: a conformance check fails by panicking
    assert!(s.key(&key(9).fingerprint).unwrap().is_none()); // ok: a conformance check fails by panicking
    match s.register(&client("b2", "beta", 1, 11)) {
        Err(StorageError::KeyExists(fp)) => assert_eq!(fp, key(1).fingerprint),
        other => panic!("a known key registered again: {other:?}"),
    }
    assert!(
        s.client("b2").unwrap().is_none(), // ok: a conformance check fails by panicking
        "a refused registration leaves nothing"
    );
    let mut admin = client("c3", "root", 3, 12);
    admin.role = Role::Admin;
    s.register(&admin).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        s.key(&key(3).fingerprint).unwrap().unwrap().role, // ok: a conformance check fails by panicking
        Role::Admin
    );
}

/// A nonce is accepted once per key; another key may use the same one; it is kept until it
/// expires, and pruning forgets it some time after.
pub fn nonces_are_accepted_once(s: &dyn Storage) {
    assert!(s.use_nonce("k1", "n", 100).unwrap()); // ok: a conformance check fails by panicking
    assert!(!s.use_nonce("k1", "n", 100).unwrap(), "replayed"); // ok: a conformance check fails by panicking
    assert!(s.use_nonce("k2", "n", 100).unwrap(), "another key's nonce"); // ok: a conformance check fails by panicking
    s.prune(50).unwrap(); // ok: a conformance check fails by panicking
    assert!(
        !s.use_nonce("k1", "n", 100).unwrap(), // ok: a conformance check fails by panicking
        "kept until it expires"
    );
    // A store may keep a nonce a little longer than asked (a partition), never less.
    s.prune(1000).unwrap(); // ok: a conformance check fails by panicking
    assert!(
        s.use_nonce("k1", "n", 2000).unwrap(), // ok: a conformance check fails by panicking
        "forgotten once expired"
    );
}

/// A rotation adds the new key and gives the old one a window; revocations stick, first
/// reason kept; a key of another client cannot be superseded.
pub fn rotation_supersedes_and_revocation_sticks(s: &dyn Storage) {
    s.register(&client("a1", "alpha", 1, 10)).unwrap(); // ok: a conformance check fails by panicking
    s.register(&client("b2", "beta", 2, 10)).unwrap(); // ok: a conformance check fails by panicking
    let steps = [Superseded {
        old: key(1).fingerprint,
        until: 500,
    }];
    let c = s.rotate("a1", &steps, &key(4), 20).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.keys[0].state, KeyState::Rotating { until: 500 });
    assert_eq!(c.keys[0].status_at(499), KeyStatus::Rotating);
    assert_eq!(c.keys[0].status_at(500), KeyStatus::Retired);
    assert_eq!(c.keys[1].fingerprint, key(4).fingerprint);
    assert_eq!(c.keys[1].successor_of, Some(key(1).fingerprint));
    assert_eq!(c.keys[1].status_at(20), KeyStatus::Active);
    // A later rotation never extends a window already given; its first key anchors it.
    let again = [
        Superseded {
            old: key(4).fingerprint,
            until: 900,
        },
        Superseded {
            old: key(1).fingerprint,
            until: 900,
        },
    ];
    let c = s.rotate("a1", &again, &key(5), 30).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(c.keys[0].state, KeyState::Rotating { until: 500 });
    assert_eq!(c.keys[1].state, KeyState::Rotating { until: 900 });
    // An anchor no longer active (another rotation won) is refused.
    assert!(matches!(
        s.rotate("a1", &steps, &key(8), 35),
        Err(StorageError::NotActive(_))
    ));
    assert!(s.key(&key(8).fingerprint).unwrap().is_none()); // ok: a conformance check fails by panicking
    // Another client's key, or a key already registered, is refused and nothing changes.
    let theirs = [Superseded {
        old: key(2).fingerprint,
        until: 500,
    }];
    assert!(matches!(
        s.rotate("a1", &theirs, &key(6), 40),
        Err(StorageError::NoKey(_))
    ));
    assert_eq!(
        s.key(&key(2).fingerprint).unwrap().unwrap().state, // ok: a conformance check fails by panicking
        KeyState::Active
    );
    assert!(s.key(&key(6).fingerprint).unwrap().is_none()); // ok: a conformance check fails by panicking
    let from_active = [Superseded {
        old: key(5).fingerprint,
        until: 500,
    }];
    assert!(matches!(
        s.rotate("a1", &from_active, &key(2), 40),
        Err(StorageError::KeyExists(_))
    ));
    assert_eq!(
        s.key(&key(5).fingerprint).unwrap().unwrap().state, // ok: a conformance check fails by panicking
        KeyState::Active,
        "a refused rotation changes nothing"
    );

    assert_eq!(
        s.revoke(&key(4).fingerprint, 50, "lost", "self").unwrap(), // ok: a conformance check fails by panicking
        Revoked::Now
    );
    assert_eq!(
        s.revoke(&key(4).fingerprint, 60, "again", "admin:x")
            .unwrap(), // ok: a conformance check fails by panicking
        Revoked::Already
    );
    assert_eq!(
        s.revoke(&key(9).fingerprint, 60, "?", "self").unwrap(), // ok: a conformance check fails by panicking
        Revoked::Unknown
    );
    let r = s.key(&key(4).fingerprint).unwrap().unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        r.state,
        KeyState::Revoked {
            at: 50,
            reason: "lost".into(),
            by: "self".into()
        }
    );
    assert_eq!(r.status_at(50), KeyStatus::Revoked);
    // A revoked key is not brought back by a rotation naming it.
    let revived = [
        Superseded {
            old: key(5).fingerprint,
            until: 900,
        },
        Superseded {
            old: key(4).fingerprint,
            until: 900,
        },
    ];
    s.rotate("a1", &revived, &key(7), 70).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        s.key(&key(4).fingerprint).unwrap().unwrap().status_at(70), // ok: a conformance check fails by panicking
        KeyStatus::Revoked
    );
}

/// Search by name, id or fingerprint; LIKE wildcards in a query are literal; counts.
pub fn search_and_stats(s: &dyn Storage) {
    s.register(&client("a1", "Alpha_one", 1, 1000)).unwrap(); // ok: a conformance check fails by panicking
    s.register(&client("b2", "beta", 2, 8000)).unwrap(); // ok: a conformance check fails by panicking
    s.register(&client("c3", "gamma", 3, 9000)).unwrap(); // ok: a conformance check fails by panicking
    let names = |q: &str| {
        s.search(q, 100)
            .unwrap() // ok: a conformance check fails by panicking
            .into_iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(""), ["Alpha_one", "beta", "gamma"]);
    assert_eq!(names("ALPHA"), ["Alpha_one"]);
    assert_eq!(names("_"), ["Alpha_one"], "an underscore is literal");
    assert_eq!(
        names("%"),
        Vec::<String>::new(),
        "a percent sign is literal"
    );
    assert_eq!(names("b2"), ["beta"]);
    assert_eq!(names(&key(3).fingerprint[..20]), ["gamma"]);
    assert_eq!(s.search("", 2).unwrap().len(), 2); // ok: a conformance check fails by panicking
    s.revoke(&key(2).fingerprint, 9000, "r", "self").unwrap(); // ok: a conformance check fails by panicking
    let st = s.stats(9100).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(st.clients, 3);
    assert_eq!(st.active_keys, 2);
    assert_eq!(st.revoked_keys, 1);
    assert_eq!(st.registrations_last_hour, 2);
    assert_eq!(st.registrations_last_day, 3);
}

/// Settings are kept and replaced.
pub fn settings_round_trip(s: &dyn Storage) {
    assert_eq!(s.setting("x").unwrap(), None); // ok: a conformance check fails by panicking
    s.set_setting("x", "1").unwrap(); // ok: a conformance check fails by panicking
    s.set_setting("x", "2").unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(s.setting("x").unwrap().as_deref(), Some("2")); // ok: a conformance check fails by panicking
    s.ping().unwrap(); // ok: a conformance check fails by panicking
}

/// A transit key keeps its versions in order, a version is added only as the latest plus
/// one, and tenants never see each other's keys.
pub fn transit_keys_version_and_stay_with_their_tenant(s: &dyn Storage) {
    use std::collections::BTreeMap;

    use super::TransitKeyRecord;

    let record = TransitKeyRecord {
        name: "orders".into(),
        created_at: 100,
        min_decryption_version: 1,
        versions: BTreeMap::from([(1, (vec![1, 2, 3], 100))]),
    };
    assert!(s.transit_create("acme", &record).unwrap()); // ok: a conformance check fails by panicking
    assert!(
        !s.transit_create(
            "acme",
            &TransitKeyRecord {
                created_at: 5,
                ..record.clone()
            }
        )
        .unwrap(), // ok: a conformance check fails by panicking
        "a name is taken once per tenant"
    );
    assert_eq!(
        s.transit_key("acme", "orders").unwrap(), // ok: a conformance check fails by panicking
        Some(record.clone())
    ); // ok: a conformance check fails by panicking
    assert_eq!(
        s.transit_key("other", "orders").unwrap(), // ok: a conformance check fails by panicking
        None,
        "tenants are apart"
    ); // ok: a conformance check fails by panicking
    assert!(
        s.transit_create("other", &record).unwrap(), // ok: a conformance check fails by panicking
        "another tenant may use the name"
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.transit_add_version("acme", "orders", 3, &[9], 200)
            .unwrap(), // ok: a conformance check fails by panicking
        "a gap"
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.transit_add_version("acme", "orders", 1, &[9], 200)
            .unwrap(), // ok: a conformance check fails by panicking
        "a repeat"
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.transit_add_version("acme", "nothing", 2, &[9], 200)
            .unwrap(), // ok: a conformance check fails by panicking
        "no key"
    ); // ok: a conformance check fails by panicking
    assert!(
        s.transit_add_version("acme", "orders", 2, &[4, 5], 200)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.transit_add_version("acme", "orders", 2, &[6], 300)
            .unwrap(), // ok: a conformance check fails by panicking
        "the race's loser"
    ); // ok: a conformance check fails by panicking
    assert!(
        s.transit_set_min_decryption_version("acme", "orders", 2)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.transit_set_min_decryption_version("acme", "nothing", 2)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    let got = s.transit_key("acme", "orders").unwrap().unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(got.min_decryption_version, 2);
    assert_eq!(got.latest_version(), 2);
    assert_eq!(got.versions[&2], (vec![4, 5], 200));
    assert_eq!(got.versions[&1], (vec![1, 2, 3], 100));
    let other = s.transit_key("other", "orders").unwrap().unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        (other.latest_version(), other.min_decryption_version),
        (1, 1)
    );
    assert!(
        s.transit_create(
            "acme",
            &TransitKeyRecord {
                name: "a-first".into(),
                ..record
            }
        )
        .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert_eq!(s.transit_list("acme").unwrap(), ["a-first", "orders"]); // ok: a conformance check fails by panicking
    assert_eq!(s.transit_list("other").unwrap(), ["orders"]); // ok: a conformance check fails by panicking
    assert!(s.transit_list("nobody").unwrap().is_empty()); // ok: a conformance check fails by panicking
}

/// A secret's versions are written in order at one tier, replaced only from what they were,
/// listed by prefix and deleted whole; tenants stay apart; vouched tiers round-trip.
pub fn secrets_version_list_and_delete_by_tenant(s: &dyn Storage) {
    use super::{KeyTier, SecretMeta};

    let t1 = SecretMeta {
        tier: 1,
        min_tier: 1,
    };
    assert!(s.secret("acme", "db/password").unwrap().is_none()); // ok: a conformance check fails by panicking
    assert!(
        !s.secret_add_version("acme", "db/password", t1, 2, b"e2", 10)
            .unwrap(), // ok: a conformance check fails by panicking
        "a gap"
    ); // ok: a conformance check fails by panicking
    assert!(
        s.secret("acme", "db/password").unwrap().is_none(), // ok: a conformance check fails by panicking
        "a refused first write leaves nothing"
    ); // ok: a conformance check fails by panicking
    assert!(
        s.secret_add_version("acme", "db/password", t1, 1, b"e1", 10)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.secret_add_version("acme", "db/password", t1, 1, b"x", 11)
            .unwrap(), // ok: a conformance check fails by panicking
        "a repeat"
    ); // ok: a conformance check fails by panicking
    let t2 = SecretMeta {
        tier: 2,
        min_tier: 2,
    };
    assert!(
        !s.secret_add_version("acme", "db/password", t2, 2, b"x", 11)
            .unwrap(), // ok: a conformance check fails by panicking
        "another tier"
    ); // ok: a conformance check fails by panicking
    let narrower = SecretMeta {
        tier: 1,
        min_tier: 0,
    };
    assert!(
        s.secret_add_version("acme", "db/password", narrower, 2, b"e2", 20)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    let r = s.secret("acme", "db/password").unwrap().unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        (r.tier, r.min_tier, r.created_at, r.latest_version()),
        (1, 0, 10, 2)
    );
    assert_eq!(r.versions[&1], (b"e1".to_vec(), 10));
    assert!(
        s.secret("other", "db/password").unwrap().is_none(), // ok: a conformance check fails by panicking
        "tenants are apart"
    ); // ok: a conformance check fails by panicking
    assert!(
        !s.secret_replace("acme", "db/password", 1, b"not it", b"n1")
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert!(
        s.secret_replace("acme", "db/password", 1, b"e1", b"n1")
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert_eq!(
        s.secret("acme", "db/password").unwrap().unwrap().versions[&1].0, // ok: a conformance check fails by panicking
        b"n1"
    ); // ok: a conformance check fails by panicking
    assert!(
        s.secret_add_version("acme", "db/user", t2, 1, b"u", 30)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert!(
        s.secret_add_version("acme", "web/key", t1, 1, b"w", 30)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    assert!(
        s.secret_add_version("other", "db/x", t1, 1, b"o", 30)
            .unwrap() // ok: a conformance check fails by panicking
    ); // ok: a conformance check fails by panicking
    let listed = s.secret_list("acme", "db/", "", 10).unwrap(); // ok: a conformance check fails by panicking
    let paths: Vec<_> = listed
        .iter()
        .map(|x| (x.path.as_str(), x.latest_version, x.tier))
        .collect();
    assert_eq!(paths, [("db/password", 2, 1), ("db/user", 1, 2)]);
    assert_eq!(
        s.secret_list("acme", "", "", 1).unwrap().len(), // ok: a conformance check fails by panicking
        1,
        "the limit"
    );
    let next = s.secret_list("acme", "", "db/user", 10).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(
        next.iter().map(|x| x.path.as_str()).collect::<Vec<_>>(),
        ["web/key"],
        "after a cursor"
    ); // ok: a conformance check fails by panicking
    assert_eq!(
        s.secret_list("acme", "%", "", 10).unwrap().len(), // ok: a conformance check fails by panicking
        0,
        "a prefix is not a pattern"
    ); // ok: a conformance check fails by panicking
    assert!(s.secret_delete("acme", "db/password").unwrap()); // ok: a conformance check fails by panicking
    assert!(!s.secret_delete("acme", "db/password").unwrap()); // ok: a conformance check fails by panicking
    assert!(s.secret("acme", "db/password").unwrap().is_none()); // ok: a conformance check fails by panicking
    assert!(
        s.secret_add_version("acme", "db/password", t2, 1, b"again", 40)
            .unwrap(), // ok: a conformance check fails by panicking
        "made anew"
    ); // ok: a conformance check fails by panicking

    assert!(s.key_tier("aa").unwrap().is_none()); // ok: a conformance check fails by panicking
    let vouched = KeyTier {
        fingerprint: "aa".into(),
        tier: 2,
        vouched_by: "admin-1".into(),
        reason: "enrolled the token".into(),
        at: 50,
    };
    s.set_key_tier(&vouched).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(s.key_tier("aa").unwrap(), Some(vouched.clone())); // ok: a conformance check fails by panicking
    let lowered = KeyTier {
        tier: 1,
        at: 60,
        ..vouched
    };
    s.set_key_tier(&lowered).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(s.key_tier("aa").unwrap(), Some(lowered)); // ok: a conformance check fails by panicking
}

/// A revoked token id is found among others, and its first revocation stands.
pub fn token_revocations_stick(s: &dyn Storage) {
    use super::RevokedToken;

    let ids = ["aa".to_owned(), "bb".to_owned(), "cc".to_owned()];
    assert_eq!(s.revoked_token(&ids).unwrap(), None); // ok: a conformance check fails by panicking
    let first = RevokedToken {
        id: "bb".into(),
        tenant: "t".into(),
        revoked_by: "c1".into(),
        reason: "leaked".into(),
        at: 5,
    };
    assert!(s.revoke_token(&first).unwrap()); // ok: a conformance check fails by panicking
    let again = RevokedToken {
        reason: "again".into(),
        at: 9,
        ..first.clone()
    };
    assert!(!s.revoke_token(&again).unwrap(), "revoked once"); // ok: a conformance check fails by panicking
    assert_eq!(s.revoked_token(&ids).unwrap(), Some(first)); // ok: a conformance check fails by panicking
    assert_eq!(s.revoked_token(&["zz".to_owned()]).unwrap(), None); // ok: a conformance check fails by panicking
    assert_eq!(s.revoked_token(&[]).unwrap(), None); // ok: a conformance check fails by panicking
}

/// Policies are kept by prefix, replaced, listed by prefix and deleted.
pub fn policies_round_trip(s: &dyn Storage) {
    use super::PolicyRecord;

    assert!(s.policies().unwrap().is_empty()); // ok: a conformance check fails by panicking
    let root = PolicyRecord {
        prefix: String::new(),
        source: "package keyhaven.release".into(),
        updated_at: 1,
        updated_by: "a".into(),
    };
    let db = PolicyRecord {
        prefix: "db/".into(),
        ..root.clone()
    };
    s.put_policy(&db).unwrap(); // ok: a conformance check fails by panicking
    s.put_policy(&root).unwrap(); // ok: a conformance check fails by panicking
    let newer = PolicyRecord {
        source: "package keyhaven.release # 2".into(),
        updated_at: 2,
        ..db
    };
    s.put_policy(&newer).unwrap(); // ok: a conformance check fails by panicking
    assert_eq!(s.policies().unwrap(), [root, newer]); // ok: a conformance check fails by panicking
    assert!(s.delete_policy("db/").unwrap()); // ok: a conformance check fails by panicking
    assert!(!s.delete_policy("db/").unwrap()); // ok: a conformance check fails by panicking
    assert_eq!(s.policies().unwrap().len(), 1); // ok: a conformance check fails by panicking
}

/// A fallback is set only on a secret that exists, read back as set, replaced, removed, and
/// gone with its secret; another tenant's secret of the same path has none.
pub fn secret_fallbacks_follow_their_secret(s: &dyn Storage) {
    use super::{SecretFallback, SecretMeta};
    let meta = SecretMeta {
        tier: 1,
        min_tier: 2,
    };
    let f = SecretFallback {
        rights: r#"[{"operation":"transit.encrypt","prefix":"log"}]"#.into(),
        ttl: 300,
        declared_by: "aa".into(),
        at: 7,
    };
    assert!(
        !s.set_secret_fallback("acme", "db/root", Some(&f)).unwrap(), // ok: a conformance check fails by panicking
        "no such secret"
    );
    assert!(
        s.secret_add_version("acme", "db/root", meta, 1, b"e1", 5)
            .unwrap() // ok: a conformance check fails by panicking
    );
    assert!(
        s.secret_add_version("other", "db/root", meta, 1, b"e1", 5)
            .unwrap() // ok: a conformance check fails by panicking
    );
    assert_eq!(s.secret_fallback("acme", "db/root").unwrap(), None); // ok: a conformance check fails by panicking
    assert!(s.set_secret_fallback("acme", "db/root", Some(&f)).unwrap()); // ok: a conformance check fails by panicking
    assert_eq!(
        s.secret_fallback("acme", "db/root").unwrap(), // ok: a conformance check fails by panicking
        Some(f.clone())
    );
    assert_eq!(s.secret_fallback("other", "db/root").unwrap(), None); // ok: a conformance check fails by panicking
    let g = SecretFallback {
        ttl: 60,
        ..f.clone()
    };
    assert!(s.set_secret_fallback("acme", "db/root", Some(&g)).unwrap()); // ok: a conformance check fails by panicking
    assert_eq!(s.secret_fallback("acme", "db/root").unwrap(), Some(g)); // ok: a conformance check fails by panicking
    assert!(s.set_secret_fallback("acme", "db/root", None).unwrap()); // ok: a conformance check fails by panicking
    assert_eq!(s.secret_fallback("acme", "db/root").unwrap(), None); // ok: a conformance check fails by panicking
    assert!(s.set_secret_fallback("acme", "db/root", Some(&f)).unwrap()); // ok: a conformance check fails by panicking
    assert!(s.secret_delete("acme", "db/root").unwrap()); // ok: a conformance check fails by panicking
    assert_eq!(s.secret_fallback("acme", "db/root").unwrap(), None); // ok: a conformance check fails by panicking
    assert!(
        s.secret_add_version("acme", "db/root", meta, 1, b"e1", 9)
            .unwrap() // ok: a conformance check fails by panicking
    );
    assert_eq!(
        s.secret_fallback("acme", "db/root").unwrap(), // ok: a conformance check fails by panicking
        None,
        "a new secret of the path starts without"
    );
}
