//! Integration tests of keyhaven-core's public types.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use keyhaven_core::ErrorKind;
use keyhaven_core::{Algorithm, KeyId, Signature, SignatureFormat};

#[test]
fn signature_lengths_are_checked() {
    assert!(Signature::from_raw(Algorithm::EcdsaP384, vec![0; 96]).is_ok());
    assert!(matches!(
        Signature::from_raw(Algorithm::EcdsaP384, vec![0; 64]),
        Err(e) if e.is(ErrorKind::InvalidInput)));
    assert!(Signature::from_raw(Algorithm::X25519, vec![0; 64]).is_err());
}

#[test]
fn formats_parse() {
    assert_eq!(
        "DER".parse::<SignatureFormat>().unwrap(),
        SignatureFormat::Der
    );
    assert_eq!(
        "raw".parse::<SignatureFormat>().unwrap(),
        SignatureFormat::Raw
    );
    assert!("pem".parse::<SignatureFormat>().is_err());
}

#[test]
fn key_ids_survive_serde() {
    let id = KeyId::generate().unwrap();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<KeyId>("\"../etc\"").is_err());
}
