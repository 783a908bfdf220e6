//! Utility's part in the shared payment flow (`scenefin_core::orders`): what a paid order settles, what a refund
//! reopens, and the per-biller day index and counters the reports read. Every effect is idempotent by order id.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::feed::{self, FeedEvent};
use scenefin_core::holds;
use scenefin_core::kv::{self, Step, Store};
use scenefin_core::orders::{self, Fulfilment, GatewayEvent, Order, OrderError, PartialRefund, RefundRequest};
use scenefin_core::problem::{ErrorKind, Problem};
use scenefin_core::settlement;
use serde_json::json;

use crate::bills::{Bill, BillStatus};
use crate::pricing::{BillPart, Payload};
use crate::{OWNER, UtilityError, billers, keys};

/// Utility's fulfilment.
pub struct Utility<'a, S: Store> {
    /// The store.
    pub store: &'a S,
}

fn payload(order: &Order) -> Result<Payload, OrderError> {
    serde_json::from_value(order.payload.clone()).map_err(|e| OrderError::Scenario(format!("order payload: {e}")))
}

impl<S: Store> Utility<'_, S> {
    async fn count_once(
        &self,
        order_id: &str,
        effect: &str,
        biller_id: &str,
        counter: &str,
        delta: i64,
    ) -> Result<(), OrderError> {
        Ok(kv::count_once(self.store, &keys::order_effect(order_id, effect), &keys::stat(biller_id, counter), delta)
            .await?)
    }
}

