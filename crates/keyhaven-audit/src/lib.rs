#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod access;
mod audited;
mod context;
mod error;
mod fsutil;
mod log;
mod policy;
mod record;
mod recover;
mod verify;

pub use access::AccessControlledStore;
pub use audited::AuditedStore;
pub use context::{CallerContext, check_request_id, effective_uid};
pub use error::AuditError;
pub use log::{
    AuditLog, AuditOptions, AuditSigner, Filter, Witness, export_json, log_files, search, tail,
};
pub use policy::{Grant, KeyRef, KeyRule, Operation, Permissions, Policy};
pub use record::{Body, DamagedFile, Event, FORMAT_VERSION, Outcome, Record, hostname};
pub use recover::{Recovered, recover};
pub use verify::{
    Expectation, Problem, ProblemKind, RecordedBreak, VerifyReport, verify, verify_dir,
    verify_dir_expecting,
};
