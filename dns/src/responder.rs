//! Answers DNS messages: the prepared hot path first, hickory-proto for everything else.
//!
//! [`Answers`] is one immutable snapshot of what the node answers (zones, the region
//! selector, the prepared hot-path tables), rebuilt off the query path whenever the
//! configuration, health or latency estimates change and swapped in atomically. The
//! [`Responder`] reads the current snapshot once per query.
//!
//! The general path follows RFC 1034/1035 and the later clarifications: AA on every
//! authoritative answer; NXDOMAIN vs NODATA (RFC 8020: empty non-terminals exist) with the
//! SOA in the authority section for negative caching (RFC 2308); CNAMEs inside the zone are
//! followed; `ANY` gets the minimal RFC 8482 answer; names outside the zones are REFUSED
//! unless forwarding is allowed for the client; malformed queries get FORMERR when a header
//! could be read, and no answer otherwise; responses never exceed the UDP limit (TC is set
//! and the client retries over TCP).

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet as HickorySubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use crate::forward::Forwarder;
use crate::net::Cidr;
use crate::select::{MemberAddress, RegionSelector};
use crate::wire::{self, AnswerBlock, Decision, EDNS_PAYLOAD, HotQuery, Prepared, RoutedAnswers};
use crate::zone::Zone;

/// The transport a query arrived on (UDP responses are size-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Reply {
    /// Send `out` (the buffer given to [`Responder::respond`]).
    Send,
    /// Resolve it through the upstream resolvers (the query, parsed).
    Forward(Box<Message>),
    /// Send nothing (not a query, or not even a header).
    Drop,
}

/// What one query got: the response code, the addresses answered (after any CNAMEs) and
/// the ECS scope the answer was given for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub rcode: String,
    pub addresses: Vec<IpAddr>,
    pub scope: Option<u8>,
}

/// One snapshot of everything the responder answers from.
pub struct Answers {
    zones: Vec<Zone>,
    serial: u32,
    pub selector: RegionSelector,
    /// NS names and the address of each member's DNS responder.
    nameservers: Vec<(Name, IpAddr)>,
    prepared: Prepared,
}

impl Answers {
    /// Builds a snapshot; `serial` is the configuration revision (the SOA serial).
    pub fn new(zones: Vec<Zone>, serial: u32, selector: RegionSelector, members: &[MemberAddress]) -> Answers {
        let fallback_index = selector.regions.len();
        let mut nameservers: Vec<(u64, IpAddr)> =
            members.iter().filter_map(|m| m.dns_addr.map(|a| (m.id, a.ip()))).collect();
        nameservers.sort();
        let mut prepared = Prepared::new(decision(&selector, selector.choose(IpAddr::from([0, 0, 0, 0]), 0)));
        // Every answer set: one per region (its healthy members), then "every node".
        let sets: Vec<Vec<IpAddr>> = (0..=fallback_index)
            .map(|i| selector.addresses(if i == fallback_index { None } else { Some(i) }))
            .collect();
        let mut named = Vec::new();
        for zone in &zones {
            for (id, ip) in &nameservers {
                if let Ok(name) = Name::parse(&format!("ns{id}"), Some(&zone.origin)) {
                    named.push((name.to_lowercase(), *ip));
                }
            }
            for name in zone.routed() {
                let answers = RoutedAnswers {
                    a: sets.iter().map(|s| AnswerBlock::encode(s, zone.ttl, false)).collect(),
                    aaaa: sets.iter().map(|s| AnswerBlock::encode(s, zone.ttl, true)).collect(),
                };
                if let Ok(wire) = name.to_lowercase().to_bytes() {
                    prepared.add_name(wire, answers);
                }
            }
        }
        for prefix in selector.measured_prefixes() {
            let choice = selector.choose(prefix.address(), prefix.prefix());
            prepared.add_prefix(*prefix, decision(&selector, choice));
        }
        let hints: Vec<Cidr> = selector.regions.iter().flat_map(|r| r.hints.iter().copied()).collect();
        for hint in hints {
            let choice = selector.choose(hint.address(), hint.prefix());
            prepared.add_hint(hint, decision(&selector, choice));
        }
        Answers { zones, serial, selector, nameservers: named, prepared }
    }

    /// Whether `name` is a routed name of one of the zones.
    pub fn is_routed(&self, name: &Name) -> bool {
        self.zone_for(&name.to_lowercase()).is_some_and(|z| z.is_routed(name))
    }

