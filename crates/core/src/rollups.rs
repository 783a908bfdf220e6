//! Roll-ups of per-day counters: what an operator report reads instead of `days × counters` keys.
//!
//! A *series* is a fixed list of counters kept per Asia/Shanghai day (the funnel of one dimension: its steps and its
//! time-to-activate buckets; the stage transitions; every channel code's steps), named by a key part that
//! determines the list. [`per_day`] returns each asked day's counters: days still open are read from the counters
//! themselves, closed days from immutable documents, `ops:rollup:{series}:{span}`:
//!
//! - `w{yyyymmdd}`: a closed Monday-to-Sunday week (named by its Monday), every day's counters;
//! - `w{yyyymmdd}+{n}`: the first `n` days (1 to 6) of the week under way, once they are closed (superseded by
//!   `…+{n+1}` the next day; the superseded ones stay, a few hundred bytes each).
//!
//! So a 30-day range reads at most 5 documents plus the open days' counters, and a year at most 53 documents, all
//! in one batch read.
//! A read that finds a document missing (or of another shape: the series' counters changed) builds it from the
//! counters (one more batch read) and writes it with a plain `set`: its content is fixed by counters that no longer
//! move, so two readers racing to write it write the same bytes, and a write that fails is retried by a later read.
//!
//! **When a day is closed.** Counters are moved at request time, for the day of the event's instant. That instant
//! is the request's own, except a payment's, which is the gateway's `paid_at`, clamped into
//! `[order created − orders::PAID_AT_SKEW_SECS, now + skew]` and accepted only while the order is in its payment
//! window (`orders::PAYMENT_WINDOW_SECS`): at most 35 minutes before the request. A day is therefore closed
//! [`CLOSE_MARGIN_SECS`] (an hour) after it ends in Asia/Shanghai; the days after it are read raw until then.
//! The one exception is crash recovery: an event whose counter effects a crash interrupted is completed by its
//! retry, possibly days later, on the event's own day; if that day was already folded, the count is missing from
//! the reports, the same undercount by one that a crash between a claim and its increment already allows (funnel
//! counters are at-most-once). The clock is the request's (the `x-scenefin-now` test clock where enabled): a test
//! that moves it backwards and adds events to days a read already folded will not see them.

use serde::{Deserialize, Serialize};

use crate::clock::{SHANGHAI_OFFSET_SECS, Timestamp};
use crate::kv::{self, Key, Store, StoreError};
use crate::orders::{PAID_AT_SKEW_SECS, PAYMENT_WINDOW_SECS};

/// How long after its end (Asia/Shanghai) a day's counters are taken as final.
pub const CLOSE_MARGIN_SECS: i64 = 3600;

const _: () = assert!(CLOSE_MARGIN_SECS > PAYMENT_WINDOW_SECS + PAID_AT_SKEW_SECS + 10 * 60);

const SECS_PER_DAY: i64 = 86_400;
const WEEK: i64 = 7;

/// Keys owned here (`ops:` is core's).
pub mod keys {
    use crate::kv::Key;

    /// `ops:rollup:{series}:{span}` — a closed span's counters of a series (`w{yyyymmdd}`: the week starting that
    /// Monday, `d{yyyymmdd}`: one day), a JSON document written once.
    pub fn rollup(series: &str, span: &str) -> Key {
        Key::new(&["ops", "rollup", series, span])
    }

    /// The roll-up of the week starting on Monday `monday` (`yyyymmdd`).
    pub fn week(series: &str, monday: u32) -> Key {
        rollup(series, &format!("w{monday}"))
    }

    /// The roll-up of the first `days` days of the week starting on Monday `monday` (`yyyymmdd`).
    pub fn week_prefix(series: &str, monday: u32, days: i64) -> Key {
        rollup(series, &format!("w{monday}+{days}"))
    }
}

/// A roll-up document: `days[i]` holds the counters of the span's i-th day, in the series' order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rollup {
    /// The span's first day, `yyyymmdd`.
    from: u32,
    /// Counters per day.
    days: Vec<Vec<i64>>,
}

pub use crate::clock::day_of_number;

