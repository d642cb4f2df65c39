//! `Content-Digest` (RFC 9530): the digest of a message's content, so that a signature covering
//! the field covers the body.

use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::error::{HttpSigError, Result};
use crate::sfv::{self, BareItem, Member};

/// The digest algorithms of `Content-Digest` that keyhaven computes and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// `sha-256`.
    Sha256,
    /// `sha-512`.
    Sha512,
}

impl DigestAlgorithm {
    /// Its name in the field (`sha-256`).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha-256",
            DigestAlgorithm::Sha512 => "sha-512",
        }
    }

    fn of(name: &str) -> Option<Self> {
        match name {
            "sha-256" => Some(DigestAlgorithm::Sha256),
            "sha-512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    fn digest(self, content: &[u8]) -> Vec<u8> {
        match self {
            DigestAlgorithm::Sha256 => Sha256::digest(content).to_vec(),
            DigestAlgorithm::Sha512 => Sha512::digest(content).to_vec(),
        }
    }
}

/// The `Content-Digest` value for `content`: `sha-256=:BASE64:`.
pub fn content_digest(content: &[u8], algorithm: DigestAlgorithm) -> String {
    let mut out = String::from(algorithm.name());
    out.push('=');
    sfv::write_bare(&mut out, &BareItem::ByteSeq(algorithm.digest(content)));
    out
}

/// Checks a `Content-Digest` value against `content`: every digest of an algorithm keyhaven
/// knows must match, and at least one must be there (digests of other algorithms are ignored,
/// as RFC 9530 allows; they cannot vouch for anything).
///
/// # Errors
/// [`HttpSigError::Malformed`] for a value that is not a dictionary of byte sequences;
/// [`HttpSigError::Digest`] when a digest differs or none is of a known algorithm.
pub fn check_content_digest(field: &str, content: &[u8]) -> Result<()> {
    let dict = sfv::parse_dictionary(field).map_err(|e| HttpSigError::Malformed {
        what: "Content-Digest",
        reason: e.to_string(),
    })?;
    let mut checked = 0;
    for (name, member) in &dict {
        let Some(alg) = DigestAlgorithm::of(name) else {
            continue;
        };
        let Member::Item(item) = member else {
            return Err(HttpSigError::Malformed {
                what: "Content-Digest",
                reason: format!("{name} is not a byte sequence"),
            });
        };
        let BareItem::ByteSeq(claimed) = &item.bare else {
            return Err(HttpSigError::Malformed {
                what: "Content-Digest",
                reason: format!("{name} is not a byte sequence"),
            });
        };
        if !bool::from(alg.digest(content).ct_eq(claimed)) {
            return Err(HttpSigError::Digest(format!(
                "the {name} digest does not match the content"
            )));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(HttpSigError::Digest(
            "no sha-256 or sha-512 digest of the content".into(),
        ));
    }
    Ok(())
}
