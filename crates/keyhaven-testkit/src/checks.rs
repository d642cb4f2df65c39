//! The conformance checks. Each takes a fixture factory and the backend's capabilities and
//! panics, naming the broken rule, when the backend breaks the `KeyStore` contract.

use std::collections::BTreeSet;
use std::sync::Arc;

use keyhaven_core::{Algorithm, Error, ErrorKind, KeyId, KeyInfo, KeySpec, KeyStore};
use keyhaven_crypto::default_provider;
use sha2::{Digest, Sha256, Sha384};

use crate::{Capabilities, Fixture};

/// A factory of fresh, empty stores.
pub type Factory = dyn Fn() -> Fixture;

fn signers(caps: &Capabilities) -> impl Iterator<Item = Algorithm> + '_ {
    caps.algorithms.iter().copied().filter(|a| a.can_sign())
}

fn label(prefix: &str) -> String {
    format!("{prefix}-{}", KeyId::generate().unwrap()) // ok: test assertion
}

/// The digest a prehashed ECDSA signature of `message` takes.
fn digest_of(alg: Algorithm, message: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::EcdsaP384 => Sha384::digest(message).to_vec(),
        Algorithm::EcdsaP256 => Sha256::digest(message).to_vec(),
        _ => panic!("{alg} has no prehashed form"),
    }
}

fn expect_not_found<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(e) if e.is(ErrorKind::NotFound) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

/// Every supported algorithm generates, with consistent info and an SPKI fingerprint.
pub fn generates_every_supported_algorithm(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for &alg in &caps.algorithms {
        let l = label(alg.short_name());
        let info = fx.store.generate(alg, &l).unwrap(); // ok: test assertion
        assert_eq!(info.algorithm, alg);
        assert_eq!(info.label, l);
        assert_eq!(
            info.protection, caps.protection,
            "protection level of {alg}"
        );
        // the public key parses independently, on the right curve for its algorithm
        let parsed = default_provider()
            .parse_public_key_der_as(alg, info.public_key.spki_der())
            .unwrap(); // ok: test assertion
        assert_eq!(parsed, info.public_key);
        // fingerprint: SHA-256 over the SPKI DER, lowercase hex
        assert_eq!(
            info.fingerprint().to_hex(),
            hex::encode(Sha256::digest(info.public_key.spki_der()))
        );
        let pem = info.public_key.to_pem().unwrap(); // ok: test assertion
        assert_eq!(
            default_provider()
                .parse_public_key_pem(&pem)
                .unwrap() // ok: test assertion
                .spki_der(),
            info.public_key.spki_der()
        );
        assert_eq!(fx.store.get(&info.id).unwrap(), info); // ok: test assertion
        assert_eq!(fx.store.public_key(&info.id).unwrap(), info.public_key); // ok: test assertion
        assert!(
            info.created_at > 1_600_000_000,
            "created_at is a plausible Unix time"
        );
    }
}

/// Algorithms the backend lacks are `Unsupported`, and nothing is created.
pub fn refuses_unsupported_algorithms(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for alg in Algorithm::ALL {
        if caps.algorithms.contains(&alg) {
            continue;
        }
        match fx.store.generate(alg, &label("unsupported")) {
            Err(e) if e.is(ErrorKind::Unsupported) => {}
            other => panic!("generating {alg}: expected Unsupported, got {other:?}"),
        }
    }
    assert!(
        fx.store.list().unwrap().is_empty(), // ok: test assertion
        "a refused generate left a key"
    );
}

/// Message signatures verify with the public key alone, and fail on any change.
pub fn signs_and_verifies_by_public_key_alone(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for alg in signers(caps) {
        let info = fx.store.generate(alg, &label("sign")).unwrap(); // ok: test assertion
        for msg in [&b""[..], b"hello", &[0xa5; 10_000]] {
            let sig = fx.store.sign(&info.id, msg).unwrap(); // ok: test assertion
            assert_eq!(sig.algorithm(), alg);
            assert_eq!(Some(sig.as_raw().len()), alg.raw_signature_len());
            // a verifier that has only the PEM
            let pk = default_provider()
                .parse_public_key_pem(&info.public_key.to_pem().unwrap()) // ok: test assertion
                .unwrap(); // ok: test assertion
            keyhaven_crypto::verify(&pk, msg, &sig).unwrap(); // ok: test assertion
            let mut other = msg.to_vec();
            other.push(0);
            assert!(matches!(
                keyhaven_crypto::verify(&pk, &other, &sig),
                Err(Error::BadSignature)
            ));
        }
    }
}

