//! ECDH over P-384 and P-256 (RustCrypto `p384` / `p256`): agreement-only keys on the NIST
//! curves, encoded like ECDSA keys (`id-ecPublicKey` with the curve's OID, as OpenSSL writes
//! them). The encodings do not say which use a key was made for, so these keys are never
//! identified from DER alone: callers load them with
//! [`CryptoProvider::load_pkcs8_as`](crate::CryptoProvider::load_pkcs8_as).

use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};

use crate::provider::{KeyAlgorithm, PrivateKey};

/// The error for signing asked of an agreement key.
pub(crate) fn not_signing(algorithm: Algorithm) -> Error {
    Error::Unsupported {
        operation: "sign",
        reason: format!(
            "{} keys do key agreement only; use an ECDSA or Ed25519 key to sign",
            algorithm.display_name()
        ),
    }
}

macro_rules! ecdh_curve {
    ($alg_ty:ident, $key_ty:ident, $krate:ident, $algorithm:expr) => {
        /// ECDH on this curve.
        #[derive(Debug)]
        pub(crate) struct $alg_ty;

        struct $key_ty {
            secret: $krate::SecretKey,
            public: PublicKey,
        }

        impl $key_ty {
            fn new(secret: $krate::SecretKey) -> Result<Self, Error> {
                use pkcs8::EncodePublicKey;
                let der = secret
                    .public_key()
                    .to_public_key_der()
                    .map_err(|_| Error::Crypto)?;
                Ok($key_ty {
                    secret,
                    public: PublicKey::new($algorithm, der.as_bytes().to_vec()),
                })
            }
        }

        impl $alg_ty {
            fn peer_point(spki_der: &[u8]) -> Result<$krate::PublicKey, Error> {
                use pkcs8::DecodePublicKey;
                // Decoding checks the point is on the curve and not the identity.
                $krate::PublicKey::from_public_key_der(spki_der).map_err(|_| {
                    Error::InvalidInput(format!(
                        "not a valid {} public key (malformed, or not on the curve)",
                        $algorithm.nist_curve().unwrap_or("NIST")
                    ))
                })
            }
        }

        impl PrivateKey for $key_ty {
            fn algorithm(&self) -> Algorithm {
                $algorithm
            }

            fn public_key(&self) -> &PublicKey {
                &self.public
            }

            fn sign(&self, _message: &[u8]) -> Result<Signature, Error> {
                Err(not_signing($algorithm))
            }

            fn sign_digest(&self, _digest: &[u8]) -> Result<Signature, Error> {
                Err(not_signing($algorithm))
            }

            fn agree(&self, peer: &PublicKey) -> Result<SecretBytes, Error> {
                $algorithm.check_peer(peer.algorithm())?;
                let peer = $alg_ty::peer_point(peer.spki_der())?;
                let shared =
                    $krate::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
                Ok(SecretBytes::copy_from(shared.raw_secret_bytes().as_slice()))
            }

            fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
                use pkcs8::EncodePrivateKey;
                let doc = self.secret.to_pkcs8_der().map_err(|_| Error::Crypto)?;
                Ok(SecretBytes::copy_from(doc.as_bytes()))
            }
        }

        impl KeyAlgorithm for $alg_ty {
            fn algorithm(&self) -> Algorithm {
                $algorithm
            }

            fn matches_spki(&self, _algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
                // The DER is an ECDSA key's: identifying it is the caller's job (see the
                // module documentation).
                false
            }

            fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
                use $krate::elliptic_curve::Generate;
                let secret = $krate::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
                    .map_err(|_| Error::Crypto)?;
                Ok(Box::new($key_ty::new(secret)?))
            }

            fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
                use pkcs8::DecodePrivateKey;
                let secret = $krate::SecretKey::from_pkcs8_der(der).map_err(|_| {
                    Error::InvalidInput(format!(
                        "not a valid {} PKCS#8 private key",
                        $algorithm.display_name()
                    ))
                })?;
                Ok(Box::new($key_ty::new(secret)?))
            }

            fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
                $alg_ty::peer_point(spki_der).map(|_| ())
            }

            fn verify(&self, _spki_der: &[u8], _message: &[u8], _sig: &[u8]) -> Result<(), Error> {
                Err(not_signing($algorithm))
            }

            fn verify_digest(
                &self,
                _spki_der: &[u8],
                _digest: &[u8],
                _sig: &[u8],
            ) -> Result<(), Error> {
                Err(not_signing($algorithm))
            }
        }
    };
}

ecdh_curve!(EcdhP384, EcdhP384Key, p384, Algorithm::EcdhP384);
ecdh_curve!(EcdhP256, EcdhP256Key, p256, Algorithm::EcdhP256);
