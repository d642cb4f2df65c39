//! `doctor()`: what is configured, what can be reached, and how well keys are protected.

use std::path::PathBuf;

use serde::Serialize;

use crate::backend::Backend;
use crate::manager::KeyManager;
use crate::{BackendConfig, Error, ErrorKind, Protection, Result};

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
    /// For `pkcs11` backends: the token, read without a PIN (also when the backend cannot be
    /// opened for another reason, such as a missing PIN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenDiagnosis>,
    /// For `tpm` backends (in builds with the `tpm` feature): the TPM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmDiagnosis>,
}

/// A PKCS#11 token, as `keyhaven doctor` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TokenDiagnosis {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The module's description and version.
    pub library: String,
    /// The slot holding the token.
    pub slot_id: u64,
    /// The token's label.
    pub label: String,
    /// The token's manufacturer.
    pub manufacturer: String,
    /// The token's model.
    pub model: String,
    /// The token's serial number.
    pub serial: String,
    /// The token's hardware version.
    pub hardware_version: String,
    /// The token's firmware version.
    pub firmware_version: String,
    /// Slots of the module with no initialized token.
    pub free_slots: usize,
    /// Slots the module has.
    pub total_slots: usize,
    /// The user PIN's state: `set`, `not set`, `LOCKED`, `set, one try left`, ...
    pub user_pin: String,
    /// The mechanisms keyhaven uses, and whether the token has each.
    pub mechanisms: Vec<MechanismDiagnosis>,
    /// The needed mechanisms it lacks (empty when all are there).
    pub missing: Vec<String>,
}

/// One PKCS#11 mechanism keyhaven uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MechanismDiagnosis {
    /// Its name, e.g. `CKM_ECDSA`.
    pub name: String,
    /// What keyhaven needs it for.
    pub needed_for: String,
    /// Whether the token has it.
    pub present: bool,
}

/// A TPM, as `keyhaven doctor` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TpmDiagnosis {
    /// The TCTI it was reached through.
    pub tcti: String,
    /// The manufacturer's id, e.g. `IBM` for swtpm.
    pub manufacturer: String,
    /// The vendor strings.
    pub vendor: String,
    /// The firmware version.
    pub firmware_version: String,
    /// The TPM 2.0 specification revision.
    pub spec_revision: String,
    /// How many objects it can hold loaded at once.
    pub transient_slots: u32,
    /// The ECC curves it implements.
    pub ecc_curves: Vec<String>,
    /// The curves of keyhaven's TPM keys (P-384, P-256) it lacks.
    pub missing_curves: Vec<String>,
}

#[cfg(feature = "pkcs11")]
impl From<keyhaven_hsm_pkcs11::TokenReport> for TokenDiagnosis {
    fn from(r: keyhaven_hsm_pkcs11::TokenReport) -> Self {
        let user_pin = if r.user_pin_locked {
            "LOCKED"
        } else if !r.user_pin_initialized {
            "not set"
        } else if r.user_pin_final_try {
            "set, one try left"
        } else if r.user_pin_count_low {
            "set, a wrong PIN was given recently"
        } else {
            "set"
        };
        TokenDiagnosis {
            missing: r.missing().iter().map(|m| m.name.to_owned()).collect(),
            library: format!(
                "{} {} {}",
                r.library_manufacturer, r.library, r.library_version
            ),
            module: r.module,
            slot_id: r.slot_id,
            label: r.label,
            manufacturer: r.manufacturer,
            model: r.model,
            serial: r.serial,
            hardware_version: r.hardware_version,
            firmware_version: r.firmware_version,
            free_slots: r.free_slots,
            total_slots: r.total_slots,
            user_pin: user_pin.to_owned(),
            mechanisms: r
                .mechanisms
                .into_iter()
                .map(|m| MechanismDiagnosis {
                    name: m.name.to_owned(),
                    needed_for: m.needed_for.to_owned(),
                    present: m.present,
                })
                .collect(),
        }
    }
}

