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
//! use meridian_dataplane::pipeline::host::normalize;
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
    normalize_bytes(authority.as_bytes())
}

/// [`normalize`] of a field's bytes, in one pass over the host: every request's `Host` goes
/// through it, and a byte no host name holds (anything but ASCII letters, digits and
/// `-._:[]`) is refused whatever its encoding, as is a port that is not text.
fn normalize_bytes(authority: &[u8]) -> Result<Cow<'_, str>, HostRefusal> {
    let end = match authority.first() {
        Some(b'[') => authority.iter().position(|&b| b == b']').ok_or(HostRefusal::Invalid)? + 1,
        _ => authority.iter().rposition(|&b| b == b':').unwrap_or(authority.len()),
    };
    let (host, port) = authority.split_at(end);
    // The port is not read, but a field's value is text: visible ASCII, spaces and tabs.
    if !port.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return Err(HostRefusal::Invalid);
    }
    let host = host.strip_suffix(b".").unwrap_or(host);
    let mut upper = false;
    for &b in host {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')) {
            return Err(HostRefusal::Invalid);
        }
        upper |= b.is_ascii_uppercase();
    }
    // Every byte is ASCII now, so the host is text.
    let host = std::str::from_utf8(host).map_err(|_| HostRefusal::Invalid)?;
    match (host.is_empty(), upper) {
        (true, _) => Err(HostRefusal::Invalid),
        (false, true) => Ok(Cow::Owned(host.to_ascii_lowercase())),
        (false, false) => Ok(Cow::Borrowed(host)),
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
        Some(value) => Some(normalize_bytes(value.as_bytes())?),
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

    /// What normalising means, written the obvious way: the one-pass [`normalize_bytes`]
    /// must agree with it on any input.
    fn normalized_plainly(authority: &[u8]) -> Result<String, HostRefusal> {
        let value = http::HeaderValue::from_bytes(authority).map_err(|_| HostRefusal::Invalid)?;
        let authority = value.to_str().map_err(|_| HostRefusal::Invalid)?;
        let host = if authority.starts_with('[') {
            &authority[..=authority.find(']').ok_or(HostRefusal::Invalid)?]
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']');
        if host.is_empty() || !host.bytes().all(valid) {
            return Err(HostRefusal::Invalid);
        }
        Ok(host.to_ascii_lowercase())
    }

    proptest::proptest! {
        #[test]
        fn one_pass_normalising_agrees_with_the_plain_definition(
            authority in proptest::collection::vec(
                proptest::sample::select(b"aZ09-._:[]@/ \t\r\xc3\xa9\x80".to_vec()), 0..16),
        ) {
            let ours = normalize_bytes(&authority).map(Cow::into_owned);
            proptest::prop_assert_eq!(ours, normalized_plainly(&authority));
        }
    }

    #[test]
    fn a_host_field_with_bytes_beyond_ascii_is_refused() {
        let mut p = parts("/x", Version::HTTP_11, &[]);
        p.headers.insert(HOST, http::HeaderValue::from_bytes(b"h\xc3\xa9.test").unwrap());
        assert_eq!(request_host(&p), Err(HostRefusal::Invalid));
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
