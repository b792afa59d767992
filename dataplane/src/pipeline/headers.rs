//! Header hygiene between client and upstream: hop-by-hop removal and forwarding headers.

use std::net::IpAddr;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{CONNECTION, Entry, FORWARDED, HOST, TE, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};

use smallvec::SmallVec;

use crate::hop_by_hop::HOP_BY_HOP;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the request asks to switch to WebSocket.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers.get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade && crate::framing::lists(headers, &CONNECTION, "upgrade")
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive for a WebSocket handshake.
/// `TE: trailers` survives too: it is the one `TE` HTTP/2 allows, and gRPC servers refuse a
/// call without it.
///
/// Most messages carry no hop-by-hop field, or only `Connection: keep-alive`: one scan of
/// the names finds those present, and only they are removed (a removal hashes and probes),
/// with no allocation for the names `Connection` lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Which of `HOP_BY_HOP` are present, one bit each.
    let present = headers
        .keys()
        .fold(0u8, |present, name| HOP_BY_HOP.iter().position(|h| *h == name).map_or(present, |i| present | 1 << i));
    if present == 0 && !keep_upgrade {
        return;
    }
    // What `Connection` lists, copied out so that the fields it names can be removed.
    let mut listed: SmallVec<[u8; 64]> = SmallVec::new();
    for value in headers.get_all(CONNECTION) {
        listed.extend_from_slice(value.as_bytes());
        listed.push(b',');
    }
    for token in crate::framing::list_items(&listed) {
        // The hop-by-hop fields themselves (`keep-alive` above all) go below, by what the
        // scan found, without a look-up each.
        if crate::hop_by_hop::is_hop_by_hop_name(token) {
            continue;
        }
        // A token that is no field name names nothing to remove.
        if let Ok(name) = std::str::from_utf8(token) {
            headers.remove(name);
        }
    }
    let te = HOP_BY_HOP.iter().position(|h| **h == TE).map_or(0, |i| 1 << i);
    let trailers = present & te != 0 && headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 && !(keep_upgrade && **name == UPGRADE) {
            headers.remove(*name);
        }
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The forwarding facts of one client connection, formatted once per connection.
#[derive(Debug, Clone)]
pub struct ClientForwarding {
    /// The client address as `X-Forwarded-For` wants it.
    address: HeaderValue,
    /// `for=...;proto=...`, the start of the `Forwarded` element.
    forwarded: String,
    tls: bool,
    /// The host the connection's first request with one addressed, and its whole `Forwarded`
    /// element: the requests of a connection nearly always address one host.
    first_host: OnceLock<(HeaderValue, HeaderValue)>,
}

impl ClientForwarding {
    pub fn new(client: IpAddr, tls: bool) -> Self {
        let text = client.to_string();
        let proto = if tls { "https" } else { "http" };
        let forwarded = if client.is_ipv6() {
            format!("for=\"[{text}]\";proto={proto}")
        } else {
            format!("for={text};proto={proto}")
        };
        let address = HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientForwarding { address, forwarded, tls, first_host: OnceLock::new() }
    }

    /// Prepares a client's headers for the upstream, `host` being the one it addressed (see
    /// [`take_client_host`]): the host goes into `X-Forwarded-Host`, and the client is
    /// appended to `X-Forwarded-For` and `Forwarded` (RFC 7239).
    pub fn apply(&self, headers: &mut HeaderMap, host: Option<&HeaderValue>) {
        match headers.entry(&X_FORWARDED_FOR) {
            Entry::Occupied(mut earlier) => {
                let prev = earlier.get();
                let mut joined = BytesMut::with_capacity(prev.len() + 2 + self.address.len());
                joined.extend_from_slice(prev.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(self.address.as_bytes());
                if let Ok(v) = HeaderValue::from_maybe_shared(joined.freeze()) {
                    earlier.insert(v);
                }
            }
            Entry::Vacant(none) => {
                none.insert(self.address.clone());
            }
        }
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(if self.tls { "https" } else { "http" }));
        let (host, element) = match (host, self.first_host.get()) {
            (Some(h), Some((first, element))) if h == first => (Some(h), Some(element.clone())),
            // A host that would need quoting in `Forwarded` is not forwarded.
            (Some(h), _) if h.as_bytes().iter().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b';' | b',')) => {
                let element = self.element(Some(h));
                if let Some(element) = &element {
                    let _ = self.first_host.set((h.clone(), element.clone()));
                }
                (Some(h), element)
            }
            _ => (None, self.element(None)),
        };
        if let Some(h) = host {
            headers.insert(&X_FORWARDED_HOST, h.clone());
        }
        if let Some(element) = element {
            headers.append(FORWARDED, element);
        }
    }

    /// The `Forwarded` element for a request addressing `host`.
    fn element(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let mut forwarded = BytesMut::with_capacity(self.forwarded.len() + 6 + host.map_or(0, |h| h.len()));
        forwarded.extend_from_slice(self.forwarded.as_bytes());
        if let Some(h) = host {
            forwarded.extend_from_slice(b";host=");
            forwarded.extend_from_slice(h.as_bytes());
        }
        HeaderValue::from_maybe_shared(forwarded.freeze()).ok()
    }
}

