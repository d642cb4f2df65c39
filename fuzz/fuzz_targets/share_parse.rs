//! The share text parser: never panics, and a share it accepts prints back to text that parses
//! to the same share; verifying it never panics either.
#![no_main]

use keyhaven_backup::{Share, verify_share};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(shares) = Share::parse_all(text) else {
        return;
    };
    for s in &shares {
        let again = s.to_text();
        let back = Share::parse(&again).expect("a printed share parses");
        assert_eq!(back.to_text(), again);
        assert_eq!(back.index(), s.index());
        let _ = verify_share(s);
    }
});
