//! Scenarios are data: a YAML file names the cluster's shape, the workload, the faults and
//! when they happen, and the invariants checked at the end.
//!
//! ```yaml
//! name: region-loss
//! description: Every node of one region dies; DNS moves its clients, then it comes back.
//! cluster: { regions: 3, nodes_per_region: 1 }
//! duration: 30s
//! workload:
//!   clients: { rate: 40 }          # requests/s from each client region, resolved through DNS
//!   writers: { rate: 4 }           # config writes/s
//! faults:
//!   - { at: 8s, kill: region r2 }
//!   - { at: 20s, restart: region r2 }
//! invariants:
//!   dns_failover_within: 3s
//!   max_failed_requests: 0.001
//! ```
//!
//! Targets are written `leader`, `follower`, `all`, `region r2`, `node r2-1`.

use std::time::Duration;

use serde::Deserialize;

/// A parsed scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub cluster: ClusterShape,
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Faults drawn from the seed.
    pub random: Option<RandomFaults>,
    #[serde(default)]
    pub invariants: Invariants,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterShape {
    #[serde(default = "three")]
    pub regions: usize,
    #[serde(default = "one")]
    pub nodes_per_region: usize,
    /// The nodes' Raft heartbeat (`cluster.heartbeat`); their default when not given.
    #[serde(default, deserialize_with = "optional_duration")]
    pub heartbeat: Option<Duration>,
}

impl Default for ClusterShape {
    fn default() -> Self {
        ClusterShape { regions: 3, nodes_per_region: 1, heartbeat: None }
    }
}

fn three() -> usize {
    3
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub clients: ClientLoad,
    pub writers: Option<WriterLoad>,
    pub keyed: Option<KeyedLoad>,
    /// Payments with an `Idempotency-Key`, retried on every timeout and error.
    pub payments: Option<PaymentsLoad>,
    /// WebSocket clients holding connections, and a backend pushing to them.
    pub sockets: Option<SocketsLoad>,
}

/// WebSocket clients (`websocket-failover`): connections held per client region, and the
/// backend's pushes per second through the callback API of random nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketsLoad {
    pub per_region: usize,
    pub push_rate: f64,
}

/// Payment clients (`retry-storm`): new keys per second, retried until a 2xx.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsLoad {
    /// New payments per second, spread over the client regions.
    pub rate: f64,
    /// How long one attempt waits for its answer (default 1s).
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub attempt_timeout: Duration,
    /// The longest the payment service takes to answer (default 1.5s): longer than the
    /// attempt timeout, so that retries arrive while the first attempt is in flight.
    #[serde(default = "one_and_a_half_seconds", deserialize_with = "duration")]
    pub slowest_answer: Duration,
    /// A payment stops retrying after this long (default 25s).
    #[serde(default = "twenty_five_seconds", deserialize_with = "duration")]
    pub give_up_after: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

fn one_and_a_half_seconds() -> Duration {
    Duration::from_millis(1500)
}

fn twenty_five_seconds() -> Duration {
    Duration::from_secs(25)
}

/// One client per client region resolves the API name through DNS and sends requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLoad {
    /// Requests per second from each client region.
    pub rate: u32,
}

impl Default for ClientLoad {
    fn default() -> Self {
        ClientLoad { rate: 20 }
    }
}

/// Configuration writes (stage variables), each to a distinct key, so none can hide another.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterLoad {
    /// Writes per second.
    pub rate: f64,
    /// Where writes are sent: `any` live node (default), or e.g. `region r3`.
    #[serde(default = "any")]
    pub target: String,
}

fn any() -> String {
    "any".into()
}

/// Clients with an API key under a usage plan, offering more than the plan's rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyedLoad {
    /// The plan's rate (requests per second, cluster-wide).
    pub limit: u32,
    /// Requests per second offered, spread over the regions.
    pub offered: u32,
}

/// One fault: when, for how long, and what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// Undo the fault after this long (partition heals, pause continues, link clears).
    #[serde(default, rename = "for", deserialize_with = "optional_duration")]
    pub lasting: Option<Duration>,
    /// SIGKILL.
    pub kill: Option<String>,
    /// SIGSTOP (a long stall), then SIGCONT after `for`.
    pub pause: Option<String>,
    /// Start killed nodes again.
    pub restart: Option<String>,
    /// SIGTERM each node in turn, wait for it to drain, start it, wait `every`.
    pub rolling_restart: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub every: Option<Duration>,
    /// Blackhole every link between the target and the rest, both ways.
    pub partition: Option<String>,
    /// Blackhole only what the target sends to the rest.
    pub partition_one_way: Option<String>,
    /// Reset every open connection to and from the target (RPC and client links).
    pub reset: Option<String>,
    /// Degrade links between regions.
    pub link: Option<LinkFault>,
}

