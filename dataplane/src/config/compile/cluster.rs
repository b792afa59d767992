//! Compiling a node's `cluster` section: its data folder, RPC and advertised addresses,
//! Raft timing, and `cluster.dns` (the responder's listener, workers, rate limit and
//! forwarding), each checked with its line.

use super::*;

impl Compiler<'_> {
    pub(super) fn cluster(&mut self, c: &ClusterSection, file: &GatewayFile) -> Option<ClusterSettings> {
        if let Some(api) = file.apis.first() {
            self.sink.push(
                api.id.referenced,
                "apis",
                "a cluster member serves the cluster's APIs: deploy them with `meridian apply`",
            );
        }
        let rpc_listen = self.socket_addr(&c.rpc, "cluster.rpc")?;
        let advertise_rpc = match &c.advertise_rpc {
            Some(a) => match a.value.parse::<SocketAddr>() {
                Ok(addr) => addr.to_string(),
                Err(_) => match a.value.rsplit_once(':') {
                    Some((host, port))
                        if valid_host(host) && !host.starts_with("*.") && port.parse::<u16>().is_ok_and(|p| p != 0) =>
                    {
                        a.value.to_ascii_lowercase()
                    }
                    _ => {
                        self.sink.push(
                            a.referenced,
                            "cluster.advertise_rpc",
                            format!("`{}` is neither `IP:port` nor `host:port`", a.value),
                        );
                        return None;
                    }
                },
            },
            None if rpc_listen.ip().is_unspecified() || rpc_listen.port() == 0 => {
                self.sink.push(
                    c.rpc.referenced,
                    "cluster.advertise_rpc",
                    "set the address peers use when `rpc` is a wildcard or port 0",
                );
                return None;
            }
            None => rpc_listen.to_string(),
        };
        if !(10..=1_000_000).contains(&c.snapshot_after_logs.value) {
            self.sink.push(
                c.snapshot_after_logs.referenced,
                "cluster.snapshot_after_logs",
                "must be from 10 to 1000000",
            );
            return None;
        }
        let heartbeat = match &c.heartbeat {
            None => Duration::from_millis(150),
            Some(h) => match super::parse_duration(&h.value) {
                Ok(d) if (Duration::from_millis(50)..=Duration::from_secs(5)).contains(&d) => d,
                _ => {
                    self.sink.push(h.referenced, "cluster.heartbeat", "a duration from 50ms to 5s, e.g. `300ms`");
                    return None;
                }
            },
        };
        let dns = match &c.dns {
            Some(d) => Some(self.dns(d)?),
            None => None,
        };
        let advertise_address = match &c.advertise_address {
            None => None,
            Some(a) => match a.value.parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => Some(ip),
                _ => {
                    self.sink.push(
                        a.referenced,
                        "cluster.advertise_address",
                        format!("`{}` is not a unicast IP address", a.value),
                    );
                    return None;
                }
            },
        };
        // Peers probe the gateway and DNS answers name it: a wildcard is no address to give.
        let wildcard = |a: Option<&Spanned<String>>| {
            a.and_then(|a| a.value.parse::<SocketAddr>().ok()).is_some_and(|a| a.ip().is_unspecified())
        };
        if advertise_address.is_none()
            && (wildcard(file.listen.http.as_ref())
                || wildcard(file.listen.https.as_ref())
                || wildcard(c.dns.as_ref().map(|d| &d.listen)))
        {
            self.sink.push(
                c.rpc.referenced,
                "cluster.advertise_address",
                "a listener binds a wildcard address: set the IP peers and DNS clients reach this node at",
            );
            return None;
        }
        Some(ClusterSettings {
            data_dir: self.path(&c.data_dir.value),
            rpc_listen,
            advertise_rpc,
            advertise_address,
            snapshot_after_logs: c.snapshot_after_logs.value,
            heartbeat,
            dns,
        })
    }

    fn dns(&mut self, d: &DnsSection) -> Option<DnsSettings> {
        let listen = self.socket_addr(&d.listen, "cluster.dns.listen");
        if !(1..=64).contains(&d.udp_workers.value) {
            self.sink.push(d.udp_workers.referenced, "cluster.dns.udp_workers", "must be from 1 to 64");
        }
        let forward = d.forward.as_ref().map(|f| {
            if f.upstreams.is_empty() {
                self.sink.push(Location::UNKNOWN, "cluster.dns.forward.upstreams", "name at least one resolver");
            }
            let upstreams: Vec<SocketAddr> = f
                .upstreams
                .iter()
                .enumerate()
                .filter_map(|(i, u)| self.socket_addr(u, &format!("cluster.dns.forward.upstreams[{i}]")))
                .collect();
            let allow = f
                .allow
                .iter()
                .enumerate()
                .filter_map(|(i, a)| match a.value.parse::<meridian_dns::net::Cidr>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.sink.push(a.referenced, format!("cluster.dns.forward.allow[{i}]"), e.to_string());
                        None
                    }
                })
                .collect();
            (upstreams, allow)
        });
        Some(DnsSettings {
            listen: listen?,
            udp_workers: d.udp_workers.value.clamp(1, 64),
            rate_limit: d.rate_limit,
            slip: d.slip,
            forward,
        })
    }
}
