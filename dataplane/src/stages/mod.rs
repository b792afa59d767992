//! Stages: what a route does to a request between routing and its integration, as named
//! phases.
//!
//! A request's life on a route runs through these phases, in this order:
//!
//! ```text
//! request head ─▶ request body ─▶ upstream request ─▶ (integration) ─▶ response head ─▶ response body ─▶ complete
//!   may wait        buffered, only     headers on their                     every outcome,    streamed, chunk     logging,
//!   (a callout)     when a stage       way upstream                         rejections too    by chunk            metrics
//!                   asks for it;
//!                   may wait (a claim)
//! ```
//!
//! A [`Stage`] is a small type in its own file that overrides only the phases it uses and
//! says which ones in [`Stage::phases`]. Each route's [`Chain`] is built once per
//! configuration revision from the stages that route configures, one list per phase, so a
//! phase no stage of the route uses costs an empty loop, and a route without stages pays
//! nothing for the ones other routes use.
//!
//! A request-side phase returns a [`Flow`]: go on, or stop the request, either by rejecting
//! it (the JSON error every refusal uses) or by answering it (a preflight, a cached or
//! replayed response). Either way the response phases still run, so a 401 carries the same
//! headers a 200 would. Response phases run in the reverse of the chain's order: the stage
//! closest to the integration sees the response first, like layers around a service. The
//! response head goes out before its body streams, unless a stage reads the integration's
//! answer body in its head ([`Stage::head_reads_answer_body`]: a header mapped from the
//! body); that head waits for the whole body, bounded by [`MAX_ANSWER_BODY`] and
//! [`MAX_ANSWER_BODY_TIME`].
//!
//! Stages keep their configuration (the policy) in their own fields, compiled from the API
//! definition; what they enforce it with (the node's limiter, the revision's API keys)
//! arrives in [`Services`]. That keeps a route's policy plain data and lets one stage type
//! serve every route that uses it.

pub mod api_key;
pub mod cache;
mod chain;
pub mod compression;
pub mod content;
pub mod cors;
pub mod custom_authorizer;
pub mod idempotency;
pub mod integration_response;
pub mod jwt;
pub mod mapping;
pub mod rewrite;
pub mod signed_request;
mod state;
pub mod throttle;
pub mod transform;
pub mod validation;
pub mod waf;
pub mod xml_upstream;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::ops::BitOr;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request;
use http::{HeaderValue, Response, StatusCode, Version, response};

pub use chain::{Chain, StagedBody};
pub use state::ExchangeState;

use crate::authorizers::Authorizers;
use crate::body::ResponseBody;
use crate::limits::limiter::Limiter;
use crate::observe::trace::{Attributes, SpanKind, SpanStart};
use crate::rejection::Rejection;

/// The phases of a request a stage takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const REQUEST_HEAD: Phases = Phases(1);
    pub const REQUEST_BODY: Phases = Phases(1 << 1);
    pub const UPSTREAM_REQUEST: Phases = Phases(1 << 2);
    pub const RESPONSE_HEAD: Phases = Phases(1 << 3);
    pub const RESPONSE_BODY: Phases = Phases(1 << 4);
    pub const COMPLETE: Phases = Phases(1 << 5);

    /// Whether every phase of `other` is in `self`.
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

impl BitOr for Phases {
    type Output = Phases;

    fn bitor(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }
}

/// How a request stops before its integration.
#[derive(Debug)]
pub enum Stop {
    /// Refused, with the JSON error of every refusal.
    Reject(Rejection),
    /// Answered by the stage itself (a preflight, a cached or replayed response).
    Answer(Response<ResponseBody>),
}

/// What a request-side phase decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Stop(Stop),
}

impl From<Rejection> for Flow {
    fn from(rejection: Rejection) -> Flow {
        Flow::Stop(Stop::Reject(rejection))
    }
}

impl From<Result<(), Rejection>> for Flow {
    fn from(result: Result<(), Rejection>) -> Flow {
        match result {
            Ok(()) => Flow::Continue,
            Err(rejection) => rejection.into(),
        }
    }
}

/// A request-head phase that has to wait (on a callout, a key fetch).
pub type Waiting<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

/// The outcome of a request-head phase: decided now (no allocation), or after a wait.
pub enum Step<'a> {
    Done(Flow),
    Waiting(Waiting<'a>),
}

impl From<Result<(), Rejection>> for Step<'_> {
    fn from(result: Result<(), Rejection>) -> Self {
        Step::Done(result.into())
    }
}

