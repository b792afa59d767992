//! `/v1/apis/{api}/stages/{stage}/connections/{id}`: the callback API of a WebSocket API
//! for operators and backends that hold the admin token: `POST` sends the body as a message,
//! `GET` describes the connection, `DELETE` closes it, on whichever node holds it.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::{AdminState, message};
use meridian_dataplane::connections::{Target, callback};

/// The largest message the admin API sends (the most any WebSocket API allows).
const MAX_MESSAGE: usize = 1024 * 1024;

/// The API, stage and connection id of a `/v1/apis/{api}/stages/{stage}/connections/{id}` path.
pub(super) fn connection_target(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/v1/apis/")?;
    let (api, rest) = rest.split_once("/stages/")?;
    let (stage, id) = rest.split_once("/connections/")?;
    let plain = |s: &str| !s.is_empty() && !s.contains('/');
    (plain(api) && plain(stage) && plain(id)).then_some((api, stage, id))
}

pub(super) async fn handle(
    state: &Arc<AdminState>,
    (api, stage, id): (&str, &str, &str),
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match parts.method {
        http::Method::POST => match Limited::new(body, MAX_MESSAGE).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "the message is over 1 MiB or could not be read"),
        },
        _ => None,
    };
    // What is asked is checked before whom it is for: a bad request is 400 whatever the id.
    let call = match callback::call(&parts.method, body) {
        Ok(call) => call,
        Err(r) => return message(r.status, &r.message),
    };
    let id = match callback::connection_id(id) {
        Ok(id) => id,
        Err(r) => return message(r.status, &r.message),
    };
    let target = Target { api: api.to_string(), stage: stage.to_string(), id };
    match callback::respond(state.pipeline.connections().call(target, call).await) {
        Ok(answer) => answer.map(Full::new),
        Err(r) => message(r.status, &r.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_api_a_stage_and_a_connection() {
        assert_eq!(connection_target("/v1/apis/chat/stages/prod/connections/AAAA"), Some(("chat", "prod", "AAAA")));
        assert_eq!(connection_target("/v1/apis/chat/stages/prod/connections/"), None);
        assert_eq!(connection_target("/v1/apis/chat/stages/prod/connections/a/b"), None);
        assert_eq!(connection_target("/v1/apis/chat/stages/prod/cache/flush"), None);
    }
}
