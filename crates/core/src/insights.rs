//! Operator analytics over the counters [`crate::events`] keeps: the funnel with conversion rates and the median time
//! to activate, the lifecycle mix and its transitions, per-dimension funnel totals (for channel reviews), and the
//! shape every budget is reviewed in.
//!
//! Everything here reads counters by key and never lists the store. Closed days are read from roll-ups
//! ([`crate::rollups`]: one document per closed week, and one for the closed days of the week under way, folded
//! once by the first read that needs it), open days from their counters, all in one batch read: a 30-day funnel
//! reads at most 28 keys, a year at most 76 (in the hour after midnight, while yesterday is not closed yet, 23
//! more).
//!
//! Precision:
//! - funnel and transition counters are at-most-once per effect (a crash between a claim and its increment loses
//!   that one count), so a report can undercount, never overcount;
//! - the median time to activate is known to its histogram bucket ([`crate::events::TTA_BUCKETS`] exponential
//!   minute buckets): the report gives the bucket holding the median, and `median_minutes_to_activate` is that
//!   bucket's lower bound, so the true median is at least that and less than twice that (under a minute: 0);
//! - stage counts are of the *stored* stage. `dormant` is evaluated lazily per customer on read
//!   ([`crate::customers::Customer::stage_at`]), so a dormant customer is still counted under the stage its last
//!   event left it in.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::customers::Stage;
use crate::events::{self, FunnelStep, TTA_BUCKETS, keys, tta_bucket_bounds};
use crate::ids::Id;
use crate::kv::{Key, Store, StoreError};
use crate::limits::BudgetStatus;
use crate::problem::{ErrorKind, Problem};
use crate::rollups;

/// Longest range a report covers, in days.
pub const MAX_RANGE_DAYS: i64 = 366;
/// The range when none is given: this many days up to the request's day.
pub const DEFAULT_RANGE_DAYS: i64 = 30;
/// Longest channel code (as the customers component allows).
const MAX_CODE_LEN: usize = 16;

/// Every funnel step, in order.
pub const FUNNEL: [FunnelStep; 4] =
    [FunnelStep::Visited, FunnelStep::Registered, FunnelStep::Activated, FunnelStep::Retained];

/// Every lifecycle stage, in order.
pub const STAGES: [Stage; 5] = [Stage::New, Stage::Activated, Stage::Engaged, Stage::HighValue, Stage::Dormant];

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsightsError {
    /// A bad query parameter.
    #[error("{field}: {message}")]
    Invalid {
        /// The parameter.
        field: String,
        /// What is expected.
        message: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InsightsError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        InsightsError::Invalid { field: field.to_owned(), message: message.into() }
    }
}

impl Problem for InsightsError {
    fn kind(&self) -> ErrorKind {
        match self {
            InsightsError::Invalid { .. } => ErrorKind::Invalid,
            InsightsError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            InsightsError::Invalid { .. } => "validation_failed",
            InsightsError::Store(e) => e.code(),
        }
    }
    fn field(&self) -> Option<&str> {
        match self {
            InsightsError::Invalid { field, .. } => Some(field),
            InsightsError::Store(_) => None,
        }
    }
}

/// A range of Asia/Shanghai calendar days, both ends included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRange {
    /// Noon of the first day.
    first: Timestamp,
    /// Number of days.
    len: i64,
    /// When the report is asked for: days closed by then come from roll-ups.
    now: Timestamp,
}

impl DayRange {
    /// Parses `from` and `to` (`YYYY-MM-DD`, each optional, empty counting as absent): `to` defaults to `now`'s
    /// day, `from` to [`DEFAULT_RANGE_DAYS`] days up to `to`. At most [`MAX_RANGE_DAYS`] days, `from` not after `to`.
    pub fn parse(from: Option<&str>, to: Option<&str>, now: Timestamp) -> Result<DayRange, InsightsError> {
        let (from, to) = (from.filter(|v| !v.is_empty()), to.filter(|v| !v.is_empty()));
        let last = match to {
            Some(v) => date("to", v)?,
            None => noon(now),
        };
        let first = match from {
            Some(v) => date("from", v)?,
            None => last.plus_days(1 - DEFAULT_RANGE_DAYS),
        };
        let len = last.shanghai_day_number() - first.shanghai_day_number() + 1;
        if len < 1 {
            return Err(InsightsError::invalid("from", "on or before to"));
        }
        if len > MAX_RANGE_DAYS {
            return Err(InsightsError::invalid("from", format!("at most {MAX_RANGE_DAYS} days before to")));
        }
        Ok(DayRange { first, len, now })
    }

