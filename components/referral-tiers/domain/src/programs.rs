//! Referral programs: validated once, written once.

use merchant_coupons_domain::CouponError;
use merchant_coupons_domain::campaigns::{self as coupon_campaigns, Kind};
use scenefin_core::clock::Timestamp;
use scenefin_core::ids::Id;
use scenefin_core::json::text;
use scenefin_core::kv::{self, Store, put_json};
use scenefin_core::limits;
use scenefin_core::referrals::{self, Program, Qualifying, Reward, RewardKind, Schedule, Tier};
use serde::Deserialize;

use crate::{ReferralError, keys};

/// Most tiers.
const MAX_TIERS: usize = 10;
/// Largest single cash reward or bonus: ¥10,000.
const MAX_REWARD_FEN: i64 = 1_000_000;
/// Largest budget: ¥100 million.
const MAX_BUDGET_FEN: i64 = 10_000_000_000;

/// A program as an operator submits it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProgram {
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Qualification.
    pub qualifying: Qualifying,
    /// Holding days.
    pub holding_days: i64,
    /// Ladder.
    pub tiers: Vec<Tier>,
    /// The referee's reward.
    #[serde(default)]
    pub referee_reward: Option<Reward>,
    /// Cap per referrer.
    pub max_rewarded_per_referrer: i64,
    /// Budget.
    pub budget_fen: i64,
    /// Schedule.
    pub schedule: Schedule,
}

fn check_reward(field: &str, r: &Reward) -> Result<(), ReferralError> {
    match r.kind {
        RewardKind::CashFen | RewardKind::Points => {
            if !r.amount.is_some_and(|a| (1..=MAX_REWARD_FEN).contains(&a)) || r.campaign_id.is_some() {
                return Err(ReferralError::invalid(&format!("{field}.amount"), "1 to 1000000, and no campaign_id"));
            }
        }
        RewardKind::CouponCampaign => {
            if r.campaign_id.as_deref().is_none_or(|c| Id::parse(c).is_err()) || r.amount.is_some() {
                return Err(ReferralError::invalid(&format!("{field}.campaign_id"), "a campaign id, and no amount"));
            }
        }
    }
    Ok(())
}

/// Every reward of a program with the field it is in (`tiers[0].reward_per_referral`, `tiers[0].tier_bonus`,
/// `referee_reward`).
fn rewards(p: &NewProgram) -> Vec<(String, &Reward)> {
    let mut out = Vec::new();
    for (i, t) in p.tiers.iter().enumerate() {
        out.push((format!("tiers[{i}].reward_per_referral"), &t.reward_per_referral));
        if let Some(b) = &t.tier_bonus {
            out.push((format!("tiers[{i}].tier_bonus"), b));
        }
    }
    if let Some(r) = &p.referee_reward {
        out.push(("referee_reward".to_owned(), r));
    }
    out
}

/// Refuses a coupon reward whose campaign does not exist or is not a `referral_reward` campaign (read-only: the
/// campaigns are merchant-coupons' documents).
async fn check_coupon_campaigns(store: &impl Store, p: &NewProgram) -> Result<(), ReferralError> {
    for (field, reward) in rewards(p) {
        if reward.kind != RewardKind::CouponCampaign {
            continue;
        }
        let field = format!("{field}.campaign_id");
        match coupon_campaigns::get(store, reward.campaign_id.as_deref().unwrap_or_default()).await {
            Ok(c) if c.kind == Kind::ReferralReward => {}
            Ok(_) => return Err(ReferralError::NotReferralRewardCampaign { field }),
            Err(CouponError::Store(e)) => return Err(e.into()),
            Err(_) => return Err(ReferralError::CouponCampaignNotFound { field }),
        }
    }
    Ok(())
}

