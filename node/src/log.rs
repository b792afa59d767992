//! The node's own log (not the access log): `tracing` events on standard error, filtered by
//! `MERIDIAN_LOG`, in colour only for a terminal without `NO_COLOR`, and, once the node
//! knows who it is, labelled on every line (`[eu-west/2]`), so that several nodes sharing a
//! terminal (the docs' walkthroughs, a test run) can be told apart.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static LABEL: OnceLock<String> = OnceLock::new();

/// Names this process's node in every later log line (the first label set stays).
pub fn set_label(label: String) {
    let _ = LABEL.set(label);
}

/// Whether to write colour codes: only to a terminal, and never with `NO_COLOR` set.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The default format with the node's label in front.
struct Labelled {
    inner: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for Labelled
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if let Some(label) = LABEL.get() {
            write!(writer, "[{label}] ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the log for this process.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colours())
        .with_env_filter(filter)
        .fmt_fields(DefaultFields::new())
        .event_format(Labelled { inner: Format::default().with_ansi(colours()) })
        .init();
}
