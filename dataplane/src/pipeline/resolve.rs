//! Which API and stage a request is for: `(host, path) → (stage routes, path within it)`.
//!
//! A host that names a custom domain is served only by that domain's base-path mappings
//! (longest base path first). Any other host uses the default endpoint form
//! `/{stage}/...`, where the API is the one whose id is the host's first label
//! (`pets.localhost` → API `pets`), or else the one API that has a stage of that name (so
//! an address without a name reaches it), unless the API turned its default endpoint off.
//! The host arrives normalised ([`super::host`]).

use std::sync::Arc;

use crate::config::table::{RoutingTable, StageRoutes};

/// A resolved request: the stage's routes and where the route path starts in the
/// request path.
#[derive(Debug)]
pub struct Resolved<'t> {
    pub stage: &'t Arc<StageRoutes>,
    pub path_offset: usize,
}

/// Why nothing serves this host and path.
#[derive(Debug, PartialEq, Eq)]
pub enum Unresolved {
    NoMapping,
    NoStage,
    AmbiguousApi,
}

impl Unresolved {
    pub fn message(&self) -> &'static str {
        match self {
            Unresolved::NoMapping => "no API is mapped at this path on this domain",
            Unresolved::NoStage => "no such stage",
            Unresolved::AmbiguousApi => {
                "several APIs have this stage: address one as {api-id}.<host>/{stage}/... or through a custom domain"
            }
        }
    }
}

/// Whether `path` is `base` or continues it at a segment boundary.
fn under_base(path: &str, base: &str) -> bool {
    path.starts_with(base) && matches!(path.as_bytes().get(base.len()), None | Some(b'/'))
}

/// `text` up to the first `byte` (an ASCII byte), or all of it. Names and segments are
/// short: a plain scan costs less than setting up a `memchr` search.
fn up_to(text: &str, byte: u8) -> &str {
    text.bytes().position(|b| b == byte).map_or(text, |end| &text[..end])
}

/// Resolves a request's normalised host and path. `draw` (0..10,000, uniform) decides
/// whether a stage with a canary serves this request from the canary.
pub fn resolve<'t>(
    table: &'t RoutingTable,
    host: Option<&str>,
    path: &str,
    draw: u32,
) -> Result<Resolved<'t>, Unresolved> {
    if let Some(mappings) = host.and_then(|h| table.domains.get(h)) {
        return mappings
            .iter()
            .find(|m| under_base(path, &m.base_path))
            .map(|m| Resolved { stage: m.stage.pick(draw), path_offset: m.base_path.len() })
            .ok_or(Unresolved::NoMapping);
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let stage_name = up_to(rest, b'/');
    let serves = |target: &&Arc<crate::config::table::StageTarget>| target.primary.default_endpoint;
    let stage = match host.and_then(|h| table.apis.get(up_to(h, b'.'))) {
        Some(stages) => stages.get(stage_name).filter(serves),
        // Any other host: the one API that serves a stage of that name.
        None => {
            let mut serving = table.apis.values().filter_map(|stages| stages.get(stage_name).filter(serves));
            match (serving.next(), serving.next()) {
                (first, None) => first,
                (_, Some(_)) => return Err(Unresolved::AmbiguousApi),
            }
        }
    };
    stage.map(|s| Resolved { stage: s.pick(draw), path_offset: 1 + stage_name.len() }).ok_or(Unresolved::NoStage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(text: &str) -> RoutingTable {
        crate::config::parse_str(text, "t", Path::new(".")).unwrap().table
    }

    const TWO_APIS: &str = r#"
apis:
  - id: pets
    stages: [{ name: prod }, { name: dev }]
  - id: shop
    stages: [{ name: prod }]
domains:
  - name: api.example.com
    mappings:
      - { base_path: /, api: shop, stage: prod }
      - { base_path: /pets, api: pets, stage: dev }
"#;

    fn who(t: &RoutingTable, host: &str, path: &str) -> Result<(String, String, String), Unresolved> {
        let host = crate::pipeline::host::normalize(host).unwrap();
        resolve(t, Some(&host), path, 0)
            .map(|r| (r.stage.api.to_string(), r.stage.stage.to_string(), path[r.path_offset..].to_string()))
    }

    #[test]
    fn custom_domains_use_the_longest_base_path() {
        let t = table(TWO_APIS);
        assert_eq!(who(&t, "API.example.com:443", "/pets/1").unwrap(), ("pets".into(), "dev".into(), "/1".into()));
        assert_eq!(who(&t, "api.example.com", "/petshop").unwrap(), ("shop".into(), "prod".into(), "/petshop".into()));
    }

    #[test]
    fn default_endpoint_picks_api_by_host_label() {
        let t = table(TWO_APIS);
        assert_eq!(who(&t, "pets.localhost:8080", "/prod/x").unwrap(), ("pets".into(), "prod".into(), "/x".into()));
        assert_eq!(who(&t, "127.0.0.1:8080", "/prod/x").unwrap_err(), Unresolved::AmbiguousApi);
        // Without a name, a stage only one API has is that API's.
        assert_eq!(who(&t, "127.0.0.1:8080", "/dev/x").unwrap(), ("pets".into(), "dev".into(), "/x".into()));
        assert_eq!(who(&t, "127.0.0.1:8080", "/qa/x").unwrap_err(), Unresolved::NoStage);
        assert_eq!(who(&t, "pets.localhost", "/qa/x").unwrap_err(), Unresolved::NoStage);
    }

    #[test]
    fn custom_domains_are_found_with_a_trailing_dot() {
        let t = table(TWO_APIS);
        assert_eq!(who(&t, "api.example.com.", "/pets/1").unwrap(), ("pets".into(), "dev".into(), "/1".into()));
    }

    #[test]
    fn an_api_without_its_default_endpoint_is_only_reachable_through_domains() {
        let t = table(
            r#"
apis:
  - id: pets
    default_endpoint: false
    stages: [{ name: prod }]
domains:
  - name: api.example.com
    mappings: [{ base_path: /, api: pets, stage: prod }]
"#,
        );
        assert_eq!(who(&t, "pets.example.org", "/prod/x").unwrap_err(), Unresolved::NoStage);
        assert_eq!(who(&t, "127.0.0.1", "/prod/x").unwrap_err(), Unresolved::NoStage);
        assert_eq!(who(&t, "api.example.com", "/x").unwrap(), ("pets".into(), "prod".into(), "/x".into()));
    }

    #[test]
    fn a_single_api_needs_no_host() {
        let t = table("apis: [{ id: only, stages: [{ name: v1 }] }]\n");
        assert_eq!(who(&t, "127.0.0.1", "/v1").unwrap(), ("only".into(), "v1".into(), "".into()));
        assert!(resolve(&t, None, "/v1/a", 0).is_ok());
    }
}
