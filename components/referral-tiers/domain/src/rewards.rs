//! Lazy settlement of a referrer's rewards: run whenever the referrer's numbers are read.
//!
//! 1. Read the referrer's referrals (statuses written by `core::referrals` on events).
//! 2. In one compare-and-swap of the referrer's state document, decide: every referral past its holding period
//!    gets its sequence number and reward (the n-th rewarded referral is paid at the tier of n), every tier bonus
//!    that the qualified count now reaches is to be paid, every paid bonus it no longer reaches is to be clawed
//!    back. Decisions are recorded `pending` before any effect: the intent.
//! 3. Carry out the pending effects, each idempotent by a deterministic id (a ledger posting, a budget reservation,
//!    a points claim, a coupon claim key), then mark them done. A crash anywhere leaves pending decisions that the
//!    next read completes; nothing is decided twice because deciding is one CAS.

use std::collections::BTreeSet;

use merchant_coupons_domain::{campaigns as coupon_campaigns, claims as coupon_claims};
use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::kv::{self, Step, Store};
use scenefin_core::ledger::{self, Line, Posting};
use scenefin_core::limits::{self, Reserved};
use scenefin_core::orders::BANK_MARKETING;
use scenefin_core::referrals::{self, Program, Referral, Reward, RewardKind, Status};
use serde::{Deserialize, Serialize};

use crate::{ReferralError, SCENARIO, keys};

/// What happened to a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Decided, not carried out yet.
    Pending,
    /// Paid (credited, awarded or issued).
    Paid,
    /// The budget could not fund it; nothing was paid.
    BudgetExhausted,
    /// The coupon campaign refused to issue (out of stock, not running...).
    CouponRefused,
    /// A paid bonus being taken back.
    Clawing,
    /// Taken back.
    ClawedBack,
}

/// A referral's reward, decided once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// Referee.
    pub referee_id: String,
    /// Its rank among the referrer's rewarded referrals (1-based).
    pub seq: i64,
    /// The tier (0-based) it was paid at, if any.
    pub tier: Option<usize>,
    /// The referrer's reward.
    pub reward: Option<Reward>,
    /// What happened to it.
    pub outcome: Outcome,
    /// The referee's reward and what happened to it.
    pub referee_reward: Option<Reward>,
    /// Its outcome.
    pub referee_outcome: Outcome,
    /// Decided at.
    pub at: Timestamp,
}

/// A tier bonus, paid when a tier is reached and clawed back when it no longer holds; `round` counts the times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bonus {
    /// Tier (0-based).
    pub tier: usize,
    /// Which time the tier is reached (0, 1...).
    pub round: u32,
    /// The bonus.
    pub reward: Reward,
    /// What happened.
    pub outcome: Outcome,
}

/// `ref:referrer:{program}:{referrer}:state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Schema version.
    pub v: u32,
    /// Rewards decided, by sequence.
    pub granted: Vec<Granted>,
    /// Bonuses decided.
    pub bonuses: Vec<Bonus>,
}

