//! URLs the node calls on its own behalf: a JWKS document, a custom authorizer.
//!
//! A [`Callee`] is one URL with a timeout. Its calls go through the node's [`Upstreams`],
//! so they share pooled connections, TLS settings and passive health with every other call
//! to the same target, and the answer is read whole, up to a stated size, because the
//! caller parses it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};

use super::ProxyIntegration;
use super::proxy::UpstreamError;
use super::request_body::RequestBody;
use super::trust::UpstreamTls;
use super::upstreams::{TargetSpec, UpstreamSpec, Upstreams};
use super::uri::UpstreamTemplate;

/// One URL the node calls.
#[derive(Debug)]
pub struct Callee {
    uri: Uri,
    proxy: ProxyIntegration,
}

/// What a callee answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer broke off: {0}")]
    Body(String),
}

impl Callee {
    /// A callee at `url` (`http` or `https`, trusting `tls` for the latter), whose answers
    /// must arrive within `timeout`.
    pub fn new(url: &str, timeout: Duration, tls: UpstreamTls) -> Result<Callee, String> {
        let uri: Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        let upstream = UpstreamTemplate::compile(url, &[])?;
        let https = upstream.scheme == http::uri::Scheme::HTTPS;
        let spec = UpstreamSpec {
            scheme: upstream.scheme.clone(),
            targets: vec![TargetSpec { authority: upstream.authority.clone(), weight: 1, region: None }],
            balance: Default::default(),
            settings: Default::default(),
            http2: false,
            server_name: https.then(|| upstream.authority.host().to_string()),
            tls: https.then_some(tls),
            discovery: None,
            check: None,
        };
        Ok(Callee { uri, proxy: ProxyIntegration::new(upstream, timeout, None, spec) })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Sends one request and reads the whole answer, refusing one over `max_body` bytes.
    /// The timeout bounds the wait for the answer's head and its body each.
    pub async fn call(
        &self,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
        upstreams: &Upstreams,
        max_body: usize,
    ) -> Result<Answer, CallError> {
        let mut request = Request::new(RequestBody::buffered(body));
        *request.method_mut() = method;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        let response = self.proxy.forward(&mut request, upstreams).await?;
        let (parts, body) = response.into_parts();
        let read = tokio::time::timeout(self.proxy.timeout, Limited::new(body, max_body).collect()).await;
        let body = match read {
            Err(_) => return Err(UpstreamError::Timeout(self.proxy.timeout).into()),
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(CallError::TooLarge(max_body)),
            Ok(Err(e)) => return Err(CallError::Body(e.to_string())),
        };
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }
}
