//! Redirect integrations: a route answered by the gateway with 301, 302, 303, 307 or 308 and
//! a `Location` made from a template (another origin or a path of this one, the route's
//! captures spliced in, the request's query kept or replaced). Nothing goes upstream.

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderValue, Response, StatusCode};

use super::uri::LocationTemplate;

/// The statuses a redirect may answer with.
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// A compiled redirect for one route of one stage.
#[derive(Debug, Clone)]
pub struct RedirectIntegration {
    pub status: StatusCode,
    pub location: LocationTemplate,
}

impl RedirectIntegration {
    /// The answer to a request whose route path captured `captures`; `None` when the
    /// location cannot be a header value (the path is normalised, so it always can).
    pub fn respond(&self, path: &str, captures: &[(usize, usize)], query: Option<&str>) -> Option<Response<Bytes>> {
        let location = HeaderValue::try_from(self.location.render(path, captures, query)).ok()?;
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = self.status;
        response.headers_mut().insert(LOCATION, location);
        Some(response)
    }
}