impl<S: Store> Fulfilment for Utility<'_, S> {
    fn owner(&self) -> &'static str {
        OWNER
    }

    async fn fulfil(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        let mut settled = Vec::new();
        for part in parts(&p) {
            let bill = kv::update_json(self.store, &keys::bill(&p.biller_id, &part.bill_id), |bill: Option<&Bill>| {
                let Some(bill) = bill else { return Ok::<_, OrderError>(Step::Keep(None)) };
                let mut next = bill.clone();
                if bill.applied.contains(&order.id) || bill.paid_by.as_deref() == Some(&order.id) {
                    return Ok(Step::Keep(Some(bill.clone())));
                }
                if bill.status == BillStatus::Paid {
                    // Paid before holds existed (two orders raced for it): keep the money trail for the biller.
                    if bill.duplicate_payments.contains(&order.id) {
                        return Ok(Step::Keep(Some(bill.clone())));
                    }
                    next.duplicate_payments.push(order.id.clone());
                } else {
                    // A whole-bill part of an old order pays what was due; a re-issued bill is paid only when the
                    // payments cover its new amount (never marked paid short).
                    let share = if part.amount_fen > 0 { part.amount_fen } else { bill.due_fen() };
                    next.paid_fen += share;
                    next.applied.push(order.id.clone());
                    if next.paid_fen >= next.amount_fen {
                        next.status = BillStatus::Paid;
                        next.paid_by = Some(order.id.clone());
                    }
                }
                if next.hold.as_ref().is_some_and(|h| h.order_id == order.id) {
                    next.hold = None;
                }
                next.updated_at = at;
                Ok(Step::Write(next.clone(), Some(next)))
            })
            .await?;
            settled.extend(bill.map(|b| bill_view(&b, &order.id)));
        }
        settlement::record(self.store, OWNER, &p.biller_id, &order.id, "pay", at).await?;
        let paid_at = order.payment.as_ref().map_or(at, |pay| pay.paid_at);
        let data = json!({
            "biller_id": p.biller_id, "account_no": p.account_no, "order_id": order.id,
            "paid_fen": order.total_fen, "paid_at": paid_at, "bills": settled,
        });
        let event = FeedEvent::new("bill.paid", &order.id, paid_at, data);
        feed::append(self.store, &feed::key(OWNER, &p.biller_id), &event).await?;
        // The biller's statistics, behind one claim for the order.
        let mut counters = vec![
            (keys::stat(&p.biller_id, "orders_paid"), 1),
            (keys::stat(&p.biller_id, "bills_paid"), i64::try_from(p.bill_ids.len()).unwrap_or(0)),
        ];
        if order.payment.as_ref().is_some_and(|pay| pay.bank_card) {
            counters.push((keys::stat(&p.biller_id, "orders_paid_bank_card"), 1));
        }
        Ok(kv::count_all_once(self.store, &keys::order_effect(&order.id, "paid"), &counters).await?)
    }

    async fn reverse(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        for part in parts(&p) {
            kv::update_json(self.store, &keys::bill(&p.biller_id, &part.bill_id), |bill: Option<&Bill>| {
                let Some(bill) = bill else { return Ok::<_, OrderError>(Step::Keep(())) };
                let mut next = bill.clone();
                if let Some(i) = bill.applied.iter().position(|o| o == &order.id) {
                    next.applied.remove(i);
                    let share = if part.amount_fen > 0 { part.amount_fen } else { bill.amount_fen };
                    next.paid_fen = (next.paid_fen - share).max(0);
                    if next.paid_fen < next.amount_fen {
                        next.status = BillStatus::Open;
                        next.paid_by = None;
                    }
                } else if bill.paid_by.as_deref() == Some(&order.id) {
                    // Paid before partial payments were counted.
                    if next.duplicate_payments.is_empty() {
                        next.status = BillStatus::Open;
                        next.paid_by = None;
                    } else {
                        next.paid_by = Some(next.duplicate_payments.remove(0));
                    }
                } else if bill.duplicate_payments.contains(&order.id) {
                    next.duplicate_payments.retain(|o| o != &order.id);
                } else {
                    return Ok(Step::Keep(()));
                }
                next.updated_at = at;
                Ok(Step::Write(next, ()))
            })
            .await?;
        }
        settlement::record(self.store, OWNER, &p.biller_id, &order.id, "refund", at).await?;
        let data = json!({
            "biller_id": p.biller_id, "account_no": p.account_no, "order_id": order.id,
            "refunded_fen": order.total_fen - order.partially_refunded_fen(), "refunded_at": at, "bill_ids": p.bill_ids,
        });
        let event = FeedEvent::new("bill.refunded", &order.id, at, data);
        feed::append(self.store, &feed::key(OWNER, &p.biller_id), &event).await?;
        self.count_once(&order.id, "refunded", &p.biller_id, "orders_refunded", 1).await?;
        Ok(())
    }

    async fn partially_refunded(&self, order: &Order, refund: &PartialRefund) -> Result<(), OrderError> {
        let p = payload(order)?;
        let kind = format!("refund:{}", refund.id);
        Ok(settlement::record(self.store, OWNER, &p.biller_id, &order.id, &kind, refund.at).await?)
    }

    async fn release(&self, order: &Order) -> Result<(), OrderError> {
        let p = payload(order)?;
        for part in parts(&p) {
            holds::release::<Bill, OrderError>(self.store, &keys::bill(&p.biller_id, &part.bill_id), &order.id).await?;
        }
        Ok(())
    }

    async fn changed(&self, order: &Order) -> Result<Option<String>, OrderError> {
        let p = payload(order)?;
        let keys: Vec<kv::Key> = p.parts.iter().map(|part| keys::bill(&p.biller_id, &part.bill_id)).collect();
        for ((key, raw), part) in keys.iter().zip(kv::get_all(self.store, &keys).await?).zip(&p.parts) {
            match kv::decode_doc::<Bill>(key, raw.as_deref())? {
                Some(bill) if bill.version != part.version => {
                    return Ok(Some(format!("bill {} was re-issued", part.bill_id)));
                }
                Some(bill) if bill.status == BillStatus::Paid && !bill.applied.contains(&order.id) => {
                    return Ok(Some(format!("bill {} is already paid", part.bill_id)));
                }
                Some(_) => {}
                None => return Ok(Some(format!("bill {} was withdrawn", part.bill_id))),
            }
        }
        Ok(None)
    }
}

