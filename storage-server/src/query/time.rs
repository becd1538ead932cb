//! The `from` / `until` query parameters: Unix times of any precision, `now` and `now-<n><unit>`.

use std::time::{SystemTime, UNIX_EPOCH};

const NS_PER_SEC: i64 = 1_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeError {
    #[error(
        "bad time {0:?}: expected Unix time (10 digits = s, 13 = ms, 16 = µs, 19 = ns), `now` or `now-<n><s|m|h|d>`"
    )]
    Syntax(String),
    #[error("bad time {0:?}: out of range")]
    OutOfRange(String),
    #[error("empty time range: from ({from}) is after until ({until})")]
    Reversed { from: String, until: String },
}

/// An inclusive range of Unix nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from: i64,
    pub until: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        from: i64::MIN,
        until: i64::MAX,
    };
    pub fn contains(&self, t: i64) -> bool {
        self.from <= t && t <= self.until
    }

    /// Parses `from`/`until` with the API's defaults (`now-1h` .. `now`).
    pub fn parse(
        from: Option<&str>,
        until: Option<&str>,
        now_nanos: i64,
    ) -> Result<TimeRange, TimeError> {
        let from_s = from.filter(|s| !s.is_empty()).unwrap_or("now-1h");
        let until_s = until.filter(|s| !s.is_empty()).unwrap_or("now");
        let range = TimeRange {
            from: parse_time(from_s, now_nanos)?,
            until: parse_time(until_s, now_nanos)?,
        };
        if range.from > range.until {
            return Err(TimeError::Reversed {
                from: from_s.to_owned(),
                until: until_s.to_owned(),
            });
        }
        Ok(range)
    }
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Parses one time to Unix nanoseconds. Precision is told apart by digit count, as Pyroscope does:
/// up to 10 digits are seconds, 11–13 milliseconds, 14–16 microseconds, 17–19 nanoseconds.
pub fn parse_time(s: &str, now_nanos: i64) -> Result<i64, TimeError> {
    let s = s.trim();
    let syntax = || TimeError::Syntax(s.to_owned());
    let range = || TimeError::OutOfRange(s.to_owned());
    if s == "now" {
        return Ok(now_nanos);
    }
    if let Some(rest) = s.strip_prefix("now-") {
        let (digits, unit) = rest.split_at(
            rest.find(|c: char| !c.is_ascii_digit())
                .ok_or_else(syntax)?,
        );
        if digits.is_empty() {
            return Err(syntax());
        }
        let n: i64 = digits.parse().map_err(|_| range())?;
        let unit_ns = match unit {
            "s" => NS_PER_SEC,
            "m" => 60 * NS_PER_SEC,
            "h" => 3600 * NS_PER_SEC,
            "d" => 86400 * NS_PER_SEC,
            _ => return Err(syntax()),
        };
        let back = n.checked_mul(unit_ns).ok_or_else(range)?;
        return now_nanos.checked_sub(back).ok_or_else(range);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let scale = match s.len() {
        1..=10 => NS_PER_SEC,
        11..=13 => 1_000_000,
        14..=16 => 1_000,
        17..=19 => 1,
        _ => return Err(range()),
    };
    let n: i64 = s.parse().map_err(|_| range())?;
    n.checked_mul(scale).ok_or_else(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_123_456_789;

    #[test]
    fn precisions_by_digit_count() {
        let want = 1_700_000_000 * NS_PER_SEC;
        assert_eq!(parse_time("1700000000", NOW), Ok(want));
        assert_eq!(parse_time("1700000000000", NOW), Ok(want));
        assert_eq!(parse_time("1700000000000000", NOW), Ok(want));
        assert_eq!(parse_time("1700000000000000000", NOW), Ok(want));
        assert_eq!(parse_time("0", NOW), Ok(0));
    }

    #[test]
    fn relative_times() {
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("now-30s", NOW), Ok(NOW - 30 * NS_PER_SEC));
        assert_eq!(parse_time("now-5m", NOW), Ok(NOW - 300 * NS_PER_SEC));
        assert_eq!(parse_time("now-1h", NOW), Ok(NOW - 3600 * NS_PER_SEC));
        assert_eq!(parse_time("now-2d", NOW), Ok(NOW - 2 * 86400 * NS_PER_SEC));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "now-",
            "now-h",
            "now-5",
            "now-5y",
            "-5",
            "12a",
            "now+5m",
        ] {
            assert!(
                matches!(parse_time(bad, NOW), Err(TimeError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_time("99999999999999999999", NOW),
            Err(TimeError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_time("now-999999999999d", NOW),
            Err(TimeError::OutOfRange(_))
        ));
        assert!(
            parse_time("nope", NOW)
                .unwrap_err()
                .to_string()
                .contains("expected Unix time")
        );
    }

    #[test]
    fn range_defaults_and_order() {
        let r = TimeRange::parse(None, None, NOW).unwrap();
        assert_eq!(r.from, NOW - 3600 * NS_PER_SEC);
        assert_eq!(r.until, NOW);
        let r = TimeRange::parse(Some(""), Some("now-1m"), NOW).unwrap();
        assert_eq!(r.until, NOW - 60 * NS_PER_SEC);
        assert!(matches!(
            TimeRange::parse(Some("now"), Some("now-1h"), NOW),
            Err(TimeError::Reversed { .. })
        ));
    }
}
