//! The `keyhaven.toml` parser and validator: never panics, and a config it accepts serializes
//! to TOML that parses back to the same config.
#![no_main]

use keyhaven::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml_str(text, "fuzz") {
        let again = config
            .to_toml_string()
            .expect("an accepted config serializes");
        let back = Config::from_toml_str(&again, "fuzz round trip").expect("and parses back");
        assert_eq!(back, config);
    }
});