/// The bills an order pays toward: its parts, or (orders of before bill versions) each settled bill whole
/// (`version` 0 and `amount_fen` 0: whatever was due).
/// A bill as the biller's `bill.paid` event shows it: paid in full (write it off) or in part, by this payment or
/// (a duplicate) after another one.
fn bill_view(bill: &Bill, order_id: &str) -> serde_json::Value {
    let outcome = if bill.duplicate_payments.iter().any(|o| o == order_id) {
        "duplicate_payment"
    } else if bill.status == BillStatus::Paid {
        "paid"
    } else {
        "part_paid"
    };
    json!({
        "bill_id": bill.bill_id, "period": bill.period, "amount_fen": bill.amount_fen, "paid_fen": bill.paid_fen,
        "outcome": outcome,
    })
}

fn parts(p: &Payload) -> Vec<BillPart> {
    if !p.parts.is_empty() {
        return p.parts.clone();
    }
    p.bill_ids.iter().map(|id| BillPart { bill_id: id.clone(), version: 0, amount_fen: 0 }).collect()
}

/// Places the order for a quote: each bill it pays toward must still be the version priced, open, and not held by
/// another open order; the order then holds them until its payment ends.
pub async fn place(
    store: &impl Store,
    customer_id: &str,
    quote_id: &str,
    now: Timestamp,
) -> Result<Order, UtilityError> {
    let (quote, existing) = orders::customer_quote(store, OWNER, customer_id, quote_id).await?;
    let p: Payload =
        serde_json::from_value(quote.payload.clone()).map_err(|e| UtilityError::invalid("quote", e.to_string()))?;
    let biller = billers::get(store, &p.biller_id).await?;
    if existing.is_none() {
        let order_id = orders::order_id_for(quote_id);
        let until = now.plus_secs(orders::PAYMENT_WINDOW_SECS + orders::RESERVATION_GRACE_SECS);
        let mut held = Vec::new();
        for part in parts(&p) {
            match hold(store, &biller.id, &part, &order_id, until, now).await {
                Ok(()) => held.push(part),
                Err(e) => {
                    // Let go of what this attempt took, so the customer can try again at once; when refused (the
                    // bill is held, changed or paid), also of what the quote reserved: it cannot be paid (a new
                    // quote once the bill is free reserves afresh). A store error keeps it for the retry.
                    for part in &held {
                        let key = keys::bill(&biller.id, &part.bill_id);
                        let _ = holds::release::<Bill, UtilityError>(store, &key, &order_id).await;
                    }
                    if e.kind() == ErrorKind::Conflict {
                        let _ = orders::release_quote(store, &quote, now).await;
                    }
                    return Err(e);
                }
            }
        }
    }
    Ok(orders::place_quoted(store, OWNER, customer_id, &quote, existing, &biller.ledger_account(), now).await?)
}

/// Holds a bill for `order_id` until `until`: it must be open, the version priced and not held by another open
/// order.
async fn hold(
    store: &impl Store,
    biller_id: &str,
    part: &BillPart,
    order_id: &str,
    until: Timestamp,
    now: Timestamp,
) -> Result<(), UtilityError> {
    let item = format!("bill {}", part.bill_id);
    holds::take(store, &keys::bill(biller_id, &part.bill_id), &item, order_id, until, now, |bill: Option<&Bill>| {
        let Some(bill) = bill.filter(|b| b.status == BillStatus::Open) else {
            return Err(UtilityError::BillNotOpen(part.bill_id.clone()));
        };
        if part.version != 0 && bill.version != part.version {
            return Err(UtilityError::BillChanged(part.bill_id.clone()));
        }
        Ok(())
    })
    .await
}

/// Applies a verified gateway notification.
pub async fn notify(
    store: &impl Store,
    event: &GatewayEvent,
    bank_bins: &[String],
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, UtilityError> {
    Ok(orders::apply_notification(store, &Utility { store }, event, bank_bins, rules, now).await?)
}

/// Refunds a paid order.
pub async fn refund(
    store: &impl Store,
    order_id: &str,
    by: &str,
    request: &RefundRequest,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, UtilityError> {
    Ok(orders::refund(store, &Utility { store }, order_id, by, request, rules, now).await?)
}

/// The biller an order pays (for partner scope checks).
pub fn biller_of(order: &Order) -> Option<String> {
    order.payload.get("biller_id").and_then(|v| v.as_str()).map(str::to_owned)
}
