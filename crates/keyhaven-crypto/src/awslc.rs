//! The aws-lc-rs provider (cargo feature `aws-lc-rs`): ECDSA P-384 and P-256, Ed25519 and
//! X25519 from AWS-LC, the C library behind aws-lc-rs, with assembly for this machine's
//! instructions. Keys are read and written in the same PKCS#8 and SPKI forms as the RustCrypto
//! provider's, so a store written with one provider is read by the other.
//!
//! Differences that are not visible in any format: ECDSA signatures are randomised here
//! (AWS-LC mixes fresh randomness into the nonce) where RustCrypto's are deterministic (RFC
//! 6979); both verify everywhere. Ed25519 public keys of small order are refused here as
//! there, by the same check ([`crate::eddsa`]'s), before AWS-LC verifies.

use aws_lc_rs::encoding::{AsBigEndian, AsDer, Curve25519SeedBin, PublicKeyX509Der};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, EcdsaVerificationAlgorithm, Ed25519KeyPair, KeyPair,
    UnparsedPublicKey,
};
use aws_lc_rs::{agreement, digest, rand};
use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};
use zeroize::Zeroizing;

use crate::provider::{CryptoProvider, KeyAlgorithm, PrivateKey};
use crate::x25519;

/// The aws-lc-rs provider.
pub(crate) static AWS_LC: CryptoProvider = CryptoProvider {
    name: "aws-lc-rs",
    // ECDH on the NIST curves is RustCrypto's in both providers: an agreement is made once per
    // key unwrap, not per request, so it is not where the time goes.
    algorithms: &[
        &EcdsaP384,
        &EcdsaP256,
        &Ed25519,
        &X25519,
        &crate::ecdh::EcdhP384,
        &crate::ecdh::EcdhP256,
    ],
};

/// One ECDSA curve: its algorithms in AWS-LC and its hash.
struct Curve {
    algorithm: Algorithm,
    signing: &'static EcdsaSigningAlgorithm,
    verification: &'static EcdsaVerificationAlgorithm,
    hash: &'static digest::Algorithm,
}

const P384: Curve = Curve {
    algorithm: Algorithm::EcdsaP384,
    signing: &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    verification: &signature::ECDSA_P384_SHA384_FIXED,
    hash: &digest::SHA384,
};

const P256: Curve = Curve {
    algorithm: Algorithm::EcdsaP256,
    signing: &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    verification: &signature::ECDSA_P256_SHA256_FIXED,
    hash: &digest::SHA256,
};

struct EcdsaKey {
    curve: &'static Curve,
    pair: EcdsaKeyPair,
    public: PublicKey,
}

impl EcdsaKey {
    fn new(curve: &'static Curve, pair: EcdsaKeyPair) -> Result<Self, Error> {
        let der: PublicKeyX509Der<'static> =
            pair.public_key().as_der().map_err(|_| Error::Crypto)?;
        Ok(EcdsaKey {
            curve,
            public: PublicKey::new(curve.algorithm, der.as_ref().to_vec()),
            pair,
        })
    }
}

impl PrivateKey for EcdsaKey {
    fn algorithm(&self) -> Algorithm {
        self.curve.algorithm
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        let sig = self
            .pair
            .sign(&rand::SystemRandom::new(), message)
            .map_err(|_| Error::Crypto)?;
        Signature::from_raw(self.curve.algorithm, sig.as_ref().to_vec())
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Signature, Error> {
        self.curve.algorithm.check_digest(digest)?;
        let d = digest::Digest::import_less_safe(digest, self.curve.hash)
            .map_err(|_| Error::InvalidInput("a digest of the wrong length".into()))?;
        let sig = self.pair.sign_digest(&d).map_err(|_| Error::Crypto)?;
        Signature::from_raw(self.curve.algorithm, sig.as_ref().to_vec())
    }

    fn agree(&self, _peer: &PublicKey) -> Result<SecretBytes, Error> {
        Err(crate::ecdsa_impl::no_agreement(
            self.curve.algorithm.jose_name(),
        ))
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
        let doc = self.pair.to_pkcs8v1().map_err(|_| Error::Crypto)?;
        Ok(SecretBytes::copy_from(doc.as_ref()))
    }
}

/// ECDSA on P-384 (SHA-384).
#[derive(Debug)]
struct EcdsaP384;
/// ECDSA on P-256 (SHA-256).
#[derive(Debug)]
struct EcdsaP256;

/// The curve-independent part of both ECDSA implementations.
trait Ecdsa {
    const CURVE: &'static Curve;

