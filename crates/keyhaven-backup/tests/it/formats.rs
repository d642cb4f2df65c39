//! Round trips, inspection without the secret, wrong secrets, newer versions, moved records.

use keyhaven_backup::{
    BackupError, BackupProtection, BackupSecret, Custodian, Format, KdfParams, convert, inspect,
    open, verify, write, write_shamir,
};
use keyhaven_core::ErrorKind;
use keyhaven_core::{Algorithm, KeyStore};
use keyhaven_store_memory::MemoryStore;
use proptest::prelude::*;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::{FORMATS, backup, entries_of, pass, secret, store_with_keys};

#[test]
fn round_trip_keeps_every_field_in_both_formats() {
    let (store, keys) = store_with_keys();
    let mut entries = entries_of(&store);
    entries[0].metadata.insert("version".into(), "3".into());
    entries[0]
        .metadata
        .insert("state".into(), "active ünïcode".into());
    for format in FORMATS {
        let file = backup(&entries, format);
        assert_eq!(Format::detect(&file), Some(format));
        let back = open(&file, &secret()).unwrap();
        assert_eq!(back.len(), keys.len());
        for (a, b) in entries.iter().zip(&back) {
            assert_eq!(a.id, b.id);
            assert_eq!(a.label, b.label);
            assert_eq!(a.algorithm, b.algorithm);
            assert_eq!(a.protection, b.protection);
            assert_eq!(a.public_key, b.public_key);
            assert_eq!(a.created_at, b.created_at);
            assert_eq!(a.backend, b.backend);
            assert_eq!(a.metadata, b.metadata);
            assert_eq!(a.private, b.private);
            assert!(!b.hardware);
        }
    }
}

#[test]
fn header_is_readable_without_the_secret() {
    let (store, keys) = store_with_keys();
    let file = backup(&entries_of(&store), Format::Text);
    let h = inspect(&file).unwrap();
    assert_eq!(h.format, 1);
    assert_eq!(h.key_count, keys.len());
    assert_eq!(h.backup_id.len(), 32);
    for (k, info) in h.keys.iter().zip(&keys) {
        assert_eq!(k.id, info.id);
        assert_eq!(k.label, info.label);
        assert_eq!(k.fingerprint, info.fingerprint().to_hex());
        assert!(!k.hardware);
    }
    match &h.protection {
        BackupProtection::Passphrase { kdf, params, .. } => {
            assert_eq!(kdf, "argon2id-v19");
            assert_eq!(*params, KdfParams::insecure_for_tests());
        }
        other => panic!("{other:?}"),
    }
    let fp = &h.fingerprint;
    assert_eq!(fp.len(), 14, "{fp}");
    assert_eq!(&fp[4..5], "-");
    // The text header is a plain JSON line a human can read.
    let text = String::from_utf8(file).unwrap();
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .contains(",\"label\":\"p384 key\",")
    );
    assert!(!text.contains("PRIVATE"));
}

#[test]
fn wrong_passphrase_and_wrong_secret_kind_are_clear() {
    let (store, _) = store_with_keys();
    for format in FORMATS {
        let file = backup(&entries_of(&store), format);
        let err = open(&file, &BackupSecret::Passphrase(SecretString::from("nope"))).unwrap_err();
        assert!(matches!(err, BackupError::BadPassphrase), "{err}");
        assert!(matches!(
            keyhaven_core::Error::from(err),
            e if e.is(ErrorKind::BadPassphrase)));
        let err = open(
            &file,
            &BackupSecret::MasterKey(keyhaven_core::SecretBytes::new(vec![1; 32])),
        )
        .unwrap_err();
        assert!(matches!(err, BackupError::WrongSecretKind(_)), "{err}");
    }
    let (file, _) = write_shamir(
        &entries_of(&store),
        2,
        &["a", "b"].map(Custodian::named),
        Format::Text,
    )
    .unwrap();
    let err = open(&file, &secret()).unwrap_err();
    assert!(err.to_string().contains("Shamir shares (2 of 2)"), "{err}");
}

