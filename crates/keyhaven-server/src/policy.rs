//! Release policies in Rego, evaluated with `regorus` (as confidential-containers' Trustee
//! does). Admins load policies, each scoped by a path prefix; a release is decided by the
//! broker's own tier rule (the requester's tier must reach the secret's `min_tier`) **and**,
//! when a policy's prefix covers the secret's path, by the policy with the longest such prefix.
//! A policy can only narrow what the tier rule allows.
//!
//! A policy is a module of package `keyhaven.release` that defines `allow` (true to allow),
//! and may define two sets of strings that make its decisions explainable: `because` (the
//! rules that allowed) and `deny` (reasons that refuse whatever `allow` says). Its input is
//! the release being decided:
//!
//! ```json
//! { "operation": "secret.release", "tenant": "…", "path": "db/root", "time": 1767000000,
//!   "requester": { "client": "…", "key": "…", "tier": 2, "evidence": { "kind": "vouched-key", … },
//!                  "via_token": false },
//!   "secret": { "path": "db/root", "version": 3, "tier": 2, "min_tier": 1 } }
//! ```
//!
//! A policy that does not compile, or does not define `allow` in that package, is refused when
//! it is loaded (the one it would replace stays).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::broker::{Call, Params, decided, vault_response};
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};
use crate::storage::PolicyRecord;

/// The package every release policy declares.
pub const PACKAGE: &str = "keyhaven.release";
/// The longest policy source accepted (bytes).
pub const MAX_POLICY: usize = 32 * 1024;
/// How long one evaluation may run.
const EVAL_LIMIT: Duration = Duration::from_millis(100);
/// How many compiled policies a node keeps.
const MAX_COMPILED: usize = 256;

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// It does not compile, or is not a release policy.
    #[error("the policy does not compile: {0}")]
    Invalid(String),
    /// It failed while deciding (a runtime error, the time limit).
    #[error("the policy failed while deciding: {0}")]
    Eval(String),
}

/// A compiled policy.
#[derive(Clone)]
pub struct Policy {
    engine: regorus::Engine,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
    }
}

/// A policy's answer, explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Its `allow`, with no `deny` reason.
    pub allow: bool,
    /// The rules that allowed (its `because` set).
    pub because: Vec<String>,
    /// The reasons that refused (its `deny` set).
    pub deny: Vec<String>,
}

