//! Response procedures: revoke, emergency rotation, lookback over the audit log, notification.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyhaven_audit::{Body, Filter, Record};
use keyhaven_core::{KeyInfo, PublicKey};
use serde::{Deserialize, Serialize};

use crate::detect::Thresholds;
use crate::error::{CompromiseError, Result};
use crate::report::{ActionTaken, CompromiseReport, Evidence, ReportStore, Status};
use crate::revocation::{Authority, Revocation, Revocations};
use crate::webhook::{MAX_BACKOFF, MAX_RETRIES, Target, WebhookSigner};

/// One step of a response procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Sign a revocation statement and record it: every process refuses the key from then on.
    Revoke,
    /// Rotate to a new version at once (when a rotation engine is available).
    Rotate,
    /// List the operations made with the key in the lookback window before detection.
    Lookback,
    /// Run the notification hooks with the report as JSON.
    Notify,
}

/// The procedure for keys of one role (`role` unset: every role without its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    /// The key role this procedure is for (`identity`, `signing`, ...); unset for the default.
    #[serde(default)]
    pub role: Option<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How far before the detection the lookback step looks (humantime in TOML; default 7 days).
    #[serde(default = "default_lookback", with = "crate::duration")]
    pub lookback: u64,
}

fn default_lookback() -> u64 {
    7 * 86_400
}

impl Default for Procedure {
    fn default() -> Self {
        Procedure {
            role: None,
            steps: vec![Step::Revoke, Step::Rotate, Step::Lookback, Step::Notify],
            lookback: default_lookback(),
        }
    }
}

/// Notification hooks: a command (argv; the report JSON on its standard input) and/or a
/// webhook (`https://host[:port]/path` or `http://...`, the report JSON POSTed, signed when
/// the caller gives a [`WebhookSigner`]). The command, and each webhook attempt, is bounded by
/// `timeout`; a webhook is retried `retries` times on what a retry can fix, waiting `backoff`,
/// then twice that, up to [`crate::webhook::MAX_BACKOFF`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// The command to run, as argv.
    pub command: Option<Vec<String>>,
    /// The webhook URL (`https://` verified against the system's roots or `ca_file`;
    /// `http://` for a receiver on a trusted network).
    pub webhook: Option<String>,
    /// PEM certificates the webhook's HTTPS server is verified against, instead of the
    /// system's roots (relative paths are resolved by the caller: the facade resolves them
    /// against the home).
    pub ca_file: Option<std::path::PathBuf>,
    /// The longest a hook (or one webhook attempt) may take before it is given up (default
    /// 10 s).
    #[serde(with = "crate::duration")]
    pub timeout: u64,
    /// How many times a webhook is tried again after a failure a retry can fix (default 3,
    /// at most [`crate::webhook::MAX_RETRIES`]).
    pub retries: u32,
    /// The first wait before trying a webhook again (default 1 s; doubled each time).
    #[serde(with = "crate::duration::precise")]
    pub backoff: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            command: None,
            webhook: None,
            ca_file: None,
            timeout: 10,
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

/// The `[compromise]` configuration: detection thresholds, procedures, notification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseConfig {
    /// Detection thresholds.
    pub thresholds: Thresholds,
    /// Procedures per role (`[[compromise.procedure]]`).
    #[serde(rename = "procedure")]
    pub procedures: Vec<Procedure>,
    /// Notification hooks.
    pub notify: NotifyConfig,
}

