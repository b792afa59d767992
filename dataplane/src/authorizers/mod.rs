//! What authorizer stages enforce their policies with, kept by the node across reloads and
//! configuration revisions: the JWKS key sets it fetches and the custom authorizers'
//! decision caches.
//!
//! The stages themselves (`stages/jwt.rs`, `stages/custom_authorizer.rs`)
//! hold only their compiled policy. On its first request a stage binds to the state here,
//! found by what identifies it (a JWKS URL, an authorizer's name and settings), so a reload
//! that leaves an authorizer alone keeps its keys and its warm cache.

pub mod decisions;
pub mod key_set;

use std::sync::Arc;

use crate::integration::upstreams::Upstreams;

/// The node's authorizer state.
#[derive(Debug)]
pub struct Authorizers {
    pub upstreams: Arc<Upstreams>,
    pub key_sets: key_set::KeySets,
    pub decisions: decisions::DecisionCaches,
}

impl Authorizers {
    pub fn new(upstreams: Arc<Upstreams>) -> Authorizers {
        Authorizers {
            key_sets: key_set::KeySets::new(upstreams.clone()),
            decisions: decisions::DecisionCaches::default(),
            upstreams,
        }
    }
}

/// Who an authorizer let in, for the stages after it (mapping templates read
/// `$context.authorizer.*`): the JWT's claims, or a custom authorizer's context.
#[derive(Debug, Clone)]
pub struct AuthorizerContext {
    /// The authorizer's name in the API definition.
    pub authorizer: Arc<str>,
    pub values: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl AuthorizerContext {
    /// Lets a request in on `values`: each `(key, header)` of `headers` replaces whatever the
    /// client sent under that header with the value's (or removes it when there is none).
    /// The context returned is for the exchange to keep, for later stages.
    pub fn admit(
        authorizer: &Arc<str>,
        values: Arc<serde_json::Map<String, serde_json::Value>>,
        headers: &[(String, http::HeaderName)],
        head: &mut http::request::Parts,
    ) -> AuthorizerContext {
        for (key, header) in headers {
            head.headers.remove(header);
            if let Some(value) = values.get(key).and_then(header_value) {
                head.headers.insert(header.clone(), value);
            }
        }
        AuthorizerContext { authorizer: authorizer.clone(), values }
    }
}

/// The scopes a token's claims (or an authorizer's context) grant: `scope`
/// (space-separated, RFC 8693) or `scp` (a string or a list, as some providers send it).
pub fn granted_scopes(values: &serde_json::Map<String, serde_json::Value>) -> Vec<&str> {
    let mut scopes = Vec::new();
    for name in ["scope", "scp"] {
        match values.get(name) {
            Some(serde_json::Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(serde_json::Value::Array(list)) => scopes.extend(list.iter().filter_map(|v| v.as_str())),
            _ => {}
        }
    }
    scopes
}

/// A claim or context value as a header value: strings as they are, numbers and booleans
/// in JSON, lists of strings joined by commas, anything else as compact JSON; bytes a
/// header cannot carry (controls, non-ASCII) are percent-encoded, and the value is cut at
/// 4 KiB. `None` for JSON null.
pub fn header_value(value: &serde_json::Value) -> Option<http::HeaderValue> {
    use serde_json::Value;
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if out.len() >= 4096 {
            break;
        }
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    http::HeaderValue::from_str(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_values_cannot_smuggle_lines_or_bytes() {
        assert_eq!(header_value(&json!("alice")).unwrap(), "alice");
        assert_eq!(header_value(&json!("a\r\nx-admin: 1")).unwrap(), "a%0D%0Ax-admin: 1");
        assert_eq!(header_value(&json!("zoë")).unwrap(), "zo%C3%AB");
        assert_eq!(header_value(&json!(["a", "b"])).unwrap(), "a,b");
        assert_eq!(header_value(&json!(42)).unwrap(), "42");
        assert_eq!(header_value(&json!({"k": 1})).unwrap(), "{\"k\":1}");
        assert!(header_value(&json!(null)).is_none());
        assert!(header_value(&json!("x".repeat(10_000))).unwrap().len() <= 4096);
    }
}
