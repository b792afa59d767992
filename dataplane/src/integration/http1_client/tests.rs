//! The HTTP/1.1 client against targets on loopback that send exactly the bytes each test
//! gives them, and the sans-IO reader against bytes cut in every way.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wire::read_response;
use super::*;

/// A target on loopback that serves one connection with `serve`; and a connection to it.
async fn connect<F, Fut>(serve: F) -> Box<Http1Connection>
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(stream).await;
    });
    let tcp = TcpStream::connect(address).await.unwrap();
    let open = OpenConnection::count(Arc::new(AtomicU32::new(0)), metrics::gauge!("test_open"));
    Http1Connection::new(UpstreamIo::Plain(tcp), open)
}

/// Reads one request head (and a `Content-Length` body) off `stream`; the text of both.
async fn read_request(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        seen.push(byte[0]);
    }
    let text = String::from_utf8(seen).unwrap();
    let length =
        text.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    text + std::str::from_utf8(&body).unwrap()
}

fn get(path: &str) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::empty());
    *request.uri_mut() = format!("http://target.test{path}").parse().unwrap();
    request.headers_mut().insert(http::header::HOST, HeaderValue::from_static("target.test"));
    request
}

fn answered(result: Result<Response<ResponseStream>, ExchangeFailure>) -> Response<ResponseStream> {
    match result {
        Ok(response) => response,
        Err(ExchangeFailure::Failed(e)) => panic!("failed: {e}"),
        Err(ExchangeFailure::Unanswered { error, .. }) => panic!("unanswered: {error}"),
    }
}

fn failure(result: Result<Response<ResponseStream>, ExchangeFailure>) -> String {
    match result {
        Ok(response) => panic!("answered {}", response.status()),
        Err(ExchangeFailure::Failed(e) | ExchangeFailure::Unanswered { error: e, .. }) => e.to_string(),
    }
}

async fn body_of(response: &mut Response<ResponseStream>) -> Result<(Bytes, Option<HeaderMap>), Http1Error> {
    let collected = response.body_mut().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

#[test]
fn however_the_bytes_are_cut_a_response_reads_the_same() {
    let wires: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nT: v\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncut",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n",
    ];
    for wire in wires {
        let whole = format!("{:?}", read_response(wire, wire.len(), false));
        for piece in 1..wire.len() {
            assert_eq!(format!("{:?}", read_response(wire, piece, false)), whole, "{piece} at a time");
        }
    }
    let chunked = read_response(wires[1], 3, false).unwrap();
    assert_eq!((chunked.body.as_slice(), chunked.reusable), (&b"hello!"[..], true));
    assert_eq!(chunked.trailers.unwrap()["t"], "v");
    let extra = read_response(wires[2], 1, false).unwrap();
    assert_eq!((extra.status, extra.unread, extra.reusable), (StatusCode::OK, 5, false));
    assert!(!read_response(wires[3], 4, false).unwrap().reusable);
    assert!(matches!(read_response(wires[4], 4, false), Err(Http1Error::ClosedMidResponse)));
    assert!(matches!(read_response(wires[5], 4, false), Err(Http1Error::Malformed(_))));
}

#[test]
fn the_fields_of_the_connection_to_the_target_are_read_and_left_out() {
    let names = |headers: &HeaderMap| headers.keys().map(|n| n.as_str().to_string()).collect::<Vec<_>>();
    // Hop-by-hop fields, and the ones `Connection` names, describe this connection only.
    let wire = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
                 X-End: 2\r\nContent-Length: 2\r\nConnection: Close\r\n\r\nok";
    let read = read_response(wire, 5, false).unwrap();
    assert_eq!(names(&read.headers), ["x-end", "content-length"]);
    assert_eq!((read.body.as_slice(), read.reusable), (&b"ok"[..], false), "its second Connection line says close");
    // A field `Connection` names is left out even when the framing reads it.
    let wire = b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nokEXTRA";
    let read = read_response(wire, 3, false).unwrap();
    assert_eq!((read.body.as_slice(), read.unread, read.headers.len()), (&b"ok"[..], 5, 0));
    // Transfer-Encoding delimits the body and goes no further; a Content-Length beside it
    // neither (and the connection is not reused).
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\nX-End: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let read = read_response(wire, 4, false).unwrap();
    assert_eq!(
        (read.body.as_slice(), read.reusable, names(&read.headers)),
        (&b"ok"[..], false, vec!["x-end".to_string()])
    );
    // A coding list that ends in an empty item names no coding last: not chunked, read to
    // the end of the connection.
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let read = read_response(wire, 4, false).unwrap();
    assert_eq!((read.body.as_slice(), read.reusable), (&b"2\r\nok\r\n0\r\n\r\n"[..], false));
    // A 101 keeps its upgrade for the gateway to carry on.
    let wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let read = read_response(wire, 7, false).unwrap();
    assert_eq!(names(&read.headers), ["upgrade", "connection"]);
}