    /// The same days, read as of `now` (which days are closed, see [`crate::rollups`]).
    pub fn as_of(&self, now: Timestamp) -> DayRange {
        DayRange { now, ..self.clone() }
    }

    /// When the report is asked for.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The days as Asia/Shanghai day numbers, oldest first.
    pub fn day_numbers(&self) -> Vec<i64> {
        let first = self.first.shanghai_day_number();
        (first..first + self.len).collect()
    }

    /// The days, `yyyymmdd`, oldest first.
    pub fn days(&self) -> Vec<u32> {
        (0..self.len).map(|i| self.first.plus_days(i).shanghai_day()).collect()
    }

    /// Number of days.
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(0)
    }

    /// Never: a range has at least one day.
    pub fn is_empty(&self) -> bool {
        self.len < 1
    }

    /// The first day, `YYYY-MM-DD`.
    pub fn from_date(&self) -> String {
        iso_date(self.first)
    }

    /// The last day, `YYYY-MM-DD`.
    pub fn to_date(&self) -> String {
        iso_date(self.first.plus_days(self.len - 1))
    }
}

fn noon(t: Timestamp) -> Timestamp {
    // Noon of the Shanghai day `t` falls on: parse back its own date.
    Timestamp::parse_rfc3339(&format!("{}T12:00:00+08:00", iso_date(t))).unwrap_or(t)
}

fn iso_date(t: Timestamp) -> String {
    t.to_rfc3339().chars().take(10).collect()
}

fn date(field: &str, value: &str) -> Result<Timestamp, InsightsError> {
    let bad = || InsightsError::invalid(field, "a date, YYYY-MM-DD");
    if value.len() != 10 || !value.is_ascii() {
        return Err(bad());
    }
    Timestamp::parse_rfc3339(&format!("{value}T12:00:00+08:00")).map_err(|_| bad())
}

/// Which slice of the funnel to read: everything, or one channel code, campaign or scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    /// Every customer (`all`).
    All,
    /// Customers whose first touch was this channel code (`ch:{code}`).
    Channel(String),
    /// Customers whose first touch carried this campaign (`cp:{campaign}`).
    Campaign(String),
    /// This scenario (`sc:{scenario}`): the touch's scenario for visits and registrations, the activating event's
    /// scenario for activations.
    Scenario(String),
}

impl Dimension {
    /// At most one of the three filters (empty values count as absent), each shaped like what it names.
    pub fn parse(
        channel: Option<&str>,
        campaign: Option<&str>,
        scenario: Option<&str>,
    ) -> Result<Dimension, InsightsError> {
        let given = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
        let filters = [("channel", given(channel)), ("campaign", given(campaign)), ("scenario", given(scenario))];
        let mut set = filters.into_iter().filter_map(|(field, v)| v.map(|v| (field, v)));
        let Some((field, value)) = set.next() else { return Ok(Dimension::All) };
        if let Some((second, _)) = set.next() {
            return Err(InsightsError::invalid(second, "only one of channel, campaign and scenario at a time"));
        }
        match field {
            "channel" => {
                if value.is_empty() || value.len() > MAX_CODE_LEN || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(InsightsError::invalid(
                        field,
                        format!("a channel code: 1 to {MAX_CODE_LEN} letters and digits"),
                    ));
                }
                Ok(Dimension::Channel(value))
            }
            _ => {
                Id::parse(&value)
                    .map_err(|_| InsightsError::invalid(field, "1 to 64 letters, digits, underscores or hyphens"))?;
                Ok(if field == "campaign" { Dimension::Campaign(value) } else { Dimension::Scenario(value) })
            }
        }
    }

    /// The dimension as counters name it.
    pub fn key_part(&self) -> String {
        match self {
            Dimension::All => events::ALL.to_owned(),
            Dimension::Channel(code) => events::channel_dimension(code),
            Dimension::Campaign(id) => events::campaign_dimension(id),
            Dimension::Scenario(s) => events::scenario_dimension(s),
        }
    }
}

/// Names of the roll-up series read here (the `{series}` of `ops:rollup:{series}:{span}`, [`crate::rollups`]): each
/// names exactly the counters it holds per day.
mod series {
    use crate::events::FunnelStep;

    /// One dimension's funnel: the 4 steps, then the time-to-activate buckets.
    pub fn funnel(dimension: &str) -> String {
        format!("funnel:{dimension}")
    }

    /// The lifecycle: the 20 stage transitions, then `registered` of `all`.
    pub const LIFECYCLE: &str = "lifecycle";

    /// Some steps of some dimensions (dimension by dimension, step by step), named by their hash.
    pub fn funnel_totals(steps: &[FunnelStep], dimensions: &[String]) -> String {
        let steps: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
        format!("ft:{}", crate::ids::hash_key_part(&format!("{}|{}", steps.join(","), dimensions.join(","))))
    }
}