#[cfg(feature = "tpm")]
impl From<keyhaven_hsm_tpm::TpmReport> for TpmDiagnosis {
    fn from(r: keyhaven_hsm_tpm::TpmReport) -> Self {
        let mut missing_curves = Vec::new();
        if !r.supports_p384() {
            missing_curves.push("NIST P-384".to_owned());
        }
        if !r.supports_p256() {
            missing_curves.push("NIST P-256".to_owned());
        }
        TpmDiagnosis {
            tcti: r.tcti,
            manufacturer: r.manufacturer,
            vendor: r.vendor,
            firmware_version: r.firmware_version,
            spec_revision: r.spec_revision,
            transient_slots: r.transient_slots,
            ecc_curves: r.ecc_curves,
            missing_curves,
        }
    }
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
    /// Whether the home's state is authenticated, and by which backend (see
    /// [`crate::integrity`]).
    pub integrity: String,
    /// State files changed outside keyhaven (each names its file), or why the manifest cannot
    /// vouch for the home.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub integrity_problems: Vec<String>,
    /// The operating system's keyrings this keyhaven can use (built with the `keyring`
    /// feature): the Secret Service's default collection, the kernel user keyring and every
    /// configured keyring backend's: ready, locked or unreachable, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keyrings: Vec<KeyringReport>,
}

/// One OS keyring's state.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct KeyringReport {
    /// Which keyring, in words.
    pub keyring: String,
    /// `ready`, `locked` or `unreachable`.
    pub state: String,
    /// How to unlock it, or why it cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl KeyManager {
    /// The state of the OS keyrings (see [`DoctorReport::keyrings`]).
    #[cfg(feature = "keyring")]
    fn keyrings(&self, config: &crate::Config) -> Vec<KeyringReport> {
        use keyhaven_store_keyring::{Keyring, KeyringStatus, probe};
        let mut wanted = vec![Keyring::secret_service()];
        #[cfg(target_os = "linux")]
        wanted.push(Keyring::Kernel(keyhaven_store_keyring::KernelKeyring::User));
        for bc in config.backends.values() {
            if bc.kind == crate::BackendKind::Keyring
                && let Ok(k) = crate::backend::keyring_of(bc)
                && !wanted.contains(&k)
            {
                wanted.push(k);
            }
        }
        wanted
            .iter()
            .map(|k| match probe(k) {
                KeyringStatus::Ready { keyring } => KeyringReport {
                    keyring,
                    state: "ready".into(),
                    detail: None,
                },
                KeyringStatus::Locked { keyring, hint } => KeyringReport {
                    keyring,
                    state: "locked".into(),
                    detail: Some(hint),
                },
                KeyringStatus::Unreachable { keyring, reason } => KeyringReport {
                    keyring,
                    state: "unreachable".into(),
                    detail: Some(reason),
                },
                _ => KeyringReport {
                    keyring: format!("{k:?}"),
                    state: "unknown".into(),
                    detail: None,
                },
            })
            .collect()
    }

    #[cfg(not(feature = "keyring"))]
    fn keyrings(&self, _config: &crate::Config) -> Vec<KeyringReport> {
        Vec::new()
    }
}

impl DoctorReport {
    /// Whether everything configured is reachable and undamaged, and every token and TPM has
    /// what keyhaven needs.
    pub fn healthy(&self) -> bool {
        self.default_key_error.is_none()
            && self.integrity_problems.is_empty()
            && self.backends.iter().all(|b| {
                b.reachable
                    && b.damaged.is_empty()
                    && b.token.as_ref().is_none_or(|t| t.missing.is_empty())
                    && b.tpm.as_ref().is_none_or(|t| t.missing_curves.is_empty())
            })
    }
}

