//! Query strings as `application/x-www-form-urlencoded` pairs: percent-decoding, and the
//! values of one parameter.

use std::borrow::Cow;

/// Decodes `%XX` escapes and `+` (a space); a `%` without two hex digits stays as it is.
/// Bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(text.as_bytes())).into_owned()
}

/// [`percent_decode`], to bytes.
pub fn percent_decode_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // Two hex digits exactly: not a sign (`%+5` is not an escape).
            b'%' => match bytes.get(i + 1..i + 3).and_then(crate::digest::from_hex::<1>) {
                Some([byte]) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `text` percent-encoded for a query string: everything but RFC 3986's unreserved
/// characters, borrowed when nothing needs encoding.
pub fn encode(text: &str) -> Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if text.bytes().all(unreserved) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// [`percent_decode`], borrowing `text` when it has nothing to decode (no `%`, no `+`).
pub fn decoded(text: &str) -> Cow<'_, str> {
    if text.contains(['%', '+']) { Cow::Owned(percent_decode(text)) } else { Cow::Borrowed(text) }
}

/// The `(name, value)` pairs of a query string as sent (still encoded), in order.
pub fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The decoded `(name, value)` pairs of a query string, in order.
pub fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw_pairs(query).map(|(k, v)| (percent_decode(k), percent_decode(v)))
}

/// The values of parameter `name`, joined by commas; `None` when it is absent.
pub fn joined_values(query: &str, name: &str) -> Option<String> {
    let values: Vec<String> = pairs(query).filter(|(k, _)| k == name).map(|(_, v)| v).collect();
    (!values.is_empty()).then(|| values.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
        // A sign is not a hex digit: `%+5` is three characters, not the control character 0x05.
        assert_eq!(percent_decode("%+5%+F%-0"), "% 5% F%-0");
        assert_eq!(percent_decode_bytes(b"%+0"), b"% 0");
        assert!(matches!(decoded("plain"), Cow::Borrowed("plain")));
        assert_eq!(decoded("a%2Fb+c"), "a/b c");
    }

    #[test]
    fn values_of_one_parameter_are_decoded_and_joined() {
        assert_eq!(joined_values("a=1&token=x%20y&token=z&b", "token").as_deref(), Some("x y,z"));
        assert_eq!(joined_values("a=1", "token"), None);
        assert_eq!(pairs("a&b=2").collect::<Vec<_>>(), [("a".into(), "".into()), ("b".into(), "2".into())]);
    }
}
