//! Detection of suspicious key use over audit records (`keyhaven compromise scan`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use keyhaven_audit::{Body, Event, Outcome, Record};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::{DetectionMethod, Severity};

/// Operations that use a private key.
/// (`export` is what the audit decorator records for a private-key export: it was listed here
/// as `export_pkcs8`, a name no record carries, so exports went unseen.)
const PRIVATE_OPS: &[&str] = &["sign", "sign_digest", "agree", "export"];
/// Operations whose failures count towards a failure burst: uses of a key, private or public.
const USE_OPS: &[&str] = &["sign", "sign_digest", "agree", "export", "verify"];
/// Whether an event is a use of its key's private half: a private operation in this home, or
/// a server's decision for a remote client whose key signed the request (the record names
/// the client's key and the address it came from).
fn is_key_use(e: &Event) -> bool {
    PRIVATE_OPS.contains(&e.operation.as_str()) || (e.address.is_some() && e.key_id.is_some())
}

/// At most this many audit sequence numbers are kept as evidence of one finding.
const MAX_EVIDENCE: usize = 50;

/// Detection thresholds (the `[compromise.thresholds]` table of the configuration). Every field
/// has a default; durations are humantime strings in TOML (`"1h"`, `"5m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// A key signing more than `rate_factor` times its own baseline in one window is flagged.
    pub rate_factor: u32,
    /// The rate window.
    #[serde(with = "crate::duration")]
    pub rate_window: u64,
    /// ... but only if the window holds at least this many signatures.
    pub rate_min_events: u64,
    /// The baseline is the mean of the key's earlier active windows; at least this many are
    /// needed before rate anomalies are judged.
    pub baseline_windows: usize,
    /// This many failed operations on one key within `burst_window` is a burst.
    pub failure_burst: usize,
    /// This many denied operations by one principal within `burst_window` is a burst.
    pub denied_burst: usize,
    /// The window for failure and denial bursts.
    #[serde(with = "crate::duration")]
    pub burst_window: u64,
    /// A key's first this-many uses (private-key operations) teach its usual principals and
    /// hosts; later newcomers are flagged (0 disables the principal and host checks).
    pub learning_events: usize,
    /// Flag a request or message id seen twice (replay).
    pub replay: bool,
    /// A key's private operations from two different hosts within this window are flagged
    /// (the same key in use in two places at once); 0 disables the check.
    #[serde(with = "crate::duration")]
    pub location_window: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rate_factor: 10,
            rate_window: 3600,
            rate_min_events: 50,
            baseline_windows: 3,
            failure_burst: 10,
            denied_burst: 5,
            burst_window: 300,
            learning_events: 20,
            replay: true,
            location_window: 600,
        }
    }
}