fn strings(v: &regorus::Value) -> Vec<String> {
    let Ok(json) = v.to_json_str() else {
        return Vec::new();
    };
    match serde_json::from_str::<Value>(&json) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What a `deny` value refuses with: a set of reasons, or any other defined value that is not
/// `false` (a `deny if ...` boolean) as one reason. Undefined, `false` and empty deny nothing.
fn denials(v: &regorus::Value) -> Vec<String> {
    let Ok(json) = v.to_json_str() else {
        return Vec::new();
    };
    match serde_json::from_str::<Value>(&json) {
        Ok(Value::Array(_)) => strings(v),
        Ok(Value::Bool(false) | Value::Null) | Err(_) => Vec::new(),
        Ok(Value::String(s)) if s == "<undefined>" => Vec::new(),
        Ok(other) => vec![format!("deny is {other}")],
    }
}

impl Policy {
    /// Compiles `source`, checking it is a release policy: package `keyhaven.release`,
    /// defining `allow`.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] saying why.
    pub fn compile(source: &str) -> Result<Policy, PolicyError> {
        if source.len() > MAX_POLICY {
            return Err(PolicyError::Invalid(format!(
                "it is {} bytes; at most {MAX_POLICY}",
                source.len()
            )));
        }
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: EVAL_LIMIT,
            check_interval: NonZeroU32::MIN,
        });
        let package = engine
            .add_policy("release.rego".into(), source.into())
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if package != format!("data.{PACKAGE}") {
            return Err(PolicyError::Invalid(format!(
                "its package is {}; a release policy is `package {PACKAGE}`",
                package.trim_start_matches("data.")
            )));
        }
        let declares = engine
            .has_declared_rule_rooted_at("release.rego", "allow")
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if !declares {
            return Err(PolicyError::Invalid(
                "it does not define `allow` (say when a release is allowed)".into(),
            ));
        }
        let policy = Policy { engine };
        // Evaluated once on an empty input, so a rule that cannot run is found now.
        policy
            .decide(&json!({}))
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        Ok(policy)
    }

    /// Decides on `input`.
    ///
    /// # Errors
    /// [`PolicyError::Eval`] for a runtime error or the time limit.
    pub fn decide(&self, input: &Value) -> Result<Verdict, PolicyError> {
        let mut engine = self.engine.clone();
        let input = regorus::Value::from_json_str(&input.to_string())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        engine.set_input(input);
        let rule = |engine: &mut regorus::Engine, name: &str| {
            engine
                .eval_rule(format!("data.{PACKAGE}.{name}"))
                .map_err(|e| PolicyError::Eval(e.to_string()))
        };
        let allow = rule(&mut engine, "allow")?;
        let allow = allow.as_bool().copied().unwrap_or(false);
        let because = match engine.has_declared_rule_rooted_at("release.rego", "because") {
            Ok(true) => strings(&rule(&mut engine, "because")?),
            _ => Vec::new(),
        };
        let deny = match engine.has_declared_rule_rooted_at("release.rego", "deny") {
            Ok(true) => denials(&rule(&mut engine, "deny")?),
            _ => Vec::new(),
        };
        Ok(Verdict {
            allow: allow && deny.is_empty(),
            because,
            deny,
        })
    }
}

/// A release decision, explained: the tier rule, and the policy that applied (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Released or not.
    pub allow: bool,
    /// The tier rule: the requester's tier against the secret's `min_tier`.
    pub tier_rule: Value,
    /// The prefix of the policy that applied (none: no policy covers the path).
    pub policy: Option<String>,
    /// The policy's digest (SHA-256 of its source, hex).
    pub policy_sha256: Option<String>,
    /// What it said.
    pub verdict: Option<Verdict>,
}

impl Explanation {
    /// One line: what decided.
    pub fn summary(&self) -> String {
        let tier_ok = self.tier_rule["met"].as_bool().unwrap_or(false);
        if !tier_ok {
            return format!(
                "denied by the tier rule: requester tier {} is below min_tier {}",
                self.tier_rule["requester_tier"], self.tier_rule["min_tier"]
            );
        }
        match (&self.policy, &self.verdict) {
            (None, _) | (_, None) => "allowed by the tier rule; no policy covers the path".into(),
            (Some(p), Some(v)) if v.allow => format!(
                "allowed by the tier rule and policy '{p}' ({})",
                if v.because.is_empty() {
                    "allow".to_owned()
                } else {
                    v.because.join("; ")
                }
            ),
            (Some(p), Some(v)) => format!(
                "denied by policy '{p}': {}",
                if v.deny.is_empty() {
                    "no allow rule matched".to_owned()
                } else {
                    v.deny.join("; ")
                }
            ),
        }
    }
}

/// Compiled policies by the digest of their source, so a node compiles each once.
#[derive(Default)]
pub struct PolicyCache {
    compiled: Mutex<HashMap<[u8; 32], Arc<Policy>>>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache").finish_non_exhaustive()
    }
}

impl PolicyCache {
    fn get(&self, source: &str) -> Result<Arc<Policy>, PolicyError> {
        let digest: [u8; 32] = Sha256::digest(source.as_bytes()).into();
        if let Some(p) = self
            .compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
        {
            return Ok(Arc::clone(p));
        }
        let policy = Arc::new(Policy::compile(source)?);
        let mut compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        if compiled.len() >= MAX_COMPILED {
            compiled.clear();
        }
        compiled.insert(digest, Arc::clone(&policy));
        Ok(policy)
    }

