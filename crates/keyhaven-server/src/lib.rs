#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod agent;
pub mod attest;
mod audit;
mod auth;
pub mod broker;
pub mod compromise;
mod enroll;
pub mod fallback;
mod handlers;
pub mod kbs;
mod metrics;
pub mod policy;
mod problem;
mod ratelimit;
pub mod secrets;
mod serve;
mod server;
pub mod storage;
mod tls;
pub mod tokens;
mod trail;

pub use audit::{AuditSink, Decision, LogSink, NoAudit};
pub use auth::Caller;
pub use broker::Broker;
pub use metrics::Metrics;
pub use problem::ApiError;
pub use ratelimit::Rate;
pub use serve::{
    Home, MASTER_KEY_LABEL, SERVER_KEY_LABEL, ServeError, bootstrap_admin,
    bootstrap_admin_postgres, serve, setup_broker, setup_broker_postgres,
};
pub use server::{ResponseSigner, Server, ServerConfig};
pub use storage::{PostgresStorage, SqliteStorage, Storage, StorageError};
pub use tls::{TlsIdentity, serve_tls};
pub use trail::{PgTrail, TrailReport, verify_trail};
