//! The hot path: queries for routed names answered from prepared wire-format blocks.
//!
//! Almost every query a Meridian node receives asks for the A or AAAA record of a routed
//! name. [`Prepared`] holds, for each routed name and each possible answer (one per region,
//! plus "every node" for when all regions are down), the answer section already encoded,
//! and a table of precomputed region decisions per client prefix. Answering is then: check
//! that the packet is a plain query ([`HotQuery::parse`]), look the name and the client up,
//! and copy header, question, answer block and OPT record into the output. Anything unusual
//! (other types, other options, compression in the question, errors) returns `None` and the
//! general path in [`crate::responder`] answers it with hickory-proto.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use crate::net::Cidr;

/// EDNS UDP payload size Meridian advertises and honours at most (DNS Flag Day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPTION_ECS: u16 = 8;

/// A plain query, as the hot path accepts it.
#[derive(Debug)]
pub struct HotQuery<'a> {
    packet: &'a [u8],
    /// End of the question section.
    question_end: usize,
    qname: [u8; 255],
    qname_len: usize,
    pub qtype: u16,
    pub edns: Option<HotEdns>,
}

/// The OPT record of a hot query.
#[derive(Debug, Clone, Copy)]
pub struct HotEdns {
    pub payload: u16,
    pub dnssec_ok: bool,
    pub ecs: Option<ClientSubnet>,
}

/// An EDNS Client Subnet option (RFC 7871) from a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    pub address: IpAddr,
    pub source_prefix: u8,
}

impl<'a> HotQuery<'a> {
    /// Accepts only a well-formed standard query with one IN question and at most an OPT
    /// record; anything else is `None` (for the general path, which also produces FORMERR).
    pub fn parse(packet: &'a [u8]) -> Option<HotQuery<'a>> {
        if packet.len() < 17 {
            return None;
        }
        let flags = u16::from_be_bytes([packet[2], packet[3]]);
        // QR=0, opcode QUERY, TC=0; counts 1/0/0/0-1.
        if flags & 0xFA00 != 0 || packet[4..10] != [0, 1, 0, 0, 0, 0] || packet[10] != 0 || packet[11] > 1 {
            return None;
        }
        let mut qname = [0u8; 255];
        let mut at = 12;
        loop {
            let len = *packet.get(at)? as usize;
            if len & 0xC0 != 0 || at - 12 + len + 1 > 255 {
                return None;
            }
            let label = packet.get(at..at + 1 + len)?;
            for (i, b) in label.iter().enumerate() {
                qname[at - 12 + i] = if i == 0 { *b } else { b.to_ascii_lowercase() };
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        let qname_len = at - 12;
        let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
        let qclass = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]);
        if qclass != CLASS_IN {
            return None;
        }
        let question_end = at + 4;
        let edns = if packet[11] == 1 { Some(parse_opt(packet.get(question_end..)?)?) } else { None };
        if edns.is_none() && question_end != packet.len() {
            return None;
        }
        Some(HotQuery { packet, question_end, qname, qname_len, qtype, edns })
    }

    /// The question's name in wire format, lower case.
    pub fn qname(&self) -> &[u8] {
        &self.qname[..self.qname_len]
    }

    /// Largest response that may go back over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.payload.clamp(512, EDNS_PAYLOAD)),
            None => 512,
        }
    }
}

/// Parses the OPT record that must make up the rest of the packet.
fn parse_opt(rest: &[u8]) -> Option<HotEdns> {
    // Root owner, TYPE OPT, CLASS payload, TTL (ext-rcode, version, flags), RDLEN.
    if rest.len() < 11 || rest[0] != 0 || u16::from_be_bytes([rest[1], rest[2]]) != TYPE_OPT {
        return None;
    }
    let payload = u16::from_be_bytes([rest[3], rest[4]]);
    if rest[5] != 0 || rest[6] != 0 {
        // Extended rcode or an EDNS version we do not speak: the general path answers BADVERS.
        return None;
    }
    let dnssec_ok = rest[7] & 0x80 != 0;
    let rdlen = usize::from(u16::from_be_bytes([rest[9], rest[10]]));
    let mut options = rest.get(11..)?;
    if options.len() != rdlen {
        return None;
    }
    let mut ecs = None;
    while !options.is_empty() {
        let code = u16::from_be_bytes([*options.first()?, *options.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*options.get(2)?, *options.get(3)?]));
        let data = options.get(4..4 + len)?;
        if code == OPTION_ECS {
            if ecs.is_some() {
                return None;
            }
            ecs = Some(parse_ecs(data)?);
        }
        // Other options (a COOKIE from dig, padding) are ignored, as RFC 6891 allows.
        options = &options[4 + len..];
    }
    Some(HotEdns { payload, dnssec_ok, ecs })
}

