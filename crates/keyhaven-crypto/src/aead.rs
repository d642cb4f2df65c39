//! Sealing secrets at rest: AES-256-GCM with a fresh random 96-bit nonce per message, and
//! Argon2id from a passphrase to a 32-byte key. The one implementation keyhaven's software
//! stores (encrypted files, memory) and backups use.

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyhaven_core::Error;
use zeroize::Zeroizing;

use crate::fill_random;

/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key, ready to seal and open many messages. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer for a 32-byte key.
    ///
    /// # Errors
    /// [`Error::Crypto`] if `key` is not 32 bytes.
    pub fn new(key: &[u8]) -> Result<Self, Error> {
        Ok(Sealer {
            cipher: Aes256Gcm::new_from_slice(key).map_err(|_| Error::Crypto)?,
        })
    }

    /// Encrypts and authenticates `plaintext` (and `aad`, not encrypted) under a fresh random
    /// nonce: returns the nonce and `ciphertext || tag`.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the system RNG or the cipher fails.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), Error> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let ct = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Crypto)?;
        Ok((nonce, ct))
    }

    /// Decrypts `ciphertext || tag` sealed with `nonce` and `aad`; `None` if it does not
    /// authenticate (wrong key, wrong AAD, any changed byte).
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        self.cipher
            .decrypt(
                &Nonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// [`Sealer::seal`] as one buffer: `nonce || ciphertext || tag`.
    ///
    /// # Errors
    /// As [`Sealer::seal`].
    pub fn seal_joined(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let (nonce, ct) = self.seal(plaintext, aad)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`Sealer::seal_joined`] made; `None` if it is too short or does not
    /// authenticate.
    pub fn open_joined(&self, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.open(nonce.try_into().ok()?, ct, aad)
    }
}

/// Argon2id (version 0x13) of `secret` with `salt` and the given costs, to a 32-byte key.
///
/// # Errors
/// [`Error::InvalidInput`] for costs Argon2 refuses; [`Error::Crypto`] if hashing fails.
pub fn argon2id(
    secret: &[u8],
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<Zeroizing<[u8; 32]>, Error> {
    let params = argon2::Params::new(m_cost_kib, t_cost, p_cost, Some(32))
        .map_err(|e| Error::InvalidInput(format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(secret, salt, out.as_mut())
        .map_err(|_| Error::Crypto)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven_core::ErrorKind;

    #[test]
    fn sealed_messages_open_only_with_their_key_and_aad() {
        let s = Sealer::new(&[7u8; 32]).unwrap_or_else(|_| unreachable!());
        let sealed = s.seal_joined(b"secret", b"aad").unwrap_or_default();
        assert_eq!(sealed.len(), NONCE_LEN + 6 + TAG_LEN);
        assert_eq!(
            s.open_joined(&sealed, b"aad").as_deref().map(Vec::as_slice),
            Some(&b"secret"[..])
        );
        assert!(s.open_joined(&sealed, b"other").is_none());
        let other = Sealer::new(&[8u8; 32]).unwrap_or_else(|_| unreachable!());
        assert!(other.open_joined(&sealed, b"aad").is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(s.open_joined(&bad, b"aad").is_none(), "byte {i}");
        }
        assert!(
            s.open_joined(&sealed[..NONCE_LEN + TAG_LEN - 1], b"aad")
                .is_none()
        );
        assert!(Sealer::new(&[0u8; 31]).is_err());
        assert_ne!(
            s.seal_joined(b"x", b"").unwrap_or_default(),
            s.seal_joined(b"x", b"").unwrap_or_default()
        );
        assert_eq!(format!("{s:?}"), "Sealer(..)");
    }

    #[test]
    fn argon2id_is_deterministic_and_checks_its_costs() {
        let a = argon2id(b"pw", b"saltsaltsalt", 64, 1, 1).unwrap_or_default();
        let b = argon2id(b"pw", b"saltsaltsalt", 64, 1, 1).unwrap_or_default();
        let c = argon2id(b"pw2", b"saltsaltsalt", 64, 1, 1).unwrap_or_default();
        assert_eq!(*a, *b);
        assert_ne!(*a, *c);
        assert!(matches!(
            argon2id(b"pw", b"salt5678", 1, 1, 1),
            Err(e) if e.is(ErrorKind::InvalidInput)));
    }
}
