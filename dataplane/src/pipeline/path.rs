//! The one rule every request path follows before it is routed or sent upstream.
//!
//! A gateway that splices captured path segments into an upstream URI must make sure that
//! no request can name a path outside the route it matched: `GET /files/{path+}` →
//! `http://up/files/{path}` must never reach `/secret.txt` on an upstream that resolves
//! `..` itself. The rule (documented in `docs/SECURITY.md` and `docs/CONFIG.md`):
//!
//! 1. The path is normalised as RFC 3986 §6.2.2 says: percent-encoded unreserved
//!    characters (`A-Z a-z 0-9 - . _ ~`) are decoded and the hex digits of every other
//!    escape are upper-cased. Routing, the base-path mapping and the upstream URI all use
//!    the normalised path.
//! 2. A request whose path has a `.` or `..` segment (after decoding, and also when a
//!    `;parameter` follows it, as servlet containers read `..;/`), an invalid escape, or an
//!    encoded NUL (`%00`) is refused with 400: nothing legitimate needs them, and removing
//!    dot segments instead would make the gateway and the upstream disagree on what the
//!    path names.
//! 3. After matching, a captured parameter may not contain an encoded slash (`%2F`) or a
//!    backslash (raw or `%5C`), which some upstreams read as a separator, unless the route
//!    sets `allow_encoded_slashes: true`.
//!
//! Every protocol (HTTP/1.1 origin and absolute form, HTTP/2 `:path`) and every host form
//! (default endpoint, custom domain) goes through [`normalize`], in one place in the
//! pipeline, so there is nothing to forget when an integration builds an upstream URI.
//!
//! ```
//! use meridian_dataplane::pipeline::path::{normalize, PathRefusal};
//! assert_eq!(normalize("/files/%7euser/a%2fb").unwrap(), "/files/~user/a%2Fb");
//! assert_eq!(normalize("/files/%2e%2e/secret"), Err(PathRefusal::DotSegment));
//! assert_eq!(normalize("/files/..;/secret"), Err(PathRefusal::DotSegment));
//! ```

use std::borrow::Cow;

use crate::digest::from_hex;

/// Why a request path is refused (all are answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// A `.` or `..` segment, literal or encoded.
    DotSegment,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    EncodedNul,
    /// A captured parameter with `%2F`, `\` or `%5C` on a route that does not allow them.
    EncodedSeparator,
}

impl PathRefusal {
    /// The message the client gets.
    pub fn message(self) -> &'static str {
        match self {
            PathRefusal::DotSegment => "the request path has a `.` or `..` segment",
            PathRefusal::BadEscape => "the request path has an invalid percent-escape",
            PathRefusal::EncodedNul => "the request path has an encoded NUL byte",
            PathRefusal::EncodedSeparator => {
                "a path parameter contains an encoded `/` or a `\\`, which this route does not allow"
            }
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether a (normalised) segment is a dot segment, also with a `;parameter` after it.
fn is_dot_segment(segment: &str) -> bool {
    let name = segment.split_once(';').map_or(segment, |(name, _)| name);
    name == "." || name == ".."
}

/// Normalises `path` (without its query) and refuses the forms rule 2 names. Returns the
/// path itself, unallocated, when it needs no change (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathRefusal> {
    let normalized =
        if path.as_bytes().contains(&b'%') { Cow::Owned(decode_unreserved(path)?) } else { Cow::Borrowed(path) };
    if normalized.contains('.') && normalized.split('/').any(is_dot_segment) {
        return Err(PathRefusal::DotSegment);
    }
    Ok(normalized)
}

/// Decodes escapes of unreserved characters, upper-cases the others.
fn decode_unreserved(path: &str) -> Result<String, PathRefusal> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some([decoded]) = bytes.get(i + 1..i + 3).and_then(from_hex::<1>) else {
            return Err(PathRefusal::BadEscape);
        };
        if decoded == 0 {
            return Err(PathRefusal::EncodedNul);
        }
        if is_unreserved(decoded) {
            out.push(decoded);
        } else {
            out.extend_from_slice(&[b'%', bytes[i + 1].to_ascii_uppercase(), bytes[i + 2].to_ascii_uppercase()]);
        }
        i += 3;
    }
    // Only ASCII went in and only ASCII (or unchanged input bytes) came out.
    String::from_utf8(out).map_err(|_| PathRefusal::BadEscape)
}

/// Rule 3: whether a captured parameter (of a normalised path) may be spliced upstream.
pub fn check_capture(capture: &str, allow_encoded_slashes: bool) -> Result<(), PathRefusal> {
    if allow_encoded_slashes || !capture.contains(['%', '\\']) {
        return Ok(());
    }
    if capture.contains('\\') || capture.contains("%2F") || capture.contains("%5C") {
        return Err(PathRefusal::EncodedSeparator);
    }
    Ok(())
}

