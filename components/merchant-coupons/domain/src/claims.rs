//! Claiming a coupon into the wallet (and issuing one for a check-in streak or a referral): schedule, eligibility,
//! then per-customer limits, daily stock, stock and budget, each taken atomically and given back if a later one
//! refuses, so nothing is ever oversold or over budget.
//!
//! A coupon's id is derived from the campaign, the customer and the claim key (the `Idempotency-Key`, the check-in
//! day, the referral), so an interrupted claim retried with the same key resumes the same coupon. Its document is
//! written `claiming` before anything is taken and becomes `active` (or `refused`) after; a store error in between
//! gives the counters back, a crash in between leaves them taken, never given out twice: the imprecision is always
//! under-issuing.

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons::{self, Coupon, CouponState};
use scenefin_core::customers::{self, Customer, LifecycleRules};
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::ids::{Id, hash_key_part, random_bytes};
use scenefin_core::kv::{self, Key, Step, Store, put_json};
use scenefin_core::limits::{self, Reserved};
use serde::{Deserialize, Serialize};

use crate::campaigns::Campaign;
use crate::{CouponError, Refusal, SCENARIO, keys};

/// Characters of coupon codes: no `0 O 1 I L`, so a code read aloud or off a screen is unambiguous.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Length of a coupon code.
pub const CODE_LEN: usize = 12;
/// How long after a coupon expires its budget reservation is kept: long enough for a bill quote that locked it just
/// before its expiry to be ordered and paid (quote life, payment window and the reservation grace), so a coupon that
/// expires unused gives its budget back within the hour instead of a day later.
const RESERVATION_GRACE_SECS: i64 = scenefin_core::orders::QUOTE_TTL_SECS
    + scenefin_core::orders::PAYMENT_WINDOW_SECS
    + scenefin_core::orders::RESERVATION_GRACE_SECS;

/// The coupon id for a claim.
pub fn coupon_id_for(campaign_id: &str, customer_id: &str, claim_key: &str) -> String {
    format!("cp_{}", &hash_key_part(&format!("{campaign_id}\n{customer_id}\n{claim_key}"))[..24])
}

/// Whether `code` is shaped like a coupon code (after upper-casing).
pub fn valid_code(code: &str) -> bool {
    code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))
}

fn new_code() -> Result<String, CouponError> {
    let bytes = random_bytes::<CODE_LEN>().map_err(|e| CouponError::invalid("code", e.to_string()))?;
    Ok(bytes.iter().map(|b| char::from(CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()])).collect())
}

/// `cpn:code:{code}`: the coupon a code belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CodeEntry {
    v: u32,
    pub(crate) coupon_id: String,
}

/// The coupon a code belongs to.
pub async fn by_code(store: &impl Store, code: &str) -> Result<Option<Coupon>, CouponError> {
    if !valid_code(code) {
        return Ok(None);
    }
    let Some(entry) = kv::get_json::<CodeEntry>(store, &keys::code(code)).await? else { return Ok(None) };
    Ok(coupons::get(store, &entry.coupon_id).await?)
}

