//! HKDF (RFC 5869): turning a shared secret or another key into keys for one purpose each.
//!
//! Every key keyhaven derives goes through here: the envelope hierarchy's wrapping keys, the
//! backup seals, the encrypted store's record keys. `salt` randomises the extraction (a public
//! value such as an ephemeral public key or a store id; empty means RFC 5869's all-zero salt),
//! `info` names the purpose and binds context, so two purposes never share a key.
//!
//! ```
//! use keyhaven_crypto::kdf::{derive_key, derive_key_with, Hash};
//!
//! let shared = [7u8; 48]; // e.g. an ECDH shared secret
//! let k1 = derive_key(&shared, b"salt", b"keyhaven example v1 / encryption", 32)?;
//! let k2 = derive_key(&shared, b"salt", b"keyhaven example v1 / mac", 32)?;
//! assert_ne!(k1.expose_secret(), k2.expose_secret());
//! let long = derive_key_with(Hash::Sha384, &shared, b"", b"info", 100)?;
//! assert_eq!(long.len(), 100);
//! # Ok::<(), keyhaven_core::Error>(())
//! ```

use hkdf::Hkdf;
use keyhaven_core::{Error, SecretBytes};
use sha2::{Sha256, Sha384, Sha512};

/// The hash HKDF runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Hash {
    /// HKDF-SHA-256: the default, and what keyhaven's own formats use.
    #[default]
    Sha256,
    /// HKDF-SHA-384.
    Sha384,
    /// HKDF-SHA-512.
    Sha512,
}

impl Hash {
    /// The hash's output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The most output HKDF can give with this hash: 255 blocks (RFC 5869, section 2.3).
    pub fn max_output_len(self) -> usize {
        255 * self.output_len()
    }

    /// The hash of `data` (what a signature over a prehashed digest signs).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// HKDF-SHA-256 (RFC 5869): `len` bytes of key for the purpose `info`, from input keying
/// material `ikm` and `salt`. The result zeroizes itself when dropped.
///
/// # Errors
/// [`Error::InvalidInput`] when `len` is 0 or above 8160 bytes (255 SHA-256 blocks).
pub fn derive_key(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Result<SecretBytes, Error> {
    derive_key_with(Hash::Sha256, ikm, salt, info, len)
}

/// HKDF over the hash `hash`; otherwise as [`derive_key`].
///
/// # Errors
/// [`Error::InvalidInput`] when `len` is 0 or above [`Hash::max_output_len`].
pub fn derive_key_with(
    hash: Hash,
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    len: usize,
) -> Result<SecretBytes, Error> {
    if len == 0 || len > hash.max_output_len() {
        return Err(Error::InvalidInput(format!(
            "HKDF can derive 1 to {} bytes with {hash:?}, not {len}",
            hash.max_output_len()
        )));
    }
    let mut out = zeroize::Zeroizing::new(vec![0; len]);
    let expanded = match hash {
        Hash::Sha256 => Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out),
        Hash::Sha384 => Hkdf::<Sha384>::new(Some(salt), ikm).expand(info, &mut out),
        Hash::Sha512 => Hkdf::<Sha512>::new(Some(salt), ikm).expand(info, &mut out),
    };
    // The length was checked above; a failure here would be the hkdf crate's own limit.
    expanded.map_err(|_| Error::Crypto)?;
    // Moves the buffer (no copy is left behind) into the zeroizing secret type.
    Ok(SecretBytes::new(std::mem::take(&mut *out)))
}

/// [`derive_key`] into a fixed-size array (a 32-byte AES-256 key, say), zeroized on drop.
///
/// # Errors
/// As [`derive_key`].
pub fn derive_array<const N: usize>(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
) -> Result<zeroize::Zeroizing<[u8; N]>, Error> {
    let key = derive_key(ikm, salt, info, N)?;
    let mut out = zeroize::Zeroizing::new([0u8; N]);
    out.copy_from_slice(key.expose_secret());
    Ok(out)
}
