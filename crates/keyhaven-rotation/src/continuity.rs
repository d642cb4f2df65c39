//! Identity continuity proofs: the old key vouches for the new one, the new key countersigns.

use std::fmt;

use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha256};

use keyhaven_core::{Algorithm, KeyInfo, KeyStore, PublicKey, Signature};
use keyhaven_crypto::default_provider;

use crate::error::{Result, RotationError};

const TAG: &str = "keyhaven-continuity/v1";
const BEGIN: &str = "-----BEGIN KEYHAVEN CONTINUITY PROOF-----";
const END: &str = "-----END KEYHAVEN CONTINUITY PROOF-----";
const FIELDS: [&str; 10] = [
    "logical-id",
    "old-algorithm",
    "old-fingerprint",
    "new-algorithm",
    "new-fingerprint",
    "new-spki",
    "issued-at",
    "migration-end",
    "previous",
    "old-signature",
];

/// A continuity proof: a statement binding a new public key to an old one, signed by the old
/// key and countersigned by the new key.
///
/// **Text form** (what [`ContinuityProof::to_text`] writes and [`ContinuityProof::parse`]
/// reads, byte for byte; LF line endings, fields in this order, nothing else allowed):
///
/// ```text
/// -----BEGIN KEYHAVEN CONTINUITY PROOF-----
/// keyhaven-continuity/v1
/// logical-id: <logical key id>
/// old-algorithm: <p384|p256|ed25519>
/// old-fingerprint: <hex SHA-256 of the old SPKI DER>
/// new-algorithm: <p384|p256|ed25519>
/// new-fingerprint: <hex SHA-256 of the new SPKI DER>
/// new-spki: <base64 of the new SPKI DER>
/// issued-at: <seconds since the epoch>
/// migration-end: <seconds since the epoch>
/// previous: <hex SHA-256 of the previous proof's text form, or "none">
/// old-signature: <base64 of the old key's fixed-size signature over the statement>
/// new-signature: <base64 of the new key's fixed-size signature over the countersigned bytes>
/// -----END KEYHAVEN CONTINUITY PROOF-----
/// ```
///
/// The **statement** is the lines from `keyhaven-continuity/v1` through `previous: ...`, each
/// ending in LF. The old key signs exactly those bytes (ECDSA with the curve's hash, so
/// `openssl dgst -sha384 -verify old.pem -signature sig.der statement` checks it). The
/// **countersigned bytes** are the statement followed by the `old-signature: ...` line (with
/// its LF); the new key signs those. A chain is the proofs' text forms concatenated, oldest
/// first; each names the SHA-256 of the one before in `previous`.
#[derive(Clone, PartialEq, Eq)]
pub struct ContinuityProof {
    /// The logical key.
    pub logical_id: String,
    /// The old key's algorithm.
    pub old_algorithm: Algorithm,
    /// The old key's fingerprint (hex).
    pub old_fingerprint: String,
    /// The new key's algorithm.
    pub new_algorithm: Algorithm,
    /// The new key's fingerprint (hex).
    pub new_fingerprint: String,
    /// The new key's SPKI DER.
    pub new_spki: Vec<u8>,
    /// When the proof was made.
    pub issued_at: u64,
    /// When the old key stops being accepted.
    pub migration_end: u64,
    /// SHA-256 (hex) of the previous proof's text form, if any.
    pub previous: Option<String>,
    /// The old key's signature over [`ContinuityProof::statement`].
    pub old_signature: Vec<u8>,
    /// The new key's signature over [`ContinuityProof::countersigned`].
    pub new_signature: Vec<u8>,
}

impl fmt::Debug for ContinuityProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContinuityProof")
            .field("logical_id", &self.logical_id)
            .field("old_fingerprint", &self.old_fingerprint)
            .field("new_fingerprint", &self.new_fingerprint)
            .field("issued_at", &self.issued_at)
            .field("migration_end", &self.migration_end)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

