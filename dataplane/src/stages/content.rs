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

    /// Whether `media` (lower case, without parameters) is in one of the ranges.
    pub fn contains(&self, media: &str) -> bool {
        self.0.iter().any(|t| match t.split_once("/*") {
            Some(("*", _)) => true,
            Some((kind, _)) => media.split_once('/').is_some_and(|(k, _)| k == kind),
            None => t == media,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_match_exactly_by_type_or_all() {
        let types = MediaRanges::new(&["image/*".into(), "Application/Octet-Stream".into()]).unwrap();
        assert!(types.contains("image/png") && types.contains("application/octet-stream"));
        assert!(!types.contains("application/json") && !types.contains("imagex/png"));
        assert!(MediaRanges::new(&["*/*".into()]).unwrap().contains("text/plain"));
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
