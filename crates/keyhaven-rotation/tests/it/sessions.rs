//! X3DH-shaped session agreement and the Double Ratchet's KDF chains: published vectors,
//! an independent computation, identity rotation under a pool, every refusal.

use std::process::Command;
use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore, SecretBytes};
use keyhaven_fs::PlainState;
use keyhaven_rotation::chain::{ChainKey, ReceivingChain, RootKey, SendingChain};
use keyhaven_rotation::{PrekeyBundle, PrekeyPool, RotationError, Succession, is_prekey_label};
use keyhaven_store_memory::MemoryStore;
use proptest::prelude::*;

const INFO: &[u8] = b"keyhaven test app";

/// [`PrekeyPool::open_succeeding`] with plain state files.
fn succeed(
    dir: &std::path::Path,
    store: Arc<dyn KeyStore>,
    identity: keyhaven_core::KeyId,
    trusted: &[keyhaven_core::KeyId],
    abandoned: &[keyhaven_core::KeyId],
) -> keyhaven_rotation::Result<PrekeyPool> {
    PrekeyPool::open_succeeding(
        dir,
        store,
        identity,
        Arc::new(PlainState),
        &Succession::new(trusted, abandoned),
    )
}

/// Bob's pool in `tmp` with `n` one-time prekeys and a bundle taken: the store, his identity's
/// first version and the pool's directory.
fn bob(
    tmp: &std::path::Path,
    n: u32,
) -> (
    Arc<dyn KeyStore>,
    keyhaven_core::KeyInfo,
    std::path::PathBuf,
    PrekeyBundle,
) {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let v1 = store.generate(Algorithm::Ed25519, "id").unwrap();
    let dir = tmp.join("bob");
    let pool = PrekeyPool::open(&dir, store.clone(), v1.id.clone()).unwrap();
    pool.replenish(1, n).unwrap();
    let bundle = pool.bundle().unwrap();
    (store, v1, dir, bundle)
}

fn party(dir: &std::path::Path, name: &str) -> PrekeyPool {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let identity = store.generate(Algorithm::Ed25519, name).unwrap().id;
    PrekeyPool::open(&dir.join(name), store, identity).unwrap()
}