/// Takes the host the client addressed out of a request, whose upstream gets a `Host` of
/// its own: the target's authority (HTTP/2's `:authority`, an absolute-form target) when it
/// has one, else `Host`.
pub fn take_client_host(parts: &mut Parts) -> Option<HeaderValue> {
    let host = parts.headers.remove(HOST);
    match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_names_are_matched_whatever_their_case_and_junk_names_nothing() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("X-Secret , , not a name"));
        h.append(CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn hop_by_hop_names_listed_in_connection_go_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive, TE, X-Hop"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-kept"]);
        assert_eq!(h[TE], "trailers");
    }

    #[test]
    fn te_trailers_survives_and_any_other_te_goes() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get(TE).unwrap(), "trailers");
        h.insert(TE, HeaderValue::from_static("gzip, trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(TE).is_none());
    }

    #[test]
    fn websocket_handshake_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    #[test]
    fn an_upgrade_is_read_from_connection_as_its_removal_reads_it() {
        // A byte beyond ASCII elsewhere in `Connection` (opaque, but allowed) does not hide the
        // `upgrade` token: the handshake is seen, as `strip_hop_by_hop` sees the token.
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b"x-caf\xc3\xa9, Upgrade").unwrap());
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, upgraded"));
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        let host = HeaderValue::from_static("api.example.com");
        ClientForwarding::new("::1".parse().unwrap(), true).apply(&mut h, Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, ::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[FORWARDED], "for=\"[::1]\";proto=https;host=api.example.com");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");
    }

    #[test]
    fn each_request_of_a_connection_gets_the_host_it_addressed() {
        let forwarding = ClientForwarding::new("192.0.2.7".parse().unwrap(), false);
        let forwarded = |host: Option<&'static str>| {
            let mut h = HeaderMap::new();
            forwarding.apply(&mut h, host.map(HeaderValue::from_static).as_ref());
            let text = |name| h.get(name).map(|v: &HeaderValue| v.to_str().unwrap().to_string());
            (text(&FORWARDED), text(&X_FORWARDED_HOST))
        };
        let first = (Some("for=192.0.2.7;proto=http;host=a.test".to_string()), Some("a.test".to_string()));
        assert_eq!(forwarded(Some("a.test")), first);
        assert_eq!(forwarded(Some("a.test")), first, "the first host's element, again");
        let other = (Some("for=192.0.2.7;proto=http;host=b.test".to_string()), Some("b.test".to_string()));
        assert_eq!(forwarded(Some("b.test")), other);
        assert_eq!(forwarded(None), (Some("for=192.0.2.7;proto=http".to_string()), None));
        assert_eq!(
            forwarded(Some("a;b")),
            (Some("for=192.0.2.7;proto=http".to_string()), None),
            "not quoted, not sent"
        );
        assert_eq!(forwarded(Some("a.test")), first);
    }

    #[test]
    fn the_client_host_is_taken_out_and_the_authority_wins() {
        let request = |uri: &str| {
            let (mut parts, ()) = http::Request::get(uri).header(HOST, "h.test").body(()).unwrap().into_parts();
            let host = take_client_host(&mut parts);
            (host, parts.headers.contains_key(HOST))
        };
        assert_eq!(request("/x"), (Some(HeaderValue::from_static("h.test")), false));
        assert_eq!(request("http://a.test:8080/x"), (Some(HeaderValue::from_static("a.test:8080")), false));
    }
}
