//! Detection: each signal from synthetic audit records, no false alarm on normal use.

use keyhaven_audit::{Body, Event, Outcome, Record};
use keyhaven_compromise::{DetectionMethod, KeyStates, Severity, Thresholds, scan};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000;

/// A log being built: one event per call, times in seconds from `T0`.
#[derive(Default)]
pub struct Log {
    pub records: Vec<Record>,
}

impl Log {
    pub fn ev(&mut self, at: u64, who: &str, op: &str, key: &str, outcome: Outcome) -> &mut Event {
        let mut e = Event::new(who, op, "memory", outcome).key(key, None);
        e.host = "host-a".into();
        let seq = self.records.len() as u64;
        self.records.push(Record {
            v: 1,
            seq,
            prev: String::new(),
            time: String::new(),
            unix_nanos: (T0 + at) * 1_000_000_000,
            body: Body::Event(e),
        });
        match &mut self.records.last_mut().unwrap().body {
            Body::Event(e) => e,
            _ => unreachable!(),
        }
    }

    /// Normal use: `per_hour` signatures by alice each hour for `hours` hours, from `start`.
    pub fn steady(&mut self, key: &str, start: u64, hours: u64, per_hour: u64) {
        for h in 0..hours {
            for i in 0..per_hour {
                let at = start + h * 3600 + i * (3600 / per_hour.max(1));
                self.ev(at, "alice", "sign", key, Outcome::Intent);
                self.ev(at, "alice", "sign", key, Outcome::Allowed);
            }
        }
    }
}

fn methods(f: &[keyhaven_compromise::Finding]) -> Vec<DetectionMethod> {
    f.iter().map(|f| f.method).collect()
}

