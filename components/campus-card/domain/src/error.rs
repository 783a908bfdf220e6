//! Errors of the campus card, by business outcome.

use scenefin_core::clock::Timestamp;
use scenefin_core::kv::StoreError;
use scenefin_core::ledger::LedgerError;
use scenefin_core::limits::LimitError;
use scenefin_core::orders::OrderError;
use scenefin_core::partners::PartnerError;
use scenefin_core::problem::{ErrorKind, Problem};
use serde::{Deserialize, Serialize};

/// Why a spend (or a card action) was refused by a business rule. Recorded on a refused spend, so a retry of the
/// same `pos_txn_id` gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Reported lost by its holder.
    CardLost,
    /// Frozen by the school.
    CardFrozen,
    /// Past its `valid_until`.
    CardExpired,
    /// Not bound yet, or replaced by a reissued card.
    CardNotActive,
    /// The pay code's 60 seconds are over.
    PayCodeExpired,
    /// The pay code was already used.
    PayCodeUsed,
    /// The spend would pass the card's daily limit.
    DailyLimitExceeded,
    /// The card does not hold the amount.
    InsufficientBalance,
}

impl Refusal {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::CardLost => "card_lost",
            Refusal::CardFrozen => "card_frozen",
            Refusal::CardExpired => "card_expired",
            Refusal::CardNotActive => "card_not_active",
            Refusal::PayCodeExpired => "pay_code_expired",
            Refusal::PayCodeUsed => "pay_code_used",
            Refusal::DailyLimitExceeded => "daily_limit_exceeded",
            Refusal::InsufficientBalance => "insufficient_balance",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::CardLost => "the card is reported lost",
            Refusal::CardFrozen => "the card is frozen by the school",
            Refusal::CardExpired => "the card has expired",
            Refusal::CardNotActive => "the card is not active (not bound yet, or replaced)",
            Refusal::PayCodeExpired => "the pay code has expired; show a new one",
            Refusal::PayCodeUsed => "the pay code was already used; show a new one",
            Refusal::DailyLimitExceeded => "the spend would pass the card's daily limit",
            Refusal::InsufficientBalance => "the card's balance does not cover the amount",
        }
    }
}

/// Everything a campus operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampusError {
    /// Input failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such school.
    #[error("no such school")]
    SchoolNotFound,
    /// The school id is taken.
    #[error("school {0} already exists")]
    SchoolExists(String),
    /// No such merchant.
    #[error("no such merchant")]
    MerchantNotFound,
    /// The merchant id is taken.
    #[error("merchant {0} already exists")]
    MerchantExists(String),
    /// No such card (or not the caller's, or of another school).
    #[error("no such card")]
    CardNotFound,
    /// Wrong activation code (or no such member).
    #[error("the member number and activation code do not match; {attempts_left} attempts left")]
    InvalidActivationCode {
        /// Attempts left before the lock.
        attempts_left: u32,
    },
    /// Too many wrong codes.
    #[error("too many wrong activation codes; try again after {}", .0.to_rfc3339())]
    BindLocked(Timestamp),
    /// Too many wrong codes by this customer, over all members.
    #[error("too many wrong activation codes from this account; try again after {}", .0.to_rfc3339())]
    BindThrottled(Timestamp),
    /// Bound by someone else.
    #[error("this card is already bound to another customer")]
    CardAlreadyBound,
    /// A state the action does not apply to (e.g. unfreezing an active card that the school froze).
    #[error("{0}")]
    CardState(String),
    /// A business rule refused the operation.
    #[error("{}", .0.message())]
    Refused(Refusal),
    /// The `pos_txn_id` was used with another card or amount.
    #[error("pos_txn_id {0} was already used for another card or amount")]
    PosTxnConflict(String),
    /// No such pay code (or malformed).
    #[error("unknown pay code")]
    PayCodeInvalid,
    /// No such spend (or another merchant's).
    #[error("no such spend")]
    SpendNotFound,
    /// The spend was refused or is still being processed: nothing to reverse.
    #[error("the spend did not complete, so there is nothing to reverse")]
    SpendNotCompleted,
    /// Reversals are same-day only.
    #[error("a spend can only be reversed on the day it was made")]
    ReversalWindowClosed,
    /// Partner authentication or scope.
    #[error(transparent)]
    Partner(#[from] PartnerError),
    /// Order flow.
    #[error(transparent)]
    Order(#[from] OrderError),
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

scenefin_core::scenario_error_basics!(CampusError);

impl Problem for CampusError {
    fn kind(&self) -> ErrorKind {
        match self {
            CampusError::Invalid { .. } => ErrorKind::Invalid,
            CampusError::SchoolNotFound
            | CampusError::MerchantNotFound
            | CampusError::CardNotFound
            | CampusError::SpendNotFound => ErrorKind::NotFound,
            CampusError::SchoolExists(_)
            | CampusError::MerchantExists(_)
            | CampusError::CardAlreadyBound
            | CampusError::CardState(_)
            | CampusError::PosTxnConflict(_)
            | CampusError::SpendNotCompleted => ErrorKind::Conflict,
            CampusError::InvalidActivationCode { .. }
            | CampusError::Refused(_)
            | CampusError::PayCodeInvalid
            | CampusError::ReversalWindowClosed => ErrorKind::Unprocessable,
            CampusError::BindLocked(_) | CampusError::BindThrottled(_) => ErrorKind::TooManyRequests,
            CampusError::Partner(e) => e.kind(),
            CampusError::Order(e) => e.kind(),
            CampusError::Limit(e) => e.kind(),
            CampusError::Ledger(e) => e.kind(),
            CampusError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CampusError::Invalid { .. } => "validation_failed",
            CampusError::SchoolNotFound => "school_not_found",
            CampusError::SchoolExists(_) => "school_exists",
            CampusError::MerchantNotFound => "merchant_not_found",
            CampusError::MerchantExists(_) => "merchant_exists",
            CampusError::CardNotFound => "card_not_found",
            CampusError::InvalidActivationCode { .. } => "invalid_activation_code",
            CampusError::BindLocked(_) => "bind_locked",
            CampusError::BindThrottled(_) => "bind_throttled",
            CampusError::CardAlreadyBound => "card_already_bound",
            CampusError::CardState(_) => "card_state_conflict",
            CampusError::Refused(r) => r.code(),
            CampusError::PosTxnConflict(_) => "pos_txn_conflict",
            CampusError::PayCodeInvalid => "pay_code_invalid",
            CampusError::SpendNotFound => "spend_not_found",
            CampusError::SpendNotCompleted => "spend_not_completed",
            CampusError::ReversalWindowClosed => "reversal_window_closed",
            CampusError::Partner(e) => e.code(),
            CampusError::Order(e) => e.code(),
            CampusError::Limit(e) => e.code(),
            CampusError::Ledger(e) => e.code(),
            CampusError::Store(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            CampusError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
