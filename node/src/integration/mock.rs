//! Mock integrations: a status, headers and a body fixed in the configuration.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use crate::body::ResponseBody;

/// A prepared static response.
#[derive(Debug, Clone)]
pub struct MockIntegration {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl MockIntegration {
    /// The response, sharing the prepared body buffer.
    pub fn respond(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::Full(Some(self.body.clone())));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn answers_what_was_configured() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let mock = MockIntegration { status: StatusCode::CREATED, headers, body: Bytes::from_static(b"{}") };
        let response = mock.respond();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}");
    }
}
