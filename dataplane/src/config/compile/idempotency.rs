//! Compiling idempotency keys (`type: rest`): a route's `idempotency` section (TTL, what a
//! retry in flight gets, what is kept, bounds), checked with its line, and the route's
//! idempotency stage on each stage of the API.

use std::sync::Arc;
use std::time::Duration;

use super::super::model::*;
use super::{Compiler, RouteSpec};
use crate::stages::Stage;
use crate::stages::idempotency::{IdempotencyMetrics, IdempotentDelivery, InFlight};

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_MAX_RESPONSE_KIB: u64 = 16;
const MAX_RESPONSE_KIB: u64 = 256;
const DEFAULT_MAX_RECORDS: u64 = 50_000;
const MAX_RECORDS: u64 = 1_000_000;
const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a claim's lease adds to the longest the integration may take to answer.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A route's idempotency, compiled once for every stage.
#[derive(Debug, Clone)]
pub(super) struct IdempotencySpec {
    required: bool,
    ttl: Duration,
    in_flight: InFlight,
    max_response_bytes: usize,
    max_records: u64,
    commit_timeout: Duration,
}

impl Compiler<'_> {
    fn bounded_count(&mut self, value: &Option<Spanned<u64>>, field: &str, default: u64, most: u64) -> Option<u64> {
        match value {
            None => Some(default),
            Some(v) if (1..=most).contains(&v.value) => Some(v.value),
            Some(v) => {
                self.sink.push(v.referenced, field, format!("must be from 1 to {most}"));
                None
            }
        }
    }

    /// A route's `idempotency` section; `None` (with every error reported) when it is wrong.
    pub(super) fn idempotency(&mut self, def: &Spanned<IdempotencyDef>, field: &str) -> Option<IdempotencySpec> {
        let d = &def.value;
        let ttl = match &d.ttl {
            Some(t) => self.bounded_duration(t, &format!("{field}.ttl"), Duration::from_secs(1), MAX_TTL),
            None => Some(DEFAULT_TTL),
        };
        let commit_timeout = match &d.commit_timeout {
            Some(t) => self.bounded_duration(
                t,
                &format!("{field}.commit_timeout"),
                Duration::from_millis(100),
                Duration::from_secs(30),
            ),
            None => Some(DEFAULT_COMMIT_TIMEOUT),
        };
        let kib = self.bounded_count(
            &d.max_response_kib,
            &format!("{field}.max_response_kib"),
            DEFAULT_MAX_RESPONSE_KIB,
            MAX_RESPONSE_KIB,
        );
        let max_records =
            self.bounded_count(&d.max_records, &format!("{field}.max_records"), DEFAULT_MAX_RECORDS, MAX_RECORDS);
        Some(IdempotencySpec {
            required: d.required,
            ttl: ttl?,
            in_flight: match d.in_flight {
                IdempotencyInFlight::Reject => InFlight::Reject,
                IdempotencyInFlight::Wait => InFlight::Wait,
            },
            max_response_bytes: (kib? * 1024) as usize,
            max_records: max_records?,
            commit_timeout: commit_timeout?,
        })
    }

    /// The route's idempotency stage on one stage of the API.
    pub(super) fn idempotency_stage(
        spec: &IdempotencySpec,
        route: &RouteSpec,
        api: &str,
        stage: &str,
    ) -> Arc<dyn Stage> {
        Arc::new(IdempotentDelivery {
            scope: Arc::from(format!("{api}/{stage}")),
            route: Arc::from(route.key.as_str()),
            required: spec.required,
            ttl: spec.ttl,
            lease: route.integration.longest_answer() + LEASE_MARGIN,
            in_flight: spec.in_flight,
            max_response_bytes: spec.max_response_bytes,
            max_records: spec.max_records,
            commit_timeout: spec.commit_timeout,
            metrics: IdempotencyMetrics::new(api, stage),
        })
    }
}
