//! Top-ups: an order of the shared payment flow (`scenefin_core::orders`) whose settlement account is the card's
//! stored value, with an optional bonus from the school's bank-funded budget when paid by the bank's card.
//!
//! The quote has two lines: the credit to the card (amount plus bonus) and the bonus, funded by the budget, so the
//! customer pays the amount and the payment posting credits the card with both.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::events::EventKind;
use scenefin_core::feed::{self, FeedEvent};
use scenefin_core::ids::new_id;
use scenefin_core::kv::Store;
use scenefin_core::ledger;
use scenefin_core::orders::{
    self, Fulfilment, GatewayEvent, Order, OrderError, PayWith, QUOTE_TTL_SECS, Quote, QuoteLine,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cards;
use crate::schools::{self, stat};
use crate::txns::{self, Txn, TxnKind};
use crate::{CampusError, OWNER, SCENARIO, keys};

/// Smallest top-up.
pub const MIN_TOPUP_FEN: i64 = 100;
/// Largest top-up.
pub const MAX_TOPUP_FEN: i64 = 100_000;

/// What a customer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopupRequest {
    /// The card.
    pub card_id: String,
    /// Amount to pay.
    pub amount_fen: i64,
    /// How the customer pays.
    pub pay_with: PayWith,
    /// The paying card's BIN, for the bonus.
    pub card_bin: Option<String>,
}

/// What a top-up order carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The card.
    pub card_id: String,
    /// Its school.
    pub school_id: String,
    /// The member number (the reference on statements).
    pub member_no: String,
}

fn payload(order: &Order) -> Result<Payload, OrderError> {
    serde_json::from_value(order.payload.clone()).map_err(|e| OrderError::Scenario(format!("order payload: {e}")))
}

/// Prices a top-up (reserving the bonus) and places its order.
pub async fn create(
    store: &impl Store,
    customer_id: &str,
    request: &TopupRequest,
    bank_bins: &[String],
    now: Timestamp,
) -> Result<Order, CampusError> {
    if !(MIN_TOPUP_FEN..=MAX_TOPUP_FEN).contains(&request.amount_fen) {
        return Err(CampusError::invalid("amount_fen", format!("{MIN_TOPUP_FEN} to {MAX_TOPUP_FEN}")));
    }
    orders::check_payment_method(request.pay_with, request.card_bin.as_deref())
        .map_err(|(field, message)| CampusError::invalid(field, message))?;
    let card = cards::owned(store, customer_id, &request.card_id).await?;
    if let Some(refusal) = card.refusal_at(now) {
        return Err(CampusError::Refused(refusal));
    }
    let school = schools::get(store, &card.school_id).await?;
    let quote_id = new_id("q", now.unix_ms()).map_err(|e| CampusError::invalid("quote", e.to_string()))?;
    let expires_at = now.plus_secs(QUOTE_TTL_SECS);
    let mut bonus_line = None;
    if let Some(bonus) = &school.topup_bonus
        && orders::is_bank_bin(request.pay_with, request.card_bin.as_deref(), bank_bins)
        && let Some(line) = bonus
            .reserve_line(store, &keys::budget(&bonus.budget_id), &quote_id, request.amount_fen, expires_at, now)
            .await?
    {
        bonus_line = Some(QuoteLine {
            kind: "topup_bonus".into(),
            description: format!("{}% bonus with the bank's card", orders::percent(bonus.percent_bp)),
            ..line
        });
    }
    let bonus_fen = bonus_line.as_ref().map_or(0, |l| -l.amount_fen);
    let mut lines = vec![QuoteLine {
        kind: "top_up".into(),
        description: format!("Top-up of campus card {}", card.card_id),
        amount_fen: request.amount_fen + bonus_fen,
        funded_by: None,
    }];
    lines.extend(bonus_line);
    let quote = Quote {
        v: 1,
        id: quote_id.clone(),
        customer_id: customer_id.to_owned(),
        scenario: SCENARIO.into(),
        lines,
        total_fen: request.amount_fen,
        pay_with: request.pay_with,
        card_bin: request.card_bin.clone(),
        created_at: now,
        expires_at,
        payload: serde_json::to_value(Payload {
            card_id: card.card_id.clone(),
            school_id: card.school_id.clone(),
            member_no: card.member_no.clone(),
        })
        .map_err(|e| CampusError::invalid("quote", e.to_string()))?,
    };
    orders::save_quote(store, OWNER, &quote).await?;
    Ok(orders::place_order(store, OWNER, customer_id, &quote_id, &keys::card_account(&card.card_id), now).await?)
}

/// The campus card's part in the payment flow.
pub struct Topups<'a, S: Store> {
    /// The store.
    pub store: &'a S,
}

