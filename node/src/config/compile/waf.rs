//! Compiling firewall rules: each rule's name, action and single condition (addresses,
//! sizes, patterns), checked with its line; the API's rules come before a stage's.

use std::sync::Arc;

use http::HeaderName;
use meridian_dns::net::Cidr;

use super::super::model::*;
use super::Compiler;
use crate::stages::waf::{Action, Condition, Firewall, Pattern, PatternPart, Rule, Signatures, SizedPart};

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
        for (def, dfield) in [(&api.waf, format!("{field}.waf")), (&stage.waf, format!("{stage_field}.waf"))] {
            let Some(def) = def else { continue };
            for (i, c) in def.value.trusted_proxies.iter().enumerate() {
                match c.parse::<Cidr>() {
                    Ok(cidr) => trusted_proxies.push(cidr),
                    Err(e) => self.sink.push(def.referenced, format!("{dfield}.trusted_proxies[{i}]"), e.to_string()),
                }
            }
            for (i, spanned) in def.value.rules.iter().enumerate() {
                let rfield = format!("{dfield}.rules[{i}]");
                if let Some(rule) = self.waf_rule(&api.id.value, &spanned.value, spanned.referenced, &rfield) {
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
        (!rules.is_empty()).then(|| Arc::new(Firewall { rules, trusted_proxies }))
    }

    fn waf_rule(&mut self, api: &str, def: &WafRuleDef, at: serde_saphyr::Location, field: &str) -> Option<Rule> {
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
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.sink.push(
                at,
                field,
                "a rule has exactly one of `ip_in`, `ip_not_in`, `size_over`, `pattern` and `signatures`",
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
        let condition = if let Some(list) = &def.ip_in {
            Condition::Address { cidrs: cidrs(&mut self.sink, list, "ip_in")?, inside: true }
        } else if let Some(list) = &def.ip_not_in {
            Condition::Address { cidrs: cidrs(&mut self.sink, list, "ip_not_in")?, inside: false }
        } else if let Some(names) = &def.signatures {
            let sets: Option<Vec<Signatures>> = names.iter().map(|n| Signatures::parse(n)).collect();
            match sets {
                Some(sets) if !sets.is_empty() => Condition::Signatures(sets),
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
                other => {
                    self.sink.push(
                        at,
                        format!("{field}.size_over.part"),
                        format!("`{other}` is not `uri`, `query` or `headers`"),
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
                "body" => {
                    self.sink.push(
                        at,
                        format!("{pfield}.part"),
                        "body patterns are not supported yet (docs/CONFIG.md, \"Firewall\")",
                    );
                    return None;
                }
                other => {
                    self.sink.push(
                        at,
                        format!("{pfield}.part"),
                        format!("`{other}` is not `path`, `query`, `header` or `cookie`"),
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
        let action_name = match action {
            Action::Block => "block",
            Action::Allow => "allow",
            Action::Count => "count",
        };
        let matches = metrics::counter!(
            "meridian_waf_matches_total",
            "api" => api.to_string(),
            "rule" => def.name.clone(),
            "action" => action_name
        );
        Some(Rule { name: Arc::from(def.name.as_str()), action, condition, matches })
    }
}
