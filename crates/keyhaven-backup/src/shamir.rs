//! Shamir custodian shares of a backup's master key, Feldman-verifiable, over P-256.
//!
//! **Group choice.** The master key is a uniformly random non-zero P-256 scalar (the group order
//! is `2^256 - 2^224 + ...`, so it has ~256 bits of entropy), split with `vsss-rs`'s Feldman
//! scheme over the P-256 group (prime order, the RustCrypto 0.14 line this workspace already
//! uses). The AES-256 key-encryption key is `HKDF-SHA256(master scalar bytes, salt = backup id)`,
//! never the scalar itself. Every share carries the `threshold` Feldman commitments
//! `C_j = a_j * G` of the sharing polynomial, so a custodian checks `s_i * G == sum C_j * i^j`
//! without learning the secret; `C_0 = master * G` also binds the backup fingerprint (computed
//! from the backup id and the commitments) to the master key.

use std::fmt;
use std::time::UNIX_EPOCH;

use base64ct::{Base64, Encoding};
use elliptic_curve::ff::{Field, PrimeField};
use elliptic_curve::group::GroupEncoding;
use keyhaven_core::{Algorithm, Error, KeyId, KeyStore, PublicKey, SecretBytes, unix_now};
use p256::{ProjectivePoint, Scalar};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use vsss_rs::{
    DefaultShare, FeldmanVerifierSet, IdentifierPrimeField, ReadableShareSet, ValueGroup,
};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{BackupError, Result};
use crate::format::{backup_fingerprint, parse_backup_id};
use crate::seal::{self, NONCE_LEN, TAG_LEN};

type VShare = DefaultShare<IdentifierPrimeField<Scalar>, IdentifierPrimeField<Scalar>>;
type Verifier = ValueGroup<ProjectivePoint>;

const BEGIN: &str = "-----BEGIN KEYHAVEN SHARE-----";
const END: &str = "-----END KEYHAVEN SHARE-----";
const POINT_LEN: usize = 33;
const DATA_CHUNK: usize = 64;
const MAX_NAME: usize = 64;
/// X25519 SPKI DER up to the 32 key bytes (RFC 8410).
const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];

/// Checks `2 <= threshold <= shares <= 255`.
pub(crate) fn check_params(threshold: u8, shares: u8) -> std::result::Result<(), String> {
    if threshold < 2 || threshold > shares {
        return Err(format!(
            "need 2 <= threshold <= shares <= 255, got {threshold} of {shares}"
        ));
    }
    Ok(())
}

fn rng() -> Result<rand_core::UnwrapErr<getrandom::SysRng>> {
    // Probe first so an OS without entropy is an error rather than a panic inside vsss-rs.
    let mut probe = [0u8; 1];
    keyhaven_crypto::fill_random(&mut probe)?;
    Ok(rand_core::UnwrapErr(getrandom::SysRng))
}

/// The random master key of a Shamir backup: a non-zero P-256 scalar (32 bytes, big-endian).
pub struct MasterKey(SecretBytes);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// A fresh random master key.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the OS has no randomness.
    pub fn generate() -> Result<Self> {
        let mut rng = rng()?;
        loop {
            let s = Scalar::random(&mut rng);
            if !bool::from(s.is_zero()) {
                return Ok(MasterKey(SecretBytes::copy_from(&s.to_repr())));
            }
        }
    }

    /// Wraps 32 bytes (a canonical non-zero P-256 scalar).
    ///
    /// # Errors
    /// [`BackupError::InvalidInput`] if the bytes are not such a scalar.
    pub fn from_secret(secret: SecretBytes) -> Result<Self> {
        scalar_of(&secret)?;
        Ok(MasterKey(secret))
    }

    /// The 32 key bytes.
    pub fn secret(&self) -> &SecretBytes {
        &self.0
    }

    /// The key bytes, for [`crate::BackupSecret::MasterKey`].
    pub fn into_secret(self) -> SecretBytes {
        self.0
    }
}

fn scalar_of(secret: &SecretBytes) -> Result<Scalar> {
    let bad =
        || BackupError::InvalidInput("a master key is a non-zero 32-byte P-256 scalar".into());
    let bytes: [u8; 32] = secret.expose_secret().try_into().map_err(|_| bad())?;
    let s = Option::<Scalar>::from(Scalar::from_repr(bytes.into())).ok_or_else(bad)?;
    if bool::from(s.is_zero()) {
        return Err(bad());
    }
    Ok(s)
}

