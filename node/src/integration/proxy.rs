//! `http_proxy` integrations: streamed pass-through to an HTTP or HTTPS upstream.
//!
//! The request arrives here with its upstream URI and headers already prepared by the
//! pipeline. This stage bounds the wait for response headers by the route's timeout,
//! retries (only when configured, only idempotent requests without a body, only within the
//! retry budget) on connect failures and timeouts, and splices WebSocket upgrades.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::client::UpstreamClient;
use super::retry::RetryPolicy;
use super::uri::UpstreamTemplate;
use crate::body::{BodyTooLarge, ClientBodyError, RequestBody, caused_by};

/// Why an upstream call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream call failed: {0}")]
    Failed(String),
    #[error("the request body exceeds the limit")]
    BodyTooLarge,
    #[error("the client's request body is malformed or incomplete")]
    ClientBody,
}

impl UpstreamError {
    fn retryable(&self) -> bool {
        matches!(self, UpstreamError::Timeout(_) | UpstreamError::Connect(_))
    }
}

/// A compiled `http_proxy` integration of one route on one stage.
#[derive(Debug)]
pub struct ProxyIntegration {
    pub upstream: UpstreamTemplate,
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
    pub client: Arc<UpstreamClient>,
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

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
    /// Sends `request` upstream. A call that failed because of the client's body is
    /// reported as [`UpstreamError::BodyTooLarge`] or [`UpstreamError::ClientBody`].
    pub async fn forward(&self, request: Request<RequestBody>) -> Result<Response<Incoming>, UpstreamError> {
        let retry = self.retry.as_ref().filter(|_| is_idempotent(request.method()) && request.body().is_end_stream());
        let Some(policy) = retry else {
            return self.attempt(request).await;
        };
        policy.deposit();
        let (parts, _) = request.into_parts();
        let mut tries = 0;
        loop {
            let mut again = Request::new(RequestBody::empty());
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.version_mut() = parts.version;
            *again.headers_mut() = parts.headers.clone();
            match self.attempt(again).await {
                Err(e) if e.retryable() && tries < policy.attempts && policy.try_withdraw() => {
                    tries += 1;
                    tracing::debug!(error = %e, attempt = tries, "retrying upstream call");
                    metrics::counter!("meridian_upstream_retries_total").increment(1);
                }
                result => return result,
            }
        }
    }

    async fn attempt(&self, request: Request<RequestBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) if caused_by::<BodyTooLarge>(&e) => Err(UpstreamError::BodyTooLarge),
            Ok(Err(e)) if caused_by::<ClientBodyError>(&e) => Err(UpstreamError::ClientBody),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Failed(error_chain(&e))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// Joins a client's upgraded connection to the upstream's once both sides have switched
/// protocols, copying bytes both ways until either side closes.
pub fn splice_upgrades(client: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
