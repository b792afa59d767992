//! A running gateway node: what wires listeners, the request path, the admin API, the
//! cluster and DNS together, and how it stops.
//!
//! [`Node::start`] validates the configuration, binds every listener (failing clearly if an
//! address is taken), and starts serving; [`Node::attach_cluster`] turns it into a cluster
//! member. Reloads go through [`crate::reload`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::cluster::member::{Advertised, ClusterMember};
use crate::reload::{ConfigSource, Reloader, StartupSettings};
use meridian_dataplane::certificates::{SniResolver, server_config};
use meridian_dataplane::config::{ClusterSettings, ConfigErrors, RoutingTable};
use meridian_dataplane::gateway::conns::ConnectionTable;
use meridian_dataplane::gateway::listener;
use meridian_dataplane::limits::limiter::Limiter;
use meridian_dataplane::observe::access_log::AccessLog;

/// How many rate-limit scopes a node tracks before it evicts the least recently used.
const MAX_LIMIT_SCOPES: usize = 100_000;
/// How long a stopping node waits for its WebSocket connections' `$disconnect` deliveries.
const WEBSOCKET_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
use meridian_dataplane::integration::upstreams::Upstreams;
use meridian_dataplane::pipeline::Pipeline;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("metrics setup failed: {0}")]
    Metrics(String),
    #[error("tracing setup failed: {0}")]
    Tracing(String),
}

/// A started node.
pub struct Node {
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// Set when the configuration makes this node a cluster member.
    pub cluster: Option<ClusterSettings>,
    table: Arc<ArcSwap<RoutingTable>>,
    limiter: Arc<Limiter>,
    /// Upstream targets and their connections, kept across reloads.
    upstreams: Arc<Upstreams>,
    /// The cluster-wide rate limit from the node's file, applied to the cluster's APIs.
    default_rate: meridian_dataplane::limits::limiter::Rate,
    /// Where quota counters are saved (cluster members only).
    quota_file: std::sync::OnceLock<PathBuf>,
    admin: Arc<AdminState>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    access_log: AccessLog,
    /// The DNS responder's sockets, bound at start and served once the node joins its cluster.
    dns_sockets: Mutex<Option<meridian_dns::server::DnsSockets>>,
    pub dns_addr: Option<SocketAddr>,
    /// Where listeners report client round trips (set when the node serves DNS).
    client_rtt: Arc<std::sync::OnceLock<meridian_dataplane::gateway::ClientRttSink>>,
    /// Whether listeners accept connections: at once for a file configuration, once the
    /// cluster's configuration is compiled for a member.
    serving: watch::Sender<bool>,
    /// Where traced requests' spans are exported (`tracing`), if anywhere.
    spans: Option<Arc<meridian_dataplane::observe::spans::SpanSink>>,
    /// The DNS service once the node serves DNS, for peers' health reports.
    dns: crate::cluster::rpc::DnsHandle,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
}