/// `openssl` (code nobody here wrote) verifies the backend's signatures.
pub fn openssl_verifies_signatures(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for alg in signers(caps) {
        let info = fx.store.generate(alg, &label("openssl")).unwrap(); // ok: test assertion
        let msg = b"verified by openssl";
        let sig = fx.store.sign(&info.id, msg).unwrap(); // ok: test assertion
        assert!(
            crate::openssl::verify(&info.public_key, msg, &sig),
            "openssl rejected a {alg} signature"
        );
        assert!(
            !crate::openssl::verify(&info.public_key, b"something else", &sig),
            "openssl accepted a {alg} signature over other data"
        );
        if alg.digest_len().is_some() {
            let sig = fx
                .store
                .sign_digest(&info.id, &digest_of(alg, msg))
                .unwrap(); // ok: test assertion
            assert!(crate::openssl::verify(&info.public_key, msg, &sig));
        }
    }
}

/// ECDSA prehashed digests sign, and verify as signatures over the message.
pub fn signs_prehashed_digests(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for alg in signers(caps).filter(|a| a.digest_len().is_some()) {
        let info = fx.store.generate(alg, &label("digest")).unwrap(); // ok: test assertion
        let digest = digest_of(alg, b"artifact");
        let sig = fx.store.sign_digest(&info.id, &digest).unwrap(); // ok: test assertion
        keyhaven_crypto::verify(&info.public_key, b"artifact", &sig).unwrap(); // ok: test assertion
        keyhaven_crypto::verify_digest(&info.public_key, &digest, &sig).unwrap(); // ok: test assertion
    }
}

/// A digest of the wrong length is a clear `InvalidInput`; Ed25519 digests are `Unsupported`.
pub fn rejects_wrong_digest_lengths(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for alg in signers(caps) {
        let info = fx.store.generate(alg, &label("badlen")).unwrap(); // ok: test assertion
        match alg.digest_len() {
            Some(n) => {
                for len in [0, 20, n - 1, n + 1, 64] {
                    match fx.store.sign_digest(&info.id, &vec![7; len]) {
                        Err(Error::InvalidInput(msg)) => {
                            assert!(
                                msg.contains(&n.to_string()),
                                "message names the length: {msg}"
                            )
                        }
                        other => panic!("{alg} digest of {len} bytes: got {other:?}"),
                    }
                }
            }
            None => match fx.store.sign_digest(&info.id, &[7; 64]) {
                Err(e) if e.is(ErrorKind::Unsupported) => {}
                other => panic!("{alg} digest: expected Unsupported, got {other:?}"),
            },
        }
    }
}

