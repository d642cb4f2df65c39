//! Shamir custodian shares: any t in any order recover, t-1 never do; typos, mixed backups,
//! duplicates and forged shares are named; shares encrypted to custodian keys.

use base64ct::{Base64, Encoding};
use keyhaven_backup::{
    BackupError, BackupSecret, Custodian, Format, MasterKey, Share, ShareCheck, combine,
    decrypt_share, inspect, open, open_with_shares, split, verify_share, write_shamir,
};
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_memory::MemoryStore;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::{entries_of, store_with_keys};

fn names(n: usize) -> Vec<Custodian> {
    (1..=n)
        .map(|i| Custodian::named(format!("custodian {i}")))
        .collect()
}

fn texts(shares: &[Share]) -> Vec<String> {
    shares.iter().map(|s| s.to_text().to_string()).collect()
}

#[test]
fn shamir_backup_opens_with_t_shares_and_header_says_shamir() {
    let (store, keys) = store_with_keys();
    let (file, shares) = write_shamir(&entries_of(&store), 3, &names(5), Format::Text).unwrap();
    let h = inspect(&file).unwrap();
    assert!(matches!(
        h.protection,
        keyhaven_backup::BackupProtection::Shamir {
            threshold: 3,
            shares: 5,
            ..
        }
    ));
    for s in &shares {
        assert_eq!(s.fingerprint(), h.fingerprint);
        assert_eq!(s.backup_id(), h.backup_id);
        assert_eq!(verify_share(s).unwrap(), ShareCheck::Genuine);
    }
    let parsed: Vec<Share> = texts(&shares)
        .iter()
        .map(|t| Share::parse(t).unwrap())
        .collect();
    let entries = open_with_shares(
        &file,
        &[parsed[4].clone(), parsed[0].clone(), parsed[2].clone()],
    )
    .unwrap();
    assert_eq!(entries.len(), keys.len());
    let err = open_with_shares(&file, &parsed[..2]).unwrap_err();
    assert!(err.to_string().contains("needs 3"), "{err}");
}

#[test]
fn share_text_round_trips_and_is_self_describing() {
    let master = MasterKey::generate().unwrap();
    let shares = split(&master, &[7; 16], 2, &names(3)).unwrap();
    let t = shares[1].to_text();
    assert!(t.starts_with("-----BEGIN KEYHAVEN SHARE-----\n"));
    assert!(t.contains("backup: 07070707070707070707070707070707  ["));
    assert!(t.contains("share: 2 of 3, threshold 2  ["));
    assert!(t.contains("custodian: custodian 2  ["));
    assert!(t.contains("encrypted-to: none  ["));
    let p = Share::parse(&t).unwrap();
    assert_eq!(p.index(), 2);
    assert_eq!(p.total(), 3);
    assert_eq!(p.threshold(), 2);
    assert_eq!(p.custodian(), "custodian 2");
    assert_eq!(p.created_at(), shares[1].created_at());
    assert_eq!(p.to_text(), t);
    assert!(!format!("{p:?}").contains("data"));
    // Surrounding text (an e-mail, say) is ignored.
    let wrapped = format!("Hi Bob, your share:\n\n{}\nKeep it safe.\n", *t);
    assert_eq!(Share::parse(&wrapped).unwrap().to_text(), t);
}

#[test]
fn fewer_than_t_duplicates_and_mixed_backups_are_refused_by_name() {
    let m1 = MasterKey::generate().unwrap();
    let a = split(&m1, &[1; 16], 3, &names(5)).unwrap();
    let m2 = MasterKey::generate().unwrap();
    let b = split(&m2, &[2; 16], 3, &names(5)).unwrap();
    let err = combine(&a[..2]).unwrap_err();
    assert!(matches!(err, BackupError::Combine(_)), "{err}");
    assert!(
        err.to_string()
            .contains("2 share(s) given, but this backup needs 3"),
        "{err}"
    );
    let err = combine(&[a[0].clone(), a[1].clone(), b[2].clone()]).unwrap_err();
    assert!(
        err.to_string()
            .contains("share 3 of 5 (custodian 3) belongs to backup 0202"),
        "{err}"
    );
    let err = combine(&[a[0].clone(), a[1].clone(), a[1].clone()]).unwrap_err();
    assert!(
        err.to_string()
            .contains("share 2 of 5 (custodian 2) is given twice"),
        "{err}"
    );
    assert!(matches!(combine(&[]), Err(BackupError::Combine(_))));
    // Same backup id but a different sharing (a re-split): refused, not silently combined.
    let c = split(&m1, &[1; 16], 3, &names(5)).unwrap();
    assert!(combine(&[a[0].clone(), a[1].clone(), c[2].clone()]).is_err());
}

