//! The payment flow every paying scenario shares: quote → order → gateway notification → fulfilment → refund.
//!
//! - A [`Quote`] is priced by the scenario (line items, discounts already reserved against their budgets) and lives
//!   15 minutes. Placing an order from it is idempotent: the order id is derived from the quote id.
//! - An [`Order`] moves `pending_payment` → `paid` | `failed` | `expired`, and `paid` → `refunded` ([`transition`];
//!   anything else is refused). `failed` and `expired` are final: what the quote reserved is released at once, and
//!   the customer pays again with a new quote.
//! - Money the gateway reports for an order that cannot take it (a second capture of a paid order, a success after
//!   failure, expiry or refund) is a [`PaymentException`]: booked from gateway clearing to [`SUSPENSE`] (never to
//!   the partner), recorded on the order with a refund instruction, and listed for operators ([`exceptions`]).
//! - A gateway notification is applied through the order's state machine, not through a separate "seen events"
//!   record, so a duplicated, reordered or retried notification can never be lost or applied twice: the first
//!   success moves the order to `paid` (recording the event id); fulfilment then runs every time a notification
//!   finds a paid order not yet `fulfilled`, and each of its effects is idempotent by order id (ledger posting
//!   `pay:{order}`, budget commit by reservation id, customer event `paid:{order}`, the scenario's own effects).
//! - Expiry is evaluated when an order is touched or listed (no background job) and releases its reservations; the
//!   reservations themselves expire [`RESERVATION_GRACE_SECS`] after the order, so a budget frees them on its own
//!   even when nobody reads the order again.
//! - A refund reverses the ledger (`refund:{order}`), gives the budget back and lets the scenario reopen what it
//!   settled; it completes lazily in the same way (`refund_done`).

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::coupons;
use crate::customers::LifecycleRules;
use crate::events::{self, Event, EventError, EventKind};
use crate::ids::hash_key_part;
use crate::kv::{self, Key, Step, Store, StoreError, get_json, put_json};
use crate::ledger::{self, LedgerError, Line, Posting};
use crate::limits::{self, LimitError};
use crate::problem::{ErrorKind, Problem};

/// How long a quote is valid.
pub const QUOTE_TTL_SECS: i64 = 15 * 60;
/// How long an order waits for payment.
pub const PAYMENT_WINDOW_SECS: i64 = 30 * 60;
/// Reservations of a placed order are kept this long past its expiry: longer than any request can run (30 s), so a
/// notification that found the order payable a moment before its expiry still commits them, and short enough that
/// an order nobody comes back for frees its budget about when it expires. A success reported after the expiry is a
/// [`PaymentException`], never a payment.
pub const RESERVATION_GRACE_SECS: i64 = 60;
/// How far a gateway's `paid_at` may lie outside [order created, now] before it is clamped into it.
pub const PAID_AT_SKEW_SECS: i64 = 5 * 60;
/// The account money goes to that arrived for an order that cannot take it (already paid, failed, expired,
/// refunded): the bank holds it until it is refunded, never the partner.
pub const SUSPENSE: &str = "bank:suspense";
/// The gateway's clearing account (money received, not yet settled).
pub const GATEWAY_CLEARING: &str = "gateway:clearing";
/// The bank's marketing expense account (discounts and bonuses it funds).
pub const BANK_MARKETING: &str = "bank:marketing";
/// Orders kept in a customer's history index.
pub const HISTORY_KEPT: usize = 1000;

/// How the customer will pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayWith {
    /// The bank's own card (discounts may apply).
    BankCard,
    /// Anything else.
    Other,
}

/// A priced line. Discounts are negative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLine {
    /// `base`, `late_fee`, `cardholder_discount`, `prepay_incentive`, `coupon`, `fee`...
    pub kind: String,
    /// Human description.
    pub description: String,
    /// Amount in fen (negative for discounts).
    pub amount_fen: i64,
    /// The budget reservation funding this line, for discounts the bank pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funded_by: Option<Funding>,
}

/// A budget reservation behind a discount line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funding {
    /// The budget's base key.
    pub budget: String,
    /// Reservation id.
    pub reservation_id: String,
    /// The wallet coupon the line uses ([`crate::coupons`]): its reservation lives as long as the coupon, and the
    /// order locks, consumes or unlocks the coupon instead of extending or releasing the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<String>,
}

/// A quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Customer.
    pub customer_id: String,
    /// Scenario (`utility`, ...).
    pub scenario: String,
    /// Lines.
    pub lines: Vec<QuoteLine>,
    /// What the customer pays.
    pub total_fen: i64,
    /// How they pay.
    pub pay_with: PayWith,
    /// Card BIN given at quote time (bank card payments).
    #[serde(default)]
    pub card_bin: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Expires.
    pub expires_at: Timestamp,
    /// The scenario's own data (biller, account, bill ids...).
    pub payload: serde_json::Value,
}

impl Quote {
    /// Checks the quote's arithmetic (pure): the total is the sum of lines and positive.
    pub fn check(&self) -> Result<(), OrderError> {
        let sum = self.lines.iter().try_fold(0i64, |acc, l| acc.checked_add(l.amount_fen));
        match sum {
            Some(sum) if sum == self.total_fen && sum > 0 => Ok(()),
            _ => Err(OrderError::Invalid("quote lines do not add up to a positive total".into())),
        }
    }

    /// What the bank funds: the sum of funded discounts (positive).
    pub fn funded_fen(&self) -> i64 {
        self.lines.iter().filter(|l| l.funded_by.is_some()).map(|l| -l.amount_fen).sum()
    }
}

/// Order state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Waiting for the gateway.
    PendingPayment,
    /// Paid.
    Paid,
    /// The payment failed.
    Failed,
    /// Not paid in time.
    Expired,
    /// Paid, then refunded.
    Refunded,
}

/// The legal moves of the order state machine.
pub fn transition(from: OrderState, to: OrderState) -> Result<(), OrderError> {
    use OrderState::*;
    match (from, to) {
        (PendingPayment, Paid | Failed | Expired) | (Paid, Refunded) => Ok(()),
        _ => Err(OrderError::IllegalTransition { from, to }),
    }
}

/// The payment a notification reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// Gateway event id.
    pub event_id: String,
    /// Amount paid.
    pub paid_fen: i64,
    /// When the customer paid, as the gateway reported it, clamped into [order created, recorded] (with
    /// [`PAID_AT_SKEW_SECS`] of slack).
    pub paid_at: Timestamp,
    /// When the payment was recorded here: the booking time of its ledger posting and settlement line.
    #[serde(default)]
    pub recorded_at: Option<Timestamp>,
    /// `bank_card` or `wallet`.
    pub instrument: String,
    /// Card BIN, if any.
    #[serde(default)]
    pub bin: Option<String>,
    /// Paid with one of the bank's own cards.
    pub bank_card: bool,
}

/// Why money that arrived could not pay its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionReason {
    /// The order was already paid (or paid and refunded) by another capture.
    DuplicatePayment,
    /// The payment failed first; the order is closed.
    PaidAfterFailure,
    /// The payment window had closed.
    PaidAfterExpiry,
    /// What the order pays for changed after it was placed (a bill re-issued with another amount).
    ItemsChanged,
}

