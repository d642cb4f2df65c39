//! Session agreement in the shape of Signal's X3DH, over [`PrekeyPool`]s.
//!
//! The responder (Bob) publishes a [`PrekeyBundle`]: his signing identity key, his identity
//! agreement key and signed prekey (both signed by the identity key) and, while his pool has
//! some, one one-time prekey. The initiator (Alice) checks the bundle, makes an ephemeral key
//! and computes
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! AD  = SPKI(ID_A) || SPKI(IK_A) || SPKI(ID_B) || SPKI(IK_B)
//! SK  = HKDF-SHA-256(salt = 0^32, ikm = F || DH1 || DH2 || DH3 [|| DH4],
//!                    info = info || 0x00 || SHA-256(AD))
//! ```
//!
//! with `F` = 32 bytes of 0xFF (48 on P-384), as the X3DH specification defines it. `ID` are the
//! signing identity keys, `IK` the identity agreement keys they signed: both are in the
//! associated data and, through its hash, in the secret itself, so someone who re-signs
//! another party's identity agreement key with their own identity (an unknown key-share) ends
//! up with a different secret and associated data on each side. Every
//! Diffie-Hellman with a long-term or prekey private key happens inside the backend that holds
//! it ([`keyhaven_core::KeyStore::agree`]), so a token- or TPM-held key works where the device
//! can agree on that curve (X25519, or ECDH P-256/P-384 for devices without X25519); only the
//! ephemeral key is a software key, made for one handshake and zeroized with it. Bob's side
//! consumes the one-time prekey last, so a handshake that fails earlier loses nothing.
//!
//! Signal's X3DH uses one key to sign and agree (XEdDSA); keyhaven keeps one use per key, so
//! the identity key signs and a separate identity agreement key does the DH, bound to it by a
//! signature. What stays the application's job: deciding whether to trust a peer's identity
//! key (safety numbers, key transparency), transporting bundles and initiations, and the
//! message protocol built on the shared secret (the [`crate::chain`] KDF chains help there).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use keyhaven_core::{Algorithm, KeyId, PublicKey, SecretBytes};

use crate::error::{Result, RotationError};
use crate::prekeys::{OneTimePrekey, PrekeyPool, SignedPrekey};

/// What a responder publishes so others can open sessions with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrekeyBundle {
    /// The responder's identity (signing) public key.
    pub identity: PublicKey,
    /// The identity agreement key, signed by `identity`.
    pub identity_key: SignedPrekey,
    /// The current signed prekey, signed by `identity`.
    pub signed_prekey: SignedPrekey,
    /// A one-time prekey, while the pool has one.
    pub one_time_prekey: Option<OneTimePrekey>,
}

impl PrekeyBundle {
    /// Checks both signatures with `identity` and that every key is on one curve.
    ///
    /// # Errors
    /// [`RotationError::Handshake`] naming the key whose signature does not verify, or the
    /// curves that differ.
    pub fn verify(&self) -> Result<Algorithm> {
        self.identity_key
            .verify_as_identity_key(&self.identity)
            .map_err(|_| {
                RotationError::Handshake(
                    "the bundle's identity agreement key is not signed by its identity key".into(),
                )
            })?;
        self.signed_prekey.verify(&self.identity).map_err(|_| {
            RotationError::Handshake(format!(
                "the bundle's signed prekey {} is not signed by its identity key",
                self.signed_prekey.key_id
            ))
        })?;
        let curve = self.identity_key.key.algorithm();
        let mut curves = vec![self.signed_prekey.key.algorithm()];
        curves.extend(self.one_time_prekey.iter().map(|o| o.public.algorithm()));
        if let Some(other) = curves.into_iter().find(|c| *c != curve) {
            return Err(RotationError::Handshake(format!(
                "the bundle mixes curves: its identity agreement key is {curve}, another key {other}"
            )));
        }
        Ok(curve)
    }
}

/// The initiator's first message: what the responder needs to compute the same secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Initiation {
    /// The initiator's identity (signing) public key, SPKI DER in base64.
    pub identity: String,
    /// The initiator's identity agreement key, SPKI DER in base64.
    pub identity_key: String,
    /// Its signature by the identity key, base64.
    pub identity_key_signature: String,
    /// Its creation time (part of what was signed).
    pub identity_key_created_at: u64,
    /// The ephemeral public key, SPKI DER in base64.
    pub ephemeral: String,
    /// The responder's signed prekey used.
    pub signed_prekey: KeyId,
    /// The responder's one-time prekey used, if the bundle had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_prekey: Option<KeyId>,
}

