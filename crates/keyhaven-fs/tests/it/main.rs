//! `keyhaven-fs`: the one private-file writer.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use keyhaven_core::Error;
use keyhaven_fs::{
    MAX_SECRET_FILE, atomic_write, atomic_write_new, check_private, create_private_dir,
    read_private, read_secret,
};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn atomic_write_replaces_privately_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.sig");
    atomic_write(&path, b"one").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"one");
    assert_eq!(mode(&path), 0o600);
    // an existing file open to others is replaced by a private one
    set_mode(&path, 0o644);
    atomic_write(&path, b"two").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(names(dir.path()), ["out.sig"], "no temporary file is left");
    // a missing directory fails, naming the file, and creates nothing
    let e = atomic_write(&dir.path().join("missing/out"), b"x").unwrap_err();
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    assert!(e.to_string().contains("missing/out"), "{e}");
    // a directory is not replaced
    let e = atomic_write(dir.path(), b"x").unwrap_err();
    assert!(matches!(e, Error::InvalidInput(..)), "{e}");
}

#[test]
fn atomic_write_follows_a_link_and_writes_devices_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let link = dir.path().join("link");
    fs::write(&real, b"old").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    atomic_write(&link, b"new").unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&real).unwrap(), b"new");
    // /dev/null is written, never replaced (which root could otherwise do)
    atomic_write(Path::new("/dev/null"), b"discarded").unwrap();
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn atomic_write_new_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    atomic_write_new(&path, b"secret").unwrap();
    assert_eq!(mode(&path), 0o600);
    let e = atomic_write_new(&path, b"other").unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(..)), "{e}");
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert_eq!(fs::read(&path).unwrap(), b"secret");
    // not even through a dangling link
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let e = atomic_write_new(&dangling, b"x").unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(..)), "{e}");
    assert!(!dir.path().join("nowhere").exists());
    assert_eq!(names(dir.path()), ["dangling", "key.pem"]);
}

#[test]
fn private_directories_are_created_0700_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    create_private_dir(&nested).unwrap();
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    create_private_dir(&nested).unwrap();
    set_mode(&nested, 0o755);
    let e = create_private_dir(&nested).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(..)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("chmod 700 {}", nested.display())),
        "{msg}"
    );
    assert_eq!(mode(&nested), 0o755, "checked, never changed");
    let e = check_private(&nested).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(..)));
    // a file where the directory should be
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        create_private_dir(&file).unwrap_err(),
        Error::InvalidInput(..)
    ));
}

#[test]
fn secrets_are_read_whole_and_private_ones_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pass");
    fs::write(&path, b"first line\nsecond\n").unwrap();
    set_mode(&path, 0o640);
    let e = read_private(&path).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(..)), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("chmod 600 {}", path.display())),
        "{e}"
    );
    assert_eq!(&read_secret(&path).unwrap()[..], b"first line\nsecond\n");
    set_mode(&path, 0o600);
    assert_eq!(&read_private(&path).unwrap()[..], b"first line\nsecond\n");
    // larger than the first buffer, and the size limit
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    fs::write(&path, &big).unwrap();
    assert_eq!(&read_secret(&path).unwrap()[..], &big[..]);
    fs::write(&path, vec![b'x'; MAX_SECRET_FILE]).unwrap();
    assert_eq!(read_secret(&path).unwrap().len(), MAX_SECRET_FILE);
    fs::write(&path, vec![b'x'; MAX_SECRET_FILE + 1]).unwrap();
    let e = read_secret(&path).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(..)), "{e}");
    fs::write(&path, b"").unwrap();
    assert!(read_secret(&path).unwrap().is_empty());
}

#[test]
fn check_entry_refuses_links_wrong_types_and_loose_modes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    let f = d.join("f");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
    keyhaven_fs::check_entry(&d, &meta(&d), true).unwrap();
    keyhaven_fs::check_entry(&f, &meta(&f), false).unwrap();
    // the wrong type, either way round
    let e = keyhaven_fs::check_entry(&f, &meta(&f), true).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    let e = keyhaven_fs::check_entry(&d, &meta(&d), false).unwrap_err();
    assert!(e.to_string().contains("is not a regular file"), "{e}");
    // a link is never followed, even to a good file
    let link = d.join("link");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    let e = keyhaven_fs::check_entry(&link, &meta(&link), false).unwrap_err();
    assert_eq!(e.kind(), keyhaven_core::ErrorKind::PermissionDenied, "{e}");
    // loose modes name the chmod that fixes them
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let e = keyhaven_fs::check_entry(&f, &meta(&f), false).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

#[test]
fn a_file_stamp_changes_when_the_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, b"one").unwrap();
    let first = keyhaven_fs::FileStamp::of(&fs::metadata(&f).unwrap());
    assert_eq!(
        first,
        keyhaven_fs::FileStamp::of(&fs::metadata(&f).unwrap())
    );
    // replaced by rename, as an atomic write does: another inode
    let tmp = dir.path().join("tmp");
    fs::write(&tmp, b"two").unwrap();
    fs::rename(&tmp, &f).unwrap();
    assert_ne!(
        first,
        keyhaven_fs::FileStamp::of(&fs::metadata(&f).unwrap())
    );
}
