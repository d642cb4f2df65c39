//! Parsing and validating keyhaven.toml.

use std::path::Path;

use keyhaven::{BackendConfig, BackendKind, Config, Error, ErrorKind, FallbackConfig, TokenRef};

const FULL: &str = r#"
default_backend = "default"

[default_key]
backend = "default"
id = "3f1c0e5b9a7d4c2e8f6a1b3c5d7e9f01"

[fallback]
allow = true
backend = "local"

[backends.default]
type = "encrypted"
path = "backends/default"

[backends.local]
type = "pem"
path = "/srv/keys/local"

[backends.scratch]
type = "memory"
"#;

fn config_error(text: &str) -> String {
    match Config::from_toml_str(text, "keyhaven.toml") {
        Err(e @ Error::Config { .. }) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            e.to_string()
        }
        other => panic!("expected a config error for {text:?}, got {other:?}"),
    }
}

#[test]
fn parses_the_full_example_and_round_trips() {
    let c = Config::from_toml_str(FULL, "keyhaven.toml").unwrap();
    assert_eq!(c.default_backend.as_deref(), Some("default"));
    assert_eq!(c.backends.len(), 3);
    assert_eq!(c.backends["default"].kind, BackendKind::Encrypted);
    assert_eq!(c.backends["scratch"].kind, BackendKind::Memory);
    assert!(c.fallback.allow);
    assert_eq!(
        c.default_key.as_ref().unwrap().id.as_str(),
        "3f1c0e5b9a7d4c2e8f6a1b3c5d7e9f01"
    );
    let text = c.to_toml_string().unwrap();
    assert_eq!(Config::from_toml_str(&text, "again").unwrap(), c);
}

#[test]
fn empty_text_is_the_empty_config() {
    let c = Config::from_toml_str("", "keyhaven.toml").unwrap();
    assert_eq!(c, Config::default());
    assert!(!c.fallback.allow, "fallback is off by default");
}

#[test]
fn unknown_fields_are_refused_with_their_line() {
    let e = config_error("default_backend = \"a\"\ncolour = 1\n[backends.a]\ntype = \"memory\"\n");
    assert!(e.contains("keyhaven.toml line 2"), "{e}");
    assert!(e.contains("colour"), "{e}");

    let e = config_error("[backends.a]\ntype = \"pem\"\npaht = \"x\"\n");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("paht"), "{e}");

    let e = config_error("[fallback]\nallow = true\nbackend = \"a\"\nretries = 3\n");
    assert!(e.contains("retries"), "{e}");
}

