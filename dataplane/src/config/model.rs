//! The gateway configuration file as serde types.
//!
//! These types mirror the YAML an operator writes, field for field, with
//! `deny_unknown_fields` everywhere so a typo is an error rather than a silently ignored
//! setting. Values that need checking beyond their YAML type (addresses, durations, path
//! patterns, URIs, file paths) are kept as [`Spanned`] strings so that
//! `compile` can report every bad value with its line.

use std::collections::BTreeMap;

use serde::Deserialize;
pub use serde_saphyr::Spanned;

/// A whole gateway configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    #[serde(default)]
    pub listen: ListenSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// The cluster-wide default rate limit (10,000 requests per second, burst 5,000).
    pub throttle: Option<Spanned<ThrottleDef>>,
    /// Makes this node a member of a cluster; its APIs then come from the cluster.
    pub cluster: Option<ClusterSection>,
    #[serde(default)]
    pub apis: Vec<ApiDef>,
    #[serde(default)]
    pub domains: Vec<DomainDef>,
    /// Where upstream names are resolved (`discover`), instead of `/etc/resolv.conf`'s servers.
    pub resolver: Option<ResolverSection>,
    /// Where the spans of traced stages are exported (OTLP).
    pub tracing: Option<TracingSection>,
}

/// The OTLP collector a node exports spans to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// `http://host:4317` for gRPC; the base URL (`http(s)://host:4318`) for `http`.
    pub endpoint: Spanned<String>,
    /// `grpc` (default) or `http` (OTLP/HTTP with protobuf bodies).
    pub protocol: Option<Spanned<String>>,
    /// The most spans waiting for export (default 8192); more are dropped and counted.
    pub queue: Option<Spanned<u64>>,
    /// PEM CA certificates an `https` collector's certificate must chain to.
    pub ca_file: Option<Spanned<String>>,
}

/// The name servers upstream discovery asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// `IP:port` of each name server, in order.
    pub nameservers: Vec<Spanned<String>>,
}

/// Cluster membership of a node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Where the node keeps its Raft log, state and certificates.
    pub data_dir: Spanned<String>,
    /// The node-to-node RPC listener (mutual TLS).
    pub rpc: Spanned<String>,
    /// The RPC address other nodes use, when it differs from `rpc` (e.g. `rpc` is 0.0.0.0):
    /// `IP:port`, or `host:port` with a name that stays the node's when its IP changes (a
    /// StatefulSet pod's DNS name).
    pub advertise_rpc: Option<Spanned<String>>,
    /// The IP other members probe this node's gateway at and DNS answers give for it (its
    /// gateway and DNS ports stay the bound ones); needed when those listeners bind a
    /// wildcard address.
    pub advertise_address: Option<Spanned<String>>,
    /// Snapshot the state and compact the log after this many entries (default 500).
    #[serde(default = "default_snapshot_after_logs")]
    pub snapshot_after_logs: Spanned<u64>,
    /// How often the Raft leader sends heartbeats (default 150ms); a replication request may
    /// take three of them, at least 500 ms.
    pub heartbeat: Option<Spanned<String>>,
    /// Serve the cluster's DNS zones on this node.
    pub dns: Option<DnsSection>,
}

/// A member's DNS responder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// UDP and TCP address, e.g. `127.1.0.1:53`.
    pub listen: Spanned<String>,
    /// Threads answering UDP (default 1).
    #[serde(default = "default_udp_workers")]
    pub udp_workers: Spanned<usize>,
    /// UDP responses per second per client /24 (/56); 0 turns the limit off (default 10000).
    #[serde(default = "default_dns_rate_limit")]
    pub rate_limit: u32,
    /// Over the limit, every `slip`-th response is sent truncated instead of dropped (default 2).
    #[serde(default = "default_slip")]
    pub slip: u32,
    /// Resolve names outside the zones through upstream resolvers, for the allowed networks.
    pub forward: Option<ForwardSection>,
}

/// Forwarding of other names to upstream resolvers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSection {
    /// Upstream resolvers, `address:port`.
    pub upstreams: Vec<Spanned<String>>,
    /// Client networks allowed to use the node as a resolver (CIDRs). Empty: nobody.
    pub allow: Vec<Spanned<String>>,
}

fn default_udp_workers() -> Spanned<usize> {
    unspanned(1)
}