#[tokio::test]
async fn a_length_delimited_response_arrives_in_pieces_and_the_connection_serves_again() {
    let connection = connect(|mut s| async move {
        let first = read_request(&mut s).await;
        assert!(first.starts_with("GET /one?x=1 HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("host: target.test\r\n"), "{first}");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Thing: a\r\nx-thing: b\r\n\r\nhello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b" world").await.unwrap();
        let second = read_request(&mut s).await;
        assert!(second.starts_with("GET /two HTTP/1.1\r\n"), "{second}");
        s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/one?x=1")).await);
    assert_eq!(response.status(), StatusCode::OK);
    let things: Vec<_> = response.headers().get_all("x-thing").iter().collect();
    assert_eq!(things, ["a", "b"]);
    assert_eq!(response.body().size_hint().exact(), Some(11));
    assert_eq!(body_of(&mut response).await.unwrap().0, "hello world");
    let mut connection = response.body_mut().reusable_connection().expect("the connection is reusable");
    // An idle connection holds no buffer (the bytes it read live on in the response only),
    // and is small itself: the socket, the empty buffer, its place in the open count.
    assert_eq!(connection.read.capacity(), 0);
    assert!(std::mem::size_of::<Http1Connection>() <= 96, "{} bytes", std::mem::size_of::<Http1Connection>());
    assert!(connection.is_reusable());
    let mut response = answered(exchange(connection, &mut get("/two")).await);
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.body().is_end_stream());
    assert!(response.body_mut().reusable_connection().is_some());
}

#[tokio::test]
async fn a_chunked_response_sent_byte_by_byte_is_decoded_with_its_trailers() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: abc\r\n\r\n";
        for byte in wire {
            s.write_all(&[*byte]).await.unwrap();
            s.flush().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/")).await);
    let (body, trailers) = body_of(&mut response).await.unwrap();
    assert_eq!(body, "hello world");
    assert_eq!(trailers.unwrap()["checksum"], "abc");
    assert!(response.body_mut().reusable_connection().is_some());
}

#[tokio::test]
async fn informational_answers_are_passed_over() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/")).await);
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("link"));
    assert_eq!(body_of(&mut response).await.unwrap().0, "ok");
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length_says() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let mut request = get("/");
    *request.method_mut() = Method::HEAD;
    let mut response = answered(exchange(connection, &mut request).await);
    assert_eq!(response.headers()["content-length"], "1000");
    assert!(response.body().is_end_stream());
    assert!(response.body_mut().reusable_connection().is_some());
}

#[tokio::test]
async fn a_body_is_framed_by_its_length_and_the_length_of_a_bodyless_post_is_zero() {
    let connection = connect(|mut s| async move {
        let first = read_request(&mut s).await;
        assert!(first.starts_with("POST /a HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("content-length: 7\r\n"), "{first}");
        assert!(!first.contains("transfer-encoding"), "{first}");
        assert!(first.ends_with("\r\n\r\npayload"), "{first}");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        let second = read_request(&mut s).await;
        assert!(second.contains("content-length: 0\r\n"), "{second}");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        let third = read_request(&mut s).await;
        assert!(!third.contains("content-length"), "a GET without a body has no framing: {third}");
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let post = |body: RequestBody| {
        let mut request = get("/a");
        *request.method_mut() = Method::POST;
        request.headers_mut().insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        *request.body_mut() = body;
        request
    };
    let mut response = answered(exchange(connection, &mut post(RequestBody::buffered(Bytes::from("payload")))).await);
    let connection = response.body_mut().reusable_connection().unwrap();
    let mut response = answered(exchange(connection, &mut post(RequestBody::empty())).await);
    let connection = response.body_mut().reusable_connection().unwrap();
    let response = answered(exchange(connection, &mut get("/")).await);
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn conflicting_lengths_are_refused() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    assert!(failure(exchange(connection, &mut get("/")).await).contains("Content-Length values differ"));
}

#[tokio::test]
async fn transfer_encoding_wins_over_a_length_which_is_taken_out_and_the_connection_closes() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/")).await);
    assert!(!response.headers().contains_key("content-length"));
    assert_eq!(body_of(&mut response).await.unwrap().0, "ok");
    assert!(response.body_mut().reusable_connection().is_none());
}

#[tokio::test]
async fn a_body_until_close_is_read_to_the_end_and_the_connection_is_not_kept() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nall of it").await.unwrap();
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/")).await);
    assert_eq!(response.version(), Version::HTTP_10);
    assert_eq!(body_of(&mut response).await.unwrap().0, "all of it");
    assert!(response.body_mut().reusable_connection().is_none());
}

#[tokio::test]
async fn a_response_cut_short_fails_its_body() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort").await.unwrap();
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/")).await);
    let error = body_of(&mut response).await.unwrap_err();
    assert!(matches!(error, Http1Error::ClosedMidResponse), "{error}");
    assert!(response.body_mut().reusable_connection().is_none());
}

#[tokio::test]
async fn malformed_chunks_fail_the_body() {
    for wire in
        [&b"2\r\nokX\r\n0\r\n\r\n"[..], b"zz\r\nok\r\n0\r\n\r\n", b";ext\r\nok\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n"]
    {
        let connection = connect(move |mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
            s.write_all(wire).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let mut response = answered(exchange(connection, &mut get("/")).await);
        let error = body_of(&mut response).await.unwrap_err();
        assert!(matches!(error, Http1Error::Malformed(_)), "{}: {error}", String::from_utf8_lossy(wire));
    }
}

#[tokio::test]
async fn an_endless_head_is_refused_at_its_limit() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let field = format!("x-filler: {}\r\n", "a".repeat(1000));
        for _ in 0..80 {
            if s.write_all(field.as_bytes()).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    assert!(failure(exchange(connection, &mut get("/")).await).contains("over 64 KiB"));
}

#[tokio::test]
async fn a_connection_closed_before_an_answer_leaves_a_bodyless_request_whole() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
    })
    .await;
    let mut request = get("/again");
    match exchange(connection, &mut request).await {
        Err(ExchangeFailure::Unanswered { resendable: true, written: true, error }) => {
            assert_eq!(request.uri().path(), "/again");
            assert!(matches!(error, Http1Error::ClosedBeforeAnswer), "{error}");
        }
        other => panic!("expected the request to be resendable, got {:?}", other.map(|r| r.status())),
    }
}

