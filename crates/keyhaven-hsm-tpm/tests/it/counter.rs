//! NV counters on a real swtpm: monotonic, read by `tpm2-tools` as the same value, refused when
//! removed or replaced by someone who does not know the authorization value.

use keyhaven_core::Error;

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
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
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
