//! JSON↔XML conversions, for templates (`$util.jsonToXml`, `$util.xmlToJson`) and for the
//! `xml_upstream` integration option that lets a JSON client talk to an XML backend.
//!
//! One convention both ways, so that a document converted one way converts back:
//!
//! - an element is an object of its attributes (keys `@name`), its children (keys by element
//!   name, a name that repeats becoming an array in document order) and its text (`#text`,
//!   when it has attributes or children too); an element with only text is that string, and
//!   an empty one is `""`;
//! - names keep their namespace prefix (`soap:Envelope`), and namespace declarations are
//!   attributes like any other (`@xmlns`, `@xmlns:soap`); a name that is not an XML name
//!   (`#text`, `@id`, `1st`) is refused either way, so none reads as convention;
//! - XML has no numbers or booleans: converted to XML they are written as text, and they
//!   come back as strings; `null` becomes an empty element;
//! - children are written in the order of their object's keys, which is alphabetical (the
//!   gateway's JSON objects are sorted maps): an XML document's element order survives only
//!   within a repeated name;
//! - text and attribute values are escaped on the way out and unescaped on the way in
//!   (the five predefined entities and character references; a document with a DTD is
//!   refused, so no entity is ever expanded from it); CDATA is read as text.
//!
//! The root element is named by the caller when converting to XML (the value is its
//! content), and is the single key of the object returned when converting to JSON.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value};

/// How deep elements may nest, either way.
pub const MAX_DEPTH: usize = 64;

/// Why a conversion failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("`{0}` is not an XML name")]
    Name(String),
    #[error("the document nests deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("the document is not XML: {0}")]
    Syntax(String),
    #[error("documents with a DTD are refused")]
    Dtd,
    #[error("the document has no root element")]
    Empty,
    #[error("an attribute (`{0}`) must be a string, a number or a boolean")]
    Attribute(String),
}

/// Writes `value` as an XML document whose root element is `root`.
pub fn json_to_xml(value: &Value, root: &str) -> Result<String, XmlError> {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    element(&mut out, root, value, 0)?;
    Ok(out)
}

fn element(out: &mut String, name: &str, value: &Value, depth: usize) -> Result<(), XmlError> {
    if depth >= MAX_DEPTH {
        return Err(XmlError::TooDeep);
    }
    check_name(name)?;
    if let Value::Array(items) = value {
        for item in items {
            element(out, name, item, depth)?;
        }
        return Ok(());
    }
    out.push('<');
    out.push_str(name);
    let Value::Object(map) = value else {
        out.push('>');
        escape_into(out, &scalar(value), false);
        close(out, name);
        return Ok(());
    };
    for (key, attribute) in map.iter().filter_map(|(k, v)| Some((k.strip_prefix('@')?, v))) {
        check_name(key)?;
        if matches!(attribute, Value::Object(_) | Value::Array(_)) {
            return Err(XmlError::Attribute(key.to_string()));
        }
        out.push(' ');
        out.push_str(key);
        out.push_str("=\"");
        escape_into(out, &scalar(attribute), true);
        out.push('"');
    }
    out.push('>');
    for (key, child) in map.iter().filter(|(k, _)| !k.starts_with('@')) {
        if key == "#text" {
            escape_into(out, &scalar(child), false);
        } else {
            element(out, key, child, depth + 1)?;
        }
    }
    close(out, name);
    Ok(())
}

/// Writes `text` escaped: markup characters always, and what a reader would normalise
/// (a carriage return in text; also line feeds and tabs in an attribute) as character
/// references, so the text reads back as it was.
fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// A scalar's text (`null` and containers, which callers handle, as empty).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// An XML name: a letter or `_` first, then letters, digits, `-`, `_`, `.`, and at most one
/// `:` between a prefix and a local name.
fn check_name(name: &str) -> Result<(), XmlError> {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
            && chars.all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let valid = match name.split_once(':') {
        Some((prefix, local)) => part(prefix) && part(local),
        None => part(name),
    };
    if valid { Ok(()) } else { Err(XmlError::Name(name.to_string())) }
}

