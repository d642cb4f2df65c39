//! The shared `keyhaven-testkit` conformance suite, on a fresh swtpm per check.
//!
//! Gaps, each declared in the capabilities below and checked by the suite to be `Unsupported`:
//! - **Ed25519** and **X25519**: the TPM 2.0 library specification defines no Curve25519
//!   algorithms, and swtpm implements none (`tpm2_getcap ecc-curves` lists NIST P-192 to
//!   P-521, BN P-256/P-638 and SM2 P-256 only); the store refuses them with `Unsupported`
//!   saying so.
//! - **Import** of PKCS#8 private keys: refused by design: keys are created inside the TPM
//!   (`sensitiveDataOrigin`), so the private key never existed outside it. (A TPM can import
//!   external keys with `TPM2_Import`, but then they would not be hardware-born.)
//! - **Export** of private keys: impossible: the keys are `fixedTPM|fixedParent`; only the
//!   TPM-wrapped blob exists outside the TPM, and it is useless without this TPM.
//!
//! Everything else (P-384 and P-256: generate, sign, prehashed digests, OpenSSL verification,
//! lookups, delete, unique ids, label uniqueness, concurrent signing and generation) passes as
//! for the software stores.

use keyhaven_core::Algorithm;
use keyhaven_testkit::{Capabilities, Fixture, conformance_suite};

use crate::swtpm::TestTpm;

fn fixture() -> Fixture {
    let tpm = TestTpm::new();
    Fixture::with_guard(tpm.store(), tpm)
}

conformance_suite!(
    fixture,
    Capabilities::hardware(&[
        Algorithm::EcdsaP384,
        Algorithm::EcdsaP256,
        Algorithm::EcdhP384,
        Algorithm::EcdhP256,
    ])
);
