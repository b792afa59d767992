//! Turning the applied cluster configuration into the data plane's routing table.
//!
//! Each stage of each API is compiled from the definition of the deployment it points at,
//! with the stage's variables. A new table is swapped in whenever the applied revision
//! moves; requests in flight finish on the table they started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meridian_consensus::{ConfigState, PlanRate, QuotaPeriod};

use super::member::ClusterMember;
use super::sealed::DataKey;
use meridian_dataplane::certificates::{DomainCertificates, SniResolver, certified_key_from_pem};
use meridian_dataplane::config::table::{Apis, BaseMapping, Domains};
use meridian_dataplane::config::{CanaryRoutes, RoutingTable, StageTarget, base_path, compile_stage};
use meridian_dataplane::limits::limiter::{Period, Rate};
use meridian_dataplane::observe::completion::RouteObserver;
use meridian_dataplane::stages::api_key::{KeyGrant, KeyRing, StageGrant};
use meridian_dataplane::stages::signed_request::{Credential, Credentials};
use meridian_dataplane::table_hasher::TableHasher;

/// Compiles every stage of `state`. A stage whose definition no longer compiles (it was
/// validated when applied, so only a changed stage variable can break it) is left out and
/// logged rather than taking the others down.
pub fn compile(state: &ConfigState, default_rate: Rate, data_key: &DataKey) -> RoutingTable {
    let mut apis = Apis::default();
    for (api, record) in &state.apis {
        for (stage, target) in &record.stages {
            let compiled = |deployment_id: u64, variables: &std::collections::BTreeMap<String, String>| {
                let deployment = record.deployments.get(&deployment_id)?;
                let name = format!("{api} deployment {}", deployment.id);
                compile_stage(&deployment.definition, &name, stage, variables, &deployment.id.to_string(), default_rate)
                    .map_err(|errors| tracing::error!(%api, %stage, %errors, "stage cannot be served"))
                    .ok()
            };
            let Some(primary) = compiled(target.deployment, &target.variables) else { continue };
            let canary = target.canary.as_ref().and_then(|c| {
                let mut variables = target.variables.clone();
                variables.extend(c.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
                compiled(c.deployment, &variables).map(|routes| CanaryRoutes { routes, basis_points: c.basis_points })
            });
            apis.entry(api.clone()).or_default().insert(stage.clone(), Arc::new(StageTarget { primary, canary }));
        }
    }
    let mut domains = Domains::default();
    for (name, domain) in &state.domains {
        let mut mappings: Vec<BaseMapping> = domain
            .mappings
            .iter()
            .filter_map(|m| {
                let stage = apis.get(&m.api).and_then(|stages| stages.get(&m.stage));
                if stage.is_none() {
                    tracing::warn!(domain = %name, api = %m.api, stage = %m.stage, "domain maps a stage that is not served");
                }
                Some(BaseMapping { base_path: base_path(&m.base_path).ok()?, stage: stage?.clone() })
            })
            .collect();
        mappings.sort_by_key(|m| std::cmp::Reverse(m.base_path.len()));
        domains.insert(name.clone(), mappings);
    }
    let keeps_responses = meridian_dataplane::config::table::keeps_responses(&apis);
    RoutingTable {
        revision: state.revision,
        domains,
        apis,
        unrouted: Arc::new(RouteObserver::new("", "", "", "", None)),
        keys: keys(state),
        credentials: credentials(state, data_key),
        keeps_responses,
    }
}

/// The credentials for signed requests, their secrets opened with the data key (in memory
/// only).
fn credentials(state: &ConfigState, data_key: &DataKey) -> Credentials {
    let mut set = Credentials::default();
    for (id, c) in &state.credentials {
        let secret = data_key
            .open(&super::sealed::credential_secret(id), &c.secret_sealed)
            .map_err(|e| e.to_string())
            .and_then(|s| String::from_utf8(s).map_err(|_| "the sealed secret is not text".to_string()));
        match secret {
            Ok(secret) => {
                set.insert(id.clone(), Credential { name: Arc::from(c.name.as_str()), secret, enabled: c.enabled })
            }
            Err(e) => tracing::error!(access_key_id = %id, error = %e, "credentials unusable"),
        }
    }
    set
}

/// A limit scope and its rate.
type Scope = (Arc<str>, Rate);

fn plan_rate(r: PlanRate) -> Rate {
    Rate::per_second(r.per_second, r.burst)
}

/// The scope counting a key's requests per day under a plan.
pub fn usage_scope(plan: &str, key: &str) -> Arc<str> {
    Arc::from(format!("usage plan {plan} key {key}"))
}

/// The scope of a key's quota under a plan.
pub fn quota_scope(plan: &str, key: &str) -> Arc<str> {
    Arc::from(format!("plan {plan} key {key} quota"))
}

/// The limiter's period for a plan's quota period.
pub fn period(p: QuotaPeriod) -> Period {
    match p {
        QuotaPeriod::Day => Period::Day,
        QuotaPeriod::Week => Period::Week,
        QuotaPeriod::Month => Period::Month,
    }
}

/// Each key's grants: for every stage a plan of the key covers, the plan's throttle and
/// quota (counted per key), and for routes a plan throttles on their own, those throttles
/// with the rest.
fn keys(state: &ConfigState) -> KeyRing {
    let mut ring = KeyRing::default();
    for (id, key) in &state.keys {
        let mut stages: HashMap<(String, String), StageGrant, TableHasher> = HashMap::default();
        // Per stage, the plans' throttles of single routes: (route, scope and rate).
        let mut route_limits: HashMap<(String, String), Vec<(String, Scope)>> = HashMap::new();
        for (plan_name, plan) in state.plans.iter().filter(|(_, p)| p.keys.contains(id)) {
            for ((api, stage), routes) in &plan.stages {
                let grant = stages.entry((api.clone(), stage.clone())).or_default();
                let scope =
                    |what: &str| -> Arc<str> { Arc::from(format!("plan {plan_name} key {id} {what} {api}/{stage}")) };
                if let Some(rate) = plan.rate {
                    grant.limits.push((scope("throttle"), plan_rate(rate)));
                }
                // Daily usage per key, for `meridian usage` (counts, never refuses).
                grant.limits.push((usage_scope(plan_name, id), Rate::quota(u64::MAX, Period::Day)));
                if let Some((limit, p)) = plan.quota {
                    // Quotas count per key across every stage of the plan.
                    grant.limits.push((quota_scope(plan_name, id), Rate::quota(limit, period(p))));
                }
                for (route, rate) in routes {
                    route_limits
                        .entry((api.clone(), stage.clone()))
                        .or_default()
                        .push((route.clone(), (scope(&format!("route {route}")), plan_rate(*rate))));
                }
            }
        }
        for (stage, routes) in route_limits {
            if let Some(grant) = stages.get_mut(&stage) {
                for (route, limit) in routes {
                    let base = grant.limits.clone();
                    grant.routes.entry(route).or_insert(base).push(limit);
                }
            }
        }
        let grant = KeyGrant { id: Arc::from(id.as_str()), enabled: key.enabled, stages };
        if let Err(e) = ring.insert(&key.value_sha256, grant) {
            tracing::warn!(key = %id, error = %e, "API key left out");
        }
    }
    ring
}

/// The certificates of the domains that have one (their keys opened with the data key),
/// with their mutual TLS policies. A domain whose policy cannot be built is not served over
/// TLS at all, rather than without the client certificates it asks for.
pub fn certificates(state: &ConfigState, data_key: &DataKey) -> DomainCertificates {
    let mut set = DomainCertificates::default();
    for (name, domain) in &state.domains {
        if let (Some(cert), Some(sealed)) = (&domain.certificate_pem, &domain.key_sealed) {
            let key = data_key
                .open(&super::sealed::domain_key(name), sealed)
                .map_err(|e| e.to_string())
                .and_then(|key| String::from_utf8(key).map_err(|_| "the sealed key is not PEM".to_string()))
                .and_then(|key| certified_key_from_pem(cert, &key));
            let policy = state.client_certificates.get(name).map(|c| {
                meridian_dataplane::certificates::client_verifier_from_pem(&c.ca_pem, c.crl_pem.as_deref(), c.required)
            });
            match (key, policy) {
                (Ok(k), None) => set.insert(name, k),
                (Ok(k), Some(Ok(policy))) => {
                    set.insert(name, k);
                    set.require_client_certificates(name, policy);
                }
                (Ok(_), Some(Err(e))) => {
                    tracing::error!(domain = %name, error = %e, "domain client certificate policy unusable")
                }
                (Err(e), _) => tracing::error!(domain = %name, error = %e, "domain certificate unusable"),
            }
        }
    }
    set
}

/// Keeps `table` and the TLS certificates in step with the member's applied configuration.
/// `serving` turns true once the first table is in place (listeners wait for it, so a
/// restarted member never answers from an empty table).
pub fn spawn_sync(
    member: Arc<ClusterMember>,
    table: Arc<ArcSwap<RoutingTable>>,
    sni: Arc<SniResolver>,
    default_rate: Rate,
    serving: tokio::sync::watch::Sender<bool>,
) {
    tokio::spawn(async move {
        let mut metrics = member.raft.metrics();
        let mut served = None;
        loop {
            // Idempotency records move the log without touching the configuration: compare
            // revisions before copying anything.
            let revision = member.applied.read().await.config.revision;
            if served != Some(revision) {
                let state = member.applied.read().await.config.clone();
                sni.replace(certificates(&state, member.data_key()));
                table.store(Arc::new(compile(&state, default_rate, member.data_key())));
                served = Some(state.revision);
                metrics::gauge!("meridian_config_revision").set(state.revision as f64);
                tracing::info!(revision = state.revision, "serving cluster configuration");
                serving.send_replace(true);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}
