//! The document against serde_json: the same value (or the same error) for any text, the
//! same JSON written back, and JSON Schema validators answering the same of either.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{JsonDocument, View};

/// serde_json's answer for `text`, errors as their message.
fn theirs(text: &str) -> Result<Value, String> {
    serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
}

fn ours(text: &str) -> Result<Value, String> {
    JsonDocument::parse(text.to_owned().into()).map(|d| d.root().to_value()).map_err(|e| e.to_string())
}

fn parse(text: &str) -> JsonDocument {
    JsonDocument::parse(text.to_owned().into()).unwrap()
}

#[test]
fn reads_what_serde_json_reads() {
    let documents = [
        r#"{"b": 1, "a": [true, false, null], "c": {"z": -2, "y": 1.5e3, "x": "\u00e9\n"}}"#,
        r#"{"same": 1, "other": 2, "same": 3}"#,
        r#"{"a": {"same": 1, "same": [2]}, "b": 0}"#,
        r#"[18446744073709551615, 18446744073709551616, -9223372036854775808, -0, 0.1, 1E+2, 0, 10]"#,
        r#"["\ud83d\ude00 \"quoted\" \\ \/ \b\f\r\t", "a long string of more than sixteen bytes, é and 😀"]"#,
        "  \"text\"  ",
        "\t\r\n{ }\n",
        "[[], {}, [{}]]",
        // Not JSON: serde_json's error for each.
        r#"{"a": 1} x"#,
        r#"{"a": 1,}"#,
        r#"{"a" 1}"#,
        r#"[1, 2"#,
        "",
        "nul",
        "tru",
        "01",
        "1.",
        "-",
        "1e400",
        r#"{"k": "\ud800"}"#,
        r#"{"k": "\udc00"}"#,
        r#"{"k": "\ud800\u0041"}"#,
        r#"{"k": "\x"}"#,
        "\"a\u{1}b\"",
        "\"unterminated",
        "{1: 2}",
    ];
    for document in documents {
        assert_eq!(ours(document), theirs(document), "{document}");
    }
}

#[test]
fn members_keep_the_order_they_were_written_in() {
    let document = parse(r#"{"b": 1, "a": {"y": "\u00e9", "x": [1, {"k": null}]}, "c": "plain"}"#);
    let names: Vec<&str> = document.root().members().unwrap().filter_map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    let mut text = String::new();
    document.root().write_json(&mut text);
    assert_eq!(text, r#"{"b":1,"a":{"y":"é","x":[1,{"k":null}]},"c":"plain"}"#);
    assert_eq!(document.root().get("c").and_then(|c| c.as_str()), Some("plain"));
    assert!(document.root().get("x").is_none(), "a nested member is not the root's");
}

#[test]
fn a_member_named_twice_keeps_its_last_value() {
    let document = parse(r#"{"k": 1, "a": 0, "k": 2}"#);
    assert_eq!(document.root().to_value(), json!({"a": 0, "k": 2}));
    assert_eq!(document.root().members().map(|m| m.len()), Some(2));
    assert_eq!(document.root().get("k").map(|k| k.to_value()), Some(json!(2)));
}

#[test]
fn a_name_node_finds_its_own_value_only() {
    let document = parse(r#"{"a": 1, "b": {"a": 2}}"#);
    let other = parse(r#"{"a": 1}"#);
    let root = document.root();
    let (name, _) = root.members().unwrap().next().unwrap();
    assert_eq!(root.value_of_name(name).map(|v| v.to_value()), Some(json!(1)));
    let inner = root.get("b").unwrap();
    assert!(inner.value_of_name(name).is_none(), "the outer object's name, not the inner one's");
    assert!(other.root().value_of_name(name).is_none(), "another document's");
}

#[test]
fn bytes_that_are_not_utf8_are_an_error_with_a_position() {
    let error = JsonDocument::parse(b"{\"k\": \"\xff\"}".as_slice().into()).unwrap_err();
    assert!(error.to_string().contains("line 1 column"), "{error}");
}

#[test]
fn nesting_is_bounded_as_serde_json_bounds_it() {
    let deep = "[".repeat(10_000);
    let error = ours(&deep).unwrap_err();
    assert!(error.contains("recursion limit"), "{error}");
    // Deeper than the reader goes, but within serde_json's limit: still read.
    let nested = format!("{}{}", "[".repeat(120), "]".repeat(120));
    assert_eq!(ours(&nested), theirs(&nested));
}

#[test]
fn strings_with_escapes_are_read_unescaped_and_written_escaped() {
    let document = parse(r#"["tab\there", "quote \" and \\", "\u0001", "caf\u00e9"]"#);
    let View::Array(elements) = document.root().view() else { panic!("a list") };
    let texts: Vec<&str> = elements.filter_map(|e| e.as_str()).collect();
    assert_eq!(texts, ["tab\there", "quote \" and \\", "\u{1}", "café"]);
    let mut text = String::new();
    document.root().write_json(&mut text);
    assert_eq!(text, serde_json::to_string(&document.root().to_value()).unwrap());
}

/// JSON Schema validators built for the document answer as those built for serde_json.
#[test]
fn validators_answer_of_a_document_as_of_its_value() {
    let schema = json!({
        "type": "object",
        "required": ["name", "tags", "price"],
        "properties": {
            "name": { "type": "string", "maxLength": 5 },
            "tags": { "type": "array", "items": { "type": "string" }, "uniqueItems": true },
            "price": { "type": "number", "minimum": 0 },
            "owner": { "type": "object", "properties": { "id": { "type": "integer" } }, "additionalProperties": false },
            "kind": { "enum": ["dog", "cat"] }
        }
    });
    let theirs = jsonschema::options().build(&schema).unwrap();
    let ours = jsonschema::options_for::<JsonDocument>().build(&schema).unwrap();
    let instances = [
        r#"{"name": "Rex", "tags": ["a", "b"], "price": 2}"#,
        r#"{"name": "Rexford", "tags": ["a", "a"], "price": -1, "owner": {"id": 1.5, "x": 0}, "kind": "cow"}"#,
        r#"{"tags": [1], "owner": {"id": 3}}"#,
        r#"{"name": "é😀", "tags": [], "price": 0, "kind": "cat"}"#,
        r#"[]"#,
        r#"{"name": "a", "name": 5, "tags": [], "price": 1}"#,
    ];
    for text in instances {
        let value: Value = serde_json::from_str(text).unwrap();
        let document = parse(text);
        assert_eq!(ours.is_valid(document.root()), theirs.is_valid(&value), "{text}");
        let errors = |e: jsonschema::ValidationError<'_>| (e.instance_path().to_string(), e.to_string());
        let mut ours: Vec<_> = ours.iter_errors(document.root()).map(errors).collect();
        let mut theirs: Vec<_> = theirs.iter_errors(&value).map(errors).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any value serde_json writes (compact or pretty) reads back the same, and is written
    /// back as serde_json writes it (its objects are in name order, as a document keeps them).
    #[test]
    fn reads_and_writes_any_written_value(value in any_value(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
        let text = text.unwrap();
        prop_assert_eq!(ours(&text), theirs(&text));
        let mut written = String::new();
        parse(&text).root().write_json(&mut written);
        prop_assert_eq!(written, serde_json::to_string(&value).unwrap());
    }

    /// Any text at all: the same value, or the same error.
    #[test]
    fn agrees_with_serde_json_on_any_text(text in r#"[\[\]{}",:\\ 0-9a-z.eE+\-\u{1}\u{e9}]{0,40}"#) {
        prop_assert_eq!(ours(&text), theirs(&text));
    }
}

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((".{0,12}", inner), 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}