/// The outcome of a handshake, the same on both sides.
#[non_exhaustive]
pub struct SessionSecret {
    /// SK: 32 bytes, the root of the session's KDF chains
    /// ([`crate::chain::RootKey::from_secret`]).
    pub shared: SecretBytes,
    /// AD = SPKI(ID_initiator) || SPKI(IK_initiator) || SPKI(ID_responder) ||
    /// SPKI(IK_responder): bind it into every message's associated data so a message cannot be
    /// replayed into another pair's session.
    pub associated_data: Vec<u8>,
    /// The initiator's identity (signing) key, for the application to decide whether to trust.
    pub peer_identity: PublicKey,
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSecret")
            .field("shared", &self.shared)
            .field("associated_data_len", &self.associated_data.len())
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64ct::{Base64, Encoding};
    Base64::encode_string(bytes)
}

fn unb64(what: &str, s: &str) -> Result<Vec<u8>> {
    use base64ct::{Base64, Encoding};
    Base64::decode_vec(s)
        .map_err(|_| RotationError::Handshake(format!("the initiation's {what} is not base64")))
}

fn parse_key(what: &str, der: &[u8], curve: Algorithm) -> Result<PublicKey> {
    // An ECDH key's SPKI is an ECDSA key's: parsed as the responder's curve, or refused.
    keyhaven_crypto::default_provider()
        .parse_public_key_der_as(curve, der)
        .map_err(|e| {
            RotationError::Handshake(format!(
                "the initiation's {what} is not a {curve} key as the responder's are: {e}"
            ))
        })
}

/// The length of X3DH's `F` for a curve: its public key encoding's size.
fn filler_len(curve: Algorithm) -> usize {
    match curve {
        Algorithm::EcdhP384 => 48,
        _ => 32,
    }
}

fn derive(
    curve: Algorithm,
    dhs: &[&SecretBytes],
    info: &[u8],
    associated_data: &[u8],
) -> Result<SecretBytes> {
    use sha2::{Digest, Sha256};
    // Sized up front: growing would leave copies of the DH outputs in freed memory.
    let len = filler_len(curve) + dhs.iter().map(|d| d.len()).sum::<usize>();
    let mut ikm = Zeroizing::new(Vec::with_capacity(len));
    ikm.resize(filler_len(curve), 0xFF);
    for dh in dhs {
        ikm.extend_from_slice(dh.expose_secret());
    }
    let mut full_info = info.to_vec();
    full_info.push(0);
    full_info.extend_from_slice(&Sha256::digest(associated_data));
    Ok(keyhaven_crypto::kdf::derive_key(
        &ikm, &[0u8; 32], &full_info, 32,
    )?)
}

/// AD = SPKI(ID_A) || SPKI(IK_A) || SPKI(ID_B) || SPKI(IK_B).
fn associated_data(keys: [&PublicKey; 4]) -> Vec<u8> {
    keys.iter()
        .flat_map(|k| k.spki_der().iter().copied())
        .collect()
}

