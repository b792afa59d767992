//! CORS: which web origins may call an API from a browser, answered by the gateway.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! before authorization (a browser never sends credentials on a preflight), with 204 and the
//! allowed methods, headers and max age, or 403 for an origin that is not allowed. Every
//! other response of the route, rejections included, carries `Access-Control-Allow-Origin`
//! (and credentials and exposed headers) when the request's origin is allowed, and
//! `Vary: Origin` always, so a cache never serves one origin's answer to another.
//!
//! This stage comes first in a route's chain: a 429 or a 401 still carries the headers, so
//! the browser shows the page the real status instead of an opaque CORS error.

use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, response};

use super::{Exchange, Flow, Phases, Services, Stage, Step, Stop};
use crate::body::ResponseBody;
use crate::rejection::Rejection;

/// One entry of `allow_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `*`: any origin (never with credentials).
    Any,
    /// `https://app.example.com[:port]`, compared case-insensitively.
    Exact(String),
    /// `https://*.example.com[:port]`: any subdomain (at least one label) of the suffix.
    Subdomains { scheme: String, suffix: String, port: Option<u16> },
}

impl OriginRule {
    /// Parses a rule as written in `allow_origins`.
    pub fn parse(text: &str) -> Result<OriginRule, String> {
        if text == "*" {
            return Ok(OriginRule::Any);
        }
        let bad = || format!("`{text}` is not an origin (`https://app.example.com`), `*`, or `https://*.example.com`");
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let (host, port) = split_port(rest).ok_or_else(bad)?;
        match host.strip_prefix("*.") {
            Some(suffix) if valid_host(suffix) && suffix.contains('.') => Ok(OriginRule::Subdomains {
                scheme: scheme.to_string(),
                suffix: format!(".{}", suffix.to_ascii_lowercase()),
                port,
            }),
            Some(_) => Err(bad()),
            None if valid_host(host) => Ok(OriginRule::Exact(text.to_ascii_lowercase())),
            None => Err(bad()),
        }
    }

    fn admits(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginRule::Subdomains { scheme, suffix, port } => {
                let Some((s, rest)) = origin.split_once("://") else { return false };
                let Some((host, p)) = split_port(rest) else { return false };
                let host = host.to_ascii_lowercase();
                s.eq_ignore_ascii_case(scheme)
                    && p == *port
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && valid_host(&host)
            }
        }
    }
}

fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok().filter(|p| *p != 0)?))),
        None => Some((authority, None)),
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// An API's (or route's) CORS settings, compiled.
#[derive(Debug)]
pub struct CorsPolicy {
    pub origins: Vec<OriginRule>,
    /// Comma-joined, ready to send.
    pub methods: HeaderValue,
    /// Comma-joined request headers a page may send (`None`: only the safelisted ones).
    pub headers: Option<HeaderValue>,
    /// `allow_headers: ["*"]`: allow what a preflight asks for.
    pub echo_headers: bool,
    pub expose: Option<HeaderValue>,
    pub max_age: HeaderValue,
    pub credentials: bool,
}

impl CorsPolicy {
    fn allowed<'h>(&self, origin: &'h HeaderValue) -> Option<&'h HeaderValue> {
        let text = origin.to_str().ok()?;
        self.origins.iter().any(|r| r.admits(text)).then_some(origin)
    }

    /// What `Access-Control-Allow-Origin` says to `origin`: `*` when any origin may call
    /// without credentials, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&OriginRule::Any) {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

/// The CORS stage of one route.
#[derive(Debug)]
pub struct Cors {
    pub policy: Arc<CorsPolicy>,
}

/// The allowed origin of the request, kept for the response phase.
#[derive(Debug, Clone)]
struct AllowedOrigin(HeaderValue);

/// This stage answered the request as a preflight.
#[derive(Debug, Clone, Copy)]
struct AnsweredPreflight;

fn is_preflight(head: &Parts) -> bool {
    head.method == Method::OPTIONS
        && head.headers.contains_key(ORIGIN)
        && head.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

impl Cors {
    fn preflight(&self, head: &Parts, origin: &HeaderValue) -> Flow {
        let policy = &*self.policy;
        let mut response = Response::new(ResponseBody::full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, policy.allow_origin(origin));
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, policy.methods.clone());
        let requested = head.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
        let allowed = if policy.echo_headers { requested.cloned() } else { policy.headers.clone() };
        if let Some(allowed) = allowed {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
        }
        headers.insert(ACCESS_CONTROL_MAX_AGE, policy.max_age.clone());
        if policy.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        headers.append(
            VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        Flow::Stop(Stop::Answer(response))
    }
}

impl Stage for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD | Phases::RESPONSE_HEAD
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        let origin = head.headers.get(ORIGIN);
        let allowed = origin.and_then(|o| self.policy.allowed(o)).cloned();
        if is_preflight(head) {
            return match &allowed {
                Some(origin) => {
                    exchange.state.insert(AnsweredPreflight);
                    self.preflight(head, origin).into()
                }
                None => Rejection::new(StatusCode::FORBIDDEN, "this origin may not call this API")
                    .with_reason("cors origin not allowed")
                    .into(),
            };
        }
        if let Some(origin) = allowed {
            exchange.state.insert(AllowedOrigin(origin));
        }
        Flow::Continue.into()
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        if exchange.state.get::<AnsweredPreflight>().is_some() {
            // Complete already, with its own `Vary`.
            return;
        }
        head.headers.append(VARY, HeaderValue::from_static("Origin"));
        let Some(AllowedOrigin(origin)) = exchange.state.get::<AllowedOrigin>() else { return };
        let policy = &*self.policy;
        head.headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, policy.allow_origin(origin));
        if policy.credentials {
            head.headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &policy.expose {
            head.headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn origin_rules_parse_and_match() {
        let exact = OriginRule::parse("https://App.example.com").unwrap();
        assert!(exact.admits("https://app.example.com"));
        assert!(!exact.admits("https://app.example.com:8443"));
        assert!(!exact.admits("http://app.example.com"));
        let subs = OriginRule::parse("https://*.example.com").unwrap();
        assert!(subs.admits("https://a.example.com") && subs.admits("https://a.b.example.com"));
        assert!(!subs.admits("https://example.com"), "the apex is not a subdomain");
        assert!(!subs.admits("https://evilexample.com"));
        assert!(!subs.admits("https://a.example.com.evil.test"));
        assert!(!subs.admits("http://a.example.com"));
        for bad in
            ["example.com", "https://", "https://*.com", "ftp://a.test", "https://a.test/path", "https://a.test:0"]
        {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_subdomain_rule_admits_exactly_its_subdomains(
            label in "[a-z0-9]{1,10}",
            other in "[a-z0-9]{1,10}\\.[a-z]{2,5}",
            scheme in prop_oneof![Just("http"), Just("https")],
        ) {
            let rule = OriginRule::parse("https://*.example.com").unwrap();
            let origin = format!("{scheme}://{label}.example.com");
            prop_assert_eq!(rule.admits(&origin), scheme == "https");
            // Any other registrable name, even ending in the same letters, is refused.
            let elsewhere = format!("https://{label}.{other}");
            prop_assert!(!rule.admits(&elsewhere) || other == "example.com");
            let glued = format!("https://{label}example.com");
            prop_assert!(!rule.admits(&glued));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}") {
            if let Ok(rule) = OriginRule::parse(&text) {
                let _ = rule.admits(&text);
            }
        }
    }
}
