//! The phase order of the request path, driven over real loopback sockets: a client, the
//! pipeline behind hyper's server, and an upstream that records what reached it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, request, response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{ConnInfo, Pipeline};
use crate::body::ResponseBody;
use crate::config::table::{RouteTarget, RoutingTable, StageRoutes, StageTarget};
use crate::integration::upstreams::{TargetSpec, UpstreamSpec, Upstreams};
use crate::integration::uri::UpstreamTemplate;
use crate::integration::{Integration, ProxyIntegration};
use crate::limits::limiter::Limiter;
use crate::observe::access_log::AccessLog;
use crate::observe::completion::RouteObserver;
use crate::rejection::Rejection;
use crate::router::{Router, parse_route_key};
use crate::stages::{BodyNeed, Chain, Exchange, Flow, Phases, Services, Stage, Step, Stop};

type Journal = Arc<Mutex<Vec<String>>>;

/// A stage that writes every phase it sees into the journal and, if told to, stops the
/// request at its head or reads the body.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    journal: Journal,
    stop: Option<fn() -> Stop>,
    reads_body: bool,
}

impl Recorder {
    fn new(name: &'static str, journal: &Journal) -> Self {
        Recorder { name, journal: journal.clone(), stop: None, reads_body: false }
    }

    fn note(&self, what: String) {
        self.journal.lock().unwrap().push(format!("{} {what}", self.name));
    }
}

impl Stage for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn phases(&self) -> Phases {
        let all = Phases::REQUEST_HEAD | Phases::UPSTREAM_REQUEST | Phases::RESPONSE_HEAD | Phases::COMPLETE;
        if self.reads_body { all | Phases::REQUEST_BODY } else { all }
    }

    fn request_head<'a>(&'a self, _: &'a mut request::Parts, _: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        self.note("request head".into());
        match self.stop {
            // Stopping after a wait exercises the waiting path.
            Some(stop) => Step::Waiting(Box::pin(async move {
                tokio::task::yield_now().await;
                Flow::Stop(stop())
            })),
            None => Step::Done(Flow::Continue),
        }
    }

    fn body_need(&self, _: &request::Parts) -> Option<BodyNeed> {
        self.reads_body.then_some(BodyNeed::Whole(1024))
    }

    fn request_body<'a>(
        &'a self,
        _: &'a request::Parts,
        body: &'a Bytes,
        _: &'a mut Exchange,
        _: &'a Services<'a>,
    ) -> Step<'a> {
        self.note(format!("request body {}", String::from_utf8_lossy(body)));
        Step::Done(Flow::Continue)
    }

    fn upstream_request(&self, head: &mut request::Parts, _: &mut Exchange) {
        self.note("upstream request".into());
        head.headers.append("x-stage", http::HeaderValue::from_static(self.name));
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        self.note(format!("response head {}", head.status.as_u16()));
        assert_eq!(exchange.status, Some(head.status));
        head.headers.append("x-seen-by", http::HeaderValue::from_static(self.name));
    }

    fn complete(&self, _: &mut Exchange) {
        self.note("complete".into());
    }
}

