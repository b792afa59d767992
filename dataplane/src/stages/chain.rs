//! A route's chain: its stages, sorted once per revision into one list per phase, and the
//! response body that runs the response-body and completion phases as it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{request, response};
use http_body::{Body, Frame, SizeHint};

use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step};
use crate::body::{BoxError, ResponseBody};

/// The stages of one route, by phase. Built once per configuration revision.
#[derive(Debug, Default)]
pub struct Chain {
    /// Every stage, in the order the request meets them.
    stages: Vec<Arc<dyn Stage>>,
    request_head: Vec<Arc<dyn Stage>>,
    request_body: Vec<Arc<dyn Stage>>,
    upstream_request: Vec<Arc<dyn Stage>>,
    /// Response phases hold the stages in reverse order.
    response_head: Vec<Arc<dyn Stage>>,
    response_body: Vec<Arc<dyn Stage>>,
    complete: Vec<Arc<dyn Stage>>,
    /// Whether a response-body stage may change the body.
    rewrites_body: bool,
    /// Whether a stage records responses (see [`Stage::keeps_response`]).
    keeps_response: bool,
}

impl Chain {
    /// A chain of `stages`, in the order a request meets them.
    pub fn new(stages: Vec<Arc<dyn Stage>>) -> Chain {
        let of = |phase: Phases, reverse: bool| {
            let mut list: Vec<_> = stages.iter().filter(|s| s.phases().contains(phase)).cloned().collect();
            if reverse {
                list.reverse();
            }
            list
        };
        Chain {
            request_head: of(Phases::REQUEST_HEAD, false),
            request_body: of(Phases::REQUEST_BODY, false),
            upstream_request: of(Phases::UPSTREAM_REQUEST, false),
            response_head: of(Phases::RESPONSE_HEAD, true),
            response_body: of(Phases::RESPONSE_BODY, true),
            complete: of(Phases::COMPLETE, true),
            rewrites_body: stages
                .iter()
                .any(|s| s.phases().contains(Phases::RESPONSE_BODY) && s.rewrites_response_body()),
            keeps_response: stages.iter().any(|s| s.keeps_response()),
            stages,
        }
    }

    /// The stages' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Runs the request-head phase; the first stage that stops the request ends it.
    pub async fn request_head(
        &self,
        head: &mut request::Parts,
        exchange: &mut Exchange,
        services: &Services<'_>,
    ) -> Flow {
        for stage in &self.request_head {
            let flow = match stage.request_head(head, exchange, services) {
                Step::Done(flow) => flow,
                Step::Waiting(waiting) => waiting.await,
            };
            if let Flow::Stop(stop) = flow {
                return Flow::Stop(stop);
            }
        }
        Flow::Continue
    }

    /// How much of this request's body the request-body stages read together, or `None`
    /// when none of them reads it (the body then streams upstream untouched). A stage that
    /// needs the whole body makes it read whole (a prefix is part of it); otherwise the
    /// longest prefix asked for is read.
    pub fn body_need(&self, head: &request::Parts) -> Option<BodyNeed> {
        self.request_body.iter().filter_map(|s| s.body_need(head)).reduce(|a, b| match (a, b) {
            (BodyNeed::Whole(x), BodyNeed::Whole(y)) => BodyNeed::Whole(x.max(y)),
            (BodyNeed::Prefix(x), BodyNeed::Prefix(y)) => BodyNeed::Prefix(x.max(y)),
            (whole @ BodyNeed::Whole(_), BodyNeed::Prefix(_)) | (BodyNeed::Prefix(_), whole @ BodyNeed::Whole(_)) => {
                whole
            }
        })
    }

    /// Runs the request-body phase over the body read for it; the first stage that stops
    /// the request ends it.
    pub async fn request_body(
        &self,
        head: &request::Parts,
        body: &Bytes,
        exchange: &mut Exchange,
        services: &Services<'_>,
    ) -> Flow {
        for stage in &self.request_body {
            if stage.body_need(head).is_none() {
                continue;
            }
            let flow = match stage.request_body(head, body, exchange, services) {
                Step::Done(flow) => flow,
                Step::Waiting(waiting) => waiting.await,
            };
            if let Flow::Stop(stop) = flow {
                return Flow::Stop(stop);
            }
        }
        Flow::Continue
    }

