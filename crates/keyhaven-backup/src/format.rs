//! The keyhaven backup file: a header readable without the secret, one AES-256-GCM record per
//! key, and a SHA-256 integrity digest over the whole file. Two encodings (text and binary) of
//! the same header bytes and the same sealed records.

use std::collections::BTreeSet;
use std::fmt;

use base64ct::{Base64, Encoding};
use keyhaven_core::{Algorithm, KeyId, Protection, SecretBytes, unix_now};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer, base32_prefix, secret_buf};
use crate::error::{BackupError, Result};
use crate::model::BackupEntry;
use crate::seal::{self, KdfParams, NONCE_LEN, TAG_LEN};
use crate::shamir::{self, Custodian, MasterKey, Share};

/// The newest backup format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

const TEXT_MAGIC: &str = "keyhaven-backup ";
const BIN_MAGIC: &[u8; 4] = b"KHBK";
const DIGEST_PREFIX: &str = "sha256 ";
/// Upper bound on keys in one backup (keeps hostile inputs from allocating without bound).
const MAX_KEYS: usize = 1_000_000;
const ARGON2ID_V19: &str = "argon2id-v19";
/// The prime-order group the Shamir master key and its Feldman commitments live in.
pub(crate) const SHAMIR_GROUP: &str = "p256";

/// How a backup file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Line-oriented text (JSON header, base64 records): mailable, diffable.
    Text,
    /// Compact binary: magic, version byte, length-prefixed header and records.
    Binary,
}

impl Format {
    /// Recognises the encoding from the first bytes, if it is a keyhaven backup at all.
    pub fn detect(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(BIN_MAGIC) {
            Some(Format::Binary)
        } else if bytes.starts_with(TEXT_MAGIC.as_bytes()) {
            Some(Format::Text)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Binary => "binary",
        })
    }
}

/// The secret that opens a backup.
#[derive(Debug)]
pub enum BackupSecret {
    /// The passphrase of a passphrase-protected backup.
    Passphrase(SecretString),
    /// The 32-byte master key of a Shamir backup, as [`shamir::combine`] recovers it.
    MasterKey(SecretBytes),
}

/// How a backup is protected, as recorded in its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum BackupProtection {
    /// One Argon2id derivation from a passphrase gives the key-encryption key.
    Passphrase {
        /// Always `argon2id-v19`.
        kdf: String,
        /// Argon2id costs.
        params: KdfParams,
        /// The salt, base64.
        salt: String,
    },
    /// A random master key split into Shamir shares held by custodians.
    Shamir {
        /// Shares needed to recover.
        threshold: u8,
        /// Shares made.
        shares: u8,
        /// The group of the master key and commitments (`p256`).
        group: String,
        /// The Feldman commitments (compressed points, hex), `threshold` of them.
        commitments: Vec<String>,
        /// The custodians' names, by share index (1-based in the shares).
        custodians: Vec<String>,
    },
}

/// One key as listed in the header (readable without the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderKey {
    /// The key's id in the source store.
    pub id: KeyId,
    /// Its label.
    pub label: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// SHA-256 of its SPKI DER, hex.
    pub fingerprint: String,
    /// True if only the public key is in the backup (hardware key).
    pub hardware: bool,
    /// The backend it came from.
    pub backend: String,
}

/// The part of a backup readable without the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackupHeader {
    /// Format version.
    pub format: u32,
    /// Random 128-bit id, hex.
    pub backup_id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Number of keys (records).
    pub key_count: usize,
    /// How the records are protected.
    pub protection: BackupProtection,
    /// The keys, in record order.
    pub keys: Vec<HeaderKey>,
    /// Short human-checkable fingerprint of the backup (`XXXX-XXXX-XXXX`), also printed on
    /// every Shamir share of it.
    pub fingerprint: String,
    /// Format 2: who made it (the principal), if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// Format 2: what it is for, in the creator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Format 2: after this time (seconds since the Unix epoch) a restore refuses the backup
    /// unless told to take an expired one ([`check_expiry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// What a backup records about itself besides its keys (format 2): its creator, a description
/// and an optional expiry. All of it is in the header, authenticated with the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupMeta {
    /// Who makes it (the principal).
    pub creator: Option<String>,
    /// What it is for.
    pub description: Option<String>,
    /// How long after its creation it expires, in seconds (recorded as the absolute
    /// `expires_at` of the header).
    pub valid_for: Option<u64>,
}

impl BackupMeta {
    /// Metadata with these fields.
    pub fn new(
        creator: Option<String>,
        description: Option<String>,
        valid_for: Option<u64>,
    ) -> Self {
        BackupMeta {
            creator,
            description,
            valid_for,
        }
    }
}

/// The longest description a backup takes, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;

/// The last time a header may name: RFC 3339 has four-digit years.
const LAST_TIME: u64 = keyhaven_core::LAST_RFC3339_TIME;

