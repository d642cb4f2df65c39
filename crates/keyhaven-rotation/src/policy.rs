//! Rotation policies: TOML, validated on load, matched by role, algorithm, protection and
//! security level.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use keyhaven_core::{Algorithm, Protection};

use crate::error::{Result, RotationError};
use crate::state::{LogicalKey, Role, SecurityLevel};

/// The migration window used when no policy sets one: 7 days (seed 002).
pub const DEFAULT_MIGRATION_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// How long a pre- or post-rotation action may run when no policy says: 30 seconds.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How a policy applies (seed 003's application mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Keys are rotated when due (the default).
    #[default]
    Enforce,
    /// Keys due are reported, their history records it and the post-rotation action runs, but
    /// nothing is rotated.
    Notify,
    /// The policy rotates nothing (its migration windows still end).
    Disabled,
}

impl Mode {
    /// Its name in `rotation.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Notify => "notify",
            Mode::Disabled => "disabled",
        }
    }

    fn parse(at: &str, text: &str) -> Result<Self> {
        match text {
            "enforce" => Ok(Mode::Enforce),
            "notify" => Ok(Mode::Notify),
            "disabled" => Ok(Mode::Disabled),
            other => Err(RotationError::policy(
                format!("{at}.mode"),
                format!("unknown mode '{other}': use enforce, notify or disabled"),
            )),
        }
    }
}

/// What a policy (or a role default) asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rules {
    /// Whether due keys are rotated, only reported, or left alone.
    pub mode: Mode,
    /// Rotate when the primary version is this old.
    pub max_age: Option<Duration>,
    /// Rotate when the primary version made this many signatures.
    pub max_usage: Option<u64>,
    /// How long the old version keeps verifying after a rotation
    /// ([`DEFAULT_MIGRATION_WINDOW`] if unset).
    pub migration_window: Option<Duration>,
    /// How long after its window ends a retired version may be destroyed (never if unset).
    pub retire_after: Option<Duration>,
    /// Command (argv) run before a rotation; a failure cancels the rotation.
    pub pre_rotate: Option<Vec<String>>,
    /// Command (argv) run after a rotation; a failure is reported, the rotation stands.
    pub post_rotate: Option<Vec<String>>,
    /// How long an action may run ([`DEFAULT_ACTION_TIMEOUT`] if unset).
    pub action_timeout: Option<Duration>,
    /// When a replaced version's migration window ends, revoke it (a signed statement) rather
    /// than only retire it (seed 002 for identity keys).
    pub revoke_after_migration: bool,
}

impl Rules {
    /// The migration window, or the default.
    pub fn migration_window(&self) -> Duration {
        self.migration_window.unwrap_or(DEFAULT_MIGRATION_WINDOW)
    }

    /// The action timeout, or the default.
    pub fn action_timeout(&self) -> Duration {
        self.action_timeout.unwrap_or(DEFAULT_ACTION_TIMEOUT)
    }
}

/// What policies match a key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KeyTraits {
    /// The key's role.
    pub role: Role,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its protection.
    pub protection: Protection,
    /// Its security level.
    pub level: SecurityLevel,
}

impl KeyTraits {
    /// A key of this role, algorithm and protection, at the `standard` level.
    pub fn new(role: Role, algorithm: Algorithm, protection: Protection) -> Self {
        KeyTraits {
            role,
            algorithm,
            protection,
            level: SecurityLevel::Standard,
        }
    }

    /// The same traits at security level `level`.
    #[must_use]
    pub fn with_level(mut self, level: SecurityLevel) -> Self {
        self.level = level;
        self
    }

    /// The traits of a logical key.
    pub fn of(key: &LogicalKey) -> Self {
        KeyTraits::new(key.role(), key.algorithm(), key.protection()).with_level(key.level())
    }
}

