//! The hierarchy with software master keys (X25519, ECDH P-384, ECDH P-256 in memory).

use std::sync::Arc;

use keyhaven_core::{Algorithm, ErrorKind, KeyStore};
use keyhaven_envelope::{
    Envelope, EnvelopeError, Kek, KekScope, MasterKey, SecretContext, WrappedKek, derive_key,
};

use crate::software_master;

const AGREEMENT: [Algorithm; 3] = [Algorithm::X25519, Algorithm::EcdhP384, Algorithm::EcdhP256];

#[test]
fn kek_wraps_and_unwraps_through_the_store_and_secrets_open() {
    for alg in AGREEMENT {
        let (_store, master) = software_master(alg);
        let kek = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
        let wrapped = master.wrap(&kek).unwrap();
        let bytes = wrapped.to_bytes();
        let again = WrappedKek::from_bytes(&bytes).unwrap();
        assert_eq!(again, wrapped);
        assert_eq!(again.scope(), kek.scope());
        assert_eq!(
            again.master_fingerprint(),
            master.info().fingerprint().as_bytes()
        );
        // two wraps of one KEK differ (fresh ephemeral key and nonce)
        assert_ne!(master.wrap(&kek).unwrap().to_bytes(), bytes);

        let ctx = SecretContext::new("acme", "db/password", 3, 1).unwrap();
        let env = kek.seal(&ctx, b"correct horse").unwrap();
        let env = Envelope::from_bytes(&env.to_bytes()).unwrap();
        let unwrapped = master.unwrap(&again, kek.scope()).unwrap();
        assert_eq!(
            unwrapped.open(&ctx, &env).unwrap().expose_secret(),
            b"correct horse",
            "{alg}"
        );
        let n = unwrapped.use_secret(&ctx, &env, <[u8]>::len).unwrap();
        assert_eq!(n, 13);
        // the secret's bytes are nowhere in what is stored
        let stored = [bytes, env.to_bytes()].concat();
        assert!(!stored.windows(13).any(|w| w == b"correct horse"));
    }
}

#[test]
fn empty_and_large_secrets() {
    let kek = Kek::generate(KekScope::new("t", 0, 1).unwrap()).unwrap();
    let ctx = SecretContext::new("t", "p", 0, 0).unwrap();
    for len in [0usize, 1, 64, 4096, 1 << 20] {
        let plain = vec![0x5a; len];
        let env = kek.seal(&ctx, &plain).unwrap();
        assert_eq!(env.ciphertext_len(), len + 16);
        let back = Envelope::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(kek.open(&ctx, &back).unwrap().expose_secret(), &plain[..]);
    }
}

#[test]
fn a_secret_opens_only_in_its_own_context() {
    let kek = Kek::generate(KekScope::new("acme", 2, 1).unwrap()).unwrap();
    let ctx = SecretContext::new("acme", "app/key", 7, 2).unwrap();
    let env = kek.seal(&ctx, b"s3cret").unwrap();
    // another path or version: the associated data differs
    for other in [
        SecretContext::new("acme", "app/key2", 7, 2).unwrap(),
        SecretContext::new("acme", "app/ke", 7, 2).unwrap(),
        SecretContext::new("acme", "app/key", 8, 2).unwrap(),
    ] {
        assert!(
            matches!(
                kek.open(&other, &env),
                Err(EnvelopeError::Unauthentic { .. })
            ),
            "{other:?}"
        );
    }
    // another tenant or tier: this KEK is not theirs
    for other in [
        SecretContext::new("acme2", "app/key", 7, 2).unwrap(),
        SecretContext::new("acme", "app/key", 7, 1).unwrap(),
    ] {
        let e = kek.open(&other, &env).unwrap_err();
        assert!(matches!(e, EnvelopeError::WrongKek { .. }), "{e}");
        let core: keyhaven_core::Error = e.into();
        assert_eq!(core.kind(), ErrorKind::InvalidInput);
    }
    // and sealing for another tenant or tier with this KEK is refused
    let other_tier = SecretContext::new("acme", "app/key", 7, 3).unwrap();
    assert!(matches!(
        kek.seal(&other_tier, b"x"),
        Err(EnvelopeError::WrongKek { .. })
    ));
    // another KEK of the very same scope (a stand-in planted in its place): the DEK does not
    // unwrap
    let stand_in = Kek::generate(KekScope::new("acme", 2, 1).unwrap()).unwrap();
    assert!(matches!(
        stand_in.open(&ctx, &env),
        Err(EnvelopeError::Unauthentic { .. })
    ));
}

