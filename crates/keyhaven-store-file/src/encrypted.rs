//! The encrypted store: Argon2id (once per open) -> passphrase key -> store KEK -> per-key DEK.

use std::path::Path;

use base64ct::{Base64, Encoding};
use keyhaven_core::{Error, KeyId, KeyInfo, Protection, Result, SecretBytes};
use keyhaven_crypto::aead::Sealer;
use keyhaven_crypto::{CryptoProvider, PrivateKey, default_provider, fill_random};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::dir::{HEADER, StoreDir};
use crate::engine::{Engine, Format, delegate_keystore};
use crate::format::{self, Header, HeaderError, KdfHeader, Record, Sealed};
use crate::fsutil;

/// Argon2id cost parameters. Recorded in the store header, so they can be raised later (by
/// [`EncryptedStore::change_passphrase_with`]) without breaking existing stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's recommendation for Argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Deliberately weak parameters for tests and benchmarks of everything but the KDF.
    /// Never use them for real keys.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

fn derive(passphrase: &SecretString, kdf: &KdfHeader, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    keyhaven_crypto::aead::argon2id(
        passphrase.expose_secret().as_bytes(),
        salt,
        kdf.m_cost_kib,
        kdf.t_cost,
        kdf.p_cost,
    )
}

fn seal(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
    let (nonce, ct) = Sealer::new(key)?.seal(plaintext, aad)?;
    Ok(Sealed::new(&nonce, &ct))
}

fn open_sealed(
    cipher: &Sealer,
    sealed: &format::SealedBytes,
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    cipher.open(&sealed.nonce, &sealed.ciphertext, aad)
}

/// Builds a fresh header sealing `kek` under `passphrase`.
fn make_header(
    store_id: &str,
    kek: &[u8; 32],
    passphrase: &SecretString,
    params: KdfParams,
) -> Result<Vec<u8>> {
    if passphrase.expose_secret().is_empty() {
        return Err(Error::InvalidInput(
            "the passphrase may not be empty".into(),
        ));
    }
    let mut salt = [0u8; 16];
    fill_random(&mut salt)?;
    let kdf = KdfHeader {
        algorithm: "argon2id".into(),
        version: 0x13,
        m_cost_kib: params.m_cost_kib,
        t_cost: params.t_cost,
        p_cost: params.p_cost,
        salt: Base64::encode_string(&salt),
    };
    let pk = derive(passphrase, &kdf, &salt)?;
    let mut header = Header {
        format: format::STORE_FORMAT.into(),
        version: format::VERSION,
        store_id: store_id.to_owned(),
        kdf,
        kek: Sealed::new(&[0; 12], &[]),
    };
    header.kek = seal(pk.as_ref(), kek, &header.kek_aad())?;
    serde_json::to_vec_pretty(&header).map_err(|e| Error::InvalidInput(e.to_string()))
}

pub(crate) struct EncryptedFormat {
    provider: &'static CryptoProvider,
    store_id: String,
    kek: Zeroizing<[u8; 32]>,
    cipher: Sealer,
}

impl EncryptedFormat {
    fn dek(&self, parsed: &format::ParsedRecord) -> Result<Zeroizing<Vec<u8>>, String> {
        open_sealed(
            &self.cipher,
            &parsed.dek,
            &parsed.record.dek_aad(&self.store_id),
        )
        .ok_or_else(|| {
            "authentication failed: the record was altered, truncated, or belongs to another store"
                .to_owned()
        })
    }
}