/// A custodian who receives one share: a name and, optionally, an X25519 public key (a keyhaven
/// key) the share is encrypted to, so a stolen share file is useless on its own.
#[derive(Debug, Clone)]
pub struct Custodian {
    /// The custodian's name, printed on the share (1-64 characters, no control characters).
    pub name: String,
    /// An X25519 public key to encrypt the share to.
    pub public: Option<PublicKey>,
}

impl Custodian {
    /// A custodian whose share is in the clear.
    pub fn named(name: impl Into<String>) -> Self {
        Custodian {
            name: name.into(),
            public: None,
        }
    }

    /// A custodian whose share is encrypted to an X25519 public key.
    pub fn with_key(name: impl Into<String>, public: PublicKey) -> Self {
        Custodian {
            name: name.into(),
            public: Some(public),
        }
    }
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(format!("a custodian name has 1 to {MAX_NAME} characters"));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(
            "a custodian name may not contain control characters or start or end with white space"
                .into(),
        );
    }
    Ok(())
}

#[derive(Clone)]
enum Value {
    Plain(Zeroizing<[u8; 32]>),
    Encrypted {
        recipient: [u8; 32],
        ephemeral: [u8; 32],
        sealed: Vec<u8>,
    },
}

/// One custodian's share of a Shamir backup's master key.
///
/// Its text form ([`Share::to_text`], [`Share::parse`]) is self-describing: backup id, share
/// index, threshold and count, custodian, creation time, the backup's fingerprint, whether it is
/// encrypted (and to which key), the value and the Feldman commitments (base64 `data` lines).
/// Every line ends with a 4-hex-digit line check and the share ends with a checksum over all
/// lines, so a typo anywhere is caught and the line named.
#[derive(Clone)]
pub struct Share {
    backup_id: String,
    index: u8,
    threshold: u8,
    total: u8,
    custodian: String,
    created_at: u64,
    fingerprint: String,
    value: Value,
    commitments: Vec<[u8; POINT_LEN]>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("backup_id", &self.backup_id)
            .field("index", &self.index)
            .field("threshold", &self.threshold)
            .field("total", &self.total)
            .field("custodian", &self.custodian)
            .field("fingerprint", &self.fingerprint)
            .field("encrypted", &self.is_encrypted())
            .finish_non_exhaustive()
    }
}

/// What [`verify_share`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShareCheck {
    /// The share is consistent with its commitments: a genuine share of this backup.
    Genuine,
    /// The share is encrypted: structure, checksum and fingerprint are fine; decrypt it with
    /// [`decrypt_share`] to check its value.
    EncryptedStructureOk,
}

