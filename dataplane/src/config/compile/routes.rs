//! Compiling the routes of `type: http` and `type: rest` APIs: each `METHOD /path` route
//! checked with its line (its key, conditions, authorization, integration and the stages
//! it configures) into the [`RouteSpec`] every stage of the API compiles.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::model::*;
use super::authorizers::{AuthorizerSpec, AuthorizerUse};
use super::validation::Models;
use super::{Compiler, RouteSpec};
use crate::router::{Router, parse_route_key};
use crate::stages::cors::CorsPolicy;

impl Compiler<'_> {
    /// The routes of an API whose routes are `METHOD /path`.
    pub(super) fn path_routes(
        &mut self,
        api: &ApiDef,
        field: &str,
        authorizers: &HashMap<String, AuthorizerSpec>,
        api_cors: Option<&Arc<CorsPolicy>>,
        models: &Models,
    ) -> Vec<RouteSpec> {
        let mut specs = Vec::new();
        let mut shape: Router<()> = Router::default();
        for (i, route) in api.routes.iter().enumerate() {
            let rfield = format!("{field}.routes[{i}]");
            let parsed = match parse_route_key(&route.route.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.sink.push(route.route.referenced, format!("{rfield}.route"), e);
                    None
                }
            };
            let integration = self.integration(&route.integration, &format!("{rfield}.integration"));
            let conditions = self.route_conditions(route, &rfield);
            let (Some((method, pattern)), Ok(conditions)) = (parsed, conditions) else {
                continue;
            };
            if shape.insert(method.clone(), &pattern, conditions.clone(), ()).is_err() {
                let with = if conditions.is_empty() { "" } else { " with the same `match`" };
                self.sink.push(
                    route.route.referenced,
                    format!("{rfield}.route"),
                    format!("route `{}` is declared twice{with}", route.route.value),
                );
                continue;
            }
            if !self.one_authorization(route, &rfield) {
                continue;
            }
            let authorizer = match &route.authorizer {
                Some(name) => {
                    let used = AuthorizerUse { name, field: format!("{rfield}.authorizer") };
                    if !self.check_authorizer_use(&used, authorizers, &api.authorizers) {
                        continue;
                    }
                    Some(name.value.clone())
                }
                None => None,
            };
            let Ok(validation) = self.request_validation(api, route, models, &rfield) else {
                continue;
            };
            let Ok(mapping) = self.request_mapping(&route.integration, &format!("{rfield}.integration")) else {
                continue;
            };
            let Ok(responses) = self.integration_responses(&route.integration, &format!("{rfield}.integration")) else {
                continue;
            };
            let Ok(xml_upstream) = self.xml_upstream(&route.integration, &format!("{rfield}.integration")) else {
                continue;
            };
            let cache = match &route.cache {
                Some(def) => match self.route_cache(def, &format!("{rfield}.cache")) {
                    Some(spec) => Some(spec),
                    None => continue,
                },
                None => None,
            };
            let rewrite = match &route.integration.rewrite {
                Some(def) if route.integration.kind.value == IntegrationKind::HttpProxy => {
                    match self.rewrite(def, &format!("{rfield}.integration")) {
                        Some(r) => Some(Arc::new(r)),
                        None => continue,
                    }
                }
                _ => None,
            };
            let idempotency = match &route.idempotency {
                Some(def) => match self.idempotency(def, &format!("{rfield}.idempotency")) {
                    Some(spec) => Some(spec),
                    None => continue,
                },
                None => None,
            };
            if let Some(integration) = integration {
                let throttle = route.throttle.as_ref().and_then(|t| self.rate(t, &format!("{rfield}.throttle")));
                let key = match conditions.is_empty() {
                    true => route.route.value.clone(),
                    false => format!("{} [{conditions}]", route.route.value),
                };
                specs.push(RouteSpec {
                    key,
                    throttle,
                    api_key_required: route.api_key_required,
                    allow_encoded_slashes: route.allow_encoded_slashes,
                    method,
                    pattern,
                    conditions,
                    integration,
                    authorizer,
                    scopes: route.scopes.as_ref().map(|s| s.value.clone()).unwrap_or_default(),
                    signed: route.authorization.is_some(),
                    cors: match &route.cors {
                        Some(c) => self.cors(c, &format!("{rfield}.cors")),
                        None => api_cors.cloned(),
                    },
                    validation,
                    cache,
                    idempotency,
                    mapping,
                    responses,
                    xml_upstream,
                    rewrite,
                    transform: route.transform.clone(),
                    backend_facing: false,
                    field: rfield,
                });
            }
        }
        specs
    }
}
