//! The compiled, immutable routing table a configuration revision becomes.
//!
//! Everything the request path needs is prepared here: routers, upstream templates with
//! stage variables substituted, mock responses, metric handles and log templates. A reload
//! builds a new table and swaps it in whole; requests in flight keep the one they started
//! with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::certificates::DomainCertificates;
use crate::gateway_responses::GatewayResponses;
use crate::integration::Integration;
use crate::limits::limiter::Rate;
use crate::observe::access_log::LogSink;
use crate::observe::completion::RouteObserver;
use crate::router::Router;
use crate::stages::Chain;
use crate::stages::api_key::KeyRing;
use crate::stages::signed_request::Credentials;
use crate::table_hasher::TableHasher;

/// What serves one route of one stage.
#[derive(Debug)]
pub struct RouteTarget {
    pub integration: Integration,
    /// The stages the route's requests run through (see [`crate::stages`]).
    pub chain: Arc<Chain>,
    pub observer: Arc<RouteObserver>,
    /// Captured parameters may carry `%2F` and `\\` upstream.
    pub allow_encoded_slashes: bool,
    /// The route has CORS: a preflight for one of its methods is routed to it.
    pub answers_preflight: bool,
    /// A stage reads the path parameters' values (request mapping): the pipeline keeps them.
    pub keeps_path_parameters: bool,
    /// How the API words the gateway's own answers on this route (`type: rest`).
    pub gateway_responses: Option<Arc<GatewayResponses>>,
}

/// The routes of one API as served on one stage.
#[derive(Debug)]
pub struct StageRoutes {
    pub api: Arc<str>,
    pub stage: Arc<str>,
    pub router: Router<RouteTarget>,
    /// Counts and logs requests that reach the stage but match no route.
    pub unrouted: Arc<RouteObserver>,
    /// Whether the stage answers on the API's default endpoint (`/{stage}/...`), or only
    /// through custom domains.
    pub default_endpoint: bool,
    /// How the API words the gateway's own answers, for requests that match no route.
    pub gateway_responses: Option<Arc<GatewayResponses>>,
    /// Whether a route records responses (see `Stage::keeps_response`).
    pub keeps_responses: bool,
}

/// A canary: a share of a stage's requests served by another deployment.
#[derive(Debug)]
pub struct CanaryRoutes {
    pub routes: Arc<StageRoutes>,
    /// Share of requests in hundredths of a percent (1..=9999).
    pub basis_points: u32,
}

/// What serves a stage: its deployment, and optionally a canary.
#[derive(Debug)]
pub struct StageTarget {
    pub primary: Arc<StageRoutes>,
    pub canary: Option<CanaryRoutes>,
}

impl StageTarget {
    pub fn new(primary: Arc<StageRoutes>) -> Self {
        StageTarget { primary, canary: None }
    }

    /// The routes for one request: the canary's for `basis_points` of 10,000 draws.
    pub fn pick(&self, draw: u32) -> &Arc<StageRoutes> {
        match &self.canary {
            Some(c) if draw % 10_000 < c.basis_points => &c.routes,
            _ => &self.primary,
        }
    }
}

/// `base_path → stage` on a custom domain. The root mapping has an empty base path.
#[derive(Debug)]
pub struct BaseMapping {
    pub base_path: String,
    pub stage: Arc<StageTarget>,
}

/// An API's stages by name.
pub type Stages = HashMap<String, Arc<StageTarget>, TableHasher>;
/// The APIs by id.
pub type Apis = HashMap<String, Stages, TableHasher>;
/// Custom domains (lower-case host) and their mappings, longest base path first.
pub type Domains = HashMap<String, Vec<BaseMapping>, TableHasher>;

/// One configuration revision, compiled.
#[derive(Debug)]
pub struct RoutingTable {
    /// Counts reloads in this process; replaced by the cluster revision once config is
    /// replicated.
    pub revision: u64,
    /// Lower-case host → mappings, longest base path first.
    pub domains: Domains,
    /// API id → stage name → routes, for the default endpoint `/{stage}/...`.
    pub apis: Apis,
    /// Counts and logs requests that match no API at all.
    pub unrouted: Arc<RouteObserver>,
    /// API keys and what their usage plans grant.
    pub keys: KeyRing,
    /// Credentials for signed requests, their secrets opened.
    pub credentials: Credentials,
    /// Whether a route records responses: requests are then carried to their end even when
    /// their client goes away ([`keeps_responses`]).
    pub keeps_responses: bool,
}

