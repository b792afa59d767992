//! Zones: what an operator writes (`ZoneSpec`, a YAML document) and what the responder
//! answers from (`Zone`, names parsed, records built, every error found up front).
//!
//! A zone has *routed* names, answered with the gateway addresses of the region chosen for
//! the asking client, and *static* records (A, AAAA, CNAME, TXT, MX). SOA and NS records are
//! made by the responder from the cluster (one NS name per node, `ns<id>.<zone>`).
//!
//! ```
//! use meridian_dns::zone::ZoneSpec;
//! let spec = ZoneSpec {
//!     zone: "example.com".into(),
//!     routed: vec!["api".into()],
//!     records: vec![],
//!     ttl: 5,
//!     negative_ttl: 30,
//! };
//! let zone = spec.compile().unwrap();
//! assert!(zone.is_routed(&"API.example.com.".parse().unwrap()));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};

/// Longest TTL accepted (a week).
pub const MAX_TTL: u32 = 7 * 24 * 3600;

/// A zone as the operator writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    /// The zone's apex, e.g. `example.com`.
    pub zone: String,
    /// Names answered with the chosen region's gateways: relative (`api`), `@` for the
    /// apex, or absolute inside the zone (`api.example.com.`).
    #[serde(default)]
    pub routed: Vec<String>,
    /// Static records.
    #[serde(default)]
    pub records: Vec<RecordSpec>,
    /// TTL of routed answers, seconds. Short, so clients follow failovers.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// TTL of negative answers (the SOA minimum), seconds.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u32,
}

fn default_ttl() -> u32 {
    5
}

fn default_negative_ttl() -> u32 {
    30
}

/// A static record: `{ name: www, type: CNAME, value: api.example.com. }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RecordKind,
    /// A/AAAA: an address; CNAME: a name; TXT: the text; MX: `preference exchange`.
    pub value: String,
    /// Seconds; 300 when not given.
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// The static record types a zone may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    A,
    AAAA,
    CNAME,
    TXT,
    MX,
}

/// A compiled zone.
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: Name,
    pub ttl: u32,
    pub negative_ttl: u32,
    routed: BTreeSet<Name>,
    records: BTreeMap<Name, Vec<Record>>,
}

impl Zone {
    /// Whether `name` (any case) is answered by region selection.
    pub fn is_routed(&self, name: &Name) -> bool {
        self.routed.contains(&name.to_lowercase())
    }

    /// The routed names, lower case.
    pub fn routed(&self) -> impl Iterator<Item = &Name> {
        self.routed.iter()
    }

    /// The static records at `name` (lower case).
    pub fn records_at(&self, name: &Name) -> &[Record] {
        self.records.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether `name` exists in the zone: it owns records or is routed, or is an empty
    /// non-terminal above one that does (which gets NODATA, not NXDOMAIN, per RFC 8020).
    pub fn name_exists(&self, name: &Name) -> bool {
        if name == &self.origin {
            return true;
        }
        self.routed.iter().chain(self.records.keys()).any(|owned| name.zone_of(owned))
    }

    /// Whether `name` is at or below the apex.
    pub fn contains(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }
}

impl ZoneSpec {
    /// Builds the zone, listing every problem found.
    pub fn compile(&self) -> Result<Zone, Vec<String>> {
        let mut errors = Vec::new();
        let origin = match Name::from_ascii(&self.zone) {
            Ok(mut n) if !self.zone.trim().is_empty() && !n.is_root() => {
                n.set_fqdn(true);
                n.to_lowercase()
            }
            _ => return Err(vec![format!("zone: `{}` is not a domain name", self.zone)]),
        };
        for (field, ttl) in [("ttl", self.ttl), ("negative_ttl", self.negative_ttl)] {
            if ttl > MAX_TTL {
                errors.push(format!("{field}: {ttl} is longer than a week"));
            }
        }
        let mut routed = BTreeSet::new();
        for (i, name) in self.routed.iter().enumerate() {
            match owner(name, &origin) {
                Ok(n) => {
                    if !routed.insert(n) {
                        errors.push(format!("routed[{i}]: `{name}` is listed twice"));
                    }
                }
                Err(e) => errors.push(format!("routed[{i}]: {e}")),
            }
        }
        let mut records: BTreeMap<Name, Vec<Record>> = BTreeMap::new();
        for (i, spec) in self.records.iter().enumerate() {
            let at = format!("records[{i}]");
            let name = match owner(&spec.name, &origin) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(format!("{at}.name: {e}"));
                    continue;
                }
            };
            let ttl = spec.ttl.unwrap_or(300);
            if ttl > MAX_TTL {
                errors.push(format!("{at}.ttl: {ttl} is longer than a week"));
            }
            match rdata(spec.kind, &spec.value) {
                Ok(data) => records.entry(name.clone()).or_default().push(Record::from_rdata(name, ttl, data)),
                Err(e) => errors.push(format!("{at}.value: {e}")),
            }
        }
        for (name, set) in &records {
            let has_cname = set.iter().any(|r| r.record_type() == RecordType::CNAME);
            if has_cname && (set.len() > 1 || routed.contains(name)) {
                errors.push(format!("{name}: a CNAME cannot share its name with other records (RFC 1034)"));
            }
            if has_cname && name == &origin {
                errors.push(format!("{name}: the zone apex cannot be a CNAME"));
            }
            if routed.contains(name) && set.iter().any(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
            {
                errors.push(format!("{name}: a routed name cannot also have static A/AAAA records"));
            }
        }
        if errors.is_empty() {
            Ok(Zone { origin, ttl: self.ttl, negative_ttl: self.negative_ttl, routed, records })
        } else {
            Err(errors)
        }
    }
}

