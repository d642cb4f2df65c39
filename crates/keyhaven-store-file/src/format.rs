//! The on-disk formats of the encrypted store: header and key record (JSON), parsed strictly.
//!
//! Public so the fuzz targets can reach the parsers; applications have no need of it.
//!
//! Header (`keyhaven-store.json`): the Argon2id parameters and salt, and the store's random
//! key-encryption key (KEK) sealed under the passphrase-derived key. Record (`keys/ID.json`): the
//! key's public metadata, its random data-encryption key (DEK) sealed under the KEK, and its
//! PKCS#8 sealed under the DEK. Both seals are AES-256-GCM with the record's metadata as
//! associated data, so any change to a record is detected.

use base64ct::{Base64, Encoding};
use keyhaven_core::{Algorithm, KeyId};
use serde::{Deserialize, Serialize};

/// Format name of the encrypted store header.
pub const STORE_FORMAT: &str = "keyhaven-encrypted-store";
/// Format name of an encrypted key record.
pub const RECORD_FORMAT: &str = "keyhaven-encrypted-key";
/// The only format version this code writes and reads.
pub const VERSION: u32 = 1;

/// Length of an AES-GCM tag.
const TAG: usize = 16;

/// An AES-256-GCM ciphertext with its nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// 96-bit nonce, base64.
    pub nonce: String,
    /// Ciphertext with its 16-byte tag, base64.
    pub ciphertext: String,
}

/// A [`Sealed`] whose base64 has been decoded and lengths checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBytes {
    /// The nonce.
    pub nonce: [u8; 12],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl Sealed {
    /// Encodes a nonce and ciphertext.
    pub fn new(nonce: &[u8; 12], ciphertext: &[u8]) -> Self {
        Sealed {
            nonce: Base64::encode_string(nonce),
            ciphertext: Base64::encode_string(ciphertext),
        }
    }

    /// Decodes, requiring a plaintext length between `min` and `max`.
    ///
    /// # Errors
    /// A description of what is malformed.
    pub fn decode(&self, what: &str, min: usize, max: usize) -> Result<SealedBytes, String> {
        let nonce = Base64::decode_vec(&self.nonce)
            .ok()
            .and_then(|n| <[u8; 12]>::try_from(n).ok())
            .ok_or_else(|| format!("{what}: nonce is not 12 bytes of base64"))?;
        let ciphertext = Base64::decode_vec(&self.ciphertext)
            .map_err(|_| format!("{what}: ciphertext is not base64"))?;
        let len = ciphertext.len();
        if len < min + TAG || len > max + TAG {
            return Err(format!("{what}: ciphertext length {len} is out of range"));
        }
        Ok(SealedBytes { nonce, ciphertext })
    }
}

/// Argon2id parameters as recorded in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfHeader {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version (19 = 0x13).
    pub version: u32,
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
    /// Salt, base64 (16 to 64 bytes).
    pub salt: String,
}

/// The encrypted store's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`STORE_FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Random store id, hex (bound into every record).
    pub store_id: String,
    /// How the passphrase becomes the key that unseals the KEK.
    pub kdf: KdfHeader,
    /// The 32-byte KEK sealed under the passphrase-derived key.
    pub kek: Sealed,
}

/// Bounds that keep a tampered header from turning open into a denial of service.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

/// A header whose fields are decoded and within bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    /// The header as read.
    pub header: Header,
    /// The salt.
    pub salt: Vec<u8>,
    /// The sealed KEK.
    pub kek: SealedBytes,
}

/// Why a header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Malformed or out of bounds.
    Malformed(String),
    /// A later format version than this code reads.
    NewerVersion(u32),
}

