//! The built-in signature sets a firewall rule can enable: `sqli` (SQL injection) and `xss`
//! (cross-site scripting).
//!
//! Each set is a handful of case-insensitive patterns for the shapes attacks take
//! (tautologies, `UNION SELECT`, stacked queries, timing functions, schema probes; script
//! tags, event handlers, `javascript:` URLs, DOM sinks), checked against request values after
//! percent-decoding them up to twice (double encoding is a classic evasion). It is a coarse
//! net, not a parser: its detection and false-positive rates on the labelled corpus in
//! `node/tests/data/waf-corpus.tsv` are measured by `node/tests/waf_signatures.rs` and written
//! in docs/SECURITY.md. Try a rule with `action: count` before blocking with it.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

/// A built-in signature set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    Sqli,
    Xss,
}

const SQLI: &[&str] = &[
    // A quote closing a string, then a boolean tautology: ' or 1=1, " OR 'a'='a
    r#"['"`]\s*\)?\s*(or|and|xor|\|\||&&)\s+['"`(]?\s*[\w'"`]+\s*['"`]?\s*(=|<|>|<=|>=|<>|!=|\blike\b|\bis\b)"#,
    // A bare numeric tautology after a value: 1 or 1=1, id=5 and 2>1
    r"\b(or|and)\s+\d+\s*(=|<|>|<>|!=)\s*\d+",
    r"\bunion\b(\s+all|\s+distinct)?[\s(/*]+select\b",
    // Stacked queries
    r";\s*(drop|delete|insert|update|alter|create|truncate|exec|execute|shutdown|declare)\b",
    // Timing and side channels
    r"\b(sleep|benchmark|pg_sleep|dbms_pipe\.receive_message)\s*\(",
    r"\bwaitfor\s+delay\b",
    // Schema probing and file access
    r"\b(information_schema|sysobjects|syscolumns|pg_catalog|sqlite_master|mysql\.user)\b",
    r"\b(extractvalue|updatexml|load_file|xp_cmdshell)\s*\(",
    r"\binto\s+(out|dump)file\b",
    // A quote, then the rest commented out: admin'--, ' #
    r#"['"`]\s*(--|#|/\*)"#,
    r"\bselect\b[\s\S]{1,60}\bfrom\b[\s\S]{0,60}(\bwhere\b|--|#|/\*|;)",
    r"\b(char|concat|group_concat|chr)\s*\(\s*\d+\s*(,\s*\d+\s*)+\)",
];

const XSS: &[&str] = &[
    r"<\s*/?\s*script\b",
    r"\bon(error|load|click|dblclick|mouse\w+|focus\w*|blur|submit|change|key\w+|input|toggle|animation\w+|transition\w+|pointer\w+|begin|end|pageshow|hashchange|message|resize|scroll|wheel)\s*=",
    r"\b(javascript|vbscript|livescript)\s*:",
    r"<\s*(iframe|frame|object|embed|applet|base|meta|link|svg|math|form|isindex|xss)\b",
    r"\bdocument\s*\.\s*(cookie|domain|write|location)\b",
    r"\bwindow\s*\.\s*(location|open|name)\b",
    r"\b(alert|prompt|confirm|eval|settimeout|setinterval)\s*(\(|`)",
    r"\bexpression\s*\(",
    r"\bdata\s*:\s*text/html",
    r"\bsrcdoc\s*=",
];

fn compiled(set: Signatures) -> &'static RegexSet {
    static SQLI_SET: OnceLock<RegexSet> = OnceLock::new();
    static XSS_SET: OnceLock<RegexSet> = OnceLock::new();
    let (cell, patterns) = match set {
        Signatures::Sqli => (&SQLI_SET, SQLI),
        Signatures::Xss => (&XSS_SET, XSS),
    };
    cell.get_or_init(|| {
        let case_insensitive: Vec<String> = patterns.iter().map(|p| format!("(?i){p}")).collect();
        // The patterns are constants of this file, checked by its tests.
        RegexSet::new(case_insensitive).unwrap_or_else(|_| RegexSet::empty())
    })
}

impl Signatures {
    pub fn parse(name: &str) -> Option<Signatures> {
        match name {
            "sqli" => Some(Signatures::Sqli),
            "xss" => Some(Signatures::Xss),
            _ => None,
        }
    }

    /// Whether `value`, as sent or percent-decoded once or twice, looks like an attack.
    pub fn matches(self, value: &str) -> bool {
        let set = compiled(self);
        if set.is_match(value) {
            return true;
        }
        // Nothing to decode (`%XX` or `+`): nothing more to check, and nothing to allocate.
        if !value.contains(['%', '+']) {
            return false;
        }
        let once = crate::query::percent_decode(value);
        if once != value && set.is_match(&once) {
            return true;
        }
        let twice = crate::query::percent_decode(&once);
        twice != once && set.is_match(&twice)
    }
}

/// Checks every pattern compiles (the set falls back to matching nothing otherwise).
pub fn patterns_compile() -> bool {
    SQLI.iter().chain(XSS).all(|p| Regex::new(&format!("(?i){p}")).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert!(patterns_compile());
        assert_eq!(compiled(Signatures::Sqli).len(), SQLI.len());
        assert_eq!(compiled(Signatures::Xss).len(), XSS.len());
    }

    #[test]
    fn double_encoding_does_not_hide_an_attack() {
        assert!(Signatures::Xss.matches("%253Cscript%253Ealert(1)"));
        assert!(Signatures::Sqli.matches("1%27%20OR%20%271%27%3D%271"));
        assert!(!Signatures::Sqli.matches("O'Brien"));
    }
}
