//! Gossip of rate-limit counters between members.
//!
//! Every 50 ms a member sends the slots it counted since the last round to two random peers;
//! every second it sends everything it knows to one random peer (anti-entropy), so a lost
//! message or a healed partition is repaired within a second. Merges are G-counter merges, so
//! duplicates and reordering are harmless.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::GossipPayload;
use meridian_proto::node_client::NodeClient;

use super::member::ClusterMember;
use super::network::{channel, encode};
use meridian_dataplane::limits::limiter::{Limiter, Observation};

/// Largest gossip message accepted or sent (observations beyond it wait for the next round).
pub const MAX_OBSERVATIONS: usize = 20_000;
const ROUND: Duration = Duration::from_millis(50);
const FAN_OUT: usize = 2;

/// Starts gossiping `limiter`'s counters with the member's peers.
pub fn spawn(member: Arc<ClusterMember>, limiter: Arc<Limiter>) {
    tokio::spawn(async move {
        let mut clients: std::collections::HashMap<String, NodeClient<tonic::transport::Channel>> = Default::default();
        let mut round: u64 = 0;
        loop {
            tokio::time::sleep(ROUND).await;
            round += 1;
            let anti_entropy = round.is_multiple_of(20);
            if anti_entropy {
                // Fresh channels once a second: a connection that a partition stalled is not
                // waited for.
                clients.clear();
            }
            if anti_entropy {
                // A node that left is forgotten: nothing is held back for it any more.
                let members: Vec<u64> =
                    member.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect();
                limiter.retain_peers(&members);
            }
            let observations = if anti_entropy { limiter.snapshot() } else { limiter.take_deltas() };
            // Every fifth round goes to every peer even when there is nothing to say: a
            // heartbeat, so an idle member is not mistaken for a partitioned one.
            let everyone = round.is_multiple_of(5);
            if observations.is_empty() && !everyone {
                continue;
            }
            let peers: Vec<String> = {
                let metrics = member.raft.metrics().borrow().clone();
                metrics
                    .membership_config
                    .membership()
                    .nodes()
                    .filter(|(id, _)| **id != member.id)
                    .map(|(_, n)| n.rpc_addr.clone())
                    .collect()
            };
            if peers.is_empty() {
                continue;
            }
            let fan_out = if everyone {
                peers.len()
            } else if anti_entropy {
                1
            } else {
                FAN_OUT
            };
            let start = (round as usize).wrapping_mul(7) % peers.len();
            let chunks: Vec<&[Observation]> =
                if observations.is_empty() { vec![&[]] } else { observations.chunks(MAX_OBSERVATIONS).collect() };
            for chunk in chunks {
                let Ok(bytes) = encode(&chunk.to_vec()) else { continue };
                for i in 0..fan_out.min(peers.len()) {
                    let addr = &peers[(start + i) % peers.len()];
                    let client = match clients.get(addr) {
                        Some(c) => c.clone(),
                        None => match channel(addr, member.connector()) {
                            Ok(c) => {
                                let c = NodeClient::new(c);
                                clients.insert(addr.clone(), c.clone());
                                c
                            }
                            Err(_) => continue,
                        },
                    };
                    let payload = GossipPayload { node_id: member.id, observations: bytes.clone() };
                    let mut client = client;
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_millis(500), client.gossip(payload)).await;
                    });
                }
            }
        }
    });
}

/// Decodes a gossip message, refusing oversized or malformed ones.
pub fn decode_observations(bytes: &[u8]) -> Result<Vec<Observation>, String> {
    let observations: Vec<Observation> = super::network::decode(bytes).map_err(|e| format!("malformed gossip: {e}"))?;
    if observations.len() > MAX_OBSERVATIONS {
        return Err(format!("gossip message with {} observations (at most {MAX_OBSERVATIONS})", observations.len()));
    }
    Ok(observations)
}