#[test]
fn threshold_bounds() {
    let m = MasterKey::generate().unwrap();
    assert!(split(&m, &[0; 16], 1, &names(3)).is_err());
    assert!(split(&m, &[0; 16], 4, &names(3)).is_err());
    assert!(split(&m, &[0; 16], 2, &names(256)).is_err());
    assert!(split(&m, &[0; 16], 2, &[Custodian::named(" bad")]).is_err());
    // The largest sharing: 255 custodians (a Feldman check costs `t` point multiplications, so
    // t = 255 is checked on one share only to keep the suite fast).
    let all = split(&m, &[0; 16], 255, &names(255)).unwrap();
    assert_eq!(all.len(), 255);
    assert_eq!(all[254].index(), 255);
    verify_share(&all[254]).unwrap();
    let some = split(&m, &[0; 16], 3, &names(255)).unwrap();
    let last: Vec<Share> = some[252..].iter().rev().cloned().collect();
    assert_eq!(combine(&last).unwrap().secret(), m.secret());
}

#[test]
fn every_single_character_typo_in_a_share_is_caught_and_the_line_named() {
    let m = MasterKey::generate().unwrap();
    let shares = split(&m, &[3; 16], 2, &names(3)).unwrap();
    let text = shares[0].to_text().to_string();
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x20] {
            let mut bad = bytes.to_vec();
            bad[i] ^= mask;
            let Ok(bad) = String::from_utf8(bad) else {
                continue;
            };
            match Share::parse(&bad) {
                Err(_) => {}
                Ok(s) => panic!("typo at byte {i} ({mask:#x}) accepted: {s:?}"),
            }
        }
    }
    // A typo in the custodian line names the share and the line.
    let bad = text.replace("custodian: custodian 1", "custodian: custodiam 1");
    let err = Share::parse(&bad).unwrap_err().to_string();
    assert!(err.contains("share 1 of 3"), "{err}");
    assert!(err.contains("line 4 ('custodian')"), "{err}");
    // Lines swapped: each line's own check is bound to its position.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(7, 8);
    let err = Share::parse(&lines.join("\n")).unwrap_err().to_string();
    assert!(err.contains("line 8"), "{err}");
}

fn line_check(n: usize, content: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"keyhaven-share/v1 line\0");
    h.update(u32::try_from(n).unwrap().to_be_bytes());
    h.update(content.as_bytes());
    hex::encode(&h.finalize()[..2])
}

/// Rebuilds a share text around new data bytes with valid checks: a forgery, not a typo.
fn forge(text: &str, mutate: impl Fn(&mut Vec<u8>)) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let content: Vec<&str> = lines[1..lines.len() - 2]
        .iter()
        .map(|l| l.rsplit_once("  [").unwrap().0)
        .collect();
    let head: Vec<&str> = content
        .iter()
        .copied()
        .filter(|l| !l.starts_with("data: "))
        .collect();
    let b64: String = content
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let mut data = Base64::decode_vec(&b64).unwrap();
    mutate(&mut data);
    let b64 = Base64::encode_string(&data);
    let mut body: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    for c in b64.as_bytes().chunks(64) {
        body.push(format!("data: {}", std::str::from_utf8(c).unwrap()));
    }
    let checked: Vec<String> = body
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{l}  [{}]", line_check(i + 1, l)))
        .collect();
    let mut h = Sha256::new();
    h.update(b"keyhaven-share/v1 checksum\0");
    for l in &checked {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    let sum = hex::encode(&h.finalize()[..8]);
    format!(
        "-----BEGIN KEYHAVEN SHARE-----\n{}\nchecksum: {sum}\n-----END KEYHAVEN SHARE-----\n",
        checked.join("\n")
    )
}

