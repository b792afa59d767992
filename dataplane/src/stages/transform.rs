//! Header and query transforms: a route's request headers and query parameters set, added,
//! appended or removed on their way upstream, and its response headers on their way back,
//! with values made of text and what the request carries.
//!
//! A value is text with placeholders, each `$name` or `${name}`:
//!
//! | placeholder | value |
//! | --- | --- |
//! | `$request.header.NAME` | the request's header (its first value) |
//! | `$request.querystring.NAME` | the query parameter, decoded |
//! | `$request.path.NAME` | the route's captured parameter |
//! | `$context.requestId` | the request id the gateway gave it |
//! | `$context.identity.sourceIp` | the client's address |
//! | `$context.authorizer.KEY` | what the authorizer that admitted it passes on |
//! | `$context.identity.clientCert.subjectDN`, `.issuerDN`, `.serialNumber`, `.fingerprint`, `.sans` | the client certificate (mutual TLS) |
//! | `$stageVariables.NAME` | the stage's variable (filled in when the stage is compiled) |
//!
//! A placeholder with nothing to read is empty. Edits apply in a fixed order, whatever order
//! they are written in: `remove`, then `set` (replacing every value), `add` (another value),
//! `append` (to the last value, after `, `). Names that are hop-by-hop, `Host`, or say how a
//! body is framed are refused when the route is compiled, and so is a literal that is not a
//! valid header value; a value made at request time that is not one (a decoded query value
//! with a line break) is left out, with a warning, so a transform never produces an invalid
//! header.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, response};

use super::mapping::PathParameters;
use super::{Exchange, Flow, Phases, Services, Stage, Step};
use crate::authorizers::AuthorizerContext;
use crate::certificates::ClientCertificate;
use crate::query;

/// One piece of a value.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Header(HeaderName),
    Query(String),
    Path(usize),
    RequestId,
    SourceIp,
    Authorizer(String),
    ClientCert(CertField),
}

/// What of the client certificate a value reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CertField {
    Subject,
    Issuer,
    Serial,
    Fingerprint,
    Sans,
}

/// A value: text and placeholders, rendered per request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueTemplate(Vec<Piece>);

