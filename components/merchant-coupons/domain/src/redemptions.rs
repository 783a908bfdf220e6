//! Redemption at a merchant: exactly once per coupon, idempotent per (merchant, `merchant_order_id`), and its
//! reversal; statistics per campaign.
//!
//! A redemption is a record first (`pending`), then the coupon's compare-and-swap to `used` by this redemption —
//! the one step that decides, so concurrent redemptions of one code have exactly one winner — then the budget
//! commit, the ledger posting `redeem:{id}` and `completed`; the statistics, the customer's event and the merchant's
//! feed event `coupon.redeemed:{id}` follow, each idempotent. A retry with the same `merchant_order_id` resumes the
//! record and re-drives them, so a crash anywhere delays the feed event, never loses or duplicates it.
//!
//! A reversal appends `coupon.reversed:{id}` after its own writes, re-driven the same way by a repeated reversal;
//! it appends `coupon.redeemed:{id}` first (a no-op when it is there), so the merchant's feed always has the
//! redemption before its reversal, even when a crash kept the redemption's event from being appended.

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons::{self, Coupon, CouponState};
use scenefin_core::customers::LifecycleRules;
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::feed::{self, FeedEvent};
use scenefin_core::ids::{Id, hash_key_part};
use scenefin_core::kv::{self, Key, Step, Store, get_json};
use scenefin_core::ledger::{self, Line, Posting};
use scenefin_core::limits::{self, BudgetStatus, Reserved};
use scenefin_core::orders::BANK_MARKETING;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::campaigns::{self, Campaign};
use crate::claims::{self, valid_code};
use crate::merchants::{self, Merchant};
use crate::{CouponError, OWNER, SCENARIO, keys};

/// Largest order amount a redemption accepts: ¥1,000,000.
const MAX_ORDER_FEN: i64 = 100_000_000;

/// A redemption's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedemptionState {
    /// Being processed (a retry resumes it).
    Pending,
    /// The coupon is used and the discount owed to the merchant.
    Completed,
    /// Another redemption used the coupon first.
    Refused,
    /// Completed, then reversed.
    Reversed,
}

/// A redemption record (`cpn:redemption:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    /// Schema version.
    pub v: u32,
    /// Id: derived from the merchant and `merchant_order_id`.
    pub redemption_id: String,
    /// Merchant.
    pub merchant_id: String,
    /// The merchant's order.
    pub merchant_order_id: String,
    /// Store.
    pub store_id: String,
    /// Coupon.
    pub coupon_id: String,
    /// Campaign.
    pub campaign_id: String,
    /// Hash of the code presented.
    pub code_sha: String,
    /// The order amount.
    pub order_amount_fen: i64,
    /// The discount.
    pub discount_fen: i64,
    /// State.
    pub state: RedemptionState,
    /// Received.
    pub created_at: Timestamp,
    /// Reversed.
    pub reversed_at: Option<Timestamp>,
    /// Whether the reversal put the coupon back in the wallet.
    pub coupon_restored: Option<bool>,
}

/// What the POS sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemInput {
    /// The code shown.
    pub code: String,
    /// The merchant's store.
    pub store_id: String,
    /// The order's amount.
    pub order_amount_fen: i64,
    /// The merchant's order id.
    pub merchant_order_id: String,
}

/// The redemption id of a merchant's order.
pub fn redemption_id_for(merchant_id: &str, merchant_order_id: &str) -> String {
    format!("rd_{}", &hash_key_part(&format!("{merchant_id}\n{merchant_order_id}"))[..24])
}

