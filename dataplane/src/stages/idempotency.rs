//! The idempotency stage (`type: rest`): a request with an `Idempotency-Key` is delivered
//! once; a retry gets the first attempt's response back without reaching the upstream.
//!
//! After the body is read (and validated), the stage claims the key in the node's
//! [`IdempotencyRecords`] with the request's fingerprint (method, path, query, content type
//! and body). On a cluster member the claim is a Raft write: it is committed by a quorum
//! before the request goes upstream, so a duplicate arriving at any node, in any region, finds
//! it. What the claim answers decides the request:
//!
//! | the key is | the request gets |
//! | --- | --- |
//! | new | delivered; its response is recorded (status, headers, body up to the route's limit) |
//! | recorded, same fingerprint | the recorded response, with `Idempotent-Replayed: true` |
//! | recorded, another fingerprint | 422 |
//! | claimed by an attempt still in flight | 409 with `Retry-After`, or a wait for its response (`in_flight: wait`) |
//! | claimed by an attempt whose node never recorded an outcome | 409: it may or may not have been delivered |
//! | not claimable (no quorum in time, the stage's records full) | 503, and the request is not delivered |
//!
//! A retry whose key this node has already applied as answered (or as another payload's) is
//! answered from there without a write, so replays need no quorum. A request that never left
//! the gateway (no upstream connection) gives its claim back, so its retry is delivered. The
//! response is recorded in the background once it has been sent, retried while the cluster
//! has no quorum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, response};
use meridian_idempotency::{IdempotencyAnswer, IdempotencyCommand, RecordState, StoredResponse};
use metrics::Counter;

use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step, Stop};
use crate::authorizers::AuthorizerContext;
use crate::body::{BoundedCopy, ResponseBody};
use crate::idempotency::{IdempotencyRecords, RecordError, now_ms};
use crate::rejection::Rejection;

/// The request header that carries the key (IETF draft `Idempotency-Key`).
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a replayed response.
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key a client may send.
pub const MAX_KEY_BYTES: usize = 255;
/// How long an outcome (or a claim given back) is retried while the cluster has no quorum.
const SETTLE_FOR: Duration = Duration::from_secs(120);
/// How often a waiting retry asks again whether the first attempt has been recorded.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// What a retry gets while the first attempt with its key is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// 409 with `Retry-After`.
    Reject,
    /// Wait (up to the first attempt's lease) for its response, then replay it.
    Wait,
}

/// Requests by what the stage did with them.
#[derive(Debug, Clone)]
pub struct IdempotencyMetrics {
    pub delivered: Counter,
    pub replayed: Counter,
    pub conflict: Counter,
    pub mismatch: Counter,
    pub unavailable: Counter,
}

impl IdempotencyMetrics {
    pub fn new(api: &str, stage: &str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("meridian_idempotency_requests_total", "api" => api.to_string(), "stage" => stage.to_string(), "outcome" => outcome);
        IdempotencyMetrics {
            delivered: counter("delivered"),
            replayed: counter("replayed"),
            conflict: counter("conflict"),
            mismatch: counter("mismatch"),
            unavailable: counter("unavailable"),
        }
    }
}

/// One route's idempotency on one stage.
#[derive(Debug)]
pub struct IdempotentDelivery {
    /// Where keys are unique and counted: `api/stage`.
    pub scope: Arc<str>,
    /// The route (`POST /payments`): the same key on two routes is two keys.
    pub route: Arc<str>,
    /// Requests without a key are refused (400) instead of delivered as usual.
    pub required: bool,
    /// How long a record is kept.
    pub ttl: Duration,
    /// How long a claim is its node's to record an outcome for (the integration's timeout,
    /// with its retries, and a margin).
    pub lease: Duration,
    pub in_flight: InFlight,
    /// The largest response body kept for replay.
    pub max_response_bytes: usize,
    /// The most records the stage holds.
    pub max_records: u64,
    /// How long a claim waits for the cluster to commit it.
    pub commit_timeout: Duration,
    pub metrics: IdempotencyMetrics,
}

/// The request's key, from its head to its body.
#[derive(Debug, Clone)]
struct Keyed(String);

/// A claim this request holds: where to record its outcome, and the response copy.
struct Claim {
    records: Arc<IdempotencyRecords>,
    command_key: String,
    fingerprint: Vec<u8>,
    node: crate::NodeId,
    /// This attempt's number: only it settles the claim.
    attempt: u64,
    copy: Option<(StatusCode, HeaderMap, BoundedCopy)>,
}

