//! One audit record (CONTRACT §7), its JSON line, and UTC time helpers.
//!
//! Every text field is escaped before the record is written: control
//! characters (CR, LF, ESC of ANSI sequences, C1 controls) and the Unicode
//! line separators become visible `\u{…}` text, so a record stays one line
//! and nothing in it can drive the terminal of whoever reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One audit record. Absent fields are left out of the JSON line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    pub ts: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_chars: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sample: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// A guardrail deny pattern matched in `flag` mode: served, and marked here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flagged: Option<bool>,
    /// What an admin action changed, or why a token was denied (no secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record of `event`, stamped now.
    pub fn new(event: &'static str) -> Self {
        AuditRecord {
            ts: rfc3339_now(),
            event,
            ..Default::default()
        }
    }

    /// Escapes control characters in every text field (see the module doc).
    pub fn escape(&mut self) {
        for field in [
            &mut self.request_id,
            &mut self.client_id,
            &mut self.tenant,
            &mut self.scopes,
            &mut self.ip,
            &mut self.user_agent,
            &mut self.route,
            &mut self.error_code,
            &mut self.prompt_sha256,
            &mut self.prompt_sample,
            &mut self.worker,
            &mut self.finish_reason,
            &mut self.detail,
        ]
        .into_iter()
        .flatten()
        {
            if field.chars().any(needs_escape) {
                *field = escape_controls(field);
            }
        }
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `s` with control characters written out as `\n`, `\r`, `\t` or `\u{…}`.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The current UTC time as RFC 3339 with milliseconds.
pub fn rfc3339_now() -> String {
    rfc3339_ms(now_ms())
}

/// A Unix time in milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(ms / 1000, (ms % 1000) as u32)
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let rem = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}.{millis:03}Z",
        utc_date(secs / 86_400),
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses RFC 3339 in UTC (`2026-11-25T01:02:03Z`, optional fraction, `Z`
/// or `+00:00`) into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let day = parse_utc_date(date)?;
    let time = time
        .strip_suffix(['Z', 'z'])
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let mut it = hms.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let millis = match frac {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let digits: String = f.chars().chain("00".chars()).take(3).collect();
            digits.parse::<u64>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    Some(((day * 86_400 + h * 3600 + m * 60 + sec) * 1000) + millis)
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (UTC).
pub fn utc_date(days: u64) -> String {
    let days = days as i64;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The day (counted from 1970-01-01, UTC) of a `YYYY-MM-DD` date.
pub fn parse_utc_date(s: &str) -> Option<u64> {
    let mut it = s.split('-');
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm), the inverse of `utc_date`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (utc_date(days as u64) == s).then_some(days as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            rfc3339(1_795_564_800 + 3_723, 42),
            "2026-11-25T01:02:03.042Z"
        );
    }

    #[test]
    fn rfc3339_parses_back() {
        let ms = 1_795_564_800_000 + 3_723_042;
        assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        assert_eq!(parse_rfc3339_ms("2026-11-25T01:02:03Z"), Some(ms - 42));
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T01:02:03.5+00:00"),
            Some(ms - 42 + 500)
        );
        for bad in [
            "2026-11-25",
            "2026-11-25T25:00:00Z",
            "2026-11-25T01:02:03+02:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_round_trip() {
        for day in [0, 59, 60, 11_016, 20_417, 30_000] {
            assert_eq!(parse_utc_date(&utc_date(day)), Some(day));
        }
        assert_eq!(parse_utc_date("2026-02-30"), None);
        assert_eq!(parse_utc_date("2026-13-01"), None);
        assert_eq!(parse_utc_date("yesterday"), None);
    }

    #[test]
    fn control_characters_are_written_out() {
        let mut r = AuditRecord::new("request");
        r.user_agent = Some("evil\r\nX-Fake: 1\u{1b}[31mred\u{9b}\u{2028}".into());
        r.detail = Some("plain".into());
        r.escape();
        assert_eq!(
            r.user_agent.as_deref(),
            Some("evil\\r\\nX-Fake: 1\\u{1b}[31mred\\u{9b}\\u{2028}")
        );
        assert_eq!(r.detail.as_deref(), Some("plain"));
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n') && !line.contains('\u{1b}'));
    }
}
