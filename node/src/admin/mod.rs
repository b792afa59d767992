//! The admin listener: `/metrics`, `/healthz`, `/readyz`, the authenticated
//! `POST /v1/reload` and `POST /v1/explain`, and on a cluster member the cluster's API.
//!
//! Metrics and health are open (Prometheus and load balancers scrape them); every call that
//! changes something needs `Authorization: Bearer <token>` with the token from
//! `admin.token_file`. Without a configured token those calls are refused, and reload is
//! available through SIGHUP only. Tokens are never logged.

mod access;
mod cache;
pub mod client;
mod cluster;
mod connections;
mod credentials;
mod domains;
mod explain;
mod spec;
mod views;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::reload::Reloader;
use meridian_dataplane::gateway::conns::{ConnectionTable, Refused};
use meridian_dataplane::gateway::io::IdleTimeout;
use meridian_dataplane::observe::metrics::{LATENCY_BUCKETS, describe};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
}

/// Appends how long each current peer's limit counters have gone unheard. Computed at
/// scrape time, so a node that left the cluster disappears from the output instead of
/// leaving a series behind that grows forever.
fn peer_silence(out: &mut String, peers: &[(u64, std::time::Duration)]) {
    use std::fmt::Write;
    if peers.is_empty() {
        return;
    }
    out.push_str("# HELP meridian_limit_peer_silence_seconds Seconds since each peer's limit counters were heard\n");
    out.push_str("# TYPE meridian_limit_peer_silence_seconds gauge\n");
    let mut peers = peers.to_vec();
    peers.sort_unstable();
    for (node, silence) in peers {
        let _ = writeln!(out, "meridian_limit_peer_silence_seconds{{node=\"{node}\"}} {:.3}", silence.as_secs_f64());
    }
}

/// What the admin API serves from.
pub struct AdminState {
    pub metrics: PrometheusHandle,
    pub reloader: Arc<Reloader>,
    /// The node's request path, for explaining requests.
    pub pipeline: Arc<meridian_dataplane::pipeline::Pipeline>,
    pub token: Option<String>,
    /// Set once the node has joined (or founded) a cluster.
    pub cluster: OnceLock<Arc<crate::cluster::member::ClusterMember>>,
}

pub(crate) fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn message(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "message": text }).to_string())
}

