//! What a `type: websocket` API's stage is, as policy: which route a message goes to (the
//! route selection expression), the HTTP integration of each route, and the limits a
//! connection is held to. Plain data compiled with the revision; the connections that
//! enforce it are the node's (`connections/`).
//!
//! A message's route is found by the API's `route_selection`:
//!
//! - `$request.body.PATH`: a dotted path into the JSON object of each text message (the
//!   string there is the route key; a message that is not JSON, has no string there, or is
//!   binary goes to `$default`);
//! - `$request.header.NAME`: a header of the opening handshake, fixed for the connection;
//! - anything else: a constant route key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::ProxyIntegration;

/// The routes `$connect`, `$disconnect` and `$default` have these keys.
pub const CONNECT: &str = "$connect";
pub const DISCONNECT: &str = "$disconnect";
pub const DEFAULT: &str = "$default";

/// How a message's route key is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSelection {
    /// `$request.body.a.b`: the string at this path of the message's JSON object.
    Body(Vec<String>),
    /// `$request.header.NAME`: the handshake's header, for every message of the connection.
    Header(HeaderName),
    /// The same route key for every message.
    Constant(String),
}

impl RouteSelection {
    /// Parses a `route_selection` expression.
    pub fn parse(text: &str) -> Result<RouteSelection, String> {
        if let Some(path) = text.strip_prefix("$request.body.") {
            let steps: Vec<String> = path.split('.').map(str::to_string).collect();
            if steps.iter().any(|s| s.is_empty() || s.len() > 128) || steps.len() > 8 {
                return Err(format!(
                    "`{text}` must be `$request.body.` and 1-8 dotted names, e.g. `$request.body.action`"
                ));
            }
            return Ok(RouteSelection::Body(steps));
        }
        if let Some(name) = text.strip_prefix("$request.header.") {
            return HeaderName::try_from(name)
                .map(RouteSelection::Header)
                .map_err(|_| format!("`{name}` in `{text}` is not a header name"));
        }
        if text.starts_with('$') {
            return Err(format!(
                "`{text}` is not a selection expression: use `$request.body.NAME`, `$request.header.NAME` or a constant route key"
            ));
        }
        if !is_route_key(text) {
            return Err(format!(
                "constant route key `{text}` must be 1-128 characters of a-z, A-Z, 0-9, `_`, `-`, `.` and `:`"
            ));
        }
        Ok(RouteSelection::Constant(text.to_string()))
    }

    /// The route key of a text message (`None` for a binary one), given the key the
    /// handshake's header chose (for `$request.header.*`). `None`: the message goes to
    /// `$default`.
    pub fn route_key(&self, text: Option<&str>, from_handshake: Option<&str>) -> Option<String> {
        match self {
            RouteSelection::Constant(key) => Some(key.clone()),
            RouteSelection::Header(_) => from_handshake.map(str::to_string),
            RouteSelection::Body(path) => {
                let text = text?;
                // Only objects carry a route key: no parse for anything else.
                if !text.trim_start().starts_with('{') {
                    return None;
                }
                // Walked, not parsed into a tree: everything off the path is skipped.
                let mut reader = serde_json::Deserializer::from_str(text);
                let key = serde::de::DeserializeSeed::deserialize(PathSeed(path), &mut reader).ok()?;
                reader.end().ok()?;
                key
            }
        }
    }
}

/// Finds the string at a path of JSON object keys while the message is read, skipping the
/// rest without building it (a repeated key: its first occurrence counts).
struct PathSeed<'p>(&'p [String]);

impl<'de> serde::de::DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(PathVisitor(self.0))
    }
}

struct PathVisitor<'p>(&'p [String]);

impl<'de> serde::de::Visitor<'de> for PathVisitor<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_step) = map.next_key_seed(KeyIs(self.0.first().map(String::as_str)))? {
            match (is_step && found.is_none(), self.0.split_first()) {
                (true, Some((_, rest))) => found = map.next_value_seed(PathSeed(rest))?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        // A string is the key only at the end of the path.
        Ok(self.0.is_empty().then(|| text.to_string()))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Reads an object key and says whether it is `name`, without keeping it.
struct KeyIs<'n>(Option<&'n str>);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(self.0 == Some(key))
    }
}

/// Whether `key` may name a custom route: 1-128 of `[A-Za-z0-9_.:-]`.
pub fn is_route_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// One route of a WebSocket API: where its messages go.
#[derive(Debug)]
pub struct MessageRoute {
    pub key: Arc<str>,
    pub integration: ProxyIntegration,
    /// The integration's answer is sent back to the client (a two-way route).
    pub reply: bool,
}

