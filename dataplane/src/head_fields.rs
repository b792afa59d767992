//! The header fields of an HTTP/1 head, from the parser's view of the bytes read to a
//! [`HeaderMap`] whose values share the head's bytes.
//!
//! `httparse` hands out fields that borrow the read buffer, and the buffer must be split
//! (the head taken out of it, frozen) before the values can share it. In between, where each
//! name and value sits is kept here, in the reader's own frame: a head's worth of positions
//! is half a KiB, too much to pass up through results by value on every request. The
//! server's request heads and the upstream client's response heads both go this way.

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use smallvec::SmallVec;

/// Where each field of a parsed head sits: name start, name end, value start, value end,
/// as offsets into the head (heads are far below 4 GiB: the limits stop at 1 MiB); and
/// which of the framing's fields are among them.
#[derive(Default)]
pub struct FieldSpans {
    spans: SmallVec<[[u32; 4]; 32]>,
    framing: FramingFields,
}

/// Which of the fields that delimit a message's body and say whether its connection
/// persists a head has, noted while its fields are recorded: the framing looks up only
/// those present, and most heads have one or none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FramingFields {
    pub content_length: bool,
    pub transfer_encoding: bool,
    pub connection: bool,
}

/// A field the head's parser let through that `http` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidField {
    Name,
    Value,
}

impl InvalidField {
    /// What was wrong, as the readers report it.
    pub fn what(self) -> &'static str {
        match self {
            InvalidField::Name => "a header field name is invalid",
            InvalidField::Value => "a header field value is invalid",
        }
    }
}

impl FieldSpans {
    /// Records where `fields`, parsed from `head` (the bytes read, from the head's first
    /// byte), sit in it.
    pub fn record(&mut self, head: &[u8], fields: &[httparse::Header<'_>]) {
        let start = head.as_ptr() as usize;
        // Every field borrows `head`, so each offset is within it (and below 4 GiB).
        let offset = |s: &[u8]| (s.as_ptr() as usize - start) as u32;
        self.spans.clear();
        self.spans.reserve(fields.len());
        let mut framing = FramingFields::default();
        for field in fields {
            let (name, value) = (field.name.as_bytes(), field.value);
            framing.connection |= is_named(name, b"connection");
            framing.content_length |= is_named(name, b"content-length");
            framing.transfer_encoding |= is_named(name, b"transfer-encoding");
            let (name_at, value_at) = (offset(name), offset(value));
            self.spans.push([name_at, name_at + name.len() as u32, value_at, value_at + value.len() as u32]);
        }
        self.framing = framing;
    }

    /// Which of the framing's fields the recorded fields include.
    pub fn framing(&self) -> FramingFields {
        self.framing
    }

    /// The values of the recorded fields named `lower` (in lower case, matched in any case),
    /// in order, as slices of `head`.
    pub fn values<'h>(&'h self, head: &'h [u8], lower: &'h [u8]) -> impl Iterator<Item = &'h [u8]> + 'h {
        self.spans
            .iter()
            .filter(move |[name_start, name_end, ..]| is_named(&head[*name_start as usize..*name_end as usize], lower))
            .map(move |[.., value_start, value_end]| &head[*value_start as usize..*value_end as usize])
    }