/// A named policy: matchers and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// The policy's name (unique in the file).
    pub name: String,
    /// Matches keys of these roles (empty: any role).
    pub roles: Vec<Role>,
    /// Matches keys of these algorithms (empty: any).
    pub algorithms: Vec<Algorithm>,
    /// Matches keys of these protections (empty: any).
    pub protections: Vec<Protection>,
    /// Matches keys of these security levels (empty: any).
    pub levels: Vec<SecurityLevel>,
    /// What it asks for.
    pub rules: Rules,
}

impl Policy {
    /// How many matchers are set (0 to 4): more is more specific.
    pub fn specificity(&self) -> u8 {
        u8::from(!self.roles.is_empty())
            + u8::from(!self.algorithms.is_empty())
            + u8::from(!self.protections.is_empty())
            + u8::from(!self.levels.is_empty())
    }

    /// Why the policy does not match a key, one reason per failing matcher (empty: it matches).
    fn mismatches(&self, key: &KeyTraits) -> Vec<String> {
        let KeyTraits {
            role,
            algorithm,
            protection,
            level,
        } = *key;
        fn wanted<T: std::fmt::Display>(list: &[T]) -> String {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        }
        let mut why = Vec::new();
        if !matcher(&self.roles, &role) {
            why.push(format!(
                "role is {role}, the policy wants {}",
                wanted(&self.roles)
            ));
        }
        if !matcher(&self.algorithms, &algorithm) {
            why.push(format!(
                "algorithm is {algorithm}, the policy wants {}",
                wanted(&self.algorithms)
            ));
        }
        if !matcher(&self.protections, &protection) {
            why.push(format!(
                "protection is {protection}, the policy wants {}",
                wanted(&self.protections)
            ));
        }
        if !matcher(&self.levels, &level) {
            why.push(format!(
                "security level is {level}, the policy wants {}",
                wanted(&self.levels)
            ));
        }
        why
    }

    /// Whether the policy matches a key with these traits.
    pub fn matches(&self, key: &KeyTraits) -> bool {
        matcher(&self.roles, &key.role)
            && matcher(&self.algorithms, &key.algorithm)
            && matcher(&self.protections, &key.protection)
            && matcher(&self.levels, &key.level)
    }

    /// Whether some key could match both policies (each matcher set in both shares a value).
    fn overlaps(&self, other: &Policy) -> bool {
        fn agree<T: PartialEq>(a: &[T], b: &[T]) -> bool {
            a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x))
        }
        agree(&self.roles, &other.roles)
            && agree(&self.algorithms, &other.algorithms)
            && agree(&self.protections, &other.protections)
            && agree(&self.levels, &other.levels)
    }
}

/// Prekey pool settings (`[prekeys]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrekeySettings {
    /// Replenish when fewer one-time prekeys than this are available (default 10).
    pub low_water: u32,
    /// Replenish up to this many available one-time prekeys (default 100).
    pub refill_to: u32,
    /// Rotate the signed prekey when it is this old (default 30 days).
    pub signed_prekey_max_age: Duration,
}

impl Default for PrekeySettings {
    fn default() -> Self {
        PrekeySettings {
            low_water: 10,
            refill_to: 100,
            signed_prekey_max_age: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Where a key's rules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// The named policy won.
    Policy(String),
    /// No named policy matched; the role's default applies.
    RoleDefault(Role),
    /// Seed 002's recommended schedule for the role (no `rotation.toml` says otherwise).
    BuiltIn(Role),
    /// Nothing applies: the key is never due (except by hand).
    None,
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::Policy(n) => write!(f, "policy '{n}'"),
            RuleSource::RoleDefault(r) => write!(f, "[defaults.{r}]"),
            RuleSource::BuiltIn(r) => write!(
                f,
                "built-in default for {r} keys (seed 002's schedule; override it with \
                 [defaults.{r}] in rotation.toml, or switch it off with builtin_defaults = false)"
            ),
            RuleSource::None => f.write_str("no policy"),
        }
    }
}

