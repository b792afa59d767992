//! The host a request is for, as a routing boundary.
//!
//! Custom domains decide which APIs a host serves, so the host must mean one thing to the
//! gateway, to every proxy in front of it and to the upstream. The rules (documented in
//! `docs/CONFIG.md`, "Hosts"):
//!
//! - one `Host` header at most (a duplicate is 400: proxies disagree on which one wins);
//! - the authority of an absolute-form URI (HTTP/1.1) or `:authority` (HTTP/2) and `Host`
//!   must name the same host when both are present (RFC 9112 §3.2, RFC 9113 §8.3.1), else 400;
//! - an HTTP/1.1 request without any host is 400 (RFC 9112 §3.2);
//! - a host is normalised before lookup: lower case, no port, no trailing dot
//!   (`API.Example.com.:443` is `api.example.com`), and only the characters a host name or
//!   an IP literal can hold are accepted.
//!
//! ```
//! use meridian_node::pipeline::host::normalize;
//! assert_eq!(normalize("API.Example.com.:443").unwrap(), "api.example.com");
//! assert_eq!(normalize("[::1]:8080").unwrap(), "[::1]");
//! assert!(normalize("evil.com/x").is_err());
//! ```

use std::borrow::Cow;

use http::Version;
use http::header::HOST;
use http::request::Parts;

/// Why a request's host is refused (all are answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRefusal {
    Missing,
    Duplicate,
    Mismatch,
    Invalid,
}

impl HostRefusal {
    pub fn message(self) -> &'static str {
        match self {
            HostRefusal::Missing => "an HTTP/1.1 request needs a Host header",
            HostRefusal::Duplicate => "the request has more than one Host header",
            HostRefusal::Mismatch => "the Host header and the request target name different hosts",
            HostRefusal::Invalid => "the Host header is not a valid host name",
        }
    }
}

/// Lower case, without port and trailing dot; refuses characters no host name holds.
pub fn normalize(authority: &str) -> Result<Cow<'_, str>, HostRefusal> {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => return Err(HostRefusal::Invalid),
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']');
    if host.is_empty() || !host.bytes().all(valid) {
        return Err(HostRefusal::Invalid);
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

/// The normalised host of a request, `None` only for HTTP/1.0 and HTTP/2 requests that
/// name none.
pub fn request_host(parts: &Parts) -> Result<Option<Cow<'_, str>>, HostRefusal> {
    let mut headers = parts.headers.get_all(HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err(HostRefusal::Duplicate);
    }
    let header = match header {
        Some(value) => Some(normalize(value.to_str().map_err(|_| HostRefusal::Invalid)?)?),
        None => None,
    };
    let target = parts.uri.authority().map(|a| normalize(a.as_str())).transpose()?;
    match (target, header) {
        (Some(t), Some(h)) if t != h => Err(HostRefusal::Mismatch),
        (Some(t), _) => Ok(Some(t)),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if parts.version == Version::HTTP_11 => Err(HostRefusal::Missing),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, version: Version, hosts: &[&str]) -> Parts {
        let mut builder = http::Request::builder().uri(uri).version(version);
        for h in hosts {
            builder = builder.header(HOST, *h);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize("api.example.com").unwrap(), "api.example.com");
        assert_eq!(normalize("API.example.COM:8443").unwrap(), "api.example.com");
        assert_eq!(normalize("api.example.com.").unwrap(), "api.example.com");
        assert_eq!(normalize("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(normalize("[::1]").unwrap(), "[::1]");
        for bad in ["", ".", "a b", "user@host", "a/b", "[::1", "h\u{e9}"] {
            assert_eq!(normalize(bad), Err(HostRefusal::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn one_host_that_agrees_with_the_target() {
        let p = parts("/x", Version::HTTP_11, &["a.test"]);
        assert_eq!(request_host(&p).unwrap().as_deref(), Some("a.test"));
        let p = parts("/x", Version::HTTP_11, &["a.test", "b.test"]);
        assert_eq!(request_host(&p), Err(HostRefusal::Duplicate));
        let p = parts("http://a.test/x", Version::HTTP_11, &["A.test.:80"]);
        assert_eq!(request_host(&p).unwrap().as_deref(), Some("a.test"));
        let p = parts("http://a.test/x", Version::HTTP_11, &["b.test"]);
        assert_eq!(request_host(&p), Err(HostRefusal::Mismatch));
        let p = parts("http://a.test/x", Version::HTTP_11, &[]);
        assert_eq!(request_host(&p).unwrap().as_deref(), Some("a.test"));
    }

    #[test]
    fn http_1_1_needs_a_host_and_older_or_h2_requests_may_lack_one() {
        assert_eq!(request_host(&parts("/x", Version::HTTP_11, &[])), Err(HostRefusal::Missing));
        assert_eq!(request_host(&parts("/x", Version::HTTP_10, &[])), Ok(None));
        assert_eq!(request_host(&parts("/x", Version::HTTP_2, &[])), Ok(None));
    }
}
