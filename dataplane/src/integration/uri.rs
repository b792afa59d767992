//! Upstream URI templates: `http://${stageVariables.host}/pets/{id}`.
//!
//! Stage variables are substituted when the routing table is compiled (each stage gets its
//! own template), so the request path only splices captured path parameters and the
//! client's query string into a prepared scheme, authority and path.

use std::collections::BTreeMap;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Capture(usize),
}

/// A compiled upstream URI for one route of one stage.
#[derive(Debug, Clone)]
pub struct UpstreamTemplate {
    pub scheme: Scheme,
    pub authority: Authority,
    parts: Vec<Part>,
    /// The whole path and query when the template captures nothing.
    fixed: Option<PathAndQuery>,
    has_query: bool,
}

/// The names of the stage variables `text` uses (`${stageVariables.NAME}`).
pub fn stage_variable_names(text: &str) -> Vec<String> {
    text.split("${stageVariables.")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
        .collect()
}

/// Replaces `${stageVariables.name}` with the stage's value; other `${...}` are errors.
pub fn substitute_stage_variables(text: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("`${{` without a closing `}}` in `{text}`"));
        };
        let expr = &after[..end];
        let Some(name) = expr.strip_prefix("stageVariables.") else {
            return Err(format!("`${{{expr}}}` is not supported here (use `${{stageVariables.NAME}}`)"));
        };
        match variables.get(name) {
            Some(value) => out.push_str(value),
            None => {
                return Err(format!("stage variable `{name}` is not defined on this stage"));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The parts of a template's path: text, and `{name}` or `{name+}` splicing the route's
/// parameter `name`. `what` names the template in errors.
fn path_parts(path: &str, params: &[String], what: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("`{{` without `}}` in {what} path `{path}`"));
        };
        let name = &rest[open + 1..open + close];
        let name = name.strip_suffix('+').unwrap_or(name);
        let Some(index) = params.iter().position(|p| p == name) else {
            return Err(format!("{what} path uses `{{{name}}}`, which the route does not capture"));
        };
        parts.push(Part::Capture(index));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

/// The path `parts` make with a placeholder for each capture, to check its shape.
fn probe(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.as_str(),
            Part::Capture(_) => "x",
        })
        .collect()
}

/// Writes `parts` into `out`, each capture taken from `path` by its byte range.
fn splice(parts: &[Part], path: &str, captures: &[(usize, usize)], out: &mut String) {
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Capture(i) => {
                if let Some(&(s, e)) = captures.get(*i) {
                    out.push_str(&path[s..e]);
                }
            }
        }
    }
}

/// Where a redirect sends the client: `https://new.example.com/pets/{id}` (another origin) or
/// `/v2/pets/{id}` (the same one), with the route's captures spliced in. A template with its
/// own query replaces the request's; otherwise the request's is kept, unless told not to.
#[derive(Debug, Clone)]
pub struct LocationTemplate {
    /// `scheme://authority`, or empty for a path on the request's own origin.
    origin: String,
    parts: Vec<Part>,
    has_query: bool,
    keep_query: bool,
}