/// An element being read: its attributes and children so far, and its text.
#[derive(Default)]
struct Open {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

impl Open {
    fn start(start: &BytesStart) -> Result<Open, XmlError> {
        let name = start.name().as_ref().to_string();
        check_name(&name)?;
        let mut fields = Map::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| XmlError::Syntax(e.to_string()))?;
            let key = attribute.key.as_ref();
            check_name(key)?;
            let key = format!("@{key}");
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::default())
                .map_err(|e| XmlError::Syntax(e.to_string()))?;
            fields.insert(key, Value::String(value.into_owned()));
        }
        Ok(Open { name, fields, text: String::new() })
    }

    /// The element as a value: its text alone, or its fields with `#text`.
    fn finish(mut self) -> (String, Value) {
        let text = self.text.trim();
        let value = if self.fields.is_empty() {
            Value::String(text.to_string())
        } else {
            if !text.is_empty() {
                self.fields.insert("#text".into(), Value::String(text.to_string()));
            }
            Value::Object(self.fields)
        };
        (self.name, value)
    }

    /// Adds a child, turning a repeated name into an array.
    fn add(&mut self, name: String, value: Value) {
        match self.fields.get_mut(&name) {
            None => {
                self.fields.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
}

/// Reads an XML document into `{"root": ...}`.
pub fn xml_to_json(text: &str) -> Result<Value, XmlError> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    loop {
        let event = reader.read_event().map_err(|e| XmlError::Syntax(e.to_string()))?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                if root.is_some() {
                    return Err(XmlError::Syntax("more than one root element".into()));
                }
                stack.push(Open::start(&start)?);
            }
            Event::Empty(start) => {
                let (name, value) = Open::start(&start)?.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, value),
                    None if root.is_none() => root = Some((name, value)),
                    None => return Err(XmlError::Syntax("more than one root element".into())),
                }
            }
            Event::End(_) => {
                let (name, value) =
                    stack.pop().ok_or_else(|| XmlError::Syntax("an end tag without a start".into()))?.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::Text(t) => text_of(&mut stack, &t.xml10_content())?,
            Event::CData(c) => text_of(&mut stack, &c.xml10_content())?,
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| XmlError::Syntax(e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.xml10_content();
                        match quick_xml::escape::resolve_xml_entity(&name) {
                            Some(s) => s.to_string(),
                            None => return Err(XmlError::Syntax(format!("unknown entity `&{name};`"))),
                        }
                    }
                };
                text_of(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Syntax("the document ends inside an element".into()));
    }
    let (name, value) = root.ok_or(XmlError::Empty)?;
    let mut document = Map::new();
    document.insert(name, value);
    Ok(Value::Object(document))
}

