//! `POST /v1/apis/{api}/stages/{stage}/cache/flush`: empties a stage's response cache (or one
//! route's entries) on this node and, on a cluster member, on every other member at once,
//! answering once each has confirmed (or failed to within 2 s).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{AdminState, json, message};
use meridian_dataplane::response_cache::Flush;

/// The optional body: which route's entries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlushBody {
    route: Option<String>,
}

/// The API and stage of a `/v1/apis/{api}/stages/{stage}/cache/flush` path.
pub(super) fn flush_target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/apis/")?;
    let (api, rest) = rest.split_once("/stages/")?;
    let stage = rest.strip_suffix("/cache/flush")?;
    (!api.contains('/') && !stage.contains('/') && !api.is_empty() && !stage.is_empty()).then_some((api, stage))
}

pub(super) async fn handle(
    state: &Arc<AdminState>,
    api: &str,
    stage: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let bytes = match Limited::new(request.into_body(), 4096).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 4 KiB or could not be read"),
    };
    let body: FlushBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        FlushBody::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(b) => b,
            Err(e) => return message(StatusCode::BAD_REQUEST, &format!("not a flush request: {e}")),
        }
    };
    if let Some(route) = &body.route
        && meridian_dataplane::router::parse_route_key(route).is_err()
    {
        return message(StatusCode::BAD_REQUEST, &format!("`{route}` is not a route key such as `GET /pets/{{id}}`"));
    }
    let flush = Flush { api: api.to_string(), stage: stage.to_string(), route: body.route };
    let started = Instant::now();
    state.pipeline.caches().flush(&flush);
    let mut flushed = vec![serde_json::json!("this node")];
    let mut failed = Vec::new();
    if let Some(member) = state.cluster.get() {
        flushed = vec![serde_json::json!(member.id)];
        for (node, outcome) in member.flush_caches_elsewhere(&flush).await {
            match outcome {
                Ok(()) => flushed.push(serde_json::json!(node)),
                Err(error) => failed.push(serde_json::json!({ "node": node, "error": error })),
            }
        }
    }
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = if failed.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut answer = serde_json::json!({ "flushed": flushed, "failed": failed, "took_ms": took_ms });
    if !failed.is_empty() {
        answer["message"] = serde_json::json!("some nodes did not confirm the flush; their entries end with their TTL");
    }
    json(status, answer.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn flush_paths() {
        assert_eq!(super::flush_target("/v1/apis/pets/stages/prod/cache/flush"), Some(("pets", "prod")));
        for bad in [
            "/v1/apis/pets/stages/prod/cache",
            "/v1/apis//stages/prod/cache/flush",
            "/v1/apis/a/b/stages/p/cache/flush",
        ] {
            assert_eq!(super::flush_target(bad), None, "{bad}");
        }
    }
}