impl ValueTemplate {
    /// Parses `text` against the route's parameter names and the stage's variables.
    pub fn parse(
        text: &str,
        params: &[String],
        variables: &std::collections::BTreeMap<String, String>,
    ) -> Result<ValueTemplate, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, next) = match after.strip_prefix('{') {
                Some(braced) => {
                    let end = braced.find('}').ok_or_else(|| format!("`${{` without `}}` in `{text}`"))?;
                    (&braced[..end], &braced[end + 1..])
                }
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                        .unwrap_or(after.len());
                    // A sentence's full stop is not part of the name.
                    let end = after[..end].trim_end_matches('.').len();
                    (&after[..end], &after[end..])
                }
            };
            let piece = if let Some(header) = name.strip_prefix("request.header.") {
                Piece::Header(HeaderName::try_from(header).map_err(|_| format!("`{header}` is not a header name"))?)
            } else if let Some(param) = name.strip_prefix("request.querystring.") {
                Piece::Query(param.to_string())
            } else if let Some(param) = name.strip_prefix("request.path.") {
                let index = params
                    .iter()
                    .position(|p| p == param)
                    .ok_or_else(|| format!("`$request.path.{param}`: the route captures no `{param}`"))?;
                Piece::Path(index)
            } else if name == "context.requestId" {
                Piece::RequestId
            } else if name == "context.identity.sourceIp" {
                Piece::SourceIp
            } else if let Some(field) = name.strip_prefix("context.identity.clientCert.") {
                Piece::ClientCert(match field {
                    "subjectDN" => CertField::Subject,
                    "issuerDN" => CertField::Issuer,
                    "serialNumber" => CertField::Serial,
                    "fingerprint" => CertField::Fingerprint,
                    "sans" => CertField::Sans,
                    _ => {
                        return Err(format!(
                            "`${name}`: a client certificate has subjectDN, issuerDN, serialNumber, fingerprint and sans"
                        ));
                    }
                })
            } else if let Some(key) = name.strip_prefix("context.authorizer.") {
                Piece::Authorizer(key.to_string())
            } else if let Some(variable) = name.strip_prefix("stageVariables.") {
                let value = variables
                    .get(variable)
                    .ok_or_else(|| format!("stage variable `{variable}` is not defined on this stage"))?;
                literal.push_str(value);
                rest = next;
                continue;
            } else {
                return Err(format!(
                    "`${name}` is not a value a transform can read ($request.header.NAME, $request.querystring.NAME, $request.path.NAME, $context.requestId, $context.identity.sourceIp, $context.identity.clientCert.subjectDN, $context.authorizer.KEY, $stageVariables.NAME)"
                ));
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            rest = next;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        for piece in &pieces {
            if let Piece::Text(t) = piece
                && HeaderValue::from_str(t).is_err()
            {
                return Err(format!("`{t}` cannot be part of a header value"));
            }
        }
        Ok(ValueTemplate(pieces))
    }

    /// The value when it has no placeholder.
    fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Whether the value reads a captured path parameter.
    pub fn reads_path(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Path(_)))
    }

    fn render<'a>(&'a self, headers: &HeaderMap, uri_query: Option<&str>, exchange: &Exchange) -> Cow<'a, str> {
        if let Some(text) = self.literal() {
            return Cow::Borrowed(text);
        }
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Header(name) => {
                    if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                        out.push_str(v);
                    }
                }
                Piece::Query(name) => {
                    if let Some(value) = uri_query.and_then(|q| {
                        query::raw_pairs(q).find(|(k, _)| query::decoded(k) == name.as_str()).map(|(_, v)| v)
                    }) {
                        out.push_str(&query::decoded(value));
                    }
                }
                Piece::Path(i) => {
                    if let Some(PathParameters(values)) = exchange.state.get::<PathParameters>()
                        && let Some(v) = values.get(*i)
                    {
                        out.push_str(v);
                    }
                }
                Piece::RequestId => out.push_str(exchange.request_id.to_str().unwrap_or("")),
                Piece::SourceIp => {
                    let _ = write!(out, "{}", exchange.client);
                }
                Piece::ClientCert(field) => {
                    if let Some(cert) = exchange.state.get::<std::sync::Arc<ClientCertificate>>() {
                        match field {
                            CertField::Subject => out.push_str(&cert.subject),
                            CertField::Issuer => out.push_str(&cert.issuer),
                            CertField::Serial => out.push_str(&cert.serial),
                            CertField::Fingerprint => out.push_str(&cert.fingerprint),
                            CertField::Sans => out.push_str(&cert.sans.join(", ")),
                        }
                    }
                }
                Piece::Authorizer(key) => {
                    if let Some(context) = exchange.state.get::<AuthorizerContext>() {
                        match context.values.get(key) {
                            Some(serde_json::Value::String(s)) => out.push_str(s),
                            Some(serde_json::Value::Null) | None => {}
                            Some(other) => {
                                let _ = write!(out, "{other}");
                            }
                        }
                    }
                }
            }
        }
        Cow::Owned(out)
    }
}

/// What an edit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Remove,
    Set,
    Add,
    Append,
}

/// One edit of a header (or query parameter) by name.
#[derive(Debug, Clone)]
pub struct Edit<N> {
    pub operation: Operation,
    pub name: N,
    /// `None` for `remove`.
    pub value: Option<ValueTemplate>,
}

/// A route's transforms, sorted by operation when compiled.
#[derive(Debug, Default)]
pub struct Transform {
    pub request_headers: Vec<Edit<HeaderName>>,
    pub query: Vec<Edit<String>>,
    pub response_headers: Vec<Edit<HeaderName>>,
}

/// Response header values made at request time, for the response-head phase.
#[derive(Debug, Clone)]
struct RenderedResponse(Vec<(Operation, HeaderName, Option<HeaderValue>)>);

impl Transform {
    /// Sorts every list into the order edits apply in.
    pub fn sorted(mut self) -> Transform {
        self.request_headers.sort_by_key(|e| e.operation);
        self.query.sort_by_key(|e| e.operation);
        self.response_headers.sort_by_key(|e| e.operation);
        self
    }