fn store_err(what: &'static str) -> impl FnOnce(keyhaven_core::Error) -> RotationError {
    move |e| RotationError::continuity(None, format!("cannot {what}: {e}"))
}

impl ContinuityProof {
    /// Makes a proof that `new` succeeds `old` in logical key `logical_id`: `old` signs the
    /// statement and `new` countersigns, both inside `store`.
    ///
    /// # Errors
    /// [`RotationError::Continuity`] if either key cannot sign (X25519, backend failure).
    pub fn create(
        store: &dyn KeyStore,
        logical_id: &str,
        old: &KeyInfo,
        new: &KeyInfo,
        issued_at: u64,
        migration_end: u64,
        previous: Option<&ContinuityProof>,
    ) -> Result<Self> {
        if !old.algorithm.can_sign() || !new.algorithm.can_sign() {
            return Err(RotationError::continuity(
                None,
                "continuity proofs need signing keys; X25519 keys cannot sign",
            ));
        }
        let mut proof = ContinuityProof {
            logical_id: logical_id.to_owned(),
            old_algorithm: old.algorithm,
            old_fingerprint: old.fingerprint().to_hex(),
            new_algorithm: new.algorithm,
            new_fingerprint: new.fingerprint().to_hex(),
            new_spki: new.public_key.spki_der().to_vec(),
            issued_at,
            migration_end,
            previous: previous.map(ContinuityProof::digest),
            old_signature: Vec::new(),
            new_signature: Vec::new(),
        };
        proof.old_signature = store
            .sign(&old.id, proof.statement().as_bytes())
            .map_err(store_err("sign the statement with the old key"))?
            .as_raw()
            .to_vec();
        proof.new_signature = store
            .sign(&new.id, proof.countersigned().as_bytes())
            .map_err(store_err("countersign with the new key"))?
            .as_raw()
            .to_vec();
        Ok(proof)
    }

    /// The statement the old key signs.
    pub fn statement(&self) -> String {
        format!(
            "{TAG}\nlogical-id: {}\nold-algorithm: {}\nold-fingerprint: {}\nnew-algorithm: {}\n\
             new-fingerprint: {}\nnew-spki: {}\nissued-at: {}\nmigration-end: {}\nprevious: {}\n",
            self.logical_id,
            self.old_algorithm,
            self.old_fingerprint,
            self.new_algorithm,
            self.new_fingerprint,
            Base64::encode_string(&self.new_spki),
            self.issued_at,
            self.migration_end,
            self.previous.as_deref().unwrap_or("none"),
        )
    }

    /// The bytes the new key signs: the statement and the old signature line.
    pub fn countersigned(&self) -> String {
        format!(
            "{}old-signature: {}\n",
            self.statement(),
            Base64::encode_string(&self.old_signature)
        )
    }

    /// The text form (see the type's documentation).
    pub fn to_text(&self) -> String {
        format!(
            "{BEGIN}\n{}new-signature: {}\n{END}\n",
            self.countersigned(),
            Base64::encode_string(&self.new_signature)
        )
    }

