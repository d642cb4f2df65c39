use std::fmt;
use std::str::FromStr;

use crate::{Algorithm, Error};

/// A signature in its fixed-size form: `r || s` for ECDSA (each half the curve's size), the
/// 64-byte signature for Ed25519. `keyhaven-crypto` converts to and from DER.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    algorithm: Algorithm,
    raw: Vec<u8>,
}

impl Signature {
    /// Wraps a fixed-size signature, checking its length against the algorithm.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the length is wrong or the algorithm cannot sign.
    pub fn from_raw(algorithm: Algorithm, raw: Vec<u8>) -> Result<Self, Error> {
        match algorithm.raw_signature_len() {
            Some(n) if n == raw.len() => Ok(Signature { algorithm, raw }),
            Some(n) => Err(Error::InvalidInput(format!(
                "a raw {} signature is {n} bytes, got {}",
                algorithm.jose_name(),
                raw.len()
            ))),
            None => Err(Error::InvalidInput(format!(
                "{} keys do not make signatures",
                algorithm.jose_name()
            ))),
        }
    }

    /// The algorithm that made the signature.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The fixed-size bytes.
    pub fn as_raw(&self) -> &[u8] {
        &self.raw
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}, {})",
            self.algorithm.jose_name(),
            hex::encode(&self.raw)
        )
    }
}

/// How a signature is encoded in files and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureFormat {
    /// ASN.1 DER `ECDSA-Sig-Value` for ECDSA (what OpenSSL reads); the raw 64 bytes for Ed25519,
    /// which has no DER form.
    #[default]
    Der,
    /// Fixed-size `r || s` (JOSE, WebCrypto, PKCS#11), or Ed25519's 64 bytes.
    Raw,
}

impl FromStr for SignatureFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "der" => Ok(SignatureFormat::Der),
            "raw" | "p1363" | "jose" => Ok(SignatureFormat::Raw),
            _ => Err(Error::InvalidInput(format!(
                "unknown signature format '{s}': use der or raw"
            ))),
        }
    }
}

impl fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureFormat::Der => "der",
            SignatureFormat::Raw => "raw",
        })
    }
}
