//! `meridian sync -f DIR`: makes the cluster match a folder of files, the way decK syncs
//! Kong: every file is read and checked first (all errors, nothing changed), the changes
//! are listed, and (unless `--dry-run`) made in dependency order. `--prune` also deletes
//! what the folder does not name.
//!
//! ```text
//! DIR/apis/*.yaml     one API definition each, deployed to every stage its `stages:` lists
//! DIR/zones/*.yaml    one DNS zone document each
//! DIR/regions.yaml    regions: [{ name, weight, client_cidrs }]
//! DIR/domains.yaml    domains: [{ name, certificate, key, mappings: [{ base_path, api, stage }] }]
//! DIR/plans.yaml      plans: [{ name, rate, burst, quota, stages: [{ api, stage, routes }], keys }]
//! ```
//!
//! A section the folder does not have is left alone. Keys are not synced (their values are
//! secrets): plans name keys made with `meridian keys create`. Deployments are immutable and
//! APIs are never deleted, so `--prune` removes regions, zones, domains and plans only, each
//! only when the folder has that section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::output::refused;
use super::target::{AdminTarget, call, encode, get};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    regions: Vec<RegionEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    name: String,
    weight: Option<u32>,
    #[serde(default)]
    client_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainsFile {
    domains: Vec<DomainEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainEntry {
    name: String,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    mappings: Vec<MappingEntry>,
}

#[derive(Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct MappingEntry {
    #[serde(default = "root")]
    base_path: String,
    api: String,
    stage: String,
}

fn root() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    plans: Vec<PlanEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    name: String,
    rate: Option<u64>,
    burst: Option<u64>,
    quota: Option<String>,
    #[serde(default)]
    stages: Vec<PlanStage>,
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanStage {
    api: String,
    stage: String,
    #[serde(default)]
    routes: Vec<PlanRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRoute {
    route: String,
    rate: u64,
    burst: Option<u64>,
}

/// One change to make: what it is, for people, and the admin call that makes it.
struct Change {
    said: String,
    method: Method,
    path: String,
    body: String,
}

impl Change {
    fn new(said: String, method: Method, path: String, body: String) -> Change {
        Change { said, method, path, body }
    }
}

/// A certificate chain and its key, as PEM.
type TlsPair = (String, String);

/// Everything the folder holds, read and checked.
#[derive(Default)]
struct Desired {
    /// (api, file text, the stages it lists).
    apis: Vec<(String, String, Vec<String>)>,
    /// Zones by name, when the folder has `zones/`.
    zones: Option<BTreeMap<String, String>>,
    regions: Option<Vec<RegionEntry>>,
    /// Each domain with its certificate and key (PEM), when it has TLS.
    domains: Option<Vec<(DomainEntry, Option<TlsPair>)>>,
    plans: Option<Vec<PlanEntry>>,
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> anyhow::Result<String> {
    meridian_dataplane::files::read_bounded(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A section file, if present, parsed strictly; its errors say where.
fn section<T: serde::de::DeserializeOwned>(path: &Path, errors: &mut Vec<String>) -> anyhow::Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    match serde_saphyr::from_str::<T>(&read(path)?) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            errors.push(format!("{}: {}", path.display(), e.to_string().lines().next().unwrap_or("not valid YAML")));
            Ok(None)
        }
    }
}

/// Reads and checks every file in `dir`; every problem is listed before anything changes.
fn desired(dir: &Path) -> anyhow::Result<Desired> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let mut errors: Vec<String> = Vec::new();
    let mut out = Desired::default();
    for file in yaml_files(&dir.join("apis"))? {
        let text = read(&file)?;
        let name = file.display().to_string();
        let stages: Vec<String> = serde_saphyr::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["apis"][0]["stages"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        if stages.is_empty() {
            errors.push(format!("{name}: the API lists no `stages:` to deploy to"));
        }
        let mut api = None;
        for stage in &stages {
            let placeholders = meridian_dataplane::integration::uri::stage_variable_names(&text)
                .into_iter()
                .map(|n| (n, "placeholder".to_string()))
                .collect();
            match meridian_dataplane::config::validate_definition(&text, &name, stage, &placeholders) {
                Ok(d) => api = Some(d.id),
                Err(e) => errors.extend(e.to_string().lines().skip(1).map(|l| l.trim().to_string())),
            }
        }
        if let Some(api) = api {
            out.apis.push((api, text, stages));
        }
    }
    if dir.join("zones").is_dir() {
        let mut zones = BTreeMap::new();
        for file in yaml_files(&dir.join("zones"))? {
            let text = read(&file)?;
            match crate::cluster::dns::parse_zone(&text) {
                Ok(zone) => {
                    zones.insert(zone.origin.to_string().trim_end_matches('.').to_ascii_lowercase(), text);
                }
                Err(list) => errors.extend(list.into_iter().map(|e| format!("{}: {e}", file.display()))),
            }
        }
        out.zones = Some(zones);
    }
    out.regions = section::<RegionsFile>(&dir.join("regions.yaml"), &mut errors)?.map(|f| f.regions);
    if let Some(file) = section::<DomainsFile>(&dir.join("domains.yaml"), &mut errors)? {
        let mut domains = Vec::new();
        for d in file.domains {
            let tls = match (&d.certificate, &d.key) {
                (Some(c), Some(k)) => Some((read(&dir.join(c))?, read(&dir.join(k))?)),
                (None, None) => None,
                _ => {
                    errors.push(format!(
                        "domains.yaml: domain {}: give both `certificate` and `key`, or neither",
                        d.name
                    ));
                    None
                }
            };
            domains.push((d, tls));
        }
        out.domains = Some(domains);
    }
    out.plans = section::<PlansFile>(&dir.join("plans.yaml"), &mut errors)?.map(|f| f.plans);
    if !errors.is_empty() {
        bail!("{} has {} error(s); nothing was changed:\n  {}", dir.display(), errors.len(), errors.join("\n  "));
    }
    Ok(out)
}

/// A list answer's items by their `name`.
fn by_name(value: &Value, list: &str) -> BTreeMap<String, Value> {
    value[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v.clone())))
        .collect()
}

