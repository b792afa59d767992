//! A JSON body read once into a flat, read-only document whose strings are spans of the body:
//! what request validation checks and the mapping templates read, at the least cost per
//! request.
//!
//! A `serde_json::Value` makes a `String` for every string and a `BTreeMap` for every object,
//! and frees them all again when the request ends. A [`JsonDocument`] keeps the body itself
//! (`Bytes`: shared, not copied) and one list of entries in document order: a string is where
//! its text is in the body (unescaped into a side buffer only when it has escapes); an array
//! or an object says how many members it has and where its last descendant ends, so that a
//! walk steps over a member's whole subtree at once. Objects keep their members in the order
//! the client wrote them. Reading a node ([`JsonNode`]) never copies.
//!
//! What a document holds is what `serde_json::from_slice` reads: [`read`] takes every
//! document it can (UTF-8 checked once, strings found sixteen bytes at a time); anything else
//! — text that is not JSON, nesting deeper than the reader goes, an object with a member named
//! twice — is parsed by serde_json, whose error (with its line and column) is the answer, or
//! whose value the document is built from (then objects are in its order: by name, a member
//! named twice keeping its last value). `tests` and the `json_body` fuzz target compare the
//! two.
//!
//! ```
//! use meridian_dataplane::json_document::{JsonDocument, View};
//!
//! let order = JsonDocument::parse(r#"{"id": 7, "items": ["tea", "milk"]}"#.into()).unwrap();
//! let items = order.root().get("items").unwrap();
//! let View::Array(elements) = items.view() else { panic!("a list") };
//! let names: Vec<&str> = elements.filter_map(|e| e.as_str()).collect();
//! assert_eq!(names, ["tea", "milk"]);
//! let mut text = String::new();
//! order.root().write_json(&mut text);
//! assert_eq!(text, r#"{"id":7,"items":["tea","milk"]}"#);
//! ```

mod read;
mod schema;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde_json::{Map, Number, Value};

/// A JSON text, read (see the module's documentation).
#[derive(Debug, Default)]
pub struct JsonDocument {
    /// The JSON text; where the reader read it, valid UTF-8 (it checked), and every string
    /// entry not `unescaped` is a span of it between two quotes.
    text: Bytes,
    /// The text of every string that had escapes, unescaped, one after another.
    unescaped: String,
    /// The values in document order; the root first.
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    Null,
    Bool(bool),
    Number(Number),
    /// `len` bytes from `at` of the text, or of `unescaped`.
    String {
        at: u32,
        len: u32,
        unescaped: bool,
    },
    /// A member's name: its text (as a string's), the position of the object it names a member
    /// of, and its first eight bytes as a number (little-endian, zeros past its end), so that
    /// looking a member up passes over most names with one comparison.
    Name {
        at: u32,
        len: u32,
        unescaped: bool,
        object: u32,
        head: u64,
    },
    /// `len` elements, the entries up to `end` (the first entry after its last descendant).
    Array {
        len: u32,
        end: u32,
    },
    /// `len` members, each a name (a string entry) followed by its value.
    Object {
        len: u32,
        end: u32,
    },
}

impl JsonDocument {
    /// Reads `text`, or says (serde_json's error) where it is not JSON.
    pub fn parse(text: Bytes) -> serde_json::Result<JsonDocument> {
        if let Some(document) = read::document(&text) {
            return Ok(JsonDocument { text, unescaped: document.unescaped, entries: document.entries });
        }
        let value: Value = serde_json::from_slice(&text)?;
        Ok(JsonDocument::from_value(text, &value))
    }

    /// `text` as a `serde_json::Value`, read by the document's reader: for a caller that
    /// needs a value it owns.
    pub fn parse_value(text: &Bytes) -> serde_json::Result<Value> {
        JsonDocument::parse(text.clone()).map(|document| document.root().to_value())
    }

    /// A document holding `value`, kept with `text` (the text it was read from).
    fn from_value(text: Bytes, value: &Value) -> JsonDocument {
        let mut document = JsonDocument { text, unescaped: String::new(), entries: Vec::new() };
        document.push_value(value);
        document
    }

