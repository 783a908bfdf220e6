//! Time: instants as Unix milliseconds, RFC 3339 with offset on the wire, calendar days in Asia/Shanghai.
//!
//! Asia/Shanghai has been UTC+08:00 without daylight saving since 1991, so a fixed offset is exact for every
//! instant scenefin handles and no time-zone database is needed. Instants are rendered in that offset.
//!
//! Rules never read the system clock directly: they take a [`Clock`], which is the real clock in production and
//! a fixed one in tests (or when variable `test_clock_enabled` lets a request carry `X-Scenefin-Now`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Offset of Asia/Shanghai from UTC, in seconds.
pub const SHANGHAI_OFFSET_SECS: i64 = 8 * 3600;

const MS_PER_DAY: i64 = 86_400_000;

/// An instant, as milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// A source of the current time.
pub trait Clock {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock stuck at one instant.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// Why a timestamp did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 date-time with offset (e.g. 2026-11-23T14:00:00+08:00): {0:?}")]
pub struct ParseTimeError(pub String);

impl crate::problem::Problem for ParseTimeError {
    fn kind(&self) -> crate::problem::ErrorKind {
        crate::problem::ErrorKind::Invalid
    }
    fn code(&self) -> &'static str {
        "validation_failed"
    }
}

impl Timestamp {
    /// From Unix milliseconds.
    pub const fn from_unix_ms(ms: i64) -> Self {
        Self(ms)
    }

    /// From Unix seconds.
    pub const fn from_unix_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Unix milliseconds.
    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// Unix seconds (floor).
    pub const fn unix_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant plus `secs` seconds (saturating).
    pub const fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    /// This instant plus `days` days (saturating).
    pub const fn plus_days(self, days: i64) -> Self {
        Self(self.0.saturating_add(days.saturating_mul(MS_PER_DAY)))
    }

    /// Whole seconds from `earlier` to `self` (negative if `earlier` is later).
    pub const fn secs_since(self, earlier: Timestamp) -> i64 {
        (self.0 - earlier.0).div_euclid(1000)
    }

    /// The calendar day in Asia/Shanghai, as a number `yyyymmdd`.
    pub fn shanghai_day(self) -> u32 {
        let local_ms = self.0 + SHANGHAI_OFFSET_SECS * 1000;
        let (y, m, d) = civil_from_days(local_ms.div_euclid(MS_PER_DAY));
        u32::try_from(y * 10_000 + i64::from(m) * 100 + i64::from(d)).unwrap_or(0)
    }

    /// Days since the epoch of the Asia/Shanghai calendar day (for day arithmetic).
    pub fn shanghai_day_number(self) -> i64 {
        (self.0 + SHANGHAI_OFFSET_SECS * 1000).div_euclid(MS_PER_DAY)
    }

    /// RFC 3339 in the +08:00 offset, with milliseconds when not whole seconds.
    pub fn to_rfc3339(self) -> String {
        let local_ms = self.0 + SHANGHAI_OFFSET_SECS * 1000;
        let days = local_ms.div_euclid(MS_PER_DAY);
        let ms_of_day = local_ms.rem_euclid(MS_PER_DAY);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
        if ms == 0 {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+08:00")
        } else {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}+08:00")
        }
    }

    /// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]`). An offset is required.
    pub fn parse_rfc3339(input: &str) -> Result<Self, ParseTimeError> {
        let err = || ParseTimeError(input.chars().take(64).collect());
        let b = input.as_bytes();
        if b.len() < 20 || !input.is_ascii() {
            return Err(err());
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, ParseTimeError> {
            let part = &input[range];
            if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().map_err(|_| err()) } else { Err(err()) }
        };
        let sep_ok =
            b[4] == b'-' && b[7] == b'-' && matches!(b[10], b'T' | b't' | b' ') && b[13] == b':' && b[16] == b':';
        if !sep_ok {
            return Err(err());
        }
        let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
            return Err(err());
        }
        let mut rest = &input[19..];
        let mut ms = 0;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            let padded: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
            ms = padded.parse::<i64>().map_err(|_| err())?;
            rest = &frac[digits..];
        }
        let offset_secs = match rest {
            "Z" | "z" => 0,
            _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
                let start = input.len() - 6;
                let (oh, om) = (num(start + 1..start + 3)?, num(start + 4..start + 6)?);
                if oh > 23 || om > 59 {
                    return Err(err());
                }
                let sign = if rest.starts_with('-') { -1 } else { 1 };
                sign * (oh * 3600 + om * 60)
            }
            _ => return Err(err()),
        };
        let days = days_from_civil(y, mo, d);
        let secs = days * 86_400 + h * 3600 + mi * 60 + s.min(59) - offset_secs;
        Ok(Timestamp(secs * 1000 + ms))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a Shanghai day `yyyymmdd`.
pub fn iso_day(day: u32) -> String {
    format!("{:04}-{:02}-{:02}", day / 10_000, day / 100 % 100, day % 100)
}

/// `yyyymmdd` of a Shanghai day number (days since the epoch, [`Timestamp::shanghai_day_number`]).
pub fn day_of_number(number: i64) -> u32 {
    Timestamp::from_unix_ms(number.saturating_mul(MS_PER_DAY)).shanghai_day()
}

/// The Shanghai day number of `yyyymmdd`, if that is a date.
pub fn number_of_day(day: u32) -> Option<i64> {
    let number = Timestamp::parse_rfc3339(&format!("{}T12:00:00+08:00", iso_day(day))).ok()?.shanghai_day_number();
    (day_of_number(number) == day).then_some(number)
}

/// The date of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_in_the_shanghai_offset() {
        let t = Timestamp::parse_rfc3339("2026-11-23T14:00:00Z").expect("parse");
        assert_eq!(t.to_rfc3339(), "2026-11-23T22:00:00+08:00");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        let t = Timestamp::parse_rfc3339("2024-02-29T23:59:59.5-05:00").expect("parse");
        assert_eq!(t.to_rfc3339(), "2024-03-01T12:59:59.500+08:00");
        assert_eq!(Timestamp::from_unix_secs(0).to_rfc3339(), "1970-01-01T08:00:00+08:00");
    }

    #[test]
    fn malformed_times_are_rejected() {
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T14:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T14:00:00+8:00",
            "2026-11-23T14:00:00.Z",
            "２０２６-11-23T14:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn calendar_days_are_shanghai_days() {
        // 15:59:59Z is 23:59:59 in Shanghai; 16:00Z is the next day there.
        let before = Timestamp::parse_rfc3339("2026-11-23T15:59:59Z").expect("parse");
        let after = before.plus_secs(1);
        assert_eq!(before.shanghai_day(), 20261123);
        assert_eq!(after.shanghai_day(), 20261124);
        assert_eq!(after.shanghai_day_number() - before.shanghai_day_number(), 1);
    }
}
