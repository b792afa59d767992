//! Path and host rewrites: what an `http_proxy` sends upstream, changed after its URI
//! template made it. A path rewrite replaces a prefix (`/api` → `/v2`) or rewrites the path
//! by a regular expression with captures (`^/users/([^/]+)/(.*)$` → `/$2/owner/$1`); it makes
//! a path and never a query (the query stays the request's). A host rewrite sets the `Host`
//! the upstream sees; the targets stay the integration's.

use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use regex::Regex;

use super::{Exchange, Phases, Stage};

/// How the upstream path is rewritten.
#[derive(Debug)]
pub enum PathRewrite {
    /// A path that starts with `prefix` (at a segment boundary) has it replaced.
    Prefix { prefix: String, replacement: String },
    /// A path the expression matches is replaced by the expansion of `replacement` (`$1`,
    /// `${name}`).
    Pattern { regex: Regex, replacement: String },
}

/// An `http_proxy`'s `rewrite`.
#[derive(Debug)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    pub host: Option<Authority>,
}

impl PathRewrite {
    /// The rewritten path, or `None` when this rewrite does not apply to `path`.
    pub fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathRewrite::Prefix { prefix, replacement } => {
                let rest = path.strip_prefix(prefix.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')) {
                    return None;
                }
                let joined = match (replacement.strip_suffix('/'), rest.starts_with('/')) {
                    (Some(base), true) => format!("{base}{rest}"),
                    _ => format!("{replacement}{rest}"),
                };
                Some(if joined.is_empty() { "/".to_string() } else { joined })
            }
            PathRewrite::Pattern { regex, replacement } => {
                let captures = regex.captures(path)?;
                let mut out = String::new();
                captures.expand(replacement, &mut out);
                Some(out)
            }
        }
    }
}

impl Stage for Rewrite {
    fn name(&self) -> &'static str {
        "rewrite"
    }

    fn phases(&self) -> Phases {
        Phases::UPSTREAM_REQUEST
    }

    fn upstream_request(&self, head: &mut Parts, exchange: &mut Exchange) {
        let mut parts = head.uri.clone().into_parts();
        if let (Some(rewrite), Some(pq)) = (&self.path, &parts.path_and_query)
            && let Some(path) = rewrite.apply(pq.path())
        {
            let rewritten = match pq.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            match PathAndQuery::try_from(rewritten) {
                // A rewrite makes a path: a `?` it produced would be a query nobody asked for.
                Ok(pq) if pq.query() == parts.path_and_query.as_ref().and_then(|p| p.query()) => {
                    parts.path_and_query = Some(pq)
                }
                _ => {
                    tracing::warn!(request_id = ?exchange.request_id, "a path rewrite made an invalid path; the path is sent as it was");
                }
            }
        }
        if let Some(host) = &self.host {
            parts.authority = Some(host.clone());
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            head.uri = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_replace_whole_segments_and_patterns_expand_captures() {
        let prefix = PathRewrite::Prefix { prefix: "/api".into(), replacement: "/v2".into() };
        assert_eq!(prefix.apply("/api/pets/1").as_deref(), Some("/v2/pets/1"));
        assert_eq!(prefix.apply("/api").as_deref(), Some("/v2"));
        assert_eq!(prefix.apply("/apis/pets"), None, "a prefix ends at a segment boundary");
        assert_eq!(prefix.apply("/other"), None);
        let to_root = PathRewrite::Prefix { prefix: "/api".into(), replacement: "".into() };
        assert_eq!(to_root.apply("/api").as_deref(), Some("/"));
        assert_eq!(to_root.apply("/api/x").as_deref(), Some("/x"));
        let pattern = PathRewrite::Pattern {
            regex: Regex::new("^/users/(?P<user>[^/]+)/repos/(.*)$").unwrap(),
            replacement: "/repos/$2/owner/${user}".into(),
        };
        assert_eq!(pattern.apply("/users/ada/repos/engine").as_deref(), Some("/repos/engine/owner/ada"));
        assert_eq!(pattern.apply("/users/ada"), None);
    }

    #[test]
    fn the_upstream_uri_gets_the_new_path_and_host_and_keeps_its_query() {
        let rewrite = Rewrite {
            path: Some(PathRewrite::Prefix { prefix: "/api".into(), replacement: "/v2".into() }),
            host: Some(Authority::from_static("internal.example.com")),
        };
        let (mut head, ()) = http::Request::get("http://10.0.0.1:8080/api/pets?page=2").body(()).unwrap().into_parts();
        let mut exchange = Exchange::new(http::HeaderValue::from_static("r"), "127.0.0.1".parse().unwrap());
        rewrite.upstream_request(&mut head, &mut exchange);
        assert_eq!(head.uri.to_string(), "http://internal.example.com/v2/pets?page=2");
        let sneaky = Rewrite {
            path: Some(PathRewrite::Pattern {
                regex: Regex::new("^/(.*)$").unwrap(),
                replacement: "/x?admin=1".into(),
            }),
            host: None,
        };
        let (mut head, ()) = http::Request::get("http://up/pets").body(()).unwrap().into_parts();
        sneaky.upstream_request(&mut head, &mut exchange);
        assert_eq!(head.uri.to_string(), "http://up/pets", "a rewrite never makes a query");
    }
}