/// Money that arrived for an order that could not take it, and the refund it is owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentException {
    /// The gateway event that brought it.
    pub event_id: String,
    /// Why it could not pay the order.
    pub reason: ExceptionReason,
    /// Amount received, all of it owed back.
    pub amount_fen: i64,
    /// When the customer paid (as reported, clamped like [`PaymentRecord::paid_at`]).
    pub paid_at: Timestamp,
    /// When it was recorded (the suspense posting's time).
    pub recorded_at: Timestamp,
    /// The refund instruction: `due` until the gateway confirms it.
    pub refund: RefundStatus,
    /// When the gateway confirmed the refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<Timestamp>,
}

/// Where a refund instruction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// The gateway is to return the money to the instrument it came from.
    Due,
    /// The gateway returned it ([`confirm_refund`]); the suspense account no longer holds it.
    Refunded,
}

/// A state change, for the order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// New state.
    pub state: OrderState,
    /// When.
    pub at: Timestamp,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Schema version.
    pub v: u32,
    /// Id (derived from the quote id).
    pub id: String,
    /// The quote.
    pub quote_id: String,
    /// Customer.
    pub customer_id: String,
    /// Scenario.
    pub scenario: String,
    /// Lines, as quoted.
    pub lines: Vec<QuoteLine>,
    /// What the customer pays.
    pub total_fen: i64,
    /// How they pay.
    pub pay_with: PayWith,
    /// State.
    pub state: OrderState,
    /// Created.
    pub created_at: Timestamp,
    /// Payment deadline.
    pub expires_at: Timestamp,
    /// The payment, once paid.
    #[serde(default)]
    pub payment: Option<PaymentRecord>,
    /// All fulfilment effects done.
    #[serde(default)]
    pub fulfilled: bool,
    /// Refunded by whom.
    #[serde(default)]
    pub refunded_by: Option<String>,
    /// All refund effects done.
    #[serde(default)]
    pub refund_done: bool,
    /// The settlement account the gross goes to (`biller:{id}:settlement`...).
    pub settlement_account: String,
    /// The scenario's data.
    pub payload: serde_json::Value,
    /// State history.
    pub history: Vec<StateChange>,
    /// Money that arrived but could not pay this order, each owed back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<PaymentException>,
    /// Partial refunds of a paid order, oldest first (a refund of what is left makes it `refunded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial_refunds: Vec<PartialRefund>,
}

/// Part of a paid order's money given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRefund {
    /// Its id: derived from the refund request's idempotency key, so a retried request refunds once.
    pub id: String,
    /// Given back to the customer.
    pub amount_fen: i64,
    /// When.
    pub at: Timestamp,
    /// By whom (`operator` or the partner id).
    pub by: String,
}

impl Order {
    /// The ledger posting of the payment: gateway clearing receives what the customer paid, the bank's marketing
    /// account funds the discounts, the settlement account is owed the gross.
    pub fn payment_posting(&self, at: Timestamp) -> Posting {
        let funded = self.funded_fen();
        let mut lines = vec![Line { account: GATEWAY_CLEARING.into(), amount_fen: self.total_fen }];
        if funded > 0 {
            lines.push(Line { account: BANK_MARKETING.into(), amount_fen: funded });
        }
        lines.push(Line { account: self.settlement_account.clone(), amount_fen: -(self.total_fen + funded) });
        Posting {
            v: 1,
            id: format!("pay:{}", self.id),
            at,
            memo: format!("{} order {}", self.scenario, self.id),
            lines,
        }
    }

    /// The reversal of [`Order::payment_posting`], less what partial refunds already gave back (from gateway
    /// clearing and the settlement account).
    pub fn refund_posting(&self, at: Timestamp) -> Posting {
        let pay = self.payment_posting(at);
        let given_back = self.partially_refunded_fen();
        let lines = pay
            .lines
            .into_iter()
            .map(|l| {
                let already = if l.account == GATEWAY_CLEARING {
                    given_back
                } else if l.account == self.settlement_account {
                    -given_back
                } else {
                    0
                };
                Line { account: l.account, amount_fen: -(l.amount_fen - already) }
            })
            .filter(|l| l.amount_fen != 0)
            .collect();
        Posting {
            v: 1,
            id: format!("refund:{}", self.id),
            at,
            memo: format!("refund of {} order {}", self.scenario, self.id),
            lines,
        }
    }

    /// What the bank funds: the sum of funded discounts (positive).
    pub fn funded_fen(&self) -> i64 {
        self.lines.iter().filter(|l| l.funded_by.is_some()).map(|l| -l.amount_fen).sum()
    }

    /// What partial refunds gave back so far.
    pub fn partially_refunded_fen(&self) -> i64 {
        self.partial_refunds.iter().map(|r| r.amount_fen).sum()
    }

    /// The posting of partial refund `refund`: the customer's money back from the settlement account to gateway
    /// clearing (the bank's discount stays until the rest is refunded).
    pub fn partial_refund_posting(&self, refund: &PartialRefund) -> Posting {
        Posting {
            v: 1,
            id: format!("refund:{}:{}", self.id, refund.id),
            at: refund.at,
            memo: format!("partial refund of {} order {}", self.scenario, self.id),
            lines: vec![
                Line { account: GATEWAY_CLEARING.into(), amount_fen: -refund.amount_fen },
                Line { account: self.settlement_account.clone(), amount_fen: refund.amount_fen },
            ],
        }
    }

    fn reservations(&self) -> impl Iterator<Item = &Funding> {
        self.lines.iter().filter_map(|l| l.funded_by.as_ref())
    }

    fn moved(&self, to: OrderState, at: Timestamp) -> Result<Order, OrderError> {
        transition(self.state, to)?;
        let mut next = self.clone();
        next.state = to;
        next.history.push(StateChange { state: to, at });
        Ok(next)
    }
}

/// Errors of the payment flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// No such quote (or not the caller's).
    #[error("no such quote")]
    QuoteNotFound,
    /// The quote expired.
    #[error("the quote expired at {0}; ask for a new one")]
    QuoteExpired(String),
    /// No such order (or not the caller's).
    #[error("no such order")]
    OrderNotFound,
    /// A move the state machine does not allow.
    #[error("an order cannot go from {from:?} to {to:?}")]
    IllegalTransition {
        /// From.
        from: OrderState,
        /// To.
        to: OrderState,
    },
    /// The order cannot take this payment (expired or refunded).
    #[error("order is {0:?} and cannot be paid; the payment must be returned")]
    NotPayable(OrderState),
    /// The gateway reported a different amount.
    #[error("paid {paid_fen} fen but the order is for {total_fen} fen")]
    AmountMismatch {
        /// Reported.
        paid_fen: i64,
        /// Expected.
        total_fen: i64,
    },
    /// A bank-card discount was paid with another instrument.
    #[error("this order's discount requires one of the bank's cards")]
    InstrumentMismatch,
    /// A partial refund asks for more than is left to refund.
    #[error("at most {left_fen} fen of this order is left to refund")]
    RefundTooLarge {
        /// What is left.
        left_fen: i64,
    },
    /// No payment exception of that order has that event id.
    #[error("no refund is due for that payment of this order")]
    NoRefundDue,
    /// This scenario refunds whole orders only.
    #[error("this order can only be refunded in full")]
    PartialRefundNotAllowed,
    /// What the request wants to pay is held by another open order until it is paid, fails or expires.
    #[error("{item} is being paid by order {order_id}; finish or cancel that payment first")]
    InPayment {
        /// What is held (`bill B2026-10`).
        item: String,
        /// The open order holding it.
        order_id: String,
    },
    /// Malformed data.
    #[error("{0}")]
    Invalid(String),
    /// Ledger failure.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Budget failure.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scenario's own fulfilment failed.
    #[error("{0}")]
    Scenario(String),
}

