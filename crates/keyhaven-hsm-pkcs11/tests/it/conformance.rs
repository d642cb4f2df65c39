//! The shared `keyhaven-testkit` conformance suite, on a fresh SoftHSM2 token per check.
//!
//! Gaps, each declared in the capabilities below and checked by the suite to be `Unsupported`:
//! - **X25519**: SoftHSM 2.6.1 (Debian) lists no `CKM_EC_MONTGOMERY_KEY_PAIR_GEN` (measured:
//!   `C_GenerateKeyPair` returns `CKR_MECHANISM_INVALID`), so the store refuses X25519 keys with
//!   `Unsupported` naming the missing mechanism.
//! - **Import** of PKCS#8 private keys: refused by design — keys are generated on the token, so
//!   that the private key never existed outside it.
//! - **Export** of private keys: refused by design — the keys are `CKA_SENSITIVE` and not
//!   `CKA_EXTRACTABLE`, so the token itself would refuse.
//!
//! Everything else (P-384, P-256, Ed25519: generate, sign, prehashed digests, OpenSSL
//! verification, lookups, delete, unique ids, concurrent signing and generation) passes as for
//! the software stores.

use keyhaven_core::Algorithm;
use keyhaven_testkit::{Capabilities, Fixture, conformance_suite};

use crate::token::TestToken;

fn fixture() -> Fixture {
    let token = TestToken::new();
    Fixture::with_guard(token.store(), token)
}

conformance_suite!(
    fixture,
    Capabilities::hardware(&[
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
        Algorithm::Ed25519,
        Algorithm::EcdhP384,
        Algorithm::EcdhP256,
    ])
);
