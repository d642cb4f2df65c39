#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod aead;
#[cfg(feature = "aws-lc-rs")]
mod awslc;
mod ecdh;
mod ecdsa_impl;
mod eddsa;
pub mod encoding;
pub mod hazmat;
pub mod jwe;
pub mod jws;
pub mod kdf;
mod provider;
mod rng;
mod seeded;
pub mod signer;
mod x25519;

#[cfg(feature = "aws-lc-rs")]
pub use provider::aws_lc_provider;
pub use provider::{
    CryptoProvider, KeyAlgorithm, PrivateKey, default_provider, rustcrypto_provider,
};
pub use rng::fill_random;
pub use signer::{KeySigner, SignWith, StoreKey};

use keyhaven_core::{Error, PublicKey, Signature};

/// Verifies a signature over a message with the default provider.
///
/// # Errors
/// [`Error::BadSignature`] when the signature does not verify, [`Error::InvalidInput`] for a
/// malformed public key or a signature of another algorithm.
pub fn verify(public_key: &PublicKey, message: &[u8], signature: &Signature) -> Result<(), Error> {
    default_provider().verify(public_key, message, signature)
}

/// Verifies a signature over a prehashed digest (ECDSA) with the default provider.
///
/// # Errors
/// As [`verify`], plus [`Error::InvalidInput`] for a digest of the wrong length and
/// [`Error::Unsupported`] for Ed25519 keys.
pub fn verify_digest(
    public_key: &PublicKey,
    digest: &[u8],
    signature: &Signature,
) -> Result<(), Error> {
    default_provider().verify_digest(public_key, digest, signature)
}
