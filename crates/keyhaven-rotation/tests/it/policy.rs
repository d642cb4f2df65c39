//! Policy files: validation with clear errors, specificity, role defaults, explain.

use std::time::Duration;

use keyhaven_core::{Algorithm, Protection};
use keyhaven_rotation::{KeyTraits, PolicySet, Role, RuleSource, SecurityLevel};

const GOOD: &str = r#"
[[policy]]
name = "identity-yearly"
role = "identity"
max_age = "365d"
migration_window = "30d"
retire_after = "90d"

[[policy]]
name = "hsm-identity"
role = "identity"
protection = "hardware"
max_age = "2y"

[[policy]]
name = "all-p384"
role = "signing"
algorithm = "ES384"
max_usage = 1000000
pre_rotate = ["/bin/true", "--fast"]
action_timeout = "5s"

[defaults.signing]
max_age = "90d"

[prekeys]
low_water = 5
refill_to = 50
signed_prekey_max_age = "7d"
"#;

fn err(toml: &str) -> String {
    PolicySet::from_toml_str(toml).unwrap_err().to_string()
}

#[test]
fn a_good_file_loads_and_the_most_specific_policy_wins() {
    let p = PolicySet::from_toml_str(GOOD).unwrap();
    assert_eq!(p.policies().len(), 3);
    assert_eq!(p.prekeys().low_water, 5);
    assert_eq!(
        p.prekeys().signed_prekey_max_age,
        Duration::from_secs(7 * 86_400)
    );
    let (r, src) = p.rules_for(&KeyTraits::new(
        Role::Identity,
        Algorithm::Ed25519,
        Protection::Hardware,
    ));
    assert_eq!(src, RuleSource::Policy("hsm-identity".into()));
    assert_eq!(
        r.unwrap().max_age,
        Some(Duration::from_secs(2 * 31_557_600))
    );
    let (_, src) = p.rules_for(&KeyTraits::new(
        Role::Identity,
        Algorithm::Ed25519,
        Protection::SoftwarePlain,
    ));
    assert_eq!(src, RuleSource::Policy("identity-yearly".into()));
    let (r, src) = p.rules_for(&KeyTraits::new(
        Role::Signing,
        Algorithm::EcdsaP384,
        Protection::SoftwarePlain,
    ));
    assert_eq!(src, RuleSource::Policy("all-p384".into()));
    assert_eq!(r.unwrap().max_usage, Some(1_000_000));
    let (r, src) = p.rules_for(&KeyTraits::new(
        Role::Signing,
        Algorithm::Ed25519,
        Protection::SoftwarePlain,
    ));
    assert_eq!(src, RuleSource::RoleDefault(Role::Signing));
    assert_eq!(r.unwrap().max_age, Some(Duration::from_secs(90 * 86_400)));
    let (r, src) = p.rules_for(&KeyTraits::new(
        Role::Encryption,
        Algorithm::X25519,
        Protection::SoftwarePlain,
    ));
    assert_eq!((r, src), (None, RuleSource::None));
}

#[test]
fn explain_names_the_winner_and_why_others_lost() {
    let p = PolicySet::from_toml_str(GOOD).unwrap();
    let e = p.explain_for(&KeyTraits::new(
        Role::Identity,
        Algorithm::Ed25519,
        Protection::Hardware,
    ));
    assert_eq!(e.source, RuleSource::Policy("hsm-identity".into()));
    assert_eq!(e.candidates[0].name, "hsm-identity");
    assert!(e.candidates[0].matched);
    assert!(e.candidates[1].matched && e.candidates[1].name == "identity-yearly");
    let p384 = e.candidates.iter().find(|c| c.name == "all-p384").unwrap();
    assert!(!p384.matched);
    assert!(
        p384.reasons
            .iter()
            .any(|r| r.contains("algorithm is ed25519")),
        "{:?}",
        p384.reasons
    );
    let text = e.to_string();
    assert!(text.contains("applies: policy 'hsm-identity'"), "{text}");
    assert!(text.contains("wins"), "{text}");
}