impl ResponseConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// [`CompromiseError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        self.thresholds
            .validate()
            .map_err(CompromiseError::Invalid)?;
        let mut roles = std::collections::BTreeSet::new();
        for p in &self.procedures {
            if !roles.insert(p.role.clone()) {
                return Err(CompromiseError::Invalid(format!(
                    "compromise.procedure: two procedures for role {}",
                    p.role.as_deref().unwrap_or("(default)")
                )));
            }
            if p.lookback > crate::duration::MAX_SECS {
                return Err(CompromiseError::Invalid(format!(
                    "compromise.procedure for role {}: lookback must be at most 10 years",
                    p.role.as_deref().unwrap_or("(default)")
                )));
            }
            if p.steps.is_empty() {
                return Err(CompromiseError::Invalid(format!(
                    "compromise.procedure for role {}: steps is empty",
                    p.role.as_deref().unwrap_or("(default)")
                )));
            }
        }
        if let Some(cmd) = &self.notify.command
            && cmd.first().is_none_or(String::is_empty)
        {
            return Err(CompromiseError::Invalid(
                "compromise.notify.command must name a program".into(),
            ));
        }
        if let Some(url) = &self.notify.webhook {
            Target::parse(url)?;
        }
        if self.notify.ca_file.is_some() && self.notify.webhook.is_none() {
            return Err(CompromiseError::Invalid(
                "compromise.notify.ca_file is set but there is no webhook to verify".into(),
            ));
        }
        if self.notify.retries > MAX_RETRIES {
            return Err(CompromiseError::Invalid(format!(
                "compromise.notify.retries must be at most {MAX_RETRIES}"
            )));
        }
        if self.notify.backoff < Duration::from_millis(10) || self.notify.backoff > MAX_BACKOFF {
            return Err(CompromiseError::Invalid(format!(
                "compromise.notify.backoff must be between 10ms and {}",
                humantime::format_duration(MAX_BACKOFF)
            )));
        }
        if self.notify.timeout == 0 || self.notify.timeout > 3600 {
            return Err(CompromiseError::Invalid(
                "compromise.notify.timeout must be between 1 second and 1 hour".into(),
            ));
        }
        Ok(())
    }

    /// The procedure for a key of `role`: the role's own, else the configured default, else
    /// revoke, rotate, lookback, notify.
    pub fn procedure_for(&self, role: Option<&str>) -> Procedure {
        self.procedures
            .iter()
            .find(|p| role.is_some() && p.role.as_deref() == role)
            .or_else(|| self.procedures.iter().find(|p| p.role.is_none()))
            .cloned()
            .unwrap_or_default()
    }
}

/// Rotation to a new version, provided by whoever knows versions (the facade's rotation
/// engine); this crate does not depend on it.
pub trait Rotator {
    /// Rotates `key_id` at once; returns a description of the new version.
    ///
    /// # Errors
    /// Whatever prevented the rotation.
    fn emergency_rotate(&self, key_id: &str, reason: &str) -> keyhaven_core::Result<String>;
}

/// Work run before a response's notification, given the report id: whether all of it
/// succeeded ([`Responder::before_notify`]).
pub type BeforeNotify<'a> = dyn Fn(&str) -> Result<bool> + 'a;

/// Everything a response needs.
pub struct Responder<'a> {
    /// The reports.
    pub reports: &'a ReportStore,
    /// The revocation registry.
    pub revocations: &'a Revocations,
    /// The revocation authority.
    pub authority: &'a Authority,
    /// The audit log directory, for the lookback step.
    pub audit_dir: Option<&'a Path>,
    /// Emergency rotation, if available.
    pub rotator: Option<&'a dyn Rotator>,
    /// The configuration.
    pub config: &'a ResponseConfig,
    /// What notifying needs besides the configuration: a signer for webhook deliveries, the
    /// CA certificates read through the caller's integrity checks.
    pub notify: NotifyContext<'a>,
    /// Run just before the notification step (or after the last step when the procedure has
    /// none), given the report id: work the notification must include (the facade rotates the
    /// rest of a compromised home here). It records its own actions in the report and says
    /// whether all of them succeeded; a failure makes the report incomplete.
    pub before_notify: Option<&'a BeforeNotify<'a>>,
}

impl std::fmt::Debug for Responder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("reports", &self.reports)
            .finish_non_exhaustive()
    }
}

/// What a response did.
#[derive(Debug, Clone)]
pub struct ResponseOutcome {
    /// The report after the response (status and actions updated).
    pub report: CompromiseReport,
    /// The operations found by the lookback step.
    pub lookback: Vec<Record>,
}

