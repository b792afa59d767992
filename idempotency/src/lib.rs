//! Idempotency records: which request keys the cluster has delivered, and what they answered.
//!
//! A route that honours `Idempotency-Key` claims the key here before its request goes
//! upstream, and completes the claim with the response afterwards; a retry on any node then
//! finds the claim (still in flight) or the response (to replay) instead of delivering the
//! request again. The records go through the same Raft log as the configuration but are kept
//! apart from it: they change with traffic, not with operators, so they never bump the
//! configuration's revision, and the store keeps them one record per key rather than inside
//! the configuration's document.
//!
//! [`IdempotencyLedger::apply`] is deterministic and total like the configuration's `apply`:
//! time comes from the proposer's clock carried in each command, and the ledger's clock only
//! moves forward, so every replica expires the same records at the same log index.
//!
//! The crate is pure (serde only): `meridian-consensus` replicates the ledger through Raft,
//! and the data plane (`meridian-dataplane`) builds its commands and reads its answers
//! without depending on Raft or its storage.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A cluster member's id (`meridian_consensus::NodeId` is this type).
pub type NodeId = u64;

/// How many expired records one command removes at most, so that applying an entry stays
/// cheap however many expire at once; the rest go with the next commands.
const EXPIRIES_PER_COMMAND: usize = 256;

/// A change to the idempotency records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyCommand {
    /// Claims `key` for a request with this `fingerprint` before it is delivered.
    Claim {
        /// Where the key is unique: an API's stage, and the client when it is known.
        scope: String,
        key: String,
        fingerprint: Vec<u8>,
        node: NodeId,
        /// This attempt's own number (random): only it may complete or release the claim,
        /// never an earlier attempt of the same node that is still settling.
        attempt: u64,
        now_ms: u64,
        /// How long the claim is this node's to complete.
        lease_ms: u64,
        /// How long the record is kept from now.
        ttl_ms: u64,
        /// The most records `scope` may hold; a claim beyond is refused.
        max_records: u64,
    },
    /// Stores the response of a delivered request with the key this attempt claimed.
    Complete {
        scope: String,
        key: String,
        fingerprint: Vec<u8>,
        node: NodeId,
        attempt: u64,
        now_ms: u64,
        response: StoredResponse,
    },
    /// Gives a claim back: its request never reached the upstream, so a retry may deliver it.
    Release { scope: String, key: String, fingerprint: Vec<u8>, node: NodeId, attempt: u64, now_ms: u64 },
}

/// A response as it is kept for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Whether `body` is all of it (a body over the route's limit is not kept).
    pub body_complete: bool,
}

/// What the ledger answered a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyAnswer {
    /// The key is the proposer's to deliver.
    Claimed,
    /// Another attempt holds the key. Past `lease_until_ms` its node has not recorded an
    /// outcome: the request may or may not have been delivered.
    InFlight { lease_until_ms: u64, lease_over: bool },
    /// The key was delivered; this is what it answered.
    Completed(StoredResponse),
    /// The key was used for a request with another fingerprint.
    Mismatch,
    /// The scope holds as many records as it may.
    Full,
    /// A completion or release was recorded.
    Recorded,
    /// A completion or release for a claim that is not the proposer's (expired, or never made).
    NotHeld,
}

/// One key's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: Vec<u8>,
    pub state: RecordState,
    pub expires_at_ms: u64,
}

/// Where a key's request is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    InFlight { node: NodeId, attempt: u64, lease_until_ms: u64 },
    Completed(StoredResponse),
}

/// Every live idempotency record, with the indexes that expire and count them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "LedgerImage", into = "LedgerImage")]
pub struct IdempotencyLedger {
    clock_ms: u64,
    records: BTreeMap<String, IdempotencyRecord>,
    expiry: BTreeSet<(u64, String)>,
    per_scope: BTreeMap<String, u64>,
}

/// The ledger as it is written: its clock and its records.
#[derive(Serialize, Deserialize)]
struct LedgerImage {
    clock_ms: u64,
    records: Vec<(String, IdempotencyRecord)>,
}

impl From<LedgerImage> for IdempotencyLedger {
    fn from(image: LedgerImage) -> Self {
        IdempotencyLedger::restore(image.clock_ms, image.records)
    }
}