impl From<Rejection> for Step<'_> {
    fn from(rejection: Rejection) -> Self {
        Step::Done(rejection.into())
    }
}

impl From<Flow> for Step<'_> {
    fn from(flow: Flow) -> Self {
        Step::Done(flow)
    }
}

/// What one request carries through its phases, from its head to its completion.
#[derive(Debug)]
pub struct Exchange {
    pub request_id: HeaderValue,
    pub client: IpAddr,
    /// The response's status, once there is one (set before the response phases).
    pub status: Option<StatusCode>,
    /// Whether the response is the integration's answer (not a refusal or an answer of the
    /// gateway's own, such as a cache hit).
    pub integration_answered: bool,
    /// Whether the request went to the integration (which may have acted on it, answered or
    /// not); `false` when it was stopped before, or no upstream connection took it.
    pub sent_upstream: bool,
    /// Whatever stages keep for their later phases, by type.
    pub state: ExchangeState,
    /// The request's trace, when its stage traces requests: a stage that does work worth a
    /// span (a callout, a lookup, a mapping) records one in it.
    pub trace: Option<crate::observe::trace::RequestTrace>,
    /// What stages found, when the request is being explained (`meridian explain request`).
    notes: Option<Vec<String>>,
    /// A body a request-body stage made to send upstream instead of the client's.
    replaced_body: Option<Bytes>,
    /// The body as the client sent it, when the stages read it decoded from its
    /// `Content-Encoding`.
    encoded_body: Option<Bytes>,
}

impl Exchange {
    pub fn new(request_id: HeaderValue, client: IpAddr) -> Self {
        Exchange {
            request_id,
            client,
            status: None,
            integration_answered: false,
            sent_upstream: false,
            state: ExchangeState::default(),
            trace: None,
            notes: None,
            replaced_body: None,
            encoded_body: None,
        }
    }

    /// An exchange that keeps the stages' notes, for explaining a request.
    pub fn explained(request_id: HeaderValue, client: IpAddr) -> Self {
        Exchange { notes: Some(Vec::new()), ..Exchange::new(request_id, client) }
    }

    /// Records what a stage found, when the request is being explained; costs nothing
    /// otherwise.
    pub fn note(&mut self, note: impl FnOnce() -> String) {
        if let Some(notes) = &mut self.notes {
            notes.push(note());
        }
    }

    /// The start of a span for work a stage is about to do, when the request is recorded.
    pub fn start_span(&self) -> Option<SpanStart> {
        self.trace.as_ref()?.start_span()
    }

    /// Records the span begun at `start` (from [`Exchange::start_span`]) as ending now.
    pub fn end_span(
        &self,
        start: Option<SpanStart>,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Attributes,
        error: Option<String>,
    ) {
        if let (Some(trace), Some(start)) = (&self.trace, start) {
            trace.end_span(start, name, kind, attributes(), error);
        }
    }

    /// Sends `body` upstream instead of the client's (a mapped request).
    pub fn replace_request_body(&mut self, body: Bytes) {
        self.replaced_body = Some(body);
    }

    /// The body a stage made, if one did.
    pub fn take_replaced_body(&mut self) -> Option<Bytes> {
        self.replaced_body.take()
    }

    /// Records that the stages read `body` decoded from the `Content-Encoding` it was sent
    /// with.
    pub fn set_encoded_body(&mut self, body: Bytes) {
        self.encoded_body = Some(body);
    }

    /// The body's bytes as the client sent them (what a signature covers): `read`, the body
    /// the request-body phase was given, unless that was decoded from a content coding.
    pub fn body_as_sent<'b>(&'b self, read: &'b Bytes) -> &'b Bytes {
        self.encoded_body.as_ref().unwrap_or(read)
    }

