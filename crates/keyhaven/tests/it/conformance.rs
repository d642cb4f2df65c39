//! The conformance suite over the facade's composed stack: an encrypted store inside a sealed
//! home, behind every decorator the manager puts in front of it (deleted-key tombstones, usage
//! metering, revocation checks, access control with a policy that allows the caller, and the
//! audit log), as `KeyManager::backend(..).store()` hands it to callers.

use keyhaven::{BackendConfig, BackendKind, FixedPassphrase, KeyManager, Protection};
use keyhaven_testkit::{Capabilities, Fixture};

/// A sealed home with audit on and an access policy that allows its caller everything.
fn composed() -> Fixture {
    let home = crate::private_tempdir();
    let m = KeyManager::open(home.path(), FixedPassphrase::new("conformance")).unwrap();
    m.add_backend("vault", BackendConfig::new(BackendKind::Encrypted, None))
        .unwrap();
    let policy = home.path().join("access.toml");
    std::fs::write(
        &policy,
        "[default]\ngenerate = { principals = [\"*\"] }\nsign = { principals = [\"*\"] }\n\
         verify = { principals = [\"*\"] }\nexport = { principals = [\"*\"] }\n\
         delete = { principals = [\"*\"] }\n",
    )
    .unwrap();
    m.update_config(|c| {
        c.access.policy = Some("access.toml".into());
        Ok(())
    })
    .unwrap();
    let store = m.backend("vault").unwrap().store().clone();
    Fixture::with_guard(store, (home, m))
}

mod suite {
    use super::*;
    keyhaven_testkit::conformance_suite!(
        composed,
        Capabilities::software(Protection::SoftwareEncrypted)
    );
}