#[test]
fn unknown_backend_types_name_the_known_ones() {
    let e = config_error("[backends.hsm]\ntype = \"pkcs12\"\n");
    assert!(e.contains("unknown backend type 'pkcs12'"), "{e}");
    assert!(e.contains("encrypted, pem, memory, pkcs11, tpm"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn missing_type_is_refused() {
    let e = config_error("[backends.a]\npath = \"x\"\n");
    assert!(e.contains("type"), "{e}");
}

#[test]
fn references_must_name_configured_backends() {
    let e = config_error("default_backend = \"nope\"\n[backends.a]\ntype = \"memory\"\n");
    assert!(e.contains("default_backend"), "{e}");
    assert!(e.contains("'nope'") && e.contains("configured: a"), "{e}");

    let e = config_error(
        "[default_key]\nbackend = \"gone\"\nid = \"abc\"\n[backends.a]\ntype = \"memory\"\n",
    );
    assert!(e.contains("default_key.backend"), "{e}");

    let e = config_error("[fallback]\nallow = true\nbackend = \"gone\"\n");
    assert!(
        e.contains("fallback.backend") && e.contains("configured: none"),
        "{e}"
    );
}

#[test]
fn fallback_rules() {
    let e = config_error("[fallback]\nallow = true\n");
    assert!(e.contains("fallback: `allow = true` needs `backend"), "{e}");

    let e = config_error(
        "[fallback]\nallow = true\nbackend = \"m\"\n[backends.m]\ntype = \"memory\"\n",
    );
    assert!(
        e.contains("fallback.backend") && e.contains("memory"),
        "{e}"
    );

    // Naming a fallback without allowing it is valid (and means: do not fall back).
    let c = Config::from_toml_str(
        "[fallback]\nbackend = \"p\"\n[backends.p]\ntype = \"pem\"\n",
        "keyhaven.toml",
    )
    .unwrap();
    assert_eq!(c.fallback, FallbackConfig::new(false, Some("p".into())));
}

#[test]
fn per_backend_field_checks_name_the_backend() {
    let e = config_error("[backends.scratch]\ntype = \"memory\"\npath = \"x\"\n");
    assert!(e.contains("backends.scratch.path"), "{e}");

    let e = config_error("[backends.a]\ntype = \"pem\"\npath = \"\"\n");
    assert!(e.contains("backends.a.path"), "{e}");

    let e = config_error("[backends.\"a:b\"]\ntype = \"pem\"\n");
    assert!(
        e.contains("backends.a:b") && e.contains("not a valid backend name"),
        "{e}"
    );
}

#[test]
fn bad_key_ids_are_refused() {
    let e = config_error(
        "[default_key]\nbackend = \"a\"\nid = \"../etc\"\n[backends.a]\ntype = \"memory\"\n",
    );
    assert!(e.contains("not a key id"), "{e}");
}

#[test]
fn backend_paths_resolve_against_the_home() {
    let c = Config::from_toml_str(FULL, "keyhaven.toml").unwrap();
    let home = Path::new("/home/u/.local/share/keyhaven");
    assert_eq!(
        c.backend_path(home, "default").unwrap(),
        home.join("backends/default")
    );
    assert_eq!(
        c.backend_path(home, "local").unwrap(),
        Path::new("/srv/keys/local")
    );
    assert_eq!(c.backend_path(home, "scratch"), None);
    let mut c = c;
    c.backends
        .insert("plain".into(), BackendConfig::new(BackendKind::Pem, None));
    assert_eq!(
        c.backend_path(home, "plain").unwrap(),
        home.join("backends/plain")
    );
}

#[test]
fn save_is_atomic_private_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyhaven.toml");
    assert_eq!(
        Config::load(&path).unwrap(),
        Config::default(),
        "missing file = empty config"
    );
    let c = Config::from_toml_str(FULL, "x").unwrap();
    c.save(&path).unwrap();
    c.save(&path).unwrap();
    assert_eq!(Config::load(&path).unwrap(), c);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "keyhaven.toml")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // an invalid configuration is never written
    let mut bad = c.clone();
    bad.default_backend = Some("nope".into());
    assert!(bad.save(&path).is_err());
    assert_eq!(Config::load(&path).unwrap(), c);
}

#[test]
fn a_damaged_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyhaven.toml");
    std::fs::write(&path, "[backends.a\ntype = ").unwrap();
    set_mode(&path, 0o600);
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("keyhaven.toml line 1"), "{e}");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_home_or_config_open_to_other_users_is_refused() {
    use keyhaven::{FixedPassphrase, KeyManager};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    keyhaven::fs::create_private_dir(&home).unwrap();
    let config = home.join(keyhaven::CONFIG_FILE);
    Config::default().save(&config).unwrap();
    for (path, mode, fix) in [
        (&home, 0o755, "chmod 700"),
        (&home, 0o730, "chmod 700"),
        (&config, 0o644, "chmod 600"),
        (&config, 0o620, "chmod 600"),
    ] {
        let good = if path == &home { 0o700 } else { 0o600 };
        set_mode(path, mode);
        let e = KeyManager::open(&home, FixedPassphrase::new("pw")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{mode:o}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(fix),
            "names the path and the fix: {msg}"
        );
        if path == &config {
            let e = Config::load(&config).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        }
        set_mode(path, good);
        KeyManager::open(&home, FixedPassphrase::new("pw")).unwrap();
    }
    // a manager opened while the home was private refuses to write once it is not
    let m = KeyManager::open(&home, FixedPassphrase::new("pw")).unwrap();
    set_mode(&home, 0o777);
    let e = m.set_default_backend(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    set_mode(&home, 0o700);
}

const HARDWARE: &str = r#"
[backends.hsm]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "keyhaven"
pin_env = "KEYHAVEN_HSM_PIN"

[backends.card]
type = "pkcs11"
module = "lib/opensc-pkcs11.so"
serial = "0123abcd"
pin_file = "card.pin"

[backends.slot]
type = "pkcs11"
module = "/m.so"
slot = 7

[backends.tpm]
type = "tpm"
tcti = "swtpm:host=127.0.0.1,port=2321"

[backends.tpm2]
type = "tpm"
tcti = "device:/dev/tpmrm0"
path = "/var/lib/keyhaven/tpm"
"#;

#[test]
fn hardware_declarations_parse_round_trip_and_resolve() {
    let c = Config::from_toml_str(HARDWARE, "keyhaven.toml").unwrap();
    let home = Path::new("/h");
    let hsm = &c.backends["hsm"];
    assert_eq!(hsm.kind, BackendKind::Pkcs11);
    assert_eq!(hsm.token_ref(), Some(TokenRef::Label("keyhaven".into())));
    assert_eq!(hsm.pin_env.as_deref(), Some("KEYHAVEN_HSM_PIN"));
    assert_eq!(
        c.backends["card"].token_ref(),
        Some(TokenRef::Serial("0123abcd".into()))
    );
    assert_eq!(c.backends["slot"].token_ref(), Some(TokenRef::Slot(7)));
    assert_eq!(
        c.backend_path(home, "hsm"),
        None,
        "a token has no directory"
    );
    assert_eq!(
        c.backend_path(home, "tpm").unwrap(),
        home.join("backends/tpm")
    );
    assert_eq!(
        c.backend_path(home, "tpm2").unwrap(),
        Path::new("/var/lib/keyhaven/tpm")
    );
    let loc = c.backend_location(home, "card").unwrap();
    assert!(
        loc.contains("serial '0123abcd'") && loc.contains("/h/lib/opensc-pkcs11.so"),
        "relative module paths resolve against the home: {loc}"
    );
    let loc = c.backend_location(home, "tpm").unwrap();
    assert!(loc.contains("TCTI swtpm:host=127.0.0.1,port=2321"), "{loc}");
    for kind in [BackendKind::Pkcs11, BackendKind::Tpm] {
        assert!(kind.is_hardware() && !kind.is_file() && !kind.is_ephemeral());
        assert_eq!(kind.protection(), keyhaven::Protection::Hardware);
    }
    let text = c.to_toml_string().unwrap();
    assert_eq!(Config::from_toml_str(&text, "again").unwrap(), c);
    assert!(!text.contains("slot = 7\nserial"), "{text}");

    // the builders make the same declarations
    let built = BackendConfig::pkcs11(
        "/usr/lib/softhsm/libsofthsm2.so",
        TokenRef::Label("keyhaven".into()),
    )
    .with_pin_env("KEYHAVEN_HSM_PIN");
    assert_eq!(&built, hsm);
    let built = BackendConfig::tpm("swtpm:host=127.0.0.1,port=2321", None);
    assert_eq!(&built, &c.backends["tpm"]);
}

#[test]
fn hardware_fields_are_checked_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        // pkcs11 needs a module and one token selector
        (
            "[backends.h]\ntype = \"pkcs11\"\ntoken = \"t\"\n",
            "backends.h.module",
        ),
        (
            "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\n",
            "backends.h.token",
        ),
        (
            "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\nslot = 1\n",
            "only one of `token`, `slot` and `serial`",
        ),
        (
            "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"\"\n",
            "backends.h.token: may not be empty",
        ),
        (
            "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin_env = \"A\"\npin_file = \"f\"\n",
            "only one of `pin_env` and `pin_file`",
        ),
        // pin_env is a variable's name, never the PIN
        (
            "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin_env = \"1234 56\"\n",
            "backends.h.pin_env",
        ),
        // no directory for a token
        (
            "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npath = \"d\"\n",
            "backends.h.path",
        ),
        // device fields belong to their type only
        (
            "[backends.p]\ntype = \"pem\"\nmodule = \"/m.so\"\n",
            "backends.p.module",
        ),
        (
            "[backends.p]\ntype = \"encrypted\"\npin_env = \"V\"\n",
            "backends.p.pin_env",
        ),
        (
            "[backends.p]\ntype = \"memory\"\ntcti = \"tabrmd\"\n",
            "backends.p.tcti",
        ),
        (
            "[backends.t]\ntype = \"tpm\"\ntoken = \"x\"\ntcti = \"tabrmd\"\n",
            "backends.t.token",
        ),
        // tpm needs a TCTI keyhaven can use
        ("[backends.t]\ntype = \"tpm\"\n", "backends.t.tcti"),
        (
            "[backends.t]\ntype = \"tpm\"\ntcti = \"serial:/dev/ttyS0\"\n",
            "backends.t.tcti",
        ),
        // a TPM is no fallback
        (
            "[fallback]\nallow = true\nbackend = \"t\"\n[backends.t]\ntype = \"tpm\"\ntcti = \"tabrmd\"\n",
            "fallback.backend",
        ),
    ];
    for (text, needle) in cases {
        let e = config_error(text);
        assert!(e.contains(needle), "{text:?}: {e}");
    }
    // the PIN itself is not a field at all
    let e = config_error(
        "[backends.h]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin = \"1234\"\n",
    );
    assert!(e.contains("pin") && e.contains("line 5"), "{e}");
}

#[test]
#[cfg(feature = "tpm")]
fn tcti_strings_are_parsed_when_tpm_support_is_built_in() {
    let e = config_error("[backends.t]\ntype = \"tpm\"\ntcti = \"swtpm:path=/run/swtpm.sock\"\n");
    assert!(
        e.contains("backends.t.tcti") && e.contains("type=tcp"),
        "{e}"
    );
    let e = config_error("[backends.t]\ntype = \"tpm\"\ntcti = \"swtpm:colour=blue\"\n");
    assert!(e.contains("backends.t.tcti") && e.contains("colour"), "{e}");
}