impl From<IdempotencyLedger> for LedgerImage {
    fn from(ledger: IdempotencyLedger) -> Self {
        LedgerImage { clock_ms: ledger.clock_ms, records: ledger.records.into_iter().collect() }
    }
}

/// A record's name in the ledger: its scope and its key.
pub fn record_name(scope: &str, key: &str) -> String {
    format!("{scope}\n{key}")
}

fn scope_of(name: &str) -> &str {
    name.split_once('\n').map_or(name, |(scope, _)| scope)
}

impl IdempotencyLedger {
    /// A ledger with these records, as a store or a snapshot holds them.
    pub fn restore(clock_ms: u64, records: impl IntoIterator<Item = (String, IdempotencyRecord)>) -> Self {
        let mut ledger = IdempotencyLedger { clock_ms, ..Default::default() };
        for (name, record) in records {
            ledger.insert(name, record);
        }
        ledger
    }

    /// The ledger's clock: the latest proposer time it applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The number of live records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record named `name`, if it is live.
    pub fn get(&self, name: &str) -> Option<&IdempotencyRecord> {
        self.records.get(name)
    }

    /// Every live record, by name.
    pub fn records(&self) -> impl Iterator<Item = (&String, &IdempotencyRecord)> {
        self.records.iter()
    }

    /// Applies `command`; returns the answer and the names of the records it changed
    /// (written or removed), for the store to persist.
    pub fn apply(&mut self, command: &IdempotencyCommand) -> (IdempotencyAnswer, Vec<String>) {
        let now_ms = match command {
            IdempotencyCommand::Claim { now_ms, .. }
            | IdempotencyCommand::Complete { now_ms, .. }
            | IdempotencyCommand::Release { now_ms, .. } => *now_ms,
        };
        self.clock_ms = self.clock_ms.max(now_ms);
        let mut changed = self.expire();
        let answer = match command {
            IdempotencyCommand::Claim {
                scope, key, fingerprint, node, attempt, lease_ms, ttl_ms, max_records, ..
            } => {
                let name = record_name(scope, key);
                match self.records.get(&name) {
                    Some(record) if record.fingerprint != *fingerprint => IdempotencyAnswer::Mismatch,
                    Some(IdempotencyRecord { state: RecordState::Completed(response), .. }) => {
                        IdempotencyAnswer::Completed(response.clone())
                    }
                    Some(IdempotencyRecord { state: RecordState::InFlight { lease_until_ms, .. }, .. }) => {
                        IdempotencyAnswer::InFlight {
                            lease_until_ms: *lease_until_ms,
                            lease_over: self.clock_ms > *lease_until_ms,
                        }
                    }
                    None if self.per_scope.get(scope.as_str()).copied().unwrap_or(0) >= *max_records => {
                        IdempotencyAnswer::Full
                    }
                    None => {
                        let record = IdempotencyRecord {
                            fingerprint: fingerprint.clone(),
                            state: RecordState::InFlight {
                                node: *node,
                                attempt: *attempt,
                                lease_until_ms: self.clock_ms.saturating_add(*lease_ms),
                            },
                            expires_at_ms: self.clock_ms.saturating_add(*ttl_ms),
                        };
                        self.insert(name.clone(), record);
                        changed.push(name);
                        IdempotencyAnswer::Claimed
                    }
                }
            }
            IdempotencyCommand::Complete { scope, key, fingerprint, node, attempt, response, .. } => {
                let name = record_name(scope, key);
                match self.records.get_mut(&name) {
                    Some(record) if held(record, fingerprint, *node, *attempt) => {
                        record.state = RecordState::Completed(response.clone());
                        changed.push(name);
                        IdempotencyAnswer::Recorded
                    }
                    _ => IdempotencyAnswer::NotHeld,
                }
            }
            IdempotencyCommand::Release { scope, key, fingerprint, node, attempt, .. } => {
                let name = record_name(scope, key);
                match self.records.get(&name) {
                    Some(record) if held(record, fingerprint, *node, *attempt) => {
                        self.remove(&name);
                        changed.push(name);
                        IdempotencyAnswer::Recorded
                    }
                    _ => IdempotencyAnswer::NotHeld,
                }
            }
        };
        (answer, changed)
    }