impl From<EventError> for OrderError {
    fn from(e: EventError) -> Self {
        match e {
            EventError::UnknownCustomer(id) => OrderError::Invalid(format!("unknown customer {id}")),
            EventError::Store(e) => OrderError::Store(e),
        }
    }
}

impl Problem for OrderError {
    fn kind(&self) -> ErrorKind {
        match self {
            OrderError::QuoteNotFound | OrderError::OrderNotFound | OrderError::NoRefundDue => ErrorKind::NotFound,
            OrderError::QuoteExpired(_)
            | OrderError::IllegalTransition { .. }
            | OrderError::NotPayable(_)
            | OrderError::InPayment { .. } => ErrorKind::Conflict,
            OrderError::RefundTooLarge { .. } | OrderError::PartialRefundNotAllowed => ErrorKind::Unprocessable,
            OrderError::AmountMismatch { .. } | OrderError::InstrumentMismatch => ErrorKind::Unprocessable,
            OrderError::Invalid(_) => ErrorKind::Invalid,
            OrderError::Ledger(e) => e.kind(),
            OrderError::Limit(e) => e.kind(),
            OrderError::Store(e) => e.kind(),
            OrderError::Scenario(_) => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            OrderError::QuoteNotFound => "quote_not_found",
            OrderError::QuoteExpired(_) => "quote_expired",
            OrderError::OrderNotFound => "order_not_found",
            OrderError::IllegalTransition { .. } => "illegal_transition",
            OrderError::NotPayable(_) => "order_not_payable",
            OrderError::AmountMismatch { .. } => "amount_mismatch",
            OrderError::InstrumentMismatch => "instrument_mismatch",
            OrderError::InPayment { .. } => "bill_in_payment",
            OrderError::RefundTooLarge { .. } => "refund_exceeds_remaining",
            OrderError::NoRefundDue => "refund_not_due",
            OrderError::PartialRefundNotAllowed => "partial_refund_not_allowed",
            OrderError::Invalid(_) => "validation_failed",
            OrderError::Ledger(e) => e.code(),
            OrderError::Limit(e) => e.code(),
            OrderError::Store(e) => e.code(),
            OrderError::Scenario(_) => "internal_error",
        }
    }
    fn open_order_id(&self) -> Option<&str> {
        match self {
            OrderError::InPayment { order_id, .. } => Some(order_id),
            _ => None,
        }
    }
}

/// A scenario's part in the flow. Every method must be idempotent by order id.
#[allow(async_fn_in_trait)]
pub trait Fulfilment {
    /// Key prefix owner (`util`, `prop`, `campus`).
    fn owner(&self) -> &'static str;
    /// Applies the scenario's effects of a paid order (settle bills, credit a balance...).
    async fn fulfil(&self, order: &Order, at: Timestamp) -> Result<(), OrderError>;
    /// Undoes them on refund (reopen bills...).
    async fn reverse(&self, order: &Order, at: Timestamp) -> Result<(), OrderError>;
    /// Whether orders may be refunded in part (stored value is refunded whole, or not at all).
    fn partial_refunds(&self) -> bool {
        true
    }
    /// Reports a partial refund (its settlement statement line); idempotent by refund id.
    async fn partially_refunded(&self, order: &Order, refund: &PartialRefund) -> Result<(), OrderError> {
        let _ = (order, refund);
        Ok(())
    }
    /// Lets go of what a failed order held (its bills become payable by another order at once).
    async fn release(&self, order: &Order) -> Result<(), OrderError> {
        let _ = order;
        Ok(())
    }
    /// Whether what the order pays for is still what it was placed for; `Some` reason when it changed (a bill
    /// re-issued with another amount), which makes its payment an exception.
    async fn changed(&self, order: &Order) -> Result<Option<String>, OrderError> {
        let _ = order;
        Ok(None)
    }
    /// The customer event a paid order reports: `paid` for bills and fees, `topped_up` for stored value.
    fn event_kind(&self) -> EventKind {
        EventKind::Paid
    }
}

/// Keys of the flow, under the scenario's owner prefix.
pub mod keys {
    use crate::kv::Key;

    /// `{owner}:quote:{id}`.
    pub fn quote(owner: &str, id: &str) -> Key {
        Key::new(&[owner, "quote", id])
    }

    /// `{owner}:order:{id}`.
    pub fn order(owner: &str, id: &str) -> Key {
        Key::new(&[owner, "order", id])
    }

    /// `{owner}:cust:{customer}:orders` — the customer's order ids, newest last.
    pub fn history(owner: &str, customer_id: &str) -> Key {
        Key::new(&[owner, "cust", customer_id, "orders"])
    }

    /// `ops:exceptions:{yyyymmdd}` — a log of `{owner}/{order}/{event}` of the payment exceptions recorded that
    /// Shanghai day.
    pub fn exceptions(day: u32) -> Key {
        Key::new(&["ops", "exceptions", &day.to_string()])
    }
}

/// A cardholder discount: a rate of an amount, capped per payment, funded by a budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardDiscount {
    /// Rate in basis points.
    pub percent_bp: u32,
    /// Cap per payment.
    pub cap_fen: i64,
    /// The funding budget's id.
    pub budget_id: String,
    /// The budget's total.
    pub budget_fen: i64,
}

impl CardDiscount {
    /// Checks the configuration; `field` prefixes error fields (e.g. `discount`).
    pub fn validate(&self, field: &str) -> Result<(), (String, &'static str)> {
        if self.percent_bp == 0 || self.percent_bp > 5_000 {
            return Err((format!("{field}.percent_bp"), "1 to 5000"));
        }
        if self.cap_fen <= 0 || self.cap_fen > 100_000 {
            return Err((format!("{field}.cap_fen"), "1 to 100000"));
        }
        if self.budget_fen <= 0 || self.budget_fen > 10_000_000_000 {
            return Err((format!("{field}.budget_fen"), "1 to 10000000000"));
        }
        if crate::ids::Id::parse(&self.budget_id).is_err() {
            return Err((format!("{field}.budget_id"), "1 to 64 of [A-Za-z0-9_-]"));
        }
        Ok(())
    }

    /// The discount on `base_fen` (pure): rate applied (truncated toward zero), capped, never the whole amount.
    pub fn amount_fen(&self, base_fen: i64) -> i64 {
        let Some(bp) = crate::money::Bp::new(self.percent_bp) else { return 0 };
        let raw = crate::money::Fen(base_fen).apply_bp(bp).unwrap_or(crate::money::Fen::ZERO);
        raw.capped_at(crate::money::Fen(self.cap_fen)).0.min(base_fen - 1).max(0)
    }

