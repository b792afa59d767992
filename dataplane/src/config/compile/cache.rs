//! Compiling response caching (`type: rest`): a stage's cache (capacity, default TTL) and
//! each route's settings (TTL, methods, key, principal, invalidation), checked with their
//! lines; the route's cache stage exists only where the stage has a cache.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, Method};

use super::super::model::*;
use super::{Compiler, RouteSpec};
use crate::response_cache::MAX_TTL;
use crate::stages::cache::{Invalidation, ResponseCaching, Unauthorized};

const DEFAULT_CAPACITY_MIB: u64 = 64;
const MAX_CAPACITY_MIB: u64 = 64 * 1024;
const DEFAULT_TTL: Duration = Duration::from_secs(300);
const DEFAULT_MAX_ENTRY_KIB: u64 = 1024;

/// A stage's cache, compiled.
pub(super) struct StageCacheSpec {
    capacity_bytes: u64,
    ttl: Duration,
}

/// A route's cache settings, compiled once for every stage.
#[derive(Clone)]
pub(super) struct RouteCacheSpec {
    /// `None`: the stage's TTL; zero: not cached.
    ttl: Option<Duration>,
    methods: Vec<Method>,
    key_query: Option<Vec<String>>,
    key_headers: Vec<HeaderName>,
    per_principal: bool,
    keep_private: bool,
    invalidation: Option<Invalidation>,
    max_entry_bytes: usize,
}

impl Default for RouteCacheSpec {
    fn default() -> Self {
        RouteCacheSpec {
            ttl: None,
            methods: vec![Method::GET],
            key_query: None,
            key_headers: Vec::new(),
            per_principal: false,
            keep_private: false,
            invalidation: None,
            max_entry_bytes: (DEFAULT_MAX_ENTRY_KIB * 1024) as usize,
        }
    }
}

impl Compiler<'_> {
    fn cache_ttl(&mut self, ttl: &Spanned<String>, field: &str, zero_allowed: bool) -> Option<Duration> {
        let parsed = match super::super::parse_duration(&ttl.value) {
            Ok(d) => d,
            Err(e) => {
                self.sink.push(ttl.referenced, field, e);
                return None;
            }
        };
        if parsed > MAX_TTL || (parsed.is_zero() && !zero_allowed) {
            let least = if zero_allowed { "0s (off)" } else { "1s" };
            self.sink.push(ttl.referenced, field, format!("a TTL is {least} to {}s", MAX_TTL.as_secs()));
            return None;
        }
        Some(parsed)
    }

    /// The stage's cache, when it has one that is on.
    pub(super) fn stage_cache(&mut self, stage: &StageDef, field: &str) -> Option<StageCacheSpec> {
        let def = stage.cache.as_ref()?;
        let capacity = def.value.capacity_mib.unwrap_or(DEFAULT_CAPACITY_MIB);
        if !(1..=MAX_CAPACITY_MIB).contains(&capacity) {
            self.sink.push(
                def.referenced,
                format!("{field}.cache.capacity_mib"),
                format!("1 to {MAX_CAPACITY_MIB} MiB"),
            );
            return None;
        }
        let ttl = match &def.value.ttl {
            Some(t) => self.cache_ttl(t, &format!("{field}.cache.ttl"), false)?,
            None => DEFAULT_TTL,
        };
        def.value.enabled.then_some(StageCacheSpec { capacity_bytes: capacity * 1024 * 1024, ttl })
    }

    /// A route's cache settings.
    pub(super) fn route_cache(&mut self, def: &Spanned<RouteCacheDef>, field: &str) -> Option<RouteCacheSpec> {
        let at = def.referenced;
        let c = &def.value;
        let mut spec = RouteCacheSpec::default();
        let mut ok = true;
        if let Some(ttl) = &c.ttl {
            spec.ttl = self.cache_ttl(ttl, &format!("{field}.ttl"), true);
            ok &= spec.ttl.is_some();
        }
        if let Some(methods) = &c.methods {
            spec.methods.clear();
            for m in methods {
                match m.as_str() {
                    "GET" => spec.methods.push(Method::GET),
                    "HEAD" => spec.methods.push(Method::HEAD),
                    other => {
                        self.sink.push(
                            at,
                            format!("{field}.methods"),
                            format!("`{other}`: only GET and HEAD answers are cached"),
                        );
                        ok = false;
                    }
                }
            }
        }
        spec.key_query = c.key_query.clone();
        for h in &c.key_headers {
            match HeaderName::try_from(h.as_str()) {
                Ok(name) => spec.key_headers.push(name),
                Err(_) => {
                    self.sink.push(at, format!("{field}.key_headers"), format!("`{h}` is not a header name"));
                    ok = false;
                }
            }
        }
        spec.per_principal = c.per_principal;
        spec.keep_private = c.keep_private;
        if c.keep_private && !c.per_principal {
            self.sink.push(
                at,
                format!("{field}.keep_private"),
                "private answers are kept only per principal: add `per_principal: true`",
            );
            ok = false;
        }
        if let Some(inv) = &c.invalidation {
            if inv.scope.is_empty() {
                self.sink.push(at, format!("{field}.invalidation.scope"), "name the scope that grants invalidation");
                ok = false;
            }
            let unauthorized = match inv.unauthorized {
                CacheUnauthorized::Ignore => Unauthorized::Ignore,
                CacheUnauthorized::Forbid => Unauthorized::Forbid,
            };
            spec.invalidation = Some(Invalidation { scope: inv.scope.clone(), unauthorized });
        }
        if let Some(kib) = c.max_entry_kib {
            if (1..=64 * 1024).contains(&kib) {
                spec.max_entry_bytes = (kib * 1024) as usize;
            } else {
                self.sink.push(at, format!("{field}.max_entry_kib"), "1 to 65536 KiB");
                ok = false;
            }
        }
        ok.then_some(spec)
    }

    /// The cache stage of `route` on a stage with `cache`, unless the route turns it off.
    pub(super) fn caching(
        &self,
        (api, stage): (&str, &str),
        route: &RouteSpec,
        cache: &StageCacheSpec,
    ) -> Option<Arc<ResponseCaching>> {
        let spec = route.cache.clone().unwrap_or_default();
        let ttl = spec.ttl.unwrap_or(cache.ttl);
        if ttl.is_zero() {
            return None;
        }
        Some(Arc::new(ResponseCaching {
            api: Arc::from(api),
            stage: Arc::from(stage),
            route: Arc::from(route.key.as_str()),
            capacity_bytes: cache.capacity_bytes,
            ttl,
            methods: spec.methods,
            key_query: spec.key_query,
            key_headers: spec.key_headers,
            per_principal: spec.per_principal,
            keep_private: spec.keep_private,
            invalidation: spec.invalidation,
            max_entry_bytes: spec.max_entry_bytes,
            fill_wait: route.integration.timeout(),
            cache: OnceLock::new(),
        }))
    }
}
