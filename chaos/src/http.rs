//! A small HTTP/1.1 client for the chaos workload and the admin calls it makes: one
//! request at a time per connection, keep-alive, `Content-Length` bodies, and a deadline on
//! every step. The workload needs exact control over which connection a request uses and
//! what counts as a failure, which a pooled client hides.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// `Idempotent-Replayed: true`: the gateway answered with a recorded response.
    pub replayed: bool,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed or broken: {0}")]
    Broken(String),
    #[error("malformed response")]
    Malformed,
}

/// One keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<Connection, HttpError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| HttpError::Connect(addr, "timed out".into()))?
            .map_err(|e| HttpError::Connect(addr, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Connection { stream, buffer: Vec::with_capacity(4096) })
    }

    /// Sends one request and reads its response within `timeout`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.exchange(method, path, headers, body))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Response, HttpError> {
        // `Host: meridian` unless the caller names a host.
        let host = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) { "" } else { "Host: meridian\r\n" };
        let mut request = format!("{method} {path} HTTP/1.1\r\n{host}Content-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.stream.write_all(request.as_bytes()).await.map_err(|e| HttpError::Broken(e.to_string()))?;
        self.buffer.clear();
        let header_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buffer.len() > 64 * 1024 {
                return Err(HttpError::Malformed);
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..header_end]).map_err(|_| HttpError::Malformed)?;
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(HttpError::Malformed)?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let replayed = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| n.eq_ignore_ascii_case("idempotent-replayed") && v.trim() == "true")
        });
        while self.buffer.len() < header_end + length {
            self.fill().await?;
        }
        let body = String::from_utf8_lossy(&self.buffer[header_end..header_end + length]).into_owned();
        Ok(Response { status, body, replayed })
    }

    async fn fill(&mut self) -> Result<(), HttpError> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Err(HttpError::Broken("closed by the server".into())),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(HttpError::Broken(e.to_string())),
        }
    }
}

/// One request on a fresh connection.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut connection = Connection::open(addr, timeout).await?;
    connection.request(method, path, headers, body, timeout).await
}

/// A request as [`ServerConnection`] reads it: its head's lines and its body.
pub struct ServerRequest {
    head: String,
    pub body: Vec<u8>,
}

impl ServerRequest {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The server side of one keep-alive connection, for the services a scenario plays:
/// `Content-Length` bodies only, heads up to 64 KiB.
pub struct ServerConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl ServerConnection {
    pub fn new(stream: TcpStream) -> Self {
        ServerConnection { stream, buffer: Vec::with_capacity(4096) }
    }

    /// The next request, or `None` when the client closed the connection.
    pub async fn next_request(&mut self) -> Result<Option<ServerRequest>, HttpError> {
        let header_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buffer.len() > 64 * 1024 {
                return Err(HttpError::Malformed);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) if self.buffer.is_empty() => return Ok(None),
                Ok(0) => return Err(HttpError::Broken("closed mid-request".into())),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(HttpError::Broken(e.to_string())),
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..header_end]).into_owned();
        let request = ServerRequest { head, body: Vec::new() };
        let length: usize = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if length > 1024 * 1024 {
            return Err(HttpError::Malformed);
        }
        while self.buffer.len() < header_end + length {
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err(HttpError::Broken("closed mid-body".into())),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(HttpError::Broken(e.to_string())),
            }
        }
        let body = self.buffer[header_end..header_end + length].to_vec();
        self.buffer.drain(..header_end + length);
        Ok(Some(ServerRequest { body, ..request }))
    }

    /// Answers with `status` and a JSON `body`.
    pub async fn respond(&mut self, status: u16, reason: &str, body: &str) -> Result<(), HttpError> {
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(response.as_bytes()).await.map_err(|e| HttpError::Broken(e.to_string()))
    }
}