impl PrekeyPool {
    /// The bundle to publish: the identity key, the identity agreement key and the current
    /// signed prekey (each made on first use), and one one-time prekey taken from the pool
    /// (marked taken before it is returned), or none when the pool is empty.
    ///
    /// # Errors
    /// Backend and storage errors.
    pub fn bundle(&self) -> Result<PrekeyBundle> {
        let identity = self.store().get(self.identity())?.public_key;
        let identity_key = self.identity_agreement_key()?;
        let signed_prekey = match self.signed_prekey()? {
            Some(s) => s,
            None => self.rotate_signed_prekey()?,
        };
        let one_time_prekey = match self.take() {
            Ok(o) => Some(o),
            Err(RotationError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(PrekeyBundle {
            identity,
            identity_key,
            signed_prekey,
            one_time_prekey,
        })
    }

    /// The initiator's side: checks `bundle`, then computes the shared secret with this pool's
    /// identity agreement key (made on first use) and a fresh ephemeral key. `info` names the
    /// application (X3DH's info string); both sides must pass the same.
    ///
    /// # Errors
    /// [`RotationError::Handshake`] for a bundle that does not verify or whose curve differs
    /// from this pool's; backend errors.
    pub fn initiate(
        &self,
        bundle: &PrekeyBundle,
        info: &[u8],
    ) -> Result<(Initiation, SessionSecret)> {
        let curve = bundle.verify()?;
        let own = self.identity_agreement_key()?;
        if own.key.algorithm() != curve {
            return Err(RotationError::Handshake(format!(
                "the bundle's keys are {curve}, this pool's {}: both sides need one curve",
                own.key.algorithm()
            )));
        }
        let ephemeral = keyhaven_crypto::default_provider().generate(curve)?;
        let dh1 = self.agree_identity(&bundle.signed_prekey.key)?;
        let dh2 = ephemeral.agree(&bundle.identity_key.key)?;
        let dh3 = ephemeral.agree(&bundle.signed_prekey.key)?;
        let dh4 = bundle
            .one_time_prekey
            .as_ref()
            .map(|o| ephemeral.agree(&o.public))
            .transpose()?;
        let identity = self.store().get(self.identity())?.public_key;
        let associated_data = associated_data([
            &identity,
            &own.key,
            &bundle.identity,
            &bundle.identity_key.key,
        ]);
        let mut dhs = vec![&dh1, &dh2, &dh3];
        dhs.extend(dh4.as_ref());
        let shared = derive(curve, &dhs, info, &associated_data)?;
        let initiation = Initiation {
            identity: b64(identity.spki_der()),
            identity_key: b64(own.key.spki_der()),
            identity_key_signature: b64(own.signature.as_raw()),
            identity_key_created_at: own.created_at,
            ephemeral: b64(ephemeral.public_key().spki_der()),
            signed_prekey: bundle.signed_prekey.key_id.clone(),
            one_time_prekey: bundle.one_time_prekey.as_ref().map(|o| o.id.clone()),
        };
        Ok((
            initiation,
            SessionSecret {
                shared,
                associated_data,
                peer_identity: bundle.identity.clone(),
            },
        ))
    }

    /// The responder's side: checks the initiator's identity agreement key against its
    /// identity key, computes the same secret with this pool's keys inside the backend, and
    /// consumes the one-time prekey named (last: a failure before it keeps the prekey).
    /// Whether to trust the initiator's identity is the application's decision
    /// ([`SessionSecret::peer_identity`]). The one-time prekey is consumed before any message
    /// confirms the initiator (Signal waits for the first message): a forged initiation naming
    /// an observed prekey id uses it up, which costs the pool one prekey and nothing else.
    ///
    /// # Errors
    /// [`RotationError::Handshake`] for an initiation that does not verify or names a signed
    /// prekey the pool no longer keeps; [`RotationError::PrekeyUsed`] for a one-time prekey
    /// already used; backend errors.
    pub fn respond(&self, initiation: &Initiation, info: &[u8]) -> Result<SessionSecret> {
        let own = self.identity_agreement_key()?;
        let curve = own.key.algorithm();
        let identity = keyhaven_crypto::default_provider()
            .parse_public_key_der(&unb64("identity", &initiation.identity)?)
            .map_err(|e| RotationError::Handshake(format!("the initiation's identity: {e}")))?;
        let ik = parse_key(
            "identity agreement key",
            &unb64("identity agreement key", &initiation.identity_key)?,
            curve,
        )?;
        let signature = keyhaven_core::Signature::from_raw(
            identity.algorithm(),
            unb64("signature", &initiation.identity_key_signature)?,
        )
        .map_err(|e| RotationError::Handshake(format!("the initiation's signature: {e}")))?;
        let signed_ik = SignedPrekey {
            key_id: KeyId::generate()?,
            key: ik,
            signature,
            created_at: initiation.identity_key_created_at,
        };
        signed_ik.verify_as_identity_key(&identity).map_err(|_| {
            RotationError::Handshake(
                "the initiator's identity agreement key is not signed by its identity key".into(),
            )
        })?;
        let ek = parse_key(
            "ephemeral key",
            &unb64("ephemeral key", &initiation.ephemeral)?,
            curve,
        )?;
        let dh1 = match self.agree_signed(&initiation.signed_prekey, &signed_ik.key) {
            Ok(s) => s,
            Err(RotationError::NotFound(_)) => {
                return Err(RotationError::Handshake(format!(
                    "signed prekey {} is not one this pool keeps (rotated out twice since)",
                    initiation.signed_prekey
                )));
            }
            Err(e) => return Err(e),
        };
        let dh2 = self.agree_identity(&ek)?;
        let dh3 = self.agree_signed(&initiation.signed_prekey, &ek)?;
        let dh4 = initiation
            .one_time_prekey
            .as_ref()
            .map(|id| self.consume(id, &ek))
            .transpose()?;
        let own_identity = self.store().get(self.identity())?.public_key;
        let associated_data = associated_data([&identity, &signed_ik.key, &own_identity, &own.key]);
        let mut dhs = vec![&dh1, &dh2, &dh3];
        dhs.extend(dh4.as_ref());
        let shared = derive(curve, &dhs, info, &associated_data)?;
        Ok(SessionSecret {
            shared,
            associated_data,
            peer_identity: identity,
        })
    }
}