    /// The fields as a map (with `room` for more), their values slices of `head`: the head
    /// the fields were recorded from, taken out of the read buffer and frozen. The fields
    /// whose names `leave_out` says yes to are not in it.
    pub fn header_map(
        &self,
        head: &Bytes,
        room: usize,
        leave_out: impl Fn(&[u8]) -> bool,
    ) -> Result<HeaderMap, InvalidField> {
        let mut headers = HeaderMap::with_capacity(self.spans.len() + room);
        for &[name_start, name_end, value_start, value_end] in &self.spans {
            let name = &head[name_start as usize..name_end as usize];
            if leave_out(name) {
                continue;
            }
            let name = match common_name(name) {
                Some(known) => known.clone(),
                None => HeaderName::from_bytes(name).map_err(|_| InvalidField::Name)?,
            };
            let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .map_err(|_| InvalidField::Value)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// The fields most heads carry, in requests and in answers. `http`'s own parser lower-cases
/// a name into a scratch buffer and then matches it against every name it knows (a large
/// `match`, of which each name runs a different part), and copies any name it does not know
/// into an allocation of its own; these are recognised by their length and first letter and
/// one comparison, and shared.
static COMMON_NAMES: [HeaderName; 24] = [
    HeaderName::from_static("host"),
    HeaderName::from_static("date"),
    HeaderName::from_static("vary"),
    HeaderName::from_static("etag"),
    HeaderName::from_static("accept"),
    HeaderName::from_static("cookie"),
    HeaderName::from_static("origin"),
    HeaderName::from_static("server"),
    HeaderName::from_static("referer"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("user-agent"),
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("set-cookie"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("content-type"),
    HeaderName::from_static("authorization"),
    HeaderName::from_static("last-modified"),
    HeaderName::from_static("cache-control"),
    HeaderName::from_static("content-length"),
    HeaderName::from_static("accept-encoding"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("transfer-encoding"),
];

/// `name` (a token the parser let through) as one of [`COMMON_NAMES`], whatever its case,
/// if it is one.
fn common_name(name: &[u8]) -> Option<&'static HeaderName> {
    let first = *name.first()? | 0x20;
    let at = match (name.len(), first) {
        (4, b'h') => 0,
        (4, b'd') => 1,
        (4, b'v') => 2,
        (4, b'e') => 3,
        (6, b'a') => 4,
        (6, b'c') => 5,
        (6, b'o') => 6,
        (6, b's') => 7,
        (7, b'r') => 8,
        (9, b'x') => 9,
        (10, b'u') => 10,
        (10, b'c') => 11,
        (10, b'k') => 12,
        (10, b's') => 13,
        (11, b't') => 14,
        (12, b'x') => 15,
        (12, b'c') => 16,
        (13, b'a') => 17,
        (13, b'l') => 18,
        (13, b'c') => 19,
        (14, b'c') => 20,
        (15, b'a') => 21,
        (15, b'x') => 22,
        (17, b't') => 23,
        _ => return None,
    };
    let known = &COMMON_NAMES[at];
    is_named(name, known.as_str().as_bytes()).then_some(known)
}

/// Whether `name`, a token the parser let through, is `lower` in any case. Setting the
/// 0x20 bit folds a letter to lower case and leaves `-` and digits as they are; the only
/// other byte it would fold onto a letter, `-` or digit is not a token character. Most
/// names differ in length and are told apart without a look at their bytes.
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).fold(0, |differ, (a, b)| differ | ((a | 0x20) ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_share_the_frozen_head_and_repeated_fields_stay_in_order() {
        let wire = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: x\r\naccept: y\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut fields);
        let Ok(httparse::Status::Complete(length)) = request.parse(wire) else { panic!("a whole head") };
        let mut spans = FieldSpans::default();
        spans.record(wire, request.headers);
        assert_eq!(spans.spans.len(), 3);
        let head = Bytes::copy_from_slice(&wire[..length]);
        assert_eq!(spans.framing(), FramingFields::default(), "no field of the framing's");
        let headers = spans.header_map(&head, 4, |_| false).expect("valid fields");
        assert_eq!(headers["host"], "a");
        let accepted: Vec<_> = headers.get_all("accept").iter().collect();
        assert_eq!(accepted, ["x", "y"]);
        let value = headers["host"].as_bytes().as_ptr() as usize;
        let within = head.as_ptr() as usize..head.as_ptr() as usize + head.len();
        assert!(within.contains(&value), "the value is a slice of the head, not a copy");
        assert!(headers.capacity() >= 7);
    }

    #[test]
    fn the_framing_fields_present_are_noted_whatever_their_case() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nCONNECTION: close\r\nServer: x\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(_)) = response.parse(wire) else { panic!("a whole head") };
        let mut spans = FieldSpans::default();
        spans.record(wire, response.headers);
        assert_eq!(spans.framing(), FramingFields { content_length: true, transfer_encoding: false, connection: true });
        spans.record(wire, &response.headers[2..]);
        assert_eq!(spans.framing(), FramingFields::default(), "recorded afresh");
    }

    #[test]
    fn names_are_told_in_any_case_and_only_token_bytes_fold() {
        assert!(is_named(b"Content-Length", b"content-length"));
        assert!(is_named(b"CONNECTION", b"connection"));
        assert!(!is_named(b"connectioN2", b"connection"));
        assert!(!is_named(b"content_length", b"content-length"));
        // Every byte that folds onto one of `lower`'s is that byte in either case, or
        // one the token grammar (RFC 9110, 5.6.2) refuses.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        for wanted in b"connectiotransfer-encodingcontent-length0123456789".iter().copied() {
            for b in 0..=255u8 {
                if b | 0x20 == wanted && b != wanted && b != wanted.to_ascii_uppercase() {
                    assert!(!token(b), "{b:#x} folds onto {:?}", wanted as char);
                }
            }
        }
    }

    /// The bytes a field name may hold (RFC 9110, 5.6.2).
    const TOKEN: &[u8] = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

    #[test]
    fn each_common_name_is_found_by_its_own_length_and_letter() {
        for known in &COMMON_NAMES {
            let name = known.as_str();
            assert_eq!(common_name(name.as_bytes()), Some(known));
            assert_eq!(common_name(name.to_ascii_uppercase().as_bytes()), Some(known));
            assert_eq!(HeaderName::from_bytes(name.as_bytes()).ok().as_ref(), Some(known), "lower case already");
        }
        assert_eq!(common_name(b"hose"), None);
        assert_eq!(common_name(b""), None);
    }

    /// A common name with each letter in either case, or any token.
    fn field_name() -> impl Strategy<Value = Vec<u8>> {
        let common = proptest::sample::select(COMMON_NAMES.to_vec()).prop_flat_map(|known| {
            let length = known.as_str().len();
            proptest::collection::vec(any::<bool>(), length).prop_map(move |upper| {
                let bytes = known.as_str().bytes().zip(upper);
                bytes.map(|(b, up)| if up { b.to_ascii_uppercase() } else { b }).collect()
            })
        });
        prop_oneof![common, proptest::collection::vec(proptest::sample::select(TOKEN), 1..20)]
    }

    proptest! {
        /// Whatever token the head's parser lets through, in whatever case, a name comes out
        /// as `http`'s parser makes it.
        #[test]
        fn names_are_what_http_makes_of_them(name in field_name()) {
            let ours = match common_name(&name) {
                Some(known) => Ok(known.clone()),
                None => HeaderName::from_bytes(&name).map_err(|_| ()),
            };
            prop_assert_eq!(ours, HeaderName::from_bytes(&name).map_err(|_| ()));
        }
    }

    #[test]
    fn a_name_http_refuses_is_reported() {
        // httparse lets through names that `http` does not take as they are; none today, so
        // the check is made on a span that points at a byte no name may hold.
        let head = Bytes::from_static(b"x\x7fy: 1");
        let mut spans = FieldSpans::default();
        spans.spans.push([0, 3, 5, 6]);
        assert_eq!(spans.header_map(&head, 0, |_| false).err(), Some(InvalidField::Name));
    }
}
