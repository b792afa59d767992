//! Rendering a parsed template against a request's (or a response's) inputs, within
//! [`Bounds`](super::Bounds).
//!
//! Values are borrowed wherever they can be: a reference into the body, `$context` or
//! `$stageVariables` walks the inputs without copying them. A value made while rendering (a
//! `#set` value, a `#foreach` list, a call's result) is kept in an arena until the rendering
//! ends, within [`Bounds::max_held`](super::Bounds), so every value is a plain reference:
//! reading a variable never copies it, and a template that loops over a large body copies
//! only what it writes.

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

/// The body as JSON: parsed at most once per request, whoever asks first.
#[derive(Debug, Clone, Default)]
pub struct BodyJson(OnceLock<Option<Arc<Value>>>);

impl BodyJson {
    /// A body already parsed (by request validation): the template does not parse it again.
    pub fn parsed(value: Arc<Value>) -> BodyJson {
        BodyJson(OnceLock::from(Some(value)))
    }

    /// The body as JSON (an empty body is `{}`), or `None` when it is not JSON.
    fn of(&self, body: &[u8]) -> Option<&Value> {
        let parsed = self.0.get_or_init(|| {
            let body = body.trim_ascii();
            if body.is_empty() {
                Some(Arc::new(Value::Object(Map::new())))
            } else {
                super::parse_json(body).ok().map(Arc::new)
            }
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

/// A value while rendering: borrowed from the template, the inputs or the values made while
/// rendering, which the arena keeps until the rendering ends. A reference is small enough to
/// come back from every level in registers, and reading a variable or a field never copies.
type Val<'a> = &'a Value;

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
    bounds: Bounds,
    started: Instant,
    vars: Variables<'a>,
    /// The innermost `#foreach`'s position (index, count): `$foreach.*` reads it.
    position: Option<(usize, usize)>,
    out: String,
    iterations: u64,
    /// The key lists `keySet()` made in this rendering, each with its map's values in the
    /// same order (see [`KeySet`]).
    key_sets: SmallVec<[KeySet<'a>; 2]>,
}

/// How many of a rendering's latest `keySet()` lists [`KeySet`] remembers (a template that
/// makes one per iteration still looks through a few only).
const MAX_KEY_SETS: usize = 4;

/// A map's `keySet()` as made while rendering, with the map's values in the same order:
/// `$map.get($key)` with a key from that very list (`#foreach($k in $m.keySet())`, the usual
/// way to walk a map) reads the value at the key's position instead of searching the map.
struct KeySet<'a> {
    map: &'a Map<String, Value>,
    keys: &'a [Value],
    values: Vec<&'a Value>,
}

impl<'a> KeySet<'a> {
    /// `map[key]` if `key` is one of this list's own elements (by address, not by value) and
    /// `map` its map.
    fn value(&self, map: &Map<String, Value>, key: &Value) -> Option<&'a Value> {
        if !std::ptr::eq(self.map, map) {
            return None;
        }
        let offset = (std::ptr::from_ref(key) as usize).wrapping_sub(self.keys.as_ptr() as usize);
        let size = std::mem::size_of::<Value>();
        if !offset.is_multiple_of(size) {
            return None;
        }
        // `values` is as long as `keys`: an address past the list finds nothing.
        self.values.get(offset / size).copied()
    }
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
            bounds,
            started: Instant::now(),
            vars: Variables(vec![None; self.slots]),
            position: None,
            out: String::with_capacity(self.output_size.get().min(bounds.max_output)),
            iterations: 0,
            key_sets: SmallVec::new(),
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

/// [`text`], borrowing a string instead of copying it.
fn as_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(text(other)),
    }
}

fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => true,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A template's variables (`#set`, `#foreach`), by the slots the parser gave their names.
/// Each is a reference, into the inputs or the values made while rendering.
struct Variables<'a>(Vec<Option<&'a Value>>);

impl<'a> Variables<'a> {
    fn get(&self, slot: usize) -> Option<&'a Value> {
        self.0.get(slot).copied().flatten()
    }

    fn insert(&mut self, slot: usize, value: &'a Value) {
        if let Some(variable) = self.0.get_mut(slot) {
            *variable = Some(value);
        }
    }

    fn remove(&mut self, slot: usize) -> Option<&'a Value> {
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