impl Format for EncryptedFormat {
    const EXTRA_FILES: &'static [&'static str] = &[];

    fn write_key(&self, _dir: &StoreDir, info: &KeyInfo, key: &dyn PrivateKey) -> Result<Vec<u8>> {
        let pkcs8 = key.to_pkcs8_der()?;
        let mut dek = Zeroizing::new([0u8; 32]);
        fill_random(dek.as_mut())?;
        let mut record = Record {
            format: format::RECORD_FORMAT.into(),
            version: format::VERSION,
            id: info.id.clone(),
            label: info.label.clone(),
            algorithm: info.algorithm,
            created_at: info.created_at,
            public_key: Base64::encode_string(info.public_key.spki_der()),
            dek: Sealed::new(&[0; 12], &[]),
            private_key: Sealed::new(&[0; 12], &[]),
        };
        let aad = record.aad(&self.store_id);
        record.private_key = seal(dek.as_ref(), pkcs8.expose_secret(), &aad)?;
        record.dek = seal(
            self.kek.as_ref(),
            dek.as_ref(),
            &record.dek_aad(&self.store_id),
        )?;
        serde_json::to_vec_pretty(&record).map_err(|e| Error::InvalidInput(e.to_string()))
    }

    fn parse_info(&self, id: &KeyId, bytes: &[u8]) -> Result<KeyInfo, String> {
        let parsed = Record::parse(bytes)?;
        if &parsed.record.id != id {
            return Err(format!(
                "record names key {} but is stored as {id}",
                parsed.record.id
            ));
        }
        // Unsealing the DEK authenticates every public field of the record.
        drop(self.dek(&parsed)?);
        let public_key = self
            .provider
            .parse_public_key_der_as(parsed.record.algorithm, &parsed.public_key)
            .map_err(|e| format!("public key and algorithm disagree: {e}"))?;
        let r = parsed.record;
        Ok(KeyInfo::new(
            r.id,
            r.label,
            Protection::SoftwareEncrypted,
            public_key,
            r.created_at,
        ))
    }

    fn load_private(&self, dir: &StoreDir, info: &KeyInfo, bytes: &[u8]) -> Result<SecretBytes> {
        let what = || dir.record_path(&info.id).display().to_string();
        let parsed = Record::parse(bytes).map_err(|r| Error::corrupt(what(), r))?;
        let dek = self.dek(&parsed).map_err(|r| Error::corrupt(what(), r))?;
        let cipher = Sealer::new(&dek)?;
        let pkcs8 = open_sealed(
            &cipher,
            &parsed.private_key,
            &parsed.record.aad(&self.store_id),
        )
        .ok_or_else(|| Error::corrupt(what(), "the private key does not authenticate"))?;
        Ok(SecretBytes::copy_from(&pkcs8))
    }
}

/// An encrypted key store: no private key byte is ever written in the clear.
///
/// The passphrase goes through Argon2id **once**, when the store is opened, giving the key that
/// unseals the store's random key-encryption key (KEK). Each key has its own random
/// data-encryption key (DEK), sealed under the KEK; its PKCS#8 is sealed under the DEK. Both
/// seals are AES-256-GCM with the key id, label, algorithm, time, public key and store id as
/// associated data. Changing the passphrase reseals the KEK in the header and touches no record.
pub struct EncryptedStore {
    engine: Engine<EncryptedFormat>,
}

impl std::fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl EncryptedStore {
    const PROTECTION: Protection = Protection::SoftwareEncrypted;

    fn from_parts(dir: StoreDir, store_id: String, kek: Zeroizing<[u8; 32]>) -> Result<Self> {
        let cipher = Sealer::new(kek.as_ref())?;
        let provider = default_provider();
        let format = EncryptedFormat {
            provider,
            store_id,
            kek,
            cipher,
        };
        Ok(EncryptedStore {
            engine: Engine::new(dir, format, provider),
        })
    }

    /// Creates a new, empty encrypted store at `dir` (0700, created if missing).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if a store is there, [`Error::InvalidInput`] for an empty
    /// passphrase or bad parameters, [`Error::PermissionDenied`] or I/O errors.
    pub fn create(dir: &Path, passphrase: &SecretString, params: KdfParams) -> Result<Self> {
        let mut id = [0u8; 16];
        fill_random(&mut id)?;
        let store_id = hex::encode(id);
        let mut kek = Zeroizing::new([0u8; 32]);
        fill_random(kek.as_mut())?;
        let header = make_header(&store_id, &kek, passphrase, params)?;
        let sd = StoreDir::create(dir, &header)?;
        Self::from_parts(sd, store_id, kek)
    }