/// Refuses a backup whose expiry has passed at `now`, unless `allow_expired`. [`open`] and
/// [`open_with_shares`] call it on the authenticated header.
///
/// # Errors
/// [`BackupError::Expired`] naming when it expired.
pub fn check_expiry(header: &BackupHeader, now: u64, allow_expired: bool) -> Result<()> {
    match header.expires_at {
        Some(at) if now >= at && !allow_expired => Err(BackupError::Expired {
            expired_at: at,
            backup_id: header.backup_id.clone(),
        }),
        _ => Ok(()),
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The header.
    pub header: BackupHeader,
    /// The encoding.
    pub format: Format,
    /// Structure, header fields, fingerprint and integrity digest are fine.
    pub integrity_ok: bool,
    /// With the secret: the header tag and every record authenticated.
    pub authenticated: bool,
    /// With the secret: private keys that were loaded and matched their recorded public key.
    pub private_keys_checked: usize,
    /// Keys backed up as public key only (hardware).
    pub hardware_keys: usize,
}

/// Computes a backup's short fingerprint: `SHA-256(domain || backup id || anchor)`, the first 60
/// bits in Crockford base32 as `XXXX-XXXX-XXXX`. The anchor is the KDF salt for passphrase
/// backups and the Feldman commitments for Shamir backups (which bind the master key).
pub(crate) fn backup_fingerprint(backup_id: &[u8; 16], anchor: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"keyhaven-backup/v1 fingerprint\n");
    h.update(backup_id);
    h.update(anchor);
    let s = base32_prefix(&h.finalize(), 12);
    format!("{}-{}-{}", &s[0..4], &s[4..8], &s[8..12])
}

pub(crate) fn parse_backup_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || s.bytes().any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl BackupHeader {
    fn backup_id_bytes(&self) -> Result<[u8; 16]> {
        parse_backup_id(&self.backup_id).ok_or_else(|| {
            BackupError::damaged("header", "backup_id is not 32 lowercase hex digits")
        })
    }

    /// Checks every field that can be checked without the secret.
    fn check(&self) -> Result<()> {
        let bad = |reason: String| BackupError::damaged("header", reason);
        let id = self.backup_id_bytes()?;
        if self.format < 2
            && (self.creator.is_some() || self.description.is_some() || self.expires_at.is_some())
        {
            return Err(bad(
                "format 1 headers carry no creator, description or expiry".into(),
            ));
        }
        check_meta_text("creator", self.creator.as_deref(), 256).map_err(|e| bad(e.to_string()))?;
        check_meta_text("description", self.description.as_deref(), MAX_DESCRIPTION)
            .map_err(|e| bad(e.to_string()))?;
        if self.expires_at.is_some_and(|e| e <= self.created_at) {
            return Err(bad("it expires before it was made".into()));
        }
        if self.created_at > LAST_TIME || self.expires_at.is_some_and(|e| e > LAST_TIME) {
            return Err(bad("a time beyond the year 9999".into()));
        }
        if self.key_count != self.keys.len() || self.key_count > MAX_KEYS {
            return Err(bad(format!(
                "key_count {} does not match the {} keys listed",
                self.key_count,
                self.keys.len()
            )));
        }
        let mut ids = BTreeSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if !ids.insert(&k.id) {
                return Err(bad(format!("key {i}: duplicate id {}", k.id)));
            }
            if k.fingerprint.len() != 64 || hex::decode(&k.fingerprint).is_err() {
                return Err(bad(format!("key {i} ({}): malformed fingerprint", k.id)));
            }
        }
        let anchor = match &self.protection {
            BackupProtection::Passphrase { kdf, params, salt } => {
                if kdf != ARGON2ID_V19 {
                    return Err(bad(format!("unknown KDF '{kdf}'")));
                }
                params.check()?;
                let salt = Base64::decode_vec(salt)
                    .map_err(|_| bad("the KDF salt is not base64".into()))?;
                if !(16..=64).contains(&salt.len()) {
                    return Err(bad("the KDF salt must be 16 to 64 bytes".into()));
                }
                salt
            }
            BackupProtection::Shamir {
                threshold,
                shares,
                group,
                commitments,
                custodians,
            } => {
                if group != SHAMIR_GROUP {
                    return Err(bad(format!("unknown Shamir group '{group}'")));
                }
                shamir::check_params(*threshold, *shares)
                    .map_err(|e| bad(format!("Shamir parameters: {e}")))?;
                if custodians.len() != usize::from(*shares) {
                    return Err(bad("one custodian name per share is needed".into()));
                }
                if commitments.len() != usize::from(*threshold) {
                    return Err(bad("there must be one commitment per threshold".into()));
                }
                shamir::commitments_from_hex(commitments)
                    .map_err(|e| bad(format!("commitments: {e}")))?
            }
        };
        if backup_fingerprint(&id, &anchor) != self.fingerprint {
            return Err(bad(
                "the backup fingerprint does not match its id and protection".into(),
            ));
        }
        Ok(())
    }
}

