//! The node's idempotency records, as the request path uses them: one `submit` that a
//! standalone node answers from its own ledger and a cluster member answers through Raft.
//!
//! The ledger itself (what a claim, a completion and a release do, expiry, bounds) is
//! `meridian_idempotency`, a pure state machine; this module only decides where
//! it runs. A node started from a configuration file keeps it in memory (the guarantee is the
//! node's); a cluster member replaces that with the replicated log as soon as it has joined
//! (the guarantee is the cluster's: a record is committed by a quorum before the request it
//! claims is delivered).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::NodeId;
use meridian_idempotency::{IdempotencyAnswer, IdempotencyCommand, IdempotencyLedger, IdempotencyRecord, record_name};

/// A boxed future of a record write.
pub type Submitted<'a> = Pin<Box<dyn Future<Output = Result<IdempotencyAnswer, String>> + Send + 'a>>;

/// Where records are written when the node is a cluster member: the replicated log.
pub trait RecordLog: Send + Sync {
    /// This member's id (claims are the node's that made them).
    fn node_id(&self) -> NodeId;

    /// Commits `command` through a quorum and returns the ledger's answer.
    fn submit(&self, command: IdempotencyCommand) -> Submitted<'_>;

    /// The record named `name` as this member has applied it (committed, possibly not the
    /// latest).
    fn applied(&self, name: &str) -> Pin<Box<dyn Future<Output = Option<IdempotencyRecord>> + Send + '_>>;
}

/// The node's idempotency records: its own ledger until it joins a cluster, the cluster's
/// from then on.
#[derive(Default)]
pub struct IdempotencyRecords {
    local: Mutex<IdempotencyLedger>,
    replicated: OnceLock<Arc<dyn RecordLog>>,
}

impl fmt::Debug for IdempotencyRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyRecords").field("replicated", &self.replicated.get().is_some()).finish()
    }
}

/// Why a record write has no answer.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the cluster did not commit the record within {0:?}")]
    Timeout(Duration),
    #[error("the cluster could not commit the record: {0}")]
    Unavailable(String),
}

impl IdempotencyRecords {
    /// From now on, records are the cluster's.
    pub fn replicate_through(&self, log: Arc<dyn RecordLog>) {
        if self.replicated.set(log).is_err() {
            tracing::warn!("idempotency records were already replicated; the second log is ignored");
        }
    }

    /// The id that marks this node's claims (0 for a standalone node).
    pub fn node_id(&self) -> NodeId {
        self.replicated.get().map_or(0, |log| log.node_id())
    }

    /// The record of `key` in `scope` as this node knows it: a committed fact, but perhaps
    /// not the latest one (a completion may not have reached this node yet).
    pub async fn applied(&self, scope: &str, key: &str) -> Option<IdempotencyRecord> {
        let name = record_name(scope, key);
        match self.replicated.get() {
            Some(log) => log.applied(&name).await,
            None => self.local.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned(),
        }
    }

    /// Applies `command` at once when the records are the node's own (no cluster), so that a
    /// response is recorded before its last byte leaves; `None` on a cluster member, whose
    /// writes go through the log.
    pub fn apply_here(&self, command: &IdempotencyCommand) -> Option<IdempotencyAnswer> {
        if self.replicated.get().is_some() {
            return None;
        }
        Some(self.local.lock().unwrap_or_else(|p| p.into_inner()).apply(command).0)
    }

    /// Writes `command` and returns the ledger's answer, within `timeout`.
    pub async fn submit(
        &self,
        command: IdempotencyCommand,
        timeout: Duration,
    ) -> Result<IdempotencyAnswer, RecordError> {
        match self.replicated.get() {
            Some(log) => match tokio::time::timeout(timeout, log.submit(command)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(RecordError::Unavailable(e)),
                Err(_) => Err(RecordError::Timeout(timeout)),
            },
            None => {
                let mut ledger = self.local.lock().unwrap_or_else(|p| p.into_inner());
                Ok(ledger.apply(&command).0)
            }
        }
    }
}

/// The proposer's clock for a command, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Unreachable;

    impl RecordLog for Unreachable {
        fn node_id(&self) -> NodeId {
            7
        }

        fn submit(&self, _: IdempotencyCommand) -> Submitted<'_> {
            Box::pin(std::future::pending())
        }

        fn applied(&self, _: &str) -> Pin<Box<dyn Future<Output = Option<IdempotencyRecord>> + Send + '_>> {
            Box::pin(std::future::ready(None))
        }
    }

    fn claim(node: NodeId) -> IdempotencyCommand {
        IdempotencyCommand::Claim {
            scope: "a/s".into(),
            key: "k".into(),
            fingerprint: vec![1],
            node,
            attempt: 1,
            now_ms: now_ms(),
            lease_ms: 1_000,
            ttl_ms: 60_000,
            max_records: 10,
        }
    }

    #[tokio::test]
    async fn a_standalone_node_keeps_its_own_records() {
        let records = IdempotencyRecords::default();
        assert_eq!(records.node_id(), 0);
        let second = records.submit(claim(0), Duration::from_secs(1)).await.unwrap();
        assert_eq!(second, IdempotencyAnswer::Claimed);
        let again = records.submit(claim(0), Duration::from_secs(1)).await.unwrap();
        assert!(matches!(again, IdempotencyAnswer::InFlight { .. }), "{again:?}");
    }

    #[tokio::test]
    async fn a_member_without_a_quorum_answers_nothing_within_the_timeout() {
        let records = IdempotencyRecords::default();
        records.replicate_through(Arc::new(Unreachable));
        assert_eq!(records.node_id(), 7);
        let result = records.submit(claim(7), Duration::from_millis(50)).await;
        assert!(matches!(result, Err(RecordError::Timeout(_))), "{result:?}");
    }
}
