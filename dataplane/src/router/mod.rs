//! Route matching: `METHOD /path/{param}/{greedy+}` → the route that serves a request.
//!
//! Routes are compiled into a segment trie once per configuration revision. A lookup walks
//! the request path without allocating (unless the route captures more than four
//! parameters) and prefers, at every segment, a literal over a `{param}` over a greedy
//! `{name+}`, so the most specific pattern wins regardless of declaration order. Then a
//! route for the request's method beats `ANY`, and among routes of the same method and path
//! the one with more [`conditions`] (headers, query parameters) is tried first; a path whose
//! routes' conditions all fail lets a less specific path serve the request. A path that
//! matches some route but not with this method yields [`RouteMiss::MethodNotAllowed`] with
//! the methods the most specific matching path accepts.

pub mod conditions;

use std::collections::HashMap;
use std::fmt;

use http::Method;
use smallvec::SmallVec;

pub use conditions::{RequestFacts, RouteConditions};

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

/// A parsed path pattern such as `/pets/{id}` or `/{proxy+}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses a pattern; the error says what is wrong with it.
    ///
    /// ```
    /// use meridian_dataplane::router::{PathPattern, Segment};
    /// let p = PathPattern::parse("/pets/{id}").unwrap();
    /// assert_eq!(p.segments[1], Segment::Param("id".into()));
    /// assert!(PathPattern::parse("/{proxy+}/more").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("path pattern `{text}` must start with `/`"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = text[1..].split('/').collect();
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                if i + 1 == count && i > 0 {
                    return Err(format!("path pattern `{text}` must not end with `/`"));
                }
                if count == 1 {
                    break; // the root pattern "/"
                }
                return Err(format!("path pattern `{text}` has an empty segment"));
            }
            if let Some(inner) = part.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return Err(format!("segment `{part}` opens `{{` without closing it"));
                };
                let (name, greedy) = match inner.strip_suffix('+') {
                    Some(name) => (name, true),
                    None => (inner, false),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("parameter `{part}` must be a name of letters, digits and `_`"));
                }
                if segments.iter().any(|s| matches!(s, Segment::Param(n) | Segment::Greedy(n) if n == name)) {
                    return Err(format!("parameter `{name}` appears twice"));
                }
                if greedy {
                    if i + 1 != count {
                        return Err(format!("greedy parameter `{part}` must be the last segment"));
                    }
                    segments.push(Segment::Greedy(name.to_string()));
                } else {
                    segments.push(Segment::Param(name.to_string()));
                }
            } else if part.contains(['{', '}']) {
                return Err(format!("segment `{part}` mixes text and a parameter"));
            } else if part.contains(['?', '#', ' ']) {
                return Err(format!("segment `{part}` contains `?`, `#` or a space"));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathPattern { segments })
    }

    /// Parameter names in capture order.
    pub fn param_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) | Segment::Greedy(n) => Some(n.clone()),
                Segment::Literal(_) => None,
            })
            .collect()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            match s {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Param(n) => write!(f, "/{{{n}}}")?,
                Segment::Greedy(n) => write!(f, "/{{{n}+}}")?,
            }
        }
        Ok(())
    }
}

/// The method part of a route key: a method or `ANY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodMatch {
    Any,
    Exactly(Method),
}

/// Parses a route key `"GET /pets/{id}"` or `"ANY /{proxy+}"`.
pub fn parse_route_key(text: &str) -> Result<(MethodMatch, PathPattern), String> {
    let mut parts = text.split_whitespace();
    let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("route `{text}` must be `METHOD /path`, e.g. `GET /pets/{{id}}`"));
    };
    let method = match method {
        "ANY" => MethodMatch::Any,
        m if m.bytes().all(|b| b.is_ascii_uppercase()) => {
            MethodMatch::Exactly(Method::from_bytes(m.as_bytes()).map_err(|_| format!("`{m}` is not an HTTP method"))?)
        }
        m => return Err(format!("method `{m}` must be upper case (or `ANY`)")),
    };
    Ok((method, PathPattern::parse(path)?))
}

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMiss {
    NotFound,
    /// The path exists; these methods are accepted there.
    MethodNotAllowed(Vec<Method>),
}