/// Funnel counts summed over `range`: one row per dimension, one column per step. Closed days come from the roll-up
/// of these steps and dimensions (named by their hash), so a review of many channel codes reads a few documents
/// and the open days' `dimensions × steps` counters.
pub async fn funnel_totals(
    store: &impl Store,
    range: &DayRange,
    steps: &[FunnelStep],
    dimensions: &[String],
) -> Result<Vec<Vec<i64>>, StoreError> {
    let series = series::funnel_totals(steps, dimensions);
    let day_keys = |day: u32| -> Vec<Key> {
        dimensions.iter().flat_map(|dim| steps.iter().map(move |step| keys::funnel(day, step.as_str(), dim))).collect()
    };
    let (per_day, _) = rollups::per_day(store, &series, &range.day_numbers(), range.now, day_keys, &[]).await?;
    let sums = rollups::sum_rows(&per_day, steps.len() * dimensions.len());
    Ok(sums.chunks(steps.len().max(1)).map(<[i64]>::to_vec).take(dimensions.len()).collect())
}

/// `part / whole` in basis points, `None` when `whole` is 0.
pub fn rate_bp(part: i64, whole: i64) -> Option<i64> {
    (whole > 0).then(|| part.saturating_mul(10_000) / whole)
}

/// A funnel step's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepCount {
    /// `visited`, `registered`, `activated` or `retained`.
    pub step: &'static str,
    /// Summed over the range.
    pub count: i64,
    /// This step per the previous one, in basis points (`None` for the first step or when the previous is 0).
    pub conversion_bp: Option<i64>,
}

/// A range of minutes of the time-to-activate histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MinuteBucket {
    /// Lower bound, included.
    pub from_minutes: i64,
    /// Upper bound, excluded (`None`: open).
    pub to_minutes: Option<i64>,
    /// Activations in it.
    pub count: i64,
}

/// Time from registration to activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimeToActivate {
    /// Activations timed.
    pub activations: i64,
    /// The bucket holding the median (the lower median for an even count).
    pub median_bucket: Option<MinuteBucket>,
    /// The non-empty buckets, shortest first.
    pub buckets: Vec<MinuteBucket>,
    /// How precise the median is.
    pub precision: &'static str,
}

/// The funnel report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Funnel {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day.
    pub to: String,
    /// `all`, `ch:{code}`, `cp:{campaign}` or `sc:{scenario}`.
    pub dimension: String,
    /// `visited → registered → activated → retained`.
    pub steps: Vec<StepCount>,
    /// Retained per visited, in basis points.
    pub overall_conversion_bp: Option<i64>,
    /// The median time to activate, to its histogram bucket: the bucket's lower bound (see [`TimeToActivate`]).
    pub median_minutes_to_activate: Option<i64>,
    /// The histogram behind it.
    pub time_to_activate: TimeToActivate,
}

const TTA_PRECISION: &str = "exponential minute buckets [2^(b-1), 2^b): median_minutes_to_activate is the lower \
                             bound of the bucket holding the median, so the true median is at least that and less \
                             than twice that (0: under a minute)";

/// The funnel over `range` for `dimension`: per day its steps' counters, then its time-to-activate buckets.
pub async fn funnel(store: &impl Store, range: &DayRange, dimension: &Dimension) -> Result<Funnel, InsightsError> {
    let dim = dimension.key_part();
    let day_keys = |day: u32| -> Vec<Key> {
        let steps = FUNNEL.iter().map(|step| keys::funnel(day, step.as_str(), &dim));
        steps.chain((0..TTA_BUCKETS).map(|bucket| keys::tta(day, bucket, &dim))).collect()
    };
    let series = series::funnel(&dim);
    let (per_day, _) = rollups::per_day(store, &series, &range.day_numbers(), range.now, day_keys, &[]).await?;
    let sums = rollups::sum_rows(&per_day, FUNNEL.len() + TTA_BUCKETS);
    let (counts, histogram) = sums.split_at(FUNNEL.len());
    let steps: Vec<StepCount> = FUNNEL
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (step, count))| StepCount {
            step: step.as_str(),
            count: *count,
            conversion_bp: i.checked_sub(1).and_then(|p| rate_bp(*count, counts[p])),
        })
        .collect();
    let overall = match (counts.first(), counts.last()) {
        (Some(first), Some(last)) => rate_bp(*last, *first),
        _ => None,
    };
    let histogram: Vec<i64> = histogram.iter().map(|c| (*c).max(0)).collect();
    let time_to_activate = time_to_activate(&histogram);
    Ok(Funnel {
        from: range.from_date(),
        to: range.to_date(),
        dimension: dim,
        steps,
        overall_conversion_bp: overall,
        median_minutes_to_activate: time_to_activate.median_bucket.map(|b| b.from_minutes),
        time_to_activate,
    })
}