/// One policy considered for a key, by [`PolicySet::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    /// The policy's name.
    pub name: String,
    /// Its specificity (number of matchers set).
    pub specificity: u8,
    /// Whether it matches the key.
    pub matched: bool,
    /// Why it matches or does not.
    pub reasons: Vec<String>,
}

/// Which policy applies to a key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Explanation {
    /// The key's role.
    pub role: Role,
    /// The key's algorithm.
    pub algorithm: Algorithm,
    /// The key's protection.
    pub protection: Protection,
    /// The key's security level.
    pub level: SecurityLevel,
    /// Where the rules come from.
    pub source: RuleSource,
    /// The rules that apply (empty when [`RuleSource::None`]).
    pub rules: Rules,
    /// Every named policy, most specific first, with why it matched or not.
    pub candidates: Vec<Candidate>,
}

fn show(d: Option<Duration>) -> String {
    d.map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_else(|| "-".into())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key: role {}, algorithm {}, protection {}, security level {}",
            self.role, self.algorithm, self.protection, self.level
        )?;
        writeln!(f, "applies: {}", self.source)?;
        let r = &self.rules;
        writeln!(
            f,
            "rules: max_age {}, max_usage {}, migration_window {}, retire_after {}",
            show(r.max_age),
            r.max_usage.map_or_else(|| "-".into(), |u| u.to_string()),
            humantime::format_duration(r.migration_window()),
            show(r.retire_after)
        )?;
        writeln!(
            f,
            "mode: {}; after the migration window the old version is {}",
            r.mode.as_str(),
            if r.revoke_after_migration {
                "revoked (revoke_after_migration)"
            } else {
                "retired"
            }
        )?;
        for c in &self.candidates {
            writeln!(
                f,
                "  {} '{}' (specificity {}): {}",
                if c.matched { "matches " } else { "no match" },
                c.name,
                c.specificity,
                c.reasons.join("; ")
            )?;
        }
        Ok(())
    }
}

/// A validated set of policies, role defaults and prekey settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    policies: Vec<Policy>,
    defaults: BTreeMap<Role, Rules>,
    prekeys: PrekeySettings,
    /// Seed 002's recommended schedule applies to roles nothing else covers
    /// ([`PolicySet::builtin_rules`]).
    builtin: bool,
    /// The file has a `[prekeys]` section.
    prekeys_set: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    /// `false` switches seed 002's built-in schedule off (default: on).
    #[serde(default)]
    builtin_defaults: Option<bool>,
    #[serde(default)]
    policy: Vec<PolicyToml>,
    #[serde(default)]
    defaults: BTreeMap<String, RulesToml>,
    #[serde(default)]
    prekeys: Option<PrekeysToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    name: String,
    role: Option<String>,
    roles: Option<Vec<String>>,
    algorithm: Option<String>,
    algorithms: Option<Vec<String>>,
    protection: Option<String>,
    protections: Option<Vec<String>>,
    level: Option<String>,
    levels: Option<Vec<String>>,
    max_age: Option<String>,
    max_usage: Option<i64>,
    migration_window: Option<String>,
    retire_after: Option<String>,
    pre_rotate: Option<Vec<String>>,
    post_rotate: Option<Vec<String>>,
    action_timeout: Option<String>,
    revoke_after_migration: Option<bool>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesToml {
    mode: Option<String>,
    max_age: Option<String>,
    max_usage: Option<i64>,
    migration_window: Option<String>,
    retire_after: Option<String>,
    pre_rotate: Option<Vec<String>>,
    post_rotate: Option<Vec<String>>,
    action_timeout: Option<String>,
    revoke_after_migration: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrekeysToml {
    low_water: Option<i64>,
    refill_to: Option<i64>,
    signed_prekey_max_age: Option<String>,
}

/// Parses a positive duration such as `90d`, `12h`, `30m`, `1y 2d`.
///
/// # Errors
/// [`RotationError::Policy`] naming `field` for anything else (zero, negative, malformed).
pub fn parse_duration(field: &str, text: &str) -> Result<Duration> {
    let bad = |why: &str| {
        RotationError::policy(
            field,
            format!("'{text}' {why}: use a positive duration such as 90d, 12h, 30m or 1y"),
        )
    };
    if text.trim_start().starts_with('-') {
        return Err(bad("is negative"));
    }
    let d = humantime::parse_duration(text.trim()).map_err(|_| bad("is not a duration"))?;
    if d.is_zero() {
        return Err(bad("is zero"));
    }
    Ok(d)
}

fn positive_count(field: &str, n: i64) -> Result<u64> {
    u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| RotationError::policy(field, format!("{n} must be a positive count")))
}