/// Agreement keys (X25519, ECDH P-384, ECDH P-256) agree (both sides get the same secret, and
/// a party outside the store gets it too) and refuse to sign; signing keys refuse to agree; a
/// peer on another curve, or a point off the curve, is `InvalidInput`.
pub fn agreement_keys_agree_and_never_sign(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for alg in caps.algorithms.iter().copied().filter(|a| a.can_agree()) {
        let a = fx.store.generate(alg, &label("agree-a")).unwrap(); // ok: test assertion
        let b = fx.store.generate(alg, &label("agree-b")).unwrap(); // ok: test assertion
        let ab = fx.store.agree(&a.id, &b.public_key).unwrap(); // ok: test assertion
        let ba = fx.store.agree(&b.id, &a.public_key).unwrap(); // ok: test assertion
        assert_eq!(ab, ba, "{alg}: both sides derive the same secret");
        assert_eq!(Some(ab.len()), alg.shared_secret_len(), "{alg}");
        // an outside party agrees with the store's key
        let outside = default_provider().generate(alg).unwrap(); // ok: test assertion
        assert_eq!(
            fx.store.agree(&a.id, outside.public_key()).unwrap(), // ok: test assertion
            outside.agree(&a.public_key).unwrap(),                // ok: test assertion
            "{alg}: the store and an outside party agree"
        );
        assert!(matches!(
            fx.store.sign(&a.id, b"x"),
            Err(e) if e.is(ErrorKind::Unsupported)));
        assert!(matches!(
            fx.store.sign_digest(&a.id, &[0; 48]),
            Err(e) if e.is(ErrorKind::Unsupported)));
        // a point off the curve (the last coordinate byte changed) is refused, not used
        if alg.nist_curve().is_some() {
            let mut der = outside.public_key().spki_der().to_vec();
            if let Some(last) = der.last_mut() {
                *last ^= 1;
            }
            let off = keyhaven_core::PublicKey::new(alg, der);
            assert!(
                matches!(fx.store.agree(&a.id, &off), Err(e) if e.is(ErrorKind::InvalidInput)),
                "{alg}: a point off the curve was used"
            );
        }
        // signing keys do not agree; a peer on another curve is refused
        for s in signers(caps) {
            let s = fx.store.generate(s, &label("signer")).unwrap(); // ok: test assertion
            assert!(matches!(
                fx.store.agree(&s.id, &a.public_key),
                Err(e) if e.is(ErrorKind::Unsupported)));
            if s.algorithm.nist_curve() != alg.nist_curve() {
                assert!(matches!(
                    fx.store.agree(&a.id, &s.public_key),
                    Err(e) if e.is(ErrorKind::InvalidInput)));
            }
        }
    }
}

/// Every operation on an unknown id is `NotFound`.
pub fn unknown_ids_are_not_found(factory: &Factory, _caps: &Capabilities) {
    let fx = factory();
    let id = KeyId::generate().unwrap(); // ok: test assertion
    expect_not_found("get", fx.store.get(&id));
    expect_not_found("public_key", fx.store.public_key(&id));
    expect_not_found("sign", fx.store.sign(&id, b"x"));
    expect_not_found("sign_digest", fx.store.sign_digest(&id, &[0; 48]));
    let peer = default_provider().generate(Algorithm::X25519).unwrap(); // ok: test assertion
    expect_not_found("agree", fx.store.agree(&id, peer.public_key()));
    expect_not_found("delete", fx.store.delete(&id));
    expect_not_found("find_by_label", fx.store.find_by_label("no such label"));
    expect_not_found("resolve", fx.store.resolve("no-such-key"));
    expect_not_found("details", fx.store.details(&id));
}

/// A spec without options generates as `generate` does; an option the backend does not take is
/// `Unsupported` naming it (never ignored) and leaves no key; `details` of a key is readable;
/// `unlock` is refused (`Unsupported`) or accepted, never a panic, and signing still works.
pub fn key_specs_and_details(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    let Some(alg) = signers(caps).next() else {
        return;
    };
    let plain = fx
        .store
        .generate_with(&KeySpec::new(alg, label("spec")))
        .unwrap(); // ok: test assertion
    assert_eq!(
        plain.public_key.algorithm(),
        alg,
        "generate_with without options makes the key asked for"
    );
    let details = fx.store.details(&plain.id).unwrap(); // ok: test assertion
    assert!(
        !details.needs_auth,
        "a key made without a passphrase needs none"
    );
    let before = fx.store.list().unwrap(); // ok: test assertion
    let odd = KeySpec::new(alg, label("odd")).option("no-such-option", "1");
    match fx.store.generate_with(&odd) {
        Err(e) if e.is(ErrorKind::Unsupported) => {
            assert!(
                e.to_string().contains("no-such-option"),
                "names the option: {e}"
            );
        }
        other => panic!("an unknown key option must be refused, got {other:?}"),
    }
    let after = fx.store.list().unwrap(); // ok: test assertion
    assert_eq!(after, before, "a refused spec leaves no key");
    match fx
        .store
        .unlock(&plain.id, &keyhaven_core::SecretString::from("pw"))
    {
        Ok(()) => {}
        Err(e) if e.is(ErrorKind::Unsupported) => {}
        other => panic!("unlock must be Ok or Unsupported, got {other:?}"),
    }
    let sig = fx.store.sign(&plain.id, b"after unlock").unwrap(); // ok: test assertion
    keyhaven_crypto::verify(&plain.public_key, b"after unlock", &sig).unwrap(); // ok: test assertion
}