#[test]
fn rfc_7748_x25519_vector_through_the_software_provider() {
    // RFC 7748 section 6.1, Alice's scalar and Bob's public key, in PKCS#8 and SPKI.
    let a =
        hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
    let b_pub =
        hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f").unwrap();
    let mut pkcs8 = hex::decode("302e020100300506032b656e04220420").unwrap();
    pkcs8.extend_from_slice(&a);
    let mut spki = hex::decode("302a300506032b656e032100").unwrap();
    spki.extend_from_slice(&b_pub);
    let provider = keyhaven_crypto::default_provider();
    let alice = provider.load_pkcs8(&pkcs8).unwrap();
    assert_eq!(
        hex::encode(&alice.public_key().spki_der()[12..]),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    let bob = provider.parse_public_key_der(&spki).unwrap();
    assert_eq!(
        hex::encode(alice.agree(&bob).unwrap().expose_secret()),
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    );
}

#[test]
fn rfc_5869_hkdf_vector() {
    // RFC 5869 appendix A.1.
    let okm = keyhaven_crypto::kdf::derive_key(
        &[0x0b; 22],
        &hex::decode("000102030405060708090a0b0c").unwrap(),
        &hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap(),
        42,
    )
    .unwrap();
    assert_eq!(
        hex::encode(okm.expose_secret()),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
}

/// KDF_RK and KDF_CK computed by Python's standard library (hmac, hashlib), from the
/// Double Ratchet specification's definitions, not from this crate.
#[test]
fn the_chains_match_an_independent_computation() {
    let rk = [0x11u8; 32];
    let dh = [0x22u8; 32];
    let script = r#"
import hmac, hashlib, sys
rk, dh, info = bytes([0x11]*32), bytes([0x22]*32), b"chain info"
prk = hmac.new(rk, dh, hashlib.sha256).digest()
okm, t = b"", b""
for i in range(1, 3):
    t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
    okm += t
ck = okm[32:]
out = [okm[:32].hex()]
for _ in range(3):
    out.append(hmac.new(ck, b"\x01", hashlib.sha256).digest().hex())
    ck = hmac.new(ck, b"\x02", hashlib.sha256).digest()
print(" ".join(out))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut root = RootKey::from_secret(&SecretBytes::copy_from(&rk)).unwrap();
    let chain = root
        .advance(&SecretBytes::copy_from(&dh), b"chain info")
        .unwrap();
    let mut send = SendingChain::new(chain);
    let keys: Vec<String> = (0..3)
        .map(|_| hex::encode(send.next_key().unwrap().expose_secret()))
        .collect();
    assert_eq!(keys, expected[1..]);
    // the root key moved on: the same DH output from the new root gives another chain
    let again = root
        .advance(&SecretBytes::copy_from(&dh), b"chain info")
        .unwrap();
    assert_ne!(
        hex::encode(SendingChain::new(again).next_key().unwrap().expose_secret()),
        expected[1]
    );
}

#[test]
fn two_parties_agree_with_and_without_a_one_time_prekey() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (party(tmp.path(), "alice"), party(tmp.path(), "bob"));
    bob.replenish(1, 2).unwrap();
    for with_one_time in [true, true, false] {
        let bundle = bob.bundle().unwrap();
        assert_eq!(bundle.one_time_prekey.is_some(), with_one_time);
        let (init, a) = alice.initiate(&bundle, INFO).unwrap();
        let b = bob.respond(&init, INFO).unwrap();
        assert_eq!(a.shared, b.shared);
        assert_eq!(a.associated_data, b.associated_data);
        assert_eq!(
            b.peer_identity,
            alice.store().get(alice.identity()).unwrap().public_key
        );
        // another application's info gives another secret
        if !with_one_time {
            let b2 = bob.respond(&init, b"another app").unwrap();
            assert_ne!(a.shared, b2.shared);
        }
    }
    assert_eq!(bob.status().unwrap().consumed, 2);
}

#[test]
fn every_bad_handshake_is_refused_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (party(tmp.path(), "alice"), party(tmp.path(), "bob"));
    let mallory = party(tmp.path(), "mallory");
    bob.replenish(1, 10).unwrap();

    // a signed prekey swapped for the attacker's (signed by another identity)
    let mut bundle = bob.bundle().unwrap();
    bundle.signed_prekey = mallory.bundle().unwrap().signed_prekey;
    let e = alice.initiate(&bundle, INFO).unwrap_err();
    assert!(matches!(e, RotationError::Handshake(_)), "{e}");
    assert!(
        e.to_string().contains("not signed by its identity key"),
        "{e}"
    );
    // an identity agreement key swapped
    let mut bundle = bob.bundle().unwrap();
    bundle.identity_key = mallory.bundle().unwrap().identity_key;
    assert!(alice.initiate(&bundle, INFO).is_err());
    // a signed prekey passed off as the identity agreement key (domain separation)
    let mut bundle = bob.bundle().unwrap();
    bundle.identity_key = bundle.signed_prekey.clone();
    assert!(alice.initiate(&bundle, INFO).is_err());

    // an initiation whose identity agreement key is not the initiator's identity's
    let bundle = bob.bundle().unwrap();
    let (mut init, _) = alice.initiate(&bundle, INFO).unwrap();
    let (m_init, _) = mallory.initiate(&bob.bundle().unwrap(), INFO).unwrap();
    init.identity = m_init.identity.clone();
    assert!(init.one_time_prekey.is_some());
    let before = bob.status().unwrap();
    let e = bob.respond(&init, INFO).unwrap_err();
    assert!(
        e.to_string().contains("not signed by its identity key"),
        "{e}"
    );
    assert_eq!(bob.status().unwrap(), before, "the one-time prekey is kept");

    // the first one-time prekey: used once, then refused by name
    let good = bob.bundle().unwrap();
    let (init, a) = alice.initiate(&good, INFO).unwrap();
    assert_eq!(bob.respond(&init, INFO).unwrap().shared, a.shared);
    let e = bob.respond(&init, INFO).unwrap_err();
    assert!(matches!(e, RotationError::PrekeyUsed { .. }), "{e}");

    // an unknown signed prekey
    let (mut init, _) = alice.initiate(&bob.bundle().unwrap(), INFO).unwrap();
    init.signed_prekey = keyhaven_core::KeyId::generate().unwrap();
    init.one_time_prekey = None;
    let e = bob.respond(&init, INFO).unwrap_err();
    assert!(e.to_string().contains("not one this pool keeps"), "{e}");
}

#[test]
fn a_signed_prekey_survives_one_rotation_and_not_two() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (party(tmp.path(), "alice"), party(tmp.path(), "bob"));
    let bundle = bob.bundle().unwrap();
    let (init, a) = alice.initiate(&bundle, INFO).unwrap();
    bob.rotate_signed_prekey().unwrap();
    assert_eq!(
        bob.respond(&init, INFO).unwrap().shared,
        a.shared,
        "in flight"
    );
    bob.rotate_signed_prekey().unwrap();
    assert!(bob.respond(&init, INFO).is_err());
}