    /// Opens an existing encrypted store: one Argon2id, however many keys it holds.
    ///
    /// # Errors
    /// [`Error::BadPassphrase`] for a wrong passphrase (nothing is written);
    /// [`Error::NotFound`] if there is no store; [`Error::PermissionDenied`] naming the file
    /// and the fix for loose permissions; [`Error::Corrupt`] for a damaged header;
    /// [`Error::Unsupported`] for a store written by a newer keyhaven.
    pub fn open(dir: &Path, passphrase: &SecretString) -> Result<Self> {
        let (sd, bytes) = StoreDir::open(dir)?;
        let what = sd.root().join(HEADER).display().to_string();
        let parsed = Header::parse(&bytes).map_err(|e| match e {
            HeaderError::Malformed(r) => Error::corrupt(what.clone(), r),
            HeaderError::NewerVersion(v) => Error::Unsupported {
                operation: "open this store",
                reason: format!("it has format version {v}; upgrade keyhaven"),
            },
        })?;
        let pk = derive(passphrase, &parsed.header.kdf, &parsed.salt)?;
        let cipher = Sealer::new(pk.as_ref())?;
        let kek = open_sealed(&cipher, &parsed.kek, &parsed.header.kek_aad()).ok_or_else(|| {
            Error::BadPassphrase(format!(
                "the passphrase does not open {} (or its header was altered)",
                sd.root().display()
            ))
        })?;
        if kek.len() != 32 {
            return Err(Error::corrupt(what, "KEK has the wrong length"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&kek);
        Self::from_parts(sd, parsed.header.store_id, key)
    }

    /// Changes the passphrase (keeping the KDF parameters); no key record is rewritten.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty passphrase, I/O errors (the old header then stays).
    pub fn change_passphrase(&self, new: &SecretString) -> Result<()> {
        let current = self.kdf_params()?;
        self.change_passphrase_with(new, current)
    }

    /// Changes the passphrase and the Argon2id parameters (to raise them over time).
    ///
    /// # Errors
    /// As [`EncryptedStore::change_passphrase`].
    pub fn change_passphrase_with(&self, new: &SecretString, params: KdfParams) -> Result<()> {
        let f = &self.engine.format;
        let _lock = self.engine.dir.lock()?;
        let header = make_header(&f.store_id, &f.kek, new, params)?;
        Ok(fsutil::atomic_write(
            self.engine.dir.root(),
            HEADER,
            &header,
        )?)
    }

    /// The Argon2id parameters in the store header now.
    ///
    /// # Errors
    /// I/O or [`Error::Corrupt`] if the header cannot be read.
    pub fn kdf_params(&self) -> Result<KdfParams> {
        let path = self.engine.dir.root().join(HEADER);
        let bytes = fsutil::read_private(&path)?;
        let parsed = Header::parse(&bytes)
            .map_err(|e| Error::corrupt(path.display().to_string(), format!("{e:?}")))?;
        let k = parsed.header.kdf;
        Ok(KdfParams {
            m_cost_kib: k.m_cost_kib,
            t_cost: k.t_cost,
            p_cost: k.p_cost,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        self.engine.dir.root()
    }

    /// The store's random id (recorded in its header).
    pub fn store_id(&self) -> &str {
        &self.engine.format.store_id
    }

    /// A 32-byte secret derived from the store's key-encryption key with HKDF-SHA256 (RFC
    /// 5869; the store id is the salt, `purpose` the info). Only someone who can unlock the
    /// store can compute it; different purposes give independent keys, and none reveals the
    /// KEK. keyhaven derives the key that authenticates a home's state this way.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty `purpose`.
    pub fn derive_secret(&self, purpose: &str) -> Result<Zeroizing<[u8; 32]>> {
        if purpose.is_empty() {
            return Err(Error::InvalidInput("an empty derivation purpose".into()));
        }
        let f = &self.engine.format;
        let mut info = b"keyhaven-store-derive v1\0".to_vec();
        info.extend_from_slice(purpose.as_bytes());
        keyhaven_crypto::kdf::derive_array::<32>(f.kek.as_ref(), f.store_id.as_bytes(), &info)
    }
}

// Records are sealed: no file of theirs is for other programs.
delegate_keystore!(EncryptedStore, "encrypted", None);
