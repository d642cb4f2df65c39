//! ECDSA over P-384 and P-256 (RustCrypto `p384` / `p256`), deterministic nonces (RFC 6979).

use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};

use crate::provider::{KeyAlgorithm, PrivateKey};

/// `id-ecPublicKey` (RFC 5480).
const ID_EC_PUBLIC_KEY: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// The error for key agreement asked of a signing key.
pub(crate) fn no_agreement(keys: &str) -> Error {
    Error::Unsupported {
        operation: "do key agreement",
        reason: format!("{keys} keys only sign; use an X25519 or ECDH key"),
    }
}

/// Implements one ECDSA curve. A macro rather than generics: the curve crates' trait bounds
/// would otherwise have to be restated on every function, for no behavioural difference.
macro_rules! ecdsa_curve {
    ($alg_ty:ident, $key_ty:ident, $krate:ident, $curve:ty, $algorithm:expr) => {
        /// ECDSA on this curve.
        #[derive(Debug)]
        pub(crate) struct $alg_ty;

        struct $key_ty {
            signing: $krate::ecdsa::SigningKey,
            public: PublicKey,
        }

        impl $key_ty {
            fn new(signing: $krate::ecdsa::SigningKey) -> Result<Self, Error> {
                use pkcs8::EncodePublicKey;
                let der = signing
                    .verifying_key()
                    .to_public_key_der()
                    .map_err(|_| Error::Crypto)?;
                Ok($key_ty {
                    signing,
                    public: PublicKey::new($algorithm, der.as_bytes().to_vec()),
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

            fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
                use signature::Signer;
                let sig: $krate::ecdsa::Signature =
                    self.signing.try_sign(message).map_err(|_| Error::Crypto)?;
                Signature::from_raw($algorithm, sig.to_bytes().to_vec())
            }

            fn sign_digest(&self, digest: &[u8]) -> Result<Signature, Error> {
                use signature::hazmat::PrehashSigner;
                $algorithm.check_digest(digest)?;
                let sig: $krate::ecdsa::Signature = self
                    .signing
                    .sign_prehash(digest)
                    .map_err(|_| Error::Crypto)?;
                Signature::from_raw($algorithm, sig.to_bytes().to_vec())
            }

            fn agree(&self, _peer: &PublicKey) -> Result<SecretBytes, Error> {
                Err(no_agreement($algorithm.jose_name()))
            }

            fn to_pkcs8_der(&self) -> Result<SecretBytes, Error> {
                use pkcs8::EncodePrivateKey;
                let secret = $krate::SecretKey::from(self.signing.as_nonzero_scalar());
                let doc = secret.to_pkcs8_der().map_err(|_| Error::Crypto)?;
                Ok(SecretBytes::copy_from(doc.as_bytes()))
            }
        }

        impl $alg_ty {
            fn verifying_key(spki_der: &[u8]) -> Result<$krate::ecdsa::VerifyingKey, Error> {
                use pkcs8::DecodePublicKey;
                $krate::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(|_| {
                    Error::InvalidInput(format!(
                        "not a valid {} public key",
                        $algorithm.jose_name()
                    ))
                })
            }

            fn signature(raw: &[u8]) -> Result<$krate::ecdsa::Signature, Error> {
                // Zero or out-of-range r/s can never verify: report it as a bad signature.
                $krate::ecdsa::Signature::from_slice(raw).map_err(|_| Error::BadSignature)
            }
        }

        impl KeyAlgorithm for $alg_ty {
            fn algorithm(&self) -> Algorithm {
                $algorithm
            }

            fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool {
                use $krate::pkcs8::AssociatedOid;
                algorithm.oid == ID_EC_PUBLIC_KEY
                    && algorithm.parameters_oid().ok() == Some(<$curve>::OID)
            }

            fn generate(&self) -> Result<Box<dyn PrivateKey>, Error> {
                use $krate::elliptic_curve::Generate;
                let secret = $krate::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
                    .map_err(|_| Error::Crypto)?;
                Ok(Box::new($key_ty::new($krate::ecdsa::SigningKey::from(
                    &secret,
                ))?))
            }

            fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
                use pkcs8::DecodePrivateKey;
                let secret = $krate::SecretKey::from_pkcs8_der(der).map_err(|_| {
                    Error::InvalidInput(format!(
                        "not a valid {} PKCS#8 private key",
                        $algorithm.jose_name()
                    ))
                })?;
                Ok(Box::new($key_ty::new($krate::ecdsa::SigningKey::from(
                    &secret,
                ))?))
            }

            fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error> {
                Self::verifying_key(spki_der).map(|_| ())
            }

            fn verify(&self, spki_der: &[u8], message: &[u8], sig: &[u8]) -> Result<(), Error> {
                use signature::Verifier;
                let vk = Self::verifying_key(spki_der)?;
                vk.verify(message, &Self::signature(sig)?)
                    .map_err(|_| Error::BadSignature)
            }

            fn verify_digest(
                &self,
                spki_der: &[u8],
                digest: &[u8],
                sig: &[u8],
            ) -> Result<(), Error> {
                use signature::hazmat::PrehashVerifier;
                $algorithm.check_digest(digest)?;
                let vk = Self::verifying_key(spki_der)?;
                vk.verify_prehash(digest, &Self::signature(sig)?)
                    .map_err(|_| Error::BadSignature)
            }
        }
    };
}

ecdsa_curve!(
    EcdsaP384,
    P384Key,
    p384,
    p384::NistP384,
    Algorithm::EcdsaP384
);
ecdsa_curve!(
    EcdsaP256,
    P256Key,
    p256,
    p256::NistP256,
    Algorithm::EcdsaP256
);
