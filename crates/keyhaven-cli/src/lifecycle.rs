//! `keyhaven audit`, `keyhaven compromise`, `keyhaven revocations` and `keyhaven key revoke`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use keyhaven::audit::{Body, Filter, Outcome, Record};
use keyhaven::compromise::{CompromiseReport, CompromiseType, Severity};
use keyhaven::{CoreError, KeyManager, rfc3339};

use crate::ctx::{Ctx, print_warnings};
use crate::exit::{CORRUPT, OK};
use crate::json::{AuditVerifyJson, ScanJson};
use crate::output::{errln, outln, print_json, print_table};
use clap::Subcommand;

fn record_line(r: &Record) -> String {
    match &r.body {
        Body::Event(e) => format!(
            "{} #{} {}@{}{} {} {} {}{}{}",
            r.time,
            r.seq,
            e.principal,
            e.host,
            e.address
                .as_deref()
                .map(|a| format!(" from {a}"))
                .unwrap_or_default(),
            e.operation,
            e.key_id.as_deref().unwrap_or("-"),
            serde_json::to_value(e.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            e.request_id
                .as_deref()
                .map(|id| format!(" request {id:?}"))
                .unwrap_or_default(),
            e.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        Body::Checkpoint { count, .. } => {
            format!("{} #{} checkpoint of {count} records", r.time, r.seq)
        }
        Body::Header { file, .. } => format!("{} #{} start of file {file}", r.time, r.seq),
        Body::Break { at, damaged, .. } => format!(
            "{} #{} BREAK: damage at {at} recovered; {} file(s) kept as evidence",
            r.time,
            r.seq,
            damaged.len()
        ),
        Body::Recovery {
            truncated_bytes, ..
        } => format!(
            "{} #{} recovery: a torn last line of {truncated_bytes} bytes was cut off",
            r.time, r.seq
        ),
    }
}

fn print_records(records: &[Record], json: bool) -> Result<()> {
    for r in records {
        if json {
            outln!("{}", serde_json::to_string(r)?)?;
        } else {
            outln!("{}", record_line(r))?;
        }
    }
    Ok(())
}

fn parse_outcome(s: &str) -> Result<Outcome> {
    serde_json::from_value(serde_json::Value::from(s)).map_err(|_| {
        CoreError::InvalidInput(format!(
            "--outcome '{s}': use allowed, denied, failed or intent"
        ))
        .into()
    })
}

pub(crate) fn audit(ctx: &Ctx, cmd: AuditCommand) -> Result<u8> {
    let m = ctx.manager()?;
    let dir = m.audit().dir();
    match cmd {
        AuditCommand::Verify {
            json,
            expect_records,
            expect_head,
        } => {
            let report = match expect_records {
                Some(records) => m.audit().verify_expecting(&keyhaven::audit::Expectation {
                    records,
                    head: expect_head,
                })?,
                None => m.audit().verify()?,
            };
            if json {
                print_json(&AuditVerifyJson::from(&report))?;
            } else if report.is_ok() {
                outln!(
                    "audit log intact: {} records in {} file(s) ({} events, {} signed \
                     checkpoints; {} records after the last checkpoint)",
                    report.records,
                    report.files,
                    report.events,
                    report.checkpoints,
                    report.unsealed
                )?;
                if let Some(head) = &report.head {
                    errln!(
                        "Keep `--expect-records {} --expect-head {head}` to check later that \
                         nothing was removed from its end.",
                        report.records
                    );
                }
            }
            if !report.unfinished.is_empty() {
                let shown: Vec<String> = report
                    .unfinished
                    .iter()
                    .take(20)
                    .map(u64::to_string)
                    .collect();
                errln!(
                    "note: {} operation(s) have an intent record and no outcome: still running, \
                     or a crash came between the operation and its outcome record (outcomes are \
                     made durable with the next record; `keyhaven audit search` shows them): \
                     record(s) {}{}",
                    report.unfinished.len(),
                    shown.join(", "),
                    if report.unfinished.len() > 20 {
                        ", ..."
                    } else {
                        ""
                    }
                );
            }
            for b in &report.breaks {
                let kept: Vec<&str> = b.damaged.iter().map(|d| d.kept_as.as_str()).collect();
                errln!(
                    "BREAK recorded at {} (record {}, {}:{}): the log was damaged at {}; the \
                     damaged file(s) are kept as evidence: {}",
                    b.time,
                    b.seq,
                    b.file.display(),
                    b.line,
                    b.at,
                    if kept.is_empty() {
                        "none (records were missing from the end)".to_owned()
                    } else {
                        kept.join(", ")
                    }
                );
            }
            match &report.problem {
                None => Ok(OK),
                Some(p) => {
                    errln!(
                        "error: the audit log is damaged or tampered with: first bad record at \
                         {p} ({} records before it verify). Keep the files as evidence and \
                         investigate.",
                        report.records
                    );
                    Ok(CORRUPT)
                }
            }
        }
        AuditCommand::Recover => {
            let r = m.audit().recover()?;
            outln!("recovered: the log was damaged at {}", r.at)?;
            for k in &r.kept {
                outln!("kept as evidence: {}", k.display())?;
            }
            outln!(
                "the chain goes on in {} after a signed break record (record {}); `keyhaven audit \
                 verify` reports it",
                r.file.display(),
                r.break_seq
            )?;
            Ok(OK)
        }
        AuditCommand::Tail { lines, json } => {
            print_records(
                &keyhaven::audit::tail(&dir, lines).map_err(CoreError::from)?,
                json,
            )?;
            Ok(OK)
        }
        AuditCommand::Search {
            key,
            principal,
            operation,
            outcome,
            since,
            json,
        } => {
            let since_nanos = match since {
                None => None,
                Some(s) => {
                    let d: Duration = humantime_parse(&s)?;
                    let now = keyhaven::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    Some(u64::try_from(now.saturating_sub(d).as_nanos()).unwrap_or(u64::MAX))
                }
            };
            // A label or a logical key means every version's id; an id that names no key any
            // more (deleted) is searched as it is.
            let ids = match &key {
                None => None,
                Some(reference) => Some(key_ids_of(&m, reference)?),
            };
            let filter = Filter {
                key_id: None,
                principal,
                operation,
                outcome: outcome.as_deref().map(parse_outcome).transpose()?,
                since_nanos,
                until_nanos: None,
            };
            let mut found = keyhaven::audit::search(&dir, &filter).map_err(CoreError::from)?;
            if let Some(ids) = &ids {
                found.retain(|r| match &r.body {
                    keyhaven::audit::Body::Event(e) => {
                        e.key_id.as_ref().is_some_and(|k| ids.contains(k))
                    }
                    _ => false,
                });
            }
            print_records(&found, json)?;
            if !json {
                errln!("{} record(s)", found.len());
            }
            Ok(OK)
        }
        AuditCommand::Rotate | AuditCommand::Checkpoint => {
            let log = m.audit().log()?.ok_or_else(|| CoreError::Unsupported {
                operation: "rotate or checkpoint the audit log",
                reason: "auditing is off in this home ([audit] enabled = false)".into(),
            })?;
            if matches!(cmd, AuditCommand::Rotate) {
                let path = log.rotate().map_err(CoreError::from)?;
                outln!("{}", path.display())?;
            } else {
                let seq = log.checkpoint().map_err(CoreError::from)?;
                outln!("checkpoint at record {seq}")?;
            }
            Ok(OK)
        }
        AuditCommand::Export { json: _, out } => {
            let mut buf = Vec::new();
            keyhaven::audit::export_json(&dir, &mut buf).map_err(CoreError::from)?;
            buf.push(b'\n');
            match out {
                Some(path) => keyhaven::fs::atomic_write(&path, &buf)?,
                None => crate::output::write_stdout(&buf)?,
            }
            Ok(OK)
        }
    }
}

/// The key ids `reference` stands for in the audit log: each version's of a logical key (by
/// label, logical id or any version's id), the key's own, or the reference itself (a key
/// deleted since, whose id the log still holds).
fn key_ids_of(m: &keyhaven::KeyManager, reference: &str) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::from([reference.to_owned()]);
    if let Some(logical) = m.rotation().find_logical_key(reference)? {
        ids.extend(logical.versions().iter().map(|v| v.key_id().to_string()));
        return Ok(ids);
    }
    match m.resolve(reference) {
        Ok(key) => {
            ids.insert(key.id().to_string());
            if let Some(logical) = m.rotation().logical_key(&key)? {
                ids.extend(logical.versions().iter().map(|v| v.key_id().to_string()));
            }
        }
        Err(e) if e.kind() == keyhaven::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(ids)
}

fn humantime_parse(s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| {
        CoreError::InvalidInput(format!(
            "'{s}' is not a duration ({e}); use e.g. 90s, 15m, 1h, 7d"
        ))
        .into()
    })
}

/// An enum's name as it is written in JSON (`suspected`, `high`, `open`): the one spelling
/// of a report's type, severity and status in both outputs.
fn wire_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("(unprintable: {e})"),
    }
}