    fn push_value(&mut self, value: &Value) {
        match value {
            Value::Null => self.entries.push(Entry::Null),
            Value::Bool(b) => self.entries.push(Entry::Bool(*b)),
            Value::Number(n) => self.entries.push(Entry::Number(n.clone())),
            Value::String(s) => self.push_unescaped(s),
            Value::Array(items) => {
                let start = self.entries.len();
                self.entries.push(Entry::Null);
                items.iter().for_each(|item| self.push_value(item));
                self.entries[start] = Entry::Array { len: count(items.len()), end: count(self.entries.len()) };
            }
            Value::Object(map) => {
                let start = self.entries.len();
                self.entries.push(Entry::Null);
                for (name, value) in map {
                    let at = count(self.unescaped.len());
                    self.unescaped.push_str(name);
                    let head = head(name.as_bytes());
                    self.entries.push(Entry::Name {
                        at,
                        len: count(name.len()),
                        unescaped: true,
                        object: count(start),
                        head,
                    });
                    self.push_value(value);
                }
                self.entries[start] = Entry::Object { len: count(map.len()), end: count(self.entries.len()) };
            }
        }
    }

    fn push_unescaped(&mut self, text: &str) {
        let at = count(self.unescaped.len());
        self.unescaped.push_str(text);
        self.entries.push(Entry::String { at, len: count(text.len()), unescaped: true });
    }

    /// The text the document was read from.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// The document's value.
    pub fn root(&self) -> JsonNode<'_> {
        JsonNode { document: self, at: 0 }
    }

    /// The node at `position`, as [`JsonNode::parts`] gave it (the root for a position
    /// this document has no node at).
    pub fn node(&self, position: u32) -> JsonNode<'_> {
        let at = if (position as usize) < self.entries.len() { position } else { 0 };
        JsonNode { document: self, at }
    }

    fn entry(&self, at: u32) -> &Entry {
        // Every position a node holds is an entry's: the document made it.
        &self.entries[at as usize]
    }

    /// The position of the first entry after the one at `at` and its descendants.
    fn after(&self, at: u32) -> u32 {
        count(after(&self.entries, at as usize))
    }

    fn string(&self, at: u32, len: u32, unescaped: bool) -> &str {
        let range = at as usize..(at + len) as usize;
        if unescaped {
            return self.unescaped.get(range).unwrap_or_default();
        }
        let bytes = self.text.get(range).unwrap_or_default();
        // SAFETY: a string entry that is not `unescaped` was made by the reader, which read
        // the text as a `&str` (valid UTF-8, checked before it began) and took this span
        // between two `"` bytes, which are ASCII and so on character boundaries.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// The first eight bytes of `bytes` as a number, little-endian, zeros past its end: most
/// names differ there, and numbers compare at once.
fn head(bytes: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(head)
}

/// The position of the first entry after the one at `at` and its descendants: the next, or
/// for an array or object the end it notes.
fn after(entries: &[Entry], at: usize) -> usize {
    match entries.get(at) {
        Some(Entry::Array { end, .. } | Entry::Object { end, .. }) => *end as usize,
        _ => at + 1,
    }
}

/// A length or position as an entry holds it: the reader takes no text of 4 GiB or more, so
/// a position within one fits.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A value in a [`JsonDocument`]: a reference, as cheap to copy as one.
#[derive(Clone, Copy)]
pub struct JsonNode<'d> {
    document: &'d JsonDocument,
    at: u32,
}

