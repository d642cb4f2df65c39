//! The provider interface: a small set of trait objects, in the manner of rustls's
//! `CryptoProvider`, so that another implementation (aws-lc-rs, say) can replace RustCrypto
//! without touching the stores.

use std::fmt;

use keyhaven_core::{Algorithm, Error, PublicKey, SecretBytes, Signature};

use crate::{ecdh, ecdsa_impl, eddsa, encoding, x25519};

/// A loaded private key. Its secret is zeroized when it is dropped.
pub trait PrivateKey: Send + Sync {
    /// The key's algorithm.
    fn algorithm(&self) -> Algorithm;

    /// The matching public key.
    fn public_key(&self) -> &PublicKey;

    /// Signs a message (ECDSA: hashed with the curve's hash; the RustCrypto provider's nonces
    /// are deterministic, RFC 6979, AWS-LC's randomised).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for X25519 keys.
    fn sign(&self, message: &[u8]) -> Result<Signature, Error>;

    /// Signs a prehashed digest (ECDSA only; the length must be the curve hash's).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a wrong length, [`Error::Unsupported`] for other algorithms.
    fn sign_digest(&self, digest: &[u8]) -> Result<Signature, Error>;

    /// Key agreement (X25519, ECDH P-384, ECDH P-256): the raw shared secret.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for signing keys, [`Error::InvalidInput`] for a peer key of another
    /// algorithm or one that gives a non-contributory (all-zero) result.
    fn agree(&self, peer: &PublicKey) -> Result<SecretBytes, Error>;

    /// The private key as PKCS#8 DER. Hazardous: only stores that encrypt it call this.
    ///
    /// # Errors
    /// [`Error::Crypto`] if encoding fails.
    fn to_pkcs8_der(&self) -> Result<SecretBytes, Error>;
}

impl fmt::Debug for dyn PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .field("public_key", self.public_key())
            .finish_non_exhaustive()
    }
}

/// One algorithm's implementation.
pub trait KeyAlgorithm: Send + Sync + fmt::Debug {
    /// Which algorithm this implements.
    fn algorithm(&self) -> Algorithm;

    /// The PKCS#8 / SPKI algorithm OID (and curve OID for ECDSA) that identifies it.
    fn matches_spki(&self, algorithm: &spki::AlgorithmIdentifierRef<'_>) -> bool;

    /// Generates a fresh key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Crypto`] if no randomness is available.
    fn generate(&self) -> Result<Box<dyn PrivateKey>, Error>;

    /// Loads a key from PKCS#8 DER.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the DER is malformed or of another algorithm.
    fn load_pkcs8_der(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error>;

    /// Checks SPKI DER is a valid public key of this algorithm (on the curve, right length).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying what is wrong.
    fn check_public_key(&self, spki_der: &[u8]) -> Result<(), Error>;

    /// Verifies a signature over a message.
    ///
    /// # Errors
    /// [`Error::BadSignature`] if it does not verify; [`Error::InvalidInput`] for a bad key.
    fn verify(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), Error>;

    /// Verifies a signature over a prehashed digest.
    ///
    /// # Errors
    /// As [`KeyAlgorithm::verify`]; [`Error::Unsupported`] where there is no prehashed form.
    fn verify_digest(&self, spki_der: &[u8], digest: &[u8], signature: &[u8]) -> Result<(), Error>;
}

/// A set of algorithm implementations.
#[derive(Debug)]
pub struct CryptoProvider {
    /// A name for diagnostics.
    pub name: &'static str,
    /// The algorithms, one per [`Algorithm`] it supports.
    pub algorithms: &'static [&'static dyn KeyAlgorithm],
}

static RUSTCRYPTO: CryptoProvider = CryptoProvider {
    name: "rustcrypto",
    algorithms: &[
        &ecdsa_impl::EcdsaP384,
        &ecdsa_impl::EcdsaP256,
        &eddsa::Ed25519,
        &x25519::X25519,
        &ecdh::EcdhP384,
        &ecdh::EcdhP256,
    ],
};

/// The pure-Rust RustCrypto provider (`p384`, `p256`, `ed25519-dalek`, `x25519-dalek`): the
/// default, auditable, no C.
pub fn rustcrypto_provider() -> &'static CryptoProvider {
    &RUSTCRYPTO
}

/// The aws-lc-rs provider (cargo feature `aws-lc-rs`): AWS-LC's C and assembly, about twice
/// as fast on x86-64 (see the crate README for figures).
#[cfg(feature = "aws-lc-rs")]
pub fn aws_lc_provider() -> &'static CryptoProvider {
    &crate::awslc::AWS_LC
}

/// The provider every store uses: aws-lc-rs when the `aws-lc-rs` feature is on, else
/// RustCrypto.
pub fn default_provider() -> &'static CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    {
        aws_lc_provider()
    }
    #[cfg(not(feature = "aws-lc-rs"))]
    {
        rustcrypto_provider()
    }
}