impl<S: Store> Fulfilment for Topups<'_, S> {
    fn owner(&self) -> &'static str {
        OWNER
    }

    fn event_kind(&self) -> EventKind {
        EventKind::ToppedUp
    }

    /// Stored value comes back whole, or not at all.
    fn partial_refunds(&self) -> bool {
        false
    }

    /// Credits the card (the flow posts the payment again afterwards, which the ledger treats as a replay), lists
    /// the top-up, counts it, and moves the money on if the card was replaced since the order.
    async fn fulfil(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        let posting = order.payment_posting(at);
        ledger::post(self.store, &posting).await?;
        let credited = order.total_fen + order.funded_fen();
        let txn = Txn {
            txn_id: posting.id.clone(),
            kind: TxnKind::TopUp,
            amount_fen: credited,
            reference: order.id.clone(),
            merchant_id: None,
            at,
        };
        let scenario = as_order_error;
        txns::append(self.store, &p.card_id, &txn).await.map_err(scenario)?;
        // The school's feed, as a re-driven effect: a retry after a crash appends the same id once.
        let data = json!({
            "school_id": p.school_id, "card_id": p.card_id, "member_no": p.member_no, "order_id": order.id,
            "amount_fen": order.total_fen, "bonus_fen": order.funded_fen(), "credited_fen": credited,
            "credited_at": at,
        });
        let event = FeedEvent::new("topup.credited", &order.id, at, data);
        feed::append(self.store, &feed::key(OWNER, &p.school_id), &event).await?;
        let count = async |counter: &str, delta: i64| {
            schools::count_once(self.store, &p.school_id, counter, &order.id, delta).await.map_err(scenario)
        };
        count(stat::TOPUPS, 1).await?;
        count(stat::TOPUP_FEN, order.total_fen).await?;
        if order.funded_fen() > 0 {
            count(stat::BONUS_FEN, order.funded_fen()).await?;
        }
        if order.payment.as_ref().is_some_and(|pay| pay.bank_card) {
            count(stat::TOPUPS_BANK_CARD, 1).await?;
            count(stat::TOPUP_BANK_CARD_FEN, order.total_fen).await?;
        }
        schools::count_once(self.store, &p.school_id, stat::CARDS_ACTIVE, &p.card_id, 1).await.map_err(scenario)?;
        cards::forward_if_replaced(self.store, &p.card_id, at).await.map_err(scenario)?;
        Ok(())
    }

    /// Lists the refund on the card. The money moved before this runs: the flow posts the refund first, and the
    /// ledger refuses it when the card no longer holds the top-up and its bonus (`insufficient_funds`), so a top-up
    /// is refunded only while the card still holds it.
    async fn reverse(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        let txn = Txn {
            txn_id: format!("refund:{}", order.id),
            kind: TxnKind::Refund,
            amount_fen: -(order.total_fen + order.funded_fen()),
            reference: order.id.clone(),
            merchant_id: None,
            at,
        };
        txns::append(self.store, &p.card_id, &txn).await.map_err(as_order_error)?;
        let data = json!({
            "school_id": p.school_id, "card_id": p.card_id, "member_no": p.member_no, "order_id": order.id,
            "refunded_fen": order.total_fen, "debited_fen": order.total_fen + order.funded_fen(), "refunded_at": at,
        });
        let event = FeedEvent::new("topup.refunded", &order.id, at, data);
        Ok(feed::append(self.store, &feed::key(OWNER, &p.school_id), &event).await.map(drop)?)
    }
}

/// A campus error inside the payment flow: a store error keeps its kind (contention is a retryable 503); anything
/// else is the scenario's bug.
fn as_order_error(e: CampusError) -> OrderError {
    match e {
        CampusError::Store(e) => OrderError::Store(e),
        other => OrderError::Scenario(other.to_string()),
    }
}

/// Refunds a paid top-up to the instrument that paid it, while the card still holds it (and its bonus).
pub async fn refund(
    store: &impl Store,
    order_id: &str,
    by: &str,
    request: &orders::RefundRequest,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, CampusError> {
    Ok(orders::refund(store, &Topups { store }, order_id, by, request, rules, now).await?)
}

/// The school a top-up's card belongs to (for partner scope checks).
pub fn school_of(order: &Order) -> Option<String> {
    order.payload.get("school_id").and_then(|v| v.as_str()).map(str::to_owned)
}

/// Applies a verified gateway notification.
pub async fn notify(
    store: &impl Store,
    event: &GatewayEvent,
    bank_bins: &[String],
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, CampusError> {
    Ok(orders::apply_notification(store, &Topups { store }, event, bank_bins, rules, now).await?)
}