impl Share {
    /// The backup id (32 hex digits).
    pub fn backup_id(&self) -> &str {
        &self.backup_id
    }
    /// The share index, 1-based.
    pub fn index(&self) -> u8 {
        self.index
    }
    /// Shares needed to recover.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }
    /// Shares made.
    pub fn total(&self) -> u8 {
        self.total
    }
    /// The custodian's name.
    pub fn custodian(&self) -> &str {
        &self.custodian
    }
    /// Creation time (seconds since the Unix epoch).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }
    /// The backup's short fingerprint, `XXXX-XXXX-XXXX`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// True if the value is encrypted to a custodian key.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.value, Value::Encrypted { .. })
    }
    /// The fingerprint (hex) of the custodian key the share is encrypted to.
    pub fn encrypted_to(&self) -> Option<String> {
        match &self.value {
            Value::Encrypted { recipient, .. } => Some(hex::encode(recipient)),
            Value::Plain(_) => None,
        }
    }

    /// A short name for messages: `share 3 of 5 (alice)`.
    pub fn name(&self) -> String {
        format!(
            "share {} of {} ({})",
            self.index, self.total, self.custodian
        )
    }

    pub(crate) fn commitments_hex(&self) -> Vec<String> {
        self.commitments.iter().map(hex::encode).collect()
    }

    fn commitment_bytes(&self) -> Vec<u8> {
        self.commitments.concat()
    }

    fn value_aad(&self) -> Vec<u8> {
        let mut aad = b"keyhaven-share/v1 value\0".to_vec();
        aad.extend_from_slice(self.backup_id.as_bytes());
        aad.extend_from_slice(&[self.index, self.threshold, self.total]);
        aad.extend_from_slice(self.fingerprint.as_bytes());
        aad.push(0);
        aad.extend_from_slice(self.custodian.as_bytes());
        aad
    }

    fn body(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(256 + self.commitments.len() * POINT_LEN));
        let mut w = Writer(&mut buf);
        w.u8(1);
        match &self.value {
            Value::Plain(v) => {
                w.u8(0);
                w.raw(v.as_ref());
            }
            Value::Encrypted {
                recipient,
                ephemeral,
                sealed,
            } => {
                w.u8(1);
                w.raw(recipient);
                w.raw(ephemeral);
                w.raw(sealed);
            }
        }
        w.u8(u8::try_from(self.commitments.len()).unwrap_or(u8::MAX));
        for c in &self.commitments {
            w.raw(c);
        }
        buf
    }

    /// The share as text, one per custodian file.
    pub fn to_text(&self) -> Zeroizing<String> {
        let created = keyhaven_core::rfc3339(self.created_at);
        let mut lines = vec![
            format!("backup: {}", self.backup_id),
            format!(
                "share: {} of {}, threshold {}",
                self.index, self.total, self.threshold
            ),
            format!("custodian: {}", self.custodian),
            format!("created: {created}"),
            format!("fingerprint: {}", self.fingerprint),
            format!(
                "encrypted-to: {}",
                self.encrypted_to().unwrap_or_else(|| "none".into())
            ),
        ];
        let body = self.body();
        let b64 = Zeroizing::new(Base64::encode_string(&body));
        for chunk in b64.as_bytes().chunks(DATA_CHUNK) {
            lines.push(format!("data: {}", String::from_utf8_lossy(chunk)));
        }
        let mut out = Zeroizing::new(String::new());
        out.push_str(BEGIN);
        out.push('\n');
        let mut checked = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let l = format!("{line}  [{}]", line_check(i + 1, line));
            out.push_str(&l);
            out.push('\n');
            checked.push(Zeroizing::new(l));
        }
        out.push_str(&format!("checksum: {}\n", checksum(&checked)));
        out.push_str(END);
        out.push('\n');
        out
    }

    /// Parses one share from text (surrounding text outside the BEGIN/END lines is ignored).
    ///
    /// # Errors
    /// [`BackupError::BadShare`] naming the share (when its `share:` line was readable) and the
    /// line: a typo (line check or checksum fails), a missing field, malformed data, or a value
    /// or commitments inconsistent with the printed fingerprint.
    pub fn parse(text: &str) -> Result<Share> {
        let mut all = Share::parse_all(text)?;
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(BackupError::share(
                "share",
                "no BEGIN KEYHAVEN SHARE block found",
            )),
            n => Err(BackupError::share(
                "share",
                format!("{n} shares found where one was expected"),
            )),
        }
    }

    /// Parses every share block in a text.
    ///
    /// # Errors
    /// As [`Share::parse`], naming the block by its position when the share line is unreadable.
    pub fn parse_all(text: &str) -> Result<Vec<Share>> {
        let mut shares = Vec::new();
        let mut block: Option<Vec<&str>> = None;
        // Lines are taken exactly (no trimming): a share is retyped or copied verbatim, and a
        // stray character anywhere, even white space, is reported rather than ignored.
        for line in text.lines() {
            if line == BEGIN {
                if block.is_some() {
                    return Err(BackupError::share(
                        format!("input share #{}", shares.len() + 1),
                        "BEGIN line without END line",
                    ));
                }
                block = Some(Vec::new());
            } else if line == END {
                let Some(lines) = block.take() else {
                    return Err(BackupError::share(
                        format!("input share #{}", shares.len() + 1),
                        "END line without BEGIN line",
                    ));
                };
                shares.push(parse_block(&lines, shares.len() + 1)?);
            } else if let Some(b) = block.as_mut()
                && !line.is_empty()
            {
                b.push(line);
            }
        }
        if block.is_some() {
            return Err(BackupError::share(
                format!("input share #{}", shares.len() + 1),
                "truncated: no END KEYHAVEN SHARE line",
            ));
        }
        Ok(shares)
    }
}

fn line_check(line_no: usize, content: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"keyhaven-share/v1 line\0");
    h.update(u32::try_from(line_no).unwrap_or(u32::MAX).to_be_bytes());
    h.update(content.as_bytes());
    hex::encode(&h.finalize()[..2])
}

