//! The built-in echo backend: answers every request with a JSON description of it.
//!
//! Used by `meridian demo` and by tests as a real upstream. Query parameters shape the
//! answer: `delay_ms=N` waits before answering, `status=N` sets the status, and a request
//! with `x-echo-body: stream` gets its own body streamed back instead of the JSON.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type EchoBody = Either<Full<Bytes>, Incoming>;

fn query_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

async fn echo(request: Request<Incoming>) -> Response<EchoBody> {
    let query = request.uri().query().map(str::to_string);
    if let Some(ms) = query_value(query.as_deref(), "delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = query_value(query.as_deref(), "status")
        .and_then(|v| v.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if request.headers().get("x-echo-body").is_some_and(|v| v == "stream") {
        let mut response = Response::new(Either::Right(request.into_body()));
        *response.status_mut() = status;
        return response;
    }
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let body_bytes = match request.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let description = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(description.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    response
}

/// Binds `addr` and serves the echo backend in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(|r| async move { Ok::<_, Infallible>(echo(r).await) });
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}