/// The last closed day number at `now`: the day that ended at least [`CLOSE_MARGIN_SECS`] ago.
pub fn last_closed_day(now: Timestamp) -> i64 {
    (now.unix_secs() + SHANGHAI_OFFSET_SECS - CLOSE_MARGIN_SECS).div_euclid(SECS_PER_DAY) - 1
}

/// The day number of the Monday of the week holding `day_number` (day 0, 1970-01-01, was a Thursday).
fn week_start(day_number: i64) -> i64 {
    (day_number + 3).div_euclid(WEEK) * WEEK - 3
}

/// Where a day's counters come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// A closed week's document (its Monday's day number).
    Week(i64),
    /// The closed days of a week under way (its Monday, how many).
    Prefix(i64, i64),
    /// The counters themselves.
    Raw(i64),
}

impl Source {
    fn of(day_number: i64, closed_through: i64) -> Source {
        let monday = week_start(day_number);
        if day_number > closed_through {
            Source::Raw(day_number)
        } else if monday + WEEK - 1 <= closed_through {
            Source::Week(monday)
        } else {
            Source::Prefix(monday, closed_through - monday + 1)
        }
    }

    /// The day numbers a document covers.
    fn days(self) -> std::ops::Range<i64> {
        match self {
            Source::Week(monday) => monday..monday + WEEK,
            Source::Prefix(monday, days) => monday..monday + days,
            Source::Raw(d) => d..d + 1,
        }
    }

    fn key(self, series: &str) -> Option<Key> {
        match self {
            Source::Week(monday) => Some(keys::week(series, day_of_number(monday))),
            Source::Prefix(monday, days) => Some(keys::week_prefix(series, day_of_number(monday), days)),
            Source::Raw(_) => None,
        }
    }
}

/// Decodes counters read in a batch (`raws[i]` of `keys[i]`); absent ones are 0.
pub fn counters_of(raws: &[Option<Vec<u8>>], keys: &[Key]) -> Result<Vec<i64>, StoreError> {
    keys.iter()
        .zip(raws)
        .map(|(key, raw)| Ok(raw.as_deref().map(|b| kv::decode_counter(key, b)).transpose()?.unwrap_or(0)))
        .collect()
}

/// The days (`yyyymmdd`) among `day_numbers` whose log `log_of(yyyymmdd)` has entries, oldest first: found from
/// roll-ups of the logs' slot counters (series `series`), so a year costs about sixty keys, then only those days'
/// logs need reading. The logs must be appended at request time for the request's day (see "When a day is closed").
pub async fn days_with_entries(
    store: &impl Store,
    series: &str,
    day_numbers: &[i64],
    now: Timestamp,
    log_of: impl Fn(u32) -> Key,
) -> Result<Vec<u32>, StoreError> {
    let counters = |day: u32| vec![kv::log_counter_key(&log_of(day))];
    let (per_day, _) = per_day(store, series, day_numbers, now, counters, &[]).await?;
    Ok(day_numbers
        .iter()
        .zip(&per_day)
        .filter(|(_, counts)| counts.first().is_some_and(|n| *n > 0))
        .map(|(day, _)| day_of_number(*day))
        .collect())
}