fn default_dns_rate_limit() -> u32 {
    10_000
}

fn default_slip() -> u32 {
    2
}

fn default_snapshot_after_logs() -> Spanned<u64> {
    unspanned(500)
}

/// Where the gateway accepts API traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Cleartext HTTP/1.1 and HTTP/2 (prior knowledge), e.g. `127.0.0.1:8080`.
    pub http: Option<Spanned<String>>,
    /// TLS with SNI over the configured domains; HTTP/2 and HTTP/1.1 by ALPN.
    pub https: Option<Spanned<String>>,
    /// The domain whose certificate `https` presents to clients that send no SNI (clients
    /// that connect by address); without it they are refused.
    pub default_certificate: Option<Spanned<String>>,
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection { http: Some(unspanned("127.0.0.1:8080".into())), https: None, default_certificate: None }
    }
}

/// The admin listener: metrics, health, reload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    /// A file holding the bearer token for mutating admin calls. Without one, only
    /// `/metrics`, `/healthz` and `/readyz` are served and reload goes through SIGHUP.
    pub token_file: Option<Spanned<String>>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { listen: default_admin_listen(), token_file: None }
    }
}

fn default_admin_listen() -> Spanned<String> {
    unspanned("127.0.0.1:9901".into())
}

/// Protective limits applied to every client connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Spanned<String>,
    pub idle_timeout: Spanned<String>,
    pub max_connections: usize,
    /// Open connections one client address may hold (0: no limit).
    pub max_connections_per_client: usize,
    pub drain_timeout: Spanned<String>,
    /// WebSocket connections the node holds for `type: websocket` APIs; more are refused
    /// with 503.
    pub max_websocket_connections: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            header_read_timeout: unspanned("10s".into()),
            idle_timeout: unspanned("60s".into()),
            max_connections: 10_000,
            max_connections_per_client: 0,
            drain_timeout: unspanned("30s".into()),
            max_websocket_connections: 10_000,
        }
    }
}

/// Where access-log lines go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A file to append to; standard output when absent.
    pub path: Option<Spanned<String>>,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection { enabled: true, path: None }
    }
}

fn yes() -> bool {
    true
}

/// One API: its routes and the stages it is served on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiDef {
    pub id: Spanned<String>,
    pub name: Option<String>,
    /// `http` (default), `rest` or `websocket`.
    #[serde(rename = "type")]
    pub kind: Option<Spanned<ApiKind>>,
    /// `type: websocket`: how a message's route key is chosen (`$request.body.action`,
    /// `$request.header.NAME` or a constant).
    pub route_selection: Option<Spanned<String>>,
    /// `type: websocket`: what each connection is held to.
    pub websocket: Option<Spanned<WebSocketDef>>,
    #[serde(default)]
    pub routes: Vec<RouteDef>,
    #[serde(default)]
    pub stages: Vec<StageDef>,
    /// Authorizers that routes and stages name (`authorizer: NAME`).
    #[serde(default)]
    pub authorizers: Vec<AuthorizerDef>,
    /// `type: rest`: media types whose bodies are bytes (`image/png`, `image/*`, `*/*`).
    pub binary_media_types: Option<Spanned<Vec<String>>>,
    /// The credential scope of signed requests (`authorization: signed`).
    pub signing: Option<Spanned<SigningDef>>,
    /// Which web origins may call the API from a browser (every route; a route's own
    /// `cors` replaces it).
    pub cors: Option<Spanned<CorsDef>>,
    /// Firewall rules for every route, before a stage's own.
    pub waf: Option<Spanned<WafDef>>,
    /// Answers compressed by the client's `Accept-Encoding` (docs/CONFIG.md, "Compression").
    pub compression: Option<Spanned<CompressionDef>>,
    /// `type: rest`: JSON Schemas (draft 4 unless `$schema` says 2020-12) that routes name
    /// as request models.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, Spanned<serde_json::Value>>,
    /// `type: rest`: what a request validator checks, by name.
    #[serde(default)]
    pub request_validators: std::collections::BTreeMap<String, Spanned<RequestValidatorDef>>,
    /// `type: rest`: the validator of routes that name none.
    pub request_validator: Option<Spanned<String>>,
    /// `type: rest`: the API's own wording of the gateway's answers, by type
    /// (`UNAUTHORIZED`, `THROTTLED`, `DEFAULT_4XX`, ...; see `gateway_responses.rs`).
    #[serde(default)]
    pub gateway_responses: std::collections::BTreeMap<String, Spanned<GatewayResponseDef>>,
    /// Serve the API on its default endpoint, `/{stage}/...` on a host whose first label is
    /// the API id (or any host when it is the only API). Turn it off so that an API with
    /// custom domains is reachable only through them.
    #[serde(default = "yes")]
    pub default_endpoint: bool,
}

