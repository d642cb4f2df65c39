//! Other programs on the same token: `pkcs11-tool` (OpenSC) lists our keys and makes keys we
//! use, `softhsm2-util` sees the token, `openssl` verifies our signatures.

use keyhaven_core::ErrorKind;
use keyhaven_core::{Algorithm, KeyInfo, KeyStore, SignatureFormat};
use keyhaven_hsm_pkcs11::{TokenReport, TokenSelector};
use sha2::{Digest, Sha384};

use cryptoki::object::Attribute;

use crate::token::{TestToken, module, pkcs11_tool, private_key_attributes, tool};

/// The objects `pkcs11-tool --list-objects` prints: (kind line, label, id, access line, point).
#[derive(Debug, Default)]
struct Listed {
    kind: String,
    label: String,
    id: String,
    access: String,
    point: String,
}

fn list_objects(token: &TestToken) -> Vec<Listed> {
    let out = pkcs11_tool(token, &["--list-objects"]);
    let mut objects: Vec<Listed> = Vec::new();
    for line in out.lines() {
        if line.contains("Key Object;") {
            objects.push(Listed {
                kind: line.to_owned(),
                ..Listed::default()
            });
            continue;
        }
        let Some(cur) = objects.last_mut() else {
            continue;
        };
        let field = |name: &str| line.trim().strip_prefix(name).map(|v| v.trim().to_owned());
        if let Some(v) = field("label:") {
            cur.label = v;
        } else if let Some(v) = field("ID:") {
            cur.id = v;
        } else if let Some(v) = field("Access:") {
            cur.access = v;
        } else if let Some(v) = field("EC_POINT:") {
            cur.point = v;
        }
    }
    objects
}

/// The raw public point at the end of an SPKI.
fn raw_point(info: &KeyInfo) -> String {
    let der = info.public_key.spki_der();
    let n = match info.algorithm {
        Algorithm::EcdsaP384 => 97,
        Algorithm::EcdsaP256 => 65,
        _ => 32,
    };
    hex::encode(&der[der.len() - n..])
}