/// A parsed (not yet decrypted) backup.
pub(crate) struct Parsed {
    pub(crate) format: Format,
    pub(crate) header: BackupHeader,
    header_hash: [u8; 32],
    header_tag: Vec<u8>,
    records: Vec<Vec<u8>>,
}

fn header_aad(header_hash: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"keyhaven-backup/v1 header\0".to_vec();
    aad.extend_from_slice(header_hash);
    aad
}

fn record_aad(header_hash: &[u8; 32], index: usize, id: &KeyId) -> Vec<u8> {
    let mut aad = b"keyhaven-backup/v1 record\0".to_vec();
    aad.extend_from_slice(header_hash);
    aad.extend_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(id.as_str().as_bytes());
    aad
}

fn record_part(index: usize, header: &BackupHeader) -> String {
    match header.keys.get(index) {
        Some(k) => format!("record {index} (key {} '{}')", k.id, k.label),
        None => format!("record {index}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Record plaintext

fn encode_record(e: &BackupEntry) -> Zeroizing<Vec<u8>> {
    let private = e.private.as_ref().map(SecretBytes::expose_secret);
    let meta: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let cap = 64
        + e.id.as_str().len()
        + e.label.len()
        + e.backend.len()
        + e.public_key.spki_der().len()
        + meta
        + private.map_or(0, |p| p.len() + 4)
        + e.tpm_blob.as_ref().map_or(0, |b| b.len() + 4)
        + 64;
    let mut buf = secret_buf(cap);
    let mut w = Writer(&mut buf);
    w.u8(1);
    w.str(e.id.as_str());
    w.str(&e.label);
    w.str(e.algorithm.short_name());
    w.str(e.protection.as_str());
    w.str(&e.backend);
    w.u64(e.created_at);
    w.bytes(e.public_key.spki_der());
    let flags = u8::from(e.hardware)
        | (u8::from(private.is_some()) << 1)
        | (u8::from(e.tpm_blob.is_some()) << 2);
    w.u8(flags);
    w.u32(u32::try_from(e.metadata.len()).unwrap_or(u32::MAX));
    for (k, v) in &e.metadata {
        w.str(k);
        w.str(v);
    }
    if let Some(p) = private {
        w.bytes(p);
    }
    if let Some(b) = &e.tpm_blob {
        w.bytes(b);
    }
    buf
}

fn parse_protection(s: &str) -> std::result::Result<Protection, String> {
    Ok(match s {
        "software-plain" => Protection::SoftwarePlain,
        "software-encrypted" => Protection::SoftwareEncrypted,
        "hardware" => Protection::Hardware,
        _ => return Err(format!("unknown protection '{s}'")),
    })
}

fn decode_record(bytes: &[u8]) -> std::result::Result<BackupEntry, String> {
    let mut r = Reader::new(bytes);
    let version = r.u8("record version")?;
    if version != 1 {
        return Err(format!("unknown record version {version}"));
    }
    let id: KeyId = r.str("key id")?.parse().map_err(|e| format!("{e}"))?;
    let label = r.str("label")?.to_owned();
    let algorithm: Algorithm = r.str("algorithm")?.parse().map_err(|e| format!("{e}"))?;
    let protection = parse_protection(r.str("protection")?)?;
    let backend = r.str("backend")?.to_owned();
    let created_at = r.u64("created_at")?;
    let spki = r.bytes("public key")?;
    let public_key = keyhaven_crypto::default_provider()
        .parse_public_key_der_as(algorithm, spki)
        .map_err(|e| format!("public key: {e} (the record says {algorithm})"))?;
    let flags = r.u8("flags")?;
    if flags & !0b111 != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let n = r.u32("metadata count")? as usize;
    let mut metadata = std::collections::BTreeMap::new();
    for _ in 0..n.min(bytes.len()) {
        let k = r.str("metadata key")?.to_owned();
        let v = r.str("metadata value")?.to_owned();
        metadata.insert(k, v);
    }
    if metadata.len() != n {
        return Err("metadata entries are duplicated or missing".into());
    }
    let private = if flags & 0b10 != 0 {
        Some(SecretBytes::copy_from(r.bytes("private key")?))
    } else {
        None
    };
    let tpm_blob = if flags & 0b100 != 0 {
        Some(r.bytes("TPM blob")?.to_vec())
    } else {
        None
    };
    r.finish("record")?;
    let hardware = flags & 1 != 0;
    if hardware == private.is_some() {
        return Err("a record holds a private key exactly when it is not a hardware key".into());
    }
    Ok(BackupEntry {
        id,
        label,
        algorithm,
        protection,
        public_key,
        created_at,
        backend,
        metadata,
        private,
        hardware,
        tpm_blob,
    })
}

// ---------------------------------------------------------------------------------------------
// Encodings

/// Encodes a backup of format `version` (the header's own).
fn encode(
    format: Format,
    version: u32,
    header_json: &[u8],
    tag: &[u8],
    records: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        Format::Text => {
            let mut s = String::new();
            s.push_str(&format!("{TEXT_MAGIC}{version}\n"));
            s.push_str("header ");
            s.push_str(&String::from_utf8_lossy(header_json));
            s.push('\n');
            s.push_str("header-tag ");
            s.push_str(&Base64::encode_string(tag));
            s.push('\n');
            for r in records {
                s.push_str("record ");
                s.push_str(&Base64::encode_string(r));
                s.push('\n');
            }
            out = s.into_bytes();
            let digest = Sha256::digest(&out);
            out.extend_from_slice(format!("{DIGEST_PREFIX}{}\n", hex::encode(digest)).as_bytes());
        }
        Format::Binary => {
            let mut w = Writer(&mut out);
            w.raw(BIN_MAGIC);
            w.u8(u8::try_from(version).unwrap_or(u8::MAX));
            w.bytes(header_json);
            w.bytes(tag);
            w.u32(u32::try_from(records.len()).unwrap_or(u32::MAX));
            for r in records {
                w.bytes(r);
            }
            let digest = Sha256::digest(&out);
            out.extend_from_slice(&digest);
        }
    }
    out
}

/// A creator or description: printable text (no control characters) of bounded length.
fn check_meta_text(what: &str, text: Option<&str>, max: usize) -> Result<()> {
    let Some(t) = text else {
        return Ok(());
    };
    if t.len() > max {
        return Err(BackupError::InvalidInput(format!(
            "the backup's {what} is {} bytes; at most {max}",
            t.len()
        )));
    }
    // Control characters, and the invisible format characters that reorder or hide text on a
    // terminal (bidirectional overrides, zero-width marks), so that what `inspect` shows is
    // what is there.
    let invisible = |c: char| {
        matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    if t.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(BackupError::InvalidInput(format!(
            "the backup's {what} holds control or invisible formatting characters"
        )));
    }
    Ok(())
}

fn check_version(found: u32) -> Result<()> {
    if found > FORMAT_VERSION {
        return Err(BackupError::NewerFormat {
            found,
            supported: FORMAT_VERSION,
        });
    }
    if found == 0 {
        return Err(BackupError::damaged(
            "version",
            "format version 0 does not exist",
        ));
    }
    Ok(())
}

fn parse_header_json(json: &[u8], version: u32) -> Result<(BackupHeader, [u8; 32])> {
    let header: BackupHeader = serde_json::from_slice(json)
        .map_err(|e| BackupError::damaged("header", format!("not a valid header: {e}")))?;
    if header.format != version {
        return Err(BackupError::damaged(
            "header",
            format!(
                "header says format {} but the file says {version}",
                header.format
            ),
        ));
    }
    header.check()?;
    Ok((header, Sha256::digest(json).into()))
}

fn check_sealed_len(part: String, sealed: &[u8]) -> Result<()> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(BackupError::damaged(
            part,
            "too short to be a sealed record",
        ));
    }
    Ok(())
}

