//! Validation and compilation of a configuration file into a [`GatewayConfig`].
//!
//! The YAML is first deserialized into [`model`](super::model) types (a syntax error, a
//! wrong type or an unknown field stops there, with its line). Then every value is checked
//! and compiled in one pass that records *every* problem with its line and field path, so
//! an operator fixes a file in one round.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Location;

use super::errors::{ConfigErrors, ErrorSink};
use super::model::*;
use super::parse_duration;
use super::table::*;
use crate::certificates::{DomainCertificates, load_certified_key};
use crate::integration::Integration;
use crate::integration::websocket::WebSocketEndpoint;
use crate::limits::limiter::Rate;
use crate::observe::access_log::{LogSink, LogTemplate};
use crate::observe::completion::RouteObserver;
use crate::router::{MethodMatch, PathPattern, Router};
use crate::stages::api_key::{ApiKeyCheck, KeyRing};
use crate::stages::compression::Compression;
use crate::stages::cors::Cors;
use crate::stages::signed_request::SignedRequestCheck;
use crate::stages::throttle::RouteThrottle;
use crate::stages::waf::WafCheck;
use crate::stages::{Chain, Stage};

/// The cluster-wide rate limit when the configuration names none.
pub const DEFAULT_RATE: Rate = Rate::per_second(10_000, 5_000);

/// The default and the longest allowed integration timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(29);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads, validates and compiles a configuration file.
pub fn load_file(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let name = path.display().to_string();
    let text = crate::files::read_bounded(path).map_err(|e| ConfigErrors {
        source_name: name.clone(),
        errors: vec![super::ConfigError {
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    parse_str(&text, &name, base_dir)
}

/// Validates and compiles configuration text; relative file paths resolve against `base_dir`.
pub fn parse_str(text: &str, source_name: &str, base_dir: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let file: GatewayFile = serde_saphyr::from_str(text).map_err(|e| {
        let mut sink = ErrorSink::default();
        structural_error(&mut sink, text, &e);
        sink.into_errors(source_name)
    })?;
    Compiler { sink: ErrorSink::default(), base_dir, deployment: "", default_rate: DEFAULT_RATE }
        .compile(file)
        .map_err(|sink| sink.into_errors(source_name))
}

/// A YAML error as one of ours: serde-saphyr's first line without its own `error: line L
/// column C:` prefix (the location is printed once, by the sink), and the field the error
/// is in, found from the location, so a wrong type names what is wrong.
fn structural_error(sink: &mut ErrorSink, text: &str, e: &serde_saphyr::Error) {
    let location = e.location().unwrap_or(Location::UNKNOWN);
    let message = e.to_string();
    let first = message.lines().next().unwrap_or(&message).trim();
    let without_prefix = first
        .strip_prefix("error: ")
        .map(|rest| match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
            Some((position, m)) if position.contains("column") => m,
            _ => rest,
        })
        .unwrap_or(first);
    // The parser's words for a wrong type, in the file's terms.
    let message = match without_prefix {
        m if m.starts_with("invalid u") || m.starts_with("invalid i") => "expected a whole number".to_string(),
        "expected string scalar" => "expected a single value (a string or a number), not a list or a mapping".into(),
        "expected mapping start" => "expected a mapping (`key: value` lines, or `{ key: value }`)".into(),
        "expected sequence start" => "expected a list (`- item` lines, or `[a, b]`)".into(),
        m => m.to_string(),
    };
    let field = field_at(text, location.line() as usize, location.column() as usize).unwrap_or_default();
    sink.push(location, &field, message);
}

/// The dotted path of the field at `line`:`column` (1-based) of a YAML text, from the keys
/// on that line before the column (flow style) and the keys of the less indented lines
/// above it (block style); list items show as `[]`.
fn field_at(text: &str, line: usize, column: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = *lines.get(line.checked_sub(1)?)?;
    let before: String = here.chars().take(column.saturating_sub(1)).collect();
    // Keys on this line, one per flow nesting level.
    let mut on_line: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut word = String::new();
    for c in before.chars() {
        match c {
            '{' | '[' => {
                depth += 1;
                word.clear();
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                on_line.truncate(depth + 1);
                word.clear();
            }
            ':' if !word.trim().is_empty() => {
                on_line.truncate(depth);
                on_line.push(word.trim().trim_matches('"').to_string());
                word.clear();
            }
            ',' => word.clear(),
            c => word.push(c),
        }
    }
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '-']).len();
    let mut path: Vec<String> = Vec::new();
    let mut limit = indent(here);
    let mut in_item = here.trim_start().starts_with('-');
    if in_item {
        path.push("[]".into());
    }
    for above in lines[..line - 1].iter().rev() {
        let trimmed = above.trim_start_matches([' ', '-']);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let level = indent(above);
        if level == limit && above.trim_start().starts_with('-') && !in_item {
            // The start of the list item the lines below belong to.
            path.push("[]".into());
            in_item = true;
            continue;
        }
        if level >= limit {
            continue;
        }
        if let Some((key, _)) = trimmed.split_once(':') {
            path.push(key.trim().trim_matches('"').to_string());
        }
        limit = level;
        in_item = above.trim_start().starts_with('-');
        if in_item {
            path.push("[]".into());
        }
        if limit == 0 {
            break;
        }
    }
    path.reverse();
    let mut dotted = String::new();
    for part in path.into_iter().chain(on_line) {
        if part == "[]" {
            dotted.push_str("[]");
        } else {
            if !dotted.is_empty() {
                dotted.push('.');
            }
            dotted.push_str(&part);
        }
    }
    (!dotted.is_empty()).then_some(dotted)
}

mod authorizers;
mod cache;
mod cluster;
mod compression;
mod conditions;
mod cors;
mod domains;
mod gateway_responses;
mod idempotency;
mod integrations;
mod mapping;
mod routes;
mod traces;
mod transform;
mod validation;
mod waf;
mod websocket;

use authorizers::{AuthorizerSpec, AuthorizerUse};
pub use domains::{base_path, valid_host};
use integrations::{IntegrationSpec, RoutePlace};

struct Compiler<'a> {
    sink: ErrorSink,
    base_dir: &'a Path,
    /// The deployment being compiled, for metric labels and access logs ("" for a file).
    deployment: &'a str,
    /// The cluster-wide rate limit.
    default_rate: Rate,
}