/// The captured parameter values of a match, as byte ranges of the path in the pattern's
/// parameter order: kept inline up to four, so a lookup allocates nothing on most routes.
pub type Captures = SmallVec<[(usize, usize); 4]>;

/// A successful lookup: the route's value and the captured parameter values.
#[derive(Debug)]
pub struct RouteMatch<'r, T> {
    pub value: &'r T,
    pub captures: Captures,
}

/// A route at an endpoint: its conditions and its value's index.
#[derive(Debug)]
struct Candidate {
    conditions: RouteConditions,
    index: usize,
}

/// The routes of one path: by method, and for `ANY`; each list with the most conditions
/// first.
#[derive(Debug, Default)]
struct Endpoint {
    methods: Vec<(Method, Vec<Candidate>)>,
    any: Vec<Candidate>,
}

impl Endpoint {
    fn pick(&self, method: &Method, request: &RequestFacts<'_>) -> Option<usize> {
        let first = |list: &[Candidate]| list.iter().find(|c| c.conditions.hold(request)).map(|c| c.index);
        self.methods.iter().find(|(m, _)| m == method).and_then(|(_, list)| first(list)).or_else(|| first(&self.any))
    }

    /// Whether some route here takes `method` (whatever its conditions).
    fn serves(&self, method: &Method) -> bool {
        !self.any.is_empty() || self.methods.iter().any(|(m, _)| m == method)
    }

    fn allowed(&self) -> Vec<Method> {
        self.methods.iter().map(|(m, _)| m.clone()).collect()
    }
}

/// Adds a route to `list` after those with at least as many conditions; `Err` when one with
/// the same conditions is there.
fn add_candidate(list: &mut Vec<Candidate>, candidate: Candidate) -> Result<(), DuplicateRoute> {
    if list.iter().any(|c| c.conditions == candidate.conditions) {
        return Err(DuplicateRoute);
    }
    let at = list.iter().position(|c| c.conditions.len() < candidate.conditions.len()).unwrap_or(list.len());
    list.insert(at, candidate);
    Ok(())
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    greedy: Option<Endpoint>,
    endpoint: Option<Endpoint>,
}

/// Routes of one API deployment, compiled for lookup.
#[derive(Debug)]
pub struct Router<T> {
    root: Node,
    values: Vec<T>,
}

/// A route was declared twice with the same method and path shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRoute;

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router { root: Node::default(), values: Vec::new() }
    }
}

impl<T> Router<T> {
    /// Adds a route. Two patterns that differ only in parameter names are the same route,
    /// unless their conditions differ.
    pub fn insert(
        &mut self,
        method: MethodMatch,
        pattern: &PathPattern,
        conditions: RouteConditions,
        value: T,
    ) -> Result<(), DuplicateRoute> {
        let mut node = &mut self.root;
        let mut greedy = false;
        for segment in &pattern.segments {
            match segment {
                Segment::Literal(l) => node = node.literals.entry(l.clone()).or_default(),
                Segment::Param(_) => node = node.param.get_or_insert_with(Default::default),
                Segment::Greedy(_) => greedy = true,
            }
        }
        let slot = if greedy { &mut node.greedy } else { &mut node.endpoint };
        let endpoint = slot.get_or_insert_with(Endpoint::default);
        let candidate = Candidate { conditions, index: self.values.len() };
        match method {
            MethodMatch::Any => add_candidate(&mut endpoint.any, candidate)?,
            MethodMatch::Exactly(m) => match endpoint.methods.iter_mut().find(|(x, _)| *x == m) {
                Some((_, list)) => add_candidate(list, candidate)?,
                None => endpoint.methods.push((m, vec![candidate])),
            },
        }
        self.values.push(value);
        Ok(())
    }

