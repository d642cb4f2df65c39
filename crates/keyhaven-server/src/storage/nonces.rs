//! Used nonces in memory, in time partitions dropped whole once expired: what the embedded
//! store keeps for its one server process.
//!
//! A nonce is kept as 16 bytes of SHA-256 over its key id and itself, in the partition of the
//! minute it may be forgotten in. Checking looks in every live partition (at most a window's
//! worth of minutes); pruning drops whole partitions, never scanning entries. At 10 000
//! requests/s and a 6-minute window that is 3.6 million entries, about 130 MB.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// Partition width, in seconds.
const PARTITION: u64 = 60;

/// The used nonces.
#[derive(Debug, Default)]
pub(crate) struct NonceWindow {
    partitions: Mutex<BTreeMap<u64, HashSet<[u8; 16]>>>,
}

fn digest(keyid: &str, nonce: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update((keyid.len() as u64).to_be_bytes());
    h.update(keyid.as_bytes());
    h.update(nonce.as_bytes());
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

impl NonceWindow {
    /// Records `nonce` of `keyid`, kept at least until `expires_at`: `false` if it is there.
    pub(crate) fn use_nonce(&self, keyid: &str, nonce: &str, expires_at: u64) -> bool {
        let d = digest(keyid, nonce);
        let mut parts = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if parts.values().any(|p| p.contains(&d)) {
            return false;
        }
        // The partition that ends after `expires_at`.
        let end = (expires_at / PARTITION + 1) * PARTITION;
        parts.entry(end).or_default().insert(d)
    }

    /// Drops the partitions that ended by `now`; returns how many nonces went.
    pub(crate) fn prune(&self, now: u64) -> u64 {
        let mut parts = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let live = parts.split_off(&(now + 1));
        let gone = std::mem::replace(&mut *parts, live);
        gone.values().map(|p| p.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_taken_once_until_its_partition_is_dropped() {
        let w = NonceWindow::default();
        assert!(w.use_nonce("k", "n", 100));
        assert!(!w.use_nonce("k", "n", 100));
        assert!(
            !w.use_nonce("k", "n", 500),
            "a later expiry does not make it new"
        );
        assert!(w.use_nonce("k2", "n", 100));
        assert!(w.use_nonce("k", "n2", 100));
        // Key ids and nonces are not confused across the boundary.
        assert!(w.use_nonce("ab", "c", 100));
        assert!(w.use_nonce("a", "bc", 100));
        assert_eq!(w.prune(100), 0, "kept until its partition ends");
        assert!(!w.use_nonce("k", "n", 100));
        assert_eq!(w.prune(120), 5);
        assert!(w.use_nonce("k", "n", 300));
    }
}
