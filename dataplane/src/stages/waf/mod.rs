//! The web application firewall: an API's ordered rules, each matching something about a
//! request and saying `block`, `allow` or `count`.
//!
//! Rules run in order. The first `block` that matches refuses the request with 403 and a
//! JSON message naming the rule; the first `allow` that matches ends the evaluation (later
//! rules are not consulted); a `count` rule only counts and logs, so a rule can be tried on
//! real traffic before it is enforced. Every match is counted in
//! `meridian_waf_matches_total{api, rule, action}`.
//!
//! What a rule can match: the client address in or outside CIDR sets, the size of the URI,
//! query, headers or body, patterns (a regex or a literal) in the path, a query parameter,
//! a header, a cookie or the body, the built-in signature sets, and rates ([`rate`]: too
//! many requests, or too many 401 and 403 answers, from one client across the cluster).
//! Rules run on the request head until the first rule that needs the body; the rest run in
//! the request-body phase on the body's first `inspect_body_bytes` (the rest of a longer
//! body streams upstream uninspected). The client address is the connection's, or, when
//! the connection comes from one of `trusted_proxies`, the last address in
//! `X-Forwarded-For` that is not itself a trusted proxy: a client cannot choose its address
//! by sending the header.

pub mod rate;
pub mod signatures;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http::header::COOKIE;
use http::request::Parts;
use http::response;
use meridian_dns::net::Cidr;
use metrics::Counter;
use regex::Regex;

use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step, declared_length, may_have_body};
use crate::certificates::ClientCertificate;
use crate::limits::limiter::Period;
use crate::rejection::{Rejection, ResponseType};
pub use rate::{Blocklist, Counted, RateKey, RateRule};
pub use signatures::{SignatureSet, Signatures};

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
    /// The body: its declared `Content-Length`, or what arrives of it.
    Body,
}

/// Where a pattern looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Path,
    /// One query parameter's values (decoded).
    Query(String),
    Header(http::HeaderName),
    Cookie(String),
    /// The first `inspect_body_bytes` of the body.
    Body,
    /// The client certificate's subject and each of its names (mutual TLS); a request
    /// without one matches no such pattern.
    ClientCert,
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
    Signatures(SignatureSet),
    /// The client is over a rate-based rule's limit (or blocked for having been).
    Rate(RateRule),
}

/// What a rule looks at: the request head, the client as far as it can be trusted, and
/// the inspected part of the body once it has been read.
struct Subject<'r> {
    head: &'r Parts,
    client: IpAddr,
    body: Option<&'r [u8]>,
    client_cert: Option<&'r ClientCertificate>,
}

/// What evaluating the rules decided.
enum Verdict {
    Pass,
    Blocked(Rejection),
    /// Rule `.0` needs the body: evaluation goes on from there in the request-body phase.
    NeedsBody(usize),
}

/// Where evaluation stopped for the body, kept in the exchange between the phases.
#[derive(Debug, Clone, Copy)]
struct AwaitingBody {
    next: usize,
    client: IpAddr,
}

/// The counters of failed-authorization rules this request counts in when its answer is
/// a 401 or 403.
#[derive(Debug, Clone, Default)]
struct FailureScopes(Vec<(Arc<str>, Period)>);

/// The values the signature sets inspect, as sent (the sets decode them): the path, each
/// query parameter's name and value, each cookie's value, `User-Agent` and `Referer`.
fn inspected(head: &Parts) -> impl Iterator<Item = &[u8]> + '_ {
    let query = crate::query::raw_pairs(head.uri.query().unwrap_or("")).flat_map(|(k, v)| [k, v]);
    let cookies = cookies(head).map(|(_, value)| value);
    let headers = ["user-agent", "referer"].into_iter().filter_map(|h| head.headers.get(h)).map(|v| v.as_bytes());
    std::iter::once(head.uri.path()).chain(query).chain(cookies).map(str::as_bytes).chain(headers)
}