fn checksum<S: AsRef<str>>(lines: &[S]) -> String {
    let mut h = Sha256::new();
    h.update(b"keyhaven-share/v1 checksum\0");
    for l in lines {
        h.update(l.as_ref().as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

fn parse_block(lines: &[&str], position: usize) -> Result<Share> {
    let mut name = format!("input share #{position}");
    let Some((checksum_line, content)) = lines.split_last() else {
        return Err(BackupError::share(name, "empty share"));
    };
    // First pass: every line's own check, naming the first bad line.
    let mut fields: Vec<&str> = Vec::with_capacity(content.len());
    for (i, line) in content.iter().enumerate() {
        let (body, check) = line
            .rsplit_once("  [")
            .and_then(|(b, c)| Some((b, c.strip_suffix(']')?)))
            .ok_or_else(|| {
                BackupError::share(
                    name.clone(),
                    format!("line {}: missing its [check]: '{line}'", i + 2),
                )
            })?;
        if line_check(i + 1, body) != check {
            // Name the share if its own line is readable enough.
            if let Some(n) = content.iter().find_map(|l| share_line_name(l)) {
                name = n;
            }
            return Err(BackupError::share(
                name,
                format!(
                    "line {} ('{}'): typo — the line check [{check}] does not match; compare it with the original",
                    i + 2,
                    body.split(':').next().unwrap_or(body)
                ),
            ));
        }
        fields.push(body);
    }
    let want = checksum(content);
    let got = checksum_line
        .strip_prefix("checksum: ")
        .ok_or_else(|| BackupError::share(name.clone(), "the checksum line is missing"))?;
    if got != want {
        return Err(BackupError::share(
            name,
            "the checksum line does not match (a typo in it, or lines missing, added or reordered)",
        ));
    }
    const HEAD: [&str; 6] = [
        "backup",
        "share",
        "custodian",
        "created",
        "fingerprint",
        "encrypted-to",
    ];
    let mut head = Vec::with_capacity(HEAD.len());
    for (i, key) in HEAD.iter().enumerate() {
        let value = fields
            .get(i)
            .and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(": "))
            .ok_or_else(|| {
                BackupError::share(
                    name.clone(),
                    format!("line {}: the '{key}' line is missing", i + 2),
                )
            })?;
        head.push(value);
    }
    let [
        backup_id,
        share_line,
        custodian,
        created,
        fingerprint,
        encrypted_to,
    ] = [head[0], head[1], head[2], head[3], head[4], head[5]];
    let (backup_id, custodian, fingerprint) = (
        backup_id.to_owned(),
        custodian.to_owned(),
        fingerprint.to_owned(),
    );
    let mut b64 = Zeroizing::new(String::new());
    for (i, line) in fields.iter().enumerate().skip(HEAD.len()) {
        let d = line.strip_prefix("data: ").ok_or_else(|| {
            BackupError::share(
                name.clone(),
                format!("line {}: expected a 'data' line", i + 2),
            )
        })?;
        b64.push_str(d);
    }
    let (index, total, threshold) = parse_share_line(share_line)
        .ok_or_else(|| BackupError::share(name.clone(), "malformed 'share' line"))?;
    let name = format!("share {index} of {total} ({custodian})");
    let bad = |reason: &str| BackupError::share(name.clone(), reason.to_owned());
    if parse_backup_id(&backup_id).is_none() {
        return Err(bad("the backup id is not 32 lowercase hex digits"));
    }
    check_params(threshold, total).map_err(|e| bad(&e))?;
    if index == 0 || index > total {
        return Err(bad("the share index is out of range"));
    }
    check_name(&custodian).map_err(|e| bad(&e))?;
    let created_at = humantime::parse_rfc3339(created)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| bad("malformed 'created' time"))?;
    let body = Zeroizing::new(
        Base64::decode_vec(&b64).map_err(|_| bad("the data lines are not valid base64"))?,
    );
    let mut r = Reader::new(&body);
    let rd = |e: String| bad(&format!("data: {e}"));
    if r.u8("version").map_err(rd)? != 1 {
        return Err(bad("unknown share data version"));
    }
    let value = match r.u8("flags").map_err(rd)? {
        0 => Value::Plain(Zeroizing::new(r.array::<32>("value").map_err(rd)?)),
        1 => Value::Encrypted {
            recipient: r.array::<32>("recipient").map_err(rd)?,
            ephemeral: r.array::<32>("ephemeral key").map_err(rd)?,
            sealed: r
                .raw(NONCE_LEN + 32 + TAG_LEN, "encrypted value")
                .map_err(rd)?
                .to_vec(),
        },
        _ => return Err(bad("unknown share flags")),
    };
    let n = r.u8("commitment count").map_err(rd)?;
    if n != threshold {
        return Err(bad("the number of commitments differs from the threshold"));
    }
    let mut commitments = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        commitments.push(r.array::<POINT_LEN>("commitment").map_err(rd)?);
    }
    r.finish("commitments").map_err(rd)?;
    let share = Share {
        backup_id,
        index,
        threshold,
        total,
        custodian,
        created_at,
        fingerprint,
        value,
        commitments,
    };
    match (&share.value, encrypted_to) {
        (Value::Plain(_), "none") => {}
        (Value::Encrypted { recipient, .. }, hex_fp) if hex::encode(recipient) == hex_fp => {}
        _ => return Err(bad("the 'encrypted-to' line does not match the data")),
    }
    check_structure(&share)?;
    Ok(share)
}