    /// All route values, in insertion order.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Finds the most specific route for `method` and `path` (the path without its query)
    /// whose conditions `request` meets.
    pub fn find(
        &self,
        method: &Method,
        path: &str,
        request: &RequestFacts<'_>,
    ) -> Result<RouteMatch<'_, T>, RouteMiss> {
        let mut captures = Captures::new();
        let mut first_path: Option<&Endpoint> = None;
        let lookup = Lookup { path, method, request };
        match walk(&self.root, &lookup, 0, &mut captures, &mut first_path) {
            Some(index) => Ok(RouteMatch { value: &self.values[index], captures }),
            None => match first_path {
                // The path has routes for this method, but their conditions did not hold.
                Some(endpoint) if endpoint.serves(method) => Err(RouteMiss::NotFound),
                Some(endpoint) => Err(RouteMiss::MethodNotAllowed(endpoint.allowed())),
                None => Err(RouteMiss::NotFound),
            },
        }
    }
}

/// What one lookup searches for.
struct Lookup<'a> {
    path: &'a str,
    method: &'a Method,
    request: &'a RequestFacts<'a>,
}

/// Next segment of `path` at or after `pos`: its byte range, skipping the leading `/`s.
fn next_segment(path: &str, pos: usize) -> Option<(usize, usize)> {
    let bytes = path.as_bytes();
    let mut start = pos;
    while start < bytes.len() && bytes[start] == b'/' {
        start += 1;
    }
    if start >= bytes.len() {
        return None;
    }
    let end = path[start..].find('/').map_or(bytes.len(), |i| start + i);
    Some((start, end))
}

