//! UTC calendar arithmetic and the ISO-8601 timestamps of Last.fm logs, without allocation.

/// Microseconds per second.
pub const MICROS_PER_SEC: i64 = 1_000_000;
/// Microseconds per day.
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

/// Earliest timestamp accepted as a real listen: 1990-01-01T00:00:00Z (before the web).
pub const SANE_MIN_MICROS: i64 = 631_152_000 * MICROS_PER_SEC;
/// First timestamp no longer accepted: 2100-01-01T00:00:00Z.
pub const SANE_MAX_MICROS: i64 = 4_102_444_800 * MICROS_PER_SEC;

/// Wall-clock nanoseconds since the epoch (0 before it), for run ids and stamps.
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Wall-clock microseconds since the epoch (0 before it).
pub fn now_micros() -> i64 {
    (now_nanos() / 1_000) as i64
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Why a timestamp was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampError {
    /// Not of the form `YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)`.
    Syntax,
    /// Well formed but not a real instant (February 30, hour 24, …).
    Impossible,
    /// A real instant outside [`SANE_MIN_MICROS`, `SANE_MAX_MICROS`).
    OutOfRange,
}

#[inline]
fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as u32;
    }
    Some(v)
}

/// Parses an ISO-8601 UTC timestamp as Last.fm writes it (`2009-05-04T23:08:57Z`), also accepting
/// fractional seconds and a numeric offset, into microseconds since the epoch.
pub fn parse_timestamp_micros(s: &[u8]) -> Result<i64, TimestampError> {
    TimestampParser::default().parse(s)
}

/// [`parse_timestamp_micros`] for many timestamps in a row: it remembers the last valid date
/// (`YYYY-MM-DD`) and its day number, which consecutive lines of a log mostly share (a user's
/// listens come in time order), so the date is parsed and checked once per day, not per line.
#[derive(Debug, Default)]
pub struct TimestampParser {
    date: [u8; 10],
    days: Option<i64>,
}

impl TimestampParser {
    pub fn parse(&mut self, s: &[u8]) -> Result<i64, TimestampError> {
        use TimestampError::*;
        if s.len() < 20
            || s[4] != b'-'
            || s[7] != b'-'
            || (s[10] != b'T' && s[10] != b' ')
            || s[13] != b':'
            || s[16] != b':'
        {
            return Err(Syntax);
        }
        // The date's day number if it is the remembered one, else its fields.
        let date = match self.days.filter(|_| s[..10] == self.date) {
            Some(days) => Ok(days),
            None => Err((
                digits(&s[0..4]).ok_or(Syntax)? as i64,
                digits(&s[5..7]).ok_or(Syntax)?,
                digits(&s[8..10]).ok_or(Syntax)?,
            )),
        };
        let hour = digits(&s[11..13]).ok_or(Syntax)?;
        let minute = digits(&s[14..16]).ok_or(Syntax)?;
        let second = digits(&s[17..19]).ok_or(Syntax)?;
        let mut rest = &s[19..];
        let mut frac_micros = 0i64;
        if rest.first() == Some(&b'.') {
            let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return Err(Syntax);
            }
            let frac = &rest[1..1 + n];
            for i in 0..6 {
                frac_micros = frac_micros * 10 + frac.get(i).map_or(0, |c| (c - b'0') as i64);
            }
            rest = &rest[1 + n..];
        }
        let offset_secs: i64 = match rest {
            b"Z" => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let h = digits(&[*h1, *h2]).ok_or(Syntax)? as i64;
                let m = digits(&[*m1, *m2]).ok_or(Syntax)? as i64;
                if h > 23 || m > 59 {
                    return Err(Impossible);
                }
                let secs = h * 3600 + m * 60;
                if *sign == b'+' { secs } else { -secs }
            }
            _ => return Err(Syntax),
        };
        if hour > 23 || minute > 59 || second > 59 {
            return Err(Impossible);
        }
        let days = match date {
            Ok(days) => days,
            Err((year, month, day)) => {
                if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
                    return Err(Impossible);
                }
                let days = days_from_civil(year, month, day);
                self.date.copy_from_slice(&s[..10]);
                self.days = Some(days);
                days
            }
        };
        let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_secs;
        let micros = secs * MICROS_PER_SEC + frac_micros;
        if !(SANE_MIN_MICROS..SANE_MAX_MICROS).contains(&micros) {
            return Err(OutOfRange);
        }
        Ok(micros)
    }
}

