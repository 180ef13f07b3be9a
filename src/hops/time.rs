//! RFC 3339 timestamps as nats-server writes them (Go's `time.Time` JSON:
//! `2026-12-02T01:14:30.207152958Z`, or with a `+01:00` offset when the
//! server runs in a local time zone), without a date-time dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an RFC 3339 date-time into a [`SystemTime`].
///
/// Accepts `T`/`t` between date and time, a fraction of 1 to 9 digits, and
/// `Z`/`z` or a `±HH:MM` offset. Rejects anything before 1970 (Go's zero
/// time, `0001-01-01T00:00:00Z`, is never a real event) and leap seconds
/// (Go never writes them).
pub(super) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b[at] == b'.' {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let len = at - start;
        if len == 0 || len > 9 {
            return None;
        }
        nanos = digits(b, start, len)? * 10u32.pow(9 - len as u32);
    }
    let offset_secs: i64 = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2], 0, 2)?;
            let om = digits(&[*m1, *m2], 0, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// `len` ASCII digits of `b` from `at` as a number.
fn digits(b: &[u8], at: usize, len: usize) -> Option<u32> {
    let field = b.get(at..at + len)?;
    field.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn go_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(at(0, 0)));
        assert_eq!(
            parse_rfc3339("2026-12-02T01:14:30.207152958Z"),
            Some(at(1_796_174_070, 207_152_958))
        );
        // Go trims trailing zeros of the fraction.
        assert_eq!(
            parse_rfc3339("2026-12-02T01:14:30.2069812Z"),
            Some(at(1_796_174_070, 206_981_200))
        );
        assert_eq!(
            parse_rfc3339("2026-12-02T02:14:30.5+01:00"),
            Some(at(1_796_174_070, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T20:44:30-04:30"),
            Some(at(1_796_174_070, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(at(1_709_164_800, 0))
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "0001-01-01T00:00:00Z",
            "2026-12-02",
            "2026-12-02T01:14:30",
            "2026-13-02T01:14:30Z",
            "2025-02-29T01:14:30Z",
            "2026-12-02T24:00:00Z",
            "2026-12-02T01:14:60Z",
            "2026-12-02T01:14:30.Z",
            "2026-12-02T01:14:30.1234567890Z",
            "2026-12-02T01:14:30+0100",
            "2026-12-02T01:14:30Z ",
            "２026-12-02T01:14:30Z",
            "2026-12-02T01:14:30.207152958Zgarbage-garbage",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