    /// SHA-256 (hex) of the text form: what the next proof in a chain names as `previous`.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_text().as_bytes()))
    }

    /// The new public key.
    pub fn new_public_key(&self) -> PublicKey {
        PublicKey::new(self.new_algorithm, self.new_spki.clone())
    }

    /// Parses one proof in text form (surrounding white space allowed).
    ///
    /// # Errors
    /// [`RotationError::Continuity`] naming what is malformed.
    pub fn parse(text: &str) -> Result<Self> {
        let mut chain = Self::parse_chain(text)?;
        match chain.len() {
            1 => Ok(chain.remove(0)),
            n => Err(RotationError::continuity(
                None,
                format!("expected one proof, found {n} (use parse_chain for a chain)"),
            )),
        }
    }

    /// Parses a chain: proofs in text form, one after the other, oldest first.
    ///
    /// # Errors
    /// [`RotationError::Continuity`] naming the malformed link.
    pub fn parse_chain(text: &str) -> Result<Vec<Self>> {
        let mut proofs = Vec::new();
        let mut lines = text.lines().map(str::trim_end).filter(|l| !l.is_empty());
        while let Some(first) = lines.next() {
            let link = proofs.len() + 1;
            let bad = |why: String| RotationError::continuity(Some(link), why);
            if first != BEGIN {
                return Err(bad(format!("expected '{BEGIN}', found '{first}'")));
            }
            let mut body = Vec::new();
            loop {
                match lines.next() {
                    Some(l) if l == END => break,
                    Some(l) => body.push(l),
                    None => return Err(bad(format!("missing '{END}'"))),
                }
            }
            proofs.push(Self::parse_body(&body).map_err(|e| match e {
                RotationError::Continuity { reason, .. } => bad(reason),
                other => other,
            })?);
        }
        if proofs.is_empty() {
            return Err(RotationError::continuity(None, "no proof found"));
        }
        Ok(proofs)
    }

    fn parse_body(body: &[&str]) -> Result<Self> {
        let bad = |why: String| RotationError::continuity(None, why);
        if body.first() != Some(&TAG) {
            return Err(bad(format!("the first line must be '{TAG}'")));
        }
        let want = FIELDS.len() + 2;
        if body.len() != want {
            return Err(bad(format!(
                "expected {want} lines between the markers, found {}",
                body.len()
            )));
        }
        let mut values = Vec::new();
        for (line, name) in body[1..]
            .iter()
            .zip(FIELDS.iter().chain(["new-signature"].iter()))
        {
            let v = line
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(": "))
                .ok_or_else(|| bad(format!("expected field '{name}', found '{line}'")))?;
            values.push(v);
        }
        let alg = |i: usize| -> Result<Algorithm> {
            let a: Algorithm = values[i]
                .parse()
                .map_err(|_| bad(format!("unknown algorithm '{}'", values[i])))?;
            if a.to_string() != values[i] {
                return Err(bad(format!(
                    "algorithm '{}' is not in canonical form",
                    values[i]
                )));
            }
            Ok(a)
        };
        let b64 = |i: usize| -> Result<Vec<u8>> {
            Base64::decode_vec(values[i]).map_err(|_| {
                bad(format!(
                    "{} is not valid base64",
                    FIELDS.get(i).unwrap_or(&"new-signature")
                ))
            })
        };
        let num = |i: usize| -> Result<u64> {
            let n: u64 = values[i]
                .parse()
                .map_err(|_| bad(format!("{} is not a number", FIELDS[i])))?;
            if n.to_string() != values[i] {
                return Err(bad(format!("{} is not in canonical form", FIELDS[i])));
            }
            Ok(n)
        };
        let hex64 = |i: usize| -> Result<String> {
            let v = values[i];
            if v.len() == 64
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                Ok(v.to_owned())
            } else {
                Err(bad(format!("{} is not 64 lowercase hex digits", FIELDS[i])))
            }
        };
        let proof = ContinuityProof {
            logical_id: values[0].to_owned(),
            old_algorithm: alg(1)?,
            old_fingerprint: hex64(2)?,
            new_algorithm: alg(3)?,
            new_fingerprint: hex64(4)?,
            new_spki: b64(5)?,
            issued_at: num(6)?,
            migration_end: num(7)?,
            previous: if values[8] == "none" {
                None
            } else {
                Some(hex64(8)?)
            },
            old_signature: b64(9)?,
            new_signature: b64(10)?,
        };
        if proof.logical_id.is_empty() || proof.logical_id.chars().any(char::is_whitespace) {
            return Err(bad("logical-id is empty or has white space".into()));
        }
        Ok(proof)
    }
}