/// Parses a query's ECS option strictly (RFC 7871 §6): scope 0, address no longer than the
/// source prefix needs, no bits set beyond it. Anything else goes to the general path,
/// which answers FORMERR.
pub fn parse_ecs(data: &[u8]) -> Option<ClientSubnet> {
    if data.len() < 4 {
        return None;
    }
    let family = u16::from_be_bytes([data[0], data[1]]);
    let (source, scope, bytes) = (data[2], data[3], &data[4..]);
    let width = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if scope != 0 || source > width || bytes.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    if let Some(last) = bytes.last() {
        let used = source % 8;
        if used != 0 && last & (0xFF >> used) != 0 {
            return None;
        }
    }
    let address = if family == 1 {
        let mut a = [0u8; 4];
        a[..bytes.len()].copy_from_slice(bytes);
        IpAddr::from(a)
    } else {
        let mut a = [0u8; 16];
        a[..bytes.len()].copy_from_slice(bytes);
        IpAddr::from(a)
    };
    Some(ClientSubnet { address, source_prefix: source })
}

/// Which prepared answer a client gets, and the ECS scope of that decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Index of the answer set: a region, or the last one ("every node").
    pub answer: usize,
    pub scope: u8,
}

/// An answer section, encoded: records whose owner is a pointer to the question's name.
#[derive(Debug, Clone, Default)]
pub struct AnswerBlock {
    pub bytes: Vec<u8>,
    pub count: u16,
}

impl AnswerBlock {
    /// Encodes `addresses` of one family as A or AAAA records with `ttl`.
    pub fn encode(addresses: &[IpAddr], ttl: u32, v6: bool) -> AnswerBlock {
        let mut block = AnswerBlock::default();
        for address in addresses {
            let (rtype, rdata): (u16, Vec<u8>) = match address {
                IpAddr::V4(a) if !v6 => (TYPE_A, a.octets().to_vec()),
                IpAddr::V6(a) if v6 => (TYPE_AAAA, a.octets().to_vec()),
                _ => continue,
            };
            block.bytes.extend_from_slice(&[0xC0, 0x0C]);
            block.bytes.extend_from_slice(&rtype.to_be_bytes());
            block.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
            block.bytes.extend_from_slice(&ttl.to_be_bytes());
            block.bytes.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            block.bytes.extend_from_slice(&rdata);
            block.count += 1;
        }
        block
    }
}

/// A routed name's answers, one per answer set.
#[derive(Debug, Clone, Default)]
pub struct RoutedAnswers {
    pub a: Vec<AnswerBlock>,
    pub aaaa: Vec<AnswerBlock>,
}

/// Everything the hot path answers from; rebuilt whenever health, latency or config change.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    names: HashMap<Box<[u8]>, RoutedAnswers, BuildHasherDefault<FoldHasher>>,
    v4: HashMap<u32, Decision, BuildHasherDefault<FoldHasher>>,
    v6: HashMap<u64, Decision, BuildHasherDefault<FoldHasher>>,
    /// Configured client networks, most specific first.
    hints: Vec<(Cidr, Decision)>,
    fallback: Decision,
}

impl Prepared {
    pub fn new(fallback: Decision) -> Prepared {
        Prepared { fallback, ..Prepared::default() }
    }

    /// Adds a routed name (wire format, lower case).
    pub fn add_name(&mut self, qname: Vec<u8>, answers: RoutedAnswers) {
        self.names.insert(qname.into_boxed_slice(), answers);
    }

