//! Rendering a parsed template against a request's (or a response's) inputs, within
//! [`Bounds`](super::Bounds).
//!
//! Values are borrowed wherever they can be: a reference into the body (a [`JsonDocument`]
//! read once per request), `$context` or `$stageVariables` walks the inputs without copying
//! them, and a body object's `keySet()` is its member names where they are. A value made
//! while rendering (a `#set` value, a list, a call's result) is kept in an arena until the
//! rendering ends, within [`Bounds::max_held`](super::Bounds), so every value ([`Val`]) is a
//! reference: reading a variable never copies it, and a template that loops over a large body
//! copies only what it writes.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};
use smallvec::SmallVec;
use typed_arena::Arena;

use super::Bounds;
use super::parse::{BinaryOp, Builtin, Expr, Node, Reference, Step, Template};
use crate::byte_scan::ByteSet;
use crate::json_document::{JsonDocument, JsonNode, View};

/// What a template reads: the body, the parameters, and what the caller puts in
/// `$context` and `$stageVariables`.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub body: Bytes,
    /// The body as JSON, parsed on first use, or given by a stage that parsed it already.
    pub body_json: BodyJson,
    pub path: Map<String, Value>,
    pub querystring: Map<String, Value>,
    pub header: Map<String, Value>,
    /// `$context`, built once per request and shared by its templates.
    pub context: std::sync::Arc<Value>,
    /// Shared by every request of the stage.
    pub stage_variables: std::sync::Arc<Value>,
}

/// The body as JSON: read at most once per request, whoever asks first.
#[derive(Debug, Clone, Default)]
pub struct BodyJson(OnceLock<Option<Arc<JsonDocument>>>);

impl BodyJson {
    /// A body already read (by request validation): the template does not read it again.
    pub fn parsed(document: Arc<JsonDocument>) -> BodyJson {
        BodyJson(OnceLock::from(Some(document)))
    }

    /// The body as JSON (an empty body is `{}`), or `None` when it is not JSON.
    fn of(&self, body: &Bytes) -> Option<&JsonDocument> {
        let parsed = self.0.get_or_init(|| {
            let text = if body.trim_ascii().is_empty() { Bytes::from_static(b"{}") } else { body.clone() };
            JsonDocument::parse(text).ok().map(Arc::new)
        });
        parsed.as_deref()
    }
}

/// Why a rendering failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RenderError {
    pub line: usize,
    pub message: String,
}

