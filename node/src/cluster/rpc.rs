//! The node RPC server: Raft messages, forwarded writes, joins, status and leave.
//!
//! Every call but `Join` requires a client certificate from the cluster CA. Payloads are
//! decoded without trusting them: a malformed message is refused with `InvalidArgument` and
//! changes nothing.

use std::sync::Arc;
use std::time::Duration;

use meridian_consensus::{NodeId, TypeConfig, Write};
use meridian_proto::node_server::{Node, NodeServer};
use meridian_proto::{
    CacheFlush, GossipAck, GossipPayload, HealthPayload, JoinReply, JoinRequest, MembershipReply, MembershipRequest,
    ProposeReply, ProposeRequest, RaftPayload, StatusReply, StatusRequest,
};
use openraft::ServerState;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::member::ClusterMember;
use super::network::{decode, encode};
use super::tls::{PeerIdentity, RpcStream};

/// The node's services that peers' data-plane calls reach: given to the RPC server by
/// whatever wires the node together (`node::Node::rpc_handlers`), so the server knows the
/// calls and nothing of what serves them, and a new call is one more handler here.
#[derive(Clone)]
pub struct Handlers {
    /// Takes gossiped limit counters (`Gossip`).
    pub limiter: Arc<meridian_dataplane::limits::limiter::Limiter>,
    /// Empties what a `FlushCache` names.
    pub caches: Arc<meridian_dataplane::response_cache::ResponseCaches>,
    /// Serves calls for the WebSocket connections this node holds (`CallConnection`).
    pub connections: Arc<meridian_dataplane::connections::Connections>,
    /// Takes peers' health reports (`ReportHealth`) once the node serves DNS; reports that
    /// arrive before are dropped, as a node without DNS needs none.
    pub dns: DnsHandle,
}

/// The node's DNS service, once it runs one (set by `cluster::dns::DnsService::start`).
pub type DnsHandle = Arc<std::sync::OnceLock<Arc<super::dns::DnsService>>>;

struct NodeService {
    member: Arc<ClusterMember>,
    handlers: Handlers,
}

fn require_member<T>(request: &Request<T>) -> Result<(), Status> {
    match request.extensions().get::<PeerIdentity>() {
        Some(peer) if peer.verified => Ok(()),
        _ => Err(Status::unauthenticated("this call needs a cluster member's certificate")),
    }
}

