//! The server over real sockets: a client writes raw bytes and reads what comes back.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use super::*;
use crate::body::ResponseBody;
use crate::gateway::conns::ConnectionTable;

const TEST_SETTINGS: Settings = Settings {
    head: HeadLimits { max_bytes: 32 * 1024, max_fields: 100 },
    header_read_timeout: Duration::from_secs(10),
};

/// What an idle HTTP/1.1 connection holds is mostly this future, for as long as the
/// client keeps the connection: it must stay small. (It was 1,072 bytes while it kept a
/// second copy of its arguments and the last period's parts; the exchange is boxed.)
#[tokio::test]
async fn an_idle_connections_future_stays_small() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let table = ConnectionTable::new(10, 10);
    let admitted = table.admit(client.local_addr().unwrap().ip()).await.unwrap();
    let handler: Handler = Arc::new(|_| {
        Box::pin(async { http::Response::new(ObservedBody::unobserved(crate::body::ResponseBody::Empty)) })
    });
    let settings = TEST_SETTINGS;
    let socket = IdleTimeout::new(client, Duration::from_secs(5));
    let served = serve(&settings, socket, Bytes::new(), handler, &admitted.slot);
    let size = std::mem::size_of_val(&served);
    assert!(size <= 400, "an HTTP/1.1 connection's future is {size} bytes");
}

#[tokio::test]
async fn a_parked_connection_closes_when_the_table_asks() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let table = ConnectionTable::new(10, 10);
    let admitted = table.admit(client.local_addr().unwrap().ip()).await.unwrap();
    let slot = admitted.slot.clone();
    let served = tokio::spawn(async move {
        let handler: Handler = Arc::new(|_| {
            Box::pin(async { http::Response::new(ObservedBody::unobserved(crate::body::ResponseBody::Empty)) })
        });
        let settings = TEST_SETTINGS;
        let socket = IdleTimeout::new(server, Duration::from_secs(30));
        serve(&settings, socket, Bytes::new(), handler, &slot).await;
    });
    client.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 512];
    let n = client.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    // Idle: parked, holding the socket and nothing else.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!served.is_finished());
    table.close_all();
    tokio::time::timeout(Duration::from_secs(2), served).await.expect("the parked connection closed").unwrap();
    assert_eq!(client.read(&mut answer).await.unwrap(), 0, "the client sees the close");
    drop(admitted);
}

/// A server on a loopback port whose handler answers with the method, the body it read
/// (or `unread` when the path is `/unread`), and the trailers' names; counts its calls.
async fn server(settings: Settings) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let table = ConnectionTable::new(100, 0);
    let settings: &'static Settings = Box::leak(Box::new(settings));
    tokio::spawn(async move {
        loop {
            let (stream, client) = listener.accept().await.unwrap();
            let admitted = table.admit(client.ip()).await.unwrap();
            let calls = counted.clone();
            let handler: Handler = Arc::new(move |request: Request<Incoming>| {
                calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    let (parts, body) = request.into_parts();
                    let text = if parts.uri.path() == "/unread" {
                        "unread".to_string()
                    } else {
                        match body.collect().await {
                            Ok(collected) => {
                                let trailers = collected
                                    .trailers()
                                    .map(|t| t.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>().join(","));
                                let bytes = collected.to_bytes();
                                format!(
                                    "{} {} {}",
                                    parts.method,
                                    String::from_utf8_lossy(&bytes),
                                    trailers.unwrap_or_default()
                                )
                            }
                            Err(e) => format!("body error: {e}"),
                        }
                    };
                    http::Response::new(ObservedBody::unobserved(ResponseBody::full(text)))
                })
            });
            tokio::spawn(async move {
                let socket = IdleTimeout::new(stream, Duration::from_secs(10));
                serve(settings, socket, Bytes::new(), handler, &admitted.slot).await;
            });
        }
    });
    (addr, calls)
}

/// Serves one connection on a loopback port with `handler`; the task ends with it.
async fn one_connection(handler: Handler) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let table = ConnectionTable::new(10, 0);
        let (stream, client) = listener.accept().await.unwrap();
        let admitted = table.admit(client.ip()).await.unwrap();
        let socket = IdleTimeout::new(stream, Duration::from_secs(10));
        serve(&TEST_SETTINGS, socket, Bytes::new(), handler, &admitted.slot).await;
    });
    (addr, served)
}