/// What every route of a stage may refer to.
struct StageContext<'a> {
    authorizers: &'a HashMap<String, AuthorizerSpec>,
    signing: &'a SigningDef,
    /// The API's and the stage's firewall rules, when there are any.
    firewall: Option<Arc<crate::stages::waf::Firewall>>,
    /// The API's gateway responses, when it has any.
    gateway_responses: Option<&'a gateway_responses::GatewayResponseSpec>,
    /// The API's binary media types.
    binary: Arc<crate::stages::content::MediaRanges>,
    /// How the API compresses its answers, if it does.
    compression: Option<Arc<crate::stages::compression::CompressionPolicy>>,
}

/// A route as parsed once, before it is specialised per stage.
struct RouteSpec {
    /// `METHOD /path`, with the route's conditions when it has any (metrics, logs, scopes).
    key: String,
    throttle: Option<Rate>,
    api_key_required: bool,
    allow_encoded_slashes: bool,
    method: MethodMatch,
    pattern: PathPattern,
    conditions: crate::router::RouteConditions,
    integration: IntegrationSpec,
    /// The authorizer the route names, checked against the API's.
    authorizer: Option<String>,
    /// Scopes a JWT authorizer requires on this route.
    scopes: Vec<String>,
    /// `authorization: signed`.
    signed: bool,
    /// The route's own CORS, or the API's.
    cors: Option<Arc<crate::stages::cors::CorsPolicy>>,
    /// Request validation (`type: rest`), shared by the route on every stage.
    validation: Option<Arc<crate::stages::validation::RequestValidation>>,
    /// The route's cache settings (`type: rest`), for stages with a cache.
    cache: Option<cache::RouteCacheSpec>,
    /// How the route honours `Idempotency-Key` (`type: rest`).
    idempotency: Option<idempotency::IdempotencySpec>,
    /// The integration's request mapping (`type: rest`).
    mapping: Option<mapping::MappingSpec>,
    /// The integration's responses (`type: rest`).
    responses: Option<Arc<[crate::stages::integration_response::IntegrationResponse]>>,
    /// The integration's XML upstream conversions (`type: rest`).
    xml_upstream: Option<Arc<crate::stages::xml_upstream::XmlUpstream>>,
    /// The `http_proxy`'s path and host rewrite.
    rewrite: Option<Arc<crate::stages::rewrite::Rewrite>>,
    /// The route's transform, compiled per stage (its values may read stage variables).
    transform: Option<Spanned<TransformDef>>,
    /// Called by backends, not clients (a WebSocket API's callback API): the stage's API
    /// key requirement does not apply.
    backend_facing: bool,
    field: String,
}