    /// The key to verify with: SPKI DER of this curve (AWS-LC would also take a bare point;
    /// the RustCrypto provider takes SPKI only, and so does this one). The point itself is
    /// checked by AWS-LC as it verifies.
    fn public(spki_der: &[u8]) -> Result<UnparsedPublicKey<&[u8]>, Error> {
        let bad = || {
            Error::InvalidInput(format!(
                "not a valid {} public key",
                Self::CURVE.algorithm.jose_name()
            ))
        };
        let info = <spki::SubjectPublicKeyInfoRef<'_> as der::Decode>::from_der(spki_der)
            .map_err(|_| bad())?;
        let curve_ok = crate::provider::rustcrypto_provider()
            .algorithm(Self::CURVE.algorithm)
            .is_ok_and(|a| a.matches_spki(&info.algorithm));
        if !curve_ok {
            return Err(bad());
        }
        Ok(UnparsedPublicKey::new(Self::CURVE.verification, spki_der))
    }
}

impl Ecdsa for EcdsaP384 {
    const CURVE: &'static Curve = &P384;
}
impl Ecdsa for EcdsaP256 {
    const CURVE: &'static Curve = &P256;
}

macro_rules! ecdsa_algorithm {
    ($ty:ty) => {
        impl KeyAlgorithm for $ty {
            fn algorithm(&self) -> Algorithm {
                <$ty as Ecdsa>::CURVE.algorithm
            }

            fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
                crate::provider::rustcrypto_provider()
                    .algorithm(<$ty as Ecdsa>::CURVE.algorithm)
                    .is_ok_and(|a| a.matches_spki(algorithm))
            }

            fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
                let curve = <$ty as Ecdsa>::CURVE;
                let pair = EcdsaKeyPair::generate(curve.signing).map_err(|_| Error::Crypto)?;
                Ok(Box::new(EcdsaKey::new(curve, pair)?))
            }

            fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
                let curve = <$ty as Ecdsa>::CURVE;
                let pair = EcdsaKeyPair::from_pkcs8(curve.signing, der).map_err(|_| {
                    Error::InvalidInput(format!(
                        "not a valid {} PKCS#8 private key",
                        curve.algorithm.jose_name()
                    ))
                })?;
                Ok(Box::new(EcdsaKey::new(curve, pair)?))
            }

            fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
                let curve = <$ty as Ecdsa>::CURVE;
                <$ty as Ecdsa>::public(spki_der)?;
                // The point on the curve, as AWS-LC reads it.
                signature::ParsedPublicKey::new(curve.verification, spki_der)
                    .map(|_| ())
                    .map_err(|_| {
                        Error::InvalidInput(format!(
                            "not a valid {} public key",
                            curve.algorithm.jose_name()
                        ))
                    })
            }

            fn verify(&self, spki_der: &[u8], message: &[u8], sig: &[u8]) -> Result<(), Error> {
                <$ty as Ecdsa>::public(spki_der)?
                    .verify(message, sig)
                    .map_err(|_| Error::BadSignature)
            }

            fn verify_digest(
                &self,
                spki_der: &[u8],
                digest: &[u8],
                sig: &[u8],
            ) -> Result<(), Error> {
                let curve = <$ty as Ecdsa>::CURVE;
                curve.algorithm.check_digest(digest)?;
                let d = digest::Digest::import_less_safe(digest, curve.hash)
                    .map_err(|_| Error::InvalidInput("a digest of the wrong length".into()))?;
                <$ty as Ecdsa>::public(spki_der)?
                    .verify_digest(&d, sig)
                    .map_err(|_| Error::BadSignature)
            }
        }
    };
}

ecdsa_algorithm!(EcdsaP384);
ecdsa_algorithm!(EcdsaP256);

/// Ed25519.
#[derive(Debug)]
struct Ed25519;

struct Ed25519Key {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl Ed25519Key {
    fn new(pair: Ed25519KeyPair) -> Self {
        let point = pair.public_key().as_ref();
        let mut der = crate::eddsa::SPKI_PREFIX.to_vec();
        der.extend_from_slice(point);
        Ed25519Key {
            public: PublicKey::new(Algorithm::Ed25519, der),
            pair,
        }
    }
}

impl PrivateKey for Ed25519Key {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        let sig = self.pair.try_sign(message).map_err(|_| Error::Crypto)?;
        Signature::from_raw(Algorithm::Ed25519, sig.as_ref().to_vec())
    }

    fn sign_digest(&self, _digest: &[u8]) -> Result<Signature, Error> {
        Err(crate::eddsa::no_prehash())
    }

    fn agree(&self, _peer: &PublicKey) -> Result<SecretBytes, Error> {
        Err(crate::ecdsa_impl::no_agreement("Ed25519"))
    }