impl Responder<'_> {
    /// Runs the procedure for the report's key role on the report's key (`key` must be that
    /// key). Each step is recorded in the report as it completes, so a crash part-way leaves
    /// an accurate record; a failing step is recorded and the next steps still run (a failed
    /// notification must not undo a revocation). Responding again re-runs the procedure;
    /// revocation is idempotent.
    ///
    /// # Errors
    /// The report cannot be read or written, or `key` is not the report's key.
    pub fn respond(&self, report_id: &str, key: &KeyInfo, now: u64) -> Result<ResponseOutcome> {
        let report = self.reports.get(report_id)?;
        if report.key_id != key.id.as_str() {
            return Err(CompromiseError::Invalid(format!(
                "report {report_id} is about key {}, not {}",
                report.key_id, key.id
            )));
        }
        let procedure = self.config.procedure_for(report.role.as_deref());
        let mut lookback = Vec::new();
        let mut failed = false;
        let mut hook = self.before_notify;
        for step in &procedure.steps {
            if *step == Step::Notify
                && let Some(before) = hook.take()
            {
                failed |= !before(report_id)?;
            }
            let (action, result) = match step {
                Step::Revoke => ("revoke", self.revoke(&report, key, now)),
                Step::Rotate => ("rotate", self.rotate(&report)),
                Step::Lookback => (
                    "lookback",
                    self.lookback(&report, procedure.lookback).map(|(d, recs)| {
                        lookback = recs;
                        d
                    }),
                ),
                Step::Notify => {
                    // Notify with the report as it stands, including the actions so far.
                    let current = self.reports.get(report_id)?;
                    let results = notify(&self.config.notify, &current, &self.notify);
                    if results.is_empty() {
                        self.reports.update(report_id, |r| {
                            r.actions.push(ActionTaken {
                                at: now,
                                action: "notify".into(),
                                ok: false,
                                not_configured: true,
                                detail: "no notification hook is configured ([compromise.notify] \
                                         command or webhook)"
                                    .into(),
                            });
                            Ok(())
                        })?;
                        continue;
                    } else {
                        for (name, r) in results {
                            failed |= r.is_err();
                            self.record(report_id, name, now, r, &[])?;
                        }
                        continue;
                    }
                }
            };
            failed |= result.is_err();
            let seqs: Vec<u64> = if *step == Step::Lookback {
                lookback.iter().map(|r| r.seq).collect()
            } else {
                Vec::new()
            };
            self.record(report_id, action, now, result, &seqs)?;
        }
        if let Some(before) = hook {
            failed |= !before(report_id)?;
        }
        let report = self.reports.update(report_id, |r| {
            r.status = if failed {
                Status::Incomplete
            } else {
                Status::Responded
            };
            Ok(r.clone())
        })?;
        Ok(ResponseOutcome { report, lookback })
    }

    fn record(
        &self,
        id: &str,
        action: &str,
        now: u64,
        result: Result<String>,
        seqs: &[u64],
    ) -> Result<()> {
        self.reports.update(id, |r| {
            let (ok, detail) = match result {
                Ok(d) => (true, d),
                Err(e) => (false, e.to_string()),
            };
            if !seqs.is_empty() {
                r.evidence.push(Evidence {
                    description: format!(
                        "operations with the key in the lookback window ({detail})"
                    ),
                    audit_seqs: seqs.iter().copied().take(1000).collect(),
                });
            }
            r.actions.push(ActionTaken {
                at: now,
                action: action.to_owned(),
                ok,
                not_configured: false,
                detail,
            });
            Ok(())
        })
    }

    /// The authority's public key.
    fn authority_key(&self) -> Result<PublicKey> {
        Ok(self.authority.store.public_key(&self.authority.key)?)
    }

    fn revoke(&self, report: &CompromiseReport, key: &KeyInfo, now: u64) -> Result<String> {
        let reason = format!(
            "{} compromise ({}), report {}",
            match report.kind {
                crate::CompromiseType::Suspected => "suspected",
                crate::CompromiseType::Confirmed => "confirmed",
            },
            report.detection.as_str(),
            report.id
        );
        let statement =
            Revocation::issue(self.authority, key, now, &reason, true, Some(&report.id))?;
        let recorded = self.revocations.record(statement, &self.authority_key()?)?;
        Ok(format!(
            "revoked {} from {}",
            recorded.key_id,
            recorded.revoked_at_rfc3339()
        ))
    }

    fn rotate(&self, report: &CompromiseReport) -> Result<String> {
        match self.rotator {
            None => Ok("skipped: no rotation engine is available for this key".into()),
            Some(r) => Ok(r.emergency_rotate(
                &report.key_id,
                &format!("emergency rotation for compromise report {}", report.id),
            )?),
        }
    }

    fn lookback(&self, report: &CompromiseReport, window: u64) -> Result<(String, Vec<Record>)> {
        let Some(dir) = self.audit_dir else {
            return Ok(("skipped: no audit log is configured".into(), Vec::new()));
        };
        let since = report.discovered_at.saturating_sub(window);
        let filter = Filter {
            key_id: Some(report.key_id.clone()),
            since_nanos: Some(since.saturating_mul(1_000_000_000)),
            ..Filter::default()
        };
        let records: Vec<Record> = keyhaven_audit::search(dir, &filter)?
            .into_iter()
            .filter(|r| matches!(&r.body, Body::Event(e) if e.outcome != keyhaven_audit::Outcome::Intent))
            .collect();
        let mut ops = std::collections::BTreeMap::<&str, usize>::new();
        for r in &records {
            if let Body::Event(e) = &r.body {
                *ops.entry(e.operation.as_str()).or_default() += 1;
            }
        }
        let summary: Vec<String> = ops.iter().map(|(op, n)| format!("{op} x{n}")).collect();
        let detail = format!(
            "{} operation(s) with the key since {}{}{}",
            records.len(),
            crate::revocation::rfc3339(since),
            if summary.is_empty() { "" } else { ": " },
            summary.join(", ")
        );
        Ok((detail, records))
    }
}