impl Node {
    /// Validates the configuration, binds the listeners and starts serving.
    pub async fn start(source: ConfigSource) -> Result<Node, NodeError> {
        // The recorder must exist before compiling: routes bind their metric handles then.
        let metrics = admin::metrics_handle().map_err(NodeError::Metrics)?;
        let config = source.load()?;
        let started_with = StartupSettings::of(&config);
        let access_log = AccessLog::open(config.access_log.clone()).map_err(NodeError::AccessLog)?;

        let http = match config.listen_http {
            Some(a) => Some(bind("http", a).await?),
            None => None,
        };
        let https = match config.listen_https {
            Some(a) => Some(bind("https", a).await?),
            None => None,
        };
        let admin_listener = bind("admin", config.admin_listen).await?;
        let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (http_addr, https_addr) = (local(&http), local(&https));
        let admin_addr = admin_listener.local_addr().map_err(|source| NodeError::Bind {
            what: "admin",
            addr: config.admin_listen,
            source,
        })?;

        let dns_listen = config.cluster.as_ref().and_then(|c| c.dns.as_ref()).map(|d| d.listen);
        let dns_sockets = match dns_listen {
            Some(addr) => Some(meridian_dns::server::DnsSockets::bind(addr).map_err(|source| NodeError::Bind {
                what: "dns",
                addr,
                source,
            })?),
            None => None,
        };
        let dns_addr = dns_sockets.as_ref().and_then(|s| s.local_addr().ok());
        let client_rtt = Arc::new(std::sync::OnceLock::new());

        let sni = Arc::new(SniResolver::new(config.certificates, config.default_certificate.clone()));
        let mut table = config.table;
        table.revision = 1;
        let table = Arc::new(ArcSwap::from_pointee(table));
        let limits = config.limits;
        let reloader = Arc::new(Reloader::new(source, started_with, table.clone(), sni.clone()));
        if config.cluster.is_none() {
            metrics::gauge!("meridian_config_revision").set(1.0);
        }

        let limiter = Arc::new(Limiter::new(0, MAX_LIMIT_SCOPES));
        let upstreams = Arc::new(Upstreams::new());
        if !config.nameservers.is_empty() {
            upstreams.set_nameservers(config.nameservers.clone());
        }
        // Active health checks run from the moment a table is in use, whichever way it came
        // (the file, a reload, a cluster revision), and follow targets named in DNS as they
        // resolve: the table in use is looked at once a second.
        {
            let (table, upstreams) = (table.clone(), upstreams.clone());
            tokio::spawn(async move {
                loop {
                    table.load().proxies().for_each(|p| p.keep_health_checks(&upstreams));
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            });
        }
        let spans = match &config.tracing {
            Some(settings) => Some(crate::otlp::start(settings, upstreams.clone()).map_err(NodeError::Tracing)?),
            None => None,
        };
        let pipeline = Pipeline::new(table.clone(), &limits, access_log.clone(), limiter.clone(), upstreams.clone());
        let pipeline = Arc::new(pipeline.with_spans(spans.clone()));
        let connections = ConnectionTable::new(limits.max_connections, limits.max_connections_per_client);
        let (shutdown, stop) = watch::channel(false);
        let serving = watch::Sender::new(config.cluster.is_none());
        let listening = listener::ListenerShared {
            pipeline: pipeline.clone(),
            limits: limits.clone(),
            connections: connections.clone(),
            client_rtt: client_rtt.clone(),
            serving: serving.subscribe(),
            shutdown: stop.clone(),
        };
        let mut tasks = Vec::new();
        if let Some(l) = http {
            tasks.push(tokio::spawn(listener::serve(l, None, listening.clone())));
        }
        if let Some(l) = https {
            let setup = listener::TlsSetup { base: Arc::new(server_config(sni.clone())?), sni: sni.clone() };
            tasks.push(tokio::spawn(listener::serve(l, Some(setup), listening.clone())));
        }
        let admin_state = Arc::new(AdminState {
            metrics,
            reloader: reloader.clone(),
            pipeline: pipeline.clone(),
            token: config.admin_token,
            cluster: std::sync::OnceLock::new(),
        });
        tasks.push(tokio::spawn(admin::serve(admin_listener, admin_state.clone(), stop)));
        Ok(Node {
            http_addr,
            https_addr,
            admin_addr,
            cluster: config.cluster,
            table,
            limiter,
            upstreams,
            default_rate: config.default_rate,
            quota_file: std::sync::OnceLock::new(),
            admin: admin_state,
            reloader,
            shutdown,
            tasks,
            access_log,
            dns_sockets: Mutex::new(dns_sockets),
            dns_addr,
            client_rtt,
            serving,
            spans,
            dns: Arc::default(),
        })
    }

    /// What peers' calls to this node reach, for the RPC server of the member it becomes.
    pub fn rpc_handlers(&self) -> crate::cluster::rpc::Handlers {
        crate::cluster::rpc::Handlers {
            limiter: self.limiter.clone(),
            caches: self.admin.pipeline.caches().clone(),
            connections: self.admin.pipeline.connections().clone(),
            dns: self.dns.clone(),
        }
    }

    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// What this node advertises to its cluster: its listeners' addresses, with `address`
    /// (`cluster.advertise_address`) in place of their bound IP when it is set.
    pub fn advertised(&self, region: &str, address: Option<std::net::IpAddr>) -> Advertised {
        let public = |a: SocketAddr| address.map_or(a, |ip| SocketAddr::new(ip, a.port()));
        Advertised {
            region: region.to_string(),
            gateway: self.http_addr.or(self.https_addr).map(public),
            admin: self.admin_addr,
            dns: self.dns_addr.map(public),
        }
    }

    /// Serves the cluster's configuration from now on, and the cluster endpoints of the
    /// admin API.
    pub fn attach_cluster(&self, member: Arc<ClusterMember>) {
        // Before the first cluster table is served: no idempotent route ever claims a key in
        // the node's own ledger.
        self.admin.pipeline.records().replicate_through(member.clone());
        crate::cluster::dataplane::spawn_sync(
            member.clone(),
            self.table.clone(),
            self.reloader.sni().clone(),
            self.default_rate,
            self.serving.clone(),
        );
        self.limiter.set_node(member.id);
        let connections = self.admin.pipeline.connections();
        connections.set_node(member.id);
        connections.forward_through(member.clone());
        self.upstreams.set_region(&member.me.region);
        if let Some(spans) = &self.spans {
            spans.identify(&member.id.to_string(), &member.me.region);
        }
        let quotas = member.data_dir().join("quotas.bin");
        let restored = meridian_dataplane::limits::persist::restore(&self.limiter, &quotas);
        tracing::info!(restored, "quota counters restored");
        meridian_dataplane::limits::persist::spawn(self.limiter.clone(), quotas.clone());
        let _ = self.quota_file.set(quotas);
        crate::cluster::gossip::spawn(member.clone(), self.limiter.clone());
        let sockets = self.dns_sockets.lock().unwrap_or_else(|p| p.into_inner()).take();
        let settings = self.cluster.as_ref().and_then(|c| c.dns.clone());
        if let (Some(sockets), Some(settings)) = (sockets, settings) {
            match crate::cluster::dns::DnsService::start(member.clone(), &settings, sockets) {
                Ok((service, sink)) => {
                    let _ = self.dns.set(service);
                    let _ = self.client_rtt.set(sink);
                }
                Err(e) => tracing::error!(error = %e, "the DNS responder could not start"),
            }
        }
        let _ = self.admin.cluster.set(member);
    }

    /// The bound addresses as JSON, for `--ready-file` and tools that start nodes.
    pub fn addresses_json(&self) -> String {
        serde_json::json!({
            "http": self.http_addr.map(|a| a.to_string()),
            "https": self.https_addr.map(|a| a.to_string()),
            "admin": self.admin_addr.to_string(),
            "dns": self.dns_addr.map(|a| a.to_string()),
            "pid": std::process::id(),
        })
        .to_string()
    }

    /// Stops accepting, drains in-flight requests (up to the drain timeout) and flushes
    /// the access log.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        // WebSocket clients are told to go away (1001) and reconnect elsewhere; their
        // `$disconnect` deliveries get a few seconds.
        self.admin.pipeline.connections().drain(WEBSOCKET_DRAIN).await;
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(path) = self.quota_file.get()
            && let Err(e) = meridian_dataplane::limits::persist::save(&self.limiter, path)
        {
            tracing::warn!(error = %e, "quota counters could not be saved at shutdown");
        }
        self.access_log.close();
        // The last requests' spans, if the collector takes them soon.
        if let Some(spans) = &self.spans {
            spans.flush(std::time::Duration::from_secs(3)).await;
        }
    }

    /// Serves until SIGINT or SIGTERM; SIGHUP reloads the configuration.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let member = self.admin.cluster.get().cloned();
        let watched = member.clone();
        let left = async move {
            match watched {
                Some(m) => m.has_left().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(left);
        let mut has_left = false;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    let reloader = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = &mut left => {
                    has_left = true;
                    break;
                }
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown().await;
        if let (true, Some(member)) = (has_left, member) {
            if let Err(e) = member.raft.shutdown().await {
                tracing::warn!(error = %e, "Raft did not stop cleanly");
            }
            let removed = member.clear_data_dir();
            tracing::info!(
                node = member.id,
                ?removed,
                "left the cluster; the data directory can found or join a cluster again"
            );
            eprintln!(
                "meridian: node {} left the cluster and stopped; {} can be used to join again",
                member.id,
                member.data_dir().display()
            );
        }
        Ok(())
    }
}

/// Resolves at the first SIGINT or SIGTERM.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
