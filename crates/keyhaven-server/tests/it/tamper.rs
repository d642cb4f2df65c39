//! Someone with write access to the server's database (but not the home's passphrase) edits,
//! adds, removes or rolls back what it says: the server refuses to start, naming the file. And
//! the server's other defences a second reader asked for.

use std::path::PathBuf;

use keyhaven::{Algorithm, BackendConfig, BackendKind, ErrorKind, FixedPassphrase, KeyManager};
use keyhaven_server::{Home, ServeError, Server, ServerConfig, bootstrap_admin};

struct World {
    _dir: tempfile::TempDir,
    home: PathBuf,
}

impl World {
    /// A sealed home (an encrypted backend anchors it) with a server and an admin `ops`.
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let w = World { _dir: dir, home };
        let m = w.manager();
        m.add_backend("local", BackendConfig::new(BackendKind::Encrypted, None))
            .unwrap();
        let ops = m.generate(None, Algorithm::EcdsaP256, "ops").unwrap();
        bootstrap_admin(&m, None, None, Some((&ops, "ops"))).unwrap();
        w
    }

    fn manager(&self) -> KeyManager {
        KeyManager::open(
            &self.home,
            FixedPassphrase::new("a long passphrase for tests"),
        )
        .unwrap()
    }

    fn db(&self) -> PathBuf {
        Home {
            dir: self.home.clone(),
        }
        .database()
    }

    fn start(&self) -> Result<Server, ServeError> {
        Server::from_home(&self.manager(), ServerConfig::default())
    }

    fn sql(&self, sql: &str) {
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        conn.execute_batch(sql).unwrap();
    }

    fn assert_refused(&self, what: &str) {
        match self.start() {
            Err(ServeError::Keyhaven(e)) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
                assert!(e.to_string().contains("server.db"), "{what}: {e}");
            }
            Err(e) => panic!("{what}: refused for another reason: {e}"),
            Ok(_) => panic!("{what}: a server started on a database changed behind its back"),
        }
    }
}

#[test]
fn an_untouched_database_serves_and_one_server_serves_a_home() {
    let w = World::new();
    let first = w.start().unwrap();
    match w.start() {
        Err(ServeError::Busy(e)) => assert!(e.contains("running"), "{e}"),
        other => panic!("a second server on one home: {other:?}"),
    }
    let m = w.manager();
    let extra = m.generate(None, Algorithm::Ed25519, "extra").unwrap();
    assert!(
        matches!(
            bootstrap_admin(&m, None, None, Some((&extra, "x"))),
            Err(ServeError::Busy(_))
        ),
        "serve init waits for the server to stop"
    );
    drop(first);
    bootstrap_admin(&m, None, None, Some((&extra, "x"))).unwrap();
    w.start().unwrap();
}

#[test]
fn an_admin_added_behind_the_servers_back_is_found() {
    let w = World::new();
    w.sql(
        "INSERT INTO clients VALUES ('ffff', 'mallory', 'admin', 1);
         INSERT INTO keys (fingerprint, client_id, algorithm, spki, added_at, state)
         VALUES ('00', 'ffff', 'ed25519', x'00', 1, 'active');",
    );
    w.assert_refused("an inserted admin");
}

#[test]
fn an_edited_removed_or_unrevoked_key_is_found() {
    for (what, sql) in [
        ("a key swapped", "UPDATE keys SET spki = x'0102'"),
        ("a role raised", "UPDATE clients SET role = 'client'"),
        ("a key removed", "DELETE FROM keys"),
        (
            "the server key changed",
            "UPDATE settings SET value = 'local:0000'",
        ),
    ] {
        let w = World::new();
        w.sql(sql);
        w.assert_refused(what);
    }
}

/// A home with a key broker (an X25519 master key in the encrypted store) whose tenant
/// `acme` has a transit key `orders` at version 2 with `min_decryption_version` 2.
fn world_with_transit() -> (World, String) {
    let w = World::new();
    let master = keyhaven_server::setup_broker(&w.manager(), None, None).unwrap();
    assert_eq!(master.algorithm(), Algorithm::X25519);
    let server = w.start().unwrap();
    let transit = server.broker().unwrap().transit("acme").unwrap();
    assert!(transit.create_key("orders", 10).unwrap());
    assert_eq!(transit.rotate("orders", 20).unwrap(), 2);
    transit.set_min_decryption_version("orders", 2).unwrap();
    let c = transit.encrypt("orders", b"kept", None).unwrap();
    drop((transit, server));
    (w, c)
}

