//! Compromise by measurement, beyond every anchor: an admin revokes a measurement (a launch
//! digest, an MRTD, a GPU measurement), a TCB version, or a vendor advisory. Later evidence
//! carrying it is refused (403 `evidence-revoked`), whichever verifier accepted it; and the
//! audit trail answers which releases were made on evidence that carried it, since every
//! attested release records what its evidence carried. With `rewrap`, the broker then rotates
//! the KEK of each tenant and tier those releases drew from and rewraps every envelope under
//! it (the released plaintext is the owner's to rotate: the answer names each secret).
//!
//! - `POST /v1/admin/attestation/revocations` `{kind, value, reason, rewrap?}`: revoke, and
//!   list (and, asked, respond to) the releases it affects.
//! - `GET /v1/admin/attestation/revocations`: what is revoked.
//! - `POST /v1/admin/attestation/affected` `{kind, value}`: the releases on evidence carrying
//!   it, from the audit trail, without revoking anything.
//!
//! What it does not do: the list is as good as the trail, so check the trail first (`keyhaven
//! audit verify`, `keyhaven serve audit-verify`); a release whose evidence was checked just
//! before the revocation was stored, and recorded just after the trail was read, is neither
//! refused nor listed (the window is one request's processing); a measurement is matched by
//! value whatever register held it (revoking a value many evidence kinds share, such as
//! zeros, refuses them all); values that are not hex (a driver's version string) cannot be
//! revoked; and TDX collateral is the requester's, so an advisory published after an older
//! but still current TCB Info can be avoided unless the TDX policy sets a minimum TCB
//! evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::broker::{Broker, Call, Params, decided, vault_response};
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};

/// The setting holding the revocations (a JSON list).
const SETTING: &str = "attestation.revocations";
/// The most revocations kept.
const MAX_REVOCATIONS: usize = 1_000;
/// The marker before a release's record (JSON) at the end of its audit reason. Nothing before
/// it can contain it: a secret path has no spaces or ';'.
const RECORD_MARK: &str = "; record ";

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokedKind {
    /// A measurement, hex (any of the evidence's: launch digest, MRTD, RTMR, GPU index).
    Measurement,
    /// A TCB: `PLATFORM:COMPONENT<N` (every value below N) or `PLATFORM:COMPONENT=N`.
    Tcb,
    /// A vendor advisory id (`INTEL-SA-00837`).
    Advisory,
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRevocation {
    /// What it names.
    pub kind: RevokedKind,
    /// The value, normalised (hex lowercase, advisories uppercase).
    pub value: String,
    /// Why.
    pub reason: String,
    /// When (seconds since the epoch).
    pub at: u64,
    /// The admin who revoked it.
    pub by: String,
}

/// What a piece of evidence carried, flattened across its parts (a composite's CPU and GPU):
/// what a revocation is matched against, and what an attested release's audit record keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Carried {
    /// The evidence type.
    pub(crate) kind: String,
    /// Every measurement, hex lowercase.
    pub(crate) measurements: BTreeSet<String>,
    /// TCB components, as `platform:component`.
    pub(crate) tcb: BTreeMap<String, u64>,
    /// Advisory ids.
    pub(crate) advisories: BTreeSet<String>,
}

impl Carried {
    /// What the claims of verified evidence of `kind` carry.
    pub(crate) fn of(kind: &str, claims: &Value) -> Carried {
        let mut c = Carried {
            kind: kind.to_owned(),
            ..Carried::default()
        };
        c.collect(claims, 0);
        c
    }

