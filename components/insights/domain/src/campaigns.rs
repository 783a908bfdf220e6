//! The campaign review: every coupon campaign (merchant-coupons' `cpn:campaigns` index, its counters and budget),
//! every referral program (referral-tiers' `ref:programs` index, its counters and budget) and every scenario budget
//! — the cardholder discounts of utility billers (`util:billers:idx`), the owner discounts of property communities
//! (`prop:communities:idx`) and the top-up bonuses of campus schools (`campus:schools`) — with what each has spent
//! (committed), holds (reserved), has left, and its progress. [`known_budgets`] names every budget the same way.

use std::collections::BTreeMap;

use campus_card_domain::schools;
use merchant_coupons_domain::campaigns::{self, Kind};
use merchant_coupons_domain::redemptions;
use property_fees_domain::communities;
use referral_tiers_domain::{programs, reports};
use scenefin_core::clock::Timestamp;
use scenefin_core::insights::BudgetReview;
use scenefin_core::kv::{Key, Store};
use scenefin_core::limits;
use scenefin_core::orders::CardDiscount;
use scenefin_core::problem::ApiError;
use serde::Serialize;
use utility_payments_domain::billers;

use crate::problem;

/// A coupon campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CouponCampaign {
    /// Campaign.
    pub campaign_id: String,
    /// Title.
    pub title: String,
    /// Kind.
    pub kind: Kind,
    /// `scheduled`, `running`, `paused` or `ended`.
    pub status: &'static str,
    /// Coupons issued.
    pub issued: i64,
    /// Redeemed at merchants (net of reversals).
    pub redeemed: i64,
    /// Redeemed per issued, in basis points.
    pub redemption_rate_bp: i64,
    /// Discount given at merchants (net of reversals); coupons used in utility or property orders are in the
    /// budget's `spent_fen`.
    pub discount_spent_fen: i64,
    /// Stock left.
    pub remaining_stock: i64,
    /// The campaign's budget (claims reserve a coupon's value, use commits it).
    pub budget: BudgetReview,
}

/// A referral program, as of its last settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferralProgram {
    /// Program.
    pub program_id: String,
    /// Title.
    pub title: String,
    /// Open for referrals now.
    pub running: bool,
    /// Referrals attached.
    pub referrals: i64,
    /// Referrals that ever qualified (gross: those clawed back since included).
    pub qualified_gross: i64,
    /// Qualified referrals clawed back.
    pub clawed_back: i64,
    /// Qualified net of claw-backs (`qualified_gross - clawed_back`).
    pub qualified_net: i64,
    /// The same as `qualified_net`, as referral-tiers' statistics report it.
    pub qualified: i64,
    /// Rewarded.
    pub rewarded: i64,
    /// Cash rewards paid (net of claw-backs).
    pub rewards_paid_fen: i64,
    /// Points awarded.
    pub points_awarded: i64,
    /// Coupons issued as rewards.
    pub coupons_issued: i64,
    /// The program's cash budget.
    pub budget: BudgetReview,
}

/// A budget funding a scenario's discount or bonus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioBudget {
    /// `utility`, `property` or `campus`.
    pub scenario: &'static str,
    /// `cardholder_discount`, `owner_discount` or `topup_bonus`.
    pub kind: &'static str,
    /// The budget.
    pub budget_id: String,
    /// The billers, communities or schools it funds.
    pub funds: Vec<String>,
    /// Its numbers.
    pub budget: BudgetReview,
}

/// The review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Campaigns {
    /// When.
    pub as_of: Timestamp,
    /// Every coupon campaign, in the order created.
    pub coupon_campaigns: Vec<CouponCampaign>,
    /// Every referral program, in the order created.
    pub referral_programs: Vec<ReferralProgram>,
    /// Every scenario budget: utility, then property, then campus, each by budget id.
    pub scenario_budgets: Vec<ScenarioBudget>,
    /// What the referral numbers mean.
    pub note: &'static str,
}