fn compare(op: BinaryOp, a: &Value, b: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            _ => None,
        },
    };
    match op {
        BinaryOp::Eq => ordering.map_or_else(|| a == b || text(a) == text(b), |o| o == Ordering::Equal),
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
            Value::Null => return Ok(&NULL),
            Value::Bool(b) => return Ok(boolean(b)),
            _ => {}
        }
        self.made_bytes = self.made_bytes.saturating_add(footprint(&value));
        if self.made_bytes > self.bounds.max_held {
            let limit = self.bounds.max_held;
            return fail(line, format!("the template's values hold more than {limit} bytes"));
        }
        let made: &'a Arena<Value> = self.made;
        Ok(made.alloc(value))
    }

    fn nodes(&mut self, nodes: &'a [Node]) -> Rendered<()> {
        for node in nodes {
            match node {
                Node::Text(t) => self.emit(t, 0)?,
                Node::Ref(r, _) if r.builtin == Builtin::Util && self.writes_text_function(r)? => {}
                Node::Ref(r, source) => match self.reference(r)? {
                    Some(Value::String(s)) => self.emit(s, r.line)?,
                    Some(other) => {
                        let t = text(other);
                        self.emit(&t, r.line)?;
                    }
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
        let arg = args.first().map(|a| as_text(a)).unwrap_or_default();
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
            Value::Array(list) => self.iterate(var, body, list.len(), list.iter()),
            Value::Object(map) => self.iterate(var, body, map.len(), map.values()),
            _ => Ok(()),
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
        items: impl Iterator<Item = &'a Value>,
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
            _ => Ok(&NULL),
        }
    }

    /// An expression's value. Literals and references, nearly every expression a template
    /// evaluates, are answered here; the rest (which make values) in [`Renderer::made_expr`],
    /// so that this stays a small function.
    #[inline]
    fn expr(&mut self, expr: &'a Expr) -> Rendered<Option<Val<'a>>> {
        match expr {
            Expr::Literal(v) => Ok(Some(v)),
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
                    list.push(self.expr(item)?.map_or(Value::Null, Value::clone));
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
                    let key = self.expr(k)?.map(text).unwrap_or_default();
                    map.insert(key, self.expr(v)?.map_or(Value::Null, Value::clone));
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
        let left = self.expr(a)?.unwrap_or(&NULL);
        let right = self.expr(b)?.unwrap_or(&NULL);
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge) {
            return Ok(boolean(compare(op, left, right)));
        }
        if op == BinaryOp::Add && (left.is_string() || right.is_string()) {
            return self.make(Value::String(text(left) + &text(right)), 0);
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
            values.push(self.expr(a)?.unwrap_or(&NULL));
        }
        Ok(values)
    }

    /// What `path` selects in the body: one value, several (a list), or null.
    fn select(&mut self, path: &str, line: usize) -> Rendered<Val<'a>> {
        let inputs = self.inputs;
        let Some(body) = inputs.body_json.of(&inputs.body) else { return fail(line, "the body is not JSON") };
        if path == "$" {
            return Ok(body);
        }
        let compiled = match self.paths.iter().find(|(p, _)| p == path) {
            Some((_, compiled)) => Cow::Borrowed(compiled),
            None => match serde_json_path::JsonPath::parse(path) {
                Ok(p) => Cow::Owned(p),
                Err(e) => return fail(line, format!("`{path}` is not a JSONPath: {e}")),
            },
        };
        let nodes = compiled.query(body).all();
        let singular = !path.contains(['*', '?', ':']) && !path.contains("..");
        match (nodes.as_slice(), singular) {
            ([], _) => Ok(&NULL),
            ([one], true) => Ok(*one),
            (many, _) => {
                let list = Value::Array(many.iter().map(|v| (*v).clone()).collect());
                self.make(list, line)
            }
        }
    }

    fn reference(&mut self, r: &'a Reference) -> Rendered<Option<Val<'a>>> {
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
                Step::Field(name) => match value {
                    Value::Object(map) => map.get(name.as_str()).unwrap_or(&NULL),
                    _ => &NULL,
                },
                Step::Index(index) => {
                    let index = self.expr(index)?.unwrap_or(&NULL);
                    indexed(value, index)
                }
                Step::Call(method, args) => {
                    let args = self.arguments(args)?;
                    match (method.as_str(), value) {
                        ("get", Value::Object(map)) => {
                            let key = args.first().copied().unwrap_or(&NULL);
                            match self.key_sets.iter().rev().find_map(|set| set.value(map, key)) {
                                Some(value) => value,
                                None => got(value, key),
                            }
                        }
                        ("get", Value::Array(_)) => got(value, args.first().copied().unwrap_or(&NULL)),
                        ("keySet", Value::Object(map)) => {
                            let keys =
                                self.make(Value::Array(map.keys().cloned().map(Value::String).collect()), r.line)?;
                            if let Value::Array(list) = keys {
                                if self.key_sets.len() == MAX_KEY_SETS {
                                    self.key_sets.remove(0);
                                }
                                self.key_sets.push(KeySet { map, keys: list, values: map.values().collect() });
                            }
                            keys
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
            (Builtin::Context, _) => (&*inputs.context, 0),
            (Builtin::StageVariables, _) => (&*inputs.stage_variables, 0),
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
                let path = args.first().map(|p| as_text(p)).unwrap_or_default();
                let selected = self.select(&path, r.line)?;
                if m == "json" { self.make(Value::String(selected.to_string()), r.line) } else { Ok(selected) }
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
                        let name = as_text(name);
                        let header = inputs.header.iter().find(|(k, _)| k.eq_ignore_ascii_case(&name)).map(|(_, v)| v);
                        Ok(inputs
                            .path
                            .get(name.as_ref())
                            .or_else(|| inputs.querystring.get(name.as_ref()))
                            .or(header)
                            .unwrap_or(&EMPTY))
                    }
                }
            }
            _ => fail(r.line, "unsupported use of $input"),
        }
    }

    fn util(&mut self, r: &'a Reference) -> Rendered<Value> {
        let Some(Step::Call(f, args)) = r.steps.first() else { return fail(r.line, "$util needs a function") };
        let args = self.arguments(args)?;
        let arg = args.first().map(|a| as_text(a)).unwrap_or_default();
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
            "toJson" => Value::String(args.first().copied().unwrap_or(&NULL).to_string()),
            "jsonToXml" => {
                // A JSON text is parsed first; any other value converts as it is.
                let value = match args.first().copied() {
                    Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
                    Some(v) => v.clone(),
                    None => Value::Null,
                };
                let root = args.get(1).map(|r| text(r)).unwrap_or_else(|| "root".to_string());
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

static NULL: Value = Value::Null;
static EMPTY: Value = Value::String(String::new());

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

fn boolean(b: bool) -> Val<'static> {
    if b { &TRUE } else { &FALSE }
}

/// `value[key]`: a map's member by name, a list's item by position (a negative one counts
/// from the end), else null; borrowed from `value`.
fn indexed<'v>(value: &'v Value, key: &Value) -> &'v Value {
    match value {
        Value::Object(map) => map.get(as_text(key).as_ref()).unwrap_or(&NULL),
        Value::Array(list) => integer(key)
            .map(|i| if i < 0 { list.len() as i64 + i } else { i })
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| list.get(i))
            .unwrap_or(&NULL),
        _ => &NULL,
    }
}