#[allow(clippy::too_many_arguments)]
fn rules(
    at: &str,
    mode: Option<String>,
    max_age: Option<String>,
    max_usage: Option<i64>,
    migration_window: Option<String>,
    retire_after: Option<String>,
    pre_rotate: Option<Vec<String>>,
    post_rotate: Option<Vec<String>>,
    action_timeout: Option<String>,
    revoke_after_migration: Option<bool>,
) -> Result<Rules> {
    let dur = |name: &str, v: Option<String>| {
        v.map(|t| parse_duration(&format!("{at}.{name}"), &t))
            .transpose()
    };
    let argv = |name: &str, v: Option<Vec<String>>| -> Result<Option<Vec<String>>> {
        match v {
            Some(a) if a.is_empty() || a[0].trim().is_empty() => Err(RotationError::policy(
                format!("{at}.{name}"),
                "the command is empty: give its argv, e.g. [\"/usr/local/bin/notify\", \"--rotated\"]",
            )),
            other => Ok(other),
        }
    };
    let r = Rules {
        mode: mode
            .map(|m| Mode::parse(at, &m))
            .transpose()?
            .unwrap_or_default(),
        max_age: dur("max_age", max_age)?,
        max_usage: max_usage
            .map(|n| positive_count(&format!("{at}.max_usage"), n))
            .transpose()?,
        migration_window: dur("migration_window", migration_window)?,
        retire_after: dur("retire_after", retire_after)?,
        pre_rotate: argv("pre_rotate", pre_rotate)?,
        post_rotate: argv("post_rotate", post_rotate)?,
        action_timeout: dur("action_timeout", action_timeout)?,
        revoke_after_migration: revoke_after_migration.unwrap_or(false),
    };
    if let (Some(w), Some(a)) = (r.migration_window, r.max_age)
        && w > a
    {
        return Err(RotationError::policy(
            at,
            format!(
                "migration_window ({}) is longer than max_age ({}): old versions would pile up \
                 verifying; shorten the window or lengthen max_age",
                humantime::format_duration(w),
                humantime::format_duration(a)
            ),
        ));
    }
    Ok(r)
}

impl PolicySet {
    /// No policies: nothing is ever due except by hand; default prekey settings.
    pub fn new() -> Self {
        PolicySet::default()
    }