#[test]
fn normal_use_raises_nothing() {
    let mut log = Log::default();
    log.steady("k1", 0, 24, 20);
    log.steady("k2", 0, 24, 3);
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn use_of_a_revoked_key_is_critical_when_it_succeeded() {
    let mut log = Log::default();
    log.steady("k1", 0, 2, 5);
    log.ev(3 * 3600, "mallory", "sign", "k1", Outcome::Denied);
    let mut states = KeyStates::default();
    states.revoked.insert("k1".into(), T0 + 3 * 3600 - 10);
    let f = scan(&log.records, &states, &Thresholds::default());
    let r: Vec<_> = f
        .iter()
        .filter(|f| f.method == DetectionMethod::RevokedKeyUse)
        .collect();
    assert_eq!(r.len(), 1, "{f:#?}");
    assert_eq!(r[0].severity, Severity::High, "attempt only");
    assert_eq!(r[0].key_id.as_deref(), Some("k1"));
    // A use that succeeded (e.g. a process without the revocation check) is critical.
    log.ev(3 * 3600 + 5, "mallory", "sign", "k1", Outcome::Allowed);
    let f = scan(&log.records, &states, &Thresholds::default());
    let r = f
        .iter()
        .find(|f| f.method == DetectionMethod::RevokedKeyUse)
        .unwrap();
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(r.audit_seqs.len(), 2, "both records are evidence");
    // Retired versions are flagged at medium.
    let mut states = KeyStates::default();
    states.retired.insert("k1".into(), T0);
    let f = scan(&log.records, &states, &Thresholds::default());
    assert!(
        methods(&f).contains(&DetectionMethod::RetiredKeyUse),
        "{f:#?}"
    );
}

#[test]
fn a_signing_rate_far_above_the_keys_baseline_is_flagged() {
    let mut log = Log::default();
    log.steady("k1", 0, 5, 10);
    // Hour 6: 500 signatures (50x).
    for i in 0..500 {
        log.ev(6 * 3600 + i, "alice", "sign", "k1", Outcome::Allowed);
    }
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    let r: Vec<_> = f
        .iter()
        .filter(|f| f.method == DetectionMethod::RateAnomaly)
        .collect();
    assert_eq!(r.len(), 1, "{f:#?}");
    assert!(r[0].summary.contains("500 signatures"), "{}", r[0].summary);
    assert_eq!(r[0].audit_seqs.len(), 50, "evidence is capped");
    // Without enough history there is no baseline to judge against.
    let mut young = Log::default();
    for i in 0..500 {
        young.ev(i, "alice", "sign", "k1", Outcome::Allowed);
    }
    assert!(
        scan(
            &young.records,
            &KeyStates::default(),
            &Thresholds::default()
        )
        .is_empty()
    );
    // A higher factor tolerates it.
    let t = Thresholds {
        rate_factor: 100,
        ..Thresholds::default()
    };
    assert!(scan(&log.records, &KeyStates::default(), &t).is_empty());
}

#[test]
fn a_new_principal_or_host_is_flagged_once() {
    let mut log = Log::default();
    log.steady("k1", 0, 3, 10);
    log.ev(4 * 3600, "mallory", "sign", "k1", Outcome::Allowed);
    log.ev(4 * 3600 + 1, "mallory", "sign", "k1", Outcome::Allowed);
    log.ev(4 * 3600 + 2, "alice", "sign", "k1", Outcome::Allowed)
        .host = "evil-host".into();
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert_eq!(
        methods(&f),
        [DetectionMethod::NewPrincipal, DetectionMethod::NewHost],
        "{f:#?}"
    );
    assert!(f[0].summary.contains("mallory"));
    assert!(f[1].summary.contains("evil-host"));
    let t = Thresholds {
        learning_events: 0,
        location_window: 0,
        ..Thresholds::default()
    };
    assert!(scan(&log.records, &KeyStates::default(), &t).is_empty());
}

#[test]
fn bursts_of_failures_and_denials_are_flagged() {
    let mut log = Log::default();
    for i in 0..10 {
        log.ev(i * 10, "alice", "sign", "k1", Outcome::Failed);
    }
    for i in 0..5 {
        log.ev(200 + i, "eve", "export", "k2", Outcome::Denied);
    }
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert_eq!(
        methods(&f),
        [DetectionMethod::FailureBurst, DetectionMethod::DeniedBurst],
        "{f:#?}"
    );
    assert_eq!(f[1].key_id.as_deref(), Some("k2"));
    assert!(f[1].summary.contains("eve"));
    // Spread out beyond the window, the same failures are not a burst.
    let mut slow = Log::default();
    for i in 0..10 {
        slow.ev(i * 400, "alice", "sign", "k1", Outcome::Failed);
    }
    assert!(scan(&slow.records, &KeyStates::default(), &Thresholds::default()).is_empty());
}

#[test]
fn a_replayed_request_id_is_flagged() {
    let mut log = Log::default();
    log.ev(1, "alice", "sign", "k1", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    log.ev(2, "alice", "sign", "k1", Outcome::Allowed)
        .request_id = Some("msg-2".into());
    log.ev(3, "alice", "sign", "k1", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert_eq!(methods(&f), [DetectionMethod::Replay]);
    assert_eq!(f[0].audit_seqs, [0, 2]);
    let t = Thresholds {
        replay: false,
        ..Thresholds::default()
    };
    assert!(scan(&log.records, &KeyStates::default(), &t).is_empty());
}

#[test]
fn a_replayed_nonce_the_server_refused_is_a_replay_finding() {
    let mut log = Log::default();
    let fpr = "ab".repeat(32);
    log.ev(1, "key:x", "server.authenticate", &fpr, Outcome::Denied)
        .reason = Some("stale: the signature is too old".into());
    log.ev(2, "key:x", "server.authenticate", &fpr, Outcome::Denied)
        .reason = Some(
        "replayed-nonce: nonce \"n-1\" was used before with this key: sign each request with \
         a fresh nonce"
            .into(),
    );
    // The same words from something that is not the server are not its refusal.
    log.ev(3, "alice", "sign", "k1", Outcome::Denied).reason =
        Some("replayed-nonce: nonce \"n-1\"".into());
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    let replays: Vec<_> = f
        .iter()
        .filter(|f| f.method == DetectionMethod::Replay)
        .collect();
    assert_eq!(replays.len(), 1, "{f:?}");
    assert_eq!(replays[0].key_id.as_deref(), Some(fpr.as_str()));
    assert_eq!(replays[0].audit_seqs, [1]);
    assert!(
        replays[0].summary.contains(r#"nonce "n-1""#),
        "{}",
        replays[0].summary
    );
    // The same refusal scanned again is the same finding (filed once).
    let again = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert!(again.iter().any(|g| g.id == replays[0].id));
}

#[test]
fn one_key_used_from_two_hosts_at_once_is_flagged_but_not_a_move() {
    let mut log = Log::default();
    log.ev(1, "alice", "sign", "k1", Outcome::Allowed);
    // Five minutes later, from another machine: a copy of the key in use elsewhere.
    log.ev(300, "alice", "sign", "k1", Outcome::Allowed).host = "host-b".into();
    log.ev(310, "alice", "sign", "k1", Outcome::Allowed);
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    let concurrent: Vec<_> = f
        .iter()
        .filter(|f| f.method == DetectionMethod::ConcurrentHosts)
        .collect();
    assert_eq!(concurrent.len(), 1, "once per key and pair of hosts: {f:?}");
    assert_eq!(concurrent[0].severity, Severity::High);
    assert_eq!(concurrent[0].audit_seqs, [0, 1, 2]);

    // The key moved to another machine (restored there) a minute later, and stays there:
    // one switch is a move, not two copies in use.
    let mut moved = Log::default();
    moved.ev(1, "alice", "sign", "k1", Outcome::Allowed);
    moved.ev(60, "alice", "sign", "k1", Outcome::Allowed).host = "host-b".into();
    moved.ev(70, "alice", "sign", "k1", Outcome::Allowed).host = "host-b".into();
    let f = scan(
        &moved.records,
        &KeyStates::default(),
        &Thresholds::default(),
    );
    assert!(
        !methods(&f).contains(&DetectionMethod::ConcurrentHosts),
        "{f:?}"
    );
    // Switched off.
    let t = Thresholds {
        location_window: 0,
        ..Thresholds::default()
    };
    let f = scan(&log.records, &KeyStates::default(), &t);
    assert!(
        !methods(&f).contains(&DetectionMethod::ConcurrentHosts),
        "{f:?}"
    );
}

/// A server's decisions for a remote client name the client's key, the address the request
/// came from and its nonce: two addresses interleaved are two copies of the key in use, and a
/// nonce accepted twice (two servers that share no nonce store) is a replay. A decision with
/// no address (a server's own bookkeeping, a revocation naming another key) is no use.
#[test]
fn server_clients_at_two_addresses_and_a_nonce_accepted_twice_are_findings() {
    let mut log = Log::default();
    let fpr = "cd".repeat(32);
    let server = |log: &mut Log, at: u64, address: Option<&str>, nonce: &str| {
        let e = log.ev(at, "client:c1", "transit.encrypt", &fpr, Outcome::Allowed);
        e.host = "server-1".into();
        e.address = address.map(str::to_owned);
        e.request_id = Some(nonce.into());
    };
    server(&mut log, 1, Some("192.0.2.7"), "n-1");
    server(&mut log, 20, Some("198.51.100.9"), "n-2");
    server(&mut log, 40, Some("192.0.2.7"), "n-3");
    server(&mut log, 60, Some("192.0.2.7"), "n-3");
    // No address: the server's own host, never a client's use.
    server(&mut log, 61, None, "n-1");
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    let concurrent: Vec<_> = f
        .iter()
        .filter(|f| f.method == DetectionMethod::ConcurrentHosts)
        .collect();
    assert_eq!(concurrent.len(), 1, "{f:?}");
    assert_eq!(concurrent[0].audit_seqs, [0, 1, 2]);
    assert!(
        concurrent[0].summary.contains("address 198.51.100.9"),
        "{}",
        concurrent[0].summary
    );
    let replays: Vec<_> = f
        .iter()
        .filter(|f| f.method == DetectionMethod::Replay)
        .collect();
    assert_eq!(replays.len(), 1, "{f:?}");
    assert_eq!(replays[0].audit_seqs, [2, 3]);

    // One address all along: nothing.
    let mut calm = Log::default();
    for (i, at) in [1u64, 20, 40].into_iter().enumerate() {
        let e = calm.ev(at, "client:c1", "transit.encrypt", &fpr, Outcome::Allowed);
        e.address = Some("192.0.2.7".into());
        e.request_id = Some(format!("n-{i}"));
    }
    let f = scan(&calm.records, &KeyStates::default(), &Thresholds::default());
    assert!(f.is_empty(), "{f:?}");
}

/// A rotation does not make an old request id new: the versions of one logical key share
/// their request ids.
#[test]
fn a_request_id_signed_again_after_a_rotation_is_a_replay() {
    let mut log = Log::default();
    log.ev(1, "alice", "sign", "v1", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    log.ev(2, "alice", "sign", "v2", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    let unrelated = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert!(!methods(&unrelated).contains(&DetectionMethod::Replay));
    let mut states = KeyStates::default();
    for v in ["v1", "v2"] {
        states.logical.insert(v.into(), "v1".into());
    }
    let f = scan(&log.records, &states, &Thresholds::default());
    assert_eq!(methods(&f), [DetectionMethod::Replay], "{f:?}");
    assert_eq!(f[0].audit_seqs, [0, 1]);
}

#[test]
fn a_request_id_with_two_keys_or_around_a_lookup_is_no_replay() {
    let mut log = Log::default();
    log.ev(1, "alice", "sign", "k1", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    // The same id with another key: another request.
    log.ev(2, "alice", "sign", "k2", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    // Lookups done for the same request carry its id too.
    log.ev(3, "alice", "resolve", "k1", Outcome::Allowed)
        .request_id = Some("msg-1".into());
    let f = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert!(!methods(&f).contains(&DetectionMethod::Replay), "{f:?}");
}

#[test]
fn finding_ids_are_stable_across_rescans_of_a_growing_log() {
    let mut log = Log::default();
    log.ev(1, "a", "sign", "k", Outcome::Allowed).request_id = Some("r".into());
    log.ev(2, "a", "sign", "k", Outcome::Allowed).request_id = Some("r".into());
    let first = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    log.steady("k", 10, 1, 5);
    let second = scan(&log.records, &KeyStates::default(), &Thresholds::default());
    assert_eq!(first[0].id, second[0].id);
}

#[test]
fn thresholds_are_validated_and_read_from_toml() {
    let t: Thresholds = serde_json::from_str(r#"{"rate_window":"30m","burst_window":60}"#).unwrap();
    assert_eq!((t.rate_window, t.burst_window), (1800, 60));
    t.validate().unwrap();
    let bad = Thresholds {
        rate_factor: 1,
        ..Thresholds::default()
    };
    assert!(bad.validate().unwrap_err().contains("rate_factor"));
    let bad = Thresholds {
        burst_window: 0,
        ..Thresholds::default()
    };
    assert!(bad.validate().unwrap_err().contains("burst_window"));
    assert!(serde_json::from_str::<Thresholds>(r#"{"rate_windw":"1h"}"#).is_err());
    assert!(serde_json::from_str::<Thresholds>(r#"{"rate_window":"soon"}"#).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the records, scanning terminates, is deterministic, and every finding's
    /// evidence points at records that exist, in order.
    #[test]
    fn scan_is_total_and_deterministic(
        evs in proptest::collection::vec(
            (0u64..20_000, 0usize..3, 0usize..4, 0usize..3, 0usize..4, proptest::option::of(0u8..5)),
            0..300,
        )
    ) {
        let mut log = Log::default();
        let mut at = 0;
        for (dt, who, op, key, outcome, rid) in evs {
            at += dt / 10;
            let outcome = [Outcome::Allowed, Outcome::Denied, Outcome::Failed, Outcome::Intent][outcome];
            let e = log.ev(at, ["a", "b", "c"][who], ["sign", "agree", "delete", "verify"][op], ["k1", "k2", "k3"][key], outcome);
            e.request_id = rid.map(|r| r.to_string());
        }
        let t = Thresholds { learning_events: 3, baseline_windows: 1, rate_min_events: 2, failure_burst: 2, denied_burst: 2, ..Thresholds::default() };
        let mut states = KeyStates::default();
        states.revoked.insert("k2".into(), T0 + 100);
        let a = scan(&log.records, &states, &t);
        let b = scan(&log.records, &states, &t);
        prop_assert_eq!(&a, &b);
        for f in &a {
            prop_assert!(!f.audit_seqs.is_empty());
            prop_assert!(f.audit_seqs.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(f.audit_seqs.iter().all(|s| (*s as usize) < log.records.len()));
            prop_assert!(f.first_nanos <= f.last_nanos);
        }
    }
}