/// `value.get(key)`: as [`indexed`], but a list's position counts from the start only, as
/// Java's `List.get` does.
fn got<'v>(value: &'v Value, key: &Value) -> &'v Value {
    match value {
        Value::Array(list) => {
            integer(key).and_then(|i| usize::try_from(i).ok()).and_then(|i| list.get(i)).unwrap_or(&NULL)
        }
        _ => indexed(value, key),
    }
}

/// The methods values have.
fn method_call(value: &Value, method: &str, args: &[Val<'_>]) -> Result<Value, String> {
    let arg = |i: usize| args.get(i).copied().unwrap_or(&NULL);
    let size = |v: &Value| match v {
        Value::String(s) => s.chars().count(),
        Value::Array(l) => l.len(),
        Value::Object(m) => m.len(),
        _ => 0,
    };
    Ok(match (method, value) {
        ("size" | "length", _) => Value::from(size(value)),
        ("isEmpty", _) => Value::Bool(size(value) == 0),
        ("containsKey", Value::Object(m)) => Value::Bool(m.contains_key(as_text(arg(0)).as_ref())),
        ("values", Value::Object(m)) => Value::Array(m.values().cloned().collect()),
        ("contains", Value::Array(l)) => Value::Bool(l.contains(arg(0))),
        ("contains", Value::String(s)) => Value::Bool(s.contains(as_text(arg(0)).as_ref())),
        ("startsWith", Value::String(s)) => Value::Bool(s.starts_with(as_text(arg(0)).as_ref())),
        ("endsWith", Value::String(s)) => Value::Bool(s.ends_with(as_text(arg(0)).as_ref())),
        ("toLowerCase", Value::String(s)) => Value::String(s.to_lowercase()),
        ("toUpperCase", Value::String(s)) => Value::String(s.to_uppercase()),
        ("trim", Value::String(s)) => Value::String(s.trim().to_string()),
        ("replace" | "replaceAll", Value::String(s)) => {
            Value::String(s.replace(as_text(arg(0)).as_ref(), as_text(arg(1)).as_ref()))
        }
        ("indexOf", Value::String(s)) => {
            Value::from(s.find(as_text(arg(0)).as_ref()).map_or(-1, |byte| s[..byte].chars().count() as i64))
        }
        ("substring", Value::String(s)) => {
            let chars: Vec<char> = s.chars().collect();
            let from = integer(arg(0)).and_then(|i| usize::try_from(i).ok()).unwrap_or(0).min(chars.len());
            let to = match args.get(1) {
                Some(v) => integer(v).and_then(|i| usize::try_from(i).ok()).unwrap_or(chars.len()).min(chars.len()),
                None => chars.len(),
            };
            Value::String(chars[from..to.max(from)].iter().collect())
        }
        ("split", Value::String(s)) => {
            let separator = as_text(arg(0));
            if separator.is_empty() {
                return Err("split needs a separator".into());
            }
            Value::Array(s.split(separator.as_ref()).map(|p| Value::String(p.to_string())).collect())
        }
        ("toString", _) => Value::String(text(value)),
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