    /// Records the decision for a measured client prefix.
    pub fn add_prefix(&mut self, prefix: Cidr, decision: Decision) {
        match prefix.address() {
            IpAddr::V4(a) => {
                self.v4.insert(u32::from(a) >> 8, decision);
            }
            IpAddr::V6(a) => {
                self.v6.insert((u128::from(a) >> 72) as u64, decision);
            }
        }
    }

    /// Records the decision for a configured client network.
    pub fn add_hint(&mut self, network: Cidr, decision: Decision) {
        self.hints.push((network, decision));
        self.hints.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix()));
    }

    /// The decision for a client address.
    pub fn decide(&self, address: IpAddr) -> Decision {
        let measured = match address {
            IpAddr::V4(a) => self.v4.get(&(u32::from(a) >> 8)),
            IpAddr::V6(a) => self.v6.get(&((u128::from(a) >> 72) as u64)),
        };
        if let Some(d) = measured {
            return *d;
        }
        self.hints.iter().find(|(n, _)| n.contains(address)).map_or(self.fallback, |(_, d)| *d)
    }

    /// Answers `query` from `client` into `out`; `None` when the general path must answer.
    /// `udp` applies the UDP size limit (truncating with TC when the answer does not fit).
    pub fn answer(&self, query: &HotQuery<'_>, client: IpAddr, udp: bool, out: &mut Vec<u8>) -> Option<()> {
        let answers = self.names.get(query.qname())?;
        let sets = match query.qtype {
            TYPE_A => &answers.a,
            TYPE_AAAA => &answers.aaaa,
            _ => return None,
        };
        let (address, source) = match query.edns.and_then(|e| e.ecs) {
            Some(ecs) => (ecs.address, ecs.source_prefix),
            None => (client, if client.is_ipv4() { 32 } else { 128 }),
        };
        let decision = self.decide(address);
        let block = sets.get(decision.answer)?;
        if block.count == 0 {
            // NODATA needs the SOA: the general path writes it.
            return None;
        }
        out.clear();
        let packet = query.packet;
        out.extend_from_slice(&packet[..2]);
        // QR, AA, RD copied; CD copied; RA=0, rcode 0.
        out.push(0x84 | (packet[2] & 0x01));
        out.push(packet[3] & 0x10);
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&block.count.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, u8::from(query.edns.is_some())]);
        out.extend_from_slice(&packet[12..query.question_end]);
        out.extend_from_slice(&block.bytes);
        if let Some(edns) = query.edns {
            write_opt(out, edns, decision.scope.min(source));
        }
        if udp && out.len() > query.udp_limit() {
            // Header and question only, TC set: the client retries over TCP.
            let mut truncated = Vec::with_capacity(query.question_end + 32);
            truncated.extend_from_slice(&out[..12]);
            truncated[2] |= 0x02;
            truncated[6..8].copy_from_slice(&[0, 0]);
            truncated.extend_from_slice(&packet[12..query.question_end]);
            if let Some(edns) = query.edns {
                write_opt(&mut truncated, edns, decision.scope.min(source));
            }
            *out = truncated;
        }
        Some(())
    }
}

/// Appends Meridian's OPT record, echoing the query's ECS option with `scope`.
fn write_opt(out: &mut Vec<u8>, edns: HotEdns, scope: u8) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0]);
    match edns.ecs {
        None => out.extend_from_slice(&[0, 0]),
        Some(ecs) => {
            let bytes = usize::from(ecs.source_prefix).div_ceil(8);
            let (family, octets): (u16, Vec<u8>) = match ecs.address {
                IpAddr::V4(a) => (1, a.octets()[..bytes].to_vec()),
                IpAddr::V6(a) => (2, a.octets()[..bytes].to_vec()),
            };
            let option_len = 4 + octets.len() as u16;
            out.extend_from_slice(&(4 + option_len).to_be_bytes());
            out.extend_from_slice(&OPTION_ECS.to_be_bytes());
            out.extend_from_slice(&option_len.to_be_bytes());
            out.extend_from_slice(&family.to_be_bytes());
            out.push(ecs.source_prefix);
            out.push(scope);
            out.extend_from_slice(&octets);
        }
    }
}

/// A multiply-and-fold hasher for short keys (names, prefixes): the hot path hashes once per
/// query, and SipHash's protection against chosen keys is not needed for tables built from
/// configuration and the node's own measurements.
#[derive(Default)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
}

