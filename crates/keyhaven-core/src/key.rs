use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Algorithm, Error, KeyId};

/// How well a key's private part is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Protection {
    /// Software key stored unencrypted (PEM files): anyone who can read the file has the key.
    SoftwarePlain,
    /// Software key encrypted at rest (or sealed in memory) and zeroized after use.
    SoftwareEncrypted,
    /// Key generated and used inside hardware (HSM, TPM); the private part cannot leave it.
    Hardware,
}

impl Protection {
    /// The name used in output and files: `software-plain`, `software-encrypted`, `hardware`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::SoftwarePlain => "software-plain",
            Protection::SoftwareEncrypted => "software-encrypted",
            Protection::Hardware => "hardware",
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SHA-256 over a public key's SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of SPKI DER bytes.
    pub fn of_spki_der(spki_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of all 32 bytes (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 bytes as lowercase hex, for display where space is short.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// A public key: its algorithm and SubjectPublicKeyInfo DER (RFC 5280).
///
/// This type does not check that the DER matches the algorithm; `keyhaven-crypto` parses and
/// validates public keys and verifies signatures with them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    algorithm: Algorithm,
    spki_der: Vec<u8>,
}

impl PublicKey {
    /// Wraps SPKI DER for an algorithm.
    pub fn new(algorithm: Algorithm, spki_der: Vec<u8>) -> Self {
        PublicKey {
            algorithm,
            spki_der,
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), LF line endings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] only if the DER is absurdly large to encode.
    pub fn to_pem(&self) -> Result<String, Error> {
        pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, &self.spki_der)
            .map_err(|e| Error::InvalidInput(format!("cannot PEM-encode public key: {e}")))
    }

    /// SHA-256 over the SPKI DER.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki_der(&self.spki_der)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// What a backend knows of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key's id, unique in its backend.
    pub id: KeyId,
    /// The human label, unique in its backend.
    pub label: String,
    /// The key's algorithm.
    pub algorithm: Algorithm,
    /// How the private part is protected.
    pub protection: Protection,
    /// The public key.
    pub public_key: PublicKey,
    /// When the key was created (or first seen), in seconds since the Unix epoch.
    pub created_at: u64,
}

impl KeyInfo {
    /// Builds a key's info.
    pub fn new(
        id: KeyId,
        label: String,
        protection: Protection,
        public_key: PublicKey,
        created_at: u64,
    ) -> Self {
        KeyInfo {
            id,
            label,
            algorithm: public_key.algorithm(),
            protection,
            public_key,
            created_at,
        }
    }

    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public_key.fingerprint()
    }
}

/// The time now: the system clock; in a build with the `test-clock` feature (tests only),
/// moved by `KEYHAVEN_TEST_CLOCK_OFFSET` seconds (a signed integer) when that is set. Every
/// keyhaven crate reads the time through this (or [`unix_now`]).
pub fn now() -> SystemTime {
    let t = SystemTime::now();
    #[cfg(feature = "test-clock")]
    if let Some(offset) = std::env::var("KEYHAVEN_TEST_CLOCK_OFFSET")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        let by = std::time::Duration::from_secs(offset.unsigned_abs());
        let moved = if offset >= 0 {
            t.checked_add(by)
        } else {
            t.checked_sub(by)
        };
        return moved.unwrap_or(t);
    }
    t
}

/// Seconds since the Unix epoch now (0 if the clock is before 1970); see [`now`].
pub fn unix_now() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The last time [`rfc3339`] writes as a date: RFC 3339 has four-digit years.
pub const LAST_RFC3339_TIME: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// `unix_seconds` as an RFC 3339 UTC time, `2021-04-20T02:07:53Z`: the one formatter of every
/// crate. A time past [`LAST_RFC3339_TIME`] (a crafted file's) is written as a count of seconds,
/// never a panic.
pub fn rfc3339(unix_seconds: u64) -> String {
    if unix_seconds > LAST_RFC3339_TIME {
        return format!("{unix_seconds}s after 1970 (beyond the year 9999)");
    }
    let (days, secs) = (unix_seconds / 86_400, unix_seconds % 86_400);
    // The civil date of a day count (Howard Hinnant's days-to-civil, proleptic Gregorian).
    let z = i64::try_from(days).unwrap_or(i64::MAX) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_humantime_s_format_and_never_panics() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_618_884_473, "2021-04-20T02:07:53Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (LAST_RFC3339_TIME, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(secs), text);
        }
        assert!(rfc3339(u64::MAX).contains("beyond the year 9999"));
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_agrees_with_humantime(secs in 0..=LAST_RFC3339_TIME) {
            let theirs = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string();
            proptest::prop_assert_eq!(rfc3339(secs), theirs);
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256("abc")
        let fp = Fingerprint::of_spki_der(b"abc");
        assert_eq!(
            fp.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(fp.short(), "ba7816bf8f01cfea");
    }

    #[test]
    fn pem_wraps_der() {
        let pk = PublicKey::new(Algorithm::Ed25519, vec![1, 2, 3]);
        let pem = pk.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nAQID\n"));
    }
}