/// The store's keys once it lists `n` of them. SoftHSM shares a token between processes through
/// its files and reloads them when it notices a change; right after another process wrote,
/// a reload has (rarely) been seen to miss the new objects, so this asks again for up to 2 s.
fn eventually_listed(store: &impl KeyStore, n: usize) -> Vec<KeyInfo> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let listed = store.list().unwrap();
        if listed.len() == n || std::time::Instant::now() > deadline {
            assert_eq!(listed.len(), n, "{listed:?}");
            return listed;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn our_keys_appear_in_pkcs11_tool_with_label_and_paired_ids() {
    let token = TestToken::new();
    let store = token.store();
    let made: Vec<KeyInfo> = [
        (Algorithm::EcdsaP384, "release p384"),
        (Algorithm::EcdsaP256, "ci-p256"),
        (Algorithm::Ed25519, "identity.ed25519"),
    ]
    .iter()
    .map(|(alg, label)| store.generate(*alg, label).unwrap())
    .collect();
    let listed = list_objects(&token);
    assert_eq!(listed.len(), 6, "{listed:#?}");
    for key in &made {
        assert_eq!(key.id.as_str().len(), 32, "16 random bytes of CKA_ID");
        let objs: Vec<&Listed> = listed.iter().filter(|o| o.label == key.label).collect();
        assert_eq!(
            objs.len(),
            2,
            "a private and a public object for {}",
            key.label
        );
        let private = objs
            .iter()
            .find(|o| o.kind.starts_with("Private Key Object"))
            .expect("private object");
        let public = objs
            .iter()
            .find(|o| o.kind.starts_with("Public Key Object"))
            .expect("public object");
        assert_eq!(private.id, key.id.as_str(), "private CKA_ID is the key id");
        assert_eq!(public.id, key.id.as_str(), "public CKA_ID is the key id");
        for flag in ["sensitive", "never extractable", "local"] {
            assert!(
                private.access.contains(flag),
                "{}: private key access '{}' lacks {flag}",
                key.label,
                private.access
            );
        }
        // pkcs11-tool prints the DER-wrapped point; ours is the same point
        assert!(
            public.point.ends_with(&raw_point(key)),
            "{}: {} vs {}",
            key.label,
            public.point,
            raw_point(key)
        );
        let kind = match key.algorithm {
            Algorithm::Ed25519 => "EC_EDWARDS",
            _ => "EC",
        };
        assert!(
            private.kind.ends_with(&format!("; {kind}")),
            "{}",
            private.kind
        );
    }
}

#[test]
fn softhsm2_util_sees_the_token() {
    let token = TestToken::new();
    let out = tool("softhsm2-util", &["--show-slots"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim() == format!("Label:            {}", token.label)),
        "{text}"
    );
}

/// A key `pkcs11-tool --keypairgen` made is listed under the hex of its CKA_ID and signs.
fn foreign_key_signs(key_type: &str, cka_id: &str, alg: Algorithm) {
    let token = TestToken::new();
    let store = token.store();
    let label = format!("made by pkcs11-tool {key_type}");
    pkcs11_tool(
        &token,
        &[
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            &label,
            "--id",
            cka_id,
        ],
    );
    let listed = eventually_listed(&store, 1);
    let key = &listed[0];
    assert_eq!(key.id.as_str(), cka_id);
    assert_eq!(key.label, label);
    assert_eq!(key.algorithm, alg);
    assert_eq!(key.created_at, 0, "no CKA_START_DATE: unknown");
    assert_eq!(&store.find_by_label(&label).unwrap(), key);
    assert_eq!(&store.resolve(cka_id).unwrap(), key);
    let point = list_objects(&token)
        .into_iter()
        .find(|o| o.kind.starts_with("Public Key Object"))
        .unwrap()
        .point;
    assert!(point.ends_with(&raw_point(key)));
    let msg = b"signed with a key keyhaven did not make";
    let sig = store.sign(&key.id, msg).unwrap();
    keyhaven_crypto::verify(&key.public_key, msg, &sig).unwrap();
    assert!(keyhaven_testkit::openssl::verify(
        &key.public_key,
        msg,
        &sig
    ));
    // a label taken by another tool's key is taken for us too
    assert!(matches!(
        store.generate(alg, &label),
        Err(e) if e.is(ErrorKind::AlreadyExists)));
    // export is refused for these as well
    assert!(matches!(
        store.export_pkcs8(&key.id),
        Err(e) if e.is(ErrorKind::Unsupported)));
}

#[test]
fn pkcs11_tool_p384_key_signs_through_the_store() {
    foreign_key_signs("EC:secp384r1", "0102030405", Algorithm::EcdsaP384);
}

#[test]
fn pkcs11_tool_p256_key_signs_through_the_store() {
    foreign_key_signs("EC:prime256v1", "a1b2", Algorithm::EcdsaP256);
}

/// OpenSC 0.23 (Debian 12) spells the Edwards key type `EC:edwards25519` (later releases also
/// take `EDWARDS:edwards25519`); it writes `CKA_EC_PARAMS` as the PrintableString
/// "edwards25519", which the store reads as Ed25519.
#[test]
fn pkcs11_tool_ed25519_key_signs_through_the_store() {
    foreign_key_signs("EC:edwards25519", "ed", Algorithm::Ed25519);
}

#[test]
fn keys_without_cka_id_are_skipped_and_reported() {
    let token = TestToken::new();
    let store = token.store();
    // without --id, pkcs11-tool leaves CKA_ID empty for EC keys
    pkcs11_tool(
        &token,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "no id",
        ],
    );
    let ours = store.generate(Algorithm::EcdsaP256, "has id").unwrap();
    assert_eq!(store.list().unwrap(), vec![ours]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let problems = loop {
        // see `eventually_listed`
        let problems = store.check().unwrap();
        if !problems.is_empty() || std::time::Instant::now() > deadline {
            break problems;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    let text = problems[0].to_string();
    assert!(
        text.contains("no id") && text.contains("CKA_ID"),
        "names the object and the problem: {text}"
    );
    assert!(matches!(
        store.find_by_label("no id"),
        Err(e) if e.is(ErrorKind::NotFound)));
}

/// Whether `openssl` accepts `encoded` (DER for ECDSA, raw for Ed25519) over `msg`.
fn openssl_verifies_bytes(key: &KeyInfo, msg: &[u8], encoded: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("pub.pem"), key.public_key.to_pem().unwrap()).unwrap();
    std::fs::write(path("msg"), msg).unwrap();
    std::fs::write(path("sig"), encoded).unwrap();
    let (pem, m, sig) = (path("pub.pem"), path("msg"), path("sig"));
    let args: Vec<&str> = match key.algorithm {
        Algorithm::EcdsaP384 => vec!["dgst", "-sha384", "-verify", &pem, "-signature", &sig, &m],
        Algorithm::EcdsaP256 => vec!["dgst", "-sha256", "-verify", &pem, "-signature", &sig, &m],
        _ => vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin", "-in", &m, "-sigfile", &sig,
        ],
    };
    tool("openssl", &args).status.success()
}

#[test]
fn openssl_verifies_message_and_digest_signatures() {
    let token = TestToken::new();
    let store = token.store();
    let msg = b"release artifact v1.2.3";
    for alg in [
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
        Algorithm::Ed25519,
    ] {
        let key = store.generate(alg, alg.short_name()).unwrap();
        let sig = store.sign(&key.id, msg).unwrap();
        // DER for ECDSA (what `openssl dgst -verify` reads), raw for Ed25519 (`pkeyutl -rawin`):
        // these very bytes go to openssl, and a changed message must fail
        let encoded =
            keyhaven_crypto::encoding::encode_signature(&sig, SignatureFormat::Der).unwrap();
        if alg != Algorithm::Ed25519 {
            assert_eq!(encoded[0], 0x30, "a DER SEQUENCE");
        }
        assert!(openssl_verifies_bytes(&key, msg, &encoded), "{alg}");
        assert!(
            !openssl_verifies_bytes(&key, b"another message", &encoded),
            "{alg}"
        );
        assert!(keyhaven_testkit::openssl::verify(
            &key.public_key,
            msg,
            &sig
        ));
        if alg == Algorithm::EcdsaP384 {
            let sig = store.sign_digest(&key.id, &Sha384::digest(msg)).unwrap();
            assert!(keyhaven_testkit::openssl::verify(
                &key.public_key,
                msg,
                &sig
            ));
        }
    }
}

#[test]
fn export_is_refused_as_non_extractable() {
    let token = TestToken::new();
    let store = token.store();
    let key = store.generate(Algorithm::EcdsaP384, "keep inside").unwrap();
    match store.export_pkcs8(&key.id) {
        Err(e) if e.is(ErrorKind::Unsupported) => {
            let reason = e.to_string();
            assert!(reason.contains("non-extractable"), "{reason}");
            assert!(reason.contains(&token.label), "names the token: {reason}");
        }
        other => panic!("export: {other:?}"),
    }
    // the token agrees: the private object is sensitive and not extractable, and its value
    // cannot be read (the store is logged in, so this process sees the private object)
    let attrs = private_key_attributes(&token, &hex::decode(key.id.as_str()).unwrap());
    for expected in [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::NeverExtractable(true),
        Attribute::AlwaysSensitive(true),
        Attribute::Label(b"keep inside".to_vec()),
    ] {
        assert!(attrs.contains(&expected), "{expected:?} not in {attrs:?}");
    }
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "CKA_VALUE readable: {attrs:?}"
    );
}

