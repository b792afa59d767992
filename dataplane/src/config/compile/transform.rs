//! Compiling a route's `transform` (for one stage: values may read its variables) and an
//! `http_proxy`'s `rewrite`, every name, value and expression checked with its line.

use std::collections::BTreeMap;

use http::HeaderName;
use http::uri::Authority;

use super::super::model::*;
use super::Compiler;
use crate::hop_by_hop::is_hop_by_hop;
use crate::stages::rewrite::{PathRewrite, Rewrite};
use crate::stages::transform::{Edit, Operation, Transform, ValueTemplate};

/// Headers a transform may not touch: the connection's own, and what frames the body.
fn reserved(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || name == http::header::HOST
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
}

impl Compiler<'_> {
    /// The route's transform for one stage, `None` without one; `Err` when it is invalid
    /// (recorded).
    pub(super) fn transform(
        &mut self,
        def: &Spanned<TransformDef>,
        params: &[String],
        variables: &BTreeMap<String, String>,
        field: &str,
    ) -> Result<Transform, ()> {
        let at = def.referenced;
        let mut ok = true;
        let mut transform = Transform::default();
        let mut headers = |sink: &mut super::ErrorSink,
                           edits: &EditsDef,
                           part: &str,
                           out: &mut Vec<Edit<HeaderName>>| {
            for (operation, name, value) in listed(edits) {
                let efield = format!("{field}.transform.{part}.{}", operation_name(operation));
                let name = match HeaderName::try_from(name.as_str()) {
                    Ok(n) if reserved(&n) => {
                        sink.push(at, efield, format!("`{n}` is the connection's or the body's framing; a transform cannot change it (for `Host`, see `rewrite.host`)"));
                        ok = false;
                        continue;
                    }
                    Ok(n) => n,
                    Err(_) => {
                        sink.push(at, efield, format!("`{name}` is not a header name"));
                        ok = false;
                        continue;
                    }
                };
                let value = match value.map(|v| ValueTemplate::parse(v, params, variables)).transpose() {
                    Ok(v) => v,
                    Err(e) => {
                        sink.push(at, format!("{efield}.{name}"), e);
                        ok = false;
                        continue;
                    }
                };
                out.push(Edit { operation, name, value });
            }
        };
        if let Some(edits) = def.value.request.as_ref().and_then(|r| r.headers.as_ref()) {
            headers(&mut self.sink, edits, "request.headers", &mut transform.request_headers);
        }
        if let Some(edits) = def.value.response.as_ref().and_then(|r| r.headers.as_ref()) {
            headers(&mut self.sink, edits, "response.headers", &mut transform.response_headers);
        }
        if let Some(edits) = def.value.request.as_ref().and_then(|r| r.query.as_ref()) {
            for (operation, name, value) in listed(edits) {
                let efield = format!("{field}.transform.request.query.{}", operation_name(operation));
                if name.is_empty() {
                    self.sink.push(at, efield, "name the query parameter");
                    ok = false;
                    continue;
                }
                match value.map(|v| ValueTemplate::parse(v, params, variables)).transpose() {
                    Ok(value) => transform.query.push(Edit { operation, name: name.clone(), value }),
                    Err(e) => {
                        self.sink.push(at, format!("{efield}.{name}"), e);
                        ok = false;
                    }
                }
            }
        }
        if transform.request_headers.is_empty() && transform.query.is_empty() && transform.response_headers.is_empty() {
            if ok {
                self.sink.push(at, format!("{field}.transform"), "name at least one edit");
            }
            return Err(());
        }
        if ok { Ok(transform.sorted()) } else { Err(()) }
    }

    /// An `http_proxy`'s rewrite; `None` when it is invalid (recorded).
    pub(super) fn rewrite(&mut self, def: &Spanned<RewriteDef>, field: &str) -> Option<Rewrite> {
        let at = def.referenced;
        let path = match &def.value.path {
            None => None,
            Some(p) => {
                let pfield = format!("{field}.rewrite.path");
                let valid_replacement = |r: &str| r.is_empty() || (r.starts_with('/') && !r.contains(['?', '#']));
                if !valid_replacement(&p.replacement) {
                    self.sink.push(
                        at,
                        format!("{pfield}.replacement"),
                        "a path that starts with `/` (no `?` or `#`), or empty",
                    );
                    return None;
                }
                match (&p.prefix, &p.regex) {
                    (Some(prefix), None) if prefix.starts_with('/') => {
                        Some(PathRewrite::Prefix { prefix: prefix.clone(), replacement: p.replacement.clone() })
                    }
                    (Some(_), None) => {
                        self.sink.push(at, format!("{pfield}.prefix"), "a path prefix starts with `/`");
                        return None;
                    }
                    (None, Some(pattern)) => match regex::RegexBuilder::new(pattern).size_limit(256 * 1024).build() {
                        Ok(regex) => Some(PathRewrite::Pattern { regex, replacement: p.replacement.clone() }),
                        Err(e) => {
                            self.sink.push(at, format!("{pfield}.regex"), format!("not a regular expression: {e}"));
                            return None;
                        }
                    },
                    _ => {
                        self.sink.push(at, pfield, "give exactly one of `prefix` and `regex`, with `replacement`");
                        return None;
                    }
                }
            }
        };
        let host = match &def.value.host {
            None => None,
            Some(h) => match h.parse::<Authority>() {
                Ok(a) if !h.is_empty() && !h.contains('@') => Some(a),
                _ => {
                    self.sink.push(at, format!("{field}.rewrite.host"), format!("`{h}` is not a host or host:port"));
                    return None;
                }
            },
        };
        if path.is_none() && host.is_none() {
            self.sink.push(at, format!("{field}.rewrite"), "give `path`, `host` or both");
            return None;
        }
        Some(Rewrite { path, host })
    }
}

/// Every edit of `edits`, as (operation, name, value).
fn listed(edits: &EditsDef) -> Vec<(Operation, &String, Option<&String>)> {
    let mut all = Vec::new();
    all.extend(edits.remove.iter().map(|n| (Operation::Remove, n, None)));
    all.extend(edits.set.iter().map(|(n, v)| (Operation::Set, n, Some(v))));
    all.extend(edits.add.iter().map(|(n, v)| (Operation::Add, n, Some(v))));
    all.extend(edits.append.iter().map(|(n, v)| (Operation::Append, n, Some(v))));
    all
}

fn operation_name(operation: Operation) -> &'static str {
    match operation {
        Operation::Remove => "remove",
        Operation::Set => "set",
        Operation::Add => "add",
        Operation::Append => "append",
    }
}
