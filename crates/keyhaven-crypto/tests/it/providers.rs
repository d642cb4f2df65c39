//! The providers against each other (with the `aws-lc-rs` feature; RustCrypto against itself
//! otherwise): what one signs the other verifies, a key one writes the other reads as the same
//! key, agreements agree, and each refuses the same bad input.

use keyhaven_core::Algorithm;
use sha2::Digest;

use crate::providers;

#[test]
fn what_one_provider_makes_the_other_verifies_and_reads() {
    let all = providers();
    for a in &all {
        for b in &all {
            for alg in Algorithm::ALL {
                let key = a.generate(alg).unwrap();
                let der = key.to_pkcs8_der().unwrap();
                let back = b.load_pkcs8_as(alg, der.expose_secret()).unwrap();
                assert_eq!(
                    back.public_key(),
                    key.public_key(),
                    "{} -> {}: {alg}",
                    a.name,
                    b.name
                );
                assert_eq!(
                    b.parse_public_key_der_as(alg, key.public_key().spki_der())
                        .unwrap(),
                    *key.public_key()
                );
                if alg.can_sign() {
                    let msg = format!("{} to {}", a.name, b.name);
                    let sig = key.sign(msg.as_bytes()).unwrap();
                    b.verify(key.public_key(), msg.as_bytes(), &sig).unwrap();
                    assert!(b.verify(key.public_key(), b"another", &sig).is_err());
                    // and the key the other provider loaded signs for the first
                    let sig = back.sign(msg.as_bytes()).unwrap();
                    a.verify(key.public_key(), msg.as_bytes(), &sig).unwrap();
                } else {
                    let peer = b.generate(alg).unwrap();
                    let one = key.agree(peer.public_key()).unwrap();
                    let two = peer.agree(key.public_key()).unwrap();
                    assert_eq!(one.expose_secret(), two.expose_secret());
                }
            }
            for (alg, digest) in [
                (
                    Algorithm::EcdsaP384,
                    sha2::Sha384::digest(b"artifact").to_vec(),
                ),
                (
                    Algorithm::EcdsaP256,
                    sha2::Sha256::digest(b"artifact").to_vec(),
                ),
            ] {
                let key = a.generate(alg).unwrap();
                let sig = key.sign_digest(&digest).unwrap();
                b.verify_digest(key.public_key(), &digest, &sig).unwrap();
                // a prehashed signature is the message's signature
                b.verify(key.public_key(), b"artifact", &sig).unwrap();
                assert!(key.sign_digest(&digest[1..]).is_err());
                assert!(
                    b.verify_digest(key.public_key(), &digest[1..], &sig)
                        .is_err()
                );
            }
        }
    }
}

#[test]
fn every_provider_refuses_the_same_bad_input() {
    for p in providers() {
        assert!(p.load_pkcs8(b"").is_err(), "{}", p.name);
        assert!(p.parse_public_key_der(b"\x30\x00").is_err(), "{}", p.name);
        let ed = p.generate(Algorithm::Ed25519).unwrap();
        assert!(ed.sign_digest(&[0u8; 32]).is_err());
        assert!(ed.agree(ed.public_key()).is_err());
        let x = p.generate(Algorithm::X25519).unwrap();
        assert!(x.sign(b"m").is_err());
        // A P-256 key is not a P-384 key, whoever reads it.
        let p256 = p.generate(Algorithm::EcdsaP256).unwrap();
        let p384 = p.generate(Algorithm::EcdsaP384).unwrap();
        let sig = p384.sign(b"m").unwrap();
        assert!(p.verify(p256.public_key(), b"m", &sig).is_err());
        // The X25519 low-order point (u = 0) gives no agreement.
        let mut zero = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
        ];
        zero.extend_from_slice(&[0u8; 32]);
        let low = p.parse_public_key_der(&zero).unwrap();
        assert!(x.agree(&low).is_err(), "{}", p.name);
        // An Ed25519 key of small order (the identity) is refused.
        let mut identity = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 0x01,
        ];
        identity.extend_from_slice(&[0u8; 31]);
        assert!(p.parse_public_key_der(&identity).is_err(), "{}", p.name);
        let forged = keyhaven_core::Signature::from_raw(Algorithm::Ed25519, {
            let mut s = vec![0u8; 64];
            s[0] = 1;
            s
        })
        .unwrap();
        let weak = keyhaven_core::PublicKey::new(Algorithm::Ed25519, identity.clone());
        assert!(
            p.verify(&weak, b"any message", &forged).is_err(),
            "{}",
            p.name
        );
    }
}
