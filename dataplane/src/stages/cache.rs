//! The response cache stage (`type: rest`): a route's cacheable responses kept in its
//! stage's cache ([`crate::response_cache`]) and served from there until their TTL ends.
//!
//! The key is the route, the request path (so its path parameters), the query (all of it,
//! or only the parameters the route names), the headers the route names and, when asked,
//! the authorizer's principal, so two users never see each other's answers. Only 200
//! answers without `Cache-Control: no-store` or `private` and without `Set-Cookie` are
//! kept (unless the route keeps private answers, which it may only per principal), and only
//! up to a size. A client may ask for a fresh answer with
//! `Cache-Control: max-age=0` when the authorizer grants it the route's invalidation scope;
//! otherwise the request is served as usual, or refused, as configured.
//!
//! The stage comes after authorization, validation and request mapping (a cached answer is
//! never given to a client that could not have had it), and before the stages that convert
//! or map the upstream's answer, so it keeps what the client gets, without the headers the
//! stages before it add (CORS, the request id).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, SET_COOKIE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, response};

use super::{Exchange, Flow, Phases, Services, Stage, Step, Stop};
use crate::authorizers::{AuthorizerContext, granted_scopes};
use crate::body::{BoundedCopy, ResponseBody};
use crate::observe::trace::SpanKind;
use crate::rejection::Rejection;
use crate::response_cache::{CachedResponse, FillGuard, Miss, StageCache, wait_for_fill};

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What a client without the invalidation scope gets for `Cache-Control: max-age=0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// The request is served as if it had not asked (from the cache when it can).
    Ignore,
    /// 403.
    Forbid,
}

/// Who may ask for a fresh answer.
#[derive(Debug, Clone)]
pub struct Invalidation {
    /// The scope the authorizer must grant (`scope` or `scp` of its context).
    pub scope: String,
    pub unauthorized: Unauthorized,
}

/// One route's caching on one stage.
#[derive(Debug)]
pub struct ResponseCaching {
    pub api: Arc<str>,
    pub stage: Arc<str>,
    pub route: Arc<str>,
    pub capacity_bytes: u64,
    pub ttl: Duration,
    pub methods: Vec<Method>,
    /// Only these query parameters are in the key (`None`: the whole query).
    pub key_query: Option<Vec<String>>,
    pub key_headers: Vec<HeaderName>,
    pub per_principal: bool,
    /// Keep answers marked private (`no-store`, `private`, `Set-Cookie`); only with
    /// `per_principal`.
    pub keep_private: bool,
    pub invalidation: Option<Invalidation>,
    /// The largest response kept.
    pub max_entry_bytes: usize,
    /// How long a miss waits for the same key's fill under way.
    pub fill_wait: Duration,
    /// The stage's cache, bound on first use.
    pub cache: OnceLock<Arc<StageCache>>,
}

/// What happened to this request in the cache.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
}

/// A miss this request fills: the guard, and the copy of the response once it proves
/// cacheable.
struct Filling {
    guard: FillGuard,
    copy: Option<(StatusCode, http::HeaderMap, BoundedCopy)>,
}

impl ResponseCaching {
    fn cache(&self, services: &Services) -> &Arc<StageCache> {
        self.cache.get_or_init(|| services.caches.bind(&self.api, &self.stage, self.capacity_bytes))
    }

    /// The request's key, or `None` when the route keys on the principal and the request
    /// has none.
    fn key(&self, head: &Parts, exchange: &Exchange) -> Option<String> {
        let mut key = format!("{} {}\n{}\n", head.method, self.route, head.uri.path());
        let query = head.uri.query().unwrap_or("");
        match &self.key_query {
            None => key.push_str(query),
            Some(names) => {
                for name in names {
                    let mut values: Vec<String> =
                        crate::query::pairs(query).filter(|(k, _)| k == name).map(|(_, v)| v).collect();
                    values.sort();
                    key.push_str(&format!("{name}={values:?}&"));
                }
            }
        }
        for header in &self.key_headers {
            let values: Vec<&[u8]> = head.headers.get_all(header).iter().map(HeaderValue::as_bytes).collect();
            key.push_str(&format!("\n{header}: {values:?}"));
        }
        if self.per_principal {
            let context = exchange.state.get::<AuthorizerContext>()?;
            let principal = context.values.get("sub").or_else(|| context.values.get("principalId"));
            match principal {
                Some(p) => key.push_str(&format!("\nprincipal {} {p}", context.authorizer)),
                None => key.push_str(&format!(
                    "\ncontext {} {}",
                    context.authorizer,
                    serde_json::Value::Object((*context.values).clone())
                )),
            }
        }
        Some(key)
    }

    /// Whether the client asks for a fresh answer, and may: `Err` when it may not and the
    /// route forbids asking.
    fn refresh(&self, head: &Parts, exchange: &Exchange) -> Result<bool, Rejection> {
        let asks = cache_directives(&head.headers).any(|d| d.eq_ignore_ascii_case("max-age=0"));
        let Some(invalidation) = asks.then_some(()).and(self.invalidation.as_ref()) else { return Ok(false) };
        let granted = exchange
            .state
            .get::<AuthorizerContext>()
            .is_some_and(|c| granted_scopes(&c.values).contains(&invalidation.scope.as_str()));
        match (granted, invalidation.unauthorized) {
            (true, _) => Ok(true),
            (false, Unauthorized::Ignore) => Ok(false),
            (false, Unauthorized::Forbid) => Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "this client may not invalidate cached answers (Cache-Control: max-age=0)",
            )
            .with_reason("cache invalidation not granted")),
        }
    }
}

/// The `Cache-Control` directives of `headers`, trimmed.
fn cache_directives(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// A cached response, as an answer.
fn answer(cached: &CachedResponse) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(cached.body.clone()));
    *response.status_mut() = cached.status;
    *response.headers_mut() = cached.headers.clone();
    response
}

/// Whether a response may be kept: a 200 that neither forbids shared caching nor sets a
/// cookie, unless the route keeps private answers (per principal).
fn cacheable(head: &response::Parts, keep_private: bool) -> bool {
    let private = || {
        head.headers.contains_key(SET_COOKIE)
            || cache_directives(&head.headers)
                .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private"))
    };
    head.status == StatusCode::OK && (keep_private || !private())
}

impl Stage for ResponseCaching {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD | Phases::RESPONSE_HEAD | Phases::RESPONSE_BODY
    }

    fn request_head<'a>(
        &'a self,
        head: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        if !self.methods.contains(&head.method) {
            return Flow::Continue.into();
        }
        let refresh = match self.refresh(head, exchange) {
            Ok(refresh) => refresh,
            Err(rejection) => return rejection.into(),
        };
        let Some(key) = self.key(head, exchange) else { return Flow::Continue.into() };
        let span = exchange.start_span();
        let lookup_ended = move |exchange: &Exchange, hit: bool| {
            exchange.end_span(
                span,
                "cache lookup",
                SpanKind::Internal,
                || vec![("meridian.cache.hit", hit.into())],
                None,
            )
        };
        let cache = self.cache(services);
        if !refresh && let Some(cached) = cache.get(&key, Instant::now()) {
            lookup_ended(exchange, true);
            exchange.note(|| "a cached answer".to_string());
            if !services.dry_run {
                cache.hits.increment(1);
            }
            exchange.state.insert(Outcome::Hit);
            return Flow::Stop(Stop::Answer(answer(&cached))).into();
        }
        exchange.note(|| if refresh { "a fresh answer was asked for" } else { "not cached" }.to_string());
        if services.dry_run {
            lookup_ended(exchange, false);
            return Flow::Continue.into();
        }
        cache.misses.increment(1);
        exchange.state.insert(Outcome::Miss);
        match cache.miss(key) {
            Miss::Fill(guard) => {
                lookup_ended(exchange, false);
                exchange.state.insert(Filling { guard, copy: None });
                Flow::Continue.into()
            }
            // Waiting for another request's fill is part of the lookup.
            Miss::Wait(receiver) => Step::Waiting(Box::pin(async move {
                let filled = wait_for_fill(receiver, self.fill_wait).await;
                lookup_ended(exchange, filled.is_some());
                match filled {
                    Some(cached) => {
                        exchange.state.insert(Outcome::Hit);
                        Flow::Stop(Stop::Answer(answer(&cached)))
                    }
                    // No answer to share: this request asks the upstream itself.
                    None => Flow::Continue,
                }
            })),
        }
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        let Some(outcome) = exchange.state.get::<Outcome>().copied() else { return };
        if cacheable(head, self.keep_private) {
            if let Some(filling) = exchange.state.get_mut::<Filling>() {
                filling.copy = Some((head.status, head.headers.clone(), BoundedCopy::new(self.max_entry_bytes)));
            }
        } else {
            // Nothing to keep: whoever waits asks the upstream itself.
            exchange.state.remove::<Filling>();
        }
        let value = match outcome {
            Outcome::Hit => "Hit",
            Outcome::Miss => "Miss",
        };
        head.headers.insert(X_CACHE.clone(), HeaderValue::from_static(value));
    }

    fn rewrites_response_body(&self) -> bool {
        false
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, exchange: &mut Exchange) {
        let Some(filling) = exchange.state.get_mut::<Filling>() else { return };
        let kept = match (filling.copy.as_mut(), chunk) {
            (Some((_, _, copy)), Some(data)) => copy.push(data),
            (Some(_), None) => true,
            (None, _) => return,
        };
        if !kept {
            // Too large to keep.
            exchange.state.remove::<Filling>();
            return;
        }
        if end_of_stream
            && let Some(Filling { guard, copy: Some((status, headers, copy)) }) = exchange.state.remove::<Filling>()
            && let Some(body) = copy.finish()
        {
            guard.complete(CachedResponse { status, headers, body, expires: Instant::now() + self.ttl });
        }
    }
}