/// A value while rendering: borrowed from the template, the inputs, the body or the values
/// made while rendering (which the arena keeps until the rendering ends). Small enough to
/// come back from every level in registers; reading a variable or a field never copies.
#[derive(Clone, Copy)]
enum Val<'a> {
    /// A template's literal, `$context`, `$stageVariables`, a parameter, or a value made while
    /// rendering.
    Value(&'a Value),
    /// A part of the body: its document and position ([`JsonNode::parts`]), packed so that a
    /// value is two words, which calls return in registers.
    Body(&'a JsonDocument, u32),
    /// The member names of the body object at this position, as its `keySet()` lists them: a
    /// list made of nothing.
    Names(&'a JsonDocument, u32),
}

const _: () = assert!(std::mem::size_of::<Val<'static>>() == 16);

const NULL: Val<'static> = Val::Value(&Value::Null);

impl<'a> Val<'a> {
    #[inline]
    fn body(node: JsonNode<'a>) -> Val<'a> {
        let (document, at) = node.parts();
        Val::Body(document, at)
    }

    /// A `Names` list's members.
    fn names(document: &'a JsonDocument, at: u32) -> impl ExactSizeIterator<Item = JsonNode<'a>> {
        document.node(at).members_or_empty().map(|(name, _)| name)
    }

    #[inline]
    fn as_str(self) -> Option<&'a str> {
        match self {
            Val::Value(Value::String(s)) => Some(s),
            Val::Body(d, at) => d.node(at).as_str(),
            _ => None,
        }
    }

    #[inline]
    fn is_null(self) -> bool {
        match self {
            Val::Value(v) => v.is_null(),
            Val::Body(d, at) => d.node(at).is_null(),
            Val::Names(..) => false,
        }
    }

    #[inline]
    fn as_bool(self) -> Option<bool> {
        match self {
            Val::Value(v) => v.as_bool(),
            Val::Body(d, at) => d.node(at).as_bool(),
            Val::Names(..) => None,
        }
    }

    #[inline]
    fn as_number(self) -> Option<&'a serde_json::Number> {
        match self {
            Val::Value(Value::Number(n)) => Some(n),
            Val::Body(d, at) => d.node(at).as_number(),
            _ => None,
        }
    }

    /// A copy, as a `serde_json::Value`.
    fn owned(self) -> Value {
        match self {
            Val::Value(v) => v.clone(),
            Val::Body(d, at) => d.node(at).to_value(),
            Val::Names(d, at) => Value::Array(
                Val::names(d, at).map(|name| Value::String(name.as_str().unwrap_or_default().to_owned())).collect(),
            ),
        }
    }

    /// The value as text, as Velocity (Java) writes it: a string borrowed, a body's maps with
    /// their members in the body's order.
    #[inline]
    fn text(self) -> Cow<'a, str> {
        match self.as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(self.made_text()),
        }
    }

    /// [`Val::text`] of anything but a string.
    #[inline(never)]
    fn made_text(self) -> String {
        let listed = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>().join(", ");
        match self {
            Val::Value(v) => text(v),
            Val::Body(d, at) => match d.node(at).view() {
                View::Array(elements) => {
                    format!("[{}]", listed(&mut elements.map(|e| Val::body(e).text().into_owned())))
                }
                View::Object(members) => format!(
                    "{{{}}}",
                    listed(&mut members.map(|(name, value)| format!(
                        "{}={}",
                        Val::body(name).text(),
                        Val::body(value).text()
                    )))
                ),
                _ => text(&d.node(at).to_value()),
            },
            Val::Names(d, at) => {
                format!("[{}]", listed(&mut Val::names(d, at).map(|name| Val::body(name).text().into_owned())))
            }
        }
    }

    /// The value as JSON text: a body's objects with their members in the body's order.
    fn json(self) -> String {
        match self {
            Val::Body(d, at) => {
                let mut out = String::new();
                d.node(at).write_json(&mut out);
                out
            }
            Val::Value(v) => v.to_string(),
            names @ Val::Names(..) => names.owned().to_string(),
        }
    }

    /// A member by name; null for anything but an object.
    fn field(self, name: &str) -> Val<'a> {
        match self {
            Val::Value(Value::Object(map)) => map.get(name).map_or(NULL, Val::Value),
            Val::Body(d, at) => d.node(at).get(name).map_or(NULL, Val::body),
            _ => NULL,
        }
    }

    /// A list's item at `index` (from the start); null past its end and for anything else.
    fn item(self, index: usize) -> Val<'a> {
        match self {
            Val::Value(Value::Array(list)) => list.get(index).map_or(NULL, Val::Value),
            Val::Body(d, at) => d.node(at).elements().and_then(|mut e| e.nth(index)).map_or(NULL, Val::body),
            Val::Names(d, at) => Val::names(d, at).nth(index).map_or(NULL, Val::body),
            _ => NULL,
        }
    }

    /// A list's length; `None` for anything else.
    fn list_len(self) -> Option<usize> {
        match self {
            Val::Value(Value::Array(list)) => Some(list.len()),
            Val::Body(d, at) => d.node(at).elements().map(|e| e.len()),
            Val::Names(d, at) => Some(Val::names(d, at).len()),
            _ => None,
        }
    }

    fn is_object(self) -> bool {
        match self {
            Val::Value(v) => v.is_object(),
            Val::Body(d, at) => d.node(at).is_object(),
            Val::Names(..) => false,
        }
    }
}

/// A call's arguments: rarely more than two, so no allocation for them.
type Arguments<'a> = SmallVec<[Val<'a>; 2]>;

/// How many `#foreach` iterations pass between two looks at the clock.
const ITERATIONS_PER_TIME_CHECK: u64 = 8;

struct Renderer<'a> {
    inputs: &'a Inputs,
    /// The template's JSONPaths, compiled.
    paths: &'a [(String, serde_json_path::JsonPath)],
    /// Values made while rendering (a `#set` value, a list, a call's result), until the
    /// rendering ends.
    made: &'a Arena<Value>,
    /// Their size, within `bounds.max_held`.
    made_bytes: usize,
    /// `$input.body` as a string value, made on first use.
    body_text: Option<Val<'a>>,
    /// The body as a `serde_json::Value`, made on first use by a JSONPath the document is not
    /// walked for (a wildcard, a filter, a slice).
    body_value: Option<&'a Value>,
    bounds: Bounds,
    started: Instant,
    vars: Variables<'a>,
    /// The innermost `#foreach`'s position (index, count): `$foreach.*` reads it.
    position: Option<(usize, usize)>,
    out: String,
    iterations: u64,
}

/// A rendering's result; the error is boxed so that a result is as small as its value.
type Rendered<T> = Result<T, Box<RenderError>>;

impl Template {
    /// Renders the template with `inputs`, within `bounds`.
    pub fn render(&self, inputs: &Inputs, bounds: Bounds) -> Result<String, RenderError> {
        let made = Arena::new();
        let mut renderer = Renderer {
            inputs,
            paths: &self.paths,
            made: &made,
            made_bytes: 0,
            body_text: None,
            body_value: None,
            bounds,
            started: Instant::now(),
            vars: Variables(vec![None; self.slots]),
            position: None,
            out: String::with_capacity(self.output_size.get().min(bounds.max_output)),
            iterations: 0,
        };
        renderer.nodes(&self.nodes).map_err(|e| *e)?;
        self.output_size.set(renderer.out.len());
        Ok(renderer.out)
    }
}