/// Writes `request` and reads until the server closes (or 2 s pass).
async fn exchange_raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, calls) = server(TEST_SETTINGS).await;
    let requests = "POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
                    PUT /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\nx-sum: 1\r\n\r\n\
                    GET /c HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let answer = exchange_raw(addr, requests.as_bytes()).await;
    let bodies: Vec<&str> =
        answer.split("\r\n\r\n").skip(1).map(|rest| rest.split("HTTP/1.1").next().unwrap()).collect();
    assert_eq!(bodies, ["POST abc ", "PUT def x-sum", "GET  "], "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    assert!(answer.ends_with("GET  ") && answer.contains("connection: close"), "{answer}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Framing two parsers could read differently is refused before the request path sees it,
/// and the connection closes (what follows cannot be trusted to be a request).
#[tokio::test]
async fn ambiguous_framing_is_refused_and_never_reaches_the_handler() {
    let (addr, calls) = server(TEST_SETTINGS).await;
    let smuggled = "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n\
                    0\r\n\r\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n";
    let answer = exchange_raw(addr, smuggled.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    let gzip = exchange_raw(addr, b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n").await;
    assert!(gzip.starts_with("HTTP/1.1 501 "), "{gzip}");
    let lengths =
        exchange_raw(addr, b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab").await;
    assert!(lengths.starts_with("HTTP/1.1 400 "), "{lengths}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_when_the_body_is_read() {
    let (addr, _) = server(TEST_SETTINGS).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"PUT / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n").await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut interim)).await.unwrap().unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"hello").await.unwrap();
    let mut answer = [0u8; 512];
    let n = client.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("PUT hello "), "{answer}");
    // Answered without reading the body: no 100, and the connection closes after the answer.
    let unread =
        exchange_raw(addr, b"PUT /unread HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
            .await;
    assert!(unread.starts_with("HTTP/1.1 200 OK") && unread.contains("connection: close"), "{unread}");
    assert!(unread.ends_with("unread"), "{unread}");
}

#[tokio::test]
async fn a_body_left_unread_closes_the_connection_after_the_answer() {
    let (addr, calls) = server(TEST_SETTINGS).await;
    let answer = exchange_raw(
        addr,
        b"POST /unread HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n0123456789GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert!(answer.contains("connection: close") && answer.ends_with("unread"), "{answer}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_the_connection() {
    let (addr, _) = server(TEST_SETTINGS).await;
    let closed = exchange_raw(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(closed.starts_with("HTTP/1.1 200 OK") && closed.contains("connection: close"), "{closed}");
    let kept = exchange_raw(addr, b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(kept.matches("HTTP/1.1 200 OK").count(), 2, "{kept}");
    assert!(kept.contains("connection: keep-alive"), "{kept}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_to_the_handler() {
    let (addr, _) = server(TEST_SETTINGS).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab").await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("body error") && answer.contains("connection: close"), "{answer}");
    let malformed = exchange_raw(addr, b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
    assert!(malformed.contains("body error") && malformed.contains("connection: close"), "{malformed}");
}

#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_gets_408() {
    let slow = Settings { header_read_timeout: Duration::from_millis(300), ..TEST_SETTINGS };
    let (addr, calls) = server(slow).await;
    let started = std::time::Instant::now();
    let answer = exchange_raw(addr, b"GET / HTTP/1.1\r\nhost: a").await;
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A body kept past its request (a task that outlived the request holds it, its last frame
/// read but not its end) reads nothing of the next request's body.
#[tokio::test]
async fn a_body_held_past_its_request_reads_nothing_of_the_next() {
    let kept: Arc<std::sync::Mutex<Option<Incoming>>> = Arc::default();
    let handler: Handler = Arc::new(move |request: Request<Incoming>| {
        let kept = kept.clone();
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            let text = if parts.uri.path() == "/keep" {
                // The whole body in one frame, and the body kept without reading its end.
                let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
                *kept.lock().unwrap() = Some(body);
                String::from_utf8_lossy(&frame).into_owned()
            } else {
                let stale = kept.lock().unwrap().take().unwrap();
                let stale = stale.collect().await.map(|c| c.to_bytes().len());
                let own = body.collect().await.unwrap().to_bytes();
                format!("stale {stale:?}, own {}", String::from_utf8_lossy(&own))
            };
            http::Response::new(ObservedBody::unobserved(ResponseBody::full(text)))
        })
    });
    let (addr, server) = one_connection(handler).await;
    let answer = exchange_raw(
        addr,
        b"POST /keep HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcPOST /next HTTP/1.1\r\ncontent-length: 3\r\nconnection: close\r\n\r\ndef",
    )
    .await;
    assert!(answer.ends_with("stale Ok(0), own def"), "{answer}");
    server.await.unwrap();
}

/// A response body that ends before the length its head announced closes the connection:
/// the client must not read the next response from the wrong place.
#[tokio::test]
async fn a_response_shorter_than_its_length_closes_the_connection() {
    struct Short(bool);
    impl http_body::Body for Short {
        type Data = Bytes;
        type Error = crate::framing::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let first = !std::mem::replace(&mut self.0, true);
            Poll::Ready(first.then(|| Ok(http_body::Frame::data(Bytes::from_static(b"abc")))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(10)
        }
    }
    let handler: Handler = Arc::new(|_| {
        Box::pin(async { http::Response::new(ObservedBody::unobserved(ResponseBody::Wrapped(Box::pin(Short(false))))) })
    });
    let (addr, _served) = one_connection(handler).await;
    let answer = exchange_raw(addr, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n").await;
    assert!(answer.contains("content-length: 10") && answer.ends_with("\r\n\r\nabc"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

/// A client that closes its connection while its request is served ends the serving: the
/// request path's future (an upstream call, say) is dropped, not run to its end for nobody.
#[tokio::test]
async fn a_client_that_closes_mid_request_ends_its_serving() {
    struct Dropped(Option<oneshot::Sender<()>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let (dropped_tx, dropped) = oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let handler: Handler = Arc::new(move |request: Request<Incoming>| {
        let guard = Dropped(dropped_tx.lock().unwrap().take());
        Box::pin(async move {
            // Reads the body, then waits for ever (an upstream that never answers).
            let _ = request.into_body().collect().await;
            let _guard = guard;
            std::future::pending::<()>().await;
            unreachable!()
        })
    });
    let (addr, _served) = one_connection(handler).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(2), dropped).await.expect("the request's future was dropped").unwrap();
}
