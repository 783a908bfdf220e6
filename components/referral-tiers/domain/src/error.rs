//! Errors of referral programs.

use scenefin_core::kv::StoreError;
use scenefin_core::ledger::LedgerError;
use scenefin_core::limits::LimitError;
use scenefin_core::problem::{ErrorKind, Problem};
use scenefin_core::referrals::AttachError;

/// Everything a referral operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferralError {
    /// Input failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such program.
    #[error("no such program")]
    ProgramNotFound,
    /// The program id is taken.
    #[error("program {0} already exists")]
    ProgramExists(String),
    /// A coupon reward names a campaign that does not exist.
    #[error("{field}: no such coupon campaign")]
    CouponCampaignNotFound {
        /// Where the campaign is named.
        field: String,
    },
    /// A coupon reward names a campaign that is not a `referral_reward` campaign.
    #[error("{field}: the coupon campaign is not a referral_reward campaign")]
    NotReferralRewardCampaign {
        /// Where the campaign is named.
        field: String,
    },
    /// The referral was recorded as rejected; the reason is the code.
    #[error("the referral was not accepted: {0}")]
    Rejected(&'static str),
    /// Attachment refused before anything was recorded.
    #[error(transparent)]
    Attach(#[from] AttachError),
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

scenefin_core::scenario_error_basics!(ReferralError);

impl Problem for ReferralError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReferralError::Invalid { .. } => ErrorKind::Invalid,
            ReferralError::ProgramNotFound => ErrorKind::NotFound,
            ReferralError::ProgramExists(_) => ErrorKind::Conflict,
            ReferralError::CouponCampaignNotFound { .. }
            | ReferralError::NotReferralRewardCampaign { .. }
            | ReferralError::Rejected(_) => ErrorKind::Unprocessable,
            ReferralError::Attach(e) => e.kind(),
            ReferralError::Limit(e) => e.kind(),
            ReferralError::Ledger(e) => e.kind(),
            ReferralError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ReferralError::Invalid { .. } => "validation_failed",
            ReferralError::ProgramNotFound => "program_not_found",
            ReferralError::ProgramExists(_) => "program_exists",
            ReferralError::CouponCampaignNotFound { .. } => "coupon_campaign_not_found",
            ReferralError::NotReferralRewardCampaign { .. } => "coupon_campaign_not_referral_reward",
            ReferralError::Rejected(reason) => reason,
            ReferralError::Attach(e) => e.code(),
            ReferralError::Limit(e) => e.code(),
            ReferralError::Ledger(e) => e.code(),
            ReferralError::Store(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ReferralError::Invalid { field, .. }
            | ReferralError::CouponCampaignNotFound { field }
            | ReferralError::NotReferralRewardCampaign { field } => Some(field),
            _ => None,
        }
    }
}