impl Compiler<'_> {
    fn rate(&mut self, t: &Spanned<ThrottleDef>, field: &str) -> Option<Rate> {
        let ThrottleDef { rate, burst } = t.value;
        if rate == 0 || burst == 0 {
            self.sink.push(t.referenced, field, "`rate` and `burst` must be at least 1");
            return None;
        }
        Some(Rate::per_second(rate, burst))
    }

    fn compile(mut self, file: GatewayFile) -> Result<GatewayConfig, ErrorSink> {
        if let Some(t) = &file.throttle
            && let Some(rate) = self.rate(t, "throttle")
        {
            self.default_rate = rate;
        }
        let listen_http = file.listen.http.as_ref().and_then(|a| self.socket_addr(a, "listen.http"));
        let listen_https = file.listen.https.as_ref().and_then(|a| self.socket_addr(a, "listen.https"));
        if file.listen.http.is_none() && file.listen.https.is_none() {
            self.sink.push(Location::UNKNOWN, "listen", "set `http` or `https` (or both)");
        }
        let admin_listen = self.socket_addr(&file.admin.listen, "admin.listen");
        let admin_token = file.admin.token_file.as_ref().and_then(|f| self.token(f));
        let limits = self.limits(&file.limits);
        let access_log = self.access_log(&file.access_log);

        let mut apis = Apis::default();
        for (i, api) in file.apis.iter().enumerate() {
            let field = format!("apis[{i}]");
            if let Some((id, stages)) = self.api(api, &field)
                && apis.insert(id.clone(), stages).is_some()
            {
                self.sink.push(api.id.referenced, format!("{field}.id"), format!("API id `{id}` is used twice"));
            }
        }
        let (domains, certificates) = self.domains(&file.domains, &apis, listen_https.is_some());
        let cluster = file.cluster.as_ref().and_then(|c| self.cluster(c, &file));
        let default_certificate = file.listen.default_certificate.as_ref().map(|d| d.value.to_ascii_lowercase());
        if let Some(name) = &file.listen.default_certificate {
            let at = name.referenced;
            if file.listen.https.is_none() {
                self.sink.push(at, "listen.default_certificate", "is for the `https` listener, which is not set");
            } else if file.cluster.is_none() && certificates.find(&name.value).is_none() {
                // A cluster member's domains come from the cluster: checked when they load.
                self.sink.push(
                    at,
                    "listen.default_certificate",
                    format!("`{}` is not a domain of this file with a certificate", name.value),
                );
            }
        }

        let nameservers: Vec<SocketAddr> = file
            .resolver
            .iter()
            .flat_map(|r| r.nameservers.iter().enumerate())
            .filter_map(|(i, n)| self.socket_addr(n, &format!("resolver.nameservers[{i}]")))
            .collect();
        if let Some(r) = &file.resolver
            && r.nameservers.is_empty()
        {
            self.sink.push(Location::UNKNOWN, "resolver.nameservers", "name at least one `IP:port`");
        }
        let tracing = file.tracing.as_ref().and_then(|t| self.tracing(t));
        let unrouted = Arc::new(RouteObserver::new("", "", "", "", None));
        let keeps_responses = keeps_responses(&apis);
        match (self.sink.is_empty(), admin_listen, limits) {
            (true, Some(admin_listen), Some(limits)) => Ok(GatewayConfig {
                listen_http,
                listen_https,
                admin_listen,
                admin_token,
                limits,
                access_log,
                table: RoutingTable {
                    revision: 0,
                    domains,
                    apis,
                    unrouted,
                    keys: KeyRing::default(),
                    credentials: Default::default(),
                    keeps_responses,
                },
                certificates,
                default_certificate,
                cluster,
                default_rate: self.default_rate,
                nameservers,
                tracing,
            }),
            _ => Err(self.sink),
        }
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    fn socket_addr(&mut self, value: &Spanned<String>, field: &str) -> Option<SocketAddr> {
        match value.value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.sink.push(
                    value.referenced,
                    field,
                    format!("`{}` is not an address:port (e.g. `127.0.0.1:8080`)", value.value),
                );
                None
            }
        }
    }

    /// Whether a route names at most one of an authorizer and `authorization: signed`.
    fn one_authorization(&mut self, route: &RouteDef, rfield: &str) -> bool {
        let (Some(_), Some(signed)) = (&route.authorizer, &route.authorization) else {
            return true;
        };
        self.sink.push(
            signed.referenced,
            format!("{rfield}.authorization"),
            "a route uses an authorizer or `authorization: signed`, not both",
        );
        false
    }

    fn duration(&mut self, value: &Spanned<String>, field: &str) -> Option<Duration> {
        match parse_duration(&value.value) {
            Ok(d) if d.is_zero() => {
                self.sink.push(value.referenced, field, "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.sink.push(value.referenced, field, e);
                None
            }
        }
    }

    fn token(&mut self, file: &Spanned<String>) -> Option<String> {
        match crate::files::read_bounded(&self.path(&file.value)) {
            Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_string()),
            Ok(_) => {
                self.sink.push(file.referenced, "admin.token_file", "the token must be at least 16 characters");
                None
            }
            Err(e) => {
                self.sink.push(file.referenced, "admin.token_file", format!("cannot read `{}`: {e}", file.value));
                None
            }
        }
    }

    fn limits(&mut self, l: &LimitsSection) -> Option<Limits> {
        let header_read_timeout = self.duration(&l.header_read_timeout, "limits.header_read_timeout");
        let idle_timeout = self.duration(&l.idle_timeout, "limits.idle_timeout");
        let drain_timeout = self.duration(&l.drain_timeout, "limits.drain_timeout");
        let mut ok = true;
        // Below 8 KiB ordinary clients' heads (cookies, tokens) would be refused.
        if !(8192..=1024 * 1024).contains(&l.max_header_bytes) {
            self.sink.push(Location::UNKNOWN, "limits.max_header_bytes", "must be between 8192 and 1048576");
            ok = false;
        }
        if !(1..=1000).contains(&l.max_headers) {
            self.sink.push(Location::UNKNOWN, "limits.max_headers", "must be between 1 and 1000");
            ok = false;
        }
        if l.max_body_bytes == 0 {
            self.sink.push(Location::UNKNOWN, "limits.max_body_bytes", "must be at least 1");
            ok = false;
        }
        if l.max_connections == 0 {
            self.sink.push(Location::UNKNOWN, "limits.max_connections", "must be at least 1");
            ok = false;
        }
        Some(Limits {
            max_body_bytes: l.max_body_bytes,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            header_read_timeout: header_read_timeout?,
            idle_timeout: idle_timeout?,
            max_connections: l.max_connections,
            max_connections_per_client: l.max_connections_per_client,
            drain_timeout: drain_timeout?,
            max_websocket_connections: l.max_websocket_connections,
        })
        .filter(|_| ok)
    }

    fn access_log(&mut self, a: &AccessLogSection) -> LogSink {
        if !a.enabled {
            return LogSink::Off;
        }
        let Some(path) = &a.path else {
            return LogSink::Stdout;
        };
        let full = self.path(&path.value);
        match full.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                self.sink.push(
                    path.referenced,
                    "access_log.path",
                    format!("folder `{}` does not exist", dir.display()),
                );
            }
            _ => {}
        }
        LogSink::File(full)
    }

    fn name(&mut self, value: &Spanned<String>, field: &str, what: &str) -> bool {
        let v = &value.value;
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            self.sink.push(
                value.referenced,
                field,
                format!("{what} `{v}` must be 1-64 characters of a-z, 0-9, `-` and `_`"),
            );
        }
        ok
    }

    fn api(&mut self, api: &ApiDef, field: &str) -> Option<(String, Stages)> {
        let id_ok = self.name(&api.id, &format!("{field}.id"), "API id");
        self.websocket_only(api, field);
        let authorizers = self.authorizers(api, field);
        let api_cors = api.cors.as_ref().and_then(|c| self.cors(c, &format!("{field}.cors")));
        self.rest_only(api, field);
        let models = self.models(api, field);
        let binary = self.binary_media_types(api, field);
        let compression = self.compression(api, field);
        let gateway_responses = self.gateway_responses(api, field).ok().flatten();
        if let Some(signing) = &api.signing {
            let part = |v: &str| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if !part(&signing.value.region) || !part(&signing.value.service) {
                self.sink.push(
                    signing.referenced,
                    format!("{field}.signing"),
                    "`region` and `service` are 1-64 characters of a-z, 0-9 and `-` (e.g. `eu-west-1`, `execute-api`)",
                );
            }
        }
        let specs = match api.kind.as_ref().map(|k| k.value) {
            Some(ApiKind::Websocket) => self.websocket_routes(api, field, &authorizers),
            _ => self.path_routes(api, field, &authorizers, api_cors.as_ref(), &models),
        };
        let mut stages = Stages::default();
        for (i, stage) in api.stages.iter().enumerate() {
            let sfield = format!("{field}.stages[{i}]");
            if !self.name(&stage.name, &format!("{sfield}.name"), "stage name") {
                continue;
            }
            if let (Some(_), Some(signed)) = (&stage.authorizer, &stage.authorization) {
                self.sink.push(
                    signed.referenced,
                    format!("{sfield}.authorization"),
                    "a stage uses an authorizer or `authorization: signed`, not both",
                );
                continue;
            }
            if let Some(name) = &stage.authorizer {
                let used = AuthorizerUse { name, field: format!("{sfield}.authorizer") };
                if !self.check_authorizer_use(&used, &authorizers, &api.authorizers) {
                    continue;
                }
            }
            self.check_scopes(api, field, &authorizers, stage);
            let signing = api
                .signing
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or(SigningDef { region: "us-east-1".into(), service: "execute-api".into() });
            let firewall = self.firewall(api, field, stage, &sfield);
            let context = StageContext {
                authorizers: &authorizers,
                signing: &signing,
                firewall,
                gateway_responses: gateway_responses.as_ref(),
                binary: binary.clone(),
                compression: compression.clone(),
            };
            let routes = self.stage(&api.id.value, stage, &specs, &context, api.default_endpoint, &sfield);
            if stages.insert(stage.name.value.clone(), Arc::new(StageTarget::new(Arc::new(routes)))).is_some() {
                self.sink.push(
                    stage.name.referenced,
                    format!("{sfield}.name"),
                    format!("stage `{}` is declared twice", stage.name.value),
                );
            }
        }
        id_ok.then(|| (api.id.value.clone(), stages))
    }

    fn stage(
        &mut self,
        api: &str,
        stage: &StageDef,
        specs: &[RouteSpec],
        context: &StageContext<'_>,
        default_endpoint: bool,
        field: &str,
    ) -> StageRoutes {
        let stage_name = stage.name.value.as_str();
        let stage_rate = stage.throttle.as_ref().and_then(|t| self.rate(t, &format!("{field}.throttle")));
        let cluster_scope: Arc<str> = Arc::from("cluster");
        let gateway_responses = context.gateway_responses.map(|g| Self::gateway_responses_stage(g, stage));
        let stage_scope: Arc<str> = Arc::from(format!("stage {api}/{stage_name}"));
        let log_template = stage.access_log_format.as_ref().and_then(|f| match LogTemplate::parse(&f.value) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                self.sink.push(f.referenced, format!("{field}.access_log_format"), e);
                None
            }
        });
        let stage_cache = self.stage_cache(stage, field);
        let sampling = self.sampling(stage, field);
        let mut router = Router::default();
        let mut keeps_responses = false;
        for spec in specs {
            let integration = match &spec.integration {
                IntegrationSpec::Mock(m) => Integration::Mock(m.clone()),
                IntegrationSpec::Redirect(redirect) => {
                    match self.redirect_for_stage(redirect, spec, stage_name, &stage.variables) {
                        Some(r) => Integration::Redirect(r),
                        None => continue,
                    }
                }
                IntegrationSpec::Proxy(proxy) => {
                    let params = spec.pattern.param_names();
                    let place = RoutePlace { key: &spec.key, field: &spec.field, params: &params };
                    match self.proxy_for_stage(proxy, place, stage_name, &stage.variables, api) {
                        Some(p) => Integration::Proxy(Box::new(p)),
                        None => continue,
                    }
                }
                IntegrationSpec::WebSocket(websocket) => {
                    match self.websocket_for_stage(websocket, api, stage_name, &stage.variables) {
                        Some(s) => Integration::WebSocket(WebSocketEndpoint::Connect(Arc::new(s))),
                        None => continue,
                    }
                }
                IntegrationSpec::Connections(max_message_bytes) => {
                    Integration::WebSocket(WebSocketEndpoint::Callback {
                        api: api.into(),
                        stage: stage_name.into(),
                        max_message_bytes: *max_message_bytes,
                    })
                }
            };
            let observer = Arc::new(
                RouteObserver::new(api, stage_name, &spec.key, self.deployment, log_template.clone()).traced(sampling),
            );
            let mut scopes = vec![(cluster_scope.clone(), self.default_rate)];
            if let Some(rate) = stage_rate {
                scopes.push((stage_scope.clone(), rate));
            }
            if let Some(rate) = spec.throttle {
                scopes.push((Arc::from(format!("route {api}/{stage_name} {}", spec.key)), rate));
            }
            // Compression first, so it is the last to see the answer: caches and records
            // keep it uncompressed. Then CORS: a preflight is answered before anything else,
            // and every answer (a 429 or a 401 too) carries its headers.
            let mut stages: Vec<Arc<dyn Stage>> = Vec::new();
            if let Some(policy) = &context.compression {
                stages.push(Arc::new(Compression { policy: policy.clone() }));
            }
            if let Some(policy) = &spec.cors {
                stages.push(Arc::new(Cors { policy: policy.clone() }));
            }
            if let Some(firewall) = &context.firewall {
                stages.push(Arc::new(WafCheck { firewall: firewall.clone() }));
            }
            stages.push(Arc::new(RouteThrottle { scopes }));
            // The route's own authorization wins over the stage's.
            let (authorizer, signed) = match (&spec.authorizer, spec.signed) {
                (Some(name), _) => (Some(name), false),
                (None, true) => (None, true),
                (None, false) => (stage.authorizer.as_ref().map(|a| &a.value), stage.authorization.is_some()),
            };
            if let Some(authorizer) = authorizer.and_then(|name| context.authorizers.get(name)) {
                match self.authorizer_stage(authorizer, &spec.scopes, (api, stage_name, &spec.key), &stage.variables) {
                    Some(s) => stages.push(s),
                    None => continue,
                }
            }
            if signed {
                stages.push(Arc::new(SignedRequestCheck {
                    region: context.signing.region.clone(),
                    service: context.signing.service.clone(),
                }));
            }
            if spec.api_key_required || (stage.api_key_required && !spec.backend_facing) {
                stages.push(Arc::new(ApiKeyCheck {
                    stage: (api.to_string(), stage_name.to_string()),
                    route: spec.key.clone(),
                }));
            }
            // Validation after authorization: an unauthorized client learns nothing of the
            // models.
            if let Some(validation) = &spec.validation {
                stages.push(validation.clone());
            }
            // Transforms after authorization (their values may read the authorizer's
            // context), with the rewrite: both shape what goes upstream.
            let transform = match &spec.transform {
                Some(def) => {
                    let params = spec.pattern.param_names();
                    match self.transform(def, &params, &stage.variables, &spec.field) {
                        Ok(t) => Some(Arc::new(t)),
                        Err(()) => continue,
                    }
                }
                None => None,
            };
            let transform_reads_path = transform.as_ref().is_some_and(|t| t.reads_path());
            if let Some(transform) = transform {
                stages.push(transform);
            }
            if let Some(rewrite) = &spec.rewrite {
                stages.push(rewrite.clone());
            }
            // Idempotency after validation (an invalid request uses up no key) and before
            // mapping (the client's request is fingerprinted, not the mapped one).
            if let Some(idempotency) = &spec.idempotency {
                stages.push(Self::idempotency_stage(idempotency, spec, api, stage_name));
            }
            // Mapping after validation: the client's body is validated, the mapped one is sent.
            let templated = spec.mapping.is_some() || spec.responses.is_some();
            let scope = templated.then(|| {
                let resource = spec.key.split_once(' ').map_or(spec.key.as_str(), |(_, path)| path);
                let templates = Self::route_templates(spec.mapping.as_ref(), spec.responses.as_ref());
                Self::template_scope(stage, spec.pattern.param_names(), resource, templates)
            });
            if let (Some(mapping), Some(scope)) = (&spec.mapping, &scope) {
                stages.push(Self::mapping_stage(mapping, scope, &context.binary));
            }
            // The cache after them: only an authorized, valid request may have a cached answer.
            if let Some(caching) = stage_cache.as_ref().and_then(|c| self.caching((api, stage_name), spec, c)) {
                stages.push(caching);
            }
            // Conversions and integration responses last, closest to the integration: its
            // answer is converted and mapped first, and the cache keeps what the client gets.
            if let Some(xml_upstream) = &spec.xml_upstream {
                stages.push(xml_upstream.clone());
            }
            if let (Some(responses), Some(scope)) = (&spec.responses, &scope) {
                stages.push(Self::responses_stage(responses, scope, &context.binary));
            }
            let chain = Arc::new(Chain::new(stages));
            keeps_responses |= chain.keeps_response();
            // Duplicates were refused when the routes were parsed.
            let target = RouteTarget {
                integration,
                chain,
                observer,
                allow_encoded_slashes: spec.allow_encoded_slashes,
                answers_preflight: spec.cors.is_some(),
                keeps_path_parameters: templated || transform_reads_path,
                gateway_responses: gateway_responses.clone(),
            };
            let _ = router.insert(spec.method.clone(), &spec.pattern, spec.conditions.clone(), target);
        }
        StageRoutes {
            api: api.into(),
            stage: stage_name.into(),
            router,
            unrouted: Arc::new(RouteObserver::new(api, stage_name, "", self.deployment, log_template).traced(sampling)),
            default_endpoint,
            gateway_responses,
            keeps_responses,
        }
    }
}