/// What one connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The largest message, reassembled from its frames.
    pub max_message_bytes: usize,
    /// The largest frame.
    pub max_frame_bytes: usize,
    /// Messages a second from the client; more are refused with a 429 message.
    pub messages_per_second: u32,
    /// Closed after this long without a message either way.
    pub idle_timeout: Duration,
    /// Closed after this long, however busy.
    pub max_duration: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_message_bytes: 128 * 1024,
            max_frame_bytes: 32 * 1024,
            messages_per_second: 100,
            idle_timeout: Duration::from_secs(600),
            max_duration: Duration::from_secs(2 * 3600),
        }
    }
}

/// A `type: websocket` API as served on one stage.
#[derive(Debug)]
pub struct WebSocketStage {
    pub api: Arc<str>,
    pub stage: Arc<str>,
    pub selection: RouteSelection,
    /// Custom routes by key.
    pub routes: HashMap<String, MessageRoute>,
    pub connect: Option<MessageRoute>,
    pub disconnect: Option<MessageRoute>,
    pub default: Option<MessageRoute>,
    pub limits: ConnectionLimits,
}

impl WebSocketStage {
    /// The route of a message, by its key (`$default` when none matches).
    pub fn route(&self, key: Option<&str>) -> Option<&MessageRoute> {
        key.and_then(|k| self.routes.get(k)).or(self.default.as_ref())
    }

    /// Every integration of the stage.
    pub fn proxies(&self) -> impl Iterator<Item = &ProxyIntegration> {
        let special = [&self.connect, &self.disconnect, &self.default].into_iter().flatten();
        special.chain(self.routes.values()).map(|r| &r.integration)
    }
}

/// What a route of a WebSocket API's stage serves over HTTP.
#[derive(Debug, Clone)]
pub enum WebSocketEndpoint {
    /// The stage's own path: the opening handshake (`$connect`).
    Connect(Arc<WebSocketStage>),
    /// `/@connections/{id}`: backends send to, look at and close connections; a message
    /// sent is at most `max_message_bytes`.
    Callback { api: Arc<str>, stage: Arc<str>, max_message_bytes: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_expressions_parse_or_say_why_not() {
        assert_eq!(RouteSelection::parse("$request.body.action"), Ok(RouteSelection::Body(vec!["action".into()])));
        assert_eq!(
            RouteSelection::parse("$request.body.meta.kind"),
            Ok(RouteSelection::Body(vec!["meta".into(), "kind".into()]))
        );
        assert!(matches!(RouteSelection::parse("$request.header.x-room"), Ok(RouteSelection::Header(_))));
        assert_eq!(RouteSelection::parse("chat"), Ok(RouteSelection::Constant("chat".into())));
        for bad in ["$request.body.", "$request.body.a..b", "$request.header.a b", "$context.x", "a b", ""] {
            assert!(RouteSelection::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_message_s_route_key_comes_from_its_json_or_goes_to_default() {
        let body = RouteSelection::parse("$request.body.action").unwrap();
        let key = |text: Option<&str>| body.route_key(text, None);
        assert_eq!(key(Some(r#"{"action":"sendmessage","data":1}"#)).as_deref(), Some("sendmessage"));
        assert_eq!(key(Some(r#"  {"action":"x"}"#)).as_deref(), Some("x"));
        assert_eq!(key(Some(r#"{"action":7}"#)), None);
        assert_eq!(key(Some(r#"{"other":"x"}"#)), None);
        assert_eq!(key(Some("not json")), None);
        assert_eq!(key(Some(r#"["action"]"#)), None);
        // Off the path, anything is skipped; an escaped key or value reads as written.
        let busy = r#"{"a":[1,{"action":"no"}],"b":{"c":null},"act\u0069on":"s\u0065nd","z":1.5}"#;
        assert_eq!(key(Some(busy)).as_deref(), Some("send"));
        assert_eq!(key(Some(r#"{"action":"first","action":"second"}"#)).as_deref(), Some("first"));
        assert_eq!(key(Some(r#"{"action":"x"} trailing"#)), None, "not one JSON value");
        assert_eq!(key(Some(r#"{"action":"x""#)), None, "cut short");
        assert_eq!(key(Some(r#"{"action":{"deeper":"x"}}"#)), None);
        assert_eq!(key(None), None, "binary messages go to $default");
        let nested = RouteSelection::parse("$request.body.meta.kind").unwrap();
        assert_eq!(nested.route_key(Some(r#"{"meta":{"kind":"k"}}"#), None).as_deref(), Some("k"));
        assert_eq!(nested.route_key(Some(r#"{"meta":"k","kind":"x"}"#), None), None);
        assert_eq!(nested.route_key(Some(r#"{"kind":"x","meta":{"other":1,"kind":"k"}}"#), None).as_deref(), Some("k"));
        let header = RouteSelection::parse("$request.header.x-room").unwrap();
        assert_eq!(header.route_key(Some("{}"), Some("lobby")).as_deref(), Some("lobby"));
        assert_eq!(RouteSelection::Constant("c".into()).route_key(None, None).as_deref(), Some("c"));
    }
}