/// One of an API's `gateway_responses`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayResponseDef {
    /// The client's status (the refusal's when not set).
    pub status: Option<u16>,
    /// Response headers, each `'literal text'`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body's templates by media type; the client's `Accept` chooses one (else
    /// `application/json`, else the first).
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
}

/// A stage's response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageCacheDef {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How much the cache may hold, in MiB (default 64).
    pub capacity_mib: Option<u64>,
    /// How long answers are kept unless a route says (default 300s, at most 3600s).
    pub ttl: Option<Spanned<String>>,
}

/// How one route's answers are cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheDef {
    /// `0s` turns caching off for the route.
    pub ttl: Option<Spanned<String>>,
    /// Methods whose answers are kept (default `[GET]`).
    pub methods: Option<Vec<String>>,
    /// Only these query parameters are in the key (default: the whole query).
    pub key_query: Option<Vec<String>>,
    /// Request headers that are in the key.
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Keep one answer per authorizer principal (`sub`, or the authorizer's context).
    #[serde(default)]
    pub per_principal: bool,
    /// Keep answers marked `Cache-Control: no-store` or `private`, or that set a cookie
    /// (only with `per_principal`: each principal gets back only its own).
    #[serde(default)]
    pub keep_private: bool,
    /// Who may ask for a fresh answer with `Cache-Control: max-age=0`.
    pub invalidation: Option<CacheInvalidationDef>,
    /// The largest answer kept, in KiB (default 1024).
    pub max_entry_kib: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheInvalidationDef {
    /// The scope the authorizer must grant.
    pub scope: String,
    /// `ignore` (default: served as usual) or `forbid` (403).
    #[serde(default)]
    pub unauthorized: CacheUnauthorized,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheUnauthorized {
    #[default]
    Ignore,
    Forbid,
}

/// `type: rest`: how a route honours `Idempotency-Key` (docs/CONFIG.md, "Idempotency keys").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyDef {
    /// Refuse requests without a key (400); by default they are delivered as usual.
    #[serde(default)]
    pub required: bool,
    /// How long a key's record is kept (default 24h; 1s to 7d).
    pub ttl: Option<Spanned<String>>,
    /// What a retry gets while the first attempt is in flight: `reject` (409, the default)
    /// or `wait` for its response.
    #[serde(default)]
    pub in_flight: IdempotencyInFlight,
    /// The largest response body kept for replay, in KiB (default 16, at most 256).
    pub max_response_kib: Option<Spanned<u64>>,
    /// The most records the stage holds (default 50000, at most 1000000).
    pub max_records: Option<Spanned<u64>>,
    /// How long a claim waits for the cluster to commit it before the request is refused
    /// with 503 (default 5s; 100ms to 30s).
    pub commit_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyInFlight {
    #[default]
    Reject,
    Wait,
}

/// What a request validator checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestValidatorDef {
    /// The body against the route's model for its content type.
    #[serde(default)]
    pub body: bool,
    /// The route's required query parameters and headers.
    #[serde(default)]
    pub parameters: bool,
}

/// The API types of a managed gateway. `http` is the lean pipeline; `rest` may also use the
/// stages that read or reshape bodies; `websocket` holds clients' connections and routes
/// their messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    Rest,
    #[default]
    Http,
    Websocket,
}

/// `type: websocket`: the limits of each connection (docs/CONFIG.md, "WebSocket APIs").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketDef {
    /// The largest message in KiB, reassembled from its frames (default 128, at most 1024).
    pub max_message_kib: Option<Spanned<u64>>,
    /// The largest frame in KiB (default 32, at most the message size).
    pub max_frame_kib: Option<Spanned<u64>>,
    /// Messages a second a client may send on a connection (default 100).
    pub messages_per_second: Option<Spanned<u32>>,
    /// Closed after this long without a message either way (default 10m).
    pub idle_timeout: Option<Spanned<String>>,
    /// Closed after this long (default 2h).
    pub max_duration: Option<Spanned<String>>,
}

