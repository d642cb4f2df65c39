//! The home's integrity manifest (`HOME/integrity.manifest`, which anyone who can write the
//! home can replace): never panics. Arbitrary bytes are refused unless they authenticate; and,
//! so the fuzzer reaches the body's parser, the same bytes sealed with a valid tag are either
//! refused as unreadable or accepted, never anything else.
#![no_main]

use keyhaven_fs::StateKey;
use keyhaven_fs::state::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = StateKey::new([7u8; 32].into());
    // Raw bytes: almost never authentic.
    let _ = fuzzing::parse(&key, "default/0123", data);
    // A valid tag over the fuzzer's body.
    let sealed = fuzzing::seal(&key, data);
    match fuzzing::parse(&key, "default/0123", &sealed) {
        Ok((_generation, _files)) => {}
        Err(keyhaven_core::Error::Corrupt { .. } | keyhaven_core::Error::Unsupported { .. }) => {}
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
    // The same body under another key never authenticates.
    let other = StateKey::new([8u8; 32].into());
    assert!(fuzzing::parse(&other, "default/0123", &sealed).is_err());
});
