//! The embedded store passes the storage conformance suite and keeps its file private.

use std::os::unix::fs::PermissionsExt;

use keyhaven_server::storage::conformance;
use keyhaven_server::{SqliteStorage, Storage};

#[test]
fn sqlite_passes_the_storage_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    conformance::run_all(&|| {
        n.set(n.get() + 1);
        let path = dir.path().join(format!("s{}", n.get())).join("server.db");
        Box::new(SqliteStorage::open(&path).unwrap())
    });
}

#[test]
fn the_database_is_private_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server").join("server.db");
    {
        let s = SqliteStorage::open(&path).unwrap();
        s.set_setting("k", "v").unwrap();
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let s = SqliteStorage::open(&path).unwrap();
    assert_eq!(s.setting("k").unwrap().as_deref(), Some("v"));
}

#[test]
fn a_symlinked_or_shared_database_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real").join("server.db");
    drop(SqliteStorage::open(&real).unwrap());
    let link_dir = dir.path().join("link");
    std::fs::create_dir(&link_dir).unwrap();
    std::fs::set_permissions(&link_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = link_dir.join("server.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = SqliteStorage::open(&link).unwrap_err().to_string();
    assert!(e.contains("server.db"), "{e}");

    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = SqliteStorage::open(&real).unwrap_err().to_string();
    assert!(e.contains("server.db") && e.contains("chmod"), "{e}");
}

#[test]
fn a_database_from_a_newer_keyhaven_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s").join("server.db");
    drop(SqliteStorage::open(&path).unwrap());
    set_user_version(&path, 99);
    let e = SqliteStorage::open(&path).unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");
}

/// Sets the schema version as another program would: SQLite's header keeps `user_version` in
/// 4 big-endian bytes at offset 60 (the WAL was checkpointed when the store closed).
fn set_user_version(path: &std::path::Path, version: u32) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(60)).unwrap();
    f.write_all(&version.to_be_bytes()).unwrap();
}

/// A guard that keeps nothing: for the storage's own checks.
struct Nothing;

impl keyhaven_server::storage::CommitGuard for Nothing {
    fn before_commit(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn after_commit(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn a_change_by_another_program_is_refused_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s").join("server.db");
    let s = SqliteStorage::open(&path).unwrap();
    s.set_setting("a", "1").unwrap();
    let digest = s.digest().unwrap();
    s.set_guard(std::sync::Arc::new(Nothing), digest).unwrap();
    s.set_setting("b", "2").unwrap();
    // Someone else writes the file while the server runs.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute("UPDATE settings SET value = 'evil' WHERE name = 'a'", [])
        .unwrap();
    let e = s.set_setting("c", "3").unwrap_err().to_string();
    assert!(e.contains("changed by another program"), "{e}");
    assert_eq!(s.setting("c").unwrap(), None, "nothing was written");
}
