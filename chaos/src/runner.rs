//! Runs a scenario: builds the cluster, drives the workload, applies the faults on
//! schedule, prints progress, checks the invariants and writes the report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cluster::{ChaosCluster, ClusterApis, SetupError, client_ip};
use crate::payments::{self, Deliveries, Payment, PaymentLoad};
use crate::report::{FaultEvent, Figures, Report, Verdict};
use crate::scenario::{FaultSpec, LinkFault, Scenario, Target};
use crate::seeded::Xorshift;
use crate::sockets;
use crate::workload::{self, ClientKind, Timeline, WriteTarget};

/// The routed answers' TTL (set by the cluster's zone).
const DNS_TTL: Duration = Duration::from_secs(5);

/// How a run is done.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// Leave the nodes' folders on disk.
    pub keep: bool,
    pub report_dir: PathBuf,
    /// Third octet of the nodes' addresses (clients use the next one).
    pub subnet: u8,
    /// Print a live progress line.
    pub progress: bool,
}

/// A fault in the schedule.
#[derive(Debug, Clone)]
enum Action {
    Kill(Target),
    Pause(Target, Duration),
    Restart(Target),
    Rolling(Target, Duration),
    Partition { target: Target, one_way: bool, lasting: Option<Duration> },
    Reset(Target),
    Link(LinkFault, Option<Duration>),
}

#[derive(Debug, Clone)]
struct Planned {
    at: Duration,
    action: Action,
}

/// Nodes that went down (killed or paused) at a moment, for failover measurements.
#[derive(Debug, Clone)]
struct Outage {
    at_s: f64,
    nodes: Vec<usize>,
    failover_s: Option<f64>,
}

/// A partition as it happened.
#[derive(Debug, Clone)]
struct Cut {
    from_s: f64,
    until_s: Option<f64>,
    inside: Vec<usize>,
}

struct Shared {
    cluster: Arc<ChaosCluster>,
    timeline: Arc<Timeline>,
    events: Mutex<Vec<FaultEvent>>,
    outages: Mutex<Vec<Outage>>,
    cuts: Mutex<Vec<Cut>>,
    dns_budget: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn plan(scenario: &Scenario, seed: u64, nodes: &[String]) -> Vec<Planned> {
    let mut planned: Vec<Planned> = scenario.faults.iter().map(planned_from).collect();
    if let Some(random) = &scenario.random {
        let mut draw = Xorshift::new(seed);
        let span = (random.window.1 - random.window.0).as_millis().max(1) as u64;
        for _ in 0..random.count {
            let at = random.window.0 + Duration::from_millis(draw.draw() % span);
            let node = nodes[(draw.draw() % nodes.len() as u64) as usize].clone();
            let kind = &random.kinds[(draw.draw() % random.kinds.len().max(1) as u64) as usize];
            let target = Target::Node(node);
            if kind == "kill" {
                planned.push(Planned { at, action: Action::Kill(target.clone()) });
                planned.push(Planned { at: at + random.lasting, action: Action::Restart(target) });
            } else {
                planned.push(Planned { at, action: Action::Pause(target, random.lasting) });
            }
        }
    }
    planned.sort_by_key(|p| p.at);
    planned
}

fn planned_from(f: &FaultSpec) -> Planned {
    let target = |t: &String| Target::parse(t).unwrap_or(Target::All);
    let action = if let Some(t) = &f.kill {
        Action::Kill(target(t))
    } else if let Some(t) = &f.pause {
        Action::Pause(target(t), f.lasting.unwrap_or(Duration::from_secs(5)))
    } else if let Some(t) = &f.restart {
        Action::Restart(target(t))
    } else if let Some(t) = &f.rolling_restart {
        Action::Rolling(target(t), f.every.unwrap_or(Duration::from_secs(3)))
    } else if let Some(t) = &f.partition {
        Action::Partition { target: target(t), one_way: false, lasting: f.lasting }
    } else if let Some(t) = &f.partition_one_way {
        Action::Partition { target: target(t), one_way: true, lasting: f.lasting }
    } else if let Some(t) = &f.reset {
        Action::Reset(target(t))
    } else if let Some(link) = &f.link {
        Action::Link(link.clone(), f.lasting)
    } else {
        Action::Restart(Target::All)
    };
    Planned { at: f.at, action }
}

impl Shared {
    async fn resolve(&self, target: &Target) -> Vec<usize> {
        let cluster = &self.cluster;
        match target {
            Target::Leader => cluster.leader().await.into_iter().collect(),
            Target::Follower => {
                let leader = cluster.leader().await;
                (0..cluster.nodes.len()).find(|&n| Some(n) != leader && cluster.is_running(n)).into_iter().collect()
            }
            Target::All => (0..cluster.nodes.len()).collect(),
            Target::Region(r) => {
                let index = r.trim_start_matches('r').parse::<usize>().unwrap_or(0).saturating_sub(1);
                cluster.region_nodes(index)
            }
            Target::Node(name) => cluster.nodes.iter().position(|n| &n.name == name).into_iter().collect(),
        }
    }

