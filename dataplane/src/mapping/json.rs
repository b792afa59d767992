//! Parsing a JSON body into a `serde_json::Value`, the value request validation and the
//! mapping templates read, at the least cost per request.
//!
//! A valid document is read by [`Reader`], which builds the value directly: the body's UTF-8
//! is checked once (on the standard library's ASCII fast path) rather than string by string,
//! a string's text is found sixteen bytes at a time, and an object's members are gathered in a
//! list and made into the map in one pass (sorted first: already in order, as in most
//! documents a program wrote, that is one comparison per member) instead of inserted one by
//! one. A document the reader does not take — anything that is not JSON, or nested deeper
//! than it goes — is parsed by serde_json, whose error (with its line and column) is the
//! answer. A number other than a plain integer is read by serde_json too.
//!
//! Either way the value is the one `serde_json::from_slice` gives: a member named twice keeps
//! its last value, numbers are serde_json's. `tests` and the `json_body` fuzz target compare
//! the two.

use serde_json::{Map, Number, Value};

use crate::byte_scan::ByteSet;

/// `body` (JSON text) as a value, or serde_json's error saying where it is not JSON.
pub fn parse_json(body: &[u8]) -> serde_json::Result<Value> {
    match std::str::from_utf8(body) {
        Ok(text) => match Reader::new(text).document() {
            Some(value) => Ok(value),
            None => serde_json::from_str(text),
        },
        Err(_) => serde_json::from_slice(body),
    }
}

/// How deep arrays and objects nest before the reader leaves a document to serde_json (whose
/// own limit, 127, is higher: the reader never takes a document serde_json refuses).
const MAX_DEPTH: usize = 100;

/// A reader of one JSON text. Every method returns `None` at anything it does not take.
struct Reader<'t> {
    text: &'t str,
    at: usize,
    depth: usize,
}

impl<'t> Reader<'t> {
    fn new(text: &'t str) -> Self {
        Reader { text, at: 0, depth: 0 }
    }

