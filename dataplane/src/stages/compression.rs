//! Response compression: an API's answers compressed with zstd, brotli or gzip, whichever
//! the client's `Accept-Encoding` prefers (q-values honoured; see [`content_coding`]).
//!
//! A response is compressed when its media type is one of the API's compressible types and
//! it is not shorter than the API's minimum size (a response of unknown length is compressed).
//! Left alone: answers that already have a `Content-Encoding`, `Cache-Control: no-transform`,
//! ranges (`206`, `Content-Range`), answers without a body (`HEAD`, `204`, `304`) and
//! upgrades. Every answer that could be compressed says `Vary: Accept-Encoding`, whether this
//! client got it compressed or not, so a shared cache keeps the two apart; a strong `ETag`
//! becomes weak, as the bytes are no longer the upstream's.
//!
//! The stage is first in a route's chain, so it is the last to see the response: the cache
//! and idempotency records keep the uncompressed answer, and each client gets the coding it
//! asked for.
//!
//! [`content_coding`]: crate::content_coding

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, VARY};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, response};

use super::content::{MediaRanges, MediaType};
use super::{Exchange, Phases, Services, Stage, Step};
use crate::content_coding::{self, Coding, Encoder};

/// What an API compresses (its `compression` section).
#[derive(Debug)]
pub struct CompressionPolicy {
    /// Answers with a `Content-Length` below this are sent as they are.
    pub minimum_size: u64,
    pub media_types: MediaRanges,
}

/// The compression stage of a route.
#[derive(Debug)]
pub struct Compression {
    pub policy: Arc<CompressionPolicy>,
}

/// The coding this request's client asked for (request head → response head).
#[derive(Debug, Clone, Copy)]
struct Accepted(Coding);

/// The response's encoder, while its body streams; `None` once encoding failed, so that the
/// rest of the body is dropped rather than sent uncompressed under `Content-Encoding`.
struct Compressing(Option<Encoder>);

impl CompressionPolicy {
    /// Whether an answer with `status` and these headers may be compressed at all.
    fn applies(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status.is_informational()
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT)
            || headers.contains_key(CONTENT_RANGE)
        {
            return false;
        }
        let encoded = headers.get_all(CONTENT_ENCODING).iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let no_transform = headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|directive| directive.trim().eq_ignore_ascii_case("no-transform")))
        });
        if encoded || no_transform {
            return false;
        }
        let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|n| n < self.minimum_size) {
            return false;
        }
        MediaType::of(headers).is_some_and(|media| self.media_types.contains(media))
    }
}

/// Adds `Accept-Encoding` to the answer's `Vary`, unless it is there (or `*` is).
fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    let listed = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').map(str::trim).any(|name| name == "*" || name.eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !listed {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