#[test]
fn a_lower_tier_kek_cannot_open_a_higher_tier_secret() {
    let tier1 = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
    let tier2 = Kek::generate(KekScope::new("acme", 2, 1).unwrap()).unwrap();
    let ctx2 = SecretContext::new("acme", "gpu/model-key", 1, 2).unwrap();
    let env = tier2.seal(&ctx2, b"weights key").unwrap();
    let e = tier1.open(&ctx2, &env).unwrap_err();
    assert!(matches!(e, EnvelopeError::WrongKek { tier: 2, .. }), "{e}");
    // claiming the secret is tier 1 changes its associated data: it does not open either
    let ctx1 = SecretContext::new("acme", "gpu/model-key", 1, 1).unwrap();
    assert!(tier1.open(&ctx1, &env).is_err());
}

#[test]
fn rotation_rewraps_deks_without_touching_the_data() {
    let (_store, master) = software_master(Algorithm::EcdhP384);
    let v1 = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
    let contexts: Vec<SecretContext> = (0..20)
        .map(|i| SecretContext::new("acme", &format!("s/{i}"), 1, 1).unwrap())
        .collect();
    let envs: Vec<Envelope> = contexts
        .iter()
        .map(|c| v1.seal(c, c.path().as_bytes()).unwrap())
        .collect();
    let v2 = Kek::generate(v1.scope().next().unwrap()).unwrap();
    assert_eq!(v2.scope().version(), 2);
    let stored_v2 = master.wrap(&v2).unwrap().to_bytes();
    let v2 = master
        .unwrap(&WrappedKek::from_bytes(&stored_v2).unwrap(), v2.scope())
        .unwrap();
    for (ctx, env) in contexts.iter().zip(&envs) {
        let moved = v2.rewrap(&v1, ctx, env).unwrap();
        assert_eq!(moved.kek_version(), 2);
        // the data ciphertext is the same bytes: only the DEK's wrapping changed
        let (a, b) = (env.to_bytes(), moved.to_bytes());
        assert_eq!(a[4 + 4 + 12 + 48..], b[4 + 4 + 12 + 48..]);
        assert_ne!(a[..4 + 4 + 12 + 48], b[..4 + 4 + 12 + 48]);
        assert_eq!(
            v2.open(ctx, &moved).unwrap().expose_secret(),
            ctx.path().as_bytes()
        );
        // the old KEK no longer opens the moved envelope, the new one not the old envelope
        assert!(matches!(
            v1.open(ctx, &moved),
            Err(EnvelopeError::WrongKek { needed: 2, .. })
        ));
        assert!(matches!(
            v2.open(ctx, env),
            Err(EnvelopeError::WrongKek { needed: 1, .. })
        ));
    }
    // rewrapping into another tier or from the wrong old KEK is refused
    let other_tier = Kek::generate(KekScope::new("acme", 2, 3).unwrap()).unwrap();
    assert!(other_tier.rewrap(&v1, &contexts[0], &envs[0]).is_err());
    assert!(v2.rewrap(&v2, &contexts[0], &envs[0]).is_err());
}

