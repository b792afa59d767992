//! How a command prints what the admin API answered: a table, a few `field: value` lines
//! or one sentence for people (the default), or the answer itself as JSON or YAML for
//! scripts (`--output json|yaml`). The documents are the admin API's, whose field names are
//! stable and described in its OpenAPI document (`GET /v1/openapi.json`).
//!
//! A refusal prints one line on stderr (the node's message, which says what was wrong) and
//! the command exits 1; a definition's errors follow, one per line with its location.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

/// The form of a command's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and sentences for people.
    #[default]
    Text,
    /// The admin API's JSON document.
    Json,
    /// The same document as YAML.
    Yaml,
}

impl Output {
    /// Prints a successful answer: the document itself, or `text` made of it.
    pub fn print(self, value: &Value, text: impl FnOnce(&Value) -> String) -> ExitCode {
        let printed = match self {
            Output::Text => text(value),
            Output::Json => serde_json::to_string_pretty(value).map(|t| t + "\n").unwrap_or_default(),
            Output::Yaml => serde_saphyr::to_string(value).unwrap_or_default(),
        };
        print!("{printed}");
        ExitCode::SUCCESS
    }

    /// Prints the answer to a write: `done` (what happened) with the revision it made, or
    /// that nothing changed.
    pub fn written(self, value: &Value, done: &str) -> ExitCode {
        self.print(value, |v| {
            let revision = v["revision"].as_u64().map_or(String::new(), |r| format!(" (revision {r})"));
            if v["changed"] == Value::Bool(false) {
                format!("nothing to change: {done} already{revision}\n")
            } else {
                format!("{done}{revision}\n")
            }
        })
    }
}

/// Prints a refusal on stderr: the node's message, then a definition's errors if any.
pub fn refused(status: u16, value: &Value) -> ExitCode {
    let message = match value["message"].as_str() {
        Some(m) => m.to_string(),
        None => match value {
            Value::String(s) if !s.is_empty() => s.clone(),
            _ => format!("the node answered {status}"),
        },
    };
    eprintln!("meridian: {message}");
    for e in value["errors"].as_array().into_iter().flatten() {
        let line = e["line"].as_u64().unwrap_or(0);
        let location = if line > 0 { format!("line {line}:{}: ", e["column"]) } else { String::new() };
        let field = e["field"].as_str().filter(|f| !f.is_empty()).map_or(String::new(), |f| format!("{f}: "));
        eprintln!("  {location}{field}{}", e["message"].as_str().unwrap_or(""));
    }
    ExitCode::from(1)
}

/// A table with a header row and left-aligned columns, two spaces apart.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table { rows: vec![headers.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, or `empty` when it has no rows.
    pub fn render(&self, empty: &str) -> String {
        if self.rows.len() == 1 {
            return format!("{empty}\n");
        }
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a table cell: strings unquoted, `-` for nothing, lists joined by `,`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "-".into(),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `name: value` lines for the fields of an object, in the order given.
pub fn fields(v: &Value, names: &[(&str, &str)]) -> String {
    let width = names.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (label, field) in names {
        let _ = writeln!(out, "{:<width$} {}", format!("{label}:"), cell(&v[*field]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_say_when_empty() {
        let mut t = Table::new(&["NAME", "WEIGHT", "NETWORKS"]);
        t.row(vec!["eu-west".into(), "1".into(), "10.0.0.0/8".into()]);
        t.row(vec!["us".into(), "-".into(), "-".into()]);
        assert_eq!(t.render("none"), "NAME     WEIGHT  NETWORKS\neu-west  1       10.0.0.0/8\nus       -       -\n");
        assert_eq!(Table::new(&["A"]).render("no regions"), "no regions\n");
    }

    #[test]
    fn cells_read_like_words() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("x")), "x");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!({"k": "v"})), "k=v");
        assert_eq!(cell(&json!(3)), "3");
    }
}