    /// Reserves the discount on `base_fen` against `budget` for the quote and returns its (negative) line, or
    /// `None` when there is nothing to give or the budget is spent (no discount rather than an error).
    pub async fn reserve_line(
        &self,
        store: &impl Store,
        budget: &Key,
        quote_id: &str,
        base_fen: i64,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<QuoteLine>, LimitError> {
        let amount = self.amount_fen(base_fen);
        if amount <= 0
            || limits::reserve(store, budget, quote_id, amount, expires_at, now).await? != limits::Reserved::Granted
        {
            return Ok(None);
        }
        Ok(Some(QuoteLine {
            kind: "cardholder_discount".into(),
            description: format!("{}% off with the bank's card", percent(self.percent_bp)),
            amount_fen: -amount,
            funded_by: Some(Funding {
                budget: budget.as_str().to_owned(),
                reservation_id: quote_id.to_owned(),
                coupon_id: None,
            }),
        }))
    }
}

/// `250` bp → `"2.5"`, without floats.
pub fn percent(bp: u32) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// Whether a card BIN given at quote time is one of the bank's (pure).
pub fn is_bank_bin(pay_with: PayWith, card_bin: Option<&str>, bank_bins: &[String]) -> bool {
    pay_with == PayWith::BankCard && card_bin.is_some_and(|bin| bank_bins.iter().any(|b| bin.starts_with(b.as_str())))
}

/// Checks how a quote request wants to pay (pure): a card BIN is 6 to 8 digits and required with a bank card.
/// Returns the offending field and why.
pub fn check_payment_method(pay_with: PayWith, card_bin: Option<&str>) -> Result<(), (&'static str, &'static str)> {
    if let Some(bin) = card_bin
        && !((6..=8).contains(&bin.len()) && bin.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(("card_bin", "6 to 8 digits"));
    }
    if pay_with == PayWith::BankCard && card_bin.is_none() {
        return Err(("card_bin", "required when paying by bank card"));
    }
    Ok(())
}

/// The customer's quote `quote_id` (someone else's is `quote_not_found`) and whether it was already ordered.
pub async fn customer_quote(
    store: &impl Store,
    owner: &str,
    customer_id: &str,
    quote_id: &str,
) -> Result<(Quote, Option<Order>), OrderError> {
    if crate::ids::Id::parse(quote_id).is_err() {
        return Err(OrderError::QuoteNotFound);
    }
    // The quote and the order it may have become, in one read.
    let (quote_key, order_key) = (keys::quote(owner, quote_id), keys::order(owner, &order_id_for(quote_id)));
    let found = kv::get_all(store, &[quote_key.clone(), order_key.clone()]).await?;
    let quote: Quote = kv::decode_doc(&quote_key, found[0].as_deref())?.ok_or(OrderError::QuoteNotFound)?;
    if quote.customer_id != customer_id {
        return Err(OrderError::QuoteNotFound);
    }
    let order = kv::decode_doc(&order_key, found[1].as_deref())?;
    Ok((quote, order))
}

/// Stores a priced quote (its id is fresh, so the write is unconditional).
pub async fn save_quote(store: &impl Store, owner: &str, quote: &Quote) -> Result<(), OrderError> {
    quote.check()?;
    put_json(store, &keys::quote(owner, &quote.id), quote).await?;
    Ok(())
}

/// The order id of a quote: derived, so concurrent or repeated orders of one quote converge.
pub fn order_id_for(quote_id: &str) -> String {
    format!("o_{}", &hash_key_part(quote_id)[..24])
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct History {
    v: u32,
    orders: Vec<String>,
}

/// Places the order for a quote (idempotent per quote).
pub async fn place_order(
    store: &impl Store,
    owner: &str,
    customer_id: &str,
    quote_id: &str,
    settlement_account: &str,
    now: Timestamp,
) -> Result<Order, OrderError> {
    let (quote, existing) = customer_quote(store, owner, customer_id, quote_id).await?;
    place_quoted(store, owner, customer_id, &quote, existing, settlement_account, now).await
}

/// [`place_order`] for a quote the caller has read with [`customer_quote`] (`existing`: the order it found).
pub async fn place_quoted(
    store: &impl Store,
    owner: &str,
    customer_id: &str,
    quote: &Quote,
    existing: Option<Order>,
    settlement_account: &str,
    now: Timestamp,
) -> Result<Order, OrderError> {
    let id = order_id_for(&quote.id);
    if let Some(existing) = existing {
        // Placed before, maybe by an attempt cut short between its two writes: finish listing it.
        list_order(store, owner, customer_id, &id).await?;
        return Ok(existing);
    }
    if now > quote.expires_at {
        return Err(OrderError::QuoteExpired(quote.expires_at.to_rfc3339()));
    }
    let expires_at = now.plus_secs(PAYMENT_WINDOW_SECS);
    // Keep the discounts reserved (and coupons locked) while the order can still be paid.
    for funding in quote.lines.iter().filter_map(|l| l.funded_by.as_ref()) {
        let until = expires_at.plus_secs(RESERVATION_GRACE_SECS);
        match &funding.coupon_id {
            Some(coupon) => coupons::extend_lock(store, coupon, &quote.id, until).await?,
            None => limits::extend(store, &budget_key(&funding.budget), &funding.reservation_id, until).await?,
        }
    }
    let order = Order {
        v: 1,
        id: id.clone(),
        quote_id: quote.id.clone(),
        customer_id: customer_id.to_owned(),
        scenario: quote.scenario.clone(),
        lines: quote.lines.clone(),
        total_fen: quote.total_fen,
        pay_with: quote.pay_with,
        state: OrderState::PendingPayment,
        created_at: now,
        expires_at,
        payment: None,
        fulfilled: false,
        refunded_by: None,
        refund_done: false,
        settlement_account: settlement_account.to_owned(),
        payload: quote.payload.clone(),
        history: vec![StateChange { state: OrderState::PendingPayment, at: now }],
        exceptions: Vec::new(),
        partial_refunds: Vec::new(),
    };
    // Read as absent just now: claim its creation first.
    let placed = kv::update_json_new(store, &keys::order(owner, &id), |current: Option<&Order>| match current {
        Some(existing) => Ok::<_, OrderError>(Step::Keep(existing.clone())),
        None => Ok(Step::Write(order.clone(), order.clone())),
    })
    .await?;
    list_order(store, owner, customer_id, &id).await?;
    Ok(placed)
}

/// Adds an order to its customer's history (once).
async fn list_order(store: &impl Store, owner: &str, customer_id: &str, id: &str) -> Result<(), OrderError> {
    kv::update_json(store, &keys::history(owner, customer_id), |h: Option<&History>| {
        let mut h = h.cloned().unwrap_or(History { v: 1, orders: Vec::new() });
        if h.orders.iter().any(|o| o == id) {
            return Ok::<_, OrderError>(Step::Keep(()));
        }
        h.orders.push(id.to_owned());
        let excess = h.orders.len().saturating_sub(HISTORY_KEPT);
        h.orders.drain(..excess);
        Ok(Step::Write(h, ()))
    })
    .await
}

/// A budget's base key, as a funding line stores it.
fn budget_key(budget: &str) -> Key {
    Key::from_stored(budget)
}

/// Reads an order, applying expiry if its payment window has passed.
pub async fn get_order(store: &impl Store, owner: &str, id: &str, now: Timestamp) -> Result<Order, OrderError> {
    if crate::ids::Id::parse(id).is_err() {
        return Err(OrderError::OrderNotFound);
    }
    let order: Order = get_json(store, &keys::order(owner, id)).await?.ok_or(OrderError::OrderNotFound)?;
    if order.state == OrderState::PendingPayment && now > order.expires_at {
        return expire(store, owner, id, now).await;
    }
    Ok(order)
}

async fn expire(store: &impl Store, owner: &str, id: &str, now: Timestamp) -> Result<Order, OrderError> {
    let order = kv::update_json(store, &keys::order(owner, id), |current: Option<&Order>| {
        let Some(current) = current else { return Err(OrderError::OrderNotFound) };
        if current.state != OrderState::PendingPayment || now <= current.expires_at {
            return Ok(Step::Keep(current.clone()));
        }
        let next = current.moved(OrderState::Expired, now)?;
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    if order.state == OrderState::Expired {
        release_all(store, &order, now).await?;
    }
    Ok(order)
}

async fn release_all(store: &impl Store, order: &Order, now: Timestamp) -> Result<(), OrderError> {
    release_lines(store, &order.lines, &order.quote_id, now).await
}

/// Gives back what a quote reserved (discount budgets, a locked wallet coupon) when it cannot become an order (what
/// it pays for is held by another open order). Idempotent.
pub async fn release_quote(store: &impl Store, quote: &Quote, now: Timestamp) -> Result<(), OrderError> {
    release_lines(store, &quote.lines, &quote.id, now).await
}

async fn release_lines(
    store: &impl Store,
    lines: &[QuoteLine],
    quote_id: &str,
    now: Timestamp,
) -> Result<(), OrderError> {
    for funding in lines.iter().filter_map(|l| l.funded_by.as_ref()) {
        match &funding.coupon_id {
            // The coupon goes back to the wallet, still reserved for its own life.
            Some(coupon) => coupons::unlock(store, coupon, quote_id).await?,
            None => limits::release(store, &budget_key(&funding.budget), &funding.reservation_id, now).await?,
        }
    }
    Ok(())
}

/// A customer's orders, newest first, `limit` at a time after `cursor` (an order id from a previous page). An
/// unpaid order past its payment window is listed `expired` (and expired, which releases what it held).
pub async fn list_orders(
    store: &impl Store,
    owner: &str,
    customer_id: &str,
    cursor: Option<&str>,
    limit: usize,
    now: Timestamp,
) -> Result<(Vec<Order>, Option<String>), OrderError> {
    let history: History = get_json(store, &keys::history(owner, customer_id)).await?.unwrap_or_default();
    let ids: Vec<&String> = history.orders.iter().rev().collect();
    let start = match cursor {
        Some(c) => ids.iter().position(|id| id.as_str() == c).map_or(ids.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<&String> = ids.iter().skip(start).take(limit).copied().collect();
    let keys: Vec<Key> = page.iter().map(|id| keys::order(owner, id)).collect();
    let mut orders = Vec::with_capacity(page.len());
    for (key, bytes) in keys.iter().zip(kv::get_all(store, &keys).await?) {
        match kv::decode_doc::<Order>(key, bytes.as_deref())? {
            Some(order) if order.state == OrderState::PendingPayment && now > order.expires_at => {
                orders.push(expire(store, owner, &order.id, now).await?);
            }
            Some(order) => orders.push(order),
            None => {}
        }
    }
    let next = (start + page.len() < ids.len()).then(|| page.last().map(|s| (*s).clone())).flatten();
    Ok((orders, next))
}

/// A gateway notification body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEvent {
    /// Unique event id.
    pub event_id: String,
    /// Our order id.
    pub order_id: String,
    /// `succeeded` or `failed`.
    pub status: GatewayStatus,
    /// Amount paid.
    pub paid_fen: i64,
    /// When.
    pub paid_at: Timestamp,
    /// Instrument.
    pub instrument: Instrument,
}

/// Payment outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayStatus {
    /// Paid.
    Succeeded,
    /// Not paid.
    Failed,
}

/// Payment instrument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instrument {
    /// `bank_card` or `wallet`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Card BIN.
    #[serde(default)]
    pub bin: Option<String>,
    /// Card fingerprint.
    #[serde(default)]
    pub card_fingerprint: Option<String>,
}

impl Instrument {
    /// Whether this is one of the bank's own cards (BIN in `bank_bins`).
    pub fn is_bank_card(&self, bank_bins: &[String]) -> bool {
        self.kind == "bank_card"
            && self.bin.as_deref().is_some_and(|bin| bank_bins.iter().any(|b| bin.starts_with(b.as_str())))
    }
}

/// Parses `bank_card_bins` (comma-separated 6–8 digit BINs).
pub fn parse_bins(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|b| (6..=8).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

/// Applies a (verified) gateway notification. Safe to call any number of times, in any order.
///
/// A success pays a `pending_payment` order (once, whatever the duplicates); money for an order that cannot take it
/// becomes a [`PaymentException`] (see the module docs). A failure closes a `pending_payment` order and releases
/// what it held at once.
pub async fn apply_notification(
    store: &impl Store,
    scenario: &impl Fulfilment,
    event: &GatewayEvent,
    bank_bins: &[String],
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, OrderError> {
    let owner = scenario.owner();
    let order = get_order(store, owner, &event.order_id, now).await?;
    match event.status {
        GatewayStatus::Failed => {
            let order = kv::update_json(store, &keys::order(owner, &order.id), |current: Option<&Order>| {
                let Some(current) = current else { return Err(OrderError::OrderNotFound) };
                // A failure after success, or a repeated failure, changes nothing.
                if current.state != OrderState::PendingPayment {
                    return Ok(Step::Keep(current.clone()));
                }
                let next = current.moved(OrderState::Failed, now)?;
                Ok(Step::Write(next.clone(), next))
            })
            .await?;
            if order.state == OrderState::Failed {
                // Every repeat of the failure completes the release (each step is idempotent).
                release_all(store, &order, now).await?;
                scenario.release(&order).await?;
            }
            Ok(order)
        }
        GatewayStatus::Succeeded => {
            if event.paid_fen != order.total_fen {
                return Err(OrderError::AmountMismatch { paid_fen: event.paid_fen, total_fen: order.total_fen });
            }
            let bank_card = event.instrument.is_bank_card(bank_bins);
            if order.pay_with == PayWith::BankCard && order.lines.iter().any(|l| l.funded_by.is_some()) && !bank_card {
                return Err(OrderError::InstrumentMismatch);
            }
            let paid_at = clamp_paid_at(event.paid_at, order.created_at, now);
            let payment = PaymentRecord {
                event_id: event.event_id.clone(),
                paid_fen: event.paid_fen,
                paid_at,
                recorded_at: Some(now),
                instrument: event.instrument.kind.clone(),
                bin: event.instrument.bin.clone(),
                bank_card,
            };
            // What the order pays for may have changed since it was placed (checked before the payment lands; the
            // scenario's fulfilment re-checks, so a change in between cannot settle the new bill short).
            let changed =
                if order.state == OrderState::PendingPayment { scenario.changed(&order).await? } else { None };
            let exception = |reason| PaymentException {
                event_id: event.event_id.clone(),
                reason,
                amount_fen: event.paid_fen,
                paid_at,
                recorded_at: now,
                refund: RefundStatus::Due,
                refunded_at: None,
            };
            let paid = kv::update_json(store, &keys::order(owner, &order.id), |current: Option<&Order>| {
                let Some(current) = current else { return Err(OrderError::OrderNotFound) };
                let this_payment = current.payment.as_ref().is_some_and(|p| p.event_id == event.event_id);
                if this_payment || current.exceptions.iter().any(|e| e.event_id == event.event_id) {
                    return Ok(Step::Keep(current.clone()));
                }
                let reason = match current.state {
                    OrderState::PendingPayment if changed.is_none() => {
                        let mut next = current.moved(OrderState::Paid, now)?;
                        next.payment = Some(payment.clone());
                        return Ok(Step::Write(next.clone(), next));
                    }
                    OrderState::PendingPayment => ExceptionReason::ItemsChanged,
                    OrderState::Paid | OrderState::Refunded => ExceptionReason::DuplicatePayment,
                    OrderState::Failed => ExceptionReason::PaidAfterFailure,
                    OrderState::Expired => ExceptionReason::PaidAfterExpiry,
                };
                let mut next = current.clone();
                next.exceptions.push(exception(reason));
                Ok(Step::Write(next.clone(), next))
            })
            .await?;
            if let Some(exception) = paid.exceptions.iter().find(|e| e.event_id == event.event_id) {
                book_exception(store, owner, &paid, exception).await?;
                return Ok(paid);
            }
            if paid.state == OrderState::Paid && !paid.fulfilled {
                fulfil(store, scenario, &paid, rules, now).await
            } else {
                Ok(paid)
            }
        }
    }
}

/// `paid_at` clamped into [created − skew, now + skew]: a gateway clock off by hours cannot book a payment before
/// its order existed or in the future.
fn clamp_paid_at(paid_at: Timestamp, created_at: Timestamp, now: Timestamp) -> Timestamp {
    let earliest = created_at.plus_secs(-PAID_AT_SKEW_SECS);
    let latest = now.plus_secs(PAID_AT_SKEW_SECS);
    if paid_at < earliest {
        earliest
    } else if paid_at > latest {
        latest
    } else {
        paid_at
    }
}

/// Books a payment exception: gateway clearing to [`SUSPENSE`] (idempotent by event id), then lists it for
/// operators on the day it was recorded. Every repeat of the notification completes both.
async fn book_exception(
    store: &impl Store,
    owner: &str,
    order: &Order,
    exception: &PaymentException,
) -> Result<(), OrderError> {
    let posting = Posting {
        v: 1,
        id: format!("suspense:{}:{}", order.id, crate::ids::hash_key_part(&exception.event_id)),
        at: exception.recorded_at,
        memo: format!("{} order {}: money to refund ({:?})", order.scenario, order.id, exception.reason),
        lines: vec![
            Line { account: GATEWAY_CLEARING.into(), amount_fen: exception.amount_fen },
            Line { account: SUSPENSE.into(), amount_fen: -exception.amount_fen },
        ],
    };
    ledger::post(store, &posting).await?;
    let entry = format!("{owner}/{}/{}", order.id, exception.event_id);
    kv::append_to_log(store, &keys::exceptions(exception.recorded_at.shanghai_day()), &entry).await?;
    Ok(())
}

/// The gateway's word that it returned the money of a payment exception to its instrument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundConfirmation {
    /// The event that brought the money (the exception's `event_id`).
    pub event_id: String,
    /// Our order id.
    pub order_id: String,
}

/// Records that the gateway returned an exception's money: the instruction becomes `refunded` (once) and the
/// money leaves suspense back to gateway clearing (`suspense-out:…`, idempotent). Repeats change nothing.
pub async fn confirm_refund(
    store: &impl Store,
    owner: &str,
    confirmation: &RefundConfirmation,
    now: Timestamp,
) -> Result<Order, OrderError> {
    if crate::ids::Id::parse(&confirmation.order_id).is_err() {
        return Err(OrderError::OrderNotFound);
    }
    let event_id = &confirmation.event_id;
    let order = kv::update_json(store, &keys::order(owner, &confirmation.order_id), |current: Option<&Order>| {
        let Some(current) = current else { return Err(OrderError::OrderNotFound) };
        let Some(i) = current.exceptions.iter().position(|e| &e.event_id == event_id) else {
            return Err(OrderError::NoRefundDue);
        };
        if current.exceptions[i].refund == RefundStatus::Refunded {
            return Ok(Step::Keep(current.clone()));
        }
        let mut next = current.clone();
        next.exceptions[i].refund = RefundStatus::Refunded;
        next.exceptions[i].refunded_at = Some(now);
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    let Some(exception) = order.exceptions.iter().find(|e| &e.event_id == event_id) else {
        return Err(OrderError::NoRefundDue);
    };
    let posting = Posting {
        v: 1,
        id: format!("suspense-out:{}:{}", order.id, crate::ids::hash_key_part(event_id)),
        at: exception.refunded_at.unwrap_or(now),
        memo: format!("{} order {}: money returned to the payer", order.scenario, order.id),
        lines: vec![
            Line { account: SUSPENSE.into(), amount_fen: exception.amount_fen },
            Line { account: GATEWAY_CLEARING.into(), amount_fen: -exception.amount_fen },
        ],
    };
    ledger::post(store, &posting).await?;
    Ok(order)
}

/// One listed payment exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedException {
    /// The scenario's key owner (`util`, `prop`, `campus`).
    pub owner: String,
    /// The order.
    pub order_id: String,
    /// The order's scenario (`utility`...).
    pub scenario: String,
    /// Its customer.
    pub customer_id: String,
    /// The exception and its refund instruction.
    #[serde(flatten)]
    pub exception: PaymentException,
}

/// [`exceptions`] over Asia/Shanghai day numbers as of `now`: which days have any is read from roll-ups of the
/// days' log counters (a closed day's is fixed), so a year costs about sixty keys, then only those days' logs.
pub async fn exceptions_in(
    store: &impl Store,
    day_numbers: &[i64],
    now: Timestamp,
) -> Result<Vec<ListedException>, OrderError> {
    let days = crate::rollups::days_with_entries(store, "exceptions", day_numbers, now, keys::exceptions).await?;
    exceptions(store, &days).await
}

/// The payment exceptions recorded on the given Shanghai days (`yyyymmdd`), oldest first: money to refund.
pub async fn exceptions(store: &impl Store, days: &[u32]) -> Result<Vec<ListedException>, OrderError> {
    let bases: Vec<Key> = days.iter().map(|d| keys::exceptions(*d)).collect();
    let entries: Vec<String> = kv::read_logs(store, &bases).await?.into_iter().flatten().collect();
    let parsed: Vec<(&str, &str, &str)> = entries
        .iter()
        .filter_map(|e| {
            let mut parts = e.splitn(3, '/');
            Some((parts.next()?, parts.next()?, parts.next()?))
        })
        .collect();
    let order_keys: Vec<Key> = parsed.iter().map(|(owner, order, _)| keys::order(owner, order)).collect();
    let mut listed = Vec::with_capacity(parsed.len());
    for ((key, raw), (owner, _, event_id)) in order_keys.iter().zip(kv::get_all(store, &order_keys).await?).zip(&parsed)
    {
        let Some(order) = kv::decode_doc::<Order>(key, raw.as_deref())? else { continue };
        if let Some(exception) = order.exceptions.iter().find(|e| e.event_id == *event_id) {
            listed.push(ListedException {
                owner: (*owner).to_owned(),
                order_id: order.id.clone(),
                scenario: order.scenario.clone(),
                customer_id: order.customer_id.clone(),
                exception: exception.clone(),
            });
        }
    }
    Ok(listed)
}

async fn fulfil(
    store: &impl Store,
    scenario: &impl Fulfilment,
    order: &Order,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, OrderError> {
    // Booked when recorded, so every payment lands in the statement of a day that was open when it arrived.
    let booked_at = order.payment.as_ref().map_or(now, |p| p.recorded_at.unwrap_or(p.paid_at));
    let paid_at = order.payment.as_ref().map_or(now, |p| p.paid_at);
    scenario.fulfil(order, booked_at).await?;
    ledger::post(store, &order.payment_posting(booked_at)).await?;
    for funding in order.reservations() {
        limits::commit(store, &budget_key(&funding.budget), &funding.reservation_id, now).await?;
        if let Some(coupon) = &funding.coupon_id {
            coupons::consume(store, coupon, &order.quote_id, &order.id, booked_at).await?;
        }
    }
    let bank_card = order.payment.as_ref().is_some_and(|p| p.bank_card);
    let event = Event {
        id: format!("paid:{}", order.id),
        customer_id: order.customer_id.clone(),
        kind: scenario.event_kind(),
        scenario: order.scenario.clone(),
        at: paid_at,
        amount_fen: Some(order.total_fen),
        bank_card,
        tags: vec![],
    };
    events::record(store, &event, rules).await?;
    let owner = scenario.owner();
    let done = kv::update_json(store, &keys::order(owner, &order.id), |current: Option<&Order>| {
        let Some(current) = current else { return Err(OrderError::OrderNotFound) };
        if current.fulfilled {
            return Ok(Step::Keep(current.clone()));
        }
        let mut next = current.clone();
        next.fulfilled = true;
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    Ok(done)
}

/// What a refund request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The request's own id (from its idempotency key): a retried partial refund is applied once.
    pub id: String,
    /// Part of what is left to refund; `None` (or all that is left) refunds the rest and closes the order.
    pub amount_fen: Option<i64>,
}

/// Refunds a paid order, in full or in part (idempotent per request id; completes an interrupted refund).
pub async fn refund(
    store: &impl Store,
    scenario: &impl Fulfilment,
    order_id: &str,
    by: &str,
    request: &RefundRequest,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, OrderError> {
    let owner = scenario.owner();
    let order = get_order(store, owner, order_id, now).await?;
    if order.state == OrderState::Paid && !order.fulfilled {
        // Finish the payment first, so the refund reverses complete effects.
        fulfil(store, scenario, &order, rules, now).await?;
    }
    let known = order.partial_refunds.iter().any(|r| r.id == request.id);
    if let Some(amount) = request.amount_fen
        && (known || order.state == OrderState::Paid)
    {
        let left = order.total_fen - order.partially_refunded_fen();
        if !known && (amount <= 0 || amount > left) {
            return Err(OrderError::RefundTooLarge { left_fen: left });
        }
        if known || amount < left {
            return refund_part(store, scenario, &order, by, request, amount, now).await;
        }
    }
    // The money first where it comes back from a customer's stored value (a campus top-up, refunded in full only):
    // the ledger refuses it when the card no longer holds it, and the order then stays paid. The posting is
    // write-once by order, so a retry (or a concurrent refund) completes the same one.
    if order.state == OrderState::Paid && !scenario.partial_refunds() {
        ledger::post(store, &order.refund_posting(now)).await?;
    }
    let refunded = kv::update_json(store, &keys::order(owner, order_id), |current: Option<&Order>| {
        let Some(current) = current else { return Err(OrderError::OrderNotFound) };
        if current.state == OrderState::Refunded {
            return Ok(Step::Keep(current.clone()));
        }
        let mut next = current.moved(OrderState::Refunded, now)?;
        next.refunded_by = Some(by.to_owned());
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    if refunded.refund_done {
        return Ok(refunded);
    }
    // Partial refunds are frozen now (they need a paid order): complete any a crash left unposted, then post the rest.
    for part in &refunded.partial_refunds {
        ledger::post(store, &refunded.partial_refund_posting(part)).await?;
    }
    scenario.reverse(&refunded, now).await?;
    ledger::post(store, &refunded.refund_posting(now)).await?;
    for funding in refunded.reservations() {
        limits::uncommit(store, &budget_key(&funding.budget), &funding.reservation_id).await?;
    }
    let event = Event {
        id: format!("refunded:{}", refunded.id),
        customer_id: refunded.customer_id.clone(),
        kind: EventKind::Refunded,
        scenario: refunded.scenario.clone(),
        at: now,
        amount_fen: Some(refunded.total_fen),
        bank_card: false,
        tags: vec![],
    };
    events::record(store, &event, rules).await?;
    let done = kv::update_json(store, &keys::order(owner, order_id), |current: Option<&Order>| {
        let Some(current) = current else { return Err(OrderError::OrderNotFound) };
        let mut next = current.clone();
        next.refund_done = true;
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    Ok(done)
}

/// Gives part of a paid order's money back: recorded on the order (once per request id, never more than is left),
/// then posted from the settlement account to gateway clearing, then reported to the scenario (its statement).
async fn refund_part(
    store: &impl Store,
    scenario: &impl Fulfilment,
    order: &Order,
    by: &str,
    request: &RefundRequest,
    amount_fen: i64,
    now: Timestamp,
) -> Result<Order, OrderError> {
    if !scenario.partial_refunds() {
        return Err(OrderError::PartialRefundNotAllowed);
    }
    let part = PartialRefund { id: request.id.clone(), amount_fen, at: now, by: by.to_owned() };
    let order = kv::update_json(store, &keys::order(scenario.owner(), &order.id), |current: Option<&Order>| {
        let Some(current) = current else { return Err(OrderError::OrderNotFound) };
        if current.partial_refunds.iter().any(|r| r.id == part.id) {
            return Ok(Step::Keep(current.clone()));
        }
        if current.state != OrderState::Paid {
            return Err(OrderError::IllegalTransition { from: current.state, to: OrderState::Refunded });
        }
        // A concurrent partial refund may have taken some of what was left: this one must leave something.
        let left = current.total_fen - current.partially_refunded_fen();
        if part.amount_fen >= left {
            return Err(OrderError::RefundTooLarge { left_fen: left });
        }
        let mut next = current.clone();
        next.partial_refunds.push(part.clone());
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    let recorded = order.partial_refunds.iter().find(|r| r.id == request.id).cloned().unwrap_or(part);
    ledger::post(store, &order.partial_refund_posting(&recorded)).await?;
    scenario.partially_refunded(&order, &recorded).await?;
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_legal_transitions_are_allowed() {
        use OrderState::*;
        let all = [PendingPayment, Paid, Failed, Expired, Refunded];
        let legal = [(PendingPayment, Paid), (PendingPayment, Failed), (PendingPayment, Expired), (Paid, Refunded)];
        for from in all {
            for to in all {
                assert_eq!(transition(from, to).is_ok(), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn payment_postings_balance_and_refunds_reverse_them() {
        let order = Order {
            v: 1,
            id: "o_1".into(),
            quote_id: "q_1".into(),
            customer_id: "c_1".into(),
            scenario: "utility".into(),
            lines: vec![
                QuoteLine { kind: "base".into(), description: "water".into(), amount_fen: 10_000, funded_by: None },
                QuoteLine {
                    kind: "cardholder_discount".into(),
                    description: "5%".into(),
                    amount_fen: -500,
                    funded_by: Some(Funding {
                        budget: "util:budget:w".into(),
                        reservation_id: "q_1".into(),
                        coupon_id: None,
                    }),
                },
            ],
            total_fen: 9_500,
            pay_with: PayWith::BankCard,
            state: OrderState::Paid,
            created_at: Timestamp::from_unix_secs(0),
            expires_at: Timestamp::from_unix_secs(1800),
            payment: None,
            fulfilled: false,
            refunded_by: None,
            refund_done: false,
            settlement_account: "biller:w:settlement".into(),
            payload: serde_json::Value::Null,
            history: vec![],
            exceptions: vec![],
            partial_refunds: vec![],
        };
        let pay = order.payment_posting(Timestamp::from_unix_secs(10));
        assert_eq!(pay.lines.iter().map(|l| l.amount_fen).sum::<i64>(), 0);
        assert_eq!(
            pay.lines.iter().map(|l| (l.account.as_str(), l.amount_fen)).collect::<Vec<_>>(),
            vec![("gateway:clearing", 9_500), ("bank:marketing", 500), ("biller:w:settlement", -10_000)]
        );
        let refund = order.refund_posting(Timestamp::from_unix_secs(20));
        assert!(refund.lines.iter().zip(&pay.lines).all(|(r, p)| r.amount_fen == -p.amount_fen));
    }

    #[test]
    fn quotes_must_add_up() {
        let mut q = Quote {
            v: 1,
            id: "q".into(),
            customer_id: "c".into(),
            scenario: "utility".into(),
            lines: vec![QuoteLine { kind: "base".into(), description: "x".into(), amount_fen: 100, funded_by: None }],
            total_fen: 100,
            pay_with: PayWith::Other,
            card_bin: None,
            created_at: Timestamp::from_unix_secs(0),
            expires_at: Timestamp::from_unix_secs(900),
            payload: serde_json::Value::Null,
        };
        assert!(q.check().is_ok());
        q.total_fen = 99;
        assert!(q.check().is_err());
        q.lines[0].amount_fen = 0;
        q.total_fen = 0;
        assert!(q.check().is_err(), "a zero total is not payable");
    }

    #[test]
    fn an_order_placed_by_an_attempt_that_failed_at_any_write_is_listed_once_by_the_retry() {
        let quote = Quote {
            v: 1,
            id: "q_retry".into(),
            customer_id: "c_1".into(),
            scenario: "utility".into(),
            lines: vec![QuoteLine { kind: "base".into(), description: "x".into(), amount_fen: 100, funded_by: None }],
            total_fen: 100,
            pay_with: PayWith::Other,
            card_bin: None,
            created_at: Timestamp::from_unix_secs(0),
            expires_at: Timestamp::from_unix_secs(900),
            payload: serde_json::Value::Null,
        };
        let place = |store: &crate::kv::MemStore| {
            pollster::block_on(place_order(store, "util", "c_1", "q_retry", "biller:w:settlement", quote.created_at))
        };
        let mut n = 1;
        loop {
            let store = crate::kv::MemStore::default();
            pollster::block_on(save_quote(&store, "util", &quote)).expect("quote");
            store.fail_write(n);
            let first = place(&store);
            store.heal();
            let placed = place(&store).expect("the retry places the order");
            let (listed, _) =
                pollster::block_on(list_orders(&store, "util", "c_1", None, 10, quote.created_at)).expect("history");
            assert_eq!(listed.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [placed.id.as_str()], "write {n}");
            if first.is_ok() {
                break;
            }
            n += 1;
        }
        assert!(n > 2, "swept {n} writes");
    }

    #[test]
    fn bins_parse_and_match_by_prefix() {
        let bins = parse_bins(" 622588, 12345, 62258899x, 43678801");
        assert_eq!(bins, vec!["622588".to_owned(), "43678801".to_owned()]);
        let card = |bin: &str| Instrument { kind: "bank_card".into(), bin: Some(bin.into()), card_fingerprint: None };
        assert!(card("6225881234").is_bank_card(&bins));
        assert!(!card("6225891234").is_bank_card(&bins));
        assert!(
            !Instrument { kind: "wallet".into(), bin: Some("622588".into()), card_fingerprint: None }
                .is_bank_card(&bins)
        );
    }
}

/// Hostile pagination cursors and limits, property-based.
#[cfg(test)]
mod hostile_cursor_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kv::{CasMode, MemStore};

    fn order(id: &str) -> Order {
        Order {
            v: 1,
            id: id.into(),
            quote_id: format!("q_{id}"),
            customer_id: "c_1".into(),
            scenario: "utility".into(),
            lines: vec![QuoteLine { kind: "base".into(), description: "x".into(), amount_fen: 100, funded_by: None }],
            total_fen: 100,
            pay_with: PayWith::Other,
            state: OrderState::PendingPayment,
            created_at: Timestamp::from_unix_secs(0),
            expires_at: Timestamp::from_unix_secs(1800),
            payment: None,
            fulfilled: false,
            refunded_by: None,
            refund_done: false,
            settlement_account: "biller:w:settlement".into(),
            payload: serde_json::Value::Null,
            history: vec![],
            exceptions: vec![],
            partial_refunds: vec![],
        }
    }

    /// A store holding `n` orders of customer `c_1`, oldest first.
    fn store_with(n: usize) -> (MemStore, Vec<String>) {
        let store = MemStore::new(CasMode::SpinUpsert);
        let ids: Vec<String> = (0..n).map(|i| format!("o_{i:03}")).collect();
        pollster::block_on(async {
            for id in &ids {
                put_json(&store, &keys::order("util", id), &order(id)).await.expect("order");
            }
            let history = History { v: 1, orders: ids.clone() };
            put_json(&store, &keys::history("util", "c_1"), &history).await.expect("history");
        });
        (store, ids)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn garbage_cursors_never_panic_and_never_leak(n in 0usize..12, cursor in ".{0,40}", limit in 0usize..200) {
            let (store, ids) = store_with(n);
            let (page, next) = pollster::block_on(list_orders(&store, "util", "c_1", Some(&cursor), limit, Timestamp::from_unix_secs(0)))
                .expect("a page");
            // An unknown cursor is the end of the list; a known one continues after it.
            match ids.iter().position(|id| *id == cursor) {
                None => prop_assert!(page.is_empty() && next.is_none()),
                Some(i) => prop_assert_eq!(page.len(), i.min(limit)),
            }
            let (other, _) = pollster::block_on(list_orders(&store, "util", "c_2", Some(&cursor), limit, Timestamp::from_unix_secs(0)))
                .expect("another customer's page");
            prop_assert!(other.is_empty());
        }

        #[test]
        fn next_cursors_walk_every_order_once(n in 0usize..25, limit in 1usize..7) {
            let (store, ids) = store_with(n);
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..=n {
                let (page, next) = pollster::block_on(list_orders(&store, "util", "c_1", cursor.as_deref(), limit, Timestamp::from_unix_secs(0)))
                    .expect("a page");
                seen.extend(page.into_iter().map(|o| o.id));
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let expected: Vec<String> = ids.into_iter().rev().collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
