//! Dates, times, timestamps and intervals.
//!
//! Binary forms (integer datetimes, the only kind since PostgreSQL 10): date = i32 days since
//! 2000-01-01; time = i64 µs since midnight; timetz = time + i32 zone in seconds *west* of
//! UTC; timestamp(tz) = i64 µs since 2000-01-01 00:00:00 (UTC for timestamptz); interval =
//! i64 µs, i32 days, i32 months. `i32::MIN/MAX` and `i64::MIN/MAX` are -infinity/infinity.

use super::json::write_int;
use super::read::{Bad, Reader};

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_MINUTE: i64 = 60 * USECS_PER_SEC;
const USECS_PER_HOUR: i64 = 60 * USECS_PER_MINUTE;
const USECS_PER_DAY: i64 = 24 * USECS_PER_HOUR;
/// Days from 1970-01-01 to 2000-01-01.
const DAYS_1970_TO_2000: i64 = 10_957;

/// Proleptic Gregorian calendar date of a day count relative to 1970-01-01 (the well-known
/// era-based civil-from-days algorithm; valid for every i64 input we can produce, since the
/// callers pass at most ~1.1e11 days).
fn civil_from_days(days_since_1970: i64) -> (i64, u32, u32) {
    let z = days_since_1970 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Writes `YYYY-MM-DD` (year at least 4 digits, astronomical year ≤ 0 shown as a BC year
/// 1 − y) and returns whether the date is BC.
fn write_ymd(out: &mut Vec<u8>, days_since_2000: i64) -> bool {
    let (year, month, day) = civil_from_days(days_since_2000 + DAYS_1970_TO_2000);
    let bc = year <= 0;
    let shown = if bc { 1 - year } else { year };
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(shown);
    out.extend(std::iter::repeat(b'0').take(4usize.saturating_sub(digits.len())));
    out.extend_from_slice(digits.as_bytes());
    out.push(b'-');
    push2(out, month);
    out.push(b'-');
    push2(out, day);
    bc
}

/// `.ffffff` with trailing zeros removed; nothing when `usec` is 0.
fn write_fraction(out: &mut Vec<u8>, usec: u32) {
    if usec == 0 {
        return;
    }
    let mut digits = [0u8; 6];
    let mut v = usec;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let len = 6 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    out.push(b'.');
    out.extend_from_slice(&digits[..len]);
}

/// `HH:MM:SS[.ffffff]` for 0 ≤ t ≤ 24:00:00.
fn write_hms(out: &mut Vec<u8>, t: i64) {
    let secs = t / USECS_PER_SEC;
    push2(out, (secs / 3600) as u32);
    out.push(b':');
    push2(out, (secs / 60 % 60) as u32);
    out.push(b':');
    push2(out, (secs % 60) as u32);
    write_fraction(out, (t % USECS_PER_SEC) as u32);
}

pub(crate) fn write_date(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let days = Reader::exact(raw, 4)?.i32()?;
    match days {
        i32::MIN => out.extend_from_slice(b"\"-infinity\""),
        i32::MAX => out.extend_from_slice(b"\"infinity\""),
        _ => {
            out.push(b'"');
            if write_ymd(out, i64::from(days)) {
                out.extend_from_slice(b" BC");
            }
            out.push(b'"');
        }
    }
    Ok(())
}

fn read_time_of_day(r: &mut Reader<'_>) -> Result<i64, Bad> {
    let t = r.i64()?;
    if !(0..=USECS_PER_DAY).contains(&t) {
        return Err(Bad(format!("time of day {t} µs is out of range").into()));
    }
    Ok(t)
}

pub(crate) fn write_time(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let t = read_time_of_day(&mut Reader::exact(raw, 8)?)?;
    out.push(b'"');
    write_hms(out, t);
    out.push(b'"');
    Ok(())
}

pub(crate) fn write_timetz(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let mut r = Reader::exact(raw, 12)?;
    let t = read_time_of_day(&mut r)?;
    let west = i64::from(r.i32()?);
    out.push(b'"');
    write_hms(out, t);
    // The zone is stored as seconds west of UTC; ISO offsets count east.
    out.push(if west > 0 { b'-' } else { b'+' });
    let abs = west.unsigned_abs();
    let hours = abs / 3600;
    if hours < 10 {
        out.push(b'0');
    }
    write_int(out, hours);
    out.push(b':');
    push2(out, (abs / 60 % 60) as u32);
    if abs % 60 != 0 {
        out.push(b':');
        push2(out, (abs % 60) as u32);
    }
    out.push(b'"');
    Ok(())
}

pub(crate) fn write_timestamp(out: &mut Vec<u8>, raw: &[u8], utc: bool) -> Result<(), Bad> {
    let v = Reader::exact(raw, 8)?.i64()?;
    match v {
        i64::MIN => out.extend_from_slice(b"\"-infinity\""),
        i64::MAX => out.extend_from_slice(b"\"infinity\""),
        _ => {
            out.push(b'"');
            let bc = write_ymd(out, v.div_euclid(USECS_PER_DAY));
            out.push(b'T');
            write_hms(out, v.rem_euclid(USECS_PER_DAY));
            if utc {
                out.push(b'Z');
            }
            if bc {
                out.extend_from_slice(b" BC");
            }
            out.push(b'"');
        }
    }
    Ok(())
}

/// `n` + designator, omitted when zero (PostgreSQL's AddISO8601IntPart).
fn iso_part(out: &mut Vec<u8>, n: i64, designator: u8) {
    if n != 0 {
        write_int(out, n);
        out.push(designator);
    }
}

/// ISO 8601 duration exactly as PostgreSQL prints it with `IntervalStyle = iso_8601`:
/// months split into years and months, days as stored, the time split into hours, minutes
/// and seconds, every part truncated toward zero so it keeps the sign of its source field.
pub(crate) fn write_interval(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let mut r = Reader::exact(raw, 16)?;
    let time = r.i64()?;
    let days = r.i32()?;
    let months = r.i32()?;
    // Infinite intervals exist since PostgreSQL 17.
    if time == i64::MAX && days == i32::MAX && months == i32::MAX {
        out.extend_from_slice(b"\"infinity\"");
        return Ok(());
    }
    if time == i64::MIN && days == i32::MIN && months == i32::MIN {
        out.extend_from_slice(b"\"-infinity\"");
        return Ok(());
    }
    let years = i64::from(months / 12);
    let months = i64::from(months % 12);
    let days = i64::from(days);
    let hours = time / USECS_PER_HOUR;
    let minutes = time % USECS_PER_HOUR / USECS_PER_MINUTE;
    let seconds = time % USECS_PER_MINUTE / USECS_PER_SEC;
    let fraction = time % USECS_PER_SEC;

    out.push(b'"');
    if years == 0 && months == 0 && days == 0 && time == 0 {
        out.extend_from_slice(b"PT0S\"");
        return Ok(());
    }
    out.push(b'P');
    iso_part(out, years, b'Y');
    iso_part(out, months, b'M');
    iso_part(out, days, b'D');
    if time != 0 {
        out.push(b'T');
    }
    iso_part(out, hours, b'H');
    iso_part(out, minutes, b'M');
    if seconds != 0 || fraction != 0 {
        if seconds < 0 || fraction < 0 {
            out.push(b'-');
        }
        write_int(out, seconds.unsigned_abs());
        write_fraction(out, fraction.unsigned_abs() as u32);
        out.push(b'S');
    }
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use postgres_protocol::types as pp;

    fn run(f: fn(&mut Vec<u8>, &[u8]) -> Result<(), Bad>, raw: &[u8]) -> String {
        let mut out = Vec::new();
        f(&mut out, raw).expect("valid value");
        String::from_utf8(out).expect("utf8")
    }

    fn date(days: i32) -> String {
        let mut b = BytesMut::new();
        pp::date_to_sql(days, &mut b);
        run(write_date, &b)
    }

    fn ts(us: i64, utc: bool) -> String {
        let mut b = BytesMut::new();
        pp::timestamp_to_sql(us, &mut b);
        let mut out = Vec::new();
        write_timestamp(&mut out, &b, utc).expect("valid");
        String::from_utf8(out).expect("utf8")
    }

    fn interval(time: i64, days: i32, months: i32) -> String {
        let mut b = Vec::new();
        b.extend_from_slice(&time.to_be_bytes());
        b.extend_from_slice(&days.to_be_bytes());
        b.extend_from_slice(&months.to_be_bytes());
        run(write_interval, &b)
    }

    fn timetz(us: i64, west: i32) -> String {
        let mut b = Vec::new();
        b.extend_from_slice(&us.to_be_bytes());
        b.extend_from_slice(&west.to_be_bytes());
        run(write_timetz, &b)
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "\"2000-01-01\"");
        assert_eq!(date(8796), "\"2024-01-31\"");
        assert_eq!(date(-1), "\"1999-12-31\"");
        assert_eq!(date(-10957), "\"1970-01-01\"");
        assert_eq!(date(59), "\"2000-02-29\"");
        // 0044-03-15 BC = astronomical year -43
        assert_eq!(date(-746_117), "\"0044-03-15 BC\"");
        // 0001-12-31 BC is the day before 0001-01-01
        assert_eq!(date(-730_119), "\"0001-01-01\"");
        assert_eq!(date(-730_120), "\"0001-12-31 BC\"");
        // Julian day 0 = 4714-11-24 BC proleptic Gregorian; PostgreSQL's minimum date
        assert_eq!(date(-2_451_545), "\"4714-11-24 BC\"");
        assert_eq!(date(2_921_940), "\"10000-01-01\"");
        assert_eq!(date(i32::MAX), "\"infinity\"");
        assert_eq!(date(i32::MIN), "\"-infinity\"");
        // Out-of-range day counts still format without overflow.
        assert!(date(i32::MAX - 1).starts_with("\"5881610-"));
        assert!(date(i32::MIN + 1).ends_with(" BC\""));
    }

    #[test]
    fn times() {
        let t = |us: i64| {
            let mut b = BytesMut::new();
            pp::time_to_sql(us, &mut b);
            run(write_time, &b)
        };
        assert_eq!(t(0), "\"00:00:00\"");
        assert_eq!(t(45_296_000_000), "\"12:34:56\"");
        assert_eq!(t(45_296_789_000), "\"12:34:56.789\"");
        assert_eq!(t(43_200_000_100), "\"12:00:00.0001\"");
        assert_eq!(t(USECS_PER_DAY), "\"24:00:00\"");
        let mut out = Vec::new();
        assert!(write_time(&mut out, &(-1i64).to_be_bytes()).is_err());
        assert!(write_time(&mut out, &(USECS_PER_DAY + 1).to_be_bytes()).is_err());
        assert!(write_time(&mut out, &[0; 7]).is_err());
    }

    #[test]
    fn timetz_offsets() {
        let noon = 12 * USECS_PER_HOUR;
        assert_eq!(timetz(45_296_000_000, -19_800), "\"12:34:56+05:30\"");
        assert_eq!(timetz(noon, 28_800), "\"12:00:00-08:00\"");
        assert_eq!(timetz(noon, 0), "\"12:00:00+00:00\"");
        assert_eq!(
            timetz(3_723_500_000, -(5 * 3600 + 30 * 60 + 15)),
            "\"01:02:03.5+05:30:15\""
        );
        assert_eq!(timetz(noon, 57_599), "\"12:00:00-15:59:59\"");
        let mut out = Vec::new();
        assert!(write_timetz(&mut out, &[0; 8]).is_err());
        assert!(write_timetz(&mut out, &[0; 13]).is_err());
    }

    #[test]
    fn timestamps() {
        let day = USECS_PER_DAY;
        let t = 8796 * day + 45_296_123_456;
        assert_eq!(ts(t, false), "\"2024-01-31T12:34:56.123456\"");
        assert_eq!(ts(t, true), "\"2024-01-31T12:34:56.123456Z\"");
        assert_eq!(ts(0, false), "\"2000-01-01T00:00:00\"");
        assert_eq!(ts(-1, false), "\"1999-12-31T23:59:59.999999\"");
        assert_eq!(ts(500_000, true), "\"2000-01-01T00:00:00.5Z\"");
        let bc = -746_117 * day + 12 * USECS_PER_HOUR;
        assert_eq!(ts(bc, false), "\"0044-03-15T12:00:00 BC\"");
        assert_eq!(ts(bc, true), "\"0044-03-15T12:00:00Z BC\"");
        assert_eq!(ts(i64::MAX, true), "\"infinity\"");
        assert_eq!(ts(i64::MIN, false), "\"-infinity\"");
        // Extremes other than the infinities must not overflow.
        assert!(
            ts(i64::MAX - 1, false).starts_with("\"294277-"),
            "{}",
            ts(i64::MAX - 1, false)
        );
        assert!(ts(i64::MIN + 1, false).ends_with(" BC\""));
        let mut out = Vec::new();
        assert!(write_timestamp(&mut out, &[0; 9], false).is_err());
    }

    #[test]
    fn intervals() {
        let h = USECS_PER_HOUR;
        let m = USECS_PER_MINUTE;
        let s = USECS_PER_SEC;
        assert_eq!(interval(0, 0, 0), "\"PT0S\"");
        assert_eq!(interval(3 * h, -2, 12), "\"P1Y-2DT3H\"");
        assert_eq!(
            interval(4 * h + 5 * m + 6 * s + 500_000, 3, 14),
            "\"P1Y2M3DT4H5M6.5S\""
        );
        assert_eq!(
            interval(-(4 * h + 5 * m + 6 * s), 3, -14),
            "\"P-1Y-2M3DT-4H-5M-6S\""
        );
        assert_eq!(interval(1_500_000, 0, 0), "\"PT1.5S\"");
        assert_eq!(interval(-500_000, 0, 0), "\"PT-0.5S\"");
        assert_eq!(interval(-1, 1, 0), "\"P1DT-0.000001S\"");
        assert_eq!(interval(100_000 * h, 0, 0), "\"PT100000H\"");
        assert_eq!(interval(0, 0, 14), "\"P1Y2M\"");
        assert_eq!(interval(0, 0, -14), "\"P-1Y-2M\"");
        assert_eq!(interval(0, 0, 12), "\"P1Y\"");
        assert_eq!(interval(0, 7, 0), "\"P7D\"");
        assert_eq!(interval(m, 0, 0), "\"PT1M\"");
        assert_eq!(interval(i64::MAX, i32::MAX, i32::MAX), "\"infinity\"");
        assert_eq!(interval(i64::MIN, i32::MIN, i32::MIN), "\"-infinity\"");
        // Extreme but finite values must not overflow.
        let _ = interval(i64::MIN, i32::MIN, 0);
        let _ = interval(i64::MAX, 0, i32::MIN);
        let mut out = Vec::new();
        assert!(write_interval(&mut out, &[0; 15]).is_err());
    }
}
