//! A cluster member: its Raft instance, its identity, and the operations the admin API and
//! the RPC service need: founding, joining and resuming, proposals forwarded to the leader,
//! heartbeats and cache flushes here; membership changes (admission, removal, promotion,
//! leaving, the autopilot) in `member/membership.rs`; the status views in `member/status.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_consensus::idempotency::{IdempotencyCommand, IdempotencyRecord};
use meridian_consensus::store::{self, AppliedMachine};
use meridian_consensus::{
    ClusterNode, ClusterSecrets, CommandOutcome, ConfigCommand, NodeId, Proposal, TypeConfig, Write, WriteOutcome,
};
use meridian_proto::membership_request::Action;
use meridian_proto::node_client::NodeClient;
use meridian_proto::{JoinRequest, MembershipRequest, ProposeRequest};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tonic::transport::Channel;

use super::network::{Network, channel, decode, encode};
use super::pki::{ClusterCa, JoinToken, NodeIdentity, new_request, random_secret};
use super::rpc;
use super::sealed::DataKey;
use super::tls::{TlsConnector, joining_client_config, member_client_config, server_config};
use meridian_dataplane::config::ClusterSettings;
use meridian_dataplane::digest::sha256_hex;
use meridian_dataplane::idempotency::{RecordLog, Submitted};

mod connections;
mod membership;
mod status;

/// How long a write may wait for a quorum before failing.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits while this node knows no leader (an election takes about 1-2 s).
pub const LEADERLESS_LIMIT: Duration = Duration::from_secs(3);

/// Errors of cluster operations, each with a message an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Setup(String),
    #[error("no leader could commit the write within {0:?} (is a quorum of voters up?)")]
    NoQuorum(Duration),
    #[error("no leader for {0:?}: this node is cut off from a quorum of voters; the write was not made")]
    NoLeader(Duration),
    #[error("the write was refused: {0}")]
    Refused(String),
    #[error("cannot reach {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("storage: {0}")]
    Storage(String),
}

fn setup(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Setup(e.to_string())
}

/// What a node remembers about itself between runs (`<data_dir>/node.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    node_id: NodeId,
    region: String,
}

/// What a joining node receives: its id, its certificate, the CA, and the data key.
#[derive(Debug)]
pub struct Admission {
    pub node_id: NodeId,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub data_key: DataKey,
}

/// The addresses a member advertises.
#[derive(Debug, Clone)]
pub struct Advertised {
    pub region: String,
    pub gateway: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub dns: Option<SocketAddr>,
}

/// A running cluster member.
pub struct ClusterMember {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub applied: Arc<RwLock<AppliedMachine>>,
    pub me: ClusterNode,
    connector: TlsConnector,
    data_dir: PathBuf,
    /// Opens the secrets sealed in the replicated state.
    data_key: DataKey,
    /// What peers' data-plane calls reach (the RPC server's handlers).
    handlers: rpc::Handlers,
    /// Set once this node's removal from the cluster has committed: the process then ends.
    left: tokio::sync::watch::Sender<bool>,
    /// How often a leader sends heartbeats (`cluster.heartbeat`).
    pub heartbeat: Duration,
    /// One channel per peer for forwarded writes, membership changes and status: a new
    /// connection per call costs TCP and TLS handshakes, several round trips over a WAN
    /// (at 80 ms that held 8 concurrent writers to 6 writes a second).
    peers: std::sync::Mutex<HashMap<String, NodeClient<Channel>>>,
}

/// How long a replication request may take, from `cluster.heartbeat`: three heartbeats, and
/// never less than 500 ms, so that the round trips of a real WAN (80 ms across a continent,
/// 200-300 ms around the world) fit on default settings.
pub fn replication_timeout(heartbeat: Duration) -> Duration {
    (heartbeat * 3).max(Duration::from_millis(500))
}

/// The largest round trip between voters that `heartbeat` carries: what replication allows,
/// less a margin for the request's own work.
pub fn carried_round_trip(heartbeat: Duration) -> Duration {
    replication_timeout(heartbeat) * 4 / 5
}

