//! The PEM directory store: every key as OpenSSL-compatible files.

use std::path::Path;

use base64ct::{Base64, Encoding};
use keyhaven_core::{Algorithm, Error, ErrorKind, KeyId, KeyInfo, Protection, Result, SecretBytes};
use keyhaven_crypto::{CryptoProvider, PrivateKey, default_provider, hazmat};
use serde::{Deserialize, Serialize};

use crate::dir::StoreDir;
use crate::engine::{Engine, Format, delegate_keystore};
use crate::fsutil;

const FORMAT: &str = "keyhaven-pem-store";
const KEY_FORMAT: &str = "keyhaven-pem-key";
const PRIVATE_SUFFIX: &str = ".key.pem";
const PUBLIC_SUFFIX: &str = ".pub.pem";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
}

/// A key's metadata file (`keys/ID.json`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: String,
    version: u32,
    id: KeyId,
    label: String,
    algorithm: Algorithm,
    created_at: u64,
    /// SubjectPublicKeyInfo DER, base64.
    public_key: String,
    /// SHA-256 of the SPKI DER, hex (for people reading the file).
    fingerprint: String,
    /// The private key file, relative to this one.
    private_key_file: String,
}

pub(crate) struct PemFormat {
    provider: &'static CryptoProvider,
}

impl Format for PemFormat {
    const EXTRA_FILES: &'static [&'static str] = &[PRIVATE_SUFFIX, PUBLIC_SUFFIX];

    fn write_key(&self, dir: &StoreDir, info: &KeyInfo, key: &dyn PrivateKey) -> Result<Vec<u8>> {
        let pkcs8 = key.to_pkcs8_der()?;
        let pem = hazmat::pkcs8_to_pem(&pkcs8)?;
        dir.write_key_file(&info.id, PRIVATE_SUFFIX, pem.as_bytes())?;
        dir.write_key_file(
            &info.id,
            PUBLIC_SUFFIX,
            info.public_key.to_pem()?.as_bytes(),
        )?;
        let meta = Meta {
            format: KEY_FORMAT.into(),
            version: 1,
            id: info.id.clone(),
            label: info.label.clone(),
            algorithm: info.algorithm,
            created_at: info.created_at,
            public_key: Base64::encode_string(info.public_key.spki_der()),
            fingerprint: info.fingerprint().to_hex(),
            private_key_file: format!("{}{PRIVATE_SUFFIX}", info.id),
        };
        serde_json::to_vec_pretty(&meta).map_err(|e| Error::InvalidInput(e.to_string()))
    }

    fn refuses(&self, algorithm: keyhaven_core::Algorithm) -> Option<&'static str> {
        // The files say only "EC key on P-384"; the use is in the unauthenticated metadata, so
        // whoever can write the metadata could turn a signing key into an agreement key.
        algorithm.is_nist_ecdh().then_some(
            "a PEM directory cannot keep ECDH P-384/P-256 keys: their files are ECDSA keys' files \
             and the metadata that tells them apart is not authenticated; use the encrypted store \
             or a token",
        )
    }

    fn parse_info(&self, id: &KeyId, record: &[u8]) -> Result<KeyInfo, String> {
        let meta: Meta = serde_json::from_slice(record).map_err(|e| format!("bad JSON: {e}"))?;
        if let Some(reason) = self.refuses(meta.algorithm) {
            return Err(format!("the record says {}: {reason}", meta.algorithm));
        }
        if meta.format != KEY_FORMAT || meta.version != 1 {
            return Err(format!(
                "unknown record format {} v{}",
                meta.format, meta.version
            ));
        }
        if &meta.id != id {
            return Err(format!(
                "record names key {} but is stored as {id}",
                meta.id
            ));
        }
        keyhaven_core::validate_label(&meta.label).map_err(|e| e.to_string())?;
        let der = Base64::decode_vec(&meta.public_key).map_err(|_| "bad public key base64")?;
        let public_key = self
            .provider
            .parse_public_key_der_as(meta.algorithm, &der)
            .map_err(|e| format!("public key and algorithm disagree: {e}"))?;
        Ok(KeyInfo::new(
            meta.id,
            meta.label,
            Protection::SoftwarePlain,
            public_key,
            meta.created_at,
        ))
    }

    fn private_file(&self, dir: &StoreDir, id: &KeyId) -> std::path::PathBuf {
        dir.key_file(id, PRIVATE_SUFFIX)
    }

    fn load_private(&self, dir: &StoreDir, info: &KeyInfo, _record: &[u8]) -> Result<SecretBytes> {
        let path = dir.key_file(&info.id, PRIVATE_SUFFIX);
        let bytes = zeroize::Zeroizing::new(fsutil::read_private(&path)?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::corrupt(path.display().to_string(), "not UTF-8 PEM"))?;
        hazmat::private_key_pem_to_pkcs8(text, None)
            .map_err(|e| Error::corrupt(path.display().to_string(), e.to_string()))
    }
}

