//! Compiling CORS settings: origins (exact, `*`, `https://*.example.com`), methods, headers,
//! max age, credentials (never together with `*`), each checked with its line.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::super::model::*;
use super::super::parse_duration;
use super::Compiler;
use crate::stages::cors::{CorsPolicy, OriginRule};

const DEFAULT_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
const MAX_MAX_AGE: Duration = Duration::from_secs(7200);

impl Compiler<'_> {
    /// The compiled policy of `def`, or `None` (with its errors recorded).
    pub(super) fn cors(&mut self, def: &Spanned<CorsDef>, field: &str) -> Option<Arc<CorsPolicy>> {
        let at = def.referenced;
        let c = &def.value;
        let mut ok = true;
        let mut origins = Vec::new();
        if c.allow_origins.is_empty() {
            self.sink.push(at, format!("{field}.allow_origins"), "name at least one origin");
            ok = false;
        }
        for (i, o) in c.allow_origins.iter().enumerate() {
            match OriginRule::parse(o) {
                Ok(rule) => origins.push(rule),
                Err(e) => {
                    self.sink.push(at, format!("{field}.allow_origins[{i}]"), e);
                    ok = false;
                }
            }
        }
        if c.allow_credentials && origins.contains(&OriginRule::Any) {
            self.sink.push(
                at,
                format!("{field}.allow_credentials"),
                "credentials cannot be allowed to any origin (`*`): list the origins",
            );
            ok = false;
        }
        if c.allow_credentials && c.allow_headers.iter().any(|h| h == "*") {
            self.sink.push(at, format!("{field}.allow_headers"), "`*` cannot be used with `allow_credentials`");
            ok = false;
        }
        let methods = match &c.allow_methods {
            None => HeaderValue::from_static(DEFAULT_METHODS),
            Some(list) => {
                let valid = !list.is_empty()
                    && list
                        .iter()
                        .all(|m| Method::from_bytes(m.as_bytes()).is_ok() && m.bytes().all(|b| b.is_ascii_uppercase()));
                if !valid {
                    self.sink.push(
                        at,
                        format!("{field}.allow_methods"),
                        "list upper-case HTTP methods, e.g. `[GET, POST]`",
                    );
                    ok = false;
                }
                HeaderValue::from_str(&list.join(", ")).unwrap_or(HeaderValue::from_static(DEFAULT_METHODS))
            }
        };
        let header_list = |sink: &mut super::ErrorSink, list: &[String], name: &str| -> Option<Option<HeaderValue>> {
            if list.is_empty() {
                return Some(None);
            }
            if list.iter().any(|h| HeaderName::try_from(h.as_str()).is_err()) {
                sink.push(at, format!("{field}.{name}"), "list header names, e.g. `[content-type, x-request-id]`");
                return None;
            }
            Some(HeaderValue::from_str(&list.join(", ")).ok())
        };
        let star = c.allow_headers.iter().any(|h| h == "*");
        let headers = if star { Some(None) } else { header_list(&mut self.sink, &c.allow_headers, "allow_headers") };
        let expose = header_list(&mut self.sink, &c.expose_headers, "expose_headers");
        let max_age = match &c.max_age {
            None => DEFAULT_MAX_AGE,
            Some(text) => match parse_duration(text) {
                Ok(d) if d <= MAX_MAX_AGE => d,
                _ => {
                    self.sink.push(at, format!("{field}.max_age"), "a duration of at most 2h, e.g. `10m`");
                    ok = false;
                    DEFAULT_MAX_AGE
                }
            },
        };
        let (headers, expose) = (headers?, expose?);
        ok.then(|| {
            Arc::new(CorsPolicy {
                origins,
                methods,
                // No `allow_headers`: only the CORS-safelisted ones (the browser's default).
                headers,
                echo_headers: star,
                expose,
                max_age: HeaderValue::from(max_age.as_secs()),
                credentials: c.allow_credentials,
            })
        })
    }
}