    /// Decides a release on `input`: `requester_tier` against `min_tier`, then the policy of
    /// `policies` with the longest prefix of `path`.
    ///
    /// # Errors
    /// [`PolicyError`] when the policy that applies fails (the release is then refused).
    pub fn explain(
        &self,
        policies: &[PolicyRecord],
        path: &str,
        requester_tier: u8,
        min_tier: u8,
        input: &Value,
    ) -> Result<Explanation, PolicyError> {
        let met = requester_tier >= min_tier;
        let tier_rule = json!({
            "requester_tier": requester_tier,
            "min_tier": min_tier,
            "met": met,
        });
        let applies = policies
            .iter()
            .filter(|p| path.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len());
        let Some(record) = applies else {
            return Ok(Explanation {
                allow: met,
                tier_rule,
                policy: None,
                policy_sha256: None,
                verdict: None,
            });
        };
        let verdict = self.get(&record.source)?.decide(input)?;
        Ok(Explanation {
            allow: met && verdict.allow,
            tier_rule,
            policy: Some(record.prefix.clone()),
            policy_sha256: Some(hex::encode(Sha256::digest(record.source.as_bytes()))),
            verdict: Some(verdict),
        })
    }
}

fn check_prefix(prefix: &str) -> Result<(), ApiError> {
    if prefix.len() > 512 || prefix.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid-request",
            "a policy prefix is at most 512 bytes, without control characters",
        ));
    }
    Ok(())
}