/// Raft's timing. openraft gives every AppendEntries one `heartbeat_interval` to complete
/// (and sends heartbeats at that interval), so its interval is the replication timeout,
/// which must exceed the longest round trip between voters. The heartbeats that keep
/// followers from electing are sent separately every `heartbeat`
/// ([`ClusterMember::spawn_heartbeats`]), so elections need not wait for the long timeout: a
/// follower calls an election after the replication timeout plus one to three heartbeats
/// without word (0.65-0.95 s on defaults), and a vote request gets that long too.
fn raft_config(snapshot_after_logs: u64, heartbeat: Duration) -> Result<Arc<openraft::Config>, ClusterError> {
    let replication = replication_timeout(heartbeat).as_millis() as u64;
    let heartbeat = heartbeat.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "meridian".into(),
        heartbeat_interval: replication,
        election_timeout_min: replication + heartbeat,
        election_timeout_max: replication + 3 * heartbeat,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_after_logs),
        max_in_snapshot_log_to_keep: snapshot_after_logs / 5,
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(setup)
}

fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

fn data_key_path(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("data.key")
}

fn save_identity(data_dir: &Path, identity: &NodeIdentity, data_key: &DataKey) -> Result<(), ClusterError> {
    let dir = tls_dir(data_dir);
    super::data_dir::create_private(&dir).map_err(setup)?;
    std::fs::write(dir.join("node.pem"), &identity.cert_pem).map_err(setup)?;
    std::fs::write(dir.join("ca.pem"), &identity.ca_pem).map_err(setup)?;
    write_private(&dir.join("node.key"), identity.key_pem.as_bytes())?;
    data_key.save(&data_key_path(data_dir)).map_err(setup)
}

/// Writes a file only this user can read (whatever the umask).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    meridian_dataplane::files::write_private(path, bytes).map_err(|e| setup(format!("{}: {e}", path.display())))
}

fn load_identity(data_dir: &Path) -> Result<NodeIdentity, ClusterError> {
    let dir = tls_dir(data_dir);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| setup(format!("{}: {e}", dir.join(name).display())))
    };
    Ok(NodeIdentity { cert_pem: read("node.pem")?, key_pem: read("node.key")?, ca_pem: read("ca.pem")? })
}

/// Refuses to join through `peer` when the round trip to it is longer than Raft
/// replication allows with `heartbeat`: the node would join and then never receive a write.
/// The message names the setting and the measured time.
async fn check_round_trip(peer: &str, ca_fingerprint: &str, heartbeat: Duration) -> Result<(), ClusterError> {
    let carried = carried_round_trip(heartbeat);
    let config = joining_client_config(ca_fingerprint).map_err(setup)?;
    match super::tls::handshake_round_trip(peer, config).await {
        Ok(rtt) if rtt > carried => Err(setup(format!(
            "the round trip to {peer} is {} ms, longer than Raft replication allows with cluster.heartbeat {} ms \
             ({} ms): set `cluster.heartbeat` to at least {} ms in every member's file and restart them, then join",
            rtt.as_millis(),
            heartbeat.as_millis(),
            carried.as_millis(),
            (rtt.as_millis() * 5 / 12 + 10).div_ceil(10) * 10,
        ))),
        // An unreachable peer is reported by the join call itself, with its own error.
        _ => Ok(()),
    }
}

/// What `init` or `join` is creating in a data directory, removed again if it fails before
/// the member is up, so that they are all-or-nothing: a failed attempt (a busy port, a
/// refused token) leaves nothing that would make the next one refuse or hang.
struct Creating {
    paths: Vec<PathBuf>,
    done: bool,
}

impl Creating {
    fn new(data_dir: &Path) -> Creating {
        let mut paths = Vec::new();
        if !data_dir.exists() {
            paths.push(data_dir.to_path_buf());
        }
        paths.extend([record_path(data_dir), tls_dir(data_dir), data_dir.join("raft")]);
        Creating { paths, done: false }
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for path in self.paths.iter().rev() {
            let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove what a failed attempt created");
            }
        }
    }
}

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// Whether `data_dir` already holds a member's state.
pub fn is_initialized(data_dir: &Path) -> bool {
    record_path(data_dir).is_file()
}