    fn zone_for(&self, name: &Name) -> Option<&Zone> {
        self.zones.iter().filter(|z| z.contains(name)).max_by_key(|z| z.origin.num_labels())
    }
}

fn decision(selector: &RegionSelector, choice: crate::select::Choice) -> Decision {
    Decision { answer: choice.region.unwrap_or(selector.regions.len()), scope: choice.scope }
}

/// Answers queries from the current [`Answers`].
pub struct Responder {
    current: ArcSwap<Answers>,
    forwarder: Option<Forwarder>,
}

impl Responder {
    pub fn new(answers: Answers, forwarder: Option<Forwarder>) -> Responder {
        Responder { current: ArcSwap::from_pointee(answers), forwarder }
    }

    /// Replaces the snapshot (config, health or latency changed).
    pub fn update(&self, answers: Answers) {
        self.current.store(Arc::new(answers));
    }

    pub fn current(&self) -> Arc<Answers> {
        self.current.load_full()
    }

    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarder.as_ref()
    }

    /// Answers `packet` from `client` into `out`.
    pub fn respond(&self, packet: &[u8], client: IpAddr, transport: Transport, out: &mut Vec<u8>) -> Reply {
        let (reply, path) = self.respond_from(&self.current.load(), packet, client, transport, out);
        metrics::counter!("meridian_dns_queries_total", "path" => path).increment(1);
        reply
    }

    /// What a client at `client` is told for `name` (A for an IPv4 client, AAAA for IPv6,
    /// with the client's full address as ECS), computed by the very path a real query takes
    /// on the snapshot `answers`: `meridian dns explain` reports this, so the explanation
    /// and the answers cannot disagree.
    pub fn outcome_for(&self, answers: &Answers, name: &Name, client: IpAddr) -> Outcome {
        let qtype = if client.is_ipv4() { RecordType::A } else { RecordType::AAAA };
        let mut query = query_message(name, qtype);
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        let width = if client.is_ipv4() { 32 } else { 128 };
        edns.options_mut().insert(EdnsOption::Subnet(HickorySubnet::new(client, width, 0)));
        query.set_edns(edns);
        let mut out = Vec::new();
        let reply = match query.to_vec() {
            // Not counted as a query: `explain` asks, no client did.
            Ok(packet) => self.respond_from(answers, &packet, client, Transport::Tcp, &mut out).0,
            Err(_) => Reply::Drop,
        };
        let response = match reply {
            Reply::Send => Message::from_vec(&out).ok(),
            Reply::Forward(_) => return Outcome { rcode: "forwarded".into(), addresses: Vec::new(), scope: None },
            Reply::Drop => None,
        };
        let Some(response) = response else {
            return Outcome { rcode: "no answer".into(), addresses: Vec::new(), scope: None };
        };
        let addresses = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        let scope = response.edns.as_ref().and_then(|e| match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(subnet)) => Some(subnet.scope_prefix()),
            _ => None,
        });
        let rcode = match response.metadata.response_code {
            ResponseCode::NoError => "NOERROR",
            ResponseCode::FormErr => "FORMERR",
            ResponseCode::ServFail => "SERVFAIL",
            ResponseCode::NXDomain => "NXDOMAIN",
            ResponseCode::NotImp => "NOTIMP",
            ResponseCode::Refused => "REFUSED",
            _ => "other",
        };
        Outcome { rcode: rcode.into(), addresses, scope }
    }

    /// The answer to `packet` on the snapshot `answers`, and which path gave it.
    fn respond_from(
        &self,
        answers: &Answers,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> (Reply, &'static str) {
        if let Some(query) = HotQuery::parse(packet)
            && answers.prepared.answer(&query, client, transport == Transport::Udp, out).is_some()
        {
            return (Reply::Send, "prepared");
        }
        (self.general(answers, packet, client, transport, out), "general")
    }

    fn general(
        &self,
        answers: &Answers,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Reply {
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return formerr(packet, out),
        };
        if request.metadata.message_type != MessageType::Query {
            return Reply::Drop;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        let forwarding = self.forwarder.as_ref().is_some_and(|f| f.allows(client));
        response.metadata.recursion_available = forwarding;
        let udp_limit = match &request.edns {
            Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
            None => 512,
        };
        let mut ecs: Option<(IpAddr, u8)> = None;
        if let Some(edns) = &request.edns {
            let mut reply_edns = Edns::new();
            reply_edns.set_max_payload(EDNS_PAYLOAD);
            reply_edns.set_dnssec_ok(edns.flags().dnssec_ok);
            if edns.version() > 0 {
                response.metadata.response_code = ResponseCode::BADVERS;
                response.set_edns(reply_edns);
                return encode(response, transport, udp_limit, out);
            }
            if let Some(EdnsOption::Subnet(subnet)) = edns.option(EdnsCode::Subnet) {
                if subnet.scope_prefix() != 0 || wire::parse_ecs(&subnet_bytes(subnet)).is_none() {
                    response.metadata.response_code = ResponseCode::FormErr;
                    response.set_edns(reply_edns);
                    return encode(response, transport, udp_limit, out);
                }
                ecs = Some((subnet.addr(), subnet.source_prefix()));
            }
            response.set_edns(reply_edns);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return encode(response, transport, udp_limit, out);
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return encode(response, transport, udp_limit, out);
        };
        response.add_query(query.clone());
        let name = query.name().to_lowercase();
        let zone = match answers.zone_for(&name) {
            Some(z) if query.query_class() == DNSClass::IN => z,
            _ if forwarding && query.query_class() == DNSClass::IN => return Reply::Forward(Box::new(request)),
            _ => {
                response.metadata.response_code = ResponseCode::Refused;
                return encode(response, transport, udp_limit, out);
            }
        };
        response.metadata.authoritative = true;
        let (address, source) = ecs.unwrap_or((client, if client.is_ipv4() { 32 } else { 128 }));
        let mut scope = 0;
        let mut owner = name.clone();
        // Follow in-zone CNAMEs (a bounded number of hops); the rcode is the last name's
        // (RFC 6604).
        for _ in 0..8 {
            let found = lookup(answers, zone, &owner, query.query_type(), address, source);
            scope = scope.max(found.scope);
            if !found.exists {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(soa(answers, zone));
                break;
            }
            let answered = !found.answers.is_empty();
            response.add_answers(found.answers);
            match found.cname {
                Some(target) if zone.contains(&target.to_lowercase()) => owner = target.to_lowercase(),
                Some(_) => break,
                None => {
                    if !answered {
                        response.add_authority(soa(answers, zone));
                    }
                    break;
                }
            }
        }
        if let (Some(edns), Some((address, source))) = (response.edns.as_mut(), ecs) {
            let option = HickorySubnet::new(address, source, scope.min(source));
            edns.options_mut().insert(EdnsOption::Subnet(option));
        }
        encode(response, transport, udp_limit, out)
    }
}

/// What one owner name holds for a query type.
struct Found {
    answers: Vec<Record>,
    cname: Option<Name>,
    exists: bool,
    scope: u8,
}

fn lookup(answers: &Answers, zone: &Zone, name: &Name, qtype: RecordType, address: IpAddr, source: u8) -> Found {
    let mut found = Found { answers: Vec::new(), cname: None, exists: zone.name_exists(name), scope: 0 };
    let nameserver_glue: Vec<IpAddr> =
        answers.nameservers.iter().filter(|(n, _)| n == name).map(|(_, ip)| *ip).collect();
    found.exists |= !nameserver_glue.is_empty();
    if !found.exists {
        return found;
    }
    if qtype == RecordType::ANY {
        // RFC 8482: one synthesized HINFO instead of everything.
        let hinfo = HINFO::new("RFC8482".into(), String::new());
        found.answers.push(Record::from_rdata(name.clone(), zone.negative_ttl, RData::HINFO(hinfo)));
        return found;
    }
    if name == &zone.origin {
        match qtype {
            RecordType::SOA => found.answers.push(soa(answers, zone)),
            RecordType::NS => {
                for (ns, _) in answers.nameservers.iter().filter(|(n, _)| zone.contains(n)) {
                    found.answers.push(Record::from_rdata(zone.origin.clone(), 3600, RData::NS(NS(ns.clone()))));
                }
            }
            _ => {}
        }
    }
    for ip in nameserver_glue {
        match (qtype, ip) {
            (RecordType::A, IpAddr::V4(a)) => {
                found.answers.push(Record::from_rdata(name.clone(), 3600, RData::A(A(a))))
            }
            (RecordType::AAAA, IpAddr::V6(a)) => {
                found.answers.push(Record::from_rdata(name.clone(), 3600, RData::AAAA(AAAA(a))))
            }
            _ => {}
        }
    }
    if zone.is_routed(name) && matches!(qtype, RecordType::A | RecordType::AAAA) {
        let choice = answers.selector.choose(address, source);
        found.scope = choice.scope;
        for ip in answers.selector.addresses(choice.region) {
            match (qtype, ip) {
                (RecordType::A, IpAddr::V4(a)) => {
                    found.answers.push(Record::from_rdata(name.clone(), zone.ttl, RData::A(A(a))))
                }
                (RecordType::AAAA, IpAddr::V6(a)) => {
                    found.answers.push(Record::from_rdata(name.clone(), zone.ttl, RData::AAAA(AAAA(a))))
                }
                _ => {}
            }
        }
    }
    for record in zone.records_at(name) {
        if record.record_type() == qtype {
            found.answers.push(record.clone());
        } else if record.record_type() == RecordType::CNAME {
            found.answers.push(record.clone());
            if let RData::CNAME(target) = &record.data {
                found.cname = Some(target.0.clone());
            }
        }
    }
    found
}

fn soa(answers: &Answers, zone: &Zone) -> Record {
    let mname = answers
        .nameservers
        .iter()
        .find(|(n, _)| zone.contains(n))
        .map(|(n, _)| n.clone())
        .or_else(|| Name::parse("ns", Some(&zone.origin)).ok())
        .unwrap_or_else(|| zone.origin.clone());
    let rname = Name::parse("hostmaster", Some(&zone.origin)).unwrap_or_else(|_| zone.origin.clone());
    let data = SOA::new(mname, rname, answers.serial, 3600, 600, 604_800, zone.negative_ttl);
    Record::from_rdata(zone.origin.clone(), zone.negative_ttl, RData::SOA(data))
}

/// The ECS option's wire bytes, for the strict check shared with the hot path.
fn subnet_bytes(subnet: &HickorySubnet) -> Vec<u8> {
    let source = subnet.source_prefix();
    let (family, octets): (u16, Vec<u8>) = match subnet.addr() {
        IpAddr::V4(a) => (1, a.octets().to_vec()),
        IpAddr::V6(a) => (2, a.octets().to_vec()),
    };
    let used = usize::from(source).div_ceil(8).min(octets.len());
    let mut bytes = family.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[source, subnet.scope_prefix()]);
    bytes.extend_from_slice(&octets[..used]);
    bytes
}