    /// The request-head stages, in order (for explaining a request stage by stage).
    pub fn request_head_stages(&self) -> &[Arc<dyn Stage>] {
        &self.request_head
    }

    pub fn upstream_request(&self, head: &mut request::Parts, exchange: &mut Exchange) {
        for stage in &self.upstream_request {
            stage.upstream_request(head, exchange);
        }
    }

    pub fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, services: &Services<'_>) {
        for stage in &self.response_head {
            stage.response_head(head, exchange, services);
        }
    }

    /// Whether a response-head stage reads the body of an integration's answer of `status`
    /// ([`Stage::head_reads_answer_body`]): the head then waits for the whole body.
    pub fn head_reads_answer_body(&self, status: http::StatusCode) -> bool {
        self.response_head.iter().any(|s| s.head_reads_answer_body(status))
    }

    /// Whether a stage records responses: requests on the route are carried to their end
    /// when the client goes away.
    pub fn keeps_response(&self) -> bool {
        self.keeps_response
    }

    /// Whether the response body needs [`StagedBody`] (a stage reads it or waits for the end).
    pub fn follows_response_body(&self) -> bool {
        !self.response_body.is_empty() || !self.complete.is_empty()
    }
}

/// A response body run through its chain's response-body phase, which ends with the
/// completion phase (also when the client goes away mid-body).
pub struct StagedBody {
    inner: ResponseBody,
    chain: Arc<Chain>,
    exchange: Exchange,
    done: bool,
}

impl StagedBody {
    pub fn new(inner: ResponseBody, chain: Arc<Chain>, exchange: Exchange) -> Self {
        StagedBody { inner, chain, exchange, done: false }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            for stage in &self.chain.complete {
                stage.complete(&mut self.exchange);
            }
        }
    }

    /// Runs the response-body stages over one chunk (`None` at the end of the body).
    fn filter(&mut self, mut chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        for stage in &self.chain.response_body {
            stage.response_body(&mut chunk, end_of_stream, &mut self.exchange);
        }
        chunk
    }
}

/// How long a body the client abandoned is still read for the stages that record it.
const ABANDONED_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for StagedBody {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client went away mid-body: a chain that records responses reads the rest
        // (bounded in time) through its stages before it completes.
        if self.chain.keeps_response
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let rest = StagedBody {
                inner: std::mem::replace(&mut self.inner, ResponseBody::Empty),
                chain: self.chain.clone(),
                exchange: std::mem::replace(
                    &mut self.exchange,
                    Exchange::new(http::HeaderValue::from_static(""), std::net::Ipv4Addr::UNSPECIFIED.into()),
                ),
                done: false,
            };
            self.done = true;
            runtime.spawn(async move {
                use http_body_util::BodyExt;
                let mut rest = rest;
                let drained = async { while let Some(Ok(_)) = rest.frame().await {} };
                let _ = tokio::time::timeout(ABANDONED_BODY_TIME, drained).await;
                // Dropped here: completes whatever did not end.
            });
            return;
        }
        self.finish();
    }
}

impl Body for StagedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let end = this.inner.is_end_stream();
                    let frame = match frame.into_data() {
                        Ok(data) => this.filter(Some(data), end).map(Frame::data),
                        Err(trailers) => Some(trailers),
                    };
                    if end {
                        // The last chunk went through the stages with `end_of_stream`.
                        this.finish();
                        return Poll::Ready(frame.map(Ok));
                    }
                    if let Some(frame) = frame {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Ready(None) => {
                    let tail = this.filter(None, true);
                    this.finish();
                    return Poll::Ready(tail.map(|t| Ok(Frame::data(t))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        // A stage may change the body, so only an untouched body keeps its length.
        if self.chain.rewrites_body { SizeHint::default() } else { self.inner.size_hint() }
    }
}