/// What an upstream that resolves everything itself makes of a path: escapes decoded,
/// backslashes as slashes, dot segments removed (RFC 3986 §5.2.4), `;params` dropped. The
/// oracle of the property test below and of the fuzzing harness: whatever the gateway sends
/// upstream must stay under the route's prefix even as such an upstream reads it.
pub fn as_a_lenient_upstream_reads_it(path: &str) -> String {
    let mut decoded = Vec::new();
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some([byte]) = bytes.get(i + 1..i + 3).and_then(from_hex::<1>)
        {
            decoded.push(byte);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment.split(';').next().unwrap_or("") {
            "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment),
        }
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integration::uri::UpstreamTemplate;
    use crate::router::{Router, parse_route_key};
    use proptest::prelude::*;

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        assert!(matches!(normalize("/pets/42").unwrap(), Cow::Borrowed("/pets/42")));
        assert!(matches!(normalize("/v1.2/file.txt").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed("/")));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(normalize("/%70ets/%41%2d").unwrap(), "/pets/A-");
        assert_eq!(normalize("/a%2fb/%3a").unwrap(), "/a%2Fb/%3A");
        assert_eq!(normalize("/%C3%A9t%c3%a9").unwrap(), "/%C3%A9t%C3%A9");
    }

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for path in [
            "/files/../secret.txt",
            "/files/./x",
            "/files/%2e%2e/secret",
            "/files/%2E./secret",
            "/files/.%2e/secret",
            "/files/x/../../secret",
            "/..",
            "/files/..;jsessionid=1/secret",
            "/files/..",
        ] {
            assert_eq!(normalize(path), Err(PathRefusal::DotSegment), "{path}");
        }
        // Dots inside names are fine.
        assert!(normalize("/files/..hidden/a..b/...").is_ok());
    }

    #[test]
    fn bad_escapes_and_nul_are_refused() {
        assert_eq!(normalize("/a%zz"), Err(PathRefusal::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathRefusal::BadEscape));
        assert_eq!(normalize("/a%00b"), Err(PathRefusal::EncodedNul));
    }

    #[test]
    fn encoded_separators_in_captures_need_the_route_to_allow_them() {
        assert_eq!(check_capture("a%2Fb", false), Err(PathRefusal::EncodedSeparator));
        assert_eq!(check_capture("a\\b", false), Err(PathRefusal::EncodedSeparator));
        assert_eq!(check_capture("a%5Cb", false), Err(PathRefusal::EncodedSeparator));
        assert_eq!(check_capture("a%20b", false), Ok(()));
        assert_eq!(check_capture("a%2Fb", true), Ok(()));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E".to_string()),
                Just("%2f".to_string()),
                Just("%5c".to_string()),
                Just("\\".to_string()),
                Just(";x".to_string()),
                Just("%25".to_string()),
                Just("%".to_string()),
                "[a-z0-9]{1,3}",
            ],
            0..4,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        /// No request path renders an upstream path outside the route's literal prefix, even
        /// as an upstream that decodes escapes and resolves dot segments reads it.
        #[test]
        fn no_request_path_escapes_its_route(segments in prop::collection::vec(segment(), 0..6)) {
            let mut router = Router::default();
            for (key, template) in [
                ("GET /files/{path+}", "http://up/static/{path}"),
                ("GET /users/{id}/avatar", "http://up/avatars/{id}/image"),
            ] {
                let (method, pattern) = parse_route_key(key).unwrap();
                let upstream = UpstreamTemplate::compile(template, &pattern.param_names()).unwrap();
                router.insert(method, &pattern, Default::default(), upstream).unwrap();
            }
            for prefix in ["/files/", "/users/"] {
                let raw = format!("{prefix}{}", segments.join("/"));
                // http's URI parser is the first gate, as in the server.
                let Ok(uri) = raw.parse::<http::Uri>() else { continue };
                let Ok(path) = normalize(uri.path()) else { continue };
                let none = http::HeaderMap::new();
                let facts = crate::router::RequestFacts::of(&none, None);
                let Ok(matched) = router.find(&http::Method::GET, &path, &facts) else { continue };
                if matched.captures.iter().any(|&(s, e)| check_capture(&path[s..e], false).is_err()) {
                    continue;
                }
                let rendered = matched.value.render(&path, &matched.captures, None).unwrap();
                let seen = as_a_lenient_upstream_reads_it(rendered.path());
                let allowed = if prefix == "/files/" { "/static/" } else { "/avatars/" };
                prop_assert!(seen.starts_with(allowed), "{raw} → {} → {seen}", rendered.path());
            }
        }

        #[test]
        fn normalizing_never_panics_and_is_idempotent(path in "/[a-zA-Z0-9%./;~_-]{0,40}") {
            if let Ok(once) = normalize(&path) {
                let twice = normalize(&once).map(Cow::into_owned);
                prop_assert_eq!(twice, Ok(once.into_owned()));
            }
        }
    }
}
