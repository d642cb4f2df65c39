//! Access-control policy: who may do what, per key and by default. Deny unless a rule allows.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use keyhaven_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::CallerContext;

/// An operation a policy rule can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Create a key: `generate`, and `import_pkcs8` (an imported key is a new key).
    Generate,
    /// Use a private key: `sign`, `sign_digest`, and X25519 `agree`.
    Sign,
    /// Use a public key. Verification needs no store; this is for callers that gate it
    /// themselves through [`crate::AccessControlledStore::authorize`].
    Verify,
    /// Take a private key out of the store (`export_pkcs8`). Never granted for hardware keys.
    Export,
    /// Delete a key.
    Delete,
    /// Rotate a key to a new version (checked by the rotation layer through `authorize`).
    Rotate,
    /// Revoke a key (checked by the compromise layer through `authorize`).
    Revoke,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Generate,
        Operation::Sign,
        Operation::Verify,
        Operation::Export,
        Operation::Delete,
        Operation::Rotate,
        Operation::Revoke,
    ];

    /// The name used in policies and messages: `generate`, `sign`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Generate => "generate",
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::Export => "export",
            Operation::Delete => "delete",
            Operation::Rotate => "rotate",
            Operation::Revoke => "revoke",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a rule lets through: listed principals (`"*"` means anyone) or holders of listed roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Principals allowed; `"*"` allows every caller.
    #[serde(default)]
    pub principals: BTreeSet<String>,
    /// Roles allowed: a caller holding any of them is allowed.
    #[serde(default)]
    pub roles: BTreeSet<String>,
}

impl Grant {
    /// Allows every caller.
    pub fn anyone() -> Self {
        Grant::principals(["*"])
    }

    /// Allows these principals.
    pub fn principals<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Grant {
            principals: names.into_iter().map(Into::into).collect(),
            roles: BTreeSet::new(),
        }
    }

    /// Allows holders of these roles.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Grant {
            principals: BTreeSet::new(),
            roles: names.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `caller` is let through.
    pub fn admits(&self, caller: &CallerContext) -> bool {
        self.principals.contains("*")
            || self.principals.contains(&caller.principal)
            || !self.roles.is_disjoint(&caller.roles)
    }
}

/// Grants per operation; an operation with no grant is not allowed by this rule set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Who may generate or import keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Grant>,
    /// Who may sign (and agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Grant>,
    /// Who may verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Grant>,
    /// Who may export private keys (never hardware keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<Grant>,
    /// Who may delete keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<Grant>,
    /// Who may rotate keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<Grant>,
    /// Who may revoke keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<Grant>,
}

impl Permissions {
    /// The grant for `op`, if any.
    pub fn grant(&self, op: Operation) -> Option<&Grant> {
        self.slot_ref(op).as_ref()
    }

    /// Sets the grant for `op`.
    #[must_use]
    pub fn allow(mut self, op: Operation, grant: Grant) -> Self {
        *self.slot_mut(op) = Some(grant);
        self
    }

    fn slot_ref(&self, op: Operation) -> &Option<Grant> {
        match op {
            Operation::Generate => &self.generate,
            Operation::Sign => &self.sign,
            Operation::Verify => &self.verify,
            Operation::Export => &self.export,
            Operation::Delete => &self.delete,
            Operation::Rotate => &self.rotate,
            Operation::Revoke => &self.revoke,
        }
    }

    fn slot_mut(&mut self, op: Operation) -> &mut Option<Grant> {
        match op {
            Operation::Generate => &mut self.generate,
            Operation::Sign => &mut self.sign,
            Operation::Verify => &mut self.verify,
            Operation::Export => &mut self.export,
            Operation::Delete => &mut self.delete,
            Operation::Rotate => &mut self.rotate,
            Operation::Revoke => &mut self.revoke,
        }
    }
}

/// Rules for one key, chosen by id or by label (exactly one of the two).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRule {
    /// The key's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The key's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What is allowed on this key; an operation given here replaces the default's grant for it.
    #[serde(default)]
    pub allow: Permissions,
}

impl KeyRule {
    /// Rules for the key with this id.
    pub fn for_id(id: impl Into<String>) -> Self {
        KeyRule {
            id: Some(id.into()),
            ..KeyRule::default()
        }
    }

    /// Rules for the key with this label (also used when generating a key with that label).
    pub fn for_label(label: impl Into<String>) -> Self {
        KeyRule {
            label: Some(label.into()),
            ..KeyRule::default()
        }
    }