/// Validates a program (pure).
pub fn validate(p: &NewProgram) -> Result<(), ReferralError> {
    Id::parse(&p.id).map_err(|_| ReferralError::invalid("id", "1 to 64 letters, digits, underscores or hyphens"))?;
    // Counted as sent (the contract's `Label64`): no control character anywhere, at most 64 characters.
    let as_sent = p.title.chars().count() <= 64 && !p.title.chars().any(char::is_control);
    as_sent
        .then(|| text(&p.title, 64))
        .flatten()
        .ok_or_else(|| ReferralError::invalid("title", "1 to 64 characters, not only spaces, no control characters"))?;
    if p.qualifying.event != "first_payment" {
        return Err(ReferralError::invalid("qualifying.event", "first_payment"));
    }
    if !(0..=MAX_BUDGET_FEN).contains(&p.qualifying.min_amount_fen) {
        return Err(ReferralError::invalid("qualifying.min_amount_fen", format!("0 to {MAX_BUDGET_FEN}")));
    }
    if !(1..=365).contains(&p.qualifying.within_days) {
        return Err(ReferralError::invalid("qualifying.within_days", "1 to 365"));
    }
    if !(0..=365).contains(&p.holding_days) {
        return Err(ReferralError::invalid("holding_days", "0 to 365"));
    }
    if p.tiers.is_empty() || p.tiers.len() > MAX_TIERS {
        return Err(ReferralError::invalid("tiers", format!("1 to {MAX_TIERS} tiers")));
    }
    let mut last = 0;
    for (i, t) in p.tiers.iter().enumerate() {
        if t.min_qualified <= last || t.min_qualified > 100_000 {
            return Err(ReferralError::invalid(
                &format!("tiers[{i}].min_qualified"),
                "strictly ascending, 1 to 100000",
            ));
        }
        last = t.min_qualified;
    }
    for (field, reward) in rewards(p) {
        check_reward(&field, reward)?;
    }
    if !(1..=100_000).contains(&p.max_rewarded_per_referrer) {
        return Err(ReferralError::invalid("max_rewarded_per_referrer", "1 to 100000"));
    }
    if !(0..=MAX_BUDGET_FEN).contains(&p.budget_fen) {
        return Err(ReferralError::invalid("budget_fen", format!("0 to {MAX_BUDGET_FEN}")));
    }
    if p.schedule.ends_at <= p.schedule.starts_at {
        return Err(ReferralError::invalid("schedule.ends_at", "after starts_at"));
    }
    Ok(())
}

/// Creates a program and configures its budget.
pub async fn create(store: &impl Store, input: NewProgram, now: Timestamp) -> Result<Program, ReferralError> {
    validate(&input)?;
    check_coupon_campaigns(store, &input).await?;
    if !kv::claim_new(store, &keys::program_claim(&input.id)).await? {
        return Err(ReferralError::ProgramExists(input.id));
    }
    let program = Program {
        v: 1,
        id: input.id,
        title: input.title.trim().to_owned(),
        qualifying: input.qualifying,
        holding_days: input.holding_days,
        tiers: input.tiers,
        referee_reward: input.referee_reward,
        max_rewarded_per_referrer: input.max_rewarded_per_referrer,
        budget_fen: input.budget_fen,
        schedule: input.schedule,
        created_at: now,
    };
    limits::configure(store, &keys::budget(&program.id), program.budget_fen, now).await?;
    // Index first: readers skip listed ids without a document, so a crash in between hides nothing.
    kv::add_to_index(store, &keys::programs(), &program.id).await?;
    put_json(store, &referrals::keys::program(&program.id), &program).await?;
    Ok(program)
}

/// Every program, in the order created (the index, then one read per program).
pub async fn all(store: &impl Store) -> Result<Vec<Program>, ReferralError> {
    Ok(kv::read_indexed(store, &keys::programs(), referrals::keys::program).await?)
}

/// A program by id.
pub async fn get(store: &impl Store, id: &str) -> Result<Program, ReferralError> {
    referrals::program(store, id).await?.ok_or(ReferralError::ProgramNotFound)
}

/// Every program running at `now` (from the programs index; one batch read).
pub async fn running(store: &impl Store, now: Timestamp) -> Result<Vec<Program>, ReferralError> {
    Ok(all(store).await?.into_iter().filter(|p| p.running_at(now)).collect())
}
