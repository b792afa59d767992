//! `http_proxy` integrations: streamed pass-through to an HTTP or HTTPS upstream.
//!
//! The request arrives here with its upstream URI and headers already prepared by the
//! pipeline. This stage picks a target ([`Balancer`]), bounds the wait for response headers
//! by the route's timeout, sends a request no target could take (no connection) to the next
//! target, retries (only when configured, only idempotent requests without a body, only
//! within the retry budget) on timeouts and failures, and splices WebSocket upgrades.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use http::{Request, Response};
use http_body::Body;

use super::balance::Balancer;
use super::discovery::{Lookup, Watched};
use super::endpoint::{SendError, UpstreamBody, is_idempotent};
use super::request_body::{BodyTooLarge, ClientBodyError, RequestBody, caused_by};
use super::retry::RetryPolicy;
use super::upstreams::{UpstreamSpec, Upstreams};
use super::uri::UpstreamTemplate;

/// Why an upstream call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream call failed: {0}")]
    Failed(String),
    #[error("every target is at its connection limit")]
    Busy,
    #[error("the request body exceeds the limit")]
    BodyTooLarge,
    #[error("the client's request body is malformed or incomplete")]
    ClientBody,
}

impl UpstreamError {
    fn retryable(&self) -> bool {
        matches!(self, UpstreamError::Timeout(_) | UpstreamError::Connect(_) | UpstreamError::Failed(_))
    }
}

/// Asks [`ProxyIntegration::forward`] to say which target answered (for a trace span): put
/// it in the request's extensions, and the response's carry an [`AnsweredBy`].
#[derive(Debug, Clone, Copy)]
pub struct NameTheTarget;

/// The target that answered a request that asked with [`NameTheTarget`].
#[derive(Debug, Clone)]
pub struct AnsweredBy(pub http::uri::Authority);

/// A compiled `http_proxy` integration of one route on one stage.
#[derive(Debug)]
pub struct ProxyIntegration {
    pub upstream: UpstreamTemplate,
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
    pub targets: UpstreamSpec,
    /// Where a share of the requests is copied to.
    pub mirror: Option<std::sync::Arc<super::mirror::Mirror>>,
    /// Bound to the node's endpoints on first use.
    balancer: OnceLock<Balancer>,
    /// With discovery: the watched name, and the balancer over the targets it last
    /// resolved to (rebound when they change).
    watched: OnceLock<Result<Arc<Watched>, String>>,
    discovered: ArcSwapOption<DiscoveredBalancer>,
}

/// A balancer over one version of a watched name's targets.
#[derive(Debug)]
struct DiscoveredBalancer {
    version: u64,
    balancer: Balancer,
}

/// How long a request waits for a name's first resolution.
const FIRST_RESOLUTION: Duration = Duration::from_secs(3);

