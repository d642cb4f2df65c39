//! Compromise reports (seed 003 §7.5) and the directory that keeps them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::Finding;
use crate::error::{CompromiseError, Result};

/// Suspected (found by a scan, not yet confirmed) or confirmed by a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompromiseType {
    /// Found by detection or reported without proof.
    Suspected,
    /// Known to be compromised.
    Confirmed,
}

/// How bad a compromise is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Likely misuse.
    Medium,
    /// Probable compromise.
    High,
    /// A key known to be in the wrong hands, or used after revocation.
    Critical,
}

/// How the compromise was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectionMethod {
    /// Reported by a person (`keyhaven compromise report`, `keyhaven key revoke`).
    Manual,
    /// A revoked key was used or tried.
    RevokedKeyUse,
    /// A retired key version was used.
    RetiredKeyUse,
    /// Signing far above the key's own baseline.
    RateAnomaly,
    /// A principal never seen for the key.
    NewPrincipal,
    /// A host never seen for the key.
    NewHost,
    /// The key used from two hosts within a short time (a copy of it in use elsewhere).
    ConcurrentHosts,
    /// Many failed operations on the key in a short time.
    FailureBurst,
    /// Many denied operations in a short time.
    DeniedBurst,
    /// A request or message id seen twice.
    Replay,
}

impl DetectionMethod {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionMethod::Manual => "manual",
            DetectionMethod::RevokedKeyUse => "revoked-key-use",
            DetectionMethod::RetiredKeyUse => "retired-key-use",
            DetectionMethod::RateAnomaly => "rate-anomaly",
            DetectionMethod::NewPrincipal => "new-principal",
            DetectionMethod::NewHost => "new-host",
            DetectionMethod::ConcurrentHosts => "concurrent-hosts",
            DetectionMethod::FailureBurst => "failure-burst",
            DetectionMethod::DeniedBurst => "denied-burst",
            DetectionMethod::Replay => "replay",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = CompromiseError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => {
                return Err(CompromiseError::Invalid(format!(
                    "unknown severity '{s}': use low, medium, high or critical"
                )));
            }
        })
    }
}

/// Where a report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Filed, nothing done yet.
    Open,
    /// A response procedure ran (see the actions).
    Responded,
    /// A response step failed; see the actions and respond again.
    Incomplete,
    /// Closed as not a compromise.
    Dismissed,
}

/// A piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// What it shows.
    pub description: String,
    /// The audit records that show it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_seqs: Vec<u64>,
}

/// One response action taken (or attempted) for a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionTaken {
    /// When (seconds since the epoch).
    pub at: u64,
    /// `revoke`, `rotate`, `notify-command`, `notify-webhook`, `lookback`.
    pub action: String,
    /// Whether it succeeded (false for one not done: see `not_configured`).
    pub ok: bool,
    /// Not done because nothing is configured for it (a notification without a hook): neither
    /// a success nor a failure of the response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_configured: bool,
    /// What happened (the new key version, the hook's answer, the error, ...).
    pub detail: String,
}

/// A compromise report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompromiseReport {
    /// `CR-YYYYMMDD-xxxxxxxx`.
    pub id: String,
    /// The key concerned.
    pub key_id: String,
    /// The backend holding it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The key's role (selects the response procedure), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Suspected or confirmed.
    #[serde(rename = "type")]
    pub kind: CompromiseType,
    /// How bad.
    pub severity: Severity,
    /// How it was found.
    pub detection: DetectionMethod,
    /// When it was found (seconds since the epoch).
    pub discovered_at: u64,
    /// Who filed it (a principal, or `scan`).
    pub reporter: String,
    /// The evidence.
    pub evidence: Vec<Evidence>,
    /// Where it stands.
    pub status: Status,
    /// The actions taken so far, in order.
    #[serde(default)]
    pub actions: Vec<ActionTaken>,
    /// The scan finding that produced it, if any (a finding is filed once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

impl CompromiseReport {
    /// A new open report with a fresh id.
    pub fn new(
        key_id: impl Into<String>,
        kind: CompromiseType,
        severity: Severity,
        detection: DetectionMethod,
        reporter: impl Into<String>,
        discovered_at: u64,
    ) -> Self {
        CompromiseReport {
            id: new_id(discovered_at),
            key_id: key_id.into(),
            backend: None,
            role: None,
            kind,
            severity,
            detection,
            discovered_at,
            reporter: reporter.into(),
            evidence: Vec::new(),
            status: Status::Open,
            actions: Vec::new(),
            finding: None,
        }
    }

