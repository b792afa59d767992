//! The access log: one line per request, written in batches off the request path.
//!
//! A request formats its line into a thread-local scratch buffer and appends it to a shared
//! buffer under a short lock; a writer thread swaps that buffer out and writes it in one
//! call. When the disk falls behind and the buffer reaches its cap, lines are dropped and
//! counted in `meridian_access_log_dropped_total` rather than stalling traffic.
//!
//! The default line is one JSON object. A stage may set a template instead, e.g.
//! `"$client $method $path $status $bytes $latency_ms"`.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{Method, Version};

use super::time::{push_ascii, three_digits, write_rfc3339_millis};
use super::trace::TraceId;

/// What one access-log line says.
#[derive(Debug)]
pub struct LogEntry<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub protocol: Version,
    pub route: &'a str,
    pub api: &'a str,
    pub stage: &'a str,
    pub deployment: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub latency: Duration,
    pub integration_latency: Option<Duration>,
    /// Why the gateway refused the request, when the client was told less (e.g. which of
    /// the key checks failed).
    pub reason: Option<&'a str>,
    /// The subject of the client's certificate (mutual TLS).
    pub client_cert: Option<&'a str>,
    /// The request's trace id, when its stage traces requests.
    pub trace_id: Option<TraceId>,
}

/// The fields a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Time,
    RequestId,
    Client,
    Method,
    Path,
    Protocol,
    Route,
    Api,
    Stage,
    Deployment,
    Status,
    Bytes,
    LatencyMs,
    IntegrationLatencyMs,
    Reason,
    TraceId,
}

const FIELDS: &[(&str, Field)] = &[
    ("time", Field::Time),
    ("request_id", Field::RequestId),
    ("client", Field::Client),
    ("method", Field::Method),
    ("path", Field::Path),
    ("protocol", Field::Protocol),
    ("route", Field::Route),
    ("api", Field::Api),
    ("stage", Field::Stage),
    ("deployment", Field::Deployment),
    ("status", Field::Status),
    ("bytes", Field::Bytes),
    ("latency_ms", Field::LatencyMs),
    ("integration_latency_ms", Field::IntegrationLatencyMs),
    ("reason", Field::Reason),
    ("trace_id", Field::TraceId),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A compiled access-log template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTemplate {
    pieces: Vec<Piece>,
}

impl LogTemplate {
    /// Compiles `$name` placeholders; an unknown name is an error listing the known ones.
    ///
    /// ```
    /// use meridian_dataplane::observe::access_log::LogTemplate;
    /// assert!(LogTemplate::parse("$request_id $status").is_ok());
    /// assert!(LogTemplate::parse("$nope").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<LogTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            if dollar > 0 {
                pieces.push(Piece::Text(rest[..dollar].to_string()));
            }
            let after = &rest[dollar + 1..];
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            let name = &after[..end];
            let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                return Err(format!("unknown access-log field `${name}` (known: {})", known.join(", ")));
            };
            pieces.push(Piece::Field(*field));
            rest = &after[end..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(LogTemplate { pieces })
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// `d` in milliseconds with three decimals, from its whole microseconds: integers only, no
/// floating-point formatting on every request.
fn write_millis(out: &mut String, d: Duration) {
    // In 64 bits: `as_micros` is a u128, and dividing one calls a library routine.
    write_integer(out, d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_millis())));
    let [a, b, c] = three_digits(d.subsec_micros() % 1000);
    push_ascii(out, &[b'.', a, b, c]);
}