/// Delay, jitter, loss and bandwidth on the links between two regions (or all of them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFault {
    /// `all-regions`, or two region names: `r1 r2`.
    pub between: String,
    #[serde(default, deserialize_with = "optional_duration")]
    pub delay: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub jitter: Option<Duration>,
    /// Fraction of packets (chunks) lost, 0.0–1.0.
    #[serde(default)]
    pub loss: f64,
    /// Kilobytes per second per connection and direction.
    pub bandwidth_kbps: Option<u64>,
}

/// Faults drawn from the run's seed: `count` of `kinds` (`kill`, `pause`) on random nodes
/// at random times within `window`, each undone after `lasting`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    pub count: usize,
    pub kinds: Vec<String>,
    #[serde(deserialize_with = "duration_pair")]
    pub window: (Duration, Duration),
    #[serde(deserialize_with = "duration")]
    pub lasting: Duration,
}

/// What must hold. Writes surviving, convergence and no split brain are always checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invariants {
    /// Every node reports the same revision within this long after the run.
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub converged_within: Duration,
    /// After a region dies, DNS stops answering with it within this long.
    #[serde(default, deserialize_with = "optional_duration")]
    pub dns_failover_within: Option<Duration>,
    /// The dead region's clients succeed again within this long (budget + TTL).
    #[serde(default, deserialize_with = "optional_duration")]
    pub client_recovery_within: Option<Duration>,
    /// Largest share of failed client requests outside failover windows (0.001 = 0.1 %).
    pub max_failed_requests: Option<f64>,
    /// Largest overshoot of the keyed clients' rate limit (0.1 = 10 %).
    pub limit_overshoot: Option<f64>,
    /// Writes sent to the minority side of a partition fail with an error, and none appear.
    #[serde(default)]
    pub minority_writes_refused: bool,
    /// Smallest share of writes acknowledged (0.9 = 90 %): the cluster keeps committing.
    pub min_writes_acked: Option<f64>,
    /// Payments: no key reaches the payment service twice, and every key a client saw
    /// succeed reached it exactly once.
    #[serde(default)]
    pub delivered_once: bool,
    /// Payments: the smallest share of them that succeeded (0.9 = 90 %).
    pub min_payments_succeeded: Option<f64>,
    /// Sockets: a client whose connection dropped holds a new one within this long.
    #[serde(default, deserialize_with = "optional_duration")]
    pub socket_reconnect_within: Option<Duration>,
    /// Sockets: every push a node accepted for an open connection reaches its client, in
    /// the order accepted (pushes accepted in the last second before the connection dropped
    /// excepted); pushes to connections that are gone answer 410.
    #[serde(default)]
    pub pushes_delivered: bool,
}

impl Default for Invariants {
    fn default() -> Self {
        Invariants {
            converged_within: thirty_seconds(),
            dns_failover_within: None,
            client_recovery_within: None,
            max_failed_requests: None,
            limit_overshoot: None,
            minority_writes_refused: false,
            min_writes_acked: None,
            delivered_once: false,
            min_payments_succeeded: None,
            socket_reconnect_within: None,
            pushes_delivered: false,
        }
    }
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

/// A target as written in a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Leader,
    Follower,
    All,
    Region(String),
    Node(String),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["leader"] => Ok(Target::Leader),
            ["follower"] => Ok(Target::Follower),
            ["all"] => Ok(Target::All),
            ["region", r] => Ok(Target::Region(r.to_string())),
            ["node", n] => Ok(Target::Node(n.to_string())),
            _ => Err(format!("`{text}` is not a target (leader, follower, all, region R, node R-N)")),
        }
    }
}

/// Parses `500ms`, `8s`, `1.5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not a duration (e.g. 500ms, 8s, 2m)");
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map(|i| text.split_at(i)).ok_or_else(bad)?;
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(bad()),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
}

fn duration_pair<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(Duration, Duration), D::Error> {
    let [a, b] = <[String; 2]>::deserialize(d)?;
    Ok((parse_duration(&a).map_err(serde::de::Error::custom)?, parse_duration(&b).map_err(serde::de::Error::custom)?))
}

