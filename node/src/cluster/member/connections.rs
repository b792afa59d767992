//! Callback API calls for WebSocket connections other members hold: the id names the
//! holder, and the call goes to it in one hop over the members' RPC channels.

use std::time::Duration;

use meridian_proto::connection_answer::Outcome;
use meridian_proto::connection_call::Action;

use super::ClusterMember;
use meridian_dataplane::connections::{CallAnswer, ConnectionCall, ConnectionPeers, ConnectionView, Target};

/// How long a forwarded call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

impl ConnectionPeers for ClusterMember {
    fn forward(
        &self,
        node: u64,
        target: Target,
        call: ConnectionCall,
    ) -> std::pin::Pin<Box<dyn Future<Output = CallAnswer> + Send + 'static>> {
        let address = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics.membership_config.membership().get_node(&node).map(|n| n.rpc_addr.clone())
        };
        // A node that is not a member holds no connection of this cluster's.
        let Some(address) = address else {
            return Box::pin(std::future::ready(CallAnswer::Gone));
        };
        let client = self.peer_client(&address);
        let (action, message) = match call {
            ConnectionCall::Send(bytes) => (Action::Send, bytes.to_vec()),
            ConnectionCall::Describe => (Action::Describe, Vec::new()),
            ConnectionCall::Close => (Action::Close, Vec::new()),
        };
        let request = meridian_proto::ConnectionCall {
            api: target.api,
            stage: target.stage,
            connection_id: target.id.to_string(),
            action: action.into(),
            message,
        };
        Box::pin(async move {
            let mut client = match client {
                Ok(client) => client,
                Err(e) => return CallAnswer::Unreachable(e.to_string()),
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.call_connection(request)).await {
                Ok(Ok(answer)) => answer_of(answer.into_inner()),
                // A node that refuses connections is down, and its connections with it:
                // their clients reconnect elsewhere.
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => CallAnswer::Gone,
                Ok(Err(status)) => CallAnswer::Unreachable(status.message().to_string()),
                Err(_) => CallAnswer::Unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
            }
        })
    }
}

fn answer_of(answer: meridian_proto::ConnectionAnswer) -> CallAnswer {
    match answer.outcome() {
        Outcome::Sent => CallAnswer::Sent,
        Outcome::Closed => CallAnswer::Closed,
        Outcome::Gone => CallAnswer::Gone,
        Outcome::Busy => CallAnswer::Busy,
        Outcome::Described => match serde_json::from_str::<ConnectionView>(&answer.view) {
            Ok(view) => CallAnswer::Described(view),
            Err(e) => CallAnswer::Unreachable(format!("the holder's answer is malformed: {e}")),
        },
    }
}
