use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A key algorithm keyhaven manages.
///
/// ECDSA keys hash messages with the curve's own hash (P-256 with SHA-256, P-384 with SHA-384).
/// X25519 and the `Ecdh*` keys do key agreement only and never sign: a NIST-curve key is made for
/// one use (ECDSA or ECDH), so a signing key is never an agreement oracle and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA over NIST P-384 with SHA-384 (JOSE `ES384`). The default.
    #[default]
    EcdsaP384,
    /// ECDSA over NIST P-256 with SHA-256 (JOSE `ES256`).
    EcdsaP256,
    /// Ed25519 signatures (RFC 8032, JOSE `EdDSA`).
    Ed25519,
    /// X25519 Diffie-Hellman key agreement (RFC 7748). Cannot sign.
    X25519,
    /// Elliptic-curve Diffie-Hellman over NIST P-384 (SP 800-56A, the shared secret is the
    /// x-coordinate). Cannot sign. Hardware backends do it on the device (PKCS#11
    /// `CKM_ECDH1_DERIVE`, TPM2 `ECDH_ZGen`).
    EcdhP384,
    /// Elliptic-curve Diffie-Hellman over NIST P-256, as [`Algorithm::EcdhP384`].
    EcdhP256,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
        Algorithm::Ed25519,
        Algorithm::X25519,
        Algorithm::EcdhP384,
        Algorithm::EcdhP256,
    ];

    /// The short name used on the command line and in files (`p384`, `p256`, `ed25519`,
    /// `x25519`, `ecdh-p384`, `ecdh-p256`).
    pub fn short_name(self) -> &'static str {
        match self {
            Algorithm::EcdsaP384 => "p384",
            Algorithm::EcdsaP256 => "p256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::X25519 => "x25519",
            Algorithm::EcdhP384 => "ecdh-p384",
            Algorithm::EcdhP256 => "ecdh-p256",
        }
    }

    /// The JOSE / COSE algorithm name: `ES384`, `ES256`, `EdDSA`; `ECDH-ES` for the agreement
    /// algorithms.
    pub fn jose_name(self) -> &'static str {
        match self {
            Algorithm::EcdsaP384 => "ES384",
            Algorithm::EcdsaP256 => "ES256",
            Algorithm::Ed25519 => "EdDSA",
            Algorithm::X25519 | Algorithm::EcdhP384 | Algorithm::EcdhP256 => "ECDH-ES",
        }
    }

    /// A name that tells the algorithms apart in messages: the JOSE name for signing
    /// algorithms, `X25519`, `ECDH P-384`, `ECDH P-256` for the agreement ones.
    pub fn display_name(self) -> &'static str {
        match self {
            Algorithm::X25519 => "X25519",
            Algorithm::EcdhP384 => "ECDH P-384",
            Algorithm::EcdhP256 => "ECDH P-256",
            other => other.jose_name(),
        }
    }

    /// Whether keys of this algorithm make signatures.
    pub fn can_sign(self) -> bool {
        !self.can_agree()
    }

    /// Whether keys of this algorithm do key agreement.
    pub fn can_agree(self) -> bool {
        matches!(
            self,
            Algorithm::X25519 | Algorithm::EcdhP384 | Algorithm::EcdhP256
        )
    }

    /// The length of the shared secret an agreement gives (the x-coordinate's or X25519's
    /// 32 bytes), or `None` for signing algorithms.
    pub fn shared_secret_len(self) -> Option<usize> {
        match self {
            Algorithm::X25519 | Algorithm::EcdhP256 => Some(32),
            Algorithm::EcdhP384 => Some(48),
            _ => None,
        }
    }

    /// Checks that a peer's key of algorithm `peer` can agree with a key of this (agreement)
    /// algorithm: X25519 with X25519, ECDH with a key on the same NIST curve (an ECDSA or ECDH
    /// key: their public keys are the same).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming both.
    pub fn check_peer(self, peer: Algorithm) -> Result<(), Error> {
        if self.shares_public_keys_with(peer) {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "{} agreement needs a peer key {}, got a {peer} key",
                self.display_name(),
                self.nist_curve()
                    .map_or_else(|| format!("of {self}"), |c| format!("on {c}"))
            )))
        }
    }

    /// Whether a public key of this algorithm is also one of `other`: the same algorithm, or
    /// ECDSA and ECDH on the same NIST curve (their SPKI is the same).
    pub fn shares_public_keys_with(self, other: Algorithm) -> bool {
        self == other || (self.nist_curve().is_some() && self.nist_curve() == other.nist_curve())
    }

    /// Whether this is ECDH on a NIST curve: an agreement key whose PKCS#8 and SPKI are an
    /// ECDSA key's, so that nothing in its encodings says it is for agreement (whoever keeps it
    /// must record its algorithm, authenticated).
    pub fn is_nist_ecdh(self) -> bool {
        matches!(self, Algorithm::EcdhP384 | Algorithm::EcdhP256)
    }

    /// The NIST curve's name (`P-384`, `P-256`) for ECDSA and ECDH keys.
    pub fn nist_curve(self) -> Option<&'static str> {
        match self {
            Algorithm::EcdsaP384 | Algorithm::EcdhP384 => Some("P-384"),
            Algorithm::EcdsaP256 | Algorithm::EcdhP256 => Some("P-256"),
            _ => None,
        }
    }

    /// The length of the digest a prehashed signature takes (ECDSA only), in bytes.
    pub fn digest_len(self) -> Option<usize> {
        match self {
            Algorithm::EcdsaP384 => Some(48),
            Algorithm::EcdsaP256 => Some(32),
            _ => None,
        }
    }

    /// The name of the hash applied to messages before signing (ECDSA only).
    pub fn hash_name(self) -> Option<&'static str> {
        match self {
            Algorithm::EcdsaP384 => Some("sha384"),
            Algorithm::EcdsaP256 => Some("sha256"),
            _ => None,
        }
    }

    /// The length of a signature in its fixed-size form (`r || s`, or Ed25519's 64 bytes).
    pub fn raw_signature_len(self) -> Option<usize> {
        match self {
            Algorithm::EcdsaP384 => Some(96),
            Algorithm::EcdsaP256 => Some(64),
            Algorithm::Ed25519 => Some(64),
            _ => None,
        }
    }

    /// Checks that `digest` has the length this algorithm's prehashed signature needs.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for algorithms without prehashed signing, [`Error::InvalidInput`]
    /// when the length is wrong.
    pub fn check_digest(self, digest: &[u8]) -> Result<(), Error> {
        match self.digest_len() {
            None if !self.can_sign() => Err(Error::Unsupported {
                operation: "sign a prehashed digest",
                reason: format!("{self} keys do key agreement only and never sign"),
            }),
            None => Err(Error::Unsupported {
                operation: "sign a prehashed digest",
                reason: format!("{} keys sign whole messages only", self.jose_name()),
            }),
            Some(n) if n == digest.len() => Ok(()),
            Some(n) => Err(Error::InvalidInput(format!(
                "digest is {} bytes but {} needs a {}-byte {} digest",
                digest.len(),
                self.jose_name(),
                n,
                self.hash_name().unwrap_or("hash"),
            ))),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "p384" | "p-384" | "es384" | "ecdsa-p384" | "secp384r1" => Algorithm::EcdsaP384,
            "p256" | "p-256" | "es256" | "ecdsa-p256" | "prime256v1" | "secp256r1" => {
                Algorithm::EcdsaP256
            }
            "ed25519" | "eddsa" => Algorithm::Ed25519,
            "x25519" => Algorithm::X25519,
            "ecdh-p384" => Algorithm::EcdhP384,
            "ecdh-p256" => Algorithm::EcdhP256,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown algorithm '{s}': use p384, p256, ed25519, x25519, ecdh-p384 or \
                     ecdh-p256"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.short_name().parse::<Algorithm>().unwrap(), alg);
            assert_eq!(alg.to_string().parse::<Algorithm>().unwrap(), alg);
        }
        assert_eq!("ES384".parse::<Algorithm>().unwrap(), Algorithm::EcdsaP384);
        assert!("rsa".parse::<Algorithm>().is_err());
    }

    #[test]
    fn digest_checks() {
        assert!(Algorithm::EcdsaP384.check_digest(&[0; 48]).is_ok());
        assert!(matches!(
            Algorithm::EcdsaP384.check_digest(&[0; 32]),
            Err(e) if e.is(ErrorKind::InvalidInput)));
        assert!(matches!(
            Algorithm::Ed25519.check_digest(&[0; 64]),
            Err(e) if e.is(ErrorKind::Unsupported)));
    }
}