#[test]
fn a_kek_of_another_master_is_refused_by_name() {
    let (_a, master_a) = software_master(Algorithm::X25519);
    let (_b, master_b) = software_master(Algorithm::X25519);
    let kek = Kek::generate(KekScope::new("acme", 1, 4).unwrap()).unwrap();
    let wrapped = master_a.wrap(&kek).unwrap();
    let e = master_b.unwrap(&wrapped, kek.scope()).unwrap_err();
    assert!(
        matches!(e, EnvelopeError::WrongMaster { version: 4, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("tenant 'acme' tier 1 version 4"),
        "{e}"
    );
    let core: keyhaven_core::Error = e.into();
    assert_eq!(core.kind(), ErrorKind::Corrupt);
}

#[test]
fn signing_keys_are_not_master_keys() {
    let store: Arc<dyn KeyStore> = Arc::new(keyhaven_store_memory::MemoryStore::new().unwrap());
    store.generate(Algorithm::EcdsaP384, "signer").unwrap();
    let e = MasterKey::new(Arc::clone(&store), "signer").unwrap_err();
    assert!(matches!(e, EnvelopeError::NotAgreementKey { .. }), "{e}");
    assert!(e.to_string().contains("ecdh-p384"), "{e}");
    let e = MasterKey::new(store, "missing").unwrap_err();
    let core: keyhaven_core::Error = e.into();
    assert_eq!(core.kind(), ErrorKind::NotFound);
}

#[test]
fn bad_scopes_and_contexts_are_refused() {
    assert!(KekScope::new("", 1, 1).is_err());
    assert!(KekScope::new(&"t".repeat(256), 1, 1).is_err());
    assert!(KekScope::new("t\n", 1, 1).is_err());
    assert!(KekScope::new("t", 5, 1).is_err());
    assert!(KekScope::new("t", 1, 0).is_err());
    assert!(KekScope::new("t", 1, u32::MAX).unwrap().next().is_err());
    assert!(SecretContext::new("t", "", 1, 1).is_err());
    assert!(SecretContext::new("t", &"p".repeat(1025), 1, 1).is_err());
    assert!(SecretContext::new("t", "p", 1, 9).is_err());
    assert!(SecretContext::new("t", &"p".repeat(1024), u64::MAX, 4).is_ok());
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let kek = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
    let ctx = SecretContext::new("acme", "p", 1, 1).unwrap();
    let env = kek.seal(&ctx, b"visible?").unwrap();
    let text = format!("{kek:?} {env:?}");
    assert!(text.contains("acme") && !text.contains("visible"), "{text}");
}

/// The store's agreement plus our HKDF give what OpenSSL's ECDH (`pkeyutl -derive`) plus
/// OpenSSL's HKDF (`openssl kdf HKDF`) give: derive_key is standard ECDH + RFC 5869.
#[test]
fn derive_key_matches_openssl_ecdh_and_hkdf() {
    for alg in AGREEMENT {
        let (store, master) = software_master(alg);
        let (own_der, z) = keyhaven_testkit::openssl::agree_with(&master.info().public_key);
        let openssl_key = keyhaven_crypto::default_provider()
            .parse_public_key_der_as(alg, &own_der)
            .unwrap();
        assert_eq!(
            store
                .agree(&master.info().id, &openssl_key)
                .unwrap()
                .expose_secret(),
            &z[..],
            "{alg}: ECDH"
        );
        let ours = derive_key(
            store.as_ref(),
            &master.info().id,
            &openssl_key,
            b"salt",
            b"keyhaven test",
            42,
        )
        .unwrap();
        let theirs = keyhaven_testkit::openssl::hkdf_sha256(&z, b"salt", b"keyhaven test", 42);
        assert_eq!(ours.expose_secret(), &theirs[..], "{alg}: HKDF");
        // the master key's own derive_key labels its info (kept apart from the wrapping keys)
        let labelled = keyhaven_testkit::openssl::hkdf_sha256(
            &z,
            b"salt",
            b"keyhaven-envelope/v1 derive\0keyhaven test",
            42,
        );
        assert_eq!(
            master
                .derive_key(&openssl_key, b"salt", b"keyhaven test", 42)
                .unwrap()
                .expose_secret(),
            &labelled[..]
        );
    }
}

/// An attacker who knows only the master's public key wraps a KEK of their own the way plain
/// ECIES would (no backend involved) and plants it: it is refused, because a wrap needs the
/// master's own agreement `S`, which only the backend can compute.
#[test]
fn a_kek_wrapped_with_the_public_key_alone_is_refused() {
    use keyhaven_crypto::aead::Sealer;
    for alg in AGREEMENT {
        let (store, master) = software_master(alg);
        let public = master.info().public_key.clone();
        let scope = KekScope::new("acme", 1, 1).unwrap();
        let eph = keyhaven_crypto::default_provider().generate(alg).unwrap();
        let z = eph.agree(&public).unwrap();
        // the layout documented on WrappedKek
        let code = match alg {
            Algorithm::X25519 => 1u8,
            Algorithm::EcdhP384 => 2,
            _ => 3,
        };
        let mut header = b"khk1".to_vec();
        header.push(code);
        header.extend_from_slice(public.fingerprint().as_bytes());
        header.push(1);
        header.extend_from_slice(&1u32.to_be_bytes());
        header.extend_from_slice(&4u16.to_be_bytes());
        header.extend_from_slice(b"acme");
        let spki = eph.public_key().spki_der();
        header.extend_from_slice(&u16::try_from(spki.len()).unwrap().to_be_bytes());
        header.extend_from_slice(spki);
        let mut info = b"keyhaven-envelope/v1 kek-wrap\0".to_vec();
        info.extend_from_slice(public.spki_der());
        let attacker_kek = [0x41u8; 32];
        for ikm in [
            z.expose_secret().to_vec(),
            [z.expose_secret(), &[0u8; 48][..]].concat(),
        ] {
            let wk = keyhaven_crypto::kdf::derive_key(&ikm, spki, &info, 32).unwrap();
            let (nonce, sealed) = Sealer::new(wk.expose_secret())
                .unwrap()
                .seal(&attacker_kek, &header)
                .unwrap();
            let forged = [header.clone(), nonce.to_vec(), sealed].concat();
            let parsed = WrappedKek::from_bytes(&forged).unwrap();
            assert_eq!(parsed.scope(), &scope, "the forgery is well-formed");
            let e = master.unwrap(&parsed, &scope).unwrap_err();
            assert!(matches!(e, EnvelopeError::Unauthentic { .. }), "{alg}: {e}");
        }
        // a genuine wrap made by a second opening of the same master key unwraps
        let kek = Kek::generate(scope.clone()).unwrap();
        let again = MasterKey::new(Arc::clone(&store), "master").unwrap();
        assert!(again.unwrap(&master.wrap(&kek).unwrap(), &scope).is_ok());
        // and the master's own derive_key never gives a wrapping key: its info is labelled
        let d = master
            .derive_key(eph.public_key(), spki, &info[..0], 32)
            .unwrap();
        let plain = derive_key(
            store.as_ref(),
            &master.info().id,
            eph.public_key(),
            spki,
            b"",
            32,
        )
        .unwrap();
        assert_ne!(d, plain);
    }
}

/// A row of an old KEK version copied over a newer one (a rollback) is refused by scope.
#[test]
fn an_old_version_in_a_newer_row_is_refused() {
    let (_store, master) = software_master(Algorithm::X25519);
    let v1 = Kek::generate(KekScope::new("acme", 1, 1).unwrap()).unwrap();
    let old_row = master.wrap(&v1).unwrap().to_bytes();
    let v2_scope = v1.scope().next().unwrap();
    let e = master
        .unwrap(&WrappedKek::from_bytes(&old_row).unwrap(), &v2_scope)
        .unwrap_err();
    assert!(
        matches!(e, EnvelopeError::WrongKek { needed: 2, .. }),
        "{e}"
    );
}

/// A record whose public key was swapped for an attacker's: the master key refuses to open
/// (every wrap would otherwise be made to the attacker's key).
#[test]
fn a_swapped_public_key_is_caught_when_the_master_key_opens() {
    let (store, master) = software_master(Algorithm::EcdhP384);
    let other = store.generate(Algorithm::EcdhP384, "other").unwrap();
    let liar: Arc<dyn KeyStore> = Arc::new(SwappedPublicKey {
        inner: Arc::clone(&store),
        target: master.info().id.clone(),
        fake: other.public_key.clone(),
    });
    let e = MasterKey::new(liar, "master").unwrap_err();
    assert!(matches!(e, EnvelopeError::Unauthentic { .. }), "{e}");
    assert!(e.to_string().contains("recorded public key"), "{e}");
}

/// A store whose record of one key carries another key's public key.
struct SwappedPublicKey {
    inner: Arc<dyn KeyStore>,
    target: keyhaven_core::KeyId,
    fake: keyhaven_core::PublicKey,
}

impl SwappedPublicKey {
    fn lie(&self, mut info: keyhaven_core::KeyInfo) -> keyhaven_core::KeyInfo {
        if info.id == self.target {
            info.public_key = self.fake.clone();
        }
        info
    }
}

impl KeyStore for SwappedPublicKey {
    fn info(&self) -> keyhaven_core::BackendInfo {
        self.inner.info()
    }
    fn generate(&self, a: Algorithm, l: &str) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
        self.inner.generate(a, l)
    }
    fn list(&self) -> keyhaven_core::Result<Vec<keyhaven_core::KeyInfo>> {
        Ok(self
            .inner
            .list()?
            .into_iter()
            .map(|i| self.lie(i))
            .collect())
    }
    fn get(&self, id: &keyhaven_core::KeyId) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
        Ok(self.lie(self.inner.get(id)?))
    }
    fn find_by_label(&self, l: &str) -> keyhaven_core::Result<keyhaven_core::KeyInfo> {
        Ok(self.lie(self.inner.find_by_label(l)?))
    }
    fn sign(
        &self,
        id: &keyhaven_core::KeyId,
        m: &[u8],
    ) -> keyhaven_core::Result<keyhaven_core::Signature> {
        self.inner.sign(id, m)
    }
    fn sign_digest(
        &self,
        id: &keyhaven_core::KeyId,
        d: &[u8],
    ) -> keyhaven_core::Result<keyhaven_core::Signature> {
        self.inner.sign_digest(id, d)
    }
    fn agree(
        &self,
        id: &keyhaven_core::KeyId,
        p: &keyhaven_core::PublicKey,
    ) -> keyhaven_core::Result<keyhaven_core::SecretBytes> {
        self.inner.agree(id, p)
    }
    fn delete(&self, id: &keyhaven_core::KeyId) -> keyhaven_core::Result<()> {
        self.inner.delete(id)
    }
}