impl ClusterMember {
    /// Founds a new cluster: makes its CA and join secret, initializes Raft with this node as
    /// the only voter and records the secrets. Returns the member and the join token.
    pub async fn init(
        settings: &ClusterSettings,
        advertised: Advertised,
        handlers: rpc::Handlers,
    ) -> Result<(Arc<Self>, String), ClusterError> {
        if is_initialized(&settings.data_dir) {
            return Err(setup(format!(
                "{} already holds a cluster member: start it with `meridian serve`",
                settings.data_dir.display()
            )));
        }
        let creating = Creating::new(&settings.data_dir);
        super::data_dir::create_private(&settings.data_dir).map_err(setup)?;
        let ca = ClusterCa::generate().map_err(setup)?;
        let identity = ca.issue_identity().map_err(setup)?;
        let secret = random_secret().map_err(setup)?;
        let token = JoinToken { secret: secret.clone(), ca_fingerprint: sha256_hex_of_pem(&ca.cert_pem)? };
        let data_key = DataKey::generate().map_err(setup)?;
        let ca_key_sealed = data_key.seal(super::sealed::CA_KEY, ca.key_pem.as_bytes()).map_err(setup)?;
        save_identity(&settings.data_dir, &identity, &data_key)?;
        write_record(&settings.data_dir, &NodeRecord { node_id: 1, region: advertised.region.clone() })?;
        let member = Self::start(1, identity, data_key, settings, &advertised, handlers).await?;
        let members = BTreeMap::from([(1, member.me.clone())]);
        member.raft.initialize(members).await.map_err(setup)?;
        let secrets = ClusterSecrets {
            ca_cert_pem: ca.cert_pem,
            ca_key_sealed,
            join_secret_sha256: sha256_hex(secret.as_bytes()),
        };
        member.propose(Proposal { expected_revision: None, command: ConfigCommand::Bootstrap { secrets } }).await?;
        creating.done();
        member.spawn_autopilot();
        Ok((member, token.render()))
    }

