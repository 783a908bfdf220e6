//! Wallet coupons as every scenario sees them. merchant-coupons issues them and owns their keys (`cpn:coupon:{id}`);
//! this module holds the shared document and the one way other scenarios use a coupon: a utility or property quote
//! locks an eligible coupon ([`lock_for_quote`]), the paid order consumes it ([`consume`]), an expired or failed
//! order unlocks it ([`unlock`]). `core::orders` does the last two itself for coupon lines, so a scenario only
//! calls [`lock_for_quote`] while pricing.
//!
//! A coupon's budget reservation is made when it is claimed (its maximum value, until it expires) and committed
//! when it is used, by a merchant or by an order; the coupon line of an order names it as its funding, so the
//! order's payment posting debits `bank:marketing` for the discount like any funded line.
//!
//! Exactly once: a coupon moves `active` → `locked` (by one quote, until a deadline) → `used` in compare-and-swaps
//! on its document, and a lock that has passed its deadline counts as `active` again.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::Id;
use crate::kv::{self, Key, Step, Store, StoreError, get_json};
use crate::orders::{Funding, QuoteLine};
use crate::problem::{ErrorKind, Problem};

/// How a coupon takes money off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscountKind {
    /// A fixed amount.
    FixedOff,
    /// A rate, capped.
    PercentOff,
}

/// The discount a coupon gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discount {
    /// Fixed or percent.
    #[serde(rename = "type")]
    pub kind: DiscountKind,
    /// `fixed_off`: the amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_fen: Option<i64>,
    /// `percent_off`: the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_bp: Option<u32>,
    /// `percent_off`: the cap (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_off_fen: Option<i64>,
    /// The order must reach this.
    #[serde(default)]
    pub min_spend_fen: i64,
}

/// Largest coupon value: ¥10,000.
pub const MAX_COUPON_FEN: i64 = 1_000_000;

impl Discount {
    /// Checks the terms (pure); the error names the offending field under `coupon.`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let fen_ok = |v: i64| (1..=MAX_COUPON_FEN).contains(&v);
        match self.kind {
            DiscountKind::FixedOff => {
                if !self.amount_fen.is_some_and(fen_ok) {
                    return Err(("coupon.amount_fen", "1 to 1000000 for fixed_off"));
                }
            }
            DiscountKind::PercentOff => {
                if !self.percent_bp.is_some_and(|bp| (1..=10_000).contains(&bp)) {
                    return Err(("coupon.percent_bp", "1 to 10000 for percent_off"));
                }
                if !self.max_off_fen.is_some_and(fen_ok) {
                    return Err(("coupon.max_off_fen", "1 to 1000000, required for percent_off"));
                }
            }
        }
        if !(0..=100 * MAX_COUPON_FEN).contains(&self.min_spend_fen) {
            return Err(("coupon.min_spend_fen", "0 to 100000000"));
        }
        Ok(())
    }

    /// The most one coupon can take off: what its claim reserves from the budget.
    pub fn max_value_fen(&self) -> i64 {
        match self.kind {
            DiscountKind::FixedOff => self.amount_fen.unwrap_or(0),
            DiscountKind::PercentOff => self.max_off_fen.unwrap_or(0),
        }
        .max(0)
    }

    /// What it takes off `order_fen` (pure): 0 below the minimum spend; never more than its maximum value or the
    /// order less one fen. Percentages truncate.
    pub fn off_fen(&self, order_fen: i64) -> i64 {
        if order_fen < self.min_spend_fen.max(1) {
            return 0;
        }
        let raw = match self.kind {
            DiscountKind::FixedOff => self.amount_fen.unwrap_or(0),
            DiscountKind::PercentOff => {
                let bp = i128::from(self.percent_bp.unwrap_or(0));
                i64::try_from(i128::from(order_fen) * bp / 10_000).unwrap_or(0)
            }
        };
        raw.min(self.max_value_fen()).min(order_fen - 1).max(0)
    }
}

/// A coupon's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouponState {
    /// Being claimed (stock, limits and budget being taken); not in the wallet yet.
    Claiming,
    /// Refused at claim; `refusal` says why.
    Refused,
    /// In the wallet.
    Active,
    /// Held by a utility or property quote until `locked_until`.
    Locked,
    /// Used by a merchant redemption or a paid order.
    Used,
    /// Reversed when it could not be restored.
    Void,
}

