//! The firewall's SQL-injection and XSS signature sets against the labelled corpus in
//! `tests/data/waf-corpus.tsv`: every attack of a set should be caught by that set, and no
//! benign value by either. Prints the detection and false-positive rates (docs/SECURITY.md
//! has the figures) and fails below 90 % detection or above 3 % false positives.

use meridian_dataplane::stages::waf::{SignatureSet, Signatures};

#[test]
fn detection_and_false_positives_on_the_labelled_corpus() {
    let corpus = include_str!("data/waf-corpus.tsv");
    let (mut attacks, mut caught, mut benign, mut false_positives) = (0, 0, 0, 0);
    let mut missed = Vec::new();
    let mut wrongly = Vec::new();
    let both = SignatureSet::new(vec![Signatures::Sqli, Signatures::Xss]).expect("two sets");
    for line in corpus.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut fields = line.splitn(3, '\t');
        let (Some(label), Some(set), Some(value)) = (fields.next(), fields.next(), fields.next()) else {
            panic!("a corpus line is `label<TAB>set<TAB>value`: {line}");
        };
        match label {
            "attack" => {
                attacks += 1;
                let set = Signatures::parse(set).and_then(|s| SignatureSet::new(vec![s])).expect("sqli or xss");
                if set.matches(value.as_bytes()) {
                    caught += 1;
                } else {
                    missed.push(value);
                }
            }
            "benign" => {
                benign += 1;
                if both.matches(value.as_bytes()) {
                    false_positives += 1;
                    wrongly.push(value);
                }
            }
            other => panic!("unknown label {other}"),
        }
    }
    let detection = caught as f64 / attacks as f64;
    let fp_rate = false_positives as f64 / benign as f64;
    println!(
        "signatures: {caught}/{attacks} attacks caught ({:.1} %), {false_positives}/{benign} benign values flagged ({:.1} %)",
        detection * 100.0,
        fp_rate * 100.0
    );
    println!("missed: {missed:?}\nflagged: {wrongly:?}");
    assert!(attacks >= 60 && benign >= 60, "the corpus is too small to say anything");
    assert!(detection >= 0.90, "detection {detection:.3}; missed {missed:?}");
    assert!(fp_rate <= 0.03, "false positives {fp_rate:.3}: {wrongly:?}");
}
