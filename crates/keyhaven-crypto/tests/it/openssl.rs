//! Interoperability with the `openssl` command line: keys and signatures we make, OpenSSL reads
//! and verifies; keys and signatures OpenSSL makes, we read and verify.

use std::path::Path;
use std::process::Command;

use keyhaven_core::{Algorithm, SignatureFormat};
use keyhaven_crypto::{default_provider, encoding, hazmat, verify};

fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `openssl` ({e}): install it (apt-get install openssl) or run the suite with `cargo xtask test`, which installs it")
        })
}

fn ok(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = openssl(args, dir);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn openssl_verifies_our_ecdsa_signatures_and_reads_our_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (alg, dgst) in [
        (Algorithm::EcdsaP384, "-sha384"),
        (Algorithm::EcdsaP256, "-sha256"),
    ] {
        let key = default_provider().generate(alg).unwrap();
        let pem = hazmat::pkcs8_to_pem(&key.to_pkcs8_der().unwrap()).unwrap();
        std::fs::write(d.join("key.pem"), pem.as_bytes()).unwrap();
        std::fs::write(d.join("pub.pem"), key.public_key().to_pem().unwrap()).unwrap();
        // openssl derives the same public key from our private key file
        let derived = ok(&["pkey", "-in", "key.pem", "-pubout"], d);
        assert_eq!(
            String::from_utf8(derived).unwrap(),
            key.public_key().to_pem().unwrap()
        );
        std::fs::write(d.join("msg"), b"interop message").unwrap();
        let sig = key.sign(b"interop message").unwrap();
        let der = encoding::encode_signature(&sig, SignatureFormat::Der).unwrap();
        std::fs::write(d.join("sig"), der).unwrap();
        let out = ok(
            &[
                "dgst",
                dgst,
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                "msg",
            ],
            d,
        );
        assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
        std::fs::write(d.join("msg"), b"interop messagE").unwrap();
        assert!(
            !openssl(
                &[
                    "dgst",
                    dgst,
                    "-verify",
                    "pub.pem",
                    "-signature",
                    "sig",
                    "msg"
                ],
                d
            )
            .status
            .success()
        );
    }
}

#[test]
fn openssl_reads_our_private_keys_of_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for alg in Algorithm::ALL {
        let key = default_provider().generate(alg).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        std::fs::write(
            d.join("k.pem"),
            hazmat::pkcs8_to_pem(&der).unwrap().as_bytes(),
        )
        .unwrap();
        let derived = ok(&["pkey", "-in", "k.pem", "-pubout"], d);
        assert_eq!(
            String::from_utf8(derived).unwrap(),
            key.public_key().to_pem().unwrap(),
            "{alg}"
        );
        // and OpenSSL's re-encoding of our key loads back as the same key
        let reencoded = String::from_utf8(ok(&["pkey", "-in", "k.pem"], d)).unwrap();
        let back = hazmat::private_key_pem_to_pkcs8(&reencoded, None).unwrap();
        assert_eq!(
            default_provider()
                .load_pkcs8_as(alg, back.expose_secret())
                .unwrap()
                .public_key(),
            key.public_key()
        );
    }
}

#[test]
fn openssl_verifies_our_ed25519_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = default_provider().generate(Algorithm::Ed25519).unwrap();
    std::fs::write(d.join("pub.pem"), key.public_key().to_pem().unwrap()).unwrap();
    std::fs::write(d.join("msg"), b"ed message").unwrap();
    std::fs::write(d.join("sig"), key.sign(b"ed message").unwrap().as_raw()).unwrap();
    let out = ok(
        &[
            "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg",
            "-sigfile", "sig",
        ],
        d,
    );
    assert!(String::from_utf8_lossy(&out).contains("Signature Verified Successfully"));
}