/// The key a request carries: `Ok(None)` without one, `Err` for a malformed one.
fn client_key(head: &Parts) -> Result<Option<String>, Rejection> {
    let mut values = head.headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let bad = |why: &str| {
        Rejection::new(StatusCode::BAD_REQUEST, format!("the Idempotency-Key header {why}"))
            .with_reason("malformed idempotency key")
    };
    if values.next().is_some() {
        return Err(bad("appears more than once"));
    }
    let raw = value.to_str().map_err(|_| bad("is not visible ASCII"))?.trim();
    // The IETF draft's form is a quoted string; the bare form is common too.
    let key = raw.strip_prefix('"').and_then(|k| k.strip_suffix('"')).unwrap_or(raw);
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(bad(&format!("must be 1 to {MAX_KEY_BYTES} characters")));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("may hold only visible ASCII characters"));
    }
    Ok(Some(key.to_string()))
}

/// What makes two requests with one key the same request.
fn fingerprint(head: &Parts, body: &[u8]) -> Vec<u8> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        head.method.as_str().as_bytes(),
        head.uri.path().as_bytes(),
        head.uri.query().unwrap_or("").as_bytes(),
        head.headers.get(CONTENT_TYPE).map_or(&b""[..], HeaderValue::as_bytes),
    ] {
        digest.update(&(part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest.update(body);
    digest.finish().as_ref().to_vec()
}

/// Who the key belongs to: the authorizer's principal, else the API key, else nobody.
fn principal(head: &Parts, exchange: &Exchange) -> String {
    if let Some(context) = exchange.state.get::<AuthorizerContext>()
        && let Some(p) = context.values.get("sub").or_else(|| context.values.get("principalId"))
    {
        return format!("{} {p}", context.authorizer);
    }
    match head.headers.get("x-api-key") {
        Some(key) => format!("key {}", &crate::digest::sha256_hex(key.as_bytes())[..32]),
        None => String::new(),
    }
}

/// A recorded response, replayed.
fn replay(stored: &StoredResponse) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(stored.body.clone())));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    headers.insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

fn mismatch() -> Rejection {
    Rejection::new(StatusCode::UNPROCESSABLE_ENTITY, "this Idempotency-Key was used for a different request")
        .with_reason("idempotency key reused")
}

fn conflict(message: &'static str, reason: &'static str) -> Rejection {
    Rejection::new(StatusCode::CONFLICT, message).with_reason(reason)
}

impl IdempotentDelivery {
    fn command_key(&self, head: &Parts, exchange: &Exchange, key: &str) -> String {
        format!("{}\n{}\n{key}", self.route, principal(head, exchange))
    }

