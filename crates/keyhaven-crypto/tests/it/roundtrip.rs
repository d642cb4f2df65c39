use keyhaven_core::ErrorKind;
use keyhaven_core::{Algorithm, Error, SignatureFormat};
use keyhaven_crypto::{default_provider, encoding, hazmat, verify, verify_digest};
use proptest::prelude::*;
use sha2::Digest;

const SIGNERS: [Algorithm; 3] = [
    Algorithm::EcdsaP384,
    Algorithm::EcdsaP256,
    Algorithm::Ed25519,
];

#[test]
fn sign_verify_every_algorithm() {
    for alg in SIGNERS {
        let key = default_provider().generate(alg).unwrap();
        let sig = key.sign(b"message").unwrap();
        assert_eq!(sig.algorithm(), alg);
        verify(key.public_key(), b"message", &sig).unwrap();
        assert!(matches!(
            verify(key.public_key(), b"messagE", &sig),
            Err(Error::BadSignature)
        ));
    }
}

#[test]
fn digest_signatures_match_message_signatures() {
    let p384 = default_provider().generate(Algorithm::EcdsaP384).unwrap();
    let digest = sha2::Sha384::digest(b"abc");
    let sig = p384.sign_digest(&digest).unwrap();
    verify(p384.public_key(), b"abc", &sig).unwrap();
    verify_digest(p384.public_key(), &digest, &sig).unwrap();
    // RustCrypto's nonces are deterministic (RFC 6979), so both paths give the same bytes
    // (AWS-LC's are randomised: the same holds only as "both verify", above).
    let rc = keyhaven_crypto::rustcrypto_provider()
        .generate(Algorithm::EcdsaP384)
        .unwrap();
    assert_eq!(rc.sign_digest(&digest).unwrap(), rc.sign(b"abc").unwrap());

    let p256 = default_provider().generate(Algorithm::EcdsaP256).unwrap();
    let digest = sha2::Sha256::digest(b"abc");
    verify(
        p256.public_key(),
        b"abc",
        &p256.sign_digest(&digest).unwrap(),
    )
    .unwrap();
}

#[test]
fn wrong_digest_lengths_fail_clearly() {
    let p384 = default_provider().generate(Algorithm::EcdsaP384).unwrap();
    for len in [0, 32, 47, 49, 64] {
        let err = p384.sign_digest(&vec![1; len]).unwrap_err();
        assert!(
            matches!(&err, e if e.is(ErrorKind::InvalidInput)),
            "{len}: {err}"
        );
        assert!(err.to_string().contains("48-byte"), "{err}");
    }
    let ed = default_provider().generate(Algorithm::Ed25519).unwrap();
    assert!(matches!(
        ed.sign_digest(&[0; 64]),
        Err(e) if e.is(ErrorKind::Unsupported)));
}

#[test]
fn x25519_agrees_and_never_signs() {
    let a = default_provider().generate(Algorithm::X25519).unwrap();
    let b = default_provider().generate(Algorithm::X25519).unwrap();
    let ab = a.agree(b.public_key()).unwrap();
    let ba = b.agree(a.public_key()).unwrap();
    assert_eq!(ab, ba);
    assert_eq!(ab.len(), 32);
    assert!(matches!(a.sign(b"x"), Err(e) if e.is(ErrorKind::Unsupported)));
    let p = default_provider().generate(Algorithm::EcdsaP256).unwrap();
    assert!(matches!(
        a.agree(p.public_key()),
        Err(e) if e.is(ErrorKind::InvalidInput)));
    assert!(matches!(
        p.agree(a.public_key()),
        Err(e) if e.is(ErrorKind::Unsupported)));
}

