//! Vault-transit semantics: versions, `vault:vN:` ciphertexts, rewrap, min_decryption_version,
//! data keys; and the refusals. The store here is a map behind a mutex (the server's databases
//! implement the same trait; this one lets a test edit rows as an attacker with database access
//! would).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64ct::{Base64, Encoding};
use keyhaven_core::{Algorithm, ErrorKind};
use keyhaven_crypto::kdf::Hash;
use keyhaven_envelope::EnvelopeError;
use keyhaven_envelope::transit::{
    SignInput, Transit, TransitKeyRecord, TransitKeyType, TransitStore, check_key_name,
    parse_ciphertext,
};

use crate::software_master;

#[derive(Default, Clone)]
struct Rows(Arc<Mutex<BTreeMap<String, TransitKeyRecord>>>);

impl TransitStore for Rows {
    fn load(&self, name: &str) -> keyhaven_envelope::Result<Option<TransitKeyRecord>> {
        Ok(self.0.lock().unwrap().get(name).cloned())
    }
    fn create(&self, record: &TransitKeyRecord) -> keyhaven_envelope::Result<bool> {
        let mut rows = self.0.lock().unwrap();
        if rows.contains_key(&record.name) {
            return Ok(false);
        }
        rows.insert(record.name.clone(), record.clone());
        Ok(true)
    }
    fn add_version(
        &self,
        name: &str,
        version: u32,
        wrapped: &[u8],
        at: u64,
    ) -> keyhaven_envelope::Result<bool> {
        let mut rows = self.0.lock().unwrap();
        let Some(r) = rows.get_mut(name) else {
            return Ok(false);
        };
        if version != r.latest_version() + 1 {
            return Ok(false);
        }
        r.versions.insert(version, (wrapped.to_vec(), at));
        Ok(true)
    }
    fn set_min_decryption_version(
        &self,
        name: &str,
        version: u32,
    ) -> keyhaven_envelope::Result<bool> {
        let mut rows = self.0.lock().unwrap();
        Ok(rows
            .get_mut(name)
            .map(|r| r.min_decryption_version = version)
            .is_some())
    }
}

fn engine(tenant: &str, tier: u8) -> (Transit<Rows>, Rows) {
    let (_store, master) = software_master(Algorithm::EcdhP256);
    let rows = Rows::default();
    (
        Transit::new(Arc::new(master), rows.clone(), tenant, tier).unwrap(),
        rows,
    )
}

#[test]
fn encrypt_rotate_rewrap_and_min_decryption_version() {
    let (t, _) = engine("acme", 1);
    assert!(t.create_key("orders", 100).unwrap());
    assert!(
        !t.create_key("orders", 101).unwrap(),
        "a second create changes nothing"
    );
    let c1 = t.encrypt("orders", b"card 4242", None).unwrap();
    assert!(c1.starts_with("vault:v1:"), "{c1}");
    assert_eq!(
        t.decrypt("orders", &c1).unwrap().expose_secret(),
        b"card 4242"
    );

    assert_eq!(t.rotate("orders", 200).unwrap(), 2);
    let c2 = t.encrypt("orders", b"card 4242", None).unwrap();
    assert!(c2.starts_with("vault:v2:"), "{c2}");
    // old ciphertexts still decrypt; rewrap moves them to v2 with the same plaintext
    assert_eq!(
        t.decrypt("orders", &c1).unwrap().expose_secret(),
        b"card 4242"
    );
    let moved = t.rewrap("orders", &c1).unwrap();
    assert!(moved.starts_with("vault:v2:"), "{moved}");
    assert_eq!(
        t.decrypt("orders", &moved).unwrap().expose_secret(),
        b"card 4242"
    );
    // an explicit older version encrypts too
    assert!(
        t.encrypt("orders", b"x", Some(1))
            .unwrap()
            .starts_with("vault:v1:")
    );

    // min_decryption_version 2: v1 ciphertexts are refused, v2 ones are fine
    t.set_min_decryption_version("orders", 2).unwrap();
    let e = t.decrypt("orders", &c1).unwrap_err();
    assert!(
        e.to_string().contains("disallowed by policy (too old)"),
        "{e}"
    );
    assert!(t.rewrap("orders", &c1).is_err());
    assert!(t.encrypt("orders", b"x", Some(1)).is_err());
    assert_eq!(
        t.decrypt("orders", &c2).unwrap().expose_secret(),
        b"card 4242"
    );
    assert!(t.set_min_decryption_version("orders", 3).is_err());
    assert!(t.set_min_decryption_version("orders", 0).is_err());

    let record = t.read_key("orders").unwrap();
    assert_eq!(record.latest_version(), 2);
    assert_eq!(record.min_decryption_version, 2);
    assert_eq!(record.created_at, 100);
    // a version that does not exist yet
    let future = c2.replacen("vault:v2:", "vault:v3:", 1);
    assert!(t.decrypt("orders", &future).is_err());
}