/// Redeems a coupon at a merchant.
pub async fn redeem(
    store: &impl Store,
    merchant: &Merchant,
    input: &RedeemInput,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Redemption, CouponError> {
    if Id::parse(&input.merchant_order_id).is_err() {
        return Err(CouponError::invalid("merchant_order_id", "1 to 64 letters, digits, underscores or hyphens"));
    }
    if !(1..=MAX_ORDER_FEN).contains(&input.order_amount_fen) {
        return Err(CouponError::invalid("order_amount_fen", format!("1 to {MAX_ORDER_FEN}")));
    }
    // The lockout is per store (the till the signed request names), so the store is checked first.
    if !merchant.stores.iter().any(|s| s.store_id == input.store_id) {
        return Err(CouponError::UnknownStore);
    }
    let code = input.code.trim().to_ascii_uppercase();
    let code_sha = hash_key_part(&code);
    let id = redemption_id_for(&merchant.id, &input.merchant_order_id);
    // The store's lockout, the redemption this order may have made already and the code's entry, in one read.
    let (lock_key, record_key) = (keys::lockout(&merchant.id, &input.store_id), keys::redemption(&id));
    let mut read = vec![lock_key.clone(), record_key.clone()];
    if claims::valid_code(&code) {
        read.push(keys::code(&code));
    }
    let found = kv::get_all(store, &read).await?;
    merchants::lockout_in(&lock_key, found[0].as_deref(), now)?;
    if let Some(existing) = kv::decode_doc::<Redemption>(&record_key, found[1].as_deref())? {
        let same = existing.code_sha == code_sha
            && existing.store_id == input.store_id
            && existing.order_amount_fen == input.order_amount_fen;
        if !same {
            return Err(CouponError::MerchantOrderConflict(input.merchant_order_id.clone()));
        }
        return resume(store, existing, rules, now).await;
    }
    let entry = match read.get(2) {
        Some(key) => kv::decode_doc::<claims::CodeEntry>(key, found[2].as_deref())?,
        None => None,
    };
    let coupon = match entry {
        Some(entry) => coupons::get(store, &entry.coupon_id).await?,
        None => None,
    };
    let coupon = match coupon {
        Some(c) if valid_code(&code) && !matches!(c.state, CouponState::Claiming | CouponState::Refused) => c,
        _ => return Err(miss(store, merchant, &input.store_id, now).await),
    };
    let campaign = campaigns::get(store, &coupon.campaign_id).await?;
    if !campaign.accepted_by(&merchant.id, &merchant.district) {
        return Err(miss(store, merchant, &input.store_id, now).await);
    }
    check_usable(&coupon, input.order_amount_fen, now)?;
    let fresh = Redemption {
        v: 1,
        redemption_id: id.clone(),
        merchant_id: merchant.id.clone(),
        merchant_order_id: input.merchant_order_id.clone(),
        store_id: input.store_id.clone(),
        coupon_id: coupon.id.clone(),
        campaign_id: campaign.id.clone(),
        code_sha,
        order_amount_fen: input.order_amount_fen,
        discount_fen: coupon.discount.off_fen(input.order_amount_fen),
        state: RedemptionState::Pending,
        created_at: now,
        reversed_at: None,
        coupon_restored: None,
    };
    // Read as absent just now: claim its creation first.
    let record = kv::update_json_new(store, &keys::redemption(&id), |doc: Option<&Redemption>| match doc {
        Some(existing) => Ok::<_, CouponError>(Step::Keep(existing.clone())),
        None => Ok(Step::Write(fresh.clone(), fresh.clone())),
    })
    .await?;
    resume(store, record, rules, now).await
}

/// A failed lookup at a store: counted towards the store's lockout, answered as an unknown coupon (or, past the
/// limit, as the lockout).
async fn miss(store: &impl Store, merchant: &Merchant, store_id: &str, now: Timestamp) -> CouponError {
    match merchants::record_miss(store, &merchant.id, store_id, now).await {
        Ok(()) => CouponError::CouponNotFound,
        Err(e) => e,
    }
}

fn check_usable(coupon: &Coupon, order_fen: i64, now: Timestamp) -> Result<(), CouponError> {
    match coupon.status_at(now) {
        "used" | "void" => Err(CouponError::AlreadyUsed),
        "expired" => Err(CouponError::CouponExpired),
        "locked" => Err(CouponError::InUse),
        _ if coupon.discount.off_fen(order_fen) == 0 => Err(CouponError::BelowMinSpend(coupon.discount.min_spend_fen)),
        _ => Ok(()),
    }
}

async fn resume(
    store: &impl Store,
    record: Redemption,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Redemption, CouponError> {
    // The coupon, when this call used it (it is then not read again).
    let (record, coupon) = match record.state {
        RedemptionState::Refused => return Err(CouponError::AlreadyUsed),
        RedemptionState::Completed | RedemptionState::Reversed => (record, None),
        RedemptionState::Pending => {
            let taken = kv::update_json(store, &coupons::keys::coupon(&record.coupon_id), |doc: Option<&Coupon>| {
                let Some(c) = doc else { return Err(CouponError::CouponNotFound) };
                if c.used_by.as_deref() == Some(record.redemption_id.as_str()) {
                    return Ok(Step::Keep(Ok(c.clone())));
                }
                if let Err(e) = check_usable(c, record.order_amount_fen, now) {
                    return Ok(Step::Keep(Err(e)));
                }
                let used = Coupon {
                    state: CouponState::Used,
                    used_at: Some(now),
                    used_by: Some(record.redemption_id.clone()),
                    locked_by: None,
                    locked_until: None,
                    ..c.clone()
                };
                Ok(Step::Write(used.clone(), Ok(used)))
            })
            .await?;
            let coupon = match taken {
                Ok(coupon) => coupon,
                Err(e) => {
                    let final_state =
                        if e == CouponError::AlreadyUsed { RedemptionState::Refused } else { RedemptionState::Pending };
                    if final_state == RedemptionState::Refused {
                        update(store, &record.redemption_id, |r| {
                            (r.state == RedemptionState::Pending)
                                .then(|| Redemption { state: RedemptionState::Refused, ..r.clone() })
                        })
                        .await?;
                    }
                    return Err(e);
                }
            };
            limits::commit(store, &Key::from_stored(&coupon.budget), &coupon.reservation_id, now).await?;
            ledger::post(store, &redeem_posting(&record)).await?;
            let completed = update(store, &record.redemption_id, |r| {
                (r.state == RedemptionState::Pending)
                    .then(|| Redemption { state: RedemptionState::Completed, ..r.clone() })
            })
            .await?;
            (completed, Some(coupon))
        }
    };
    completed_effects(store, &record, coupon.as_ref(), rules).await?;
    Ok(record)
}

fn redeem_posting(r: &Redemption) -> Posting {
    Posting {
        v: 1,
        id: format!("redeem:{}", r.redemption_id),
        at: r.created_at,
        memo: format!("coupon {} redeemed at {}", r.coupon_id, r.merchant_id),
        lines: vec![
            Line { account: BANK_MARKETING.into(), amount_fen: r.discount_fen },
            Line { account: keys::merchant_account(&r.merchant_id), amount_fen: -r.discount_fen },
        ],
    }
}

async fn update(
    store: &impl Store,
    id: &str,
    decide: impl Fn(&Redemption) -> Option<Redemption>,
) -> Result<Redemption, CouponError> {
    kv::update_json(store, &keys::redemption(id), |doc: Option<&Redemption>| {
        let Some(doc) = doc else { return Err(CouponError::RedemptionNotFound) };
        Ok(match decide(doc) {
            Some(next) => Step::Write(next.clone(), next),
            None => Step::Keep(doc.clone()),
        })
    })
    .await
}

async fn completed_effects(
    store: &impl Store,
    r: &Redemption,
    coupon: Option<&Coupon>,
    rules: &LifecycleRules,
) -> Result<(), CouponError> {
    let coupon = match coupon {
        Some(coupon) => coupon.clone(),
        None => coupons::get(store, &r.coupon_id).await?.ok_or(CouponError::CouponNotFound)?,
    };
    let once = |what: &str| keys::effect(what, &r.redemption_id);
    // The campaign's statistics, behind one claim for the redemption.
    let counters = [
        (keys::counter(&r.campaign_id, "redeemed"), 1),
        (keys::counter(&r.campaign_id, "discount_fen"), r.discount_fen),
        (keys::channel_counter(&r.campaign_id, &coupon.channel, "redeemed"), 1),
    ];
    kv::count_all_once(store, &once("redeemed"), &counters).await?;
    let event = Event {
        amount_fen: Some(r.discount_fen),
        tags: vec!["coupon_user".into()],
        ..Event::new(
            format!("redeemed:{}", r.redemption_id),
            &coupon.customer_id,
            EventKind::Redeemed,
            SCENARIO,
            r.created_at,
        )
    };
    events::record(store, &event, rules).await?;
    feed::append(store, &feed::key(OWNER, &r.merchant_id), &redeemed_event(r)).await?;
    Ok(())
}

/// The merchant's `coupon.redeemed:{redemption_id}` feed event: what the cashier needs to confirm the discount
/// (the code itself is never repeated: the coupon id names the coupon).
fn redeemed_event(r: &Redemption) -> FeedEvent {
    let data = json!({
        "redemption_id": r.redemption_id, "merchant_id": r.merchant_id, "store_id": r.store_id,
        "merchant_order_id": r.merchant_order_id, "coupon_id": r.coupon_id, "campaign_id": r.campaign_id,
        "order_amount_fen": r.order_amount_fen, "discount_fen": r.discount_fen,
        "pay_fen": r.order_amount_fen - r.discount_fen, "redeemed_at": r.created_at,
    });
    FeedEvent::new("coupon.redeemed", &r.redemption_id, r.created_at, data)
}

/// The merchant's `coupon.reversed:{redemption_id}` feed event (of a reversed redemption).
fn reversed_event(r: &Redemption, at: Timestamp) -> FeedEvent {
    let data = json!({
        "redemption_id": r.redemption_id, "merchant_id": r.merchant_id, "store_id": r.store_id,
        "merchant_order_id": r.merchant_order_id, "coupon_id": r.coupon_id, "campaign_id": r.campaign_id,
        "order_amount_fen": r.order_amount_fen, "discount_fen": r.discount_fen, "reversed_at": at,
        "coupon_restored": r.coupon_restored,
    });
    FeedEvent::new("coupon.reversed", &r.redemption_id, at, data)
}

/// Reverses a completed redemption of this merchant: the discount posting reversed, the statistics taken back,
/// and the coupon restored to the wallet if it has not expired and its value can be reserved again (else `void`).
pub async fn reverse(
    store: &impl Store,
    merchant: &Merchant,
    id: &str,
    now: Timestamp,
) -> Result<Redemption, CouponError> {
    if Id::parse(id).is_err() {
        return Err(CouponError::RedemptionNotFound);
    }
    let record: Redemption = get_json(store, &keys::redemption(id)).await?.ok_or(CouponError::RedemptionNotFound)?;
    if record.merchant_id != merchant.id {
        return Err(CouponError::RedemptionNotFound);
    }
    if matches!(record.state, RedemptionState::Pending | RedemptionState::Refused) {
        return Err(CouponError::RedemptionNotCompleted);
    }
    let record = update(store, id, |r| {
        (r.state == RedemptionState::Completed).then(|| Redemption {
            state: RedemptionState::Reversed,
            reversed_at: Some(now),
            ..r.clone()
        })
    })
    .await?;
    let at = record.reversed_at.unwrap_or(now);
    let forward = redeem_posting(&record);
    let back = Posting {
        v: 1,
        id: format!("unredeem:{}", record.redemption_id),
        at,
        memo: format!("reversal of {}", forward.id),
        lines: forward.lines.into_iter().map(|l| Line { amount_fen: -l.amount_fen, ..l }).collect(),
    };
    ledger::post(store, &back).await?;
    let once = |what: &str| keys::effect(what, &record.redemption_id);
    let counters = [
        (keys::counter(&record.campaign_id, "redeemed"), -1),
        (keys::counter(&record.campaign_id, "discount_fen"), -record.discount_fen),
    ];
    kv::count_all_once(store, &once("unredeemed"), &counters).await?;
    let restored = restore(store, &record, now).await?;
    let record = update(store, id, |r| {
        (r.coupon_restored.is_none()).then(|| Redemption { coupon_restored: Some(restored), ..r.clone() })
    })
    .await?;
    // The merchant's feed: the redemption (already there unless a crash kept it out), then its reversal.
    let merchant_feed = feed::key(OWNER, &record.merchant_id);
    feed::append(store, &merchant_feed, &redeemed_event(&record)).await?;
    feed::append(store, &merchant_feed, &reversed_event(&record, at)).await?;
    Ok(record)
}

/// Puts a reversed redemption's coupon back: its committed value is released, and a fresh reservation (one per
/// restore) holds it again. Without budget or time left the coupon is `void`.
async fn restore(store: &impl Store, record: &Redemption, now: Timestamp) -> Result<bool, CouponError> {
    let Some(coupon) = coupons::get(store, &record.coupon_id).await? else { return Ok(false) };
    if coupon.used_by.as_deref() != Some(record.redemption_id.as_str()) {
        // Already restored (or voided) by an earlier attempt.
        return Ok(coupon.state == CouponState::Active || coupon.state == CouponState::Locked);
    }
    let budget = Key::from_stored(&coupon.budget);
    limits::uncommit(store, &budget, &coupon.reservation_id).await?;
    let restores = coupon.restores + 1;
    let reservation_id = format!("{}-r{restores}", coupon.id);
    let alive = now < coupon.expires_at;
    let granted = alive
        && limits::reserve(
            store,
            &budget,
            &reservation_id,
            coupon.discount.max_value_fen(),
            coupon.expires_at.plus_days(1),
            now,
        )
        .await?
            == Reserved::Granted;
    let result = kv::update_json(store, &coupons::keys::coupon(&coupon.id), |doc: Option<&Coupon>| {
        let Some(c) = doc else { return Err(CouponError::CouponNotFound) };
        if c.used_by.as_deref() != Some(record.redemption_id.as_str()) {
            return Ok(Step::Keep(c.state == CouponState::Active));
        }
        let next = if granted {
            Coupon {
                state: CouponState::Active,
                used_at: None,
                used_by: None,
                restores,
                reservation_id: reservation_id.clone(),
                ..c.clone()
            }
        } else {
            Coupon { state: CouponState::Void, used_by: None, ..c.clone() }
        };
        Ok(Step::Write(next, granted))
    })
    .await?;
    Ok(result)
}

/// A campaign's statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Campaign.
    pub campaign_id: String,
    /// `scheduled`, `running`, `paused`, `ended`.
    pub status: &'static str,
    /// Coupons issued.
    pub issued: i64,
    /// Redeemed (net of reversals).
    pub redeemed: i64,
    /// Redeemed per issued, in basis points.
    pub redemption_rate_bp: i64,
    /// Discount given at merchants (net of reversals).
    pub discount_spent_fen: i64,
    /// Stock left.
    pub remaining_stock: i64,
    /// The budget.
    pub budget: BudgetStatus,
    /// Per channel of the claiming customers: `{issued, redeemed}`.
    pub by_channel: std::collections::BTreeMap<String, ChannelStats>,
}

/// One channel's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Issued.
    pub issued: i64,
    /// Redeemed.
    pub redeemed: i64,
}