fn fail<T>(line: usize, message: impl Into<String>) -> Rendered<T> {
    Err(Box::new(RenderError { line, message: message.into() }))
}
/// A value as text, as Velocity (Java) writes it.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(text).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            format!("{{{}}}", map.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn truthy(value: Option<Val<'_>>) -> bool {
    match value {
        None => false,
        Some(v) if v.is_null() => false,
        Some(v) => v.as_bool().unwrap_or(true),
    }
}

fn number(value: Val<'_>) -> Option<f64> {
    value.as_number().and_then(serde_json::Number::as_f64)
}

fn integer(value: Val<'_>) -> Option<i64> {
    value.as_number().and_then(serde_json::Number::as_i64)
}

/// A template's variables (`#set`, `#foreach`), by the slots the parser gave their names.
/// Each is a reference, into the inputs or the values made while rendering.
struct Variables<'a>(Vec<Option<Val<'a>>>);

impl<'a> Variables<'a> {
    fn get(&self, slot: usize) -> Option<Val<'a>> {
        self.0.get(slot).copied().flatten()
    }

    fn insert(&mut self, slot: usize, value: Val<'a>) {
        if let Some(variable) = self.0.get_mut(slot) {
            *variable = Some(value);
        }
    }

    fn remove(&mut self, slot: usize) -> Option<Val<'a>> {
        self.0.get_mut(slot).and_then(Option::take)
    }
}

/// About how many bytes `value` holds (what [`Renderer::make`] counts).
fn footprint(value: &Value) -> usize {
    std::mem::size_of::<Value>()
        + match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(footprint).sum(),
            Value::Object(map) => map.iter().map(|(k, v)| k.len() + footprint(v)).sum(),
            _ => 0,
        }
}
/// What [`escape_javascript`] does not copy as it is: controls, DEL, anything beyond ASCII,
/// quotes, `\` and `/`.
const ESCAPED: ByteSet = ByteSet { below: 0x20, beyond_ascii: true, also: b"\"'\\/\x7f" };

/// JavaScript string escaping, as `$util.escapeJavaScript` does it, appended to `out`: runs
/// of printable ASCII are copied whole; quotes, `\`, `/` and the usual controls get their
/// escapes; other characters are `\uXXXX` per UTF-16 unit.
fn escape_javascript(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.reserve(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        // A run stops at a byte to escape: ASCII, or the first byte of a character beyond
        // it, so `i` is always on a character boundary.
        let run = ESCAPED.run_length(&bytes[i..]);
        out.push_str(&s[i..i + run]);
        i += run;
        let Some(&byte) = bytes.get(i) else { return };
        let escape = match byte {
            b'"' => "\\\"",
            b'\'' => "\\'",
            b'\\' => "\\\\",
            b'/' => "\\/",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            _ => {
                let c = s[i..].chars().next().unwrap_or('\u{fffd}');
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
                i += c.len_utf8();
                continue;
            }
        };
        out.push_str(escape);
        i += 1;
    }
}

/// `application/x-www-form-urlencoded` encoding, as Java's `URLEncoder` does it, appended to
/// `out`.
fn url_encode(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.reserve(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// The `$util` functions whose result is text made from their argument: written straight
/// into the output when a template writes them, with no string made for them first.
fn text_function(name: &str) -> Option<fn(&str, &mut String)> {
    match name {
        "escapeJavaScript" => Some(escape_javascript),
        "urlEncode" => Some(url_encode),
        _ => None,
    }
}

fn compare(op: BinaryOp, a: Val<'_>, b: Val<'_>) -> bool {
    use std::cmp::Ordering;
    let ordering = match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => Some(x.cmp(y)),
            _ => None,
        },
    };
    match op {
        BinaryOp::Eq => {
            ordering.map_or_else(|| a.owned() == b.owned() || a.text() == b.text(), |o| o == Ordering::Equal)
        }
        BinaryOp::Ne => !compare(BinaryOp::Eq, a, b),
        BinaryOp::Lt => ordering == Some(Ordering::Less),
        BinaryOp::Gt => ordering == Some(Ordering::Greater),
        BinaryOp::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        BinaryOp::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
        _ => false,
    }
}

impl<'a> Renderer<'a> {
    fn check_time(&self, line: usize) -> Rendered<()> {
        if self.started.elapsed() > self.bounds.max_time {
            return fail(line, format!("rendering took longer than {} ms", self.bounds.max_time.as_millis()));
        }
        Ok(())
    }

    /// Appends `text` to the output unless that would pass the output bound.
    #[inline]
    fn emit(&mut self, text: &str, line: usize) -> Rendered<()> {
        if self.out.len() + text.len() > self.bounds.max_output {
            return self.too_long(line);
        }
        self.out.push_str(text);
        Ok(())
    }

    #[cold]
    fn too_long<T>(&self, line: usize) -> Rendered<T> {
        fail(line, format!("the output is larger than {} bytes", self.bounds.max_output))
    }