/// Encodes `response`, truncating it (TC) when it exceeds the UDP limit.
fn encode(response: Message, transport: Transport, udp_limit: usize, out: &mut Vec<u8>) -> Reply {
    let Ok(bytes) = response.to_vec() else {
        return encode_servfail(&response, out);
    };
    if transport == Transport::Udp && bytes.len() > udp_limit {
        metrics::counter!("meridian_dns_truncated_total").increment(1);
        match response.truncate().to_vec() {
            Ok(t) => *out = t,
            Err(_) => return encode_servfail(&response, out),
        }
    } else {
        *out = bytes;
    }
    Reply::Send
}

fn encode_servfail(response: &Message, out: &mut Vec<u8>) -> Reply {
    let failed = Message::error_msg(response.metadata.id, response.metadata.op_code, ResponseCode::ServFail);
    match failed.to_vec() {
        Ok(b) => {
            *out = b;
            Reply::Send
        }
        Err(_) => Reply::Drop,
    }
}

/// FORMERR for a query whose header could be read; nothing for anything else.
fn formerr(packet: &[u8], out: &mut Vec<u8>) -> Reply {
    metrics::counter!("meridian_dns_malformed_total").increment(1);
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    out.clear();
    out.extend_from_slice(&packet[..2]);
    // QR, the query's opcode and RD; rcode FORMERR; no sections.
    out.push(0x80 | (packet[2] & 0x79));
    out.push(0x01);
    out.extend_from_slice(&[0; 8]);
    Reply::Send
}