/// `route: "GET /pets/{id}"` and what serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    pub route: Spanned<String>,
    /// Headers and query parameters a request must carry for this route to serve it
    /// (docs/CONFIG.md, "Route conditions").
    #[serde(rename = "match")]
    pub conditions: Option<Spanned<RouteConditionsDef>>,
    pub integration: IntegrationDef,
    /// A rate limit for this route (on every stage).
    pub throttle: Option<Spanned<ThrottleDef>>,
    /// Requests need an API key (`x-api-key`) granted on the stage by a usage plan.
    #[serde(default)]
    pub api_key_required: bool,
    /// Let captured path parameters carry an encoded slash (`%2F`) or a backslash to the
    /// upstream (refused with 400 otherwise; see docs/SECURITY.md).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// The authorizer requests to this route must pass (instead of the stage's).
    pub authorizer: Option<Spanned<String>>,
    /// Scopes a JWT authorizer requires of this route's tokens (all of them).
    pub scopes: Option<Spanned<Vec<String>>>,
    /// `signed`: requests must be signed with AWS Signature Version 4 by the cluster's
    /// credentials.
    pub authorization: Option<Spanned<Authorization>>,
    /// `type: rest`: the request validator (instead of the API's).
    pub request_validator: Option<Spanned<String>>,
    /// `type: rest`: the model of the body, by content type (`$default` for any other).
    pub request_models: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    /// `type: rest`: `querystring.NAME` and `header.NAME` a request must carry.
    pub required_parameters: Option<Spanned<Vec<String>>>,
    /// `type: rest`: how this route's answers are cached (when the stage has a cache).
    pub cache: Option<Spanned<RouteCacheDef>>,
    /// `type: rest`: requests with an `Idempotency-Key` are delivered once.
    pub idempotency: Option<Spanned<IdempotencyDef>>,
    /// CORS for this route, instead of the API's.
    pub cors: Option<Spanned<CorsDef>>,
    /// Request headers and query parameters, and response headers, edited (docs/CONFIG.md,
    /// "Header and query transforms").
    pub transform: Option<Spanned<TransformDef>>,
    /// `type: websocket`: the integration's answer is sent back to the client.
    pub reply: Option<Spanned<bool>>,
}

/// An `http_proxy`'s `discover`: exactly one of `dns` and `srv`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverDef {
    /// `name:port`: every A and AAAA address of the name, on the port.
    pub dns: Option<String>,
    /// `_service._proto.name`: the SRV records of the lowest priority, with their ports and weights.
    pub srv: Option<String>,
}

/// An `http_proxy`'s `tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsDef {
    /// The name sent in SNI, and checked in the certificate unless `expected_name` says
    /// otherwise (default: the URI's host).
    pub server_name: Option<String>,
    /// The name the upstream's certificate must carry (default: `server_name`).
    pub expected_name: Option<String>,
    /// A PEM certificate chain the gateway presents to the upstream, with `client_key`.
    pub client_certificate: Option<String>,
    /// The PEM private key of `client_certificate` (a file private to its owner).
    pub client_key: Option<String>,
}

/// An `http_proxy`'s `mirror`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorDef {
    /// The shadow target's origin, `http://shadow.internal:8080`.
    pub uri: String,
    /// The share of requests mirrored, more than 0 and at most 100 (default 100).
    pub percent: Option<f64>,
    /// Bodies longer than this (or of unknown length) are not mirrored (default 64 KiB).
    pub max_body_bytes: Option<u64>,
    /// Mirrored requests in flight at once; more are dropped (default 100).
    pub max_concurrency: Option<usize>,
    /// How long a mirrored request may take (default 5s, at most 1m).
    pub timeout: Option<String>,
}

/// An `http_proxy`'s `rewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteDef {
    pub path: Option<PathRewriteDef>,
    /// The `Host` the upstream sees (`host` or `host:port`).
    pub host: Option<String>,
}

/// A path rewrite: exactly one of `prefix` and `regex`, and the `replacement`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRewriteDef {
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub replacement: String,
}

