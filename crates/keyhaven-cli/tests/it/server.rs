//! `keyhaven serve` and `keyhaven client`: a server process on loopback, clients whose keys
//! live in an encrypted store and on a SoftHSM2 token, rotation, revocation, admin, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::Home;

/// A `keyhaven serve` process, killed on drop.
pub(crate) struct Served {
    child: Child,
    pub(crate) url: String,
    pub(crate) fingerprint: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// `keyhaven client register` of `home`'s key `key` with this server, its key pinned.
    pub(crate) fn register(&self, home: &Home, key: &str) {
        home.ok(&[
            "client",
            "register",
            "--server",
            &self.url,
            "--key",
            key,
            "--server-fingerprint",
            &self.fingerprint,
        ]);
    }

    pub(crate) fn start(home: &Home) -> Served {
        Served::start_args(home, &["serve", "--listen", "127.0.0.1:0"], 2).0
    }

    /// `keyhaven ARGS` (a `serve` command), reading the first `lines` lines it prints: the
    /// address and the server key, then whatever else (returned).
    pub(crate) fn start_args(home: &Home, args: &[&str], lines: usize) -> (Served, Vec<String>) {
        let mut child = home
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed: Vec<String> = (0..lines).map(|_| out.next().unwrap().unwrap()).collect();
        let url = printed[0]
            .strip_prefix("keyhaven server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {}", printed[0]))
            .to_owned();
        let fingerprint = printed[1]
            .strip_prefix("server key: ")
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .to_owned();
        let rest = printed.split_off(2);
        (
            Served {
                child,
                url,
                fingerprint,
            },
            rest,
        )
    }

    /// SIGTERM, then the exit status and standard error.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err).unwrap();
        (status, err)
    }
}

/// A server home with an admin key (`admin`, P-256) registered by `serve init`.
pub(crate) fn server_home() -> Home {
    let h = Home::with_encrypted();
    h.generate("p256", "admin", &[]);
    let out = h.ok(&["serve", "init", "--admin", "admin", "--admin-name", "ops"]);
    assert!(out.contains("server key: "), "{out}");
    assert!(out.contains("admin 'ops'"), "{out}");
    h
}

#[test]
fn serve_needs_init_and_refuses_plain_http_off_loopback() {
    let h = Home::with_encrypted();
    let e = h.fails(&["serve", "--listen", "127.0.0.1:0"], 3);
    assert!(e.contains("keyhaven serve init"), "{e}");
    let e = h.fails(&["serve", "--listen", "0.0.0.0:0"], 2);
    assert!(e.contains("--allow-plain-http"), "{e}");
}

#[test]
fn a_client_registers_rotates_and_revokes_a_key_of_the_encrypted_store() {
    let s = server_home();
    let served = Served::start(&s);
    let c = Home::with_encrypted();
    c.generate("ed25519", "svc", &["--role", "identity"]);
    // A wrong fingerprint: nothing is sent, nothing pinned.
    let e = c.fails(
        &[
            "client",
            "register",
            "--server",
            &served.url,
            "--key",
            "svc",
            "--server-fingerprint",
            &"0".repeat(64),
        ],
        6,
    );
    assert!(e.contains("presents key"), "{e}");
    let me = c.json(&[
        "client",
        "register",
        "--server",
        &served.url,
        "--key",
        "svc",
        "--server-fingerprint",
        &served.fingerprint,
        "--json",
    ]);
    assert_eq!(me["name"], "svc");
    assert_eq!(me["keys"][0]["status"], "active");
    // The server is remembered: no --server from now on.
    let who = c.ok(&["client", "whoami", "--key", "svc"]);
    assert!(
        who.contains("(client)") && who.contains("(active)"),
        "{who}"
    );
    let e = c.fails(&["client", "register", "--key", "svc"], 8);
    assert!(e.contains("registered already"), "{e}");

    c.ok(&["key", "rotate", "svc", "--migration-window", "1h"]);
    let after = c.json(&["client", "rotate", "--key", "svc", "--json"]);
    assert_eq!(after["keys"][0]["status"], "rotating", "{after}");
    assert_eq!(after["keys"][1]["status"], "active", "{after}");
    let who = c.json(&["client", "whoami", "--key", "svc", "--json"]);
    assert_eq!(who["key"], after["keys"][1]["fingerprint"]);

    let revoked = c.json(&[
        "client",
        "revoke",
        "--key",
        "svc",
        "--reason",
        "retired service",
        "--json",
    ]);
    assert_eq!(revoked["keys"][1]["status"], "revoked");
    let e = c.fails(&["client", "whoami", "--key", "svc"], 12);
    assert!(e.contains("revoked") && e.contains("active key"), "{e}");

    // The admin sees it all.
    s.ok(&[
        "client",
        "trust",
        "--server",
        &served.url,
        "--server-fingerprint",
        &served.fingerprint,
    ]);
    let list = s.ok(&["client", "admin", "list", "--key", "admin"]);
    assert!(list.contains("ops") && list.contains("svc"), "{list}");
    let stats = s.ok(&["client", "admin", "stats", "--key", "admin"]);
    assert!(stats.contains("clients: 2"), "{stats}");
    assert!(
        stats.contains("1 rotating") && stats.contains("1 revoked"),
        "{stats}"
    );
    // A client is no admin.
    let e = c.fails(&["client", "admin", "stats", "--key", "svc"], 12);
    assert!(e.contains("revoked"), "{e}");

    // Every decision is in the server home's audit log, whose chain verifies.
    let tail = s.ok(&["audit", "search", "--operation", "server.register"]);
    assert!(tail.contains("server.register"), "{tail}");
    s.ok(&["audit", "verify"]);

    let (status, err) = served.terminate();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("stopped"), "{err}");
}

