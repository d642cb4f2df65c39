//! `doctor()`: what is configured, what can be reached, and how well keys are protected.

use std::path::PathBuf;

use serde::Serialize;

use crate::manager::KeyManager;
use crate::{ErrorKind, Protection};

/// The state of one configured backend.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BackendReport {
    /// The configured name.
    pub name: String,
    /// The backend type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where its keys are.
    pub location: String,
    /// Whether it could be opened (a store not created yet counts as reachable).
    pub reachable: bool,
    /// Whether its store exists yet (file backends create it on first use).
    pub initialized: bool,
    /// Why it could not be opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The meaning of that error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// The protection of its keys.
    pub protection: Protection,
    /// How many keys it holds, when reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// Damaged records and other problems it reports, one line each.
    pub damaged: Vec<String>,
    /// Whether it is the default backend.
    pub default: bool,
    /// Whether it is the fallback backend.
    pub fallback: bool,
    /// Whether its keys vanish when the process exits (`memory`).
    pub ephemeral: bool,
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DoctorReport {
    /// The keyhaven home.
    pub home: PathBuf,
    /// The configuration file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    /// Whether the configuration file exists.
    pub config_exists: bool,
    /// Each configured backend.
    pub backends: Vec<BackendReport>,
    /// The default key as `BACKEND:ID`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_key: Option<String>,
    /// Why the default key cannot be used, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_key_error: Option<String>,
    /// Whether the fallback rule is on, and to which backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Whether falling back is allowed.
    pub fallback_allowed: bool,
}

impl DoctorReport {
    /// Whether everything configured is reachable and undamaged.
    pub fn healthy(&self) -> bool {
        self.default_key_error.is_none()
            && self
                .backends
                .iter()
                .all(|b| b.reachable && b.damaged.is_empty())
    }
}

impl KeyManager {
    /// Examines every configured backend without the fallback rule and without creating
    /// anything: reachable or why not, protection, key count, damaged records.
    pub fn doctor(&self) -> DoctorReport {
        let config = self.config();
        let mut backends = Vec::new();
        for (name, bc) in &config.backends {
            let location = self
                .backend_path(name)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "process memory (ephemeral)".into());
            let mut report = BackendReport {
                name: name.clone(),
                kind: bc.kind.name().to_owned(),
                location,
                reachable: false,
                initialized: false,
                error: None,
                error_kind: None,
                protection: bc.kind.protection(),
                keys: None,
                damaged: Vec::new(),
                default: config.default_backend.as_deref() == Some(name.as_str()),
                fallback: config.fallback.backend.as_deref() == Some(name.as_str()),
                ephemeral: bc.kind.is_ephemeral(),
            };
            match self.probe(name) {
                Ok(Some(b)) => {
                    report.reachable = true;
                    report.initialized = true;
                    report.protection = b.store().info().protection;
                    match b.store().list() {
                        Ok(keys) => report.keys = Some(keys.len()),
                        Err(e) => {
                            report.error_kind = Some(ErrorKind::of_core(&e));
                            report.error = Some(e.to_string());
                        }
                    }
                    match b.store().check() {
                        Ok(problems) => {
                            report.damaged = problems.iter().map(ToString::to_string).collect();
                        }
                        Err(e) => report.damaged.push(e.to_string()),
                    }
                }
                Ok(None) => {
                    report.reachable = true;
                    report.keys = Some(0);
                }
                Err(e) => {
                    report.error_kind = Some(e.kind());
                    report.error = Some(e.to_string());
                }
            }
            backends.push(report);
        }
        let (default_key, default_key_error) = match &config.default_key {
            None => (None, None),
            Some(d) => {
                let name = format!("{}:{}", d.backend, d.id);
                let reachable = backends.iter().any(|b| b.name == d.backend && b.reachable);
                let err = if reachable {
                    self.default_key().err().map(|e| e.to_string())
                } else {
                    Some(format!("backend '{}' is not reachable", d.backend))
                };
                (Some(name), err)
            }
        };
        DoctorReport {
            home: self.home().to_owned(),
            config_file: self.config_path().map(ToOwned::to_owned),
            config_exists: self.config_path().is_some_and(|p| p.exists()),
            backends,
            default_key,
            default_key_error,
            fallback: config.fallback.backend.clone(),
            fallback_allowed: config.fallback.allow,
        }
    }
}
