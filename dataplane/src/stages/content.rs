//! Binary media types and content handling (`type: rest`): which bodies are bytes rather
//! than text, and how a body crosses between the two on its way to or from the upstream.
//!
//! An API lists its binary media types (`image/png`, `image/*`, `*/*`). A body of such a
//! type passes through as it is, never through a mapping template, unless the integration
//! (for requests) or the integration response (for answers) says `convert_to_text`: then
//! it is base64-encoded, and a template, when there is one, reads that text as
//! `$input.body`. A text body with `convert_to_binary` is base64-decoded and sent as bytes,
//! without a template. This is the managed gateway's `contentHandling`:
//!
//! | body | `content_handling` | what is sent on |
//! | --- | --- | --- |
//! | text | none or `convert_to_text` | the text, through the template if there is one |
//! | text | `convert_to_binary` | the text base64-decoded (invalid base64: 400 for a request, 502 for an answer) |
//! | binary | none or `convert_to_binary` | the bytes as they are |
//! | binary | `convert_to_text` | the bytes base64-encoded, through the template if there is one |

use base64::Engine;
use bytes::Bytes;

/// How an integration (or one of its responses) converts bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentHandling {
    ConvertToText,
    ConvertToBinary,
}

/// What happens to one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// A text body, through the templates as usual.
    Text,
    /// A binary body, passed through as it is (no template).
    Bytes,
    /// A binary body base64-encoded into text (then the templates).
    Encode,
    /// A text body base64-decoded into bytes (no template).
    Decode,
}

impl Conversion {
    /// What `handling` does to a body that is `binary` or not.
    pub fn of(binary: bool, handling: Option<ContentHandling>) -> Conversion {
        match (binary, handling) {
            (true, Some(ContentHandling::ConvertToText)) => Conversion::Encode,
            (true, _) => Conversion::Bytes,
            (false, Some(ContentHandling::ConvertToBinary)) => Conversion::Decode,
            (false, _) => Conversion::Text,
        }
    }

    /// Whether a mapping template may read the body.
    pub fn templated(self) -> bool {
        matches!(self, Conversion::Text | Conversion::Encode)
    }

    /// The body converted; `Err` when a body to decode is not base64.
    pub fn apply(self, body: &[u8]) -> Result<Bytes, String> {
        let engine = base64::engine::general_purpose::STANDARD;
        match self {
            Conversion::Text | Conversion::Bytes => Ok(Bytes::copy_from_slice(body)),
            Conversion::Encode => Ok(Bytes::from(engine.encode(body))),
            Conversion::Decode => {
                let text = std::str::from_utf8(body).map_err(|_| "the body is not base64 text".to_string())?;
                engine.decode(text.trim()).map(Bytes::from).map_err(|e| format!("the body is not valid base64: {e}"))
            }
        }
    }
}

/// A message's media type: its `Content-Type` without parameters, borrowed from the field as
/// sent. Media types ignore case, so it is compared with [`MediaType::is`], never as text;
/// it prints in lower case.
#[derive(Debug, Clone, Copy)]
pub struct MediaType<'a>(&'a str);

impl<'a> MediaType<'a> {
    /// What a request without a `Content-Type` is taken to send, where a type is needed.
    pub const JSON: MediaType<'static> = MediaType("application/json");

    /// The media type `headers` name, if their `Content-Type` names one.
    pub fn of(headers: &'a http::HeaderMap) -> Option<Self> {
        let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = match value.bytes().position(|b| b == b';') {
            Some(end) => &value[..end],
            None => value,
        };
        let essence = essence.trim();
        (!essence.is_empty()).then_some(MediaType(essence))
    }

    /// Whether this is `name` (lower case, without parameters).
    pub fn is(self, name: &str) -> bool {
        self.0.eq_ignore_ascii_case(name)
    }

    /// Whether the subtype ends with `suffix` (lower case), such as `+json`.
    pub fn has_suffix(self, suffix: &str) -> bool {
        self.0.len() >= suffix.len()
            && self.0.as_bytes()[self.0.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    }

    /// The part before the `/` (`image` in `image/png`).
    fn kind(self) -> &'a str {
        self.0.split_once('/').map_or(self.0, |(kind, _)| kind)
    }
}