#[test]
fn a_forged_share_fails_its_feldman_check() {
    let m = MasterKey::generate().unwrap();
    let shares = split(&m, &[4; 16], 2, &names(3)).unwrap();
    let text = shares[1].to_text().to_string();
    // Sanity: forging without changes gives back the same share.
    assert_eq!(forge(&text, |_| {}), text);
    let forged = Share::parse(&forge(&text, |d| d[20] ^= 1)).unwrap();
    let err = verify_share(&forged).unwrap_err().to_string();
    assert!(err.contains("share 2 of 3 (custodian 2)"), "{err}");
    assert!(err.contains("Feldman"), "{err}");
    let err = combine(&[shares[0].clone(), forged])
        .unwrap_err()
        .to_string();
    assert!(err.contains("share 2 of 3"), "{err}");
    // Altered commitments no longer match the printed fingerprint.
    let err = Share::parse(&forge(&text, |d| {
        let n = d.len();
        d[n - 1] ^= 1;
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("share 2 of 3"), "{err}");
}

#[test]
fn shares_encrypted_to_custodian_keys() {
    let custodians = MemoryStore::new().unwrap();
    let alice = custodians.generate(Algorithm::X25519, "alice").unwrap();
    let bob = custodians.generate(Algorithm::X25519, "bob").unwrap();
    let (store, _) = store_with_keys();
    let (file, shares) = write_shamir(
        &entries_of(&store),
        2,
        &[
            Custodian::with_key("alice", alice.public_key.clone()),
            Custodian::with_key("bob", bob.public_key.clone()),
            Custodian::named("carol"),
        ],
        Format::Binary,
    )
    .unwrap();
    let text = shares[0].to_text().to_string();
    assert!(text.contains(&format!("encrypted-to: {}", alice.fingerprint().to_hex())));
    let a = Share::parse(&text).unwrap();
    assert!(a.is_encrypted());
    assert_eq!(verify_share(&a).unwrap(), ShareCheck::EncryptedStructureOk);
    let err = combine(&[a.clone(), shares[2].clone()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("decrypt it first"), "{err}");
    // The wrong key is named; the right one decrypts and the Feldman check passes.
    let err = decrypt_share(&a, &custodians, &bob.id)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is encrypted to key"), "{err}");
    let a = decrypt_share(&a, &custodians, &alice.id).unwrap();
    assert_eq!(verify_share(&a).unwrap(), ShareCheck::Genuine);
    let b = decrypt_share(
        &Share::parse(&shares[1].to_text()).unwrap(),
        &custodians,
        &bob.id,
    )
    .unwrap();
    let master = combine(&[b, a]).unwrap();
    assert_eq!(
        open(&file, &BackupSecret::MasterKey(master.into_secret()))
            .unwrap()
            .len(),
        Algorithm::ALL.len()
    );
    // Only X25519 custodian keys.
    let signer = custodians.generate(Algorithm::Ed25519, "signer").unwrap();
    assert!(
        write_shamir(
            &entries_of(&store),
            2,
            &[
                Custodian::with_key("x", signer.public_key),
                Custodian::named("y")
            ],
            Format::Text
        )
        .is_err()
    );
}

#[test]
fn a_wrong_master_key_is_named() {
    let (store, _) = store_with_keys();
    let (file, _) = write_shamir(&entries_of(&store), 2, &names(2), Format::Text).unwrap();
    let other = MasterKey::generate().unwrap();
    let err = open(&file, &BackupSecret::MasterKey(other.into_secret())).unwrap_err();
    assert!(matches!(err, BackupError::WrongMasterKey), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_t_shares_in_any_order_recover_and_t_minus_1_do_not(
        (t, n, order) in (2u8..=6).prop_flat_map(|t| (Just(t), t..=7u8)).prop_flat_map(|(t, n)| {
            (Just(t), Just(n), Just((0..usize::from(n)).collect::<Vec<_>>()).prop_shuffle())
        })
    ) {
        let m = MasterKey::generate().unwrap();
        let shares = split(&m, &[9; 16], t, &names(usize::from(n))).unwrap();
        let pick = |k: usize| -> Vec<Share> {
            order[..k].iter().map(|&i| Share::parse(&shares[i].to_text()).unwrap()).collect()
        };
        let got = combine(&pick(usize::from(t))).unwrap();
        prop_assert_eq!(got.secret(), m.secret());
        let all = combine(&pick(usize::from(n))).unwrap();
        prop_assert_eq!(all.secret(), m.secret());
        prop_assert!(combine(&pick(usize::from(t) - 1)).is_err());
    }
}