/// Text inside the current element; outside any element only whitespace is allowed.
fn text_of(stack: &mut [Open], text: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(open) => {
            open.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(XmlError::Syntax("text outside the root element".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn attributes_arrays_text_and_escaping() {
        let pet = json!({
            "@id": 7,
            "@xmlns:x": "urn:x",
            "name": "Rex & <Co> \"quoted\"",
            "x:tag": ["good", "old"],
            "owner": { "@since": true, "#text": "Ana" },
            "notes": null,
        });
        let xml = json_to_xml(&pet, "pet").unwrap();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><pet id=\"7\" xmlns:x=\"urn:x\">\
             <name>Rex &amp; &lt;Co&gt; &quot;quoted&quot;</name><notes></notes><owner since=\"true\">Ana</owner>\
             <x:tag>good</x:tag><x:tag>old</x:tag></pet>"
        );
        let back = xml_to_json(&xml).unwrap();
        assert_eq!(
            back,
            json!({ "pet": {
                "@id": "7", "@xmlns:x": "urn:x", "name": "Rex & <Co> \"quoted\"", "x:tag": ["good", "old"],
                "owner": { "@since": "true", "#text": "Ana" }, "notes": "",
            }})
        );
        // What a reader normalises is written as character references.
        let spaced = json!({ "@a": "x\ny\tz", "#text": "1\r\n2" });
        assert_eq!(xml_to_json(&json_to_xml(&spaced, "s").unwrap()).unwrap(), json!({ "s": spaced }));
    }

    #[test]
    fn what_xml_cannot_say_is_refused() {
        assert_eq!(json_to_xml(&json!({ "1st": "x" }), "r"), Err(XmlError::Name("1st".into())));
        assert_eq!(json_to_xml(&json!({ "a b": "x" }), "r"), Err(XmlError::Name("a b".into())));
        assert_eq!(json_to_xml(&json!({ "@a": [1] }), "r"), Err(XmlError::Attribute("a".into())));
        let mut deep = json!("x");
        for _ in 0..MAX_DEPTH {
            deep = json!({ "d": deep });
        }
        assert_eq!(json_to_xml(&deep, "r"), Err(XmlError::TooDeep));
    }

    #[test]
    fn hostile_or_broken_documents_are_errors() {
        let laughs = "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaa\">]><l>&a;</l>";
        assert_eq!(xml_to_json(laughs), Err(XmlError::Dtd));
        assert!(matches!(xml_to_json("<a>&nope;</a>"), Err(XmlError::Syntax(_))));
        assert!(matches!(xml_to_json("<a><b></a>"), Err(XmlError::Syntax(_))));
        assert!(matches!(xml_to_json("<a></a><b/>"), Err(XmlError::Syntax(_))));
        assert!(matches!(xml_to_json("<a>"), Err(XmlError::Syntax(_))));
        assert_eq!(xml_to_json("  "), Err(XmlError::Empty));
        assert_eq!(xml_to_json(&"<a>".repeat(MAX_DEPTH + 1)), Err(XmlError::TooDeep));
        assert_eq!(xml_to_json("<a>&#65;<![CDATA[<b>]]></a>").unwrap(), json!({ "a": "A<b>" }));
    }

    /// A name the convention gives a meaning (`#text`, `@id`) or that XML does not allow is
    /// refused when read, as when written: `<#text/>` read as a child would write back as
    /// the parent's text.
    #[test]
    fn names_that_are_not_xml_names_are_refused_when_read() {
        assert_eq!(xml_to_json("<a>x<#text/></a>"), Err(XmlError::Name("#text".into())));
        assert_eq!(xml_to_json("<a><@id>7</@id></a>"), Err(XmlError::Name("@id".into())));
        assert_eq!(xml_to_json("<a 1x=\"y\"/>"), Err(XmlError::Name("1x".into())));
        assert_eq!(xml_to_json("<#text/>"), Err(XmlError::Name("#text".into())));
    }

    /// Values the convention carries both ways: strings at the leaves, non-empty names,
    /// arrays of two or more (one item reads back as the item itself).
    fn document() -> impl Strategy<Value = Value> {
        let leaf = "[ -~]{0,12}".prop_map(|s| Value::String(s.trim().to_string()));
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop::collection::btree_map(
                "[a-z][a-z0-9_]{0,6}",
                prop_oneof![inner.clone(), prop::collection::vec(inner, 2..4).prop_map(Value::Array)],
                1..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    proptest! {
        #[test]
        fn json_converted_to_xml_converts_back(doc in document()) {
            // Arrays of objects and strings alike repeat their element.
            let xml = json_to_xml(&doc, "doc-root").unwrap();
            let back = xml_to_json(&xml).unwrap();
            prop_assert_eq!(&back["doc-root"], &doc, "through {}", xml);
        }

        #[test]
        fn reading_never_panics(text in "\\PC{0,200}") {
            let _ = xml_to_json(&text);
        }
    }
}