fn share_line_name(line: &str) -> Option<String> {
    let body = line.rsplit_once("  [")?.0.strip_prefix("share: ")?;
    let (i, t, _) = parse_share_line(body)?;
    Some(format!("share {i} of {t}"))
}

/// `3 of 5, threshold 3` -> (3, 5, 3).
fn parse_share_line(s: &str) -> Option<(u8, u8, u8)> {
    let (a, rest) = s.split_once(" of ")?;
    let (b, c) = rest.split_once(", threshold ")?;
    Some((a.parse().ok()?, b.parse().ok()?, c.parse().ok()?))
}

/// Parses hex commitments into points and returns their concatenated bytes.
pub(crate) fn commitments_from_hex(hex_points: &[String]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(hex_points.len() * POINT_LEN);
    for (i, h) in hex_points.iter().enumerate() {
        let mut b = [0u8; POINT_LEN];
        hex::decode_to_slice(h, &mut b).map_err(|_| format!("commitment {i} is not hex"))?;
        point(&b).ok_or_else(|| format!("commitment {i} is not a valid point"))?;
        out.extend_from_slice(&b);
    }
    Ok(out)
}

fn point(bytes: &[u8; POINT_LEN]) -> Option<ProjectivePoint> {
    let p = Option::<ProjectivePoint>::from(ProjectivePoint::from_bytes(&(*bytes).into()))?;
    if bool::from(p.ct_eq(&ProjectivePoint::IDENTITY)) {
        return None;
    }
    Some(p)
}

/// Structure checks that need no secret: valid commitments and a fingerprint that matches them.
fn check_structure(share: &Share) -> Result<Vec<Verifier>> {
    let bad = |reason: &str| BackupError::share(share.name(), reason.to_owned());
    let mut set = Vec::with_capacity(share.commitments.len() + 1);
    set.push(ValueGroup::<ProjectivePoint>::generator());
    for (i, c) in share.commitments.iter().enumerate() {
        set.push(ValueGroup(point(c).ok_or_else(|| {
            bad(&format!("commitment {i} is not a valid point"))
        })?));
    }
    let id = parse_backup_id(&share.backup_id).ok_or_else(|| bad("malformed backup id"))?;
    if backup_fingerprint(&id, &share.commitment_bytes()) != share.fingerprint {
        return Err(bad(
            "the fingerprint does not match the share's backup id and commitments",
        ));
    }
    Ok(set)
}

fn vshare(share: &Share, value: &[u8; 32]) -> Result<VShare> {
    let v = Option::<Scalar>::from(Scalar::from_repr((*value).into()))
        .ok_or_else(|| BackupError::share(share.name(), "the share value is not a scalar"))?;
    Ok(VShare {
        identifier: IdentifierPrimeField(Scalar::from(u64::from(share.index))),
        value: IdentifierPrimeField(v),
    })
}

fn feldman_check(share: &Share, value: &[u8; 32]) -> Result<VShare> {
    let set = check_structure(share)?;
    let vs = vshare(share, value)?;
    <Vec<Verifier> as FeldmanVerifierSet<VShare, Verifier>>::verify_share(&set, &vs).map_err(
        |_| {
            BackupError::share(
                share.name(),
                "fails its Feldman check: it is not a genuine share of this backup (or was altered)",
            )
        },
    )?;
    Ok(vs)
}

