use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes: key material or a shared secret.
///
/// Zeroized on drop, deliberately not `Clone`, printed as `[REDACTED]`, and compared in constant
/// time. Reach the bytes with [`SecretBytes::expose_secret`] only where they are needed.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps bytes (they are moved, not copied).
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// Copies bytes out of a slice into a new secret. The caller zeroizes the source.
    pub fn copy_from(bytes: &[u8]) -> Self {
        SecretBytes(bytes.to_vec())
    }

    /// The secret bytes. Keep the borrow short and never log it.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

impl PartialEq for SecretBytes {
    /// Constant time in the contents (the lengths are not secret).
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_eq_works() {
        let a = SecretBytes::from(vec![0xde, 0xad]);
        let shown = format!("{a:?}");
        assert!(!shown.contains("222") && !shown.contains("173"), "{shown}");
        assert_eq!(shown, "SecretBytes([REDACTED; 2 bytes])");
        assert_eq!(a, SecretBytes::copy_from(&[0xde, 0xad]));
        assert_ne!(a, SecretBytes::copy_from(&[0xde, 0xae]));
        assert_ne!(a, SecretBytes::copy_from(&[0xde]));
    }
}