const NOTE: &str = "referral rewards are settled lazily, when a referrer's page, a program's stats or its leaderboard \
                    is read: referral numbers and budgets are as of the last settlement";

/// Every campaign, program and scenario budget at `now`.
pub async fn review(store: &impl Store, now: Timestamp) -> Result<Campaigns, ApiError> {
    let mut coupon_campaigns = Vec::new();
    for c in campaigns::all(store).await.map_err(problem)? {
        let s = redemptions::stats(store, &c, now).await.map_err(problem)?;
        coupon_campaigns.push(CouponCampaign {
            campaign_id: c.id,
            title: c.title,
            kind: c.kind,
            status: s.status,
            issued: s.issued,
            redeemed: s.redeemed,
            redemption_rate_bp: s.redemption_rate_bp,
            discount_spent_fen: s.discount_spent_fen,
            remaining_stock: s.remaining_stock,
            budget: s.budget.into(),
        });
    }

    let mut referral_programs = Vec::new();
    for p in programs::all(store).await.map_err(problem)? {
        let s = reports::totals(store, &p, now).await.map_err(problem)?;
        referral_programs.push(ReferralProgram {
            running: p.running_at(now),
            program_id: p.id,
            title: p.title,
            referrals: s.referrals,
            qualified_gross: s.qualified_gross,
            clawed_back: s.clawed_back,
            qualified_net: s.qualified_net,
            qualified: s.qualified,
            rewarded: s.rewarded,
            rewards_paid_fen: s.rewards_paid_fen,
            points_awarded: s.points_awarded,
            coupons_issued: s.coupons_issued,
            budget: s.budget.into(),
        });
    }

    let mut scenario_budgets = Vec::new();
    for f in scenario_funds(store).await? {
        // A budget read frees expired reservations first: reserved is what live quotes and orders hold.
        let status = limits::status_at(store, &f.key, now).await.map_err(problem)?;
        let ScenarioFunds { scenario, kind, budget_id, funds, .. } = f;
        scenario_budgets.push(ScenarioBudget { scenario, kind, budget_id, funds, budget: status.into() });
    }

    Ok(Campaigns { as_of: now, coupon_campaigns, referral_programs, scenario_budgets, note: NOTE })
}

/// A budget an operator knows by its owner's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownBudget {
    /// `coupon_campaign`, `referral_program`, or the scenario (`utility`, `property`, `campus`) of a scenario
    /// budget.
    pub kind: &'static str,
    /// The campaign, programme or budget id.
    pub id: String,
    /// The campaign's or programme's title; a scenario budget's id and the owners it funds.
    pub title: String,
    /// The budget's base key.
    pub key: Key,
}

/// Every budget: coupon campaigns and referral programmes in the order created, then the scenario budgets as in the
/// review.
pub async fn known_budgets(store: &impl Store) -> Result<Vec<KnownBudget>, ApiError> {
    let mut known = Vec::new();
    for c in campaigns::all(store).await.map_err(problem)? {
        let key = merchant_coupons_domain::keys::budget(&c.id);
        known.push(KnownBudget { kind: "coupon_campaign", id: c.id, title: c.title, key });
    }
    for p in programs::all(store).await.map_err(problem)? {
        let key = referral_tiers_domain::keys::budget(&p.id);
        known.push(KnownBudget { kind: "referral_program", id: p.id, title: p.title, key });
    }
    for f in scenario_funds(store).await? {
        let title = format!("{} ({})", f.budget_id, f.funds.join(", "));
        known.push(KnownBudget { kind: f.scenario, id: f.budget_id, title, key: f.key });
    }
    Ok(known)
}

/// A scenario budget and the owners it funds.
struct ScenarioFunds {
    scenario: &'static str,
    kind: &'static str,
    budget_id: String,
    funds: Vec<String>,
    key: Key,
}