#[test]
fn transit_keys_edited_removed_or_rolled_back_behind_the_servers_back_are_found() {
    for (what, sql) in [
        (
            "min_decryption_version lowered",
            "UPDATE transit_keys SET min_decryption_version = 1",
        ),
        (
            "the newest version removed",
            "DELETE FROM transit_versions WHERE version = 2",
        ),
        (
            "a wrapped KEK swapped",
            "UPDATE transit_versions SET wrapped = (SELECT wrapped FROM transit_versions \
             WHERE version = 1) WHERE version = 2",
        ),
        (
            "a key planted for another tenant",
            "INSERT INTO transit_keys VALUES ('mallory', 'orders', 1, 1); \
             INSERT INTO transit_versions SELECT 'mallory', name, version, wrapped, created_at \
             FROM transit_versions WHERE tenant = 'acme'",
        ),
        (
            "a secret and a fallback planted (a capability for a low tier)",
            "INSERT INTO secrets VALUES ('acme', 'db/root', 1, 2, 1); \
             INSERT INTO secret_fallbacks VALUES ('acme', 'db/root', \
             '[{\"operation\":\"transit.encrypt\",\"prefix\":\"\"}]', 3600, 'x', 1)",
        ),
    ] {
        let (w, _) = world_with_transit();
        w.sql(sql);
        w.assert_refused(what);
    }
}

#[test]
fn a_restarted_broker_decrypts_what_it_encrypted() {
    let (w, c) = world_with_transit();
    let server = w.start().unwrap();
    let transit = server.broker().unwrap().transit("acme").unwrap();
    assert_eq!(
        transit.decrypt("orders", &c).unwrap().expose_secret(),
        b"kept"
    );
    assert_eq!(
        server.broker().unwrap().tier(),
        1,
        "a software master key is tier 1"
    );
    // Another tenant's engine over the same rows opens nothing of acme's.
    let other = server.broker().unwrap().transit("mallory").unwrap();
    assert!(other.decrypt("orders", &c).is_err());
}

#[test]
fn a_database_rolled_back_to_an_older_copy_is_found() {
    let w = World::new();
    let old = std::fs::read(w.db()).unwrap();
    let m = w.manager();
    let second = m.generate(None, Algorithm::Ed25519, "second").unwrap();
    bootstrap_admin(&m, None, None, Some((&second, "second"))).unwrap();
    drop(m);
    w.start().unwrap();
    // Back to the copy from before the second admin (the WAL is merged at close).
    std::fs::write(w.db(), &old).unwrap();
    w.assert_refused("an older copy");
}

#[test]
fn the_record_of_the_database_cannot_be_removed_either() {
    let w = World::new();
    std::fs::remove_file(w.home.join("server").join("state.json")).unwrap();
    match w.start() {
        Err(ServeError::Keyhaven(e)) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}"),
        other => panic!("a removed record was not noticed: {other:?}"),
    }
}

#[test]
fn a_server_key_revoked_while_serving_stops_signing_at_once() {
    let w = World::new();
    let m = w.manager();
    let key = m.resolve("keyhaven-server").unwrap();
    let signer = m.service_signer(&key, "test").unwrap();
    signer.sign(b"before").unwrap();
    m.revocations().revoke(&key, "stolen", true, None).unwrap();
    let e = signer.sign(b"after").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Revoked, "{e}");
    // And no new signer is made for it.
    assert!(m.service_signer(&key, "test").is_err());
}

/// A row changed behind a running server's back (a vouched tier planted, a revocation
/// removed, an envelope swapped) is never acted on: the next read that decides refuses.
#[test]
fn a_database_changed_while_serving_is_refused_at_the_next_decision() {
    let (w, _) = world_with_transit();
    let server = w.start().unwrap();
    let broker = server.broker().unwrap();
    broker
        .transit("acme")
        .unwrap()
        .encrypt("orders", b"x", None)
        .unwrap();
    w.sql("INSERT INTO key_tiers VALUES ('ff', 2, 'mallory', 'planted', 1)");
    let e = broker
        .transit("acme")
        .unwrap()
        .encrypt("orders", b"x", None)
        .unwrap_err();
    assert!(e.to_string().contains("changed by another program"), "{e}");
    let e = broker
        .use_secret("acme", "any/path", None, |_| ())
        .unwrap_err();
    assert_eq!(e.status.as_u16(), 503, "{e}");
}