    /// A suspected report for a scan finding (which must name a key).
    pub fn from_finding(f: &Finding, discovered_at: u64) -> Option<Self> {
        let key = f.key_id.as_deref()?;
        let mut r = CompromiseReport::new(
            key,
            CompromiseType::Suspected,
            f.severity,
            f.method,
            "scan",
            discovered_at,
        );
        r.evidence.push(Evidence {
            description: f.summary.clone(),
            audit_seqs: f.audit_seqs.clone(),
        });
        r.finding = Some(f.id.clone());
        Some(r)
    }

    /// The report as pretty JSON (what notifications carry).
    ///
    /// # Errors
    /// [`CompromiseError::Invalid`] if it cannot be encoded (kept so that a report file or a
    /// notification is never written empty).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| CompromiseError::Invalid(format!("cannot encode report {}: {e}", self.id)))
    }
}

fn new_id(at: u64) -> String {
    let mut rnd = [0u8; 4];
    // A failing system RNG leaves zeros; uniqueness is still checked when the file is created.
    let _ = keyhaven_crypto::fill_random(&mut rnd);
    let date = crate::revocation::rfc3339(at);
    let ymd: String = date.chars().take(10).filter(char::is_ascii_digit).collect();
    format!("CR-{ymd}-{}", hex::encode(rnd))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The reports of a keyhaven home: one JSON file per report in a private directory, written
/// atomically under a lock.
#[derive(Debug, Clone)]
pub struct ReportStore {
    dir: PathBuf,
}

impl ReportStore {
    /// Opens (creating it 0700 if missing) the report directory.
    ///
    /// # Errors
    /// The directory cannot be created or has loose permissions.
    pub fn open(dir: &Path) -> Result<Self> {
        keyhaven_fs::create_private_dir(dir)?;
        Ok(ReportStore {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(CompromiseError::ReportNotFound(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn lock(&self) -> Result<keyhaven_fs::FileLock> {
        Ok(keyhaven_fs::FileLock::acquire(&self.dir.join(".lock"))?)
    }

    fn write(&self, report: &CompromiseReport, new: bool) -> Result<()> {
        let path = self.path(&report.id)?;
        let json = report.to_json()?;
        if new {
            keyhaven_fs::atomic_write_new(&path, json.as_bytes())?;
        } else {
            keyhaven_fs::atomic_write(&path, json.as_bytes())?;
        }
        Ok(())
    }

    /// Files a new report.
    ///
    /// # Errors
    /// The id is taken or the file cannot be written.
    pub fn file(&self, report: &CompromiseReport) -> Result<()> {
        let _lock = self.lock()?;
        self.write(report, true)
    }

    /// Files a suspected report for each finding that names a key and was not filed before;
    /// returns the new reports.
    ///
    /// # Errors
    /// The directory cannot be read or a report cannot be written.
    pub fn file_findings(&self, findings: &[Finding], now: u64) -> Result<Vec<CompromiseReport>> {
        let _lock = self.lock()?;
        let known: std::collections::BTreeSet<String> =
            self.list()?.into_iter().filter_map(|r| r.finding).collect();
        let mut filed = Vec::new();
        for f in findings {
            if known.contains(&f.id) {
                continue;
            }
            if let Some(report) = CompromiseReport::from_finding(f, now) {
                self.write(&report, true)?;
                filed.push(report);
            }
        }
        Ok(filed)
    }

    /// One report.
    ///
    /// # Errors
    /// [`CompromiseError::ReportNotFound`], or a damaged file.
    pub fn get(&self, id: &str) -> Result<CompromiseReport> {
        let path = self.path(id)?;
        let bytes = match keyhaven_fs::read_private(&path) {
            Ok(b) => b,
            Err(keyhaven_core::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(CompromiseError::ReportNotFound(id.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| CompromiseError::corrupt(&path, e))
    }

    /// Every report, oldest first (by discovery time, then id).
    ///
    /// # Errors
    /// The directory or a report cannot be read (a damaged report is named).
    pub fn list(&self) -> Result<Vec<CompromiseReport>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            keyhaven_core::Error::io(format!("read directory {}", self.dir.display()), e)
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                keyhaven_core::Error::io(format!("read directory {}", self.dir.display()), e)
            })?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if valid_id(id) {
                out.push(self.get(id)?);
            }
        }
        out.sort_by(|a, b| (a.discovered_at, &a.id).cmp(&(b.discovered_at, &b.id)));
        Ok(out)
    }

    /// Read-modify-write of one report under the lock.
    ///
    /// # Errors
    /// [`CompromiseError::ReportNotFound`], an error from `f`, or a failed write.
    pub fn update<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut CompromiseReport) -> Result<T>,
    ) -> Result<T> {
        let _lock = self.lock()?;
        let mut report = self.get(id)?;
        let out = f(&mut report)?;
        self.write(&report, false)?;
        Ok(out)
    }
}