    fn bytes(&self) -> &'t [u8] {
        self.text.as_bytes()
    }

    /// The whole text as one value, with nothing but white space around it.
    fn document(mut self) -> Option<Value> {
        let value = self.value()?;
        self.skip_space();
        (self.at == self.text.len()).then_some(value)
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// After white space, the next byte, consumed if it is `byte`.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.bytes().get(self.at) == Some(&byte);
        self.at += usize::from(found);
        found
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_space();
        match *self.bytes().get(self.at)? {
            b'"' => self.string().map(Value::String),
            b'{' => self.nested(Self::object),
            b'[' => self.nested(Self::array),
            b't' => self.word("true", Value::Bool(true)),
            b'f' => self.word("false", Value::Bool(false)),
            b'n' => self.word("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, word: &str, value: Value) -> Option<Value> {
        let found = self.text[self.at..].starts_with(word);
        self.at += word.len();
        found.then_some(value)
    }

    fn nested(&mut self, read: fn(&mut Self) -> Option<Value>) -> Option<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let value = read(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Option<Value> {
        self.at += 1; // `{`
        let mut members: Vec<(String, Value)> = Vec::with_capacity(8);
        if !self.eat(b'}') {
            loop {
                self.skip_space();
                if self.bytes().get(self.at) != Some(&b'"') {
                    return None;
                }
                let name = self.string()?;
                if !self.eat(b':') {
                    return None;
                }
                members.push((name, self.value()?));
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        // `BTreeMap`'s `from_iter` sorts (stably) and keeps the last of equal names.
        Some(Value::Object(members.into_iter().collect::<Map<String, Value>>()))
    }

    fn array(&mut self) -> Option<Value> {
        self.at += 1; // `[`
        let mut elements = Vec::new();
        if !self.eat(b']') {
            loop {
                elements.push(self.value()?);
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        Some(Value::Array(elements))
    }

    /// A string, the reader on its opening quote.
    fn string(&mut self) -> Option<String> {
        self.at += 1; // `"`
        let start = self.at;
        self.at += STRING_STOPS.run_length(&self.bytes()[self.at..]);
        match *self.bytes().get(self.at)? {
            b'"' => {
                self.at += 1;
                Some(self.text[start..self.at - 1].to_owned())
            }
            b'\\' => {
                let mut out = String::with_capacity(self.at - start + 16);
                out.push_str(&self.text[start..self.at]);
                self.escaped_string(out)
            }
            // A control character, which a string must escape.
            _ => None,
        }
    }

    /// The rest of a string from its first `\`, appended to `out`.
    fn escaped_string(&mut self, mut out: String) -> Option<String> {
        loop {
            match *self.bytes().get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    let escape = *self.bytes().get(self.at + 1)?;
                    self.at += 2;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return None,
                    }
                }
                _ => {
                    let run = STRING_STOPS.run_length(&self.bytes()[self.at..]);
                    if run == 0 {
                        return None; // a control character
                    }
                    out.push_str(&self.text[self.at..self.at + run]);
                    self.at += run;
                }
            }
        }
    }

    /// The character of a `\uXXXX` escape (two, for a surrogate pair), the reader after `\u`.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        if !(0xD800..0xE000).contains(&first) {
            return char::from_u32(first);
        }
        // A lone surrogate is not a character: serde_json refuses it, and so does the reader.
        if first >= 0xDC00 || self.bytes().get(self.at..self.at + 2) != Some(b"\\u") {
            return None;
        }
        self.at += 2;
        let second = self.hex4()?;
        if !(0xDC00..0xE000).contains(&second) {
            return None;
        }
        char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let [high, low] = crate::digest::from_hex::<2>(self.bytes().get(self.at..self.at + 4)?)?;
        self.at += 4;
        Some(u32::from(u16::from_be_bytes([high, low])))
    }

    /// A number: a plain integer that fits in 64 bits read here, any other left to serde_json
    /// so that the value is exactly its own.
    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        let bytes = self.bytes();
        let mut end = start;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = bytes.get(end) {
            end += 1;
        }
        self.at = end;
        let literal = &self.text[start..end];
        // At most 19 digits, the first not a zero (unless it is the only one): a `u64`.
        let plain = literal == "0"
            || (literal.len() <= 19 && !literal.starts_with('0') && literal.bytes().all(|b| b.is_ascii_digit()));
        if plain {
            return literal.parse::<u64>().ok().map(|n| Value::Number(Number::from(n)));
        }
        match serde_json::from_str::<Value>(literal) {
            Ok(number @ Value::Number(_)) => Some(number),
            _ => None,
        }
    }
}

/// What ends the plain text of a string: a quote, a backslash or a control character.
const STRING_STOPS: ByteSet = ByteSet { below: 0x20, beyond_ascii: false, also: b"\"\\" };

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// serde_json's answer for `text`, errors as their message.
    fn theirs(text: &str) -> Result<Value, String> {
        serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
    }

    fn ours(text: &str) -> Result<Value, String> {
        parse_json(text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let documents = [
            r#"{"b": 1, "a": [true, false, null], "c": {"z": -2, "y": 1.5e3, "x": "\u00e9\n"}}"#,
            r#"{"same": 1, "other": 2, "same": 3}"#,
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
    fn a_member_named_twice_keeps_its_last_value() {
        let value = parse_json(br#"{"k": 1, "a": 0, "k": 2}"#).unwrap();
        assert_eq!(value, serde_json::json!({"a": 0, "k": 2}));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_an_error_with_a_position() {
        let error = parse_json(b"{\"k\": \"\xff\"}").unwrap_err();
        assert!(error.to_string().contains("line 1 column"), "{error}");
    }

    #[test]
    fn nesting_is_bounded_as_serde_json_bounds_it() {
        let deep = "[".repeat(10_000);
        let error = parse_json(deep.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
        // Deeper than the reader goes, but within serde_json's limit: still read.
        let nested = format!("{}{}", "[".repeat(120), "]".repeat(120));
        assert_eq!(ours(&nested), theirs(&nested));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any value serde_json writes (compact or pretty) reads back the same.
        #[test]
        fn reads_any_written_value(value in any_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
            let text = text.unwrap();
            prop_assert_eq!(ours(&text), theirs(&text));
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
}
