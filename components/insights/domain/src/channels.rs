//! The channel review: every channel code (customers' `cust:channels:idx` and its documents) with the visits,
//! registrations and activations the funnel counted for it (`ops:funnel:{day}:{step}:ch:{code}`) over a range of days,
//! and the same grouped by branch and by staff member.

use std::collections::BTreeMap;

use customers_domain::channels;
use scenefin_core::events::{FunnelStep, channel_dimension};
use scenefin_core::insights::{self, DayRange, InsightsError, rate_bp};
use scenefin_core::kv::Store;
use scenefin_core::problem::ApiError;
use serde::Serialize;

use crate::problem;

/// Most counters one review reads (codes × days × 3): 3,000 batch reads.
pub const MAX_COUNTERS: usize = 300_000;

const STEPS: [FunnelStep; 3] = [FunnelStep::Visited, FunnelStep::Registered, FunnelStep::Activated];

/// Visits, registrations and activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Codes resolved (every resolution counts).
    pub visits: i64,
    /// Customers registered with the code as their first touch.
    pub registrations: i64,
    /// Of those, activations (first payment, top-up or redemption) in the range.
    pub activations: i64,
    /// Registrations per visit, in basis points.
    pub registration_rate_bp: Option<i64>,
    /// Activations per registration, in basis points.
    pub activation_rate_bp: Option<i64>,
}

impl Counts {
    fn new(visits: i64, registrations: i64, activations: i64) -> Counts {
        Counts {
            visits,
            registrations,
            activations,
            registration_rate_bp: rate_bp(registrations, visits),
            activation_rate_bp: rate_bp(activations, registrations),
        }
    }

    fn add(self, other: Counts) -> Counts {
        Counts::new(
            self.visits + other.visits,
            self.registrations + other.registrations,
            self.activations + other.activations,
        )
    }
}

/// One channel code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRow {
    /// The code.
    pub code: String,
    /// `branch`, `staff`, `poster`, `wechat_oa`, `app` or `partner`.
    pub channel: String,
    /// Branch.
    pub branch_id: Option<String>,
    /// Staff member.
    pub staff_id: Option<String>,
    /// Campaign.
    pub campaign_id: Option<String>,
    /// Scenario.
    pub scenario: Option<String>,
    /// Its numbers.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The codes of one branch or staff member, added up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The branch or staff id (`None`: codes without one).
    pub id: Option<String>,
    /// Its codes.
    pub codes: Vec<String>,
    /// Their numbers, summed.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channels {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day.
    pub to: String,
    /// Every code, in the order created.
    pub items: Vec<ChannelRow>,
    /// By branch (codes without a branch under `id: null`).
    pub by_branch: Vec<Group>,
    /// By staff member (codes without one under `id: null`).
    pub by_staff: Vec<Group>,
    /// Every code added up.
    pub totals: Counts,
}

/// Every channel code's numbers over `range`.
pub async fn review(store: &impl Store, range: &DayRange) -> Result<Channels, ApiError> {
    let codes = channels::all(store).await.map_err(problem)?;
    let wanted = codes.len().saturating_mul(range.len()).saturating_mul(STEPS.len());
    if wanted > MAX_COUNTERS {
        return Err(problem(InsightsError::Invalid {
            field: "from".into(),
            message: format!(
                "{} channel codes over {} days is more than this review reads at once; narrow the range",
                codes.len(),
                range.len()
            ),
        }));
    }
    let dims: Vec<String> = codes.iter().map(|c| channel_dimension(&c.code)).collect();
    let totals = insights::funnel_totals(store, range, &STEPS, &dims).await.map_err(problem)?;
    let items: Vec<ChannelRow> = codes
        .into_iter()
        .zip(totals)
        .map(|(c, t)| ChannelRow {
            counts: Counts::new(t[0], t[1], t[2]),
            code: c.code,
            channel: c.channel,
            branch_id: c.branch_id,
            staff_id: c.staff_id,
            campaign_id: c.campaign_id,
            scenario: c.scenario,
        })
        .collect();
    Ok(Channels {
        from: range.from_date(),
        to: range.to_date(),
        by_branch: group(&items, |r| r.branch_id.as_ref()),
        by_staff: group(&items, |r| r.staff_id.as_ref()),
        totals: items.iter().fold(Counts::new(0, 0, 0), |sum, r| sum.add(r.counts)),
        items,
    })
}

fn group(items: &[ChannelRow], by: impl Fn(&ChannelRow) -> Option<&String>) -> Vec<Group> {
    let mut groups: BTreeMap<Option<String>, Group> = BTreeMap::new();
    for row in items {
        let id = by(row).cloned();
        let g =
            groups.entry(id.clone()).or_insert_with(|| Group { id, codes: Vec::new(), counts: Counts::new(0, 0, 0) });
        g.codes.push(row.code.clone());
        g.counts = g.counts.add(row.counts);
    }
    // Named groups first, by id; codes without one last.
    let (mut named, none): (Vec<Group>, Vec<Group>) = groups.into_values().partition(|g| g.id.is_some());
    named.extend(none);
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use customers_domain::channels::{NewChannel, create, resolve};
    use scenefin_core::clock::Timestamp;
    use scenefin_core::kv::MemStore;

    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time")
    }

    fn code(code: &str, branch: &str, staff: Option<&str>) -> NewChannel {
        NewChannel {
            code: Some(code.into()),
            channel: if staff.is_some() { "staff" } else { "branch" }.into(),
            branch_id: Some(branch.into()),
            staff_id: staff.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn codes_are_reviewed_one_by_one_and_grouped_by_branch_and_staff() {
        // Arrange: three codes in two branches, one of them a staff member's; visits to two of them.
        let store = MemStore::default();
        for c in [code("A1", "b1", None), code("A2", "b1", Some("s9")), code("B1", "b2", None)] {
            pollster::block_on(create(&store, c, "GEN", now())).expect("create");
        }
        for c in ["A1", "A1", "A2", "B1"] {
            pollster::block_on(resolve(&store, c, now())).expect("resolve");
        }
        let range = DayRange::parse(None, None, now()).expect("range");

        // Act
        let review = pollster::block_on(review(&store, &range)).expect("review");

        // Assert
        let visits: Vec<(&str, i64)> = review.items.iter().map(|r| (r.code.as_str(), r.counts.visits)).collect();
        assert_eq!(visits, [("A1", 2), ("A2", 1), ("B1", 1)]);
        let branches: Vec<(Option<&str>, i64)> =
            review.by_branch.iter().map(|g| (g.id.as_deref(), g.counts.visits)).collect();
        assert_eq!(branches, [(Some("b1"), 3), (Some("b2"), 1)]);
        let staff: Vec<(Option<&str>, Vec<String>)> =
            review.by_staff.iter().map(|g| (g.id.as_deref(), g.codes.clone())).collect();
        assert_eq!(staff, [(Some("s9"), vec!["A2".to_owned()]), (None, vec!["A1".to_owned(), "B1".to_owned()])]);
        assert_eq!(review.totals.visits, 4);
        assert_eq!(review.totals.registration_rate_bp, Some(0));
    }
}
