//! Reloading a node's configuration: re-read, validate, swap in.
//!
//! [`Reloader::reload`] re-reads the configuration and swaps the routing table and
//! certificates atomically; a bad file is rejected with all its errors and the running
//! configuration keeps serving. Listener addresses and limits take effect at the next start,
//! and a reload that changes them says so. The admin API and SIGHUP both reload through
//! here, so this module knows nothing of either.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use meridian_dataplane::certificates::SniResolver;
use meridian_dataplane::config::{
    ClusterSettings, ConfigErrors, GatewayConfig, Limits, RoutingTable, load_file, parse_str,
};

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

/// The settings a node takes only when it starts: a reload that changes them says so.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupSettings {
    listen_http: Option<SocketAddr>,
    listen_https: Option<SocketAddr>,
    admin_listen: SocketAddr,
    admin_token: Option<String>,
    limits: Limits,
    access_log: meridian_dataplane::observe::access_log::LogSink,
    cluster: Option<ClusterSettings>,
    default_rate: meridian_dataplane::limits::limiter::Rate,
    tracing: Option<meridian_dataplane::observe::spans::ExportSettings>,
}

impl StartupSettings {
    pub fn of(config: &GatewayConfig) -> Self {
        StartupSettings {
            listen_http: config.listen_http,
            listen_https: config.listen_https,
            admin_listen: config.admin_listen,
            admin_token: config.admin_token.clone(),
            limits: config.limits.clone(),
            access_log: config.access_log.clone(),
            cluster: config.cluster.clone(),
            default_rate: config.default_rate,
            tracing: config.tracing.clone(),
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
        note(self.tracing != now.tracing, "tracing");
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
    /// A reloader for a node started with `started_with` from `source`. A cluster member's routes
    /// come from the cluster, so its reloads swap certificates only.
    pub fn new(
        source: ConfigSource,
        started_with: StartupSettings,
        table: Arc<ArcSwap<RoutingTable>>,
        sni: Arc<SniResolver>,
    ) -> Self {
        Reloader {
            source,
            cluster_mode: started_with.cluster.is_some(),
            table,
            sni,
            file_revision: AtomicU64::new(1),
            serialize: Mutex::new(()),
            started_with,
        }
    }

    /// The certificates by SNI that reloads replace.
    pub fn sni(&self) -> &Arc<SniResolver> {
        &self.sni
    }

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
        // A cluster member's certificates are the cluster's domains (kept in step by the data
        // plane); only a standalone node takes them from its file.
        self.sni.set_default(config.default_certificate.clone());
        if !self.cluster_mode {
            self.sni.replace(config.certificates);
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
