//! Prometheus metrics (text format 0.0.4), with bounded label sets only: routes are the API's
//! route templates, never raw paths; reasons are problem names; no key id is ever a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Tables {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    auth_failures: BTreeMap<&'static str, u64>,
    revocations: BTreeMap<&'static str, u64>,
    broker: BTreeMap<(&'static str, &'static str), u64>,
    downgrades: BTreeMap<(u8, u8), u64>,
    releases: BTreeMap<(u8, &'static str), u64>,
    attestations: BTreeMap<(&'static str, &'static str), u64>,
    db_latency: Histogram,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
    in_flight: AtomicI64,
    db_in_flight: AtomicI64,
    registrations: AtomicU64,
    rotations: AtomicU64,
    rate_limited: AtomicU64,
    /// The key broker's tier plus one (0: no broker).
    broker_tier: AtomicI64,
}

/// The method as a bounded label.
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "other",
    }
}

impl Metrics {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request starts.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request on `route` finished with `status` after `elapsed`.
    pub fn finish(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut t = self.tables();
        *t.requests.entry((route, method, status)).or_default() += 1;
        t.latency
            .entry(route)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// An authentication failure, by reason (a problem name).
    pub fn auth_failure(&self, reason: &'static str) {
        *self.tables().auth_failures.entry(reason).or_default() += 1;
    }

    /// A registration.
    pub fn registered(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// A rotation.
    pub fn rotated(&self) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// A revocation, by `self` or `admin`.
    pub fn revoked(&self, by: &'static str, n: u64) {
        *self.tables().revocations.entry(by).or_default() += n;
    }

    /// A key broker operation (`transit.encrypt`, `secret.release`), by outcome (`ok` or a
    /// problem name).
    pub fn broker(&self, operation: &'static str, outcome: &'static str) {
        *self
            .tables()
            .broker
            .entry((operation, outcome))
            .or_default() += 1;
    }

    /// A secret stored at a lower tier than asked (`from` asked, `to` reached).
    pub fn downgrade(&self, from: u8, to: u8) {
        *self.tables().downgrades.entry((from, to)).or_default() += 1;
    }

    /// An evidence verification: its type (a verifier's, or `other`) and outcome
    /// (`verified`, `refused`, `not-accepted`).
    pub fn attestation(&self, kind: &'static str, outcome: &'static str) {
        *self
            .tables()
            .attestations
            .entry((kind, outcome))
            .or_default() += 1;
    }

    /// A release decision for a secret of `tier`: `released` or `denied`.
    pub fn release(&self, tier: u8, outcome: &'static str) {
        *self.tables().releases.entry((tier, outcome)).or_default() += 1;
    }

    /// The key broker's tier (what it can keep and release at), or `None` without one.
    pub fn set_broker_tier(&self, tier: Option<u8>) {
        self.broker_tier
            .store(tier.map_or(0, |t| i64::from(t) + 1), Ordering::Relaxed);
    }

    /// A request refused by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A database call starts.
    pub fn db_start(&self) {
        self.db_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A database call finished after `elapsed`.
    pub fn db_finish(&self, elapsed: Duration) {
        self.db_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.tables().db_latency.observe(elapsed.as_secs_f64());
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let t = self.tables();
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP keyhaven_http_requests_total HTTP requests answered, by route, method and status.\n\
             # TYPE keyhaven_http_requests_total counter\n",
        );
        for ((route, method, status), n) in &t.requests {
            let _ = writeln!(
                out,
                "keyhaven_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP keyhaven_http_request_duration_seconds Time to answer, by route.\n\
             # TYPE keyhaven_http_request_duration_seconds histogram\n",
        );
        for (route, h) in &t.latency {
            h.render(
                &mut out,
                "keyhaven_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        let _ = write!(
            out,
            "# HELP keyhaven_http_requests_in_flight Requests being answered.\n\
             # TYPE keyhaven_http_requests_in_flight gauge\n\
             keyhaven_http_requests_in_flight {}\n",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP keyhaven_auth_failures_total Requests refused by authentication, by reason.\n\
             # TYPE keyhaven_auth_failures_total counter\n",
        );
        for (reason, n) in &t.auth_failures {
            let _ = writeln!(
                out,
                "keyhaven_auth_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = write!(
            out,
            "# HELP keyhaven_registrations_total Clients registered.\n\
             # TYPE keyhaven_registrations_total counter\n\
             keyhaven_registrations_total {}\n\
             # HELP keyhaven_rotations_total Keys rotated by continuity proof.\n\
             # TYPE keyhaven_rotations_total counter\n\
             keyhaven_rotations_total {}\n\
             # HELP keyhaven_rate_limited_total Requests refused by a rate limit.\n\
             # TYPE keyhaven_rate_limited_total counter\n\
             keyhaven_rate_limited_total {}\n",
            self.registrations.load(Ordering::Relaxed),
            self.rotations.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed),
        );
        out.push_str(
            "# HELP keyhaven_revocations_total Keys revoked, by who asked.\n\
             # TYPE keyhaven_revocations_total counter\n",
        );
        for (by, n) in &t.revocations {
            let _ = writeln!(out, "keyhaven_revocations_total{{by=\"{by}\"}} {n}");
        }
        out.push_str(
            "# HELP keyhaven_broker_operations_total Key broker operations, by operation and outcome.\n\
             # TYPE keyhaven_broker_operations_total counter\n",
        );
        for ((operation, outcome), n) in &t.broker {
            let _ = writeln!(
                out,
                "keyhaven_broker_operations_total{{operation=\"{operation}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let tier = self.broker_tier.load(Ordering::Relaxed) - 1;
        if tier >= 0 {
            out.push_str(
                "# HELP keyhaven_broker_tier_available Whether the broker keeps and releases secrets at each tier (its master key's protection bounds it).\n\
                 # TYPE keyhaven_broker_tier_available gauge\n",
            );
            for t in 0..=4i64 {
                let _ = writeln!(
                    out,
                    "keyhaven_broker_tier_available{{tier=\"{t}\"}} {}",
                    i64::from(t <= tier)
                );
            }
        }
        out.push_str(
            "# HELP keyhaven_broker_releases_total Release decisions, by the secret's tier and outcome.\n\
             # TYPE keyhaven_broker_releases_total counter\n",
        );
        for ((tier, outcome), n) in &t.releases {
            let _ = writeln!(
                out,
                "keyhaven_broker_releases_total{{tier=\"{tier}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP keyhaven_broker_attestations_total Evidence verified for releases, by type and outcome.\n\
             # TYPE keyhaven_broker_attestations_total counter\n",
        );
        for ((kind, outcome), n) in &t.attestations {
            let _ = writeln!(
                out,
                "keyhaven_broker_attestations_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP keyhaven_broker_downgrades_total Secrets stored below the tier asked for, by tiers.\n\
             # TYPE keyhaven_broker_downgrades_total counter\n",
        );
        for ((from, to), n) in &t.downgrades {
            let _ = writeln!(
                out,
                "keyhaven_broker_downgrades_total{{from=\"{from}\",to=\"{to}\"}} {n}"
            );
        }
        let _ = write!(
            out,
            "# HELP keyhaven_db_calls_in_flight Database calls running or waiting for the connection.\n\
             # TYPE keyhaven_db_calls_in_flight gauge\n\
             keyhaven_db_calls_in_flight {}\n\
             # HELP keyhaven_db_call_duration_seconds Database calls, waiting included.\n\
             # TYPE keyhaven_db_call_duration_seconds histogram\n",
            self.db_in_flight.load(Ordering::Relaxed)
        );
        t.db_latency
            .render(&mut out, "keyhaven_db_call_duration_seconds", "");
        out
    }
}
