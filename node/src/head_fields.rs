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

    /// The fields as a map (with `room` for more), their values slices of `head`: the head
    /// the fields were recorded from, taken out of the read buffer and frozen.
    pub fn header_map(&self, head: &Bytes, room: usize) -> Result<HeaderMap, InvalidField> {
        let mut headers = HeaderMap::with_capacity(self.spans.len() + room);
        for &[name_start, name_end, value_start, value_end] in &self.spans {
            let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
                .map_err(|_| InvalidField::Name)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .map_err(|_| InvalidField::Value)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
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
        let headers = spans.header_map(&head, 4).expect("valid fields");
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

    #[test]
    fn a_name_http_refuses_is_reported() {
        // httparse lets through names that `http` does not take as they are; none today, so
        // the check is made on a span that points at a byte no name may hold.
        let head = Bytes::from_static(b"x\x7fy: 1");
        let mut spans = FieldSpans::default();
        spans.spans.push([0, 3, 5, 6]);
        assert_eq!(spans.header_map(&head, 0).err(), Some(InvalidField::Name));
    }
}
