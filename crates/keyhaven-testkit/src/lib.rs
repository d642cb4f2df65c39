#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// ok: this crate is test code only (publish = false, a dev-dependency of the backends' tests):
// its `unwrap`/`expect` calls are assertions, and a panic is how a conformance check fails. No
// user, file or device input reaches it outside a test run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod checks;
pub mod devices;
mod doubles;
pub mod openssl;

pub use doubles::FaultyStore;

use std::any::Any;
use std::sync::Arc;

use keyhaven_core::{Algorithm, KeyStore, Protection};

/// A store under test and whatever must live as long as it (a temporary directory, a device).
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn KeyStore>,
    _guard: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    /// A fixture with nothing else to keep alive.
    pub fn new(store: impl KeyStore) -> Self {
        Fixture {
            store: Arc::new(store),
            _guard: None,
        }
    }

    /// A fixture that keeps `guard` alive (dropped after the store's last use in the check).
    pub fn with_guard(store: impl KeyStore, guard: impl Any + Send) -> Self {
        Fixture {
            store: Arc::new(store),
            _guard: Some(Box::new(guard)),
        }
    }
}

/// What the backend under test can do. Every gap must be declared here, with its reason in the
/// backend's test file; the suite then checks that the gap is reported as `Unsupported`.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Algorithms it generates.
    pub algorithms: Vec<Algorithm>,
    /// The protection level its keys report.
    pub protection: Protection,
    /// Whether it imports PKCS#8 private keys.
    pub import: bool,
    /// Whether it exports private keys (never for hardware).
    pub export: bool,
    /// How many threads the concurrency checks use.
    pub threads: usize,
}

impl Capabilities {
    /// A software store: every algorithm, import and export.
    pub fn software(protection: Protection) -> Self {
        Capabilities {
            algorithms: Algorithm::ALL.to_vec(),
            protection,
            import: true,
            export: true,
            threads: 8,
        }
    }

    /// A hardware store: the given algorithms, no import or export.
    pub fn hardware(algorithms: &[Algorithm]) -> Self {
        Capabilities {
            algorithms: algorithms.to_vec(),
            protection: Protection::Hardware,
            import: false,
            export: false,
            threads: 4,
        }
    }
}

/// Expands to one `#[test]` per conformance check, in a module named `conformance`.
///
/// `$factory` is a path to a `fn() -> Fixture`; `$caps` an expression giving [`Capabilities`].
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path, $caps:expr) => {
        mod conformance {
            use super::*;
            $crate::conformance_suite!(@tests $factory, $caps;
                generates_every_supported_algorithm,
                refuses_unsupported_algorithms,
                signs_and_verifies_by_public_key_alone,
                openssl_verifies_signatures,
                signs_prehashed_digests,
                rejects_wrong_digest_lengths,
                agreement_keys_agree_and_never_sign,
                unknown_ids_are_not_found,
                key_specs_and_details,
                duplicate_labels_are_refused,
                invalid_labels_are_refused,
                lists_and_looks_up_keys,
                delete_then_use_fails,
                ids_are_unique_and_never_reused,
                concurrent_signing,
                concurrent_generation,
                import_and_export,
            );
        }
    };
    (@tests $factory:path, $caps:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::checks::$check(&$factory, &$caps);
            }
        )*
    };
}
