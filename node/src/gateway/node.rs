//! A running gateway node: its listeners, its current routing table, reload and shutdown.
//!
//! [`Node::start`] validates the configuration, binds every listener (failing clearly if an
//! address is taken), and starts serving. [`Reloader::reload`] re-reads the configuration
//! and swaps the routing table and certificates atomically; a bad file is rejected with
//! all its errors and the running configuration keeps serving. Listener addresses and
//! limits take effect at the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::conns::ConnectionTable;
use super::listener;
use super::tls::{SniResolver, server_config};
use crate::admin::{self, AdminState};
use crate::cluster::member::{Advertised, ClusterMember};
use crate::config::{ClusterSettings, ConfigErrors, GatewayConfig, Limits, RoutingTable, load_file, parse_str};
use crate::limits::limiter::Limiter;
use crate::observe::access_log::AccessLog;

/// How many rate-limit scopes a node tracks before it evicts the least recently used.
const MAX_LIMIT_SCOPES: usize = 100_000;
use crate::pipeline::Pipeline;

/// Where a node's configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// Configuration text held in memory (the demo's), with a name for errors.
    Text {
        name: String,
        text: String,
    },
}

impl ConfigSource {
    pub fn load(&self) -> Result<GatewayConfig, ConfigErrors> {
        match self {
            ConfigSource::File(path) => load_file(path),
            ConfigSource::Text { name, text } => parse_str(text, name, std::path::Path::new(".")),
        }
    }
}

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
}

/// Re-reads the configuration and swaps it in.
pub struct Reloader {
    source: ConfigSource,
    /// A cluster member's routes come from the cluster: reload then swaps certificates only.
    cluster_mode: bool,
    table: Arc<ArcSwap<RoutingTable>>,
    sni: Arc<SniResolver>,
    revision: AtomicU64,
    serialize: Mutex<()>,
    started_with: (Option<SocketAddr>, Option<SocketAddr>, SocketAddr, Limits),
}

impl Reloader {
    /// The revision being served (1 at start, +1 per successful reload).
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Loads, validates and swaps in the configuration; blocking (reads files).
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.serialize.lock().unwrap_or_else(|p| p.into_inner());
        let config = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("meridian_config_reloads_total", "result" => "rejected").increment(1);
                tracing::error!(errors = %e, "reload rejected; the running configuration keeps serving");
                return Err(e);
            }
        };
        let now = (config.listen_http, config.listen_https, config.admin_listen, config.limits.clone());
        if now != self.started_with {
            tracing::warn!("listener addresses and limits changed: they take effect at the next restart");
        }
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        self.sni.replace(config.certificates);
        if !self.cluster_mode {
            let mut table = config.table;
            table.revision = revision;
            self.table.store(Arc::new(table));
        }
        metrics::counter!("meridian_config_reloads_total", "result" => "applied").increment(1);
        metrics::gauge!("meridian_config_revision").set(revision as f64);
        tracing::info!(revision, "configuration reloaded");
        Ok(revision)
    }
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
    /// The cluster-wide rate limit from the node's file, applied to the cluster's APIs.
    default_rate: crate::limits::limiter::Rate,
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
    client_rtt: Arc<std::sync::OnceLock<crate::cluster::dns::ClientRttSink>>,
    /// Whether listeners accept connections: at once for a file configuration, once the
    /// cluster's configuration is compiled for a member.
    serving: watch::Sender<bool>,
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

        let sni = Arc::new(SniResolver::new(config.certificates));
        let mut table = config.table;
        table.revision = 1;
        let table = Arc::new(ArcSwap::from_pointee(table));
        let limits = config.limits;
        let reloader = Arc::new(Reloader {
            source,
            cluster_mode: config.cluster.is_some(),
            table: table.clone(),
            sni: sni.clone(),
            revision: AtomicU64::new(1),
            serialize: Mutex::new(()),
            started_with: (config.listen_http, config.listen_https, config.admin_listen, limits.clone()),
        });
        metrics::gauge!("meridian_config_revision").set(1.0);

        let limiter = Arc::new(Limiter::new(0, MAX_LIMIT_SCOPES));
        let pipeline = Arc::new(Pipeline::new(table.clone(), &limits, access_log.clone(), limiter.clone()));
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
            let acceptor = TlsAcceptor::from(Arc::new(server_config(sni)?));
            tasks.push(tokio::spawn(listener::serve(l, Some(acceptor), listening.clone())));
        }
        let admin_state = Arc::new(AdminState {
            metrics,
            reloader: reloader.clone(),
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
        })
    }

    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// What this node advertises to its cluster.
    pub fn advertised(&self, region: &str) -> Advertised {
        Advertised {
            region: region.to_string(),
            gateway: self.http_addr.or(self.https_addr),
            admin: self.admin_addr,
            dns: self.dns_addr,
        }
    }

    /// Serves the cluster's configuration from now on, and the cluster endpoints of the
    /// admin API.
    pub fn attach_cluster(&self, member: Arc<ClusterMember>) {
        crate::cluster::dataplane::spawn_sync(
            member.clone(),
            self.table.clone(),
            self.reloader.sni.clone(),
            self.default_rate,
            self.serving.clone(),
        );
        self.limiter.set_node(member.id);
        let quotas = member.data_dir().join("quotas.bin");
        let restored = crate::limits::persist::restore(&self.limiter, &quotas);
        tracing::info!(restored, "quota counters restored");
        crate::limits::persist::spawn(self.limiter.clone(), quotas.clone());
        let _ = self.quota_file.set(quotas);
        crate::cluster::gossip::spawn(member.clone(), self.limiter.clone());
        let sockets = self.dns_sockets.lock().unwrap_or_else(|p| p.into_inner()).take();
        let settings = self.cluster.as_ref().and_then(|c| c.dns.clone());
        if let (Some(sockets), Some(settings)) = (sockets, settings) {
            match crate::cluster::dns::DnsService::start(member.clone(), &settings, sockets) {
                Ok((_, sink)) => {
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
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(path) = self.quota_file.get()
            && let Err(e) = crate::limits::persist::save(&self.limiter, path)
        {
            tracing::warn!(error = %e, "quota counters could not be saved at shutdown");
        }
        self.access_log.close();
    }

    /// Serves until SIGINT or SIGTERM; SIGHUP reloads the configuration.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    let reloader = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown().await;
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
