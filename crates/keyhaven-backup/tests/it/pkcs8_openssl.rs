//! Encrypted PKCS#8 exports open in `openssl pkey` with the passphrase, and in keyhaven.

use std::process::Command;

use keyhaven_backup::{Pbes2, export_pkcs8_pem};
use keyhaven_core::{Algorithm, SecretBytes};
use keyhaven_crypto::{default_provider, hazmat};
use secrecy::SecretString;

fn openssl_pubout(path: &std::path::Path, pass: &str) -> std::process::Output {
    Command::new("openssl")
        .args(["pkey", "-passin", &format!("pass:{pass}"), "-pubout", "-in"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `openssl` ({e}): install it (apt-get install openssl)")
        })
}

#[test]
fn openssl_reads_scrypt_and_pbkdf2_exports() {
    let dir = tempfile::tempdir().unwrap();
    let pass = SecretString::from("export pass");
    for alg in Algorithm::ALL {
        let key = default_provider().generate(alg).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        for kdf in [
            Pbes2::Scrypt { log_n: 10 },
            Pbes2::Pbkdf2Sha256 { iterations: 2048 },
            Pbes2::scrypt(),
        ] {
            let pem = export_pkcs8_pem(&der, &pass, kdf).unwrap();
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
            let path = dir.path().join(format!("{alg}.pem"));
            std::fs::write(&path, pem.as_bytes()).unwrap();
            let out = openssl_pubout(&path, "export pass");
            assert!(
                out.status.success(),
                "{alg} {kdf:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                key.public_key().to_pem().unwrap(),
                "{alg} {kdf:?}"
            );
            assert!(!openssl_pubout(&path, "wrong").status.success());
            let back = hazmat::private_key_pem_to_pkcs8(&pem, Some(b"export pass")).unwrap();
            assert_eq!(back, SecretBytes::copy_from(der.expose_secret()));
        }
    }
}

#[test]
fn export_refuses_bad_input() {
    let der = default_provider()
        .generate(Algorithm::Ed25519)
        .unwrap()
        .to_pkcs8_der()
        .unwrap();
    assert!(export_pkcs8_pem(&der, &SecretString::from(""), Pbes2::scrypt()).is_err());
    assert!(
        export_pkcs8_pem(
            &SecretBytes::new(vec![1, 2, 3]),
            &SecretString::from("x"),
            Pbes2::scrypt()
        )
        .is_err()
    );
    assert!(export_pkcs8_pem(&der, &SecretString::from("x"), Pbes2::Scrypt { log_n: 99 }).is_err());
}