/// The histogram's summary (pure): `histogram[b]` is the count of bucket `b`.
pub fn time_to_activate(histogram: &[i64]) -> TimeToActivate {
    let bucket = |b: usize, count: i64| {
        let (from_minutes, to_minutes) = tta_bucket_bounds(b);
        MinuteBucket { from_minutes, to_minutes, count }
    };
    let activations: i64 = histogram.iter().sum();
    // The lower median: the ceil(n/2)-th activation in order of time.
    let rank = (activations + 1) / 2;
    let mut seen = 0;
    let mut median_bucket = None;
    for (b, count) in histogram.iter().enumerate() {
        seen += count;
        if activations > 0 && seen >= rank {
            median_bucket = Some(bucket(b, *count));
            break;
        }
    }
    TimeToActivate {
        activations,
        median_bucket,
        buckets: histogram.iter().enumerate().filter(|(_, c)| **c > 0).map(|(b, c)| bucket(b, *c)).collect(),
        precision: TTA_PRECISION,
    }
}

/// Transitions between two stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionCount {
    /// From.
    pub from: &'static str,
    /// To.
    pub to: &'static str,
    /// How many in the range.
    pub count: i64,
}

/// The lifecycle report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// First day of the transitions' range.
    pub from: String,
    /// Last day.
    pub to: String,
    /// Customers per stored stage, now (every stage named, 0 included).
    pub stages: BTreeMap<&'static str, i64>,
    /// Their sum: every registered customer.
    pub customers: i64,
    /// Customers registered in the range (the `registered` funnel step).
    pub registered: i64,
    /// Stage transitions in the range, non-zero ones, in stage order.
    pub transitions: Vec<TransitionCount>,
    /// Their sum.
    pub transitions_total: i64,
    /// What the stage counts mean.
    pub note: &'static str,
}

const STAGE_NOTE: &str = "stages are the stored stage, as of each customer's last event; dormant is evaluated lazily \
                          per customer when a profile is read (60 days without activity by default) and never \
                          stored, so dormant customers are counted under the stage they were in and dormant is 0";

/// Customers per stored stage, and the transitions of `range`.
pub async fn lifecycle(store: &impl Store, range: &DayRange) -> Result<Lifecycle, InsightsError> {
    let stage_keys: Vec<Key> = STAGES.iter().map(|s| keys::stage(s.as_str())).collect();
    let pairs: Vec<(Stage, Stage)> = STAGES
        .iter()
        .flat_map(|from| STAGES.iter().filter(move |to| *to != from).map(move |to| (*from, *to)))
        .collect();
    // Per day: every transition, then the registrations (`registered` of `all`).
    let day_keys = |day: u32| -> Vec<Key> {
        let transitions = pairs.iter().map(|(from, to)| keys::transitions(day, from.as_str(), to.as_str()));
        transitions.chain([keys::funnel(day, FunnelStep::Registered.as_str(), events::ALL)]).collect()
    };
    let (per_day, stage_raws) =
        rollups::per_day(store, series::LIFECYCLE, &range.day_numbers(), range.now, day_keys, &stage_keys).await?;
    // Counters are moved by claimed effects that may lag a moment (−1 lands before +1): never show a negative.
    let per_stage: Vec<i64> = rollups::counters_of(&stage_raws, &stage_keys)?.into_iter().map(|v| v.max(0)).collect();
    let sums = rollups::sum_rows(&per_day, pairs.len() + 1);
    let transitions: Vec<TransitionCount> = pairs
        .iter()
        .zip(&sums)
        .map(|((from, to), count)| TransitionCount { from: from.as_str(), to: to.as_str(), count: *count })
        .filter(|t| t.count != 0)
        .collect();
    let registered = sums[pairs.len()];
    Ok(Lifecycle {
        from: range.from_date(),
        to: range.to_date(),
        stages: STAGES.iter().map(|s| s.as_str()).zip(per_stage.iter().copied()).collect(),
        customers: per_stage.iter().sum(),
        registered,
        transitions_total: transitions.iter().map(|t| t.count).sum(),
        transitions,
        note: STAGE_NOTE,
    })
}

/// A budget as operators review it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetReview {
    /// Configured total.
    pub total_fen: i64,
    /// Committed: spent.
    pub spent_fen: i64,
    /// Held by live reservations, not yet committed.
    pub reserved_fen: i64,
    /// What can still be reserved.
    pub remaining_fen: i64,
    /// Spent per total, in basis points (0 for an empty budget).
    pub progress_bp: i64,
}

