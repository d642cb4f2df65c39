//! Key derivation and sealing: Argon2id (one call per backup), HKDF from a Shamir master key,
//! AES-256-GCM with random nonces.

use keyhaven_core::SecretBytes;
use keyhaven_crypto::aead::Sealer;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{BackupError, Result};

pub(crate) use keyhaven_crypto::aead::{NONCE_LEN, TAG_LEN};

/// Argon2id cost parameters for a passphrase-protected backup, recorded in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// Stronger than a store's everyday unlock (a backup is opened rarely and may be attacked
    /// offline for years): 64 MiB, 3 iterations, 1 lane.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Deliberately weak parameters for tests and benchmarks. Never use them for real backups.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Upper bounds accepted from a header, so a hostile file cannot make us allocate
    /// gigabytes or spin for hours: 4 GiB, 64 iterations, 64 lanes.
    pub(crate) fn check(&self) -> Result<()> {
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 64 {
            return Err(BackupError::damaged(
                "header",
                format!("Argon2id parameters out of range: {self:?}"),
            ));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map(|_| ())
            .map_err(|e| BackupError::damaged("header", format!("Argon2id parameters: {e}")))
    }
}

/// Argon2id(passphrase, salt) -> 32-byte key-encryption key.
pub(crate) fn derive_passphrase(
    passphrase: &SecretString,
    params: &KdfParams,
    salt: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    params.check()?;
    Ok(keyhaven_crypto::aead::argon2id(
        passphrase.expose_secret().as_bytes(),
        salt,
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
    )?)
}

/// HKDF-SHA256(master, salt = backup id) -> 32-byte key-encryption key.
pub(crate) fn derive_master(master: &SecretBytes, backup_id: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    hkdf_32(
        master.expose_secret(),
        backup_id,
        b"keyhaven-backup/v1 master kek",
    )
}

/// HKDF-SHA256 with a 32-byte output (keyhaven-crypto's public HKDF).
pub(crate) fn hkdf_32(ikm: &[u8], salt: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    Ok(keyhaven_crypto::kdf::derive_array::<32>(ikm, salt, info)?)
}

/// AES-256-GCM under a key, with a fresh random nonce: returns `nonce || ciphertext || tag`.
pub(crate) fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    Ok(Sealer::new(key)?.seal_joined(plaintext, aad)?)
}

/// Opens `nonce || ciphertext || tag`; `None` if it does not authenticate.
pub(crate) fn open(cipher: &Sealer, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    cipher.open_joined(sealed, aad)
}

/// An AES-256-GCM sealer for a key.
pub(crate) fn cipher(key: &[u8; 32]) -> Result<Sealer> {
    Ok(Sealer::new(key)?)
}