/// A route's `transform`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformDef {
    pub request: Option<RequestTransformDef>,
    pub response: Option<ResponseTransformDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestTransformDef {
    pub headers: Option<EditsDef>,
    pub query: Option<EditsDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseTransformDef {
    pub headers: Option<EditsDef>,
}

/// Edits of headers or query parameters, by name (values are templates).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditsDef {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A route's `match`: conditions on headers and query parameters, all of which must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConditionsDef {
    #[serde(default)]
    pub headers: Vec<ConditionDef>,
    #[serde(default)]
    pub query: Vec<ConditionDef>,
}

/// One condition: a header or query parameter by `name`, and exactly one of `equals`,
/// `regex` or `present: true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionDef {
    pub name: String,
    pub equals: Option<String>,
    pub regex: Option<String>,
    #[serde(default)]
    pub present: bool,
}

/// Firewall rules (docs/CONFIG.md, "Firewall").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafDef {
    /// Proxies (CIDRs) whose `X-Forwarded-For` says who the client is.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How much of a body `pattern` rules on the body look at (default 8192, at most 65536).
    pub inspect_body_bytes: Option<u64>,
    #[serde(default)]
    pub rules: Vec<Spanned<WafRuleDef>>,
}

/// One firewall rule: a name, an action and exactly one condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafRuleDef {
    pub name: String,
    pub action: WafAction,
    /// The client address is in one of these CIDRs.
    pub ip_in: Option<Vec<String>>,
    /// The client address is in none of these CIDRs.
    pub ip_not_in: Option<Vec<String>>,
    /// A part of the request is larger than a number of bytes.
    pub size_over: Option<WafSizeDef>,
    /// A regex or a literal in a part of the request.
    pub pattern: Option<WafPatternDef>,
    /// Built-in signature sets: `sqli`, `xss`.
    pub signatures: Option<Vec<String>>,
    /// A client makes more than a number of requests in a window.
    pub rate_over: Option<WafRateDef>,
    /// A client receives more than a number of 401 and 403 answers in a window.
    pub failed_auth_over: Option<WafRateDef>,
}

/// A rate-based rule's limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafRateDef {
    /// More than this many in `window` blocks the client.
    pub count: u64,
    /// `10s` to `1h`.
    pub window: Spanned<String>,
    /// How long the client stays blocked (at most 24h).
    pub block_for: Spanned<String>,
    /// `ip` (default) or `header:NAME`.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafAction {
    Block,
    Allow,
    Count,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafSizeDef {
    /// `uri`, `query`, `headers` or `body`.
    pub part: String,
    pub bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafPatternDef {
    /// `path`, `query`, `header`, `cookie` (these three with `name`) or `body`.
    pub part: String,
    pub name: Option<String>,
    pub regex: Option<String>,
    pub contains: Option<String>,
}

/// Response compression (docs/CONFIG.md, "Compression").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionDef {
    /// Answers with a `Content-Length` below this many bytes are sent as they are
    /// (default 1024; 0 compresses every answer).
    pub minimum_size: Option<u64>,
    /// The media types compressed (`type/subtype` or `type/*`; default: text, JSON, XML,
    /// JavaScript and SVG).
    pub content_types: Option<Vec<String>>,
}

/// CORS settings (docs/CONFIG.md, "CORS").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsDef {
    /// `https://app.example.com`, `https://*.example.com` or `*`.
    pub allow_origins: Vec<String>,
    /// Default: GET, HEAD, POST, PUT, PATCH, DELETE.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a page may send; `*` allows what a preflight asks for.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers a page may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may reuse a preflight's answer (default 10m, at most 2h).
    pub max_age: Option<String>,
    /// Let pages send cookies and read answers to credentialed requests (never with `*`).
    #[serde(default)]
    pub allow_credentials: bool,
}

/// Authorization that needs no authorizer declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authorization {
    Signed,
}

/// The credential scope signed requests must name: `DATE/REGION/SERVICE/aws4_request`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningDef {
    #[serde(default = "default_signing_region")]
    pub region: String,
    #[serde(default = "default_signing_service")]
    pub service: String,
}

fn default_signing_region() -> String {
    "us-east-1".into()
}

fn default_signing_service() -> String {
    "execute-api".into()
}

