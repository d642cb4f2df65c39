//! The operating system's CSPRNG.

use keyhaven_core::Error;

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`Error::Crypto`] if the operating system cannot supply random bytes.
pub fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|_| Error::Crypto)
}

/// The OS RNG as an infallible `CryptoRng`, for RustCrypto APIs that take one.
///
/// `getrandom` only fails when the kernel has no usable entropy source at all. `UnwrapErr` would
/// turn such a failure into a panic, so the source is probed first and a failure becomes
/// [`Error::Crypto`]; only a source that breaks between the probe and its use could still panic.
pub(crate) fn os_rng() -> Result<rand_core::UnwrapErr<getrandom::SysRng>, Error> {
    let mut probe = [0u8; 1];
    fill_random(&mut probe)?;
    Ok(rand_core::UnwrapErr(getrandom::SysRng))
}
