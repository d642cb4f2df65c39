//! The text backup parser: never panics on any input, and also on inputs whose integrity
//! digest was fixed up (so the fuzzer reaches the header and record parsers behind the digest).
//! Whatever it accepts re-encodes to binary and back to the same bytes.
#![no_main]

use keyhaven_backup::{BackupSecret, Format, convert, inspect, open, verify};
use keyhaven_core::SecretBytes;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn check(data: &[u8]) {
    let Ok(header) = inspect(data) else { return };
    assert_eq!(header.key_count, header.keys.len());
    let report = verify(data, None).expect("inspect accepted it");
    assert_eq!(report.header, header);
    if let Ok(bin) = convert(data, Format::Binary) {
        assert!(inspect(&bin).expect("re-encoded") == header);
        assert_eq!(convert(&bin, Format::Text).expect("back"), data);
    }
    // A master key never authenticates a fuzzed file (and a passphrase header is refused
    // before any KDF runs).
    assert!(
        open(
            data,
            &BackupSecret::MasterKey(SecretBytes::new(vec![1; 32]))
        )
        .is_err()
    );
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = b"keyhaven-backup ".to_vec();
    fixed.extend_from_slice(data);
    if !fixed.ends_with(b"\n") {
        fixed.push(b'\n');
    }
    let digest = hex::encode(Sha256::digest(&fixed));
    fixed.extend_from_slice(format!("sha256 {digest}\n").as_bytes());
    check(&fixed);
});