/// Writes `micros` as `YYYY-MM-DDTHH:MM:SSZ` (whole seconds) into `out`.
pub fn format_timestamp_secs(micros: i64, out: &mut Vec<u8>) {
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let two = |out: &mut Vec<u8>, v: i64| {
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, m as i64);
    out.push(b'-');
    two(out, d as i64);
    out.push(b'T');
    two(out, sod / 3600);
    out.push(b':');
    two(out, sod / 60 % 60);
    out.push(b':');
    two(out, sod % 60);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a time in milliseconds since the epoch (for people).
pub fn utc_string(ms: i64) -> String {
    let mut out = Vec::with_capacity(20);
    format_timestamp_secs(ms.saturating_mul(1_000), &mut out);
    String::from_utf8(out).expect("ASCII")
}

/// `YYYY-MM-DD` of a timestamp (the date partitions of the lake).
pub fn date_string(micros: i64) -> String {
    let (y, m, d) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 10_957, 14_368, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(2009, 5, 4), 14_368);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn parses_lastfm_timestamps() {
        assert_eq!(
            parse_timestamp_micros(b"2009-05-04T23:08:57Z"),
            Ok(1_241_478_537_000_000)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-05-04T23:08:57.25Z"),
            Ok(1_241_478_537_250_000)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-05-05T01:08:57+02:00"),
            Ok(1_241_478_537_000_000)
        );
        assert!(parse_timestamp_micros(b"2008-02-29T00:00:00Z").is_ok());
    }

    #[test]
    fn rejects_bad_and_impossible() {
        use TimestampError::*;
        assert_eq!(
            parse_timestamp_micros(b"2009-02-30T10:00:00Z"),
            Err(Impossible)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-02-29T10:00:00Z"),
            Err(Impossible)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-13-01T10:00:00Z"),
            Err(Impossible)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-01-01T24:00:00Z"),
            Err(Impossible)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-01-01T23:60:00Z"),
            Err(Impossible)
        );
        assert_eq!(parse_timestamp_micros(b"2009-01-01 23:00:00"), Err(Syntax));
        assert_eq!(
            parse_timestamp_micros(b"yesterday at noon, roughly"),
            Err(Syntax)
        );
        assert_eq!(
            parse_timestamp_micros(b"2009-01-01T23:00:00ZZ"),
            Err(Syntax)
        );
        assert_eq!(parse_timestamp_micros(b"20O9-01-01T23:00:00Z"), Err(Syntax));
        assert_eq!(
            parse_timestamp_micros(b"1969-12-31T23:59:59Z"),
            Err(OutOfRange)
        );
        assert_eq!(parse_timestamp_micros(b""), Err(Syntax));
    }

    #[test]
    fn remembered_dates_change_nothing() {
        let inputs: [&[u8]; 9] = [
            b"2009-05-04T23:08:57Z",
            b"2009-05-04T23:08:58Z",
            b"2009-05-04T24:00:00Z",
            b"2009-05-04X23:08:57Z",
            b"2009-05-04T23:08:57+01:00",
            b"2009-02-30T00:00:00Z",
            b"2009-02-30T00:00:01Z",
            b"2009-05-03T23:59:59.5Z",
            b"2009-05-04T00:00:00Z",
        ];
        let mut parser = TimestampParser::default();
        for _ in 0..2 {
            for s in inputs {
                assert_eq!(
                    parser.parse(s),
                    parse_timestamp_micros(s),
                    "{}",
                    String::from_utf8_lossy(s)
                );
            }
        }
    }

    #[test]
    fn formats() {
        let mut out = Vec::new();
        format_timestamp_secs(1_241_478_537_000_000, &mut out);
        assert_eq!(out, b"2009-05-04T23:08:57Z");
        assert_eq!(date_string(1_241_478_537_000_000), "2009-05-04");
    }
}