/// The `(name, value)` pairs of the request's `Cookie` headers.
fn cookies(head: &Parts) -> impl Iterator<Item = (&str, &str)> + '_ {
    let headers = head.headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok());
    headers.flat_map(|v| v.split(';')).map(|c| c.split_once('=').map_or(("", c.trim()), |(k, v)| (k.trim(), v.trim())))
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
    /// How much of a body the body patterns look at.
    pub inspect_body_bytes: u64,
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

    /// How many bytes of a body the rules read (`None` when no rule looks at bodies).
    fn body_need(&self) -> Option<u64> {
        self.rules
            .iter()
            .filter_map(|rule| match &rule.condition {
                Condition::Pattern { part: PatternPart::Body, .. } => Some(self.inspect_body_bytes),
                Condition::Size { part: SizedPart::Body, over } => Some(*over as u64 + 1),
                _ => None,
            })
            .max()
    }

    /// Whether a rule counts 401 and 403 answers.
    fn counts_failures(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(&r.condition, Condition::Rate(rate) if rate.counted == Counted::FailedAuthorizations))
    }

    /// Runs the rules from `from` on.
    fn evaluate(&self, from: usize, subject: &Subject, exchange: &mut Exchange, services: &Services) -> Verdict {
        for (index, rule) in self.rules.iter().enumerate().skip(from) {
            let matched = match &rule.condition {
                Condition::Rate(rate) => rule.rate_matches(rate, subject, exchange, services),
                condition => match condition.matches(subject, self.inspect_body_bytes) {
                    Some(matched) => matched,
                    None => return Verdict::NeedsBody(index),
                },
            };
            if !matched {
                continue;
            }
            exchange.note(|| format!("waf rule `{}` matched ({})", rule.name, rule.action.name()));
            if services.dry_run {
                // Explaining: what the rule would do, without counting or logging it.
            } else {
                rule.matches.increment(1);
            }
            match rule.action {
                Action::Count => {
                    if !services.dry_run {
                        tracing::info!(rule = %rule.name, client = %subject.client, path = subject.head.uri.path(), "waf rule matched (count)")
                    }
                }
                Action::Allow => return Verdict::Pass,
                Action::Block => {
                    return Verdict::Blocked(
                        Rejection::new(
                            StatusCode::FORBIDDEN,
                            format!("the request was blocked by the firewall rule `{}`", rule.name),
                        )
                        .with_reason(format!("waf rule {}", rule.name))
                        .of_type(ResponseType::WafFiltered),
                    );
                }
            }
        }
        Verdict::Pass
    }
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Allow => "allow",
            Action::Count => "count",
        }
    }
}

impl Rule {
    /// Whether the client is over `rate`'s limit, counting this request where the rule
    /// counts requests, and blocking the client when the rule blocks. A rule that counts
    /// failed authorizations notes its counter, for the response to count in.
    fn rate_matches(&self, rate: &RateRule, subject: &Subject, exchange: &mut Exchange, services: &Services) -> bool {
        let Some(scope) = rate.scope(subject.head, subject.client) else { return false };
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let over = rate.over_limit(services.limiter, &scope, now_ms, services.dry_run);
        let now = Instant::now();
        let blocked = services.blocks.blocks(&scope, now);
        if rate.counted == Counted::FailedAuthorizations && !services.dry_run {
            exchange.state.get_or_insert_default::<FailureScopes>().0.push((scope.clone(), rate.window));
        }
        if over && !blocked && self.action == Action::Block && !services.dry_run {
            tracing::warn!(rule = %self.name, client = %subject.client, block_for = ?rate.block_for, "waf rate rule blocks a client");
            services.blocks.block(scope, now, rate.block_for);
        }
        over || blocked
    }
}