impl Scenario {
    /// Parses and checks a scenario, listing every problem.
    pub fn parse(text: &str) -> Result<Scenario, Vec<String>> {
        let scenario: Scenario = serde_saphyr::from_str(text)
            .map_err(|e| vec![e.to_string().lines().next().unwrap_or("not a valid scenario").to_string()])?;
        let mut errors = Vec::new();
        let shape = &scenario.cluster;
        if !(1..=9).contains(&shape.regions) || !(1..=5).contains(&shape.nodes_per_region) {
            errors.push("cluster: 1-9 regions of 1-5 nodes".to_string());
        }
        if scenario.duration < Duration::from_secs(5) {
            errors.push("duration: at least 5s".to_string());
        }
        let region_ok = |r: &str| {
            r.strip_prefix('r').and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| (1..=shape.regions).contains(&n))
        };
        let node_ok = |n: &str| {
            n.split_once('-').is_some_and(|(r, i)| {
                region_ok(r) && i.parse::<usize>().is_ok_and(|i| (1..=shape.nodes_per_region).contains(&i))
            })
        };
        let check_target = |field: &str, text: &str, errors: &mut Vec<String>| match Target::parse(text) {
            Ok(Target::Region(r)) if !region_ok(&r) => errors.push(format!("{field}: no region `{r}`")),
            Ok(Target::Node(n)) if !node_ok(&n) => errors.push(format!("{field}: no node `{n}`")),
            Ok(_) => {}
            Err(e) => errors.push(format!("{field}: {e}")),
        };
        for (i, f) in scenario.faults.iter().enumerate() {
            let at = format!("faults[{i}]");
            let actions = [
                ("kill", &f.kill),
                ("pause", &f.pause),
                ("restart", &f.restart),
                ("rolling_restart", &f.rolling_restart),
                ("partition", &f.partition),
                ("partition_one_way", &f.partition_one_way),
                ("reset", &f.reset),
            ];
            let set = actions.iter().filter(|(_, v)| v.is_some()).count() + usize::from(f.link.is_some());
            if set != 1 {
                errors.push(format!(
                    "{at}: give exactly one of kill, pause, restart, rolling_restart, partition, partition_one_way, reset, link"
                ));
            }
            for (name, value) in actions {
                if let Some(t) = value {
                    check_target(&format!("{at}.{name}"), t, &mut errors);
                }
            }
            if f.pause.is_some() && f.lasting.is_none() {
                errors.push(format!("{at}: a pause needs `for`"));
            }
            if f.at > scenario.duration {
                errors.push(format!("{at}.at: after the end of the run"));
            }
            if let Some(link) = &f.link {
                if !(0.0..=1.0).contains(&link.loss) {
                    errors.push(format!("{at}.link.loss: a fraction from 0 to 1"));
                }
                let pair: Vec<&str> = link.between.split_whitespace().collect();
                let valid = link.between == "all-regions" || (pair.len() == 2 && pair.iter().all(|r| region_ok(r)));
                if !valid {
                    errors.push(format!("{at}.link.between: `all-regions` or two regions like `r1 r2`"));
                }
            }
        }
        if let Some(r) = &scenario.random {
            for kind in &r.kinds {
                if kind != "kill" && kind != "pause" {
                    errors.push(format!("random.kinds: `{kind}` (kill or pause)"));
                }
            }
            if r.window.0 >= r.window.1 || r.window.1 > scenario.duration {
                errors.push("random.window: [start, end] within the run".to_string());
            }
        }
        if let Some(w) = &scenario.workload.writers {
            check_target("workload.writers.target", if w.target == "any" { "all" } else { &w.target }, &mut errors);
        }
        if let Some(sockets) = &scenario.workload.sockets
            && (!(1..=200).contains(&sockets.per_region) || !(0.1..=1000.0).contains(&sockets.push_rate))
        {
            errors.push("workload.sockets: 1-200 connections per region and 0.1-1000 pushes a second".to_string());
        }
        let needs_sockets =
            scenario.invariants.socket_reconnect_within.is_some() || scenario.invariants.pushes_delivered;
        if needs_sockets && scenario.workload.sockets.is_none() {
            errors.push("invariants: socket_reconnect_within and pushes_delivered need workload.sockets".to_string());
        }
        if errors.is_empty() { Ok(scenario) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "5", "5h", "-1s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_shipped_scenario_parses() {
        for (name, text) in crate::SCENARIOS {
            let s = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(s.name, *name);
        }
    }

    #[test]
    fn lists_every_problem() {
        let text = r#"
name: bad
description: x
duration: 10s
faults:
  - { at: 20s, kill: region r7 }
  - { at: 1s, pause: leader }
  - { at: 1s, kill: leader, partition: all }
  - { at: 1s, link: { between: r1, loss: 2 } }
"#;
        let errors = Scenario::parse(text).unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(Scenario::parse("name: x\ndescription: y\nduration: 10s\ntypo: 1\n").is_err());
    }
}
