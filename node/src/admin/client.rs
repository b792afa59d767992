//! A small client for the admin API, used by `meridian reload`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Errors talking to a node's admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("cannot reach the admin API at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API at {addr} did not answer within 30s")]
    Timeout { addr: SocketAddr },
    #[error("admin API call failed: {0}")]
    Http(String),
}

/// Sends `method path` with an optional bearer token, body and extra headers; returns the
/// status and body.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Bytes,
    headers: &[(&str, String)],
) -> Result<(u16, String), AdminClientError> {
    let exchange = async {
        let stream =
            tokio::net::TcpStream::connect(addr).await.map_err(|source| AdminClientError::Connect { addr, source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AdminClientError::Http(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| AdminClientError::Http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| AdminClientError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| AdminClientError::Http(e.to_string()))?;
        Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange).await.map_err(|_| AdminClientError::Timeout { addr })?
}
