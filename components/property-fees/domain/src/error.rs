//! Errors of property fees, by business outcome.

use scenefin_core::kv::StoreError;
use scenefin_core::limits::LimitError;
use scenefin_core::orders::OrderError;
use scenefin_core::partners::PartnerError;
use scenefin_core::problem::{ErrorKind, Problem};

/// Everything a property operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    /// Input failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such community.
    #[error("no such community")]
    UnknownCommunity,
    /// The community id is taken.
    #[error("community {0} already exists")]
    CommunityExists(String),
    /// No such room (or not claimed by this customer).
    #[error("no such room")]
    UnknownRoom,
    /// The owner name does not match the room's owner.
    #[error("the owner name does not match this room")]
    OwnerMismatch,
    /// Too many wrong owner names today.
    #[error("too many wrong owner names for this room today; try again tomorrow or ask the property office")]
    ClaimLocked,
    /// A bill is not open.
    #[error("bill {0} is not open for this room")]
    BillNotOpen(String),
    /// Bills of a `relate_id` group must be paid together.
    #[error("bills related by {relate_id} must be paid together: add {missing}")]
    PartialGroup {
        /// The group.
        relate_id: String,
        /// The missing bill ids.
        missing: String,
    },
    /// Nothing to pay.
    #[error("choose bills to pay or months to prepay")]
    NothingToPay,
    /// Partner authentication or scope.
    #[error(transparent)]
    Partner(#[from] PartnerError),
    /// Order flow.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// Budget.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A wallet coupon on the quote.
    #[error(transparent)]
    Coupon(#[from] scenefin_core::coupons::CouponUseError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<scenefin_core::ledger::LedgerError> for PropertyError {
    fn from(e: scenefin_core::ledger::LedgerError) -> Self {
        PropertyError::Order(e.into())
    }
}

scenefin_core::scenario_error_basics!(PropertyError);

impl Problem for PropertyError {
    fn kind(&self) -> ErrorKind {
        match self {
            PropertyError::Invalid { .. } => ErrorKind::Invalid,
            PropertyError::UnknownCommunity | PropertyError::UnknownRoom => ErrorKind::NotFound,
            PropertyError::CommunityExists(_) | PropertyError::BillNotOpen(_) => ErrorKind::Conflict,
            PropertyError::OwnerMismatch | PropertyError::PartialGroup { .. } | PropertyError::NothingToPay => {
                ErrorKind::Unprocessable
            }
            PropertyError::ClaimLocked => ErrorKind::TooManyRequests,
            PropertyError::Partner(e) => e.kind(),
            PropertyError::Order(e) => e.kind(),
            PropertyError::Limit(e) => e.kind(),
            PropertyError::Coupon(e) => e.kind(),
            PropertyError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            PropertyError::Invalid { .. } => "validation_failed",
            PropertyError::UnknownCommunity => "community_not_found",
            PropertyError::CommunityExists(_) => "community_exists",
            PropertyError::UnknownRoom => "room_not_found",
            PropertyError::OwnerMismatch => "owner_name_mismatch",
            PropertyError::ClaimLocked => "claim_locked",
            PropertyError::BillNotOpen(_) => "bill_not_open",
            PropertyError::PartialGroup { .. } => "partial_relate_group",
            PropertyError::NothingToPay => "nothing_to_pay",
            PropertyError::Partner(e) => e.code(),
            PropertyError::Order(e) => e.code(),
            PropertyError::Limit(e) => e.code(),
            PropertyError::Coupon(e) => e.code(),
            PropertyError::Store(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            PropertyError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    fn open_order_id(&self) -> Option<&str> {
        match self {
            PropertyError::Order(e) => e.open_order_id(),
            _ => None,
        }
    }
}