    /// `value`, made while rendering, as a reference that lasts the whole rendering: kept
    /// (within the bounds) until the rendering ends. Null and the booleans are not made.
    fn make(&mut self, value: Value, line: usize) -> Rendered<Val<'a>> {
        match value {
            Value::Null => return Ok(NULL),
            Value::Bool(b) => return Ok(boolean(b)),
            _ => {}
        }
        self.made_bytes = self.made_bytes.saturating_add(footprint(&value));
        if self.made_bytes > self.bounds.max_held {
            let limit = self.bounds.max_held;
            return fail(line, format!("the template's values hold more than {limit} bytes"));
        }
        let made: &'a Arena<Value> = self.made;
        Ok(Val::Value(made.alloc(value)))
    }

    fn nodes(&mut self, nodes: &'a [Node]) -> Rendered<()> {
        for node in nodes {
            match node {
                Node::Text(t) => self.emit(t, 0)?,
                Node::Ref(r, _) if r.builtin == Builtin::Util && self.writes_text_function(r)? => {}
                Node::Ref(r, source) => match self.reference(r)? {
                    Some(value) => match value.as_str() {
                        Some(s) => self.emit(s, r.line)?,
                        None => self.emit(&value.text(), r.line)?,
                    },
                    None if r.quiet => {}
                    None => self.emit(source, r.line)?,
                },
                Node::Set(slot, value) => {
                    // As in Velocity, a null value leaves the variable as it was.
                    if let Some(v) = self.expr(value)?.filter(|v| !v.is_null()) {
                        self.vars.insert(*slot, v);
                    }
                }
                Node::If(branches, otherwise) => {
                    let mut taken = false;
                    for (condition, body) in branches {
                        if truthy(self.expr(condition)?) {
                            self.nodes(body)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.nodes(otherwise)?;
                    }
                }
                Node::Foreach(var, items, body) => self.foreach(*var, items, body)?,
            }
        }
        Ok(())
    }

    /// Writes `$util.F(x)` straight into the output when F is a text function
    /// ([`text_function`]) and `$util` is not a variable here; says whether it did.
    fn writes_text_function(&mut self, r: &'a Reference) -> Rendered<bool> {
        let (Builtin::Util, [Step::Call(name, args)]) = (r.builtin, r.steps.as_slice()) else { return Ok(false) };
        let Some(write) = text_function(name) else { return Ok(false) };
        if self.vars.get(r.slot).is_some() {
            return Ok(false);
        }
        let args = self.arguments(args)?;
        let arg = args.first().map(|a| a.text()).unwrap_or_default();
        write(&arg, &mut self.out);
        if self.out.len() > self.bounds.max_output {
            return self.too_long(r.line);
        }
        Ok(true)
    }

    fn foreach(&mut self, var: usize, items: &'a Expr, body: &'a [Node]) -> Rendered<()> {
        let Some(items) = self.expr(items)? else { return Ok(()) };
        let saved = (self.vars.remove(var), self.position);
        let looped = match items {
            Val::Value(Value::Array(list)) => self.iterate(var, body, list.len(), list.iter().map(Val::Value)),
            Val::Value(Value::Object(map)) => self.iterate(var, body, map.len(), map.values().map(Val::Value)),
            Val::Body(d, at) => match d.node(at).view() {
                View::Array(elements) => self.iterate(var, body, elements.len(), elements.map(Val::body)),
                View::Object(members) => self.iterate(var, body, members.len(), members.map(|(_, v)| Val::body(v))),
                _ => Ok(()),
            },
            Val::Names(d, at) => {
                let names = Val::names(d, at);
                self.iterate(var, body, names.len(), names.map(Val::body))
            }
            Val::Value(_) => Ok(()),
        };
        self.vars.remove(var);
        self.position = saved.1;
        if let Some(v) = saved.0 {
            self.vars.insert(var, v);
        }
        looped
    }

    fn iterate(
        &mut self,
        var: usize,
        body: &'a [Node],
        count: usize,
        items: impl Iterator<Item = Val<'a>>,
    ) -> Rendered<()> {
        for (index, item) in items.enumerate() {
            self.iterations += 1;
            if self.iterations > self.bounds.max_iterations {
                return fail(0, format!("more than {} #foreach iterations", self.bounds.max_iterations));
            }
            if self.iterations.is_multiple_of(ITERATIONS_PER_TIME_CHECK) {
                self.check_time(0)?;
            }
            self.vars.insert(var, item);
            self.position = Some((index, count));
            self.nodes(body)?;
        }
        Ok(())
    }

    /// `$foreach` inside a loop: the innermost loop's position, as Velocity names it.
    fn position((index, count): (usize, usize)) -> Value {
        serde_json::json!({
            "index": index,
            "count": index + 1,
            "hasNext": index + 1 < count,
            "first": index == 0,
            "last": index + 1 == count,
        })
    }

    /// `$foreach.NAME` without building the whole object (the common case, per iteration).
    fn position_field(&mut self, (index, count): (usize, usize), name: &str, line: usize) -> Rendered<Val<'a>> {
        match name {
            "index" => self.make(Value::from(index), line),
            "count" => self.make(Value::from(index + 1), line),
            "hasNext" => Ok(boolean(index + 1 < count)),
            "first" => Ok(boolean(index == 0)),
            "last" => Ok(boolean(index + 1 == count)),
            _ => Ok(NULL),
        }
    }

    /// An expression's value. Literals and references, nearly every expression a template
    /// evaluates, are answered here; the rest (which make values) in [`Renderer::made_expr`],
    /// so that this stays a small function.
    #[inline]
    fn expr(&mut self, expr: &'a Expr) -> Rendered<Option<Val<'a>>> {
        match expr {
            Expr::Literal(v) => Ok(Some(Val::Value(v))),
            Expr::Ref(r) => self.reference(r),
            _ => self.made_expr(expr),
        }
    }

    #[inline(never)]
    fn made_expr(&mut self, expr: &'a Expr) -> Rendered<Option<Val<'a>>> {
        let made = match expr {
            // Answered by `expr` itself.
            Expr::Literal(_) | Expr::Ref(_) => return self.expr(expr),
            Expr::Not(inner) => return Ok(Some(boolean(!truthy(self.expr(inner)?)))),
            Expr::Binary(op, a, b) => return self.binary(*op, a, b).map(Some),
            Expr::Interpolated(nodes) => {
                let outer = std::mem::take(&mut self.out);
                let rendered = self.nodes(nodes);
                let inner = std::mem::replace(&mut self.out, outer);
                rendered?;
                Value::String(inner)
            }
            Expr::List(items) => {
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    list.push(self.expr(item)?.map_or(Value::Null, Val::owned));
                }
                Value::Array(list)
            }
            Expr::Range(from, to) => {
                let from = self.expr(from)?.and_then(integer);
                let to = self.expr(to)?.and_then(integer);
                let (Some(from), Some(to)) = (from, to) else { return fail(0, "a range needs two integers") };
                if from.abs_diff(to) >= self.bounds.max_iterations {
                    return fail(0, format!("a range longer than {} items", self.bounds.max_iterations));
                }
                let range: Vec<Value> = if from <= to {
                    (from..=to).map(Value::from).collect()
                } else {
                    (to..=from).rev().map(Value::from).collect()
                };
                Value::Array(range)
            }
            Expr::Map(pairs) => {
                let mut map = Map::new();
                for (k, v) in pairs {
                    let key = self.expr(k)?.map(|k| k.text().into_owned()).unwrap_or_default();
                    map.insert(key, self.expr(v)?.map_or(Value::Null, Val::owned));
                }
                Value::Object(map)
            }
            Expr::Negate(inner) => match self.expr(inner)? {
                Some(v) if integer(v).is_some() => Value::from(-integer(v).unwrap_or(0)),
                Some(v) if number(v).is_some() => {
                    serde_json::Number::from_f64(-number(v).unwrap_or(0.0)).map_or(Value::Null, Value::Number)
                }
                _ => return fail(0, "`-` needs a number"),
            },
        };
        self.make(made, 0).map(Some)
    }

    fn binary(&mut self, op: BinaryOp, a: &'a Expr, b: &'a Expr) -> Rendered<Val<'a>> {
        match op {
            BinaryOp::Or => {
                let left = truthy(self.expr(a)?);
                return Ok(boolean(left || truthy(self.expr(b)?)));
            }
            BinaryOp::And => {
                let left = truthy(self.expr(a)?);
                return Ok(boolean(left && truthy(self.expr(b)?)));
            }
            _ => {}
        }
        let left = self.expr(a)?.unwrap_or(NULL);
        let right = self.expr(b)?.unwrap_or(NULL);
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge) {
            return Ok(boolean(compare(op, left, right)));
        }
        if op == BinaryOp::Add && (left.as_str().is_some() || right.as_str().is_some()) {
            return self.make(Value::String(left.text().into_owned() + &right.text()), 0);
        }
        let result = match (integer(left), integer(right)) {
            (Some(x), Some(y)) => match op {
                BinaryOp::Add => x.checked_add(y).map(Value::from),
                BinaryOp::Sub => x.checked_sub(y).map(Value::from),
                BinaryOp::Mul => x.checked_mul(y).map(Value::from),
                BinaryOp::Div => x.checked_div(y).map(Value::from),
                BinaryOp::Rem => x.checked_rem(y).map(Value::from),
                _ => None,
            },
            _ => match (number(left), number(right)) {
                (Some(x), Some(y)) => {
                    let r = match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        BinaryOp::Div => x / y,
                        BinaryOp::Rem => x % y,
                        _ => f64::NAN,
                    };
                    serde_json::Number::from_f64(r).map(Value::Number)
                }
                _ => return fail(0, "arithmetic needs numbers"),
            },
        };
        // Division by zero and overflow are null, as in Velocity.
        self.make(result.unwrap_or(Value::Null), 0)
    }

    fn arguments(&mut self, args: &'a [Expr]) -> Rendered<Arguments<'a>> {
        let mut values = Arguments::with_capacity(args.len());
        for a in args {
            values.push(self.expr(a)?.unwrap_or(NULL));
        }
        Ok(values)
    }

    /// What `path` selects in the body: one value, several (a list), or null. A path of
    /// names and indexes walks the body where it lies; any other (a wildcard, a filter, a
    /// slice) is asked of the body made a `serde_json::Value` once.
    fn select(&mut self, path: &str, line: usize) -> Rendered<Val<'a>> {
        let inputs = self.inputs;
        let Some(document) = inputs.body_json.of(&inputs.body) else { return fail(line, "the body is not JSON") };
        if let Some(found) = walk(document.root(), path) {
            return Ok(found.map_or(NULL, Val::body));
        }
        let compiled = match self.paths.iter().find(|(p, _)| p == path) {
            Some((_, compiled)) => Cow::Borrowed(compiled),
            None => match serde_json_path::JsonPath::parse(path) {
                Ok(p) => Cow::Owned(p),
                Err(e) => return fail(line, format!("`{path}` is not a JSONPath: {e}")),
            },
        };
        let body = match self.body_value {
            Some(body) => body,
            None => {
                let Val::Value(body) = self.make(document.root().to_value(), line)? else { return Ok(NULL) };
                self.body_value = Some(body);
                body
            }
        };
        let nodes = compiled.query(body).all();
        let singular = !path.contains(['*', '?', ':']) && !path.contains("..");
        match (nodes.as_slice(), singular) {
            ([], _) => Ok(NULL),
            ([one], true) => Ok(Val::Value(one)),
            (many, _) => {
                let list = Value::Array(many.iter().map(|v| (*v).clone()).collect());
                self.make(list, line)
            }
        }
    }

    /// A reference's value: a plain variable (`$k`, most of what a loop's body reads) read
    /// here, anything else walked by [`Renderer::walk`].
    #[inline]
    fn reference(&mut self, r: &'a Reference) -> Rendered<Option<Val<'a>>> {
        if r.steps.is_empty()
            && let Some(variable) = self.vars.get(r.slot)
        {
            return Ok(Some(variable));
        }
        self.walk(r)
    }

    #[inline(never)]
    fn walk(&mut self, r: &'a Reference) -> Rendered<Option<Val<'a>>> {
        let (mut value, skip) = match self.vars.get(r.slot) {
            Some(variable) => (variable, 0),
            None => match self.builtin(r)? {
                Some(root) => root,
                None => return Ok(None),
            },
        };
        // Each step's arguments are evaluated as the walk reaches it; every step from a
        // value borrows from it, so `$map.get($k)` in a loop never copies the map.
        for step in &r.steps[skip..] {
            value = match step {
                Step::Field(name) => value.field(name),
                Step::Index(index) => {
                    let index = self.expr(index)?.unwrap_or(NULL);
                    indexed(value, index)
                }
                Step::Call(method, args) => {
                    let args = self.arguments(args)?;
                    let arg = args.first().copied().unwrap_or(NULL);
                    match (method.as_str(), value) {
                        ("get", _) => got(value, arg),
                        ("keySet", Val::Body(d, at)) if d.node(at).is_object() => Val::Names(d, at),
                        ("keySet", Val::Value(Value::Object(map))) => {
                            self.make(Value::Array(map.keys().cloned().map(Value::String).collect()), r.line)?
                        }
                        _ => match method_call(value, method, &args) {
                            Ok(made) => self.make(made, r.line)?,
                            Err(message) => return fail(r.line, message),
                        },
                    }
                }
            };
        }
        Ok(Some(value))
    }

    /// The root of a reference to what the template finds set (`$input`, `$util`, `$context`,
    /// `$stageVariables`, `$foreach`), and how many of its steps that root took.
    #[inline(never)]
    fn builtin(&mut self, r: &'a Reference) -> Rendered<Option<(Val<'a>, usize)>> {
        let inputs = self.inputs;
        Ok(Some(match (r.builtin, self.position) {
            (Builtin::Foreach, Some(position)) => match r.steps.first() {
                Some(Step::Field(name)) => (self.position_field(position, name, r.line)?, 1),
                _ => (self.make(Self::position(position), r.line)?, 0),
            },
            (Builtin::Input, _) => (self.input(r)?, 1),
            (Builtin::Util, _) => {
                let made = self.util(r)?;
                (self.make(made, r.line)?, 1)
            }
            (Builtin::Context, _) => (Val::Value(&inputs.context), 0),
            (Builtin::StageVariables, _) => (Val::Value(&inputs.stage_variables), 0),
            _ => return Ok(None),
        }))
    }

    fn input(&mut self, r: &'a Reference) -> Rendered<Val<'a>> {
        match r.steps.first() {
            Some(Step::Field(f)) if f == "body" => {
                if let Some(body) = self.body_text {
                    return Ok(body);
                }
                let body = &self.inputs.body;
                let text = match std::str::from_utf8(body) {
                    Ok(text) => text.to_string(),
                    Err(_) => String::from_utf8_lossy(body).into_owned(),
                };
                let made = self.make(Value::String(text), r.line)?;
                self.body_text = Some(made);
                Ok(made)
            }
            Some(Step::Call(m, args)) if m == "json" || m == "path" => {
                let args = self.arguments(args)?;
                let path = args.first().map(|p| p.text()).unwrap_or_default();
                let selected = self.select(&path, r.line)?;
                if m == "json" { self.make(Value::String(selected.json()), r.line) } else { Ok(selected) }
            }
            Some(Step::Call(m, args)) if m == "params" => {
                let args = self.arguments(args)?;
                let inputs = self.inputs;
                match args.first() {
                    None => {
                        let params = serde_json::json!({
                            "path": inputs.path,
                            "querystring": inputs.querystring,
                            "header": inputs.header,
                        });
                        self.make(params, r.line)
                    }
                    Some(name) => {
                        let name = name.text();
                        let header = inputs.header.iter().find(|(k, _)| k.eq_ignore_ascii_case(&name)).map(|(_, v)| v);
                        Ok(Val::Value(
                            inputs
                                .path
                                .get(name.as_ref())
                                .or_else(|| inputs.querystring.get(name.as_ref()))
                                .or(header)
                                .unwrap_or(&EMPTY),
                        ))
                    }
                }
            }
            _ => fail(r.line, "unsupported use of $input"),
        }
    }

    fn util(&mut self, r: &'a Reference) -> Rendered<Value> {
        let Some(Step::Call(f, args)) = r.steps.first() else { return fail(r.line, "$util needs a function") };
        let args = self.arguments(args)?;
        let first = args.first().copied().unwrap_or(NULL);
        let arg = first.text();
        Ok(match f.as_str() {
            name if let Some(write) = text_function(name) => {
                let mut text = String::new();
                write(&arg, &mut text);
                Value::String(text)
            }
            "urlDecode" => Value::String(crate::query::percent_decode(&arg.replace('+', " "))),
            "base64Encode" => Value::String(base64::engine::general_purpose::STANDARD.encode(arg.as_bytes())),
            "base64Decode" => match base64::engine::general_purpose::STANDARD.decode(arg.trim()) {
                Ok(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => return fail(r.line, format!("$util.base64Decode: {e}")),
            },
            "parseJson" => match serde_json::from_str(&arg) {
                Ok(v) => v,
                Err(e) => return fail(r.line, format!("$util.parseJson: {e}")),
            },
            "toJson" => Value::String(first.json()),
            "jsonToXml" => {
                // A JSON text is parsed first; any other value converts as it is.
                let value = match first.as_str() {
                    Some(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned())),
                    None => first.owned(),
                };
                let root = args.get(1).map(|r| r.text().into_owned()).unwrap_or_else(|| "root".to_string());
                match super::xml::json_to_xml(&value, &root) {
                    Ok(xml) => Value::String(xml),
                    Err(e) => return fail(r.line, format!("$util.jsonToXml: {e}")),
                }
            }
            "xmlToJson" => match super::xml::xml_to_json(&arg) {
                Ok(v) => v,
                Err(e) => return fail(r.line, format!("$util.xmlToJson: {e}")),
            },
            other => return fail(r.line, format!("$util has no `{other}`")),
        })
    }
}

static EMPTY: Value = Value::String(String::new());

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

fn boolean(b: bool) -> Val<'static> {
    Val::Value(if b { &TRUE } else { &FALSE })
}

/// What a JSONPath of names and indexes (`$.a.b`, `$['a'][0]`, `$.list[-1]`) selects in
/// `root`: `Some(None)` when nothing; `None` when the path is not of that kind.
fn walk<'d>(root: JsonNode<'d>, path: &str) -> Option<Option<JsonNode<'d>>> {
    let mut rest = path.strip_prefix('$')?;
    let mut node = Some(root);
    while !rest.is_empty() {
        let (step, after) = if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return None;
            }
            (PathStep::Name(name), &after[end..])
        } else {
            let inner = rest.strip_prefix('[')?;
            let end = inner.find(']')?;
            let (key, after) = (&inner[..end], &inner[end + 1..]);
            let quoted = key.strip_prefix('\'').and_then(|k| k.strip_suffix('\''));
            let quoted = quoted.or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')));
            match quoted {
                Some(name) if !name.contains(['\\', '\'', '"']) => (PathStep::Name(name), after),
                Some(_) => return None,
                None => (PathStep::Index(key.parse::<i64>().ok()?), after),
            }
        };
        node = node.and_then(|n| match step {
            PathStep::Name(name) => n.get(name),
            PathStep::Index(i) => {
                let mut elements = n.elements()?;
                let i = if i < 0 { i64::try_from(elements.len()).ok()? + i } else { i };
                elements.nth(usize::try_from(i).ok()?)
            }
        });
        rest = after;
    }
    Some(node)
}

