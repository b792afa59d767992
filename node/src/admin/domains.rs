//! The admin API's custom domains (with their certificates, mutual TLS and base paths),
//! regions and DNS zones, with `GET /v1/dns/explain`; the calls are listed in `cluster.rs`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use meridian_consensus::{
    ClientCertificatesRecord, ConfigCommand, DomainRecord, MappingRecord, Proposal, RegionRecord, ZoneRecord,
};

use super::cluster::*;
use super::{json, message, views};
use crate::cluster::member::ClusterMember;
use meridian_dataplane::certificates::certified_key_from_pem;
use meridian_dataplane::config::{base_path, valid_host};

pub(super) async fn route(
    member: &ClusterMember,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    Ok(match (method, segments) {
        (&Method::GET, ["v1", "domains"]) => {
            let applied = member.applied.read().await;
            let config = &applied.config;
            let list: Vec<_> = config
                .domains
                .iter()
                .map(|(name, d)| views::domain(name, d, config.client_certificates.get(name)))
                .collect();
            viewed(&serde_json::json!({ "domains": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "domains", name]) => {
            let applied = member.applied.read().await;
            let name = name.to_ascii_lowercase();
            let d = applied
                .config
                .domains
                .get(&name)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no domain `{name}`")))?;
            let view = views::domain(&name, d, applied.config.client_certificates.get(&name));
            viewed(&view, applied.config.revision)
        }
        (&Method::PUT, ["v1", "domains", name]) => {
            let name = name.to_ascii_lowercase();
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            let (domain, client_certificates) = domain_record(member, &name, &text).await?;
            let command = ConfigCommand::PutDomainWithClientCertificates { name, domain, client_certificates };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::DELETE, ["v1", "domains", name]) => {
            let command = ConfigCommand::DeleteDomain { name: name.to_ascii_lowercase() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::GET, ["v1", "regions"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.regions.iter().map(|(name, r)| views::region(name, r)).collect();
            viewed(&serde_json::json!({ "regions": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "regions", name]) => {
            let applied = member.applied.read().await;
            let r = applied
                .config
                .regions
                .get(*name)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no region `{name}`")))?;
            viewed(&views::region(name, r), applied.config.revision)
        }
        (&Method::PUT, ["v1", "regions", name]) => {
            let name = name.to_string();
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            let region = region_record(&name, &text)?;
            let command = ConfigCommand::PutRegion { name, region };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::DELETE, ["v1", "regions", name]) => {
            let command = ConfigCommand::DeleteRegion { name: name.to_string() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::GET, ["v1", "dns", "zones"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.zones.iter().map(|(name, z)| views::zone(name, z)).collect();
            viewed(&serde_json::json!({ "zones": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "dns", "zones", name]) => {
            let applied = member.applied.read().await;
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let z = applied
                .config
                .zones
                .get(&name)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no DNS zone `{name}`")))?;
            viewed(&views::zone(&name, z), applied.config.revision)
        }
        (&Method::PUT, ["v1", "dns", "zones", name]) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            let zone = crate::cluster::dns::parse_zone(&text).map_err(|errors| invalid(errors.join("; ")))?;
            if zone.origin.to_string().trim_end_matches('.') != name {
                return Err(invalid(format!("the document is for zone `{}`, not `{name}`", zone.origin)));
            }
            let command = ConfigCommand::PutZone { name, zone: ZoneRecord { definition: text } };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::DELETE, ["v1", "dns", "zones", name]) => {
            let command = ConfigCommand::DeleteZone { name: name.trim_end_matches('.').to_ascii_lowercase() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::GET, ["v1", "dns", "explain"]) => {
            let Some(dns) = member.dns() else {
                return Err(Refusal::new(StatusCode::CONFLICT, "this node serves no DNS (set `cluster.dns`)"));
            };
            let client = query_value(query, "client")
                .and_then(|c| c.parse::<std::net::IpAddr>().ok())
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the client address: ?client=IP"))?;
            let name = query_value(query, "name")
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the queried name: ?name=NAME"))?;
            let explained = dns.explain(client, &name).await.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
            json(StatusCode::OK, explained.to_string())
        }
        _ => message(StatusCode::NOT_FOUND, "no such cluster endpoint"),
    })
}

/// Checks a domain body: a host name, a certificate that fits its key (or neither),
/// mappings to stages that exist, and a mutual TLS policy whose CA certificates and
/// revocation lists make a verifier.
async fn domain_record(
    member: &ClusterMember,
    name: &str,
    text: &str,
) -> Result<(DomainRecord, Option<ClientCertificatesRecord>), Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Mapping {
        #[serde(default = "root")]
        base_path: String,
        api: String,
        stage: String,
    }
    fn root() -> String {
        "/".into()
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ClientCertificates {
        ca_pem: String,
        crl_pem: Option<String>,
        #[serde(default = "yes")]
        required: bool,
    }
    fn yes() -> bool {
        true
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        certificate_pem: Option<String>,
        key_pem: Option<String>,
        #[serde(default)]
        mappings: Vec<Mapping>,
        client_certificates: Option<ClientCertificates>,
    }
    let body: Body = json_body(text, "{\"certificate_pem\", \"key_pem\", \"mappings\", \"client_certificates\"}")?;
    if !valid_host(name) {
        return Err(invalid(format!("`{name}` is not a host name")));
    }
    match (&body.certificate_pem, &body.key_pem) {
        (Some(cert), Some(key)) => {
            certified_key_from_pem(cert, key).map_err(|e| invalid(format!("certificate: {e}")))?;
        }
        (None, None) => {}
        _ => return Err(invalid("give both `certificate_pem` and `key_pem`, or neither")),
    }
    let client_certificates = match body.client_certificates {
        None => None,
        Some(_) if body.certificate_pem.is_none() => {
            return Err(invalid("`client_certificates` needs the domain's own `certificate_pem` and `key_pem`"));
        }
        Some(c) => {
            meridian_dataplane::certificates::client_verifier_from_pem(&c.ca_pem, c.crl_pem.as_deref(), c.required)
                .map_err(|e| invalid(format!("client_certificates: {e}")))?;
            Some(ClientCertificatesRecord { ca_pem: c.ca_pem, crl_pem: c.crl_pem, required: c.required })
        }
    };
    let applied = member.applied.read().await;
    let mut seen = std::collections::BTreeSet::new();
    let mut mappings = Vec::new();
    for m in body.mappings {
        let normalized = base_path(&m.base_path).map_err(invalid)?;
        if !seen.insert(normalized.clone()) {
            return Err(invalid(format!("base path `{}` is mapped twice", m.base_path)));
        }
        if applied.config.apis.get(&m.api).and_then(|a| a.stages.get(&m.stage)).is_none() {
            return Err(invalid(format!("API `{}` has no stage `{}`", m.api, m.stage)));
        }
        mappings.push(MappingRecord { base_path: m.base_path, api: m.api, stage: m.stage });
    }
    // The key enters the replicated state sealed (docs/SECURITY.md).
    let key_sealed = match &body.key_pem {
        Some(key) => Some(
            member
                .data_key()
                .seal(&crate::cluster::sealed::domain_key(name), key.as_bytes())
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        ),
        None => None,
    };
    Ok((DomainRecord { certificate_pem: body.certificate_pem, key_sealed, mappings }, client_certificates))
}

/// Checks a region body: a name, an optional weight, and client networks in CIDR form.
fn region_record(name: &str, text: &str) -> Result<RegionRecord, Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        weight: Option<u32>,
        #[serde(default)]
        client_cidrs: Vec<String>,
    }
    let body: Body = json_body(text, "{\"weight\", \"client_cidrs\"}")?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("a region is a name of a-z, 0-9 and `-`"));
    }
    for cidr in &body.client_cidrs {
        cidr.parse::<meridian_dns::net::Cidr>().map_err(|e| invalid(e.to_string()))?;
    }
    Ok(RegionRecord { weight: body.weight, client_cidrs: body.client_cidrs })
}
