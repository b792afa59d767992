//! Compiling `type: websocket` APIs: the route selection expression, the routes
//! (`$connect`, `$disconnect`, `$default` and custom keys, each an `http_proxy`), and the
//! limits of a connection, every problem reported with its line.
//!
//! A WebSocket API serves two HTTP routes on each stage, and the compiler makes both:
//! `GET /` (the opening handshake, through the stage's chain: firewall, throttles, the
//! `$connect` route's or the stage's authorizer, API keys) and `ANY /@connections/{id}` (the
//! callback API, for backends: requests signed with the cluster's credentials).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::super::model::*;
use super::authorizers::{AuthorizerSpec, AuthorizerUse};
use super::integrations::{IntegrationSpec, ProxySpec, RoutePlace};
use super::{Compiler, RouteSpec};
use crate::integration::websocket::{
    CONNECT, ConnectionLimits, DEFAULT, DISCONNECT, MessageRoute, RouteSelection, WebSocketStage, is_route_key,
};
use crate::router::{MethodMatch, PathPattern};

/// The route selection a WebSocket API without `route_selection` uses.
const DEFAULT_SELECTION: &str = "$request.body.action";

/// A WebSocket API's routes and limits, before stage variables are substituted.
pub(super) struct WebSocketSpec {
    selection: RouteSelection,
    routes: Vec<MessageRouteSpec>,
    limits: ConnectionLimits,
}

struct MessageRouteSpec {
    key: String,
    proxy: Box<ProxySpec>,
    reply: bool,
    field: String,
}

