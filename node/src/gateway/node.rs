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

/// The settings a node takes only when it starts: a reload that changes them says so.
#[derive(Debug, Clone, PartialEq)]
struct StartupSettings {
    listen_http: Option<SocketAddr>,
    listen_https: Option<SocketAddr>,
    admin_listen: SocketAddr,
    admin_token: Option<String>,
    limits: Limits,
    access_log: crate::observe::access_log::LogSink,
    cluster: Option<ClusterSettings>,
    default_rate: crate::limits::limiter::Rate,
}

impl StartupSettings {
    fn of(config: &GatewayConfig) -> Self {
        StartupSettings {
            listen_http: config.listen_http,
            listen_https: config.listen_https,
            admin_listen: config.admin_listen,
            admin_token: config.admin_token.clone(),
            limits: config.limits.clone(),
            access_log: config.access_log.clone(),
            cluster: config.cluster.clone(),
            default_rate: config.default_rate,
        }
    }

    /// The sections of the file whose change waits for a restart, by their names in the file.
    fn changed_in(&self, now: &StartupSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut note = |differs: bool, name: &'static str| {
            if differs {
                changed.push(name);
            }
        };
        note(self.listen_http != now.listen_http, "listen.http");
        note(self.listen_https != now.listen_https, "listen.https");
        note(self.admin_listen != now.admin_listen, "admin.listen");
        note(self.admin_token != now.admin_token, "admin.token_file");
        note(self.limits != now.limits, "limits");
        note(self.access_log != now.access_log, "access_log");
        note(self.default_rate != now.default_rate, "throttle");
        let dns = |c: &Option<ClusterSettings>| c.as_ref().and_then(|c| c.dns.clone());
        let without_dns = |c: &Option<ClusterSettings>| c.clone().map(|c| ClusterSettings { dns: None, ..c });
        note(without_dns(&self.cluster) != without_dns(&now.cluster), "cluster");
        note(dns(&self.cluster) != dns(&now.cluster), "cluster.dns");
        changed
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The configuration revision served now (see [`Reloader::revision`]).
    pub revision: u64,
    /// Sections of the file that changed but take effect only at the next restart.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads the configuration and swaps it in.
pub struct Reloader {
    source: ConfigSource,
    /// A cluster member's routes come from the cluster: reload then swaps certificates only.
    cluster_mode: bool,
    table: Arc<ArcSwap<RoutingTable>>,
    sni: Arc<SniResolver>,
    /// Reloads of the file that applied (the revision of a node serving from its file).
    file_revision: AtomicU64,
    serialize: Mutex<()>,
    started_with: StartupSettings,
}

impl Reloader {
    /// The configuration revision being served: the cluster's revision on a cluster member
    /// (the one `meridian cluster status` and the write commands report), the file's own
    /// (1 at start, +1 per applied reload) on a node serving from its file. `/readyz`,
    /// `meridian_config_revision` and reload all report this one number.
    pub fn revision(&self) -> u64 {
        if self.cluster_mode { self.table.load().revision } else { self.file_revision.load(Ordering::Relaxed) }
    }

    /// Loads, validates and swaps in the configuration; blocking (reads files).
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one_at_a_time = self.serialize.lock().unwrap_or_else(|p| p.into_inner());
        let config = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("meridian_config_reloads_total", "result" => "rejected").increment(1);
                tracing::error!(errors = %e, "reload rejected; the running configuration keeps serving");
                return Err(e);
            }
        };
        let needs_restart = self.started_with.changed_in(&StartupSettings::of(&config));
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart, "these changes take effect at the next restart");
        }
        self.sni.replace(config.certificates);
        if !self.cluster_mode {
            let revision = self.file_revision.fetch_add(1, Ordering::Relaxed) + 1;
            let mut table = config.table;
            table.revision = revision;
            self.table.store(Arc::new(table));
            metrics::gauge!("meridian_config_revision").set(revision as f64);
        }
        metrics::counter!("meridian_config_reloads_total", "result" => "applied").increment(1);
        let revision = self.revision();
        tracing::info!(revision, "configuration reloaded");
        Ok(Reloaded { revision, needs_restart })
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
            file_revision: AtomicU64::new(1),
            serialize: Mutex::new(()),
            started_with,
        });
        if config.cluster.is_none() {
            metrics::gauge!("meridian_config_revision").set(1.0);
        }

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
