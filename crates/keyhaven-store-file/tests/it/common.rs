use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keyhaven_store_file::{EncryptedStore, KdfParams};
use secrecy::SecretString;

pub(crate) fn pass() -> SecretString {
    SecretString::from("test passphrase")
}

/// A fresh encrypted store with fast KDF parameters, in a temporary directory.
pub(crate) fn encrypted() -> (tempfile::TempDir, PathBuf, EncryptedStore) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = EncryptedStore::create(&dir, &pass(), KdfParams::insecure_for_tests()).unwrap();
    (tmp, dir, store)
}

/// Every file under `dir` with its bytes and mode: to prove an operation changed nothing.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != ".lock" {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), meta.permissions().mode()),
                );
            }
        }
    }
    out
}

pub(crate) fn flip_byte(path: &Path, offset_from_end: usize) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() - offset_from_end;
    b[i] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

pub(crate) fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `openssl` ({e}): install it or run `cargo xtask test`")
        })
}