/// Every scenario budget: utility, then property, then campus, each by budget id, each once however many owners
/// share it.
async fn scenario_funds(store: &impl Store) -> Result<Vec<ScenarioFunds>, ApiError> {
    let mut out = Vec::new();
    let utility = billers::list(store, None, None).await.map_err(problem)?;
    let utility = utility.iter().filter_map(|b| b.discount.as_ref().map(|d| (b.id.as_str(), d)));
    out.extend(funds("utility", "cardholder_discount", utility, utility_payments_domain::keys::budget));
    let property = communities::all(store).await.map_err(problem)?;
    let property = property.iter().filter_map(|c| c.owner_discount.as_ref().map(|d| (c.id.as_str(), d)));
    out.extend(funds("property", "owner_discount", property, property_fees_domain::keys::budget));
    let campus = schools::all(store).await.map_err(problem)?;
    let campus = campus.iter().filter_map(|s| s.topup_bonus.as_ref().map(|d| (s.id.as_str(), d)));
    out.extend(funds("campus", "topup_bonus", campus, campus_card_domain::keys::budget));
    Ok(out)
}

/// The budgets of one scenario's owners, each once with the owners it funds.
fn funds<'a>(
    scenario: &'static str,
    kind: &'static str,
    owners: impl Iterator<Item = (&'a str, &'a CardDiscount)>,
    key: impl Fn(&str) -> Key,
) -> Vec<ScenarioFunds> {
    let mut funds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (owner, discount) in owners {
        funds.entry(discount.budget_id.as_str()).or_default().push(owner.to_owned());
    }
    funds
        .into_iter()
        .map(|(budget_id, funds)| ScenarioFunds {
            scenario,
            kind,
            budget_id: budget_id.to_owned(),
            funds,
            key: key(budget_id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use scenefin_core::kv::MemStore;
    use serde_json::json;

    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time")
    }

    #[test]
    fn budgets_shared_by_several_owners_are_reviewed_once() {
        // Arrange: two billers funded by one budget, a third by its own, one without a discount; a school's bonus.
        let store = MemStore::default();
        let discount = |budget_id: &str, budget_fen: i64| CardDiscount {
            percent_bp: 500,
            cap_fen: 1000,
            budget_id: budget_id.into(),
            budget_fen,
        };
        for (id, d) in [
            ("w1", Some(discount("shared", 100_000))),
            ("w2", Some(discount("shared", 100_000))),
            ("p1", Some(discount("own", 5_000))),
            ("g1", None),
        ] {
            let input = billers::NewBiller {
                id: id.into(),
                name: format!("biller {id}"),
                category: "water".into(),
                city: "shenzhen".into(),
                account_rule: billers::AccountRule { min_len: 6, max_len: 10, charset: billers::Charset::Digits },
                exactness: billers::Exactness::Adhoc,
                settlement_account: "6222000011112222".into(),
                discount: d,
            };
            pollster::block_on(billers::register(&store, input, now())).expect("biller");
        }
        let school = schools::NewSchool {
            id: "s1".into(),
            name: "School".into(),
            city: None,
            topup_bonus: Some(discount("bonus", 20_000)),
        };
        pollster::block_on(schools::register(&store, school, now())).expect("school");

        // Act
        let review = pollster::block_on(review(&store, now())).expect("review");

        // Assert
        let got: Vec<(&str, &str, Vec<String>, i64)> = review
            .scenario_budgets
            .iter()
            .map(|b| (b.scenario, b.budget_id.as_str(), b.funds.clone(), b.budget.total_fen))
            .collect();
        assert_eq!(
            got,
            [
                ("utility", "own", vec!["p1".to_owned()], 5_000),
                ("utility", "shared", vec!["w1".to_owned(), "w2".to_owned()], 100_000),
                ("campus", "bonus", vec!["s1".to_owned()], 20_000),
            ]
        );
        assert!(review.coupon_campaigns.is_empty() && review.referral_programs.is_empty());
        let shape = serde_json::to_value(&review.scenario_budgets[0]).expect("json");
        assert_eq!(
            shape["budget"],
            json!({"total_fen": 5000, "spent_fen": 0, "reserved_fen": 0, "remaining_fen": 5000, "progress_bp": 0})
        );
    }
}
