//! The chaos suite's CI subset: `meridian chaos run` on shipped scenarios, as a user runs
//! it, and one scenario built to fail, to show that a broken invariant fails the run.
//! (The full suite: `meridian chaos run all`, see docs/CHAOS.md.)

use std::path::Path;
use std::process::Output;

use meridian_chaos::launcher::meridian_binary;

fn chaos_run(scenario: &str, subnet: u8, reports: &Path) -> Output {
    std::process::Command::new(meridian_binary())
        .args(["chaos", "run", scenario, "--seed", "42", "--subnet", &subnet.to_string(), "--report-dir"])
        .arg(reports)
        .output()
        .unwrap()
}

fn report(reports: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(reports.join(format!("{name}-42.json"))).expect("the JSON report is written");
    serde_json::from_str(&text).unwrap()
}

fn passes(scenario: &str, subnet: u8) -> serde_json::Value {
    let reports = tempfile::tempdir().unwrap();
    let out = chaos_run(scenario, subnet, reports.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{scenario} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("scenario {scenario} (seed 42): PASSED")), "{stdout}");
    let report = report(reports.path(), scenario);
    assert_eq!(report["passed"], true);
    assert!(std::fs::read_to_string(reports.path().join(format!("{scenario}-42.svg"))).unwrap().starts_with("<svg"));
    report
}

#[test]
fn region_loss_fails_over_within_budget() {
    let report = passes("region-loss", 70);
    let failover = report["figures"]["dns_failover_s"][0].as_f64().unwrap();
    assert!(failover <= 3.0, "{failover}");
    assert!(report["figures"]["writes_acked"].as_u64().unwrap() > 50);
}

#[test]
fn leader_kill_loses_no_acknowledged_write() {
    let report = passes("leader-kill", 72);
    assert_eq!(report["figures"]["writes_lost"], 0);
}

#[test]
fn minority_writes_fail_cleanly() {
    let report = passes("minority-write", 74);
    let refused = report["verdicts"].as_array().unwrap().iter().find(|v| v["invariant"] == "minority writes refused");
    assert_eq!(refused.map(|v| v["passed"].clone()), Some(serde_json::Value::Bool(true)));
}

#[test]
fn a_retry_storm_delivers_no_payment_twice() {
    let report = passes("retry-storm", 80);
    let f = &report["figures"];
    assert_eq!(f["payments_delivered_twice"], 0, "{f}");
    assert!(f["payment_replays"].as_u64().unwrap() > 0, "retries were answered by replays: {f}");
}

#[test]
fn a_broken_invariant_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("impossible.yaml");
    std::fs::write(
        &scenario,
        r#"
name: impossible
description: DNS cannot fail over within a millisecond; the run must say so and exit 1.
duration: 6s
faults:
  - { at: 1s, kill: region r3 }
invariants:
  dns_failover_within: 1ms
"#,
    )
    .unwrap();
    let out = chaos_run(scenario.to_str().unwrap(), 76, dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = report(dir.path(), "impossible");
    assert_eq!(report["passed"], false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[FAIL] DNS failover"), "{stdout}");

    // A scenario with errors is refused before anything starts, with every problem listed.
    std::fs::write(&scenario, "name: x\ndescription: y\nduration: 2s\nfaults:\n  - { at: 1s, kill: region r9 }\n")
        .unwrap();
    let out = chaos_run(scenario.to_str().unwrap(), 76, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("duration: at least 5s") && stderr.contains("no region `r9`"), "{stderr}");
}

#[test]
fn writes_commit_over_a_200_ms_wan_on_default_settings() {
    // No `heartbeat` in the cluster shape: the defaults must carry a world-wide WAN.
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("wan.yaml");
    std::fs::write(
        &scenario,
        r#"
name: wan
description: 100 ms each way between all regions (a 200 ms round trip), on default Raft settings.
cluster: { regions: 3, nodes_per_region: 1 }
duration: 10s
workload:
  clients: { rate: 10 }
  writers: { rate: 4 }
faults:
  - { at: 0s, link: { between: all-regions, delay: 100ms } }
invariants:
  max_failed_requests: 0.001
  min_writes_acked: 0.95
"#,
    )
    .unwrap();
    let out = chaos_run(scenario.to_str().unwrap(), 78, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = report(dir.path(), "wan");
    assert!(report["figures"]["writes_acked"].as_u64().unwrap() >= 30, "{report}");
}

#[test]
fn websocket_clients_of_a_killed_node_reconnect_and_pushes_hold() {
    let report = passes("websocket-failover", 82);
    let f = &report["figures"];
    assert!(f["pushes_accepted"].as_u64().unwrap() > 100, "{f}");
    assert!(f["pushes_gone"].as_u64().unwrap() > 0, "pushes to the killed node's connections answered 410: {f}");
    assert!(f["socket_reconnect_max_s"].as_f64().unwrap() <= 8.0, "{f}");
}