fn parse_text(bytes: &[u8]) -> Result<Parsed> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| BackupError::damaged("file", "a text backup must be UTF-8"))?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(BackupError::damaged(
            "file",
            "truncated: the file does not end with a newline",
        ));
    };
    let (before, digest_line) = match body.rfind('\n') {
        Some(i) => (&text[..=i], &body[i + 1..]),
        None => return Err(BackupError::damaged("file", "truncated: only one line")),
    };
    let Some(digest_hex) = digest_line.strip_prefix(DIGEST_PREFIX) else {
        return Err(BackupError::damaged(
            "integrity digest",
            "truncated: the last line is not the sha256 digest",
        ));
    };
    let mut want = [0u8; 32];
    if digest_hex.len() != 64
        || digest_hex.bytes().any(|b| b.is_ascii_uppercase())
        || hex::decode_to_slice(digest_hex, &mut want).is_err()
    {
        return Err(BackupError::damaged(
            "integrity digest",
            "malformed sha256 line",
        ));
    }
    let got: [u8; 32] = Sha256::digest(before.as_bytes()).into();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &want[..])) {
        return Err(BackupError::damaged(
            "integrity digest",
            "SHA-256 does not match: the file was altered, truncated or damaged in transit",
        ));
    }
    let mut lines = before.lines();
    let first = lines.next().unwrap_or("");
    let version: u32 = first
        .strip_prefix(TEXT_MAGIC)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            BackupError::NotABackup("the first line is not 'keyhaven-backup N'".into())
        })?;
    check_version(version)?;
    let json = lines
        .next()
        .and_then(|l| l.strip_prefix("header "))
        .ok_or_else(|| BackupError::damaged("header", "missing 'header' line"))?;
    let (header, header_hash) = parse_header_json(json.as_bytes(), version)?;
    let tag = lines
        .next()
        .and_then(|l| l.strip_prefix("header-tag "))
        .and_then(|b| Base64::decode_vec(b).ok())
        .ok_or_else(|| BackupError::damaged("header tag", "missing or malformed"))?;
    if tag.len() != NONCE_LEN + TAG_LEN {
        return Err(BackupError::damaged("header tag", "wrong length"));
    }
    let mut records = Vec::with_capacity(header.key_count);
    for (i, line) in lines.enumerate() {
        let part = record_part(i, &header);
        let b64 = line
            .strip_prefix("record ")
            .ok_or_else(|| BackupError::damaged(part.clone(), "not a 'record' line"))?;
        let sealed = Base64::decode_vec(b64)
            .map_err(|_| BackupError::damaged(part.clone(), "not base64"))?;
        check_sealed_len(part, &sealed)?;
        records.push(sealed);
    }
    finish_parse(Format::Text, header, header_hash, tag, records)
}