impl FoldHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * 0x9E37_79B9_7F4A_7C15u128;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `api.example.com. A` with an optional OPT record carrying `ecs`.
    fn query(ecs: Option<&[u8]>) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(ecs.is_some())];
        q.extend_from_slice(b"\x03API\x07example\x03com\x00\x00\x01\x00\x01");
        if let Some(ecs) = ecs {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
            q.extend_from_slice(&((ecs.len() + 4) as u16).to_be_bytes());
            q.extend_from_slice(&[0, 8]);
            q.extend_from_slice(&(ecs.len() as u16).to_be_bytes());
            q.extend_from_slice(ecs);
        }
        q
    }

    fn prepared() -> Prepared {
        let mut p = Prepared::new(Decision { answer: 0, scope: 0 });
        let eu = AnswerBlock::encode(&["127.1.0.1".parse().unwrap()], 5, false);
        let us = AnswerBlock::encode(&["127.2.0.1".parse().unwrap(), "127.2.0.2".parse().unwrap()], 5, false);
        p.add_name(b"\x03api\x07example\x03com\x00".to_vec(), RoutedAnswers { a: vec![eu, us], aaaa: vec![] });
        p.add_prefix("203.0.113.0/24".parse().unwrap(), Decision { answer: 1, scope: 24 });
        p
    }

    #[test]
    fn answers_from_prepared_blocks_with_the_question_copied() {
        let packet = query(None);
        let q = HotQuery::parse(&packet).unwrap();
        assert_eq!(q.qname(), b"\x03api\x07example\x03com\x00");
        let mut out = Vec::new();
        prepared().answer(&q, "10.0.0.1".parse().unwrap(), true, &mut out).unwrap();
        assert_eq!(&out[..4], &[0x12, 0x34, 0x85, 0x00]);
        assert_eq!(&out[4..12], &[0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&out[12..packet.len()], &packet[12..], "question kept with its case");
        assert_eq!(&out[out.len() - 4..], &[127, 1, 0, 1]);
    }

    #[test]
    fn ecs_picks_the_prefix_decision_and_echoes_the_scope() {
        let packet = query(Some(&[0, 1, 24, 0, 203, 0, 113]));
        let q = HotQuery::parse(&packet).unwrap();
        let mut out = Vec::new();
        prepared().answer(&q, "10.0.0.1".parse().unwrap(), true, &mut out).unwrap();
        assert_eq!(&out[6..8], &[0, 2], "two records of region us");
        assert_eq!(&out[out.len() - 7..], &[0, 1, 24, 24, 203, 0, 113]);
    }

    #[test]
    fn refuses_what_it_does_not_handle() {
        // ECS with a nonzero scope, or an address longer than the prefix.
        assert!(HotQuery::parse(&query(Some(&[0, 1, 24, 8, 203, 0, 113]))).is_none());
        assert!(HotQuery::parse(&query(Some(&[0, 1, 16, 0, 203, 0, 113]))).is_none());
        let mut response = query(None);
        response[2] |= 0x80;
        assert!(HotQuery::parse(&response).is_none());
        let mut trailing = query(None);
        trailing.push(0);
        assert!(HotQuery::parse(&trailing).is_none());
        for len in 0..query(None).len() {
            assert!(HotQuery::parse(&query(None)[..len]).is_none());
        }
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([127, 2, 0, i])).collect();
        let mut p = Prepared::new(Decision { answer: 0, scope: 0 });
        p.add_name(
            b"\x03api\x07example\x03com\x00".to_vec(),
            RoutedAnswers { a: vec![AnswerBlock::encode(&many, 5, false)], aaaa: vec![] },
        );
        let packet = query(None);
        let q = HotQuery::parse(&packet).unwrap();
        let mut out = Vec::new();
        p.answer(&q, "10.0.0.1".parse().unwrap(), true, &mut out).unwrap();
        assert_eq!(out[2] & 0x02, 0x02);
        assert_eq!(out.len(), packet.len());
        p.answer(&q, "10.0.0.1".parse().unwrap(), false, &mut out).unwrap();
        assert_eq!(&out[6..8], &[0, 40], "TCP carries it all");
    }
}