impl Stage for Compression {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD | Phases::RESPONSE_HEAD | Phases::RESPONSE_BODY
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        if head.method != Method::HEAD
            && let Some(coding) = content_coding::negotiate(&head.headers)
        {
            exchange.state.insert(Accepted(coding));
        }
        Step::Done(super::Flow::Continue)
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        if !self.policy.applies(head.status, &head.headers) {
            return;
        }
        vary_on_accept_encoding(&mut head.headers);
        let Some(Accepted(coding)) = exchange.state.remove::<Accepted>() else { return };
        let encoder = match Encoder::new(coding) {
            Ok(encoder) => encoder,
            Err(e) => {
                tracing::warn!(error = %e, coding = coding.token(), "a response encoder could not be created; the answer is sent uncompressed");
                return;
            }
        };
        head.headers.insert(CONTENT_ENCODING, coding.header_value());
        head.headers.remove(CONTENT_LENGTH);
        if let Some(etag) = head.headers.get(ETAG)
            && !etag.as_bytes().starts_with(b"W/")
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                head.headers.insert(ETAG, weak);
            }
        }
        exchange.state.insert(Compressing(Some(encoder)));
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, exchange: &mut Exchange) {
        let Some(Compressing(encoder)) = exchange.state.get_mut::<Compressing>() else { return };
        let data = chunk.take();
        let Some(encoder) = encoder else { return };
        let mut output = match data {
            Some(data) => encoder.write(&data),
            None => Ok(Bytes::new()),
        };
        if end_of_stream && let Some(Compressing(Some(encoder))) = exchange.state.insert(Compressing(None)) {
            output = output.and_then(|head| {
                let tail = encoder.finish()?;
                Ok(if head.is_empty() { tail } else { [head, tail].concat().into() })
            });
        }
        match output {
            Ok(bytes) => *chunk = (!bytes.is_empty()).then_some(bytes),
            Err(e) => {
                // The headers are gone; a truncated stream is all that is left to send.
                tracing::warn!(error = %e, request_id = ?exchange.request_id, "compressing a response failed");
                exchange.state.insert(Compressing(None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CompressionPolicy {
        CompressionPolicy {
            minimum_size: 100,
            media_types: MediaRanges::new(&["application/json".into(), "text/*".into()]).unwrap(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_compressible_answers_of_the_minimum_size_apply() {
        let p = policy();
        let ok = StatusCode::OK;
        assert!(p.applies(ok, &headers(&[("content-type", "application/json; charset=utf-8")])));
        assert!(p.applies(ok, &headers(&[("content-type", "text/html"), ("content-length", "100")])));
        assert!(!p.applies(ok, &headers(&[("content-type", "text/html"), ("content-length", "99")])));
        assert!(!p.applies(ok, &headers(&[("content-type", "image/png")])));
        assert!(!p.applies(ok, &headers(&[])));
        assert!(!p.applies(ok, &headers(&[("content-type", "text/html"), ("content-encoding", "gzip")])));
        assert!(p.applies(ok, &headers(&[("content-type", "text/html"), ("content-encoding", "identity")])));
        assert!(!p.applies(ok, &headers(&[("content-type", "text/html"), ("cache-control", "public, No-Transform")])));
        assert!(!p.applies(StatusCode::PARTIAL_CONTENT, &headers(&[("content-type", "text/html")])));
        assert!(!p.applies(ok, &headers(&[("content-type", "text/html"), ("content-range", "bytes 0-9/100")])));
        assert!(!p.applies(StatusCode::NOT_MODIFIED, &headers(&[("content-type", "text/html")])));
    }

    #[test]
    fn vary_names_accept_encoding_once() {
        let mut h = headers(&[("vary", "Origin")]);
        vary_on_accept_encoding(&mut h);
        vary_on_accept_encoding(&mut h);
        let all: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(all, ["Origin", "Accept-Encoding"]);
        let mut star = headers(&[("vary", "*")]);
        vary_on_accept_encoding(&mut star);
        assert_eq!(star.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn the_body_is_compressed_to_its_end_and_after_a_failure_the_rest_is_dropped() {
        let stage = Compression { policy: Arc::new(policy()) };
        let mut exchange = Exchange::new(HeaderValue::from_static("r1"), std::net::Ipv4Addr::LOCALHOST.into());
        let mut compressed = Vec::new();
        exchange.state.insert(Compressing(Some(Encoder::new(Coding::Gzip).unwrap())));
        for (piece, end) in [("hello ", false), ("world", true)] {
            let mut chunk = Some(Bytes::from_static(piece.as_bytes()));
            stage.response_body(&mut chunk, end, &mut exchange);
            compressed.extend_from_slice(&chunk.unwrap_or_default());
        }
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut plain).unwrap();
        assert_eq!(plain, "hello world");
        // An encoder that failed leaves the stage dropping what is left of the body: sent
        // uncompressed under `Content-Encoding`, it would be garbage to the client.
        exchange.state.insert(Compressing(None));
        for end in [false, true] {
            let mut chunk = Some(Bytes::from_static(b"raw bytes"));
            stage.response_body(&mut chunk, end, &mut exchange);
            assert_eq!(chunk, None);
        }
    }
}
