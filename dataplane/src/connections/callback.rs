//! The callback API over HTTP: `POST` (send a message), `GET` (describe) and `DELETE`
//! (close) a connection by id. The gateway serves it at `/{stage}/@connections/{id}` for
//! backends (signed requests), and the admin API at
//! `/v1/apis/{api}/stages/{stage}/connections/{id}` (the admin token); both answer the same.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};

use super::{CallAnswer, ConnectionCall, ConnectionId};
use crate::rejection::Rejection;

/// The methods the callback API answers.
pub const ALLOW: &str = "GET, POST, DELETE";

/// The connection id of a callback path's last segment, or 410 for one that cannot be an
/// id (no such connection ever existed).
pub fn connection_id(text: &str) -> Result<ConnectionId, Rejection> {
    ConnectionId::parse(text).ok_or_else(gone)
}

/// What a request asks of a connection; `body` is read only for `POST`.
pub fn call(method: &Method, body: Option<Bytes>) -> Result<ConnectionCall, Rejection> {
    match *method {
        Method::POST => match body {
            Some(bytes) if !bytes.is_empty() => Ok(ConnectionCall::Send(bytes)),
            _ => Err(Rejection::new(StatusCode::BAD_REQUEST, "the message to send is the request body; it is empty")),
        },
        Method::GET => Ok(ConnectionCall::Describe),
        Method::DELETE => Ok(ConnectionCall::Close),
        _ => Err(Rejection::new(StatusCode::METHOD_NOT_ALLOWED, "the callback API answers GET, POST and DELETE")
            .with_header(http::header::ALLOW, HeaderValue::from_static(ALLOW))),
    }
}

fn gone() -> Rejection {
    Rejection::new(StatusCode::GONE, "the connection is gone").with_reason("connection gone")
}

/// The answer to a call.
pub fn respond(answer: CallAnswer) -> Result<Response<Bytes>, Rejection> {
    let empty = |status| {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = status;
        response
    };
    match answer {
        CallAnswer::Sent => Ok(empty(StatusCode::OK)),
        CallAnswer::Closed => Ok(empty(StatusCode::NO_CONTENT)),
        CallAnswer::Described(view) => {
            let body = serde_json::to_vec(&view).unwrap_or_default();
            let mut response = Response::new(Bytes::from(body));
            response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        CallAnswer::Gone => Err(gone()),
        CallAnswer::Busy => Err(Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the connection's queue of messages is full (its client reads slowly); try again",
        )
        .with_reason("connection queue full")),
        CallAnswer::Unreachable(why) => {
            Err(Rejection::new(StatusCode::BAD_GATEWAY, "the node holding the connection did not answer")
                .with_reason(format!("callback forward failed: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_become_calls() {
        assert_eq!(call(&Method::POST, Some(Bytes::from_static(b"hi"))).unwrap(), ConnectionCall::Send("hi".into()));
        assert_eq!(call(&Method::POST, Some(Bytes::new())).unwrap_err().status, 400);
        assert_eq!(call(&Method::GET, None).unwrap(), ConnectionCall::Describe);
        assert_eq!(call(&Method::DELETE, None).unwrap(), ConnectionCall::Close);
        let refused = call(&Method::PUT, None).unwrap_err();
        assert_eq!(refused.status, 405);
    }

    #[test]
    fn answers_have_their_statuses() {
        assert_eq!(respond(CallAnswer::Sent).unwrap().status(), 200);
        assert_eq!(respond(CallAnswer::Closed).unwrap().status(), 204);
        assert_eq!(respond(CallAnswer::Gone).unwrap_err().status, 410);
        assert_eq!(respond(CallAnswer::Busy).unwrap_err().status, 429);
        assert_eq!(respond(CallAnswer::Unreachable("x".into())).unwrap_err().status, 502);
        assert_eq!(connection_id("nope").unwrap_err().status, 410);
    }
}