    /// No policies of the user's, and seed 002's recommended schedule for the roles it gives
    /// one ([`builtin_rules`]): what a home without `rotation.toml` follows.
    pub fn builtin() -> Self {
        PolicySet {
            builtin: true,
            ..PolicySet::default()
        }
    }

    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::Io`] if it cannot be read; [`RotationError::Policy`] naming the
    /// file and the problem (unknown field, bad duration, ...).
    pub fn load(path: &Path) -> Result<Self> {
        let text = keyhaven_fs::read_config(path)?;
        Self::from_toml_str(&text).map_err(|e| match e {
            RotationError::Policy { where_, message } => RotationError::Policy {
                where_: format!("{} ({where_})", path.display()),
                message,
            },
            other => other,
        })
    }

    /// [`PolicySet::load`] if `path` exists, else [`PolicySet::new`].
    ///
    /// # Errors
    /// As [`PolicySet::load`].
    pub fn load_or_default(path: &Path) -> Result<Self> {
        // Anything at the path (a dangling link too) is read, and refused if it is not a
        // policy file: it never silently means "no policies".
        if std::fs::symlink_metadata(path).is_ok() {
            Self::load(path)
        } else {
            Ok(Self::new())
        }
    }

    /// Parses and validates policy TOML.
    ///
    /// # Errors
    /// [`RotationError::Policy`] naming the policy or field: unknown fields, unknown role,
    /// algorithm or protection names, zero or negative durations or counts, a migration window
    /// longer than max_age, an empty command, duplicate names, or two equally specific policies
    /// that could match the same key.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let file: FileToml = toml::from_str(text)
            .map_err(|e| RotationError::policy("file", e.to_string().trim_end().to_owned()))?;
        let mut policies: Vec<Policy> = Vec::new();
        for p in file.policy {
            let at = format!("policy '{}'", p.name);
            if p.name.trim().is_empty() {
                return Err(RotationError::policy("[[policy]]", "a policy needs a name"));
            }
            if policies.iter().any(|q| q.name == p.name) {
                return Err(RotationError::policy(at, "two policies have this name"));
            }
            let roles = matcher_list(&at, "role", p.role, p.roles, |r| {
                r.parse::<Role>().map_err(message)
            })?;
            let algorithms = matcher_list(&at, "algorithm", p.algorithm, p.algorithms, |a| {
                a.parse::<Algorithm>().map_err(|e| e.to_string())
            })?;
            let protections = matcher_list(
                &at,
                "protection",
                p.protection,
                p.protections,
                parse_protection,
            )?;
            let levels = matcher_list(&at, "level", p.level, p.levels, |l| {
                l.parse::<SecurityLevel>().map_err(message)
            })?;
            let rules = rules(
                &at,
                p.mode,
                p.max_age,
                p.max_usage,
                p.migration_window,
                p.retire_after,
                p.pre_rotate,
                p.post_rotate,
                p.action_timeout,
                p.revoke_after_migration,
            )?;
            policies.push(Policy {
                name: p.name,
                roles,
                algorithms,
                protections,
                levels,
                rules,
            });
        }
        for (i, a) in policies.iter().enumerate() {
            for b in &policies[i + 1..] {
                if a.specificity() == b.specificity() && a.overlaps(b) {
                    return Err(RotationError::policy(
                        format!("policies '{}' and '{}'", a.name, b.name),
                        "they are equally specific and can match the same key, so neither \
                         would win: add a matcher (role, algorithm, protection, level) to one of \
                         them",
                    ));
                }
            }
        }
        let mut defaults = BTreeMap::new();
        for (name, r) in file.defaults {
            let role: Role = name.parse().map_err(|e: RotationError| {
                RotationError::policy(format!("[defaults.{name}]"), message(e))
            })?;
            let at = format!("[defaults.{name}]");
            let mut r = rules(
                &at,
                r.mode,
                r.max_age,
                r.max_usage,
                r.migration_window,
                r.retire_after,
                r.pre_rotate,
                r.post_rotate,
                r.action_timeout,
                r.revoke_after_migration,
            )?;
            // A role default that says nothing about when keys are due (only, say,
            // `revoke_after_migration`) keeps the built-in schedule's age limit: writing one
            // field does not silently switch the yearly rotation off (`builtin_defaults =
            // false` does).
            if file.builtin_defaults.unwrap_or(true)
                && r.max_age.is_none()
                && r.max_usage.is_none()
                && let Some(b) = builtin_rules(role)
            {
                r.max_age = b.max_age;
            }
            defaults.insert(role, r);
        }
        let mut prekeys = PrekeySettings::default();
        let prekeys_set = file.prekeys.is_some();
        if let Some(p) = file.prekeys {
            if let Some(n) = p.low_water {
                prekeys.low_water = u32::try_from(positive_count("[prekeys].low_water", n)?)
                    .map_err(|_| RotationError::policy("[prekeys].low_water", "too large"))?;
            }
            if let Some(n) = p.refill_to {
                prekeys.refill_to = u32::try_from(positive_count("[prekeys].refill_to", n)?)
                    .map_err(|_| RotationError::policy("[prekeys].refill_to", "too large"))?;
            }
            if let Some(d) = p.signed_prekey_max_age {
                prekeys.signed_prekey_max_age =
                    parse_duration("[prekeys].signed_prekey_max_age", &d)?;
            }
            if prekeys.refill_to < prekeys.low_water {
                return Err(RotationError::policy(
                    "[prekeys]",
                    format!(
                        "refill_to ({}) is below low_water ({}): the pool would never fill",
                        prekeys.refill_to, prekeys.low_water
                    ),
                ));
            }
        }
        Ok(PolicySet {
            policies,
            defaults,
            prekeys,
            builtin: file.builtin_defaults.unwrap_or(true),
            prekeys_set,
        })
    }

    /// Adds a role default (for programs that build policies in code).
    pub fn with_default(mut self, role: Role, rules: Rules) -> Self {
        self.defaults.insert(role, rules);
        self
    }

    /// The named policies, in file order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The default rules of a role, if set.
    pub fn role_default(&self, role: Role) -> Option<&Rules> {
        self.defaults.get(&role)
    }

    /// The prekey settings (the `[prekeys]` section, else seed 002's defaults).
    pub fn prekeys(&self) -> PrekeySettings {
        self.prekeys
    }

    /// The prekey schedule `rotate --due` follows, and where it comes from: the `[prekeys]`
    /// section, else seed 002's built-in one (signed prekey monthly, one-time prekeys refilled
    /// below 10), which `builtin_defaults = false` switches off (`None`: prekeys are then
    /// rotated and refilled by hand only).
    pub fn prekey_schedule(&self) -> Option<(PrekeySettings, &'static str)> {
        if self.prekeys_set {
            Some((self.prekeys, "[prekeys] in rotation.toml"))
        } else if self.builtin {
            Some((self.prekeys, "built-in (seed 002's schedule)"))
        } else {
            None
        }
    }

    /// The rules for a key with these traits, and where they come from: the most specific
    /// matching policy, else the role's default, else the built-in schedule.
    pub fn rules_for(&self, key: &KeyTraits) -> (Option<&Rules>, RuleSource) {
        let role = key.role;
        let winner = self
            .policies
            .iter()
            .filter(|p| p.matches(key))
            .max_by_key(|p| p.specificity());
        match winner {
            Some(p) => (Some(&p.rules), RuleSource::Policy(p.name.clone())),
            None => match self.defaults.get(&role) {
                Some(r) => (Some(r), RuleSource::RoleDefault(role)),
                None => match (self.builtin, builtin_rules(role)) {
                    (true, Some(r)) => (Some(r), RuleSource::BuiltIn(role)),
                    _ => (None, RuleSource::None),
                },
            },
        }
    }

    /// Which rules apply to `key` and why.
    pub fn explain(&self, key: &LogicalKey) -> Explanation {
        self.explain_for(&KeyTraits::of(key))
    }

    /// Which rules apply to a key with these traits, and why: every policy with why it matches
    /// or not, most specific first.
    pub fn explain_for(&self, key: &KeyTraits) -> Explanation {
        let KeyTraits {
            role,
            algorithm,
            protection,
            level,
        } = *key;
        let (rules, source) = self.rules_for(key);
        let mut candidates: Vec<Candidate> = self
            .policies
            .iter()
            .map(|p| {
                let why = p.mismatches(key);
                let matched = why.is_empty();
                let reasons = if matched {
                    let mut set = Vec::new();
                    // A matched matcher took the key's own value.
                    if !p.roles.is_empty() {
                        set.push(format!("role {role}"));
                    }
                    if !p.algorithms.is_empty() {
                        set.push(format!("algorithm {algorithm}"));
                    }
                    if !p.protections.is_empty() {
                        set.push(format!("protection {protection}"));
                    }
                    if !p.levels.is_empty() {
                        set.push(format!("security level {level}"));
                    }
                    let won = source == RuleSource::Policy(p.name.clone());
                    vec![format!(
                        "{} ({}){}",
                        if set.is_empty() {
                            "matches every key".to_owned()
                        } else {
                            format!("matches {}", set.join(", "))
                        },
                        if won { "wins" } else { "less specific" },
                        if won && p.specificity() > 0 {
                            ": most matchers set"
                        } else {
                            ""
                        }
                    )]
                } else {
                    why
                };
                Candidate {
                    name: p.name.clone(),
                    specificity: p.specificity(),
                    matched,
                    reasons,
                }
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.matched
                .cmp(&a.matched)
                .then(b.specificity.cmp(&a.specificity))
        });
        Explanation {
            role,
            algorithm,
            protection,
            level,
            source,
            rules: rules.cloned().unwrap_or_default(),
            candidates,
        }
    }
}

