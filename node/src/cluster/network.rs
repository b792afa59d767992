//! Raft's network: openraft messages over the node RPC service, one channel per peer.
//!
//! Messages are bincode-encoded openraft types carried in `RaftPayload`; a reply carries the
//! remote's `Result`, so a remote Raft error comes back as openraft's `RemoteError`.

use meridian_consensus::{ClusterNode, NodeId, TypeConfig};
use meridian_proto::RaftPayload;
use meridian_proto::node_client::NodeClient;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::tls::TlsConnector;

/// Encodes a value for an RPC payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

/// The largest node-to-node message (a snapshot chunk, a batch of log entries).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Decodes an RPC payload; malformed bytes are an error, never a panic. A length prefix
/// may claim at most [`MAX_MESSAGE`] bytes in all: without the limit, 13 bytes claiming a
/// string of 5·10¹⁷ bytes made the decoder allocate it and abort the process (found by the
/// `node_rpc_payloads` fuzz target).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let config = bincode::config::standard().with_limit::<MAX_MESSAGE>();
    bincode::serde::decode_from_slice(bytes, config).map(|(v, _)| v)
}

/// A lazily connecting channel to `addr` (`host:port`) over the given TLS connector.
pub fn channel(addr: &str, connector: TlsConnector) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        // Detect a dead peer (or a healed partition's stale connection) within seconds.
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .keep_alive_timeout(std::time::Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Makes one [`PeerClient`] per peer.
#[derive(Clone)]
pub struct Network {
    pub connector: TlsConnector,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> PeerClient {
        let client = channel(&node.rpc_addr, self.connector.clone())
            .map(|c| NodeClient::new(c).max_decoding_message_size(MAX_MESSAGE))
            .map_err(|e| e.to_string());
        PeerClient { target, client }
    }
}

/// Raft's connection to one peer.
pub struct PeerClient {
    target: NodeId,
    client: Result<NodeClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RaftCall,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ClusterNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&TransportError(e.clone())))),
        };
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftPayload { payload });
        message.set_timeout(option.hard_ttl());
        let reply = match kind {
            RaftCall::Vote => client.vote(message).await,
            RaftCall::Append => client.append_entries(message).await,
            RaftCall::Snapshot => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| {
            RPCError::Unreachable(Unreachable::new(&TransportError(format!("{}: {}", status.code(), status.message()))))
        })?;
        let result: Result<Resp, E> =
            decode(&reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum RaftCall {
    Vote,
    Append,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        self.call(RaftCall::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RaftCall::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        self.call(RaftCall::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_claiming_a_huge_length_is_refused_without_allocating_it() {
        // The fuzzer's input: a gossip batch whose first string claims 5·10¹⁷ bytes.
        let bytes = [1, 253, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0];
        assert!(decode::<Vec<meridian_dataplane::limits::limiter::Observation>>(&bytes).is_err());
        assert!(crate::cluster::gossip::decode_observations(&bytes).is_err());
        assert!(decode::<Vec<String>>(&[1, 252, 0, 0, 0, 64]).is_err(), "a 1 GiB string");
    }
}
