//! Encrypted PKCS#8 PEM export of one key (PBES2 with AES-256-CBC), readable by
//! `openssl pkey -passin`.

use keyhaven_core::{Error, SecretBytes};
use pkcs8::pkcs5::{pbes2, scrypt};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::error::{BackupError, Result};

/// The PBES2 key derivation for an encrypted PKCS#8 export. The cipher is always AES-256-CBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pbes2 {
    /// scrypt with `N = 2^log_n`, `r = 8`, `p = 1`.
    Scrypt {
        /// log2 of the CPU/memory cost N. OpenSSL 3 reads up to 32 MiB by default, so at most
        /// 14 at r = 8 (16 MiB).
        log_n: u8,
    },
    /// PBKDF2-HMAC-SHA256 (for readers without scrypt).
    Pbkdf2Sha256 {
        /// Iteration count.
        iterations: u32,
    },
}

impl Pbes2 {
    /// scrypt at N = 2^14, r = 8, p = 1 (what OpenSSL 3 reads without raising its limits).
    pub fn scrypt() -> Self {
        Pbes2::Scrypt { log_n: 14 }
    }

    /// PBKDF2-SHA256 at 600 000 iterations (OWASP 2023).
    pub fn pbkdf2_sha256() -> Self {
        Pbes2::Pbkdf2Sha256 {
            iterations: 600_000,
        }
    }
}

/// Encrypts a PKCS#8 DER private key under a passphrase as an `ENCRYPTED PRIVATE KEY` PEM
/// (PBES2: scrypt or PBKDF2-SHA256, AES-256-CBC, random salt and IV).
///
/// # Errors
/// [`BackupError::InvalidInput`] for an empty passphrase, malformed DER or bad parameters.
pub fn export_pkcs8_pem(
    pkcs8_der: &SecretBytes,
    passphrase: &SecretString,
    kdf: Pbes2,
) -> Result<Zeroizing<String>> {
    let pass = passphrase.expose_secret().as_bytes();
    if pass.is_empty() {
        return Err(BackupError::InvalidInput(
            "the export passphrase may not be empty".into(),
        ));
    }
    let info = pkcs8::PrivateKeyInfoRef::try_from(pkcs8_der.expose_secret())
        .map_err(|_| BackupError::InvalidInput("not a PKCS#8 private key".into()))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    keyhaven_crypto::fill_random(&mut salt)?;
    keyhaven_crypto::fill_random(&mut iv)?;
    let params = match kdf {
        Pbes2::Scrypt { log_n } => {
            let p = scrypt::Params::new(log_n, 8, 1).map_err(|_| {
                BackupError::InvalidInput(format!("scrypt log_n {log_n} is out of range"))
            })?;
            pbes2::Parameters::generate_scrypt_aes256cbc(p, &salt, iv)
        }
        Pbes2::Pbkdf2Sha256 { iterations } => {
            if iterations == 0 {
                return Err(BackupError::InvalidInput(
                    "PBKDF2 needs at least one iteration".into(),
                ));
            }
            pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(iterations, &salt, iv)
        }
    }
    .map_err(|e| BackupError::InvalidInput(format!("PBES2 parameters: {e}")))?;
    let doc = info
        .encrypt_with_params(params, pass)
        .map_err(|_| Error::Crypto)?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(|_| Error::Crypto)?;
    Ok(pem)
}
