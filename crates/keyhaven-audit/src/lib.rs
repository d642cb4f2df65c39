#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod error;
mod fsutil;
mod log;
mod record;
mod verify;

pub use error::AuditError;
pub use log::{AuditLog, AuditOptions, AuditSigner, Filter, export_json, log_files, search, tail};
pub use record::{Body, Event, FORMAT_VERSION, Outcome, Record, hostname};
pub use verify::{Problem, ProblemKind, VerifyReport, verify, verify_dir};