/// Checks a share without the secret: structure, fingerprint, and (for a share in the clear)
/// its Feldman commitment equation, which proves it is a genuine share of the sharing its
/// commitments (and so the backup fingerprint) describe.
///
/// # Errors
/// [`BackupError::BadShare`] naming the share.
pub fn verify_share(share: &Share) -> Result<ShareCheck> {
    match &share.value {
        Value::Plain(v) => {
            feldman_check(share, v)?;
            Ok(ShareCheck::Genuine)
        }
        Value::Encrypted { .. } => {
            check_structure(share)?;
            Ok(ShareCheck::EncryptedStructureOk)
        }
    }
}

fn custodian_key(
    shared: &SecretBytes,
    ephemeral: &[u8; 32],
    recipient: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    let mut salt = ephemeral.to_vec();
    salt.extend_from_slice(recipient);
    seal::hkdf_32(
        shared.expose_secret(),
        &salt,
        b"keyhaven-share/v1 custodian key",
    )
}

fn x25519_public(raw: &[u8; 32]) -> PublicKey {
    let mut der = X25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    PublicKey::new(Algorithm::X25519, der)
}

/// Decrypts a share encrypted to a custodian's X25519 key, with the key's store doing the key
/// agreement (the private key never leaves it). Returns the share in the clear; check it with
/// [`verify_share`].
///
/// # Errors
/// [`BackupError::BadShare`] if the share is not encrypted, is encrypted to another key, or does
/// not decrypt; the store's error for a failing agreement.
pub fn decrypt_share(share: &Share, store: &dyn KeyStore, key: &KeyId) -> Result<Share> {
    let Value::Encrypted {
        recipient,
        ephemeral,
        sealed,
    } = &share.value
    else {
        return Err(BackupError::share(share.name(), "is not encrypted"));
    };
    let public = store.public_key(key)?;
    if public.fingerprint().as_bytes() != recipient {
        return Err(BackupError::share(
            share.name(),
            format!(
                "is encrypted to key {}, not to key {key} ({})",
                hex::encode(recipient),
                public.fingerprint()
            ),
        ));
    }
    let shared = store.agree(key, &x25519_public(ephemeral))?;
    let k = custodian_key(&shared, ephemeral, public.spki_der())?;
    let cipher = seal::cipher(&k)?;
    let plain = seal::open(&cipher, sealed, &share.value_aad()).ok_or_else(|| {
        BackupError::share(share.name(), "does not decrypt: altered, or the wrong key")
    })?;
    let value: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| BackupError::share(share.name(), "decrypted value has the wrong length"))?;
    let mut out = share.clone();
    out.value = Value::Plain(Zeroizing::new(value));
    feldman_check(&out, &value)?;
    Ok(out)
}

fn encrypt_value(share: &mut Share, public: &PublicKey, value: &[u8; 32]) -> Result<()> {
    if public.algorithm() != Algorithm::X25519 {
        return Err(BackupError::InvalidInput(format!(
            "custodian {}: a share can be encrypted only to an X25519 key, not {}",
            share.custodian,
            public.algorithm()
        )));
    }
    let eph = keyhaven_crypto::default_provider().generate(Algorithm::X25519)?;
    let shared = eph.agree(public)?;
    let ephemeral: [u8; 32] = eph
        .public_key()
        .spki_der()
        .get(X25519_SPKI_PREFIX.len()..)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Crypto)?;
    let k = custodian_key(&shared, &ephemeral, public.spki_der())?;
    let sealed = seal::seal(&k, value, &share.value_aad())?;
    share.value = Value::Encrypted {
        recipient: *public.fingerprint().as_bytes(),
        ephemeral,
        sealed,
    };
    Ok(())
}