impl LocationTemplate {
    /// Compiles `text` (stage variables already substituted) against the route's parameter
    /// names.
    pub fn compile(text: &str, params: &[String], keep_query: bool) -> Result<LocationTemplate, String> {
        let (origin, path) = match text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")) {
            Some(rest) => {
                let split = rest.find(['/', '?']).unwrap_or(rest.len());
                let authority = &rest[..split];
                if authority.is_empty() || authority.contains('@') || authority.parse::<Authority>().is_err() {
                    return Err(format!("`{text}` needs a valid host[:port] (and no user info)"));
                }
                text.split_at(text.len() - (rest.len() - split))
            }
            None if text.starts_with('/') && !text.starts_with("//") => ("", text),
            None => return Err(format!("`{text}` must be an absolute URI (https://...) or a path (/...)")),
        };
        let parts = path_parts(path, params, "redirect")?;
        let probe = probe(&parts);
        if !probe.is_empty() && PathAndQuery::try_from(probe.as_str()).is_err() {
            return Err(format!("`{text}` is not a valid location"));
        }
        Ok(LocationTemplate { origin: origin.to_string(), parts, has_query: path.contains('?'), keep_query })
    }

    /// The location for a request whose path captured `captures`, with its query when kept.
    pub fn render(&self, path: &str, captures: &[(usize, usize)], query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.origin.len() + path.len() + query.map_or(0, str::len) + 32);
        out.push_str(&self.origin);
        splice(&self.parts, path, captures, &mut out);
        if out.len() == self.origin.len() {
            out.push('/');
        }
        if let Some(q) = query.filter(|q| self.keep_query && !self.has_query && !q.is_empty()) {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

impl UpstreamTemplate {
    /// Compiles `text` (stage variables already substituted) against the route's parameter
    /// names. `{name}` and `{name+}` both splice the parameter `name`.
    pub fn compile(text: &str, params: &[String]) -> Result<UpstreamTemplate, String> {
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::HTTP, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::HTTPS, rest)
        } else {
            return Err(format!("upstream `{text}` must start with http:// or https://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("upstream `{text}` needs a host (and no user info)"));
        }
        let authority: Authority =
            authority.parse().map_err(|_| format!("`{authority}` is not a valid upstream host[:port]"))?;
        let path = if path.is_empty() || path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        let parts = path_parts(&path, params, "upstream")?;
        let fixed = match parts.as_slice() {
            [Part::Text(t)] => {
                Some(PathAndQuery::try_from(t.as_str()).map_err(|_| format!("`{t}` is not a valid upstream path"))?)
            }
            _ => {
                // Validate the shape with placeholder captures so errors surface at load time.
                PathAndQuery::try_from(probe(&parts)).map_err(|_| format!("`{path}` is not a valid upstream path"))?;
                None
            }
        };
        Ok(UpstreamTemplate { scheme, authority, has_query: path.contains('?'), parts, fixed })
    }

    /// The upstream URI for a request whose path captured `captures` (byte ranges of
    /// `path`), with the client's query appended.
    pub fn render(&self, path: &str, captures: &[(usize, usize)], query: Option<&str>) -> Result<Uri, http::Error> {
        let path_and_query = match (&self.fixed, query) {
            (Some(fixed), None) => fixed.clone(),
            _ => {
                let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + 64);
                splice(&self.parts, path, captures, &mut out);
                if let Some(q) = query.filter(|q| !q.is_empty()) {
                    out.push(if self.has_query { '&' } else { '?' });
                    out.push_str(q);
                }
                PathAndQuery::try_from(out)?
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Ok(Uri::from_parts(parts)?)
    }

    /// The host and port, for logs and errors.
    pub fn host(&self) -> &str {
        self.authority.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_variables_are_substituted() {
        let vars = BTreeMap::from([("backend".to_string(), "127.0.0.1:9000".to_string())]);
        assert_eq!(
            substitute_stage_variables("http://${stageVariables.backend}/x", &vars).unwrap(),
            "http://127.0.0.1:9000/x"
        );
        assert!(substitute_stage_variables("http://${stageVariables.nope}/", &vars).is_err());
        assert!(substitute_stage_variables("http://${context.x}/", &vars).is_err());
        assert!(substitute_stage_variables("http://${stageVariables.backend/", &vars).is_err());
    }

    #[test]
    fn captures_and_query_are_spliced() {
        let t = UpstreamTemplate::compile("http://up:8080/v2/pets/{id}/toys/{rest+}", &["id".into(), "rest".into()])
            .unwrap();
        let path = "/pets/42/toys/a/b";
        let uri = t.render(path, &[(6, 8), (14, 17)], Some("color=red")).unwrap();
        assert_eq!(uri.to_string(), "http://up:8080/v2/pets/42/toys/a/b?color=red");
    }

    #[test]
    fn fixed_paths_keep_their_own_query() {
        let t = UpstreamTemplate::compile("https://up/search?src=gw", &[]).unwrap();
        assert_eq!(t.render("/", &[], None).unwrap().to_string(), "https://up/search?src=gw");
        assert_eq!(t.render("/", &[], Some("q=1")).unwrap().to_string(), "https://up/search?src=gw&q=1");
        let t = UpstreamTemplate::compile("http://up", &[]).unwrap();
        assert_eq!(t.render("/", &[], None).unwrap().to_string(), "http://up/");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(UpstreamTemplate::compile("ftp://up/", &[]).is_err());
        assert!(UpstreamTemplate::compile("http:///x", &[]).is_err());
        assert!(UpstreamTemplate::compile("http://u@up/x", &[]).is_err());
        assert!(UpstreamTemplate::compile("http://up/{id}", &[]).is_err());
        assert!(UpstreamTemplate::compile("http://up/{id", &["id".into()]).is_err());
        assert!(UpstreamTemplate::compile("http://up/a b", &[]).is_err());
    }

    #[test]
    fn locations_splice_captures_and_keep_or_replace_the_query() {
        let params = vec!["id".to_string(), "rest".to_string()];
        let other = LocationTemplate::compile("https://new.example.com/v2/pets/{id}", &params, true).unwrap();
        let path = "/pets/7/toys/ball";
        let captures = [(6, 7), (8, 17)];
        assert_eq!(other.render(path, &captures, Some("a=1")), "https://new.example.com/v2/pets/7?a=1");
        assert_eq!(other.render(path, &captures, None), "https://new.example.com/v2/pets/7");
        let replaced = LocationTemplate::compile("/v2/{id}/{rest+}?from=old", &params, true).unwrap();
        assert_eq!(replaced.render(path, &captures, Some("a=1")), "/v2/7/toys/ball?from=old");
        let dropped = LocationTemplate::compile("/v2/{id}", &params, false).unwrap();
        assert_eq!(dropped.render(path, &captures, Some("a=1")), "/v2/7");
        let bare = LocationTemplate::compile("https://new.example.com", &params, true).unwrap();
        assert_eq!(bare.render(path, &captures, None), "https://new.example.com/");
        for bad in ["new.example.com/x", "//evil.example.com/x", "https://@evil/x", "/x/{nope}", "/x/{id", "https:///x"]
        {
            assert!(LocationTemplate::compile(bad, &params, true).is_err(), "{bad}");
        }
    }
}