    /// Claims the key, waiting for a first attempt in flight when the route says so.
    async fn claim(
        &self,
        records: Arc<IdempotencyRecords>,
        command_key: String,
        fingerprint: Vec<u8>,
        exchange: &mut Exchange,
    ) -> Flow {
        // What this node has applied is committed: a recorded response is replayed, and
        // another payload refused, without a write (and without a quorum).
        // (A record past its time is left to the claim, which expires it.)
        if let Some(record) = records.applied(&self.scope, &command_key).await.filter(|r| r.expires_at_ms > now_ms()) {
            if record.fingerprint != fingerprint {
                self.metrics.mismatch.increment(1);
                return mismatch().into();
            }
            if let RecordState::Completed(stored) = &record.state {
                self.metrics.replayed.increment(1);
                return Flow::Stop(Stop::Answer(replay(stored)));
            }
        }
        let node = records.node_id();
        let started = Instant::now();
        loop {
            let attempt = crate::fast_random::next_u64();
            let command = IdempotencyCommand::Claim {
                scope: self.scope.to_string(),
                key: command_key.clone(),
                fingerprint: fingerprint.clone(),
                node,
                attempt,
                now_ms: now_ms(),
                lease_ms: self.lease.as_millis() as u64,
                ttl_ms: self.ttl.as_millis() as u64,
                max_records: self.max_records,
            };
            let answer = match records.submit(command, self.commit_timeout).await {
                Ok(answer) => answer,
                Err(e) => {
                    self.metrics.unavailable.increment(1);
                    if matches!(e, RecordError::Timeout(_)) {
                        // The claim may still commit after this: give it back, so that a
                        // retry is not refused for a request that was never delivered.
                        let claim = Claim { records, command_key, fingerprint, node, attempt, copy: None };
                        self.settle(claim, None);
                    }
                    tracing::warn!(error = %e, request_id = ?exchange.request_id, "an idempotency key could not be claimed; the request was not delivered");
                    let message = match e {
                        RecordError::Timeout(_) => {
                            "the cluster could not record the idempotency key in time; the request was not delivered"
                        }
                        RecordError::Unavailable(_) => {
                            "the cluster could not record the idempotency key; the request was not delivered"
                        }
                    };
                    return Rejection::new(StatusCode::SERVICE_UNAVAILABLE, message)
                        .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
                        .with_reason("idempotency: no quorum")
                        .into();
                }
            };
            match answer {
                IdempotencyAnswer::Claimed => {
                    self.metrics.delivered.increment(1);
                    let claim = Claim { records, command_key, fingerprint, node, attempt, copy: None };
                    exchange.state.insert(claim);
                    return Flow::Continue;
                }
                IdempotencyAnswer::Completed(stored) => {
                    self.metrics.replayed.increment(1);
                    return Flow::Stop(Stop::Answer(replay(&stored)));
                }
                IdempotencyAnswer::Mismatch => {
                    self.metrics.mismatch.increment(1);
                    return mismatch().into();
                }
                IdempotencyAnswer::InFlight { lease_over: true, .. } => {
                    self.metrics.conflict.increment(1);
                    return conflict(
                        "the first request with this Idempotency-Key may or may not have been delivered: the node that sent it recorded no outcome",
                        "idempotency: outcome unknown",
                    )
                    .into();
                }
                IdempotencyAnswer::InFlight { .. }
                    if self.in_flight == InFlight::Wait && started.elapsed() + WAIT_STEP < self.lease =>
                {
                    tokio::time::sleep(WAIT_STEP).await;
                }
                IdempotencyAnswer::InFlight { .. } => {
                    self.metrics.conflict.increment(1);
                    return conflict("a request with this Idempotency-Key is in progress", "idempotency: in flight")
                        .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
                        .into();
                }
                IdempotencyAnswer::Full => {
                    self.metrics.unavailable.increment(1);
                    return Rejection::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this stage holds as many idempotency records as it may; the request was not delivered",
                    )
                    .with_reason("idempotency: records full")
                    .into();
                }
                IdempotencyAnswer::Recorded | IdempotencyAnswer::NotHeld => {
                    return Rejection::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the idempotency record answered out of turn",
                    )
                    .with_reason("idempotency: unexpected answer")
                    .into();
                }
            }
        }
    }

    /// Records the claim's outcome (or gives it back) in the background.
    fn settle(&self, claim: Claim, response: Option<StoredResponse>) {
        let Claim { records, command_key, fingerprint, node, attempt, .. } = claim;
        let command = match response {
            Some(response) => IdempotencyCommand::Complete {
                scope: self.scope.to_string(),
                key: command_key,
                fingerprint,
                node,
                attempt,
                now_ms: now_ms(),
                response,
            },
            None => IdempotencyCommand::Release {
                scope: self.scope.to_string(),
                key: command_key,
                fingerprint,
                node,
                attempt,
                now_ms: now_ms(),
            },
        };
        // A standalone node records at once; a cluster member in the background.
        if let Some(answer) = records.apply_here(&command) {
            if answer != IdempotencyAnswer::Recorded {
                tracing::warn!(answer = ?answer, "an idempotency record was no longer this node's to settle");
            }
            return;
        }
        let timeout = self.commit_timeout;
        tokio::spawn(async move {
            // A cluster without a quorum now may have one again soon: keep trying for a
            // while, so that the claim does not outlive its request unsettled.
            let deadline = Instant::now() + SETTLE_FOR;
            loop {
                match records.submit(command.clone(), timeout).await {
                    Ok(IdempotencyAnswer::Recorded) => return,
                    Ok(other) => {
                        tracing::warn!(answer = ?other, "an idempotency record was no longer this node's to settle");
                        return;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!(error = %e, "an idempotency outcome could not be recorded; retries with its key get 409");
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
    }
}

/// The response headers worth replaying (not the framing ones).
fn kept_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| **name != CONTENT_LENGTH && **name != TRANSFER_ENCODING && **name != REPLAYED)
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}

impl Stage for IdempotentDelivery {
    fn name(&self) -> &'static str {
        "idempotency"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD | Phases::REQUEST_BODY | Phases::RESPONSE_HEAD | Phases::RESPONSE_BODY | Phases::COMPLETE
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        match client_key(head) {
            Ok(Some(key)) => {
                exchange.note(|| format!("Idempotency-Key `{key}`: claimed once the body is read"));
                exchange.state.insert(Keyed(key));
                Flow::Continue.into()
            }
            Ok(None) if self.required => {
                Rejection::new(StatusCode::BAD_REQUEST, "this route requires an Idempotency-Key header")
                    .with_reason("idempotency key missing")
                    .into()
            }
            Ok(None) => Flow::Continue.into(),
            Err(rejection) => rejection.into(),
        }
    }

    fn body_need(&self, head: &Parts) -> Option<BodyNeed> {
        // The fingerprint covers the whole body, up to the node's body limit.
        head.headers.contains_key(&IDEMPOTENCY_KEY).then_some(BodyNeed::Whole(u64::MAX))
    }

    fn request_body<'a>(
        &'a self,
        head: &'a Parts,
        body: &'a Bytes,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        let Some(Keyed(key)) = exchange.state.remove::<Keyed>() else { return Flow::Continue.into() };
        if services.dry_run {
            return Flow::Continue.into();
        }
        let command_key = self.command_key(head, exchange, &key);
        let fingerprint = fingerprint(head, body);
        let records = services.records.clone();
        Step::Waiting(Box::pin(self.claim(records, command_key, fingerprint, exchange)))
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        if !exchange.sent_upstream {
            // Nothing left the gateway: a retry may deliver the request.
            if let Some(claim) = exchange.state.remove::<Claim>() {
                self.settle(claim, None);
            }
            return;
        }
        if let Some(claim) = exchange.state.get_mut::<Claim>() {
            claim.copy = Some((head.status, head.headers.clone(), BoundedCopy::new(self.max_response_bytes)));
        }
    }

    fn rewrites_response_body(&self) -> bool {
        false
    }

    fn keeps_response(&self) -> bool {
        true
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, exchange: &mut Exchange) {
        let Some(claim) = exchange.state.get_mut::<Claim>() else { return };
        if let (Some((_, _, copy)), Some(data)) = (claim.copy.as_mut(), chunk.as_ref()) {
            copy.push(data);
        }
        if end_of_stream && let Some(claim) = exchange.state.remove::<Claim>() {
            self.settle_with_copy(claim, true);
        }
    }

    fn complete(&self, exchange: &mut Exchange) {
        // The client went away before the body ended: what the upstream answered is
        // recorded as far as it was sent.
        if let Some(claim) = exchange.state.remove::<Claim>() {
            self.settle_with_copy(claim, false);
        }
    }
}