fn walk<'r>(
    node: &'r Node,
    lookup: &Lookup<'_>,
    pos: usize,
    captures: &mut Captures,
    first_path: &mut Option<&'r Endpoint>,
) -> Option<usize> {
    let path = lookup.path;
    let Some((start, end)) = next_segment(path, pos) else {
        let endpoint = node.endpoint.as_ref()?;
        first_path.get_or_insert(endpoint);
        return endpoint.pick(lookup.method, lookup.request);
    };
    if let Some(child) = node.literals.get(&path[start..end])
        && let Some(found) = walk(child, lookup, end, captures, first_path)
    {
        return Some(found);
    }
    if let Some(child) = &node.param {
        captures.push((start, end));
        if let Some(found) = walk(child, lookup, end, captures, first_path) {
            return Some(found);
        }
        captures.pop();
    }
    if let Some(endpoint) = &node.greedy {
        first_path.get_or_insert(endpoint);
        if let Some(index) = endpoint.pick(lookup.method, lookup.request) {
            let end = path.trim_end_matches('/').len().max(start);
            captures.push((start, end));
            return Some(index);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn router(keys: &[&str]) -> Router<String> {
        let mut r = Router::default();
        for k in keys {
            let (m, p) = parse_route_key(k).unwrap();
            r.insert(m, &p, RouteConditions::default(), k.to_string()).unwrap();
        }
        r
    }

    /// A lookup for a request without headers or query.
    fn lookup<'r>(r: &'r Router<String>, method: &Method, path: &str) -> Result<RouteMatch<'r, String>, RouteMiss> {
        r.find(method, path, &RequestFacts::of(&http::HeaderMap::new(), None))
    }

    fn found(r: &Router<String>, method: Method, path: &str) -> String {
        lookup(r, &method, path).map(|m| m.value.clone()).unwrap_or_else(|e| format!("{e:?}"))
    }

    #[test]
    fn most_specific_wins_in_any_declaration_order() {
        let keys = ["ANY /{proxy+}", "GET /pets/{id}", "GET /pets/mine", "GET /pets"];
        for order in [keys.to_vec(), keys.iter().rev().copied().collect()] {
            let r = router(&order);
            assert_eq!(found(&r, Method::GET, "/pets/mine"), "GET /pets/mine");
            assert_eq!(found(&r, Method::GET, "/pets/7"), "GET /pets/{id}");
            assert_eq!(found(&r, Method::GET, "/pets"), "GET /pets");
            assert_eq!(found(&r, Method::POST, "/pets/7"), "ANY /{proxy+}");
            assert_eq!(found(&r, Method::GET, "/owners/1/pets"), "ANY /{proxy+}");
        }
    }

    #[test]
    fn captures_are_ranges_of_the_path() {
        let r = router(&["GET /users/{user}/repos/{repo}", "GET /files/{path+}"]);
        let path = "/users/ada/repos/engine";
        let m = lookup(&r, &Method::GET, path).unwrap();
        let got: Vec<&str> = m.captures.iter().map(|(s, e)| &path[*s..*e]).collect();
        assert_eq!(got, ["ada", "engine"]);
        let path = "/files/a/b/c.txt";
        let m = lookup(&r, &Method::GET, path).unwrap();
        assert_eq!(&path[m.captures[0].0..m.captures[0].1], "a/b/c.txt");
    }

    #[test]
    fn backtracks_from_a_literal_dead_end() {
        let r = router(&["GET /a/b/c", "GET /a/{x}/d"]);
        assert_eq!(found(&r, Method::GET, "/a/b/d"), "GET /a/{x}/d");
    }

    #[test]
    fn wrong_method_lists_allowed_methods() {
        let r = router(&["GET /pets", "POST /pets"]);
        assert_eq!(
            lookup(&r, &Method::DELETE, "/pets").unwrap_err(),
            RouteMiss::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
        assert_eq!(lookup(&r, &Method::GET, "/dogs").unwrap_err(), RouteMiss::NotFound);
    }

    #[test]
    fn greedy_needs_a_segment_and_root_is_its_own_route() {
        let r = router(&["ANY /{proxy+}"]);
        assert_eq!(lookup(&r, &Method::GET, "/").unwrap_err(), RouteMiss::NotFound);
        let r = router(&["GET /"]);
        assert_eq!(found(&r, Method::GET, "/"), "GET /");
    }

    #[test]
    fn trailing_slash_matches_the_same_route() {
        let r = router(&["GET /pets"]);
        assert_eq!(found(&r, Method::GET, "/pets/"), "GET /pets");
    }

    #[test]
    fn duplicates_are_refused() {
        let mut r = router(&["GET /pets/{id}"]);
        let (m, p) = parse_route_key("GET /pets/{name}").unwrap();
        assert_eq!(r.insert(m, &p, RouteConditions::default(), String::new()), Err(DuplicateRoute));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in ["pets", "/pets/", "/a//b", "/{x", "/a{x}", "/{x}/{x}", "/{p+}/a", "/{}", "/{a-b}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_route_key("get /pets").is_err());
        assert!(parse_route_key("GET").is_err());
        assert!(parse_route_key("GET /a /b").is_err());
    }

    proptest! {
        #[test]
        fn lookup_never_panics(path in "[/a-z{}+%.]{0,40}", method in "[A-Z]{1,7}") {
            let r = router(&["GET /a/{b}", "ANY /{p+}", "POST /a/b/c", "GET /"]);
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let _ = lookup(&r, &method, &path);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = parse_route_key(&text);
        }

        /// Precedence, against a reference that ranks every route that would serve the
        /// request: the most specific path first (segment by segment: literal, parameter,
        /// greedy), then the request's method over `ANY`, then more conditions, then the
        /// order of declaration. Whatever the routes and the request, the router agrees.
        #[test]
        fn precedence_with_conditions_matches_the_reference(
            routes in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(0u8..4, 1..3), proptest::collection::vec(any::<bool>(), 3)),
                2..24,
            ),
            path in proptest::collection::vec(prop_oneof![Just(0u8), Just(2u8)], 1..3),
            post: bool,
            facts in proptest::collection::vec(any::<bool>(), 4),
        ) {
            use conditions::{Condition, Subject, Test};
            let condition = |i: usize| match i {
                0 => Condition { subject: Subject::Header(http::HeaderName::from_static("x")), test: Test::Equals("1".into()) },
                1 => Condition { subject: Subject::Header(http::HeaderName::from_static("y")), test: Test::Present },
                _ => Condition { subject: Subject::Query("q".into()), test: Test::Matches(regex::Regex::new("^1$").unwrap()) },
            };
            // Segments: 0 `a`, 1 `b`, 2 a parameter, 3 greedy (only last); requests' paths
            // are made of `a` and `c`, few enough that routes collide often.
            let mut router = Router::default();
            let mut inserted = Vec::new();
            for (i, (any_method, segments, wanted)) in routes.iter().enumerate() {
                let mut text = String::new();
                let mut ranks = Vec::new();
                for (k, seg) in segments.iter().enumerate() {
                    let last = k + 1 == segments.len();
                    match seg {
                        0 => { text.push_str("/a"); ranks.push(0u8) }
                        1 => { text.push_str("/b"); ranks.push(0) }
                        3 if last => { text.push_str(&format!("/{{g{k}+}}")); ranks.push(2) }
                        _ => { text.push_str(&format!("/{{p{k}}}")); ranks.push(1) }
                    }
                }
                let method = if *any_method { MethodMatch::Any } else { MethodMatch::Exactly(Method::GET) };
                let chosen: Vec<usize> = (0..3).filter(|c| wanted[*c]).collect();
                let conditions = RouteConditions::new(chosen.iter().map(|c| condition(*c)).collect());
                let pattern = PathPattern::parse(&text).unwrap();
                if router.insert(method, &pattern, conditions, i.to_string()).is_ok() {
                    inserted.push((i, *any_method, segments.clone(), chosen));
                }
            }
            let segment_names = ["a", "b", "c"];
            let request_path: String = path.iter().map(|s| format!("/{}", segment_names[*s as usize])).collect();
            let method = if post { Method::POST } else { Method::GET };
            let mut headers = http::HeaderMap::new();
            headers.insert("x", http::HeaderValue::from_static(if facts[0] { "1" } else { "2" }));
            if facts[1] { headers.insert("y", http::HeaderValue::from_static("")); }
            let query = if facts[2] { Some("q=1") } else if facts[3] { Some("q=11") } else { None };
            let holds = |c: &usize| match c { 0 => facts[0], 1 => facts[1], _ => facts[2] };
            // The reference: every route that serves the request, ranked.
            let best = inserted
                .iter()
                .filter(|(_, any_method, segments, chosen)| {
                    let shape_fits = segments.iter().enumerate().all(|(k, seg)| match seg {
                        3 if k + 1 == segments.len() => path.len() > k,
                        0 | 1 => path.get(k) == Some(seg),
                        _ => path.get(k).is_some(),
                    });
                    let greedy = segments.last() == Some(&3);
                    let length_fits = if greedy { path.len() >= segments.len() } else { path.len() == segments.len() };
                    shape_fits && length_fits && (*any_method || !post) && chosen.iter().all(holds)
                })
                .min_by_key(|(i, any_method, segments, chosen)| {
                    let ranks: Vec<u8> = segments.iter().enumerate().map(|(k, seg)| match seg {
                        0 | 1 => 0,
                        3 if k + 1 == segments.len() => 2,
                        _ => 1,
                    }).collect();
                    (ranks, *any_method, std::cmp::Reverse(chosen.len()), *i)
                })
                .map(|(i, ..)| i.to_string());
            let got = router
                .find(&method, &request_path, &RequestFacts::of(&headers, query))
                .ok()
                .map(|m| m.value.clone());
            prop_assert_eq!(got, best, "{} {}", method, request_path);
        }

        /// A literal route beats a parameter route for its own path, and the parameter
        /// route catches every other value, whatever the insertion order.
        #[test]
        fn literal_beats_param(lit in "[a-z]{1,8}", other in "[a-z]{1,8}", reverse: bool) {
            let lit_key = format!("GET /x/{lit}");
            let mut keys = vec![lit_key.as_str(), "GET /x/{id}"];
            if reverse { keys.reverse(); }
            let r = router(&keys);
            prop_assert_eq!(found(&r, Method::GET, &format!("/x/{lit}")), lit_key.clone());
            if other != lit {
                prop_assert_eq!(found(&r, Method::GET, &format!("/x/{other}")), "GET /x/{id}");
            }
        }
    }
}