enum PathStep<'p> {
    Name(&'p str),
    Index(i64),
}

/// `value[key]`: a map's member by name, a list's item by position (a negative one counts
/// from the end), else null; borrowed from `value`.
fn indexed<'v>(value: Val<'v>, key: Val<'_>) -> Val<'v> {
    if let Some(found) = own_member(value, key) {
        return found;
    }
    if value.is_object() {
        return member(value, key);
    }
    let Some(len) = value.list_len() else { return NULL };
    integer(key)
        .map(|i| if i < 0 { len as i64 + i } else { i })
        .and_then(|i| usize::try_from(i).ok())
        .map_or(NULL, |i| value.item(i))
}

/// `value.get(key)`: as [`indexed`], but a list's position counts from the start only, as
/// Java's `List.get` does.
fn got<'v>(value: Val<'v>, key: Val<'_>) -> Val<'v> {
    if let Some(found) = own_member(value, key) {
        return found;
    }
    if value.is_object() {
        return member(value, key);
    }
    integer(key).and_then(|i| usize::try_from(i).ok()).map_or(NULL, |i| value.item(i))
}

/// A map's member named `key`.
fn member<'v>(map: Val<'v>, key: Val<'_>) -> Val<'v> {
    own_member(map, key).unwrap_or_else(|| map.field(&key.text()))
}

