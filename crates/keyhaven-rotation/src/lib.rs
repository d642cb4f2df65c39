#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod actions;
pub mod chain;
mod clock;
mod continuity;
mod engine;
mod error;
mod meter;
mod policy;
mod prekeys;
mod registry;
mod state;
mod x3dh;

pub use clock::{Clock, ManualClock, SystemClock};
pub use continuity::{ContinuityProof, verify_chain, verify_continuity};
pub use engine::{Due, DueAction, DueOutcome, DueReason, RotationEngine, RotationOutcome};
pub use error::{Result, RotationError};
pub use meter::{DEFAULT_BATCH, DEFAULT_GROWTH, MeteredStore, UsageMeter};
pub use policy::{
    Candidate, DEFAULT_ACTION_TIMEOUT, DEFAULT_MIGRATION_WINDOW, Explanation, KeyTraits, Mode,
    Policy, PolicySet, PrekeySettings, RuleSource, Rules, builtin_rules, default_policy_path,
    parse_duration,
};
pub use prekeys::{
    CONSUMED_MARKERS_KEPT, OneTimePrekey, PREKEY_LABEL_PREFIXES, PoolStatus, PrekeyPool,
    SignedPrekey, Succession, is_prekey_label,
};
pub use registry::Registry;
pub use state::{
    EventKind, HistoryEntry, KeyVersion, LogicalKey, PendingRotation, Role, SecurityLevel,
    VersionState,
};
pub use x3dh::{Initiation, PrekeyBundle, SessionSecret};