/// An IPv4 address octet by octet into a buffer, appended in one copy (every line has one,
/// and the formatter is slow for it); IPv6 as the standard library writes it.
fn write_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                // Digit by digit: a copy of a slice whose length varies is a `memcpy` call.
                let [hundreds, tens, ones] = three_digits(u32::from(octet));
                if octet >= 100 {
                    text[len] = hundreds;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = tens;
                    len += 1;
                }
                text[len] = ones;
                len += 1;
            }
            push_ascii(out, &text[..len]);
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_integer(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn write_field(out: &mut String, entry: &LogEntry<'_>, field: Field) {
    match field {
        Field::Time => write_rfc3339_millis(entry.time, out),
        Field::RequestId => out.push_str(entry.request_id),
        Field::Client => write_ip(out, entry.client),
        Field::Method => out.push_str(entry.method.as_str()),
        Field::Path => out.push_str(entry.path),
        Field::Protocol => out.push_str(protocol_name(entry.protocol)),
        Field::Route => out.push_str(entry.route),
        Field::Api => out.push_str(entry.api),
        Field::Stage => out.push_str(entry.stage),
        Field::Deployment => out.push_str(entry.deployment),
        Field::Status => write_integer(out, entry.status),
        Field::Bytes => write_integer(out, entry.bytes),
        Field::LatencyMs => write_millis(out, entry.latency),
        Field::IntegrationLatencyMs => match entry.integration_latency {
            Some(d) => write_millis(out, d),
            None => out.push('-'),
        },
        Field::Reason => out.push_str(entry.reason.unwrap_or("-")),
        Field::TraceId => match entry.trace_id {
            Some(id) => out.push_str(std::str::from_utf8(&id.hex()).unwrap_or_default()),
            None => out.push('-'),
        },
    }
}

/// Appends `s` as a JSON string literal: runs without a byte to escape are copied whole,
/// and found eight bytes at a time (the short strings of a log line are mostly one or two
/// words, so the last few bytes are checked as a padded word too).
pub fn write_json_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let word = match rest.first_chunk::<8>() {
            Some(word) => *word,
            // The last few bytes, padded with a letter (which needs no escape).
            None => {
                let mut padded = [b'a'; 8];
                padded[..rest.len()].copy_from_slice(rest);
                padded
            }
        };
        if !needs_escape(u64::from_le_bytes(word)) {
            i += rest.len().min(8);
            continue;
        }
        let byte = bytes[i];
        i += 1;
        let escape = match byte {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            // Other controls: `\u00XX`.
            0..0x20 => None,
            _ => continue,
        };
        // `byte` is ASCII, so both ends of the run are character boundaries.
        out.push_str(&s[start..i - 1]);
        match escape {
            Some(escape) => out.push_str(escape),
            None => {
                let _ = write!(out, "\\u{byte:04x}");
            }
        }
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any of the eight bytes of `word` must be escaped in a JSON string: a control
/// (below 0x20), `"` or `\`. Exact for the word as a whole (the classic "has a byte less
/// than" and "has a zero byte" tests), not for which byte it is.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    below(word, 0x20) | below(quote, 1) | below(backslash, 1) != 0
}

/// Formats `entry` as one line (with its newline) into `out`.
pub fn format_line(out: &mut String, entry: &LogEntry<'_>, template: Option<&LogTemplate>) {
    match template {
        Some(t) => {
            for piece in &t.pieces {
                match piece {
                    Piece::Text(s) => out.push_str(s),
                    Piece::Field(f) => write_field(out, entry, *f),
                }
            }
        }
        None => {
            out.push_str("{\"time\":\"");
            write_rfc3339_millis(entry.time, out);
            out.push_str("\",\"request_id\":");
            write_json_string(out, entry.request_id);
            out.push_str(",\"client\":\"");
            write_ip(out, entry.client);
            out.push_str("\",\"method\":");
            write_json_string(out, entry.method.as_str());
            out.push_str(",\"path\":");
            write_json_string(out, entry.path);
            out.push_str(",\"protocol\":\"");
            out.push_str(protocol_name(entry.protocol));
            out.push_str("\",\"route\":");
            write_json_string(out, entry.route);
            out.push_str(",\"api\":");
            write_json_string(out, entry.api);
            out.push_str(",\"stage\":");
            write_json_string(out, entry.stage);
            if !entry.deployment.is_empty() {
                out.push_str(",\"deployment\":");
                write_json_string(out, entry.deployment);
            }
            out.push_str(",\"status\":");
            write_integer(out, entry.status);
            out.push_str(",\"bytes\":");
            write_integer(out, entry.bytes);
            out.push_str(",\"latency_ms\":");
            write_millis(out, entry.latency);
            if let Some(d) = entry.integration_latency {
                out.push_str(",\"integration_latency_ms\":");
                write_millis(out, d);
            }
            if let Some(reason) = entry.reason {
                out.push_str(",\"reason\":");
                write_json_string(out, reason);
            }
            if let Some(subject) = entry.client_cert {
                out.push_str(",\"client_cert\":");
                write_json_string(out, subject);
            }
            if let Some(trace_id) = entry.trace_id {
                out.push_str(",\"trace_id\":\"");
                out.push_str(std::str::from_utf8(&trace_id.hex()).unwrap_or_default());
                out.push('"');
            }
            out.push('}');
        }
    }
    out.push('\n');
}