#[test]
fn a_pool_passes_to_the_next_identity_version_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
    let v1 = store.generate(Algorithm::Ed25519, "id").unwrap();
    let dir = tmp.path().join("bob");
    let pool = PrekeyPool::open(&dir, store.clone(), v1.id.clone()).unwrap();
    pool.replenish(1, 5).unwrap();
    let old = pool.bundle().unwrap();
    let mut ids = vec![v1.id.clone()];
    for n in 2..=3 {
        let v = store
            .generate(Algorithm::Ed25519, &format!("id.v{n}"))
            .unwrap();
        // a pool of the old version is refused unless the new one is named its successor
        let e = PrekeyPool::open(&dir, store.clone(), v.id.clone()).unwrap_err();
        assert!(e.to_string().contains("belongs to identity"), "{e}");
        let pool = succeed(&dir, store.clone(), v.id.clone(), &ids, &[]).unwrap();
        let b = pool.bundle().unwrap();
        assert_eq!(b.identity, v.public_key);
        b.verify().unwrap();
        assert_eq!(
            b.signed_prekey.key_id, old.signed_prekey.key_id,
            "re-signed, kept"
        );
        assert_eq!(b.identity_key.key, old.identity_key.key);
        assert!(
            b.one_time_prekey.is_some(),
            "the one-time pool carried over"
        );
        ids.push(v.id.clone());
        let alice = party(tmp.path(), &format!("alice{n}"));
        let (init, a) = alice.initiate(&b, INFO).unwrap();
        assert_eq!(pool.respond(&init, INFO).unwrap().shared, a.shared);
    }
    // another identity is not a successor
    let other = store.generate(Algorithm::Ed25519, "other").unwrap();
    let e = succeed(&dir, store, other.id, &[v1.id], &[]).unwrap_err();
    assert!(e.to_string().contains("belongs to identity"), "{e}");
}

/// Someone who can write `pool.json` (a home not sealed) points the signed prekey's record at
/// another key of the store, or at a public key of their own: the new identity version will
/// not vouch for it.
#[test]
fn a_successor_never_signs_a_key_its_predecessor_did_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, v1, dir, _) = bob(tmp.path(), 2);
    let file = dir.join("pool.json");
    let original = std::fs::read_to_string(&file).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    // the signed prekey's record now names a one-time prekey (a key the store holds)
    let otk = json["one_time"][1].clone();
    json["signed"][0]["key_id"] = otk["id"].clone();
    json["signed"][0]["public_key"] = otk["public_key"].clone();
    std::fs::write(&file, json.to_string()).unwrap();
    let v2 = store.generate(Algorithm::Ed25519, "id.v2").unwrap();
    // v2 succeeding v1 over the pool as the file now says: refused
    let refused = || {
        succeed(
            &dir,
            store.clone(),
            v2.id.clone(),
            std::slice::from_ref(&v1.id),
            &[],
        )
        .unwrap_err()
    };
    let e = refused();
    assert!(
        e.to_string()
            .contains("not signed by the previous identity"),
        "{e}"
    );
    // a public key of the attacker's own under the real key id
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    let theirs = MemoryStore::new()
        .unwrap()
        .generate(Algorithm::X25519, "theirs")
        .unwrap();
    json["signed"][0]["public_key"] = serde_json::Value::String({
        use base64ct::{Base64, Encoding};
        Base64::encode_string(theirs.public_key.spki_der())
    });
    std::fs::write(&file, json.to_string()).unwrap();
    let e = refused();
    assert!(e.to_string().contains("is not the store's"), "{e}");
    // and the old identity itself does not hand it out either
    let e = PrekeyPool::open(&dir, store, v1.id)
        .unwrap()
        .bundle()
        .unwrap_err();
    assert!(e.to_string().contains("is not the store's"), "{e}");
}

/// The pool of a compromised identity version is not passed on: its keys are deleted and the
/// next version starts a new one.
#[test]
fn a_compromised_identitys_pool_is_emptied_not_passed_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, v1, dir, old) = bob(tmp.path(), 3);
    let v2 = store.generate(Algorithm::Ed25519, "id.v2").unwrap();
    let pool = succeed(
        &dir,
        store.clone(),
        v2.id.clone(),
        &[],
        std::slice::from_ref(&v1.id),
    )
    .unwrap();
    assert!(store.get(&old.signed_prekey.key_id).is_err(), "deleted");
    assert!(store.get(&old.identity_key.key_id).is_err(), "deleted");
    assert_eq!(pool.status().unwrap().available, 0);
    let new = pool.bundle().unwrap();
    assert_ne!(new.identity_key.key, old.identity_key.key);
    assert_eq!(new.identity, v2.public_key);
    new.verify().unwrap();
}

