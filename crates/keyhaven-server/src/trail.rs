//! The audit trail of servers sharing PostgreSQL: one hash chain per server process, so nodes
//! never queue on one chain head, tied together by checkpoints each node signs with the
//! server key over every chain's head; [`verify_trail`] checks it all.
//!
//! An edited or removed record breaks its chain (every record names its predecessor's hash,
//! and its own hash covers every field); records removed from the end of a chain, or a chain
//! removed whole, contradict the next signed checkpoint that named them. What was appended
//! after the last checkpoint can be cut off unseen: checkpoints come every minute.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use keyhaven::{PublicKey, Signature};

use crate::audit::{AuditSink, Decision};
use crate::server::ResponseSigner;
use crate::storage::{AuditCheckpoint, AuditRow, PostgresStorage};

/// The hash before a chain's first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// This process's chain in the shared trail.
pub struct PgTrail {
    storage: Arc<PostgresStorage>,
    chain: String,
    head: Mutex<(u64, String)>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for PgTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTrail")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl PgTrail {
    /// A new chain (a random name) in `storage`'s trail.
    ///
    /// # Errors
    /// If no random name can be drawn.
    pub fn new(storage: Arc<PostgresStorage>) -> Result<Self, keyhaven::Error> {
        let id = crate::handlers::random(12)?;
        Ok(PgTrail {
            storage,
            chain: hex::encode(id),
            head: Mutex::new((0, GENESIS.to_owned())),
            clock: Arc::new(keyhaven::unix_now),
        })
    }

    /// This chain's name.
    pub fn chain(&self) -> &str {
        &self.chain
    }
}

impl AuditSink for PgTrail {
    fn record(&self, d: &Decision) -> Result<(), String> {
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        let mut row = AuditRow {
            chain: self.chain.clone(),
            seq: head.0 + 1,
            at: (self.clock)(),
            operation: d.operation.to_owned(),
            principal: d.principal.clone(),
            key: d.key.clone(),
            allowed: d.allowed,
            reason: d.reason.clone(),
            prev: head.1.clone(),
            hash: String::new(),
        };
        row.hash = row.computed_hash();
        self.storage.append_audit(&row).map_err(|e| e.to_string())?;
        *head = (row.seq, row.hash);
        Ok(())
    }

    fn search(&self, operation: &str) -> Result<Vec<(u64, String, String)>, String> {
        self.storage
            .audit_allowed(operation, crate::audit::MAX_SEARCHED)
            .map_err(|e| e.to_string())
    }

    fn checkpoint(&self, signer: &dyn ResponseSigner) -> Result<(), String> {
        let heads = self.storage.audit_heads().map_err(|e| e.to_string())?;
        let at = (self.clock)();
        let mut statement = format!("keyhaven-server audit checkpoint v1\nat: {at}\n");
        for (chain, seq, hash) in &heads {
            statement.push_str(&format!("{chain} {seq} {hash}\n"));
        }
        let signature = signer
            .sign(statement.as_bytes())
            .map_err(|e| e.to_string())?;
        self.storage
            .add_checkpoint(&AuditCheckpoint {
                at,
                chain: self.chain.clone(),
                statement,
                keyid: signer.public_key().fingerprint().to_hex(),
                signature: signature.as_raw().to_vec(),
            })
            .map_err(|e| e.to_string())
    }
}

/// What [`verify_trail`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrailReport {
    /// Chains.
    pub chains: usize,
    /// Records.
    pub records: usize,
    /// Checkpoints whose signature verified.
    pub checkpoints: usize,
    /// Every break found, in order: empty when the trail is whole.
    pub problems: Vec<String>,
}

/// Checks every chain (order, links, hashes) and every checkpoint (signed by `server_key`,
/// and naming heads the chains still have).
///
/// # Errors
/// [`crate::StorageError::Database`] if the trail cannot be read.
pub fn verify_trail(
    storage: &PostgresStorage,
    server_key: &PublicKey,
) -> Result<TrailReport, crate::StorageError> {
    let (rows, checkpoints) = storage.audit_trail()?;
    let mut report = TrailReport {
        records: rows.len(),
        ..TrailReport::default()
    };
    let mut chains: BTreeMap<&str, Vec<&AuditRow>> = BTreeMap::new();
    for r in &rows {
        chains.entry(r.chain.as_str()).or_default().push(r);
    }
    report.chains = chains.len();
    for (chain, records) in &chains {
        let mut prev = GENESIS.to_owned();
        for (i, r) in records.iter().enumerate() {
            let expected = i as u64 + 1;
            if r.seq != expected {
                report.problems.push(format!(
                    "chain {chain}: record {expected} is missing (the next is {})",
                    r.seq
                ));
                break;
            }
            if r.prev != prev {
                report.problems.push(format!(
                    "chain {chain} record {}: it does not follow record {} (a record was \
                     changed or removed)",
                    r.seq,
                    r.seq - 1
                ));
                break;
            }
            if r.computed_hash() != r.hash {
                report.problems.push(format!(
                    "chain {chain} record {}: its content does not match its hash (it was \
                     changed)",
                    r.seq
                ));
                break;
            }
            prev = r.hash.clone();
        }
    }
    let fp = server_key.fingerprint().to_hex();
    for c in &checkpoints {
        let signed = c.keyid == fp
            && Signature::from_raw(server_key.algorithm(), c.signature.clone())
                .ok()
                .is_some_and(|s| keyhaven::verify(server_key, c.statement.as_bytes(), &s).is_ok());
        if !signed {
            report.problems.push(format!(
                "checkpoint at {} (chain {}): not signed by the server key",
                c.at, c.chain
            ));
            continue;
        }
        report.checkpoints += 1;
        for line in c.statement.lines().skip(2) {
            let mut parts = line.split(' ');
            let (Some(chain), Some(seq), Some(hash)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            let present = chains
                .get(chain)
                .and_then(|records| records.iter().find(|r| r.seq == seq))
                .is_some_and(|r| r.hash == hash);
            if !present {
                report.problems.push(format!(
                    "checkpoint at {}: chain {chain} had record {seq} then, and no longer has \
                     it as it was (records were removed or replaced)",
                    c.at
                ));
            }
        }
    }
    Ok(report)
}