/// A label already in use is `AlreadyExists` and the store is unchanged.
pub fn duplicate_labels_are_refused(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    let alg = caps.algorithms[0];
    let l = label("dup");
    let first = fx.store.generate(alg, &l).unwrap(); // ok: test assertion
    for other in &caps.algorithms {
        match fx.store.generate(*other, &l) {
            Err(e) if e.is(ErrorKind::AlreadyExists) => {}
            r => panic!("duplicate label with {other}: expected AlreadyExists, got {r:?}"),
        }
    }
    assert_eq!(fx.store.list().unwrap(), vec![first]); // ok: test assertion
}

/// Empty, over-long and control-character labels are `InvalidInput`.
pub fn invalid_labels_are_refused(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for bad in ["", " padded ", "line\nbreak", &"x".repeat(129)] {
        match fx.store.generate(caps.algorithms[0], bad) {
            Err(e) if e.is(ErrorKind::InvalidInput) => {}
            r => panic!("label {bad:?}: expected InvalidInput, got {r:?}"),
        }
    }
    assert!(fx.store.list().unwrap().is_empty()); // ok: test assertion
}

/// `list` returns every key sorted by id; `get`, `find_by_label` and `resolve` find each.
pub fn lists_and_looks_up_keys(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    let mut made: Vec<KeyInfo> = caps
        .algorithms
        .iter()
        .map(|&alg| fx.store.generate(alg, &label("list")).unwrap()) // ok: test assertion
        .collect();
    made.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(fx.store.list().unwrap(), made); // ok: test assertion
    for k in &made {
        assert_eq!(&fx.store.get(&k.id).unwrap(), k); // ok: test assertion
        assert_eq!(&fx.store.find_by_label(&k.label).unwrap(), k); // ok: test assertion
        assert_eq!(&fx.store.resolve(k.id.as_str()).unwrap(), k); // ok: test assertion
        assert_eq!(&fx.store.resolve(&k.label).unwrap(), k); // ok: test assertion
    }
}

/// After delete the key is gone for every operation, and its label is free again.
pub fn delete_then_use_fails(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for &alg in &caps.algorithms {
        let l = label("del");
        let keep = fx.store.generate(alg, &label("keep")).unwrap(); // ok: test assertion
        let info = fx.store.generate(alg, &l).unwrap(); // ok: test assertion
        fx.store.delete(&info.id).unwrap(); // ok: test assertion
        expect_not_found("get after delete", fx.store.get(&info.id));
        expect_not_found("sign after delete", fx.store.sign(&info.id, b"x"));
        expect_not_found("second delete", fx.store.delete(&info.id));
        expect_not_found("label after delete", fx.store.find_by_label(&l));
        assert!(fx.store.list().unwrap().iter().all(|k| k.id != info.id)); // ok: test assertion
        // other keys are untouched
        assert_eq!(fx.store.get(&keep.id).unwrap(), keep); // ok: test assertion
        let again = fx.store.generate(alg, &l).unwrap(); // ok: test assertion
        assert_ne!(again.id, info.id, "ids are never reused");
        fx.store.delete(&again.id).unwrap(); // ok: test assertion
        fx.store.delete(&keep.id).unwrap(); // ok: test assertion
    }
    assert!(fx.store.list().unwrap().is_empty()); // ok: test assertion
}

/// Ids are distinct across many generations and deletions.
pub fn ids_are_unique_and_never_reused(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    let alg = caps.algorithms[0];
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let info = fx.store.generate(alg, &format!("unique-{i}")).unwrap(); // ok: test assertion
        assert!(seen.insert(info.id.clone()), "id {} reused", info.id);
        if i % 2 == 0 {
            fx.store.delete(&info.id).unwrap(); // ok: test assertion
        }
    }
    assert_eq!(fx.store.list().unwrap().len(), 10); // ok: test assertion
}

