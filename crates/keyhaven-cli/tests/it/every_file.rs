//! Bad input, mechanically: every file of a populated home (rotated, revoked and metered keys,
//! prekeys, the audit log with checkpoints, a PEM backend, the authority, the integrity
//! manifest), flipped, truncated, emptied, deleted, replaced by a symbolic link, and (as root)
//! given to another user. For each damage, the probe commands either work or fail with one line
//! naming the damaged file; none crashes; and once the file is put back, everything works
//! again: nothing was lost.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

use crate::Home;

/// The probes: what a user does with a home.
fn probes(msg: &Path) -> Vec<Vec<String>> {
    let m = msg.to_str().unwrap().to_owned();
    let sign = |key: &str| {
        vec![
            "sign".into(),
            "--key".into(),
            key.into(),
            "--message-file".into(),
            m.clone(),
        ]
    };
    vec![
        vec!["key".into(), "list".into()],
        sign("identity"),
        sign("metered"),
        sign("plain:clear"),
        vec!["audit".into(), "verify".into()],
        vec!["integrity".into(), "verify".into()],
    ]
}

/// Every regular file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let t = entry.file_type().unwrap();
            if t.is_dir() {
                stack.push(entry.path());
            } else if t.is_file() {
                out.push(entry.path().strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// The damage done to one file.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipMiddle,
    Truncate,
    Empty,
    Delete,
    Symlink,
    Chown,
}

impl Damage {
    fn apply(self, path: &Path, outside: &Path) -> bool {
        let bytes = fs::read(path).unwrap();
        let flip = |at: usize| {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            crate::write_private(path, b);
        };
        match self {
            Damage::FlipMiddle if bytes.is_empty() => return false,
            Damage::FlipMiddle => flip(bytes.len() / 2),
            Damage::Truncate if bytes.len() < 2 => return false,
            Damage::Truncate => crate::write_private(path, &bytes[..bytes.len() / 2]),
            Damage::Empty if bytes.is_empty() => return false,
            Damage::Empty => crate::write_private(path, b""),
            Damage::Delete => fs::remove_file(path).unwrap(),
            Damage::Symlink => {
                crate::write_private(outside, &bytes);
                fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink(outside, path).unwrap();
            }
            Damage::Chown => {
                let ok = Command::new("chown")
                    .arg("12345")
                    .arg(path)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
        }
        true
    }
}

/// A populated home and its probes.
fn populated() -> (Home, Vec<Vec<String>>) {
    let h = Home::with_encrypted();
    let msg = h.scratch().join("msg");
    fs::write(&msg, b"every file\n").unwrap();
    h.generate("ed25519", "identity", &["--role", "identity"]);
    h.ok(&["key", "rotate", "identity"]);
    h.generate("p256", "metered", &[]);
    h.generate("ed25519", "gone", &[]);
    h.ok(&["key", "revoke", "gone", "--reason", "test"]);
    h.ok(&["prekeys", "replenish", "--identity", "identity"]);
    h.ok(&["backend", "add", "pem", "plain"]);
    h.generate("p256", "clear", &["--backend", "plain"]);
    let probes = probes(&msg);
    for p in &probes {
        let out = h.run(p);
        assert!(
            out.status.success(),
            "{p:?} on the intact home: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    h.ok(&["audit", "checkpoint"]);
    (h, probes)
}

/// Damages every file whose path (relative to the home) `pick` selects, every way, and checks
/// the probes; returns the problems found and how many damages were tried.
fn damage_every_file(pick: impl Fn(&Path) -> bool) -> (Vec<String>, usize) {
    let (h, probes) = populated();
    let outside = h.scratch().join("outside");
    let mut damages = vec![
        Damage::FlipMiddle,
        Damage::Truncate,
        Damage::Empty,
        Damage::Delete,
        Damage::Symlink,
    ];
    if crate::is_root() {
        damages.push(Damage::Chown);
    }
    let mut failures: Vec<String> = Vec::new();
    let mut tried = 0;
    // The files of the keys the probes use, and of one key they do not (a prekey): the
    // other prekeys' files are the same kind of file many times over.
    let keep = key_files_of_interest(&h);
    for rel in files(&h.path()).into_iter().filter(|r| pick(r) && keep(r)) {
        let name = rel.to_string_lossy().into_owned();
        // Lock files hold nothing: only their presence and kind matter.
        let lock = name.ends_with(".lock");
        for damage in &damages {
            if lock && !matches!(damage, Damage::Delete | Damage::Symlink | Damage::Chown) {
                continue;
            }
            let path = h.path().join(&rel);
            let saved = fs::read(&path).unwrap();
            if !damage.apply(&path, &outside) {
                continue;
            }
            tried += 1;
            for p in &probes {
                let out = h.run(p);
                let code = out.status.code();
                let stderr = String::from_utf8_lossy(&out.stderr);
                match code {
                    Some(0) => {}
                    Some(c) if c != 70 && c != 101 => {
                        let names_it = stderr.contains(&name)
                            || String::from_utf8_lossy(&out.stdout).contains(&name);
                        if !names_it {
                            failures.push(format!(
                                "{name} {damage:?}: {p:?} exit {c} without naming the file: {}",
                                stderr.trim()
                            ));
                        }
                    }
                    _ => failures.push(format!(
                        "{name} {damage:?}: {p:?} crashed ({code:?}): {}",
                        stderr.trim()
                    )),
                }
            }
            // Put the file back as it was: everything works again, nothing was lost.
            let _ = fs::remove_file(&path);
            crate::write_private(&path, &saved);
            for p in &probes[..2] {
                let out = h.run(p);
                if !out.status.success() {
                    failures.push(format!(
                        "{name} {damage:?}: after putting the file back, {p:?} fails: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
    }
    (failures, tried)
}

/// Which files to damage: every file but the records and label claims of keys the probes do
/// not use (prekeys), of which one is kept.
fn key_files_of_interest(h: &Home) -> impl Fn(&Path) -> bool {
    let list = h.json(&["key", "list", "--json"]);
    let mut wanted: Vec<String> = Vec::new();
    let mut other = None;
    for k in list.as_array().unwrap() {
        let id = k["id"].as_str().unwrap().to_owned();
        let label = k["label"].as_str().unwrap();
        if ["identity", "identity.v2", "metered", "clear", "gone"].contains(&label) {
            wanted.push(id);
            wanted.push(hex::encode(sha2::Sha256::digest(label.as_bytes())));
        } else if other.is_none() {
            other = Some(id.clone());
            wanted.push(id);
            wanted.push(hex::encode(sha2::Sha256::digest(label.as_bytes())));
        }
    }
    move |rel: &Path| {
        let s = rel.to_string_lossy();
        let is_key_file =
            (s.contains("/keys/") || s.contains("/labels/")) && s.starts_with("backends");
        !is_key_file || wanted.iter().any(|w| s.contains(w.as_str()))
    }
}

fn check(pick: impl Fn(&Path) -> bool, at_least: usize) {
    let (failures, tried) = damage_every_file(pick);
    assert!(tried >= at_least, "only {tried} damages tried");
    assert!(
        failures.is_empty(),
        "{} problem(s) in {tried} damages:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The key stores' files (records, label claims, headers, PEM files).
#[test]
fn every_store_file_damaged_every_way_is_named_and_nothing_is_lost() {
    check(|p| p.starts_with("backends"), 40);
}

/// Everything else: the configuration, the integrity manifest, the rotation registry, usage
/// counters, prekeys, revocations, the authority, the audit log and its witness.
#[test]
fn every_state_and_audit_file_damaged_every_way_is_named_and_nothing_is_lost() {
    check(|p| !p.starts_with("backends"), 60);
}
