//! Small length-prefixed binary codec (big-endian) used by the binary backup format, the record
//! plaintext and the share body.

use zeroize::Zeroizing;

/// Appends to a buffer. Used with pre-sized, zeroizing buffers for secrets.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// A u32 length then the bytes. Lengths never exceed u32 here (callers bound them).
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.raw(v);
    }
    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// Reads from a slice; every method fails cleanly on truncation.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(crate) type ReadResult<T> = Result<T, String>;

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn raw(&mut self, n: usize, what: &str) -> ReadResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.remaining()
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> ReadResult<[u8; N]> {
        let s = self.raw(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
    pub(crate) fn u8(&mut self, what: &str) -> ReadResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u32(&mut self, what: &str) -> ReadResult<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &str) -> ReadResult<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    pub(crate) fn bytes(&mut self, what: &str) -> ReadResult<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.raw(n, what)
    }
    pub(crate) fn str(&mut self, what: &str) -> ReadResult<&'a str> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| format!("{what} is not UTF-8"))
    }
    pub(crate) fn finish(&self, what: &str) -> ReadResult<()> {
        if self.remaining() != 0 {
            return Err(format!(
                "{} unexpected bytes after the {what}",
                self.remaining()
            ));
        }
        Ok(())
    }
}

/// A zeroizing buffer with room for `cap` bytes (sized up front so it never reallocates and
/// leaves copies of secrets behind).
pub(crate) fn secret_buf(cap: usize) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(Vec::with_capacity(cap))
}

/// Crockford base32 (no padding) of the first `chars * 5` bits of `bytes`.
pub(crate) fn base32_prefix(bytes: &[u8], chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = String::with_capacity(chars);
    for i in 0..chars {
        let bit = i * 5;
        let byte = bit / 8;
        let hi = u16::from(bytes.get(byte).copied().unwrap_or(0));
        let lo = u16::from(bytes.get(byte + 1).copied().unwrap_or(0));
        let word = (hi << 8) | lo;
        let shift = 16 - 5 - (bit % 8);
        let idx = usize::from((word >> shift) & 0x1f);
        out.push(char::from(ALPHABET[idx]));
    }
    out
}
