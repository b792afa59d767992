//! The admin API's own OpenAPI document, used as the gate every request passes first.
//!
//! The document (`openapi.json`, served at `/v1/openapi.json`) says which paths exist, which
//! methods each one takes and what shape each path parameter has. Rather than repeat that in
//! the handlers, a request is checked against it before any handler runs: a path that exists
//! with other methods is 405 with `Allow`, a path parameter outside its documented shape is
//! 400 naming it. So the document cannot drift from what the API accepts, and Schemathesis
//! (`tests/fuzz/admin-api.sh`) checks the same document against the running API.

use std::sync::OnceLock;

use http::Method;
use regex::Regex;

/// A documented path: its segments (`None` for a `{parameter}`), its methods and its
/// parameters' shapes.
struct DocumentedPath {
    segments: Vec<Segment>,
    methods: Vec<Method>,
    allow: String,
}

enum Segment {
    Literal(String),
    Parameter { name: String, shape: Shape },
}

/// What a path parameter's schema allows (the subset the document uses).
#[derive(Default)]
struct Shape {
    pattern: Option<Regex>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    one_of: Option<Vec<String>>,
    integer_from: Option<u64>,
}

impl Shape {
    fn from_schema(schema: &serde_json::Value) -> Shape {
        let usize_of = |key: &str| schema.get(key).and_then(|v| v.as_u64()).map(|v| v as usize);
        Shape {
            pattern: schema.get("pattern").and_then(|p| p.as_str()).and_then(|p| Regex::new(p).ok()),
            min_length: usize_of("minLength"),
            max_length: usize_of("maxLength"),
            one_of: schema
                .get("enum")
                .and_then(|e| e.as_array())
                .map(|e| e.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
            integer_from: (schema.get("type").and_then(|t| t.as_str()) == Some("integer"))
                .then(|| schema.get("minimum").and_then(|m| m.as_u64()).unwrap_or(0)),
        }
    }

    fn admits(&self, value: &str) -> bool {
        let chars = value.chars().count();
        self.pattern.as_ref().is_none_or(|p| p.is_match(value))
            && self.min_length.is_none_or(|m| chars >= m)
            && self.max_length.is_none_or(|m| chars <= m)
            && self.one_of.as_ref().is_none_or(|o| o.iter().any(|v| v == value))
            && self.integer_from.is_none_or(|min| value.parse::<u64>().is_ok_and(|n| n >= min))
    }
}

fn documented_paths() -> &'static [DocumentedPath] {
    static PATHS: OnceLock<Vec<DocumentedPath>> = OnceLock::new();
    PATHS.get_or_init(|| {
        // The document is part of the binary and a unit test parses it.
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap_or_default();
        let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else { return Vec::new() };
        paths
            .iter()
            .map(|(template, operations)| {
                let mut methods: Vec<Method> = operations
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .collect();
                methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                let shapes = |name: &str| {
                    operations
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.values())
                        .filter_map(|op| op.get("parameters").and_then(|p| p.as_array()))
                        .flatten()
                        .find(|p| p["in"] == "path" && p["name"] == name)
                        .map(|p| Shape::from_schema(&p["schema"]))
                        .unwrap_or_default()
                };
                let segments = template
                    .trim_matches('/')
                    .split('/')
                    .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => Segment::Parameter { name: name.to_string(), shape: shapes(name) },
                        None => Segment::Literal(s.to_string()),
                    })
                    .collect();
                let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                DocumentedPath { segments, methods, allow }
            })
            .collect()
    })
}

/// Why a request does not fit the document.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The path exists; these methods are documented for it.
    Method { allow: &'static str },
    /// A path parameter is outside its documented shape.
    Parameter { name: &'static str },
}

/// Checks `method` and `path` (decoded segments) against the document. Paths the document
/// does not know pass: the handlers answer them with 404.
pub fn check(method: &Method, path: &str) -> Result<(), Mismatch> {
    let segments: Vec<String> =
        path.trim_matches('/').split('/').map(meridian_dataplane::query::percent_decode).collect();
    let matches = |doc: &DocumentedPath| {
        doc.segments.len() == segments.len()
            && doc.segments.iter().zip(&segments).all(|(d, s)| match d {
                Segment::Literal(l) => l == s,
                Segment::Parameter { .. } => !s.is_empty(),
            })
    };
    // A literal beats a parameter: `/v1/cluster/promote` is not `/v1/keys/{key}`-like.
    let candidates: Vec<&DocumentedPath> = documented_paths().iter().filter(|d| matches(d)).collect();
    let Some(doc) =
        candidates.iter().max_by_key(|d| d.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count())
    else {
        return Ok(());
    };
    if !doc.methods.contains(method) {
        return Err(Mismatch::Method { allow: &doc.allow });
    }
    for (segment, value) in doc.segments.iter().zip(&segments) {
        if let Segment::Parameter { name, shape } = segment
            && !shape.admits(value)
        {
            return Err(Mismatch::Parameter { name });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_parameters_follow_the_document() {
        assert_eq!(check(&Method::GET, "/v1/keys"), Ok(()));
        assert_eq!(check(&Method::TRACE, "/v1/keys"), Err(Mismatch::Method { allow: "GET, POST" }));
        assert_eq!(check(&Method::GET, "/v1/apis/pets/stages/prod"), Ok(()));
        assert_eq!(check(&Method::GET, "/v1/apis/Pets!/stages/prod"), Err(Mismatch::Parameter { name: "api" }));
        assert_eq!(check(&Method::GET, "/v1/apis/pets/deployments/0"), Err(Mismatch::Parameter { name: "id" }));
        assert_eq!(check(&Method::POST, "/v1/keys/k1/explode"), Err(Mismatch::Parameter { name: "action" }));
        assert_eq!(check(&Method::POST, "/v1/cluster/promote"), Ok(()));
        assert_eq!(
            check(&Method::PUT, &format!("/v1/plans/{}", "p".repeat(65))),
            Err(Mismatch::Parameter { name: "plan" })
        );
        // Unknown paths are the handlers' 404.
        assert_eq!(check(&Method::GET, "/v1/nothing/here"), Ok(()));
    }
}