/// Where lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    Stdout,
    File(PathBuf),
    Off,
}

const FLUSH_AT: usize = 64 * 1024;
const CAP: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    closing: bool,
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<Buffer>,
    ready: Condvar,
}

/// Handle to the access log; cheap to clone, shared by every connection.
#[derive(Debug, Clone)]
pub struct AccessLog {
    writer: Option<Arc<WriterThread>>,
}

#[derive(Debug)]
struct WriterThread {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Ok(mut b) = self.shared.buffer.lock() {
            b.closing = true;
        }
        self.shared.ready.notify_all();
        if let Ok(mut h) = self.handle.lock()
            && let Some(h) = h.take()
        {
            let _ = h.join();
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl AccessLog {
    /// Opens the sink and starts the writer thread.
    pub fn open(sink: LogSink) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match &sink {
            LogSink::Off => return Ok(AccessLog::off()),
            LogSink::Stdout => Box::new(std::io::stdout()),
            LogSink::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let shared = Arc::new(Shared { buffer: Mutex::new(Buffer::default()), ready: Condvar::new() });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut spare = Vec::with_capacity(FLUSH_AT * 2);
            loop {
                let closing = {
                    let Ok(mut b) = thread_shared.buffer.lock() else {
                        return;
                    };
                    if b.bytes.is_empty() && !b.closing {
                        b = match thread_shared.ready.wait_timeout(b, Duration::from_millis(100)) {
                            Ok((b, _)) => b,
                            Err(_) => return,
                        };
                    }
                    std::mem::swap(&mut b.bytes, &mut spare);
                    b.closing
                };
                if !spare.is_empty() {
                    if let Err(e) = out.write_all(&spare).and_then(|_| out.flush()) {
                        tracing::warn!(error = %e, "access log write failed");
                        metrics::counter!("meridian_access_log_write_errors_total").increment(1);
                    }
                    spare.clear();
                }
                if closing {
                    return;
                }
            }
        })?;
        let writer = WriterThread { shared, handle: Mutex::new(Some(handle)) };
        Ok(AccessLog { writer: Some(Arc::new(writer)) })
    }

    /// A log that writes nothing.
    pub fn off() -> AccessLog {
        AccessLog { writer: None }
    }