#[test]
fn bad_files_are_refused_with_the_field_named() {
    let typo = err("[[policy]]\nname = \"a\"\nmax_agee = \"1d\"\n");
    assert!(typo.contains("max_agee"), "{typo}");
    let top = err("[polcy]\n");
    assert!(top.contains("polcy"), "{top}");
    let neg = err("[[policy]]\nname = \"a\"\nmax_age = \"-5d\"\n");
    assert!(neg.contains("max_age") && neg.contains("negative"), "{neg}");
    let zero = err("[[policy]]\nname = \"a\"\nmigration_window = \"0s\"\n");
    assert!(
        zero.contains("migration_window") && zero.contains("zero"),
        "{zero}"
    );
    let junk = err("[[policy]]\nname = \"a\"\nretire_after = \"soon\"\n");
    assert!(junk.contains("retire_after"), "{junk}");
    let long = err("[[policy]]\nname = \"a\"\nmax_age = \"7d\"\nmigration_window = \"30d\"\n");
    assert!(
        long.contains("migration_window") && long.contains("longer than max_age"),
        "{long}"
    );
    let usage = err("[[policy]]\nname = \"a\"\nmax_usage = 0\n");
    assert!(usage.contains("max_usage"), "{usage}");
    let role = err("[[policy]]\nname = \"a\"\nrole = \"idnetity\"\n");
    assert!(role.contains("unknown role 'idnetity'"), "{role}");
    let alg = err("[[policy]]\nname = \"a\"\nalgorithm = \"rsa\"\n");
    assert!(alg.contains("algorithm") && alg.contains("rsa"), "{alg}");
    let prot = err("[[policy]]\nname = \"a\"\nprotection = \"tpm\"\n");
    assert!(prot.contains("protection"), "{prot}");
    let argv = err("[[policy]]\nname = \"a\"\npre_rotate = []\n");
    assert!(
        argv.contains("pre_rotate") && argv.contains("empty"),
        "{argv}"
    );
    let dup = err("[[policy]]\nname = \"a\"\n[[policy]]\nname = \"a\"\nrole = \"identity\"\n");
    assert!(dup.contains("two policies"), "{dup}");
    let tie = err(
        "[[policy]]\nname = \"a\"\nrole = \"identity\"\n[[policy]]\nname = \"b\"\nalgorithm = \"ed25519\"\n",
    );
    assert!(
        tie.contains("'a' and 'b'") && tie.contains("equally specific"),
        "{tie}"
    );
    let def = err("[defaults.signer]\nmax_age = \"1d\"\n");
    assert!(def.contains("defaults.signer"), "{def}");
    let pk = err("[prekeys]\nlow_water = 50\nrefill_to = 10\n");
    assert!(pk.contains("refill_to"), "{pk}");
    // equally specific but disjoint policies are fine
    PolicySet::from_toml_str(
        "[[policy]]\nname = \"a\"\nrole = \"identity\"\n[[policy]]\nname = \"b\"\nrole = \"signing\"\n",
    )
    .unwrap();
}

#[test]
fn load_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rotation.toml");
    std::fs::write(&path, "[[policy]]\nname = \"x\"\nmax_age = \"0d\"\n").unwrap();
    let e = PolicySet::load(&path).unwrap_err().to_string();
    assert!(e.contains("rotation.toml") && e.contains("max_age"), "{e}");
    assert_eq!(
        PolicySet::load_or_default(&tmp.path().join("none.toml")).unwrap(),
        PolicySet::new()
    );
}