fn print_report(r: &CompromiseReport) -> Result<()> {
    outln!("report     {}", r.id)?;
    outln!(
        "key        {}{}",
        r.backend
            .as_deref()
            .map(|b| format!("{b}:"))
            .unwrap_or_default(),
        r.key_id
    )?;
    outln!("type       {}", wire_name(&r.kind))?;
    outln!("severity   {}", wire_name(&r.severity))?;
    outln!("detection  {}", r.detection.as_str())?;
    outln!("found      {} by {}", rfc3339(r.discovered_at), r.reporter)?;
    outln!("status     {}", wire_name(&r.status))?;
    for e in &r.evidence {
        let seqs = if e.audit_seqs.is_empty() {
            String::new()
        } else {
            format!(
                " [audit records {}]",
                e.audit_seqs
                    .iter()
                    .take(10)
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        outln!("evidence   {}{seqs}", e.description)?;
    }
    for a in &r.actions {
        outln!(
            "action     {} {} {}: {}",
            rfc3339(a.at),
            a.action,
            if a.ok {
                "ok"
            } else if a.not_configured {
                "not configured"
            } else {
                "FAILED"
            },
            a.detail
        )?;
    }
    Ok(())
}

pub(crate) fn compromise(ctx: &Ctx, cmd: CompromiseCommand) -> Result<u8> {
    let m = ctx.manager()?;
    let result = compromise_in(&m, cmd);
    print_warnings(&m);
    result
}

fn compromise_in(m: &KeyManager, cmd: CompromiseCommand) -> Result<u8> {
    match cmd {
        CompromiseCommand::Report {
            key,
            kind,
            severity,
            evidence,
            role,
            json,
        } => {
            let key = m.resolve(&key)?;
            let kind = if kind == "confirmed" {
                CompromiseType::Confirmed
            } else {
                CompromiseType::Suspected
            };
            let severity: Severity = severity.parse().map_err(CoreError::from)?;
            let r = m
                .compromise()
                .report(&key, kind, severity, &evidence, role.as_deref())?;
            if json {
                print_json(&r)?;
            } else {
                outln!("{}", r.id)?;
                errln!(
                    "Filed. Respond with `keyhaven compromise respond {}` (revokes the key, \
                     rotates it where possible, notifies).",
                    r.id
                );
            }
            Ok(OK)
        }
        CompromiseCommand::List { json } => {
            let reports = m.compromise().reports()?.list().map_err(CoreError::from)?;
            if json {
                print_json(&reports)?;
            } else {
                let rows: Vec<Vec<String>> = reports
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.key_id.clone(),
                            wire_name(&r.kind),
                            wire_name(&r.severity),
                            r.detection.as_str().to_owned(),
                            wire_name(&r.status),
                            rfc3339(r.discovered_at),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "REPORT",
                        "KEY",
                        "TYPE",
                        "SEVERITY",
                        "DETECTION",
                        "STATUS",
                        "FOUND",
                    ],
                    &rows,
                )?;
            }
            Ok(OK)
        }
        CompromiseCommand::Show { id, json } => {
            let r = m
                .compromise()
                .reports()?
                .get(&id)
                .map_err(CoreError::from)?;
            if json {
                print_json(&r)?;
            } else {
                print_report(&r)?;
            }
            Ok(OK)
        }
        CompromiseCommand::Scan { json } => {
            let outcome = m.compromise().scan(&[])?;
            if json {
                print_json(&ScanJson {
                    findings: &outcome.findings,
                    filed: outcome.filed.iter().map(|r| r.id.as_str()).collect(),
                })?;
            } else {
                for f in &outcome.findings {
                    outln!(
                        "{} {}: {}",
                        wire_name(&f.severity),
                        f.method.as_str(),
                        f.summary
                    )?;
                }
                for r in &outcome.filed {
                    errln!(
                        "filed {} for key {} ({})",
                        r.id,
                        r.key_id,
                        r.detection.as_str()
                    );
                }
                errln!(
                    "{} finding(s), {} new report(s)",
                    outcome.findings.len(),
                    outcome.filed.len()
                );
            }
            Ok(OK)
        }
        CompromiseCommand::Dismiss { id, reason } => {
            let r = m.compromise().dismiss(&id, &reason)?;
            outln!("{}: dismissed ({reason})", r.id)?;
            Ok(OK)
        }
        CompromiseCommand::Reopen { id, reason } => {
            let r = m.compromise().reopen(&id, &reason)?;
            outln!("{}: open again ({reason})", r.id)?;
            Ok(OK)
        }
        CompromiseCommand::Respond { id, scope, json } => {
            let outcome = if scope == "home" {
                m.compromise().respond_to_home(&id)?
            } else {
                m.compromise().respond(&id, None)?
            };
            if json {
                print_json(&outcome.report)?;
            } else {
                print_report(&outcome.report)?;
            }
            let failed: Vec<&str> = outcome
                .report
                .actions
                .iter()
                .filter(|a| !a.ok && !a.not_configured)
                .map(|a| a.action.as_str())
                .collect();
            if !failed.is_empty() {
                let again = if scope == "home" {
                    format!("keyhaven compromise respond {id} --scope home")
                } else {
                    format!("keyhaven compromise respond {id}")
                };
                return Err(CoreError::Unavailable {
                    backend: "compromise response".into(),
                    reason: format!(
                        "step(s) {} of report {id} failed (see the actions above; the others \
                         were done); fix the cause and run `{again}` again: revocation and \
                         rotation are not repeated",
                        failed.join(", ")
                    ),
                }
                .into());
            }
            Ok(OK)
        }
    }
}