/// What a node is, to match on.
pub enum View<'d> {
    Null,
    Bool(bool),
    Number(&'d Number),
    String(&'d str),
    Array(Elements<'d>),
    Object(Members<'d>),
}

impl std::fmt::Debug for JsonNode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        self.write_json(&mut text);
        f.write_str(&text)
    }
}

impl<'d> JsonNode<'d> {
    /// The node's document and its position there: for a caller that keeps nodes packed
    /// beside other things, and makes them again with [`JsonDocument::node`].
    pub fn parts(self) -> (&'d JsonDocument, u32) {
        (self.document, self.at)
    }

    pub fn view(self) -> View<'d> {
        let document = self.document;
        match document.entry(self.at) {
            Entry::Null => View::Null,
            Entry::Bool(b) => View::Bool(*b),
            Entry::Number(n) => View::Number(n),
            Entry::String { at, len, unescaped } | Entry::Name { at, len, unescaped, .. } => {
                View::String(document.string(*at, *len, *unescaped))
            }
            Entry::Array { len, .. } => View::Array(Elements { document, next: self.at + 1, left: *len }),
            Entry::Object { len, .. } => View::Object(Members { document, next: self.at + 1, left: *len }),
        }
    }

    pub fn as_str(self) -> Option<&'d str> {
        match self.document.entry(self.at) {
            Entry::String { at, len, unescaped } | Entry::Name { at, len, unescaped, .. } => {
                Some(self.document.string(*at, *len, *unescaped))
            }
            _ => None,
        }
    }

    pub fn as_number(self) -> Option<&'d Number> {
        match self.document.entry(self.at) {
            Entry::Number(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_bool(self) -> Option<bool> {
        match self.document.entry(self.at) {
            Entry::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_null(self) -> bool {
        matches!(self.document.entry(self.at), Entry::Null)
    }

    pub fn is_object(self) -> bool {
        matches!(self.document.entry(self.at), Entry::Object { .. })
    }

    /// An array's elements; `None` for anything else.
    pub fn elements(self) -> Option<Elements<'d>> {
        match self.view() {
            View::Array(elements) => Some(elements),
            _ => None,
        }
    }

    /// An object's members; `None` for anything else.
    pub fn members(self) -> Option<Members<'d>> {
        match self.view() {
            View::Object(members) => Some(members),
            _ => None,
        }
    }

    /// An object's members; none for anything else.
    pub fn members_or_empty(self) -> Members<'d> {
        self.members().unwrap_or(Members { document: self.document, next: self.at, left: 0 })
    }

    /// An object's member named `name`.
    pub fn get(self, name: &str) -> Option<JsonNode<'d>> {
        self.members()?.find(|(n, _)| n.as_str() == Some(name)).map(|(_, value)| value)
    }

    /// The value of this object's member whose name is the node `name` itself (not merely an
    /// equal string): a name that walking the object's members gave. Found at once, comparing
    /// no text.
    pub fn value_of_name(self, name: JsonNode<'_>) -> Option<JsonNode<'d>> {
        if !std::ptr::eq(self.document, name.document) {
            return None;
        }
        match self.document.entry(name.at) {
            // A member's value follows its name.
            Entry::Name { object, .. } if *object == self.at => {
                Some(JsonNode { document: self.document, at: name.at + 1 })
            }
            _ => None,
        }
    }

    /// Whether `self` and `other` are the same node of the same document.
    pub fn is(self, other: JsonNode<'_>) -> bool {
        std::ptr::eq(self.document, other.document) && self.at == other.at
    }

    /// The node as a `serde_json::Value` (a copy).
    pub fn to_value(self) -> Value {
        match self.view() {
            View::Null => Value::Null,
            View::Bool(b) => Value::Bool(b),
            View::Number(n) => Value::Number(n.clone()),
            View::String(s) => Value::String(s.to_owned()),
            View::Array(elements) => Value::Array(elements.map(JsonNode::to_value).collect()),
            View::Object(members) => Value::Object(
                members.map(|(n, v)| (n.as_str().unwrap_or_default().to_owned(), v.to_value())).collect::<Map<_, _>>(),
            ),
        }
    }

    /// Appends the node as compact JSON text, members in the document's order, strings
    /// escaped as serde_json escapes them.
    pub fn write_json(self, out: &mut String) {
        match self.document.entry(self.at) {
            Entry::String { at, len, unescaped: false } | Entry::Name { at, len, unescaped: false, .. } => {
                // The text between the quotes as read: it has no escape, so no `"`, `\` or
                // control character either, and serde_json would write it as it is.
                out.push('"');
                out.push_str(self.document.string(*at, *len, false));
                out.push('"');
                return;
            }
            Entry::Number(n) => {
                use std::fmt::Write;
                let _ = write!(out, "{n}");
                return;
            }
            _ => {}
        }
        match self.view() {
            View::Null => out.push_str("null"),
            View::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            View::String(s) => write_json_string(s, out),
            View::Array(elements) => {
                out.push('[');
                for (i, element) in elements.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    element.write_json(out);
                }
                out.push(']');
            }
            View::Object(members) => {
                out.push('{');
                for (i, (name, value)) in members.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    name.write_json(out);
                    out.push(':');
                    value.write_json(out);
                }
                out.push('}');
            }
            View::Number(_) => {}
        }
    }
}

/// `s` as a JSON string, escaped as serde_json escapes: `"`, `\` and control characters.
fn write_json_string(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An array's elements, in order.
#[derive(Clone, Copy)]
pub struct Elements<'d> {
    document: &'d JsonDocument,
    next: u32,
    left: u32,
}

impl<'d> Iterator for Elements<'d> {
    type Item = JsonNode<'d>;

    fn next(&mut self) -> Option<JsonNode<'d>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let node = JsonNode { document: self.document, at: self.next };
        self.next = self.document.after(self.next);
        Some(node)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Elements<'_> {}

/// An object's members (name, value), in the order the document has them.
#[derive(Clone, Copy)]
pub struct Members<'d> {
    document: &'d JsonDocument,
    next: u32,
    left: u32,
}

impl<'d> Iterator for Members<'d> {
    type Item = (JsonNode<'d>, JsonNode<'d>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let name = JsonNode { document: self.document, at: self.next };
        let value = JsonNode { document: self.document, at: self.next + 1 };
        self.next = self.document.after(self.next + 1);
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Members<'_> {}
