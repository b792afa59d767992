//! Compiling integrations: `http_proxy` (URI template, targets, balance, health,
//! connections, TLS trust, retries), `mock` and `redirect`, each field checked with its line;
//! an `http_proxy` or a `redirect` is specialised per stage once its stage variables are known.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_saphyr::Location;

use super::super::errors::ErrorSink;
use super::super::model::*;
use super::super::parse_duration;
use super::{Compiler, DEFAULT_TIMEOUT, MAX_TIMEOUT, RouteSpec};
use crate::integration::discovery::Lookup;
use crate::integration::endpoint::{EndpointSettings, HealthCheck};
use crate::integration::mirror::Mirror;
use crate::integration::redirect::{REDIRECT_STATUSES, RedirectIntegration};
use crate::integration::retry::RetryPolicy;
use crate::integration::trust::UpstreamTls;
use crate::integration::upstreams::{TargetSpec, UpstreamSpec};
use crate::integration::uri::LocationTemplate;
use crate::integration::uri::{UpstreamTemplate, stage_variable_names, substitute_stage_variables};
use crate::integration::{MockIntegration, ProxyIntegration};

/// An `http_proxy` integration as parsed once, before stage variables are substituted.
pub(super) struct ProxySpec {
    uri: Spanned<String>,
    timeout: Duration,
    retry: Option<RetryDef>,
    /// `targets`, when given (else the URI's host is the one target).
    targets: Option<Spanned<Vec<TargetDef>>>,
    balance: crate::integration::balance::Balance,
    settings: EndpointSettings,
    http2: bool,
    tls: Option<UpstreamTls>,
    /// `tls.server_name`: the SNI, when not the URI's host.
    server_name: Option<String>,
    /// `discover`: targets found in DNS.
    discovery: Option<Lookup>,
    /// `health.check`: the active health check of every target.
    check: Option<HealthCheck>,
    mirror: Option<MirrorSpec>,
}

/// An `http_proxy`'s mirror, checked.
#[derive(Clone)]
pub(super) struct MirrorSpec {
    uri: String,
    percent: f64,
    max_body_bytes: u64,
    max_concurrency: usize,
    timeout: Duration,
}

pub(super) enum IntegrationSpec {
    Proxy(Box<ProxySpec>),
    Mock(MockIntegration),
    Redirect(RedirectSpec),
    /// A WebSocket API's opening handshake, with every route its messages may take.
    WebSocket(Arc<super::websocket::WebSocketSpec>),
    /// A WebSocket API's callback API (`/@connections/{id}`), with the largest message.
    Connections(usize),
}

/// A `redirect` as parsed once, before stage variables are substituted.
pub(super) struct RedirectSpec {
    uri: Spanned<String>,
    status: StatusCode,
    keep_query: bool,
}

impl IntegrationSpec {
    /// The longest the integration may take to answer.
    pub(super) fn timeout(&self) -> Duration {
        match self {
            IntegrationSpec::Proxy(proxy) => proxy.timeout,
            IntegrationSpec::Mock(_)
            | IntegrationSpec::Redirect(_)
            | IntegrationSpec::WebSocket(_)
            | IntegrationSpec::Connections(_) => Duration::from_secs(1),
        }
    }

    /// The longest the integration may take to answer with every retry it may make.
    pub(super) fn longest_answer(&self) -> Duration {
        let attempts = match self {
            IntegrationSpec::Proxy(proxy) => 1 + proxy.retry.as_ref().map_or(0, |r| r.attempts),
            IntegrationSpec::Mock(_)
            | IntegrationSpec::Redirect(_)
            | IntegrationSpec::WebSocket(_)
            | IntegrationSpec::Connections(_) => 1,
        };
        self.timeout() * attempts
    }
}

/// Where an integration is in the file, for its errors and labels.
#[derive(Clone, Copy)]
pub(super) struct RoutePlace<'a> {
    /// The route's key (`GET /pets/{id}`, `sendmessage`).
    pub key: &'a str,
    /// The route's field path (`apis[0].routes[2]`).
    pub field: &'a str,
    /// The names of the route's path parameters.
    pub params: &'a [String],
}

