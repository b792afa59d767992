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
/// as offsets into the head (heads are far below 4 GiB: the limits stop at 1 MiB).
#[derive(Default)]
pub struct FieldSpans(SmallVec<[[u32; 4]; 32]>);

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
        self.0.clear();
        self.0.extend(fields.iter().map(|field| {
            let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
            [name, name + field.name.len() as u32, value, value + field.value.len() as u32]
        }));
    }

    /// The fields as a map (with `room` for more), their values slices of `head`: the head
    /// the fields were recorded from, taken out of the read buffer and frozen.
    pub fn header_map(&self, head: &Bytes, room: usize) -> Result<HeaderMap, InvalidField> {
        let mut headers = HeaderMap::with_capacity(self.0.len() + room);
        for &[name_start, name_end, value_start, value_end] in &self.0 {
            let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
                .map_err(|_| InvalidField::Name)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .map_err(|_| InvalidField::Value)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
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
        assert_eq!(spans.0.len(), 3);
        let head = Bytes::copy_from_slice(&wire[..length]);
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
    fn a_name_http_refuses_is_reported() {
        // httparse lets through names that `http` does not take as they are; none today, so
        // the check is made on a span that points at a byte no name may hold.
        let head = Bytes::from_static(b"x\x7fy: 1");
        let mut spans = FieldSpans::default();
        spans.0.push([0, 3, 5, 6]);
        assert_eq!(spans.header_map(&head, 0).err(), Some(InvalidField::Name));
    }
}
