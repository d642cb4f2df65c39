//! Interop with code nobody here wrote: `openssl` verifies our signatures, `tpm2_readpublic`
//! reads our persistent keys back, and `tpm2_load`/`tpm2_sign` use our blob files under their
//! own storage key (so ours is the standard SRK template).

use keyhaven_core::ErrorKind;
use std::fs;
use std::process::Command;

use keyhaven_core::{Algorithm, KeyStore, SignatureFormat};
use keyhaven_crypto::encoding::encode_signature;
use keyhaven_hsm_tpm::{KeyOptions, PersistentHandle};

use keyhaven_testkit::devices::require;

use crate::swtpm::TestTpm;

/// The TCG SRK template's attributes, for `tpm2_createprimary -a`.
pub const SRK_ATTRS: &str =
    "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";

/// Makes the TCG provisioning guidance's ECC SRK with tpm2-tools (whose default attributes lack
/// the template's noDA: with them, it is another key and our blobs do not load), saved at
/// `prim`.
pub fn tools_srk(tpm: &TestTpm, prim: &std::path::Path) {
    let prim = prim.to_str().unwrap();
    tpm.swtpm.run(
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:null:aes128cfb",
            "-a",
            SRK_ATTRS,
            "-c",
            prim,
        ],
    );
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
}

/// Loads our key blob (`ID.priv`, with `ID.pub` beside it) with tpm2-tools under their own SRK
/// (saved at `prim`); the key's context is saved at `ctx`.
fn tools_load(
    tpm: &TestTpm,
    priv_file: &std::path::Path,
    prim: &std::path::Path,
    ctx: &std::path::Path,
) {
    tools_srk(tpm, prim);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    tpm.swtpm.run(
        "tpm2_load",
        &[
            "-C",
            &s(prim),
            "-u",
            &s(&priv_file.with_extension("pub")),
            "-r",
            &s(priv_file),
            "-c",
            &s(ctx),
        ],
    );
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
}

fn openssl_verify(tpm: &TestTpm, pem: &str, hash: &str, msg: &[u8], der_sig: &[u8]) -> bool {
    require("openssl");
    let (p, m, s) = (
        tpm.scratch("pub.pem"),
        tpm.scratch("msg"),
        tpm.scratch("sig.der"),
    );
    fs::write(&p, pem).unwrap();
    fs::write(&m, msg).unwrap();
    fs::write(&s, der_sig).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", &format!("-{hash}"), "-verify"])
        .arg(&p)
        .arg("-signature")
        .arg(&s)
        .arg(&m)
        .output()
        .unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK")
}

#[test]
fn openssl_verifies_a_p384_signature_as_der() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP384, "release").unwrap();
    let msg = b"artifact bytes signed inside the TPM";
    let sig = store.sign(&key.id, msg).unwrap();
    let der = encode_signature(&sig, SignatureFormat::Der).unwrap();
    let pem = key.public_key.to_pem().unwrap();
    assert!(openssl_verify(&tpm, &pem, "sha384", msg, &der));
    assert!(!openssl_verify(&tpm, &pem, "sha384", b"other bytes", &der));
}

#[test]
fn persistent_key_reads_back_with_tpm2_readpublic() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let handle: PersistentHandle = "0x81000010".parse().unwrap();
    let key = store
        .generate_with_options(
            Algorithm::EcdsaP384,
            "persisted",
            KeyOptions::new().persistent(handle),
        )
        .unwrap();
    assert_eq!(store.key_details(&key.id).unwrap().persistent, Some(handle));
    let out = tpm.scratch("tpm2.pem");
    tpm.swtpm.run(
        "tpm2_readpublic",
        &["-c", "0x81000010", "-f", "pem", "-o", out.to_str().unwrap()],
    );
    let theirs = fs::read_to_string(&out).unwrap();
    assert_eq!(theirs, key.public_key.to_pem().unwrap(), "byte for byte");
    // the key signs through its persistent handle, and still after the store reopens
    let sig = store.sign(&key.id, b"m").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m", &sig).unwrap();
    drop(store);
    let store = tpm.store();
    let sig = store.sign(&key.id, b"m2").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"m2", &sig).unwrap();
    // delete evicts it from the TPM
    store.delete(&key.id).unwrap();
    let handles = tpm.swtpm.run("tpm2_getcap", &["handles-persistent"]);
    assert!(!handles.contains("0x81000010"), "{handles}");
}