impl std::fmt::Display for MediaType<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        self.0.chars().try_for_each(|c| f.write_char(c.to_ascii_lowercase()))
    }
}

/// A list of media ranges, `type/subtype`, `type/*` or `*/*`, lower case: an API's binary
/// media types, the types its compression applies to.
#[derive(Debug, Clone, Default)]
pub struct MediaRanges(Vec<String>);

impl MediaRanges {
    /// The list, each checked: `Err` names the first that is not a media type (pattern).
    pub fn new(types: &[String]) -> Result<Self, String> {
        let mut list = Vec::new();
        for t in types {
            let lower = t.trim().to_ascii_lowercase();
            let valid = lower.split_once('/').is_some_and(|(kind, sub)| {
                let token = |s: &str| {
                    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                (kind == "*" && sub == "*") || (token(kind) && (sub == "*" || token(sub)))
            });
            if !valid {
                return Err(format!("`{t}` is not a media type (`image/png`, `image/*` or `*/*`)"));
            }
            list.push(lower);
        }
        Ok(MediaRanges(list))
    }

    /// Whether `media` is in one of the ranges.
    pub fn contains(&self, media: MediaType<'_>) -> bool {
        self.0.iter().any(|t| match t.split_once("/*") {
            Some(("*", _)) => true,
            Some((kind, _)) => media.kind().eq_ignore_ascii_case(kind),
            None => media.is(t),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The media type of a message sending `content_type`.
    fn media(content_type: &'static str) -> MediaType<'static> {
        let headers = Box::leak(Box::new(http::HeaderMap::new()));
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        MediaType::of(headers).unwrap()
    }

    #[test]
    fn a_media_type_is_the_field_without_parameters_in_any_case() {
        let json = media(" Application/JSON ; charset=utf-8");
        assert!(json.is("application/json") && !json.is("application/jsonx"));
        assert_eq!(json.to_string(), "application/json");
        assert!(media("application/Problem+JSON").has_suffix("+json"));
        assert!(!media("application/json").has_suffix("+json") && !media("x").has_suffix("+json"));
        let mut headers = http::HeaderMap::new();
        assert!(MediaType::of(&headers).is_none());
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(" ; charset=utf-8"));
        assert!(MediaType::of(&headers).is_none(), "parameters without a type name none");
    }

    #[test]
    fn media_types_match_exactly_by_type_or_all() {
        let types = MediaRanges::new(&["image/*".into(), "Application/Octet-Stream".into()]).unwrap();
        assert!(types.contains(media("image/png")) && types.contains(media("Application/octet-stream")));
        assert!(types.contains(media("IMAGE/png")));
        assert!(!types.contains(media("application/json")) && !types.contains(media("imagex/png")));
        assert!(MediaRanges::new(&["*/*".into()]).unwrap().contains(media("text/plain")));
        for bad in ["png", "image/", "*/png", "a b/c"] {
            assert!(MediaRanges::new(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_convert_as_the_table_says() {
        use ContentHandling::*;
        assert_eq!(Conversion::of(false, None), Conversion::Text);
        assert_eq!(Conversion::of(false, Some(ConvertToText)), Conversion::Text);
        assert_eq!(Conversion::of(false, Some(ConvertToBinary)), Conversion::Decode);
        assert_eq!(Conversion::of(true, None), Conversion::Bytes);
        assert_eq!(Conversion::of(true, Some(ConvertToBinary)), Conversion::Bytes);
        assert_eq!(Conversion::of(true, Some(ConvertToText)), Conversion::Encode);
        let bytes = [0u8, 159, 146, 150, 255];
        let text = Conversion::Encode.apply(&bytes).unwrap();
        assert_eq!(text.as_ref(), b"AJ+Slv8=");
        assert_eq!(Conversion::Decode.apply(b" AJ+Slv8=\n").unwrap().as_ref(), bytes);
        assert!(Conversion::Decode.apply(b"not base64!").is_err());
        assert!(!Conversion::Bytes.templated() && !Conversion::Decode.templated());
    }
}
