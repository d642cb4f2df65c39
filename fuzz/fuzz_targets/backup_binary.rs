//! The binary backup parser: never panics on any input, and also on inputs whose trailing
//! SHA-256 was fixed up (so the fuzzer reaches the length-prefixed structure behind it).
//! Whatever it accepts re-encodes to text and back to the same bytes.
#![no_main]

use keyhaven_backup::{BackupSecret, Format, convert, inspect, open, verify};
use keyhaven_core::SecretBytes;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn check(data: &[u8]) {
    let Ok(header) = inspect(data) else { return };
    assert_eq!(header.key_count, header.keys.len());
    assert!(verify(data, None).is_ok());
    if let Ok(text) = convert(data, Format::Text) {
        assert!(inspect(&text).expect("re-encoded") == header);
        assert_eq!(convert(&text, Format::Binary).expect("back"), data);
    }
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
    let mut fixed = b"KHBK".to_vec();
    fixed.extend_from_slice(data);
    let digest = Sha256::digest(&fixed);
    fixed.extend_from_slice(&digest);
    check(&fixed);
});