impl IdempotentDelivery {
    /// Records the response copied so far; `ended` when the body was sent whole.
    fn settle_with_copy(&self, mut claim: Claim, ended: bool) {
        let Some((status, headers, copy)) = claim.copy.take() else {
            // No response head was seen: the request went upstream, its outcome is unknown.
            self.settle(claim, Some(unknown_outcome()));
            return;
        };
        let (body, body_complete) = match copy.finish() {
            Some(body) if ended => (body.to_vec(), true),
            Some(body) => (body.to_vec(), false),
            None => (Vec::new(), false),
        };
        let response = StoredResponse { status: status.as_u16(), headers: kept_headers(&headers), body, body_complete };
        self.settle(claim, Some(response));
    }
}

/// What a retry gets when the first attempt went upstream and no response was seen.
fn unknown_outcome() -> StoredResponse {
    StoredResponse {
        status: StatusCode::BAD_GATEWAY.as_u16(),
        headers: vec![(CONTENT_TYPE.as_str().to_string(), b"application/json".to_vec())],
        body: br#"{"message":"the first request with this Idempotency-Key reached the upstream, but no answer was recorded"}"#.to_vec(),
        body_complete: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(key: Option<&str>) -> Parts {
        let mut builder = http::Request::post("/payments?x=1").header(CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            builder = builder.header(&IDEMPOTENCY_KEY, key);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_are_read_bare_or_quoted_and_checked() {
        assert_eq!(client_key(&head(None)).unwrap(), None);
        assert_eq!(client_key(&head(Some("abc-1"))).unwrap().as_deref(), Some("abc-1"));
        assert_eq!(client_key(&head(Some("\"abc-1\""))).unwrap().as_deref(), Some("abc-1"));
        assert!(client_key(&head(Some("a b"))).is_err());
        assert!(client_key(&head(Some("\"\""))).is_err());
        assert!(client_key(&head(Some(&"k".repeat(MAX_KEY_BYTES + 1)))).is_err());
        let mut twice = head(Some("a"));
        twice.headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert!(client_key(&twice).is_err());
    }

    #[test]
    fn the_fingerprint_covers_what_makes_the_request() {
        let base = fingerprint(&head(None), b"{}");
        assert_eq!(base, fingerprint(&head(Some("other key")), b"{}"), "the key itself is not part of it");
        assert_ne!(base, fingerprint(&head(None), b"{ }"));
        let mut other_path = head(None);
        other_path.uri = "/payments?x=2".parse().unwrap();
        assert_ne!(base, fingerprint(&other_path, b"{}"));
        let mut other_type = head(None);
        other_type.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_ne!(base, fingerprint(&other_type, b"{}"));
    }

    #[test]
    fn a_replay_is_the_recorded_response_marked_as_replayed() {
        let stored = StoredResponse {
            status: 201,
            headers: vec![("location".into(), b"/payments/7".to_vec())],
            body: b"{\"id\":7}".to_vec(),
            body_complete: true,
        };
        let response = replay(&stored);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["location"], "/payments/7");
        assert_eq!(response.headers()[&REPLAYED], "true");
    }
}
