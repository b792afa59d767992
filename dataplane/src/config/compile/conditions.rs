//! Compiling a route's `match`: header and query conditions, each with exactly one test
//! (`equals`, `regex`, `present: true`), header names and regular expressions checked with
//! the route's line.

use http::HeaderName;

use super::super::model::*;
use super::Compiler;
use crate::router::RouteConditions;
use crate::router::conditions::{Condition, Subject, Test};

/// A regular expression's compiled size limit: a condition is evaluated on every request.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

impl Compiler<'_> {
    /// The route's conditions (none without `match`); `Err` when one is invalid (recorded).
    pub(super) fn route_conditions(&mut self, route: &RouteDef, field: &str) -> Result<RouteConditions, ()> {
        let Some(def) = &route.conditions else { return Ok(RouteConditions::default()) };
        let at = def.referenced;
        let mut conditions = Vec::new();
        let mut ok = true;
        if def.value.headers.is_empty() && def.value.query.is_empty() {
            self.sink.push(at, format!("{field}.match"), "name at least one header or query condition");
            return Err(());
        }
        let parts = def.value.headers.iter().map(|c| (c, true)).chain(def.value.query.iter().map(|c| (c, false)));
        for (i, (c, header)) in parts.enumerate() {
            let list = if header { "headers" } else { "query" };
            let index = if header { i } else { i - def.value.headers.len() };
            let cfield = format!("{field}.match.{list}[{index}]");
            let subject = if header {
                match HeaderName::try_from(c.name.as_str()) {
                    Ok(name) => Some(Subject::Header(name)),
                    Err(_) => {
                        self.sink.push(at, format!("{cfield}.name"), format!("`{}` is not a header name", c.name));
                        None
                    }
                }
            } else if c.name.is_empty() {
                self.sink.push(at, format!("{cfield}.name"), "name the query parameter");
                None
            } else {
                Some(Subject::Query(c.name.clone()))
            };
            let test = match (&c.equals, &c.regex, c.present) {
                (Some(value), None, false) => Some(Test::Equals(value.clone())),
                (None, Some(pattern), false) => {
                    match regex::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build() {
                        Ok(regex) => Some(Test::Matches(regex)),
                        Err(e) => {
                            self.sink.push(at, format!("{cfield}.regex"), format!("not a regular expression: {e}"));
                            None
                        }
                    }
                }
                (None, None, true) => Some(Test::Present),
                _ => {
                    self.sink.push(at, cfield.clone(), "give exactly one of `equals`, `regex` or `present: true`");
                    None
                }
            };
            match (subject, test) {
                (Some(subject), Some(test)) => conditions.push(Condition { subject, test }),
                _ => ok = false,
            }
        }
        if ok { Ok(RouteConditions::new(conditions)) } else { Err(()) }
    }
}
