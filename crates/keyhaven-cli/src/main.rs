//! The `keyhaven` binary; everything is in the `keyhaven_cli` library.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    keyhaven_cli::main()
}