impl AdminState {
    /// The refusal for a request without the right token, if it has not.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let Some(expected) = &self.token else {
            return Some(message(
                StatusCode::FORBIDDEN,
                "no admin token is configured (set admin.token_file); reload with SIGHUP instead",
            ));
        };
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if meridian_dataplane::digest::constant_time_eq(given, expected.as_bytes()) {
            None
        } else {
            Some(message(StatusCode::UNAUTHORIZED, "missing or wrong admin token"))
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match spec::check(request.method(), request.uri().path()) {
            Ok(()) => {}
            Err(spec::Mismatch::Method { allow }) => {
                let mut response = message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
                return response;
            }
            Err(spec::Mismatch::Parameter { name }) => {
                let text = format!("path parameter `{name}` is not valid here (see /v1/openapi.json)");
                return message(StatusCode::BAD_REQUEST, &text);
            }
        }
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut text = self.metrics.render();
                if let Some(limiter) = self.cluster.get().map(|m| m.limiter()) {
                    peer_silence(&mut text, &limiter.peer_silence());
                }
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            (&Method::GET, "/v1/openapi.json") => json(StatusCode::OK, OPENAPI.into()),
            (&Method::GET, "/readyz") => json(
                StatusCode::OK,
                serde_json::json!({ "status": "ready", "revision": self.reloader.revision() }).to_string(),
            ),
            (&Method::POST, "/v1/reload") => {
                if let Some(denied) = self.refusal(&request) {
                    return denied;
                }
                let reloader = self.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(reloaded)) => json(
                        StatusCode::OK,
                        serde_json::json!({ "revision": reloaded.revision, "needs_restart": reloaded.needs_restart })
                            .to_string(),
                    ),
                    Ok(Err(errors)) => {
                        let list: Vec<_> = errors
                            .errors
                            .iter()
                            .map(|e| serde_json::json!({"line": e.line, "column": e.column, "field": e.field, "message": e.message}))
                            .collect();
                        json(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            serde_json::json!({ "message": "the configuration was rejected; the old one keeps serving", "errors": list }).to_string(),
                        )
                    }
                    Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed"),
                }
            }
            (&Method::POST, path) if cache::flush_target(path).is_some() => {
                if let Some(denied) = self.refusal(&request) {
                    return denied;
                }
                let path = path.to_string();
                let Some((api, stage)) = cache::flush_target(&path) else {
                    return message(StatusCode::NOT_FOUND, "no such admin endpoint");
                };
                cache::handle(&self, api, stage, request).await
            }
            (_, path) if connections::connection_target(path).is_some() => {
                if let Some(denied) = self.refusal(&request) {
                    return denied;
                }
                let path = path.to_string();
                let Some(target) = connections::connection_target(&path) else {
                    return message(StatusCode::NOT_FOUND, "no such admin endpoint");
                };
                connections::handle(&self, target, request).await
            }
            (&Method::POST, "/v1/explain") => {
                if let Some(denied) = self.refusal(&request) {
                    return denied;
                }
                explain::handle(&self.pipeline, request).await
            }
            (_, path)
                if [
                    "/v1/cluster",
                    "/v1/apis",
                    "/v1/domains",
                    "/v1/regions",
                    "/v1/dns",
                    "/v1/keys",
                    "/v1/credentials",
                    "/v1/plans",
                    "/v1/usage",
                ]
                .iter()
                .any(|p| path.starts_with(p)) =>
            {
                if let Some(denied) = self.refusal(&request) {
                    return denied;
                }
                match self.cluster.get() {
                    Some(member) => cluster::handle(member.clone(), request).await,
                    None => message(StatusCode::NOT_FOUND, "this node is not a cluster member"),
                }
            }
            _ => message(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

/// Connections the admin listener holds at once, and from one client address.
const MAX_CONNECTIONS: usize = 64;
const MAX_CONNECTIONS_PER_CLIENT: usize = 16;
/// How long a client may take to send a request head, and to stay idle between requests.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the admin API on `listener` until `shutdown` turns true. It has a connection table
/// of its own, so that a flood of gateway connections cannot lock operators out, and the
/// other way round.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    let connections = ConnectionTable::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = meridian_dataplane::gateway::listener::stopped(&mut shutdown) => return,
        };
        let admitted = tokio::select! {
            admitted = connections.admit(peer.ip()) => match admitted {
                Ok(a) => a,
                Err(Refused::PerClient) => continue,
                Err(Refused::Closed) => return,
            },
            _ = meridian_dataplane::gateway::listener::stopped(&mut shutdown) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let slot = admitted.slot.clone();
            let service = service_fn(move |request| {
                let state = state.clone();
                let busy = slot.begin();
                async move {
                    let response = state.handle(request).await;
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            });
            let stream =
                IdleTimeout::new(stream, IDLE_TIMEOUT).with_first_request_deadline(HEAD_TIMEOUT, admitted.slot.clone());
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = admitted.slot.shed_requested() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        // Every route the admin API serves (see `handle` and `cluster::route`).
        for route in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/v1/openapi.json",
            "/v1/reload",
            "/v1/cluster",
            "/v1/cluster/leave",
            "/v1/cluster/promote",
            "/v1/cluster/remove",
            "/v1/apis",
            "/v1/apis/{api}",
            "/v1/apis/{api}/stages",
            "/v1/apis/{api}/deployments",
            "/v1/apis/{api}/deployments/{id}",
            "/v1/apis/{api}/stages/{stage}",
            "/v1/apis/{api}/stages/{stage}/variables",
            "/v1/apis/{api}/stages/{stage}/rollback",
            "/v1/apis/{api}/stages/{stage}/canary",
            "/v1/apis/{api}/stages/{stage}/canary/promote",
            "/v1/domains",
            "/v1/domains/{name}",
            "/v1/regions",
            "/v1/regions/{name}",
            "/v1/dns/zones",
            "/v1/dns/zones/{name}",
            "/v1/dns/explain",
            "/v1/keys",
            "/v1/keys/{key}",
            "/v1/keys/{key}/{action}",
            "/v1/credentials",
            "/v1/credentials/{credential}",
            "/v1/credentials/{credential}/{action}",
            "/v1/plans",
            "/v1/plans/{plan}",
            "/v1/plans/{plan}/attach",
            "/v1/plans/{plan}/keys",
            "/v1/usage",
            "/v1/explain",
            "/v1/apis/{api}/stages/{stage}/cache/flush",
            "/v1/apis/{api}/stages/{stage}/connections/{connection}",
        ] {
            assert!(paths.iter().any(|p| *p == route), "{route} is not documented");
        }
        assert_eq!(paths.len(), 40, "a documented path is not served");
    }

    #[test]
    fn token_comparison() {
        use meridian_dataplane::digest::constant_time_eq;
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
    }
}
