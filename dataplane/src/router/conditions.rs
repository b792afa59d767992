//! Conditions a route may add to its method and path: a request header or a query parameter
//! that equals a value, matches a regular expression, or is present.
//!
//! A route with conditions serves a request only when all of them hold. Among the routes of
//! one method and path, the one with more conditions is tried first (then the order of
//! declaration), so `GET /pets` with `x-version: 2` and a plain `GET /pets` split the traffic
//! by header without either shadowing the other.

use std::fmt;

use http::{HeaderMap, HeaderName};
use regex::Regex;

use crate::query;

/// What part of the request a condition reads.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A request header (any of its values).
    Header(HeaderName),
    /// A query parameter, percent-decoded (any of its values).
    Query(String),
}

/// What a condition asks of its subject.
#[derive(Debug, Clone)]
pub enum Test {
    Equals(String),
    /// A regular expression searched in the value (anchor it with `^…$` to match whole).
    Matches(Regex),
    Present,
}

/// One condition of a route.
#[derive(Debug, Clone)]
pub struct Condition {
    pub subject: Subject,
    pub test: Test,
}

/// All the conditions of one route (none: it serves any request of its method and path).
#[derive(Debug, Clone, Default)]
pub struct RouteConditions(Vec<Condition>);

/// What of a request the conditions read.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    /// The query string, without its `?`.
    pub query: Option<&'a str>,
    /// Every condition holds: a CORS preflight asks about a request it does not carry the
    /// headers of, so the conditions cannot tell its routes apart.
    pub preflight: bool,
}

impl<'a> RequestFacts<'a> {
    pub fn of(headers: &'a HeaderMap, query: Option<&'a str>) -> Self {
        RequestFacts { headers, query, preflight: false }
    }
}

impl Test {
    fn accepts(&self, value: &str) -> bool {
        match self {
            Test::Equals(expected) => value == expected,
            Test::Matches(regex) => regex.is_match(value),
            Test::Present => true,
        }
    }
}

impl Condition {
    fn holds(&self, request: &RequestFacts<'_>) -> bool {
        match &self.subject {
            Subject::Header(name) => {
                request.headers.get_all(name).iter().any(|value| value.to_str().is_ok_and(|v| self.test.accepts(v)))
            }
            Subject::Query(name) => request.query.is_some_and(|q| {
                query::raw_pairs(q)
                    .filter(|(key, _)| query::decoded(key) == name.as_str())
                    .any(|(_, value)| self.test.accepts(&query::decoded(value)))
            }),
        }
    }
}

impl RouteConditions {
    pub fn new(conditions: Vec<Condition>) -> RouteConditions {
        RouteConditions(conditions)
    }

    /// How many conditions there are: a route with more is tried first.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every condition holds for `request`.
    pub fn hold(&self, request: &RequestFacts<'_>) -> bool {
        request.preflight || self.0.iter().all(|c| c.holds(request))
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Header(name) => write!(f, "header {name}")?,
            Subject::Query(name) => write!(f, "query {name}")?,
        }
        match &self.test {
            Test::Equals(v) => write!(f, " = {v:?}"),
            Test::Matches(r) => write!(f, " ~ /{}/", r.as_str()),
            Test::Present => write!(f, " present"),
        }
    }
}

/// The conditions in a canonical order (`header a = "1", query b present`): two routes
/// whose conditions print the same are the same route.
impl fmt::Display for RouteConditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut each: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        each.sort();
        f.write_str(&each.join(", "))
    }
}

impl PartialEq for RouteConditions {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        headers.iter().map(|(k, v)| (HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn each_test_reads_headers_and_decoded_query_values() {
        let header = |test| Condition { subject: Subject::Header(HeaderName::from_static("x-version")), test };
        let query = |test| Condition { subject: Subject::Query("fmt type".into()), test };
        let headers = facts(&[("x-version", "2"), ("x-version", "beta-3")]);
        let request = RequestFacts::of(&headers, Some("a=1&fmt+type=x%20ml&fmt%20type=json"));
        assert!(header(Test::Equals("2".into())).holds(&request));
        assert!(header(Test::Matches(Regex::new("^beta-\\d$").unwrap())).holds(&request));
        assert!(!header(Test::Equals("3".into())).holds(&request));
        assert!(header(Test::Present).holds(&request));
        assert!(query(Test::Equals("x ml".into())).holds(&request));
        assert!(query(Test::Equals("json".into())).holds(&request));
        assert!(query(Test::Present).holds(&request));
        let empty = HeaderMap::new();
        let bare = RequestFacts::of(&empty, None);
        assert!(!header(Test::Present).holds(&bare) && !query(Test::Present).holds(&bare));
        assert!(RouteConditions::default().hold(&bare));
        let both = RouteConditions::new(vec![header(Test::Present), query(Test::Equals("json".into()))]);
        assert!(both.hold(&request) && !both.hold(&bare));
        assert!(both.hold(&RequestFacts { preflight: true, ..bare }));
        let swapped = RouteConditions::new(vec![query(Test::Equals("json".into())), header(Test::Present)]);
        assert_eq!(both, swapped);
    }
}