impl KeyManager {
    /// Examines every configured backend without the fallback rule and without creating
    /// anything: reachable or why not, protection, key count, damaged records.
    pub fn doctor(&self) -> DoctorReport {
        let config = self.config();
        let mut backends = Vec::new();
        for (name, bc) in &config.backends {
            backends.push(self.examine(&config, name, bc));
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
        let (integrity, integrity_problems) = self.diagnose_integrity();
        DoctorReport {
            keyrings: self.keyrings(&config),
            integrity,
            integrity_problems,
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

impl KeyManager {
    /// The doctor's report of one backend (see [`KeyManager::doctor`]): for `backend add` to
    /// say at once what a new backend lacks (a token without the mechanisms keyhaven needs).
    ///
    /// # Errors
    /// [`Error::UnknownBackend`] if no backend has that name.
    pub fn doctor_backend(&self, name: &str) -> Result<BackendReport> {
        let config = self.config();
        let bc = config
            .backends
            .get(name)
            .ok_or_else(|| Error::UnknownBackend {
                name: name.to_owned(),
                known: config.backend_names().join(", "),
            })?;
        Ok(self.examine(&config, name, bc))
    }

    /// Examines one backend without the fallback rule and without creating anything.
    fn examine(&self, config: &crate::Config, name: &str, bc: &BackendConfig) -> BackendReport {
        let location = config
            .backend_location(self.home(), name)
            .unwrap_or_default();
        let mut report = BackendReport {
            name: name.to_owned(),
            kind: bc.kind.name().to_owned(),
            location,
            reachable: false,
            initialized: false,
            error: None,
            error_kind: None,
            protection: bc.kind.protection(),
            keys: None,
            damaged: Vec::new(),
            default: config.default_backend.as_deref() == Some(name),
            fallback: config.fallback.backend.as_deref() == Some(name),
            ephemeral: bc.kind.is_ephemeral(),
            token: None,
            tpm: None,
        };
        let probed = self.probe(name);
        match &probed {
            Ok(Some(b)) => {
                report.location = b.location().to_owned();
                report.reachable = true;
                report.initialized = true;
                report.protection = b.store().info().protection;
                match b.store().list() {
                    Ok(keys) => report.keys = Some(keys.len()),
                    Err(e) => {
                        report.error_kind = Some(e.kind());
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
        self.diagnose_device(name, bc, &probed, &mut report);
        report
    }
}

impl KeyManager {
    /// The integrity line of the report, and every problem found.
    fn diagnose_integrity(&self) -> (String, Vec<String>) {
        use crate::IntegrityStatus;
        match self.integrity_status() {
            Ok(IntegrityStatus::Sealed {
                anchor,
                counter,
                generation,
                files,
            }) => {
                let problems = match self.verify_integrity() {
                    Ok(p) => p.iter().map(ToString::to_string).collect(),
                    Err(e) => vec![e.to_string()],
                };
                (
                    format!(
                        "sealed by backend '{anchor}' ({files} state files, {generation} \
                         changes); {}",
                        counter.map_or_else(
                            || "no rollback counter".to_owned(),
                            |c| format!("bound to the rollback counter {c}")
                        )
                    ),
                    problems,
                )
            }
            Ok(IntegrityStatus::NotYetSealed { anchor }) => (
                format!("not sealed yet (sealed when backend '{anchor}' creates its store)"),
                Vec::new(),
            ),
            Ok(_) => (
                format!(
                    "NOT SEALED: {}; its state files are protected by file permissions only",
                    crate::integrity::NO_ANCHOR
                ),
                Vec::new(),
            ),
            Err(e) => ("cannot be checked".into(), vec![e.to_string()]),
        }
    }

    /// Adds the token's or the TPM's own report to a hardware backend's report. A token is read
    /// without a PIN; a TPM that cannot be reached makes the backend unreachable.
    fn diagnose_device(
        &self,
        name: &str,
        config: &BackendConfig,
        probed: &Result<Option<Backend>>,
        report: &mut BackendReport,
    ) {
        let opened = probed.as_ref().ok().and_then(Option::as_ref);
        match config.kind {
            #[cfg(feature = "pkcs11")]
            crate::BackendKind::Pkcs11 => {
                let token = match opened.and_then(Backend::pkcs11_store) {
                    Some(store) => store.report().ok(),
                    None => crate::backend::pkcs11_target(name, config, self.home())
                        .ok()
                        .and_then(|(module, selector)| {
                            keyhaven_hsm_pkcs11::TokenReport::probe(&module, &selector).ok()
                        }),
                };
                report.token = token.map(TokenDiagnosis::from);
            }
            #[cfg(feature = "tpm")]
            crate::BackendKind::Tpm => {
                let tpm = match opened.and_then(Backend::tpm_store) {
                    Some(store) => store.report(),
                    None => match (&config.tcti, probed) {
                        (Some(tcti), Ok(None)) => keyhaven_hsm_tpm::TpmReport::probe(tcti),
                        // Not opened because of an error, which the report already carries.
                        _ => return,
                    },
                };
                match tpm {
                    Ok(t) => report.tpm = Some(t.into()),
                    Err(e) => {
                        report.reachable = false;
                        report.error_kind = Some(e.kind());
                        report.error = Some(e.to_string());
                    }
                }
            }
            _ => {
                let _ = (name, opened, report);
            }
        }
    }
}
