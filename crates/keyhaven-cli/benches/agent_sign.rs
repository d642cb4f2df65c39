//! A whole `keyhaven sign` process signing a 1 MB file with a P-384 key, three ways in one
//! run: through a running agent, without it (the encrypted store opened: one Argon2id
//! derivation), and the baseline `openssl dgst -sha384 -sign` with a PEM key on the same file.
//! The agent's target is at most 1.5x openssl.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

const PASSPHRASE: &str = "a benchmark passphrase, long enough";

fn keyhaven(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
    c.arg("--home")
        .arg(home)
        .env_remove("KEYHAVEN_AGENT_SOCK")
        .env("KEYHAVEN_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let file = tmp.path().join("artifact.bin");
    std::fs::write(&file, vec![0xa5_u8; 1 << 20]).unwrap();
    ok(keyhaven(&home).args(["backend", "add", "encrypted", "default"]));
    ok(keyhaven(&home).args(["key", "generate", "--algorithm", "p384", "--label", "bench"]));
    let pem = tmp.path().join("openssl.pem");
    ok(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
        ])
        .arg(&pem));
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = run.join("agent.sock");
    let mut agent = keyhaven(&home)
        .args(["agent", "start", "--idle", "1h", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(agent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("KEYHAVEN_AGENT_SOCK="), "{line}");
    let sig = tmp.path().join("sig");

    let mut g = c.benchmark_group("sign_1mb_file_process");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(2));
    g.bench_function("baseline_openssl_dgst_sign", |b| {
        b.iter(|| {
            ok(Command::new("openssl")
                .args(["dgst", "-sha384", "-sign"])
                .arg(&pem)
                .arg("-out")
                .arg(&sig)
                .arg(&file))
        })
    });
    g.bench_function("keyhaven_sign_through_agent", |b| {
        b.iter(|| {
            ok(keyhaven(&home)
                .env("KEYHAVEN_AGENT_SOCK", &socket)
                .args(["sign", "--key", "bench", "--out"])
                .arg(&sig)
                .arg("--message-file")
                .arg(&file))
        })
    });
    g.bench_function("keyhaven_sign_without_agent", |b| {
        b.iter(|| {
            ok(keyhaven(&home)
                .args(["sign", "--key", "bench", "--out"])
                .arg(&sig)
                .arg("--message-file")
                .arg(&file))
        })
    });
    g.finish();
    let _ = agent.kill();
    let _ = agent.wait();
}

criterion_group!(benches, bench);
criterion_main!(benches);
