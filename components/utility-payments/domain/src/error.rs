//! Errors of utility payments, by business outcome.

use scenefin_core::kv::StoreError;
use scenefin_core::limits::LimitError;
use scenefin_core::orders::OrderError;
use scenefin_core::partners::PartnerError;
use scenefin_core::problem::{ErrorKind, Problem};

/// Everything a utility operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UtilityError {
    /// Input failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such biller.
    #[error("no such biller")]
    UnknownBiller,
    /// The biller id is taken.
    #[error("biller {0} already exists")]
    BillerExists(String),
    /// The account number fits the biller's rule but the biller has no such account.
    #[error("the biller has no account with this number")]
    NoSuchAccount,
    /// The account number does not fit the biller's rule.
    #[error("{field}: this biller takes account numbers of {rule}")]
    BadAccountNumber {
        /// The field it came in.
        field: String,
        /// What the biller takes.
        rule: String,
    },
    /// A bill in the request is not open (paid, or not this account's).
    #[error("bill {0} is not open for this account")]
    BillNotOpen(String),
    /// The bill was re-issued (another amount or due date) after the quote priced it.
    #[error("bill {0} was re-issued after this quote; ask for a new quote")]
    BillChanged(String),
    /// The amount breaks the biller's exactness rule.
    #[error("{0}")]
    AmountRule(String),
    /// Nothing is due and the biller takes no ad-hoc payments.
    #[error("nothing is due on this account")]
    NothingDue,
    /// Too many bound accounts.
    #[error("at most {0} accounts can be bound")]
    TooManyAccounts(usize),
    /// Not bound by this customer.
    #[error("this account is not bound")]
    NotBound,
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

scenefin_core::scenario_error_basics!(UtilityError);

impl Problem for UtilityError {
    fn kind(&self) -> ErrorKind {
        match self {
            UtilityError::Invalid { .. } => ErrorKind::Invalid,
            UtilityError::UnknownBiller | UtilityError::NoSuchAccount | UtilityError::NotBound => ErrorKind::NotFound,
            UtilityError::BillerExists(_) | UtilityError::BillNotOpen(_) | UtilityError::BillChanged(_) => {
                ErrorKind::Conflict
            }
            UtilityError::AmountRule(_)
            | UtilityError::NothingDue
            | UtilityError::TooManyAccounts(_)
            | UtilityError::BadAccountNumber { .. } => ErrorKind::Unprocessable,
            UtilityError::Partner(e) => e.kind(),
            UtilityError::Order(e) => e.kind(),
            UtilityError::Limit(e) => e.kind(),
            UtilityError::Coupon(e) => e.kind(),
            UtilityError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            UtilityError::Invalid { .. } => "validation_failed",
            UtilityError::UnknownBiller => "biller_not_found",
            UtilityError::BillerExists(_) => "biller_exists",
            UtilityError::NoSuchAccount => "no_such_account",
            UtilityError::BadAccountNumber { .. } => "invalid_account_number",
            UtilityError::BillNotOpen(_) => "bill_not_open",
            UtilityError::BillChanged(_) => "bill_changed",
            UtilityError::AmountRule(_) => "amount_not_allowed",
            UtilityError::NothingDue => "nothing_due",
            UtilityError::TooManyAccounts(_) => "too_many_accounts",
            UtilityError::NotBound => "account_not_bound",
            UtilityError::Partner(e) => e.code(),
            UtilityError::Order(e) => e.code(),
            UtilityError::Limit(e) => e.code(),
            UtilityError::Coupon(e) => e.code(),
            UtilityError::Store(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            UtilityError::Invalid { field, .. } | UtilityError::BadAccountNumber { field, .. } => Some(field),
            _ => None,
        }
    }

    fn open_order_id(&self) -> Option<&str> {
        match self {
            UtilityError::Order(e) => e.open_order_id(),
            _ => None,
        }
    }
}
