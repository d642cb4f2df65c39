#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod detect;
mod duration;
mod error;
mod report;
mod respond;
mod revocation;
pub mod webhook;

pub use detect::{Finding, KeyStates, Thresholds, scan};
pub use error::{CompromiseError, Result};
pub use report::{
    ActionTaken, CompromiseReport, CompromiseType, DetectionMethod, Evidence, ReportStore,
    Severity, Status,
};
pub use respond::{
    BeforeNotify, NotifyConfig, NotifyContext, Procedure, Responder, ResponseConfig,
    ResponseOutcome, Rotator, Step, notify,
};
pub use revocation::{
    Authority, Issuer, LIST_FORMAT, MAX_LIST_BYTES, REVOCATION_VERSION, Revocation,
    RevocationCheckedStore, RevocationList, Revocations, VerifiedRevocations,
};
pub use webhook::{Delivery, WebhookSigner};