impl RoutingTable {
    /// Every `http_proxy` integration of every stage and canary.
    pub fn proxies(&self) -> impl Iterator<Item = &crate::integration::ProxyIntegration> {
        self.apis
            .values()
            .flat_map(|stages| stages.values())
            .flat_map(|target| std::iter::once(&target.primary).chain(target.canary.as_ref().map(|c| &c.routes)))
            .flat_map(|routes| routes.router.values())
            .flat_map(|route| route.integration.proxies())
    }
}

/// Whether any stage (or canary) of `apis` has a route that records responses.
pub fn keeps_responses(apis: &Apis) -> bool {
    apis.values().flat_map(|stages| stages.values()).any(|target| {
        target.primary.keeps_responses || target.canary.as_ref().is_some_and(|c| c.routes.keeps_responses)
    })
}

/// Protective limits of the listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_client: usize,
    pub drain_timeout: Duration,
    /// WebSocket connections of `type: websocket` APIs the node holds at once.
    pub max_websocket_connections: usize,
}

/// A validated configuration file, ready to serve.
#[derive(Debug)]
pub struct GatewayConfig {
    pub listen_http: Option<SocketAddr>,
    pub listen_https: Option<SocketAddr>,
    pub admin_listen: SocketAddr,
    /// Bearer token for mutating admin calls, read from `admin.token_file`.
    pub admin_token: Option<String>,
    pub limits: Limits,
    pub access_log: LogSink,
    pub table: RoutingTable,
    pub certificates: DomainCertificates,
    /// The domain whose certificate clients without SNI get (`listen.default_certificate`).
    pub default_certificate: Option<String>,
    /// Set when the node is a cluster member.
    pub cluster: Option<ClusterSettings>,
    /// The cluster-wide rate limit (`throttle`); a member applies it to the cluster's APIs.
    pub default_rate: Rate,
    /// The name servers upstream discovery asks (`resolver.nameservers`; empty: the system's).
    pub nameservers: Vec<SocketAddr>,
    /// Where traced stages' spans are exported (`tracing`), if anywhere.
    pub tracing: Option<crate::observe::spans::ExportSettings>,
}

/// Where a cluster member keeps its state and talks to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub data_dir: std::path::PathBuf,
    pub rpc_listen: SocketAddr,
    /// The RPC address peers use (`IP:port` or `host:port`).
    pub advertise_rpc: String,
    /// The IP peers and DNS answers use for this node's gateway and DNS listeners, when it
    /// differs from their bound one.
    pub advertise_address: Option<std::net::IpAddr>,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_after_logs: u64,
    /// How often the Raft leader sends heartbeats (see `cluster::member::raft_config`).
    pub heartbeat: std::time::Duration,
    /// The node's DNS responder, when it runs one.
    pub dns: Option<DnsSettings>,
}

/// How a member serves DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    pub listen: SocketAddr,
    pub udp_workers: usize,
    pub rate_limit: u32,
    pub slip: u32,
    /// Upstream resolvers and the client networks allowed to use them.
    pub forward: Option<(Vec<SocketAddr>, Vec<meridian_dns::net::Cidr>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Router;

    fn routes(stage: &str) -> Arc<StageRoutes> {
        Arc::new(StageRoutes {
            api: "a".into(),
            stage: stage.into(),
            router: Router::default(),
            unrouted: Arc::new(RouteObserver::new("a", stage, "", "", None)),
            default_endpoint: true,
            gateway_responses: None,
            keeps_responses: false,
        })
    }

    #[test]
    fn a_canary_gets_exactly_its_share_of_uniform_draws() {
        let target = StageTarget {
            primary: routes("primary"),
            canary: Some(CanaryRoutes { routes: routes("canary"), basis_points: 2_500 }),
        };
        let canary = (0..10_000).filter(|d| &*target.pick(*d).stage == "canary").count();
        assert_eq!(canary, 2_500);
        assert_eq!(&*StageTarget::new(routes("only")).pick(0).stage, "only");
    }
}