/// A coupon (`cpn:coupon:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Campaign.
    pub campaign_id: String,
    /// Owner.
    pub customer_id: String,
    /// The code shown to merchants.
    pub code: String,
    /// What it is.
    pub title: String,
    /// Merchants it is valid at (with `district`).
    pub merchant_ids: Vec<String>,
    /// A district whose merchants all accept it.
    pub district: Option<String>,
    /// The discount.
    pub discount: Discount,
    /// Scenarios that may use it: `merchant`, `utility`, `property`.
    pub applies_to: Vec<String>,
    /// State.
    pub state: CouponState,
    /// Why it was refused (a claim refusal code).
    pub refusal: Option<String>,
    /// The budget's base key (core limits).
    pub budget: String,
    /// The budget reservation holding its value.
    pub reservation_id: String,
    /// How often a reversal restored it (each restore reserves anew).
    pub restores: u32,
    /// The claiming customer's channel, for statistics.
    pub channel: String,
    /// Claimed.
    pub claimed_at: Timestamp,
    /// Valid until.
    pub expires_at: Timestamp,
    /// The quote holding it.
    pub locked_by: Option<String>,
    /// Until when.
    pub locked_until: Option<Timestamp>,
    /// Used.
    pub used_at: Option<Timestamp>,
    /// The redemption or order that used it.
    pub used_by: Option<String>,
}

impl Coupon {
    /// Whether it can be used at `now`: in the wallet (or held by a lock that has run out) and not expired.
    pub fn usable_at(&self, now: Timestamp) -> bool {
        now <= self.expires_at && self.free_at(now)
    }

    fn free_at(&self, now: Timestamp) -> bool {
        match self.state {
            CouponState::Active => true,
            CouponState::Locked => self.locked_until.is_none_or(|until| now > until),
            _ => false,
        }
    }

    /// The status shown in the wallet: `active`, `locked`, `used`, `expired` or `void` (`claiming` and `refused`
    /// coupons are not shown).
    pub fn status_at(&self, now: Timestamp) -> &'static str {
        match self.state {
            CouponState::Used => "used",
            CouponState::Void => "void",
            CouponState::Claiming | CouponState::Refused => "pending",
            _ if now > self.expires_at => "expired",
            _ if self.free_at(now) => "active",
            _ => "locked",
        }
    }
}

/// Keys of coupons (owned by merchant-coupons).
pub mod keys {
    use crate::kv::Key;

    /// `cpn:coupon:{id}`.
    pub fn coupon(id: &str) -> Key {
        Key::new(&["cpn", "coupon", id])
    }
}

/// Why a coupon cannot be used on a quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponUseError {
    /// No such coupon, or not the customer's.
    #[error("no such coupon in your wallet")]
    NotFound,
    /// The coupon's campaign does not allow this scenario.
    #[error("this coupon cannot be used for {0}")]
    NotApplicable(String),
    /// Past its validity.
    #[error("the coupon has expired")]
    Expired,
    /// Used, or held by another pending order.
    #[error("the coupon is used or held by another order")]
    Unavailable,
    /// The amount does not reach the minimum spend.
    #[error("the coupon needs an amount of at least {0} fen")]
    BelowMinSpend(i64),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for CouponUseError {
    fn kind(&self) -> ErrorKind {
        match self {
            CouponUseError::NotFound => ErrorKind::NotFound,
            CouponUseError::Unavailable => ErrorKind::Conflict,
            CouponUseError::NotApplicable(_) | CouponUseError::Expired | CouponUseError::BelowMinSpend(_) => {
                ErrorKind::Unprocessable
            }
            CouponUseError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            CouponUseError::NotFound => "coupon_not_found",
            CouponUseError::NotApplicable(_) => "coupon_not_applicable",
            CouponUseError::Expired => "coupon_expired",
            CouponUseError::Unavailable => "coupon_in_use",
            CouponUseError::BelowMinSpend(_) => "below_min_spend",
            CouponUseError::Store(e) => e.code(),
        }
    }
}

