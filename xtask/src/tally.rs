//! Running `cargo test` while echoing its output and adding up libtest's `test result:` lines, so
//! `cargo xtask test` can close with one summary line over every test binary and the doctests.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

use crate::cmd::describe;

/// Test counts summed over every `test result:` line seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Tests that passed.
    pub(crate) passed: u64,
    /// Tests that failed.
    pub(crate) failed: u64,
    /// Tests marked `#[ignore]` (not run).
    pub(crate) ignored: u64,
    /// How many test binaries (including doctest runs) reported a result.
    pub(crate) binaries: u64,
}

impl Tally {
    /// Adds another run's counts to this one.
    pub(crate) fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.binaries += other.binaries;
    }

    /// Adds one libtest summary line, e.g.
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
    /// Lines that are not such a summary are ignored.
    pub(crate) fn add_line(&mut self, line: &str) {
        if self.add_pytest_line(line) || self.add_node_line(line) {
            return;
        }
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let Some((_verdict, counts)) = rest.split_once(". ") else {
            return;
        };
        self.binaries += 1;
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(number), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                "ignored" => self.ignored += number,
                _ => {}
            }
        }
    }
}

impl Tally {
    /// Adds one of the closing lines of Node's test runner (TAP): `# tests N` (one run),
    /// `# pass N`, `# fail N`, `# skipped N`; `false` for any other line.
    fn add_node_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim_end().strip_prefix("# ") else {
            return false;
        };
        let Some((what, number)) = rest.split_once(' ') else {
            return false;
        };
        let Ok(number) = number.parse::<u64>() else {
            return false;
        };
        match what {
            "tests" => self.binaries += 1,
            "pass" => self.passed += number,
            "fail" => self.failed += number,
            "skipped" => self.ignored += number,
            _ => return false,
        }
        true
    }

    /// Adds pytest's closing line, e.g. `===== 3 failed, 20 passed, 1 skipped in 4.20s =====`
    /// (errors count as failures, skips as skipped); `false` if `line` is not one.
    fn add_pytest_line(&mut self, line: &str) -> bool {
        let line = line.trim();
        let Some(inner) = line
            .strip_prefix('=')
            .and_then(|l| l.strip_suffix('='))
            .map(|l| l.trim_matches('=').trim())
        else {
            return false;
        };
        let Some((counts, _time)) = inner.rsplit_once(" in ") else {
            return false;
        };
        let mut tally = Tally::default();
        for part in counts.split(',') {
            let mut words = part.split_whitespace();
            let (Some(number), Some(what)) = (words.next(), words.next()) else {
                return false;
            };
            let Ok(number) = number.parse::<u64>() else {
                return false;
            };
            match what {
                "passed" | "xfailed" => tally.passed += number,
                "failed" | "error" | "errors" | "xpassed" => tally.failed += number,
                "skipped" | "deselected" => tally.ignored += number,
                _ => {}
            }
        }
        tally.binaries = 1;
        self.add(&tally);
        true
    }
}

impl fmt::Display for Tally {
    /// The plain closing line: `tests: N passed, N failed, N skipped` (skipped = ignored).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Echoes and runs `command` (a `cargo test`), copying its standard output through to `out` line
/// by line while tallying the `test result:` lines. Standard error is inherited untouched.
///
/// # Errors
///
/// Fails only when the process cannot be started or its output cannot be read; a failing test run
/// is reported through the returned exit status.
pub(crate) fn run_tallied(
    command: &mut Command,
    out: &mut dyn Write,
) -> Result<(ExitStatus, Tally)> {
    let line = describe(command);
    println!("xtask: $ {line}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut tally = Tally::default();
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let read = reader
                .read_until(b'\n', &mut buffer)
                .context("reading cargo test output")?;
            if read == 0 {
                break;
            }
            // Echo the bytes as they came; a broken stdout must not stop the tests.
            let _ = out.write_all(&buffer).and_then(|()| out.flush());
            tally.add_line(&String::from_utf8_lossy(&buffer));
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    Ok((status, tally))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_libtest_summaries() {
        let mut tally = Tally::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "",
            "test result: FAILED. 10 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s\n",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test result: garbage",
            "============ 1 failed, 20 passed, 2 skipped, 1 error in 4.20s =============",
            "=== short test summary info ===",
            "# tests 7",
            "# pass 6",
            "# fail 1",
            "# skipped 0",
            "# todo 0",
            "# Subtest: a name",
        ] {
            tally.add_line(line);
        }
        assert_eq!(
            tally,
            Tally {
                passed: 39,
                failed: 5,
                ignored: 3,
                binaries: 5
            }
        );
        assert_eq!(tally.to_string(), "tests: 39 passed, 5 failed, 3 skipped");
    }

    #[test]
    fn run_tallied_counts_and_reports_status() {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "echo 'test result: ok. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out'; exit 3",
        ]);
        let mut echoed = Vec::new();
        let (status, tally) = run_tallied(&mut command, &mut echoed).unwrap();
        assert!(
            String::from_utf8(echoed)
                .unwrap()
                .starts_with("test result: ok. 4 passed")
        );
        assert_eq!(status.code(), Some(3));
        assert_eq!((tally.passed, tally.failed), (4, 1));
    }
}