    fn names(&self, nodes: &[usize]) -> Vec<String> {
        nodes.iter().map(|&n| self.cluster.nodes[n].name.clone()).collect()
    }

    fn event(&self, action: &str, nodes: &[usize]) -> usize {
        let mut events = lock(&self.events);
        events.push(FaultEvent {
            at_s: self.timeline.now_s(),
            until_s: None,
            action: action.to_string(),
            nodes: self.names(nodes),
        });
        events.len() - 1
    }

    fn end_event(&self, index: usize) {
        if let Some(e) = lock(&self.events).get_mut(index) {
            e.until_s = Some(self.timeline.now_s());
        }
    }

    /// Watches DNS until answers for the affected regions' clients exclude `down`.
    fn watch_failover(self: &Arc<Self>, outage: usize, down: Vec<usize>) {
        let shared = self.clone();
        tokio::spawn(async move {
            let cluster = &shared.cluster;
            let dead: Vec<std::net::Ipv4Addr> = down.iter().map(|&n| cluster.nodes[n].ip).collect();
            let regions: Vec<usize> = {
                let mut r: Vec<usize> = down.iter().map(|&n| cluster.nodes[n].region).collect();
                r.sort_unstable();
                r.dedup();
                r
            };
            let started = Instant::now();
            let at_s = shared.timeline.now_s();
            while started.elapsed() < Duration::from_secs(30) {
                let observers: Vec<usize> =
                    (0..cluster.nodes.len()).filter(|n| !down.contains(n) && cluster.is_running(*n)).collect();
                let mut all_moved = !observers.is_empty();
                for &region in &regions {
                    let subnet = Some((client_ip(region, cluster.subnet), 24));
                    let mut moved = false;
                    for &o in &observers {
                        if let Ok(answer) =
                            crate::dns::resolve(cluster.nodes[o].dns(), subnet, Duration::from_millis(300)).await
                        {
                            moved = !answer.addresses.iter().any(|a| dead.contains(a));
                            break;
                        }
                    }
                    all_moved &= moved;
                }
                if all_moved {
                    if let Some(o) = lock(&shared.outages).get_mut(outage) {
                        o.failover_s = Some(shared.timeline.now_s() - at_s);
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    fn outage(self: &Arc<Self>, nodes: &[usize]) {
        let index = {
            let mut outages = lock(&self.outages);
            outages.push(Outage { at_s: self.timeline.now_s(), nodes: nodes.to_vec(), failover_s: None });
            outages.len() - 1
        };
        self.watch_failover(index, nodes.to_vec());
    }

    async fn execute(self: &Arc<Self>, action: Action) {
        let cluster = self.cluster.clone();
        match action {
            Action::Kill(target) => {
                let nodes = self.resolve(&target).await;
                // The outage starts when the first signal goes out.
                self.event("kill", &nodes);
                self.outage(&nodes);
                for &n in &nodes {
                    cluster.kill(n).await;
                }
            }
            Action::Pause(target, lasting) => {
                let nodes = self.resolve(&target).await;
                let event = self.event("pause", &nodes);
                self.outage(&nodes);
                for &n in &nodes {
                    cluster.signal(n, libc::SIGSTOP);
                }
                let shared = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(lasting).await;
                    for &n in &nodes {
                        shared.cluster.signal(n, libc::SIGCONT);
                    }
                    shared.end_event(event);
                });
            }
            Action::Restart(target) => {
                let nodes: Vec<usize> =
                    self.resolve(&target).await.into_iter().filter(|&n| !cluster.is_running(n)).collect();
                let event = self.event("restart", &nodes);
                for &n in &nodes {
                    if let Err(e) = cluster.restart(n).await {
                        eprintln!("chaos: restarting {} failed: {e}", cluster.nodes[n].name);
                    }
                }
                self.end_event(event);
                // The kills these nodes were down from end now.
                let names = self.names(&nodes);
                let now = self.timeline.now_s();
                for e in lock(&self.events).iter_mut() {
                    if e.action == "kill" && e.until_s.is_none() && e.nodes.iter().all(|n| names.contains(n)) {
                        e.until_s = Some(now);
                    }
                }
            }
            Action::Rolling(target, every) => {
                let nodes = self.resolve(&target).await;
                let event = self.event("rolling restart", &nodes);
                for &n in &nodes {
                    cluster.terminate(n).await;
                    if let Err(e) = cluster.restart(n).await {
                        eprintln!("chaos: restarting {} failed: {e}", cluster.nodes[n].name);
                    }
                    tokio::time::sleep(every).await;
                }
                self.end_event(event);
            }
            Action::Partition { target, one_way, lasting } => {
                let nodes = self.resolve(&target).await;
                let clients: Vec<usize> = match &target {
                    Target::Region(_) => nodes.iter().map(|&n| cluster.nodes[n].region).take(1).collect(),
                    _ => Vec::new(),
                };
                cluster.partition(&nodes, &clients, true, one_way);
                let event = self.event(if one_way { "one-way partition" } else { "partition" }, &nodes);
                let cut = {
                    let mut cuts = lock(&self.cuts);
                    cuts.push(Cut { from_s: self.timeline.now_s(), until_s: None, inside: nodes.clone() });
                    cuts.len() - 1
                };
                if let Some(lasting) = lasting {
                    let shared = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(lasting).await;
                        shared.cluster.partition(&nodes, &clients, false, one_way);
                        shared.end_event(event);
                        if let Some(c) = lock(&shared.cuts).get_mut(cut) {
                            c.until_s = Some(shared.timeline.now_s());
                        }
                    });
                }
            }
            Action::Reset(target) => {
                let nodes = self.resolve(&target).await;
                cluster.reset(&nodes);
                self.event("reset connections", &nodes);
            }
            Action::Link(link, lasting) => {
                let pairs: Vec<(usize, usize)> = if link.between == "all-regions" {
                    (0..cluster.regions)
                        .flat_map(|a| (0..cluster.regions).map(move |b| (a, b)))
                        .filter(|(a, b)| a != b)
                        .collect()
                } else {
                    let r: Vec<usize> = link
                        .between
                        .split_whitespace()
                        .filter_map(|r| r.trim_start_matches('r').parse::<usize>().ok())
                        .map(|r| r.saturating_sub(1))
                        .collect();
                    vec![(r[0], r[1])]
                };
                let delay = link.delay.unwrap_or_default();
                let jitter = link.jitter.unwrap_or_default();
                let bandwidth = link.bandwidth_kbps.unwrap_or(0) * 1024;
                cluster.degrade(&pairs, delay, jitter, link.loss, bandwidth);
                let description = format!(
                    "link {} delay {}ms ±{}ms loss {:.0}%{}",
                    link.between,
                    delay.as_millis(),
                    jitter.as_millis(),
                    link.loss * 100.0,
                    link.bandwidth_kbps.map(|b| format!(" {b} KB/s")).unwrap_or_default()
                );
                let event = self.event(&description, &[]);
                if let Some(lasting) = lasting {
                    let shared = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(lasting).await;
                        shared.cluster.degrade(&pairs, Duration::ZERO, Duration::ZERO, 0.0, 0);
                        shared.end_event(event);
                    });
                }
            }
        }
    }
}

/// Why a run could not be done (as opposed to invariants failing).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("setting up the cluster: {0}")]
    Setup(#[from] SetupError),
    #[error("writing the report: {0}")]
    Report(#[from] std::io::Error),
}

/// Runs `scenario`; returns the report (also written to `options.report_dir`).
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<Report, RunError> {
    crate::fault_proxy::seed(options.seed);
    let keyed_limit = scenario.workload.keyed.as_ref().map(|k| k.limit);
    if options.progress {
        eprintln!(
            "chaos: {} — starting {} regions × {} nodes",
            scenario.name, scenario.cluster.regions, scenario.cluster.nodes_per_region
        );
    }
    let service = match &scenario.workload.payments {
        Some(load) => Some(
            payments::service(std::net::Ipv4Addr::LOCALHOST, options.seed, load.slowest_answer)
                .await
                .map_err(|e| SetupError(format!("the payment service: {e}")))?,
        ),
        None => None,
    };
    let socket_backend = match &scenario.workload.sockets {
        Some(_) => Some(
            sockets::backend(std::net::Ipv4Addr::LOCALHOST)
                .await
                .map_err(|e| SetupError(format!("the WebSocket API's backend: {e}")))?,
        ),
        None => None,
    };
    let apis = ClusterApis {
        plan_rate: keyed_limit,
        payments: service.as_ref().map(|(addr, _)| *addr),
        sockets: socket_backend,
    };
    let cluster = Arc::new(ChaosCluster::start(&scenario.cluster, options.subnet, &apis).await?);
    let timeline = Arc::new(Timeline::new());
    let shared = Arc::new(Shared {
        cluster: cluster.clone(),
        timeline: timeline.clone(),
        events: Mutex::new(Vec::new()),
        outages: Mutex::new(Vec::new()),
        cuts: Mutex::new(Vec::new()),
        dns_budget: scenario.invariants.dns_failover_within.unwrap_or(Duration::from_secs(3)),
    });
    let (stop_tx, stop) = watch::channel(false);
    let mut workers = Vec::new();
    for region in 0..cluster.regions {
        let rate = scenario.workload.clients.rate;
        let plain = workload::client(cluster.clone(), region, rate, ClientKind::Plain, timeline.clone(), stop.clone());
        workers.push(tokio::spawn(plain));
        if let Some(keyed) = &scenario.workload.keyed {
            let rate = keyed.offered.div_ceil(cluster.regions as u32);
            let keyed =
                workload::client(cluster.clone(), region, rate, ClientKind::Keyed, timeline.clone(), stop.clone());
            workers.push(tokio::spawn(keyed));
        }
    }
    let mut payers = Vec::new();
    if let Some(load) = &scenario.workload.payments {
        for region in 0..cluster.regions {
            let load = PaymentLoad {
                rate: load.rate / cluster.regions as f64,
                attempt_timeout: load.attempt_timeout,
                give_up_after: load.give_up_after,
            };
            payers.push(tokio::spawn(payments::clients(cluster.clone(), region, load, timeline.start, stop.clone())));
        }
    }
    let sockets_record = Arc::new(sockets::Record::default());
    if let Some(load) = &scenario.workload.sockets {
        for region in 0..cluster.regions {
            for index in 0..load.per_region {
                let record = sockets_record.clone();
                let client = sockets::client(cluster.clone(), region, index, timeline.start, record, stop.clone());
                workers.push(tokio::spawn(client));
            }
        }
        let pusher = sockets::pusher(
            cluster.clone(),
            load.push_rate,
            options.seed,
            timeline.start,
            sockets_record.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(pusher));
    }
    if let Some(writers) = &scenario.workload.writers {
        let target = match Target::parse(&writers.target) {
            Ok(t @ (Target::Region(_) | Target::Node(_))) => WriteTarget::Nodes(shared.resolve(&t).await),
            _ => WriteTarget::Any,
        };
        workers.push(tokio::spawn(workload::writer(
            cluster.clone(),
            writers.rate,
            target,
            timeline.clone(),
            stop.clone(),
        )));
    }

    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let schedule = plan(scenario, options.seed, &names);
    let faults = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            for p in schedule {
                if let Some(wait) = p.at.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                shared.execute(p.action).await;
            }
        })
    };

    let ticks = AtomicUsize::new(0);
    while timeline.start.elapsed() < scenario.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if options.progress {
            progress(&shared, scenario, ticks.fetch_add(1, Ordering::Relaxed));
        }
    }
    if options.progress {
        eprintln!();
    }
    let _ = stop_tx.send(true);
    faults.abort();
    for w in workers {
        let _ = w.await;
    }
    // Payments under way retry until they succeed or give up.
    let mut paid = Vec::new();
    for p in payers {
        if let Ok(done) = p.await {
            paid.extend(done);
        }
    }
    // Writes still in flight finish or time out (the admin client waits 12 s at most).
    let deadline = Instant::now() + Duration::from_secs(13);
    while timeline.writes_in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duration_s = timeline.now_s();
    // Heal everything the schedule left broken, then check.
    cluster.heal_links();
    for n in 0..cluster.nodes.len() {
        cluster.signal(n, libc::SIGCONT);
    }
    let deliveries = service.map(|(_, deliveries)| deliveries);
    let recorded = Recorded { paid: &paid, deliveries: deliveries.as_ref(), sockets: &sockets_record };
    let report = check(scenario, options, &shared, duration_s, recorded).await;
    cluster.stop().await;
    std::fs::create_dir_all(&options.report_dir)?;
    let base = options.report_dir.join(format!("{}-{}", scenario.name, options.seed));
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(&report).unwrap_or_default())?;
    std::fs::write(base.with_extension("svg"), report.svg())?;
    Ok(report)
}

