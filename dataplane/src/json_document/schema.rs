//! [`JsonDocument`] as a representation JSON Schema validators check (`jsonschema`'s `Json`
//! traits), so that request validation reads the body where it lies: a validator built with
//! `jsonschema::options_for::<JsonDocument>()` takes a [`JsonNode`].
//!
//! An object's member is found by walking its members (a member list, not a map): a name the
//! schema looks up is prepared once with its first eight bytes as a number, so most members
//! are passed over with one comparison, without reading their names' bytes one by one.

use std::borrow::Cow;

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::{Number, Value};

use super::{Elements, Entry, JsonDocument, JsonNode, Members, after, count, head};

/// A name a schema looks members up by, with its first eight bytes as a document's names
/// have them, to compare with at once.
pub struct PreparedName {
    name: String,
    head: u64,
}

impl Json for JsonDocument {
    type Node<'a> = JsonNode<'a>;
    type PreparedKey = PreparedName;
    type StringBuffer = JsonDocument;

    // A lookup walks the members; one walk that visits them all costs no more.
    const KEYS_PER_LOOKUP: usize = 64;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> PreparedName {
        PreparedName { name: key.to_owned(), head: head(key.as_bytes()) }
    }

    fn with_string_node<T>(buffer: &mut JsonDocument, string: &str, f: impl FnOnce(JsonNode<'_>) -> T) -> T {
        buffer.entries.clear();
        buffer.unescaped.clear();
        buffer.push_unescaped(string);
        f(buffer.root())
    }
}

impl<'a> Members<'a> {
    /// The value of the member named `key`: the members' entries walked by position, a name
    /// whose first bytes or length differ passed over without reading its text.
    fn find_prepared(self, key: &PreparedName) -> Option<JsonNode<'a>> {
        let document = self.document;
        let wanted = key.name.as_bytes();
        let mut at = self.next as usize;
        for _ in 0..self.left {
            if let Some(Entry::Name { at: text, len, unescaped, head, .. }) = document.entries.get(at)
                && *head == key.head
                && *len as usize == wanted.len()
                && (wanted.len() <= 8 || document.string(*text, *len, *unescaped).as_bytes() == wanted)
            {
                return Some(JsonNode { document, at: count(at + 1) });
            }
            // Past the value: one entry, or a whole array or object.
            at = after(&document.entries, at + 1);
        }
        None
    }
}

impl<'a> Node<'a, JsonDocument> for JsonNode<'a> {
    type Object = Members<'a>;
    type Array = Elements<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<Members<'a>> {
        self.members()
    }

    fn as_array(&self) -> Option<Elements<'a>> {
        self.elements()
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        JsonNode::as_str(*self).map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<&'a Number> {
        JsonNode::as_number(*self)
    }

    fn as_boolean(&self) -> Option<bool> {
        self.as_bool()
    }

    fn is_null(&self) -> bool {
        JsonNode::is_null(*self)
    }

    fn json_type(&self) -> JsonType {
        match self.document.entry(self.at) {
            Entry::Null => JsonType::Null,
            Entry::Bool(_) => JsonType::Boolean,
            Entry::Number(_) => JsonType::Number,
            Entry::String { .. } | Entry::Name { .. } => JsonType::String,
            Entry::Array { .. } => JsonType::Array,
            Entry::Object { .. } => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let string = JsonNode::as_str(*self)?;
        // A character takes one to four bytes: the byte count often decides without counting.
        let bytes = string.len() as u64;
        if bytes < min || bytes.div_ceil(4) > max {
            return Some(false);
        }
        if min <= bytes.div_ceil(4) && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(string.chars().count() as u64)))
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(JsonNode::to_value(*self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::tagged(std::ptr::from_ref(self.document) as usize, self.at))
    }
}

impl<'a> Object<'a, JsonDocument> for Members<'a> {
    type Node = JsonNode<'a>;
    type MemberName = &'a str;
    type MembersIter = NamedMembers<'a>;

    fn len(&self) -> usize {
        self.left as usize
    }

    fn get(&self, key: &PreparedName) -> Option<JsonNode<'a>> {
        self.find_prepared(key)
    }

    fn members(&self) -> NamedMembers<'a> {
        NamedMembers(*self)
    }
}

/// An object's members with their names as text.
pub struct NamedMembers<'a>(Members<'a>);

impl<'a> Iterator for NamedMembers<'a> {
    type Item = (&'a str, JsonNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(name, value)| (name.as_str().unwrap_or_default(), value))
    }
}

impl<'a> Array<'a, JsonDocument> for Elements<'a> {
    type Node = JsonNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.left as usize
    }

    fn elements(&self) -> Elements<'a> {
        *self
    }
}
