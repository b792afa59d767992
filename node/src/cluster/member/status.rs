//! What a member says of the cluster: its own view (`status`) and, for operators, the view
//! with every peer's answer (`status_with_peers`).

use super::*;

impl ClusterMember {
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
}