impl CryptoProvider {
    /// The implementation of `algorithm`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if this provider lacks it.
    pub fn algorithm(&self, algorithm: Algorithm) -> Result<&'static dyn KeyAlgorithm, Error> {
        self.algorithms
            .iter()
            .copied()
            .find(|a| a.algorithm() == algorithm)
            .ok_or_else(|| Error::Unsupported {
                operation: "use this algorithm",
                reason: format!("the {} provider has no {algorithm}", self.name),
            })
    }

    /// Generates a key.
    ///
    /// # Errors
    /// [`Error::Unsupported`] or [`Error::Crypto`].
    pub fn generate(&self, algorithm: Algorithm) -> Result<Box<dyn PrivateKey>, Error> {
        self.algorithm(algorithm)?.generate()
    }

    /// Loads a PKCS#8 DER private key of any supported algorithm (detected from its OID; an
    /// EC key is taken for ECDSA: load ECDH keys with [`CryptoProvider::load_pkcs8_as`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for malformed DER or an unsupported algorithm.
    pub fn load_pkcs8(&self, der: &[u8]) -> Result<Box<dyn PrivateKey>, Error> {
        let info = pkcs8::PrivateKeyInfoRef::try_from(der)
            .map_err(|_| Error::InvalidInput("not a PKCS#8 private key".into()))?;
        let alg = self.identify(&info.algorithm)?;
        alg.load_pkcs8_der(der)
    }

    /// Loads a PKCS#8 DER private key as a key of `algorithm`, which the caller knows from its
    /// own records (the DER of an ECDH key is an ECDSA key's).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for malformed DER or a key of another algorithm or curve.
    pub fn load_pkcs8_as(
        &self,
        algorithm: Algorithm,
        der: &[u8],
    ) -> Result<Box<dyn PrivateKey>, Error> {
        self.algorithm(algorithm)?.load_pkcs8_der(der)
    }

    /// Loads the private key of a backed-up key `original` (a restore): of its algorithm, and
    /// only if its public key is `original`'s.
    ///
    /// # Errors
    /// As [`CryptoProvider::load_pkcs8_as`]; [`Error::InvalidInput`] if it is another key.
    pub fn load_restored(
        &self,
        original: &keyhaven_core::KeyInfo,
        der: &[u8],
    ) -> Result<Box<dyn PrivateKey>, Error> {
        let key = self.load_pkcs8_as(original.algorithm, der)?;
        if *key.public_key() != original.public_key {
            return Err(Error::InvalidInput(format!(
                "the private key is not the one of key {}",
                original.id
            )));
        }
        Ok(key)
    }

    /// Parses and validates SPKI DER as a public key of `algorithm` (for ECDH keys, whose DER
    /// is an ECDSA key's).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if malformed, off the curve or of another algorithm.
    pub fn parse_public_key_der_as(
        &self,
        algorithm: Algorithm,
        spki_der: &[u8],
    ) -> Result<PublicKey, Error> {
        let found = self.parse_public_key_der(spki_der)?;
        if !found.algorithm().shares_public_keys_with(algorithm) {
            return Err(Error::InvalidInput(format!(
                "the public key is a {} key, not {}",
                found.algorithm(),
                algorithm.display_name()
            )));
        }
        Ok(PublicKey::new(algorithm, spki_der.to_vec()))
    }

    /// Parses and validates SPKI DER into a [`PublicKey`] (algorithm detected from its OID; an
    /// EC key is taken for ECDSA).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if malformed, off the curve or of an unsupported algorithm.
    pub fn parse_public_key_der(&self, spki_der: &[u8]) -> Result<PublicKey, Error> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(spki_der)
            .map_err(|_| Error::InvalidInput("not a SubjectPublicKeyInfo public key".into()))?;
        let alg = self.identify(&info.algorithm)?;
        alg.check_public_key(spki_der)?;
        Ok(PublicKey::new(alg.algorithm(), spki_der.to_vec()))
    }

    /// Parses a `PUBLIC KEY` PEM.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`CryptoProvider::parse_public_key_der`], or for bad PEM.
    pub fn parse_public_key_pem(&self, pem: &str) -> Result<PublicKey, Error> {
        let der = encoding::pem_decode(pem, &["PUBLIC KEY"])?.1;
        self.parse_public_key_der(&der)
    }

    fn identify(
        &self,
        algorithm: &spki::AlgorithmIdentifierRef<'_>,
    ) -> Result<&'static dyn KeyAlgorithm, Error> {
        self.algorithms
            .iter()
            .copied()
            .find(|a| a.matches_spki(algorithm))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unsupported key algorithm (OID {}): keyhaven handles P-384, P-256, Ed25519 and X25519",
                    algorithm.oid
                ))
            })
    }

    fn signing_algorithm(
        &self,
        public_key: &PublicKey,
        signature: &Signature,
    ) -> Result<&'static dyn KeyAlgorithm, Error> {
        if public_key.algorithm() != signature.algorithm() {
            return Err(Error::InvalidInput(format!(
                "a {} signature cannot be checked with a {} key",
                signature.algorithm().jose_name(),
                public_key.algorithm().jose_name()
            )));
        }
        self.algorithm(public_key.algorithm())
    }

    /// Verifies a signature over a message with the public key alone.
    ///
    /// # Errors
    /// [`Error::BadSignature`] if it does not verify; [`Error::InvalidInput`] for mismatched
    /// algorithms or a malformed key.
    pub fn verify(
        &self,
        public_key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), Error> {
        self.signing_algorithm(public_key, signature)?.verify(
            public_key.spki_der(),
            message,
            signature.as_raw(),
        )
    }

    /// Verifies a signature over a prehashed digest.
    ///
    /// # Errors
    /// As [`CryptoProvider::verify`]; [`Error::InvalidInput`] for a wrong digest length.
    pub fn verify_digest(
        &self,
        public_key: &PublicKey,
        digest: &[u8],
        signature: &Signature,
    ) -> Result<(), Error> {
        public_key.algorithm().check_digest(digest)?;
        self.signing_algorithm(public_key, signature)?
            .verify_digest(public_key.spki_der(), digest, signature.as_raw())
    }
}
