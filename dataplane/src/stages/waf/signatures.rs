//! The built-in signature sets a firewall rule can enable: `sqli` (SQL injection) and `xss`
//! (cross-site scripting).
//!
//! Each set is a handful of case-insensitive patterns for the shapes attacks take
//! (tautologies, `UNION SELECT`, stacked queries, timing functions, schema probes; script
//! tags, event handlers, `javascript:` URLs, DOM sinks), checked against request values after
//! percent-decoding them up to twice (double encoding is a classic evasion). It is a coarse
//! net, not a parser: its detection and false-positive rates on the labelled corpus in
//! `dataplane/tests/data/waf-corpus.tsv` are measured by `dataplane/tests/waf_signatures.rs` and written
//! in docs/SECURITY.md. Try a rule with `action: count` before blocking with it.

use std::sync::OnceLock;

use regex::bytes::Regex;

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

/// The signature sets one rule enables, compiled into one expression so that a value is
/// scanned once whatever the number of sets.
#[derive(Debug, Clone)]
pub struct SignatureSet {
    sets: Vec<Signatures>,
    /// `None` only if the constant patterns stopped compiling (the tests check they do).
    expression: Option<&'static Regex>,
}

/// The patterns of `sets` as one ASCII case-insensitive alternation over bytes (a request
/// value need not be UTF-8, and ASCII word boundaries keep the scan in the fast DFA).
fn alternation(sets: &[Signatures]) -> String {
    let patterns = sets.iter().flat_map(|s| s.patterns().iter());
    let alternatives: Vec<String> = patterns.map(|p| format!("(?:{p})")).collect();
    format!("(?i-u){}", alternatives.join("|"))
}

impl Signatures {
    pub fn parse(name: &str) -> Option<Signatures> {
        match name {
            "sqli" => Some(Signatures::Sqli),
            "xss" => Some(Signatures::Xss),
            _ => None,
        }
    }

    fn patterns(self) -> &'static [&'static str] {
        match self {
            Signatures::Sqli => SQLI,
            Signatures::Xss => XSS,
        }
    }
}

impl SignatureSet {
    /// The sets named in a rule (in any order, repeats ignored); `None` for no set.
    pub fn new(mut sets: Vec<Signatures>) -> Option<SignatureSet> {
        sets.sort_by_key(|s| *s as u8);
        sets.dedup();
        static SQLI_ONLY: OnceLock<Option<Regex>> = OnceLock::new();
        static XSS_ONLY: OnceLock<Option<Regex>> = OnceLock::new();
        static BOTH: OnceLock<Option<Regex>> = OnceLock::new();
        let cell = match sets.as_slice() {
            [Signatures::Sqli] => &SQLI_ONLY,
            [Signatures::Xss] => &XSS_ONLY,
            [Signatures::Sqli, Signatures::Xss] => &BOTH,
            _ => return None,
        };
        let expression = cell.get_or_init(|| Regex::new(&alternation(&sets)).ok()).as_ref();
        Some(SignatureSet { sets, expression })
    }

    /// The sets, as named in the configuration.
    pub fn sets(&self) -> &[Signatures] {
        &self.sets
    }

    /// Whether `value`, as sent or percent-decoded once or twice, looks like an attack.
    pub fn matches(&self, value: &[u8]) -> bool {
        let Some(expression) = self.expression else { return false };
        if expression.is_match(value) {
            return true;
        }
        // Nothing to decode (`%XX` or `+`): nothing more to check, and nothing to allocate.
        if !value.iter().any(|b| matches!(b, b'%' | b'+')) {
            return false;
        }
        let once = crate::query::percent_decode_bytes(value);
        if once != value && expression.is_match(&once) {
            return true;
        }
        let twice = crate::query::percent_decode_bytes(&once);
        twice != once && expression.is_match(&twice)
    }
}

/// Checks every pattern compiles, alone and in the combined sets.
pub fn patterns_compile() -> bool {
    let alone = SQLI.iter().chain(XSS).all(|p| Regex::new(&format!("(?i-u){p}")).is_ok());
    let combined = [vec![Signatures::Sqli], vec![Signatures::Xss], vec![Signatures::Sqli, Signatures::Xss]];
    alone && combined.iter().all(|sets| Regex::new(&alternation(sets)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(sets: &[Signatures]) -> SignatureSet {
        SignatureSet::new(sets.to_vec()).unwrap()
    }

    #[test]
    fn every_pattern_compiles() {
        assert!(patterns_compile());
        assert!(SignatureSet::new(vec![]).is_none());
    }

    #[test]
    fn double_encoding_does_not_hide_an_attack() {
        assert!(set(&[Signatures::Xss]).matches(b"%253Cscript%253Ealert(1)"));
        assert!(set(&[Signatures::Sqli]).matches(b"1%27%20OR%20%271%27%3D%271"));
        assert!(!set(&[Signatures::Sqli]).matches(b"O'Brien"));
    }

    #[test]
    fn a_rule_with_both_sets_catches_what_either_catches() {
        let both = set(&[Signatures::Xss, Signatures::Sqli, Signatures::Xss]);
        assert_eq!(both.sets(), [Signatures::Sqli, Signatures::Xss]);
        assert!(both.matches(b"<script>alert(1)</script>"));
        assert!(both.matches(b"' or 1=1 --"));
        assert!(!set(&[Signatures::Sqli]).matches(b"<script>x</script>"));
        assert!(!set(&[Signatures::Xss]).matches(b"1 union select password from users"));
        assert!(!both.matches(b"a perfectly ordinary sentence, selected from the docs"));
    }

    #[test]
    fn values_that_are_not_utf8_are_scanned() {
        assert!(set(&[Signatures::Xss]).matches(b"\xff\xfe<script>"));
        assert!(!set(&[Signatures::Xss]).matches(b"\xff\xfe\x00plain"));
    }
}