/// An authorizer of an API. One struct for both kinds so that each field keeps its line;
/// `compile` rejects fields that do not belong to the chosen kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizerDef {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<AuthorizerKind>,
    /// `jwt`: signature algorithms accepted, e.g. `[RS256]`.
    pub algorithms: Option<Spanned<Vec<String>>>,
    /// `jwt`: where the identity provider publishes its keys.
    pub jwks_uri: Option<Spanned<String>>,
    /// `jwt`: the least time between two fetches of the JWKS for tokens with an unknown
    /// key id (default 30s).
    pub jwks_refetch_interval: Option<Spanned<String>>,
    /// `jwt`: keys given here instead of (or besides) `jwks_uri`.
    pub keys: Option<Spanned<Vec<KeyDef>>>,
    /// `jwt`: the `iss` tokens must carry.
    pub issuer: Option<Spanned<String>>,
    /// `jwt`: tokens must name one of these in `aud`.
    pub audience: Option<Spanned<Vec<String>>>,
    /// `jwt`: how far clocks may disagree for `exp` and `nbf` (default 30s).
    pub clock_skew: Option<Spanned<String>>,
    /// `jwt`: claims every token must have (besides `exp`).
    pub required_claims: Option<Spanned<Vec<String>>>,
    /// `jwt`: claims passed upstream, `claim: header-name`.
    pub claims_to_headers: Option<Spanned<BTreeMap<String, String>>>,
    /// `custom`: the authorizer's URL (`http` or `https`).
    pub uri: Option<Spanned<String>>,
    /// `custom`: what identifies a caller, e.g. `[$request.header.Authorization]`.
    pub identity_sources: Option<Spanned<Vec<String>>>,
    /// `custom`: how long an answer is reused for the same identity (default 300s; `0s`
    /// turns the cache off).
    pub ttl: Option<Spanned<String>>,
    /// `custom`: answers kept at most (default 10000).
    pub cache_size: Option<Spanned<u64>>,
    /// `custom`: how long to wait for the authorizer (default 5s, at most 30s).
    pub timeout: Option<Spanned<String>>,
    /// `custom`: context values passed upstream, `key: header-name`.
    pub context_to_headers: Option<Spanned<BTreeMap<String, String>>>,
    /// `jwks_uri` or `uri` over https: a PEM file of CA certificates to trust instead of
    /// the system roots.
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizerKind {
    Jwt,
    Custom,
}

/// A verification key written in the definition: exactly one of `pem`, `jwk` and
/// `secret_env`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDef {
    /// Matched against the token's `kid` when both have one.
    pub kid: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519).
    pub pem: Option<String>,
    /// One JSON Web Key (public, or `oct` for HMAC).
    pub jwk: Option<serde_json::Value>,
    /// The name of an environment variable holding an HMAC secret, set on every node (the
    /// secret itself never goes into the definition).
    pub secret_env: Option<String>,
}

/// A rate limit: requests per second and the burst one node may admit at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleDef {
    pub rate: u64,
    pub burst: u64,
}

