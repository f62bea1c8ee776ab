//! The Last.fm-1K line format: `user \t timestamp \t artist-mbid \t artist \t track-mbid \t track`.
//!
//! A line is accepted or rejected with exactly one [`RejectReason`], checked in the order the
//! variants are declared, so every line has one well-defined reason.

use recsys_core::time::{TimestampError, TimestampParser};

/// Why an input line was rejected. The `as_str` names appear in the rejects table and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A carriage return inside the line (a single trailing one, as in CRLF files, is fine).
    StrayCr,
    /// Not exactly six tab-separated fields.
    FieldCount,
    /// Empty user id.
    EmptyUser,
    /// A timestamp that does not parse as ISO-8601.
    BadTimestamp,
    /// A well-formed timestamp that is not a real instant (February 30, hour 24, …).
    ImpossibleTimestamp,
    /// A real instant outside 1990–2100.
    TimestampOutOfRange,
    /// Neither a track MBID nor a track name: the listen cannot be attributed to a song.
    MissingTrack,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::InvalidUtf8,
        RejectReason::StrayCr,
        RejectReason::FieldCount,
        RejectReason::EmptyUser,
        RejectReason::BadTimestamp,
        RejectReason::ImpossibleTimestamp,
        RejectReason::TimestampOutOfRange,
        RejectReason::MissingTrack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::StrayCr => "stray_cr",
            RejectReason::FieldCount => "field_count",
            RejectReason::EmptyUser => "empty_user",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::ImpossibleTimestamp => "impossible_timestamp",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::MissingTrack => "missing_track",
        }
    }

    pub fn parse(s: &str) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One accepted line, borrowing from the input. MBIDs may be empty; ids are derived later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawListen<'a> {
    pub user_id: &'a str,
    pub ts_micros: i64,
    pub artist_mbid: &'a str,
    pub artist_name: &'a str,
    pub track_mbid: &'a str,
    pub track_name: &'a str,
}

/// The fields of a line that passed every check except, possibly, UTF-8: the user id and the
/// four artist and track fields are still bytes, so a caller that sees the same values again
/// and again (the clean scan) validates each distinct value once instead of every line. The
/// timestamp parsed, so it was ASCII. The line is valid UTF-8 exactly when `user_id` and
/// `tail` are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFields<'a> {
    pub user_id: &'a [u8],
    pub ts_micros: i64,
    /// `artist_mbid \t artist_name \t track_mbid \t track_name`.
    pub tail: &'a [u8],
}

/// Parses one line, given without its `\n` terminator (a trailing `\r` is removed here).
pub fn parse_line(line: &[u8]) -> Result<RawListen<'_>, RejectReason> {
    let fields = split_line(line, &mut TimestampParser::default())?;
    let user_id = std::str::from_utf8(fields.user_id).map_err(|_| RejectReason::InvalidUtf8)?;
    let tail = std::str::from_utf8(fields.tail).map_err(|_| RejectReason::InvalidUtf8)?;
    let [artist_mbid, artist_name, track_mbid, track_name] = split_tail(tail);
    Ok(RawListen {
        user_id,
        ts_micros: fields.ts_micros,
        artist_mbid,
        artist_name,
        track_mbid,
        track_name,
    })
}

/// The four fields of a [`LineFields::tail`].
pub fn split_tail(tail: &str) -> [&str; 4] {
    let mut parts = tail.splitn(4, '\t');
    std::array::from_fn(|_| parts.next().unwrap_or(""))
}

/// Checks one line (without its `\n`; a trailing `\r` is removed here) and splits it. Every
/// check but UTF-8 is done here; a line that fails one is also checked for UTF-8, which
/// outranks every other reason.
pub fn split_line<'a>(
    line: &'a [u8],
    timestamps: &mut TimestampParser,
) -> Result<LineFields<'a>, RejectReason> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let reject = |reason: RejectReason| match std::str::from_utf8(line) {
        Ok(_) => reason,
        Err(_) => RejectReason::InvalidUtf8,
    };
    // One pass finds the five tabs and any carriage return (which outranks a bad field count).
    let mut tabs = [0usize; 5];
    let mut n = 0;
    for pos in memchr::memchr2_iter(b'\t', b'\r', line) {
        if line[pos] == b'\r' {
            return Err(reject(RejectReason::StrayCr));
        }
        if n < 5 {
            tabs[n] = pos;
        }
        n += 1;
    }
    if n != 5 {
        return Err(reject(RejectReason::FieldCount));
    }
    let user_id = &line[..tabs[0]];
    if blank(user_id) {
        return Err(reject(RejectReason::EmptyUser));
    }
    let ts_micros = timestamps.parse(&line[tabs[0] + 1..tabs[1]]).map_err(|e| {
        reject(match e {
            TimestampError::Syntax => RejectReason::BadTimestamp,
            TimestampError::Impossible => RejectReason::ImpossibleTimestamp,
            TimestampError::OutOfRange => RejectReason::TimestampOutOfRange,
        })
    })?;
    if tabs[3] + 1 == tabs[4] && blank(&line[tabs[4] + 1..]) {
        return Err(reject(RejectReason::MissingTrack));
    }
    Ok(LineFields {
        user_id,
        ts_micros,
        tail: &line[tabs[1] + 1..],
    })
}

