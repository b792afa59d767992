//! API keys: a route that requires one refuses requests without a valid, enabled key
//! granted on the stage by a usage plan (403), and counts the request against the plan's
//! throttles and quotas.
//!
//! Keys arrive in `x-api-key`; only the SHA-256 of a key's value is stored, so the lookup
//! hashes the presented value. A refused key gets one answer whether it is unknown, disabled
//! or without a plan for the stage, so a guesser learns nothing; the access log (`reason`)
//! and `meridian_api_key_refusals_total{reason}` keep the precise cause. The route's own
//! throttle runs before this stage, so a flood of bad keys is throttled like any other.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use http::request::Parts;

use super::throttle::{Scopes, admit};
use super::{Exchange, Phases, Services, Stage, Step};
use crate::digest::sha256_hex;
use crate::rejection::{Rejection, ResponseType};
use crate::table_hasher::TableHasher;

static API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// What a client with a wrong key is told, whatever was wrong with it.
const INVALID: &str = "invalid API key";

/// The API keys of a configuration revision, by the SHA-256 (hex) of their value.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<String, KeyGrant, TableHasher>,
}

impl KeyRing {
    pub fn insert(&mut self, value_sha256: String, grant: KeyGrant) {
        self.by_hash.insert(value_sha256, grant);
    }

    /// The grant of the key whose value a client presented, found by its SHA-256.
    pub fn presented(&self, value: &[u8]) -> Option<&KeyGrant> {
        self.by_hash.get(&sha256_hex(value))
    }
}

/// What an API key may do: its id, whether it is enabled, and per (api, stage) the limits of
/// the usage plans that grant it that stage.
#[derive(Debug)]
pub struct KeyGrant {
    pub id: Arc<str>,
    pub enabled: bool,
    pub stages: HashMap<(String, String), StageGrant, TableHasher>,
}

/// A key's limits on one stage: the plans' throttles and quotas for every route, and for
/// routes a plan throttles on their own, those limits together with the plans'.
#[derive(Debug, Default)]
pub struct StageGrant {
    pub limits: Scopes,
    pub routes: HashMap<String, Scopes, TableHasher>,
}

impl StageGrant {
    /// The scopes a request to `route` counts against.
    pub fn scopes(&self, route: &str) -> &[(Arc<str>, crate::limits::limiter::Rate)] {
        self.routes.get(route).unwrap_or(&self.limits)
    }
}

/// Requires a key granted on this route's stage.
#[derive(Debug)]
pub struct ApiKeyCheck {
    /// `(api, stage)`, as usage plans name it.
    pub stage: (String, String),
    /// The route key, e.g. `GET /pets/{id}` (plans throttle per route by it).
    pub route: String,
}

fn refused(message: &'static str, reason: &'static str) -> Rejection {
    metrics::counter!("meridian_api_key_refusals_total", "reason" => reason).increment(1);
    Rejection::new(StatusCode::FORBIDDEN, message).with_reason(reason).of_type(ResponseType::InvalidApiKey)
}

impl ApiKeyCheck {
    fn check(&self, head: &Parts, services: &Services<'_>, exchange: &mut Exchange) -> Result<(), Rejection> {
        let Some(value) = head.headers.get(&API_KEY) else {
            return Err(refused("this route needs an API key in x-api-key", "api key missing"));
        };
        let Some(grant) = services.keys.presented(value.as_bytes()) else {
            return Err(refused(INVALID, "api key unknown"));
        };
        if !grant.enabled {
            return Err(refused(INVALID, "api key disabled"));
        }
        let Some(stage_grant) = grant.stages.get(&self.stage) else {
            return Err(refused(INVALID, "api key has no usage plan for this stage"));
        };
        exchange.note(|| format!("API key `{}`", grant.id));
        admit(services, stage_grant.scopes(&self.route), exchange)
    }
}

impl Stage for ApiKeyCheck {
    fn name(&self) -> &'static str {
        "api_key"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD
    }

    fn request_head<'a>(
        &'a self,
        head: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        self.check(head, services, exchange).into()
    }
}
