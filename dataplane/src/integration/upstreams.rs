//! A node's upstream targets, shared by every route that calls them and kept across
//! reloads and cluster revisions.
//!
//! A compiled integration holds only what its upstream is (an [`UpstreamSpec`]: targets,
//! weights, regions, TLS trust, protocol, health settings). The first request on a new
//! routing table binds it to the node's [`Upstreams`], which hands out the same
//! [`Endpoint`] (with its open connections and its health) for equal targets, so a reload
//! that leaves a route's upstream alone leaves its connections alone too. Endpoints no
//! table uses any more are dropped when the next integration binds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use http::uri::{Authority, Scheme};

use super::balance::{Balance, Balancer, Target};
use super::endpoint::{Endpoint, EndpointKey, EndpointSettings};

/// One target as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub authority: Authority,
    pub weight: u32,
    pub region: Option<String>,
}

/// What an integration's upstream is, compiled from the configuration.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub scheme: Scheme,
    pub targets: Vec<TargetSpec>,
    pub balance: Balance,
    pub settings: EndpointSettings,
    pub http2: bool,
    /// For `https`: the certificate name to expect (the URI's host).
    pub server_name: Option<String>,
    /// For `https`: the client configuration, and the digest of its CA file (`None`: the
    /// system roots).
    pub tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
    /// Targets found in DNS instead of `targets` (which is then empty).
    pub discovery: Option<super::discovery::Lookup>,
    /// An active health check of every target.
    pub check: Option<super::endpoint::HealthCheck>,
}

/// The node's endpoints by what identifies their connections.
#[derive(Debug, Default)]
pub struct Upstreams {
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
    /// The node's region, once it is a cluster member: targets there are preferred.
    region: OnceLock<String>,
    /// The resolver of targets named in DNS, made on first use (`resolver.nameservers`, or
    /// the system's).
    discovery: OnceLock<Result<Arc<super::discovery::Discovery>, String>>,
    nameservers: OnceLock<Vec<std::net::SocketAddr>>,
}

impl Upstreams {
    pub fn new() -> Upstreams {
        Upstreams::default()
    }

    pub fn set_region(&self, region: &str) {
        let _ = self.region.set(region.to_string());
    }

    /// The name servers discovery asks, instead of the system's (`resolver.nameservers`).
    pub fn set_nameservers(&self, nameservers: Vec<std::net::SocketAddr>) {
        let _ = self.nameservers.set(nameservers);
    }

    /// The node's discovery resolver; `Err` says why there is none (no name server).
    pub fn discovery(&self) -> Result<Arc<super::discovery::Discovery>, String> {
        self.discovery
            .get_or_init(|| {
                let servers = match self.nameservers.get() {
                    Some(list) if !list.is_empty() => list.clone(),
                    _ => super::discovery::system_nameservers(),
                };
                if servers.is_empty() {
                    return Err("no name server to resolve upstream names with (set `resolver.nameservers`)".into());
                }
                super::discovery::Discovery::new(&servers).map(Arc::new)
            })
            .clone()
    }

    pub fn region(&self) -> Option<&str> {
        self.region.get().map(String::as_str)
    }

    /// The balancer over `spec`'s targets, reusing endpoints that exist already.
    pub fn bind(&self, spec: &UpstreamSpec) -> Balancer {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        // Endpoints only this registry still holds, with no connection open, are gone.
        endpoints.retain(|_, e| Arc::strong_count(e) > 1 || e.open_connections() > 0);
        let targets = spec
            .targets
            .iter()
            .map(|t| {
                let key = EndpointKey {
                    scheme: spec.scheme.clone(),
                    authority: t.authority.clone(),
                    server_name: spec.server_name.clone(),
                    trust: spec.tls.as_ref().and_then(|(_, digest)| digest.clone()),
                    http2: spec.http2,
                };
                let endpoint = match endpoints.get(&key) {
                    Some(e) if e.settings() == spec.settings => e.clone(),
                    _ => {
                        let e = Arc::new(Endpoint::new(
                            key.clone(),
                            spec.settings,
                            spec.tls.as_ref().map(|(c, _)| c.clone()),
                        ));
                        endpoints.insert(key, e.clone());
                        e
                    }
                };
                if let Some(check) = &spec.check {
                    endpoint.start_checks(check);
                }
                Target { endpoint, weight: t.weight, region: t.region.clone() }
            })
            .collect();
        Balancer::new(targets, spec.balance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ports: &[u16]) -> UpstreamSpec {
        UpstreamSpec {
            scheme: Scheme::HTTP,
            targets: ports
                .iter()
                .map(|p| TargetSpec { authority: format!("127.0.0.1:{p}").parse().unwrap(), weight: 1, region: None })
                .collect(),
            balance: Balance::RoundRobin,
            settings: EndpointSettings::default(),
            http2: false,
            server_name: None,
            tls: None,
            discovery: None,
            check: None,
        }
    }

    #[test]
    fn equal_targets_share_their_endpoint_across_bindings() {
        let upstreams = Upstreams::new();
        let old = upstreams.bind(&spec(&[1, 2]));
        let new = upstreams.bind(&spec(&[2, 3]));
        assert!(Arc::ptr_eq(&old.targets()[1].endpoint, &new.targets()[0].endpoint));
        assert!(!Arc::ptr_eq(&old.targets()[0].endpoint, &new.targets()[1].endpoint));
        // Other settings make another endpoint.
        let mut changed = spec(&[2]);
        changed.settings.failures = 9;
        let other = upstreams.bind(&changed);
        assert!(!Arc::ptr_eq(&other.targets()[0].endpoint, &new.targets()[0].endpoint));
    }
}
