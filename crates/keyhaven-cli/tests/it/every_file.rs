//! Bad input, mechanically: every file of a populated home (rotated, revoked and metered keys,
//! prekeys, the audit log with checkpoints, a PEM backend, the authority, the integrity
//! manifest), flipped, truncated, emptied, deleted, replaced by a symbolic link, and (as root)
//! given to another user. For each damage, the probe commands either work or fail with one line
//! naming the damaged file; none crashes; and once the file is put back, everything works
//! again: nothing was lost.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn copy_tree(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).unwrap();
    }
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The damage done to one file.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipFirst,
    FlipMiddle,
    FlipLast,
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
            Damage::FlipFirst | Damage::FlipMiddle | Damage::FlipLast if bytes.is_empty() => {
                return false;
            }
            Damage::FlipFirst => flip(0),
            Damage::FlipMiddle => flip(bytes.len() / 2),
            Damage::FlipLast => flip(bytes.len() - 1),
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

#[test]
fn every_file_of_a_home_damaged_every_way_is_named_and_nothing_is_lost() {
    let h = Home::with_encrypted();
    let scratch = h.scratch();
    let msg = scratch.join("msg");
    fs::write(&msg, b"every file\n").unwrap();
    // A populated home.
    h.generate("ed25519", "identity", &["--role", "identity"]);
    h.ok(&["key", "rotate", "identity"]);
    h.generate("p256", "metered", &[]);
    h.generate("ed25519", "gone", &[]);
    h.ok(&["key", "revoke", "gone", "--reason", "test"]);
    h.ok(&["prekeys", "replenish", "--identity", "identity"]);
    h.ok(&["backend", "add", "plain", "--type", "pem"]);
    h.generate("p256", "clear", &["--backend", "plain"]);
    let probes = probes(&msg);
    let run = |args: &[String]| h.run(args);
    for p in &probes {
        let out = run(p);
        assert!(
            out.status.success(),
            "{p:?} on the intact home: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    h.ok(&["audit", "checkpoint"]);
    let pristine = scratch.join("pristine");
    copy_tree(&h.path(), &pristine);
    let outside = scratch.join("outside");
    let mut damages = vec![
        Damage::FlipFirst,
        Damage::FlipMiddle,
        Damage::FlipLast,
        Damage::Truncate,
        Damage::Empty,
        Damage::Delete,
        Damage::Symlink,
    ];
    if is_root() {
        damages.push(Damage::Chown);
    }
    let mut failures: Vec<String> = Vec::new();
    let mut tried = 0;
    let mut noticed: BTreeMap<String, usize> = BTreeMap::new();
    for rel in files(&pristine) {
        let name = rel.to_string_lossy().into_owned();
        for damage in &damages {
            copy_tree(&pristine, &h.path());
            let path = h.path().join(&rel);
            if !damage.apply(&path, &outside) {
                continue;
            }
            tried += 1;
            for p in &probes {
                let out = run(p);
                let code = out.status.code();
                let stderr = String::from_utf8_lossy(&out.stderr);
                match code {
                    Some(0) => {}
                    // verify says invalid, audit/integrity verify report the damage
                    Some(c) if c != 70 && c != 101 => {
                        *noticed.entry(name.clone()).or_default() += 1;
                        let names_it = stderr.contains(&name)
                            || stderr.contains(path.to_str().unwrap())
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
            // Put the file back: everything works again.
            let _ = fs::remove_file(&path);
            fs::copy(pristine.join(&rel), &path).unwrap();
            for p in &probes[..4] {
                let out = run(p);
                if !out.status.success() {
                    failures.push(format!(
                        "{name} {damage:?}: after putting the file back, {p:?} fails: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
    }
    assert!(tried > 100, "only {tried} damages tried");
    assert!(
        failures.is_empty(),
        "{} problem(s) in {tried} damages:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{tried} damages over {} files, noticed: {noticed:?}",
        noticed.len()
    );
}
