//! What referrers and operators read: the referrer's page, program statistics and the leaderboard. Each read
//! settles what it shows first.

use std::collections::BTreeMap;

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{LifecycleRules, mask};
use scenefin_core::kv::{self, Store};
use scenefin_core::limits::{self, BudgetStatus};
use scenefin_core::referrals::{self, Code, Program, Reward, RewardKind, Status};
use serde::Serialize;

use crate::rewards::{self, Outcome, counts};
use crate::{ReferralError, keys};

/// A referral as its referrer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferralView {
    /// The referee, masked.
    pub referee_masked: String,
    /// Status.
    pub status: Status,
    /// Why rejected.
    pub reason: Option<String>,
    /// Attached.
    pub attached_at: Timestamp,
    /// Qualified.
    pub qualified_at: Option<Timestamp>,
    /// When the reward is due.
    pub rewardable_at: Option<Timestamp>,
    /// Rewarded.
    pub rewarded_at: Option<Timestamp>,
    /// The reward decided for it.
    pub reward: Option<RewardView>,
}

/// A reward and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewardView {
    /// Its rank.
    pub seq: i64,
    /// The tier it was paid at (1-based).
    pub tier: Option<usize>,
    /// Kind.
    pub kind: Option<RewardKind>,
    /// Fen or points.
    pub amount: Option<i64>,
    /// Coupon campaign.
    pub campaign_id: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
}

/// A tier as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierView {
    /// 1-based.
    pub tier: usize,
    /// Qualified referrals needed.
    pub min_qualified: i64,
    /// Reward per referral.
    pub reward_per_referral: Reward,
}

/// The next tier and how far it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextTier {
    /// 1-based.
    pub tier: usize,
    /// Qualified referrals needed.
    pub min_qualified: i64,
    /// How many more.
    pub remaining: i64,
    /// `"2 more to reach tier 3"`: a nudge to invite more, so `null` for a customer who withdrew marketing consent.
    pub message: Option<String>,
}

/// Rewards earned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Earned {
    /// Cash credited (bonuses included, claw-backs deducted).
    pub cash_fen: i64,
    /// Points.
    pub points: i64,
    /// Coupons issued.
    pub coupons: i64,
    /// Tier bonuses: `{tier (1-based), outcome}`.
    pub bonuses: Vec<(usize, Outcome)>,
}

/// The referrer's page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Me {
    /// Program.
    pub program_id: String,
    /// The customer's code, if created.
    pub code: Option<String>,
    /// Referrals, newest first.
    pub referrals: Vec<ReferralView>,
    /// Qualified or rewarded.
    pub qualified_count: i64,
    /// Current tier.
    pub current_tier: Option<TierView>,
    /// Next tier.
    pub next_tier: Option<NextTier>,
    /// Rewards earned as a referrer.
    pub rewards: Earned,
}

fn tier_view(program: &Program, i: usize) -> TierView {
    let t = &program.tiers[i];
    TierView { tier: i + 1, min_qualified: t.min_qualified, reward_per_referral: t.reward_per_referral.clone() }
}

fn add(earned: &mut Earned, reward: &Reward, sign: i64) {
    match reward.kind {
        RewardKind::CashFen => earned.cash_fen += sign * reward.amount.unwrap_or(0),
        RewardKind::Points => earned.points += sign * reward.amount.unwrap_or(0),
        RewardKind::CouponCampaign => earned.coupons += sign.max(0),
    }
}

/// The referrer's page for a program (settles first). `nudge`: whether the customer may be nudged to invite more
/// (their marketing consent, `Customer::marketing_allowed`).
pub async fn me(
    store: &impl Store,
    program_id: &str,
    customer_id: &str,
    rules: &LifecycleRules,
    nudge: bool,
    now: Timestamp,
) -> Result<Me, ReferralError> {
    let program = crate::programs::get(store, program_id).await?;
    let (state, referrals) = rewards::settle(store, &program, customer_id, rules, now).await?;
    let code: Option<Code> = kv::get_json(store, &referrals::own_code_key(&program.id, customer_id)).await?;
    let qualified = i64::try_from(referrals.iter().filter(|r| counts(r)).count()).unwrap_or(i64::MAX);
    let mut views: Vec<ReferralView> = referrals
        .iter()
        .map(|r| {
            let granted = state.granted.iter().find(|g| g.referee_id == r.referee_id);
            ReferralView {
                referee_masked: mask(&r.referee_id),
                status: r.status,
                reason: r.reason.clone(),
                attached_at: r.attached_at,
                qualified_at: r.qualified_at,
                rewardable_at: r.rewardable_at(&program),
                rewarded_at: r.rewarded_at,
                reward: granted.map(|g| RewardView {
                    seq: g.seq,
                    tier: g.tier.map(|t| t + 1),
                    kind: g.reward.as_ref().map(|x| x.kind),
                    amount: g.reward.as_ref().and_then(|x| x.amount),
                    campaign_id: g.reward.as_ref().and_then(|x| x.campaign_id.clone()),
                    outcome: g.outcome,
                }),
            }
        })
        .collect();
    views.sort_by_key(|v| std::cmp::Reverse(v.attached_at));
    let current = program.tier_for(qualified);
    let next = program.tiers.iter().enumerate().find(|(_, t)| t.min_qualified > qualified).map(|(i, t)| {
        let remaining = t.min_qualified - qualified;
        NextTier {
            tier: i + 1,
            min_qualified: t.min_qualified,
            remaining,
            message: nudge.then(|| format!("{remaining} more to reach tier {}", i + 1)),
        }
    });
    let mut earned = Earned::default();
    for g in state.granted.iter().filter(|g| g.outcome == Outcome::Paid) {
        if let Some(r) = &g.reward {
            add(&mut earned, r, 1);
        }
    }
    for b in &state.bonuses {
        if b.outcome == Outcome::Paid {
            add(&mut earned, &b.reward, 1);
        }
        earned.bonuses.push((b.tier + 1, b.outcome));
    }
    Ok(Me {
        program_id: program.id.clone(),
        code: code.map(|c| c.code),
        referrals: views,
        qualified_count: qualified,
        current_tier: current.map(|i| tier_view(&program, i)),
        next_tier: next,
        rewards: earned,
    })
}

