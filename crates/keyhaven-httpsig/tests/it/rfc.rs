//! RFC 9421 appendix B and RFC 9530's examples, reproduced from their published values.

use base64ct::{Base64, Encoding};
use keyhaven_core::{Algorithm, KeyStore, PublicKey};
use keyhaven_httpsig::{
    DigestAlgorithm, Message, Request, Response, SignatureSpec, VerifyPolicy, check_content_digest,
    content_digest, sign, signature_base, verify,
};
use keyhaven_store_memory::MemoryStore;

/// RFC 9421 B.1.4, `test-key-ed25519`, PKCS#8.
const ED25519_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";

/// RFC 9421 B.1.3, `test-key-ecc-p256`, the public key (SPKI, base64 of the DER).
const P256_SPKI_B64: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==";

/// RFC 9421 B.2, the test request.
fn test_request() -> Request {
    Request::new("POST", "https://example.com/foo?param=Value&Pet=dog")
        .unwrap()
        .header("Host", "example.com")
        .header("Date", "Tue, 20 Apr 2021 02:07:55 GMT")
        .header("Content-Type", "application/json")
        .header(
            "Content-Digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        )
        .header("Content-Length", "18")
}

#[test]
fn b_2_6_ed25519_is_reproduced_byte_for_byte() {
    let store = MemoryStore::new().unwrap();
    let der = keyhaven_crypto::hazmat::private_key_pem_to_pkcs8(ED25519_PKCS8_PEM, None).unwrap();
    let key = store.import_pkcs8("test-key-ed25519", &der).unwrap();
    let spec = SignatureSpec::new("sig-b26", "test-key-ed25519")
        .covering(&[
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ])
        .unwrap()
        .created(1_618_884_473)
        .with_alg(false);
    let request = test_request();
    let headers = sign(Message::Request(&request), &spec, &store, &key.id).unwrap();
    assert_eq!(
        headers.signature_input,
        r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#
    );
    assert_eq!(
        headers.signature,
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
    );
    // and the base is the RFC's, line for line
    let covered: Vec<_> = [
        "date",
        "@method",
        "@path",
        "@authority",
        "content-type",
        "content-length",
    ]
    .iter()
    .map(|n| keyhaven_httpsig::Component::new(n).unwrap())
    .collect();
    let base = signature_base(
        Message::Request(&request),
        &covered,
        r#"("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
    )
    .unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    // it verifies, with the policy's clock at the RFC's time
    let signed = test_request()
        .header("Signature-Input", &headers.signature_input)
        .header("Signature", &headers.signature);
    let v = verify(
        Message::Request(&signed),
        None,
        &VerifyPolicy::at(1_618_884_480),
        &mut |id| Ok((id == "test-key-ed25519").then(|| key.public_key.clone())),
    )
    .unwrap();
    assert_eq!(v.label, "sig-b26");
}

#[test]
fn b_2_4_ecdsa_p256_response_verifies() {
    let public = PublicKey::new(
        Algorithm::EcdsaP256,
        Base64::decode_vec(P256_SPKI_B64).unwrap(),
    );
    let body = br#"{"message": "good dog"}"#;
    let response = Response::new(200, None)
        .header("Date", "Tue, 20 Apr 2021 02:07:56 GMT")
        .header("Content-Type", "application/json")
        .header(
            "Content-Digest",
            "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:",
        )
        .header("Content-Length", "23")
        .header(
            "Signature-Input",
            r#"sig-b24=("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
        )
        .header(
            "Signature",
            "sig-b24=:wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==:",
        );
    let mut key_of = |id: &str| Ok((id == "test-key-ecc-p256").then(|| public.clone()));
    let policy = VerifyPolicy::at(1_618_884_480);
    let v = verify(
        Message::Response(&response),
        Some("sig-b24"),
        &policy,
        &mut key_of,
    )
    .unwrap();
    assert_eq!(
        v.covered,
        [
            "\"@status\"",
            "\"content-type\"",
            "\"content-digest\"",
            "\"content-length\""
        ]
    );
    check_content_digest(&response_field(&response, "content-digest"), body).unwrap();
    // one byte of the status changed: refused
    let mut other = Response::new(201, None);
    for (n, val) in response.fields() {
        other.push_header(n, val);
    }
    let e = verify(Message::Response(&other), None, &policy, &mut key_of).unwrap_err();
    assert_eq!(e.reason(), "bad-signature", "{e}");
}

fn response_field(r: &Response, name: &str) -> String {
    Message::Response(r).field(name).unwrap()
}

#[test]
fn rfc_9530_digests_are_as_printed() {
    let body = br#"{"hello": "world"}"#;
    assert_eq!(
        content_digest(body, DigestAlgorithm::Sha256),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(
        content_digest(body, DigestAlgorithm::Sha512),
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
    );
    // both at once (RFC 9530 allows several), and an unknown algorithm beside them
    check_content_digest(
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, md5=:AAAA:, sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        body,
    )
    .unwrap();
    // one wrong digest is enough to refuse, and unknown algorithms alone vouch for nothing
    let e = check_content_digest(
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        b"{}",
    )
    .unwrap_err();
    assert_eq!(e.reason(), "digest");
    assert!(check_content_digest("md5=:AAAA:", body).is_err());
}