pub(crate) fn revocations(ctx: &Ctx, cmd: RevocationsCommand) -> Result<u8> {
    let m = ctx.manager()?;
    match cmd {
        RevocationsCommand::List { json } => {
            let all = m.revocations().registry()?.all().map_err(CoreError::from)?;
            if json {
                print_json(&serde_json::to_value(&all)?)?;
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|r| {
                        vec![
                            r.key_id.clone(),
                            rfc3339(r.revoked_at),
                            if r.compromised { "yes" } else { "no" }.to_owned(),
                            r.reason.clone(),
                        ]
                    })
                    .collect();
                print_table(&["KEY", "REVOKED", "COMPROMISED", "REASON"], &rows)?;
            }
        }
        RevocationsCommand::Import { file, authority } => {
            let list = keyhaven::compromise::RevocationList::parse(&crate::output::read_file(
                &file,
                "revocation list",
            )?)
            .map_err(CoreError::from)?;
            let added = m.revocations().import(&list, Some(&authority))?;
            outln!(
                "{added} new revocation(s) recorded ({} in the list)",
                list.statements.len()
            )?;
        }
        RevocationsCommand::Export { out } => {
            let list = m.revocations().export()?;
            let text = format!("{}\n", list.to_json().map_err(CoreError::from)?);
            match out {
                Some(path) => keyhaven::fs::atomic_write(&path, text.as_bytes())?,
                None => crate::output::write_stdout(text.as_bytes())?,
            }
            errln!(
                "authority fingerprint: {} (verifiers pin it: keyhaven verify --revocations FILE \
                 --authority {})",
                list.issuer.fingerprint,
                &list.issuer.fingerprint[..16.min(list.issuer.fingerprint.len())]
            );
        }
    }
    Ok(OK)
}

