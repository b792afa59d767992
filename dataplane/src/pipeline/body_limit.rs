//! The request body limit, in one place: a declared `Content-Length` over the limit is
//! refused with 413 before anything is sent upstream; a body without a declared length is
//! counted as it streams ([`RequestBody::limited`]) and fails at the limit, which the
//! pipeline answers with the same 413; a body a stage reads is buffered up to the smaller
//! of the stage's need and the limit, or only its first bytes when a stage inspects a prefix.
//! A body sent compressed (`Content-Encoding`) is read whole and decoded for the stages, up to
//! their need: a decompression bomb is a 413 like any other body over the limit.

use crate::incoming::Incoming;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::request::Parts;
use http_body::Body;
use http_body_util::BodyExt;

use crate::content_coding::{self, Coding, DecodeError};
use crate::integration::request_body::RequestBody;
use crate::rejection::Rejection;
use crate::stages::BodyNeed;

/// The most bytes a request body may have.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: u64,
}

impl BodyLimit {
    /// Refuses a request that declares more than the limit.
    pub fn check_declared(&self, parts: &Parts) -> Result<(), Rejection> {
        match crate::stages::declared_length(parts) {
            Some(n) if n > self.max_bytes => Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {n} bytes exceeds the limit of {} bytes", self.max_bytes),
            )),
            _ => Ok(()),
        }
    }

    /// The answer to a body that turned out larger than `limit` while it was read.
    pub fn exceeded(limit: u64) -> Rejection {
        Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {limit} bytes"))
    }

    /// The body streaming upstream, counted against the limit.
    pub fn stream(&self, body: Incoming) -> RequestBody {
        RequestBody::limited(body, self.max_bytes)
    }

    /// Reads at least the first `need` bytes of the body (all of it when shorter), for the
    /// stages that inspect a prefix; what is left of the body, if anything, comes back to
    /// stream upstream after it.
    pub async fn read_prefix(&self, mut body: Incoming, need: u64) -> Result<(Bytes, Option<Incoming>), Rejection> {
        let mut buffer = BytesMut::new();
        while (buffer.len() as u64) < need {
            let Some(frame) = body.frame().await else {
                return Ok((buffer.freeze(), None));
            };
            let frame = frame.map_err(|_| Self::malformed())?;
            if let Ok(data) = frame.into_data() {
                if (buffer.len() + data.len()) as u64 > self.max_bytes {
                    return Err(Self::exceeded(self.max_bytes));
                }
                buffer.extend_from_slice(&data);
            }
        }
        let rest = (!body.is_end_stream()).then_some(body);
        Ok((buffer.freeze(), rest))
    }

    /// What the stages read of a body sent with `coding`: the whole of `sent` decoded, up to
    /// `need` (a body that decodes to more is refused with 413, however small it was sent),
    /// or the first bytes of it.
    pub fn decode(&self, coding: Coding, sent: &[u8], need: BodyNeed) -> Result<Bytes, Rejection> {
        let (limit, prefix) = match need {
            BodyNeed::Whole(limit) => (limit.min(self.max_bytes), false),
            BodyNeed::Prefix(bytes) => (bytes, true),
        };
        content_coding::decode(coding, sent, limit, prefix).map_err(|e| match e {
            DecodeError::TooLarge => Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body decompresses to more than the limit of {limit} bytes"),
            )
            .with_reason("decompressed body too large"),
            DecodeError::Malformed => Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid {} data", coding.token()),
            )
            .with_reason("malformed compressed body"),
        })
    }

    fn malformed() -> Rejection {
        Rejection::new(StatusCode::BAD_REQUEST, "the request body is malformed or incomplete")
            .with_reason("client body error")
    }

    /// Reads the whole body for the stages that need it, up to `need` (and never more than
    /// the limit).
    pub async fn buffer(&self, mut body: Incoming, need: u64) -> Result<Bytes, Rejection> {
        let limit = need.min(self.max_bytes);
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Self::malformed())?;
            if let Ok(data) = frame.into_data() {
                if (buffer.len() + data.len()) as u64 > limit {
                    return Err(Self::exceeded(limit));
                }
                buffer.extend_from_slice(&data);
            }
        }
        Ok(buffer.freeze())
    }
}