    /// Joins an existing cluster through `peer` with a join token.
    pub async fn join(
        settings: &ClusterSettings,
        advertised: Advertised,
        peer: &str,
        token: &str,
        handlers: rpc::Handlers,
    ) -> Result<Arc<Self>, ClusterError> {
        if is_initialized(&settings.data_dir) {
            return Err(setup(format!(
                "{} already holds a cluster member: start it with `meridian serve`",
                settings.data_dir.display()
            )));
        }
        let parsed = JoinToken::parse(token).map_err(setup)?;
        check_round_trip(peer, &parsed.ca_fingerprint, settings.heartbeat).await?;
        let (key_pem, csr_pem) = new_request().map_err(setup)?;
        let connector = TlsConnector::new(joining_client_config(&parsed.ca_fingerprint).map_err(setup)?);
        let mut client = NodeClient::new(channel(peer, connector).map_err(setup)?);
        let request = JoinRequest {
            token: token.trim().to_string(),
            region: advertised.region.clone(),
            csr_pem,
            rpc_addr: settings.advertise_rpc.clone(),
            gateway_addr: advertised.gateway.map(|a| a.to_string()).unwrap_or_default(),
            admin_addr: advertised.admin.to_string(),
            dns_addr: advertised.dns.map(|a| a.to_string()).unwrap_or_default(),
        };
        let reply = tokio::time::timeout(WRITE_TIMEOUT, client.join(request))
            .await
            .map_err(|_| ClusterError::Unreachable { addr: peer.into(), message: "no answer".into() })?
            .map_err(|s| ClusterError::Unreachable { addr: peer.into(), message: s.message().to_string() })?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(ClusterError::Refused(reply.error));
        }
        if sha256_hex_of_pem(&reply.ca_pem)? != parsed.ca_fingerprint {
            return Err(setup("the CA in the join reply does not match the token"));
        }
        let data_key = DataKey::from_bytes(&reply.data_key)
            .map_err(|e| setup(format!("the join reply carries no usable cluster data key ({e})")))?;
        let creating = Creating::new(&settings.data_dir);
        super::data_dir::create_private(&settings.data_dir).map_err(setup)?;
        let identity = NodeIdentity { cert_pem: reply.certificate_pem, key_pem, ca_pem: reply.ca_pem };
        save_identity(&settings.data_dir, &identity, &data_key)?;
        write_record(&settings.data_dir, &NodeRecord { node_id: reply.node_id, region: advertised.region.clone() })?;
        let member = Self::start(reply.node_id, identity, data_key, settings, &advertised, handlers).await?;
        creating.done();
        member.spawn_autopilot();
        Ok(member)
    }

    /// Restarts a member from its data folder.
    pub async fn resume(
        settings: &ClusterSettings,
        advertised: Advertised,
        handlers: rpc::Handlers,
    ) -> Result<Arc<Self>, ClusterError> {
        super::data_dir::check_private(&settings.data_dir).map_err(setup)?;
        let text = std::fs::read_to_string(record_path(&settings.data_dir)).map_err(setup)?;
        let record: NodeRecord = serde_json::from_str(&text).map_err(setup)?;
        let identity = load_identity(&settings.data_dir)?;
        let data_key = DataKey::load(&data_key_path(&settings.data_dir)).map_err(setup)?;
        let advertised = Advertised { region: record.region.clone(), ..advertised };
        let member = Self::start(record.node_id, identity, data_key, settings, &advertised, handlers).await?;
        member.spawn_autopilot();
        member.spawn_readdress();
        Ok(member)
    }

    async fn start(
        id: NodeId,
        identity: NodeIdentity,
        data_key: DataKey,
        settings: &ClusterSettings,
        advertised: &Advertised,
        handlers: rpc::Handlers,
    ) -> Result<Arc<Self>, ClusterError> {
        // The RPC port first: if it is taken, nothing has been opened or written yet.
        let listener = TcpListener::bind(settings.rpc_listen)
            .await
            .map_err(|e| setup(format!("cannot listen for node RPC on {}: {e}", settings.rpc_listen)))?;
        let (log, machine) =
            store::open(&settings.data_dir.join("raft")).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let applied = machine.applied();
        let connector =
            TlsConnector::new(member_client_config(&identity).map_err(setup)?).from_address(settings.rpc_listen.ip());
        let network = Network { connector: connector.clone() };
        let raft = Raft::new(id, raft_config(settings.snapshot_after_logs, settings.heartbeat)?, network, log, machine)
            .await
            .map_err(setup)?;
        let me = ClusterNode {
            region: advertised.region.clone(),
            rpc_addr: settings.advertise_rpc.clone(),
            gateway_addr: advertised.gateway.map(|a| a.to_string()).unwrap_or_default(),
            admin_addr: advertised.admin.to_string(),
            dns_addr: advertised.dns.map(|a| a.to_string()).unwrap_or_default(),
        };
        let member = Arc::new(ClusterMember {
            id,
            raft,
            applied,
            me,
            connector,
            data_dir: settings.data_dir.clone(),
            data_key,
            handlers: handlers.clone(),
            left: tokio::sync::watch::Sender::new(false),
            heartbeat: settings.heartbeat,
            peers: Default::default(),
        });
        let tls = server_config(&identity).map_err(setup)?;
        tokio::spawn(rpc::serve(listener, tls, member.clone(), handlers));
        member.spawn_heartbeats();
        crate::log::set_label(format!("{}/{id}", advertised.region));
        Ok(member)
    }

    /// The DNS service, once the node serves DNS.
    pub fn dns(&self) -> Option<&Arc<super::dns::DnsService>> {
        self.handlers.dns.get()
    }

    /// Empties what `flush` names on every other member, at once; each member's outcome.
    pub async fn flush_caches_elsewhere(
        &self,
        flush: &meridian_dataplane::response_cache::Flush,
    ) -> Vec<(NodeId, Result<(), String>)> {
        let nodes: Vec<(NodeId, ClusterNode)> = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
        };
        let mut calls = tokio::task::JoinSet::new();
        for (id, node) in nodes.into_iter().filter(|(id, _)| *id != self.id) {
            let client = self.peer_client(&node.rpc_addr);
            let request = meridian_proto::CacheFlush {
                api: flush.api.clone(),
                stage: flush.stage.clone(),
                route: flush.route.clone().unwrap_or_default(),
            };
            calls.spawn(async move {
                let outcome = match client {
                    Ok(mut client) => {
                        match tokio::time::timeout(Duration::from_secs(2), client.flush_cache(request)).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(status)) => Err(status.message().to_string()),
                            Err(_) => Err("no answer within 2s".to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                (id, outcome)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = calls.join_next().await {
            if let Ok(outcome) = done {
                outcomes.push(outcome);
            }
        }
        outcomes.sort_by_key(|(id, _)| *id);
        outcomes
    }

    /// The limiter whose counters this member gossips.
    pub fn limiter(&self) -> &Arc<meridian_dataplane::limits::limiter::Limiter> {
        &self.handlers.limiter
    }

    /// The TLS connector members use to call each other.
    pub fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn peer_client(&self, addr: &str) -> Result<NodeClient<Channel>, ClusterError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let client = channel(addr, self.connector.clone())
            .map(NodeClient::new)
            .map_err(|e| ClusterError::Unreachable { addr: addr.into(), message: e.to_string() })?;
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Drops the channel to `addr` after a failed call: the next call connects afresh.
    fn forget_peer(&self, addr: &str) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    /// The current leader and how to reach it.
    pub fn leader(&self) -> Option<(NodeId, ClusterNode)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Commits a configuration proposal: directly when this node leads, else through the
    /// leader. Fails after [`WRITE_TIMEOUT`] without a quorum.
    pub async fn propose(&self, proposal: Proposal) -> Result<CommandOutcome, ClusterError> {
        match self.write(Write::Config(proposal)).await? {
            WriteOutcome::Config(outcome) => Ok(outcome),
            WriteOutcome::Idempotency(_) => {
                Err(setup("the state machine answered a configuration write with a record"))
            }
        }
    }

    /// Commits a write (configuration or idempotency records): directly when this node
    /// leads, else through the leader. Fails after [`WRITE_TIMEOUT`] without a quorum.
    pub async fn write(&self, write: Write) -> Result<WriteOutcome, ClusterError> {
        let attempt = async {
            let mut leaderless_since: Option<tokio::time::Instant> = None;
            loop {
                // A node that has known no leader for a while is on the minority side of a
                // partition (or the cluster has lost its quorum): fail now, cleanly, rather
                // than hold the write until the partition heals.
                let leader = self.leader();
                if leader.is_none() {
                    let since = *leaderless_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= LEADERLESS_LIMIT {
                        return Err(ClusterError::NoLeader(LEADERLESS_LIMIT));
                    }
                } else {
                    leaderless_since = None;
                }
                match leader {
                    Some((leader, _)) if leader == self.id => match self.raft.client_write(write.clone()).await {
                        Ok(response) => return Ok(response.data),
                        Err(e) if e.forward_to_leader().is_some() => {}
                        Err(e) => return Err(ClusterError::Refused(e.to_string())),
                    },
                    Some((_, node)) => {
                        let mut client = self.peer_client(&node.rpc_addr)?;
                        let payload = encode(&write).map_err(setup)?;
                        match client.propose(ProposeRequest { proposal: payload }).await {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                if reply.error.is_empty() {
                                    return decode::<WriteOutcome>(&reply.outcome).map_err(setup);
                                }
                                tracing::debug!(error = %reply.error, "leader refused a forwarded write; retrying");
                            }
                            Err(_) => self.forget_peer(&node.rpc_addr),
                        }
                    }
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(WRITE_TIMEOUT, attempt).await.map_err(|_| ClusterError::NoQuorum(WRITE_TIMEOUT))?
    }

    /// The key that opens (and seals) the secrets in the replicated state.
    pub fn data_key(&self) -> &DataKey {
        &self.data_key
    }

    /// On the leader, sends a heartbeat to every follower each `cluster.heartbeat`: openraft's
    /// own heartbeats come only once per replication timeout (see [`raft_config`]).
    fn spawn_heartbeats(self: &Arc<Self>) {
        let member = Arc::downgrade(self);
        let every = self.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(member) = member.upgrade() else { return };
                if member.raft.metrics().borrow().state != ServerState::Leader {
                    continue;
                }
                if member.raft.trigger().heartbeat().await.is_err() {
                    return;
                }
            }
        });
    }
}

fn write_record(data_dir: &Path, record: &NodeRecord) -> Result<(), ClusterError> {
    let text = serde_json::to_string_pretty(record).map_err(setup)?;
    std::fs::write(record_path(data_dir), text).map_err(setup)
}

fn sha256_hex_of_pem(pem: &str) -> Result<String, ClusterError> {
    super::pki::fingerprint(pem).map_err(setup)
}

/// Idempotency records are written through the log, like configuration: a claim is
/// committed by a quorum before its request is delivered.
impl RecordLog for ClusterMember {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn submit(&self, command: IdempotencyCommand) -> Submitted<'_> {
        Box::pin(async move {
            match self.write(Write::Idempotency(command)).await {
                Ok(WriteOutcome::Idempotency(answer)) => Ok(answer),
                Ok(WriteOutcome::Config(_)) => {
                    Err("the state machine answered a record with a configuration outcome".into())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn applied(
        &self,
        name: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<IdempotencyRecord>> + Send + '_>> {
        let name = name.to_string();
        Box::pin(async move { self.applied.read().await.idempotency.get(&name).cloned() })
    }
}
