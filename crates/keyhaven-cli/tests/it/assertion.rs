//! Signed assertions: the metadata is a JWS by the signing key. An independent JOSE library
//! (Python's jwcrypto, from PyPI, set up by `cargo xtask test`) verifies it with the public key
//! alone; `keyhaven verify --assertion` checks it and refuses an edited field.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Home;

use keyhaven_testkit::devices::python;

/// Verifies `jws` with the public key in `pem` using jwcrypto; returns the payload, or the
/// library's refusal.
fn jwcrypto_verify(pem: &Path, jws: &str) -> Result<serde_json::Value, String> {
    let script = r#"
import json, sys
from jwcrypto import jwk, jws
key = jwk.JWK.from_pem(open(sys.argv[1], 'rb').read())
token = jws.JWS()
token.deserialize(sys.argv[2])
token.verify(key)
header = token.jose_header
print(json.dumps({"header": header, "payload": json.loads(token.payload)}))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(pem)
        .arg(jws)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn sign_with_assertion(h: &Home, key: &str, msg: &Path) -> (PathBuf, PathBuf) {
    let dir = h.scratch();
    let sig = dir.join(format!("{key}.sig"));
    let assertion = dir.join(format!("{key}.json"));
    h.ok(&[
        "sign",
        "--key",
        key,
        "--message-file",
        msg.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
        "--assertion",
        assertion.to_str().unwrap(),
    ]);
    (sig, assertion)
}

#[test]
fn a_jose_library_nobody_here_wrote_verifies_the_assertion_of_every_algorithm() {
    let h = Home::with_encrypted();
    let msg = h.scratch().join("artifact");
    fs::write(&msg, b"release 1.2.3\n").unwrap();
    for (alg, jose) in [("p384", "ES384"), ("p256", "ES256"), ("ed25519", "EdDSA")] {
        h.generate(alg, alg, &[]);
        let (_, assertion) = sign_with_assertion(&h, alg, &msg);
        let a: serde_json::Value = serde_json::from_slice(&fs::read(&assertion).unwrap()).unwrap();
        assert_eq!(a["version"], 2);
        let pem = h.scratch().join(format!("{alg}.pem"));
        fs::write(&pem, a["public_key_pem"].as_str().unwrap()).unwrap();
        let checked = jwcrypto_verify(&pem, a["jws"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{alg}: jwcrypto refused the JWS: {e}"));
        assert_eq!(checked["header"]["alg"], jose, "{alg}");
        assert_eq!(checked["header"]["typ"], "keyhaven-assertion+json");
        let payload = &checked["payload"];
        for field in [
            "key_id",
            "key_label",
            "backend",
            "backend_type",
            "protection",
            "fingerprint",
            "message_sha256",
            "signature",
            "created_at",
        ] {
            assert_eq!(payload[field], a[field], "{alg}: {field}");
        }
        assert_eq!(payload["protection"], "software-encrypted");
        // The library refuses the JWS with an edited payload, and under another key.
        let jws = a["jws"].as_str().unwrap();
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        let forged = serde_json::to_vec(&{
            let mut p = payload.clone();
            p["protection"] = "hardware".into();
            p
        })
        .unwrap();
        parts[1] = base64_url(&forged);
        assert!(jwcrypto_verify(&pem, &parts.join(".")).is_err(), "{alg}");
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(bytes)
}

#[test]
fn verify_checks_the_assertion_and_refuses_any_edited_field() {
    let h = Home::with_encrypted();
    h.generate("p384", "release", &[]);
    let msg = h.scratch().join("artifact");
    fs::write(&msg, b"release 1.2.3\n").unwrap();
    let (sig, assertion) = sign_with_assertion(&h, "release", &msg);
    let verify = |a: &Path, m: &Path| {
        h.run(&[
            "verify",
            "--assertion",
            a.to_str().unwrap(),
            "--message-file",
            m.to_str().unwrap(),
        ])
    };
    let out = verify(&assertion, &msg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("software-encrypted"));
    // Another message.
    let other = h.scratch().join("other");
    fs::write(&other, b"release 6.6.6\n").unwrap();
    assert_eq!(verify(&assertion, &other).status.code(), Some(1));
    // Any field edited after signing.
    let text = fs::read_to_string(&assertion).unwrap();
    for (from, to) in [
        ("\"software-encrypted\"", "\"hardware\""),
        ("\"encrypted\"", "\"pkcs11\""),
        ("\"release\"", "\"releasf\""),
    ] {
        assert!(text.contains(from), "{from}");
        let edited = h.scratch().join("edited.json");
        fs::write(&edited, text.replacen(from, to, 1)).unwrap();
        assert_eq!(
            verify(&edited, &msg).status.code(),
            Some(1),
            "{from} -> {to}"
        );
    }
    // With --signature too: an edited assertion never lends its time or metadata.
    let edited = h.scratch().join("edited.json");
    fs::write(
        &edited,
        text.replacen("\"software-encrypted\"", "\"hardware\"", 1),
    )
    .unwrap();
    let e = h.fails(
        &[
            "verify",
            "--key",
            "release",
            "--message-file",
            msg.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
            "--assertion",
            edited.to_str().unwrap(),
        ],
        9,
    );
    assert!(e.contains("changed after signing"), "{e}");
    // The verifying key, when given, must be the assertion's.
    h.generate("p384", "someone-else", &[]);
    let pem = h.scratch().join("else.pem");
    h.ok(&[
        "key",
        "public",
        "someone-else",
        "--out",
        pem.to_str().unwrap(),
    ]);
    let out = h.run(&[
        "verify",
        "--assertion",
        assertion.to_str().unwrap(),
        "--message-file",
        msg.to_str().unwrap(),
        "--public-key",
        pem.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_digest_assertion_never_vouches_for_another_message() {
    let h = Home::with_encrypted();
    h.generate("p256", "k", &[]);
    let msg = h.scratch().join("a");
    fs::write(&msg, b"document A\n").unwrap();
    let other = h.scratch().join("b");
    fs::write(&other, b"document B\n").unwrap();
    // The digest of A, signed as a digest.
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(b"document A\n"));
    let assertion = h.scratch().join("d.json");
    h.ok(&[
        "sign",
        "--key",
        "k",
        "--digest",
        &digest,
        "--out",
        h.scratch().join("d.sig").to_str().unwrap(),
        "--assertion",
        assertion.to_str().unwrap(),
    ]);
    let verify = |m: &Path| {
        h.run(&[
            "verify",
            "--assertion",
            assertion.to_str().unwrap(),
            "--message-file",
            m.to_str().unwrap(),
        ])
        .status
        .code()
    };
    assert_eq!(verify(&msg), Some(0));
    assert_eq!(verify(&other), Some(1));
}
