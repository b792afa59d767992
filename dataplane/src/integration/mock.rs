//! Mock integrations: a status, headers and a body fixed in the configuration.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

/// A prepared static response.
#[derive(Debug, Clone)]
pub struct MockIntegration {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl MockIntegration {
    /// The response, sharing the prepared body buffer.
    pub fn respond(&self) -> Response<Bytes> {
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_was_configured() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let mock = MockIntegration { status: StatusCode::CREATED, headers, body: Bytes::from_static(b"{}") };
        let response = mock.respond();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(&response.body()[..], b"{}");
    }
}