fn finish_parse(
    format: Format,
    header: BackupHeader,
    header_hash: [u8; 32],
    header_tag: Vec<u8>,
    records: Vec<Vec<u8>>,
) -> Result<Parsed> {
    if records.len() != header.key_count {
        return Err(BackupError::damaged(
            "records",
            format!(
                "the header lists {} keys but there are {} records",
                header.key_count,
                records.len()
            ),
        ));
    }
    Ok(Parsed {
        format,
        header,
        header_hash,
        header_tag,
        records,
    })
}

fn parse_binary(bytes: &[u8]) -> Result<Parsed> {
    let damaged = |part: &str| {
        let part = part.to_owned();
        move |reason: String| BackupError::damaged(part, reason)
    };
    if bytes.len() < BIN_MAGIC.len() + 1 + 32 {
        return Err(BackupError::damaged("file", "truncated: too short"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    let got: [u8; 32] = Sha256::digest(body).into();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], digest)) {
        return Err(BackupError::damaged(
            "integrity digest",
            "SHA-256 does not match: the file was altered, truncated or damaged in transit",
        ));
    }
    let mut r = Reader::new(body);
    let _magic = r.raw(4, "magic").map_err(damaged("file"))?;
    let version = u32::from(r.u8("version").map_err(damaged("file"))?);
    check_version(version)?;
    let json = r.bytes("header").map_err(damaged("header"))?;
    let (header, header_hash) = parse_header_json(json, version)?;
    let tag = r.bytes("header tag").map_err(damaged("header tag"))?;
    if tag.len() != NONCE_LEN + TAG_LEN {
        return Err(BackupError::damaged("header tag", "wrong length"));
    }
    let count = r.u32("record count").map_err(damaged("records"))? as usize;
    if count != header.key_count {
        return Err(BackupError::damaged(
            "records",
            format!(
                "the header lists {} keys but the file says {count} records",
                header.key_count
            ),
        ));
    }
    let mut records = Vec::with_capacity(count.min(MAX_KEYS));
    for i in 0..count {
        let part = record_part(i, &header);
        let sealed = r.bytes("record").map_err(damaged(&part))?;
        check_sealed_len(part, sealed)?;
        records.push(sealed.to_vec());
    }
    r.finish("last record").map_err(damaged("file"))?;
    finish_parse(Format::Binary, header, header_hash, tag.to_vec(), records)
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed> {
    match Format::detect(bytes) {
        Some(Format::Text) => parse_text(bytes),
        Some(Format::Binary) => parse_binary(bytes),
        None => Err(BackupError::NotABackup(
            "it starts with neither 'keyhaven-backup ' nor the binary magic 'KHBK'".into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Public operations

/// Reads a backup's header without the secret, after checking its structure and integrity
/// digest.
///
/// # Errors
/// [`BackupError::NotABackup`], [`BackupError::NewerFormat`], or [`BackupError::Damaged`]
/// naming the damaged part.
pub fn inspect(bytes: &[u8]) -> Result<BackupHeader> {
    Ok(parse(bytes)?.header)
}

fn kek_for(parsed: &Parsed, secret: &BackupSecret) -> Result<Zeroizing<[u8; 32]>> {
    let id = parsed.header.backup_id_bytes()?;
    match (&parsed.header.protection, secret) {
        (BackupProtection::Passphrase { params, salt, .. }, BackupSecret::Passphrase(p)) => {
            let salt = Base64::decode_vec(salt)
                .map_err(|_| BackupError::damaged("header", "the KDF salt is not base64"))?;
            seal::derive_passphrase(p, params, &salt)
        }
        (BackupProtection::Shamir { .. }, BackupSecret::MasterKey(m)) => {
            seal::derive_master(m, &id)
        }
        (BackupProtection::Passphrase { .. }, BackupSecret::MasterKey(_)) => {
            Err(BackupError::WrongSecretKind(
                "this backup is protected by a passphrase, not Shamir shares".into(),
            ))
        }
        (
            BackupProtection::Shamir {
                threshold, shares, ..
            },
            BackupSecret::Passphrase(_),
        ) => Err(BackupError::WrongSecretKind(format!(
            "this backup is protected by Shamir shares ({threshold} of {shares}), not a passphrase: combine the custodians' shares"
        ))),
    }
}

/// Decrypts every record; the header tag first, so a wrong secret is reported as such.
/// Decrypts every record. With `expired_at_now`, a backup whose authenticated header says it
/// has expired is refused before any record (any private key) is decrypted.
fn decrypt(
    parsed: &Parsed,
    secret: &BackupSecret,
    expired_at_now: Option<u64>,
) -> Result<Vec<BackupEntry>> {
    let kek = kek_for(parsed, secret)?;
    let cipher = seal::cipher(&kek)?;
    if seal::open(
        &cipher,
        &parsed.header_tag,
        &header_aad(&parsed.header_hash),
    )
    .is_none()
    {
        return Err(match secret {
            BackupSecret::Passphrase(_) => BackupError::BadPassphrase,
            BackupSecret::MasterKey(_) => BackupError::WrongMasterKey,
        });
    }
    // The header is authenticated now: its expiry can be believed.
    if let Some(now) = expired_at_now {
        check_expiry(&parsed.header, now, false)?;
    }
    let mut entries = Vec::with_capacity(parsed.records.len());
    for (i, (sealed, key)) in parsed.records.iter().zip(&parsed.header.keys).enumerate() {
        let plain = seal::open(
            &cipher,
            sealed,
            &record_aad(&parsed.header_hash, i, &key.id),
        )
        .ok_or_else(|| BackupError::RecordAuth {
            index: i,
            key: key.id.to_string(),
        })?;
        let entry = decode_record(&plain)
            .map_err(|reason| BackupError::damaged(record_part(i, &parsed.header), reason))?;
        let consistent = entry.id == key.id
            && entry.label == key.label
            && entry.algorithm == key.algorithm
            && entry.hardware == key.hardware
            && entry.backend == key.backend
            && entry.fingerprint().to_hex() == key.fingerprint;
        if !consistent {
            return Err(BackupError::damaged(
                record_part(i, &parsed.header),
                "the record does not match its header entry",
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Decrypts a backup: every record is authenticated (bound to this backup's header and to its
/// position) before anything is returned.
///
/// # Errors
/// As [`inspect`], plus [`BackupError::BadPassphrase`] / [`BackupError::WrongMasterKey`] for a
/// wrong secret, [`BackupError::WrongSecretKind`] for a passphrase given to a Shamir backup (or
/// the reverse), and [`BackupError::RecordAuth`] naming a record that fails authentication.
pub fn open(bytes: &[u8], secret: &BackupSecret) -> Result<Vec<BackupEntry>> {
    open_with(bytes, secret, false)
}

/// [`open`], taking an expired backup too when `allow_expired` (the caller asked for it on
/// purpose). The expiry checked is the authenticated header's, of these very bytes.
///
/// # Errors
/// As [`open`]; [`BackupError::Expired`] for an expired backup unless `allow_expired`.
pub fn open_with(
    bytes: &[u8],
    secret: &BackupSecret,
    allow_expired: bool,
) -> Result<Vec<BackupEntry>> {
    let parsed = parse(bytes)?;
    // The expiry is read from a header the secret vouches for (its tag), never from one an
    // editor wrote, and checked before any private key is decrypted.
    decrypt(&parsed, secret, (!allow_expired).then(unix_now))
}

/// Opens a Shamir backup with custodian shares: combines them (see [`shamir::combine`]), checks
/// they belong to this backup, and decrypts.
///
/// # Errors
/// As [`open`] and [`shamir::combine`]; [`BackupError::Combine`] if the shares belong to another
/// backup.
pub fn open_with_shares(bytes: &[u8], shares: &[Share]) -> Result<Vec<BackupEntry>> {
    let parsed = parse(bytes)?;
    if let Some(first) = shares.first()
        && (first.backup_id() != parsed.header.backup_id
            || first.fingerprint() != parsed.header.fingerprint)
    {
        return Err(BackupError::Combine(format!(
            "the shares are for backup {} ({}), this file is backup {} ({})",
            first.backup_id(),
            first.fingerprint(),
            parsed.header.backup_id,
            parsed.header.fingerprint
        )));
    }
    let master = shamir::combine(shares)?;
    decrypt(
        &parsed,
        &BackupSecret::MasterKey(master.into_secret()),
        Some(unix_now()),
    )
}

/// Checks a backup: structure, header and integrity digest without the secret; with it, also
/// the header tag, every record's authentication, and that every private key loads and matches
/// the public key recorded for it.
///
/// # Errors
/// The first problem found, as [`open`] reports it.
pub fn verify(bytes: &[u8], secret: Option<&BackupSecret>) -> Result<VerifyReport> {
    let parsed = parse(bytes)?;
    let hardware_keys = parsed.header.keys.iter().filter(|k| k.hardware).count();
    let mut report = VerifyReport {
        header: parsed.header.clone(),
        format: parsed.format,
        integrity_ok: true,
        authenticated: false,
        private_keys_checked: 0,
        hardware_keys,
    };
    if let Some(secret) = secret {
        // Verifying an expired backup is fine: nothing is restored.
        let entries = decrypt(&parsed, secret, None)?;
        for (i, e) in entries.iter().enumerate() {
            if let Some(der) = &e.private {
                let key = keyhaven_crypto::default_provider()
                    .load_pkcs8_as(e.public_key.algorithm(), der.expose_secret())
                    .map_err(|err| {
                        BackupError::damaged(record_part(i, &parsed.header), err.to_string())
                    })?;
                if key.public_key() != &e.public_key {
                    return Err(BackupError::damaged(
                        record_part(i, &parsed.header),
                        "the private key does not match the recorded public key",
                    ));
                }
                report.private_keys_checked += 1;
            }
        }
        report.authenticated = true;
    }
    Ok(report)
}

/// Re-encodes a backup in another format without the secret (same header, same sealed records).
///
/// # Errors
/// As [`inspect`].
pub fn convert(bytes: &[u8], format: Format) -> Result<Vec<u8>> {
    let parsed = parse(bytes)?;
    let json = serde_json::to_vec(&parsed.header)
        .map_err(|e| BackupError::InvalidInput(format!("cannot encode the header: {e}")))?;
    // The header bytes are hashed into every record's AAD: re-serializing must reproduce them.
    if <[u8; 32]>::from(Sha256::digest(&json)) != parsed.header_hash {
        return Err(BackupError::damaged(
            "header",
            "the header is not in canonical form and cannot be re-encoded",
        ));
    }
    Ok(encode(
        format,
        parsed.header.format,
        &json,
        &parsed.header_tag,
        &parsed.records,
    ))
}

fn check_entries(entries: &[BackupEntry]) -> Result<()> {
    let mut ids = BTreeSet::new();
    for e in entries {
        if !ids.insert(&e.id) {
            return Err(BackupError::InvalidInput(format!(
                "key {} is listed twice",
                e.id
            )));
        }
        if e.hardware == e.private.is_some() {
            return Err(BackupError::InvalidInput(format!(
                "key {}: a software key needs its private key, a hardware key must have none",
                e.id
            )));
        }
    }
    if entries.len() > MAX_KEYS {
        return Err(BackupError::InvalidInput(format!(
            "at most {MAX_KEYS} keys per backup"
        )));
    }
    Ok(())
}

fn build(
    entries: &[BackupEntry],
    backup_id: [u8; 16],
    protection: BackupProtection,
    fingerprint: String,
    kek: &[u8; 32],
    format: Format,
    meta: &BackupMeta,
) -> Result<Vec<u8>> {
    let created_at = unix_now();
    check_meta_text("creator", meta.creator.as_deref(), 256)?;
    check_meta_text("description", meta.description.as_deref(), MAX_DESCRIPTION)?;
    if meta.valid_for == Some(0) {
        return Err(BackupError::InvalidInput(
            "a backup valid for no time at all would be expired when written".into(),
        ));
    }
    if meta
        .valid_for
        .is_some_and(|v| created_at.saturating_add(v) > LAST_TIME)
    {
        return Err(BackupError::InvalidInput(
            "a backup's expiry must be before the year 10000".into(),
        ));
    }
    let header = BackupHeader {
        creator: meta.creator.clone(),
        description: meta.description.clone(),
        expires_at: meta.valid_for.map(|v| created_at.saturating_add(v)),
        // Format 1 when there is no metadata, so every keyhaven that reads backups reads it.
        format: if *meta == BackupMeta::default() {
            1
        } else {
            FORMAT_VERSION
        },
        backup_id: hex::encode(backup_id),
        created_at,
        key_count: entries.len(),
        protection,
        keys: entries
            .iter()
            .map(|e| HeaderKey {
                id: e.id.clone(),
                label: e.label.clone(),
                algorithm: e.algorithm,
                fingerprint: e.fingerprint().to_hex(),
                hardware: e.hardware,
                backend: e.backend.clone(),
            })
            .collect(),
        fingerprint,
    };
    header.check()?;
    let json = serde_json::to_vec(&header)
        .map_err(|e| BackupError::InvalidInput(format!("cannot encode the header: {e}")))?;
    let header_hash: [u8; 32] = Sha256::digest(&json).into();
    let tag = seal::seal(kek, b"", &header_aad(&header_hash))?;
    let mut records = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let plain = encode_record(e);
        records.push(seal::seal(
            kek,
            &plain,
            &record_aad(&header_hash, i, &e.id),
        )?);
    }
    Ok(encode(format, header.format, &json, &tag, &records))
}

fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    keyhaven_crypto::fill_random(&mut id)?;
    Ok(id)
}

/// Writes a passphrase-protected backup: one Argon2id derivation (parameters and salt in the
/// header) gives the key that seals every record.
///
/// # Errors
/// [`BackupError::InvalidInput`] for an empty passphrase, duplicate keys or bad KDF parameters.
pub fn write(
    entries: &[BackupEntry],
    passphrase: &SecretString,
    kdf: KdfParams,
    format: Format,
) -> Result<Vec<u8>> {
    write_with_meta(entries, passphrase, kdf, format, &BackupMeta::default())
}

/// [`write`], recording `meta` (creator, description, expiry) in the header.
///
/// # Errors
/// As [`write`]; [`BackupError::InvalidInput`] for a description too long or with control
/// characters, or an expiry not in the future.
pub fn write_with_meta(
    entries: &[BackupEntry],
    passphrase: &SecretString,
    kdf: KdfParams,
    format: Format,
    meta: &BackupMeta,
) -> Result<Vec<u8>> {
    if passphrase.expose_secret().is_empty() {
        return Err(BackupError::InvalidInput(
            "the backup passphrase may not be empty".into(),
        ));
    }
    check_entries(entries)?;
    kdf.check().map_err(|_| {
        BackupError::InvalidInput(format!(
            "Argon2id parameters {kdf:?} are out of range (at most 4 GiB, 64 iterations, 64 lanes)"
        ))
    })?;
    let backup_id = random_id()?;
    let mut salt = [0u8; 16];
    keyhaven_crypto::fill_random(&mut salt)?;
    let kek = seal::derive_passphrase(passphrase, &kdf, &salt)?;
    let protection = BackupProtection::Passphrase {
        kdf: ARGON2ID_V19.into(),
        params: kdf,
        salt: Base64::encode_string(&salt),
    };
    let fingerprint = backup_fingerprint(&backup_id, &salt);
    build(
        entries,
        backup_id,
        protection,
        fingerprint,
        &kek,
        format,
        meta,
    )
}

/// Writes a Shamir backup: the records are sealed under a key derived (HKDF-SHA256) from a
/// random master key, which is split into one share per custodian, any `threshold` of which
/// recover it. No KDF: the master key is full-strength random.
///
/// # Errors
/// [`BackupError::InvalidInput`] for `threshold`/custodian counts outside 2 <= t <= n <= 255,
/// bad custodian names or keys, or duplicate keys.
pub fn write_shamir(
    entries: &[BackupEntry],
    threshold: u8,
    custodians: &[Custodian],
    format: Format,
) -> Result<(Vec<u8>, Vec<Share>)> {
    write_shamir_with_meta(
        entries,
        threshold,
        custodians,
        format,
        &BackupMeta::default(),
    )
}

/// [`write_shamir`], recording `meta` in the header.
///
/// # Errors
/// As [`write_shamir`] and [`write_with_meta`].
pub fn write_shamir_with_meta(
    entries: &[BackupEntry],
    threshold: u8,
    custodians: &[Custodian],
    format: Format,
    meta: &BackupMeta,
) -> Result<(Vec<u8>, Vec<Share>)> {
    check_entries(entries)?;
    let backup_id = random_id()?;
    let master = MasterKey::generate()?;
    let shares = shamir::split(&master, &backup_id, threshold, custodians)?;
    let first = shares
        .first()
        .ok_or_else(|| BackupError::InvalidInput("no custodians".into()))?;
    let protection = BackupProtection::Shamir {
        threshold,
        shares: u8::try_from(custodians.len()).unwrap_or(u8::MAX),
        group: SHAMIR_GROUP.into(),
        commitments: first.commitments_hex(),
        custodians: custodians.iter().map(|c| c.name.clone()).collect(),
    };
    let fingerprint = first.fingerprint().to_owned();
    let kek = seal::derive_master(master.secret(), &backup_id)?;
    let bytes = build(
        entries,
        backup_id,
        protection,
        fingerprint,
        &kek,
        format,
        meta,
    )?;
    Ok((bytes, shares))
}
