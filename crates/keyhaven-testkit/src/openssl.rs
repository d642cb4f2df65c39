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
    openssl(d, &args).status.success()
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}). Install it (`apt-get install openssl`) or run the \
                 whole suite with `cargo xtask test`, which installs what the tests need."
            )
        })
}

fn run_openssl(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key agreement done by `openssl` with `peer` (X25519, or ECDH on P-384 / P-256): OpenSSL
/// makes a key of its own on the peer's curve (`genpkey`) and derives (`pkeyutl -derive`).
/// Returns OpenSSL's public key (as SPKI DER, parsed by the caller) and the shared secret.
///
/// # Panics
/// If `openssl` cannot be run or fails.
pub fn agree_with(peer: &PublicKey) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temporary directory"); // ok: test assertion
    let d = dir.path();
    std::fs::write(d.join("peer.pem"), peer.to_pem().expect("pem")).expect("write"); // ok: test assertion
    let keygen: Vec<&str> = match peer.algorithm().nist_curve() {
        Some(curve) => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            if curve == "P-384" {
                "ec_paramgen_curve:P-384"
            } else {
                "ec_paramgen_curve:P-256"
            },
            "-out",
            "own.pem",
        ],
        None => vec!["genpkey", "-algorithm", "X25519", "-out", "own.pem"],
    };
    run_openssl(d, &keygen);
    run_openssl(
        d,
        &[
            "pkey", "-in", "own.pem", "-pubout", "-outform", "DER", "-out", "own.der",
        ],
    );
    run_openssl(
        d,
        &[
            "pkeyutl", "-derive", "-inkey", "own.pem", "-peerkey", "peer.pem", "-out", "z.bin",
        ],
    );
    (
        std::fs::read(d.join("own.der")).expect("read"), // ok: test assertion
        std::fs::read(d.join("z.bin")).expect("read"),   // ok: test assertion
    )
}

/// HKDF-SHA-256 by `openssl kdf` (OpenSSL 3): `len` bytes from `ikm`, `salt` and `info`.
///
/// # Panics
/// If `openssl` cannot be run or fails.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temporary directory"); // ok: test assertion
    let key = format!("hexkey:{}", hex::encode(ikm));
    let salt = format!("hexsalt:{}", hex::encode(salt));
    let info = format!("hexinfo:{}", hex::encode(info));
    let len = len.to_string();
    run_openssl(
        dir.path(),
        &[
            "kdf",
            "-keylen",
            &len,
            "-kdfopt",
            "digest:SHA256",
            "-kdfopt",
            &key,
            "-kdfopt",
            &salt,
            "-kdfopt",
            &info,
            "-binary",
            "HKDF",
        ],
    )
}