/// How a route is served. One struct for every kind so that each field keeps its line;
/// `compile` rejects fields that do not belong to the chosen kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationDef {
    #[serde(rename = "type")]
    pub kind: Spanned<IntegrationKind>,
    /// `http_proxy`: upstream URI template, e.g. `http://${stageVariables.backend}/pets/{id}`;
    /// `redirect`: where to, e.g. `https://new.example.com/pets/{id}` or `/v2/pets/{id}`.
    pub uri: Option<Spanned<String>>,
    /// `redirect`: append the request's query to a `uri` without one (default true).
    pub keep_query: Option<Spanned<bool>>,
    /// `http_proxy`: the path and `Host` sent upstream, rewritten (docs/CONFIG.md,
    /// "Rewrites and redirects").
    pub rewrite: Option<Spanned<RewriteDef>>,
    /// `http_proxy`: a share of the requests copied to a shadow target (docs/CONFIG.md,
    /// "Traffic mirroring").
    pub mirror: Option<Spanned<MirrorDef>>,
    /// `http_proxy`: targets found in DNS and re-resolved by their TTL, instead of `targets`
    /// (docs/CONFIG.md, "Upstream discovery").
    pub discover: Option<Spanned<DiscoverDef>>,
    /// `http_proxy` to an `https` upstream: the name sent in SNI, the name its certificate
    /// must carry, the client certificate the gateway presents (docs/CONFIG.md, "Upstream
    /// TLS").
    pub tls: Option<Spanned<UpstreamTlsDef>>,
    /// `http_proxy`: how long to wait for the upstream's response headers (default 29s).
    pub timeout: Option<Spanned<String>>,
    /// `http_proxy`: retries for idempotent requests without a body.
    pub retry: Option<Spanned<RetryDef>>,
    /// `http_proxy`: a PEM file of CA certificates to trust for an `https` upstream
    /// instead of the system roots.
    pub ca_file: Option<Spanned<String>>,
    /// `http_proxy`: where requests go, when not to the URI's host (which then stays the
    /// `Host` header and, for `https`, the name the targets' certificates must carry).
    pub targets: Option<Spanned<Vec<TargetDef>>>,
    /// `http_proxy`: how requests spread over `targets`: `round_robin` (default, by weight)
    /// or `least_requests` (the power of two choices).
    pub balance: Option<Spanned<crate::integration::balance::Balance>>,
    /// `http_proxy`: passive health of each target.
    pub health: Option<Spanned<HealthDef>>,
    /// `http_proxy`: speak HTTP/2 to the upstream (ALPN over TLS, prior knowledge without).
    pub http2: Option<Spanned<bool>>,
    /// `http_proxy`: connections per target.
    pub connections: Option<Spanned<ConnectionsDef>>,
    /// `mock`: the status code (default 200); `redirect`: 301, 302 (default), 303, 307 or 308.
    pub status: Option<Spanned<u16>>,
    /// `mock`: response headers.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// `mock`: response body.
    pub body: Option<Spanned<String>>,
    /// `http_proxy` of a `type: rest` API: mapping templates for the request body, by content
    /// type.
    pub request_templates: Option<Spanned<BTreeMap<String, String>>>,
    /// `when_no_match` (default), `when_no_templates` or `never`.
    pub passthrough_behavior: Option<Spanned<PassthroughBehavior>>,
    /// `type: rest`: what the client gets for each kind of upstream answer, chosen by the
    /// upstream's status (see `stages/integration_response.rs`).
    /// `type: rest`: how the request body is converted between text and bytes.
    pub content_handling: Option<Spanned<ContentHandlingDef>>,
    pub responses: Option<Spanned<Vec<IntegrationResponseDef>>>,
    /// `type: rest`: the upstream speaks XML; JSON clients talk to it both ways
    /// (see `stages/xml_upstream.rs`).
    pub xml_upstream: Option<Spanned<XmlUpstreamDef>>,
}

/// An integration's `xml_upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlUpstreamDef {
    /// The root element of the XML requests (`pet` makes `<pet>...</pet>`).
    pub root: String,
}

/// One of an integration's `responses`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationResponseDef {
    /// A regular expression the whole upstream status must match (`4\d\d`); without one,
    /// the default response (at most one).
    pub selection_pattern: Option<String>,
    /// The client's status (the upstream's when not set).
    pub status: Option<u16>,
    /// Response headers: `'literal'`, `integration.response.header.NAME`,
    /// `integration.response.body` or `integration.response.body.FIELD`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response templates by media type.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// How the upstream's body is converted between text and bytes.
    pub content_handling: Option<ContentHandlingDef>,
}

/// `convert_to_text` (bytes → base64) or `convert_to_binary` (base64 → bytes); the managed
/// gateway's spellings `CONVERT_TO_TEXT` and `CONVERT_TO_BINARY` are taken too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentHandlingDef {
    #[serde(alias = "CONVERT_TO_TEXT")]
    ConvertToText,
    #[serde(alias = "CONVERT_TO_BINARY")]
    ConvertToBinary,
}

impl From<ContentHandlingDef> for crate::stages::content::ContentHandling {
    fn from(def: ContentHandlingDef) -> Self {
        match def {
            ContentHandlingDef::ConvertToText => crate::stages::content::ContentHandling::ConvertToText,
            ContentHandlingDef::ConvertToBinary => crate::stages::content::ContentHandling::ConvertToBinary,
        }
    }
}

/// What a request whose content type has no mapping template gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassthroughBehavior {
    WhenNoMatch,
    WhenNoTemplates,
    Never,
}