impl Compiler<'_> {
    /// An `http_proxy` integration on one stage: its URI and targets with the stage's
    /// variables.
    /// A `redirect` for one stage: its stage variables substituted, its captures checked.
    pub(super) fn redirect_for_stage(
        &mut self,
        redirect: &RedirectSpec,
        route: &RouteSpec,
        stage_name: &str,
        variables: &BTreeMap<String, String>,
    ) -> Option<RedirectIntegration> {
        let ufield = format!("{}.integration.uri", route.field);
        let uri = &redirect.uri;
        let location = substitute_stage_variables(&uri.value, variables)
            .and_then(|text| LocationTemplate::compile(&text, &route.pattern.param_names(), redirect.keep_query));
        match location {
            Ok(location) => Some(RedirectIntegration { status: redirect.status, location }),
            Err(e) => {
                self.sink.push(uri.referenced, ufield, format!("on stage `{stage_name}`: {e}"));
                None
            }
        }
    }

    /// An `http_proxy` for one stage of `api`.
    pub(super) fn proxy_for_stage(
        &mut self,
        proxy: &ProxySpec,
        route: RoutePlace<'_>,
        stage_name: &str,
        variables: &BTreeMap<String, String>,
        api: &str,
    ) -> Option<ProxyIntegration> {
        let ufield = format!("{}.integration.uri", route.field);
        let uri = &proxy.uri;
        let text = match substitute_stage_variables(&uri.value, variables) {
            Ok(t) => t,
            Err(e) => {
                self.sink.push(uri.referenced, ufield, format!("on stage `{stage_name}`: {e}"));
                return None;
            }
        };
        let upstream = match UpstreamTemplate::compile(&text, route.params) {
            Ok(u) => u,
            Err(e) => {
                self.sink.push(uri.referenced, ufield, format!("on stage `{stage_name}`: {e}"));
                return None;
            }
        };
        let targets = match &proxy.targets {
            None => vec![TargetSpec { authority: upstream.authority.clone(), weight: 1, region: None }],
            Some(list) => {
                let mut targets = Vec::new();
                for (i, t) in list.value.iter().enumerate() {
                    let tfield = format!("{}.integration.targets[{i}].address", route.field);
                    let address = match substitute_stage_variables(&t.address.value, variables) {
                        Ok(a) => a,
                        Err(e) => {
                            self.sink.push(t.address.referenced, tfield, format!("on stage `{stage_name}`: {e}"));
                            continue;
                        }
                    };
                    match target_authority(&address) {
                        Ok(authority) => {
                            targets.push(TargetSpec { authority, weight: t.weight, region: t.region.clone() })
                        }
                        Err(e) => self.sink.push(t.address.referenced, tfield, format!("on stage `{stage_name}`: {e}")),
                    }
                }
                targets
            }
        };
        let https = upstream.scheme == http::uri::Scheme::HTTPS;
        let spec = UpstreamSpec {
            scheme: upstream.scheme.clone(),
            targets: if proxy.discovery.is_some() { Vec::new() } else { targets },
            balance: proxy.balance,
            settings: proxy.settings,
            http2: proxy.http2,
            server_name: https
                .then(|| proxy.server_name.clone().unwrap_or_else(|| upstream.authority.host().to_string())),
            tls: if https { proxy.tls.clone() } else { None },
            discovery: proxy.discovery.clone(),
            check: proxy.check.clone(),
        };
        let retry = proxy.retry.as_ref().map(|r| RetryPolicy::new(r.attempts, r.budget_percent));
        let mut integration = ProxyIntegration::new(upstream, proxy.timeout, retry, spec);
        if let Some(m) = &proxy.mirror {
            // Checked when the integration was parsed: an origin compiles.
            let origin = UpstreamTemplate::compile(&m.uri, &[]).ok()?;
            let https = origin.scheme == http::uri::Scheme::HTTPS;
            let spec = UpstreamSpec {
                scheme: origin.scheme.clone(),
                targets: vec![TargetSpec { authority: origin.authority.clone(), weight: 1, region: None }],
                balance: Default::default(),
                settings: EndpointSettings::default(),
                http2: false,
                server_name: https.then(|| origin.authority.host().to_string()),
                tls: if https { proxy.tls.clone() } else { None },
                discovery: None,
                check: None,
            };
            let target = ProxyIntegration::new(origin, m.timeout, None, spec);
            let labels = (api, stage_name, route.key);
            integration.mirror =
                Some(Arc::new(Mirror::new(target, m.percent, m.max_body_bytes, m.max_concurrency, labels)));
        }
        Some(integration)
    }

    pub(super) fn integration(&mut self, def: &IntegrationDef, field: &str) -> Option<IntegrationSpec> {
        let kind = def.kind.value;
        let misplaced = |sink: &mut ErrorSink, present: bool, loc: Location, name: &str| {
            if present {
                sink.push(
                    loc,
                    format!("{field}.{name}"),
                    format!("`{name}` does not apply to a `{}` integration", kind_name(kind)),
                );
            }
        };
        let proxy_only = [
            (def.timeout.is_some(), loc(&def.timeout), "timeout"),
            (def.retry.is_some(), loc(&def.retry), "retry"),
            (def.ca_file.is_some(), loc(&def.ca_file), "ca_file"),
            (def.targets.is_some(), loc(&def.targets), "targets"),
            (def.balance.is_some(), loc(&def.balance), "balance"),
            (def.health.is_some(), loc(&def.health), "health"),
            (def.http2.is_some(), loc(&def.http2), "http2"),
            (def.connections.is_some(), loc(&def.connections), "connections"),
            (def.rewrite.is_some(), loc(&def.rewrite), "rewrite"),
            (def.mirror.is_some(), loc(&def.mirror), "mirror"),
            (def.tls.is_some(), loc(&def.tls), "tls"),
            (def.discover.is_some(), loc(&def.discover), "discover"),
        ];
        if kind != IntegrationKind::Redirect {
            misplaced(&mut self.sink, def.keep_query.is_some(), loc(&def.keep_query), "keep_query");
        }
        match kind {
            IntegrationKind::Redirect => {
                for (present, at, name) in proxy_only {
                    misplaced(&mut self.sink, present, at, name);
                }
                misplaced(&mut self.sink, def.headers.is_some(), loc(&def.headers), "headers");
                misplaced(&mut self.sink, def.body.is_some(), loc(&def.body), "body");
                let Some(uri) = &def.uri else {
                    self.sink.push(def.kind.referenced, format!("{field}.uri"), "a `redirect` needs `uri`: where to");
                    return None;
                };
                let status = match &def.status {
                    None => StatusCode::FOUND,
                    Some(s) if REDIRECT_STATUSES.contains(&s.value) => StatusCode::from_u16(s.value).ok()?,
                    Some(s) => {
                        self.sink.push(
                            s.referenced,
                            format!("{field}.status"),
                            "a redirect is 301, 302, 303, 307 or 308",
                        );
                        return None;
                    }
                };
                let keep_query = def.keep_query.as_ref().is_none_or(|k| k.value);
                Some(IntegrationSpec::Redirect(RedirectSpec { uri: uri.clone(), status, keep_query }))
            }
            IntegrationKind::Mock => {
                misplaced(&mut self.sink, def.uri.is_some(), loc(&def.uri), "uri");
                for (present, at, name) in proxy_only {
                    misplaced(&mut self.sink, present, at, name);
                }
                let status = match &def.status {
                    None => Some(StatusCode::OK),
                    Some(s) => match StatusCode::from_u16(s.value) {
                        Ok(code) if (200..600).contains(&s.value) => Some(code),
                        _ => {
                            self.sink.push(
                                s.referenced,
                                format!("{field}.status"),
                                format!("{} is not a status code from 200 to 599", s.value),
                            );
                            None
                        }
                    },
                };
                let mut headers = HeaderMap::new();
                if let Some(h) = &def.headers {
                    for (name, value) in &h.value {
                        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
                            (Ok(n), Ok(v)) => {
                                headers.append(n, v);
                            }
                            _ => self.sink.push(
                                h.referenced,
                                format!("{field}.headers.{name}"),
                                "not a valid header name and value",
                            ),
                        }
                    }
                }
                let body = def.body.as_ref().map_or_else(Bytes::new, |b| Bytes::from(b.value.clone()));
                Some(IntegrationSpec::Mock(MockIntegration { status: status?, headers, body }))
            }
            IntegrationKind::HttpProxy => {
                misplaced(&mut self.sink, def.status.is_some(), loc(&def.status), "status");
                misplaced(&mut self.sink, def.headers.is_some(), loc(&def.headers), "headers");
                misplaced(&mut self.sink, def.body.is_some(), loc(&def.body), "body");
                let Some(uri) = &def.uri else {
                    self.sink.push(
                        def.kind.referenced,
                        format!("{field}.uri"),
                        "an `http_proxy` integration needs `uri`",
                    );
                    return None;
                };
                // Check the template's shape now, with placeholder stage variables; each
                // stage checks its own values again.
                let placeholders: BTreeMap<String, String> =
                    stage_variable_names(&uri.value).into_iter().map(|n| (n, "stage-variable".to_string())).collect();
                if let Err(e) = substitute_stage_variables(&uri.value, &placeholders) {
                    self.sink.push(uri.referenced, format!("{field}.uri"), e);
                    return None;
                }
                let timeout = match &def.timeout {
                    None => Some(DEFAULT_TIMEOUT),
                    Some(t) => self.duration(t, &format!("{field}.timeout")).and_then(|d| {
                        if d > MAX_TIMEOUT {
                            self.sink.push(t.referenced, format!("{field}.timeout"), "must be at most 5m");
                            None
                        } else {
                            Some(d)
                        }
                    }),
                };
                let retry = def.retry.as_ref().and_then(|r| {
                    let mut ok = true;
                    if !(1..=5).contains(&r.value.attempts) {
                        self.sink.push(r.referenced, format!("{field}.retry.attempts"), "must be from 1 to 5");
                        ok = false;
                    }
                    if !(1..=100).contains(&r.value.budget_percent) {
                        self.sink.push(r.referenced, format!("{field}.retry.budget_percent"), "must be from 1 to 100");
                        ok = false;
                    }
                    ok.then(|| r.value.clone())
                });
                let tls = self.upstream_tls(def, uri, field);
                let server_name = def.tls.as_ref().and_then(|t| t.value.server_name.clone());
                let targets = def.targets.as_ref().and_then(|t| self.targets(t, field));
                let settings = self.endpoint_settings(def, field);
                if def.retry.is_some() && retry.is_none() {
                    return None;
                }
                if def.targets.is_some() && targets.is_none() {
                    return None;
                }
                let discovery = match &def.discover {
                    Some(d) if def.targets.is_some() => {
                        self.sink.push(
                            d.referenced,
                            format!("{field}.discover"),
                            "give `targets` or `discover`, not both",
                        );
                        return None;
                    }
                    Some(d) => Some(self.discover(d, field)?),
                    None => None,
                };
                let check = match def.health.as_ref().and_then(|h| h.value.check.as_ref().map(|c| (h.referenced, c))) {
                    Some((at, c)) => Some(self.health_check(c, at, field)?),
                    None => None,
                };
                let mirror = match &def.mirror {
                    Some(m) => Some(self.mirror(m, field)?),
                    None => None,
                };
                Some(IntegrationSpec::Proxy(Box::new(ProxySpec {
                    uri: uri.clone(),
                    timeout: timeout?,
                    retry,
                    targets,
                    balance: def.balance.as_ref().map(|b| b.value).unwrap_or_default(),
                    settings: settings?,
                    http2: def.http2.as_ref().is_some_and(|h| h.value),
                    tls: Some(tls?),
                    server_name,
                    discovery,
                    check,
                    mirror,
                })))
            }
        }
    }

    /// `health.check`: its path, interval and timeout checked; `None` when one is wrong
    /// (recorded).
    fn health_check(&mut self, def: &HealthCheckDef, at: Location, field: &str) -> Option<HealthCheck> {
        let cfield = format!("{field}.health.check");
        if !def.path.starts_with('/') || def.path.parse::<http::uri::PathAndQuery>().is_err() {
            self.sink.push(at, format!("{cfield}.path"), format!("`{}` is not a path (e.g. `/healthz`)", def.path));
            return None;
        }
        let duration = |text: &Option<String>, default: Duration| match text {
            None => Some(default),
            Some(t) => parse_duration(t).ok().filter(|d| !d.is_zero()),
        };
        let interval = duration(&def.interval, Duration::from_secs(5))
            .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(300)).contains(d));
        let Some(interval) = interval else {
            self.sink.push(at, format!("{cfield}.interval"), "a duration from 1s to 5m, e.g. `5s`");
            return None;
        };
        let Some(timeout) = duration(&def.timeout, Duration::from_secs(2).min(interval)).filter(|t| *t <= interval)
        else {
            self.sink.push(at, format!("{cfield}.timeout"), "a duration of at most the interval, e.g. `2s`");
            return None;
        };
        Some(HealthCheck { path: def.path.clone(), interval, timeout })
    }

    /// `discover`: a `name:port` or an SRV name; `None` when it is neither (recorded).
    fn discover(&mut self, def: &Spanned<DiscoverDef>, field: &str) -> Option<Lookup> {
        let at = def.referenced;
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.trim_end_matches('.').split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        match (&def.value.dns, &def.value.srv) {
            (Some(dns), None) => {
                let parsed = dns.rsplit_once(':').and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)));
                match parsed {
                    Some((name, port)) if valid_name(name) && port > 0 => {
                        Some(Lookup::Addresses { name: name.to_string(), port })
                    }
                    _ => {
                        self.sink.push(
                            at,
                            format!("{field}.discover.dns"),
                            format!("`{dns}` is not `name:port` (e.g. `pets.internal:8080`)"),
                        );
                        None
                    }
                }
            }
            (None, Some(srv)) if valid_name(srv) && srv.starts_with('_') => Some(Lookup::Service { name: srv.clone() }),
            (None, Some(srv)) => {
                self.sink.push(
                    at,
                    format!("{field}.discover.srv"),
                    format!("`{srv}` is not a service name (e.g. `_http._tcp.pets.internal`)"),
                );
                None
            }
            _ => {
                self.sink.push(at, format!("{field}.discover"), "give exactly one of `dns` and `srv`");
                None
            }
        }
    }

    /// A `mirror`, every field checked; `None` when one is wrong (recorded).
    fn mirror(&mut self, def: &Spanned<MirrorDef>, field: &str) -> Option<MirrorSpec> {
        let at = def.referenced;
        let m = &def.value;
        let mut ok = true;
        if let Err(e) = crate::integration::mirror::origin(&m.uri) {
            self.sink.push(at, format!("{field}.mirror.uri"), e);
            ok = false;
        }
        let percent = m.percent.unwrap_or(100.0);
        if !(percent > 0.0 && percent <= 100.0) {
            self.sink.push(at, format!("{field}.mirror.percent"), "more than 0 and at most 100");
            ok = false;
        }
        let max_body_bytes = m.max_body_bytes.unwrap_or(64 * 1024);
        if max_body_bytes > 10 * 1024 * 1024 {
            self.sink.push(at, format!("{field}.mirror.max_body_bytes"), "at most 10485760 (10 MiB)");
            ok = false;
        }
        let max_concurrency = m.max_concurrency.unwrap_or(100);
        if !(1..=10_000).contains(&max_concurrency) {
            self.sink.push(at, format!("{field}.mirror.max_concurrency"), "from 1 to 10000");
            ok = false;
        }
        let timeout = match &m.timeout {
            None => crate::integration::mirror::DEFAULT_MIRROR_TIMEOUT,
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(60) => d,
                _ => {
                    self.sink.push(at, format!("{field}.mirror.timeout"), "a duration of at most 1m, e.g. `5s`");
                    ok = false;
                    Duration::ZERO
                }
            },
        };
        ok.then(|| MirrorSpec {
            uri: m.uri.trim_end_matches('/').to_string(),
            percent,
            max_body_bytes,
            max_concurrency,
            timeout,
        })
    }

    /// An `http_proxy`'s client for `https`: `ca_file` and `tls`, each file checked with its
    /// line; `tls` needs an `https` URI.
    fn upstream_tls(&mut self, def: &IntegrationDef, uri: &Spanned<String>, field: &str) -> Option<UpstreamTls> {
        let Some(tls) = &def.tls else {
            return self.trust(def.ca_file.as_ref(), field, uri.referenced);
        };
        let at = tls.referenced;
        let t = &tls.value;
        if !uri.value.starts_with("https://") {
            self.sink.push(at, format!("{field}.tls"), "`tls` is for an `https` upstream");
            return None;
        }
        for (name, value) in [("server_name", &t.server_name), ("expected_name", &t.expected_name)] {
            if let Some(v) = value
                && rustls::pki_types::ServerName::try_from(v.as_str()).is_err()
            {
                self.sink.push(at, format!("{field}.tls.{name}"), format!("`{v}` is not a DNS name or an IP address"));
                return None;
            }
        }
        let (certificate, key) = match (&t.client_certificate, &t.client_key) {
            (Some(c), Some(k)) => (Some(self.path(c)), Some(self.path(k))),
            (None, None) => (None, None),
            _ => {
                self.sink.push(at, format!("{field}.tls"), "give `client_certificate` and `client_key` together");
                return None;
            }
        };
        let ca_file = def.ca_file.as_ref().map(|f| self.path(&f.value));
        let options = crate::integration::trust::ClientTls {
            expected_name: t.expected_name.as_deref(),
            identity: certificate.as_deref().zip(key.as_deref()),
        };
        match crate::integration::trust::upstream_client(ca_file.as_deref(), &options) {
            Ok(client) => Some(client),
            Err(e) => {
                self.sink.push(at, format!("{field}.tls"), e);
                None
            }
        }
    }

    /// The TLS roots an `https` callee is checked against: the system's, or `ca_file`'s (an
    /// error at its line, or at `otherwise` when the system roots fail).
    pub(super) fn trust(
        &mut self,
        ca_file: Option<&Spanned<String>>,
        field: &str,
        otherwise: Location,
    ) -> Option<UpstreamTls> {
        let tls = match ca_file {
            None => crate::integration::trust::system_roots(),
            Some(f) => crate::integration::trust::ca_file(&self.path(&f.value)),
        };
        match tls {
            Ok(t) => Some(t),
            Err(e) => {
                self.sink.push(ca_file.map_or(otherwise, |f| f.referenced), format!("{field}.ca_file"), e);
                None
            }
        }
    }

    /// `targets`: each address's shape and weight (stage variables are checked per stage).
    fn targets(&mut self, list: &Spanned<Vec<TargetDef>>, field: &str) -> Option<Spanned<Vec<TargetDef>>> {
        let mut ok = !list.value.is_empty();
        if !ok {
            self.sink.push(
                list.referenced,
                format!("{field}.targets"),
                "name at least one target, or leave `targets` out",
            );
        }
        for (i, t) in list.value.iter().enumerate() {
            if !(1..=100).contains(&t.weight) {
                self.sink.push(t.address.referenced, format!("{field}.targets[{i}].weight"), "must be from 1 to 100");
                ok = false;
            }
            if stage_variable_names(&t.address.value).is_empty()
                && let Err(e) = target_authority(&t.address.value)
            {
                self.sink.push(t.address.referenced, format!("{field}.targets[{i}].address"), e);
                ok = false;
            }
        }
        ok.then(|| list.clone())
    }

    /// `health` and `connections`, with their defaults.
    fn endpoint_settings(&mut self, def: &IntegrationDef, field: &str) -> Option<EndpointSettings> {
        let mut settings = EndpointSettings::default();
        let mut ok = true;
        if let Some(h) = &def.health {
            if !(1..=100).contains(&h.value.failures) {
                self.sink.push(h.referenced, format!("{field}.health.failures"), "must be from 1 to 100");
                ok = false;
            }
            settings.failures = h.value.failures;
            match parse_duration(&h.value.ejection) {
                Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(300)).contains(&d) => settings.ejection = d,
                _ => {
                    self.sink.push(
                        h.referenced,
                        format!("{field}.health.ejection"),
                        "a duration from 1s to 5m, e.g. `10s`",
                    );
                    ok = false;
                }
            }
        }
        if let Some(c) = &def.connections {
            if !(1..=100_000).contains(&c.value.max) {
                self.sink.push(c.referenced, format!("{field}.connections.max"), "must be from 1 to 100000");
                ok = false;
            }
            settings.max_connections = c.value.max;
            match parse_duration(&c.value.idle_timeout) {
                Ok(d) if !d.is_zero() => settings.idle_timeout = d,
                _ => {
                    self.sink.push(c.referenced, format!("{field}.connections.idle_timeout"), "a duration, e.g. `90s`");
                    ok = false;
                }
            }
        }
        ok.then_some(settings)
    }
}

fn loc<T>(v: &Option<Spanned<T>>) -> Location {
    v.as_ref().map_or(Location::UNKNOWN, |s| s.referenced)
}

fn kind_name(kind: IntegrationKind) -> &'static str {
    match kind {
        IntegrationKind::HttpProxy => "http_proxy",
        IntegrationKind::Mock => "mock",
        IntegrationKind::Redirect => "redirect",
    }
}

/// A target's `host:port`.
fn target_authority(address: &str) -> Result<http::uri::Authority, String> {
    match address.parse::<http::uri::Authority>() {
        Ok(a) if a.port_u16().is_some() && !a.as_str().contains('@') => Ok(a),
        _ => Err(format!("`{address}` is not a host:port (e.g. `10.0.0.5:8080`)")),
    }
}