#[test]
fn tpm2_tools_load_and_sign_with_our_blobs_under_their_own_srk() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP256, "shared").unwrap();
    let details = store.key_details(&key.id).unwrap();
    // swtpm has no resource manager and 3 object slots: the tools need them all
    drop(store);
    let priv_file = details.blob_file.clone();
    let (prim, ctx, msg, sig) = (
        tpm.scratch("prim.ctx"),
        tpm.scratch("key.ctx"),
        tpm.scratch("msg"),
        tpm.scratch("sig"),
    );
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    tools_load(&tpm, &priv_file, &prim, &ctx);
    fs::write(&msg, b"signed by tpm2_sign").unwrap();
    tpm.swtpm.run(
        "tpm2_sign",
        &[
            "-c",
            &s(&ctx),
            "-g",
            "sha256",
            "-f",
            "plain",
            "-o",
            &s(&sig),
            &s(&msg),
        ],
    );
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let der = fs::read(&sig).unwrap();
    assert!(openssl_verify(
        &tpm,
        &key.public_key.to_pem().unwrap(),
        "sha256",
        b"signed by tpm2_sign",
        &der
    ));
    // and our store still signs
    let store = tpm.store();
    let ours = store.sign(&key.id, b"after").unwrap();
    keyhaven_crypto::verify(&key.public_key, b"after", &ours).unwrap();
}

#[test]
fn private_part_exists_only_as_the_tpm_wrapped_blob() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdsaP384, "secret").unwrap();
    assert!(matches!(
        store.export_pkcs8(&key.id),
        Err(e) if e.is(ErrorKind::Unsupported)));
    // the metadata directory holds the header, the lock, the label claim and three key files
    let keys_dir = tpm.dir().join("keys");
    let mut names: Vec<String> = fs::read_dir(&keys_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".json", ".priv", ".pub"].map(|s| format!("{}{s}", key.id))
    );
    // the record holds public data only
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(keys_dir.join(format!("{}.json", key.id))).unwrap())
            .unwrap();
    let mut fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "algorithm",
            "auth",
            "created_at",
            "format",
            "id",
            "label",
            "public_key",
            "version"
        ]
    );
    // the public area says the TPM made the key and will never let it out
    let pub_file = keys_dir.join(format!("{}.pub", key.id));
    let printed = tpm.swtpm.run(
        "tpm2_print",
        &["-t", "TPM2B_PUBLIC", pub_file.to_str().unwrap()],
    );
    for attr in [
        "fixedtpm",
        "fixedparent",
        "sensitivedataorigin",
        "userwithauth",
        "sign",
    ] {
        assert!(printed.contains(attr), "{attr} missing: {printed}");
    }
    assert!(
        !printed.contains("decrypt") && !printed.contains("restricted"),
        "{printed}"
    );
    // ...and the private blob is sealed to this TPM: another swtpm refuses it (see
    // bad_input::blob_from_another_tpm_is_corrupt_naming_the_file)
}

/// TPM2B_ECC_POINT bytes: each coordinate after its 16-bit size, the whole after its size.
fn ecc_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for c in [x, y] {
        body.extend_from_slice(&u16::try_from(c.len()).unwrap().to_be_bytes());
        body.extend_from_slice(c);
    }
    let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// `tpm2_ecdhzgen` (tpm2-tools) on our ECDH key's blob gives the shared point whose x is what
/// our store's `agree` gives, and what a software party computes: our agreement is plain
/// TPM2_ECDH_ZGen.
#[test]
fn tpm2_tools_ecdhzgen_with_our_blob_agrees_with_our_store() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let key = store.generate(Algorithm::EcdhP256, "ecdh").unwrap();
    let peer = keyhaven_crypto::default_provider()
        .generate(Algorithm::EcdhP256)
        .unwrap();
    let ours = store.agree(&key.id, peer.public_key()).unwrap();
    assert_eq!(ours, peer.agree(&key.public_key).unwrap());
    let details = store.key_details(&key.id).unwrap();
    drop(store);
    let priv_file = details.blob_file.clone();
    let (prim, ctx, point, out) = (
        tpm.scratch("prim.ctx"),
        tpm.scratch("key.ctx"),
        tpm.scratch("point"),
        tpm.scratch("z"),
    );
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    tools_load(&tpm, &priv_file, &prim, &ctx);
    let sec1 = keyhaven_crypto::encoding::ec_point_uncompressed(peer.public_key()).unwrap();
    fs::write(&point, ecc_point(&sec1[1..33], &sec1[33..])).unwrap();
    tpm.swtpm.run(
        "tpm2_ecdhzgen",
        &["-c", &s(&ctx), "-u", &s(&point), "-o", &s(&out)],
    );
    tpm.swtpm.run("tpm2_flushcontext", &["-t"]);
    let z = fs::read(&out).unwrap();
    // TPM2B_ECC_POINT: total size, then x's size and x
    let x_len = usize::from(u16::from_be_bytes([z[2], z[3]]));
    let x = &z[4..4 + x_len];
    let mut padded = vec![0u8; 32 - x.len()];
    padded.extend_from_slice(x);
    assert_eq!(ours.expose_secret(), &padded[..]);
}