#[test]
fn only_labels_a_pool_gives_are_prekey_labels() {
    assert!(is_prekey_label("otpk-0123456789abcdef-k1"));
    assert!(is_prekey_label("idk-0123456789abcdef-k1"));
    assert!(!is_prekey_label("otpk-mine"));
    assert!(!is_prekey_label("spk-0123456789abcdeg-k1"));
    assert!(!is_prekey_label("spk-0123456789abcdef-"));
}

/// Mallory re-signs Alice's identity agreement key with her own identity and passes Alice's
/// initiation off as hers: Bob ends up with another secret and other associated data than
/// Alice, so nothing Alice sends opens as Mallory's (no unknown key-share).
#[test]
fn an_initiation_relabelled_by_another_identity_gives_another_secret() {
    use base64ct::{Base64, Encoding};
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (party(tmp.path(), "alice"), party(tmp.path(), "bob"));
    let mallory = party(tmp.path(), "mallory");
    let (mut init, a) = alice.initiate(&bob.bundle().unwrap(), INFO).unwrap();
    let ik = Base64::decode_vec(&init.identity_key).unwrap();
    let message =
        keyhaven_rotation::SignedPrekey::identity_key_message(&ik, init.identity_key_created_at);
    let sig = mallory.store().sign(mallory.identity(), &message).unwrap();
    let mallory_pub = mallory.store().get(mallory.identity()).unwrap().public_key;
    init.identity = Base64::encode_string(mallory_pub.spki_der());
    init.identity_key_signature = Base64::encode_string(sig.as_raw());
    let b = bob.respond(&init, INFO).unwrap();
    assert_eq!(b.peer_identity, mallory_pub);
    assert_ne!(a.shared, b.shared);
    assert_ne!(a.associated_data, b.associated_data);
}

#[test]
fn a_forged_message_far_ahead_changes_nothing() {
    let (mut send, mut recv) = chains(10);
    let sealed: Vec<Vec<u8>> = (0..12)
        .map(|i| send.next_key().unwrap().seal(&[i], b"ad").unwrap())
        .collect();
    assert_eq!(
        recv.open(1, &sealed[1], b"ad").unwrap().expose_secret(),
        &[1]
    );
    assert_eq!(recv.skipped(), 1);
    // a forged message claiming number 11 (the bound): refused, nothing skipped or dropped
    assert!(
        recv.open(11, b"forged forged forged forged", b"ad")
            .is_err()
    );
    assert_eq!(recv.skipped(), 1);
    // a real one under a wrong number fails too and leaves the skipped key in place
    assert!(recv.open(0, &sealed[2], b"ad").is_err());
    for n in [0u32, 2, 11, 5] {
        let plain = recv.open(n, &sealed[n as usize], b"ad").unwrap();
        assert_eq!(plain.expose_secret(), &[n as u8]);
    }
    assert!(recv.open(5, &sealed[5], b"ad").is_err(), "once");
}

#[test]
fn p256_pools_agree_and_mixed_curves_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p256 = |name: &str| {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new().unwrap());
        let identity = store.generate(Algorithm::EcdsaP256, name).unwrap().id;
        PrekeyPool::open(&tmp.path().join(name), store, identity)
            .unwrap()
            .with_curve(Algorithm::EcdhP256)
            .unwrap()
    };
    let (alice, bob) = (p256("alice"), p256("bob"));
    bob.replenish(1, 1).unwrap();
    let bundle = bob.bundle().unwrap();
    assert_eq!(bundle.signed_prekey.key.algorithm(), Algorithm::EcdhP256);
    let (init, a) = alice.initiate(&bundle, INFO).unwrap();
    assert_eq!(bob.respond(&init, INFO).unwrap().shared, a.shared);
    let x = party(tmp.path(), "x25519");
    let e = x.initiate(&bob.bundle().unwrap(), INFO).unwrap_err();
    assert!(e.to_string().contains("one curve"), "{e}");
    assert!(
        PrekeyPool::open(
            &tmp.path().join("bad"),
            Arc::new(MemoryStore::new().unwrap()) as Arc<dyn KeyStore>,
            keyhaven_core::KeyId::generate().unwrap()
        )
        .is_err()
    );
}

