//! The rotation policy parser: never panics, and explaining any key under an accepted policy
//! set never panics.
#![no_main]

use keyhaven_core::{Algorithm, Protection};
use keyhaven_rotation::{KeyTraits, PolicySet, Role, SecurityLevel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = PolicySet::from_toml_str(text) {
        for role in Role::ALL {
            for alg in Algorithm::ALL {
                for prot in [
                    Protection::SoftwarePlain,
                    Protection::SoftwareEncrypted,
                    Protection::Hardware,
                ] {
                    for level in SecurityLevel::ALL {
                        let traits = KeyTraits::new(role, alg, prot).with_level(level);
                        let e = set.explain_for(&traits);
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
});