/// An API definition as `meridian apply` sends it: a configuration file with one API.
#[derive(Debug, Clone)]
pub struct ApiDefinition {
    pub id: String,
    /// The file's text, stored as the deployment's definition.
    pub text: String,
    /// Variables the file gives its stages, by stage name.
    pub stage_variables: BTreeMap<String, BTreeMap<String, String>>,
}

fn parse_single_api(text: &str, source_name: &str) -> Result<ApiDef, ConfigErrors> {
    let file: GatewayFile = serde_saphyr::from_str(text).map_err(|e| {
        let mut sink = ErrorSink::default();
        structural_error(&mut sink, text, &e);
        sink.into_errors(source_name)
    })?;
    // A definition is one API: a section of a node's file beside it would be dropped, so it
    // is refused, with where it belongs instead.
    let document: serde_json::Value = serde_saphyr::from_str(text).unwrap_or_default();
    let others: Vec<&String> =
        document.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| k.as_str() != "apis").collect();
    if !others.is_empty() {
        let mut sink = ErrorSink::default();
        for section in others {
            let hint = match section.as_str() {
                "domains" => "manage domains with `meridian domains put` or `meridian sync`",
                _ => "it belongs in a node's own file",
            };
            sink.push(
                Location::UNKNOWN,
                section,
                format!("a definition holds one API (`apis:`) and nothing else; `{section}` is not applied ({hint})"),
            );
        }
        return Err(sink.into_errors(source_name));
    }
    match <[ApiDef; 1]>::try_from(file.apis) {
        Ok([api]) => Ok(api),
        Err(apis) => {
            let mut sink = ErrorSink::default();
            sink.push(
                Location::UNKNOWN,
                "apis",
                format!("a definition holds exactly one API (this one has {})", apis.len()),
            );
            Err(sink.into_errors(source_name))
        }
    }
}

