//! Opening one backend never waits for another: a backend whose passphrase prompt is still
//! open does not hold up a key of another backend.

use std::sync::mpsc;
use std::time::Duration;

use keyhaven::secrecy::SecretString;
use keyhaven::{Algorithm, BackendConfig, BackendKind, KeyManager, PassphraseRequest};

#[test]
fn a_backend_waiting_for_its_passphrase_does_not_block_another() {
    let home = crate::private_tempdir();
    let outside = crate::private_tempdir();
    // Two encrypted stores outside the home (so neither anchors it: each is opened on its own).
    let setup = KeyManager::open(home.path(), keyhaven::FixedPassphrase::new("pw")).unwrap();
    for name in ["slow", "quick"] {
        setup
            .add_backend(
                name,
                BackendConfig::new(BackendKind::Encrypted, Some(outside.path().join(name))),
            )
            .unwrap();
        setup
            .generate(Some(name), Algorithm::Ed25519, &format!("{name}-key"))
            .unwrap();
    }
    drop(setup);

    let (opened_quick, quick_done) = mpsc::channel::<()>();
    let quick_done = std::sync::Mutex::new(quick_done);
    let provider = move |r: &PassphraseRequest| {
        if r.backend == "slow" {
            // The user is still typing: answer only once the other backend has been used, or
            // give up after a while (which is what a blocked manager would cause).
            let waited = quick_done
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
            assert!(waited.is_ok(), "the other backend was blocked meanwhile");
        }
        Ok(SecretString::from("pw"))
    };
    let m = KeyManager::open(home.path(), provider).unwrap();
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let k = m.resolve("slow:slow-key").unwrap();
            m.sign(&k, b"m").unwrap();
        });
        // Give the slow open a head start, so that it holds whatever it holds.
        std::thread::sleep(Duration::from_millis(200));
        let k = m.resolve("quick:quick-key").unwrap();
        m.sign(&k, b"m").unwrap();
        opened_quick.send(()).unwrap();
        slow.join().unwrap();
    });
}
