//! gRPC as the gateway sees it: which requests are gRPC calls, the gRPC status a refusal of
//! the gateway's own becomes (a client reads `grpc-status`, not an HTTP body), and the
//! deadline a call carries in `grpc-timeout`.
//!
//! A gRPC call passes through an `http_proxy` with `http2: true` like any HTTP/2 request,
//! streams and trailers included; only the answers the gateway makes itself need this.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is a gRPC call (`Content-Type: application/grpc`, `application/grpc+proto`, ...).
pub fn is_call(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The gRPC status code for a refusal the gateway answers with `status`.
pub fn status_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 | 504 => 4,  // DEADLINE_EXCEEDED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        500..=599 => 13, // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// `message` as `grpc-message` carries it: percent-encoded outside printable ASCII.
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The deadline of a call: `grpc-timeout`, at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`); `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn calls_are_told_by_their_content_type() {
        assert!(is_call(&headers("content-type", "application/grpc")));
        assert!(is_call(&headers("content-type", "application/grpc+proto")));
        assert!(is_call(&headers("content-type", "Application/GRPC; charset=x")));
        assert!(!is_call(&headers("content-type", "application/grpc-web")));
        assert!(!is_call(&headers("content-type", "application/json")));
        assert!(!is_call(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_follow_the_wire_format() {
        assert_eq!(timeout(&headers("grpc-timeout", "250m")), Some(Duration::from_millis(250)));
        assert_eq!(timeout(&headers("grpc-timeout", "2S")), Some(Duration::from_secs(2)));
        assert_eq!(timeout(&headers("grpc-timeout", "1H")), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(&headers("grpc-timeout", bad)), None, "{bad}");
        }
    }

    #[test]
    fn refusals_map_to_grpc_codes_and_messages_are_escaped() {
        assert_eq!(status_code(StatusCode::TOO_MANY_REQUESTS), 8);
        assert_eq!(status_code(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(status_code(StatusCode::NOT_FOUND), 12);
        assert_eq!(status_code(StatusCode::BAD_GATEWAY), 14);
        assert_eq!(status_code(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(encode_message("100% done\n é"), "100%25 done%0A %C3%A9");
    }
}