/// Renders an error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl ProxyIntegration {
    pub fn new(
        upstream: UpstreamTemplate,
        timeout: Duration,
        retry: Option<RetryPolicy>,
        targets: UpstreamSpec,
    ) -> Self {
        ProxyIntegration {
            upstream,
            timeout,
            retry,
            targets,
            mirror: None,
            balancer: OnceLock::new(),
            watched: OnceLock::new(),
            discovered: ArcSwapOption::empty(),
        }
    }

    /// Keeps the active health checks of the integration's targets running without waiting
    /// for traffic: fixed targets are bound to the node's endpoints at the first call, and
    /// targets named in DNS as each resolution arrives (the node calls this about once a
    /// second for the table in use).
    pub fn keep_health_checks(&self, upstreams: &Upstreams) {
        if self.targets.check.is_none() {
            return;
        }
        let Some(lookup) = &self.targets.discovery else {
            self.balancer.get_or_init(|| upstreams.bind(&self.targets));
            return;
        };
        let watched = self.watched.get_or_init(|| upstreams.discovery().map(|d| d.watch(lookup)));
        if let Ok(watched) = watched {
            let current = watched.current();
            if current.version != 0 && !current.targets.is_empty() {
                self.bind_discovered(&current, upstreams);
            }
        }
    }

    /// Sends `request` upstream; it is lent, not moved into each future on the way down
    /// (the caller's frame holds it; what is left of it afterwards is of no use). A call that
    /// failed because of the client's body is reported as [`UpstreamError::BodyTooLarge`] or
    /// [`UpstreamError::ClientBody`].
    pub async fn forward(
        &self,
        request: &mut Request<RequestBody>,
        upstreams: &Upstreams,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let discovered;
        let balancer = match &self.targets.discovery {
            None => self.balancer.get_or_init(|| upstreams.bind(&self.targets)),
            Some(lookup) => {
                discovered = self.discovered(lookup, upstreams).await?;
                &discovered.balancer
            }
        };
        let region = upstreams.region();
        let retry = self.retry.as_ref().filter(|_| is_idempotent(request.method()) && request.body().is_end_stream());
        let Some(policy) = retry else {
            return self.attempt(balancer, region, request).await;
        };
        policy.deposit();
        let mut tries = 0;
        loop {
            let mut again = Request::new(RequestBody::empty());
            *again.method_mut() = request.method().clone();
            *again.uri_mut() = request.uri().clone();
            *again.version_mut() = request.version();
            *again.headers_mut() = request.headers().clone();
            if request.extensions().get::<NameTheTarget>().is_some() {
                again.extensions_mut().insert(NameTheTarget);
            }
            match self.attempt(balancer, region, &mut again).await {
                Err(e) if e.retryable() && tries < policy.attempts && policy.try_withdraw() => {
                    tries += 1;
                    tracing::debug!(error = %e, attempt = tries, "retrying upstream call");
                    metrics::counter!("meridian_upstream_retries_total").increment(1);
                }
                result => return result,
            }
        }
    }

    /// The balancer over what `lookup` resolves to now; the first request waits (a few
    /// seconds at most) for the first resolution.
    async fn discovered(
        &self,
        lookup: &Lookup,
        upstreams: &Upstreams,
    ) -> Result<Arc<DiscoveredBalancer>, UpstreamError> {
        let watched = self
            .watched
            .get_or_init(|| upstreams.discovery().map(|d| d.watch(lookup)))
            .as_ref()
            .map_err(|e| UpstreamError::Connect(e.clone()))?;
        let mut current = watched.current();
        if current.version == 0 {
            watched.ready(FIRST_RESOLUTION).await;
            current = watched.current();
        }
        if current.targets.is_empty() {
            return Err(UpstreamError::Connect(format!("`{lookup}` has not resolved to any target")));
        }
        Ok(self.bind_discovered(&current, upstreams))
    }

    /// The balancer over the resolution `current`, bound once per resolution.
    fn bind_discovered(&self, current: &super::discovery::Resolved, upstreams: &Upstreams) -> Arc<DiscoveredBalancer> {
        if let Some(bound) = self.discovered.load_full().filter(|b| b.version == current.version) {
            return bound;
        }
        let spec = UpstreamSpec { targets: current.targets.clone(), discovery: None, ..self.targets.clone() };
        let bound = Arc::new(DiscoveredBalancer { version: current.version, balancer: upstreams.bind(&spec) });
        self.discovered.store(Some(bound.clone()));
        bound
    }

    /// One attempt: the request goes to a target, and to the next one while none could
    /// take it (it was never sent, so any request may move on).
    async fn attempt(
        &self,
        balancer: &Balancer,
        region: Option<&str>,
        request: &mut Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut tried = Vec::new();
        let mut last = UpstreamError::Connect("the integration has no target".into());
        let names_target = request.extensions().get::<NameTheTarget>().is_some();
        while let Some(index) = balancer.pick(region, &tried) {
            let endpoint = &balancer.targets()[index].endpoint;
            let sent = match tokio::time::timeout(self.timeout, endpoint.send(request)).await {
                Ok(sent) => sent,
                Err(_) => {
                    endpoint.failed();
                    return Err(UpstreamError::Timeout(self.timeout));
                }
            };
            match sent {
                Ok(response) => {
                    endpoint.succeeded();
                    // The route's timeout also bounds each wait for the body's next bytes.
                    let mut response = response.map(|body| body.with_idle_timeout(self.timeout));
                    if names_target {
                        response.extensions_mut().insert(AnsweredBy(endpoint.key().authority.clone()));
                    }
                    return Ok(response);
                }
                Err(SendError::NotSent(e)) => {
                    endpoint.failed();
                    tracing::debug!(target = %endpoint.key().authority, error = %e, "no connection; trying the next target");
                    last = UpstreamError::Connect(format!("{}: {e}", endpoint.key().authority));
                }
                Err(SendError::Busy) => last = UpstreamError::Busy,
                Err(SendError::Failed(e)) if caused_by::<BodyTooLarge>(&*e) => return Err(UpstreamError::BodyTooLarge),
                Err(SendError::Failed(e)) if caused_by::<ClientBodyError>(&*e) => {
                    return Err(UpstreamError::ClientBody);
                }
                Err(SendError::Failed(e)) => {
                    endpoint.failed();
                    return Err(UpstreamError::Failed(format!("{}: {}", endpoint.key().authority, error_chain(&*e))));
                }
            }
            tried.push(index);
        }
        Err(last)
    }
}
