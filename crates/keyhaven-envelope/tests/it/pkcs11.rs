//! A master key on a real SoftHSM2 token: ECDH P-384 and P-256 keys made for derivation only,
//! used through `CKM_ECDH1_DERIVE`; checked against OpenSSL and `pkcs11-tool`.

use std::sync::Arc;

use keyhaven_core::{Algorithm, ErrorKind, KeyStore, Protection};
use keyhaven_envelope::{Kek, KekScope, MasterKey, SecretContext, WrappedKek};
use keyhaven_hsm_pkcs11::{Pkcs11Config, Pkcs11Store, TokenSelector};
use keyhaven_testkit::devices::{TokenPool, USER_PIN};
use secrecy::SecretString;

fn token_store() -> (Arc<dyn KeyStore>, String) {
    let (module, label) = TokenPool::get("khe", 4).take();
    let config = Pkcs11Config::new(
        module,
        TokenSelector::Label(label.clone()),
        SecretString::from(USER_PIN),
    );
    (Arc::new(Pkcs11Store::open(config).unwrap()), label)
}

#[test]
fn a_master_key_on_the_token_wraps_and_unwraps_keks() {
    let (store, label) = token_store();
    for (alg, name) in [(Algorithm::EcdhP384, "m384"), (Algorithm::EcdhP256, "m256")] {
        let info = store.generate(alg, name).unwrap();
        assert_eq!(info.algorithm, alg);
        assert_eq!(info.protection, Protection::Hardware);
        // read back from the token: still an agreement key (CKA_DERIVE, not CKA_SIGN)
        assert_eq!(store.get(&info.id).unwrap().algorithm, alg);
        let e = store.sign(&info.id, b"no").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");

        let master = MasterKey::new(Arc::clone(&store), name).unwrap();
        let kek = Kek::generate(KekScope::new("acme", 2, 1).unwrap()).unwrap();
        let ctx = SecretContext::new("acme", "db/root", 1, 2).unwrap();
        let env = kek.seal(&ctx, b"from the token").unwrap();
        let stored = master.wrap(&kek).unwrap().to_bytes();
        drop(kek);
        let kek = master
            .unwrap(
                &WrappedKek::from_bytes(&stored).unwrap(),
                &KekScope::new("acme", 2, 1).unwrap(),
            )
            .unwrap();
        assert_eq!(
            kek.open(&ctx, &env).unwrap().expose_secret(),
            b"from the token"
        );

        // OpenSSL's ECDH with the token's public key gives the token's shared secret
        let (own_der, z) = keyhaven_testkit::openssl::agree_with(&info.public_key);
        let theirs = keyhaven_crypto::default_provider()
            .parse_public_key_der_as(alg, &own_der)
            .unwrap();
        assert_eq!(
            store.agree(&info.id, &theirs).unwrap().expose_secret(),
            &z[..],
            "{alg}"
        );
        // a point off the curve never reaches the token
        let mut off = own_der.clone();
        *off.last_mut().unwrap() ^= 1;
        let off = keyhaven_core::PublicKey::new(alg, off);
        let e = store.agree(&info.id, &off).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    // pkcs11-tool (OpenSC) sees the private keys with derive usage and no sign usage
    let listing = TokenPool::get("khe", 4).hsm().pkcs11_tool(
        &label,
        USER_PIN,
        &["--list-objects", "--type", "privkey"],
    );
    for name in ["m384", "m256"] {
        let block = listing
            .split("Private Key Object")
            .find(|b| b.contains(&format!("label:      {name}")))
            .unwrap_or_else(|| panic!("{name} is not listed: {listing}"));
        let usage = block
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap_or_else(|| panic!("no usage line: {block}"));
        assert!(
            usage.contains("derive") && !usage.contains("sign"),
            "{usage}"
        );
    }
    // signing keys on the token refuse to agree
    let signer = store.generate(Algorithm::EcdsaP384, "signer").unwrap();
    let e = MasterKey::new(Arc::clone(&store), "signer").unwrap_err();
    assert!(e.to_string().contains("must do key agreement"), "{e}");
    let (peer, _) = keyhaven_testkit::openssl::agree_with(&signer.public_key);
    let peer = keyhaven_crypto::default_provider()
        .parse_public_key_der(&peer)
        .unwrap();
    let e = store.agree(&signer.id, &peer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}