    fn collect(&mut self, claims: &Value, depth: usize) {
        let Some(object) = claims.as_object() else {
            return;
        };
        if let Some(platform) = object.get("platform").and_then(Value::as_str) {
            if let Some(m) = object.get("measurements").and_then(Value::as_object) {
                for v in m.values().filter_map(Value::as_str) {
                    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        self.measurements.insert(v.to_ascii_lowercase());
                    }
                }
            }
            if let Some(t) = object.get("tcb").and_then(Value::as_object) {
                for (name, v) in t {
                    if let Some(v) = v.as_u64() {
                        self.tcb.insert(format!("{platform}:{name}"), v);
                    }
                }
            }
            if let Some(a) = object.get("advisory_ids").and_then(Value::as_array) {
                self.advisories.extend(
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_ascii_uppercase),
                );
            }
        } else if depth < 2 {
            // A composite: its parts.
            for part in object.values() {
                self.collect(part, depth + 1);
            }
        }
    }

    /// Whether this evidence carried what `r` names.
    pub(crate) fn carries(&self, r: &EvidenceRevocation) -> bool {
        match r.kind {
            RevokedKind::Measurement => self.measurements.contains(&r.value),
            RevokedKind::Advisory => self.advisories.contains(&r.value),
            RevokedKind::Tcb => match parse_tcb(&r.value) {
                Ok((component, below, n)) => self
                    .tcb
                    .get(component)
                    .is_some_and(|v| if below { *v < n } else { *v == n }),
                Err(_) => false,
            },
        }
    }
}

/// `PLATFORM:COMPONENT<N` or `PLATFORM:COMPONENT=N`: the component, whether it is "below",
/// and N.
fn parse_tcb(value: &str) -> Result<(&str, bool, u64), String> {
    let (component, below, n) = if let Some((c, n)) = value.split_once('<') {
        (c, true, n)
    } else if let Some((c, n)) = value.split_once('=') {
        (c, false, n)
    } else {
        return Err(format!(
            "TCB '{value}' is PLATFORM:COMPONENT<N or PLATFORM:COMPONENT=N \
             (sev-snp:microcode<213, tdx:tdx_module_svn=3)"
        ));
    };
    let n = n
        .parse()
        .map_err(|_| format!("TCB '{value}': '{n}' is not a whole number"))?;
    let platform = component.split(':').next().unwrap_or_default();
    if !["sev-snp", "tdx", "tpm", "nvidia-gpu", "sample"].contains(&platform)
        || component.split(':').nth(1).is_none_or(str::is_empty)
    {
        return Err(format!(
            "TCB '{value}' names no platform and component (sev-snp:COMPONENT, tdx:COMPONENT, \
             tpm:COMPONENT, nvidia-gpu:COMPONENT)"
        ));
    }
    Ok((component, below, n))
}

/// A revocation's value, checked and normalised.
fn normalise(kind: RevokedKind, value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = |v: &str| !v.is_empty() && v.len() <= 200 && v.chars().all(|c| c.is_ascii_graphic());
    if !ok(value) {
        return Err("'value' is 1 to 200 printable ASCII characters".into());
    }
    match kind {
        RevokedKind::Measurement => {
            if !value.len().is_multiple_of(2) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("measurement '{value}' is not hex"));
            }
            Ok(value.to_ascii_lowercase())
        }
        RevokedKind::Advisory => Ok(value.to_ascii_uppercase()),
        RevokedKind::Tcb => {
            let value = value.to_ascii_lowercase();
            let (component, below, n) = parse_tcb(&value)?;
            Ok(format!("{component}{}{n}", if below { '<' } else { '=' }))
        }
    }
}

/// The revocations in force.
pub(crate) fn revocations(broker: &Broker) -> Result<Vec<EvidenceRevocation>, ApiError> {
    match broker.storage().setting(SETTING)? {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            tracing::error!(error = %e, "the stored evidence revocations do not parse");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the stored evidence revocations are damaged; nothing is released until an \
                 operator restores them",
            )
        }),
    }
}

