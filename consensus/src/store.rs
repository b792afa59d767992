//! The Raft log and state machine on sled.
//!
//! One sled database per node holds three trees: `log` (entries by big-endian index),
//! `meta` (vote, last purged log id, committed log id) and `machine`: the applied position
//! (last applied log id, membership, the idempotency ledger's clock), the applied
//! [`ConfigState`], one `record/<name>` per idempotency record, and the current snapshot.
//! Appends and votes are flushed before they are acknowledged; what a batch of entries
//! changed is written in one atomic sled batch after it is applied (the configuration only
//! when a configuration write was among them, a record only when it changed), so a restarted
//! node resumes from where it stopped without replaying its log, and catches up from the
//! leader for the rest.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::idempotency::{IdempotencyLedger, IdempotencyRecord};
use crate::state::{CommandOutcome, ConfigState};
use crate::types::{ClusterNode, Entry, NodeId, TypeConfig, Write, WriteOutcome};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

/// Opens (or creates) a node's store at `path`.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), sled::Error> {
    let db = sled::open(path)?;
    let log = LogStore { log: db.open_tree("log")?, meta: db.open_tree("meta")?, db: db.clone() };
    let machine_tree = db.open_tree("machine")?;
    let machine = read_machine(&machine_tree)?;
    let machine = StateMachine { tree: machine_tree, db, applied: Arc::new(RwLock::new(machine)) };
    Ok((log, machine))
}

const POSITION: &str = "position";
const CONFIG: &str = "config";
const RECORD_PREFIX: &str = "record/";

fn record_key(name: &str) -> Vec<u8> {
    [RECORD_PREFIX.as_bytes(), name.as_bytes()].concat()
}

/// Where the state machine is: what Raft needs to resume, and the idempotency ledger's clock.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Position {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ClusterNode>,
    idempotency_clock_ms: u64,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}")))
}

/// The applied state as the `machine` tree holds it.
fn read_machine(tree: &sled::Tree) -> Result<AppliedMachine, sled::Error> {
    let position: Position = match tree.get(POSITION)? {
        Some(bytes) => decode(&bytes).map_err(|e| invalid("applied position", e))?,
        None => Position::default(),
    };
    let config: ConfigState = match tree.get(CONFIG)? {
        Some(bytes) => crate::format::decode_config(&bytes).map_err(|e| invalid("applied configuration", e))?,
        None => ConfigState::default(),
    };
    let mut records = Vec::new();
    for item in tree.scan_prefix(RECORD_PREFIX) {
        let (key, value) = item?;
        let name = String::from_utf8_lossy(&key[RECORD_PREFIX.len()..]).into_owned();
        let record: IdempotencyRecord = decode(&value).map_err(|e| invalid("idempotency record", e))?;
        records.push((name, record));
    }
    Ok(AppliedMachine {
        last_applied: position.last_applied,
        membership: position.membership,
        config,
        idempotency: IdempotencyLedger::restore(position.idempotency_clock_ms, records),
    })
}

fn write_failed(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

/// The Raft log.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    fn get_meta<T: DeserializeOwned>(&self, key: &str, subject: ErrorSubject<NodeId>) -> StorageResult<Option<T>> {
        match self.meta.get(key).map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(|e| io_error(subject, ErrorVerb::Read, &e)),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &str, value: &T, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        let bytes = encode(value).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        self.meta.insert(key, bytes).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        self.db.flush_async().await.map_err(|e| io_error(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0xff; 8]));
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&value).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta("last_purged", ErrorSubject::Store)?;
        let last = match self.log.last().map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))? {
            Some((_, value)) => {
                let entry: Entry = decode(&value).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta("vote", vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta("vote", ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put_meta("committed", &committed, ErrorSubject::Store).await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed", ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        // Acknowledge only once the entries are on disk.
        let flushed = self.db.flush_async().await.map(|_| ()).map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let keys: Vec<sled::IVec> = self.log.range(index_key(log_id.index)..).keys().filter_map(Result::ok).collect();
        for key in keys {
            self.log.remove(key).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        }
        self.db.flush_async().await.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: entries at or before it are ignored from then on.
        self.put_meta("last_purged", &log_id, ErrorSubject::Store).await?;
        let keys: Vec<sled::IVec> = self.log.range(..=index_key(log_id.index)).keys().filter_map(Result::ok).collect();
        for key in keys {
            self.log.remove(key).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        }
        Ok(())
    }
}

/// The applied state with what Raft needs to know about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedMachine {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, ClusterNode>,
    pub config: ConfigState,
    pub idempotency: IdempotencyLedger,
}

/// What a batch of applied entries changed, to be written.
#[derive(Default)]
struct Changes {
    config: bool,
    /// Idempotency records written or removed, by name.
    records: Vec<String>,
    /// Every record was replaced (a snapshot was installed).
    all_records: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ClusterNode>,
    data: Vec<u8>,
}

/// The state machine: the applied configuration, shared for reading with the data plane.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: sled::Db,
    tree: sled::Tree,
    applied: Arc<RwLock<AppliedMachine>>,
}

