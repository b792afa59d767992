//! Forwarding: names outside Meridian's zones resolved through upstream resolvers, so a host
//! can use a node as its resolver. Only for the client networks an operator allows: an
//! open resolver on the internet is an amplifier, so there is no recursion by default.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::net::Cidr;

/// Resolves other names through upstreams, with hickory-resolver's cache.
pub struct Forwarder {
    resolver: Resolver<TokioRuntimeProvider>,
    allow: Vec<Cidr>,
}

/// Why forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up forwarding: {0}")]
pub struct ForwardError(String);

/// A resolver asking `servers` (UDP, then TCP for a truncated answer), two attempts of 2 s
/// each, caching up to `cache_size` answers (0: none).
pub fn resolver(servers: &[SocketAddr], cache_size: u64) -> Result<Resolver<TokioRuntimeProvider>, String> {
    let servers = servers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut builder =
        Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default());
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    builder.options_mut().cache_size = cache_size;
    builder.build().map_err(|e| e.to_string())
}

impl Forwarder {
    /// Forwards to `upstreams` (UDP with TCP fallback) for clients in `allow`.
    pub fn new(upstreams: &[SocketAddr], allow: Vec<Cidr>) -> Result<Forwarder, ForwardError> {
        if upstreams.is_empty() {
            return Err(ForwardError("no upstream resolvers given".into()));
        }
        let resolver = resolver(upstreams, 10_000).map_err(ForwardError)?;
        Ok(Forwarder { resolver, allow })
    }

    /// Whether `client` may use this node as its resolver.
    pub fn allows(&self, client: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(client))
    }

    /// Resolves the query in `request` and returns the response to send.
    pub async fn resolve(&self, request: &Message) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        if let Some(query) = request.queries.first() {
            response.add_query(query.clone());
            match self.resolver.lookup(query.name().clone(), query.query_type()).await {
                Ok(lookup) => {
                    response.add_answers(lookup.answers().iter().cloned());
                }
                Err(e) if e.is_nx_domain() => response.metadata.response_code = ResponseCode::NXDomain,
                Err(e) if e.is_no_records_found() => {}
                Err(e) => {
                    tracing::debug!(error = %e, "forwarded query failed");
                    metrics::counter!("meridian_dns_forward_failures_total").increment(1);
                    response.metadata.response_code = ResponseCode::ServFail;
                }
            }
        }
        metrics::counter!("meridian_dns_forwarded_total").increment(1);
        response
    }
}
