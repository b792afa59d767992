//! Turning the applied cluster configuration into the data plane's routing table.
//!
//! Each stage of each API is compiled from the definition of the deployment it points at,
//! with the stage's variables. A new table is swapped in whenever the applied revision
//! moves; requests in flight finish on the table they started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meridian_consensus::ConfigState;

use super::member::ClusterMember;
use crate::config::table::BaseMapping;
use crate::config::{CanaryRoutes, RoutingTable, StageTarget, base_path, compile_stage};
use crate::gateway::tls::{DomainCertificates, SniResolver, certified_key_from_pem};
use crate::observe::completion::RouteObserver;

/// Compiles every stage of `state`. A stage whose definition no longer compiles (it was
/// validated when applied, so only a changed stage variable can break it) is left out and
/// logged rather than taking the others down.
pub fn compile(state: &ConfigState) -> RoutingTable {
    let mut apis: HashMap<String, HashMap<String, _>> = HashMap::new();
    for (api, record) in &state.apis {
        for (stage, target) in &record.stages {
            let compiled = |deployment_id: u64, variables: &std::collections::BTreeMap<String, String>| {
                let deployment = record.deployments.get(&deployment_id)?;
                let name = format!("{api} deployment {}", deployment.id);
                compile_stage(&deployment.definition, &name, stage, variables, &deployment.id.to_string())
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
    let mut domains = HashMap::new();
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
    RoutingTable {
        revision: state.revision,
        domains,
        apis,
        unrouted: Arc::new(RouteObserver::new("", "", "", "", None)),
    }
}

/// The certificates of the domains that have one.
pub fn certificates(state: &ConfigState) -> DomainCertificates {
    let mut set = DomainCertificates::default();
    for (name, domain) in &state.domains {
        if let (Some(cert), Some(key)) = (&domain.certificate_pem, &domain.key_pem) {
            match certified_key_from_pem(cert, key) {
                Ok(k) => set.insert(name, k),
                Err(e) => tracing::error!(domain = %name, error = %e, "domain certificate unusable"),
            }
        }
    }
    set
}

/// Keeps `table` and the TLS certificates in step with the member's applied configuration.
pub fn spawn_sync(member: Arc<ClusterMember>, table: Arc<ArcSwap<RoutingTable>>, sni: Arc<SniResolver>) {
    tokio::spawn(async move {
        let mut metrics = member.raft.metrics();
        let mut served = None;
        loop {
            let state = member.applied.read().await.config.clone();
            if served != Some(state.revision) {
                sni.replace(certificates(&state));
                table.store(Arc::new(compile(&state)));
                served = Some(state.revision);
                metrics::gauge!("meridian_config_revision").set(state.revision as f64);
                tracing::info!(revision = state.revision, "serving cluster configuration");
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}