impl Compiler<'_> {
    /// Refuses, on an API of another type, what only a WebSocket API uses.
    pub(super) fn websocket_only(&mut self, api: &ApiDef, field: &str) {
        if api.kind.as_ref().is_some_and(|k| k.value == ApiKind::Websocket) {
            return;
        }
        let mut refuse = |at, what: &str| {
            self.sink.push(at, format!("{field}.{what}"), format!("`{what}` is for `type: websocket` APIs"));
        };
        if let Some(selection) = &api.route_selection {
            refuse(selection.referenced, "route_selection");
        }
        if let Some(websocket) = &api.websocket {
            refuse(websocket.referenced, "websocket");
        }
        for (i, route) in api.routes.iter().enumerate() {
            if let Some(reply) = &route.reply {
                refuse(reply.referenced, &format!("routes[{i}].reply"));
            }
        }
    }

    /// The two HTTP routes of a WebSocket API (its handshake and its callback API), the
    /// first carrying every message route.
    pub(super) fn websocket_routes(
        &mut self,
        api: &ApiDef,
        field: &str,
        authorizers: &HashMap<String, AuthorizerSpec>,
    ) -> Vec<RouteSpec> {
        let api_wide = [
            (api.cors.as_ref().map(|c| c.referenced), "cors"),
            (api.compression.as_ref().map(|c| c.referenced), "compression"),
        ];
        for (at, what) in api_wide {
            if let Some(at) = at {
                self.sink.push(
                    at,
                    format!("{field}.{what}"),
                    format!("`{what}` does not apply to `type: websocket` APIs"),
                );
            }
        }
        let selection = match &api.route_selection {
            Some(text) => match RouteSelection::parse(&text.value) {
                Ok(selection) => Some(selection),
                Err(e) => {
                    self.sink.push(text.referenced, format!("{field}.route_selection"), e);
                    None
                }
            },
            None => RouteSelection::parse(DEFAULT_SELECTION).ok(),
        };
        let limits = self.connection_limits(api, field);
        let mut connect: Option<&RouteDef> = None;
        let mut routes = Vec::new();
        let mut seen = BTreeMap::new();
        for (i, route) in api.routes.iter().enumerate() {
            let rfield = format!("{field}.routes[{i}]");
            let key = route.route.value.as_str();
            let special = [CONNECT, DISCONNECT, DEFAULT].contains(&key);
            if !special && !is_route_key(key) {
                self.sink.push(
                    route.route.referenced,
                    format!("{rfield}.route"),
                    format!(
                        "`{key}` is not a WebSocket route key: `$connect`, `$disconnect`, `$default`, or 1-128 characters of a-z, A-Z, 0-9, `_`, `-`, `.` and `:`"
                    ),
                );
                continue;
            }
            if seen.insert(key.to_string(), ()).is_some() {
                self.sink.push(
                    route.route.referenced,
                    format!("{rfield}.route"),
                    format!("route `{key}` is declared twice"),
                );
                continue;
            }
            let fields_ok = self.websocket_route_fields(route, key, &rfield);
            if key == CONNECT {
                if let Some(name) = &route.authorizer {
                    let used = AuthorizerUse { name, field: format!("{rfield}.authorizer") };
                    if !self.check_authorizer_use(&used, authorizers, &api.authorizers) {
                        continue;
                    }
                }
                if !self.one_authorization(route, &rfield) {
                    continue;
                }
                connect = Some(route);
            }
            let ifield = format!("{rfield}.integration");
            match self.integration(&route.integration, &ifield) {
                Some(IntegrationSpec::Proxy(_)) if !fields_ok => {}
                Some(IntegrationSpec::Proxy(proxy)) => routes.push(MessageRouteSpec {
                    key: key.to_string(),
                    proxy,
                    reply: route.reply.as_ref().is_some_and(|r| r.value),
                    field: rfield,
                }),
                Some(_) => self.sink.push(
                    route.integration.kind.referenced,
                    format!("{ifield}.type"),
                    "a WebSocket route's integration is an `http_proxy`: it receives each message as a POST",
                ),
                None => {}
            }
        }
        let (Some(selection), Some(limits)) = (selection, limits) else {
            return Vec::new();
        };
        let max_message_bytes = limits.max_message_bytes;
        let websocket = Arc::new(WebSocketSpec { selection, routes, limits });
        let throttle = connect.and_then(|c| c.throttle.as_ref()).and_then(|t| self.rate(t, &format!("{field}.routes")));
        let bare = |key: &str, method, pattern: &str, integration| RouteSpec {
            key: key.to_string(),
            throttle: None,
            api_key_required: false,
            allow_encoded_slashes: false,
            method,
            pattern: PathPattern::parse(pattern).expect("a WebSocket API's paths are patterns"),
            conditions: Default::default(),
            integration,
            authorizer: None,
            scopes: Vec::new(),
            signed: false,
            cors: None,
            validation: None,
            cache: None,
            idempotency: None,
            mapping: None,
            responses: None,
            xml_upstream: None,
            rewrite: None,
            transform: None,
            backend_facing: false,
            field: format!("{field}.routes"),
        };
        let mut handshake =
            bare(CONNECT, MethodMatch::Exactly(http::Method::GET), "/", IntegrationSpec::WebSocket(websocket));
        if let Some(connect) = connect {
            handshake.throttle = throttle;
            handshake.api_key_required = connect.api_key_required;
            handshake.authorizer = connect.authorizer.as_ref().map(|a| a.value.clone());
            handshake.scopes = connect.scopes.as_ref().map(|s| s.value.clone()).unwrap_or_default();
            handshake.signed = connect.authorization.is_some();
        }
        let mut callback = bare(
            "@connections",
            MethodMatch::Any,
            "/@connections/{connection_id}",
            IntegrationSpec::Connections(max_message_bytes),
        );
        callback.signed = true;
        callback.backend_facing = true;
        vec![handshake, callback]
    }

    /// Refuses what a WebSocket route cannot use, with its line; authorization, API keys
    /// and throttles belong to `$connect`, `reply` to the routes messages take.
    fn websocket_route_fields(&mut self, route: &RouteDef, key: &str, rfield: &str) -> bool {
        let mut ok = true;
        let elsewhere = [
            (route.conditions.as_ref().map(|v| v.referenced), "match"),
            (route.cors.as_ref().map(|v| v.referenced), "cors"),
            (route.transform.as_ref().map(|v| v.referenced), "transform"),
            (route.integration.rewrite.as_ref().map(|v| v.referenced), "integration.rewrite"),
            (route.integration.mirror.as_ref().map(|v| v.referenced), "integration.mirror"),
        ];
        for (at, what) in elsewhere {
            if let Some(at) = at {
                self.sink.push(at, format!("{rfield}.{what}"), format!("`{what}` does not apply to WebSocket routes"));
                ok = false;
            }
        }
        if route.allow_encoded_slashes {
            let at = route.route.referenced;
            self.sink.push(at, format!("{rfield}.allow_encoded_slashes"), "does not apply to WebSocket routes");
            ok = false;
        }
        if key != CONNECT {
            let connect_only = [
                (route.authorizer.as_ref().map(|v| v.referenced), "authorizer"),
                (route.scopes.as_ref().map(|v| v.referenced), "scopes"),
                (route.authorization.as_ref().map(|v| v.referenced), "authorization"),
                (route.throttle.as_ref().map(|v| v.referenced), "throttle"),
            ];
            for (at, what) in connect_only {
                if let Some(at) = at {
                    self.sink.push(
                        at,
                        format!("{rfield}.{what}"),
                        format!("`{what}` belongs to `$connect`: a connection is authorized once, when it opens"),
                    );
                    ok = false;
                }
            }
            if route.api_key_required {
                let at = route.route.referenced;
                self.sink.push(at, format!("{rfield}.api_key_required"), "`api_key_required` belongs to `$connect`");
                ok = false;
            }
        }
        if let (true, Some(reply)) = ([CONNECT, DISCONNECT].contains(&key), &route.reply) {
            self.sink.push(
                reply.referenced,
                format!("{rfield}.reply"),
                "`reply` is for routes that messages take (custom keys and `$default`)",
            );
            ok = false;
        }
        ok
    }

    /// The API's `websocket` section, with its defaults.
    fn connection_limits(&mut self, api: &ApiDef, field: &str) -> Option<ConnectionLimits> {
        let mut limits = ConnectionLimits::default();
        let Some(def) = &api.websocket else {
            return Some(limits);
        };
        let wfield = format!("{field}.websocket");
        let mut ok = true;
        if let Some(kib) = &def.value.max_message_kib {
            match kib.value {
                1..=1024 => limits.max_message_bytes = kib.value as usize * 1024,
                _ => {
                    self.sink.push(kib.referenced, format!("{wfield}.max_message_kib"), "must be between 1 and 1024");
                    ok = false;
                }
            }
        }
        match &def.value.max_frame_kib {
            Some(kib) if kib.value == 0 || kib.value as usize * 1024 > limits.max_message_bytes => {
                self.sink.push(
                    kib.referenced,
                    format!("{wfield}.max_frame_kib"),
                    "must be at least 1 and at most `max_message_kib`",
                );
                ok = false;
            }
            Some(kib) => limits.max_frame_bytes = kib.value as usize * 1024,
            None => limits.max_frame_bytes = limits.max_frame_bytes.min(limits.max_message_bytes),
        }
        if let Some(rate) = &def.value.messages_per_second {
            match rate.value {
                1..=100_000 => limits.messages_per_second = rate.value,
                _ => {
                    let at = rate.referenced;
                    self.sink.push(at, format!("{wfield}.messages_per_second"), "must be between 1 and 100000");
                    ok = false;
                }
            }
        }
        let bounded = |this: &mut Self, value: &Option<Spanned<String>>, name: &str, most: &str| {
            let value = value.as_ref()?;
            let d = this.duration(value, &format!("{wfield}.{name}"))?;
            if d < Duration::from_secs(1) || super::super::parse_duration(most).is_ok_and(|most| d > most) {
                this.sink.push(value.referenced, format!("{wfield}.{name}"), format!("must be between 1s and {most}"));
                return None;
            }
            Some(d)
        };
        match (&def.value.idle_timeout, bounded(self, &def.value.idle_timeout, "idle_timeout", "2h")) {
            (_, Some(d)) => limits.idle_timeout = d,
            (Some(_), None) => ok = false,
            (None, None) => {}
        }
        match (&def.value.max_duration, bounded(self, &def.value.max_duration, "max_duration", "24h")) {
            (_, Some(d)) => limits.max_duration = d,
            (Some(_), None) => ok = false,
            (None, None) => {}
        }
        ok.then_some(limits)
    }

    /// A WebSocket API on one stage: each route's integration with the stage's variables.
    pub(super) fn websocket_for_stage(
        &mut self,
        spec: &WebSocketSpec,
        api: &str,
        stage_name: &str,
        variables: &BTreeMap<String, String>,
    ) -> Option<WebSocketStage> {
        let mut stage = WebSocketStage {
            api: api.into(),
            stage: stage_name.into(),
            selection: spec.selection.clone(),
            routes: HashMap::new(),
            connect: None,
            disconnect: None,
            default: None,
            limits: spec.limits,
        };
        let mut ok = true;
        for route in &spec.routes {
            let place = RoutePlace { key: &route.key, field: &route.field, params: &[] };
            let Some(integration) = self.proxy_for_stage(&route.proxy, place, stage_name, variables, api) else {
                ok = false;
                continue;
            };
            let compiled = MessageRoute { key: route.key.as_str().into(), integration, reply: route.reply };
            match route.key.as_str() {
                CONNECT => stage.connect = Some(compiled),
                DISCONNECT => stage.disconnect = Some(compiled),
                DEFAULT => stage.default = Some(compiled),
                key => {
                    stage.routes.insert(key.to_string(), compiled);
                }
            }
        }
        ok.then_some(stage)
    }
}