/// Splits a master key into one share per custodian, any `threshold` of which recover it, with
/// Feldman commitments in every share. Custodians with a public key get their share encrypted.
///
/// # Errors
/// [`BackupError::InvalidInput`] unless 2 <= threshold <= custodians <= 255, for a bad custodian
/// name or a custodian key that is not X25519.
pub fn split(
    master: &MasterKey,
    backup_id: &[u8; 16],
    threshold: u8,
    custodians: &[Custodian],
) -> Result<Vec<Share>> {
    let total = u8::try_from(custodians.len())
        .map_err(|_| BackupError::InvalidInput("at most 255 custodians".into()))?;
    check_params(threshold, total).map_err(BackupError::InvalidInput)?;
    for c in custodians {
        check_name(&c.name)
            .map_err(|e| BackupError::InvalidInput(format!("custodian '{}': {e}", c.name)))?;
    }
    let secret = IdentifierPrimeField(scalar_of(master.secret())?);
    let (vshares, verifiers) = vsss_rs::feldman::split_secret::<VShare, Verifier>(
        usize::from(threshold),
        usize::from(total),
        &secret,
        None,
        rng()?,
    )
    .map_err(|e| BackupError::InvalidInput(format!("cannot split: {e:?}")))?;
    let commitments: Vec<[u8; POINT_LEN]> = verifiers
        .iter()
        .skip(1)
        .map(|v| {
            let bytes = v.0.to_bytes();
            let mut out = [0u8; POINT_LEN];
            out.copy_from_slice(bytes.as_ref());
            out
        })
        .collect();
    let fingerprint = backup_fingerprint(backup_id, &commitments.concat());
    let created_at = unix_now();
    let mut shares = Vec::with_capacity(custodians.len());
    for (i, (vs, c)) in vshares.iter().zip(custodians).enumerate() {
        let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
        if vs.identifier.0 != Scalar::from(u64::from(index)) {
            return Err(BackupError::InvalidInput(
                "unexpected share identifiers from vsss-rs".into(),
            ));
        }
        let value = Zeroizing::new(<[u8; 32]>::from(vs.value.0.to_repr()));
        let mut share = Share {
            backup_id: hex::encode(backup_id),
            index,
            threshold,
            total,
            custodian: c.name.clone(),
            created_at,
            fingerprint: fingerprint.clone(),
            value: Value::Plain(value.clone()),
            commitments: commitments.clone(),
        };
        if let Some(public) = &c.public {
            encrypt_value(&mut share, public, &value)?;
        }
        shares.push(share);
    }
    Ok(shares)
}

/// Recovers the master key from at least `threshold` shares of one backup, in any order.
///
/// # Errors
/// [`BackupError::Combine`] for no shares, fewer than the threshold, shares of different
/// backups or sharings, or the same share twice; [`BackupError::BadShare`] naming a share that is
/// still encrypted or fails its Feldman check.
pub fn combine(shares: &[Share]) -> Result<MasterKey> {
    let Some(first) = shares.first() else {
        return Err(BackupError::Combine("no shares given".into()));
    };
    let mut seen = [false; 256];
    let mut vshares = Vec::with_capacity(shares.len());
    for s in shares {
        if s.backup_id != first.backup_id || s.fingerprint != first.fingerprint {
            return Err(BackupError::Combine(format!(
                "{} belongs to backup {} ({}), but {} to backup {} ({}): shares of different backups cannot be combined",
                s.name(),
                s.backup_id,
                s.fingerprint,
                first.name(),
                first.backup_id,
                first.fingerprint
            )));
        }
        if s.threshold != first.threshold
            || s.total != first.total
            || s.commitments != first.commitments
        {
            return Err(BackupError::Combine(format!(
                "{} does not match {} (threshold, count or commitments differ): one of them was altered",
                s.name(),
                first.name()
            )));
        }
        if std::mem::replace(&mut seen[usize::from(s.index)], true) {
            return Err(BackupError::Combine(format!(
                "{} is given twice: each share counts once",
                s.name()
            )));
        }
        let Value::Plain(v) = &s.value else {
            return Err(BackupError::share(
                s.name(),
                "is encrypted to its custodian's key: decrypt it first",
            ));
        };
        vshares.push(feldman_check(s, v)?);
    }
    if shares.len() < usize::from(first.threshold) {
        return Err(BackupError::Combine(format!(
            "{} share(s) given, but this backup needs {} of its {}",
            shares.len(),
            first.threshold,
            first.total
        )));
    }
    let secret = vshares
        .combine()
        .map_err(|e| BackupError::Combine(format!("interpolation failed: {e:?}")))?;
    let c0 = first
        .commitments
        .first()
        .and_then(point)
        .ok_or_else(|| BackupError::Combine("no commitments".into()))?;
    if !bool::from((ProjectivePoint::GENERATOR * secret.0).ct_eq(&c0)) {
        return Err(BackupError::Combine(
            "the recovered key does not match the commitments".into(),
        ));
    }
    Ok(MasterKey(SecretBytes::copy_from(&secret.0.to_repr())))
}
