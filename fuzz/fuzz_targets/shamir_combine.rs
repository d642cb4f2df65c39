//! Parse several shares from the input and combine them: never panics, and anything combined
//! came from at least `threshold` distinct shares of one backup.
#![no_main]

use std::collections::BTreeSet;

use keyhaven_backup::{Share, combine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(shares) = Share::parse_all(text) else {
        return;
    };
    if let Ok(master) = combine(&shares) {
        assert_eq!(master.secret().len(), 32);
        let first = &shares[0];
        let ids: BTreeSet<u8> = shares.iter().map(Share::index).collect();
        assert_eq!(ids.len(), shares.len());
        assert!(shares.len() >= usize::from(first.threshold()));
        assert!(shares.iter().all(|s| s.backup_id() == first.backup_id()));
    }
});