/// The campaign's statistics, from counters (one batch read) and the budget.
pub async fn stats(store: &impl Store, campaign: &Campaign, now: Timestamp) -> Result<Stats, CouponError> {
    let channels = kv::read_index(store, &keys::channels(&campaign.id)).await?;
    let mut counters = vec![
        keys::counter(&campaign.id, "issued"),
        keys::counter(&campaign.id, "redeemed"),
        keys::counter(&campaign.id, "discount_fen"),
    ];
    for ch in &channels {
        counters.push(keys::channel_counter(&campaign.id, ch, "issued"));
        counters.push(keys::channel_counter(&campaign.id, ch, "redeemed"));
    }
    let mut values = Vec::with_capacity(counters.len());
    for (key, raw) in counters.iter().zip(kv::get_all(store, &counters).await?) {
        values.push(raw.map(|b| kv::decode_counter(key, &b)).transpose()?.unwrap_or(0));
    }
    let (issued, redeemed, discount) = (values[0].max(0), values[1].max(0), values[2].max(0));
    let by_channel = channels
        .iter()
        .enumerate()
        .map(|(i, ch)| (ch.clone(), ChannelStats { issued: values[3 + 2 * i], redeemed: values[4 + 2 * i] }))
        .collect();
    Ok(Stats {
        campaign_id: campaign.id.clone(),
        status: campaign.status_at(now),
        issued,
        redeemed,
        redemption_rate_bp: if issued > 0 { redeemed * 10_000 / issued } else { 0 },
        discount_spent_fen: discount,
        remaining_stock: (campaign.stock_total - issued).max(0),
        budget: limits::status_at(store, &keys::budget(&campaign.id), now).await?,
        by_channel,
    })
}