/// A directory of plain PEM key files, readable by `openssl pkey` / `openssl dgst` directly.
///
/// **The weakest protection keyhaven offers** ([`Protection::SoftwarePlain`]): anyone who can read
/// a `*.key.pem` file has the key. Files are 0600 in 0700 directories and the store refuses
/// looser permissions, but nothing is encrypted. Prefer [`crate::EncryptedStore`] or hardware.
///
/// Layout: `keys/ID.key.pem` (PKCS#8), `keys/ID.pub.pem` (SPKI), `keys/ID.json` (metadata,
/// written last as the commit point).
pub struct PemStore {
    engine: Engine<PemFormat>,
}

impl std::fmt::Debug for PemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemStore")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl PemStore {
    const PROTECTION: Protection = Protection::SoftwarePlain;

    fn from_dir(dir: StoreDir) -> Self {
        let provider = default_provider();
        PemStore {
            engine: Engine::new(dir, PemFormat { provider }, provider),
        }
    }

    /// Creates a new, empty PEM store at `dir` (created 0700 if missing).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if a store is there; [`Error::PermissionDenied`] if an existing
    /// directory is open to other users; I/O errors.
    pub fn create(dir: &Path) -> Result<Self> {
        let header = serde_json::to_vec_pretty(&Header {
            format: FORMAT.into(),
            version: 1,
        })
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(Self::from_dir(StoreDir::create(dir, &header)?))
    }

    /// Opens an existing PEM store.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no store at `dir`; [`Error::PermissionDenied`] naming the
    /// file and the `chmod` that fixes it if permissions are loose; [`Error::Corrupt`] for a
    /// damaged header or a store of another kind.
    pub fn open(dir: &Path) -> Result<Self> {
        let (sd, header) = StoreDir::open(dir)?;
        let what = || sd.root().join(crate::dir::HEADER).display().to_string();
        let header: Header = serde_json::from_slice(&header)
            .map_err(|e| Error::corrupt(what(), format!("not a PEM store header: {e}")))?;
        if header.format != FORMAT {
            return Err(Error::corrupt(
                what(),
                format!("this is a '{}' store, not a PEM store", header.format),
            ));
        }
        if header.version != 1 {
            return Err(Error::Unsupported {
                operation: "open this store",
                reason: format!(
                    "PEM store format version {} is newer than this keyhaven",
                    header.version
                ),
            });
        }
        Ok(Self::from_dir(sd))
    }

    /// Opens the store at `dir`, creating it if there is none.
    ///
    /// # Errors
    /// As [`PemStore::open`] and [`PemStore::create`].
    pub fn open_or_create(dir: &Path) -> Result<Self> {
        match Self::open(dir) {
            Err(e) if e.is(ErrorKind::NotFound) => match Self::create(dir) {
                Err(e) if e.is(ErrorKind::AlreadyExists) => Self::open(dir),
                other => other,
            },
            other => other,
        }
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        self.engine.dir.root()
    }

    /// Path of a key's private key PEM file (PKCS#8), for use with `openssl`.
    pub fn private_key_path(&self, id: &KeyId) -> std::path::PathBuf {
        self.engine.dir.key_file(id, PRIVATE_SUFFIX)
    }

    /// Path of a key's public key PEM file (SPKI).
    pub fn public_key_path(&self, id: &KeyId) -> std::path::PathBuf {
        self.engine.dir.key_file(id, PUBLIC_SUFFIX)
    }
}

// `openssl` reads each private key file: `key show` names it.
delegate_keystore!(PemStore, "pem", Some(PRIVATE_SUFFIX));
