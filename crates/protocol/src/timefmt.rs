//! Wall-clock time as the API shows it: RFC 3339 in UTC with milliseconds, and Unix seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats a time as RFC 3339 UTC with millisecond precision, e.g. `2026-11-23T09:15:22.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 time as written by [`rfc3339`].
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// Parses any RFC 3339 date-time a client may send (section 5.6: `T`, `t` or a space between
/// date and time, a fraction of any length, `Z`, `z` or a `+hh:mm`/`-hh:mm` offset, a leap
/// second read as the second before it) to milliseconds since the Unix epoch, negative
/// before it. [`parse_rfc3339`] reads what this crate writes; this reads what people and
/// other programs write, such as an audit query's `since`.
pub fn rfc3339_unix_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let separated = at(4, b'-') && at(7, b'-') && at(13, b':') && at(16, b':');
    if !separated || !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let days_in_month = *month_days.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if at(i, b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let fraction = format!("{:0<3}", &s[start..(start + 3).min(i)]);
        millis = fraction.parse::<i64>().ok()?;
    }
    let offset_minutes = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && at(i + 3, b':') => {
            let (h, m) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of the proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = from_unix_millis(1_795_000_000_123);
        let s = rfc3339(t);
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(rfc3339_unix_millis(&s), Some(1_795_000_000_123));
    }

    /// Every form RFC 3339 allows is read, offsets and times before the epoch included;
    /// what is not a date-time is not.
    #[test]
    fn any_rfc3339_date_time_is_read() {
        for (text, millis) in [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01t00:00:01.5z", 1500),
            ("1970-01-01 01:00:00+01:00", 0),
            ("1969-12-31T23:59:59.999999Z", -1),
            (
                "2026-12-04T09:00:00-15:09",
                1_796_374_800_000 + 909 * 60_000,
            ),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("1998-12-31T23:59:60Z", 915_148_799_000),
            (
                "0029-05-11T13:31:03-15:09",
                -61_240_703_337_000 + 909 * 60_000,
            ),
        ] {
            assert_eq!(rfc3339_unix_millis(text), Some(millis), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-12-04",
            "2026-12-04T09:00:00",
            "2026-12-04T09:00:00+0100",
            "2026-12-04T09:00:00.Z",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-04T24:00:00Z",
            "2026-12-04T09:00:00Zjunk",
            "2026-12-04T09:00:00+24:00",
        ] {
            assert_eq!(rfc3339_unix_millis(bad), None, "{bad}");
        }
    }
}