#[test]
fn we_read_openssl_keys_and_verify_openssl_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("msg"), b"made by openssl").unwrap();
    for (alg, genargs, dgst) in [
        (
            Algorithm::EcdsaP384,
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "k.pem",
            ],
            Some("-sha384"),
        ),
        (
            Algorithm::EcdsaP256,
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "k.pem",
            ],
            Some("-sha256"),
        ),
        (
            Algorithm::Ed25519,
            vec!["genpkey", "-algorithm", "ED25519", "-out", "k.pem"],
            None,
        ),
        (
            Algorithm::X25519,
            vec!["genpkey", "-algorithm", "X25519", "-out", "k.pem"],
            None,
        ),
    ] {
        ok(&genargs, d);
        let pem = std::fs::read_to_string(d.join("k.pem")).unwrap();
        let der = hazmat::private_key_pem_to_pkcs8(&pem, None).unwrap();
        let key = default_provider().load_pkcs8(der.expose_secret()).unwrap();
        assert_eq!(key.algorithm(), alg);
        let pubpem = String::from_utf8(ok(&["pkey", "-in", "k.pem", "-pubout"], d)).unwrap();
        assert_eq!(
            default_provider().parse_public_key_pem(&pubpem).unwrap(),
            *key.public_key()
        );
        // encrypted PKCS#8 written by openssl
        ok(
            &[
                "pkcs8",
                "-topk8",
                "-in",
                "k.pem",
                "-out",
                "enc.pem",
                "-passout",
                "pass:s3cret",
                "-v2",
                "aes-256-cbc",
            ],
            d,
        );
        let enc = std::fs::read_to_string(d.join("enc.pem")).unwrap();
        assert_eq!(
            hazmat::private_key_pem_to_pkcs8(&enc, Some(b"s3cret")).unwrap(),
            der
        );
        // our encrypted PKCS#8 read by openssl
        let ours = hazmat::pkcs8_encrypt_pem(&der, b"pw").unwrap();
        std::fs::write(d.join("ours.pem"), ours.as_bytes()).unwrap();
        let back = String::from_utf8(ok(
            &["pkey", "-in", "ours.pem", "-passin", "pass:pw", "-pubout"],
            d,
        ))
        .unwrap();
        assert_eq!(back, pubpem);
        match (alg, dgst) {
            (_, Some(dgst)) => {
                let sig = ok(&["dgst", dgst, "-sign", "k.pem", "msg"], d);
                let sig = encoding::decode_signature(alg, &sig, SignatureFormat::Der).unwrap();
                verify(key.public_key(), b"made by openssl", &sig).unwrap();
                assert!(verify(key.public_key(), b"made by openssl!", &sig).is_err());
            }
            (Algorithm::Ed25519, None) => {
                let sig = ok(
                    &[
                        "pkeyutl", "-sign", "-inkey", "k.pem", "-rawin", "-in", "msg",
                    ],
                    d,
                );
                let sig = encoding::decode_signature(alg, &sig, SignatureFormat::Raw).unwrap();
                verify(key.public_key(), b"made by openssl", &sig).unwrap();
            }
            _ => {
                // X25519: derive with openssl against our key, compare shared secrets.
                let ours = default_provider().generate(Algorithm::X25519).unwrap();
                std::fs::write(d.join("peer.pem"), ours.public_key().to_pem().unwrap()).unwrap();
                let shared = ok(
                    &[
                        "pkeyutl", "-derive", "-inkey", "k.pem", "-peerkey", "peer.pem",
                    ],
                    d,
                );
                assert_eq!(
                    ours.agree(key.public_key()).unwrap().expose_secret(),
                    &shared[..]
                );
            }
        }
    }
    // SEC1 "EC PRIVATE KEY" as `openssl ecparam -genkey` writes
    ok(
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
        d,
    );
    let pem = std::fs::read_to_string(d.join("sec1.pem")).unwrap();
    assert!(pem.contains("EC PRIVATE KEY"));
    let der = hazmat::private_key_pem_to_pkcs8(&pem, None).unwrap();
    assert_eq!(
        default_provider()
            .load_pkcs8(der.expose_secret())
            .unwrap()
            .algorithm(),
        Algorithm::EcdsaP384
    );
}

/// Re-wraps a PEM file's base64 body at `width` columns (0: one line), CRLF line ends if asked.
fn rewrap(pem: &str, width: usize, crlf: bool) -> String {
    let mut lines = pem.lines();
    let begin = lines.next().unwrap();
    let mut body = String::new();
    let mut end = "";
    for line in lines {
        if line.starts_with("-----END") {
            end = line;
            break;
        }
        body.push_str(line.trim());
    }
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut out = format!("{begin}{nl}");
    if width == 0 {
        out.push_str(&body);
        out.push_str(nl);
    } else {
        for chunk in body.as_bytes().chunks(width) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push_str(nl);
        }
    }
    out.push_str(end);
    out.push_str(nl);
    out
}

#[test]
fn pem_wrapped_as_openssl_accepts_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "k.pem",
        ],
        d,
    );
    ok(&["pkey", "-in", "k.pem", "-pubout", "-out", "pub.pem"], d);
    let private = std::fs::read_to_string(d.join("k.pem")).unwrap();
    let public = std::fs::read_to_string(d.join("pub.pem")).unwrap();
    let expected = default_provider()
        .parse_public_key_pem(&public)
        .unwrap()
        .fingerprint();
    for (width, crlf) in [(76, false), (0, false), (64, true), (76, true), (40, false)] {
        let p = rewrap(&private, width, crlf);
        let q = rewrap(&public, width, crlf);
        // OpenSSL itself reads the re-wrapped files...
        std::fs::write(d.join("w.pem"), &p).unwrap();
        std::fs::write(d.join("wpub.pem"), &q).unwrap();
        ok(&["pkey", "-in", "w.pem", "-noout"], d);
        ok(&["pkey", "-pubin", "-in", "wpub.pem", "-noout"], d);
        // ...and so do we, to the same key.
        let der = hazmat::private_key_pem_to_pkcs8(&p, None).unwrap();
        let key = default_provider().load_pkcs8(der.expose_secret()).unwrap();
        assert_eq!(key.public_key().fingerprint(), expected, "width {width}");
        let pk = default_provider().parse_public_key_pem(&q).unwrap();
        assert_eq!(pk.fingerprint(), expected, "width {width}");
    }
    // Legacy encrypted PEM is refused with the conversion command.
    ok(
        &[
            "ec",
            "-in",
            "k.pem",
            "-aes256",
            "-passout",
            "pass:pw",
            "-out",
            "legacy.pem",
        ],
        d,
    );
    let legacy = std::fs::read_to_string(d.join("legacy.pem")).unwrap();
    assert!(legacy.contains("Proc-Type"), "{legacy}");
    let e = hazmat::private_key_pem_to_pkcs8(&legacy, None).unwrap_err();
    assert!(e.to_string().contains("openssl pkcs8 -topk8"), "{e}");
}