    /// Whether a value reads a captured path parameter.
    pub fn reads_path(&self) -> bool {
        let values = self.request_headers.iter().chain(&self.response_headers).filter_map(|e| e.value.as_ref());
        values.chain(self.query.iter().filter_map(|e| e.value.as_ref())).any(ValueTemplate::reads_path)
    }
}

/// Applies one header edit whose value is already made.
fn apply(headers: &mut HeaderMap, operation: Operation, name: &HeaderName, value: Option<HeaderValue>) {
    match (operation, value) {
        (Operation::Remove, _) => {
            headers.remove(name);
        }
        (Operation::Set, Some(v)) => {
            headers.insert(name.clone(), v);
        }
        (Operation::Add, Some(v)) => {
            headers.append(name.clone(), v);
        }
        (Operation::Append, Some(v)) => {
            let mut values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
            let joined = values.pop().and_then(|last| {
                let mut bytes = last.as_bytes().to_vec();
                bytes.extend_from_slice(b", ");
                bytes.extend_from_slice(v.as_bytes());
                HeaderValue::from_bytes(&bytes).ok()
            });
            values.push(joined.unwrap_or(v));
            headers.remove(name);
            for value in values {
                headers.append(name.clone(), value);
            }
        }
        (_, None) => {}
    }
}

/// A rendered value as a header value, or `None` (with a warning) when it cannot be one.
fn header_value(rendered: Cow<'_, str>, name: &str, exchange: &Exchange) -> Option<HeaderValue> {
    match HeaderValue::try_from(rendered.as_ref()) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(header = name, request_id = ?exchange.request_id, "a transform made a value that is not a valid header value; the edit is left out");
            None
        }
    }
}

/// The query string with `edits` applied, values percent-encoded.
fn edited_query(query: Option<&str>, edits: &[Edit<String>], headers: &HeaderMap, exchange: &Exchange) -> String {
    let mut pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> =
        query.into_iter().flat_map(query::raw_pairs).map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v))).collect();
    for edit in edits {
        let encoded_name = query::encode(&edit.name);
        let value = edit.value.as_ref().map(|v| query::encode(&v.render(headers, query, exchange)).into_owned());
        let named = |k: &str| query::decoded(k) == edit.name.as_str();
        match (edit.operation, value) {
            (Operation::Remove, _) => pairs.retain(|(k, _)| !named(k)),
            (Operation::Set, Some(v)) => {
                pairs.retain(|(k, _)| !named(k));
                pairs.push((Cow::Owned(encoded_name.into_owned()), Cow::Owned(v)));
            }
            (Operation::Add, Some(v)) => pairs.push((Cow::Owned(encoded_name.into_owned()), Cow::Owned(v))),
            (Operation::Append, Some(v)) => match pairs.iter_mut().rev().find(|(k, _)| named(k)) {
                Some((_, last)) => *last = Cow::Owned(format!("{last}{}{v}", query::encode(","))),
                None => pairs.push((Cow::Owned(encoded_name.into_owned()), Cow::Owned(v))),
            },
            (_, None) => {}
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        if !v.is_empty() {
            out.push('=');
            out.push_str(v);
        }
    }
    out
}