impl Thresholds {
    /// Checks the values make sense.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_factor < 2 {
            return Err("compromise.thresholds.rate_factor must be at least 2".into());
        }
        for (name, v) in [
            ("rate_window", self.rate_window),
            ("burst_window", self.burst_window),
            ("rate_min_events", self.rate_min_events),
        ] {
            if v == 0 {
                return Err(format!("compromise.thresholds.{name} must be above zero"));
            }
        }
        for (name, v) in [
            ("rate_window", self.rate_window),
            ("burst_window", self.burst_window),
            ("location_window", self.location_window),
        ] {
            if v > crate::duration::MAX_SECS {
                return Err(format!(
                    "compromise.thresholds.{name} must be at most 10 years"
                ));
            }
        }
        for (name, v) in [
            ("failure_burst", self.failure_burst),
            ("denied_burst", self.denied_burst),
            ("baseline_windows", self.baseline_windows),
        ] {
            if v < 1 {
                return Err(format!("compromise.thresholds.{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What the scanner knows of keys' states: when keys were revoked or retired (seconds).
#[derive(Debug, Clone, Default)]
pub struct KeyStates {
    /// Revoked keys: id -> revocation time.
    pub revoked: HashMap<String, u64>,
    /// Retired (verify-only expired) key versions: id -> retirement time.
    pub retired: HashMap<String, u64>,
    /// Versions of rotated keys: version id -> logical key id. A request id is the same key's
    /// whichever of its versions signed it.
    pub logical: HashMap<String, String>,
}

/// One suspicious pattern found in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id (same log, same finding): used to avoid filing a finding twice.
    pub id: String,
    /// The key concerned (none for a principal's denial burst over several keys).
    pub key_id: Option<String>,
    /// What was detected.
    pub method: DetectionMethod,
    /// How bad it looks.
    pub severity: Severity,
    /// One line for humans.
    pub summary: String,
    /// Sequence numbers of the audit records that show it (at most 50).
    pub audit_seqs: Vec<u64>,
    /// Time of the first and last evidence record (unix nanos).
    pub first_nanos: u64,
    /// See `first_nanos`.
    pub last_nanos: u64,
}

struct Ev<'a> {
    seq: u64,
    nanos: u64,
    e: &'a Event,
}

fn finding(
    method: DetectionMethod,
    severity: Severity,
    key_id: Option<&str>,
    discriminator: &str,
    summary: String,
    evidence: &[&Ev<'_>],
) -> Finding {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(key_id.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(discriminator.as_bytes());
    let id = hex::encode(&h.finalize()[..8]);
    Finding {
        id,
        key_id: key_id.map(str::to_owned),
        method,
        severity,
        summary,
        audit_seqs: evidence.iter().take(MAX_EVIDENCE).map(|e| e.seq).collect(),
        first_nanos: evidence.first().map_or(0, |e| e.nanos),
        last_nanos: evidence.last().map_or(0, |e| e.nanos),
    }
}

/// Scans audit records (in log order) for the signals of seed 003 §7.5 and seed 002: use of a
/// revoked or retired key, a signing rate far above the key's own baseline, a principal or host
/// never seen for the key, bursts of failures or denials, and a repeated request id (replay).
///
/// Only event records are considered; write-ahead `intent` records are skipped (their outcome
/// record follows) except for revoked-key use, where an attempt is itself evidence.
pub fn scan<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    states: &KeyStates,
    t: &Thresholds,
) -> Vec<Finding> {
    let mut events: Vec<Ev<'_>> = Vec::new();
    for r in records {
        if let Body::Event(e) = &r.body {
            events.push(Ev {
                seq: r.seq,
                nanos: r.unix_nanos,
                e,
            });
        }
    }
    let mut out = Vec::new();
    revoked_and_retired(&events, states, &mut out);
    rate(&events, t, &mut out);
    newcomers(&events, t, &mut out);
    bursts(&events, t, &mut out);
    if t.location_window > 0 {
        concurrent_hosts(&events, t, &mut out);
    }
    if t.replay {
        replay(&events, states, &mut out);
    }
    out
}

fn secs(nanos: u64) -> u64 {
    nanos / 1_000_000_000
}

fn revoked_and_retired(events: &[Ev<'_>], states: &KeyStates, out: &mut Vec<Finding>) {
    let mut revoked: BTreeMap<&str, Vec<&Ev<'_>>> = BTreeMap::new();
    let mut retired: BTreeMap<&str, Vec<&Ev<'_>>> = BTreeMap::new();
    for ev in events {
        let Some(key) = ev.e.key_id.as_deref() else {
            continue;
        };
        if !PRIVATE_OPS.contains(&ev.e.operation.as_str()) {
            continue;
        }
        if let Some(&at) = states.revoked.get(key)
            && secs(ev.nanos) >= at
        {
            revoked.entry(key).or_default().push(ev);
        } else if let Some(&at) = states.retired.get(key)
            && secs(ev.nanos) >= at
            && ev.e.outcome != Outcome::Intent
        {
            retired.entry(key).or_default().push(ev);
        }
    }
    for (key, evs) in revoked {
        let used = evs
            .iter()
            .filter(|e| e.e.outcome == Outcome::Allowed)
            .count();
        let severity = if used > 0 {
            Severity::Critical
        } else {
            Severity::High
        };
        out.push(finding(
            DetectionMethod::RevokedKeyUse,
            severity,
            Some(key),
            "",
            format!(
                "{} private-key operation attempt(s) on revoked key {key} ({used} succeeded)",
                evs.iter()
                    .filter(|e| e.e.outcome != Outcome::Intent)
                    .count()
            ),
            &evs,
        ));
    }
    for (key, evs) in retired {
        out.push(finding(
            DetectionMethod::RetiredKeyUse,
            Severity::Medium,
            Some(key),
            "",
            format!(
                "{} private-key operation(s) on retired key version {key}",
                evs.len()
            ),
            &evs,
        ));
    }
}

fn rate(events: &[Ev<'_>], t: &Thresholds, out: &mut Vec<Finding>) {
    // Per key: signatures per window, in window order.
    let mut per_key: BTreeMap<&str, BTreeMap<u64, Vec<&Ev<'_>>>> = BTreeMap::new();
    for ev in events {
        if ev.e.outcome != Outcome::Allowed
            || !matches!(ev.e.operation.as_str(), "sign" | "sign_digest")
        {
            continue;
        }
        let Some(key) = ev.e.key_id.as_deref() else {
            continue;
        };
        per_key
            .entry(key)
            .or_default()
            .entry(secs(ev.nanos) / t.rate_window)
            .or_default()
            .push(ev);
    }
    for (key, windows) in per_key {
        let mut seen = 0usize;
        let mut total = 0u64;
        for (window, evs) in windows {
            let n = evs.len() as u64;
            if seen >= t.baseline_windows {
                #[allow(clippy::cast_precision_loss)]
                let baseline = total as f64 / seen as f64;
                #[allow(clippy::cast_precision_loss)]
                let rate = n as f64;
                if n >= t.rate_min_events && rate > f64::from(t.rate_factor) * baseline.max(1.0) {
                    out.push(finding(
                        DetectionMethod::RateAnomaly,
                        Severity::High,
                        Some(key),
                        &window.to_string(),
                        format!(
                            "key {key} made {n} signatures in one {} window, {:.1}x its baseline \
                             of {baseline:.1}",
                            humantime::format_duration(std::time::Duration::from_secs(
                                t.rate_window
                            )),
                            rate / baseline.max(1.0)
                        ),
                        &evs,
                    ));
                    // An anomalous window does not become part of the baseline.
                    continue;
                }
            }
            seen += 1;
            total += n;
        }
    }
}

fn newcomers(events: &[Ev<'_>], t: &Thresholds, out: &mut Vec<Finding>) {
    if t.learning_events == 0 {
        return;
    }
    struct Known<'a> {
        seen: usize,
        principals: BTreeSet<&'a str>,
        hosts: BTreeSet<&'a str>,
        flagged: BTreeSet<(bool, &'a str)>,
    }
    let mut keys: BTreeMap<&str, Known<'_>> = BTreeMap::new();
    for ev in events {
        // Only uses of the key count: lookups (which may name a label that is no key at all)
        // and write-ahead intents do not.
        if ev.e.outcome == Outcome::Intent || !PRIVATE_OPS.contains(&ev.e.operation.as_str()) {
            continue;
        }
        let Some(key) = ev.e.key_id.as_deref() else {
            continue;
        };
        let k = keys.entry(key).or_insert_with(|| Known {
            seen: 0,
            principals: BTreeSet::new(),
            hosts: BTreeSet::new(),
            flagged: BTreeSet::new(),
        });
        let (p, h) = (ev.e.principal.as_str(), ev.e.host.as_str());
        if k.seen < t.learning_events {
            k.seen += 1;
            k.principals.insert(p);
            k.hosts.insert(h);
            continue;
        }
        if !k.principals.contains(p) && k.flagged.insert((true, p)) {
            out.push(finding(
                DetectionMethod::NewPrincipal,
                Severity::Medium,
                Some(key),
                p,
                format!("key {key} used by principal '{p}', never seen for it before"),
                &[ev],
            ));
        }
        if !k.hosts.contains(h) && k.flagged.insert((false, h)) {
            out.push(finding(
                DetectionMethod::NewHost,
                Severity::Medium,
                Some(key),
                h,
                format!("key {key} used from host '{h}', never seen for it before"),
                &[ev],
            ));
        }
    }
}

fn bursts(events: &[Ev<'_>], t: &Thresholds, out: &mut Vec<Finding>) {
    let window = t.burst_window.saturating_mul(1_000_000_000);
    // Failures per key, denials per principal: sliding windows.
    let mut failures: BTreeMap<&str, VecDeque<&Ev<'_>>> = BTreeMap::new();
    let mut denials: BTreeMap<&str, VecDeque<&Ev<'_>>> = BTreeMap::new();
    let mut reported: BTreeSet<(bool, &str)> = BTreeSet::new();
    for ev in events {
        let (map, who, limit, is_failure) = match ev.e.outcome {
            Outcome::Failed if !USE_OPS.contains(&ev.e.operation.as_str()) => continue,
            Outcome::Failed => match ev.e.key_id.as_deref() {
                Some(k) => (&mut failures, k, t.failure_burst, true),
                None => continue,
            },
            Outcome::Denied => (&mut denials, ev.e.principal.as_str(), t.denied_burst, false),
            _ => continue,
        };
        let q = map.entry(who).or_default();
        q.push_back(ev);
        while q
            .front()
            .is_some_and(|f| ev.nanos.saturating_sub(f.nanos) > window)
        {
            q.pop_front();
        }
        if q.len() >= limit && reported.insert((is_failure, who)) {
            let evs: Vec<_> = q.iter().copied().collect();
            let start = evs.first().map_or(0, |e| e.seq).to_string();
            out.push(if is_failure {
                finding(
                    DetectionMethod::FailureBurst,
                    Severity::Medium,
                    Some(who),
                    &start,
                    format!(
                        "{} failed operations on key {who} within {}",
                        evs.len(),
                        humantime::format_duration(std::time::Duration::from_secs(t.burst_window))
                    ),
                    &evs,
                )
            } else {
                let keys: BTreeSet<&str> =
                    evs.iter().filter_map(|e| e.e.key_id.as_deref()).collect();
                let key = (keys.len() == 1)
                    .then(|| keys.iter().next().copied())
                    .flatten();
                finding(
                    DetectionMethod::DeniedBurst,
                    Severity::High,
                    key,
                    &format!("{who}\0{start}"),
                    format!(
                        "{} denied operations by principal '{who}' within {}",
                        evs.len(),
                        humantime::format_duration(std::time::Duration::from_secs(t.burst_window))
                    ),
                    &evs,
                )
            });
        }
    }
}

/// A key used from one host, then another, then the first again, all within
/// `location_window` (interleaved use: two copies of the key in use at once); once per key and
/// pair of hosts. A single switch of host (the key moved to another machine) is not flagged.
fn concurrent_hosts(events: &[Ev<'_>], t: &Thresholds, out: &mut Vec<Finding>) {
    let window = t.location_window.saturating_mul(1_000_000_000);
    // Per key: the last use from each location, and the location of the last use.
    type Uses<'a, 'e> = (HashMap<Cow<'a, str>, &'e Ev<'a>>, Cow<'a, str>);
    let mut last: HashMap<&str, Uses<'_, '_>> = HashMap::new();
    let mut flagged: BTreeSet<(&str, String, String)> = BTreeSet::new();
    for ev in events {
        if ev.e.outcome != Outcome::Allowed || !is_key_use(ev.e) {
            continue;
        }
        let Some(key) = ev.e.key_id.as_deref() else {
            continue;
        };
        let host = ev.e.location();
        let (seen, previous) = last
            .entry(key)
            .or_insert_with(|| (HashMap::new(), host.clone()));
        let other = previous.clone();
        if other != host
            && let (Some(mine), Some(theirs)) = (seen.get(&host), seen.get(&other))
            && mine.nanos <= theirs.nanos
            && ev.nanos.saturating_sub(mine.nanos) <= window
        {
            let (a, b) = if other < host {
                (other.to_string(), host.to_string())
            } else {
                (host.to_string(), other.to_string())
            };
            if flagged.insert((key, a.clone(), b.clone())) {
                out.push(finding(
                    DetectionMethod::ConcurrentHosts,
                    Severity::High,
                    Some(key),
                    &format!("{a}+{b}"),
                    format!(
                        "key {key} used from {host:?}, then {other:?}, then {host:?} again within \
                         {} (audit records {}, {} and {}): a copy of it is in use elsewhere",
                        humantime::format_duration(std::time::Duration::from_secs(
                            t.location_window
                        )),
                        mine.seq,
                        theirs.seq,
                        ev.seq
                    ),
                    &[mine, theirs, ev],
                ));
            }
        }
        seen.insert(host.clone(), ev);
        *previous = host;
    }
}

/// The same request id used twice for a private operation with the same key (the same id
/// with two keys is two requests, and lookups around an operation share its id).
fn replay(events: &[Ev<'_>], states: &KeyStates, out: &mut Vec<Finding>) {
    let mut first: HashMap<(&str, &str), &Ev<'_>> = HashMap::new();
    let mut flagged: BTreeSet<(&str, &str)> = BTreeSet::new();
    for ev in events {
        // A keyhaven server refuses a request whose RFC 9421 nonce its key used before, and
        // records the refusal: the duplicate is a finding too (someone holds a copy of a
        // request the key signed).
        if ev.e.outcome == Outcome::Denied
            && ev.e.operation.starts_with("server.")
            && let (Some(reason), Some(key)) = (ev.e.reason.as_deref(), ev.e.key_id.as_deref())
            && let Some(detail) = reason.strip_prefix("replayed-nonce: ")
        {
            out.push(finding(
                DetectionMethod::Replay,
                Severity::High,
                Some(key),
                detail,
                format!(
                    "the server refused a replayed request signed by this key (audit record \
                     {}): {detail}",
                    ev.seq
                ),
                &[ev],
            ));
            continue;
        }
        if ev.e.outcome != Outcome::Allowed || !is_key_use(ev.e) {
            continue;
        }
        let (Some(rid), Some(key)) = (ev.e.request_id.as_deref(), ev.e.key_id.as_deref()) else {
            continue;
        };
        let key = states.logical.get(key).map_or(key, String::as_str);
        match first.get(&(key, rid)) {
            None => {
                first.insert((key, rid), ev);
            }
            Some(orig) => {
                if flagged.insert((key, rid)) {
                    out.push(finding(
                        DetectionMethod::Replay,
                        Severity::High,
                        ev.e.key_id.as_deref(),
                        rid,
                        format!(
                            "request id {rid:?} used again (first at audit record {}, again at {})",
                            orig.seq, ev.seq
                        ),
                        &[orig, ev],
                    ));
                }
            }
        }
    }
}
