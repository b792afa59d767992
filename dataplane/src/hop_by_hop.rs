//! Hop-by-hop headers: what describes one connection rather than the message, so a proxy
//! never forwards it and configuration never sets it (RFC 9110, section 7.6.1).

use http::HeaderName;
use http::header::{CONNECTION, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers a proxy removes, besides those `Connection` names (`Upgrade`,
/// last, is kept for a WebSocket handshake).
pub const HOP_BY_HOP: [&HeaderName; 8] =
    [&CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &TE, &TRAILER, &TRANSFER_ENCODING, &PROXY_AUTHORIZATION, &UPGRADE];

/// Whether `name` is a hop-by-hop header, `Upgrade` included.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// [`HOP_BY_HOP`] as the bytes of their names, for names read from a head.
const HOP_BY_HOP_NAMES: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"proxy-authorization",
    b"upgrade",
];

/// Whether `name`, as read from a head in any case, is a hop-by-hop header, `Upgrade`
/// included.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    HOP_BY_HOP_NAMES.iter().any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_read_from_heads_are_the_hop_by_hop_headers() {
        for (name, bytes) in HOP_BY_HOP.iter().zip(HOP_BY_HOP_NAMES) {
            assert_eq!(name.as_str().as_bytes(), bytes);
            assert!(is_hop_by_hop_name(&bytes.to_ascii_uppercase()));
        }
        assert!(!is_hop_by_hop_name(b"content-length"));
    }
}