#[test]
fn empty_passphrase_is_refused() {
    let (store, _) = store_with_keys();
    let err = write(
        &entries_of(&store),
        &SecretString::from(""),
        KdfParams::insecure_for_tests(),
        Format::Text,
    )
    .unwrap_err();
    assert!(matches!(err, BackupError::InvalidInput(_)), "{err}");
}

/// Rewrites the version and recomputes the integrity digest, as a newer keyhaven would write.
fn with_version(file: &[u8], format: Format, version: u8) -> Vec<u8> {
    let mut out = match format {
        Format::Text => {
            let text = String::from_utf8(file.to_vec()).unwrap();
            let body: Vec<&str> = text.lines().collect();
            let mut s = format!("keyhaven-backup {version}\n");
            for l in &body[1..body.len() - 1] {
                s.push_str(l);
                s.push('\n');
            }
            let d = hex::encode(Sha256::digest(s.as_bytes()));
            s.push_str(&format!("sha256 {d}\n"));
            return s.into_bytes();
        }
        Format::Binary => file[..file.len() - 32].to_vec(),
    };
    out[4] = version;
    let d = Sha256::digest(&out);
    out.extend_from_slice(&d);
    out
}

#[test]
fn newer_format_asks_for_an_upgrade_but_a_damaged_version_is_damage() {
    let (store, _) = store_with_keys();
    for format in FORMATS {
        let file = backup(&entries_of(&store), format);
        let newer = with_version(&file, format, 3);
        let err = inspect(&newer).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::NewerFormat {
                    found: 3,
                    supported: 2
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade"), "{err}");
        // The same change without a matching digest is damage, not a newer version.
        let mut flipped = file.clone();
        match format {
            Format::Text => flipped[16] = b'2',
            Format::Binary => flipped[4] = 2,
        }
        let err = inspect(&flipped).unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{err}");
    }
}

#[test]
fn convert_between_formats_without_the_secret() {
    let (store, _) = store_with_keys();
    let text = backup(&entries_of(&store), Format::Text);
    let bin = convert(&text, Format::Binary).unwrap();
    assert!(bin.len() < text.len());
    assert_eq!(open(&bin, &secret()).unwrap().len(), Algorithm::ALL.len());
    assert_eq!(convert(&bin, Format::Text).unwrap(), text);
}

#[test]
fn verify_with_and_without_the_secret() {
    let (store, _) = store_with_keys();
    let file = backup(&entries_of(&store), Format::Binary);
    let r = verify(&file, None).unwrap();
    assert!(r.integrity_ok && !r.authenticated);
    assert_eq!(r.format, Format::Binary);
    let r = verify(&file, Some(&secret())).unwrap();
    assert!(r.authenticated);
    assert_eq!(r.private_keys_checked, Algorithm::ALL.len());
    assert_eq!(r.hardware_keys, 0);
}

fn text_lines(file: &[u8]) -> Vec<String> {
    String::from_utf8(file.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn reassemble(lines: &[String]) -> Vec<u8> {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    let d = hex::encode(Sha256::digest(s.as_bytes()));
    s.push_str(&format!("sha256 {d}\n"));
    s.into_bytes()
}

#[test]
fn records_cannot_be_swapped_or_moved_between_backups() {
    let (store, _) = store_with_keys();
    let entries = entries_of(&store);
    let file = backup(&entries, Format::Text);
    let mut lines = text_lines(&file);
    lines.pop();
    // Swap records 0 and 1 and fix the digest: the digest passes, authentication does not.
    lines.swap(3, 4);
    let swapped = reassemble(&lines);
    verify(&swapped, None).unwrap();
    let err = open(&swapped, &secret()).unwrap_err();
    assert!(
        matches!(err, BackupError::RecordAuth { index: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(entries[0].id.as_str()), "{err}");

    // A record from another backup with the same passphrase and the same key list.
    let other = backup(&entries, Format::Text);
    let mut lines = text_lines(&file);
    lines.pop();
    lines[5] = text_lines(&other)[5].clone();
    let err = open(&reassemble(&lines), &secret()).unwrap_err();
    assert!(
        matches!(err, BackupError::RecordAuth { index: 2, .. }),
        "{err}"
    );
}

#[test]
fn an_edited_header_with_a_fixed_digest_fails_authentication() {
    let (store, _) = store_with_keys();
    let file = backup(&entries_of(&store), Format::Text);
    let mut lines = text_lines(&file);
    lines.pop();
    lines[1] = lines[1].replace("\"p384 key\"", "\"evil key\"");
    let edited = reassemble(&lines);
    // Without the secret the edit is invisible (the digest was recomputed) ...
    assert!(
        inspect(&edited)
            .unwrap()
            .keys
            .iter()
            .any(|k| k.label == "evil key")
    );
    // ... with it, the header tag fails.
    assert!(matches!(
        verify(&edited, Some(&secret())).unwrap_err(),
        BackupError::BadPassphrase
    ));
}

#[test]
fn hardware_keys_are_public_only() {
    let store = keyhaven_testkit::FaultyStore::new(MemoryStore::new().unwrap()).hardware_like();
    store.generate(Algorithm::EcdsaP256, "hsm key").unwrap();
    let entries = entries_of(&store);
    assert!(entries[0].hardware && entries[0].private.is_none());
    let file = backup(&entries, Format::Binary);
    assert!(inspect(&file).unwrap().keys[0].hardware);
    let back = open(&file, &secret()).unwrap();
    assert!(back[0].hardware && back[0].private.is_none());
    assert_eq!(verify(&file, Some(&secret())).unwrap().hardware_keys, 1);
}

#[test]
fn empty_backup_still_authenticates_its_header() {
    for format in FORMATS {
        let file = backup(&[], format);
        assert_eq!(inspect(&file).unwrap().key_count, 0);
        assert!(open(&file, &secret()).unwrap().is_empty());
        assert!(matches!(
            open(&file, &BackupSecret::Passphrase(SecretString::from("x"))),
            Err(BackupError::BadPassphrase)
        ));
    }
}

#[test]
fn not_a_backup() {
    assert!(matches!(
        inspect(b"hello world\n"),
        Err(BackupError::NotABackup(_))
    ));
    assert!(inspect(b"").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn labels_and_metadata_round_trip(
        label in "[a-zA-Z0-9][a-zA-Z0-9 ._é-]{0,40}[a-z]",
        meta in proptest::collection::btree_map("[a-z\"\\\\]{1,8}", "\\PC{0,20}", 0..4),
        binary in any::<bool>(),
    ) {
        let store = MemoryStore::new().unwrap();
        store.generate(Algorithm::Ed25519, &label).unwrap();
        let mut entries = entries_of(&store);
        entries[0].metadata = meta.clone();
        let format = if binary { Format::Binary } else { Format::Text };
        let file = write(&entries, &pass(), KdfParams::insecure_for_tests(), format).unwrap();
        let back = open(&file, &secret()).unwrap();
        prop_assert_eq!(&back[0].label, &label);
        prop_assert_eq!(&back[0].metadata, &meta);
        prop_assert_eq!(inspect(&file).unwrap().keys[0].label.clone(), label);
    }
}

#[test]
fn metadata_is_recorded_authenticated_and_expiry_is_enforced() {
    use keyhaven_backup::{BackupMeta, check_expiry, write_shamir_with_meta, write_with_meta};
    let (store, _) = store_with_keys();
    let entries = entries_of(&store);
    let now = keyhaven_core::unix_now();
    let meta = BackupMeta::new(
        Some("alice".into()),
        Some("before the migration".into()),
        Some(3600),
    );
    for format in FORMATS {
        let file = write_with_meta(
            &entries,
            &pass(),
            KdfParams::insecure_for_tests(),
            format,
            &meta,
        )
        .unwrap();
        let h = inspect(&file).unwrap();
        assert_eq!(h.format, 2, "metadata needs format 2");
        assert_eq!(h.creator.as_deref(), Some("alice"));
        assert_eq!(h.description.as_deref(), Some("before the migration"));
        let expires = h.expires_at.unwrap();
        assert_eq!(expires, h.created_at + 3600);
        // authenticated: the header cannot be edited (here: the expiry pushed back) unnoticed
        let text = String::from_utf8_lossy(&file).into_owned();
        if format == Format::Text {
            let later = text.replace(
                &format!("\"expires_at\":{expires}"),
                &format!("\"expires_at\":{}", expires + 999_999),
            );
            assert_ne!(later, text);
            assert!(open(later.as_bytes(), &secret()).is_err());
        }
        // expiry: refused after, allowed when asked, a clear error
        check_expiry(&h, now, false).unwrap();
        let e = check_expiry(&h, expires, false).unwrap_err();
        assert!(matches!(e, BackupError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
        assert_eq!(
            keyhaven_core::Error::from(e).kind(),
            ErrorKind::PermissionDenied
        );
        check_expiry(&h, expires, true).unwrap();
        // the metadata survives a conversion between encodings
        let other = if format == Format::Text {
            Format::Binary
        } else {
            Format::Text
        };
        assert_eq!(inspect(&convert(&file, other).unwrap()).unwrap(), h);
    }
    // a Shamir backup records it too
    let custodians = [Custodian::named("a"), Custodian::named("b")];
    let (file, _) = write_shamir_with_meta(&entries, 2, &custodians, Format::Text, &meta).unwrap();
    assert_eq!(inspect(&file).unwrap().creator.as_deref(), Some("alice"));
    // no metadata: format 1, which every keyhaven reads
    assert_eq!(inspect(&backup(&entries, Format::Text)).unwrap().format, 1);
    // bad metadata is refused before anything is written
    for bad in [
        BackupMeta::new(None, Some("line\nbreak".into()), None),
        BackupMeta::new(None, Some("x".repeat(2000)), None),
        BackupMeta::new(None, None, Some(0)),
    ] {
        let e = write_with_meta(
            &entries,
            &pass(),
            KdfParams::insecure_for_tests(),
            Format::Text,
            &bad,
        )
        .unwrap_err();
        assert!(matches!(e, BackupError::InvalidInput(_)), "{bad:?}: {e}");
    }
}

#[test]
fn an_expired_backup_is_refused_by_open_itself_and_metadata_cannot_hide_text() {
    use keyhaven_backup::{BackupMeta, open_with, write_with_meta};
    let (store, _) = store_with_keys();
    let entries = entries_of(&store);
    let meta = BackupMeta::new(None, None, Some(1));
    let file = write_with_meta(
        &entries,
        &pass(),
        KdfParams::insecure_for_tests(),
        Format::Text,
        &meta,
    )
    .unwrap();
    let expires = inspect(&file).unwrap().expires_at.unwrap();
    while keyhaven_core::unix_now() < expires {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // the library refuses it (not only the CLI), from the authenticated header
    let e = open(&file, &secret()).unwrap_err();
    assert!(matches!(e, BackupError::Expired { .. }), "{e}");
    assert_eq!(
        open_with(&file, &secret(), true).unwrap().len(),
        entries.len()
    );
    // invisible or reordering characters, and an expiry past the year 9999, are refused
    for bad in [
        BackupMeta::new(Some("al\u{202e}ice".into()), None, None),
        BackupMeta::new(None, Some("zero\u{200b}width".into()), None),
        BackupMeta::new(None, None, Some(u64::MAX)),
    ] {
        let e = write_with_meta(
            &entries,
            &pass(),
            KdfParams::insecure_for_tests(),
            Format::Text,
            &bad,
        )
        .unwrap_err();
        assert!(matches!(e, BackupError::InvalidInput(_)), "{bad:?}: {e}");
    }
}