fn verify_one(old: &PublicKey, proof: &ContinuityProof, link: Option<usize>) -> Result<PublicKey> {
    let bad = |why: String| RotationError::continuity(link, why);
    if old.algorithm() != proof.old_algorithm {
        return Err(bad(format!(
            "the old key is {} but the proof says {}",
            old.algorithm(),
            proof.old_algorithm
        )));
    }
    if old.fingerprint().to_hex() != proof.old_fingerprint {
        return Err(bad(format!(
            "the proof was made by key {}, not by the key given ({})",
            proof.old_fingerprint,
            old.fingerprint().to_hex()
        )));
    }
    let new = default_provider()
        .parse_public_key_der(&proof.new_spki)
        .map_err(|e| bad(format!("the new public key is malformed: {e}")))?;
    if new.algorithm() != proof.new_algorithm {
        return Err(bad(format!(
            "the new key is {} but the proof says {}",
            new.algorithm(),
            proof.new_algorithm
        )));
    }
    if new.fingerprint().to_hex() != proof.new_fingerprint {
        return Err(bad("new-fingerprint does not match new-spki".into()));
    }
    if proof.migration_end < proof.issued_at {
        return Err(bad("migration-end is before issued-at".into()));
    }
    let sig = |alg: Algorithm, raw: &[u8], which: &'static str| {
        Signature::from_raw(alg, raw.to_vec())
            .map_err(|_| RotationError::ContinuitySignature { link, which })
    };
    let old_sig = sig(proof.old_algorithm, &proof.old_signature, "old key")?;
    keyhaven_crypto::verify(old, proof.statement().as_bytes(), &old_sig).map_err(|_| {
        RotationError::ContinuitySignature {
            link,
            which: "old key",
        }
    })?;
    let new_sig = sig(
        proof.new_algorithm,
        &proof.new_signature,
        "new key (countersignature)",
    )?;
    keyhaven_crypto::verify(&new, proof.countersigned().as_bytes(), &new_sig).map_err(|_| {
        RotationError::ContinuitySignature {
            link,
            which: "new key (countersignature)",
        }
    })?;
    Ok(new)
}

/// Checks a continuity proof against the old public key; returns the new public key it vouches
/// for.
///
/// # Errors
/// [`RotationError::Continuity`] if the proof is not about `old` or is inconsistent;
/// [`RotationError::ContinuitySignature`] if a signature does not verify.
pub fn verify_continuity(old: &PublicKey, proof: &ContinuityProof) -> Result<PublicKey> {
    verify_one(old, proof, None)
}

/// Checks a chain of proofs from the first identity key `first`, oldest first: each link must be
/// made by the key the previous one vouched for, name the previous proof's digest, concern the
/// same logical key, and verify. Returns the last new public key (the current identity).
///
/// # Errors
/// [`RotationError::Continuity`] / [`RotationError::ContinuitySignature`] naming the failing
/// link (1-based): a bad signature, a missing or reordered link, or a proof of another key.
pub fn verify_chain(first: &PublicKey, proofs: &[ContinuityProof]) -> Result<PublicKey> {
    if proofs.is_empty() {
        return Err(RotationError::continuity(None, "the chain is empty"));
    }
    let mut current = first.clone();
    let mut previous: Option<&ContinuityProof> = None;
    for (i, proof) in proofs.iter().enumerate() {
        let link = Some(i + 1);
        if let Some(prev) = previous {
            if proof.logical_id != prev.logical_id {
                return Err(RotationError::continuity(
                    link,
                    format!(
                        "it concerns key {}, the chain so far concerns {}",
                        proof.logical_id, prev.logical_id
                    ),
                ));
            }
            if proof.previous.as_deref() != Some(prev.digest().as_str()) {
                return Err(RotationError::continuity(
                    link,
                    "it does not follow the previous proof (a link is missing or out of order)",
                ));
            }
        }
        if proof.old_fingerprint != current.fingerprint().to_hex() {
            return Err(RotationError::continuity(
                link,
                format!(
                    "it was made by key {}, but the chain's current key is {} (a link is missing \
                     or out of order)",
                    proof.old_fingerprint,
                    current.fingerprint().to_hex()
                ),
            ));
        }
        current = verify_one(&current, proof, link)?;
        previous = Some(proof);
    }
    Ok(current)
}