/// The counters of each of `day_numbers` (Asia/Shanghai day numbers) in `series` at `now`: `counters(yyyymmdd)`
/// lists a day's counter keys, the same number for every day, and `series` names that list (a key part). Also
/// reads `extra` keys in the same batch and returns their raw values. Closed days come from roll-ups, built and
/// written here when missing (see the module docs).
pub async fn per_day(
    store: &impl Store,
    series: &str,
    day_numbers: &[i64],
    now: Timestamp,
    counters: impl Fn(u32) -> Vec<Key>,
    extra: &[Key],
) -> Result<(Vec<Vec<i64>>, Vec<Option<Vec<u8>>>), StoreError> {
    let width = day_numbers.first().map_or(0, |d| counters(day_of_number(*d)).len());
    if width == 0 {
        let raws = if extra.is_empty() { Vec::new() } else { kv::get_all(store, extra).await? };
        return Ok((vec![Vec::new(); day_numbers.len()], raws));
    }
    let closed_through = last_closed_day(now);
    let sources: Vec<Source> = day_numbers.iter().map(|d| Source::of(*d, closed_through)).collect();
    let mut docs: Vec<Source> = sources.iter().copied().filter(|s| !matches!(s, Source::Raw(_))).collect();
    docs.sort_unstable();
    docs.dedup();
    let doc_keys: Vec<Key> = docs.iter().filter_map(|s| s.key(series)).collect();
    let mut raw_days: Vec<i64> =
        sources.iter().filter_map(|s| if let Source::Raw(d) = s { Some(*d) } else { None }).collect();
    raw_days.sort_unstable();
    raw_days.dedup();
    let raw_keys: Vec<Key> = raw_days.iter().flat_map(|d| counters(day_of_number(*d))).collect();

    // One batch: the documents, the open days' counters and the extra keys.
    let all: Vec<Key> = doc_keys.iter().chain(&raw_keys).chain(extra).cloned().collect();
    let mut raws = kv::get_all(store, &all).await?;
    let extra_raws = raws.split_off(doc_keys.len() + raw_keys.len());
    let raw_values = raws.split_off(doc_keys.len());

    let mut by_day: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for (i, day) in raw_days.iter().enumerate() {
        let keys = &raw_keys[i * width..(i + 1) * width];
        by_day.insert(*day, counters_of(&raw_values[i * width..(i + 1) * width], keys)?);
    }
    let mut missing = Vec::new();
    for ((source, key), raw) in docs.iter().zip(&doc_keys).zip(&raws) {
        let span: Vec<i64> = source.days().collect();
        let doc = kv::decode_doc::<Rollup>(key, raw.as_deref()).ok().flatten().filter(|doc| {
            doc.from == day_of_number(span[0])
                && doc.days.len() == span.len()
                && doc.days.iter().all(|d| d.len() == width)
        });
        match doc {
            Some(doc) => by_day.extend(span.into_iter().zip(doc.days)),
            None => missing.push((*source, key.clone())),
        }
    }

    if !missing.is_empty() {
        // Fold the missing documents from their counters: one more batch read, then one `set` each.
        let fold_keys: Vec<Key> =
            missing.iter().flat_map(|(s, _)| s.days()).flat_map(|d| counters(day_of_number(d))).collect();
        let values = counters_of(&kv::get_all(store, &fold_keys).await?, &fold_keys)?;
        let mut chunks = values.chunks(width);
        for (source, key) in &missing {
            let span: Vec<i64> = source.days().collect();
            let days: Vec<Vec<i64>> = chunks.by_ref().take(span.len()).map(<[i64]>::to_vec).collect();
            let doc = Rollup { from: day_of_number(span[0]), days: days.clone() };
            // Best effort: a roll-up that cannot be written now is folded again by a later read.
            let _ = kv::put_json(store, key, &doc).await;
            by_day.extend(span.into_iter().zip(days));
        }
    }
    let values = day_numbers.iter().map(|d| by_day.get(d).cloned().unwrap_or_else(|| vec![0; width])).collect();
    Ok((values, extra_raws))
}

/// Element-wise sums of the rows.
pub fn sum_rows(rows: &[Vec<i64>], width: usize) -> Vec<i64> {
    let mut sums = vec![0; width];
    for row in rows {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        Timestamp::parse_rfc3339(rfc3339).expect("time")
    }

    #[test]
    fn a_day_closes_an_hour_after_it_ends_and_weeks_start_on_monday() {
        let day = at("2026-11-23T12:00:00+08:00").shanghai_day_number();
        assert_eq!(day_of_number(day), 20_261_123);
        assert_eq!(day_of_number(week_start(day)), 20_261_123, "the 23rd is a Monday");
        assert_eq!(day_of_number(week_start(day + 6)), 20_261_123);
        assert_eq!(day_of_number(week_start(day - 1)), 20_261_116);
        assert_eq!(last_closed_day(at("2026-11-24T00:59:59+08:00")), day - 1);
        assert_eq!(last_closed_day(at("2026-11-24T01:00:00+08:00")), day);
        assert_eq!(Source::of(day, day), Source::Prefix(day, 1));
        assert_eq!(Source::of(day, day + 2), Source::Prefix(day, 3));
        assert_eq!(Source::of(day + 6, day + 6), Source::Week(day));
        assert_eq!(Source::of(day + 1, day), Source::Raw(day + 1));
    }
}
