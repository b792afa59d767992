//! The declared-size check: a request whose `Content-Length` exceeds the limit is refused
//! with 413 before anything is sent upstream. Bodies without a declared length are
//! counted as they stream (see [`crate::body::RequestBody`]).

use http::StatusCode;
use http::header::CONTENT_LENGTH;
use http::request::Parts;

use super::{Policy, PolicyContext, Rejection};
use crate::config::table::RouteTarget;

/// Refuses requests that declare a body larger than `max_bytes`.
#[derive(Debug)]
pub struct BodyLimit {
    pub max_bytes: u64,
}

impl BodyLimit {
    /// The declared length, if any and well-formed.
    pub fn declared_length(parts: &Parts) -> Option<u64> {
        parts.headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
    }
}

impl Policy for BodyLimit {
    fn check(&self, parts: &Parts, _route: &RouteTarget, _ctx: &mut PolicyContext<'_>) -> Result<(), Rejection> {
        match Self::declared_length(parts) {
            Some(n) if n > self.max_bytes => Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {n} bytes exceeds the limit of {} bytes", self.max_bytes),
            )),
            _ => Ok(()),
        }
    }
}
