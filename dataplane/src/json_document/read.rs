//! The reader of a [`JsonDocument`](super::JsonDocument)'s entries: it takes every valid JSON
//! text it can, cheaply, and declines (`None`) anything else, which serde_json then reads.
//!
//! The text's UTF-8 is checked once (on the standard library's ASCII fast path) rather than
//! string by string; a string's text is found sixteen bytes at a time and kept as a span of
//! the body; only a string with escapes is copied, unescaped. A plain integer is read here,
//! any other number by serde_json, so that it is exactly its own. An object with a member
//! named twice is declined: serde_json's value keeps the last one, and the document is built
//! from that. Telling names apart costs one bit test per member: each name sets a bit of a
//! 64-bit set chosen by its first bytes and length, and only a name whose bit was set already
//! is compared with the names before it.

use serde_json::{Number, Value};

use super::{Entry, after, count, head};
use crate::byte_scan::ByteSet;

/// What the reader made of a text.
pub(super) struct Read {
    pub entries: Vec<Entry>,
    pub unescaped: String,
}

/// `text` read, or `None` when the reader does not take it.
pub(super) fn document(text: &[u8]) -> Option<Read> {
    // Positions are kept in 32 bits.
    if text.len() >= u32::MAX as usize {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut reader =
        Reader { text, at: 0, depth: 0, entries: Vec::with_capacity(text.len() / 16 + 1), unescaped: String::new() };
    reader.value()?;
    reader.skip_space();
    (reader.at == text.len()).then_some(Read { entries: reader.entries, unescaped: reader.unescaped })
}

/// How deep arrays and objects nest before the reader declines a document (serde_json's own
/// limit, 127, is higher: the reader never takes a document serde_json refuses).
const MAX_DEPTH: usize = 100;

/// A reader of one JSON text. Every method returns `None` at anything it does not take.
struct Reader<'t> {
    text: &'t str,
    at: usize,
    depth: usize,
    entries: Vec<Entry>,
    unescaped: String,
}

