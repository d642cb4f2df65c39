//! The encrypted store's key record parser: never panics, and whatever it accepts is within the
//! documented bounds and re-serializes to something it accepts again.
#![no_main]

use keyhaven_store_file::format::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = Record::parse(data) {
        assert_eq!(parsed.dek.ciphertext.len(), 48);
        assert!(parsed.private_key.ciphertext.len() >= 48);
        let again = serde_json::to_vec(&parsed.record).expect("serializable");
        assert_eq!(
            Record::parse(&again).expect("round trip").record,
            parsed.record
        );
        let _ = parsed.record.aad("00");
    }
});
