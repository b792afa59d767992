//! RFC 3339 timestamps without a calendar dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Appends `time` as `2026-11-25T09:23:13.123Z` to `out`.
///
/// Every access log line carries one, so the part up to the second is formatted once per
/// second (per thread) and reused: a line pays for its milliseconds only.
pub fn write_rfc3339_millis(time: SystemTime, out: &mut String) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != Some(secs) {
            cached.1.clear();
            write_second(secs, &mut cached.1);
            cached.0 = Some(secs);
        }
        out.push_str(&cached.1);
    });
    let [a, b, c] = three_digits(since.subsec_millis());
    push_ascii(out, &[a, b, c, b'Z']);
}

/// `n` (below 1,000) as three digits, zero-padded: a time's milliseconds, a latency's
/// microseconds past the millisecond.
pub fn three_digits(n: u32) -> [u8; 3] {
    [b'0' + (n / 100 % 10) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

/// Appends ASCII bytes put together on the stack, in one copy (bytes that are not ASCII
/// are not appended). A check for ASCII costs a few instructions for these few bytes; a
/// check for UTF-8 (`from_utf8`) was a call of about forty.
pub fn push_ascii(out: &mut String, ascii: &[u8]) {
    if ascii.is_ascii() {
        // SAFETY: ASCII bytes are UTF-8 each on its own, so `out` stays UTF-8.
        unsafe { out.as_mut_vec() }.extend_from_slice(ascii);
    }
}

thread_local! {
    /// The last second [`write_rfc3339_millis`] formatted on this thread, up to its `.`.
    static SECOND: std::cell::RefCell<(Option<u64>, String)> = const { std::cell::RefCell::new((None, String::new())) };
}

/// `2026-11-25T09:23:13.` for `secs` since the Unix epoch.
fn write_second(secs: u64, out: &mut String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    use std::fmt::Write;
    let _ = write!(out, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.", rem / 3600, (rem / 60) % 60, rem % 60);
}

/// Now, in milliseconds since the Unix epoch (never 0: a clock before 1970 reads as 1 ms).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64).max(1)
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's algorithm.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a date like 2026-11-01");
    let mut parts = text.trim().splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    let (y, m, d): (i64, u32, u32) =
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    // Reject days past the month's end (the round trip would move to the next month).
    if civil_from_days(days) != (y, m, d) {
        return Err(bad());
    }
    Ok(days)
}

/// Formats days since 1970-01-01 as `YYYY-MM-DD`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let mut s = String::new();
        write_rfc3339_millis(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2026-11-25T09:23:13.250Z
        write_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_795_598_593_250), &mut s);
        assert_eq!(s, "2026-11-25T09:23:13.250Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(parse_date("2000-02-29"), Ok(11_016));
        assert_eq!(format_date(11_016), "2000-02-29");
        assert!(parse_date("2001-02-29").is_err());
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn the_cached_second_follows_the_clock_both_ways() {
        // Same second, the next one, a day boundary, and back to an earlier second: each
        // line matches the calendar computed afresh.
        let fresh = |ms: u64| {
            let mut s = String::new();
            write_second(ms / 1000, &mut s);
            format!("{s}{:03}Z", ms % 1000)
        };
        for ms in [
            1_795_598_593_250,
            1_795_598_593_999,
            1_795_598_594_000,
            1_795_651_199_999,
            1_795_651_200_001,
            1_795_598_593_001,
            0,
        ] {
            let mut s = String::from("x");
            write_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms), &mut s);
            assert_eq!(s, format!("x{}", fresh(ms)), "at {ms} ms");
        }
        assert_eq!(fresh(1_795_651_200_001), "2026-11-26T00:00:00.001Z");
    }
}
