//! Compiling an API's `compression` section: the minimum size (at most 10 MiB, like the
//! managed gateway's minimum compression size) and the media types, each checked with its
//! line.

use std::sync::Arc;

use super::super::model::*;
use super::Compiler;
use crate::stages::compression::CompressionPolicy;
use crate::stages::content::MediaRanges;

/// Answers shorter than this gain too little from compression to pay for it.
const DEFAULT_MINIMUM_SIZE: u64 = 1024;
const MAX_MINIMUM_SIZE: u64 = 10 * 1024 * 1024;

/// What is compressed when an API names no `content_types`: text, and the structured text
/// formats APIs answer with.
const DEFAULT_MEDIA_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/problem+json",
    "application/ld+json",
    "application/vnd.api+json",
    "application/x-ndjson",
    "application/xml",
    "application/problem+xml",
    "application/javascript",
    "application/graphql-response+json",
    "image/svg+xml",
];

impl Compiler<'_> {
    /// The API's compression policy, or `None` (with its errors recorded, if any).
    pub(super) fn compression(&mut self, api: &ApiDef, field: &str) -> Option<Arc<CompressionPolicy>> {
        let def = api.compression.as_ref()?;
        let at = def.referenced;
        let minimum_size = def.value.minimum_size.unwrap_or(DEFAULT_MINIMUM_SIZE);
        let mut ok = true;
        if minimum_size > MAX_MINIMUM_SIZE {
            self.sink.push(
                at,
                format!("{field}.compression.minimum_size"),
                format!("at most {MAX_MINIMUM_SIZE} bytes (10 MiB)"),
            );
            ok = false;
        }
        let listed: Vec<String> = match &def.value.content_types {
            Some(list) if list.is_empty() => {
                self.sink.push(at, format!("{field}.compression.content_types"), "name at least one media type");
                return None;
            }
            Some(list) => list.clone(),
            None => DEFAULT_MEDIA_TYPES.iter().map(|t| t.to_string()).collect(),
        };
        let media_types = match MediaRanges::new(&listed) {
            Ok(types) => types,
            Err(e) => {
                self.sink.push(at, format!("{field}.compression.content_types"), e);
                return None;
            }
        };
        ok.then(|| Arc::new(CompressionPolicy { minimum_size, media_types }))
    }
}
