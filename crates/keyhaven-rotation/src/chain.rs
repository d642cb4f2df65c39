//! Symmetric KDF chains as the Double Ratchet specification defines them: a root key that
//! each Diffie-Hellman output advances, chain keys, and one message key per message.
//!
//! ```text
//! KDF_RK(rk, dh_out) = HKDF-SHA-256(salt = rk, ikm = dh_out, info) -> rk' (32) || ck (32)
//! KDF_CK(ck)         = ck' = HMAC-SHA-256(ck, 0x02), mk = HMAC-SHA-256(ck, 0x01)
//! ```
//!
//! Forward secrecy is the point: a chain keeps only its current chain key, so once a message
//! key was derived and the chain moved on, nothing left can derive it again; a message key is
//! zeroized when dropped or used ([`MessageKey::seal`], [`MessageKey::open`] consume it).
//! Keys of messages that have not arrived yet are kept by a [`ReceivingChain`], up to a bound:
//! a message more than `max_skip` ahead is refused (nothing changes), and when more than
//! `max_skip` skipped keys are waiting the oldest are dropped (those messages can no longer be
//! read, and say so).
//!
//! The DH ratchet itself (new ratchet key pairs, header encryption) and persisting chains are
//! the application's: keyhaven keeps the keys and the KDFs, not the message protocol.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use keyhaven_core::SecretBytes;

use crate::error::{Result, RotationError};

/// The length of root, chain and message keys.
pub const KEY_LEN: usize = 32;
/// The default skip bound of a [`ReceivingChain`] (the Double Ratchet's MAX_SKIP).
pub const DEFAULT_MAX_SKIP: u32 = 1000;

type Key = Zeroizing<[u8; KEY_LEN]>;

fn hmac(key: &[u8; KEY_LEN], byte: u8) -> Key {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(&[byte]);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

fn key_from(what: &str, bytes: &[u8]) -> Result<Key> {
    if bytes.len() != KEY_LEN {
        return Err(keyhaven_core::Error::InvalidInput(format!(
            "a {what} is {KEY_LEN} bytes, not {}",
            bytes.len()
        ))
        .into());
    }
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    k.copy_from_slice(bytes);
    Ok(k)
}

/// The root key: advanced by each Diffie-Hellman output into a new root key and a chain key.
pub struct RootKey(Key);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey([REDACTED])")
    }
}

impl RootKey {
    /// A root key from a 32-byte secret (an X3DH [`crate::SessionSecret::shared`]).
    ///
    /// # Errors
    /// [`keyhaven_core::Error::InvalidInput`] for another length.
    pub fn from_secret(secret: &SecretBytes) -> Result<Self> {
        Ok(RootKey(key_from("root key", secret.expose_secret())?))
    }

    /// KDF_RK: replaces the root key and returns the next chain key. `info` names the
    /// application, the same on both sides.
    ///
    /// # Errors
    /// Only the HKDF length limit, which 64 bytes does not reach.
    pub fn advance(&mut self, dh_output: &SecretBytes, info: &[u8]) -> Result<ChainKey> {
        let out = keyhaven_crypto::kdf::derive_key(
            dh_output.expose_secret(),
            self.0.as_slice(),
            info,
            2 * KEY_LEN,
        )?;
        let (root, chain) = out.expose_secret().split_at(KEY_LEN);
        self.0.copy_from_slice(root);
        Ok(ChainKey(key_from("chain key", chain)?))
    }
}

/// A chain key: each step gives one message key and replaces the chain key.
pub struct ChainKey(Key);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([REDACTED])")
    }
}

impl ChainKey {
    /// A chain key from 32 bytes of secret.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::InvalidInput`] for another length.
    pub fn from_secret(secret: &SecretBytes) -> Result<Self> {
        Ok(ChainKey(key_from("chain key", secret.expose_secret())?))
    }

    /// KDF_CK: the message key, the chain key replaced by the next (the old one zeroized).
    fn step(&mut self) -> Key {
        let mk = hmac(&self.0, 0x01);
        self.0 = hmac(&self.0, 0x02);
        mk
    }
}

/// One message's key. Zeroized on drop; [`MessageKey::seal`] and [`MessageKey::open`] use it
/// once and consume it.
pub struct MessageKey {
    number: u32,
    key: Key,
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKey")
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

impl PartialEq for MessageKey {
    /// Constant-time in the key bytes.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.number == other.number && bool::from(self.key.as_slice().ct_eq(other.key.as_slice()))
    }
}

impl MessageKey {
    /// The message number in its chain.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The key bytes. Hazardous: whatever the caller copies it into is theirs to zeroize.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// AES-256-GCM encryption of `plaintext` with associated data `ad` (put the session's
    /// associated data and the message header there); the output is nonce || ciphertext.
    /// The key is used once: it is consumed and zeroized.
    ///
    /// # Errors
    /// Crypto errors.
    pub fn seal(self, plaintext: &[u8], ad: &[u8]) -> Result<Vec<u8>> {
        let sealer = keyhaven_crypto::aead::Sealer::new(self.key.as_slice())?;
        Ok(sealer.seal_joined(plaintext, &self.ad(ad))?)
    }

    /// Opens what [`MessageKey::seal`] made with the same key, number and `ad`.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::Crypto`] if it was changed or is for another key.
    pub fn open(self, sealed: &[u8], ad: &[u8]) -> Result<SecretBytes> {
        let sealer = keyhaven_crypto::aead::Sealer::new(self.key.as_slice())?;
        sealer
            .open_joined(sealed, &self.ad(ad))
            .map(|p| SecretBytes::copy_from(&p))
            .ok_or_else(|| keyhaven_core::Error::Crypto.into())
    }