impl Stage for Transform {
    fn name(&self) -> &'static str {
        "transform"
    }

    fn phases(&self) -> Phases {
        let mut phases = Phases::NONE;
        if !self.request_headers.is_empty() || !self.query.is_empty() {
            phases = phases | Phases::UPSTREAM_REQUEST;
        }
        if !self.response_headers.is_empty() {
            phases = phases | Phases::REQUEST_HEAD | Phases::RESPONSE_HEAD;
        }
        phases
    }

    /// Response values are made from the request, after the authorizers ran.
    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        let rendered = self
            .response_headers
            .iter()
            .map(|edit| {
                let value = edit.value.as_ref().and_then(|v| {
                    header_value(v.render(&head.headers, head.uri.query(), exchange), edit.name.as_str(), exchange)
                });
                (edit.operation, edit.name.clone(), value)
            })
            .collect();
        exchange.state.insert(RenderedResponse(rendered));
        Step::Done(Flow::Continue)
    }

    fn upstream_request(&self, head: &mut Parts, exchange: &mut Exchange) {
        // Every value is made from the request as it came, before any edit applies.
        let values: Vec<Option<HeaderValue>> = self
            .request_headers
            .iter()
            .map(|edit| {
                edit.value.as_ref().and_then(|v| {
                    header_value(v.render(&head.headers, head.uri.query(), exchange), edit.name.as_str(), exchange)
                })
            })
            .collect();
        if !self.query.is_empty() {
            let query = edited_query(head.uri.query(), &self.query, &head.headers, exchange);
            let mut parts = head.uri.clone().into_parts();
            let path = parts.path_and_query.as_ref().map_or("/", |p| p.path());
            let path_and_query = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
            if let Ok(pq) = http::uri::PathAndQuery::try_from(path_and_query) {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    head.uri = uri;
                }
            }
        }
        for (edit, value) in self.request_headers.iter().zip(values) {
            apply(&mut head.headers, edit.operation, &edit.name, value);
        }
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        let Some(RenderedResponse(edits)) = exchange.state.remove::<RenderedResponse>() else { return };
        for (operation, name, value) in edits {
            apply(&mut head.headers, operation, &name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn exchange() -> Exchange {
        let mut exchange = Exchange::new(HeaderValue::from_static("req-1"), "192.0.2.7".parse().unwrap());
        exchange.state.insert(PathParameters(vec!["42".into()]));
        let values = serde_json::json!({"tenant": "acme", "level": 3}).as_object().cloned().unwrap();
        exchange.state.insert(AuthorizerContext { authorizer: "jwt".into(), values: values.into() });
        exchange
    }

    #[test]
    fn values_read_the_request_the_context_and_the_stage() {
        let params = vec!["id".to_string()];
        let variables = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let template = ValueTemplate::parse(
            "$request.header.x-user/${request.querystring.page}/$request.path.id/$context.requestId/$context.identity.sourceIp/${context.authorizer.tenant}-$context.authorizer.level/$stageVariables.env.",
            &params,
            &variables,
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("ada"));
        let rendered = template.render(&headers, Some("page=2%203"), &exchange());
        assert_eq!(rendered, "ada/2 3/42/req-1/192.0.2.7/acme-3/prod.");
        assert_eq!(ValueTemplate::parse("plain", &params, &variables).unwrap().literal(), Some("plain"));
        for bad in [
            "$request.path.nope",
            "$stageVariables.nope",
            "$context.nothing",
            "${request.header.x",
            "a\nb",
            "${request.header.bad name}",
        ] {
            assert!(ValueTemplate::parse(bad, &params, &variables).is_err(), "{bad}");
        }
    }

    #[test]
    fn edits_apply_in_their_fixed_order_and_append_joins() {
        let value = |t: &str| Some(ValueTemplate::parse(t, &[], &BTreeMap::new()).unwrap());
        let name = |n: &'static str| HeaderName::from_static(n);
        let transform = Transform {
            request_headers: vec![
                Edit { operation: Operation::Append, name: name("x-list"), value: value("c") },
                Edit { operation: Operation::Add, name: name("x-list"), value: value("b") },
                Edit { operation: Operation::Set, name: name("x-list"), value: value("a") },
                Edit { operation: Operation::Remove, name: name("x-secret"), value: None },
                Edit { operation: Operation::Set, name: name("x-copy"), value: value("$request.header.x-secret") },
            ],
            query: vec![
                Edit { operation: Operation::Set, name: "v".into(), value: value("2 & more") },
                Edit { operation: Operation::Remove, name: "debug".into(), value: None },
                Edit { operation: Operation::Append, name: "tags".into(), value: value("x") },
            ],
            response_headers: Vec::new(),
        }
        .sorted();
        let (mut head, ()) = http::Request::get("http://up/pets?debug=1&v=1&tags=a&keep=yes")
            .header("x-secret", "s")
            .body(())
            .unwrap()
            .into_parts();
        transform.upstream_request(&mut head, &mut exchange());
        let list: Vec<_> = head.headers.get_all("x-list").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(list, ["a", "b, c"]);
        assert!(head.headers.get("x-secret").is_none());
        assert_eq!(head.headers["x-copy"], "s", "values are made before edits apply");
        assert_eq!(head.uri.query(), Some("tags=a%2Cx&keep=yes&v=2%20%26%20more"));
    }
}
