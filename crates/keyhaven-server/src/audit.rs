//! The server's decisions in an audit trail: registrations, authentication failures,
//! rotations, revocations. In embedded mode the trail is the keyhaven home's hash-chained audit
//! log (verified by `keyhaven audit verify`).

use std::sync::Arc;

use keyhaven::audit::{AuditLog, Event, Outcome};

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// `server.register`, `server.authenticate`, `server.rotate`, `server.revoke`.
    pub operation: &'static str,
    /// Who asked: `client:<id>`, or `key:<fingerprint>` before a client is known, or
    /// `address:<ip>`.
    pub principal: String,
    /// The key concerned (a fingerprint), if any.
    pub key: Option<String>,
    /// Allowed or refused.
    pub allowed: bool,
    /// Why (the problem name and detail for a refusal).
    pub reason: String,
    /// The network address the request came from, when the decision is about one request.
    pub address: Option<String>,
    /// The request's id (its RFC 9421 nonce) when it was accepted: the same nonce accepted
    /// twice with one key is a replay `keyhaven compromise scan` reports.
    pub request_id: Option<String>,
}

/// Where decisions go. Called on the blocking pool.
pub trait AuditSink: Send + Sync + 'static {
    /// Records one decision.
    ///
    /// # Errors
    /// The trail cannot be written: the server then refuses the request it was deciding.
    fn record(&self, decision: &Decision) -> Result<(), String>;

    /// Signs a checkpoint over the trail with the server key, if the trail takes them (the
    /// server asks every minute). The default does nothing.
    ///
    /// # Errors
    /// The checkpoint cannot be made or written.
    fn checkpoint(&self, _signer: &dyn crate::server::ResponseSigner) -> Result<(), String> {
        Ok(())
    }

    /// Every allowed decision of `operation` in the trail, oldest first: (when, in seconds
    /// since the epoch; who; why).
    ///
    /// # Errors
    /// The trail cannot be read, or this one cannot be searched.
    fn search(&self, operation: &str) -> Result<Vec<(u64, String, String)>, String> {
        let _ = operation;
        Err("this server keeps no searchable audit trail".into())
    }
}

/// The most decisions a search returns.
pub(crate) const MAX_SEARCHED: u32 = 100_000;

/// A keyhaven audit log as the trail.
#[derive(Debug)]
pub struct LogSink(pub Arc<AuditLog>);

impl AuditSink for LogSink {
    fn record(&self, d: &Decision) -> Result<(), String> {
        let outcome = if d.allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        let mut e = Event::new(d.principal.clone(), d.operation, "server", outcome);
        if let Some(k) = &d.key {
            e = e.key(k.clone(), None);
        }
        if !d.reason.is_empty() {
            e = e.reason(d.reason.clone());
        }
        if let Some(a) = &d.address {
            e = e.address(a.clone());
        }
        if let Some(id) = &d.request_id {
            e = e.request_id(id.clone());
        }
        self.0.append(e).map(|_| ()).map_err(|e| e.to_string())
    }

    fn search(&self, operation: &str) -> Result<Vec<(u64, String, String)>, String> {
        let filter = keyhaven::audit::Filter {
            operation: Some(operation.to_owned()),
            outcome: Some(Outcome::Allowed),
            ..keyhaven::audit::Filter::default()
        };
        let records = self.0.search(&filter).map_err(|e| e.to_string())?;
        Ok(records
            .into_iter()
            .take(usize::try_from(MAX_SEARCHED).unwrap_or(usize::MAX))
            .filter_map(|r| match r.body {
                keyhaven::audit::Body::Event(e) => Some((
                    r.unix_nanos / 1_000_000_000,
                    e.principal,
                    e.reason.unwrap_or_default(),
                )),
                _ => None,
            })
            .collect())
    }
}

/// No trail (a server built without a home, for tests of other things).
#[derive(Debug, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _: &Decision) -> Result<(), String> {
        Ok(())
    }
}
