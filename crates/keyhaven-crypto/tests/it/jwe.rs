//! JWE (ECDH-ES+A256KW, A256GCM): round trips on every agreement curve, every changed part
//! refused, and both directions against jwcrypto (Python, PyPI), a JOSE library nobody here
//! wrote.

use std::io::Write;
use std::process::{Command, Stdio};

use base64ct::{Base64UrlUnpadded, Encoding};
use keyhaven_core::{Algorithm, ErrorKind};
use keyhaven_crypto::{default_provider, jwe};
use serde_json::{Map, Value, json};

const CURVES: [Algorithm; 3] = [Algorithm::X25519, Algorithm::EcdhP256, Algorithm::EcdhP384];

#[test]
fn jwe_round_trips_on_every_agreement_curve_and_refuses_every_changed_part() {
    for alg in CURVES {
        let me = default_provider().generate(alg).unwrap();
        let to = jwe::public_key_from_jwk(&jwe::public_jwk(me.public_key()).unwrap()).unwrap();
        assert_eq!(&to, me.public_key(), "{alg}: the JWK round trips");
        let mut extra = Map::new();
        extra.insert("kid".into(), "release-1".into());
        extra.insert("alg".into(), "dir".into()); // overridden
        let token = jwe::encrypt(&to, b"the released secret", &extra).unwrap();
        let (header, plain) = jwe::decrypt(&token, me.as_ref()).unwrap();
        assert_eq!(plain.expose_secret(), b"the released secret");
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["kid"], "release-1");
        assert!(header["epk"].get("d").is_none(), "{header}");

        let parts: Vec<&str> = token.split('.').collect();
        for i in 0..5 {
            let mut bytes = Base64UrlUnpadded::decode_vec(parts[i]).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            let mut changed = parts.clone();
            let part = Base64UrlUnpadded::encode_string(&bytes);
            changed[i] = &part;
            assert!(
                jwe::decrypt(&changed.join("."), me.as_ref()).is_err(),
                "{alg}: part {i} changed"
            );
        }
        let other = default_provider().generate(alg).unwrap();
        let e = jwe::decrypt(&token, other.as_ref()).unwrap_err();
        assert!(
            matches!(e, keyhaven_core::Error::Crypto),
            "{alg}: another recipient: {e}"
        );
    }
}

#[test]
fn bad_jwks_and_jwes_are_refused_saying_why() {
    let p256 = default_provider().generate(Algorithm::EcdhP256).unwrap();
    let mut jwk = jwe::public_jwk(p256.public_key()).unwrap();
    jwk["d"] = "AAAA".into();
    let e = jwe::public_key_from_jwk(&jwk).unwrap_err().to_string();
    assert!(e.contains("private"), "{e}");
    // A point off the curve.
    let off = json!({ "kty": "EC", "crv": "P-256",
        "x": Base64UrlUnpadded::encode_string(&[1u8; 32]),
        "y": Base64UrlUnpadded::encode_string(&[2u8; 32]) });
    let e = jwe::public_key_from_jwk(&off).unwrap_err().to_string();
    assert!(e.contains("not on P-256"), "{e}");
    let e = jwe::public_key_from_jwk(&json!({ "kty": "RSA" }))
        .unwrap_err()
        .to_string();
    assert!(e.contains("RSA"), "{e}");
    let signing = default_provider().generate(Algorithm::Ed25519).unwrap();
    assert!(jwe::encrypt(signing.public_key(), b"x", &Map::new()).is_err());
    // A token to a P-384 key read with a P-256 one, and a malformed one.
    let p384 = default_provider().generate(Algorithm::EcdhP384).unwrap();
    let token = jwe::encrypt(p384.public_key(), b"x", &Map::new()).unwrap();
    let e = jwe::decrypt(&token, p256.as_ref()).unwrap_err().to_string();
    assert!(e.contains("ephemeral key"), "{e}");
    for bad in ["", "a.b.c", "....", &"x".repeat(jwe::MAX_JWE + 1)] {
        assert_eq!(
            jwe::decrypt(bad, p256.as_ref()).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}

fn python(script: &str, input: &Value) -> Value {
    let python = std::env::var_os("KEYHAVEN_PYTHON").unwrap_or_else(|| {
        panic!("KEYHAVEN_PYTHON is not set: run the suite with `cargo xtask test`, which makes the interop virtualenv")
    });
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const PY_JWE: &str = r#"
import json, sys
from jwcrypto import jwk, jwe
job = json.load(sys.stdin)
out = {"decrypted": [], "made": []}
# What keyhaven encrypted, jwcrypto decrypts with the recipient's private key.
for item in job["ours"]:
    key = jwk.JWK.from_pem(item["private_pem"].encode())
    token = jwe.JWE()
    token.deserialize(item["jwe"], key=key)
    out["decrypted"].append(token.payload.decode())
# And jwcrypto encrypts to keyhaven's public keys.
for pub in job["theirs"]:
    token = jwe.JWE(b"from jwcrypto", protected={"alg": "ECDH-ES+A256KW", "enc": "A256GCM"})
    token.add_recipient(jwk.JWK(**pub))
    out["made"].append(token.serialize(compact=True))
print(json.dumps(out))
"#;

#[test]
fn jwcrypto_decrypts_what_keyhaven_encrypts_and_the_other_way() {
    let mut ours = Vec::new();
    let mut keys = Vec::new();
    let mut theirs = Vec::new();
    for alg in CURVES {
        let me = default_provider().generate(alg).unwrap();
        let der = me.to_pkcs8_der().unwrap();
        let pem = pem_rfc7468::encode_string(
            "PRIVATE KEY",
            pem_rfc7468::LineEnding::LF,
            der.expose_secret(),
        )
        .unwrap();
        let token =
            jwe::encrypt(me.public_key(), format!("to {alg}").as_bytes(), &Map::new()).unwrap();
        ours.push(json!({ "private_pem": pem, "jwe": token }));
        theirs.push(jwe::public_jwk(me.public_key()).unwrap());
        keys.push(me);
    }
    let out = python(PY_JWE, &json!({ "ours": ours, "theirs": theirs }));
    assert_eq!(
        out["decrypted"],
        json!(["to x25519", "to ecdh-p256", "to ecdh-p384"])
    );
    for (token, key) in out["made"].as_array().unwrap().iter().zip(&keys) {
        let (_, plain) = jwe::decrypt(token.as_str().unwrap(), key.as_ref()).unwrap();
        assert_eq!(plain.expose_secret(), b"from jwcrypto");
    }
}

/// Writes fuzz seeds (`KEYHAVEN_WRITE_SEEDS=DIR`): a JWE on each curve and their JWKs.
#[test]
fn write_fuzz_seeds_when_asked() {
    let Some(dir) = std::env::var_os("KEYHAVEN_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    for alg in CURVES {
        let me = default_provider().generate(alg).unwrap();
        let token = jwe::encrypt(me.public_key(), b"seed", &Map::new()).unwrap();
        std::fs::write(dir.join(format!("jwe_{alg}")), token).unwrap();
        let jwk = jwe::public_jwk(me.public_key()).unwrap();
        std::fs::write(dir.join(format!("jwk_{alg}")), jwk.to_string()).unwrap();
    }
}
