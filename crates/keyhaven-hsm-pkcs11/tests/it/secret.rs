//! HMAC keys made on the token: they never leave it, `pkcs11-tool` (OpenSC) computes the same
//! HMAC with them, and they are not mistaken for signing keys.

use keyhaven_core::ErrorKind;
use keyhaven_core::KeyStore;
use keyhaven_hsm_pkcs11::SECRET_KEY_LABEL;

use crate::token::{TestToken, pkcs11_tool};

#[test]
fn an_hmac_key_stays_on_the_token_and_pkcs11_tool_computes_the_same_mac() {
    let token = TestToken::new();
    let store = token.store();
    let id = store.create_hmac_key("home-a").unwrap();
    assert_eq!(id.len(), 32, "16 random bytes of CKA_ID");
    let message = b"keyhaven home integrity manifest v1";
    let mac = store.token_hmac(&id, "home-a", message).unwrap();
    assert_eq!(
        *mac,
        *store.token_hmac(&id, "home-a", message).unwrap(),
        "deterministic"
    );
    assert_ne!(
        *mac,
        *store.token_hmac(&id, "home-a", b"another context").unwrap()
    );

    // OpenSC's tool finds the key by its id and computes the same HMAC-SHA256 on the token.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    std::fs::write(&input, message).unwrap();
    pkcs11_tool(
        &token,
        &[
            "--sign",
            "--mechanism",
            "SHA256-HMAC",
            "--id",
            &id,
            "--input-file",
            input.to_str().unwrap(),
            "--output-file",
            output.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&output).unwrap(), mac.to_vec());

    // It is listed as a sensitive secret key that was never extractable, and is no signing key.
    let listed = pkcs11_tool(&token, &["--list-objects", "--type", "secrkey"]);
    assert!(listed.contains(SECRET_KEY_LABEL), "{listed}");
    assert!(listed.contains("never extractable"), "{listed}");
    assert!(store.list().unwrap().is_empty());
    assert!(store.has_hmac_key("home-a").unwrap());
    assert!(!store.has_hmac_key("home-b").unwrap());
    // Another tag does not find it.
    assert!(matches!(
        store.token_hmac(&id, "home-b", message),
        Err(e) if e.is(ErrorKind::NotFound)));

    // Another key gives another secret; a destroyed or unknown key is not found.
    let other = store.create_hmac_key("home-a").unwrap();
    assert_ne!(*mac, *store.token_hmac(&other, "home-a", message).unwrap());
    store.destroy_hmac_key(&id).unwrap();
    assert!(matches!(
        store.token_hmac(&id, "home-a", message),
        Err(e) if e.is(ErrorKind::NotFound)));
    assert!(matches!(
        store.token_hmac("not hex", "home-a", message),
        Err(e) if e.is(ErrorKind::NotFound)));
    store.destroy_hmac_key(&id).unwrap();
}

#[test]
fn another_session_without_the_pin_cannot_use_the_key() {
    let token = TestToken::new();
    let store = token.store();
    let id = store.create_hmac_key("home-a").unwrap();
    // pkcs11-tool without a login does not even see it (a private object).
    let out = crate::token::tool(
        "pkcs11-tool",
        &[
            "--module",
            crate::token::module().to_str().unwrap(),
            "--token-label",
            &token.label,
            "--list-objects",
            "--type",
            "secrkey",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&id), "{text}");
    assert!(!text.contains(SECRET_KEY_LABEL), "{text}");
}

#[test]
fn a_secret_key_someone_imported_with_a_known_value_is_not_taken_for_ours() {
    let token = TestToken::new();
    let store = token.store();
    let id = "00112233445566778899aabbccddeeff";
    // Imported (not generated on the token), with keyhaven's label and an id of the attacker's
    // choosing: its value is known, so it must never anchor anything.
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    crate::token::create_object(
        &token,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Value(vec![0x42; 32]),
            Attribute::Id(hex::decode(id).unwrap()),
            Attribute::Label(b"keyhaven-hmac home-a".to_vec()),
        ],
    );
    let e = store.token_hmac(id, "home-a", b"m").unwrap_err();
    assert!(matches!(&e, e if e.is(ErrorKind::Corrupt)), "{e}");
    assert!(e.to_string().contains("not one keyhaven made"), "{e}");
}

#[test]
fn a_token_key_is_a_rustcrypto_signer_whose_signatures_rustcrypto_verifies() {
    use keyhaven_core::Algorithm;
    use keyhaven_crypto::{KeySigner, StoreKey};
    use signature::{Signer, Verifier};
    let token = TestToken::new();
    let store = std::sync::Arc::new(token.store());
    store.generate(Algorithm::EcdsaP384, "release").unwrap();
    store.generate(Algorithm::Ed25519, "identity").unwrap();

    // Code written against the `signature` traits, signing on the token.
    fn sign<S: Signer<T>, T>(s: &S) -> T {
        s.sign(b"signed on the token")
    }
    let p384_key = KeySigner(StoreKey::resolve(store.clone(), "release").unwrap());
    let sig: p384::ecdsa::Signature = sign(&p384_key);
    use p384::pkcs8::DecodePublicKey;
    let vk =
        p384::ecdsa::VerifyingKey::from_public_key_der(p384_key.0.info().public_key.spki_der())
            .unwrap();
    vk.verify(b"signed on the token", &sig).unwrap();
    p384_key.verify(b"signed on the token", &sig).unwrap();
    assert!(p384_key.verify(b"another message", &sig).is_err());

    let ed_key = KeySigner(StoreKey::resolve(store.clone(), "identity").unwrap());
    let sig: ed25519_dalek::Signature = sign(&ed_key);
    let raw: [u8; 32] = ed_key.0.info().public_key.spki_der()[12..]
        .try_into()
        .unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap();
    vk.verify_strict(b"signed on the token", &sig).unwrap();

    // Asking a P-384 key for an Ed25519 signature is an error, not a panic or a wrong answer.
    let wrong: Result<ed25519_dalek::Signature, _> = p384_key.try_sign(b"m");
    assert!(wrong.is_err());
}