impl StateMachine {
    /// A handle for reading the applied state (the data plane compiles it; `status` shows it).
    pub fn applied(&self) -> Arc<RwLock<AppliedMachine>> {
        self.applied.clone()
    }

    /// Writes what `changes` says changed of `machine`, in one atomic batch, and flushes it.
    async fn persist(&self, machine: &AppliedMachine, changes: &Changes) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        let position = Position {
            last_applied: machine.last_applied,
            membership: machine.membership.clone(),
            idempotency_clock_ms: machine.idempotency.clock_ms(),
        };
        batch.insert(POSITION, encode(&position).map_err(|e| write_failed(&e))?);
        if changes.config {
            batch.insert(CONFIG, crate::format::encode_config(&machine.config).map_err(|e| write_failed(&e))?);
        }
        if changes.all_records {
            for key in self.tree.scan_prefix(RECORD_PREFIX).keys() {
                batch.remove(key.map_err(|e| write_failed(&e))?);
            }
            for (name, record) in machine.idempotency.records() {
                batch.insert(record_key(name), encode(record).map_err(|e| write_failed(&e))?);
            }
        }
        for name in &changes.records {
            match machine.idempotency.get(name) {
                Some(record) => batch.insert(record_key(name), encode(record).map_err(|e| write_failed(&e))?),
                None => batch.remove(record_key(name)),
            }
        }
        self.tree.apply_batch(batch).map_err(|e| write_failed(&e))?;
        self.db.flush_async().await.map_err(|e| write_failed(&e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let machine = self.applied.read().await.clone();
        let data = crate::format::encode_machine(&machine)
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        let snapshot_id = match machine.last_applied {
            Some(last) => format!("{}-{}-{}", last.leader_id, last.index, machine.config.revision),
            None => format!("--{}", machine.config.revision),
        };
        let meta = SnapshotMeta { last_log_id: machine.last_applied, last_membership: machine.membership, snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let bytes =
            encode(&stored).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        self.tree
            .insert("snapshot", bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>)> {
        let machine = self.applied.read().await;
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<WriteOutcome>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut machine = self.applied.write().await;
        let mut outcomes = Vec::new();
        let mut changes = Changes::default();
        for entry in entries {
            machine.last_applied = Some(entry.log_id);
            let revision = machine.config.revision;
            let unchanged = CommandOutcome { revision, changed: false, created: None, rejected: None };
            outcomes.push(match entry.payload {
                EntryPayload::Blank => WriteOutcome::Config(unchanged),
                EntryPayload::Normal(Write::Config(proposal)) => {
                    changes.config = true;
                    WriteOutcome::Config(machine.config.apply(&proposal))
                }
                EntryPayload::Normal(Write::Idempotency(command)) => {
                    let (answer, changed) = machine.idempotency.apply(&command);
                    changes.records.extend(changed);
                    WriteOutcome::Idempotency(answer)
                }
                EntryPayload::Membership(membership) => {
                    machine.membership = StoredMembership::new(Some(entry.log_id), membership);
                    WriteOutcome::Config(unchanged)
                }
            });
        }
        self.persist(&machine, &changes).await?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let installed = crate::format::decode_machine(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        let machine = AppliedMachine {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            config: installed.config,
            idempotency: installed.idempotency,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let bytes =
            encode(&stored).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        self.tree
            .insert("snapshot", bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        self.persist(&machine, &Changes { config: true, records: Vec::new(), all_records: true }).await?;
        *self.applied.write().await = machine;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) =
            self.tree.get("snapshot").map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            let (log, machine) = open(dir.path()).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
            Ok((dir, log, machine))
        }
    }

    /// openraft's own conformance suite for log and state-machine storage.
    #[test]
    fn passes_the_openraft_storage_suite() {
        Suite::test_all(SledBuilder).unwrap();
    }

    #[tokio::test]
    async fn the_applied_state_survives_a_reopen() {
        use crate::state::{ConfigCommand, Proposal};
        let dir = tempfile::tempdir().unwrap();
        {
            let (_log, mut machine) = open(dir.path()).unwrap();
            let proposal = Write::Config(Proposal {
                expected_revision: None,
                command: ConfigCommand::Deploy {
                    api: "pets".into(),
                    definition: "id: pets".into(),
                    description: String::new(),
                    created_at_ms: 1,
                    created_by: String::new(),
                    stage: Some("prod".into()),
                    stage_variables: Default::default(),
                },
            });
            let entry = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
                payload: EntryPayload::Normal(proposal),
            };
            let out = machine.apply(vec![entry]).await.unwrap();
            assert!(matches!(&out[0], WriteOutcome::Config(o) if o.revision == 1));
        }
        // sled's flusher thread lets go of the lock shortly after the last handle is dropped.
        let mut reopened = open(dir.path());
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            reopened = open(dir.path());
        }
        let (_log, mut machine) = reopened.unwrap();
        let (last, _) = machine.applied_state().await.unwrap();
        assert_eq!(last.map(|l| l.index), Some(1));
        assert_eq!(machine.applied().read().await.config.apis["pets"].stages["prod"].deployment, 1);
    }

    async fn reopen(dir: &std::path::Path) -> (LogStore, StateMachine) {
        // sled's flusher thread lets go of the lock shortly after the last handle is dropped.
        for _ in 0..100 {
            if let Ok(store) = open(dir) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        open(dir).unwrap()
    }

    #[tokio::test]
    async fn idempotency_records_survive_a_reopen_and_travel_in_snapshots() {
        use crate::idempotency::{IdempotencyAnswer, IdempotencyCommand, record_name};
        let claim = |key: &str, index: u64| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Write::Idempotency(IdempotencyCommand::Claim {
                scope: "pay/prod".into(),
                key: key.into(),
                fingerprint: vec![7],
                node: 1,
                attempt: 1,
                now_ms: 1_000,
                lease_ms: 100,
                ttl_ms: 60_000,
                max_records: 10,
            })),
        };
        let dir = tempfile::tempdir().unwrap();
        let snapshot = {
            let (_log, mut machine) = open(dir.path()).unwrap();
            let out = machine.apply(vec![claim("a", 1), claim("b", 2)]).await.unwrap();
            assert_eq!(out[1], WriteOutcome::Idempotency(IdempotencyAnswer::Claimed));
            machine.build_snapshot().await.unwrap()
        };
        let (_log, mut machine) = reopen(dir.path()).await;
        {
            let applied = machine.applied();
            let applied = applied.read().await;
            assert_eq!(applied.idempotency.len(), 2);
            assert!(applied.idempotency.get(&record_name("pay/prod", "a")).is_some());
            assert_eq!(applied.config.revision, 0, "records are not configuration");
        }
        let out = machine.apply(vec![claim("a", 3)]).await.unwrap();
        assert!(matches!(out[0], WriteOutcome::Idempotency(IdempotencyAnswer::InFlight { .. })), "{out:?}");

        // A fresh member installs the snapshot: it has the records, and only those.
        let other = tempfile::tempdir().unwrap();
        let (log, mut fresh) = open(other.path()).unwrap();
        fresh.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert_eq!(fresh.applied().read().await.idempotency.len(), 2);
        drop((log, fresh));
        let (_log, fresh) = reopen(other.path()).await;
        assert_eq!(fresh.applied().read().await.idempotency.len(), 2);
    }
}
