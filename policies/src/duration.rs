//! Grant durations as policies write them: a positive whole number and one
//! unit, `s`, `m`, `h` or `d` (`90s`, `30m`, `8h`, `1d`), at most 30 days.

/// The longest duration a policy may name: 30 days, in seconds.
pub(crate) const MAX_SECS: u64 = 30 * 86_400;

/// The seconds in `text`, or `None` if it is not a positive duration of at
/// most [`MAX_SECS`] in the form above. No spaces, signs or second unit.
pub(crate) fn parse(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    let digits = text.get(..text.len() - unit.len_utf8())?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = digits.parse::<u64>().ok()?.checked_mul(scale)?;
    (1..=MAX_SECS).contains(&secs).then_some(secs)
}

/// `secs` in the largest unit that divides it evenly, e.g. `4h`, `90m`.
pub(crate) fn format(secs: u64) -> String {
    for (scale, unit) in [(86_400, 'd'), (3_600, 'h'), (60, 'm')] {
        // `checked_rem`, not `is_multiple_of`: the workspace supports Rust 1.85.
        if secs != 0 && secs.checked_rem(scale) == Some(0) {
            return format!("{}{unit}", secs / scale);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_is_read() {
        assert_eq!(parse("45s"), Some(45));
        assert_eq!(parse("30m"), Some(1_800));
        assert_eq!(parse("8h"), Some(28_800));
        assert_eq!(parse("1d"), Some(86_400));
        assert_eq!(parse("30d"), Some(MAX_SECS));
        assert_eq!(parse("720h"), Some(MAX_SECS));
        assert_eq!(parse("08h"), Some(28_800));
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "h",
            "8",
            "0h",
            "0s",
            "31d",
            "721h",
            "2592001s",
            "-1h",
            "+1h",
            " 8h",
            "8h ",
            "8 h",
            "1h30m",
            "8H",
            "8hours",
            "1.5h",
            "1w",
            "99999999999999999999s",
            "18446744073709551615d",
            "8ħ",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn formats_in_the_largest_even_unit() {
        assert_eq!(format(28_800), "8h");
        assert_eq!(format(86_400), "1d");
        assert_eq!(format(5_400), "90m");
        assert_eq!(format(45), "45s");
        assert_eq!(format(0), "0s");
        for text in ["45s", "30m", "8h", "1d", "30d"] {
            assert_eq!(parse(text).map(format).as_deref(), Some(text));
        }
    }
}