#[test]
fn token_report_names_the_token_and_its_mechanisms() {
    let token = TestToken::new();
    let report = TokenReport::probe(module(), &TokenSelector::Label(token.label.clone())).unwrap();
    assert_eq!(report.label, token.label);
    assert_eq!(report.manufacturer, "SoftHSM project");
    assert_eq!(report.model, "SoftHSM v2");
    assert!(!report.serial.is_empty());
    assert!(report.free_slots >= 1, "SoftHSM keeps a free slot");
    assert!(report.total_slots > report.free_slots);
    assert!(report.user_pin_initialized && !report.user_pin_locked);
    assert!(report.missing().is_empty(), "{report}");
    let x25519 = report
        .mechanisms
        .iter()
        .find(|m| m.name == "CKM_EC_MONTGOMERY_KEY_PAIR_GEN")
        .unwrap();
    assert!(!x25519.present, "SoftHSM 2.6.1 has no X25519");
    let text = report.to_string();
    for needle in [
        "SoftHSM",
        "[x] CKM_ECDSA",
        "[x] CKM_EDDSA",
        "[x] CKM_ECDH1_DERIVE",
        "[ ] CKM_EC_MONTGOMERY",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    // the same through an open store (slot counts may differ: other tests add tokens)
    let from_store = token.store().report().unwrap();
    assert_eq!(
        (from_store.label, from_store.serial, from_store.mechanisms),
        (report.label, report.serial, report.mechanisms)
    );
}