impl From<BudgetStatus> for BudgetReview {
    fn from(s: BudgetStatus) -> Self {
        BudgetReview {
            total_fen: s.total_fen,
            spent_fen: s.committed_fen,
            reserved_fen: (s.reserved_fen - s.committed_fen).max(0),
            remaining_fen: s.available_fen,
            progress_bp: rate_bp(s.committed_fen, s.total_fen).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customers::{self, Customer, LifecycleRules, Touch};
    use crate::events::{Event, EventKind, record};
    use crate::kv::{MemStore, put_json};

    fn at(rfc3339: &str) -> Timestamp {
        Timestamp::parse_rfc3339(rfc3339).expect("time")
    }

    fn t0() -> Timestamp {
        at("2026-11-23T10:00:00+08:00")
    }

    fn touch(code: &str, campaign: &str) -> Touch {
        Touch {
            code: code.into(),
            channel: "branch".into(),
            branch_id: Some("b1".into()),
            staff_id: None,
            campaign_id: Some(campaign.into()),
            scenario: Some("utility".into()),
            at: t0(),
        }
    }

    /// A customer created at `created`, registered through `record` as the customers component does.
    fn register(store: &MemStore, id: &str, created: Timestamp, code: &str) {
        let mut c = Customer::new(id, created);
        c.first_touch = Some(touch(code, "spring"));
        pollster::block_on(put_json(store, &customers::keys::customer(id), &c)).expect("seed");
        let e = Event::new(format!("registered:{id}"), id, EventKind::Registered, "utility", created);
        pollster::block_on(record(store, &e, &LifecycleRules::default())).expect("registered");
    }

    fn pay(store: &MemStore, id: &str, event_id: &str, at: Timestamp) {
        let e = Event { amount_fen: Some(1000), ..Event::new(event_id.into(), id, EventKind::Paid, "utility", at) };
        pollster::block_on(record(store, &e, &LifecycleRules::default())).expect("paid");
    }

    fn counter(store: &MemStore, key: &Key) -> i64 {
        pollster::block_on(crate::kv::read_counter(store, key)).expect("counter")
    }

    fn range(from: &str, to: &str) -> DayRange {
        DayRange::parse(Some(from), Some(to), t0()).expect("range")
    }

    #[test]
    fn time_to_activate_buckets_are_exponential_minutes() {
        assert_eq!(events::tta_bucket(-5), 0);
        assert_eq!(events::tta_bucket(0), 0);
        assert_eq!(events::tta_bucket(1), 1);
        assert_eq!(events::tta_bucket(3), 2);
        assert_eq!(events::tta_bucket(90), 7);
        assert_eq!(tta_bucket_bounds(7), (64, Some(128)));
        assert_eq!(events::tta_bucket((1 << 17) - 1), 17);
        assert_eq!(events::tta_bucket(1 << 17), 18);
        assert_eq!(events::tta_bucket(i64::MAX), 18);
        assert_eq!(tta_bucket_bounds(18), (1 << 17, None));
        for minutes in [0, 1, 2, 5, 59, 60, 1439, 1440, 100_000, 200_000] {
            let (lo, hi) = tta_bucket_bounds(events::tta_bucket(minutes));
            assert!(lo <= minutes && hi.is_none_or(|hi| minutes < hi), "{minutes} in [{lo}, {hi:?})");
        }
    }

    #[test]
    fn the_median_bucket_is_the_lower_median() {
        let mut h = vec![0; TTA_BUCKETS];
        assert_eq!(time_to_activate(&h).median_bucket, None);
        h[2] = 1;
        h[7] = 1;
        h[10] = 1;
        assert_eq!(time_to_activate(&h).median_bucket.map(|b| b.from_minutes), Some(64));
        h[10] = 2;
        // Four activations: the 2nd is the lower median.
        assert_eq!(time_to_activate(&h).median_bucket.map(|b| (b.from_minutes, b.to_minutes)), Some((64, Some(128))));
        assert_eq!(time_to_activate(&h).buckets.len(), 3);
    }

    #[test]
    fn ranges_default_to_thirty_days_and_refuse_nonsense() {
        let r = DayRange::parse(None, None, t0()).expect("default");
        assert_eq!((r.from_date().as_str(), r.to_date().as_str(), r.len()), ("2026-10-25", "2026-11-23", 30));
        assert_eq!(r.days().first(), Some(&20_261_025));
        let r = range("2026-11-23", "2026-11-23");
        assert_eq!(r.days(), vec![20_261_123]);
        let field = |e: InsightsError| e.field().map(str::to_owned);
        for (from, to, bad) in [
            (Some("2026-11-24"), Some("2026-11-23"), "from"),
            (Some("2025-01-01"), Some("2026-11-23"), "from"),
            (Some("2026-02-30"), None, "from"),
            (Some("20261101"), None, "from"),
            (None, Some("yesterday"), "to"),
        ] {
            let e = DayRange::parse(from, to, t0()).expect_err("refused");
            assert_eq!((e.code(), field(e)), ("validation_failed", Some(bad.to_owned())));
        }
    }

    #[test]
    fn one_dimension_at_a_time() {
        assert_eq!(Dimension::parse(None, Some(""), None), Ok(Dimension::All));
        assert_eq!(Dimension::parse(Some("BR001"), None, Some("")).map(|d| d.key_part()), Ok("ch:BR001".into()));
        assert_eq!(Dimension::parse(None, Some("spring"), None).map(|d| d.key_part()), Ok("cp:spring".into()));
        assert_eq!(Dimension::parse(None, None, Some("utility")).map(|d| d.key_part()), Ok("sc:utility".into()));
        let e = Dimension::parse(Some("BR001"), None, Some("utility")).expect_err("two");
        assert_eq!(e.field(), Some("scenario"));
        assert_eq!(Dimension::parse(Some("BR-01"), None, None).expect_err("bad").field(), Some("channel"));
        assert_eq!(Dimension::parse(None, Some("a:b"), None).expect_err("bad").field(), Some("campaign"));
    }

    #[test]
    fn the_funnel_sums_days_and_converts() {
        let store = MemStore::default();
        // Arrange: two registered through BR1 on the 23rd, one activates 90 minutes later, one on the 25th after
        // two days; a third registers through BR2.
        register(&store, "c1", t0(), "BR1");
        register(&store, "c2", t0(), "BR1");
        register(&store, "c3", t0(), "BR2");
        pay(&store, "c1", "paid:o1", t0().plus_secs(90 * 60));
        pay(&store, "c2", "paid:o2", t0().plus_days(2));
        for _ in 0..4 {
            pollster::block_on(events::count_visit(&store, &touch("BR1", "spring"))).expect("visit");
        }

        // Act
        let all = pollster::block_on(funnel(&store, &range("2026-11-20", "2026-11-30"), &Dimension::All));
        let br1 =
            pollster::block_on(funnel(&store, &range("2026-11-23", "2026-11-24"), &Dimension::Channel("BR1".into())));

        // Assert
        let all = all.expect("all");
        let counts: Vec<i64> = all.steps.iter().map(|s| s.count).collect();
        assert_eq!(counts, [4, 3, 2, 0]);
        assert_eq!(all.steps[1].conversion_bp, Some(7_500));
        assert_eq!(all.steps[2].conversion_bp, Some(6_666));
        assert_eq!(all.steps[3].conversion_bp, Some(0));
        assert_eq!(all.steps[0].conversion_bp, None);
        assert_eq!(all.overall_conversion_bp, Some(0));
        assert_eq!(all.time_to_activate.activations, 2);
        // 90 minutes is in [64, 128); two days (2880 minutes) in [2048, 4096): the lower median is the first.
        assert_eq!(all.median_minutes_to_activate, Some(64));
        let br1 = br1.expect("br1");
        assert_eq!(br1.steps.iter().map(|s| s.count).collect::<Vec<_>>(), [4, 2, 1, 0], "the 25th is outside");
        assert_eq!(br1.dimension, "ch:BR1");
    }

    /// A store that counts the keys read.
    struct Counting<'a>(&'a MemStore, std::cell::Cell<usize>);

    impl Store for Counting<'_> {
        type Cas = <MemStore as Store>::Cas;
        async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.get(key).await
        }
        async fn set(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
            self.0.set(key, value).await
        }
        async fn delete(&self, key: &Key) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
        async fn increment(&self, key: &Key, delta: i64) -> Result<i64, StoreError> {
            self.0.increment(key, delta).await
        }
        async fn cas(&self, key: &Key, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
            self.0.cas(key, expected, new).await
        }
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
            self.1.set(self.1.get() + keys.len());
            self.0.get_many(keys).await
        }
        async fn cas_open(&self, key: &Key) -> Result<(Self::Cas, Option<Vec<u8>>), StoreError> {
            self.0.cas_open(key).await
        }
        async fn cas_swap(&self, cas: Self::Cas, new: &[u8]) -> Result<bool, StoreError> {
            self.0.cas_swap(cas, new).await
        }
    }

    /// Keys a read of `f` takes.
    fn keys_read<T>(store: &MemStore, f: impl AsyncFnOnce(&Counting<'_>) -> T) -> (T, usize) {
        let counting = Counting(store, std::cell::Cell::new(0));
        let out = pollster::block_on(f(&counting));
        (out, counting.1.get())
    }

    /// Customers registering, visiting and paying over 45 days up to the 23rd, through two codes.
    fn busy_season(store: &MemStore) {
        for d in 0..45 {
            let day = t0().plus_days(d - 44);
            let id = format!("s{d}");
            register(store, &id, day, if d % 2 == 0 { "BR1" } else { "BR2" });
            if d % 3 != 0 {
                pay(store, &id, &format!("paid:{id}"), day.plus_secs(60 * (d + 1) * 17));
            }
            if d % 5 == 0 {
                pay(store, "s0", &format!("paid:s0:{d}"), day.plus_secs(3600));
            }
            pollster::block_on(events::count_visit(store, &touch("BR1", "spring"))).expect("visit");
        }
    }

    #[test]
    fn reports_from_roll_ups_equal_reports_from_the_counters_and_read_a_few_keys() {
        let store = MemStore::default();
        busy_season(&store);
        let now = t0().plus_secs(3 * 3600);
        let year = DayRange::parse(Some("2025-11-23"), Some("2026-11-23"), now).expect("year");
        let month = DayRange::parse(None, None, now).expect("30 days");
        // Nothing is closed as of the range's first day: every counter is read.
        let raw = |r: &DayRange| r.as_of(at("2025-11-01T00:00:00+08:00"));
        let dims = [Dimension::All, Dimension::Channel("BR1".into()), Dimension::Scenario("utility".into())];
        let codes = ["ch:BR1".to_owned(), "ch:BR2".to_owned()];
        let steps = [FunnelStep::Visited, FunnelStep::Registered, FunnelStep::Activated];

        for range in [&year, &month] {
            for dim in &dims {
                let expected = pollster::block_on(funnel(&store, &raw(range), dim)).expect("raw");
                let (first, _) = keys_read(&store, async |s| funnel(s, range, dim).await.expect("folds"));
                let (second, keys) = keys_read(&store, async |s| funnel(s, range, dim).await.expect("rolled up"));
                assert_eq!((&first, &second), (&expected, &expected), "{dim:?}");
                let budget = if range.len() > 30 { 120 } else { 40 };
                assert!(keys <= budget, "{} days of {dim:?}: {keys} keys", range.len());
            }
            assert!(pollster::block_on(funnel(&store, range, &Dimension::All)).expect("all").steps[0].count > 0);
            let expected = pollster::block_on(lifecycle(&store, &raw(range))).expect("raw");
            let (first, _) = keys_read(&store, async |s| lifecycle(s, range).await.expect("folds"));
            let (second, keys) = keys_read(&store, async |s| lifecycle(s, range).await.expect("rolled up"));
            assert_eq!((&first, &second), (&expected, &expected));
            assert!(keys <= if range.len() > 30 { 120 } else { 40 }, "lifecycle: {keys} keys");
            let expected = pollster::block_on(funnel_totals(&store, &raw(range), &steps, &codes)).expect("raw");
            let (first, _) = keys_read(&store, async |s| funnel_totals(s, range, &steps, &codes).await.expect("folds"));
            let (second, keys) =
                keys_read(&store, async |s| funnel_totals(s, range, &steps, &codes).await.expect("rolled"));
            assert_eq!((&first, &second), (&expected, &expected));
            assert!(keys <= if range.len() > 30 { 120 } else { 40 }, "funnel totals: {keys} keys");
        }
    }

    #[test]
    fn a_day_is_not_folded_before_it_is_closed() {
        // Arrange: one registration on the 23rd, read a minute before midnight and half an hour after it.
        let store = MemStore::default();
        register(&store, "c1", t0(), "BR1");
        let day = |now: &str| DayRange::parse(Some("2026-11-23"), Some("2026-11-23"), at(now)).expect("range");
        let registered =
            |r: &DayRange| pollster::block_on(funnel(&store, r, &Dimension::All)).expect("funnel").steps[1].count;
        assert_eq!(registered(&day("2026-11-23T23:59:00+08:00")), 1);
        assert_eq!(registered(&day("2026-11-24T00:30:00+08:00")), 1);
        assert!(store.keys().iter().all(|k| !k.starts_with("ops:rollup:")), "{:?}", store.keys());

        // Act: a payment reported late, for 23:55, and a registration at 23:58 (both still land on the 23rd).
        register(&store, "c2", at("2026-11-23T23:58:00+08:00"), "BR1");
        pay(&store, "c1", "paid:late", at("2026-11-23T23:55:00+08:00"));

        // Assert: an hour after midnight the day is closed, folded with everything.
        let closed = day("2026-11-24T01:00:00+08:00");
        let report = pollster::block_on(funnel(&store, &closed, &Dimension::All)).expect("closed");
        assert_eq!(report.steps.iter().map(|s| s.count).collect::<Vec<_>>(), [0, 2, 1, 0]);
        assert!(store.keys().iter().any(|k| k == "ops:rollup:funnel:all:w20261123+1"), "{:?}", store.keys());
        assert_eq!(pollster::block_on(funnel(&store, &closed, &Dimension::All)).expect("again"), report);
    }

    #[test]
    fn stage_counters_follow_transitions_exactly_once_under_replays() {
        let store = MemStore::default();
        register(&store, "c1", t0(), "BR1");
        register(&store, "c2", t0(), "BR1");
        // Replays of the registration (every login replays it) and of a payment change nothing.
        register_again(&store, "c1");
        pay(&store, "c1", "paid:a", t0().plus_days(1));
        pay(&store, "c1", "paid:a", t0().plus_days(1));
        pay(&store, "c1", "paid:b", t0().plus_days(2));
        pay(&store, "c1", "paid:c", t0().plus_days(3));
        pay(&store, "c1", "paid:c", t0().plus_days(3));

        let report = pollster::block_on(lifecycle(&store, &range("2026-11-23", "2026-11-30"))).expect("report");

        assert_eq!(report.stages.get("new"), Some(&1));
        assert_eq!(report.stages.get("activated"), Some(&0));
        assert_eq!(report.stages.get("engaged"), Some(&1), "three payments in 30 days");
        assert_eq!(report.stages.get("dormant"), Some(&0));
        assert_eq!((report.customers, report.registered), (2, 2));
        let pairs: Vec<(&str, &str, i64)> = report.transitions.iter().map(|t| (t.from, t.to, t.count)).collect();
        assert_eq!(pairs, [("new", "activated", 1), ("activated", "engaged", 1)]);
        assert_eq!(counter(&store, &keys::transitions(20_261_124, "new", "activated")), 1);
        assert_eq!(counter(&store, &keys::transitions(20_261_126, "activated", "engaged")), 1);
    }

    fn register_again(store: &MemStore, id: &str) {
        let e = Event::new(format!("registered:{id}"), id, EventKind::Registered, "utility", t0());
        let applied = pollster::block_on(record(store, &e, &LifecycleRules::default())).expect("replay");
        assert!(!applied.first_time);
    }

    #[test]
    fn a_crash_anywhere_in_the_counter_effects_is_completed_by_the_retry_without_double_counting() {
        // Arrange: count the writes of a first payment that activates (profile, funnel, time to activate, stage).
        let probe = MemStore::default();
        register(&probe, "c1", t0(), "BR1");
        let before = probe.writes();
        pay(&probe, "c1", "paid:x", t0().plus_secs(600));
        let writes = probe.writes() - before;
        assert!(writes >= 5, "{writes} writes");

        for n in 1..=writes {
            let store = MemStore::default();
            register(&store, "c1", t0(), "BR1");
            let e = Event {
                amount_fen: Some(1000),
                ..Event::new("paid:x".into(), "c1", EventKind::Paid, "utility", t0().plus_secs(600))
            };
            // Act: the n-th write fails, then the event is retried.
            store.fail_write(n);
            let first = pollster::block_on(record(&store, &e, &LifecycleRules::default()));
            store.heal();
            pollster::block_on(record(&store, &e, &LifecycleRules::default())).expect("retry");
            pollster::block_on(record(&store, &e, &LifecycleRules::default())).expect("replay");

            // Assert: every counter is 1 (or, when the failed write was an increment behind a taken claim, that one
            // count is lost: at most once, never twice).
            let mut lost = 0;
            for key in [
                keys::funnel(20_261_123, "activated", "all"),
                keys::funnel(20_261_123, "activated", "ch:BR1"),
                keys::tta(20_261_123, events::tta_bucket(10), "all"),
                keys::tta(20_261_123, events::tta_bucket(10), "sc:utility"),
                keys::stage("activated"),
                keys::transitions(20_261_123, "new", "activated"),
            ] {
                let v = counter(&store, &key);
                assert!(v == 1 || (v == 0 && first.is_err()), "write {n}: {key} = {v}");
                lost += 1 - v;
            }
            let new = counter(&store, &keys::stage("new"));
            assert!(new == 0 || (new == 1 && first.is_err()), "write {n}: new = {new}");
            lost += new;
            assert!(lost <= 1, "write {n}: a single failed write loses at most one count");
        }
    }
}