    /// The notes recorded since the last call.
    pub fn take_notes(&mut self) -> Vec<String> {
        self.notes.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

/// How much of a request body a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNeed {
    /// All of it, up to this many bytes; a longer body is refused with 413.
    Whole(u64),
    /// The first this many bytes (fewer if the body is shorter); the rest streams upstream
    /// unread, and a longer body is not refused for it.
    Prefix(u64),
}

/// The body length a request declares, if any and well-formed.
pub fn declared_length(head: &request::Parts) -> Option<u64> {
    head.headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether a request may carry a body: a non-zero `Content-Length`, a chunked body, or an
/// HTTP/2 request (whose end of stream is the only sign).
pub fn may_have_body(head: &request::Parts) -> bool {
    match declared_length(head) {
        Some(length) => length > 0,
        None => head.headers.contains_key(TRANSFER_ENCODING) || head.version == Version::HTTP_2,
    }
}

/// What stages enforce their policy with: the node's shared services and the data of the
/// configuration revision the request started on.
#[derive(Debug, Clone, Copy)]
pub struct Services<'r> {
    pub limiter: &'r Limiter,
    pub keys: &'r api_key::KeyRing,
    pub credentials: &'r signed_request::Credentials,
    pub authorizers: &'r Authorizers,
    pub blocks: &'r waf::Blocklist,
    pub caches: &'r crate::response_cache::ResponseCaches,
    /// Idempotency records: the node's own, or the cluster's once it has joined.
    pub records: &'r std::sync::Arc<crate::idempotency::IdempotencyRecords>,
    /// The request is only being explained: stages decide as they would, but count,
    /// record and block nothing.
    pub dry_run: bool,
}

/// The whole body of the integration's answer, read before the response head for a stage
/// whose head reads it ([`Stage::head_reads_answer_body`]), up to [`MAX_ANSWER_BODY`] and
/// [`MAX_ANSWER_BODY_TIME`].
#[derive(Debug, Clone)]
pub struct AnswerBody(pub Bytes);

/// The largest answer body the response head waits for; a larger one is refused (502).
pub const MAX_ANSWER_BODY: usize = 10 * 1024 * 1024;

/// How long the response head waits for the answer's body; a slower one is refused (502).
pub const MAX_ANSWER_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// One step of a route's request path. Every phase has a default that does nothing; a stage
/// overrides the ones it names in [`Stage::phases`], and only those are ever called.
pub trait Stage: Send + Sync + fmt::Debug + 'static {
    /// A short name for the chain's description (`meridian explain`, tests).
    fn name(&self) -> &'static str;

    /// The phases this stage takes part in.
    fn phases(&self) -> Phases;

    /// The request head, before anything is sent upstream. May wait.
    fn request_head<'a>(
        &'a self,
        _head: &'a mut request::Parts,
        _exchange: &'a mut Exchange,
        _services: &'a Services<'a>,
    ) -> Step<'a> {
        Step::Done(Flow::Continue)
    }

    /// For [`Phases::REQUEST_BODY`] stages: whether this request's body is needed, and how
    /// much of it. `None` lets the body stream.
    fn body_need(&self, _head: &request::Parts) -> Option<BodyNeed> {
        None
    }

    /// The request body as [`Stage::body_need`] asked for it: the whole body, or at least
    /// the asked prefix of it (the whole body when it is shorter). May wait (a claim on a
    /// record the cluster keeps).
    fn request_body<'a>(
        &'a self,
        _head: &'a request::Parts,
        _body: &'a Bytes,
        _exchange: &'a mut Exchange,
        _services: &'a Services<'a>,
    ) -> Step<'a> {
        Step::Done(Flow::Continue)
    }

    /// The request head as it will be sent upstream (proxy integrations only).
    fn upstream_request(&self, _head: &mut request::Parts, _exchange: &mut Exchange) {}

    /// The response head, whatever produced it: the integration, a rejection or an answer.
    fn response_head(&self, _head: &mut response::Parts, _exchange: &mut Exchange, _services: &Services<'_>) {}

    /// Whether [`Stage::response_head`] reads the body of an integration's answer of
    /// `status` (a response header mapped from it). The head then waits until the whole
    /// body has arrived, and finds it as [`AnswerBody`].
    fn head_reads_answer_body(&self, _status: StatusCode) -> bool {
        false
    }

    /// Each chunk of the response body as it streams; `end_of_stream` on the last call. A
    /// stage may replace the chunk (`None` sends nothing for it).
    fn response_body(&self, _chunk: &mut Option<Bytes>, _end_of_stream: bool, _exchange: &mut Exchange) {}

    /// Whether [`Stage::response_body`] may change the body (a stage that only reads it
    /// says no, and the response keeps its length).
    fn rewrites_response_body(&self) -> bool {
        true
    }

    /// Whether the stage records responses (idempotency): a request on its route is then
    /// carried to its end when the client goes away, the upstream call answered and its body
    /// read through the response phases, so that what the upstream did is recorded.
    fn keeps_response(&self) -> bool {
        false
    }

    /// The request is over (its response was sent, or the client went away); a stage takes
    /// back what it still keeps in the exchange.
    fn complete(&self, _exchange: &mut Exchange) {}
}