impl Header {
    /// Parses and validates header bytes.
    ///
    /// # Errors
    /// [`HeaderError`] saying what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<ParsedHeader, HeaderError> {
        let m = HeaderError::Malformed;
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| m(format!("not a store header: {e}")))?;
        if header.format != STORE_FORMAT {
            return Err(m(format!("'{}' is not an encrypted store", header.format)));
        }
        if header.version > VERSION {
            return Err(HeaderError::NewerVersion(header.version));
        }
        if header.version != VERSION {
            return Err(m(format!("unknown version {}", header.version)));
        }
        let store_id =
            hex::decode(&header.store_id).map_err(|_| m("store id is not hex".into()))?;
        if store_id.len() != 16 {
            return Err(m("store id is not 16 bytes".into()));
        }
        let k = &header.kdf;
        if k.algorithm != "argon2id" || k.version != 0x13 {
            return Err(m(format!("unsupported KDF {} v{}", k.algorithm, k.version)));
        }
        if !(1..=MAX_P_COST).contains(&k.p_cost)
            || !(1..=MAX_T_COST).contains(&k.t_cost)
            || k.m_cost_kib < 8 * k.p_cost
            || k.m_cost_kib > MAX_M_COST_KIB
        {
            return Err(m("KDF parameters out of range".into()));
        }
        let salt = Base64::decode_vec(&k.salt).map_err(|_| m("salt is not base64".into()))?;
        if !(16..=64).contains(&salt.len()) {
            return Err(m("salt must be 16 to 64 bytes".into()));
        }
        let kek = header.kek.decode("kek", 32, 32).map_err(m)?;
        Ok(ParsedHeader { header, salt, kek })
    }

    /// Associated data for sealing the KEK: binds the store id and KDF parameters.
    pub fn kek_aad(&self) -> Vec<u8> {
        let k = &self.kdf;
        let mut aad = b"keyhaven-encrypted-store/v1/kek\0".to_vec();
        push_field(&mut aad, self.store_id.as_bytes());
        for n in [k.version, k.m_cost_kib, k.t_cost, k.p_cost] {
            aad.extend_from_slice(&n.to_be_bytes());
        }
        push_field(&mut aad, k.salt.as_bytes());
        aad
    }
}

/// An encrypted key record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// [`RECORD_FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The key id (must match the file name).
    pub id: KeyId,
    /// The label.
    pub label: String,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// SPKI DER, base64.
    pub public_key: String,
    /// The DEK sealed under the store's KEK.
    pub dek: Sealed,
    /// The PKCS#8 private key sealed under the DEK.
    pub private_key: Sealed,
}

/// A record whose fields are decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRecord {
    /// The record as read.
    pub record: Record,
    /// SPKI DER.
    pub public_key: Vec<u8>,
    /// The sealed DEK.
    pub dek: SealedBytes,
    /// The sealed PKCS#8.
    pub private_key: SealedBytes,
}

impl Record {
    /// Parses and validates record bytes.
    ///
    /// # Errors
    /// A description of what is malformed.
    pub fn parse(bytes: &[u8]) -> Result<ParsedRecord, String> {
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| format!("not a key record: {e}"))?;
        if record.format != RECORD_FORMAT {
            return Err(format!(
                "'{}' is not an encrypted key record",
                record.format
            ));
        }
        if record.version != VERSION {
            return Err(format!(
                "record version {} is not supported",
                record.version
            ));
        }
        keyhaven_core::validate_label(&record.label).map_err(|e| e.to_string())?;
        let public_key =
            Base64::decode_vec(&record.public_key).map_err(|_| "public key is not base64")?;
        if public_key.is_empty() || public_key.len() > 512 {
            return Err("public key length out of range".into());
        }
        let dek = record.dek.decode("dek", 32, 32)?;
        let private_key = record.private_key.decode("private key", 32, 4096)?;
        Ok(ParsedRecord {
            record,
            public_key,
            dek,
            private_key,
        })
    }

    /// Associated data for the DEK's seal: [`Record::aad`] plus a SHA-256 of the sealed private
    /// key, so that unsealing the DEK alone authenticates the whole record.
    pub fn dek_aad(&self, store_id: &str) -> Vec<u8> {
        use sha2::Digest;
        let mut aad = self.aad(store_id);
        let mut h = sha2::Sha256::new();
        h.update(self.private_key.nonce.as_bytes());
        h.update(b"\0");
        h.update(self.private_key.ciphertext.as_bytes());
        aad.extend_from_slice(&h.finalize());
        aad
    }

    /// Associated data for the private key's seal: everything public in the record, and the
    /// store id.
    pub fn aad(&self, store_id: &str) -> Vec<u8> {
        let mut aad = b"keyhaven-encrypted-key/v1\0".to_vec();
        push_field(&mut aad, store_id.as_bytes());
        push_field(&mut aad, self.id.as_str().as_bytes());
        push_field(&mut aad, self.label.as_bytes());
        push_field(&mut aad, self.algorithm.short_name().as_bytes());
        aad.extend_from_slice(&self.created_at.to_be_bytes());
        push_field(&mut aad, self.public_key.as_bytes());
        aad
    }
}

/// Appends a length-prefixed field, so that field boundaries cannot be shifted.
fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}
