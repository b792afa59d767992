//! The web application firewall: an API's ordered rules, each matching something about a
//! request and saying `block`, `allow` or `count`.
//!
//! Rules run in order on the request head. The first `block` that matches refuses the
//! request with 403 and a JSON message naming the rule; the first `allow` that matches ends
//! the evaluation (later rules are not consulted); a `count` rule only counts and logs, so a
//! rule can be tried on real traffic before it is enforced. Every match is counted in
//! `meridian_waf_matches_total{api, rule, action}`.
//!
//! What a rule can match here: the client address in or outside CIDR sets, the size of the
//! URI, query or headers, and patterns (a regex or a literal) in the path, a query
//! parameter, a header or a cookie. The client address is the connection's, or, when the
//! connection comes from one of `trusted_proxies`, the last address in `X-Forwarded-For`
//! that is not itself a trusted proxy: a client cannot choose its address by sending the
//! header.

pub mod signatures;

use std::net::IpAddr;
use std::sync::Arc;

use http::StatusCode;
use http::header::COOKIE;
use http::request::Parts;
use meridian_dns::net::Cidr;
use metrics::Counter;
use regex::Regex;

use super::{Exchange, Phases, Services, Stage, Step};
use crate::rejection::Rejection;
pub use signatures::Signatures;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Block,
    Allow,
    Count,
}

/// A part of the request a size constraint measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizedPart {
    Uri,
    Query,
    Headers,
}

/// Where a pattern looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Path,
    /// One query parameter's values (decoded).
    Query(String),
    Header(http::HeaderName),
    Cookie(String),
}

/// A regex or a literal.
#[derive(Debug, Clone)]
pub enum Pattern {
    Regex(Regex),
    Contains(String),
}

impl Pattern {
    fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Regex(r) => r.is_match(text),
            Pattern::Contains(literal) => text.contains(literal.as_str()),
        }
    }
}

/// What a rule matches.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The client address is in one of the sets (`inside`) or in none of them.
    Address {
        cidrs: Vec<Cidr>,
        inside: bool,
    },
    Size {
        part: SizedPart,
        over: usize,
    },
    Pattern {
        part: PatternPart,
        pattern: Pattern,
    },
    /// A built-in signature set matches the path, a query parameter, a cookie, or the
    /// `User-Agent` or `Referer` header.
    Signatures(Vec<Signatures>),
}

/// The values the signature sets inspect.
fn inspected(head: &Parts) -> impl Iterator<Item = String> + '_ {
    let query = crate::query::pairs(head.uri.query().unwrap_or("")).flat_map(|(k, v)| [k, v]);
    let cookies = head
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(|c| c.split_once('=').map_or(c, |(_, v)| v).trim().to_string());
    let headers = ["user-agent", "referer"]
        .into_iter()
        .filter_map(|h| head.headers.get(h))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    std::iter::once(head.uri.path().to_string()).chain(query).chain(cookies).chain(headers)
}

/// One rule, compiled.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub action: Action,
    pub condition: Condition,
    pub matches: Counter,
}

/// An API's firewall, shared by its routes.
#[derive(Debug)]
pub struct Firewall {
    pub rules: Vec<Rule>,
    pub trusted_proxies: Vec<Cidr>,
}

/// The firewall stage of one route.
#[derive(Debug)]
pub struct WafCheck {
    pub firewall: Arc<Firewall>,
}

impl Firewall {
    /// The client's address as far as it can be trusted.
    pub fn client(&self, head: &Parts, peer: IpAddr) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|c| c.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = head.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
        let addresses: Vec<&str> = hops.flat_map(|v| v.split(',')).map(str::trim).collect();
        for hop in addresses.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip) {
                        break;
                    }
                }
                // Garbage in the chain: trust nothing before it.
                Err(_) => break,
            }
        }
        client
    }

    fn evaluate(&self, head: &Parts, client: IpAddr) -> Result<(), Rejection> {
        for rule in &self.rules {
            if !rule.condition.matches(head, client) {
                continue;
            }
            rule.matches.increment(1);
            match rule.action {
                Action::Count => {
                    tracing::info!(rule = %rule.name, %client, path = head.uri.path(), "waf rule matched (count)")
                }
                Action::Allow => return Ok(()),
                Action::Block => {
                    return Err(Rejection::new(
                        StatusCode::FORBIDDEN,
                        format!("the request was blocked by the firewall rule `{}`", rule.name),
                    )
                    .with_reason(format!("waf rule {}", rule.name)));
                }
            }
        }
        Ok(())
    }
}

impl Condition {
    fn matches(&self, head: &Parts, client: IpAddr) -> bool {
        match self {
            Condition::Address { cidrs, inside } => cidrs.iter().any(|c| c.contains(client)) == *inside,
            Condition::Size { part, over } => {
                let size = match part {
                    SizedPart::Uri => head.uri.path().len() + head.uri.query().map_or(0, |q| q.len() + 1),
                    SizedPart::Query => head.uri.query().map_or(0, str::len),
                    SizedPart::Headers => head.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum(),
                };
                size > *over
            }
            Condition::Signatures(sets) => inspected(head).any(|value| sets.iter().any(|s| s.matches(&value))),
            Condition::Pattern { part, pattern } => match part {
                PatternPart::Path => {
                    pattern.matches(head.uri.path()) || pattern.matches(&crate::query::percent_decode(head.uri.path()))
                }
                PatternPart::Query(name) => {
                    crate::query::pairs(head.uri.query().unwrap_or("")).any(|(k, v)| &k == name && pattern.matches(&v))
                }
                PatternPart::Header(name) => {
                    head.headers.get_all(name).iter().any(|v| pattern.matches(&String::from_utf8_lossy(v.as_bytes())))
                }
                PatternPart::Cookie(name) => head
                    .headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .any(|(k, v)| k == name && pattern.matches(v)),
            },
        }
    }
}

impl Stage for WafCheck {
    fn name(&self) -> &'static str {
        "waf"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        let client = self.firewall.client(head, exchange.client);
        self.firewall.evaluate(head, client).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall(trusted: &[&str]) -> Firewall {
        Firewall { rules: Vec::new(), trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect() }
    }

    fn head(xff: &[&str]) -> Parts {
        let mut request = http::Request::get("/").body(()).unwrap();
        for v in xff {
            request.headers_mut().append("x-forwarded-for", v.parse().unwrap());
        }
        request.into_parts().0
    }

    #[test]
    fn only_trusted_proxies_say_who_the_client_is() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(firewall(&[]).client(&head(&["1.2.3.4"]), peer), peer);
        // A trusted proxy's last hop is the client...
        let fw = firewall(&["10.0.0.0/8"]);
        assert_eq!(fw.client(&head(&["6.6.6.6, 1.2.3.4"]), peer).to_string(), "1.2.3.4");
        // ... skipping further trusted proxies, but never further than the first untrusted hop.
        assert_eq!(fw.client(&head(&["6.6.6.6", "1.2.3.4, 10.9.9.9"]), peer).to_string(), "1.2.3.4");
        assert_eq!(fw.client(&head(&["6.6.6.6, garbage, 10.9.9.9"]), peer).to_string(), "10.9.9.9");
        assert_eq!(fw.client(&head(&[]), peer), peer);
    }
}
