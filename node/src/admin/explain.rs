//! `POST /v1/explain`: a request described in JSON (method, URL, headers, client address,
//! body), explained by the node's own request path ([`Pipeline::explain`]).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{json, message};
use meridian_dataplane::pipeline::Pipeline;

/// The largest request description accepted.
const MAX_DESCRIPTION: usize = 1 << 20;

/// A request to explain, as `meridian explain request` sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Described {
    method: String,
    /// `http://host/path?query` (the host becomes the `Host` header) or `/path?query` with
    /// a `Host` among the headers.
    url: String,
    /// `Name: value` lines, as curl's `-H` takes them.
    #[serde(default)]
    headers: Vec<String>,
    /// Who sends it (default 127.0.0.1).
    client_ip: Option<IpAddr>,
    /// The body, as text.
    #[serde(default)]
    body: String,
}

impl Described {
    /// The request head it describes, or what is wrong with it.
    fn head(&self) -> Result<http::request::Parts, String> {
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|_| format!("`{}` is not a method", self.method))?;
        let uri: Uri = self.url.parse().map_err(|_| format!("`{}` is not a URL", self.url))?;
        let mut request = Request::builder().method(method);
        if let Some(authority) = uri.authority() {
            if uri.scheme_str().is_some_and(|s| s != "http" && s != "https") {
                return Err("the URL's scheme is not http or https".into());
            }
            request = request.header(http::header::HOST, authority.as_str());
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = request.uri(path).body(()).map_err(|e| format!("not a request: {e}"))?;
        for line in &self.headers {
            let (name, value) = line.split_once(':').ok_or_else(|| format!("`{line}` is not `Name: value`"))?;
            let name =
                HeaderName::try_from(name.trim()).map_err(|_| format!("`{}` is not a header name", name.trim()))?;
            let value =
                HeaderValue::try_from(value.trim()).map_err(|_| format!("the value of `{name}` is not valid"))?;
            request.headers_mut().append(name, value);
        }
        if !self.body.is_empty() && !request.headers().contains_key(http::header::CONTENT_LENGTH) {
            request.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        Ok(request.into_parts().0)
    }
}

/// Answers `POST /v1/explain`.
pub(super) async fn handle(pipeline: &Arc<Pipeline>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let bytes = match Limited::new(request.into_body(), MAX_DESCRIPTION).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MiB or could not be read"),
    };
    let described: Described = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => return message(StatusCode::BAD_REQUEST, &format!("not a request description: {e}")),
    };
    let head = match described.head() {
        Ok(head) => head,
        Err(e) => return message(StatusCode::BAD_REQUEST, &e),
    };
    let client = described.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let explanation = pipeline.explain(head, Bytes::from(described.body), client).await;
    match serde_json::to_string(&explanation) {
        Ok(text) => json(StatusCode::OK, text),
        Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "the explanation could not be written"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(url: &str, headers: &[&str]) -> Described {
        Described {
            method: "GET".into(),
            url: url.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            client_ip: None,
            body: String::new(),
        }
    }

    #[test]
    fn descriptions_become_heads_or_say_what_is_wrong() {
        let head = described("http://pets.test/prod/pets?a=1", &["x-api-key: k"]).head().unwrap();
        assert_eq!(head.headers["host"], "pets.test");
        assert_eq!(head.uri, "/prod/pets?a=1");
        assert_eq!(head.headers["x-api-key"], "k");
        for (url, headers, error) in [
            ("ftp://x/", &[][..], "scheme"),
            ("http://a b/", &[][..], "not a URL"),
            ("/p", &["no colon"][..], "Name: value"),
            ("/p", &["bad name: v"][..], "header name"),
            ("/p", &["x: \u{7f}"][..], "not valid"),
        ] {
            let e = described(url, headers).head().unwrap_err();
            assert!(e.contains(error), "{url} {headers:?}: {e}");
        }
        let mut bad = described("/p", &[]);
        bad.method = "G ET".into();
        assert!(bad.head().unwrap_err().contains("not a method"));
    }
}
