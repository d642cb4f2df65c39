//! NV counters on a real swtpm: monotonic, read by `tpm2-tools` as the same value, refused when
//! removed or replaced by someone who does not know the authorization value.

use keyhaven_core::ErrorKind;

use crate::swtpm::TestTpm;

const AUTH: [u8; 32] = [7u8; 32];

fn hex_auth(auth: &[u8; 32]) -> String {
    format!("hex:{}", hex::encode(auth))
}

#[test]
fn a_counter_only_grows_and_tpm2_tools_reads_the_same_value() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let counter = store.define_counter(&AUTH).unwrap();
    let first = counter.read().unwrap();
    assert_eq!(counter.increment().unwrap(), first + 1);
    assert_eq!(counter.increment().unwrap(), first + 2);
    // Another handle on the same index (another process, later) reads the same value.
    let again = store.counter(counter.index(), &AUTH);
    assert_eq!(again.read().unwrap(), first + 2);

    let index = format!("{:#010x}", counter.index());
    let public = tpm.swtpm.run("tpm2_nvreadpublic", &[&index]);
    for attribute in ["nt=0x1", "authwrite", "authread", "no_da"] {
        assert!(public.contains(attribute), "{attribute}: {public}");
    }
    let raw = tpm
        .swtpm
        .tool("tpm2_nvread")
        .args([index.as_str(), "-P", &hex_auth(&AUTH), "-s", "8"])
        .output()
        .unwrap();
    assert!(raw.status.success(), "{raw:?}");
    assert_eq!(raw.stdout, (first + 2).to_be_bytes());
}

#[test]
fn a_removed_or_replaced_counter_or_a_wrong_authorization_is_refused() {
    let tpm = TestTpm::new();
    let store = tpm.store();
    let counter = store.define_counter(&AUTH).unwrap();
    let index = format!("{:#010x}", counter.index());

    // Without the authorization value nobody reads or increments it.
    let wrong = store.counter(counter.index(), &[8u8; 32]);
    let e = wrong.read().unwrap_err();
    assert!(matches!(&e, e if e.is(ErrorKind::Corrupt)), "{e}");
    assert!(e.to_string().contains("replaced"), "{e}");
    assert!(wrong.increment().is_err());

    // The owner removes it and defines one of their own at the same index, set to a high
    // value: it does not take the home's authorization.
    tpm.swtpm.run("tpm2_nvundefine", &[&index, "-C", "o"]);
    let e = counter.read().unwrap_err();
    assert!(e.to_string().contains("no counter"), "{e}");
    tpm.swtpm.run(
        "tpm2_nvdefine",
        &[
            &index,
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "nt=counter|authread|authwrite|no_da",
            "-p",
            &hex_auth(&[9u8; 32]),
        ],
    );
    tpm.swtpm
        .run("tpm2_nvincrement", &[&index, "-P", &hex_auth(&[9u8; 32])]);
    let e = counter.read().unwrap_err();
    assert!(e.to_string().contains("replaced"), "{e}");

    // Undefining what is not there is not an error; ours is gone for good.
    tpm.swtpm.run("tpm2_nvundefine", &[&index, "-C", "o"]);
    counter.undefine().unwrap();
    assert!(counter.read().is_err());
}

#[test]
fn a_counter_of_another_tpm_is_not_found_there() {
    let a = TestTpm::new();
    let b = TestTpm::new();
    let store_a = a.store();
    let counter = store_a.define_counter(&AUTH).unwrap();
    let store_b = b.store();
    let elsewhere = store_b.counter(counter.index(), &AUTH);
    let e = elsewhere.read().unwrap_err();
    assert!(e.to_string().contains("no counter"), "{e}");
}

/// A man in the middle between the store and swtpm (fault injection beside the real TPM):
/// forwards both channels, and while `lie` is set changes the value in every answer to
/// `TPM2_NV_Read` of an 8-byte counter (response tag `TPM_ST_SESSIONS`, success, 10 bytes of
/// parameters: a `TPM2B` of 8).
struct Liar {
    port: u16,
    lie: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Liar {
    fn start(target_port: u16) -> Liar {
        use std::net::TcpListener;
        let lie = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two adjacent ports, as the swtpm TCTI wants (data, then control).
        let (data, control) = loop {
            let data = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = data.local_addr().unwrap().port();
            if let Ok(control) = TcpListener::bind(("127.0.0.1", port + 1)) {
                break (data, control);
            }
        };
        let port = data.local_addr().unwrap().port();
        for (listener, to, rewrite) in
            [(data, target_port, true), (control, target_port + 1, false)]
        {
            let lie = lie.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { return };
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                        return;
                    };
                    let lie = lie.clone();
                    std::thread::spawn(move || relay(client, server, rewrite, &lie));
                }
            });
        }
        Liar { port, lie }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

fn relay(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    rewrite: bool,
    lie: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(std::net::Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    let mut buf = [0u8; 8192];
    while let Ok(n) = s_in.read(&mut buf) {
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        if rewrite && lie.load(std::sync::atomic::Ordering::SeqCst) {
            let pattern = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x08];
            if let Some(at) = chunk.windows(pattern.len()).position(|w| w == pattern)
                && chunk.len() >= at + pattern.len() + 8
                && at >= 6
                && chunk[at - 6..at - 4] == [0x80, 0x02]
            {
                // A bigger counter than the TPM's: what a rolled-back home would need.
                chunk[at + pattern.len()] ^= 0x40;
            }
        }
        if c_out.write_all(chunk).is_err() {
            break;
        }
    }
}

#[test]
fn an_answer_that_did_not_come_from_the_tpm_is_refused() {
    let tpm = TestTpm::new();
    let liar = Liar::start(tpm.swtpm.port());
    let config = keyhaven_hsm_tpm::TpmConfig::new(&liar.tcti(), tpm.dir()).unwrap();
    let store = keyhaven_hsm_tpm::TpmStore::open(config).unwrap();
    let counter = store.define_counter(&AUTH).unwrap();
    let honest = counter.read().unwrap();
    liar.lie.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = counter.read().unwrap_err();
    assert!(matches!(&e, e if e.is(ErrorKind::Corrupt)), "{e}");
    assert!(e.to_string().contains("not authenticated"), "{e}");
    liar.lie.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(counter.read().unwrap(), honest);
}