/// Refuses evidence that carried something revoked.
pub(crate) fn check(broker: &Broker, carried: &Carried) -> Result<(), ApiError> {
    if let Some(r) = revocations(broker)?.iter().find(|r| carried.carries(r)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "evidence-revoked",
            format!(
                "the evidence carries {} {}, which an admin revoked: {}",
                match r.kind {
                    RevokedKind::Measurement => "measurement",
                    RevokedKind::Tcb => "TCB",
                    RevokedKind::Advisory => "advisory",
                },
                r.value,
                r.reason
            ),
        ));
    }
    Ok(())
}

/// What a release's audit record keeps, whole: where it drew from and what its evidence
/// carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReleaseRecord {
    /// The tenant it drew from.
    pub(crate) tenant: String,
    /// The secret.
    pub(crate) path: String,
    /// Its version.
    pub(crate) version: u64,
    /// The secret's tier.
    pub(crate) tier: u8,
    /// The receipt id.
    pub(crate) receipt: String,
    /// What the requester's evidence carried (none without evidence).
    pub(crate) carried: Option<Carried>,
}

/// The end of a release's audit reason: [`RECORD_MARK`] and the record, JSON.
pub(crate) fn release_record(r: &ReleaseRecord) -> String {
    format!(
        "{RECORD_MARK}{}",
        serde_json::to_string(r).unwrap_or_default()
    )
}

/// A release the audit trail recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Release {
    /// When (seconds since the epoch).
    pub(crate) at: u64,
    /// Who asked (`client:<id>`, with the token).
    pub(crate) principal: String,
    /// The tenant it drew from.
    pub(crate) tenant: String,
    /// The secret.
    pub(crate) path: String,
    /// Its version.
    pub(crate) version: u64,
    /// The secret's tier.
    pub(crate) tier: u8,
    /// The receipt id.
    pub(crate) receipt: String,
}

/// Reads a release's audit reason back: the record after [`RECORD_MARK`].
fn parse_release(reason: &str) -> Option<ReleaseRecord> {
    let (_, record) = reason.split_once(RECORD_MARK)?;
    serde_json::from_str(record).ok()
}

/// The releases in the audit trail made on evidence carrying what `r` names.
fn affected(inner: &Inner, r: &EvidenceRevocation) -> Result<Vec<Release>, ApiError> {
    let found = inner
        .audit
        .search("secret.release")
        .map_err(|e| ApiError::unavailable(format!("the audit trail cannot be searched: {e}")))?;
    Ok(found
        .into_iter()
        .filter_map(|(at, principal, reason)| {
            let record = parse_release(&reason)?;
            record.carried.as_ref()?.carries(r).then_some(Release {
                at,
                principal,
                tenant: record.tenant,
                path: record.path,
                version: record.version,
                tier: record.tier,
                receipt: record.receipt,
            })
        })
        .collect())
}

fn revocation_params(
    p: &mut Params,
    admin: &str,
    now: u64,
) -> Result<EvidenceRevocation, ApiError> {
    let kind = match p.string("kind")?.as_deref() {
        Some("measurement") => RevokedKind::Measurement,
        Some("tcb") => RevokedKind::Tcb,
        Some("advisory") => RevokedKind::Advisory,
        other => {
            return Err(ApiError::bad_request(
                "invalid-request",
                format!(
                    "'kind' is measurement, tcb or advisory, not {}",
                    other.unwrap_or("missing")
                ),
            ));
        }
    };
    let value = p
        .string("value")?
        .ok_or_else(|| ApiError::bad_request("invalid-request", "missing 'value'"))?;
    let value = normalise(kind, &value).map_err(|m| ApiError::bad_request("invalid-request", m))?;
    Ok(EvidenceRevocation {
        kind,
        value,
        reason: String::new(),
        at: now,
        by: admin.to_owned(),
    })
}

