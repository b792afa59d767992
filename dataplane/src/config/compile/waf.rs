//! Compiling firewall rules: each rule's name, action and single condition (addresses,
//! sizes, patterns, signatures, rates), checked with its line; the API's rules come before
//! a stage's.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use meridian_dns::net::Cidr;

use super::super::model::*;
use super::Compiler;
use crate::limits::limiter::Period;
use crate::stages::waf::rate::MAX_BLOCK;
use crate::stages::waf::{
    Action, Condition, Counted, Firewall, Pattern, PatternPart, RateKey, RateRule, Rule, SignatureSet, Signatures,
    SizedPart,
};

/// How much of a body the body patterns inspect, unless configured.
const DEFAULT_INSPECT_BODY_BYTES: u64 = 8192;
const MAX_INSPECT_BODY_BYTES: u64 = 65_536;
/// The largest body size a `size_over` rule may test (it reads that much of a body that
/// declares no length).
const MAX_BODY_SIZE_RULE: usize = 1 << 20;
/// The shortest and longest window of a rate-based rule.
const RATE_WINDOWS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

impl Compiler<'_> {
    /// The firewall of `api` on `stage`: the API's rules, then the stage's. `None` when
    /// neither has rules (the routes then have no firewall stage at all).
    pub(super) fn firewall(
        &mut self,
        api: &ApiDef,
        field: &str,
        stage: &StageDef,
        stage_field: &str,
    ) -> Option<Arc<Firewall>> {
        let mut rules = Vec::new();
        let mut trusted_proxies = Vec::new();
        let mut inspect_body_bytes = DEFAULT_INSPECT_BODY_BYTES;
        let scope = format!("waf:{}:{}:", api.id.value, stage.name.value);
        for (def, dfield) in [(&api.waf, format!("{field}.waf")), (&stage.waf, format!("{stage_field}.waf"))] {
            let Some(def) = def else { continue };
            if let Some(bytes) = def.value.inspect_body_bytes {
                if (1..=MAX_INSPECT_BODY_BYTES).contains(&bytes) {
                    inspect_body_bytes = bytes;
                } else {
                    self.sink.push(
                        def.referenced,
                        format!("{dfield}.inspect_body_bytes"),
                        format!("inspect 1 to {MAX_INSPECT_BODY_BYTES} bytes of a body"),
                    );
                }
            }
            for (i, c) in def.value.trusted_proxies.iter().enumerate() {
                match c.parse::<Cidr>() {
                    Ok(cidr) => trusted_proxies.push(cidr),
                    Err(e) => self.sink.push(def.referenced, format!("{dfield}.trusted_proxies[{i}]"), e.to_string()),
                }
            }
            for (i, spanned) in def.value.rules.iter().enumerate() {
                let rfield = format!("{dfield}.rules[{i}]");
                if let Some(rule) = self.waf_rule(&api.id.value, &scope, &spanned.value, spanned.referenced, &rfield) {
                    if rules.iter().any(|r: &Rule| r.name == rule.name) {
                        self.sink.push(
                            spanned.referenced,
                            format!("{dfield}.rules[{i}].name"),
                            format!("rule `{}` is declared twice", rule.name),
                        );
                        continue;
                    }
                    rules.push(rule);
                }
            }
        }
        (!rules.is_empty()).then(|| Arc::new(Firewall { rules, trusted_proxies, inspect_body_bytes }))
    }

    fn waf_rule(
        &mut self,
        api: &str,
        scope: &str,
        def: &WafRuleDef,
        at: serde_saphyr::Location,
        field: &str,
    ) -> Option<Rule> {
        let named = !def.name.is_empty()
            && def.name.len() <= 64
            && def.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !named {
            self.sink.push(at, format!("{field}.name"), "a rule name is 1-64 characters of a-z, 0-9, `-` and `_`");
            return None;
        }
        let given = [
            def.ip_in.is_some(),
            def.ip_not_in.is_some(),
            def.size_over.is_some(),
            def.pattern.is_some(),
            def.signatures.is_some(),
            def.rate_over.is_some(),
            def.failed_auth_over.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.sink.push(
                at,
                field,
                "a rule has exactly one of `ip_in`, `ip_not_in`, `size_over`, `pattern`, `signatures`, \
                 `rate_over` and `failed_auth_over`",
            );
            return None;
        }
        let cidrs = |sink: &mut super::ErrorSink, list: &[String], name: &str| -> Option<Vec<Cidr>> {
            let parsed: Result<Vec<Cidr>, _> = list.iter().map(|c| c.parse::<Cidr>()).collect();
            match parsed {
                Ok(v) if !v.is_empty() => Some(v),
                Ok(_) => {
                    sink.push(at, format!("{field}.{name}"), "name at least one CIDR");
                    None
                }
                Err(e) => {
                    sink.push(at, format!("{field}.{name}"), e.to_string());
                    None
                }
            }
        };
        let rate = [
            (&def.rate_over, "rate_over", Counted::Requests),
            (&def.failed_auth_over, "failed_auth_over", Counted::FailedAuthorizations),
        ]
        .into_iter()
        .find_map(|(rate, name, counted)| rate.as_ref().map(|r| (r, name, counted)));
        let condition = if let Some((rate, name, counted)) = rate {
            if def.action == WafAction::Allow {
                self.sink.push(at, format!("{field}.action"), "a rate-based rule blocks or counts; it cannot allow");
                return None;
            }
            let prefix = format!("{scope}{}:", def.name);
            Condition::Rate(self.rate_rule(rate, counted, prefix, at, &format!("{field}.{name}"))?)
        } else if let Some(list) = &def.ip_in {
            Condition::Address { cidrs: cidrs(&mut self.sink, list, "ip_in")?, inside: true }
        } else if let Some(list) = &def.ip_not_in {
            Condition::Address { cidrs: cidrs(&mut self.sink, list, "ip_not_in")?, inside: false }
        } else if let Some(names) = &def.signatures {
            let sets: Option<Vec<Signatures>> = names.iter().map(|n| Signatures::parse(n)).collect();
            match sets.and_then(SignatureSet::new) {
                Some(set) => Condition::Signatures(set),
                _ => {
                    self.sink.push(at, format!("{field}.signatures"), "list `sqli`, `xss` or both");
                    return None;
                }
            }
        } else if let Some(size) = &def.size_over {
            let part = match size.part.as_str() {
                "uri" => SizedPart::Uri,
                "query" => SizedPart::Query,
                "headers" => SizedPart::Headers,
                "body" if size.bytes > MAX_BODY_SIZE_RULE => {
                    self.sink.push(
                        at,
                        format!("{field}.size_over.bytes"),
                        format!("a body size rule tests at most {MAX_BODY_SIZE_RULE} bytes (limits.max_body_bytes caps larger bodies)"),
                    );
                    return None;
                }
                "body" => SizedPart::Body,
                other => {
                    self.sink.push(
                        at,
                        format!("{field}.size_over.part"),
                        format!("`{other}` is not `uri`, `query`, `headers` or `body`"),
                    );
                    return None;
                }
            };
            Condition::Size { part, over: size.bytes }
        } else {
            let p = def.pattern.as_ref()?;
            let pfield = format!("{field}.pattern");
            let name = |sink: &mut super::ErrorSink| -> Option<String> {
                let name = p.name.clone().filter(|n| !n.is_empty());
                if name.is_none() {
                    sink.push(at, format!("{pfield}.name"), format!("a `{}` pattern needs `name`", p.part));
                }
                name
            };
            let part = match p.part.as_str() {
                "path" => PatternPart::Path,
                "query" => PatternPart::Query(name(&mut self.sink)?),
                "cookie" => PatternPart::Cookie(name(&mut self.sink)?),
                "header" => match HeaderName::try_from(name(&mut self.sink)?.as_str()) {
                    Ok(h) => PatternPart::Header(h),
                    Err(_) => {
                        self.sink.push(at, format!("{pfield}.name"), "not a header name");
                        return None;
                    }
                },
                "body" => PatternPart::Body,
                "client_cert" => PatternPart::ClientCert,
                other => {
                    self.sink.push(
                        at,
                        format!("{pfield}.part"),
                        format!("`{other}` is not `path`, `query`, `header`, `cookie`, `body` or `client_cert`"),
                    );
                    return None;
                }
            };
            let pattern = match (&p.regex, &p.contains) {
                (Some(r), None) => match regex::RegexBuilder::new(r).size_limit(1 << 20).build() {
                    Ok(re) => Pattern::Regex(re),
                    Err(e) => {
                        self.sink.push(at, format!("{pfield}.regex"), format!("not a regex: {e}"));
                        return None;
                    }
                },
                (None, Some(literal)) if !literal.is_empty() => Pattern::Contains(literal.clone()),
                _ => {
                    self.sink.push(at, &pfield, "give exactly one of `regex` and `contains`");
                    return None;
                }
            };
            Condition::Pattern { part, pattern }
        };
        let action = match def.action {
            WafAction::Block => Action::Block,
            WafAction::Allow => Action::Allow,
            WafAction::Count => Action::Count,
        };
        let matches = metrics::counter!(
            "meridian_waf_matches_total",
            "api" => api.to_string(),
            "rule" => def.name.clone(),
            "action" => action.name()
        );
        Some(Rule { name: Arc::from(def.name.as_str()), action, condition, matches })
    }

    fn rate_rule(
        &mut self,
        def: &WafRateDef,
        counted: Counted,
        scope_prefix: String,
        at: serde_saphyr::Location,
        field: &str,
    ) -> Option<RateRule> {
        let window = self.duration(&def.window, &format!("{field}.window"));
        let block_for = self.duration(&def.block_for, &format!("{field}.block_for"));
        let (window, block_for) = (window?, block_for?);
        let (shortest, longest) = RATE_WINDOWS;
        if window < shortest || window > longest || window.subsec_nanos() != 0 {
            self.sink.push(def.window.referenced, format!("{field}.window"), "a window is whole seconds from 1s to 1h");
            return None;
        }
        if block_for > MAX_BLOCK {
            self.sink.push(def.block_for.referenced, format!("{field}.block_for"), "block for at most 24h");
            return None;
        }
        if def.count == 0 {
            self.sink.push(at, format!("{field}.count"), "allow at least 1 in the window");
            return None;
        }
        let key = match def.key.as_deref() {
            None | Some("ip") => RateKey::ClientIp,
            Some(other) => match other.strip_prefix("header:").map(HeaderName::try_from) {
                Some(Ok(name)) => RateKey::Header(name),
                _ => {
                    self.sink.push(at, format!("{field}.key"), format!("`{other}` is not `ip` or `header:NAME`"));
                    return None;
                }
            },
        };
        let seconds = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
        Some(RateRule { key, counted, limit: def.count, window: Period::Seconds(seconds), block_for, scope_prefix })
    }
}
