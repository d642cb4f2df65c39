//! Output: lines on standard output and standard error, key descriptions, tables, and input
//! files. Every file the command line writes goes through [`keyhaven::fs`] (atomic, fsynced,
//! 0600).

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Result;
use keyhaven::{CoreError, Protection};

/// Standard output was closed by its reader (`keyhaven key list | head -1`): the command stops
/// quietly and successfully.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Whether `err` is standard output having been closed.
pub(crate) fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.is::<StdoutClosed>())
}

fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("write to standard output")
    }
}

/// `outln!(...)`: like `println!`, but returns the error instead of panicking (use `?`).
macro_rules! outln {
    () => {
        $crate::output::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::out_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// `errln!(...)`: like `eprintln!`, but never panics (a closed standard error is ignored).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::err_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

/// Writes one line on standard output.
pub(crate) fn out_line(args: fmt::Arguments<'_>) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(stdout_error)
}

/// Writes one line on standard error; errors are ignored (there is nowhere to report them).
pub(crate) fn err_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Writes bytes to standard output.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Flushes standard output (at exit).
pub(crate) fn flush_stdout() -> Result<()> {
    io::stdout().lock().flush().map_err(stdout_error)
}

/// A key as JSON.
/// Prints a value as pretty JSON: one of the shapes in [`crate::json`].
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)
}

/// Prints rows as left-aligned columns.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{}", s.trim_end())
    };
    line(header.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// The loud warning for keys kept in plain files.
pub(crate) fn warn_plain(backends: &[String]) {
    if backends.is_empty() {
        return;
    }
    errln!(
        "WARNING: keys in backend(s) {} are {}: unencrypted PEM files, the WEAKEST protection \
         keyhaven offers. Anyone who can read those files has the keys. Prefer an `encrypted` \
         backend (or hardware) for anything that matters.",
        backends.join(", "),
        Protection::SoftwarePlain
    );
}

/// Reads an input file (not a secret: messages, signatures, public keys).
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| CoreError::io(format!("read {what} {}", path.display()), e).into())
}
