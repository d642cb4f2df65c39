//! An independent verification path: the `openssl` command line.

use std::process::Command;

use keyhaven_core::{Algorithm, PublicKey, Signature, SignatureFormat};

/// Verifies `signature` over `message` with `openssl` (`dgst -sha384/-sha256 -verify` for ECDSA,
/// `pkeyutl -verify -rawin` for Ed25519). Returns whether OpenSSL accepted it.
///
/// # Panics
/// If `openssl` cannot be run: the message says how to get it (never a silent pass).
pub fn verify(public_key: &PublicKey, message: &[u8], signature: &Signature) -> bool {
    let dir = tempfile::tempdir().expect("temporary directory"); // ok: test assertion
    let d = dir.path();
    std::fs::write(d.join("pub.pem"), public_key.to_pem().expect("pem")).expect("write"); // ok: test assertion
    std::fs::write(d.join("msg"), message).expect("write"); // ok: test assertion
    let sig = keyhaven_crypto::encoding::encode_signature(signature, SignatureFormat::Der)
        .expect("encodable signature"); // ok: test assertion
    std::fs::write(d.join("sig"), sig).expect("write"); // ok: test assertion
    let args: Vec<&str> = match public_key.algorithm() {
        Algorithm::EcdsaP384 => vec![
            "dgst",
            "-sha384",
            "-verify",
            "pub.pem",
            "-signature",
            "sig",
            "msg",
        ],
        Algorithm::EcdsaP256 => vec![
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig",
            "msg",
        ],
        Algorithm::Ed25519 => vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg",
            "-sigfile", "sig",
        ],
        other => panic!("openssl cannot verify {other} signatures"),
    };
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(d)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}). Install it (`apt-get install openssl`) or run the \
                 whole suite with `cargo xtask test`, which installs what the tests need."
            )
        });
    out.status.success()
}