/// Whether two definitions say the same: compared as parsed documents, so comments,
/// layout, quoting and key order do not count (texts that do not parse compare as text).
pub fn same_definition(a: &str, b: &str) -> bool {
    let parse = |t: &str| serde_saphyr::from_str::<serde_json::Value>(t).ok();
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Checks a definition for `meridian apply`: it must hold one valid API whose routes compile
/// on `stage` with `variables` (the stage's current variables and the file's own).
pub fn validate_definition(
    text: &str,
    source_name: &str,
    stage: &str,
    variables: &BTreeMap<String, String>,
) -> Result<ApiDefinition, ConfigErrors> {
    let api = parse_single_api(text, source_name)?;
    let stage_variables: BTreeMap<String, BTreeMap<String, String>> =
        api.stages.iter().map(|s| (s.name.value.clone(), s.variables.clone())).collect();
    let mut merged = variables.clone();
    merged.extend(stage_variables.get(stage).cloned().unwrap_or_default());
    compile_stage(text, source_name, stage, &merged, "", DEFAULT_RATE)?;
    Ok(ApiDefinition { id: api.id.value.clone(), text: text.to_string(), stage_variables })
}

/// Compiles one stage of a replicated API: the deployment's definition with the stage's
/// variables. `deployment` labels its metrics and access-log lines.
pub fn compile_stage(
    definition: &str,
    source_name: &str,
    stage: &str,
    variables: &BTreeMap<String, String>,
    deployment: &str,
    default_rate: Rate,
) -> Result<Arc<StageRoutes>, ConfigErrors> {
    let mut api = parse_single_api(definition, source_name)?;
    let unknown = || Location::UNKNOWN;
    // The stage's own settings from the definition, with the cluster's variables.
    let declared = api.stages.iter().find(|s| s.name.value == stage);
    api.stages = vec![StageDef {
        name: Spanned::new(stage.to_string(), unknown(), unknown()),
        variables: variables.clone(),
        access_log_format: declared.and_then(|s| s.access_log_format.clone()),
        throttle: declared.and_then(|s| s.throttle.clone()),
        api_key_required: declared.is_some_and(|s| s.api_key_required),
        authorizer: declared.and_then(|s| s.authorizer.clone()),
        authorization: declared.and_then(|s| s.authorization.clone()),
        waf: declared.and_then(|s| s.waf.clone()),
        cache: declared.and_then(|s| s.cache.clone()),
        tracing: declared.and_then(|s| s.tracing.clone()),
    }];
    let mut compiler = Compiler { sink: ErrorSink::default(), base_dir: Path::new("."), deployment, default_rate };
    let compiled = compiler.api(&api, "apis[0]");
    match compiled.and_then(|(_, mut stages)| stages.remove(stage)) {
        Some(target) if compiler.sink.is_empty() => Ok(target.primary.clone()),
        _ => Err(compiler.sink.into_errors(source_name)),
    }
}