/// A query for `name`/`qtype`, for tests and the `explain` command.
pub fn query_message(name: &Name, qtype: RecordType) -> Message {
    let mut message = Message::query();
    message.add_query(Query::query(name.clone(), qtype));
    message
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hickory_proto::op::Edns;
    use proptest::prelude::*;

    use super::*;
    use crate::health::HealthBoard;
    use crate::latency::ClientLatency;
    use crate::zone::{RecordKind, RecordSpec, ZoneSpec};

    fn responder() -> Responder {
        let zone = ZoneSpec {
            zone: "example.com".into(),
            routed: vec!["api".into()],
            records: vec![
                RecordSpec { name: "www".into(), kind: RecordKind::CNAME, value: "api.example.com.".into(), ttl: None },
                RecordSpec { name: "deep.sub".into(), kind: RecordKind::TXT, value: "x".into(), ttl: Some(60) },
            ],
            ttl: 5,
            negative_ttl: 30,
        }
        .compile()
        .unwrap();
        let members = vec![
            MemberAddress {
                id: 1,
                region: "eu".into(),
                gateway_ip: "127.1.0.1".parse().unwrap(),
                dns_addr: Some("127.1.0.1:53".parse().unwrap()),
            },
            MemberAddress { id: 2, region: "us".into(), gateway_ip: "127.2.0.1".parse().unwrap(), dns_addr: None },
        ];
        let selector = RegionSelector::new(
            &[],
            &members,
            "eu",
            &HealthBoard::default(),
            &ClientLatency::new("eu"),
            Instant::now(),
        );
        Responder::new(Answers::new(vec![zone], 42, selector, &members), None)
    }

    fn ask(r: &Responder, name: &str, qtype: RecordType, edns: bool) -> Message {
        let mut q = query_message(&Name::from_ascii(name).unwrap(), qtype);
        if edns {
            q.set_edns(Edns::new());
        }
        let mut out = Vec::new();
        match r.respond(&q.to_vec().unwrap(), "10.0.0.1".parse().unwrap(), Transport::Udp, &mut out) {
            Reply::Send => Message::from_vec(&out).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn authoritative_answers_follow_the_rfcs() {
        let r = responder();
        let soa = ask(&r, "example.com.", RecordType::SOA, false);
        assert!(soa.metadata.authoritative);
        assert!(matches!(&soa.answers[0].data, RData::SOA(s) if s.serial == 42));
        let ns = ask(&r, "example.com.", RecordType::NS, true);
        assert_eq!(ns.answers.len(), 1);
        let glue = ask(&r, "ns1.example.com.", RecordType::A, false);
        assert_eq!(glue.answers.len(), 1);
        let routed = ask(&r, "API.example.com.", RecordType::A, false);
        assert_eq!(routed.answers.len(), 1);
        assert!(matches!(&routed.answers[0].data, RData::A(a) if a.0 == std::net::Ipv4Addr::new(127, 1, 0, 1)));
        assert_eq!(routed.answers[0].ttl, 5);
        let nodata = ask(&r, "api.example.com.", RecordType::AAAA, true);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        let nx = ask(&r, "nope.example.com.", RecordType::A, false);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities.len(), 1);
        let ent = ask(&r, "sub.example.com.", RecordType::A, false);
        assert_eq!(ent.metadata.response_code, ResponseCode::NoError, "empty non-terminal is NODATA");
        let chased = ask(&r, "www.example.com.", RecordType::A, false);
        assert_eq!(chased.answers.len(), 2, "CNAME and the routed target's A");
        let any = ask(&r, "api.example.com.", RecordType::ANY, false);
        assert_eq!(any.answers[0].record_type(), RecordType::HINFO);
        let outside = ask(&r, "example.org.", RecordType::A, false);
        assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
        assert!(!outside.metadata.authoritative);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let r = responder();
        let mut out = Vec::new();
        let client = "10.0.0.1".parse().unwrap();
        assert!(matches!(r.respond(&[1, 2, 3], client, Transport::Udp, &mut out), Reply::Drop));
        let garbage = [0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3F, b'x'];
        assert!(matches!(r.respond(&garbage, client, Transport::Udp, &mut out), Reply::Send));
        assert_eq!(&out[..4], &[0xAB, 0xCD, 0x81, 0x01]);
    }

    proptest! {
        #[test]
        fn random_packets_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
            let r = responder();
            let mut out = Vec::new();
            for transport in [Transport::Udp, Transport::Tcp] {
                if let Reply::Send = r.respond(&packet, "10.0.0.1".parse().unwrap(), transport, &mut out) {
                    prop_assert!(out.len() >= 12);
                    prop_assert_eq!(&out[..2], &packet[..2]);
                    prop_assert!(out[2] & 0x80 != 0, "a response");
                }
            }
        }

        #[test]
        fn mutated_queries_never_panic(flip in 0usize..64, value in any::<u8>()) {
            let r = responder();
            let mut q = query_message(&Name::from_ascii("api.example.com.").unwrap(), RecordType::A);
            q.set_edns(Edns::new());
            let mut packet = q.to_vec().unwrap();
            let at = flip % packet.len();
            packet[at] = value;
            let mut out = Vec::new();
            let _ = r.respond(&packet, "10.0.0.1".parse().unwrap(), Transport::Udp, &mut out);
        }
    }
}