/// The referrer's referrals (one batch read).
pub async fn referrals_of(
    store: &impl Store,
    program_id: &str,
    referrer_id: &str,
) -> Result<Vec<Referral>, ReferralError> {
    let ids = kv::read_index(store, &referrals::keys::referees(program_id, referrer_id)).await?;
    let keys: Vec<_> = ids.iter().map(|id| referrals::keys::referral(id)).collect();
    let mut out = Vec::with_capacity(ids.len());
    for (key, raw) in keys.iter().zip(kv::get_all(store, &keys).await?) {
        if let Some(r) = kv::decode_doc::<Referral>(key, raw.as_deref())?
            && r.program_id == program_id
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// Qualified or rewarded: what counts towards tiers.
pub fn counts(r: &Referral) -> bool {
    matches!(r.status, Status::Qualified | Status::Rewarded)
}

/// Settles the referrer's rewards and bonuses as of `now`, and returns the state and the referrals.
pub async fn settle(
    store: &impl Store,
    program: &Program,
    referrer_id: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<(State, Vec<Referral>), ReferralError> {
    let mut referrals = referrals_of(store, &program.id, referrer_id).await?;
    let qualified = i64::try_from(referrals.iter().filter(|r| counts(r)).count()).unwrap_or(i64::MAX);
    let due: Vec<&Referral> = referrals
        .iter()
        .filter(|r| r.status == Status::Qualified && r.rewardable_at(program).is_some_and(|at| at <= now))
        .collect();

    // 2. Decide, in one CAS.
    let state = kv::update_json(store, &keys::state(&program.id, referrer_id), |doc: Option<&State>| {
        let mut next = doc.cloned().unwrap_or(State { v: 1, ..State::default() });
        let known: BTreeSet<&str> = next.granted.iter().map(|g| g.referee_id.as_str()).collect();
        let mut added = Vec::new();
        for r in due.iter().filter(|r| !known.contains(r.referee_id.as_str())) {
            let seq = i64::try_from(next.granted.len() + added.len()).unwrap_or(i64::MAX) + 1;
            let tier = program.tier_for(seq);
            added.push(Granted {
                referee_id: r.referee_id.clone(),
                seq,
                tier,
                reward: tier.map(|t| program.tiers[t].reward_per_referral.clone()),
                outcome: Outcome::Pending,
                referee_reward: program.referee_reward.clone(),
                referee_outcome: Outcome::Pending,
                at: now,
            });
        }
        next.granted.extend(added);
        for (i, tier) in program.tiers.iter().enumerate() {
            let Some(bonus) = &tier.tier_bonus else { continue };
            let reached = qualified >= tier.min_qualified;
            let latest = next.bonuses.iter_mut().rev().find(|b| b.tier == i);
            match latest {
                Some(b) if !reached && b.outcome == Outcome::Paid => b.outcome = Outcome::Clawing,
                Some(b) if reached && b.outcome == Outcome::ClawedBack => {
                    let round = b.round + 1;
                    next.bonuses.push(Bonus { tier: i, round, reward: bonus.clone(), outcome: Outcome::Pending });
                }
                None if reached => {
                    next.bonuses.push(Bonus { tier: i, round: 0, reward: bonus.clone(), outcome: Outcome::Pending });
                }
                _ => {}
            }
        }
        if doc == Some(&next) {
            return Ok::<_, ReferralError>(Step::Keep(next));
        }
        Ok(Step::Write(next.clone(), next))
    })
    .await?;

    // 3. Carry out what is pending.
    let mut state = state;
    for g in state.granted.iter_mut() {
        if g.outcome == Outcome::Pending {
            let id = format!("rw:{}:{}", program.id, g.referee_id);
            g.outcome = match &g.reward {
                Some(reward) => grant(store, program, referrer_id, reward, &id, rules, now).await?,
                None => Outcome::Paid,
            };
        }
        if g.referee_outcome == Outcome::Pending {
            let id = format!("rr:{}:{}", program.id, g.referee_id);
            g.referee_outcome = match &g.referee_reward {
                Some(reward) => grant(store, program, &g.referee_id, reward, &id, rules, now).await?,
                None => Outcome::Paid,
            };
        }
    }
    for b in state.bonuses.iter_mut() {
        let id = format!("bonus:{}:{}:{}:{}", program.id, referrer_id, b.tier, b.round);
        match b.outcome {
            Outcome::Pending => b.outcome = grant(store, program, referrer_id, &b.reward, &id, rules, now).await?,
            Outcome::Clawing => {
                claw_back(store, program, referrer_id, &b.reward, &id, now).await?;
                b.outcome = Outcome::ClawedBack;
            }
            _ => {}
        }
    }
    // Record the outcomes (only moving pending and clawing entries forward).
    let settled = kv::update_json(store, &keys::state(&program.id, referrer_id), |doc: Option<&State>| {
        let mut next = doc.cloned().unwrap_or_default();
        for g in next.granted.iter_mut() {
            if let Some(done) = state.granted.iter().find(|d| d.referee_id == g.referee_id) {
                if g.outcome == Outcome::Pending {
                    g.outcome = done.outcome;
                }
                if g.referee_outcome == Outcome::Pending {
                    g.referee_outcome = done.referee_outcome;
                }
            }
        }
        for b in next.bonuses.iter_mut() {
            if let Some(done) = state.bonuses.iter().find(|d| d.tier == b.tier && d.round == b.round)
                && matches!(b.outcome, Outcome::Pending | Outcome::Clawing)
                && done.outcome != b.outcome
            {
                b.outcome = done.outcome;
            }
        }
        if doc == Some(&next) {
            return Ok::<_, ReferralError>(Step::Keep(next));
        }
        Ok(Step::Write(next.clone(), next))
    })
    .await?;

    // Referrals paid become `rewarded`; the referrer's `referred` event follows.
    for g in settled.granted.iter().filter(|g| g.outcome == Outcome::Paid) {
        let Some(r) = referrals.iter_mut().find(|r| r.referee_id == g.referee_id && r.status == Status::Qualified)
        else {
            continue;
        };
        let updated = kv::update_json(store, &referrals::keys::referral(&r.referee_id), |doc: Option<&Referral>| {
            let Some(doc) = doc else { return Ok::<_, ReferralError>(Step::Keep(None)) };
            if doc.status != Status::Qualified {
                return Ok(Step::Keep(Some(doc.clone())));
            }
            let next = Referral { status: Status::Rewarded, rewarded_at: Some(now), ..doc.clone() };
            Ok(Step::Write(next.clone(), Some(next)))
        })
        .await?;
        if let Some(updated) = updated {
            *r = updated;
        }
        let event = Event::new(
            format!("referred:{}:{}", program.id, g.referee_id),
            referrer_id,
            EventKind::Referred,
            SCENARIO,
            now,
        );
        events::record(store, &event, rules).await?;
        kv::count_once(
            store,
            &referrals::keys::effect("rewarded", &g.referee_id),
            &referrals::keys::program_counter(&program.id, "rewarded"),
            1,
        )
        .await?;
    }
    Ok((settled, referrals))
}

/// Pays one reward to `customer_id`, once per `id`.
async fn grant(
    store: &impl Store,
    program: &Program,
    customer_id: &str,
    reward: &Reward,
    id: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Outcome, ReferralError> {
    let amount = reward.amount.unwrap_or(0);
    match reward.kind {
        RewardKind::CashFen => {
            let budget = keys::budget(&program.id);
            // The reservation outlives any read: commit follows at once.
            let until = now.plus_days(3650);
            if limits::reserve(store, &budget, id, amount, until, now).await? != Reserved::Granted {
                return Ok(Outcome::BudgetExhausted);
            }
            ledger::post(store, &cash_posting(id, customer_id, amount, now)).await?;
            limits::commit(store, &budget, id, now).await?;
            kv::count_once(
                store,
                &referrals::keys::effect("paid_fen", id),
                &referrals::keys::program_counter(&program.id, "rewards_paid_fen"),
                amount,
            )
            .await?;
            Ok(Outcome::Paid)
        }
        RewardKind::Points => {
            kv::count_once(store, &referrals::keys::effect("points", id), &keys::points(customer_id), amount).await?;
            kv::count_once(
                store,
                &referrals::keys::effect("points_p", id),
                &referrals::keys::program_counter(&program.id, "points_awarded"),
                amount,
            )
            .await?;
            Ok(Outcome::Paid)
        }
        RewardKind::CouponCampaign => {
            let campaign_id = reward.campaign_id.as_deref().unwrap_or_default();
            let Ok(campaign) = coupon_campaigns::get(store, campaign_id).await else {
                return Ok(Outcome::CouponRefused);
            };
            match coupon_claims::issue(store, &campaign, customer_id, id, rules, now).await {
                Ok(_) => {
                    kv::count_once(
                        store,
                        &referrals::keys::effect("coupon", id),
                        &referrals::keys::program_counter(&program.id, "coupons_issued"),
                        1,
                    )
                    .await?;
                    Ok(Outcome::Paid)
                }
                Err(merchant_coupons_domain::CouponError::Refused(_)) => Ok(Outcome::CouponRefused),
                Err(e) => Err(ReferralError::invalid("coupon", e.to_string())),
            }
        }
    }
}

fn cash_posting(id: &str, customer_id: &str, amount: i64, at: Timestamp) -> Posting {
    Posting {
        v: 1,
        id: id.to_owned(),
        at,
        memo: format!("referral reward {id}"),
        lines: vec![
            Line { account: BANK_MARKETING.into(), amount_fen: amount },
            Line { account: keys::rewards_account(customer_id), amount_fen: -amount },
        ],
    }
}

/// Takes back a paid bonus (cash reversed and its budget released, points deducted). A coupon once issued stays
/// with the customer: the claw-back of a coupon bonus is recorded only.
async fn claw_back(
    store: &impl Store,
    program: &Program,
    customer_id: &str,
    reward: &Reward,
    id: &str,
    now: Timestamp,
) -> Result<(), ReferralError> {
    let amount = reward.amount.unwrap_or(0);
    let claw_id = id.replacen("bonus:", "claw:", 1);
    match reward.kind {
        RewardKind::CashFen => {
            let paid = cash_posting(id, customer_id, amount, now);
            let back = Posting {
                id: claw_id.clone(),
                memo: format!("claw-back of {id}"),
                lines: paid.lines.into_iter().map(|l| Line { amount_fen: -l.amount_fen, ..l }).collect(),
                ..paid
            };
            ledger::post(store, &back).await?;
            limits::uncommit(store, &keys::budget(&program.id), id).await?;
            kv::count_once(
                store,
                &referrals::keys::effect("paid_fen", &claw_id),
                &referrals::keys::program_counter(&program.id, "rewards_paid_fen"),
                -amount,
            )
            .await?;
        }
        RewardKind::Points => {
            kv::count_once(store, &referrals::keys::effect("points", &claw_id), &keys::points(customer_id), -amount)
                .await?;
        }
        RewardKind::CouponCampaign => {}
    }
    Ok(())
}