/// A customer claims a coupon of a claimable campaign.
pub async fn claim(
    store: &impl Store,
    campaign_id: &str,
    customer_id: &str,
    claim_key: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Coupon, CouponError> {
    // The campaign, the coupon this claim may have made already and the customer, in one read.
    if Id::parse(campaign_id).is_err() {
        return Err(CouponError::CampaignNotFound);
    }
    let coupon_id = coupon_id_for(campaign_id, customer_id, claim_key);
    let customer_key = customers::valid_id(customer_id).then(|| customers::keys::customer(customer_id));
    let mut read = vec![keys::campaign(campaign_id), coupons::keys::coupon(&coupon_id)];
    read.extend(customer_key.iter().cloned());
    let found = kv::get_all(store, &read).await?;
    let campaign: Campaign = kv::decode_doc(&read[0], found[0].as_deref())?.ok_or(CouponError::CampaignNotFound)?;
    if !campaign.kind.claimable() {
        return Err(CouponError::Refused(Refusal::NotEligible));
    }
    let existing: Option<Coupon> = kv::decode_doc(&read[1], found[1].as_deref())?;
    let customer = match &customer_key {
        Some(key) => kv::decode_doc(key, found.get(2).and_then(Option::as_deref))?,
        None => None,
    };
    issue_read(store, &campaign, customer_id, &coupon_id, existing, customer, rules, now).await
}

/// Issues a coupon of `campaign` to a customer, once per claim key.
pub async fn issue(
    store: &impl Store,
    campaign: &Campaign,
    customer_id: &str,
    claim_key: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Coupon, CouponError> {
    let coupon_id = coupon_id_for(&campaign.id, customer_id, claim_key);
    let existing = coupons::get(store, &coupon_id).await?;
    let customer = customers::lookup(store, customer_id).await?;
    issue_read(store, campaign, customer_id, &coupon_id, existing, customer, rules, now).await
}

/// [`issue`] with the coupon (if it exists) and the customer already read.
#[allow(clippy::too_many_arguments)]
async fn issue_read(
    store: &impl Store,
    campaign: &Campaign,
    customer_id: &str,
    coupon_id: &str,
    existing: Option<Coupon>,
    customer: Option<Customer>,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Coupon, CouponError> {
    let coupon_id = coupon_id.to_owned();
    if let Some(existing) = existing {
        match existing.state {
            CouponState::Refused => return Err(CouponError::Refused(refusal_of(&existing))),
            // Interrupted: run the claim again below (what it took before stays taken: under-issue, never over).
            CouponState::Claiming => {}
            // Issued: complete its effects, which an interrupted claim may have left undone.
            _ => return finish(store, existing, rules, now).await,
        }
    }
    if campaign.status_at(now) != "running" {
        return Err(CouponError::Refused(Refusal::CampaignNotRunning));
    }
    let customer = customer.ok_or(CouponError::Refused(Refusal::NotEligible))?;
    if campaign.targets_profile() && !customer.marketing_allowed() {
        return Err(CouponError::Refused(Refusal::MarketingConsentWithdrawn));
    }
    if !campaign.eligible(&customer, rules, now) {
        return Err(CouponError::Refused(Refusal::NotEligible));
    }
    let expires_at = campaign.coupon_expiry(now);
    let fresh = Coupon {
        v: 1,
        id: coupon_id.clone(),
        campaign_id: campaign.id.clone(),
        customer_id: customer_id.to_owned(),
        code: new_code()?,
        title: campaign.title.clone(),
        merchant_ids: campaign.merchant_ids.clone(),
        district: campaign.district.clone(),
        discount: campaign.coupon.clone(),
        applies_to: campaign.applies_to.clone(),
        state: CouponState::Claiming,
        refusal: None,
        budget: keys::budget(&campaign.id).as_str().to_owned(),
        reservation_id: coupon_id.clone(),
        restores: 0,
        channel: customer.first_touch.as_ref().map_or_else(|| "direct".to_owned(), |t| t.code.clone()),
        claimed_at: now,
        expires_at,
        locked_by: None,
        locked_until: None,
        used_at: None,
        used_by: None,
    };
    // Usually read as absent just now: claim its creation first.
    let coupon = kv::update_json_new(store, &coupons::keys::coupon(&coupon_id), |doc: Option<&Coupon>| match doc {
        Some(existing) => Ok::<_, CouponError>(Step::Keep(existing.clone())),
        None => Ok(Step::Write(fresh.clone(), fresh.clone())),
    })
    .await?;
    if coupon.state != CouponState::Claiming {
        return finish(store, coupon, rules, now).await;
    }
    if let Err(refusal) = take_all(store, campaign, &coupon, now).await? {
        let refused = set_state(store, &coupon_id, CouponState::Claiming, |c| Coupon {
            state: CouponState::Refused,
            refusal: Some(refusal.code().to_owned()),
            ..c.clone()
        })
        .await?;
        return match refused.state {
            CouponState::Refused => Err(CouponError::Refused(refusal_of(&refused))),
            _ => finish(store, refused, rules, now).await,
        };
    }
    let activated =
        set_state(store, &coupon_id, CouponState::Claiming, |c| Coupon { state: CouponState::Active, ..c.clone() })
            .await;
    let active = match activated {
        Ok(active) => active,
        Err(e) => {
            // Still `claiming` means our CAS did not land: give back the counters this attempt took, which its retry
            // takes again (the budget reservation is the coupon's own, and the retry reuses it). Otherwise it may
            // have landed: keep them.
            if coupons::get(store, &coupon_id).await.ok().flatten().is_some_and(|c| c.state == CouponState::Claiming) {
                let steps = counters(campaign, &coupon, now);
                give_back(store, &steps.iter().map(|(counter, _, _)| counter).collect::<Vec<_>>()).await;
            }
            return Err(e);
        }
    };
    finish(store, active, rules, now).await
}

fn refusal_of(coupon: &Coupon) -> Refusal {
    match coupon.refusal.as_deref() {
        Some("out_of_stock") => Refusal::OutOfStock,
        Some("limit_reached") => Refusal::LimitReached,
        Some("campaign_not_running") => Refusal::CampaignNotRunning,
        Some("budget_exhausted") => Refusal::BudgetExhausted,
        _ => Refusal::NotEligible,
    }
}

/// The capped counters a claim takes one of, in order: the customer's limits, the day's stock, the stock.
fn counters(campaign: &Campaign, coupon: &Coupon, now: Timestamp) -> Vec<(Key, i64, Refusal)> {
    let day = now.shanghai_day();
    let mut steps: Vec<(Key, i64, Refusal)> = vec![(
        keys::per_customer(&campaign.id, &coupon.customer_id),
        campaign.per_customer_limit,
        Refusal::LimitReached,
    )];
    if let Some(cap) = campaign.per_customer_daily_limit {
        steps.push((keys::per_customer_day(&campaign.id, &coupon.customer_id, day), cap, Refusal::LimitReached));
    }
    if let Some(cap) = campaign.daily_stock {
        steps.push((keys::issued_on(&campaign.id, day), cap, Refusal::OutOfStock));
    }
    steps.push((keys::counter(&campaign.id, "issued"), campaign.stock_total, Refusal::OutOfStock));
    steps
}

/// Takes, in order, the customer's limits, the day's stock, the stock and the budget; on a refusal gives back what
/// it took and returns the refusal.
async fn take_all(
    store: &impl Store,
    campaign: &Campaign,
    coupon: &Coupon,
    now: Timestamp,
) -> Result<Result<(), Refusal>, CouponError> {
    let steps = counters(campaign, coupon, now);
    let mut taken: Vec<&Key> = Vec::new();
    let mut refusal = None;
    for (counter, cap, why) in &steps {
        match limits::take(store, counter, *cap, 1).await {
            Ok(true) => taken.push(counter),
            Ok(false) => {
                refusal = Some(*why);
                break;
            }
            Err(e) => {
                give_back(store, &taken).await;
                return Err(e.into());
            }
        }
    }
    if refusal.is_none() {
        let budget = keys::budget(&campaign.id);
        let until = coupon.expires_at.plus_secs(RESERVATION_GRACE_SECS);
        match limits::reserve(store, &budget, &coupon.reservation_id, coupon.discount.max_value_fen(), until, now).await
        {
            Ok(Reserved::Granted) => return Ok(Ok(())),
            Ok(Reserved::Exhausted) => refusal = Some(Refusal::BudgetExhausted),
            Err(e) => {
                give_back(store, &taken).await;
                return Err(e.into());
            }
        }
    }
    give_back(store, &taken).await;
    Ok(Err(refusal.unwrap_or(Refusal::OutOfStock)))
}

/// Gives back taken counters, newest first. Best effort: a failure leaves a count taken (under-issue).
async fn give_back(store: &impl Store, taken: &[&Key]) {
    for counter in taken.iter().rev() {
        let _ = limits::give_back(store, counter, 1).await;
    }
}

async fn set_state(
    store: &impl Store,
    coupon_id: &str,
    from: CouponState,
    to: impl Fn(&Coupon) -> Coupon,
) -> Result<Coupon, CouponError> {
    kv::update_json(store, &coupons::keys::coupon(coupon_id), |doc: Option<&Coupon>| {
        let Some(doc) = doc else { return Err(CouponError::CouponNotFound) };
        Ok(if doc.state == from { Step::Write(to(doc), to(doc)) } else { Step::Keep(doc.clone()) })
    })
    .await
}

/// The effects of an issued coupon, each idempotent: the code index, the wallet, channel statistics, the event.
async fn finish(
    store: &impl Store,
    coupon: Coupon,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Coupon, CouponError> {
    put_json(store, &keys::code(&coupon.code), &CodeEntry { v: 1, coupon_id: coupon.id.clone() }).await?;
    kv::add_to_index(store, &keys::wallet(&coupon.customer_id), &coupon.id).await?;
    kv::add_to_index(store, &keys::channels(&coupon.campaign_id), &coupon.channel).await?;
    let counter = keys::channel_counter(&coupon.campaign_id, &coupon.channel, "issued");
    kv::count_once(store, &keys::effect("issued", &coupon.id), &counter, 1).await?;
    let event = Event {
        tags: vec!["coupon_user".into()],
        ..Event::new(
            format!("claimed:{}", coupon.id),
            &coupon.customer_id,
            EventKind::Claimed,
            SCENARIO,
            coupon.claimed_at.min(now),
        )
    };
    events::record(store, &event, rules).await?;
    Ok(coupon)
}

/// The customer's coupons, newest first, filtered by wallet status.
pub async fn wallet(
    store: &impl Store,
    customer_id: &str,
    status: Option<&str>,
    now: Timestamp,
) -> Result<Vec<Coupon>, CouponError> {
    if let Some(s) = status
        && !["active", "used", "expired", "locked", "void"].contains(&s)
    {
        return Err(CouponError::invalid("status", "active, used, expired, locked or void"));
    }
    let ids = kv::read_index(store, &keys::wallet(customer_id)).await?;
    let keys: Vec<_> = ids.iter().rev().map(|id| coupons::keys::coupon(id)).collect();
    let mut out = Vec::new();
    for (key, raw) in keys.iter().zip(kv::get_all(store, &keys).await?) {
        let Some(c) = kv::decode_doc::<Coupon>(key, raw.as_deref())? else { continue };
        let shown = c.status_at(now);
        if shown != "pending" && status.is_none_or(|s| s == shown) {
            out.push(c);
        }
    }
    Ok(out)
}