async fn listed(target: &AdminTarget, path: &str) -> anyhow::Result<Value> {
    let answer = get(target, path).await?;
    if !answer.ok() {
        bail!("{path}: {}", answer.value["message"].as_str().unwrap_or("refused"));
    }
    Ok(answer.value)
}

/// What to change to make the cluster match `want`, in the order to do it.
async fn plan(target: &AdminTarget, want: &Desired, prune: bool) -> anyhow::Result<(Vec<Change>, Vec<String>)> {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    if let Some(regions) = &want.regions {
        let have = by_name(&listed(target, "/v1/regions").await?, "regions");
        for r in regions {
            let body = json!({"weight": r.weight, "client_cidrs": r.client_cidrs});
            let current = have.get(&r.name).map(|v| json!({"weight": v["weight"], "client_cidrs": v["client_cidrs"]}));
            if current.as_ref() != Some(&body) {
                let mark = if current.is_some() { "~" } else { "+" };
                let path = format!("/v1/regions/{}", encode(&r.name));
                changes.push(Change::new(format!("{mark} region {}", r.name), Method::PUT, path, body.to_string()));
            }
        }
        if prune {
            for name in have.keys().filter(|n| !regions.iter().any(|r| &r.name == *n)) {
                let path = format!("/v1/regions/{}", encode(name));
                changes.push(Change::new(format!("- region {name}"), Method::DELETE, path, String::new()));
            }
        }
    }
    if let Some(wanted) = &want.zones {
        let zones = by_name(&listed(target, "/v1/dns/zones").await?, "zones");
        for (name, text) in wanted {
            let current = zones.get(name).and_then(|z| z["definition"].as_str());
            if !current.is_some_and(|c| meridian_dataplane::config::same_definition(c, text)) {
                let mark = if current.is_some() { "~" } else { "+" };
                let path = format!("/v1/dns/zones/{}", encode(name));
                changes.push(Change::new(format!("{mark} zone {name}"), Method::PUT, path, text.clone()));
            }
        }
        if prune {
            for name in zones.keys().filter(|n| !wanted.contains_key(*n)) {
                let path = format!("/v1/dns/zones/{}", encode(name));
                changes.push(Change::new(format!("- zone {name}"), Method::DELETE, path, String::new()));
            }
        }
    }
    for (api, text, stages) in &want.apis {
        for stage in stages {
            let served = get(target, &format!("/v1/apis/{}/stages/{}", encode(api), encode(stage))).await?;
            let mut same = false;
            if served.ok() {
                let id = served.value["deployment"].as_u64().unwrap_or(0);
                let deployment = get(target, &format!("/v1/apis/{}/deployments/{id}", encode(api))).await?;
                let file_vars: BTreeMap<String, String> = serde_saphyr::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| {
                        v["apis"][0]["stages"].as_array()?.iter().find(|s| s["name"] == stage.as_str()).cloned()
                    })
                    .and_then(|s| serde_json::from_value(s["variables"].clone()).ok())
                    .unwrap_or_default();
                let vars_in_place = file_vars.iter().all(|(k, v)| served.value["variables"][k] == v.as_str());
                same = vars_in_place
                    && deployment.value["definition"]
                        .as_str()
                        .is_some_and(|d| meridian_dataplane::config::same_definition(d, text));
            }
            if !same {
                let mark = if served.ok() { "~" } else { "+" };
                let path = format!("/v1/apis/{}/deployments?stage={}&description=sync", encode(api), encode(stage));
                changes.push(Change::new(format!("{mark} api {api}, stage {stage}"), Method::POST, path, text.clone()));
            }
        }
    }
    if let Some(domains) = &want.domains {
        let have = by_name(&listed(target, "/v1/domains").await?, "domains");
        for (d, tls) in domains {
            let fingerprint = tls.as_ref().map(|(cert, _)| meridian_dataplane::digest::sha256_hex(cert.as_bytes()));
            let mappings: Vec<Value> =
                d.mappings.iter().map(|m| json!({"base_path": m.base_path, "api": m.api, "stage": m.stage})).collect();
            let current = have.get(&d.name);
            let same = current.is_some_and(|c| {
                c["mappings"] == Value::from(mappings.clone())
                    && c["certificate_sha256"].as_str() == fingerprint.as_deref()
            });
            if !same {
                let mark = if current.is_some() { "~" } else { "+" };
                let body = json!({
                    "certificate_pem": tls.as_ref().map(|t| &t.0),
                    "key_pem": tls.as_ref().map(|t| &t.1),
                    "mappings": mappings,
                });
                let path = format!("/v1/domains/{}", encode(&d.name));
                changes.push(Change::new(format!("{mark} domain {}", d.name), Method::PUT, path, body.to_string()));
            }
        }
        if prune {
            for name in have.keys().filter(|n| !domains.iter().any(|(d, _)| &d.name == *n)) {
                let path = format!("/v1/domains/{}", encode(name));
                changes.push(Change::new(format!("- domain {name}"), Method::DELETE, path, String::new()));
            }
        }
    }
    if let Some(plans) = &want.plans {
        let have = by_name(&listed(target, "/v1/plans").await?, "plans");
        let keys = listed(target, "/v1/keys").await?;
        let key_ids: BTreeMap<String, String> = keys["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| Some((k["name"].as_str()?.to_string(), k["id"].as_str()?.to_string())))
            .collect();
        for p in plans {
            let current = have.get(&p.name);
            let limits = json!({"rate": p.rate, "burst": p.burst.or(p.rate), "quota": p.quota});
            let now = current.map(|c| json!({"rate": c["rate"], "burst": c["burst"], "quota": c["quota"]}));
            if now.as_ref() != Some(&limits) {
                let mark = if current.is_some() { "~" } else { "+" };
                let body = json!({"rate": p.rate, "burst": p.burst, "quota": p.quota});
                let path = format!("/v1/plans/{}", encode(&p.name));
                changes.push(Change::new(format!("{mark} plan {}", p.name), Method::PUT, path, body.to_string()));
            }
            let covered = |api: &str, stage: &str| -> Option<Value> {
                current?["stages"].as_array()?.iter().find(|s| s["api"] == api && s["stage"] == stage).cloned()
            };
            for s in &p.stages {
                let existing = covered(&s.api, &s.stage);
                let path = format!("/v1/plans/{}/attach", encode(&p.name));
                if existing.is_none() {
                    let body = json!({"api": s.api, "stage": s.stage});
                    let said = format!("+ plan {} covers {}/{}", p.name, s.api, s.stage);
                    changes.push(Change::new(said, Method::POST, path.clone(), body.to_string()));
                }
                for r in &s.routes {
                    let burst = r.burst.unwrap_or(r.rate);
                    let same = existing.as_ref().is_some_and(|e| {
                        e["routes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|x| x["route"] == r.route.as_str() && x["rate"] == r.rate && x["burst"] == burst)
                    });
                    if !same {
                        let body =
                            json!({"api": s.api, "stage": s.stage, "route": r.route, "rate": r.rate, "burst": burst});
                        let said = format!("~ plan {}: {} on {}/{} at {}/s", p.name, r.route, s.api, s.stage, r.rate);
                        changes.push(Change::new(said, Method::POST, path.clone(), body.to_string()));
                    }
                }
            }
            for key in &p.keys {
                let Some(id) = key_ids.get(key) else {
                    bail!(
                        "plans.yaml: plan {} names key `{key}`, which does not exist (`meridian keys create`)",
                        p.name
                    );
                };
                let on_plan =
                    current.is_some_and(|c| c["keys"].as_array().is_some_and(|k| k.iter().any(|x| x == id.as_str())));
                if !on_plan {
                    let path = format!("/v1/plans/{}/keys", encode(&p.name));
                    let said = format!("+ key {key} on plan {}", p.name);
                    changes.push(Change::new(said, Method::POST, path, json!({"key": key}).to_string()));
                }
            }
        }
        if prune {
            for name in have.keys().filter(|n| !plans.iter().any(|p| &p.name == *n)) {
                let path = format!("/v1/plans/{}", encode(name));
                changes.push(Change::new(format!("- plan {name}"), Method::DELETE, path, String::new()));
            }
        }
    }
    if prune && !want.apis.is_empty() {
        notes.push("APIs and their deployments are never pruned (deployments are immutable)".to_string());
    }
    Ok((changes, notes))
}

pub async fn sync(dir: &Path, dry_run: bool, prune: bool, target: &AdminTarget) -> anyhow::Result<ExitCode> {
    let want = match desired(dir) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let (changes, notes) = plan(target, &want, prune).await?;
    let listing: Vec<&str> = changes.iter().map(|c| c.said.as_str()).collect();
    if dry_run || changes.is_empty() {
        let report = json!({"dry_run": dry_run, "changes": listing, "notes": notes});
        return Ok(target.output.print(&report, |_| {
            let mut out = String::new();
            for line in &listing {
                out.push_str(&format!("{line}\n"));
            }
            for note in &notes {
                out.push_str(&format!("note: {note}\n"));
            }
            out.push_str(&match (changes.len(), dry_run) {
                (0, _) => "in sync: nothing to change\n".to_string(),
                (n, _) => format!("dry run: {n} change(s) listed, none made\n"),
            });
            out
        }));
    }
    let mut made = Vec::new();
    for change in &changes {
        let answer = call(target, change.method.clone(), &change.path, Bytes::from(change.body.clone()), &[]).await?;
        if !answer.ok() {
            eprintln!("meridian: stopped at `{}` after {} change(s)", change.said, made.len());
            return Ok(refused(answer.status, &answer.value));
        }
        if target.output == super::Output::Text {
            println!("{}", change.said);
        }
        made.push(change.said.as_str());
    }
    let report = json!({"dry_run": false, "changes": made, "notes": notes});
    Ok(target.output.print(&report, |_| {
        let mut out = String::new();
        for note in &notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out.push_str(&format!("synced: {} change(s) made\n", made.len()));
        out
    }))
}
