//! Reading evidence bytes, for every parser: a cursor that names what it reads and says where
//! it was cut short, and fixed-offset reads for structures whose length was checked first.

use crate::error::{Result, malformed};

/// A cursor over bytes of `subject` (for errors: "SPDM measurements", "TPM quote", ...).
pub(crate) struct Reader<'a> {
    subject: &'static str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(subject: &'static str, bytes: &'a [u8]) -> Self {
        Reader {
            subject,
            bytes,
            at: 0,
        }
    }

    /// The next `n` bytes, or an error naming `what` and where it was cut short.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                malformed(
                    self.subject,
                    format!(
                        "it ends inside {what} ({n} bytes wanted at offset {}, {} left)",
                        self.at,
                        self.bytes.len().saturating_sub(self.at)
                    ),
                )
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// How far it has read.
    pub(crate) fn pos(&self) -> usize {
        self.at
    }

    /// What is left.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16_le(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u16_be(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u24_le(&mut self, what: &str) -> Result<usize> {
        let [a, b, c] = self.array(what)?;
        Ok(usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16)
    }

    pub(crate) fn u32_le(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32_be(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64_be(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(array(self.take(N, what)?, 0))
    }

    /// A TPM `TPM2B`: a big-endian 16-bit size, then that many bytes.
    pub(crate) fn sized_be(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u16_be(what)?;
        self.take(usize::from(n), what)
    }
}

/// `N` bytes of `b` at `at`; the caller checked `b`'s length.
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&b[at..at + N]);
    w
}

/// A little-endian `u16` of `b` at `at`; the caller checked `b`'s length.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(b, at))
}

/// A little-endian `u32` of `b` at `at`; the caller checked `b`'s length.
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(b, at))
}

/// A little-endian `u64` of `b` at `at`; the caller checked `b`'s length.
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(b, at))
}