/// What notifying needs besides its configuration.
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct NotifyContext<'a> {
    /// Signs webhook deliveries (the facade: the home's authority key); unset, they are sent
    /// unsigned and the report says so.
    pub signer: Option<&'a dyn WebhookSigner>,
    /// The text of `ca_file` as the caller read it through its own integrity checks (the
    /// facade: the home's manifest); unset, `ca_file` is read as a plain file.
    pub ca_pem: Option<&'a str>,
}

impl<'a> NotifyContext<'a> {
    /// Deliveries signed by `signer`.
    #[must_use]
    pub fn signed_by(mut self, signer: &'a dyn WebhookSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// `ca_file`'s certificates given as text.
    #[must_use]
    pub fn trusting(mut self, ca_pem: &'a str) -> Self {
        self.ca_pem = Some(ca_pem);
        self
    }
}

impl std::fmt::Debug for NotifyContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyContext")
            .field("signed", &self.signer.is_some())
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// Runs the configured notification hooks with `report`; returns each hook's action name and
/// result (empty if none is configured). The webhook's POST is signed when `context` has a
/// signer (the report's action then says so).
pub fn notify(
    config: &NotifyConfig,
    report: &CompromiseReport,
    context: &NotifyContext<'_>,
) -> Vec<(&'static str, Result<String>)> {
    let timeout = Duration::from_secs(config.timeout);
    let json = report.to_json();
    let json = || {
        json.as_deref()
            .map_err(|e| CompromiseError::Invalid(e.to_string()))
    };
    let mut out = Vec::new();
    if let Some(argv) = &config.command {
        out.push((
            "notify-command",
            json().and_then(|j| run_command(argv, j, report, timeout)),
        ));
    }
    if let Some(url) = &config.webhook {
        let signer = context.signer;
        let sent = json().and_then(|j| {
            let ca = match (&config.ca_file, context.ca_pem) {
                (Some(path), Some(text)) => Some((text.to_owned(), path.clone())),
                (Some(path), None) => Some((keyhaven_fs::read_config(path)?, path.clone())),
                (None, _) => None,
            };
            let policy = crate::webhook::Policy {
                timeout,
                retries: config.retries,
                backoff: config.backoff,
                ca,
            };
            let id = delivery_id(&report.id)?;
            crate::webhook::deliver(
                url,
                "application/json",
                j.as_bytes(),
                &id,
                signer,
                &policy,
                &std::thread::sleep,
            )
            .map(|done| {
                if signer.is_some() {
                    format!("{done}; delivery {id}, signed")
                } else {
                    format!("{done}; delivery {id}, unsigned")
                }
            })
        });
        out.push(("notify-webhook", sent));
    }
    out
}

/// A delivery id: the report's id and 64 random bits (every delivery of a report differs;
/// its retries share it).
fn delivery_id(report: &str) -> Result<String> {
    let mut r = [0u8; 8];
    keyhaven_crypto::fill_random(&mut r)?;
    Ok(format!("{report}.{}", hex::encode(r)))
}

fn run_command(
    argv: &[String],
    json: &str,
    report: &CompromiseReport,
    timeout: Duration,
) -> Result<String> {
    let hook = format!("command {}", argv.first().map_or("", String::as_str));
    let fail = |reason: String| CompromiseError::Hook {
        hook: hook.clone(),
        reason,
    };
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| fail("no program given".into()))?;
    let mut child = Command::new(prog)
        .args(args)
        .env("KEYHAVEN_REPORT_ID", &report.id)
        .env("KEYHAVEN_KEY_ID", &report.key_id)
        .env(
            "KEYHAVEN_SEVERITY",
            format!("{:?}", report.severity).to_lowercase(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    // Feed stdin and drain stderr on threads so a hook that does neither cannot block us.
    let stdin = child.stdin.take();
    let payload = json.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&payload);
        }
    });
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = s.by_ref().take(64 * 1024).read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                return Err(fail(format!(
                    "timed out after {}s and was killed",
                    timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
        }
    };
    let _ = writer.join();
    let err = reader.join().unwrap_or_default();
    let last = String::from_utf8_lossy(&err)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    if status.success() {
        Ok(format!("{hook} succeeded"))
    } else {
        Err(fail(format!(
            "exited with {status}{}{last}",
            if last.is_empty() { "" } else { ": " }
        )))
    }
}
