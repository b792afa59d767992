//! Mapping templates: the Velocity-style template language a managed gateway's REST APIs use
//! to reshape requests and responses, so that templates exported from one work here
//! unchanged for the common cases.
//!
//! A template is parsed once per configuration revision ([`Template::parse`]); anything it
//! uses that is not supported (a directive such as `#macro`, an unknown `$util` function, a
//! JSONPath that does not parse) is an error with its line then, never a surprise later.
//! Rendering ([`Template::render`]) is bounded in output size, loop iterations and work, and
//! a failure is an error value, never a panic.
//!
//! What is supported:
//!
//! - references `$x`, `${x}`, `$!x` (quiet), with fields `$a.b`, indexes `$a[0]`, `$a['k']`
//!   and method calls `$a.get('k')`;
//! - `#set($x = ...)`, `#if / #elseif / #else / #end`, `#foreach($x in ...) ... #end` with
//!   `$foreach.hasNext`, `$foreach.index` and `$foreach.count`, `##` and `#* *#` comments;
//! - expressions: strings (`'literal'`, `"interpolated $x"`), numbers, `true`/`false`/`null`,
//!   lists `[1, 2]`, ranges `[1..3]`, maps `{"k": v}`, `== != < > <= >=` (and `eq ne lt gt
//!   le ge`), `&& || !` (and `and or not`), `+ - * / %`;
//! - `$input.body`, `$input.json('$.path')`, `$input.path('$.path')`,
//!   `$input.params('name')`, `$input.params()` (`path`, `querystring`, `header`);
//!   `$context.*` and `$stageVariables.*` as the caller provides them;
//! - `$util.escapeJavaScript`, `urlEncode`, `urlDecode`, `base64Encode`, `base64Decode`,
//!   `parseJson`, `toJson`, and `jsonToXml(value, 'root')` / `xmlToJson(text)` ([`xml`]: a
//!   value or a JSON text to an XML document, and an XML text to a value);
//! - on values: `size length isEmpty get containsKey keySet values contains startsWith
//!   endsWith toLowerCase toUpperCase trim replace substring indexOf split toString`.
//!
//! A reference that was never set renders as written (`$nothing`), as in Velocity; `$!x`
//! renders nothing instead; a null value renders as an empty string. The body is read as a
//! [`JsonDocument`](crate::json_document::JsonDocument): its objects keep their members in the
//! order the client wrote them. Maps and lists render
//! as Java does (`{a=1, b=2}`, `[1, 2]`): use `$input.json(...)` or `$util.toJson(...)` for
//! JSON.

mod eval;
mod parse;
pub mod xml;

use std::sync::Arc;
use std::time::Duration;

pub use eval::{BodyJson, Inputs, RenderError};
pub use parse::{ContextReads, Reads, Template, TemplateError};

/// The template for a client that sent `accept`: the first media type it lists that has a
/// template, else `application/json`, else the first template. Templates are by media type
/// (lower case, without parameters).
pub fn for_accept<'t>(
    templates: &'t [(String, Arc<Template>)],
    accept: Option<&str>,
) -> Option<&'t (String, Arc<Template>)> {
    let listed = accept.into_iter().flat_map(|a| a.split(',')).find_map(|m| {
        let media = m.split_once(';').map_or(m, |(media, _)| media).trim();
        templates.iter().find(|(t, _)| t.eq_ignore_ascii_case(media))
    });
    listed.or_else(|| templates.iter().find(|(t, _)| t == "application/json")).or_else(|| templates.first())
}

/// How much one rendering may do.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes of output.
    pub max_output: usize,
    /// `#foreach` iterations, over the whole rendering.
    pub max_iterations: u64,
    /// Bytes of values made while rendering (a `#set` value, a list, a call's result),
    /// over the whole rendering: each is kept until it ends.
    pub max_held: usize,
    /// Wall time.
    pub max_time: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { max_output: 1 << 20, max_iterations: 10_000, max_held: 16 << 20, max_time: Duration::from_millis(100) }
    }
}

#[cfg(test)]
mod tests;
