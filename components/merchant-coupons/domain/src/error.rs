//! Errors of merchant coupons, by business outcome.

use scenefin_core::clock::Timestamp;
use scenefin_core::kv::StoreError;
use scenefin_core::ledger::LedgerError;
use scenefin_core::limits::LimitError;
use scenefin_core::partners::PartnerError;
use scenefin_core::problem::{ErrorKind, Problem};
use serde::{Deserialize, Serialize};

/// Why a claim was refused: the precise reasons a customer is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No stock left (in total or today).
    OutOfStock,
    /// The customer holds as many as allowed (in total or today).
    LimitReached,
    /// The customer does not meet the eligibility rules, or the campaign is not claimable.
    NotEligible,
    /// Paused, not started or ended.
    CampaignNotRunning,
    /// The budget cannot fund another coupon.
    BudgetExhausted,
    /// The campaign picks its customers by their profile, and this customer withdrew marketing consent.
    MarketingConsentWithdrawn,
}

impl Refusal {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::OutOfStock => "out_of_stock",
            Refusal::LimitReached => "limit_reached",
            Refusal::NotEligible => "not_eligible",
            Refusal::CampaignNotRunning => "campaign_not_running",
            Refusal::BudgetExhausted => "budget_exhausted",
            Refusal::MarketingConsentWithdrawn => "marketing_consent_withdrawn",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::OutOfStock => "no coupons left in this campaign",
            Refusal::LimitReached => "you already hold as many of these coupons as allowed",
            Refusal::NotEligible => "you are not eligible for this campaign",
            Refusal::CampaignNotRunning => "the campaign is not running",
            Refusal::BudgetExhausted => "the campaign's budget is spent",
            Refusal::MarketingConsentWithdrawn => {
                "this offer is chosen by customers' profiles and you turned profile-based offers off; turn them on in \
                 your privacy settings to claim it"
            }
        }
    }
}

/// Everything a coupon operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    /// Input failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such merchant.
    #[error("no such merchant")]
    MerchantNotFound,
    /// The merchant id is taken.
    #[error("merchant {0} already exists")]
    MerchantExists(String),
    /// No such campaign.
    #[error("no such campaign")]
    CampaignNotFound,
    /// The campaign id is taken.
    #[error("campaign {0} already exists")]
    CampaignExists(String),
    /// Stock cannot go below what was issued.
    #[error("stock cannot go below the {0} coupons already issued")]
    StockBelowIssued(i64),
    /// A claim refusal.
    #[error("{}", .0.message())]
    Refused(Refusal),
    /// The merchant has no such store.
    #[error("the store is not one of this merchant's")]
    UnknownStore,
    /// No such code (or not valid at this merchant).
    #[error("no such coupon")]
    CouponNotFound,
    /// Past its validity.
    #[error("the coupon has expired")]
    CouponExpired,
    /// The order does not reach the minimum spend.
    #[error("the order must reach {0} fen for this coupon")]
    BelowMinSpend(i64),
    /// Already used.
    #[error("the coupon was already used")]
    AlreadyUsed,
    /// Held by a pending utility or property order.
    #[error("the coupon is held by a pending order")]
    InUse,
    /// The `merchant_order_id` was used with another code, store or amount.
    #[error("merchant_order_id {0} was already used for another coupon, store or amount")]
    MerchantOrderConflict(String),
    /// Too many failed lookups.
    #[error("too many unknown coupon codes; try again after {}", .0.to_rfc3339())]
    LockedOut(Timestamp),
    /// No such redemption (or another merchant's).
    #[error("no such redemption")]
    RedemptionNotFound,
    /// The redemption did not complete.
    #[error("the redemption did not complete, so there is nothing to reverse")]
    RedemptionNotCompleted,
    /// Partner authentication or scope.
    #[error(transparent)]
    Partner(#[from] PartnerError),
    /// Budget.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

scenefin_core::scenario_error_basics!(CouponError);

impl Problem for CouponError {
    fn kind(&self) -> ErrorKind {
        match self {
            CouponError::Invalid { .. } => ErrorKind::Invalid,
            CouponError::MerchantNotFound
            | CouponError::CampaignNotFound
            | CouponError::CouponNotFound
            | CouponError::RedemptionNotFound => ErrorKind::NotFound,
            CouponError::MerchantExists(_)
            | CouponError::CampaignExists(_)
            | CouponError::StockBelowIssued(_)
            | CouponError::AlreadyUsed
            | CouponError::InUse
            | CouponError::MerchantOrderConflict(_)
            | CouponError::RedemptionNotCompleted => ErrorKind::Conflict,
            CouponError::Refused(_)
            | CouponError::UnknownStore
            | CouponError::CouponExpired
            | CouponError::BelowMinSpend(_) => ErrorKind::Unprocessable,
            CouponError::LockedOut(_) => ErrorKind::TooManyRequests,
            CouponError::Partner(e) => e.kind(),
            CouponError::Limit(e) => e.kind(),
            CouponError::Ledger(e) => e.kind(),
            CouponError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CouponError::Invalid { .. } => "validation_failed",
            CouponError::MerchantNotFound => "merchant_not_found",
            CouponError::MerchantExists(_) => "merchant_exists",
            CouponError::CampaignNotFound => "campaign_not_found",
            CouponError::CampaignExists(_) => "campaign_exists",
            CouponError::StockBelowIssued(_) => "stock_below_issued",
            CouponError::Refused(r) => r.code(),
            CouponError::UnknownStore => "unknown_store",
            CouponError::CouponNotFound => "coupon_not_found",
            CouponError::CouponExpired => "coupon_expired",
            CouponError::BelowMinSpend(_) => "below_min_spend",
            CouponError::AlreadyUsed => "coupon_already_used",
            CouponError::InUse => "coupon_in_use",
            CouponError::MerchantOrderConflict(_) => "merchant_order_conflict",
            CouponError::LockedOut(_) => "too_many_failed_lookups",
            CouponError::RedemptionNotFound => "redemption_not_found",
            CouponError::RedemptionNotCompleted => "redemption_not_completed",
            CouponError::Partner(e) => e.code(),
            CouponError::Limit(e) => e.code(),
            CouponError::Ledger(e) => e.code(),
            CouponError::Store(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            CouponError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