/// Whether a field is empty or only white space (Unicode's, as `str::trim`); bytes that are not
/// UTF-8 are not blank (the line is rejected for its encoding instead).
fn blank(field: &[u8]) -> bool {
    match field.first() {
        None => true,
        Some(c) if c.is_ascii_alphanumeric() => false,
        Some(_) => std::str::from_utf8(field).is_ok_and(|s| s.trim().is_empty()),
    }
}

/// Iterates over the lines of `buf` (without terminators); a last line without `\n` counts.
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                Some(line)
            }
            None => Some(std::mem::take(&mut rest)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &[u8] = b"user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\tFuck Me Im Famous (Pacha Ibiza)-09-28-2007";

    #[test]
    fn accepts_a_real_line() {
        let l = parse_line(GOOD).unwrap();
        assert_eq!(l.user_id, "user_000001");
        assert_eq!(l.ts_micros, 1_241_478_537_000_000);
        assert_eq!(l.artist_name, "Deep Dish");
        assert_eq!(l.track_mbid, "");
        assert_eq!(l.track_name, "Fuck Me Im Famous (Pacha Ibiza)-09-28-2007");
    }

    #[test]
    fn crlf_and_unicode() {
        let mut crlf = GOOD.to_vec();
        crlf.push(b'\r');
        assert_eq!(
            parse_line(&crlf).unwrap().track_name,
            parse_line(GOOD).unwrap().track_name
        );
        let uni = "user_000002\t2008-01-01T00:00:00Z\t\tБи-2\t\tМоя любовь — 東京 ✓".as_bytes();
        let l = parse_line(uni).unwrap();
        assert_eq!(l.artist_name, "Би-2");
        assert_eq!(l.track_name, "Моя любовь — 東京 ✓");
        assert_eq!(l.artist_mbid, "");
    }

    #[test]
    fn every_reject_kind() {
        use RejectReason::*;
        let cases: &[(&[u8], RejectReason)] = &[
            (b"u\t2009-05-04T23:08:57Z\ta\tA\tt\tT\xff", InvalidUtf8),
            // Bad UTF-8 outranks every other reason, wherever it is.
            (b"u\xff\t2009-05-04T23:08:57Z\ta\tA\tt", InvalidUtf8),
            (b"u\xff\t2009-05-04T23:08:57Z\ta\rA\tt\tT", InvalidUtf8),
            (b"  \t2009-05-04T23:08:57Z\t\xff\tA\tt\tT", InvalidUtf8),
            (b"u\t2009\xff\ta\tA\tt\tT", InvalidUtf8),
            (b"u\tbad\ta\tA\tt\tT\xc3", InvalidUtf8),
            (b"u\t2009-05-04T23:08:57Z\ta\tA\t\t\xff", InvalidUtf8),
            (b"\xe3\x80\x80\t2009-05-04T23:08:57Z\ta\tA\tt\tT", EmptyUser),
            (b"u\t2009-05-04T23:08:57Z\ta\tA\rB\tt\tT", StrayCr),
            (b"u\t2009-05-04T23:08:57Z\ta\tA\tt\tT\r\r", StrayCr),
            (b"u\t2009-05-04T23:08:57Z\ta\tA\tt", FieldCount),
            (b"u\t2009-05-04T23:08:57Z\ta\tA\tt\tT\textra", FieldCount),
            (b"", FieldCount),
            (b"\t2009-05-04T23:08:57Z\ta\tA\tt\tT", EmptyUser),
            (b"  \t2009-05-04T23:08:57Z\ta\tA\tt\tT", EmptyUser),
            (b"u\tMay 4th 2009\ta\tA\tt\tT", BadTimestamp),
            (b"u\t\ta\tA\tt\tT", BadTimestamp),
            (b"u\t2009-02-30T12:00:00Z\ta\tA\tt\tT", ImpossibleTimestamp),
            (b"u\t2009-04-31T12:00:00Z\ta\tA\tt\tT", ImpossibleTimestamp),
            (b"u\t1970-01-01T00:00:00Z\ta\tA\tt\tT", TimestampOutOfRange),
            (b"u\t2009-05-04T23:08:57Z\ta\tA\t\t ", MissingTrack),
        ];
        for (line, reason) in cases {
            assert_eq!(
                parse_line(line),
                Err(*reason),
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn empty_mbids_are_fine() {
        let l = parse_line(b"u\t2009-05-04T23:08:57Z\t\t\t\tUntitled").unwrap();
        assert_eq!((l.artist_mbid, l.artist_name, l.track_mbid), ("", "", ""));
    }

    #[test]
    fn line_splitting() {
        let v: Vec<&[u8]> = lines(b"a\nb\r\n\nc").collect();
        assert_eq!(v, vec![&b"a"[..], b"b\r", b"", b"c"]);
        assert_eq!(lines(b"a\n").count(), 1);
        assert_eq!(lines(b"").count(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn tab_heavy_text_never_panics(s in "[a-z0-9\t:TZ+.\r-]{0,80}") {
            let _ = parse_line(s.as_bytes());
        }
    }
}