fn message(e: RotationError) -> String {
    match e {
        RotationError::Policy { message, .. } => message,
        other => other.to_string(),
    }
}

fn parse_protection(s: &str) -> std::result::Result<Protection, String> {
    match s {
        "software-plain" => Ok(Protection::SoftwarePlain),
        "software-encrypted" => Ok(Protection::SoftwareEncrypted),
        "hardware" => Ok(Protection::Hardware),
        _ => Err(format!(
            "unknown protection '{s}': use software-plain, software-encrypted or hardware"
        )),
    }
}

/// The conventional policy file name in the keyhaven home: `rotation.toml`.
pub fn default_policy_path(home: &Path) -> PathBuf {
    home.join("rotation.toml")
}

/// Seed 002's recommended schedule, for a role no policy covers: identity keys yearly (signed
/// and one-time prekeys follow [`PrekeySettings`]: monthly, refilled below 10). `None` for the
/// roles it leaves to the user.
pub fn builtin_rules(role: Role) -> Option<&'static Rules> {
    static IDENTITY: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    match role {
        Role::Identity => Some(IDENTITY.get_or_init(|| Rules {
            // A year as humantime counts it (365.25 days): shown as "1year".
            max_age: Some(Duration::from_secs(31_557_600)),
            ..Rules::default()
        })),
        _ => None,
    }
}

