//! Runs the help and bad-usage cases of `tests/cmd/*.toml` (trycmd-style data: arguments,
//! exit status, texts expected in standard output and standard error).

use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::Home;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    args: Vec<String>,
    status: i32,
    #[serde(default)]
    stdout: Vec<String>,
    #[serde(default)]
    stderr: Vec<String>,
    /// Texts that must not appear in standard error.
    #[serde(default)]
    not_stderr: Vec<String>,
}

#[test]
fn help_and_usage_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmd");
    let mut ran = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cases: Cases = toml::from_str(&fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for case in cases.case {
            let h = Home::new();
            let out = h.run(&case.args);
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            let context = format!(
                "{} ({}): {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                case.name,
                path.display(),
                case.args
            );
            assert_eq!(out.status.code(), Some(case.status), "{context}");
            for want in &case.stdout {
                assert!(
                    stdout.contains(want.as_str()),
                    "stdout lacks {want:?}: {context}"
                );
            }
            for want in &case.stderr {
                assert!(
                    stderr.contains(want.as_str()),
                    "stderr lacks {want:?}: {context}"
                );
            }
            for unwanted in &case.not_stderr {
                assert!(
                    !stderr.contains(unwanted.as_str()),
                    "stderr has {unwanted:?}: {context}"
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} cases ran");
}
