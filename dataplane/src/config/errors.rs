//! Configuration errors that name the field and the line.

use std::fmt;

use serde_saphyr::Location;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, or 0 when the value came from a default or no line is known.
    pub line: u64,
    pub column: u64,
    /// Dotted path of the offending field, e.g. `apis[0].routes[2].route`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { line: location.line(), column: location.column(), field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}:{}: ", self.line, self.column)?;
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file the errors are in, for display.
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(f, "{}: {n} error{}", self.source_name, if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {}: {e}", self.source_name)?;
        }
        Ok(())
    }
}

/// Collects errors while walking a configuration, keeping field paths readable.
#[derive(Debug, Default)]
pub struct ErrorSink {
    errors: Vec<ConfigError>,
}

impl ErrorSink {
    pub fn push(&mut self, location: Location, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::at(location, field, message));
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn into_errors(mut self, source_name: &str) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        // A route checked once per stage may report the same problem more than once.
        self.errors.dedup();
        ConfigErrors { source_name: source_name.to_string(), errors: self.errors }
    }
}