    /// PKCS#8 v1 (RFC 8410), as OpenSSL and the RustCrypto provider write it.
    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
        let doc = self.pair.to_pkcs8v1().map_err(|_| Error::Crypto)?;
        Ok(SecretBytes::copy_from(doc.as_ref()))
    }
}

impl KeyAlgorithm for Ed25519 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }

    fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
        crate::eddsa::Ed25519.matches_spki(algorithm)
    }

    fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
        let pair = Ed25519KeyPair::generate().map_err(|_| Error::Crypto)?;
        Ok(Box::new(Ed25519Key::new(pair)))
    }

    fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
        // v1 (no public key) and v2 (a public key, checked against the private one).
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| Error::InvalidInput("not a valid Ed25519 PKCS#8 private key".into()))?;
        Ok(Box::new(Ed25519Key::new(pair)))
    }

    fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
        crate::eddsa::Ed25519.check_public_key(spki_der)
    }

    fn verify(&self, spki_der: &[u8], message: &[u8], sig: &[u8]) -> Result<(), Error> {
        let point = crate::eddsa::checked_point(spki_der)?;
        UnparsedPublicKey::new(&signature::ED25519, point)
            .verify(message, sig)
            .map_err(|_| Error::BadSignature)
    }

    fn verify_digest(&self, _spki_der: &[u8], _digest: &[u8], _sig: &[u8]) -> Result<(), Error> {
        Err(crate::eddsa::no_prehash())
    }
}

/// X25519.
#[derive(Debug)]
struct X25519;

struct X25519Key {
    private: agreement::PrivateKey,
    public: PublicKey,
}

impl X25519Key {
    fn new(private: agreement::PrivateKey) -> Result<Self, Error> {
        let point = private.compute_public_key().map_err(|_| Error::Crypto)?;
        let point: [u8; 32] = point.as_ref().try_into().map_err(|_| Error::Crypto)?;
        Ok(X25519Key {
            private,
            public: x25519::public_key(&point),
        })
    }

    fn secret(&self) -> Result<Zeroizing<[u8; 32]>, Error> {
        let bin: Curve25519SeedBin<'static> =
            self.private.as_be_bytes().map_err(|_| Error::Crypto)?;
        let bytes = Zeroizing::new(<[u8; 32]>::try_from(bin.as_ref()).map_err(|_| Error::Crypto)?);
        Ok(bytes)
    }
}

impl PrivateKey for X25519Key {
    fn algorithm(&self) -> Algorithm {
        Algorithm::X25519
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, _message: &[u8]) -> Result<Signature, Error> {
        Err(x25519::not_signing())
    }

    fn sign_digest(&self, _digest: &[u8]) -> Result<Signature, Error> {
        Err(x25519::not_signing())
    }

    fn agree(&self, peer: &PublicKey) -> Result<SecretBytes, Error> {
        if peer.algorithm() != Algorithm::X25519 {
            return Err(Error::InvalidInput(format!(
                "X25519 agreement needs an X25519 peer key, got {}",
                peer.algorithm()
            )));
        }
        let point = x25519::public_bytes(peer.spki_der())?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, point);
        // AWS-LC refuses a result of all zeros (a low-order peer point), as RFC 7748 allows.
        agreement::agree(&self.private, peer, x25519::low_order(), |shared| {
            Ok(SecretBytes::copy_from(shared))
        })
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
        let secret = self.secret()?;
        Ok(x25519::pkcs8(&secret))
    }
}

impl KeyAlgorithm for X25519 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::X25519
    }

    fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
        algorithm.oid == x25519::ID_X25519
    }

    fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
        let private =
            agreement::PrivateKey::generate(&agreement::X25519).map_err(|_| Error::Crypto)?;
        Ok(Box::new(X25519Key::new(private)?))
    }

    fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
        let (secret, public) = x25519::parse_pkcs8(der)?;
        let private = agreement::PrivateKey::from_private_key(&agreement::X25519, secret.as_ref())
            .map_err(|_| Error::InvalidInput("not a valid X25519 PKCS#8 private key".into()))?;
        let key = X25519Key::new(private)?;
        if let Some(public) = public
            && public.as_slice() != &key.public.spki_der()[key.public.spki_der().len() - 32..]
        {
            return Err(x25519::mismatched());
        }
        Ok(Box::new(key))
    }

    fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
        x25519::public_bytes(spki_der).map(|_| ())
    }

    fn verify(&self, _spki_der: &[u8], _message: &[u8], _sig: &[u8]) -> Result<(), Error> {
        Err(x25519::not_signing())
    }

    fn verify_digest(&self, _spki_der: &[u8], _digest: &[u8], _sig: &[u8]) -> Result<(), Error> {
        Err(x25519::not_signing())
    }
}
