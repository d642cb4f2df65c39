//! X25519 key agreement (RFC 7748) with `x25519-dalek`, encoded per RFC 8410.

use der::Decode;
use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};
use zeroize::Zeroizing;

use crate::provider::{KeyAlgorithm, PrivateKey};

/// `id-X25519` (RFC 8410).
pub(crate) const ID_X25519: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.3.101.110");
/// SPKI DER up to the 32 key bytes: SEQUENCE { SEQUENCE { OID id-X25519 }, BIT STRING }.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];
/// PKCS#8 v1 DER up to the 32 key bytes: version 0, id-X25519, OCTET STRING { OCTET STRING }.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// X25519.
#[derive(Debug)]
pub(crate) struct X25519;

struct X25519Key {
    secret: x25519_dalek::StaticSecret,
    public: PublicKey,
}

impl X25519Key {
    fn new(secret: x25519_dalek::StaticSecret) -> Self {
        let point = x25519_dalek::PublicKey::from(&secret);
        X25519Key {
            secret,
            public: public_key(point.as_bytes()),
        }
    }
}

/// The public key with u-coordinate `point`, as SPKI DER.
pub(crate) fn public_key(point: &[u8; 32]) -> PublicKey {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    PublicKey::new(Algorithm::X25519, der)
}

/// A private key as PKCS#8 v1 DER (RFC 8410), as OpenSSL writes it.
pub(crate) fn pkcs8(secret: &[u8; 32]) -> SecretBytes {
    let mut der = Vec::with_capacity(PKCS8_PREFIX.len() + 32);
    der.extend_from_slice(&PKCS8_PREFIX);
    der.extend_from_slice(secret);
    SecretBytes::new(der)
}

/// An X25519 private key read from PKCS#8, and the public key it carries, if any.
pub(crate) type Pkcs8Parts = (Zeroizing<[u8; 32]>, Option<Vec<u8>>);

/// The private key of X25519 PKCS#8 DER, and the public key it carries, if any.
pub(crate) fn parse_pkcs8(der: &[u8]) -> Result<Pkcs8Parts, Error> {
    let bad = || Error::InvalidInput("not a valid X25519 PKCS#8 private key".into());
    let info = pkcs8::PrivateKeyInfoRef::from_der(der).map_err(|_| bad())?;
    if info.algorithm.oid != ID_X25519 || info.algorithm.parameters.is_some() {
        return Err(bad());
    }
    // RFC 8410: the privateKey OCTET STRING holds a CurvePrivateKey, itself an OCTET STRING.
    let inner =
        <&der::asn1::OctetStringRef>::from_der(info.private_key.as_bytes()).map_err(|_| bad())?;
    let bytes: Zeroizing<[u8; 32]> =
        Zeroizing::new(<[u8; 32]>::try_from(inner.as_bytes()).map_err(|_| bad())?);
    let public = info
        .public_key
        .map(|p| p.as_bytes().map(<[u8]>::to_vec).ok_or_else(bad))
        .transpose()?;
    Ok((bytes, public))
}

/// The error for a public key in PKCS#8 that is not the private key's.
pub(crate) fn mismatched() -> Error {
    Error::InvalidInput("the X25519 PKCS#8 public key does not match its private key".into())
}

/// The error for a non-contributory agreement.
pub(crate) fn low_order() -> Error {
    Error::InvalidInput(
        "the peer's X25519 key is a low-order point (the shared secret would be zero)".into(),
    )
}

pub(crate) fn not_signing() -> Error {
    crate::ecdh::not_signing(Algorithm::X25519)
}

/// The 32-byte u-coordinate from X25519 SPKI DER.
pub(crate) fn public_bytes(spki_der: &[u8]) -> Result<[u8; 32], Error> {
    let bad = || Error::InvalidInput("not a valid X25519 public key".into());
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki_der).map_err(|_| bad())?;
    if info.algorithm.oid != ID_X25519 || info.algorithm.parameters.is_some() {
        return Err(bad());
    }
    info.subject_public_key
        .as_bytes()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(bad)
}

impl PrivateKey for X25519Key {
    fn algorithm(&self) -> Algorithm {
        Algorithm::X25519
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, _message: &[u8]) -> Result<Signature, Error> {
        Err(not_signing())
    }

    fn sign_digest(&self, _digest: &[u8]) -> Result<Signature, Error> {
        Err(not_signing())
    }

    fn agree(&self, peer: &PublicKey) -> Result<SecretBytes, Error> {
        Algorithm::X25519.check_peer(peer.algorithm())?;
        let peer = x25519_dalek::PublicKey::from(public_bytes(peer.spki_der())?);
        let shared = self.secret.diffie_hellman(&peer);
        if !shared.was_contributory() {
            return Err(low_order());
        }
        Ok(SecretBytes::copy_from(shared.as_bytes()))
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
        let secret = Zeroizing::new(self.secret.to_bytes());
        Ok(pkcs8(&secret))
    }
}

impl KeyAlgorithm for X25519 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::X25519
    }

    fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
        algorithm.oid == ID_X25519
    }

    fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
        let mut rng = crate::rng::os_rng()?;
        Ok(Box::new(X25519Key::new(
            x25519_dalek::StaticSecret::random_from_rng(&mut rng),
        )))
    }

    fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
        let (bytes, public) = parse_pkcs8(der)?;
        let key = X25519Key::new(x25519_dalek::StaticSecret::from(*bytes));
        if let Some(public) = public
            && public.as_slice() != &key.public.spki_der()[SPKI_PREFIX.len()..]
        {
            return Err(mismatched());
        }
        Ok(Box::new(key))
    }

    fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
        public_bytes(spki_der).map(|_| ())
    }

    fn verify(&self, _spki_der: &[u8], _message: &[u8], _sig: &[u8]) -> Result<(), Error> {
        Err(not_signing())
    }

    fn verify_digest(&self, _spki_der: &[u8], _digest: &[u8], _sig: &[u8]) -> Result<(), Error> {
        Err(not_signing())
    }
}