impl Reader<'_> {
    fn bytes(&self) -> &[u8] {
        self.text.as_bytes()
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

    fn value(&mut self) -> Option<()> {
        self.skip_space();
        match *self.bytes().get(self.at)? {
            b'"' => self.string(),
            b'{' => self.nested(Self::object),
            b'[' => self.nested(Self::array),
            b't' => self.word("true", Entry::Bool(true)),
            b'f' => self.word("false", Entry::Bool(false)),
            b'n' => self.word("null", Entry::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, word: &str, entry: Entry) -> Option<()> {
        let found = self.text[self.at..].starts_with(word);
        self.at += word.len();
        self.entries.push(entry);
        found.then_some(())
    }

    fn nested(&mut self, read: fn(&mut Self) -> Option<()>) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        read(self)?;
        self.depth -= 1;
        Some(())
    }

    fn object(&mut self) -> Option<()> {
        self.at += 1; // `{`
        let start = self.entries.len();
        self.entries.push(Entry::Null);
        let mut len = 0;
        let mut names_seen = 0u64;
        if !self.eat(b'}') {
            loop {
                self.skip_space();
                if self.bytes().get(self.at) != Some(&b'"') {
                    return None;
                }
                let name = self.entries.len();
                self.string()?;
                let bit = self.make_name(name, start);
                if names_seen & bit != 0 && self.named_before(start, name) {
                    return None;
                }
                names_seen |= bit;
                if !self.eat(b':') {
                    return None;
                }
                self.value()?;
                len += 1;
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        self.entries[start] = Entry::Object { len, end: count(self.entries.len()) };
        Some(())
    }

    /// The text of the string entry at `at`.
    fn string_at(&self, at: usize) -> &str {
        match self.entries.get(at) {
            Some(Entry::String { at, len, unescaped } | Entry::Name { at, len, unescaped, .. }) => {
                let range = *at as usize..(*at + *len) as usize;
                if *unescaped { &self.unescaped[range] } else { &self.text[range] }
            }
            _ => "",
        }
    }

    /// Makes the string entry at `at` the name of a member of the object at `object`; returns
    /// the bit of a 64-bit set that the name stands for.
    fn make_name(&mut self, at: usize, object: usize) -> u64 {
        let Some(&Entry::String { at: start, len, unescaped }) = self.entries.get(at) else { return 0 };
        let (start, n) = (start as usize, len as usize);
        let buffer = if unescaped { self.unescaped.as_bytes() } else { self.text.as_bytes() };
        // Eight bytes read at once where the buffer goes on past the name (a name in the text is
        // followed at least by its quote and a `:`), then the bytes past it cleared.
        let head = match buffer.get(start..start + 8).and_then(|eight| <[u8; 8]>::try_from(eight).ok()) {
            Some(eight) if n < 8 => u64::from_le_bytes(eight) & ((1 << (n * 8)) - 1),
            Some(eight) => u64::from_le_bytes(eight),
            None => head(buffer.get(start..start + n).unwrap_or_default()),
        };
        self.entries[at] = Entry::Name { at: start as u32, len, unescaped, object: count(object), head };
        let mixed = (head ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        1 << (mixed >> 58)
    }

    /// Whether a member of the object at entry `object`, before the name at entry `name`, has
    /// the same name.
    fn named_before(&self, object: usize, name: usize) -> bool {
        let wanted = self.string_at(name);
        let mut at = object + 1;
        while at < name {
            if self.string_at(at) == wanted {
                return true;
            }
            at = after(&self.entries, at + 1);
        }
        false
    }

    fn array(&mut self) -> Option<()> {
        self.at += 1; // `[`
        let start = self.entries.len();
        self.entries.push(Entry::Null);
        let mut len = 0;
        if !self.eat(b']') {
            loop {
                self.value()?;
                len += 1;
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        self.entries[start] = Entry::Array { len, end: count(self.entries.len()) };
        Some(())
    }

    /// A string, the reader on its opening quote.
    fn string(&mut self) -> Option<()> {
        self.at += 1; // `"`
        let start = self.at;
        self.at += STRING_STOPS.run_length(&self.bytes()[self.at..]);
        match *self.bytes().get(self.at)? {
            b'"' => {
                self.at += 1;
                self.entries.push(Entry::String {
                    at: count(start),
                    len: count(self.at - 1 - start),
                    unescaped: false,
                });
                Some(())
            }
            b'\\' => {
                let from = self.unescaped.len();
                self.unescaped.push_str(&self.text[start..self.at]);
                self.escaped_string()?;
                let len = self.unescaped.len() - from;
                self.entries.push(Entry::String { at: count(from), len: count(len), unescaped: true });
                Some(())
            }
            // A control character, which a string must escape.
            _ => None,
        }
    }

    /// The rest of a string from its first `\`, appended to `unescaped`.
    fn escaped_string(&mut self) -> Option<()> {
        loop {
            match *self.bytes().get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    let escape = *self.bytes().get(self.at + 1)?;
                    self.at += 2;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    self.unescaped.push(c);
                }
                _ => {
                    let run = STRING_STOPS.run_length(&self.bytes()[self.at..]);
                    if run == 0 {
                        return None; // a control character
                    }
                    self.unescaped.push_str(&self.text[self.at..self.at + run]);
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
    fn number(&mut self) -> Option<()> {
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
        let number = if plain {
            Number::from(literal.parse::<u64>().ok()?)
        } else {
            match serde_json::from_str::<Value>(literal) {
                Ok(Value::Number(number)) => number,
                _ => return None,
            }
        };
        self.entries.push(Entry::Number(number));
        Some(())
    }
}

/// What ends the plain text of a string: a quote, a backslash or a control character.
const STRING_STOPS: ByteSet = ByteSet { below: 0x20, beyond_ascii: false, also: b"\"\\" };