    /// Formats and queues one line; never blocks on I/O.
    pub fn record(&self, entry: &LogEntry<'_>, template: Option<&LogTemplate>) {
        let Some(writer) = &self.writer else { return };
        let shared = &writer.shared;
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            format_line(line, entry, template);
            let Ok(mut b) = shared.buffer.lock() else {
                return;
            };
            if b.bytes.len() + line.len() > CAP {
                drop(b);
                metrics::counter!("meridian_access_log_dropped_total").increment(1);
                return;
            }
            let was_below = b.bytes.len() < FLUSH_AT;
            b.bytes.extend_from_slice(line.as_bytes());
            let now_above = b.bytes.len() >= FLUSH_AT;
            drop(b);
            if was_below && now_above {
                shared.ready.notify_one();
            }
        });
    }

    /// Writes out everything queued so far and stops the writer (used at shutdown).
    pub fn close(&mut self) {
        self.writer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Characters with every kind of handling: escaped, `\u`-escaped, multi-byte, plain.
    fn awkward_char() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            (0u8..0x20).prop_map(char::from),
            Just('"'),
            Just('\\'),
            Just('é'),
            Just('\u{7f}'),
            proptest::char::range('a', 'z'),
        ]
    }

    proptest! {
        #[test]
        fn json_strings_read_back_as_what_was_written(text in proptest::collection::vec(awkward_char(), 0..40)) {
            let text: String = text.into_iter().collect();
            let mut out = String::from("x");
            write_json_string(&mut out, &text);
            let read: String = serde_json::from_str(&out[1..]).expect("a JSON string");
            prop_assert_eq!(read, text);
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_wherever_it_sits_in_a_word() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = special;
                assert!(needs_escape(u64::from_le_bytes(word)), "byte {special:#x} at {at}");
            }
        }
        for clean in [*b"abcdefgh", *b"~!#$%&'(", [0x7f, 0x80, 0xc3, 0xa9, 0xff, b' ', b'!', b'#']] {
            assert!(!needs_escape(u64::from_le_bytes(clean)));
        }
    }

    fn entry() -> LogEntry<'static> {
        LogEntry {
            time: SystemTime::UNIX_EPOCH,
            request_id: "abc",
            client: "127.0.0.1".parse().unwrap(),
            method: &Method::GET,
            path: "/pets/\"1\"",
            protocol: Version::HTTP_11,
            route: "GET /pets/{id}",
            api: "pets",
            stage: "prod",
            deployment: "3",
            status: 200,
            bytes: 12,
            latency: Duration::from_micros(1500),
            integration_latency: Some(Duration::from_micros(1000)),
            reason: None,
            client_cert: None,
            trace_id: Some(TraceId([0xab; 16])),
        }
    }

    #[test]
    fn default_line_is_json_with_every_field() {
        let mut s = String::new();
        format_line(&mut s, &entry(), None);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["path"], "/pets/\"1\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "GET /pets/{id}");
        assert_eq!(v["deployment"], "3");
        assert_eq!(v["latency_ms"], 1.5);
        assert_eq!(v["integration_latency_ms"], 1.0);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn client_addresses_are_written_as_the_standard_library_writes_them() {
        for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.20.0.7", "::1", "2001:db8::8:800:200c:417a"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            write_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
        let mut line = String::new();
        format_line(&mut line, &entry(), None);
        assert!(line.contains(r#""client":"127.0.0.1","#), "{line}");
    }

    proptest::proptest! {
        #[test]
        fn any_ipv4_address_is_written_as_the_standard_library_writes_it(bits: u32) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(bits));
            let mut out = String::from("x");
            write_ip(&mut out, ip);
            proptest::prop_assert_eq!(out, format!("x{ip}"));
        }

        #[test]
        fn any_latency_has_its_milliseconds_and_three_decimals(secs in 0u64..=u64::MAX / 1000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let mut out = String::new();
            write_millis(&mut out, d);
            let micros = d.as_micros();
            proptest::prop_assert_eq!(out, format!("{}.{:03}", micros / 1000, micros % 1000));
        }
    }

    #[test]
    fn latencies_have_three_decimals_and_strings_are_escaped() {
        let millis = |micros| {
            let mut out = String::new();
            write_millis(&mut out, Duration::from_micros(micros));
            out
        };
        assert_eq!(millis(0), "0.000");
        assert_eq!(millis(7), "0.007");
        assert_eq!(millis(999), "0.999");
        assert_eq!(millis(1_234_567), "1234.567");
        let mut out = String::new();
        let text = "a\"b\\c\nd\re\tf\u{1}g\u{1f} é 😀";
        write_json_string(&mut out, text);
        assert_eq!(out, r#""a\"b\\c\nd\re\tf\u0001g\u001f é 😀""#);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
    }

    #[test]
    fn templates_substitute_fields() {
        let t = LogTemplate::parse(
            "$request_id $method $path -> $status ($latency_ms ms) $integration_latency_ms $trace_id",
        )
        .unwrap();
        let mut s = String::new();
        format_line(&mut s, &entry(), Some(&t));
        assert_eq!(s, format!("abc GET /pets/\"1\" -> 200 (1.500 ms) 1.000 {}\n", "ab".repeat(16)));
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("meridian-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let mut log = AccessLog::open(LogSink::File(path.clone())).unwrap();
        for _ in 0..1000 {
            log.record(&entry(), None);
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