#[test]
fn seed_002s_schedule_is_built_in_overridable_and_switchable_off() {
    let alg = Algorithm::Ed25519;
    let sw = Protection::SoftwareEncrypted;
    // No file: identity keys yearly, shown as built-in; signing keys are left to the user.
    let builtin = PolicySet::builtin();
    let (rules, source) = builtin.rules_for(&KeyTraits::new(Role::Identity, alg, sw));
    assert_eq!(source, RuleSource::BuiltIn(Role::Identity));
    assert_eq!(
        rules.unwrap().max_age,
        Some(Duration::from_secs(31_557_600))
    );
    assert!(source.to_string().contains("built-in"));
    assert_eq!(
        builtin.rules_for(&KeyTraits::new(Role::Signing, alg, sw)).1,
        RuleSource::None
    );
    assert_eq!(builtin.prekeys().low_water, 10);
    // A file without a word on it keeps it; the file's own default overrides it.
    let kept = PolicySet::from_toml_str("[prekeys]\nlow_water = 5\n").unwrap();
    assert_eq!(
        kept.rules_for(&KeyTraits::new(Role::Identity, alg, sw)).1,
        RuleSource::BuiltIn(Role::Identity)
    );
    let overridden = PolicySet::from_toml_str("[defaults.identity]\nmax_age = \"2y\"\n").unwrap();
    let (rules, source) = overridden.rules_for(&KeyTraits::new(Role::Identity, alg, sw));
    assert_eq!(source, RuleSource::RoleDefault(Role::Identity));
    assert!(rules.unwrap().max_age > Some(Duration::from_secs(31_557_600)));
    // A role default that sets only other fields keeps the built-in age limit.
    let partial =
        PolicySet::from_toml_str("[defaults.identity]\nrevoke_after_migration = true\n").unwrap();
    let (rules, source) = partial.rules_for(&KeyTraits::new(Role::Identity, alg, sw));
    assert_eq!(source, RuleSource::RoleDefault(Role::Identity));
    let rules = rules.unwrap();
    assert!(rules.revoke_after_migration);
    assert_eq!(rules.max_age, Some(Duration::from_secs(31_557_600)));
    let usage = PolicySet::from_toml_str("[defaults.identity]\nmax_usage = 5\n").unwrap();
    assert_eq!(
        usage
            .rules_for(&KeyTraits::new(Role::Identity, alg, sw))
            .0
            .unwrap()
            .max_age,
        None,
        "a schedule of its own replaces the built-in one"
    );
    // Switched off: nothing is due by itself.
    let off = PolicySet::from_toml_str("builtin_defaults = false\n").unwrap();
    assert_eq!(
        off.rules_for(&KeyTraits::new(Role::Identity, alg, sw)).1,
        RuleSource::None
    );
    // And a typo in the switch is an error, not "on".
    assert!(PolicySet::from_toml_str("builtin_defaults = \"no\"\n").is_err());
}

#[test]
fn matchers_take_lists_as_seed_003_writes_them() {
    let set = PolicySet::from_toml_str(
        r#"
[[policy]]
name = "signers"
roles = ["signing", "identity"]
algorithms = ["p256", "p384"]
max_age = "90d"

[[policy]]
name = "hardware"
protections = ["hardware"]
max_age = "2y"
"#,
    )
    .unwrap();
    let source = |role, alg, prot| set.rules_for(&KeyTraits::new(role, alg, prot)).1;
    assert_eq!(
        source(
            Role::Identity,
            Algorithm::EcdsaP384,
            Protection::SoftwareEncrypted
        ),
        RuleSource::Policy("signers".into())
    );
    assert_eq!(
        source(Role::Signing, Algorithm::EcdsaP256, Protection::Hardware),
        RuleSource::Policy("signers".into()),
        "two matchers set beat one"
    );
    assert_eq!(
        source(Role::Signing, Algorithm::Ed25519, Protection::Hardware),
        RuleSource::Policy("hardware".into())
    );
    let why = set.explain_for(&KeyTraits::new(
        Role::Signing,
        Algorithm::Ed25519,
        Protection::SoftwareEncrypted,
    ));
    let lost = why.candidates.iter().find(|c| c.name == "signers").unwrap();
    assert!(
        lost.reasons
            .iter()
            .any(|r| r.contains("the policy wants p256 or p384")),
        "{:?}",
        lost.reasons
    );

    // both spellings, an empty list, a value twice, an unknown value: refused naming the field
    for (toml, needle) in [
        (
            "[[policy]]\nname = \"a\"\nrole = \"signing\"\nroles = [\"identity\"]\n",
            "not both",
        ),
        ("[[policy]]\nname = \"a\"\nroles = []\n", "matches no key"),
        (
            "[[policy]]\nname = \"a\"\nalgorithms = [\"p256\", \"p256\"]\n",
            "listed twice",
        ),
        (
            "[[policy]]\nname = \"a\"\nprotections = [\"hardware\", \"paper\"]\n",
            "policy 'a'.protection",
        ),
        (
            "[[policy]]\nname = \"a\"\nroles = [\"signing\", \"identity\"]\n[[policy]]\nname = \"b\"\nroles = [\"identity\"]\n",
            "equally specific",
        ),
    ] {
        let e = err(toml);
        assert!(e.contains(needle), "{toml:?}: {e}");
    }
}