#[test]
fn ciphertexts_do_not_cross_keys_tenants_or_tiers() {
    let (t, rows) = engine("acme", 1);
    t.create_key("a", 1).unwrap();
    t.create_key("b", 1).unwrap();
    let ca = t.encrypt("a", b"for a", None).unwrap();
    let e = t.decrypt("b", &ca).unwrap_err();
    assert!(matches!(e, EnvelopeError::Unauthentic { .. }), "{e}");

    // another tenant or tier over the same rows and master key: nothing of acme's opens
    for (tenant, tier) in [("other", 1), ("acme", 2)] {
        let (_s, master) = software_master(Algorithm::EcdhP256);
        let t2 = Transit::new(Arc::new(master), rows.clone(), tenant, tier).unwrap();
        assert!(t2.decrypt("a", &ca).is_err(), "{tenant} {tier}");
    }

    // an attacker with database access copies key b's version 1 into key a's row: refused
    {
        let mut r = rows.0.lock().unwrap();
        let b1 = r["b"].versions[&1].clone();
        r.get_mut("a").unwrap().versions.insert(1, b1);
    }
    t.clear_cache();
    let e = t.encrypt("a", b"x", None).unwrap_err();
    assert!(matches!(e, EnvelopeError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("acme/transit/b"), "{e}");
}

#[test]
fn data_keys_are_random_and_decrypt_to_themselves() {
    let (t, _) = engine("acme", 2);
    t.create_key("dk", 1).unwrap();
    for bits in [128u32, 256, 512] {
        let (plain, cipher) = t.data_key("dk", bits).unwrap();
        assert_eq!(plain.len() * 8, bits as usize);
        assert_eq!(t.decrypt("dk", &cipher).unwrap(), plain);
        let (other, _) = t.data_key("dk", bits).unwrap();
        assert_ne!(other, plain);
    }
    assert!(t.data_key("dk", 192).is_err());
}

#[test]
fn bad_names_unknown_keys_and_malformed_ciphertexts_are_refused() {
    let (t, _) = engine("acme", 1);
    for bad in ["", "a/b", "..", "with space", &"x".repeat(129)] {
        assert!(check_key_name(bad).is_err(), "{bad:?}");
        assert!(t.create_key(bad, 1).is_err(), "{bad:?}");
    }
    for good in ["a", "app.orders_v2-eu", &"x".repeat(128)] {
        check_key_name(good).unwrap();
    }
    let e: keyhaven_core::Error = t.encrypt("missing", b"x", None).unwrap_err().into();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    t.create_key("k", 1).unwrap();
    let good = t.encrypt("k", b"payload", None).unwrap();
    for bad in [
        "".to_owned(),
        "vault:".to_owned(),
        "vault:v1".to_owned(),
        "vault:vX:AAAA".to_owned(),
        "vault:v99999999999:AAAA".to_owned(),
        "vault:v1:not base64!".to_owned(),
        good.replacen("vault:v1:", "vault:v2:", 1),
        good.replacen("vault:v1:", "vault:v01:", 1),
        format!("{good}AAAA"),
    ] {
        assert!(t.decrypt("k", &bad).is_err(), "{bad:?}");
    }
    // every byte of the body changed is refused
    let body = Base64::decode_vec(good.strip_prefix("vault:v1:").unwrap()).unwrap();
    for i in 0..body.len() {
        let mut b = body.clone();
        b[i] ^= 0x80;
        let c = format!("vault:v1:{}", Base64::encode_string(&b));
        assert!(t.decrypt("k", &c).is_err(), "byte {i}");
    }
    assert_eq!(parse_ciphertext(&good).unwrap().0, 1);
    assert!(
        Transit::new(
            Arc::new(software_master(Algorithm::X25519).1),
            Rows::default(),
            "a/b",
            1
        )
        .is_err()
    );
}

#[test]
fn concurrent_rotations_one_wins() {
    let (t, _) = engine("acme", 1);
    t.create_key("r", 1).unwrap();
    let t = Arc::new(t);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || t.rotate("r", 10 + i))
        })
        .collect();
    let won: Vec<u32> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().ok())
        .collect();
    let latest = t.read_key("r").unwrap().latest_version();
    assert_eq!(
        won.len() as u32,
        latest - 1,
        "every success made one version"
    );
    let mut sorted = won.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), won.len(), "no version was made twice");
}

#[test]
fn a_secret_envelope_is_bound_to_its_path_and_version_and_rewraps_after_rotation() {
    let (t, _) = engine("acme", 2);
    let r = t.ensure_key("secrets", 1).unwrap();
    assert_eq!(r.latest_version(), 1);
    assert_eq!(
        t.ensure_key("secrets", 2).unwrap(),
        r,
        "ensure keeps what is there"
    );
    let env = t
        .seal_secret("secrets", "db/password", 3, b"hunter2")
        .unwrap();
    assert_eq!(
        t.open_secret("secrets", "db/password", 3, &env)
            .unwrap()
            .expose_secret(),
        b"hunter2"
    );
    // Moved to another path or version, it does not open.
    for (path, version) in [("db/user", 3), ("db/password", 2), ("db/password", 4)] {
        let e = t.open_secret("secrets", path, version, &env).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::Unauthentic { .. }),
            "{path} {version}: {e}"
        );
    }
    assert!(
        t.rewrap_secret("secrets", "db/password", 3, &env)
            .unwrap()
            .is_none()
    );
    t.rotate("secrets", 5).unwrap();
    let moved = t
        .rewrap_secret("secrets", "db/password", 3, &env)
        .unwrap()
        .unwrap();
    assert_eq!(moved.kek_version(), 2);
    assert_eq!(
        t.open_secret("secrets", "db/password", 3, &moved)
            .unwrap()
            .expose_secret(),
        b"hunter2"
    );
    assert!(
        t.rewrap_secret("secrets", "db/password", 3, &moved)
            .unwrap()
            .is_none()
    );
}