/// `POST /v1/admin/attestation/revocations` (admins).
pub(crate) async fn revoke(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let admin = caller.client_id.clone();
    let mut revocation = revocation_params(&mut p, &admin, 0)?;
    revocation.reason = p
        .string("reason")?
        .filter(|r| {
            !r.trim().is_empty() && r.chars().count() <= 200 && !r.chars().any(char::is_control)
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-request",
                "'reason' (1 to 200 characters, no control characters) says why",
            )
        })?;
    let rewrap = p.flag("rewrap")?;
    let warnings = p.warnings();
    let call = Call {
        operation: "attestation.revoke",
        subject: format!("evidence {:?} {}", revocation.kind, revocation.value),
        path: String::new(),
        audit_success: true,
    };
    let i = inner.clone();
    let data = decided(inner, caller, None, call, move |broker, _, now| {
        revocation.at = now;
        let added = {
            let _held = broker.storage().exclusive("attestation revocations")?;
            let mut all = revocations(broker)?;
            let known = all
                .iter()
                .any(|r| r.kind == revocation.kind && r.value == revocation.value);
            if !known {
                if all.len() >= MAX_REVOCATIONS {
                    return Err(ApiError::bad_request(
                        "invalid-request",
                        format!("{MAX_REVOCATIONS} revocations are kept at most"),
                    ));
                }
                all.push(revocation.clone());
                let text = serde_json::to_string(&all).map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
                broker.storage().set_setting(SETTING, &text)?;
            }
            !known
        };
        // The revocation stands from here on; what follows is reported, not undone: a trail
        // that cannot be searched, or a KEK that cannot be rotated, is a problem in the answer.
        let mut problems = Vec::new();
        let releases = match affected(&i, &revocation) {
            Ok(r) => Some(r),
            Err(e) => {
                problems.push(format!(
                    "the affected releases are not listed: {}",
                    e.detail
                ));
                None
            }
        };
        let mut rewrapped = Vec::new();
        if rewrap {
            // Each tenant and tier once, and only where the released secret still is (a
            // record cannot make the broker rotate a tenant's keys for nothing).
            let pairs: BTreeSet<(String, u8)> = releases
                .iter()
                .flatten()
                .filter(|r| r.tier <= crate::secrets::MAX_TIER)
                .filter(|r| {
                    broker
                        .storage()
                        .secret(&r.tenant, &r.path)
                        .is_ok_and(|s| s.is_some_and(|s| s.tier == r.tier))
                })
                .map(|r| (r.tenant.clone(), r.tier))
                .collect();
            for (tenant, tier) in pairs {
                match crate::secrets::rotate_and_rewrap(broker, &tenant, tier, now) {
                    Ok((kek_version, envelopes)) => rewrapped.push(json!({
                        "tenant": tenant, "tier": tier,
                        "kek_version": kek_version, "rewrapped": envelopes,
                    })),
                    Err(e) => problems.push(format!(
                        "tenant {tenant} tier {tier}: the KEK was not rotated: {}",
                        e.detail
                    )),
                }
            }
        }
        let what = format!(
            "{} ({}); {} release(s) on evidence carrying it{}{}",
            if added { "revoked" } else { "already revoked" },
            revocation.reason,
            releases
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), |r| r.len().to_string()),
            if rewrap {
                format!(", {} KEK(s) rotated and rewrapped", rewrapped.len())
            } else {
                String::new()
            },
            if problems.is_empty() {
                String::new()
            } else {
                format!("; problems: {}", problems.join("; "))
            }
        );
        Ok((
            json!({
                "revocation": revocation,
                "added": added,
                "affected": releases,
                "rewrapped": rewrapped,
                "problems": problems,
            }),
            what,
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `GET /v1/admin/attestation/revocations` (admins).
pub(crate) async fn list(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let call = Call {
        operation: "attestation.list",
        subject: "evidence revocations".into(),
        path: String::new(),
        audit_success: false,
    };
    let data = decided(inner, caller, None, call, |broker, _, _| {
        Ok((
            json!({ "revocations": revocations(broker)? }),
            String::new(),
        ))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}

/// `POST /v1/admin/attestation/affected` (admins): `{kind, value}`.
pub(crate) async fn query(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let wanted = revocation_params(&mut p, &caller.client_id, 0)?;
    let warnings = p.warnings();
    let call = Call {
        operation: "attestation.affected",
        subject: format!("evidence {:?} {}", wanted.kind, wanted.value),
        path: String::new(),
        audit_success: true,
    };
    let i = inner.clone();
    let data = decided(inner, caller, None, call, move |_, _, _| {
        let releases = affected(&i, &wanted)?;
        let what = format!("{} release(s) found", releases.len());
        Ok((json!({ "affected": releases }), what))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn r(kind: RevokedKind, value: &str) -> EvidenceRevocation {
        EvidenceRevocation {
            kind,
            value: normalise(kind, value).unwrap(),
            reason: "test".into(),
            at: 0,
            by: "admin".into(),
        }
    }

    #[test]
    fn what_evidence_carried_is_matched_across_a_composites_parts() {
        let claims = json!({
            "cpu": {
                "platform": "tdx",
                "measurements": { "mr_td": "AB01", "rtmr0": "cd02" },
                "tcb": { "tdx_module_svn": 3 },
                "advisory_ids": ["intel-sa-00837"],
            },
            "gpu": { "platform": "nvidia-gpu", "measurements": { "0": "ee03" }, "tcb": {} },
        });
        let c = Carried::of("composite", &claims);
        assert!(c.carries(&r(RevokedKind::Measurement, "ab01")));
        assert!(c.carries(&r(RevokedKind::Measurement, "EE03")));
        assert!(!c.carries(&r(RevokedKind::Measurement, "ab02")));
        assert!(c.carries(&r(RevokedKind::Advisory, "INTEL-SA-00837")));
        assert!(c.carries(&r(RevokedKind::Tcb, "tdx:tdx_module_svn<4")));
        assert!(c.carries(&r(RevokedKind::Tcb, "TDX:TDX_Module_SVN<4")));
        assert_eq!(
            normalise(RevokedKind::Tcb, " SEV-SNP:Microcode<0213 ").unwrap(),
            "sev-snp:microcode<213"
        );
        assert!(c.carries(&r(RevokedKind::Tcb, "tdx:tdx_module_svn=3")));
        assert!(!c.carries(&r(RevokedKind::Tcb, "tdx:tdx_module_svn<3")));
        assert!(!c.carries(&r(RevokedKind::Tcb, "sev-snp:tdx_module_svn<9")));
        for (kind, bad) in [
            (RevokedKind::Measurement, "xyz"),
            (RevokedKind::Measurement, "abc"),
            (RevokedKind::Tcb, "microcode<5"),
            (RevokedKind::Tcb, "snp:microcode<5"),
            (RevokedKind::Tcb, "sev-snp:<5"),
            (RevokedKind::Tcb, "sev-snp:microcode>5"),
            (RevokedKind::Tcb, "sev-snp:microcode<x"),
            (RevokedKind::Advisory, ""),
        ] {
            assert!(normalise(kind, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_release_record_reads_back_whatever_the_path() {
        let carried = Carried::of(
            "tdx",
            &json!({ "platform": "tdx", "measurements": { "mr_td": "ab" } }),
        );
        for path in ["model/w".to_owned(), "a/".repeat(250) + "b"] {
            let record = ReleaseRecord {
                tenant: "acme".into(),
                path: path.clone(),
                version: 3,
                tier: 2,
                receipt: "0a1b".into(),
                carried: Some(carried.clone()),
            };
            // The subject is cut short before the record, as the broker cuts long ones.
            let subject: String = format!("secret '{path}'").chars().take(160).collect();
            let reason = format!(
                "{subject}: version 3 at tier 2 to a tier 2 requester (receipt 0a1b){}",
                release_record(&record)
            );
            assert_eq!(parse_release(&reason), Some(record));
        }
        assert!(parse_release("secret 'x': version 1 at tier 1 to a tier 1 requester").is_none());
    }
}