#[test]
fn security_levels_are_matched_and_explained() {
    let set = PolicySet::from_toml_str(
        r#"
[[policy]]
name = "important-signers"
role = "signing"
levels = ["high", "critical"]
max_age = "30d"

[[policy]]
name = "signing"
role = "signing"
max_age = "1y"

[[policy]]
name = "critical-hsm-signers"
role = "signing"
level = "critical"
protection = "hardware"
max_age = "7d"
"#,
    )
    .unwrap();
    let sw = Protection::SoftwareEncrypted;
    let at =
        |level, prot| KeyTraits::new(Role::Signing, Algorithm::EcdsaP384, prot).with_level(level);
    let source = |t: KeyTraits| set.rules_for(&t).1;
    // A standard key is left to the role policy; the level policy does not match it.
    assert_eq!(
        source(at(SecurityLevel::Standard, sw)),
        RuleSource::Policy("signing".into())
    );
    // A list of levels takes each of them; more matchers win.
    assert_eq!(
        source(at(SecurityLevel::High, sw)),
        RuleSource::Policy("important-signers".into())
    );
    assert_eq!(
        source(at(SecurityLevel::Critical, sw)),
        RuleSource::Policy("important-signers".into())
    );
    assert_eq!(
        source(at(SecurityLevel::Critical, Protection::Hardware)),
        RuleSource::Policy("critical-hsm-signers".into())
    );
    // explain says which matcher failed, level included.
    let why = set.explain_for(&at(SecurityLevel::High, Protection::Hardware));
    let lost = why
        .candidates
        .iter()
        .find(|c| c.name == "critical-hsm-signers")
        .unwrap();
    assert!(!lost.matched);
    assert!(
        lost.reasons
            .iter()
            .any(|r| r.contains("security level is high, the policy wants critical")),
        "{:?}",
        lost.reasons
    );
    assert!(why.to_string().contains("security level high"), "{why}");

    // a level policy and a role policy that can match the same key at the same specificity
    // are refused (neither would win)
    let e = PolicySet::from_toml_str(
        "[[policy]]\nname = \"a\"\nlevel = \"high\"\n[[policy]]\nname = \"b\"\nrole = \"signing\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("equally specific"), "{e}");
    // unknown level, empty list, both spellings, a level twice: refused naming the field
    for (toml, needle) in [
        (
            "[[policy]]\nname = \"a\"\nlevel = \"secret\"\n",
            "unknown security level 'secret': use standard, high or critical",
        ),
        (
            "[[policy]]\nname = \"a\"\nlevels = []\n",
            "policy 'a'.levels",
        ),
        (
            "[[policy]]\nname = \"a\"\nlevel = \"high\"\nlevels = [\"critical\"]\n",
            "not both",
        ),
        (
            "[[policy]]\nname = \"a\"\nlevels = [\"high\", \"high\"]\n",
            "listed twice",
        ),
    ] {
        let e = PolicySet::from_toml_str(toml).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml:?}: {e}");
    }
    // levels parse and order
    assert!(SecurityLevel::Standard < SecurityLevel::High);
    assert!(SecurityLevel::High < SecurityLevel::Critical);
    assert_eq!(
        "critical".parse::<SecurityLevel>().unwrap(),
        SecurityLevel::Critical
    );
    assert_eq!(SecurityLevel::default(), SecurityLevel::Standard);
}