#[test]
fn signing_keys_sign_with_each_version_and_never_encrypt() {
    let (t, rows) = engine("acme", 2);
    for ty in [
        TransitKeyType::Ed25519,
        TransitKeyType::EcdsaP256,
        TransitKeyType::EcdsaP384,
    ] {
        let name = ty.as_str();
        assert!(t.create_key_of(name, ty, 1).unwrap());
        // a second create of any type changes nothing
        assert!(
            !t.create_key_of(name, TransitKeyType::Aes256Gcm96, 2)
                .unwrap()
        );
        let record = t.read_key(name).unwrap();
        assert_eq!(t.key_type(&record).unwrap(), ty);

        let msg = SignInput::Message(b"pay 10 to bob", Hash::Sha256);
        let (sig1, v1) = t.sign(name, msg, None).unwrap();
        assert_eq!(v1, 1);
        assert!(t.verify(name, msg, 1, &sig1).unwrap());
        let other = SignInput::Message(b"pay 99 to bob", Hash::Sha256);
        assert!(!t.verify(name, other, 1, &sig1).unwrap());

        // the public key is the version's, and an independent verifier agrees
        let keys = t.public_keys(name).unwrap();
        assert_eq!(keys.len(), 1);
        if ty == TransitKeyType::Ed25519 {
            keyhaven_crypto::verify(&keys[0].1, b"pay 10 to bob", &sig1).unwrap();
        } else {
            keyhaven_crypto::hazmat::verify_prehash(
                &keys[0].1,
                &Hash::Sha256.digest(b"pay 10 to bob"),
                &sig1,
            )
            .unwrap();
        }

        // rotation: a new key; the old version still verifies until min_decryption_version
        assert_eq!(t.rotate(name, 3).unwrap(), 2);
        let (sig2, v2) = t.sign(name, msg, None).unwrap();
        assert_eq!(v2, 2);
        let keys = t.public_keys(name).unwrap();
        assert_ne!(keys[0].1, keys[1].1);
        assert!(!t.verify(name, msg, 1, &sig2).unwrap());
        assert!(t.verify(name, msg, 1, &sig1).unwrap());
        t.set_min_decryption_version(name, 2).unwrap();
        let e = t.verify(name, msg, 1, &sig1).unwrap_err();
        assert!(
            e.to_string().contains("min_decryption_version") || e.to_string().contains("too old"),
            "{e}"
        );
        assert!(t.sign(name, msg, Some(1)).is_err());

        // a signing key does not encrypt; an encryption key does not sign
        let e = t.encrypt(name, b"x", None).unwrap_err();
        assert!(e.to_string().contains("does not encrypt"), "{e}");
        assert!(t.data_key(name, 256).is_err());

        // the keys are the same after the cache is dropped (derived, not random per unwrap)
        t.clear_cache();
        assert!(t.verify(name, msg, 2, &sig2).unwrap());
    }
    t.create_key("aes", 1).unwrap();
    let e = t
        .sign("aes", SignInput::Message(b"m", Hash::Sha256), None)
        .unwrap_err();
    assert!(e.to_string().contains("does not sign"), "{e}");

    // ECDSA: any SHA-2 and a caller's digest; Ed25519 refuses a digest
    let digest = Hash::Sha512.digest(b"m");
    let (sig, _) = t
        .sign("ecdsa-p384", SignInput::Digest(&digest), None)
        .unwrap();
    assert!(
        t.verify(
            "ecdsa-p384",
            SignInput::Message(b"m", Hash::Sha512),
            2,
            &sig
        )
        .unwrap()
    );
    assert!(
        !t.verify(
            "ecdsa-p384",
            SignInput::Message(b"m", Hash::Sha256),
            2,
            &sig
        )
        .unwrap()
    );
    assert!(t.sign("ed25519", SignInput::Digest(&digest), None).is_err());

    // the type is sealed into each version: a row moved from another type's key is refused
    {
        let mut r = rows.0.lock().unwrap();
        let p256 = r["ecdsa-p256"].clone();
        let mut forged = p256.clone();
        forged.name = "ed25519".into();
        r.insert("ed25519".into(), forged);
    }
    t.clear_cache();
    let e = t
        .sign("ed25519", SignInput::Message(b"m", Hash::Sha256), None)
        .unwrap_err();
    assert!(matches!(e, EnvelopeError::Malformed { .. }), "{e}");
}