    /// Removes the records whose time is over (a bounded number); returns their names.
    fn expire(&mut self) -> Vec<String> {
        let mut expired = Vec::new();
        while expired.len() < EXPIRIES_PER_COMMAND {
            match self.expiry.first() {
                Some((at, name)) if *at <= self.clock_ms => {
                    let name = name.clone();
                    self.remove(&name);
                    expired.push(name);
                }
                _ => break,
            }
        }
        expired
    }

    fn insert(&mut self, name: String, record: IdempotencyRecord) {
        self.expiry.insert((record.expires_at_ms, name.clone()));
        *self.per_scope.entry(scope_of(&name).to_string()).or_default() += 1;
        if let Some(old) = self.records.insert(name.clone(), record) {
            self.expiry.remove(&(old.expires_at_ms, name.clone()));
            self.uncount(&name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(record) = self.records.remove(name) {
            self.expiry.remove(&(record.expires_at_ms, name.to_string()));
            self.uncount(name);
        }
    }

    fn uncount(&mut self, name: &str) {
        let scope = scope_of(name);
        if let Some(count) = self.per_scope.get_mut(scope) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_scope.remove(scope);
            }
        }
    }
}

/// Whether `record` is the in-flight claim this attempt of `node` made for this fingerprint.
fn held(record: &IdempotencyRecord, fingerprint: &[u8], node: NodeId, attempt: u64) -> bool {
    record.fingerprint == fingerprint
        && matches!(record.state, RecordState::InFlight { node: n, attempt: a, .. } if n == node && a == attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claim(key: &str, fingerprint: u8, node: NodeId, now_ms: u64) -> IdempotencyCommand {
        IdempotencyCommand::Claim {
            scope: "pay/prod".into(),
            key: key.into(),
            fingerprint: vec![fingerprint],
            node,
            attempt: node,
            now_ms,
            lease_ms: 1_000,
            ttl_ms: 10_000,
            max_records: 3,
        }
    }

    fn complete(key: &str, fingerprint: u8, node: NodeId, now_ms: u64) -> IdempotencyCommand {
        IdempotencyCommand::Complete {
            scope: "pay/prod".into(),
            key: key.into(),
            fingerprint: vec![fingerprint],
            node,
            attempt: node,
            now_ms,
            response: response(),
        }
    }

    fn response() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: b"{\"id\":1}".to_vec(),
            body_complete: true,
        }
    }

    #[test]
    fn a_key_is_delivered_once_then_replayed() {
        let mut ledger = IdempotencyLedger::default();
        assert_eq!(ledger.apply(&claim("k", 1, 1, 0)).0, IdempotencyAnswer::Claimed);
        assert_eq!(
            ledger.apply(&claim("k", 1, 2, 10)).0,
            IdempotencyAnswer::InFlight { lease_until_ms: 1_000, lease_over: false }
        );
        assert_eq!(ledger.apply(&complete("k", 1, 2, 20)).0, IdempotencyAnswer::NotHeld, "only the claimer completes");
        assert_eq!(ledger.apply(&complete("k", 1, 1, 20)).0, IdempotencyAnswer::Recorded);
        assert_eq!(ledger.apply(&claim("k", 1, 3, 30)).0, IdempotencyAnswer::Completed(response()));
        assert_eq!(ledger.apply(&claim("k", 2, 3, 30)).0, IdempotencyAnswer::Mismatch);
    }

    #[test]
    fn an_unfinished_claim_is_never_given_to_another_attempt() {
        let mut ledger = IdempotencyLedger::default();
        ledger.apply(&claim("k", 1, 1, 0));
        assert_eq!(
            ledger.apply(&claim("k", 1, 2, 5_000)).0,
            IdempotencyAnswer::InFlight { lease_until_ms: 1_000, lease_over: true }
        );
    }

    #[test]
    fn a_released_claim_may_be_delivered_again() {
        let mut ledger = IdempotencyLedger::default();
        ledger.apply(&claim("k", 1, 1, 0));
        let release = IdempotencyCommand::Release {
            scope: "pay/prod".into(),
            key: "k".into(),
            fingerprint: vec![1],
            node: 1,
            attempt: 1,
            now_ms: 5,
        };
        assert_eq!(ledger.apply(&release), (IdempotencyAnswer::Recorded, vec![record_name("pay/prod", "k")]));
        assert_eq!(ledger.apply(&claim("k", 1, 2, 6)).0, IdempotencyAnswer::Claimed);
    }

    #[test]
    fn an_earlier_attempt_settling_late_leaves_a_later_claim_alone() {
        let mut ledger = IdempotencyLedger::default();
        let claim_by = |attempt: u64, now_ms: u64| IdempotencyCommand::Claim {
            scope: "pay/prod".into(),
            key: "k".into(),
            fingerprint: vec![1],
            node: 2,
            attempt,
            now_ms,
            lease_ms: 1_000,
            ttl_ms: 10_000,
            max_records: 3,
        };
        let release_by = |attempt: u64| IdempotencyCommand::Release {
            scope: "pay/prod".into(),
            key: "k".into(),
            fingerprint: vec![1],
            node: 2,
            attempt,
            now_ms: 50,
        };
        // Attempt 7 timed out and gave its claim back; attempt 8 of the same node claimed
        // the key again and delivered. Attempt 7's release, retried, must not free it.
        ledger.apply(&claim_by(7, 0));
        assert_eq!(ledger.apply(&release_by(7)).0, IdempotencyAnswer::Recorded);
        assert_eq!(ledger.apply(&claim_by(8, 10)).0, IdempotencyAnswer::Claimed);
        assert_eq!(ledger.apply(&release_by(7)).0, IdempotencyAnswer::NotHeld);
        assert!(matches!(ledger.apply(&claim_by(9, 60)).0, IdempotencyAnswer::InFlight { .. }));
    }

    #[test]
    fn records_expire_and_scopes_are_bounded() {
        let mut ledger = IdempotencyLedger::default();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(ledger.apply(&claim(key, 1, 1, i as u64)).0, IdempotencyAnswer::Claimed);
        }
        assert_eq!(ledger.apply(&claim("d", 1, 1, 5)).0, IdempotencyAnswer::Full);
        // At 10 000 ms the first record's time is over: it goes, and its key is free again.
        let (answer, changed) = ledger.apply(&claim("a", 2, 1, 10_000));
        assert_eq!(answer, IdempotencyAnswer::Claimed);
        assert_eq!(changed, vec![record_name("pay/prod", "a"), record_name("pay/prod", "a")]);
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn a_ledger_survives_its_image() {
        let mut ledger = IdempotencyLedger::default();
        ledger.apply(&claim("a", 1, 1, 0));
        ledger.apply(&complete("a", 1, 1, 1));
        ledger.apply(&claim("b", 1, 1, 2));
        let bytes = serde_json::to_vec(&ledger).unwrap();
        let restored: IdempotencyLedger = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(restored, ledger);
    }

    fn command() -> impl Strategy<Value = IdempotencyCommand> {
        let key = prop_oneof![Just("a"), Just("b"), Just("c")];
        (0u8..3, key, 0u8..2, 1u64..3, 0u64..30_000).prop_map(|(kind, key, fingerprint, node, now_ms)| match kind {
            0 => claim(key, fingerprint, node, now_ms),
            1 => complete(key, fingerprint, node, now_ms),
            _ => IdempotencyCommand::Release {
                scope: "pay/prod".into(),
                key: key.into(),
                fingerprint: vec![fingerprint],
                node,
                attempt: node,
                now_ms,
            },
        })
    }

    proptest! {
        /// Whatever the commands, two replicas agree, a key is claimed again only after a
        /// release or its expiry, and the indexes match the records.
        #[test]
        fn replicas_agree_and_never_claim_a_held_key_twice(commands in proptest::collection::vec(command(), 0..60)) {
            let (mut a, mut b) = (IdempotencyLedger::default(), IdempotencyLedger::default());
            for command in &commands {
                let before = a.clone();
                let (answer, _) = a.apply(command);
                prop_assert_eq!(&answer, &b.apply(command).0);
                if let (IdempotencyCommand::Claim { scope, key, .. }, IdempotencyAnswer::Claimed) = (command, &answer) {
                    let name = record_name(scope, key);
                    let live = before.get(&name).filter(|r| r.expires_at_ms > a.clock_ms());
                    prop_assert!(live.is_none(), "claimed {} while it was held", name);
                }
                prop_assert_eq!(a.expiry.len(), a.records.len());
                prop_assert_eq!(a.per_scope.values().sum::<u64>(), a.records.len() as u64);
            }
            prop_assert_eq!(a, b);
        }
    }
}