pub(crate) fn revoke(
    m: &KeyManager,
    reference: &str,
    reason: &str,
    compromised: bool,
) -> Result<u8> {
    let key = m.resolve(reference)?;
    let statement = m.revocations().revoke(&key, reason, compromised, None)?;
    if statement.key_id == key.id().as_str() {
        outln!("revoked {} from {}", key, rfc3339(statement.revoked_at))?;
    } else {
        outln!(
            "revoked {}:{} (the primary version of {}) from {}",
            key.backend,
            statement.key_id,
            key.label(),
            rfc3339(statement.revoked_at)
        )?;
    }
    if compromised {
        let r = m.compromise().report(
            &key,
            CompromiseType::Confirmed,
            Severity::Critical,
            &[format!("revoked by {}: {reason}", m.caller().principal)],
            None,
        )?;
        errln!(
            "Filed compromise report {}. Run `keyhaven compromise respond {}` to rotate, look \
             back over the key's use and notify.",
            r.id,
            r.id
        );
    }
    Ok(OK)
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; exit 7 naming the first bad record.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The record count an earlier verification printed: fewer now means records were
        /// removed from the end (or the log replaced), even after the last checkpoint.
        #[arg(long, value_name = "N")]
        expect_records: Option<u64>,
        /// The head an earlier verification printed (with --expect-records): the record at that
        /// position must still hash to it.
        #[arg(long, value_name = "HEX", requires = "expect_records")]
        expect_head: Option<String>,
    },
    /// The last records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Records matching every filter given.
    Search {
        /// Only this key: an id, a label or a logical key (every version of it).
        #[arg(long, value_name = "ID|LABEL")]
        key: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only this operation (sign, generate, delete, revoke, ...).
        #[arg(long)]
        operation: Option<String>,
        /// Only this outcome: allowed, denied, failed, intent.
        #[arg(long)]
        outcome: Option<String>,
        /// Only records this recent (a duration such as 1h or 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Seal the current log file with a signed checkpoint and start the next one (the chain
    /// runs on across files); prints the new file.
    Rotate,
    /// Write a signed checkpoint of the chain head now.
    Checkpoint,
    /// Recover a damaged log without hiding the damage: set the damaged files aside (kept as
    /// evidence), keep the good records, and record a break signed by the authority, which
    /// `audit verify` reports from then on.
    Recover,
    /// Every record as one JSON array.
    Export {
        /// JSON (the only format).
        #[arg(long, required = true)]
        json: bool,
        /// Write to this file (0600, atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CompromiseCommand {
    /// File a report for a key.
    Report {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// suspected or confirmed.
        #[arg(long = "type", value_name = "TYPE", default_value = "suspected", value_parser = ["suspected", "confirmed"])]
        kind: String,
        /// low, medium, high or critical.
        #[arg(long, default_value = "high", value_parser = ["low", "medium", "high", "critical"])]
        severity: String,
        /// What shows it (repeatable).
        #[arg(long)]
        evidence: Vec<String>,
        /// The key's role, which selects the response procedure.
        #[arg(long)]
        role: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the reports.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one report.
    Show {
        /// The report id (CR-...).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scan the audit log for suspicious use and file a suspected report per new finding.
    Scan {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the response procedure of a report (revoke, rotate, lookback, notify).
    Respond {
        /// The report id (CR-...).
        id: String,
        /// `key` (the reported key) or `home` (then every key of the home is rotated too: the
        /// whole home is compromised).
        #[arg(long, default_value = "key", value_parser = ["key", "home"])]
        scope: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a report as not a compromise (a false positive); it is not responded to until
    /// reopened. Who and why are kept with it.
    Dismiss {
        /// The report id (CR-...).
        id: String,
        /// Why it is not a compromise.
        #[arg(long)]
        reason: String,
    },
    /// Open a dismissed report again.
    Reopen {
        /// The report id (CR-...).
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RevocationsCommand {
    /// List the revoked keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the signed list that verifiers load (`keyhaven verify --revocations`).
    Export {
        /// Write to this file (atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Record the statements of an exported list in this home (a home restored from a backup
    /// taking in revocations made since): its keys are then refused here too.
    Import {
        /// The list (`keyhaven revocations export`).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The fingerprint (hex, at least 16 characters) of the authority that must have
        /// signed it (`keyhaven revocations export` prints it).
        #[arg(long, value_name = "FINGERPRINT")]
        authority: String,
    },
}