    fn ad(&self, ad: &[u8]) -> Vec<u8> {
        let mut v = self.number.to_be_bytes().to_vec();
        v.extend_from_slice(ad);
        v
    }
}

/// The sending side of a chain: message keys in order, each given once.
#[derive(Debug)]
pub struct SendingChain {
    chain: ChainKey,
    next: u32,
}

impl SendingChain {
    /// A chain starting at message 0.
    pub fn new(chain: ChainKey) -> Self {
        SendingChain { chain, next: 0 }
    }

    /// The number the next message key will have.
    pub fn position(&self) -> u32 {
        self.next
    }

    /// The next message key.
    ///
    /// # Errors
    /// [`RotationError::MessageKey`] after 2^32 - 1 messages (advance the root key instead).
    pub fn next_key(&mut self) -> Result<MessageKey> {
        let number = self.next;
        let next = number
            .checked_add(1)
            .ok_or_else(|| RotationError::MessageKey {
                number,
                reason: "the chain is exhausted: advance the root key to a new chain".into(),
            })?;
        let key = self.chain.step();
        self.next = next;
        Ok(MessageKey { number, key })
    }
}

/// The receiving side of a chain: message keys in any order, each given once; keys skipped
/// over are kept (bounded) until their message arrives.
pub struct ReceivingChain {
    chain: ChainKey,
    next: u32,
    skipped: BTreeMap<u32, Key>,
    max_skip: u32,
    /// Message numbers below this whose keys were dropped from `skipped` to keep it bounded.
    dropped_below: u32,
}

impl std::fmt::Debug for ReceivingChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivingChain")
            .field("next", &self.next)
            .field("skipped", &self.skipped.len())
            .field("max_skip", &self.max_skip)
            .finish_non_exhaustive()
    }
}

impl ReceivingChain {
    /// A chain starting at message 0 that keeps at most `max_skip` skipped keys and accepts a
    /// message at most `max_skip` ahead of the next expected one.
    pub fn new(chain: ChainKey, max_skip: u32) -> Self {
        ReceivingChain {
            chain,
            next: 0,
            skipped: BTreeMap::new(),
            max_skip,
            dropped_below: 0,
        }
    }

    /// The number of skipped keys waiting for their message.
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// The key of message `number`: once. A key given before is gone (forward secrecy);
    /// a number more than the skip bound ahead is refused and changes nothing. The chain moves
    /// on whether or not the message then opens: for a number that is not yet authenticated
    /// (a message header), use [`ReceivingChain::open`].
    ///
    /// # Errors
    /// [`RotationError::MessageKey`] saying which of those it is.
    pub fn key(&mut self, number: u32) -> Result<MessageKey> {
        if number < self.next {
            return match self.skipped.remove(&number) {
                Some(key) => Ok(MessageKey { number, key }),
                None => Err(self.gone(number)),
            };
        }
        let step = self.walk(number)?;
        let key = step.key.clone();
        self.commit(step);
        Ok(MessageKey { number, key })
    }

    /// Opens message `number` (sealed with [`MessageKey::seal`]) and only then moves the
    /// chain: a forged or damaged message, whatever number it claims, changes nothing (the
    /// Double Ratchet's rule for state changes on a decryption failure).
    ///
    /// # Errors
    /// As [`ReceivingChain::key`]; [`keyhaven_core::Error::Crypto`] if it does not open.
    pub fn open(&mut self, number: u32, sealed: &[u8], ad: &[u8]) -> Result<SecretBytes> {
        if number < self.next {
            let key = self.skipped.get(&number).ok_or_else(|| self.gone(number))?;
            let plain = MessageKey {
                number,
                key: key.clone(),
            }
            .open(sealed, ad)?;
            self.skipped.remove(&number);
            return Ok(plain);
        }
        let step = self.walk(number)?;
        let plain = MessageKey {
            number,
            key: step.key.clone(),
        }
        .open(sealed, ad)?;
        self.commit(step);
        Ok(plain)
    }

    fn gone(&self, number: u32) -> RotationError {
        if number < self.dropped_below && !self.skipped.contains_key(&number) {
            RotationError::MessageKey {
                number,
                reason: format!(
                    "its key was dropped: more than {} skipped keys were waiting",
                    self.max_skip
                ),
            }
        } else {
            RotationError::MessageKey {
                number,
                reason: "already used: its key was destroyed and cannot be derived again".into(),
            }
        }
    }

    /// The chain walked forward to `number` on a copy: nothing changes until [`Self::commit`].
    fn walk(&self, number: u32) -> Result<Step> {
        if number == u32::MAX {
            return Err(RotationError::MessageKey {
                number,
                reason: "the chain is exhausted: advance the root key to a new chain".into(),
            });
        }
        let ahead = number - self.next;
        if ahead > self.max_skip {
            return Err(RotationError::MessageKey {
                number,
                reason: format!(
                    "{ahead} messages ahead of the next expected ({}), beyond the skip bound \
                     of {}",
                    self.next, self.max_skip
                ),
            });
        }
        let mut chain = ChainKey(self.chain.0.clone());
        let skipped = (self.next..number).map(|n| (n, chain.step())).collect();
        let key = chain.step();
        Ok(Step {
            number,
            chain,
            skipped,
            key,
        })
    }

    fn commit(&mut self, step: Step) {
        self.chain = step.chain;
        self.skipped.extend(step.skipped);
        self.next = step.number + 1;
        while self.skipped.len() > self.max_skip as usize {
            match self.skipped.pop_first() {
                Some((n, _)) => self.dropped_below = self.dropped_below.max(n + 1),
                None => break,
            }
        }
    }
}

/// A receiving chain walked forward, not yet committed.
struct Step {
    number: u32,
    chain: ChainKey,
    skipped: Vec<(u32, Key)>,
    key: Key,
}
