//! Someone with write access to the stored bytes: every changed bit and every truncation of a
//! wrapped KEK or an envelope is refused, never opened to other bytes.

use keyhaven_core::Algorithm;
use keyhaven_envelope::{Envelope, EnvelopeError, Kek, KekScope, SecretContext, WrappedKek};
use proptest::prelude::*;

use crate::software_master;

#[test]
fn every_bit_flip_of_a_wrapped_kek_is_refused() {
    for alg in [Algorithm::X25519, Algorithm::EcdhP256, Algorithm::EcdhP384] {
        let (_store, master) = software_master(alg);
        let kek = Kek::generate(KekScope::new("acme", 2, 9).unwrap()).unwrap();
        let bytes = master.wrap(&kek).unwrap().to_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let outcome =
                    WrappedKek::from_bytes(&bad).and_then(|w| master.unwrap(&w, kek.scope()));
                assert!(
                    matches!(
                        outcome,
                        Err(EnvelopeError::Malformed { .. }
                            | EnvelopeError::WrongMaster { .. }
                            | EnvelopeError::WrongKek { .. }
                            | EnvelopeError::Unauthentic { .. })
                    ),
                    "{alg}: flipping bit {bit} of byte {i}: {outcome:?}"
                );
            }
        }
        for n in 0..bytes.len() {
            assert!(
                WrappedKek::from_bytes(&bytes[..n]).is_err(),
                "truncated to {n}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(WrappedKek::from_bytes(&longer).is_err());
    }
}

#[test]
fn every_bit_flip_of_an_envelope_is_refused() {
    let kek = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
    let ctx = SecretContext::new("acme", "p", 1, 1).unwrap();
    let bytes = kek
        .seal(&ctx, b"a secret of 32 bytes, give or ta")
        .unwrap()
        .to_bytes();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            let outcome = Envelope::from_bytes(&bad).and_then(|e| kek.open(&ctx, &e));
            assert!(
                matches!(
                    outcome,
                    Err(EnvelopeError::Malformed { .. }
                        | EnvelopeError::WrongKek { .. }
                        | EnvelopeError::Unauthentic { .. })
                ),
                "flipping bit {bit} of byte {i}: {outcome:?}"
            );
        }
    }
    for n in 0..bytes.len() {
        let outcome = Envelope::from_bytes(&bytes[..n]).and_then(|e| kek.open(&ctx, &e));
        assert!(outcome.is_err(), "truncated to {n}");
    }
}

fn scope() -> impl Strategy<Value = KekScope> {
    ("[a-z0-9-]{1,40}", 0u8..=4, 1u32..)
        .prop_map(|(tenant, tier, version)| KekScope::new(&tenant, tier, version).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Wrapped KEKs and envelopes round-trip through bytes, for any scope, path, version and
    /// plaintext.
    #[test]
    fn codecs_round_trip(
        scope in scope(),
        path in "[a-z/]{1,80}",
        version in any::<u64>(),
        plain in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (_store, master) = software_master(Algorithm::X25519);
        let kek = Kek::generate(scope.clone()).unwrap();
        let wrapped = WrappedKek::from_bytes(&master.wrap(&kek).unwrap().to_bytes()).unwrap();
        prop_assert_eq!(wrapped.scope(), &scope);
        let kek = master.unwrap(&wrapped, &scope).unwrap();
        let ctx = SecretContext::new(scope.tenant(), &path, version, scope.tier()).unwrap();
        let env = Envelope::from_bytes(&kek.seal(&ctx, &plain).unwrap().to_bytes()).unwrap();
        prop_assert_eq!(env.kek_version(), scope.version());
        let opened = kek.open(&ctx, &env).unwrap();
        prop_assert_eq!(opened.expose_secret(), &plain[..]);
    }

    /// Edits of valid encodings (any bytes replaced, anywhere) never open, and never panic.
    #[test]
    fn edited_encodings_are_refused(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let (_store, master) = software_master(Algorithm::X25519);
        let kek = Kek::generate(KekScope::new("t", 1, 1).unwrap()).unwrap();
        let ctx = SecretContext::new("t", "p", 1, 1).unwrap();
        let wrapped = master.wrap(&kek).unwrap().to_bytes();
        let sealed = kek.seal(&ctx, b"payload").unwrap().to_bytes();
        for original in [&wrapped, &sealed] {
            let mut bytes = original.clone();
            for (at, value) in &edits {
                let i = at % bytes.len();
                bytes[i] = *value;
            }
            if cut % 3 == 0 {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if &bytes == original {
                continue;
            }
            if let Ok(w) = WrappedKek::from_bytes(&bytes) {
                prop_assert!(master.unwrap(&w, kek.scope()).is_err());
            }
            if let Ok(e) = Envelope::from_bytes(&bytes) {
                prop_assert!(kek.open(&ctx, &e).is_err());
            }
        }
    }
}