    /// Grants `op` on this key.
    #[must_use]
    pub fn allow(mut self, op: Operation, grant: Grant) -> Self {
        self.allow = self.allow.allow(op, grant);
        self
    }

    fn matches(&self, key: &KeyRef<'_>) -> bool {
        match (&self.id, &self.label) {
            (Some(id), _) => key.id == Some(id.as_str()),
            (None, Some(label)) => key.label == Some(label.as_str()),
            (None, None) => false,
        }
    }
}

/// The key an operation is about: its id and label when known (a key being generated has only
/// a label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// The key id.
    pub id: Option<&'a str>,
    /// The key label.
    pub label: Option<&'a str>,
}

impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.id, self.label) {
            (Some(id), Some(label)) => write!(f, "key {id} ('{label}')"),
            (Some(id), None) => write!(f, "key {id}"),
            (None, Some(label)) => write!(f, "key '{label}'"),
            (None, None) => f.write_str("the store"),
        }
    }
}

/// Who may do what. Deny by default: an operation is allowed only if a rule grants it.
///
/// For an operation on a key, the first [`KeyRule`] matching the key (by id, or by label) that
/// has a grant for the operation decides; otherwise the `default` grant decides; with neither,
/// the operation is denied.
///
/// In TOML (unknown fields are errors, named with their position):
///
/// ```toml
/// [default]
/// generate = { roles = ["key-admin"] }
/// sign = { roles = ["signer"] }
///
/// [[keys]]
/// label = "release"
/// allow.sign = { principals = ["ci"] }
/// allow.export = { principals = ["backup-operator"] }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Grants that apply to every key unless a key rule overrides them.
    #[serde(default)]
    pub default: Permissions,
    /// Per-key rules.
    #[serde(default)]
    pub keys: Vec<KeyRule>,
}

impl Policy {
    /// A policy that denies everything.
    pub fn deny_all() -> Self {
        Policy::default()
    }

    /// A policy that allows every operation to every caller (for tests and single-user setups).
    pub fn allow_all() -> Self {
        let mut p = Policy::default();
        for op in Operation::ALL {
            p.default = p.default.allow(op, Grant::anyone());
        }
        p
    }

    /// Sets the default grant for `op`.
    #[must_use]
    pub fn allow(mut self, op: Operation, grant: Grant) -> Self {
        self.default = self.default.allow(op, grant);
        self
    }

    /// Adds a per-key rule.
    #[must_use]
    pub fn key(mut self, rule: KeyRule) -> Self {
        self.keys.push(rule);
        self
    }

    /// Parses a policy from TOML and checks it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad field (unknown fields are refused), or a key rule
    /// with neither or both of `id` and `label`.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| Error::InvalidInput(format!("access policy: {e}")))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads and parses a TOML policy file.
    ///
    /// # Errors
    /// The file cannot be read, or [`Policy::from_toml_str`] refuses it (the message names the
    /// file).
    pub fn load(path: &Path) -> Result<Self> {
        let text = keyhaven_fs::read_config(path)?;
        Policy::from_toml_str(&text).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Checks that every key rule names its key by exactly one of `id` and `label`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the rule.
    pub fn validate(&self) -> Result<()> {
        for (i, rule) in self.keys.iter().enumerate() {
            if rule.id.is_some() == rule.label.is_some() {
                return Err(Error::InvalidInput(format!(
                    "access policy: keys[{i}]: give exactly one of `id` and `label`"
                )));
            }
        }
        Ok(())
    }

    /// Whether any key rule selects keys by label (so callers must look labels up).
    pub fn uses_labels(&self) -> bool {
        self.keys
            .iter()
            .any(|r| r.id.is_none() && r.label.is_some())
    }

    /// Whether `caller` may perform `op` on `key`.
    pub fn allows(&self, caller: &CallerContext, op: Operation, key: &KeyRef<'_>) -> bool {
        self.keys
            .iter()
            .filter(|r| r.matches(key))
            .find_map(|r| r.allow.grant(op))
            .or_else(|| self.default.grant(op))
            .is_some_and(|g| g.admits(caller))
    }

    /// `Ok` if `caller` may perform `op` on `key`, else [`Error::PermissionDenied`] naming the
    /// principal, the operation and the key.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] when no rule allows it.
    pub fn check(&self, caller: &CallerContext, op: Operation, key: &KeyRef<'_>) -> Result<()> {
        if self.allows(caller, op, key) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "principal '{}' may not {op} {key}: no access rule allows it",
                caller.principal
            )))
        }
    }
}
