//! A cluster member: its Raft instance, its identity, and the operations the admin API and
//! the RPC service need (propose with forwarding to the leader, join, leave, status).

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
use crate::config::ClusterSettings;
use crate::digest::sha256_hex;
use crate::idempotency::{RecordLog, Submitted};

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
    crate::files::write_private(path, bytes).map_err(|e| setup(format!("{}: {e}", path.display())))
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
        crate::observe::log::set_label(format!("{}/{id}", advertised.region));
        Ok(member)
    }

    /// The DNS service, once the node serves DNS.
    pub fn dns(&self) -> Option<&Arc<super::dns::DnsService>> {
        self.handlers.dns.get()
    }

    /// Empties what `flush` names on every other member, at once; each member's outcome.
    pub async fn flush_caches_elsewhere(
        &self,
        flush: &crate::response_cache::Flush,
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
    pub fn limiter(&self) -> &Arc<crate::limits::limiter::Limiter> {
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

    /// Admits a joining node (on the leader; others forward): checks the token, reserves an
    /// id, signs its certificate and adds it as a learner.
    pub async fn admit(&self, request: JoinRequest) -> Result<Admission, ClusterError> {
        let secrets =
            self.applied.read().await.config.cluster.clone().ok_or_else(|| setup("the cluster is not bootstrapped"))?;
        let token = JoinToken::parse(&request.token).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let given = sha256_hex(token.secret.as_bytes());
        if !crate::digest::constant_time_eq(given.as_bytes(), secrets.join_secret_sha256.as_bytes()) {
            return Err(ClusterError::Refused("wrong join token".into()));
        }
        if request.region.is_empty() || request.rpc_addr.is_empty() {
            return Err(ClusterError::Refused("a joining node needs a region and an RPC address".into()));
        }
        let outcome = self.propose(Proposal { expected_revision: None, command: ConfigCommand::RegisterNode }).await?;
        let node_id = outcome.created.ok_or_else(|| setup("no node id was assigned"))?;
        let ca_key = self.data_key.open(super::sealed::CA_KEY, &secrets.ca_key_sealed).map_err(setup)?;
        let key_pem = String::from_utf8(ca_key).map_err(|_| setup("the sealed CA key is not PEM"))?;
        let ca = ClusterCa { cert_pem: secrets.ca_cert_pem.clone(), key_pem };
        let certificate = ca.sign_request(&request.csr_pem).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let node = ClusterNode {
            region: request.region,
            rpc_addr: request.rpc_addr,
            gateway_addr: request.gateway_addr,
            admin_addr: request.admin_addr,
            dns_addr: request.dns_addr,
        };
        self.raft.add_learner(node_id, node, false).await.map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(Admission {
            node_id,
            certificate_pem: certificate,
            ca_pem: secrets.ca_cert_pem,
            data_key: self.data_key.clone(),
        })
    }

    /// Removes `node` from the cluster (on the leader).
    pub async fn remove(&self, node: NodeId) -> Result<(), ClusterError> {
        let voters: BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if voters.contains(&node) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                .await
                .map_err(|e| ClusterError::Refused(e.to_string()))?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(())
    }

    /// Makes learner `node` a voter (on the leader).
    pub async fn promote(&self, node: NodeId) -> Result<(), ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&node).is_none() {
            return Err(ClusterError::Refused(format!("node {node} is not a member")));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), true)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(())
    }

    /// Records new addresses for `node` in the membership (on the leader).
    pub async fn readdress(&self, node: NodeId, info: ClusterNode) -> Result<(), ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&node).is_none() {
            return Err(ClusterError::Refused(format!("node {node} is not a member")));
        }
        self.raft
            .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(node, info)])), true)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(())
    }

    /// After a restart: if the membership still holds other addresses for this node (its
    /// configuration changed ports or addresses), has the leader record the current ones, so
    /// peers, probes and DNS use them. Retries until a leader takes it.
    fn spawn_readdress(self: &Arc<Self>) {
        let member = self.clone();
        tokio::spawn(async move {
            for _ in 0..120 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let recorded =
                    member.raft.metrics().borrow().membership_config.membership().get_node(&member.id).cloned();
                match recorded {
                    Some(node) if node == member.me => return,
                    Some(_) => match member.change_membership(member.id, Action::Readdress).await {
                        Ok(()) => {
                            tracing::info!(gateway = %member.me.gateway_addr, dns = %member.me.dns_addr, "addresses updated in the membership");
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "address update not taken yet"),
                    },
                    None => {}
                }
            }
        });
    }

    /// Leaves the cluster: asks the leader to remove this node.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.change_membership(self.id, Action::Remove).await?;
        self.left.send_replace(true);
        Ok(())
    }

    /// Resolves once this node has left the cluster (its own `leave`, committed).
    pub async fn has_left(&self) {
        let mut left = self.left.subscribe();
        let _ = left.wait_for(|l| *l).await;
    }

    /// Removes this member's state from its data directory (after it left the cluster and
    /// stopped): the directory can then found or join a cluster again. Returns what was
    /// removed.
    pub fn clear_data_dir(&self) -> Vec<PathBuf> {
        let dir = &self.data_dir;
        let mut removed = Vec::new();
        for path in [record_path(dir), tls_dir(dir), dir.join("raft"), dir.join("quotas.bin")] {
            let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match result {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove"),
            }
        }
        removed
    }

    /// Runs a membership change on the leader, relaying it when this node does not lead.
    /// (For `Readdress`, `node` must be this node: its current addresses are sent.)
    pub async fn change_membership(&self, node: NodeId, action: Action) -> Result<(), ClusterError> {
        // A node that just joined or restarted learns the leader within a heartbeat or two.
        let waiting = tokio::time::Instant::now();
        let (leader, leader_node) = loop {
            if let Some(known) = self.leader() {
                break known;
            }
            if waiting.elapsed() >= LEADERLESS_LIMIT {
                return Err(ClusterError::NoLeader(LEADERLESS_LIMIT));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if leader == self.id {
            return match action {
                Action::Remove => self.remove(node).await,
                Action::Promote => self.promote(node).await,
                Action::Readdress => self.readdress(node, self.me.clone()).await,
            };
        }
        let mut client = self.peer_client(&leader_node.rpc_addr)?;
        // Only a node's own addresses travel: a member cannot readdress another.
        let info = if action == Action::Readdress { encode(&self.me).map_err(setup)? } else { Vec::new() };
        let reply = client
            .change_membership(MembershipRequest { node_id: node, action: action.into(), node: info })
            .await
            .map_err(|s| {
                self.forget_peer(&leader_node.rpc_addr);
                ClusterError::Unreachable { addr: leader_node.rpc_addr.clone(), message: s.message().into() }
            })?
            .into_inner();
        if reply.error.is_empty() { Ok(()) } else { Err(ClusterError::Refused(reply.error)) }
    }

    /// The cluster's view with every reachable member's own revision and state (asked over
    /// RPC, half a second each at most), as JSON.
    pub async fn status_with_peers(&self) -> serde_json::Value {
        let mut status = self.status().await;
        let peers: Vec<(u64, String)> = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m["id"].as_u64()?, m["rpc"].as_str()?.to_string())))
            .filter(|(id, _)| *id != self.id)
            .collect();
        let asks = peers.into_iter().map(|(id, rpc)| {
            let client = self.peer_client(&rpc);
            async move {
                let mut client = client.ok()?;
                let reply =
                    tokio::time::timeout(Duration::from_millis(500), client.status(meridian_proto::StatusRequest {}))
                        .await
                        .ok()?
                        .ok()?;
                let view: serde_json::Value = serde_json::from_str(&reply.into_inner().json).ok()?;
                Some((id, view))
            }
        });
        let views: BTreeMap<u64, serde_json::Value> =
            futures_util::future::join_all(asks).await.into_iter().flatten().collect();
        let own = (status["revision"].clone(), status["state"].clone());
        if let Some(members) = status["members"].as_array_mut() {
            for m in members {
                let id = m["id"].as_u64().unwrap_or(0);
                let (revision, state) = if id == self.id {
                    own.clone()
                } else {
                    match views.get(&id) {
                        Some(v) => (v["revision"].clone(), v["state"].clone()),
                        None => (serde_json::Value::Null, serde_json::Value::String("unreachable".into())),
                    }
                };
                m["revision"] = revision;
                m["state"] = state;
            }
        }
        status
    }

    /// This node's view of the cluster, as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let revision = self.applied.read().await.config.revision;
        let replication = metrics.replication.clone().unwrap_or_default();
        let members: Vec<serde_json::Value> = membership
            .nodes()
            .map(|(id, node)| {
                let matched = replication.get(id).and_then(|m| m.map(|l| l.index));
                serde_json::json!({
                    "id": id,
                    "region": node.region,
                    "role": if voters.contains(id) { "voter" } else { "learner" },
                    "rpc": node.rpc_addr,
                    "gateway": node.gateway_addr,
                    "admin": node.admin_addr,
                    "matched_log_index": matched,
                    "lag": matched.map(|m| last_log.saturating_sub(m)),
                })
            })
            .collect();
        serde_json::json!({
            "node_id": self.id,
            "region": self.me.region,
            "state": format!("{:?}", metrics.state),
            "leader": metrics.current_leader,
            "term": metrics.current_term,
            "last_log_index": metrics.last_log_index,
            "last_applied_index": metrics.last_applied.map(|l| l.index),
            "snapshot_index": metrics.snapshot.map(|l| l.index),
            "purged_index": metrics.purged.map(|l| l.index),
            "revision": revision,
            "connected_to_leader": metrics.current_leader.is_some(),
            "members": members,
        })
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

    /// On the leader, promotes caught-up learners until there are three voters (five once
    /// the cluster has five or more nodes), preferring regions without a voter.
    fn spawn_autopilot(self: &Arc<Self>) {
        self.spawn_leader_watch();
        let member = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(member) = member.upgrade() else { return };
                if member.raft.metrics().borrow().state != ServerState::Leader {
                    continue;
                }
                if let Err(e) = member.promote_learners().await {
                    tracing::debug!(error = %e, "learner promotion postponed");
                }
            }
        });
    }

    /// Logs leadership changes and exports whether this node knows a leader
    /// (`meridian_cluster_leader_known`): a node cut off from the leader keeps serving its
    /// last applied configuration, and this says so.
    fn spawn_leader_watch(&self) {
        let mut metrics = self.raft.metrics();
        let id = self.id;
        tokio::spawn(async move {
            let known = metrics::gauge!("meridian_cluster_leader_known");
            let mut last = None;
            loop {
                let (leader, term) = {
                    let m = metrics.borrow_and_update();
                    (m.current_leader, m.current_term)
                };
                if leader != last {
                    match leader {
                        Some(l) => tracing::info!(node = id, leader = l, term, "cluster leader"),
                        None => {
                            tracing::warn!(node = id, term, "no cluster leader: serving the last applied configuration")
                        }
                    }
                    known.set(if leader.is_some() { 1.0 } else { 0.0 });
                    last = leader;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    async fn promote_learners(&self) -> Result<(), ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes: Vec<(NodeId, ClusterNode)> = membership.nodes().map(|(i, n)| (*i, n.clone())).collect();
        let target = if nodes.len() >= 5 { 5 } else { 3 };
        if voters.len() >= target {
            return Ok(());
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.unwrap_or_default();
        let voter_regions: BTreeSet<String> =
            nodes.iter().filter(|(i, _)| voters.contains(i)).map(|(_, n)| n.region.clone()).collect();
        let mut candidates: Vec<&(NodeId, ClusterNode)> = nodes
            .iter()
            .filter(|(i, _)| !voters.contains(i))
            .filter(|(i, _)| replication.get(i).and_then(|m| *m).is_some_and(|m| last.saturating_sub(m.index) <= 10))
            .collect();
        candidates.sort_by_key(|(i, n)| (voter_regions.contains(&n.region), *i));
        let Some((id, node)) = candidates.first() else { return Ok(()) };
        tracing::info!(node = id, region = %node.region, "promoting learner to voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(())
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
