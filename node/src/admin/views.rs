//! What the admin API shows of each kind of thing in the replicated configuration: one JSON
//! shape per kind, the same in its list (`GET /v1/plans`) and its show (`GET
//! /v1/plans/{plan}`) answers, with times in RFC 3339. `meridian ... --output json` prints
//! these documents unchanged, so their field names are what scripts rely on (they are
//! described in `openapi.json`).

use meridian_consensus::{
    ApiKeyRecord, ApiRecord, ClientCertificatesRecord, ConfigState, Deployment, DomainRecord, QuotaPeriod,
    RegionRecord, StageRecord, UsagePlanRecord, ZoneRecord,
};
use serde_json::{Value, json};

/// Unix milliseconds as RFC 3339 (UTC, milliseconds); `null` for an unknown time (0).
pub fn timestamp(ms: u64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    let mut out = String::new();
    meridian_dataplane::observe::time::write_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        &mut out,
    );
    Value::String(out)
}

/// An API: its stages and how many deployments it has.
pub fn api(id: &str, record: &ApiRecord) -> Value {
    json!({
        "id": id,
        "stages": record.stages.iter().map(|(name, s)| stage(id, name, s)).collect::<Vec<_>>(),
        "deployments": record.deployments.len(),
        "latest_deployment": record.deployments.keys().next_back(),
    })
}

/// A stage: the deployment it serves, its variables and its canary.
pub fn stage(api: &str, name: &str, s: &StageRecord) -> Value {
    json!({
        "api": api,
        "stage": name,
        "deployment": s.deployment,
        "variables": s.variables,
        "canary": s.canary.as_ref().map(|c| json!({
            "deployment": c.deployment,
            "percent": c.basis_points as f64 / 100.0,
            "variables": c.variables,
        })),
    })
}

/// A deployment: when and by whom, which stages serve it, and (for `show`) its definition.
pub fn deployment(api: &str, record: &ApiRecord, d: &Deployment, with_definition: bool) -> Value {
    let stages: Vec<&String> = record.stages.iter().filter(|(_, s)| s.deployment == d.id).map(|(n, _)| n).collect();
    let mut view = json!({
        "api": api,
        "id": d.id,
        "description": d.description,
        "created_at": timestamp(d.created_at_ms),
        "created_by": d.created_by,
        "stages": stages,
    });
    if with_definition {
        view["definition"] = Value::String(d.definition.clone());
    }
    view
}

/// An API key (never its value): name, state, age and the plans it is on.
pub fn key(config: &ConfigState, id: &str, k: &ApiKeyRecord) -> Value {
    let plans: Vec<&String> = config.plans.iter().filter(|(_, p)| p.keys.contains(id)).map(|(n, _)| n).collect();
    json!({
        "id": id,
        "name": k.name,
        "enabled": k.enabled,
        "created_at": timestamp(k.created_at_ms),
        "plans": plans,
    })
}

/// Credentials for signed requests: never the secret.
pub fn credential(id: &str, c: &meridian_consensus::CredentialRecord) -> Value {
    json!({
        "id": id,
        "name": c.name,
        "enabled": c.enabled,
        "created_at": timestamp(c.created_at_ms),
    })
}

pub fn period_name(p: QuotaPeriod) -> &'static str {
    match p {
        QuotaPeriod::Day => "day",
        QuotaPeriod::Week => "week",
        QuotaPeriod::Month => "month",
    }
}

/// A usage plan: its throttle and quota, the stages (and per-route throttles) it covers, its
/// keys (ids).
pub fn plan(name: &str, p: &UsagePlanRecord) -> Value {
    let stages: Vec<Value> = p
        .stages
        .iter()
        .map(|((api, stage), routes)| {
            let routes: Vec<Value> = routes
                .iter()
                .map(|(route, rate)| json!({"route": route, "rate": rate.per_second, "burst": rate.burst}))
                .collect();
            json!({"api": api, "stage": stage, "routes": routes})
        })
        .collect();
    json!({
        "name": name,
        "rate": p.rate.map(|r| r.per_second),
        "burst": p.rate.map(|r| r.burst),
        "quota": p.quota.map(|(limit, period)| format!("{limit}/{}", period_name(period))),
        "stages": stages,
        "keys": p.keys,
    })
}

/// A custom domain: whether it has TLS, and its base-path mappings (never the key).
pub fn domain(name: &str, d: &DomainRecord, client_certificates: Option<&ClientCertificatesRecord>) -> Value {
    let mappings: Vec<Value> =
        d.mappings.iter().map(|m| json!({"base_path": m.base_path, "api": m.api, "stage": m.stage})).collect();
    let sha256 = |pem: &str| meridian_dataplane::digest::sha256_hex(pem.as_bytes());
    json!({
        "name": name,
        "tls": d.certificate_pem.is_some(),
        "certificate_sha256": d.certificate_pem.as_deref().map(sha256),
        "mappings": mappings,
        "client_certificates": client_certificates.map(|c| json!({
            "required": c.required,
            "ca_sha256": sha256(&c.ca_pem),
            "crl_sha256": c.crl_pem.as_deref().map(sha256),
        })),
    })
}

/// A region's DNS settings.
pub fn region(name: &str, r: &RegionRecord) -> Value {
    json!({"name": name, "weight": r.weight, "client_cidrs": r.client_cidrs})
}

/// A DNS zone and its document.
pub fn zone(name: &str, z: &ZoneRecord) -> Value {
    json!({"name": name, "definition": z.definition})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_unknown_is_null() {
        assert_eq!(timestamp(1_795_597_200_123), Value::String("2026-11-25T09:00:00.123Z".into()));
        assert_eq!(timestamp(0), Value::Null);
    }
}