#[test]
fn consumed_markers_are_compacted_and_discard_destroys() {
    let tmp = tempfile::tempdir().unwrap();
    let bob = party(tmp.path(), "bob");
    bob.replenish(1, 3).unwrap();
    let one = bob.take().unwrap();
    bob.discard(&one.id).unwrap();
    assert!(bob.store().get(&one.id).is_err(), "destroyed");
    let e = bob.discard(&one.id).unwrap_err();
    assert!(matches!(e, RotationError::PrekeyUsed { .. }), "{e}");
    let st = bob.status().unwrap();
    assert_eq!((st.available, st.taken, st.consumed), (2, 0, 1));
    let n = keyhaven_rotation::CONSUMED_MARKERS_KEPT + 5;
    bob.replenish(n as u32, n as u32).unwrap();
    for _ in 0..n {
        let o = bob.take().unwrap();
        bob.discard(&o.id).unwrap();
    }
    assert_eq!(
        bob.status().unwrap().consumed as usize,
        keyhaven_rotation::CONSUMED_MARKERS_KEPT
    );
    let e = bob.discard(&one.id).unwrap_err();
    assert!(
        matches!(e, RotationError::NotFound(_)),
        "dropped marker: {e}"
    );
}

fn chains(max_skip: u32) -> (SendingChain, ReceivingChain) {
    let secret = SecretBytes::copy_from(&[9; 32]);
    (
        SendingChain::new(ChainKey::from_secret(&secret).unwrap()),
        ReceivingChain::new(ChainKey::from_secret(&secret).unwrap(), max_skip),
    )
}

#[test]
fn message_keys_beyond_the_skip_bound_or_used_are_refused() {
    let (mut send, mut recv) = chains(10);
    let keys: Vec<_> = (0..30).map(|_| send.next_key().unwrap()).collect();
    let e = recv.key(11).unwrap_err();
    assert!(e.to_string().contains("beyond the skip bound of 10"), "{e}");
    assert_eq!(recv.skipped(), 0, "nothing changed");
    assert!(recv.key(10).unwrap() == keys[10]);
    assert_eq!(recv.skipped(), 10);
    let e = recv.key(10).unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");
    // 20 is ten ahead of 11: allowed; 0..=10 skipped keys exceed the bound: the oldest go
    assert!(recv.key(20).unwrap() == keys[20]);
    assert_eq!(recv.skipped(), 10);
    let e = recv.key(0).unwrap_err();
    assert!(e.to_string().contains("dropped"), "{e}");
    assert!(recv.key(19).unwrap() == keys[19]);
    assert!(recv.key(u32::MAX).is_err());
}

#[test]
fn a_sealed_message_opens_once_with_its_key_only() {
    let (mut send, mut recv) = chains(10);
    let sealed = send.next_key().unwrap().seal(b"hello", b"ad").unwrap();
    let second = send.next_key().unwrap().seal(b"world", b"ad").unwrap();
    let mut flipped = sealed.clone();
    flipped[20] ^= 1;
    let k1 = recv.key(1).unwrap();
    assert!(k1.open(&sealed, b"ad").is_err(), "another message's key");
    assert!(recv.key(0).unwrap().open(&flipped, b"ad").is_err());
    assert!(recv.key(0).is_err(), "the key went with the failed try");
    let (mut send, mut recv) = chains(10);
    let sealed = send.next_key().unwrap().seal(b"hello", b"ad").unwrap();
    assert!(recv.key(0).unwrap().open(&sealed, b"other ad").is_err());
    let _ = second;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any delivery order of 100 messages within the skip bound opens every message once and
    /// only once.
    #[test]
    fn any_order_within_the_bound_opens_each_message_once(
        order in Just((0u32..100).collect::<Vec<_>>()).prop_shuffle(),
        dupes in proptest::collection::vec(0usize..100, 0..20),
    ) {
        let (mut send, mut recv) = chains(100);
        let sealed: Vec<Vec<u8>> = (0..100)
            .map(|i| send.next_key().unwrap().seal(format!("m{i}").as_bytes(), b"ad").unwrap())
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (step, n) in order.iter().enumerate() {
            let plain = recv.key(*n).unwrap().open(&sealed[*n as usize], b"ad").unwrap();
            let expected = format!("m{n}");
            prop_assert_eq!(plain.expose_secret(), expected.as_bytes());
            seen.insert(*n);
            // replays of anything delivered so far are refused
            if let Some(d) = dupes.get(step % 20) {
                let d = order[*d.min(&step)];
                prop_assert!(recv.key(d).is_err());
            }
        }
        prop_assert_eq!(seen.len(), 100);
        prop_assert_eq!(recv.skipped(), 0);
        for n in 0..100 {
            prop_assert!(recv.key(n).is_err());
        }
    }
}
