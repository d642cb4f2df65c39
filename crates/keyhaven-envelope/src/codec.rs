//! The byte layouts: fixed fields and length-prefixed strings, read with bounds checks.

use crate::error::{EnvelopeError, Result};

/// Appends length-prefixed fields; the prefixes make every encoding unambiguous (no two field
/// lists give the same bytes), which associated data needs.
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// A field of at most 65535 bytes, after its 16-bit big-endian length (checked by callers:
    /// every field written here is bounded well below that).
    pub(crate) fn field(&mut self, b: &[u8]) -> &mut Self {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.bytes(&len.to_be_bytes()).bytes(&b[..usize::from(len)])
    }
}

/// Reads fields front to back; every read says what it wanted when the input is too short.
pub(crate) struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Reader { what, bytes, at: 0 }
    }

    pub(crate) fn malformed(&self, reason: impl Into<String>) -> EnvelopeError {
        EnvelopeError::Malformed {
            what: self.what,
            reason: reason.into(),
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.malformed(format!(
                "it ends at byte {} inside its {field} ({n} bytes wanted)",
                self.bytes.len()
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// Reads the 4-byte format tag, which must be `tag`.
    pub(crate) fn tag(&mut self, tag: &[u8; 4]) -> Result<()> {
        if self.take(4, "format tag")? == tag {
            Ok(())
        } else {
            Err(self.malformed(format!(
                "it does not start with the tag {}",
                String::from_utf8_lossy(tag)
            )))
        }
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let b = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn field(&mut self, field: &str) -> Result<&'a [u8]> {
        let len = u16::from_be_bytes(self.array(field)?);
        self.take(usize::from(len), field)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(self.malformed(format!(
                "{} bytes follow its end",
                self.bytes.len() - self.at
            )))
        }
    }
}