/// Locks the customer's coupon for a quote of `scenario` on `base_fen` until `until`, and returns the quote's
/// (negative, funded) coupon line. Locking again for the same quote is harmless.
#[allow(clippy::too_many_arguments)]
pub async fn lock_for_quote(
    store: &impl Store,
    customer_id: &str,
    coupon_id: &str,
    scenario: &str,
    base_fen: i64,
    quote_id: &str,
    until: Timestamp,
    now: Timestamp,
) -> Result<QuoteLine, CouponUseError> {
    if Id::parse(coupon_id).is_err() {
        return Err(CouponUseError::NotFound);
    }
    let key = keys::coupon(coupon_id);
    let coupon = kv::update_json(store, &key, |doc: Option<&Coupon>| {
        let Some(c) = doc else { return Err(CouponUseError::NotFound) };
        if c.customer_id != customer_id || matches!(c.state, CouponState::Claiming | CouponState::Refused) {
            return Err(CouponUseError::NotFound);
        }
        if !c.applies_to.iter().any(|s| s == scenario) {
            return Err(CouponUseError::NotApplicable(scenario.to_owned()));
        }
        if now > c.expires_at {
            return Err(CouponUseError::Expired);
        }
        if c.state == CouponState::Locked && c.locked_by.as_deref() == Some(quote_id) {
            return Ok(Step::Keep(c.clone()));
        }
        if !c.free_at(now) {
            return Err(CouponUseError::Unavailable);
        }
        if c.discount.off_fen(base_fen) == 0 {
            return Err(CouponUseError::BelowMinSpend(c.discount.min_spend_fen));
        }
        let next = Coupon {
            state: CouponState::Locked,
            locked_by: Some(quote_id.to_owned()),
            locked_until: Some(until),
            ..c.clone()
        };
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    Ok(QuoteLine {
        kind: "coupon".into(),
        description: coupon.title.clone(),
        amount_fen: -coupon.discount.off_fen(base_fen),
        funded_by: Some(Funding {
            budget: coupon.budget.clone(),
            reservation_id: coupon.reservation_id.clone(),
            coupon_id: Some(coupon.id.clone()),
        }),
    })
}

/// Keeps the lock of `quote_id` until `until` (an order placed for the quote waits for its payment).
pub async fn extend_lock(
    store: &impl Store,
    coupon_id: &str,
    quote_id: &str,
    until: Timestamp,
) -> Result<(), StoreError> {
    update_if(store, coupon_id, |c| {
        (c.state == CouponState::Locked && c.locked_by.as_deref() == Some(quote_id))
            .then(|| Coupon { locked_until: Some(until), ..c.clone() })
    })
    .await
}

/// Marks the coupon used by a paid order of `quote_id` (idempotent).
pub async fn consume(
    store: &impl Store,
    coupon_id: &str,
    quote_id: &str,
    order_id: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    update_if(store, coupon_id, |c| {
        let ours = c.locked_by.as_deref() == Some(quote_id);
        (ours && c.state == CouponState::Locked).then(|| Coupon {
            state: CouponState::Used,
            used_at: Some(at),
            used_by: Some(order_id.to_owned()),
            locked_until: None,
            ..c.clone()
        })
    })
    .await
}

/// Releases the lock of `quote_id` (the order expired or failed for good).
pub async fn unlock(store: &impl Store, coupon_id: &str, quote_id: &str) -> Result<(), StoreError> {
    update_if(store, coupon_id, |c| {
        (c.state == CouponState::Locked && c.locked_by.as_deref() == Some(quote_id)).then(|| Coupon {
            state: CouponState::Active,
            locked_by: None,
            locked_until: None,
            ..c.clone()
        })
    })
    .await
}

/// A coupon by id (`None` for malformed ids).
pub async fn get(store: &impl Store, coupon_id: &str) -> Result<Option<Coupon>, StoreError> {
    if Id::parse(coupon_id).is_err() {
        return Ok(None);
    }
    get_json(store, &keys::coupon(coupon_id)).await
}

async fn update_if(
    store: &impl Store,
    coupon_id: &str,
    decide: impl Fn(&Coupon) -> Option<Coupon>,
) -> Result<(), StoreError> {
    let key: Key = keys::coupon(coupon_id);
    kv::update_json(store, &key, |doc: Option<&Coupon>| {
        Ok::<_, StoreError>(match doc.and_then(&decide) {
            Some(next) => Step::Write(next, ()),
            None => Step::Keep(()),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(amount: i64, min: i64) -> Discount {
        Discount {
            kind: DiscountKind::FixedOff,
            amount_fen: Some(amount),
            percent_bp: None,
            max_off_fen: None,
            min_spend_fen: min,
        }
    }

    #[test]
    fn discounts_respect_minimum_spend_caps_and_the_order_amount() {
        let five_off = fixed(500, 2000);
        assert_eq!((five_off.off_fen(1999), five_off.off_fen(2000), five_off.max_value_fen()), (0, 500, 500));
        assert_eq!(fixed(500, 0).off_fen(300), 299, "never the whole order");
        let pct = Discount {
            kind: DiscountKind::PercentOff,
            amount_fen: None,
            percent_bp: Some(1500),
            max_off_fen: Some(1000),
            min_spend_fen: 0,
        };
        assert_eq!((pct.off_fen(3333), pct.off_fen(100_000), pct.max_value_fen()), (499, 1000, 1000));
        assert!(pct.validate().is_ok());
        assert_eq!(
            Discount { max_off_fen: None, ..pct }.validate(),
            Err(("coupon.max_off_fen", "1 to 1000000, required for percent_off"))
        );
        assert!(fixed(0, 0).validate().is_err());
    }
}