/// Many threads sign with the same keys at once; every signature verifies.
pub fn concurrent_signing(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    let keys: Vec<KeyInfo> = signers(caps)
        .map(|alg| fx.store.generate(alg, &label("conc")).unwrap()) // ok: test assertion
        .collect();
    let keys = Arc::new(keys);
    let handles: Vec<_> = (0..caps.threads)
        .map(|t| {
            let store = Arc::clone(&fx.store);
            let keys = Arc::clone(&keys);
            std::thread::spawn(move || {
                for i in 0..10 {
                    for k in keys.iter() {
                        let msg = format!("thread {t} message {i}");
                        let sig = store.sign(&k.id, msg.as_bytes()).unwrap(); // ok: test assertion
                        keyhaven_crypto::verify(&k.public_key, msg.as_bytes(), &sig).unwrap(); // ok: test assertion
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a signing thread panicked"); // ok: test assertion
    }
}

/// Many threads generate at once; none is lost and every id is distinct.
pub fn concurrent_generation(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    let alg = caps.algorithms[0];
    let per_thread = 5;
    let handles: Vec<_> = (0..caps.threads)
        .map(|t| {
            let store = Arc::clone(&fx.store);
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| store.generate(alg, &format!("gen-{t}-{i}")).unwrap().id) // ok: test assertion
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for h in handles {
        ids.extend(h.join().expect("a generating thread panicked")); // ok: test assertion
    }
    assert_eq!(ids.len(), caps.threads * per_thread);
    let listed: BTreeSet<KeyId> = fx.store.list().unwrap().into_iter().map(|k| k.id).collect(); // ok: test assertion
    assert_eq!(listed, ids);
}

/// Software stores import PKCS#8 and export it back; others refuse with `Unsupported`.
pub fn import_and_export(factory: &Factory, caps: &Capabilities) {
    let fx = factory();
    for &alg in &caps.algorithms {
        if alg.is_nist_ecdh() {
            // An ECDH key's PKCS#8 is an ECDSA key's: an import reads it as ECDSA, as it reads
            // any EC key (restoring a backup, which records the algorithm, is the way an ECDH
            // key comes back as one). Where import works, that is what it does.
            let outside = default_provider().generate(alg).unwrap(); // ok: test assertion
            let der = outside.to_pkcs8_der().unwrap(); // ok: test assertion
            if caps.import
                && let Ok(info) = fx.store.import_pkcs8(&label("ecdh-import"), &der)
            {
                assert!(
                    info.algorithm.can_sign(),
                    "{alg} imported as {}",
                    info.algorithm
                );
                assert_eq!(info.algorithm.nist_curve(), alg.nist_curve());
                assert_eq!(info.public_key.spki_der(), outside.public_key().spki_der());
            }
            continue;
        }
        let outside = default_provider().generate(alg).unwrap(); // ok: test assertion
        let der = outside.to_pkcs8_der().unwrap(); // ok: test assertion
        let imported = fx.store.import_pkcs8(&label("imported"), &der);
        if !caps.import {
            assert!(
                matches!(&imported, Err(e) if e.is(ErrorKind::Unsupported)),
                "{imported:?}"
            );
            continue;
        }
        let info = imported.unwrap(); // ok: test assertion
        assert_eq!(&info.public_key, outside.public_key());
        assert_eq!(info.protection, caps.protection);
        if alg.can_sign() {
            let sig = fx.store.sign(&info.id, b"imported").unwrap(); // ok: test assertion
            keyhaven_crypto::verify(outside.public_key(), b"imported", &sig).unwrap(); // ok: test assertion
        }
        // a malformed key is refused and leaves nothing behind
        let before = fx.store.list().unwrap(); // ok: test assertion
        assert!(matches!(
            fx.store.import_pkcs8(
                &label("bad"),
                &keyhaven_core::SecretBytes::copy_from(b"\x30\x03junk")
            ),
            Err(e) if e.is(ErrorKind::InvalidInput)));
        assert_eq!(fx.store.list().unwrap(), before); // ok: test assertion
    }
    for &alg in &caps.algorithms {
        let info = fx.store.generate(alg, &label("export")).unwrap(); // ok: test assertion
        let exported = fx.store.export_pkcs8(&info.id);
        if caps.export {
            let key = default_provider()
                .load_pkcs8_as(alg, exported.unwrap().expose_secret()) // ok: test assertion
                .unwrap(); // ok: test assertion
            assert_eq!(key.public_key(), &info.public_key);
        } else {
            assert!(
                matches!(&exported, Err(e) if e.is(ErrorKind::Unsupported)),
                "{exported:?}"
            );
        }
    }
}