/// One target of an `http_proxy` integration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDef {
    /// `host:port`; `${stageVariables.NAME}` is replaced per stage.
    pub address: Spanned<String>,
    /// Its share of the requests, 1-100 (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// The region it is in: nodes of that region prefer it.
    pub region: Option<String>,
}

fn one() -> u32 {
    1
}

/// Passive health: a target that fails `failures` times in a row (no connection, a
/// timeout, a broken exchange) is ejected for `ejection`, twice as long each time in a row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDef {
    #[serde(default = "default_failures")]
    pub failures: u32,
    #[serde(default = "default_ejection")]
    pub ejection: String,
    /// An active check of every target, besides the requests' own outcomes.
    pub check: Option<HealthCheckDef>,
}

/// `GET path` on every target every `interval`; 2xx or 3xx within `timeout` passes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckDef {
    pub path: String,
    /// Default 5s (1s to 5m).
    pub interval: Option<String>,
    /// Default 2s (at most the interval).
    pub timeout: Option<String>,
}

fn default_failures() -> u32 {
    5
}

fn default_ejection() -> String {
    "5s".into()
}

/// Connections to each target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsDef {
    /// Open at once (default 1024); a request beyond them, with no other target free, is 503.
    #[serde(default = "default_max_connections")]
    pub max: u32,
    /// Idle connections close after this long (default 90s).
    #[serde(default = "default_idle")]
    pub idle_timeout: String,
}

fn default_max_connections() -> u32 {
    1024
}

fn default_idle() -> String {
    "90s".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationKind {
    HttpProxy,
    Mock,
    Redirect,
}

/// Retry policy of an `http_proxy` integration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    /// Extra attempts after the first (1..=5).
    pub attempts: u32,
    /// Retries may add at most this percentage of the route's requests (default 20).
    #[serde(default = "default_retry_budget")]
    pub budget_percent: u32,
}

fn default_retry_budget() -> u32 {
    20
}

/// A stage: the name an API is served under, with its variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDef {
    pub name: Spanned<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Access-log line template such as `"$request_id $status $latency_ms"`; the default
    /// is one JSON object with every field.
    pub access_log_format: Option<Spanned<String>>,
    /// A rate limit for the whole stage.
    pub throttle: Option<Spanned<ThrottleDef>>,
    /// Every route of the stage needs an API key.
    #[serde(default)]
    pub api_key_required: bool,
    /// The authorizer of every route that names none.
    pub authorizer: Option<Spanned<String>>,
    /// `signed`, for every route that names no authorizer of its own.
    pub authorization: Option<Spanned<Authorization>>,
    /// Firewall rules of this stage, after the API's.
    pub waf: Option<Spanned<WafDef>>,
    /// `type: rest`: the stage's response cache.
    pub cache: Option<Spanned<StageCacheDef>>,
    /// Traces of the stage's requests (W3C trace context, spans exported by OTLP).
    pub tracing: Option<Spanned<StageTracingDef>>,
}

/// How a stage's requests are traced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageTracingDef {
    /// The share of new traces recorded, 0.0 to 1.0; a request whose caller's
    /// `traceparent` says whether it records follows that.
    pub sample_ratio: f64,
}

/// A custom domain: its certificate and the APIs it serves under base paths.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainDef {
    pub name: Spanned<String>,
    /// PEM certificate chain file (needed when the HTTPS listener is on).
    pub certificate: Option<Spanned<String>>,
    /// PEM private key file.
    pub key: Option<Spanned<String>>,
    /// Ask clients for a certificate (mutual TLS; docs/CONFIG.md, "Client certificates").
    pub client_certificates: Option<Spanned<ClientCertificatesDef>>,
    #[serde(default)]
    pub mappings: Vec<MappingDef>,
}

/// A domain's mutual TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificatesDef {
    /// PEM CA certificates client certificates must chain to (the truststore).
    pub ca_file: String,
    /// PEM certificate revocation lists.
    pub crl_file: Option<String>,
    /// `true` (default): a handshake without a good certificate fails; `false`: it goes on
    /// without identity.
    #[serde(default = "yes")]
    pub required: bool,
}

/// `(domain, base path) → (api, stage)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingDef {
    #[serde(default = "root_path")]
    pub base_path: Spanned<String>,
    pub api: Spanned<String>,
    pub stage: Spanned<String>,
}

fn root_path() -> Spanned<String> {
    unspanned("/".into())
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}