fn progress(shared: &Shared, scenario: &Scenario, tick: usize) {
    let seconds = shared.timeline.seconds();
    let last = seconds.iter().rev().nth(1).cloned().unwrap_or_default();
    let active: Vec<String> = lock(&shared.events)
        .iter()
        .filter(|e| e.until_s.is_none())
        .map(|e| format!("{} {}", e.action, e.nodes.join(",")))
        .collect();
    let line = format!(
        "[{:>3}/{} s] {} ok/s, {} failed/s, writes {}/{} acked/failed{}{}",
        shared.timeline.start.elapsed().as_secs(),
        scenario.duration.as_secs(),
        last.ok,
        last.failed,
        last.writes_acked,
        last.writes_failed,
        if last.keyed_admitted + last.keyed_limited > 0 {
            format!(", keyed {} admitted/s", last.keyed_admitted)
        } else {
            String::new()
        },
        if active.is_empty() { String::new() } else { format!(" | {}", active.join("; ")) }
    );
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else if tick.is_multiple_of(5) {
        eprintln!("{line}");
    }
}

/// What the workloads recorded besides the timeline.
struct Recorded<'r> {
    paid: &'r [Payment],
    deliveries: Option<&'r Deliveries>,
    sockets: &'r sockets::Record,
}

async fn check(
    scenario: &Scenario,
    options: &RunOptions,
    shared: &Arc<Shared>,
    duration_s: f64,
    recorded: Recorded<'_>,
) -> Report {
    let Recorded { paid, deliveries, sockets: socket_record } = recorded;
    let cluster = &shared.cluster;
    let timeline = &shared.timeline;
    let invariants = &scenario.invariants;
    let mut verdicts = Vec::new();
    let mut figures = Figures::default();
    // Whole seconds of the run only (the last one is cut short by the stop).
    let mut seconds = timeline.seconds();
    seconds.retain(|s| (s.second as f64) + 1.0 <= duration_s.max(1.0));
    let failures = lock(&timeline.failures).clone();
    let writes = lock(&timeline.writes).clone();
    let outages = lock(&shared.outages).clone();
    let cuts = lock(&shared.cuts).clone();
    figures.requests = seconds.iter().map(|s| s.ok + s.failed).sum();
    figures.failed_requests = failures.len() as u64;

    // Convergence: every live node on the same revision.
    let started = Instant::now();
    let converged = loop {
        let revisions: Vec<u64> = cluster
            .revisions()
            .await
            .into_iter()
            .enumerate()
            .filter(|(n, _)| cluster.is_running(*n))
            .map(|(_, r)| r.unwrap_or(0))
            .collect();
        if !revisions.is_empty() && revisions.iter().all(|r| *r > 0 && *r == revisions[0]) {
            break Some(revisions[0]);
        }
        if started.elapsed() > invariants.converged_within {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    figures.converged_after_s = converged.map(|_| started.elapsed().as_secs_f64());
    verdicts.push(Verdict {
        invariant: "converged".into(),
        passed: converged.is_some(),
        detail: match converged {
            Some(r) => format!("every live node at revision {r} {:.1}s after the run", started.elapsed().as_secs_f64()),
            None => {
                format!("live nodes disagree after {:?}: {:?}", invariants.converged_within, cluster.revisions().await)
            }
        },
    });

    // Acknowledged writes survive on every live node.
    let acked: Vec<&workload::Write> = writes.iter().filter(|w| w.revision.is_some()).collect();
    figures.writes_acked = acked.len() as u64;
    figures.writes_failed = (writes.len() - acked.len()) as u64;
    let mut present: Vec<std::collections::BTreeMap<String, String>> = Vec::new();
    for n in (0..cluster.nodes.len()).filter(|&n| cluster.is_running(n)) {
        let stage = crate::cluster::admin(cluster.nodes[n].admin(), "GET", "/v1/apis/pets/stages/prod", "").await;
        let variables = stage
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .and_then(|v| serde_json::from_value(v["variables"].clone()).ok())
            .unwrap_or_default();
        present.push(variables);
    }
    let lost: Vec<&str> = acked
        .iter()
        .filter(|w| present.iter().any(|vars| !vars.contains_key(&w.key)))
        .map(|w| w.key.as_str())
        .collect();
    figures.writes_lost = lost.len() as u64;
    if scenario.workload.writers.is_some() {
        verdicts.push(Verdict {
            invariant: "acknowledged writes survive".into(),
            passed: lost.is_empty() && !present.is_empty() && !acked.is_empty(),
            detail: if lost.is_empty() {
                format!("{} acknowledged writes on all {} live nodes", acked.len(), present.len())
            } else {
                format!("{} acknowledged writes missing: {}", lost.len(), lost.join(", "))
            },
        });
        // Each write that changed the configuration has a revision of its own; a no-op
        // acknowledgement (a retry of a write that had committed) reports the current one.
        let mut revisions: Vec<u64> = acked.iter().filter(|w| w.changed).filter_map(|w| w.revision).collect();
        revisions.sort_unstable();
        let before = revisions.len();
        revisions.dedup();
        let no_ops = acked.iter().filter(|w| !w.changed).count();
        verdicts.push(Verdict {
            invariant: "no split brain".into(),
            passed: revisions.len() == before,
            detail: format!(
                "{before} acknowledged changes at {} distinct revisions ({no_ops} acknowledged as already applied)",
                revisions.len()
            ),
        });
    }

    if let Some(min) = invariants.min_writes_acked {
        let share = acked.len() as f64 / writes.len().max(1) as f64;
        let slowest = acked.iter().map(|w| w.took_ms).max().unwrap_or(0);
        verdicts.push(Verdict {
            invariant: "writes commit".into(),
            passed: share >= min && !writes.is_empty(),
            detail: format!(
                "{} of {} writes acknowledged ({:.1} %, at least {:.0} %), slowest {slowest} ms{}",
                acked.len(),
                writes.len(),
                share * 100.0,
                min * 100.0,
                writes.iter().find_map(|w| w.error.clone()).map(|e| format!("; first error: {e}")).unwrap_or_default()
            ),
        });
    }

    // Minority writes: refused cleanly, none applied.
    if invariants.minority_writes_refused {
        let inside = |w: &workload::Write| {
            cuts.iter().any(|c| {
                let node = cluster.nodes.iter().position(|n| n.name == w.node);
                node.is_some_and(|n| c.inside.contains(&n))
                    && w.sent_at_s >= c.from_s
                    && w.sent_at_s + w.took_ms as f64 / 1000.0 <= c.until_s.unwrap_or(f64::MAX)
            })
        };
        let minority: Vec<&workload::Write> = writes.iter().filter(|w| inside(w)).collect();
        let acked_minority = minority.iter().filter(|w| w.revision.is_some()).count();
        let applied = minority.iter().filter(|w| present.iter().any(|vars| vars.contains_key(&w.key))).count();
        let slow = minority.iter().filter(|w| w.took_ms > 12_000).count();
        verdicts.push(Verdict {
            invariant: "minority writes refused".into(),
            passed: !minority.is_empty() && acked_minority == 0 && applied == 0 && slow == 0,
            detail: format!(
                "{} writes to the minority side: {acked_minority} acknowledged, {applied} applied, {slow} without an answer in 12 s; first error: {}",
                minority.len(),
                minority.iter().find_map(|w| w.error.clone()).unwrap_or_default()
            ),
        });
    }

    // DNS failover and client recovery per outage.
    let budget = shared.dns_budget;
    for o in &outages {
        figures.dns_failover_s.push(o.failover_s.unwrap_or(f64::INFINITY));
        let regions: Vec<usize> = o.nodes.iter().map(|&n| cluster.nodes[n].region).collect();
        let horizon = o.at_s + 30.0;
        let last_failure = failures
            .iter()
            .filter(|f| regions.contains(&f.client_region) && f.at_s >= o.at_s && f.at_s <= horizon)
            .map(|f| f.at_s)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let recovery = match last_failure {
            None => 0.0,
            Some(last) => lock(&timeline.successes)
                .iter()
                .filter(|(t, r)| regions.contains(r) && *t > last)
                .map(|(t, _)| t - o.at_s)
                .fold(f64::INFINITY, f64::min),
        };
        figures.client_recovery_s.push(recovery);
    }
    if let Some(limit) = invariants.dns_failover_within {
        let worst = figures.dns_failover_s.iter().copied().fold(0.0, f64::max);
        verdicts.push(Verdict {
            invariant: "DNS failover".into(),
            passed: !outages.is_empty() && worst <= limit.as_secs_f64(),
            detail: format!(
                "{} outages, slowest failover {worst:.2}s (budget {:.1}s)",
                outages.len(),
                limit.as_secs_f64()
            ),
        });
    }
    if let Some(limit) = invariants.client_recovery_within {
        let worst = figures.client_recovery_s.iter().copied().fold(0.0, f64::max);
        verdicts.push(Verdict {
            invariant: "client recovery".into(),
            passed: !outages.is_empty() && worst <= limit.as_secs_f64(),
            detail: format!("slowest recovery {worst:.2}s (budget {:.1}s = DNS budget + TTL)", limit.as_secs_f64()),
        });
    }

    // Failed requests outside failover windows.
    let window = budget + DNS_TTL + Duration::from_secs(2);
    let outside: Vec<&workload::Failure> = failures
        .iter()
        .filter(|f| !outages.iter().any(|o| f.at_s >= o.at_s && f.at_s <= o.at_s + window.as_secs_f64()))
        .collect();
    figures.failed_outside_windows = outside.len() as u64;
    if let Some(max) = invariants.max_failed_requests {
        let share = outside.len() as f64 / figures.requests.max(1) as f64;
        verdicts.push(Verdict {
            invariant: "failed requests".into(),
            passed: share <= max && figures.requests > 0,
            detail: format!(
                "{} of {} requests failed outside failover windows ({:.3} %, budget {:.3} %){}",
                outside.len(),
                figures.requests,
                share * 100.0,
                max * 100.0,
                outside.first().map(|f| format!("; first: {:.1}s {}", f.at_s, f.reason)).unwrap_or_default()
            ),
        });
    }

    // Keyed clients: admitted per second against the plan's limit.
    if let (Some(keyed), Some(max)) = (&scenario.workload.keyed, invariants.limit_overshoot) {
        let in_window = |second: u64| {
            let t = second as f64;
            if cuts.is_empty() {
                t >= 3.0 && t + 1.0 <= duration_s
            } else {
                cuts.iter().any(|c| t >= c.from_s + 2.0 && t + 1.0 <= c.until_s.unwrap_or(duration_s))
            }
        };
        let measured: Vec<u64> = seconds.iter().filter(|s| in_window(s.second)).map(|s| s.keyed_admitted).collect();
        figures.keyed_peak_per_s = seconds
            .iter()
            .filter(|s| {
                let t = s.second as f64;
                cuts.iter().any(|c| t + 1.0 >= c.from_s && t <= c.until_s.unwrap_or(duration_s))
            })
            .map(|s| s.keyed_admitted)
            .max();
        let mean = measured.iter().sum::<u64>() as f64 / measured.len().max(1) as f64;
        figures.keyed_admitted_per_s = Some(mean);
        figures.keyed_limit = Some(keyed.limit);
        let bound = f64::from(keyed.limit) * (1.0 + max);
        verdicts.push(Verdict {
            invariant: "rate limit overshoot".into(),
            passed: !measured.is_empty() && mean <= bound && mean > 0.0,
            detail: format!(
                "{mean:.1} admitted/s over {} s{} against a limit of {} (bound {bound:.1}, +{:.0} %)",
                measured.len(),
                if cuts.is_empty() { "" } else { " of partition" },
                keyed.limit,
                max * 100.0
            ),
        });
    }

    if let Some(deliveries) = deliveries {
        check_payments(invariants, paid, &lock(deliveries), &mut figures, &mut verdicts);
    }
    if scenario.workload.sockets.is_some() {
        let budget = invariants.socket_reconnect_within.unwrap_or(Duration::from_secs(8)).as_secs_f64();
        // A push made through a node as it is killed loses its answer: the window opens a
        // second before the kill.
        let windows: Vec<(f64, f64)> = outages.iter().map(|o| (o.at_s - 1.0, o.at_s + budget)).collect();
        sockets::check(invariants, socket_record, &windows, &mut figures, &mut verdicts);
    }

    let kept =
        if options.keep { cluster.keep().into_iter().map(|p| p.display().to_string()).collect() } else { Vec::new() };
    let passed = verdicts.iter().all(|v| v.passed);
    Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed: options.seed,
        duration_s,
        nodes: cluster.nodes.iter().map(|n| format!("{} ({}, node {})", n.name, n.ip, n.id)).collect(),
        faults: lock(&shared.events).clone(),
        verdicts,
        figures,
        passed,
        timeline: seconds,
        failures,
        writes,
        kept,
    }
}

/// Payments: each key reached the service at most once, each success exactly once.
fn check_payments(
    invariants: &crate::scenario::Invariants,
    paid: &[Payment],
    deliveries: &std::collections::HashMap<String, u32>,
    figures: &mut Figures,
    verdicts: &mut Vec<Verdict>,
) {
    let delivered = |key: &str| deliveries.get(key).copied().unwrap_or(0);
    figures.payments = paid.len() as u64;
    figures.payments_succeeded = paid.iter().filter(|p| p.succeeded.is_some()).count() as u64;
    figures.payment_attempts = paid.iter().map(|p| u64::from(p.attempts)).sum();
    figures.payment_replays = paid.iter().map(|p| u64::from(p.replays)).sum();
    let twice: Vec<(&String, &u32)> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    figures.payments_delivered_twice = twice.len() as u64;
    if invariants.delivered_once {
        let lost: Vec<&Payment> = paid.iter().filter(|p| p.succeeded.is_some() && delivered(&p.key) != 1).collect();
        let story =
            |p: &Payment| format!("{} ({} deliveries; answers {})", p.key, delivered(&p.key), p.answers.join(", "));
        verdicts.push(Verdict {
            invariant: "delivered once".into(),
            passed: !paid.is_empty() && twice.is_empty() && lost.is_empty() && figures.payments_succeeded > 0,
            detail: format!(
                "{} payments, {} keys delivered, {} delivered twice, {} successes not delivered exactly once{}{}",
                paid.len(),
                deliveries.len(),
                twice.len(),
                lost.len(),
                twice.first().map(|(k, n)| format!("; e.g. {k} delivered {n} times")).unwrap_or_default(),
                lost.first().map(|p| format!("; e.g. {}", story(p))).unwrap_or_default(),
            ),
        });
    }
    if let Some(min) = invariants.min_payments_succeeded {
        let share = figures.payments_succeeded as f64 / paid.len().max(1) as f64;
        let failed = paid.iter().find(|p| p.succeeded.is_none());
        verdicts.push(Verdict {
            invariant: "payments succeed".into(),
            passed: !paid.is_empty() && share >= min,
            detail: format!(
                "{} of {} payments succeeded ({:.1} %, at least {:.0} %){}",
                figures.payments_succeeded,
                paid.len(),
                share * 100.0,
                min * 100.0,
                failed
                    .map(|p| format!("; one that gave up: {} after {}", p.key, p.answers.join(", ")))
                    .unwrap_or_default()
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(seed: u64) -> Vec<String> {
        let (_, text) = crate::SCENARIOS.iter().find(|(n, _)| *n == "random-faults").unwrap();
        let scenario = Scenario::parse(text).unwrap();
        let nodes: Vec<String> = ["r1-1", "r1-2", "r2-1", "r2-2", "r3-1", "r3-2"].map(String::from).to_vec();
        plan(&scenario, seed, &nodes).iter().map(|p| format!("{:?} {:?}", p.at, p.action)).collect()
    }

    #[test]
    fn a_seed_replays_the_same_schedule() {
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8));
        let planned = schedule(7);
        assert!(planned.len() >= 4, "{planned:?}");
    }
}