#[cfg(feature = "pkcs11")]
#[test]
fn a_client_key_on_a_softhsm_token_registers_and_signs_requests() {
    use keyhaven_testkit::devices::SoftHsm;
    let s = server_home();
    let served = Served::start(&s);
    let hsm = SoftHsm::new();
    hsm.init_token("client", "1234");
    let c = Home::new()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("CLIENT_PIN", "1234")
        .env("KEYHAVEN_TOKEN_PIN", "1234");
    c.ok(&[
        "backend",
        "add",
        "pkcs11",
        "hsm",
        "--module",
        &hsm.module().display().to_string(),
        "--token",
        "client",
        "--pin-env",
        "CLIENT_PIN",
    ]);
    c.generate("p384", "device", &[]);
    let me = c.json(&[
        "client",
        "register",
        "--server",
        &served.url,
        "--key",
        "device",
        "--server-fingerprint",
        &served.fingerprint,
        "--json",
    ]);
    assert_eq!(me["keys"][0]["algorithm"], "p384");
    let who = c.json(&["client", "whoami", "--key", "device", "--json"]);
    assert_eq!(who["client"], me["id"]);
    assert_eq!(who["status"], "active");
}

/// Two `keyhaven serve` processes on one PostgreSQL database: registrations made through
/// either survive one of them being killed (SIGKILL) in the middle of the work, the other
/// answers for every client, and a key revoked through one is refused by the other.
#[test]
fn two_servers_on_one_postgres_survive_one_being_killed() {
    let pg = keyhaven_testkit::devices::Postgres::start();
    let url = pg.url();
    let s = Home::with_encrypted();
    s.generate("p256", "admin", &[]);
    s.ok(&["serve", "init", "--database", &url, "--admin", "admin"]);
    let start = || {
        Served::start_args(
            &s,
            &["serve", "--database", &url, "--listen", "127.0.0.1:0"],
            2,
        )
        .0
    };
    let a = start();
    let b = start();
    assert_eq!(
        a.fingerprint, b.fingerprint,
        "one server key for both nodes"
    );

    let c = Home::with_encrypted();
    let mut registered = Vec::new();
    for i in 0..6 {
        let label = format!("svc{i}");
        c.generate("ed25519", &label, &[]);
        let node = if i % 2 == 0 { &a } else { &b };
        c.ok(&[
            "client",
            "register",
            "--server",
            &node.url,
            "--key",
            &label,
            "--server-fingerprint",
            &node.fingerprint,
        ]);
        registered.push(label);
    }
    // a dies mid-work, without a chance to clean up; a client naming both nodes goes on.
    let b_url = b.url.clone();
    let fp = b.fingerprint.clone();
    let both = format!("{},{}", a.url, b.url);
    c.ok(&[
        "client",
        "trust",
        "--server",
        &both,
        "--server-fingerprint",
        &fp,
    ]);
    // Load: three clients registering new keys through either node while a is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = std::sync::Arc::new(c);
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (stop, done, c, both, fp) = (
                stop.clone(),
                done.clone(),
                c.clone(),
                both.clone(),
                fp.clone(),
            );
            std::thread::spawn(move || {
                for n in 0..40 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let label = format!("load{t}x{n}");
                    c.generate("ed25519", &label, &[]);
                    let out = c.run(&[
                        "client",
                        "register",
                        "--server",
                        &both,
                        "--key",
                        &label,
                        "--server-fingerprint",
                        &fp,
                    ]);
                    if out.status.success() {
                        done.lock().unwrap().push(label);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let c = std::sync::Arc::try_unwrap(c).unwrap_or_else(|_| panic!("workers are done"));
    let loaded = done.lock().unwrap().clone();
    assert!(loaded.len() >= 3, "the load registered little: {loaded:?}");
    registered.extend(loaded);
    let who = c.json(&["client", "whoami", "--key", "svc2", "--json"]);
    assert_eq!(
        who["status"], "active",
        "the client did not fail over: {who}"
    );
    c.ok(&[
        "client",
        "trust",
        "--server",
        &b_url,
        "--server-fingerprint",
        &fp,
    ]);
    for label in &registered {
        let who = c.json(&[
            "client", "whoami", "--server", &b_url, "--key", label, "--json",
        ]);
        assert_eq!(who["status"], "active", "{label} was lost: {who}");
    }
    // Revoked through b; a new node started on the same database refuses it too.
    c.ok(&[
        "client", "revoke", "--server", &b_url, "--key", "svc0", "--reason", "gone",
    ]);
    let a2 = start();
    c.ok(&[
        "client",
        "trust",
        "--server",
        &a2.url,
        "--server-fingerprint",
        &fp,
    ]);
    let e = c.fails(
        &["client", "whoami", "--server", &a2.url, "--key", "svc0"],
        12,
    );
    assert!(e.contains("revoked"), "{e}");
    assert!(
        c.ok(&["client", "whoami", "--server", &a2.url, "--key", "svc1"])
            .contains("active")
    );
}

/// `keyhaven serve --tls` with the server key on a SoftHSM2 token: the TLS handshake is signed
/// on the token (the key never leaves it), and a client trusting the printed certificate
/// registers over HTTPS.
#[cfg(feature = "pkcs11")]
#[test]
fn serve_tls_with_the_key_on_a_token() {
    use keyhaven_testkit::devices::SoftHsm;
    let hsm = SoftHsm::new();
    hsm.init_token("server", "4321");
    let s = Home::new()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("SERVER_PIN", "4321")
        .env("KEYHAVEN_TOKEN_PIN", "4321");
    s.ok(&[
        "backend",
        "add",
        "pkcs11",
        "hsm",
        "--module",
        &hsm.module().display().to_string(),
        "--token",
        "server",
        "--pin-env",
        "SERVER_PIN",
    ]);
    s.ok(&[
        "serve",
        "init",
        "--no-admin",
        "--algorithm",
        "p256",
        "--backend",
        "hsm",
    ]);
    let shown = s.json(&["key", "show", "keyhaven-server", "--json"]);
    assert_eq!(shown["protection"], "hardware", "{shown}");
    let (served, rest) = Served::start_args(&s, &["serve", "--tls", "--listen", "127.0.0.1:0"], 3);
    let (url, fp) = (served.url.clone(), served.fingerprint.clone());
    assert!(url.starts_with("https://"), "{url}");
    assert!(
        rest[0].starts_with("TLS certificate: sha256 "),
        "{}",
        rest[0]
    );
    let cert = s.path().join("server").join("tls-cert.pem");

    let c = Home::with_encrypted();
    c.generate("ed25519", "svc", &[]);
    // Without the certificate, HTTPS refuses the server.
    c.fails(
        &[
            "client",
            "register",
            "--server",
            &url,
            "--key",
            "svc",
            "--server-fingerprint",
            &fp,
        ],
        10,
    );
    let cert = cert.display().to_string();
    let me = c.json(&[
        "client",
        "register",
        "--server",
        &url,
        "--key",
        "svc",
        "--server-fingerprint",
        &fp,
        "--tls-ca",
        &cert,
        "--json",
    ]);
    assert_eq!(me["keys"][0]["status"], "active");
    let who = c.ok(&["client", "whoami", "--key", "svc", "--tls-ca", &cert]);
    assert!(who.contains("active"), "{who}");
    drop(served);
}

/// The pinned server key is part of the home's authenticated state: swapping it in the file
/// (to trust an impostor) is found, and nothing is sent.
#[test]
fn a_pinned_server_key_swapped_in_the_file_is_refused() {
    let s = server_home();
    let served = Served::start(&s);
    let c = Home::with_encrypted();
    c.generate("ed25519", "svc", &[]);
    served.register(&c, "svc");
    let pins = c.path().join("client").join("servers.json");
    let text = std::fs::read_to_string(&pins).unwrap();
    std::fs::write(&pins, text.replace(&served.fingerprint, &"0".repeat(64))).unwrap();
    let e = c.fails(&["client", "whoami", "--key", "svc"], 7);
    assert!(e.contains("servers.json"), "{e}");
}

/// The key broker with its master key on a SoftHSM2 token (ECDH P-384, tier 2): `serve
/// init-broker`, then a client encrypts a file, decrypts it, rotates, rewraps and retires the
/// old version through `keyhaven client transit`.
#[test]
fn the_broker_keeps_its_master_key_on_a_token_and_the_cli_drives_transit() {
    use keyhaven_testkit::devices::SoftHsm;
    let hsm = SoftHsm::new();
    hsm.init_token("broker", "1234");
    let s = Home::with_encrypted()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("BROKER_PIN", "1234");
    s.generate("p256", "admin", &[]);
    s.ok(&["serve", "init", "--admin", "admin"]);
    s.ok(&[
        "backend",
        "add",
        "pkcs11",
        "hsm",
        "--module",
        &hsm.module().display().to_string(),
        "--token",
        "broker",
        "--pin-env",
        "BROKER_PIN",
    ]);
    let out = s.ok(&["serve", "init-broker", "--backend", "hsm"]);
    assert!(
        out.contains("ecdh-p384") && out.contains("hardware") && out.contains("tier 2"),
        "{out}"
    );
    // Run again: the same master key.
    let again = s.ok(&["serve", "init-broker", "--backend", "hsm"]);
    assert_eq!(out.lines().next().unwrap(), again.lines().next().unwrap());
    let served = Served::start(&s);

    let c = Home::with_encrypted();
    c.generate("ed25519", "app", &[]);
    served.register(&c, "app");
    let created = c.json(&[
        "client", "transit", "create", "db", "--key", "app", "--json",
    ]);
    assert_eq!(created["latest_version"], 1, "{created}");
    let file = c.scratch().join("secret.txt");
    crate::write_private(&file, b"postgres://app:hunter2@db/prod");
    let v1 = c.ok(&[
        "client",
        "transit",
        "encrypt",
        "db",
        "--key",
        "app",
        "--in",
        &file.display().to_string(),
    ]);
    let v1 = v1.trim();
    assert!(v1.starts_with("vault:v1:"), "{v1}");
    let plain = c.ok(&["client", "transit", "decrypt", "db", v1, "--key", "app"]);
    assert_eq!(plain, "postgres://app:hunter2@db/prod");

    c.ok(&["client", "transit", "rotate", "db", "--key", "app"]);
    let v2 = c.ok(&["client", "transit", "rewrap", "db", v1, "--key", "app"]);
    let v2 = v2.trim();
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    c.ok(&[
        "client",
        "transit",
        "min-decryption-version",
        "db",
        "2",
        "--key",
        "app",
    ]);
    let e = c.fails(
        &["client", "transit", "decrypt", "db", v1, "--key", "app"],
        9,
    );
    assert!(e.contains("too old"), "{e}");
    // A changed ciphertext: exit 7, and nothing is printed.
    let mut bytes =
        <base64ct::Base64 as base64ct::Encoding>::decode_vec(v2.strip_prefix("vault:v2:").unwrap())
            .unwrap();
    bytes[20] ^= 1;
    let changed = format!(
        "vault:v2:{}",
        <base64ct::Base64 as base64ct::Encoding>::encode_string(&bytes)
    );
    let e = c.fails(
        &[
            "client", "transit", "decrypt", "db", &changed, "--key", "app",
        ],
        7,
    );
    assert!(e.contains("Nothing was decrypted"), "{e}");
    let out = c.scratch().join("plain.out");
    c.ok(&[
        "client",
        "transit",
        "decrypt",
        "db",
        v2,
        "--key",
        "app",
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"postgres://app:hunter2@db/prod"
    );
    assert_eq!(crate::mode(&out), 0o600);
    let dk = c.json(&[
        "client", "transit", "datakey", "db", "--key", "app", "--json",
    ]);
    assert!(
        dk["plaintext"].is_string() && dk["ciphertext"].is_string(),
        "{dk}"
    );
    let listed = c.json(&["client", "transit", "list", "--key", "app", "--json"]);
    assert_eq!(listed, serde_json::json!(["db"]));

    // A signing key: the CLI signs the file, OpenSSL verifies the signature against the public
    // key the key's read shows, and a changed file does not verify (exit 1).
    let key = c.json(&[
        "client",
        "transit",
        "create",
        "release-signer",
        "--type",
        "ecdsa-p384",
        "--key",
        "app",
        "--json",
    ]);
    assert_eq!(key["type"], "ecdsa-p384", "{key}");
    let pem = key["keys"]["1"]["public_key"].as_str().unwrap();
    std::fs::write(c.scratch().join("signer.pem"), pem).unwrap();
    let file_arg = file.display().to_string();
    let sig = c.ok(&[
        "client",
        "transit",
        "sign",
        "release-signer",
        "--in",
        &file_arg,
        "--hash",
        "sha2-384",
        "--key",
        "app",
    ]);
    let sig = sig.trim();
    assert!(sig.starts_with("vault:v1:"), "{sig}");
    let der = <base64ct::Base64 as base64ct::Encoding>::decode_vec(
        sig.strip_prefix("vault:v1:").unwrap(),
    )
    .unwrap();
    std::fs::write(c.scratch().join("sig.der"), der).unwrap();
    let verified = crate::openssl_ok(
        &c.scratch(),
        &[
            "dgst",
            "-sha384",
            "-verify",
            "signer.pem",
            "-signature",
            "sig.der",
            &file_arg,
        ],
    );
    assert!(String::from_utf8_lossy(&verified).contains("Verified OK"));
    let valid = c.ok(&[
        "client",
        "transit",
        "verify",
        "release-signer",
        sig,
        "--in",
        &file_arg,
        "--hash",
        "sha2-384",
        "--key",
        "app",
    ]);
    assert_eq!(valid.trim(), "valid");
    let other = c.scratch().join("other.txt");
    crate::write_private(&other, b"postgres://app:hunter3@db/prod");
    c.fails(
        &[
            "client",
            "transit",
            "verify",
            "release-signer",
            sig,
            "--in",
            &other.display().to_string(),
            "--hash",
            "sha2-384",
            "--key",
            "app",
        ],
        1,
    );
    // An encryption key does not sign, a signing key does not encrypt: exit 9.
    c.fails(
        &[
            "client", "transit", "sign", "db", "--in", &file_arg, "--key", "app",
        ],
        9,
    );
    c.fails(
        &[
            "client",
            "transit",
            "encrypt",
            "release-signer",
            "--in",
            &file_arg,
            "--key",
            "app",
        ],
        9,
    );
}

/// Secrets at tier 2 behind a master key on a SoftHSM2 token: a write asking for tier 4
/// accepts 2 and says so; a client whose key is on another SoftHSM2 token is refused a tier-2
/// release until the admin vouches for the key, then gets it with a receipt that checks; a
/// software-key client stays at tier 1.
#[test]
fn secrets_are_released_by_tier_to_a_software_and_a_token_client() {
    use keyhaven_testkit::devices::SoftHsm;
    let hsm = SoftHsm::new();
    hsm.init_token("broker", "1234");
    hsm.init_token("device", "5678");
    let s = Home::with_encrypted()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("BROKER_PIN", "1234");
    s.generate("p256", "admin", &[]);
    s.ok(&["serve", "init", "--admin", "admin"]);
    let module = hsm.module().display().to_string();
    s.ok(&[
        "backend",
        "add",
        "pkcs11",
        "hsm",
        "--module",
        &module,
        "--token",
        "broker",
        "--pin-env",
        "BROKER_PIN",
    ]);
    s.ok(&["serve", "init-broker", "--backend", "hsm"]);
    let served = Served::start(&s);
    // A software key: tier 1.
    let soft = Home::with_encrypted();
    soft.generate("ed25519", "app", &[]);
    served.register(&soft, "app");
    let file = soft.scratch().join("v");
    crate::write_private(&file, b"root-password");
    let w = soft.json(&[
        "client",
        "secret",
        "put",
        "db/root",
        "--in",
        &file.display().to_string(),
        "--tier",
        "4",
        "--floor",
        "2",
        "--key",
        "app",
        "--json",
    ]);
    assert_eq!(
        (w["tier"].as_u64(), w["downgraded"].as_bool()),
        (Some(2), Some(true)),
        "{w}"
    );
    let e = soft.fails(&["client", "secret", "get", "db/root", "--key", "app"], 6);
    assert!(e.contains("tier 2") && e.contains("tier 1"), "{e}");
    // The owner's fallback: below min_tier, a short-lived capability to encrypt to its audit
    // key instead; used with --token, it encrypts and does nothing else.
    let audit = soft.ok(&[
        "client",
        "transit",
        "encrypt",
        "audit",
        "--in",
        &file.display().to_string(),
        "--key",
        "app",
    ]);
    assert!(audit.starts_with("vault:v1:"), "{audit}");
    let e = soft.fails(
        &[
            "client",
            "secret",
            "fallback",
            "db/root",
            "--right",
            "transit.decrypt:audit",
            "--key",
            "app",
        ],
        9,
    );
    assert!(e.contains("discloses no secret"), "{e}");
    soft.ok(&[
        "client",
        "secret",
        "fallback",
        "db/root",
        "--right",
        "transit.encrypt:audit",
        "--ttl",
        "120",
        "--key",
        "app",
    ]);
    let info = soft.json(&[
        "client", "secret", "info", "db/root", "--key", "app", "--json",
    ]);
    assert_eq!(info["fallback"]["ttl"], 120, "{info}");
    let out = soft.run(&[
        "client",
        "secret",
        "get",
        "db/root",
        "--accept-capability",
        "--key",
        "app",
    ]);
    assert_eq!(out.status.code(), Some(13), "a capability instead: exit 13");
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert!(token.starts_with("kht_"), "{token}");
    let via = soft.ok(&[
        "client",
        "--token",
        token,
        "transit",
        "encrypt",
        "audit",
        "--in",
        &file.display().to_string(),
        "--key",
        "app",
    ]);
    assert!(via.starts_with("vault:v1:"), "{via}");
    soft.fails(
        &[
            "client",
            "--token",
            token,
            "transit",
            "decrypt",
            "audit",
            via.trim(),
            "--key",
            "app",
        ],
        6,
    );
    soft.ok(&[
        "client", "secret", "fallback", "db/root", "--clear", "--key", "app",
    ]);
    soft.fails(
        &[
            "client",
            "secret",
            "get",
            "db/root",
            "--accept-capability",
            "--key",
            "app",
        ],
        6,
    );
    // It may lower the bar for its own secret.
    soft.ok(&[
        "client",
        "secret",
        "put",
        "db/root",
        "--in",
        &file.display().to_string(),
        "--min-tier",
        "1",
        "--key",
        "app",
    ]);
    assert_eq!(
        soft.ok(&["client", "secret", "get", "db/root", "--key", "app"]),
        "root-password"
    );

    // A key on a token: tier 1 until the admin vouches, then 2.
    let device = Home::new()
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("DEVICE_PIN", "5678")
        .env("KEYHAVEN_TOKEN_PIN", "5678");
    device.ok(&[
        "backend",
        "add",
        "pkcs11",
        "dev",
        "--module",
        &module,
        "--token",
        "device",
        "--pin-env",
        "DEVICE_PIN",
    ]);
    device.generate("p384", "device", &[]);
    served.register(&device, "device");
    let input = device.scratch().join("in");
    crate::write_private(&input, b"model-weights-key");
    device.ok(&[
        "client",
        "secret",
        "put",
        "ml/weights",
        "--in",
        &input.display().to_string(),
        "--key",
        "device",
    ]);
    let e = device.fails(
        &["client", "secret", "get", "ml/weights", "--key", "device"],
        6,
    );
    assert!(e.contains("tier 2"), "{e}");
    s.ok(&[
        "client",
        "trust",
        "--server",
        &served.url,
        "--server-fingerprint",
        &served.fingerprint,
    ]);
    let who = device.json(&["client", "whoami", "--key", "device", "--json"]);
    let key = who["key"].as_str().unwrap().to_owned();
    s.ok(&[
        "client",
        "admin",
        "vouch",
        &key,
        "--tier",
        "2",
        "--reason",
        "token enrolled by ops",
        "--key",
        "admin",
    ]);
    let receipt = device.scratch().join("receipt.jws");
    let out = device.ok(&[
        "client",
        "secret",
        "get",
        "ml/weights",
        "--key",
        "device",
        "--receipt",
        &receipt.display().to_string(),
    ]);
    assert_eq!(out, "model-weights-key");
    let claims = device.json(&[
        "client",
        "secret",
        "receipt",
        &receipt.display().to_string(),
        "--key",
        "device",
    ]);
    assert_eq!(claims["requester_tier"], 2, "{claims}");
    assert_eq!(claims["secret_tier"], 2, "{claims}");
    assert_eq!(claims["evidence"]["kind"], "vouched-key", "{claims}");
    // An edited receipt is refused.
    let text = std::fs::read_to_string(&receipt).unwrap();
    let edited = receipt.with_extension("edited");
    crate::write_private(&edited, text.replacen('.', ".e", 1));
    device.fails(
        &[
            "client",
            "secret",
            "receipt",
            &edited.display().to_string(),
            "--key",
            "device",
        ],
        7,
    );
    let listed = device.json(&["client", "secret", "list", "--key", "device", "--json"]);
    assert_eq!(listed[0]["path"], "ml/weights", "{listed}");
    let rotated = device.ok(&["client", "secret", "rotate-kek", "--key", "device"]);
    assert!(rotated.contains("1 envelopes rewrapped"), "{rotated}");
    assert_eq!(
        device.ok(&["client", "secret", "get", "ml/weights", "--key", "device"]),
        "model-weights-key"
    );
}

/// `keyhaven token`: alice mints a token for bob's key, bob narrows it offline and uses it
/// on alice's secret, carol cannot use bob's copy, and alice's revocation ends it.
#[test]
fn token_mint_attenuate_inspect_use_and_revoke() {
    let s = server_home();
    s.ok(&["serve", "init-broker"]);
    let served = Served::start(&s);
    let person = |label: &str| {
        let h = Home::with_encrypted();
        h.generate("ed25519", label, &[]);
        served.register(&h, label);
        let who = h.json(&["client", "whoami", "--key", label, "--json"]);
        (h, who["key"].as_str().unwrap().to_owned())
    };
    let (alice, _) = person("alice");
    let (bob, bob_key) = person("bob");
    let (carol, _) = person("carol");
    let file = alice.scratch().join("v");
    crate::write_private(&file, b"shared-value");
    alice.ok(&[
        "client",
        "secret",
        "put",
        "shared/db",
        "--in",
        &file.display().to_string(),
        "--key",
        "alice",
    ]);
    let token = alice.ok(&[
        "token",
        "mint",
        "--holder",
        &bob_key,
        "--right",
        "secret.release:shared/",
        "--ttl",
        "10m",
        "--key",
        "alice",
    ]);
    let token = token.trim();
    assert!(token.starts_with("kht_"), "{token}");
    let e = alice.fails(
        &[
            "token", "mint", "--holder", &bob_key, "--right", "steal", "--key", "alice",
        ],
        2,
    );
    assert!(e.contains("OPERATION:PREFIX"), "{e}");

    let narrow = bob.ok(&[
        "token",
        "attenuate",
        token,
        "--prefix",
        "shared/db",
        "--ttl",
        "1m",
    ]);
    let narrow = narrow.trim();
    let view = bob.json(&["token", "inspect", narrow, "--json"]);
    assert_eq!(view["blocks"].as_array().unwrap().len(), 2, "{view}");
    assert!(
        view["blocks"][0]
            .as_str()
            .unwrap()
            .contains("secret.release"),
        "{view}"
    );
    assert!(
        view["blocks"][1].as_str().unwrap().contains("shared/db"),
        "{view}"
    );
    let got = bob.ok(&[
        "client",
        "secret",
        "get",
        "shared/db",
        "--key",
        "bob",
        "--token",
        narrow,
    ]);
    assert_eq!(got, "shared-value");
    let e = carol.fails(
        &[
            "client",
            "secret",
            "get",
            "shared/db",
            "--key",
            "carol",
            "--token",
            narrow,
        ],
        6,
    );
    assert!(e.contains("held by key"), "{e}");
    let revoked = alice.ok(&[
        "token", "revoke", token, "--reason", "done", "--key", "alice",
    ]);
    assert!(revoked.starts_with("revoked "), "{revoked}");
    let e = bob.fails(
        &[
            "client",
            "secret",
            "get",
            "shared/db",
            "--key",
            "bob",
            "--token",
            narrow,
        ],
        6,
    );
    assert!(e.contains("revoked"), "{e}");
    let e = bob.fails(&["token", "inspect", "kht_garbage"], 9);
    assert!(e.contains("not a capability token"), "{e}");
}

/// `keyhaven policy load|list|check-release|explain-release`: an admin loads a release policy
/// for `prod/`, a policy that does not compile is refused and the loaded one stays, a client
/// asks why it is refused, and the same policy decides offline.
#[test]
fn release_policies_from_the_cli() {
    let s = server_home();
    s.ok(&["serve", "init-broker"]);
    let served = Served::start(&s);
    s.ok(&[
        "client",
        "trust",
        "--server",
        &served.url,
        "--server-fingerprint",
        &served.fingerprint,
    ]);
    let c = Home::with_encrypted();
    c.generate("ed25519", "app", &[]);
    served.register(&c, "app");
    let value = c.scratch().join("v");
    crate::write_private(&value, b"v");
    c.ok(&[
        "client",
        "secret",
        "put",
        "prod/db",
        "--in",
        &value.display().to_string(),
        "--key",
        "app",
    ]);

    let policy = s.scratch().join("prod.rego");
    std::fs::write(
        &policy,
        "package keyhaven.release\nimport rego.v1\ndefault allow := false\n\
         allow if input.requester.tier >= 2\n\
         because contains \"tier 2 requester\" if input.requester.tier >= 2\n\
         deny contains \"prod needs a hardware key\" if input.requester.tier < 2\n",
    )
    .unwrap();
    let bad = s.scratch().join("bad.rego");
    std::fs::write(&bad, "package keyhaven.release\nallow if {\n").unwrap();
    assert!(
        s.ok(&["policy", "check-release", &policy.display().to_string()])
            .contains("compiles")
    );
    let e = s.fails(&["policy", "check-release", &bad.display().to_string()], 9);
    assert!(e.contains("does not compile"), "{e}");
    let loaded = s.ok(&[
        "policy",
        "load",
        &policy.display().to_string(),
        "--prefix",
        "prod/",
        "--key",
        "admin",
    ]);
    assert!(loaded.contains("sha256"), "{loaded}");
    let e = s.fails(
        &[
            "policy",
            "load",
            &bad.display().to_string(),
            "--prefix",
            "prod/",
            "--key",
            "admin",
        ],
        9,
    );
    assert!(e.contains("does not compile"), "{e}");
    let listed = s.json(&["policy", "list", "--key", "admin", "--json"]);
    assert_eq!(listed[0]["prefix"], "prod/", "{listed}");
    assert!(
        listed[0]["rego"]
            .as_str()
            .unwrap()
            .contains("tier 2 requester"),
        "the old one stays"
    );
    let e = c.fails(&["policy", "list", "--key", "app"], 6);
    assert!(e.contains("admin"), "{e}");

    let why = c.run(&["policy", "explain-release", "prod/db", "--key", "app"]);
    assert_eq!(why.status.code(), Some(1));
    let why = String::from_utf8_lossy(&why.stdout);
    assert!(
        why.contains("denied by policy 'prod/': prod needs a hardware key"),
        "{why}"
    );
    let e = c.fails(&["client", "secret", "get", "prod/db", "--key", "app"], 6);
    assert!(e.contains("prod needs a hardware key"), "{e}");

    // The same policy, decided here on an input document.
    let input = c.scratch().join("input.json");
    std::fs::write(
        &input,
        r#"{"path": "prod/db", "requester": {"tier": 2}, "secret": {"min_tier": 1}}"#,
    )
    .unwrap();
    let here = c.ok(&[
        "policy",
        "explain-release",
        "--policy",
        &policy.display().to_string(),
        "--input",
        &input.display().to_string(),
    ]);
    assert!(
        here.contains("allowed by the tier rule and policy '' (tier 2 requester)"),
        "{here}"
    );
}

/// A reference measurement that is not a SHA-384 digest is refused before anything starts.
#[test]
fn a_malformed_snp_measurement_is_a_usage_error() {
    let h = Home::new();
    let e = h.fails(&["serve", "--tpm-ek-ca", "/nonexistent/ca.pem"], 2);
    assert!(e.contains("--tpm-ek-ca"), "{e}");
    let ca = h.scratch().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let ca = ca.display().to_string();
    let e = h.fails(&["serve", "--tpm-ek-ca", &ca], 2);
    assert!(e.contains("no PEM certificate"), "{e}");
    for bad in ["24=00", "7=abc", "x=00"] {
        let e = h.fails(&["serve", "--tpm-ek-ca", &ca, "--tpm-pcr", bad], 2);
        assert!(e.contains("--tpm-pcr") && e.contains("INDEX=HEX"), "{e}");
    }
    let e = h.fails(
        &[
            "serve",
            "--tdx-register",
            &format!("rtmr9={}", "ab".repeat(48)),
        ],
        2,
    );
    assert!(e.contains("NAME one of rtmr0"), "{e}");
    for bad in ["abc", &"ab".repeat(47), &"zz".repeat(48)] {
        let e = h.fails(&["serve", "--snp-measurement", bad], 2);
        assert!(e.contains("96 hex digits"), "{e}");
        let e = h.fails(&["serve", "--tdx-mr-td", bad], 2);
        assert!(e.contains("--tdx-mr-td") && e.contains("MRTD"), "{e}");
        let e = h.fails(&["serve", "--tdx-register", &format!("rtmr1={bad}")], 2);
        assert!(e.contains("96 hex digits"), "{e}");
    }
}

/// An admin revokes attestation evidence by measurement, TCB and advisory from the CLI, lists
/// what is revoked and asks the audit trail what was released on it; a client cannot, and a
/// value that is not one is refused with the server's reason.
#[test]
fn evidence_revocations_from_the_cli() {
    let s = server_home();
    s.ok(&["serve", "init-broker"]);
    let served = Served::start(&s);
    s.ok(&[
        "client",
        "trust",
        "--server",
        &served.url,
        "--server-fingerprint",
        &served.fingerprint,
    ]);
    let m = "c0ffee".repeat(16);
    let out = s.ok(&[
        "client",
        "admin",
        "revoke-evidence",
        "--measurement",
        &m,
        "--reason",
        "leaked image key",
        "--key",
        "admin",
    ]);
    assert!(
        out.contains(&format!("revoked measurement {m}: 0 release(s)")),
        "{out}"
    );
    s.ok(&[
        "client",
        "admin",
        "revoke-evidence",
        "--tcb",
        "sev-snp:microcode<213",
        "--reason",
        "CVE",
        "--key",
        "admin",
    ]);
    let again = s.ok(&[
        "client",
        "admin",
        "revoke-evidence",
        "--advisory",
        "intel-sa-00837",
        "--reason",
        "SA",
        "--key",
        "admin",
        "--rewrap",
    ]);
    assert!(again.contains("revoked advisory INTEL-SA-00837"), "{again}");
    let listed = s.json(&[
        "client",
        "admin",
        "evidence-revocations",
        "--key",
        "admin",
        "--json",
    ]);
    let values: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        [m.as_str(), "sev-snp:microcode<213", "INTEL-SA-00837"]
    );
    let none = s.json(&[
        "client",
        "admin",
        "affected",
        "--measurement",
        &m,
        "--key",
        "admin",
        "--json",
    ]);
    assert_eq!(none, serde_json::json!([]));
    // Not a measurement; two at once; a client's key.
    let bad = s.run(&[
        "client",
        "admin",
        "revoke-evidence",
        "--measurement",
        "xyz",
        "--reason",
        "r",
        "--key",
        "admin",
    ]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not hex"));
    s.fails(
        &[
            "client",
            "admin",
            "affected",
            "--measurement",
            &m,
            "--advisory",
            "X",
            "--key",
            "admin",
        ],
        2,
    );
    let c = Home::with_encrypted();
    c.generate("ed25519", "app", &[]);
    served.register(&c, "app");
    let e = c.fails(
        &[
            "client",
            "admin",
            "revoke-evidence",
            "--measurement",
            &m,
            "--reason",
            "r",
            "--key",
            "app",
        ],
        6,
    );
    assert!(e.contains("admin"), "{e}");
}