#[test]
fn pkcs8_round_trips_keep_the_key() {
    for alg in Algorithm::ALL {
        let key = default_provider().generate(alg).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let back = default_provider()
            .load_pkcs8_as(alg, der.expose_secret())
            .unwrap();
        assert_eq!(back.public_key(), key.public_key(), "{alg}");
        let pem = hazmat::pkcs8_to_pem(&der).unwrap();
        assert_eq!(hazmat::private_key_pem_to_pkcs8(&pem, None).unwrap(), der);
        let enc = hazmat::pkcs8_encrypt_pem(&der, b"pw").unwrap();
        assert!(enc.contains("ENCRYPTED PRIVATE KEY"));
        assert_eq!(
            hazmat::private_key_pem_to_pkcs8(&enc, Some(b"pw")).unwrap(),
            der
        );
        assert!(matches!(
            hazmat::private_key_pem_to_pkcs8(&enc, Some(b"wrong")),
            Err(e) if e.is(ErrorKind::BadPassphrase)));
        assert!(matches!(
            hazmat::private_key_pem_to_pkcs8(&enc, None),
            Err(e) if e.is(ErrorKind::InvalidInput)));
    }
}

#[test]
fn public_keys_parse_back_with_their_algorithm() {
    for alg in Algorithm::ALL {
        let key = default_provider().generate(alg).unwrap();
        let pem = key.public_key().to_pem().unwrap();
        let parsed = default_provider().parse_public_key_pem(&pem).unwrap();
        // an ECDH key's SPKI is an ECDSA key's: read as one unless the reader says otherwise
        assert_eq!(parsed.spki_der(), key.public_key().spki_der());
        let parsed = default_provider()
            .parse_public_key_der_as(alg, parsed.spki_der())
            .unwrap();
        assert_eq!(&parsed, key.public_key());
        let jwk = encoding::public_key_jwk(key.public_key()).unwrap();
        assert_eq!(jwk["kid"], key.public_key().fingerprint().to_hex());
        assert_eq!(jwk["alg"], alg.jose_name());
    }
}

#[test]
fn malformed_keys_are_rejected() {
    assert!(default_provider().load_pkcs8(b"").is_err());
    assert!(
        default_provider()
            .load_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00])
            .is_err()
    );
    assert!(
        default_provider()
            .parse_public_key_der(&[0x30, 0x00])
            .is_err()
    );
    assert!(hazmat::private_key_pem_to_pkcs8("not pem", None).is_err());
    assert!(
        hazmat::private_key_pem_to_pkcs8(
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            None
        )
        .is_err()
    );
    let key = default_provider().generate(Algorithm::EcdsaP384).unwrap();
    let mut der = key.public_key().spki_der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1; // off the curve
    assert!(default_provider().parse_public_key_der(&der).is_err());
}

#[test]
fn signature_encodings_round_trip() {
    for alg in SIGNERS {
        let key = default_provider().generate(alg).unwrap();
        let sig = key.sign(b"m").unwrap();
        for fmt in [SignatureFormat::Der, SignatureFormat::Raw] {
            let bytes = encoding::encode_signature(&sig, fmt).unwrap();
            assert_eq!(encoding::decode_signature(alg, &bytes, fmt).unwrap(), sig);
        }
    }
    assert!(
        encoding::decode_signature(Algorithm::EcdsaP384, &[0x30, 0x00], SignatureFormat::Der)
            .is_err()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoding_arbitrary_signature_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        for alg in SIGNERS {
            for fmt in [SignatureFormat::Der, SignatureFormat::Raw] {
                let _ = encoding::decode_signature(alg, &bytes, fmt);
            }
        }
        let _ = default_provider().parse_public_key_der(&bytes);
        let _ = default_provider().load_pkcs8(&bytes);
    }

    #[test]
    fn any_message_signs_and_verifies(msg in proptest::collection::vec(any::<u8>(), 0..256), flip in any::<usize>()) {
        let key = default_provider().generate(Algorithm::Ed25519).unwrap();
        let sig = key.sign(&msg).unwrap();
        prop_assert!(verify(key.public_key(), &msg, &sig).is_ok());
        if !msg.is_empty() {
            let mut bad = msg.clone();
            let i = flip % bad.len();
            bad[i] ^= 0x01;
            prop_assert!(verify(key.public_key(), &bad, &sig).is_err());
        }
    }
}
