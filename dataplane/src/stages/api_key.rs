//! API keys: a route that requires one refuses requests without a valid, enabled key
//! granted on the stage by a usage plan (403), and counts the request against the plan's
//! throttles and quotas.
//!
//! Keys arrive in `x-api-key`; only the SHA-256 of a key's value is stored, so the lookup
//! hashes the presented value (and looks its 32 bytes up, not their hex digits). A refused key gets one answer whether it is unknown, disabled
//! or without a plan for the stage, so a guesser learns nothing; the access log (`reason`)
//! and `meridian_api_key_refusals_total{reason}` keep the precise cause. The route's own
//! throttle runs before this stage, so a flood of bad keys is throttled like any other.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use http::request::Parts;

use super::throttle::{Scopes, admit};
use super::{Exchange, Phases, Services, Stage, Step};
use crate::digest::{from_hex, sha256};
use crate::rejection::{Rejection, ResponseType};
use crate::table_hasher::TableHasher;

static API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// What a client with a wrong key is told, whatever was wrong with it.
const INVALID: &str = "invalid API key";

/// The API keys of a configuration revision, by the SHA-256 of their value.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_digest: HashMap<[u8; 32], KeyGrant, TableHasher>,
}

impl KeyRing {
    /// Adds the key whose value's SHA-256 is `value_sha256` (64 hex digits, as records
    /// store it); refused when it is not such a digest.
    pub fn insert(&mut self, value_sha256: &str, grant: KeyGrant) -> Result<(), NotADigest> {
        let digest = from_hex::<32>(value_sha256.as_bytes()).ok_or(NotADigest)?;
        self.by_digest.insert(digest, grant);
        Ok(())
    }

    /// The grant of the key whose value a client presented, found by its SHA-256.
    pub fn presented(&self, value: &[u8]) -> Option<&KeyGrant> {
        self.by_digest.get(&sha256(value))
    }
}

/// A key record whose value digest is not 64 hex digits (no client could ever present it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key's value digest is not a SHA-256 in hex")]
pub struct NotADigest;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_hex;

    fn grant(id: &str) -> KeyGrant {
        KeyGrant { id: Arc::from(id), enabled: true, stages: HashMap::default() }
    }

    #[test]
    fn a_key_is_found_by_the_value_a_client_presents_and_only_by_it() {
        let mut ring = KeyRing::default();
        ring.insert(&sha256_hex(b"k-123"), grant("alice")).unwrap();
        ring.insert(&sha256_hex(b"k-456").to_uppercase(), grant("bob")).unwrap();
        assert_eq!(ring.presented(b"k-123").map(|g| &*g.id), Some("alice"));
        assert_eq!(ring.presented(b"k-456").map(|g| &*g.id), Some("bob"));
        assert!(ring.presented(b"k-12").is_none());
        // The digest itself is not a key.
        assert!(ring.presented(sha256_hex(b"k-123").as_bytes()).is_none());
    }

    #[test]
    fn a_record_whose_digest_is_not_sha256_hex_is_refused() {
        let mut ring = KeyRing::default();
        let digest = sha256_hex(b"k-123");
        for bad in [&digest[..62], &format!("{}zz", &digest[..62]), "", &format!("{digest}0")] {
            assert_eq!(ring.insert(bad, grant("x")), Err(NotADigest), "{bad}");
        }
        assert!(ring.by_digest.is_empty());
    }
}