impl Condition {
    /// Whether the condition holds; `None` when it needs the body and it has not been read.
    /// Rate conditions are the firewall's to evaluate.
    fn matches(&self, subject: &Subject, inspect_body_bytes: u64) -> Option<bool> {
        let head = subject.head;
        let matched = match self {
            Condition::Address { cidrs, inside } => cidrs.iter().any(|c| c.contains(subject.client)) == *inside,
            Condition::Size { part, over } => {
                let size = match part {
                    SizedPart::Uri => head.uri.path().len() + head.uri.query().map_or(0, |q| q.len() + 1),
                    SizedPart::Query => head.uri.query().map_or(0, str::len),
                    SizedPart::Headers => head.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum(),
                    SizedPart::Body => match declared_length(head) {
                        Some(length) => usize::try_from(length).unwrap_or(usize::MAX),
                        None => subject.body?.len(),
                    },
                };
                size > *over
            }
            Condition::Signatures(set) => inspected(head).any(|value| set.matches(value)),
            Condition::Rate(_) => false,
            Condition::Pattern { part: PatternPart::Body, pattern } => {
                let body = subject.body?;
                let inspected = &body[..body.len().min(usize::try_from(inspect_body_bytes).unwrap_or(usize::MAX))];
                pattern.matches(&String::from_utf8_lossy(inspected))
            }
            Condition::Pattern { part, pattern } => match part {
                PatternPart::Path => {
                    let path = head.uri.path();
                    pattern.matches(path)
                        || path.contains(['%', '+']) && pattern.matches(&crate::query::percent_decode(path))
                }
                PatternPart::Query(name) => crate::query::raw_pairs(head.uri.query().unwrap_or("")).any(|(k, v)| {
                    crate::query::decoded(k) == name.as_str() && pattern.matches(&crate::query::decoded(v))
                }),
                PatternPart::Header(name) => {
                    head.headers.get_all(name).iter().any(|v| pattern.matches(&String::from_utf8_lossy(v.as_bytes())))
                }
                PatternPart::Cookie(name) => cookies(head).any(|(k, v)| k == name && pattern.matches(v)),
                PatternPart::Body => false,
                PatternPart::ClientCert => subject
                    .client_cert
                    .is_some_and(|c| pattern.matches(&c.subject) || c.sans.iter().any(|name| pattern.matches(name))),
            },
        };
        Some(matched)
    }
}

impl WafCheck {
    /// Acts on what the rules decided.
    fn settle(&self, verdict: Verdict, client: IpAddr, exchange: &mut Exchange) -> Flow {
        match verdict {
            Verdict::Pass => Flow::Continue,
            Verdict::Blocked(rejection) => rejection.into(),
            Verdict::NeedsBody(next) => {
                exchange.state.insert(AwaitingBody { next, client });
                Flow::Continue
            }
        }
    }
}

impl Stage for WafCheck {
    fn name(&self) -> &'static str {
        "waf"
    }

    fn phases(&self) -> Phases {
        let mut phases = Phases::REQUEST_HEAD;
        if self.firewall.body_need().is_some() {
            phases = phases | Phases::REQUEST_BODY;
        }
        if self.firewall.counts_failures() {
            phases = phases | Phases::RESPONSE_HEAD;
        }
        phases
    }

    fn request_head<'a>(
        &'a self,
        head: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        let client = self.firewall.client(head, exchange.client);
        // A request that cannot have a body has an empty one: nothing to wait for.
        let body: Option<&[u8]> = if may_have_body(head) { None } else { Some(&[]) };
        let cert = exchange.state.get::<Arc<ClientCertificate>>().cloned();
        let subject = Subject { head, client, body, client_cert: cert.as_deref() };
        let verdict = self.firewall.evaluate(0, &subject, exchange, services);
        self.settle(verdict, client, exchange).into()
    }

    fn body_need(&self, head: &Parts) -> Option<BodyNeed> {
        self.firewall.body_need().filter(|_| may_have_body(head)).map(BodyNeed::Prefix)
    }

    fn request_body<'a>(
        &'a self,
        head: &'a Parts,
        body: &'a Bytes,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        let Some(AwaitingBody { next, client }) = exchange.state.remove::<AwaitingBody>() else {
            // Decided on the head already.
            return Flow::Continue.into();
        };
        let cert = exchange.state.get::<Arc<ClientCertificate>>().cloned();
        let subject = Subject { head, client, body: Some(body), client_cert: cert.as_deref() };
        let verdict = self.firewall.evaluate(next, &subject, exchange, services);
        self.settle(verdict, client, exchange).into()
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, services: &Services<'_>) {
        if !matches!(head.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) || services.dry_run {
            return;
        }
        let Some(FailureScopes(scopes)) = exchange.state.remove::<FailureScopes>() else { return };
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        for (scope, window) in &scopes {
            services.limiter.record(scope, *window, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall(trusted: &[&str]) -> Firewall {
        Firewall {
            rules: Vec::new(),
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            inspect_body_bytes: 8192,
        }
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