/// Whether a matcher list takes `value` (an empty list takes anything).
fn matcher<T: PartialEq>(list: &[T], value: &T) -> bool {
    list.is_empty() || list.contains(value)
}

/// A matcher given as one value (`role = "x"`) or a list (`roles = ["x", "y"]`), never both;
/// an empty list would match nothing and is refused, as is a value listed twice.
fn matcher_list<T: PartialEq>(
    at: &str,
    field: &str,
    one: Option<String>,
    many: Option<Vec<String>>,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let names = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(RotationError::policy(
                format!("{at}.{field}"),
                format!("give `{field}` or `{field}s`, not both"),
            ));
        }
        (Some(v), None) => vec![v],
        (None, Some(list)) if list.is_empty() => {
            return Err(RotationError::policy(
                format!("{at}.{field}s"),
                "an empty list matches no key: leave the field out to match any",
            ));
        }
        (None, Some(list)) => list,
        (None, None) => Vec::new(),
    };
    let mut out: Vec<T> = Vec::with_capacity(names.len());
    for n in &names {
        let v = parse(n).map_err(|e| RotationError::policy(format!("{at}.{field}"), e))?;
        if out.contains(&v) {
            return Err(RotationError::policy(
                format!("{at}.{field}s"),
                format!("'{n}' is listed twice"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}
