//! Timestamps in the one format the audit log, the store and the agent spool use: RFC 3339 UTC
//! with microseconds (`2026-01-02T03:04:05.000006Z`), which sorts as text; and durations as
//! config files and the command line write them (`90s`, `15m`, `8h`, `2d`, `1h30m`).

use std::time::Duration;

/// Current UTC time in the log's format.
pub fn now_ts() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Why a duration was refused; the message reads after the text, as in
/// ``format!("`{text}` {error}")``.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `<number><unit>...` (see [`try_parse_duration`]).
    #[error("is not a duration like `90s`, `15m`, `8h`, `1h30m`, `2d`")]
    Invalid,
    /// Longer than [`MAX_DURATION`]: surely a typo, and past what timestamps hold safely.
    #[error("is longer than 100 years")]
    TooLong,
    /// Well formed, but zero (`0s`, `0h0m`): nothing that takes a duration accepts none.
    #[error("must be longer than 0")]
    Zero,
}

/// The longest duration [`try_parse_duration`] accepts: 36500 days.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses a positive duration: one or more `<number><unit>` parts, units `d`, `h`, `m`, `s`,
/// each at most once and largest first (`90s`, `15m`, `8h`, `2d`, `1h30m`, `2d12h`,
/// `1h0m30s`). Surrounding whitespace is ignored; anything else (spaces inside, signs,
/// fractions, other units, `30m1h`) is [`DurationError::Invalid`]; a total of zero is
/// [`DurationError::Zero`]; more than [`MAX_DURATION`] is [`DurationError::TooLong`].
pub fn try_parse_duration(s: &str) -> Result<Duration, DurationError> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)];
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(DurationError::Invalid);
    }
    let mut total: u64 = 0;
    // Each part must use a smaller unit than the one before: parts may start at this index.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or(DurationError::Invalid)?;
        if digits == 0 {
            return Err(DurationError::Invalid);
        }
        let (number, tail) = rest.split_at(digits);
        // Only digits: the one failure left is a number past u64, which is far too long.
        let n: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
        let unit = tail.chars().next().ok_or(DurationError::Invalid)?;
        let at = UNITS
            .iter()
            .position(|(u, _)| *u == unit)
            .filter(|at| *at >= next_unit)
            .ok_or(DurationError::Invalid)?;
        next_unit = at + 1;
        let (_, secs) = UNITS.get(at).copied().ok_or(DurationError::Invalid)?;
        total = n
            .checked_mul(secs)
            .and_then(|part| total.checked_add(part))
            .filter(|t| *t <= MAX_DURATION.as_secs())
            .ok_or(DurationError::TooLong)?;
        rest = tail.get(unit.len_utf8()..).ok_or(DurationError::Invalid)?;
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(Duration::from_secs(total))
}

/// [`try_parse_duration`] for callers with their own message: `None` for anything refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    try_parse_duration(s).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn single_and_compound_durations() {
        let cases = [
            ("90s", 90),
            ("15m", 15 * 60),
            ("8h", 8 * 3600),
            ("2d", 2 * 86_400),
            ("1h30m", 5400),
            ("2d12h", 60 * 3600),
            ("1h0m30s", 3630),
            ("1d1h1m1s", 90_061),
            (" 45m ", 45 * 60),
            ("0h5m", 300),
            ("007s", 7),
        ];
        for (text, secs) in cases {
            let want = Duration::from_secs(secs);
            assert_eq!(try_parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(text), Some(want), "{text}");
        }
    }

    #[test]
    fn zero_has_its_own_error() {
        for text in ["0s", "0m", "0d", "0h0m", "00s"] {
            assert_eq!(try_parse_duration(text), Err(DurationError::Zero), "{text}");
            assert_eq!(parse_duration(text), None, "{text}");
        }
        assert_eq!(DurationError::Zero.to_string(), "must be longer than 0");
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            " ",
            "h",
            "5",
            "s5",
            "5 parsecs",
            "5x",
            "1.5h",
            "-1h",
            "+1h",
            "1h 30m",
            "30m1h",
            "1h1h",
            "1hh",
            "1h30",
            "h30m",
            "1H",
            "1ms",
            "1w",
            "5m\u{e9}",
            "1s1s",
        ] {
            assert_eq!(
                try_parse_duration(text),
                Err(DurationError::Invalid),
                "{text:?} should be refused"
            );
        }
        assert!(DurationError::Invalid.to_string().contains("1h30m"));
    }

    #[test]
    fn past_a_hundred_years_is_too_long() {
        assert_eq!(try_parse_duration("36500d"), Ok(MAX_DURATION));
        for text in [
            "36500d1s",
            "36501d",
            "99999999999999999999s",
            "213503982334602d",
            "18446744073709551615s",
        ] {
            assert_eq!(
                try_parse_duration(text),
                Err(DurationError::TooLong),
                "{text}"
            );
        }
    }
}