/// `PUT /v1/admin/policies` (admins): loads a release policy for a path prefix. Body:
/// `prefix` (empty: every path), `rego`. A policy that does not compile is refused with the
/// compiler's message, and the one it would replace stays.
pub(crate) async fn put(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let prefix = p.string("prefix")?.unwrap_or_default();
    check_prefix(&prefix)?;
    let source = p
        .string("rego")?
        .ok_or_else(|| ApiError::bad_request("invalid-request", "missing 'rego'"))?;
    let warnings = p.warnings();
    let call = Call {
        operation: "policy.load",
        subject: format!("release policy '{prefix}'"),
        path: String::new(),
        audit_success: true,
    };
    let by = caller.client_id.clone();
    let data = decided(inner, caller, None, call, move |broker, _, now| {
        broker
            .policies()
            .get(&source)
            .map_err(|e| ApiError::bad_request("policy-invalid", e.to_string()))?;
        let digest = hex::encode(Sha256::digest(source.as_bytes()));
        broker.storage().put_policy(&PolicyRecord {
            prefix: prefix.clone(),
            source,
            updated_at: now,
            updated_by: by,
        })?;
        broker.forget_policies();
        Ok((
            json!({ "prefix": prefix, "sha256": digest }),
            format!("sha256 {digest}"),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `GET /v1/admin/policies` (admins): every policy, with its source.
pub(crate) async fn list(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let call = Call {
        operation: "policy.list",
        subject: "release policies".to_owned(),
        path: String::new(),
        audit_success: false,
    };
    let data = decided(inner, caller, None, call, |broker, _, _| {
        let all: Vec<Value> = broker
            .storage()
            .policies()?
            .into_iter()
            .map(|p| {
                json!({
                    "prefix": p.prefix,
                    "sha256": hex::encode(Sha256::digest(p.source.as_bytes())),
                    "rego": p.source,
                    "updated_at": p.updated_at,
                    "updated_by": p.updated_by,
                })
            })
            .collect();
        Ok((json!({ "policies": all }), String::new()))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}

/// `DELETE /v1/admin/policies` (admins): removes the policy of `prefix`.
pub(crate) async fn delete(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let prefix = p.string("prefix")?.unwrap_or_default();
    let call = Call {
        operation: "policy.delete",
        subject: format!("release policy '{prefix}'"),
        path: String::new(),
        audit_success: true,
    };
    let data = decided(inner, caller, None, call, move |broker, _, _| {
        let deleted = broker.storage().delete_policy(&prefix)?;
        broker.forget_policies();
        if !deleted {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no policy for prefix '{prefix}'"),
            ));
        }
        Ok((
            json!({ "prefix": prefix, "deleted": true }),
            "deleted".into(),
        ))
    })
    .await?;
    Ok(vault_response(data, Value::Null))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const POLICY: &str = r#"
package keyhaven.release
import rego.v1

default allow := false

allow if input.requester.evidence.kind == "vouched-key"

because contains "the requester's key is vouched hardware" if {
    input.requester.evidence.kind == "vouched-key"
}

deny contains "prod secrets are not released through tokens" if input.requester.via_token
"#;

    #[test]
    fn a_boolean_deny_denies() {
        let p = Policy::compile(
            "package keyhaven.release\nimport rego.v1\nallow := true\ndeny if input.x\n",
        )
        .unwrap();
        assert!(!p.decide(&json!({ "x": true })).unwrap().allow);
        assert!(p.decide(&json!({ "x": false })).unwrap().allow);
        assert!(
            p.decide(&json!({})).unwrap().allow,
            "undefined denies nothing"
        );
    }

    fn input(kind: &str, via_token: bool) -> Value {
        json!({ "requester": { "tier": 2, "evidence": { "kind": kind }, "via_token": via_token } })
    }

    #[test]
    fn a_policy_allows_denies_and_says_why() {
        let p = Policy::compile(POLICY).unwrap();
        let v = p.decide(&input("vouched-key", false)).unwrap();
        assert!(v.allow);
        assert_eq!(v.because, ["the requester's key is vouched hardware"]);
        let v = p.decide(&input("registered-key", false)).unwrap();
        assert!(!v.allow && v.because.is_empty() && v.deny.is_empty());
        let v = p.decide(&input("vouched-key", true)).unwrap();
        assert!(!v.allow, "a deny reason wins over allow");
        assert_eq!(v.deny, ["prod secrets are not released through tokens"]);
    }

    #[test]
    fn policies_that_cannot_be_are_refused_at_load() {
        for (source, says) in [
            ("package keyhaven.release\nallow if {", "compile"),
            ("package other\nallow := true", "package is other"),
            (
                "package keyhaven.release\nx := 1",
                "does not define `allow`",
            ),
            (&"#".repeat(MAX_POLICY + 1), "at most"),
        ] {
            let e = Policy::compile(source).unwrap_err().to_string();
            assert!(e.contains(says), "{source:.40}: {e}");
        }
    }

    #[test]
    fn the_longest_prefix_decides_and_the_tier_rule_always_applies() {
        let cache = PolicyCache::default();
        let rec = |prefix: &str, source: &str| PolicyRecord {
            prefix: prefix.into(),
            source: source.into(),
            updated_at: 0,
            updated_by: "a".into(),
        };
        let open = "package keyhaven.release\nallow := true";
        let shut = "package keyhaven.release\nallow := false";
        let policies = [rec("", open), rec("prod/", shut)];
        let e = cache
            .explain(&policies, "prod/db", 2, 1, &json!({}))
            .unwrap();
        assert!(!e.allow);
        assert_eq!(e.policy.as_deref(), Some("prod/"));
        assert!(
            e.summary().contains("denied by policy 'prod/'"),
            "{}",
            e.summary()
        );
        let e = cache
            .explain(&policies, "dev/db", 2, 1, &json!({}))
            .unwrap();
        assert!(e.allow);
        assert_eq!(e.policy.as_deref(), Some(""));
        let e = cache
            .explain(&policies, "dev/db", 1, 2, &json!({}))
            .unwrap();
        assert!(!e.allow, "no policy lifts the tier rule");
        assert!(e.summary().contains("tier rule"), "{}", e.summary());
        let e = cache.explain(&[], "x", 1, 1, &json!({})).unwrap();
        assert!(e.allow && e.policy.is_none());
    }
}
