//! Continuity proofs: round trip, tampering with every field, broken chains, openssl.

use base64ct::{Base64, Encoding};
use keyhaven_core::{Algorithm, KeyInfo, KeyStore, Signature};
use keyhaven_rotation::{ContinuityProof, RotationError, verify_chain, verify_continuity};
use keyhaven_store_memory::MemoryStore;

fn chain(alg: Algorithm, links: usize) -> (MemoryStore, Vec<KeyInfo>, Vec<ContinuityProof>) {
    let store = MemoryStore::new().unwrap();
    let keys: Vec<KeyInfo> = (0..=links)
        .map(|i| store.generate(alg, &format!("id{i}")).unwrap())
        .collect();
    let mut proofs: Vec<ContinuityProof> = Vec::new();
    for i in 0..links {
        let p = ContinuityProof::create(
            &store,
            keys[0].id.as_str(),
            &keys[i],
            &keys[i + 1],
            1000 + i as u64,
            2000 + i as u64,
            proofs.last(),
        )
        .unwrap();
        proofs.push(p);
    }
    (store, keys, proofs)
}

#[test]
fn a_proof_round_trips_through_text_and_verifies() {
    for alg in [
        Algorithm::Ed25519,
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
    ] {
        let (_s, keys, proofs) = chain(alg, 1);
        let text = proofs[0].to_text();
        assert!(
            text.starts_with("-----BEGIN KEYHAVEN CONTINUITY PROOF-----\nkeyhaven-continuity/v1\n")
        );
        let parsed = ContinuityProof::parse(&text).unwrap();
        assert_eq!(parsed, proofs[0]);
        assert_eq!(parsed.to_text(), text);
        let new = verify_continuity(&keys[0].public_key, &parsed).unwrap();
        assert_eq!(new, keys[1].public_key);
        // not made by this key
        let e = verify_continuity(&keys[1].public_key, &parsed).unwrap_err();
        assert!(matches!(e, RotationError::Continuity { .. }), "{e}");
    }
}

#[test]
fn tampering_with_any_field_is_detected() {
    let (_s, keys, proofs) = chain(Algorithm::Ed25519, 1);
    let (_s2, other, _) = chain(Algorithm::Ed25519, 1);
    let text = proofs[0].to_text();
    let lines: Vec<&str> = text.lines().collect();
    // every field line (between the tag and the end marker)
    for i in 2..lines.len() - 1 {
        let (name, value) = lines[i].split_once(": ").unwrap();
        let replacement = match name {
            "logical-id" => "someone-else".to_owned(),
            "old-algorithm" | "new-algorithm" => "p256".to_owned(),
            "old-fingerprint" | "new-fingerprint" | "previous" => "ab".repeat(32),
            "new-spki" => Base64::encode_string(other[1].public_key.spki_der()),
            "issued-at" | "migration-end" => (value.parse::<u64>().unwrap() + 1).to_string(),
            "old-signature" | "new-signature" => {
                let mut raw: Vec<u8> = Base64::decode_vec(value).unwrap();
                raw[10] ^= 1;
                Base64::encode_string(&raw)
            }
            other => panic!("unexpected field {other}"),
        };
        let mut t = lines.clone();
        let changed = format!("{name}: {replacement}");
        t[i] = &changed;
        let tampered = t.join("\n");
        let result = ContinuityProof::parse(&tampered)
            .and_then(|p| verify_continuity(&keys[0].public_key, &p));
        assert!(result.is_err(), "tampered {name} accepted");
    }
    // and garbage is refused with a message
    assert!(ContinuityProof::parse("hello").is_err());
    assert!(ContinuityProof::parse(&text.replace("issued-at", "issued")).is_err());
}

#[test]
fn chains_verify_and_broken_ones_name_the_link() {
    let (_s, keys, proofs) = chain(Algorithm::Ed25519, 4);
    let text: String = proofs.iter().map(ContinuityProof::to_text).collect();
    let parsed = ContinuityProof::parse_chain(&text).unwrap();
    assert_eq!(
        verify_chain(&keys[0].public_key, &parsed).unwrap(),
        keys[4].public_key
    );
    // a suffix verifies from the key it starts at
    assert_eq!(
        verify_chain(&keys[2].public_key, &parsed[2..]).unwrap(),
        keys[4].public_key
    );

    let link = |e: RotationError| match e {
        RotationError::Continuity { link, .. }
        | RotationError::ContinuitySignature { link, .. } => link,
        other => panic!("{other}"),
    };
    // missing link
    let mut missing = parsed.clone();
    missing.remove(2);
    assert_eq!(
        link(verify_chain(&keys[0].public_key, &missing).unwrap_err()),
        Some(3)
    );
    // wrong order
    let mut swapped = parsed.clone();
    swapped.swap(1, 2);
    assert_eq!(
        link(verify_chain(&keys[0].public_key, &swapped).unwrap_err()),
        Some(2)
    );
    // wrong first key
    assert_eq!(
        link(verify_chain(&keys[1].public_key, &parsed).unwrap_err()),
        Some(1)
    );
    // a bad signature in link 4
    let mut bad = parsed.clone();
    bad[3].new_signature[0] ^= 1;
    let e = verify_chain(&keys[0].public_key, &bad).unwrap_err();
    assert!(
        matches!(e, RotationError::ContinuitySignature { link: Some(4), .. }),
        "{e}"
    );
    assert!(e.to_string().contains("link 4"), "{e}");
    // a link re-signed correctly but not naming its predecessor
    assert!(verify_chain(&keys[0].public_key, &[]).is_err());
}

#[test]
fn openssl_verifies_the_old_keys_signature_over_the_statement() {
    for alg in [Algorithm::EcdsaP384, Algorithm::Ed25519] {
        let (_s, keys, proofs) = chain(alg, 1);
        let p = &proofs[0];
        let sig = Signature::from_raw(alg, p.old_signature.clone()).unwrap();
        assert!(keyhaven_testkit::openssl::verify(
            &keys[0].public_key,
            p.statement().as_bytes(),
            &sig
        ));
        let new_sig = Signature::from_raw(alg, p.new_signature.clone()).unwrap();
        assert!(keyhaven_testkit::openssl::verify(
            &keys[1].public_key,
            p.countersigned().as_bytes(),
            &new_sig
        ));
        assert!(!keyhaven_testkit::openssl::verify(
            &keys[0].public_key,
            b"something else",
            &sig
        ));
    }
}

#[test]
fn x25519_keys_cannot_make_proofs() {
    let store = MemoryStore::new().unwrap();
    let a = store.generate(Algorithm::X25519, "a").unwrap();
    let b = store.generate(Algorithm::X25519, "b").unwrap();
    assert!(ContinuityProof::create(&store, "a", &a, &b, 1, 2, None).is_err());
}
