//! HMAC keys made on the token: they never leave it, `pkcs11-tool` (OpenSC) computes the same
//! HMAC with them, and they are not mistaken for signing keys.

use keyhaven_core::{Error, KeyStore};
use keyhaven_hsm_pkcs11::SECRET_KEY_LABEL;

use crate::token::{TestToken, pkcs11_tool};

#[test]
fn an_hmac_key_stays_on_the_token_and_pkcs11_tool_computes_the_same_mac() {
    let token = TestToken::new();
    let store = token.store();
    let id = store.create_hmac_key().unwrap();
    assert_eq!(id.len(), 32, "16 random bytes of CKA_ID");
    let message = b"keyhaven home integrity manifest v1";
    let mac = store.token_hmac(&id, message).unwrap();
    assert_eq!(
        *mac,
        *store.token_hmac(&id, message).unwrap(),
        "deterministic"
    );
    assert_ne!(*mac, *store.token_hmac(&id, b"another context").unwrap());

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

    // Another key gives another secret; a destroyed or unknown key is not found.
    let other = store.create_hmac_key().unwrap();
    assert_ne!(*mac, *store.token_hmac(&other, message).unwrap());
    store.destroy_hmac_key(&id).unwrap();
    assert!(matches!(
        store.token_hmac(&id, message),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.token_hmac("not hex", message),
        Err(Error::NotFound(_))
    ));
    store.destroy_hmac_key(&id).unwrap();
}

#[test]
fn another_session_without_the_pin_cannot_use_the_key() {
    let token = TestToken::new();
    let store = token.store();
    let id = store.create_hmac_key().unwrap();
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