/// A program's statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Program.
    pub program_id: String,
    /// Referrals attached (not rejected).
    pub referrals: i64,
    /// Referrals that ever qualified (gross: those clawed back since included).
    pub qualified_gross: i64,
    /// Qualified referrals clawed back (refunded inside their holding period).
    pub clawed_back: i64,
    /// Qualified net of claw-backs (`qualified_gross - clawed_back`): what tiers, the referrer's page and the
    /// leaderboard count.
    pub qualified_net: i64,
    /// The same as `qualified_net` (the one qualified figure every report shows).
    pub qualified: i64,
    /// Rewarded.
    pub rewarded: i64,
    /// `qualified_net` per attached referral, in basis points.
    pub qualification_rate_bp: i64,
    /// Cash paid (net of claw-backs).
    pub rewards_paid_fen: i64,
    /// Points awarded.
    pub points_awarded: i64,
    /// Coupons issued.
    pub coupons_issued: i64,
    /// Budget.
    pub budget: BudgetStatus,
    /// Rejections by reason.
    pub rejections: BTreeMap<&'static str, i64>,
}

/// Every rejection reason, as counted.
pub const REASONS: [&str; 6] = [
    "self_referral",
    "existing_customer",
    "referral_loop",
    "shared_identity",
    "referrer_over_cap",
    "program_not_running",
];

/// The program's statistics (settles every referrer first, from the program's referrer index).
pub async fn stats(
    store: &impl Store,
    program_id: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Stats, ReferralError> {
    let program = crate::programs::get(store, program_id).await?;
    for referrer in kv::read_index(store, &referrals::keys::referrers(&program.id)).await? {
        rewards::settle(store, &program, &referrer, rules, now).await?;
    }
    totals(store, &program, now).await
}

/// The program's statistics as of the last settlement (counters only, nothing settled: what operators' overviews
/// read without writing).
pub async fn totals(store: &impl Store, program: &Program, now: Timestamp) -> Result<Stats, ReferralError> {
    let names: Vec<String> =
        ["attached", "qualified", "clawed_back", "rewarded", "rewards_paid_fen", "points_awarded", "coupons_issued"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(REASONS.iter().map(|r| format!("rejected_{r}")))
            .collect();
    let keys: Vec<_> = names.iter().map(|n| referrals::keys::program_counter(&program.id, n)).collect();
    let mut values = Vec::with_capacity(keys.len());
    for (key, raw) in keys.iter().zip(kv::get_all(store, &keys).await?) {
        values.push(raw.map(|b| kv::decode_counter(key, &b)).transpose()?.unwrap_or(0));
    }
    let (attached, gross, clawed) = (values[0], values[1], values[2]);
    let net = (gross - clawed).max(0);
    Ok(Stats {
        program_id: program.id.clone(),
        referrals: attached,
        qualified_gross: gross,
        clawed_back: clawed,
        qualified_net: net,
        qualified: net,
        rewarded: values[3],
        qualification_rate_bp: if attached > 0 { net * 10_000 / attached } else { 0 },
        rewards_paid_fen: values[4],
        points_awarded: values[5],
        coupons_issued: values[6],
        budget: limits::status_at(store, &keys::budget(&program.id), now).await?,
        rejections: REASONS.iter().zip(&values[7..]).map(|(r, v)| (*r, *v)).collect(),
    })
}

/// A leaderboard row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// Referrer.
    pub referrer_id: String,
    /// Qualified referrals (net of claw-backs).
    pub qualified: i64,
    /// Tier (1-based), if any.
    pub tier: Option<usize>,
}

/// The top referrers by qualified referrals (counters, one batch read).
pub async fn leaderboard(store: &impl Store, program_id: &str, limit: usize) -> Result<Vec<Leader>, ReferralError> {
    let program = crate::programs::get(store, program_id).await?;
    let referrers = kv::read_index(store, &referrals::keys::referrers(&program.id)).await?;
    let keys: Vec<_> =
        referrers.iter().map(|r| referrals::keys::referrer_counter(&program.id, r, "qualified")).collect();
    let mut rows = Vec::with_capacity(referrers.len());
    for ((referrer, key), raw) in referrers.iter().zip(&keys).zip(kv::get_all(store, &keys).await?) {
        let qualified = raw.map(|b| kv::decode_counter(key, &b)).transpose()?.unwrap_or(0).max(0);
        rows.push(Leader {
            referrer_id: referrer.clone(),
            qualified,
            tier: program.tier_for(qualified).map(|t| t + 1),
        });
    }
    rows.sort_by(|a, b| b.qualified.cmp(&a.qualified).then_with(|| a.referrer_id.cmp(&b.referrer_id)));
    rows.truncate(limit.clamp(1, 100));
    Ok(rows)
}
