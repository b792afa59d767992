//! Changing the membership: admitting a joining node, removing, promoting and readdressing
//! members, leaving, and the autopilot that makes caught-up learners voters.

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};

use super::*;

/// How long a membership change waits for another one still being committed before it is
/// refused: the autopilot's promotion of a new node and an operator's command can meet (a
/// node told to leave right after it joined), and the first commits within a few heartbeats.
const CHANGE_WAIT: Duration = Duration::from_secs(10);

impl ClusterMember {
    /// Admits a joining node (on the leader; others forward): checks the token, reserves an
    /// id, signs its certificate and adds it as a learner.
    pub async fn admit(&self, request: JoinRequest) -> Result<Admission, ClusterError> {
        let secrets =
            self.applied.read().await.config.cluster.clone().ok_or_else(|| setup("the cluster is not bootstrapped"))?;
        let token = JoinToken::parse(&request.token).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let given = sha256_hex(token.secret.as_bytes());
        if !meridian_dataplane::digest::constant_time_eq(given.as_bytes(), secrets.join_secret_sha256.as_bytes()) {
            return Err(ClusterError::Refused("wrong join token".into()));
        }
        if request.region.is_empty() || request.rpc_addr.is_empty() {
            return Err(ClusterError::Refused("a joining node needs a region and an RPC address".into()));
        }
        let outcome = self.propose(Proposal { expected_revision: None, command: ConfigCommand::RegisterNode }).await?;
        let node_id = outcome.created.ok_or_else(|| setup("no node id was assigned"))?;
        let ca_key = self.data_key.open(super::super::sealed::CA_KEY, &secrets.ca_key_sealed).map_err(setup)?;
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
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false).await?;
        }
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false).await
    }

    /// Makes learner `node` a voter (on the leader).
    pub async fn promote(&self, node: NodeId) -> Result<(), ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&node).is_none() {
            return Err(ClusterError::Refused(format!("node {node} is not a member")));
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([node])), true).await
    }

    /// Records new addresses for `node` in the membership (on the leader).
    pub async fn readdress(&self, node: NodeId, info: ClusterNode) -> Result<(), ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&node).is_none() {
            return Err(ClusterError::Refused(format!("node {node} is not a member")));
        }
        self.change(ChangeMembers::SetNodes(BTreeMap::from([(node, info)])), true).await
    }

    /// Commits a membership change (on the leader), waiting up to [`CHANGE_WAIT`] while
    /// another change is still being committed.
    async fn change(&self, members: ChangeMembers<NodeId, ClusterNode>, retain: bool) -> Result<(), ClusterError> {
        let waiting = tokio::time::Instant::now();
        loop {
            match self.raft.change_membership(members.clone(), retain).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if waiting.elapsed() < CHANGE_WAIT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(ClusterError::Refused(e.to_string())),
            }
        }
    }

    /// After a restart: if the membership still holds other addresses for this node (its
    /// configuration changed ports or addresses), has the leader record the current ones, so
    /// peers, probes and DNS use them. Retries until a leader takes it.
    pub(super) fn spawn_readdress(self: &Arc<Self>) {
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

    /// On the leader, promotes caught-up learners until there are three voters (five once
    /// the cluster has five or more nodes), preferring regions without a voter.
    pub(super) fn spawn_autopilot(self: &Arc<Self>) {
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