/// Resolves an owner name written relative to the zone (`api`, `@`, or absolute with a dot).
fn owner(written: &str, origin: &Name) -> Result<Name, String> {
    let written = written.trim();
    if written == "@" {
        return Ok(origin.clone());
    }
    if written.is_empty() {
        return Err("empty name (use `@` for the apex)".into());
    }
    let name = if written.ends_with('.') { Name::from_ascii(written) } else { Name::parse(written, Some(origin)) }
        .map_err(|e| format!("`{written}` is not a domain name: {e}"))?
        .to_lowercase();
    if !origin.zone_of(&name) {
        return Err(format!("`{written}` is outside the zone {origin}"));
    }
    Ok(name)
}

fn rdata(kind: RecordKind, value: &str) -> Result<RData, String> {
    let value = value.trim();
    let name = |v: &str| {
        Name::from_ascii(v).map(|mut n| {
            n.set_fqdn(true);
            n
        })
    };
    Ok(match kind {
        RecordKind::A => {
            RData::A(A(value.parse::<Ipv4Addr>().map_err(|_| format!("`{value}` is not an IPv4 address"))?))
        }
        RecordKind::AAAA => {
            RData::AAAA(AAAA(value.parse::<Ipv6Addr>().map_err(|_| format!("`{value}` is not an IPv6 address"))?))
        }
        RecordKind::CNAME => RData::CNAME(CNAME(name(value).map_err(|_| format!("`{value}` is not a domain name"))?)),
        RecordKind::TXT => {
            if value.len() > 4000 {
                return Err("TXT values are limited to 4000 characters".into());
            }
            // Character-strings hold at most 255 bytes: longer text is split.
            let chunks: Vec<String> =
                value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            RData::TXT(TXT::new(if chunks.is_empty() { vec![String::new()] } else { chunks }))
        }
        RecordKind::MX => {
            let (preference, exchange) = value
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("`{value}`: expected `preference exchange`"))?;
            let preference: u16 =
                preference.parse().map_err(|_| format!("`{preference}` is not an MX preference (0-65535)"))?;
            let exchange = name(exchange.trim()).map_err(|_| format!("`{exchange}` is not a domain name"))?;
            RData::MX(MX::new(preference, exchange))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(records: Vec<RecordSpec>) -> ZoneSpec {
        ZoneSpec { zone: "Example.com".into(), routed: vec!["api".into()], records, ttl: 5, negative_ttl: 30 }
    }

    fn rec(name: &str, kind: RecordKind, value: &str) -> RecordSpec {
        RecordSpec { name: name.into(), kind, value: value.into(), ttl: None }
    }

    #[test]
    fn compiles_names_relative_to_the_zone() {
        let zone = spec(vec![
            rec("www", RecordKind::CNAME, "api.example.com."),
            rec("@", RecordKind::MX, "10 mail.example.com."),
            rec("a.b", RecordKind::TXT, "hello"),
        ])
        .compile()
        .unwrap();
        assert_eq!(zone.origin.to_string(), "example.com.");
        assert!(zone.is_routed(&Name::from_ascii("api.EXAMPLE.com.").unwrap()));
        assert_eq!(zone.records_at(&Name::from_ascii("www.example.com.").unwrap()).len(), 1);
        assert!(zone.name_exists(&Name::from_ascii("b.example.com.").unwrap()), "empty non-terminal");
        assert!(!zone.name_exists(&Name::from_ascii("c.example.com.").unwrap()));
    }

    #[test]
    fn lists_every_error() {
        let mut s = spec(vec![
            rec("x", RecordKind::A, "not-an-ip"),
            rec("api", RecordKind::CNAME, "elsewhere.org."),
            rec("out.of.zone.org.", RecordKind::TXT, "t"),
            rec("m", RecordKind::MX, "ten mail."),
        ]);
        s.ttl = MAX_TTL + 1;
        let errors = s.compile().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("not-an-ip")));
        assert!(errors.iter().any(|e| e.contains("outside the zone")));
        assert!(errors.iter().any(|e| e.contains("CNAME cannot share")));
    }
}