/// The member of the body object `map` whose name is `key` itself, one of its own member
/// names (as `#foreach($k in $map.keySet())` gives them): found by position, comparing no
/// text.
#[inline]
fn own_member<'v>(map: Val<'v>, key: Val<'_>) -> Option<Val<'v>> {
    let (Val::Body(d, object), Val::Body(names, name)) = (map, key) else { return None };
    d.node(object).value_of_name(names.node(name)).map(Val::body)
}

/// The methods values have.
fn method_call(value: Val<'_>, method: &str, args: &[Val<'_>]) -> Result<Value, String> {
    let arg = |i: usize| args.get(i).copied().unwrap_or(NULL);
    match method {
        "size" | "length" => return Ok(Value::from(size(value))),
        "isEmpty" => return Ok(Value::Bool(size(value) == 0)),
        "toString" => return Ok(Value::String(value.text().into_owned())),
        _ => {}
    }
    let owned;
    let value = match value {
        Val::Value(v) => v,
        other => {
            owned = other.owned();
            &owned
        }
    };
    Ok(match (method, value) {
        ("containsKey", Value::Object(m)) => Value::Bool(m.contains_key(arg(0).text().as_ref())),
        ("values", Value::Object(m)) => Value::Array(m.values().cloned().collect()),
        ("contains", Value::Array(l)) => Value::Bool(l.contains(&arg(0).owned())),
        ("contains", Value::String(s)) => Value::Bool(s.contains(arg(0).text().as_ref())),
        ("startsWith", Value::String(s)) => Value::Bool(s.starts_with(arg(0).text().as_ref())),
        ("endsWith", Value::String(s)) => Value::Bool(s.ends_with(arg(0).text().as_ref())),
        ("toLowerCase", Value::String(s)) => Value::String(s.to_lowercase()),
        ("toUpperCase", Value::String(s)) => Value::String(s.to_uppercase()),
        ("trim", Value::String(s)) => Value::String(s.trim().to_string()),
        ("replace" | "replaceAll", Value::String(s)) => {
            Value::String(s.replace(arg(0).text().as_ref(), arg(1).text().as_ref()))
        }
        ("indexOf", Value::String(s)) => {
            Value::from(s.find(arg(0).text().as_ref()).map_or(-1, |byte| s[..byte].chars().count() as i64))
        }
        ("substring", Value::String(s)) => {
            let chars: Vec<char> = s.chars().collect();
            let from = integer(arg(0)).and_then(|i| usize::try_from(i).ok()).unwrap_or(0).min(chars.len());
            let to = match args.get(1) {
                Some(v) => integer(*v).and_then(|i| usize::try_from(i).ok()).unwrap_or(chars.len()).min(chars.len()),
                None => chars.len(),
            };
            Value::String(chars[from..to.max(from)].iter().collect())
        }
        ("split", Value::String(s)) => {
            let separator = arg(0).text();
            if separator.is_empty() {
                return Err("split needs a separator".into());
            }
            Value::Array(s.split(separator.as_ref()).map(|p| Value::String(p.to_string())).collect())
        }
        (m, v) => {
            let kind = match v {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "a list",
                Value::Object(_) => "a map",
            };
            return Err(format!("{kind} has no method `{m}`"));
        }
    })
}

/// `size()`: a string's characters, a list's items, a map's members.
fn size(value: Val<'_>) -> usize {
    if let Some(s) = value.as_str() {
        return s.chars().count();
    }
    match value {
        Val::Value(Value::Object(m)) => m.len(),
        Val::Body(d, at) if let Some(members) = d.node(at).members() => members.len(),
        other => other.list_len().unwrap_or(0),
    }
}