#[tokio::test]
async fn a_request_whose_body_went_out_is_not_resendable() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
    })
    .await;
    let mut request = get("/form");
    *request.method_mut() = Method::POST;
    *request.body_mut() = RequestBody::buffered(Bytes::from("payload"));
    match exchange(connection, &mut request).await {
        Err(ExchangeFailure::Unanswered { resendable: false, .. }) => {}
        other => panic!("expected a request that cannot be sent again, got {:?}", other.map(|r| r.status())),
    }
}

#[tokio::test]
async fn an_idle_connection_the_target_closed_is_not_reused() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        drop(s);
        let _ = closed_tx.send(());
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/")).await);
    let mut connection = response.body_mut().reusable_connection().unwrap();
    closed_rx.await.unwrap();
    // The runtime learns of the close once its driver has run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!connection.is_reusable());
}

#[tokio::test]
async fn an_upgrade_hands_over_the_socket_with_the_bytes_past_the_head() {
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nfirst")
            .await
            .unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        s.write_all(&echo).await.unwrap();
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/socket")).await);
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.body_mut().reusable_connection().is_none());
    let mut upstream = response.body_mut().upgraded().expect("an upgraded connection").socket;
    let mut first = [0u8; 5];
    upstream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"first");
    upstream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    upstream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

/// A body of `n` bytes that tells where each byte was: a cut or repeated piece shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn large_bodies_arrive_whole_in_either_framing() {
    const LENGTH: usize = (1 << 20) + 13;
    let connection = connect(|mut s| async move {
        read_request(&mut s).await;
        s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {LENGTH}\r\n\r\n").as_bytes()).await.unwrap();
        s.write_all(&pattern(LENGTH)).await.unwrap();
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
        let body = pattern(LENGTH);
        let (mut at, mut size) = (0, 1);
        while at < body.len() {
            let piece = &body[at..(at + size).min(body.len())];
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
            s.write_all(piece).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
            at += piece.len();
            size = size * 3 % 70_001 + 1;
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let mut response = answered(exchange(connection, &mut get("/long")).await);
    assert_eq!(body_of(&mut response).await.unwrap().0, pattern(LENGTH));
    let connection = response.body_mut().reusable_connection().expect("reusable after a long body");
    let mut response = answered(exchange(connection, &mut get("/chunked")).await);
    assert_eq!(body_of(&mut response).await.unwrap().0, pattern(LENGTH));
    assert!(response.body_mut().reusable_connection().is_some());
}