fn payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    decode(bytes).map_err(|e| Status::invalid_argument(format!("malformed payload: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode(value).map(|payload| Response::new(RaftPayload { payload })).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_member(&request)?;
        let vote: VoteRequest<NodeId> = payload(&request.get_ref().payload)?;
        reply(&self.member.raft.vote(vote).await)
    }

    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_member(&request)?;
        let append: AppendEntriesRequest<TypeConfig> = payload(&request.get_ref().payload)?;
        reply(&self.member.raft.append_entries(append).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_member(&request)?;
        let chunk: InstallSnapshotRequest<TypeConfig> = payload(&request.get_ref().payload)?;
        reply(&self.member.raft.install_snapshot(chunk).await)
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeReply>, Status> {
        require_member(&request)?;
        let write: Write = payload(&request.get_ref().proposal)?;
        // Forwarded writes are served only by the leader: one hop, never a loop.
        if self.member.raft.metrics().borrow().state != ServerState::Leader {
            return Ok(Response::new(ProposeReply { outcome: Vec::new(), error: "not the leader".into() }));
        }
        let write = tokio::time::timeout(Duration::from_secs(10), self.member.raft.client_write(write)).await;
        let reply = match write {
            Ok(Ok(response)) => match encode(&response.data) {
                Ok(outcome) => ProposeReply { outcome, error: String::new() },
                Err(e) => ProposeReply { outcome: Vec::new(), error: e.to_string() },
            },
            Ok(Err(e)) => ProposeReply { outcome: Vec::new(), error: e.to_string() },
            Err(_) => ProposeReply { outcome: Vec::new(), error: "no quorum within 10s".into() },
        };
        Ok(Response::new(reply))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let join = request.into_inner();
        let refused = |error: String| Ok(Response::new(JoinReply { error, ..Default::default() }));
        match self.member.leader() {
            Some((leader, _)) if leader == self.member.id => match self.member.admit(join).await {
                Ok(admitted) => Ok(Response::new(JoinReply {
                    node_id: admitted.node_id,
                    certificate_pem: admitted.certificate_pem,
                    ca_pem: admitted.ca_pem,
                    error: String::new(),
                    data_key: admitted.data_key.as_bytes().to_vec(),
                })),
                Err(e) => refused(e.to_string()),
            },
            Some((_, node)) => {
                // Relay to the leader over this member's own authenticated channel.
                let channel = super::network::channel(&node.rpc_addr, self.member_connector())
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let mut client = meridian_proto::node_client::NodeClient::new(channel);
                client.join(join).await
            }
            None => refused("the cluster has no leader right now; try again".into()),
        }
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        require_member(&request)?;
        Ok(Response::new(StatusReply { json: self.member.status().await.to_string() }))
    }

    async fn gossip(&self, request: Request<GossipPayload>) -> Result<Response<GossipAck>, Status> {
        require_member(&request)?;
        let message = request.get_ref();
        let observations = super::gossip::decode_observations(&message.observations).map_err(|e| {
            tracing::warn!(from = message.node_id, error = %e, "gossip refused");
            metrics::counter!("meridian_limit_gossip_rejected_total").increment(1);
            Status::invalid_argument(e)
        })?;
        self.handlers.limiter.merge(message.node_id, &observations);
        Ok(Response::new(GossipAck {}))
    }

    async fn report_health(&self, request: Request<HealthPayload>) -> Result<Response<GossipAck>, Status> {
        require_member(&request)?;
        let report = super::dns::decode_report(&request.get_ref().report).map_err(|e| {
            metrics::counter!("meridian_dns_reports_rejected_total").increment(1);
            Status::invalid_argument(e)
        })?;
        if let Some(dns) = self.handlers.dns.get() {
            dns.receive(report);
        }
        Ok(Response::new(GossipAck {}))
    }

    async fn flush_cache(&self, request: Request<CacheFlush>) -> Result<Response<GossipAck>, Status> {
        require_member(&request)?;
        let flush = request.into_inner();
        let bounded = |s: &str| s.len() <= 256;
        if flush.api.is_empty()
            || flush.stage.is_empty()
            || ![&flush.api, &flush.stage, &flush.route].iter().all(|s| bounded(s))
        {
            return Err(Status::invalid_argument("a cache flush names an API and a stage (at most 256 bytes each)"));
        }
        let route = (!flush.route.is_empty()).then_some(flush.route);
        self.handlers.caches.flush(&meridian_dataplane::response_cache::Flush {
            api: flush.api,
            stage: flush.stage,
            route,
        });
        Ok(Response::new(GossipAck {}))
    }

    async fn call_connection(
        &self,
        request: Request<meridian_proto::ConnectionCall>,
    ) -> Result<Response<meridian_proto::ConnectionAnswer>, Status> {
        use meridian_dataplane::connections::{CallAnswer, ConnectionCall, ConnectionId, Target};
        use meridian_proto::connection_answer::Outcome;
        use meridian_proto::connection_call::Action;
        require_member(&request)?;
        let call = request.into_inner();
        let bounded = |s: &str| !s.is_empty() && s.len() <= 256;
        if !bounded(&call.api) || !bounded(&call.stage) {
            return Err(Status::invalid_argument(
                "a connection call names an API and a stage (at most 256 bytes each)",
            ));
        }
        let id = ConnectionId::parse(&call.connection_id)
            .ok_or_else(|| Status::invalid_argument("a connection call names a connection id"))?;
        let action =
            Action::try_from(call.action).map_err(|_| Status::invalid_argument("unknown connection action"))?;
        let target = Target { api: call.api, stage: call.stage, id };
        let asked = match action {
            Action::Send => ConnectionCall::Send(call.message.into()),
            Action::Describe => ConnectionCall::Describe,
            Action::Close => ConnectionCall::Close,
        };
        let (outcome, view) = match self.handlers.connections.call_here(&target, asked) {
            CallAnswer::Sent => (Outcome::Sent, String::new()),
            CallAnswer::Closed => (Outcome::Closed, String::new()),
            CallAnswer::Busy => (Outcome::Busy, String::new()),
            CallAnswer::Described(view) => (Outcome::Described, serde_json::to_string(&view).unwrap_or_default()),
            CallAnswer::Gone | CallAnswer::Unreachable(_) => (Outcome::Gone, String::new()),
        };
        Ok(Response::new(meridian_proto::ConnectionAnswer { outcome: outcome.into(), view }))
    }

    async fn change_membership(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        require_member(&request)?;
        let node = request.get_ref().node_id;
        let done = match request.get_ref().action() {
            meridian_proto::membership_request::Action::Remove => self.member.remove(node).await,
            meridian_proto::membership_request::Action::Promote => self.member.promote(node).await,
            meridian_proto::membership_request::Action::Readdress => {
                let info: meridian_consensus::ClusterNode = super::network::decode(&request.get_ref().node)
                    .map_err(|e| Status::invalid_argument(format!("malformed node record: {e}")))?;
                self.member.readdress(node, info).await
            }
        };
        Ok(Response::new(MembershipReply { error: done.err().map(|e| e.to_string()).unwrap_or_default() }))
    }
}

impl NodeService {
    fn member_connector(&self) -> super::tls::TlsConnector {
        self.member.connector()
    }
}

/// Accepts TLS connections on `listener` and serves the node RPC service on them.
pub async fn serve(listener: TcpListener, tls: rustls::ServerConfig, member: Arc<ClusterMember>, handlers: Handlers) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RpcStream, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, remote)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(RpcStream::new(stream, remote))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "node RPC handshake refused"),
                    Err(_) => tracing::debug!(%remote, "node RPC handshake timed out"),
                }
            });
        }
    });
    let incoming = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let service = NodeServer::new(NodeService { member, handlers })
        .max_decoding_message_size(super::network::MAX_MESSAGE)
        .max_encoding_message_size(super::network::MAX_MESSAGE);
    if let Err(e) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await {
        tracing::error!(error = %e, "node RPC server stopped");
    }
}