/// An upstream that journals each request it gets (with its `x-stage` headers and body),
/// and reports the moment the first body chunk arrived.
async fn upstream(journal: Journal, first_chunk: mpsc::UnboundedSender<()>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let journal = journal.clone();
            let first_chunk = first_chunk.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let journal = journal.clone();
                let first_chunk = first_chunk.clone();
                async move {
                    let stages: Vec<_> =
                        request.headers().get_all("x-stage").iter().map(|v| v.to_str().unwrap().to_string()).collect();
                    let mut body = request.into_body();
                    let mut received = Vec::new();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data() {
                            if received.is_empty() {
                                let _ = first_chunk.send(());
                            }
                            received.extend_from_slice(&data);
                        }
                    }
                    journal.lock().unwrap().push(format!(
                        "upstream {} [{}]",
                        String::from_utf8_lossy(&received),
                        stages.join(",")
                    ));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"upstream says hi"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A gateway serving `POST /s/thing` through `stages`, proxied to `backend`.
async fn gateway(backend: std::net::SocketAddr, stages: Vec<Arc<dyn Stage>>) -> std::net::SocketAddr {
    let (method, pattern) = parse_route_key("POST /thing").unwrap();
    let mut router = Router::default();
    let target = RouteTarget {
        integration: Integration::Proxy(Box::new(ProxyIntegration::new(
            UpstreamTemplate::compile(&format!("http://{backend}/thing"), &[]).unwrap(),
            Duration::from_secs(5),
            None,
            UpstreamSpec {
                scheme: http::uri::Scheme::HTTP,
                targets: vec![TargetSpec { authority: backend.to_string().parse().unwrap(), weight: 1, region: None }],
                balance: Default::default(),
                settings: Default::default(),
                http2: false,
                server_name: None,
                tls: None,
                discovery: None,
                check: None,
            },
        ))),
        chain: Arc::new(Chain::new(stages)),
        observer: Arc::new(RouteObserver::new("a", "s", "POST /thing", "", None)),
        allow_encoded_slashes: false,
        answers_preflight: false,
        keeps_path_parameters: false,
        gateway_responses: None,
    };
    router.insert(method, &pattern, Default::default(), target).unwrap();
    let routes = StageRoutes {
        api: "a".into(),
        stage: "s".into(),
        router,
        unrouted: Arc::new(RouteObserver::new("a", "s", "", "", None)),
        default_endpoint: true,
        gateway_responses: None,
        keeps_responses: false,
    };
    let table = RoutingTable {
        revision: 1,
        domains: Default::default(),
        apis: [(
            "a".to_string(),
            [("s".to_string(), Arc::new(StageTarget::new(Arc::new(routes))))].into_iter().collect(),
        )]
        .into_iter()
        .collect(),
        unrouted: Arc::new(RouteObserver::new("", "", "", "", None)),
        keys: Default::default(),
        credentials: Default::default(),
        keeps_responses: false,
    };
    let limits = crate::config::parse_str("{}", "test", std::path::Path::new(".")).unwrap().limits;
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(table)),
        &limits,
        AccessLog::off(),
        Arc::new(Limiter::new(0, 1000)),
        Arc::new(Upstreams::new()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, client) = listener.accept().await.unwrap();
            let pipeline = pipeline.clone();
            let conn = Arc::new(ConnInfo::new(client, false));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let pipeline = pipeline.clone();
                let conn = conn.clone();
                async move {
                    Ok::<_, Infallible>(pipeline.handle(request.map(crate::incoming::Incoming::from), &conn, ()).await)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A journal, an upstream that writes to it (and says when a body's first chunk arrived),
/// and a gateway in front of it with the stages `stages` makes.
async fn staged(
    stages: impl FnOnce(&Journal) -> Vec<Arc<dyn Stage>>,
) -> (Journal, std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    let journal = Journal::default();
    let (first_chunk, first_chunk_seen) = mpsc::unbounded_channel();
    let backend = upstream(journal.clone(), first_chunk).await;
    let stages = stages(&journal);
    (journal.clone(), gateway(backend, stages).await, first_chunk_seen)
}

type ChunkSender = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// Sends `POST /s/thing` whose body is whatever goes into the returned sender.
async fn post(
    gateway: std::net::SocketAddr,
) -> (ChunkSender, tokio::task::JoinHandle<(StatusCode, Vec<String>, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let body = StreamBody::new(tokio_stream_from(rx));
    let stream = TcpStream::connect(gateway).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::post("/s/thing").header("host", "a.example").body(body).unwrap();
    let response = tokio::spawn(async move {
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let seen = response.headers().get_all("x-seen-by").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, seen, String::from_utf8_lossy(&body).into_owned())
    });
    (tx, response)
}

/// A stream over an unbounded receiver (what `tokio-stream` would give).
fn tokio_stream_from<T>(mut rx: mpsc::UnboundedReceiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn chunk(text: &'static str) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from_static(text.as_bytes())))
}

/// Waits until the journal has `n` entries (completion runs as the body ends).
async fn journal_of(journal: &Journal, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if journal.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    journal.lock().unwrap().clone()
}

#[tokio::test]
async fn phases_run_in_order_and_response_phases_in_reverse() {
    let (journal, gateway, _) =
        staged(|journal| vec![Arc::new(Recorder::new("outer", journal)), Arc::new(Recorder::new("inner", journal))])
            .await;
    let (body, response) = post(gateway).await;
    body.send(chunk("hello")).unwrap();
    drop(body);
    let (status, seen, text) = response.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "upstream says hi");
    assert_eq!(seen, ["inner", "outer"]);
    let journal = journal_of(&journal, 9).await;
    assert_eq!(
        journal,
        [
            "outer request head",
            "inner request head",
            "outer upstream request",
            "inner upstream request",
            "upstream hello [outer,inner]",
            "inner response head 200",
            "outer response head 200",
            "inner complete",
            "outer complete",
        ]
    );
}

#[tokio::test]
async fn a_rejection_skips_the_integration_and_still_runs_the_response_phases() {
    let refuse = || Stop::Reject(Rejection::new(StatusCode::UNAUTHORIZED, "no entry"));
    let (journal, gateway, _) = staged(|journal| {
        vec![
            Arc::new(Recorder::new("outer", journal)),
            Arc::new(Recorder { stop: Some(refuse), ..Recorder::new("guard", journal) }),
            Arc::new(Recorder::new("after", journal)),
        ]
    })
    .await;
    let (body, response) = post(gateway).await;
    drop(body);
    let (status, seen, text) = response.await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("no entry"), "{text}");
    // Every stage of the route sees the response, the one after the guard included.
    assert_eq!(seen, ["after", "guard", "outer"]);
    let journal = journal_of(&journal, 8).await;
    assert!(!journal.iter().any(|j| j.starts_with("upstream") || j.contains("upstream request")), "{journal:?}");
    assert!(!journal.contains(&"after request head".to_string()), "{journal:?}");
    assert!(journal.contains(&"outer complete".to_string()), "{journal:?}");
}

#[tokio::test]
async fn an_answer_is_the_response_and_the_upstream_never_hears_of_it() {
    let answer = || {
        let mut response = Response::new(ResponseBody::full("from the stage"));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Stop::Answer(response)
    };
    let (journal, gateway, _) =
        staged(|journal| vec![Arc::new(Recorder { stop: Some(answer), ..Recorder::new("answerer", journal) })]).await;
    let (body, response) = post(gateway).await;
    drop(body);
    let (status, seen, _) = response.await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(seen, ["answerer"]);
    let journal = journal_of(&journal, 3).await;
    assert_eq!(journal, ["answerer request head", "answerer response head 204", "answerer complete"]);
}

#[tokio::test]
async fn a_body_stage_reads_the_body_and_the_upstream_gets_it_whole() {
    let (journal, gateway, _) =
        staged(|journal| vec![Arc::new(Recorder { reads_body: true, ..Recorder::new("reader", journal) })]).await;
    let (body, response) = post(gateway).await;
    body.send(chunk("part one, ")).unwrap();
    body.send(chunk("part two")).unwrap();
    drop(body);
    assert_eq!(response.await.unwrap().0, StatusCode::OK);
    let journal = journal_of(&journal, 4).await;
    assert_eq!(journal[1], "reader request body part one, part two");
    assert!(journal.contains(&"upstream part one, part two [reader]".to_string()), "{journal:?}");
}

#[tokio::test]
async fn a_body_over_the_stage_limit_is_refused_before_the_upstream() {
    let (journal, gateway, _) =
        staged(|journal| vec![Arc::new(Recorder { reads_body: true, ..Recorder::new("reader", journal) })]).await;
    let (body, response) = post(gateway).await;
    body.send(Ok(Frame::data(Bytes::from(vec![b'x'; 2000])))).unwrap();
    drop(body);
    assert_eq!(response.await.unwrap().0, StatusCode::PAYLOAD_TOO_LARGE);
    let journal = journal_of(&journal, 3).await;
    assert!(!journal.iter().any(|j| j.starts_with("upstream")), "{journal:?}");
}

#[tokio::test]
async fn a_route_without_body_stages_streams_the_body() {
    let (journal, gateway, mut first_rx) = staged(|journal| vec![Arc::new(Recorder::new("plain", journal))]).await;
    let (body, response) = post(gateway).await;
    body.send(chunk("first ")).unwrap();
    // The upstream has the first chunk while the client still holds the last one back.
    tokio::time::timeout(Duration::from_secs(5), first_rx.recv())
        .await
        .expect("the first chunk reached the upstream before the body ended");
    body.send(chunk("last")).unwrap();
    drop(body);
    assert_eq!(response.await.unwrap().0, StatusCode::OK);
    let journal = journal_of(&journal, 5).await;
    assert!(journal.contains(&"upstream first last [plain]".to_string()), "{journal:?}");
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_before_sending_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (journal, gateway, _) = staged(|journal| vec![Arc::new(Recorder::new("plain", journal))]).await;
    let mut client = TcpStream::connect(gateway).await.unwrap();
    client
        .write_all(b"POST /s/thing HTTP/1.1\r\nhost: a.example\r\ncontent-length: 9\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The gateway asks for the body (the upstream's own 100 is not passed on twice).
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.expect("a 100").unwrap();
        assert!(n > 0, "closed before the 100");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", String::from_utf8_lossy(&seen));
    client.write_all(b"the thing").await.unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("upstream says hi") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    let journal = journal_of(&journal, 5).await;
    assert!(journal.contains(&"upstream the thing [plain]".to_string()), "{journal:?}");
}
